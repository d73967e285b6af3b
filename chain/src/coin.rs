//! Per-coin, per-network parameters: address encodings, the proof-of-work algorithm and
//! the getblocktemplate rules the node insists on.

use otedama_kernels::Algorithm;
use otedama_shared::address::{AddressRule, BitcoinAddressRule};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Coin {
    Litecoin,
    Bitcoin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Mainnet,
    Testnet,
    Regtest,
}

impl Coin {
    /// As its wallets spell it, in the signed-message magic.
    pub fn name(self) -> &'static str {
        match self {
            Coin::Litecoin => "Litecoin",
            Coin::Bitcoin => "Bitcoin",
        }
    }

    /// Its ticker, which the exchange's assets and the KYC thresholds go by.
    pub fn symbol(self) -> &'static str {
        match self {
            Coin::Litecoin => "LTC",
            Coin::Bitcoin => "BTC",
        }
    }
}

/// Address prefixes of one coin on one network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoinParams {
    pub coin: Coin,
    pub network: Network,
    pub address: AddressRule,
    pub algorithm: Algorithm,
    /// Blocks before a coinbase output can be spent.
    pub coinbase_maturity: u64,
}

impl CoinParams {
    pub fn new(coin: Coin, network: Network) -> Self {
        let rule = |network_name, pubkey_hash_prefix, script_hash_prefixes, bech32_hrp| {
            AddressRule::Bitcoin(BitcoinAddressRule {
                network_name,
                pubkey_hash_prefix,
                script_hash_prefixes,
                bech32_hrp,
            })
        };
        let address = match (coin, network) {
            (Coin::Bitcoin, Network::Mainnet) => rule("bitcoin mainnet", 0, &[5], "bc"),
            (Coin::Bitcoin, Network::Testnet) => rule("bitcoin testnet", 111, &[196], "tb"),
            (Coin::Bitcoin, Network::Regtest) => rule("bitcoin regtest", 111, &[196], "bcrt"),
            (Coin::Litecoin, Network::Mainnet) => rule("litecoin mainnet", 48, &[50, 5], "ltc"),
            (Coin::Litecoin, Network::Testnet) => rule("litecoin testnet", 111, &[58, 196], "tltc"),
            (Coin::Litecoin, Network::Regtest) => rule("litecoin regtest", 111, &[58, 196], "rltc"),
        };
        CoinParams {
            coin,
            network,
            address,
            algorithm: match coin {
                Coin::Bitcoin => Algorithm::Sha256d,
                Coin::Litecoin => Algorithm::Scrypt,
            },
            coinbase_maturity: 100,
        }
    }

    /// The rules getblocktemplate must be called with. Litecoin Core refuses a template
    /// (code -8) unless the client declares MWEB support.
    pub fn template_rules(&self) -> &'static [&'static str] {
        match self.coin {
            Coin::Bitcoin => &["segwit"],
            Coin::Litecoin => &["mweb", "segwit"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otedama_shared::address::{script_for_address as decode, AddressError};

    fn script_for_address(params: &CoinParams, address: &str) -> Result<Vec<u8>, AddressError> {
        decode(&params.address, address)
    }

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
