//! Payout addresses: decode and check an address for one coin and network, and produce
//! the bytes that name its destination in a payment: the output script in the Bitcoin
//! family, the canonical address text in Monero (whose outputs are one-time keys no
//! script names). Base58Check and bech32/bech32m decoding come from the `bitcoin` crate,
//! Monero's from the `monero` crate; only the per-coin prefixes are ours. The data plane
//! checks a miner's address with this at authorize time; the control plane builds
//! coinbases and payouts with it.

use bitcoin::bech32;

use crate::monero::{payout_address as monero_payout_address, MoneroAddressError};

/// What makes an address belong to one coin on one network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressRule {
    /// Base58Check and bech32 addresses that stand for an output script.
    Bitcoin(BitcoinAddressRule),
    /// Monero's own base58: standard addresses and subaddresses (`monero::payout_address`).
    Monero(MoneroAddressRule),
}

/// A Monero network's addresses. Regtest takes mainnet's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoneroAddressRule {
    /// For error messages: `monero regtest`.
    pub network_name: &'static str,
    pub network: monero::Network,
}

/// The prefixes of one Bitcoin-family coin on one network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitcoinAddressRule {
    /// For error messages: `litecoin regtest`.
    pub network_name: &'static str,
    pub pubkey_hash_prefix: u8,
    /// Script-hash prefixes; Litecoin accepts its old one (the Bitcoin value) as well.
    pub script_hash_prefixes: &'static [u8],
    pub bech32_hrp: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address {address:?} is not valid base58check or bech32")]
    Undecodable { address: String },
    #[error("address {address:?} belongs to another coin or network (expected {expected})")]
    WrongNetwork { address: String, expected: String },
    #[error("address {address:?} has an unsupported form: {why}")]
    Unsupported { address: String, why: &'static str },
    #[error("an address of {length} bytes is longer than any ({ADDRESS_BYTES_MAX} at most)")]
    TooLong { length: usize },
    #[error(transparent)]
    Monero(#[from] MoneroAddressError),
}

/// Longest Bitcoin-family address accepted; bech32 addresses are at most 90 characters.
/// (Monero's bound is `monero::MONERO_ADDRESS_BYTES_MAX`.)
pub const ADDRESS_BYTES_MAX: usize = 90;

/// The payout address in a worker name: miners authorize as `ADDRESS` or `ADDRESS.RIG`.
/// The form lists compare addresses in: bech32 is case-insensitive, so it is lower-cased;
/// base58 is case-sensitive and stays as it is.
pub fn canonical_address(address: &str) -> std::borrow::Cow<'_, str> {
    const BECH32_PREFIXES: [&str; 6] = ["bc1", "tb1", "bcrt1", "ltc1", "tltc1", "rltc1"];
    let bech32 = BECH32_PREFIXES
        .iter()
        .any(|hrp| address.len() > hrp.len() && address[..hrp.len()].eq_ignore_ascii_case(hrp));
    if bech32 && address.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(address.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(address)
    }
}

/// The one text every encoding of the same output script compares as, for this coin and
/// network: bech32 in lower case, and a script hash under the coin's first (current)
/// prefix, so Litecoin's `3…` and `M…` (and regtest's `2…` and `Q…`) forms of one P2SH
/// script are the same party to bans, deny lists, KYC and the ledger. `Err` for text that
/// is not an address of this coin and network.
pub fn canonical_address_for(rule: &AddressRule, address: &str) -> Result<String, AddressError> {
    let rule = match rule {
        AddressRule::Bitcoin(rule) => rule,
        // Only the canonical text is taken at all.
        AddressRule::Monero(rule) => return Ok(monero_payout_address(address, rule.network)?.text),
    };
    let script = bitcoin_script_for_address(rule, address)?;
    let is_script_hash = script.len() == 23 && script[0] == 0xa9 && script[1] == 0x14;
    let base58 = bitcoin::base58::decode_check(address).is_ok();
    if !(base58 && is_script_hash) {
        return Ok(canonical_address(address).into_owned());
    }
    let mut payload = Vec::with_capacity(21);
    payload.push(rule.script_hash_prefixes[0]);
    payload.extend_from_slice(&script[2..22]);
    Ok(bitcoin::base58::encode_check(&payload))
}

/// A worker name (`ADDRESS` or `ADDRESS.RIG`) with its address in canonical form
/// (`canonical_address_for`).
pub fn canonical_worker_for(rule: &AddressRule, worker: &str) -> Result<String, AddressError> {
    let address = payout_address_of(worker);
    let canonical = canonical_address_for(rule, address)?;
    Ok(format!("{canonical}{}", &worker[address.len()..]))
}

pub fn payout_address_of(worker: &str) -> &str {
    worker
        .split_once('.')
        .map_or(worker, |(address, _)| address)
}

/// The bytes that name `address`'s destination in a payment: the scriptPubKey that pays
/// it, or for Monero the address's canonical text (what monero-wallet-rpc reports a
/// payment's destinations by).
pub fn script_for_address(rule: &AddressRule, address: &str) -> Result<Vec<u8>, AddressError> {
    match rule {
        AddressRule::Bitcoin(rule) => bitcoin_script_for_address(rule, address),
        AddressRule::Monero(rule) => Ok(monero_payout_address(address, rule.network)?
            .text
            .into_bytes()),
    }
}

fn bitcoin_script_for_address(
    rule: &BitcoinAddressRule,
    address: &str,
) -> Result<Vec<u8>, AddressError> {
    let undecodable = || AddressError::Undecodable {
        address: address.to_string(),
    };
    // MWEB addresses are longer than any address we accept, so name them before the
    // length check turns them into a vaguer "undecodable".
    let mweb_hrp = address
        .get(..12)
        .is_some_and(|head| head.to_ascii_lowercase().contains("mweb1"));
    if mweb_hrp {
        return Err(AddressError::Unsupported {
            address: address.to_string(),
            why: "MWEB addresses cannot receive coinbase outputs",
        });
    }
    if address.len() > ADDRESS_BYTES_MAX {
        return Err(AddressError::TooLong {
            length: address.len(),
        });
    }
    let lower = address.to_ascii_lowercase();
    let wrong_network = || AddressError::WrongNetwork {
        address: address.to_string(),
        expected: rule.network_name.to_string(),
    };
    if lower.starts_with(&format!("{}1", rule.bech32_hrp)) {
        let (hrp, version, program) = bech32::segwit::decode(address).map_err(|_| undecodable())?;
        if hrp.to_lowercase() != rule.bech32_hrp {
            return Err(wrong_network());
        }
        let version = version.to_u8();
        let mut script = Vec::with_capacity(program.len() + 2);
        script.push(if version == 0 { 0x00 } else { 0x50 + version });
        script.push(program.len() as u8);
        script.extend_from_slice(&program);
        return Ok(script);
    }
    if bech32::segwit::decode(address).is_ok() {
        return Err(wrong_network());
    }
    let payload = bitcoin::base58::decode_check(address).map_err(|_| undecodable())?;
    if payload.len() != 21 {
        return Err(undecodable());
    }
    let (prefix, hash) = (payload[0], &payload[1..]);
    if prefix == rule.pubkey_hash_prefix {
        let mut script = vec![0x76, 0xa9, 0x14];
        script.extend_from_slice(hash);
        script.extend_from_slice(&[0x88, 0xac]);
        Ok(script)
    } else if rule.script_hash_prefixes.contains(&prefix) {
        let mut script = vec![0xa9, 0x14];
        script.extend_from_slice(hash);
        script.push(0x87);
        Ok(script)
    } else {
        Err(wrong_network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_worker_name_up_to_the_first_dot() {
        assert_eq!(payout_address_of("rltc1qabc.rig.7"), "rltc1qabc");
        assert_eq!(payout_address_of("rltc1qabc"), "rltc1qabc");
        assert_eq!(payout_address_of(".rig"), "");
    }

    /// Litecoin mainnet: one P2SH script in its old (`3…`, Bitcoin's prefix) and current
    /// (`M…`) encodings, and a bech32 address in upper case.
    #[test]
    fn every_encoding_of_one_script_has_one_canonical_form() {
        let rule = AddressRule::Bitcoin(BitcoinAddressRule {
            network_name: "litecoin mainnet",
            pubkey_hash_prefix: 48,
            script_hash_prefixes: &[50, 5],
            bech32_hrp: "ltc",
        });
        let hash = [0x42u8; 20];
        let encode = |prefix: u8| {
            let mut payload = vec![prefix];
            payload.extend_from_slice(&hash);
            bitcoin::base58::encode_check(&payload)
        };
        let (current, old) = (encode(50), encode(5));
        assert!(current.starts_with('M') && old.starts_with('3'));
        assert_eq!(
            script_for_address(&rule, &current),
            script_for_address(&rule, &old)
        );
        assert_eq!(canonical_address_for(&rule, &old).unwrap(), current);
        assert_eq!(canonical_address_for(&rule, &current).unwrap(), current);
        assert_eq!(
            canonical_worker_for(&rule, &format!("{old}.rig.1")).unwrap(),
            format!("{current}.rig.1")
        );
        let hrp = bech32::Hrp::parse("ltc").unwrap();
        let bech32 = bech32::segwit::encode(hrp, bech32::segwit::VERSION_0, &[7; 20]).unwrap();
        assert_eq!(
            canonical_address_for(&rule, &bech32.to_ascii_uppercase()).unwrap(),
            bech32
        );
        assert!(canonical_address_for(&rule, "not an address").is_err());
    }

    /// A Monero rule names a destination by its canonical text; an integrated address (the
    /// same keys under a payment id) and another network's address are not payable.
    #[test]
    fn a_monero_address_is_its_own_destination() {
        const GENERAL_FUND: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
        let rule = AddressRule::Monero(MoneroAddressRule {
            network_name: "monero regtest",
            network: monero::Network::Mainnet,
        });
        assert_eq!(
            script_for_address(&rule, GENERAL_FUND).unwrap(),
            GENERAL_FUND.as_bytes()
        );
        assert_eq!(
            canonical_worker_for(&rule, &format!("{GENERAL_FUND}.rig")).unwrap(),
            format!("{GENERAL_FUND}.rig")
        );
        let keys: monero::Address = GENERAL_FUND.parse().unwrap();
        let integrated = monero::Address::integrated(
            monero::Network::Mainnet,
            keys.public_spend,
            keys.public_view,
            monero::util::address::PaymentId::from([1; 8]),
        )
        .to_string();
        assert!(matches!(
            script_for_address(&rule, &integrated),
            Err(AddressError::Monero(MoneroAddressError::Integrated { .. }))
        ));
        let stagenet = monero::Address::standard(
            monero::Network::Stagenet,
            keys.public_spend,
            keys.public_view,
        )
        .to_string();
        assert!(canonical_address_for(&rule, &stagenet).is_err());
        // Neither family takes the other's addresses.
        let litecoin = AddressRule::Bitcoin(BitcoinAddressRule {
            network_name: "litecoin regtest",
            pubkey_hash_prefix: 111,
            script_hash_prefixes: &[58, 196],
            bech32_hrp: "rltc",
        });
        assert!(script_for_address(&litecoin, GENERAL_FUND).is_err());
        assert!(script_for_address(&rule, "n3q3PuGf8c1cPVizoR2PvJKr88E8RJ6M6r").is_err());
    }

    #[test]
    fn an_address_over_the_limit_is_refused_before_decoding() {
        let rule = AddressRule::Bitcoin(BitcoinAddressRule {
            network_name: "test",
            pubkey_hash_prefix: 0,
            script_hash_prefixes: &[5],
            bech32_hrp: "bc",
        });
        // At the limit the length is not what refuses it; one byte more is.
        let at_limit = format!("bc1q{}", "q".repeat(ADDRESS_BYTES_MAX - 4));
        assert!(!matches!(
            script_for_address(&rule, &at_limit),
            Err(AddressError::TooLong { .. })
        ));
        let long = format!("{at_limit}q");
        assert_eq!(
            script_for_address(&rule, &long),
            Err(AddressError::TooLong {
                length: ADDRESS_BYTES_MAX + 1
            })
        );
    }
}
