//! Where a found block stands, from the node's word on it: `pending` until it has
//! `coinbase_maturity` confirmations, then `confirmed`; `orphaned` once it has left the
//! best chain. Bitcoin Core's `getblockheader` reports -1 confirmations for a block it
//! knows outside the best chain, which is what an orphan is.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockStatus {
    /// In the best chain, not yet mature (or not looked at yet).
    #[default]
    Pending,
    /// Mature: its reward can be paid.
    Confirmed,
    /// Out of the best chain: its reward is never paid.
    Orphaned,
}

/// The status for `confirmations` as `getblockheader` reports them.
pub fn classify(confirmations: i64, coinbase_maturity: u64) -> BlockStatus {
    match u64::try_from(confirmations) {
        Err(_) => BlockStatus::Orphaned,
        Ok(c) if c >= coinbase_maturity => BlockStatus::Confirmed,
        Ok(_) => BlockStatus::Pending,
    }
}

impl BlockStatus {
    /// Confirmed and orphaned blocks never change again: maturity is deeper than any
    /// reorganization the pool is built to survive.
    pub fn is_final(self) -> bool {
        self != BlockStatus::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maturity_is_reached_at_its_edge_and_minus_one_is_an_orphan() {
        assert_eq!(classify(0, 100), BlockStatus::Pending);
        assert_eq!(classify(99, 100), BlockStatus::Pending);
        assert_eq!(classify(100, 100), BlockStatus::Confirmed);
        assert_eq!(classify(5_000, 100), BlockStatus::Confirmed);
        assert_eq!(classify(-1, 100), BlockStatus::Orphaned);
        assert!(!BlockStatus::Pending.is_final());
        assert!(BlockStatus::Confirmed.is_final() && BlockStatus::Orphaned.is_final());
    }
}
