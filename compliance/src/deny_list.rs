//! Deny lists: addresses the pool must neither let mine nor pay. A file's format is found
//! from its content:
//!
//! - OFAC's advanced SDN XML (`sdn_advanced.xml`): `FeatureType` elements name the
//!   "Digital Currency Address - XBT/LTC/…" features; each `Feature` of such a type holds
//!   its address in a `VersionDetail`.
//! - OFAC's SDN XML (`SDN.XML`): `<id>` elements whose `idType` is such a feature and
//!   whose `idNumber` is the address.
//! - OFAC's SDN CSV (`sdn.csv`, `add.csv`): the feature and the address inside the remarks
//!   text, `Digital Currency Address - XBT 1ABC...;`.
//! - Anything else: one address per line; blank lines and `#` comments are skipped.
//!
//! SDN entries are kept only for the pool's coin (its OFAC ticker: `LTC`, `XBT`); a plain
//! file is for the pool's coin by definition.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use quick_xml::events::Event;
use quick_xml::Reader;

/// OFAC's feature name before the ticker.
pub const FEATURE_PREFIX: &str = "Digital Currency Address - ";
/// Longest address kept; anything longer in a list is not an address of ours.
pub const ADDRESS_BYTES_MAX: usize = 128;
/// Addresses the deny lists may hold together: what the data planes take in one ban list.
pub const DENIED_ADDRESSES_MAX: usize = otedama_shared::bans::BANS_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    SdnAdvancedXml,
    SdnXml,
    SdnCsv,
    Plain,
}

#[derive(Debug, thiserror::Error)]
pub enum DenyListError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not well-formed XML: {reason}")]
    Xml { path: PathBuf, reason: String },
    #[error("the deny lists hold more than {DENIED_ADDRESSES_MAX} addresses")]
    TooMany,
}

/// The merged list, with how many addresses each file gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    pub addresses: BTreeSet<String>,
    pub per_file: BTreeMap<PathBuf, usize>,
}

impl DenyList {
    pub fn contains(&self, address: &str) -> bool {
        self.addresses.contains(&normalize(address))
    }

    /// The list with every address of the pool's coin and network in its canonical form
    /// (`canonical_address_for`): a sanctioned script is refused and frozen whichever of
    /// its encodings a miner uses. Entries that are not addresses of this coin and network
    /// stay as they are (they can never match a payable miner).
    pub fn canonical_for(self, rule: &otedama_shared::address::AddressRule) -> DenyList {
        let addresses = self
            .addresses
            .into_iter()
            .map(|address| {
                otedama_shared::address::canonical_address_for(rule, &address).unwrap_or(address)
            })
            .collect();
        DenyList {
            addresses,
            per_file: self.per_file,
        }
    }
}

/// Lists keep and compare addresses in canonical form (bech32 lower-cased).
pub fn normalize(address: &str) -> String {
    otedama_shared::address::canonical_address(address).into_owned()
}

pub fn detect(text: &str) -> Format {
    let start = text.trim_start_matches('\u{feff}').trim_start();
    if start.starts_with('<') {
        if text.contains("<FeatureType") {
            Format::SdnAdvancedXml
        } else {
            Format::SdnXml
        }
    } else if text.contains(FEATURE_PREFIX) {
        Format::SdnCsv
    } else {
        Format::Plain
    }
}

/// Reads every file and merges their addresses for `ticker`.
pub fn load(paths: &[PathBuf], ticker: &str) -> Result<DenyList, DenyListError> {
    let mut list = DenyList::default();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| DenyListError::Read {
            path: path.clone(),
            source,
        })?;
        let addresses = parse(&text, ticker).map_err(|reason| DenyListError::Xml {
            path: path.clone(),
            reason,
        })?;
        list.per_file.insert(path.clone(), addresses.len());
        list.addresses.extend(addresses);
        if list.addresses.len() > DENIED_ADDRESSES_MAX {
            return Err(DenyListError::TooMany);
        }
    }
    Ok(list)
}

/// The addresses for `ticker` in one file's text; `Err` only for broken XML.
pub fn parse(text: &str, ticker: &str) -> Result<Vec<String>, String> {
    let feature = format!("{FEATURE_PREFIX}{ticker}");
    let raw = match detect(text) {
        Format::SdnAdvancedXml => parse_advanced_xml(text, &feature)?,
        Format::SdnXml => parse_sdn_xml(text, &feature)?,
        Format::SdnCsv => parse_csv(text, &feature),
        Format::Plain => text
            .lines()
            .map(|line| {
                line.split('#')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .filter(|line| !line.is_empty())
            .collect(),
    };
    Ok(raw
        .into_iter()
        .filter(|a| {
            !a.is_empty() && a.len() <= ADDRESS_BYTES_MAX && !a.contains(char::is_whitespace)
        })
        .map(|a| normalize(&a))
        .collect())
}

fn attribute(element: &quick_xml::events::BytesStart, name: &[u8]) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// `FeatureType ID → name`, and every `Feature`'s type with its `VersionDetail` text.
fn parse_advanced_xml(text: &str, feature: &str) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_str(text);
    let mut type_names: BTreeMap<String, String> = BTreeMap::new();
    let mut features: Vec<(String, String)> = Vec::new();
    let mut in_type: Option<String> = None;
    let mut in_feature: Option<String> = None;
    let mut in_detail = false;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(element) => match element.local_name().as_ref() {
                b"FeatureType" => in_type = attribute(&element, b"ID"),
                b"Feature" => in_feature = attribute(&element, b"FeatureTypeID"),
                b"VersionDetail" => in_detail = in_feature.is_some(),
                _ => {}
            },
            Event::Text(content) => {
                let content = content
                    .decode()
                    .map_err(|e| e.to_string())?
                    .trim()
                    .to_string();
                if let Some(id) = &in_type {
                    type_names.insert(id.clone(), content);
                } else if in_detail {
                    if let Some(type_id) = &in_feature {
                        features.push((type_id.clone(), content));
                    }
                }
            }
            Event::End(element) => match element.local_name().as_ref() {
                b"FeatureType" => in_type = None,
                b"Feature" => in_feature = None,
                b"VersionDetail" => in_detail = false,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(features
        .into_iter()
        .filter(|(type_id, _)| type_names.get(type_id).is_some_and(|n| n == feature))
        .map(|(_, address)| address)
        .collect())
}

/// `<id><idType>…</idType><idNumber>…</idNumber></id>`.
fn parse_sdn_xml(text: &str, feature: &str) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_str(text);
    let mut addresses = Vec::new();
    let (mut id_type, mut id_number) = (None::<String>, None::<String>);
    let mut field: Option<&'static str> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(element) => match element.local_name().as_ref() {
                b"id" => (id_type, id_number) = (None, None),
                b"idType" => field = Some("type"),
                b"idNumber" => field = Some("number"),
                _ => field = None,
            },
            Event::Text(content) => {
                let content = content
                    .decode()
                    .map_err(|e| e.to_string())?
                    .trim()
                    .to_string();
                match field {
                    Some("type") => id_type = Some(content),
                    Some("number") => id_number = Some(content),
                    _ => {}
                }
            }
            Event::End(element) => {
                field = None;
                if element.local_name().as_ref() == b"id" {
                    if let (Some(kind), Some(number)) = (id_type.take(), id_number.take()) {
                        if kind == feature {
                            addresses.push(number);
                        }
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(addresses)
}

/// Each `Digital Currency Address - TICKER ADDRESS` in the text, the address ending at
/// `;`, a quote or white space.
fn parse_csv(text: &str, feature: &str) -> Vec<String> {
    let mut addresses = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(feature) {
        rest = &rest[at + feature.len()..];
        // "… - XBT 1abc" but not "… - XBTC" (another ticker that starts the same).
        let Some(after) = rest.strip_prefix(' ') else {
            continue;
        };
        let address: String = after
            .chars()
            .take_while(|c| !matches!(c, ';' | '"' | ',' | ')') && !c.is_whitespace())
            .collect();
        addresses.push(address);
    }
    addresses
}

/// The OFAC ticker of a coin by the names the pool's config uses.
pub fn ticker_for_coin(coin: &str) -> Option<&'static str> {
    match coin {
        "litecoin" => Some("LTC"),
        "bitcoin" => Some("XBT"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADVANCED: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Sanctions xmlns="https://www.treasury.gov/ofac/DeltaFile/1.0">
  <ReferenceValueSets>
    <FeatureTypeValues>
      <FeatureType ID="344" FeatureTypeGroupID="1">Digital Currency Address - XBT</FeatureType>
      <FeatureType ID="566" FeatureTypeGroupID="1">Digital Currency Address - LTC</FeatureType>
      <FeatureType ID="8" FeatureTypeGroupID="2">Birthdate</FeatureType>
    </FeatureTypeValues>
  </ReferenceValueSets>
  <DistinctParties>
    <DistinctParty FixedRef="1">
      <Profile ID="1">
        <Feature ID="10" FeatureTypeID="566">
          <FeatureVersion ID="11"><VersionDetail DetailTypeID="1432">LTdsVS8VDw6syvfQADdhf2PHAm3rMGJvPX</VersionDetail></FeatureVersion>
        </Feature>
        <Feature ID="12" FeatureTypeID="344">
          <FeatureVersion ID="13"><VersionDetail DetailTypeID="1432">12QtD5BFwRsdNsAZY76UVE1xyCGNTojH9h</VersionDetail></FeatureVersion>
        </Feature>
        <Feature ID="14" FeatureTypeID="8">
          <FeatureVersion ID="15"><VersionDetail DetailTypeID="1430">1970</VersionDetail></FeatureVersion>
        </Feature>
      </Profile>
    </DistinctParty>
  </DistinctParties>
</Sanctions>"#;

    const SDN_XML: &str = r#"<?xml version="1.0" standalone="yes"?>
<sdnList xmlns="http://tempuri.org/sdnList.xsd">
  <sdnEntry>
    <uid>1</uid><lastName>EXAMPLE</lastName><sdnType>Entity</sdnType>
    <idList>
      <id><uid>2</uid><idType>Digital Currency Address - LTC</idType><idNumber>ltc1QEXAMPLEADDRESS0000000000000000000000</idNumber></id>
      <id><uid>3</uid><idType>Digital Currency Address - XBT</idType><idNumber>bc1qbitcoinonly</idNumber></id>
      <id><uid>4</uid><idType>Passport</idType><idNumber>X123</idNumber></id>
    </idList>
  </sdnEntry>
</sdnList>"#;

    const SDN_CSV: &str = "36000,\"EXAMPLE, One\",\"individual\",\"CYBER2\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,\"Digital Currency Address - XBT 12QtD5BFwRsdNsAZY76UVE1xyCGNTojH9h; alt. Digital Currency Address - LTC LTdsVS8VDw6syvfQADdhf2PHAm3rMGJvPX; Digital Currency Address - LTC ltc1qsecondexample;\"\n\
36001,\"OTHER\",-0- ,\"SDGT\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,\"Digital Currency Address - XBTC notours; Passport 99\"\n";

    #[test]
    fn each_format_is_detected_and_only_the_coins_addresses_are_kept() {
        assert_eq!(detect(ADVANCED), Format::SdnAdvancedXml);
        assert_eq!(detect(SDN_XML), Format::SdnXml);
        assert_eq!(detect(SDN_CSV), Format::SdnCsv);
        assert_eq!(detect("# list\nLaddr\n"), Format::Plain);
        assert_eq!(
            parse(ADVANCED, "LTC").unwrap(),
            ["LTdsVS8VDw6syvfQADdhf2PHAm3rMGJvPX"]
        );
        assert_eq!(
            parse(ADVANCED, "XBT").unwrap(),
            ["12QtD5BFwRsdNsAZY76UVE1xyCGNTojH9h"]
        );
        // Bech32 is kept in lower case.
        assert_eq!(
            parse(SDN_XML, "LTC").unwrap(),
            ["ltc1qexampleaddress0000000000000000000000"]
        );
        assert_eq!(
            parse(SDN_CSV, "LTC").unwrap(),
            ["LTdsVS8VDw6syvfQADdhf2PHAm3rMGJvPX", "ltc1qsecondexample"]
        );
        // "XBTC" is another ticker, not XBT.
        assert_eq!(
            parse(SDN_CSV, "XBT").unwrap(),
            ["12QtD5BFwRsdNsAZY76UVE1xyCGNTojH9h"]
        );
        assert_eq!(
            parse("# comment\n\n  Laddr1  \nltc1QABC # trailing\n", "LTC").unwrap(),
            ["Laddr1", "ltc1qabc"]
        );
    }

    /// An entry of exactly `ADDRESS_BYTES_MAX` bytes is kept; a longer one is no address
    /// of any coin and is left out.
    #[test]
    fn list_entries_are_kept_up_to_their_length_limit() {
        let at_limit = "L".repeat(ADDRESS_BYTES_MAX);
        let over = "M".repeat(ADDRESS_BYTES_MAX + 1);
        let kept = parse(&format!("{at_limit}\n{over}\n"), "LTC").unwrap();
        assert_eq!(kept, vec![at_limit]);
    }

    #[test]
    fn broken_xml_is_an_error_and_files_merge() {
        assert!(parse("<sdnList><id><idType>x</idNumber></sdnList>", "LTC").is_err());
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("sdn.xml");
        let b = dir.path().join("extra.txt");
        std::fs::write(&a, SDN_XML).unwrap();
        std::fs::write(&b, "Laddr1\nltc1qexampleaddress0000000000000000000000\n").unwrap();
        let list = load(&[a.clone(), b.clone()], "LTC").unwrap();
        assert_eq!(list.addresses.len(), 2);
        assert_eq!(list.per_file[&a], 1);
        assert_eq!(list.per_file[&b], 2);
        assert!(list.contains("LTC1QEXAMPLEADDRESS0000000000000000000000"));
        assert!(!list.contains("laddr1"), "base58 is case-sensitive");
        assert!(matches!(
            load(&[dir.path().join("missing")], "LTC"),
            Err(DenyListError::Read { .. })
        ));
    }

    #[test]
    fn the_lists_hold_denied_addresses_max_and_refuse_one_more() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full.txt");
        let lines: String = (0..DENIED_ADDRESSES_MAX)
            .map(|i| format!("L{i}\n"))
            .collect();
        std::fs::write(&full, lines).unwrap();
        assert_eq!(
            load(std::slice::from_ref(&full), "LTC")
                .unwrap()
                .addresses
                .len(),
            DENIED_ADDRESSES_MAX
        );
        let one_more = dir.path().join("one-more.txt");
        std::fs::write(&one_more, "Lextra\n").unwrap();
        assert!(matches!(
            load(&[full, one_more], "LTC"),
            Err(DenyListError::TooMany)
        ));
    }
}
