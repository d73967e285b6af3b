//! Payout addresses: decode and check an address for one coin and network, and produce
//! the output script a coinbase pays to. Base58Check and bech32/bech32m decoding come from
//! the `bitcoin` crate; only the per-coin prefixes are ours.

use bitcoin::bech32;

use super::coin::CoinParams;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address {address:?} is not valid base58check or bech32")]
    Undecodable { address: String },
    #[error("address {address:?} belongs to another coin or network (expected {expected})")]
    WrongNetwork { address: String, expected: String },
    #[error("address {address:?} has an unsupported form: {why}")]
    Unsupported { address: String, why: &'static str },
}

/// Returns the scriptPubKey that pays `address`.
pub fn script_for_address(params: &CoinParams, address: &str) -> Result<Vec<u8>, AddressError> {
    let lower = address.to_ascii_lowercase();
    let wrong_network = || AddressError::WrongNetwork {
        address: address.to_string(),
        expected: format!("{:?} {:?}", params.coin, params.network).to_lowercase(),
    };
    if lower.starts_with(&format!("{}1", params.bech32_hrp)) {
        let (hrp, version, program) =
            bech32::segwit::decode(address).map_err(|_| AddressError::Undecodable {
                address: address.to_string(),
            })?;
        if hrp.to_lowercase() != params.bech32_hrp {
            return Err(wrong_network());
        }
        let version = version.to_u8();
        let mut script = Vec::with_capacity(program.len() + 2);
        script.push(if version == 0 { 0x00 } else { 0x50 + version });
        script.push(program.len() as u8);
        script.extend_from_slice(&program);
        return Ok(script);
    }
    if lower.contains("mweb1") {
        return Err(AddressError::Unsupported {
            address: address.to_string(),
            why: "MWEB addresses cannot receive coinbase outputs",
        });
    }
    if bech32::segwit::decode(address).is_ok() {
        return Err(wrong_network());
    }
    let payload =
        bitcoin::base58::decode_check(address).map_err(|_| AddressError::Undecodable {
            address: address.to_string(),
        })?;
    if payload.len() != 21 {
        return Err(AddressError::Undecodable {
            address: address.to_string(),
        });
    }
    let (prefix, hash) = (payload[0], &payload[1..]);
    if prefix == params.pubkey_hash_prefix {
        let mut script = vec![0x76, 0xa9, 0x14];
        script.extend_from_slice(hash);
        script.extend_from_slice(&[0x88, 0xac]);
        Ok(script)
    } else if params.script_hash_prefixes.contains(&prefix) {
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
    use crate::chain::coin::{Coin, Network};

    fn ltc(network: Network) -> CoinParams {
        CoinParams::new(Coin::Litecoin, network)
    }

    #[test]
    fn regtest_addresses_from_litecoind_decode() {
        // Addresses printed by litecoind 0.21.2.1 -regtest getnewaddress.
        let p2wpkh = script_for_address(
            &ltc(Network::Regtest),
            "rltc1qhpuak4f6hryvjxpu5k08xgu99mwkmyzr40vf4j",
        )
        .unwrap();
        assert_eq!(p2wpkh.len(), 22);
        assert_eq!(&p2wpkh[..2], &[0x00, 0x14]);
        let p2pkh =
            script_for_address(&ltc(Network::Regtest), "n3q3PuGf8c1cPVizoR2PvJKr88E8RJ6M6r")
                .unwrap();
        assert_eq!((p2pkh[0], p2pkh.len()), (0x76, 25));
        let p2sh = script_for_address(&ltc(Network::Regtest), "Qia7Jb5DUkyLbqfKRvTuCjQBB4LX4j3Pck")
            .unwrap();
        assert_eq!((p2sh[0], p2sh.len()), (0xa9, 23));
    }

    #[test]
    fn mainnet_addresses_decode_to_known_scripts() {
        // Bitcoin's genesis coinbase key hash, as a P2PKH address.
        let btc = CoinParams::new(Coin::Bitcoin, Network::Mainnet);
        let script = script_for_address(&btc, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa").unwrap();
        assert_eq!(
            hex::encode(script),
            "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac"
        );
        // BIP173's example P2WPKH address.
        let script =
            script_for_address(&btc, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4").unwrap();
        assert_eq!(
            hex::encode(script),
            "0014751e76e8199196d454941c45d1b3a323f1433bd6"
        );
    }

    #[test]
    fn wrong_coin_network_and_garbage_are_refused() {
        let regtest = ltc(Network::Regtest);
        assert!(matches!(
            script_for_address(&regtest, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
            Err(AddressError::WrongNetwork { .. })
        ));
        assert!(matches!(
            script_for_address(&regtest, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
            Err(AddressError::WrongNetwork { .. })
        ));
        assert!(matches!(
            script_for_address(&regtest, "rltc1qhpuak4f6hryvjxpu5k08xgu99mwkmyzr40vf4k"),
            Err(AddressError::Undecodable { .. })
        ));
        assert!(matches!(
            script_for_address(&regtest, "hello"),
            Err(AddressError::Undecodable { .. })
        ));
        assert!(matches!(
            script_for_address(&ltc(Network::Testnet), "tmweb1qqvul2nyasuy8qufyzlmye0q7q25x307u5gjg6qr6yshx82kjckn8wq3n2ajfulkdpfptznjquzr9lfyc9n3ws0cwn2dl69sufky024xjegqw4v5e"),
            Err(AddressError::Unsupported { .. })
        ));
    }
}
