//! Made-up block templates for load tests, so the data plane can be driven at full speed
//! without a node. Each template has enough transactions for a 12-level merkle branch, as
//! a full mainnet block would, and a target no share will meet in practice.
//!
//! The coinbase tag carries the publish time (`/otedama-synthetic/t=<unix ms>/`), which is
//! how the load generator measures the delay from publish to each miner.

use otedama_kernels::sha256d::sha256;

use crate::template::{BlockTemplate, TemplateTransaction};

/// Transactions per synthetic template besides the coinbase: 4,000 leaves need a merkle
/// branch of 12 hashes, like a full Bitcoin block.
pub const SYNTHETIC_TRANSACTIONS: usize = 4000;
/// Bitcoin's difficulty-1 target: about one share in 2^32 would be a block.
const SYNTHETIC_BITS: &str = "1d00ffff";
const SYNTHETIC_REWARD: u64 = 312_500_000;

/// Marker that precedes the publish time in the coinbase tag.
pub const PUBLISH_TIME_MARKER: &str = "/otedama-synthetic/t=";

/// The `sequence`-th synthetic block, published at `now_ms`.
pub fn template(sequence: u64, now_ms: u64) -> BlockTemplate {
    let previous = sha256(&sequence.to_le_bytes());
    let transactions = (0..SYNTHETIC_TRANSACTIONS as u64)
        .map(|index| TemplateTransaction {
            // Never serialized into a block: synthetic blocks are not submitted.
            data: String::new(),
            txid: hex::encode(sha256(
                &[sequence.to_le_bytes(), index.to_le_bytes()].concat(),
            )),
            fee: 0,
        })
        .collect();
    BlockTemplate {
        version: 0x2000_0000,
        previousblockhash: hex::encode(previous),
        transactions,
        coinbasevalue: SYNTHETIC_REWARD,
        bits: SYNTHETIC_BITS.into(),
        height: 1_000_000 + sequence,
        curtime: (now_ms / 1000) as u32,
        mintime: None,
        longpollid: None,
        default_witness_commitment: None,
        mweb: None,
    }
}

/// The coinbase tag that stamps a synthetic job with its publish time.
pub fn coinbase_tag(now_ms: u64) -> String {
    format!("{PUBLISH_TIME_MARKER}{now_ms}/")
}
