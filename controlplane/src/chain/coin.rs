//! Per-coin, per-network parameters: address encodings, the proof-of-work algorithm and
//! the getblocktemplate rules the node insists on.

use otedama_kernels::Algorithm;
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

/// Address prefixes of one coin on one network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoinParams {
    pub coin: Coin,
    pub network: Network,
    pub pubkey_hash_prefix: u8,
    /// Script-hash prefixes; Litecoin accepts its old one (the Bitcoin value) as well.
    pub script_hash_prefixes: &'static [u8],
    pub bech32_hrp: &'static str,
    pub algorithm: Algorithm,
    /// Blocks before a coinbase output can be spent.
    pub coinbase_maturity: u64,
}

impl CoinParams {
    pub fn new(coin: Coin, network: Network) -> Self {
        let (pubkey_hash_prefix, script_hash_prefixes, bech32_hrp): (
            u8,
            &'static [u8],
            &'static str,
        ) = match (coin, network) {
            (Coin::Bitcoin, Network::Mainnet) => (0, &[5], "bc"),
            (Coin::Bitcoin, Network::Testnet) => (111, &[196], "tb"),
            (Coin::Bitcoin, Network::Regtest) => (111, &[196], "bcrt"),
            (Coin::Litecoin, Network::Mainnet) => (48, &[50, 5], "ltc"),
            (Coin::Litecoin, Network::Testnet) => (111, &[58, 196], "tltc"),
            (Coin::Litecoin, Network::Regtest) => (111, &[58, 196], "rltc"),
        };
        CoinParams {
            coin,
            network,
            pubkey_hash_prefix,
            script_hash_prefixes,
            bech32_hrp,
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
