//! The parts of a getblocktemplate reply the pool uses.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct TemplateTransaction {
    /// Full serialization, hex (for Litecoin's HogEx, its MWEB-flagged form).
    pub data: String,
    /// Transaction id (without witness), display order.
    pub txid: String,
    /// Fee the transaction pays, in the smallest unit.
    #[serde(default)]
    pub fee: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct BlockTemplate {
    pub version: u32,
    pub previousblockhash: String,
    pub transactions: Vec<TemplateTransaction>,
    pub coinbasevalue: u64,
    pub bits: String,
    pub height: u64,
    pub curtime: u32,
    pub mintime: Option<u32>,
    pub longpollid: Option<String>,
    pub default_witness_commitment: Option<String>,
    /// Litecoin after MWEB activation: the serialized MWEB block that follows the
    /// transactions, whose HogEx is the last template transaction.
    pub mweb: Option<String>,
}

impl BlockTemplate {
    /// Fees of every template transaction; the coinbase value less this is the subsidy.
    pub fn fees(&self) -> u64 {
        self.transactions.iter().map(|t| t.fee).sum()
    }

    pub fn parse(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(value)
    }
}
