//! Checks the kernels against real mainnet block headers: each header hashes to its known
//! block hash, the hash (SHA256d) or the scrypt value (Litecoin) meets the target its
//! `bits` encode, and the compact encoding round-trips.

use otedama_kernels::scrypt::scrypt_pow;
use otedama_kernels::{sha256d, Midstate, Target};

struct Row {
    chain: String,
    height: u64,
    header: [u8; 80],
    bits: u32,
    block_hash: String,
    scrypt_pow: Option<String>,
}

fn rows() -> Vec<Row> {
    let text = include_str!("data/mainnet-headers.json");
    let document: serde_json::Value = serde_json::from_str(text).unwrap();
    document["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| Row {
            chain: row["chain"].as_str().unwrap().to_string(),
            height: row["height"].as_u64().unwrap(),
            header: hex::decode(row["header"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
            bits: u32::from_str_radix(row["bits"].as_str().unwrap(), 16).unwrap(),
            block_hash: row["block_hash"].as_str().unwrap().to_string(),
            scrypt_pow: row["scrypt_pow"].as_str().map(str::to_string),
        })
        .collect()
}

fn display(hash: [u8; 32]) -> String {
    let mut bytes = hash;
    bytes.reverse();
    hex::encode(bytes)
}

#[test]
fn there_are_at_least_three_headers_per_chain() {
    let rows = rows();
    assert!(rows.iter().filter(|r| r.chain == "bitcoin").count() >= 3);
    assert!(rows.iter().filter(|r| r.chain == "litecoin").count() >= 3);
    assert!(rows.iter().any(|r| r.chain == "bitcoin" && r.height == 0));
}

#[test]
fn every_header_hashes_to_its_block_hash() {
    for row in rows() {
        assert_eq!(
            display(sha256d(&row.header)),
            row.block_hash,
            "{} {}",
            row.chain,
            row.height
        );
        // The midstate path over the first 64 bytes must agree with the one-shot hash.
        let midstate = Midstate::new(&row.header[..64]);
        assert_eq!(
            midstate.finish_sha256d(&[&row.header[64..]]),
            sha256d(&row.header)
        );
    }
}

#[test]
fn every_header_bits_field_matches_its_row_and_round_trips() {
    for row in rows() {
        let bits_in_header = u32::from_le_bytes(row.header[72..76].try_into().unwrap());
        assert_eq!(bits_in_header, row.bits);
        let target = Target::from_compact(row.bits).unwrap();
        assert_eq!(
            target.to_compact(),
            row.bits,
            "{} {}",
            row.chain,
            row.height
        );
    }
}

#[test]
fn bitcoin_hashes_meet_their_targets() {
    for row in rows().into_iter().filter(|r| r.chain == "bitcoin") {
        let target = Target::from_compact(row.bits).unwrap();
        assert!(
            target.is_met_by(&sha256d(&row.header)),
            "bitcoin {}",
            row.height
        );
    }
}

#[test]
fn litecoin_scrypt_values_meet_their_targets() {
    for row in rows().into_iter().filter(|r| r.chain == "litecoin") {
        let pow = scrypt_pow(&row.header);
        if let Some(expected) = &row.scrypt_pow {
            assert_eq!(&display(pow), expected);
        }
        let target = Target::from_compact(row.bits).unwrap();
        assert!(target.is_met_by(&pow), "litecoin {}", row.height);
        // The SHA256d hash of an early Litecoin header does not meet the target: only the
        // scrypt value is the proof of work.
        assert!(
            !target.is_met_by(&sha256d(&row.header)),
            "litecoin {}",
            row.height
        );
    }
}

#[test]
fn multi_lane_scrypt_matches_the_crate_on_litecoin_headers() {
    let headers: Vec<[u8; 80]> = rows()
        .into_iter()
        .filter(|r| r.chain == "litecoin")
        .map(|r| r.header)
        .collect();
    let mut many = vec![[0u8; 32]; headers.len()];
    otedama_kernels::scrypt::scrypt_pow_many(&headers, &mut many);
    for (header, value) in headers.iter().zip(&many) {
        assert_eq!(*value, scrypt_pow(header));
    }
}
