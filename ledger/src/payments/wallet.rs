//! What the payout path needs from a wallet, and nothing more: fund and sign a batch,
//! broadcast it, and say what the node knows of a transaction. The chain crate's node
//! wallet implements it over RPC; the seeded simulation implements it with faults.

use std::collections::BTreeMap;

/// A funded, signed transaction from the wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPayment {
    pub raw_tx: String,
    pub txid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The request may not have reached the node; trying again is safe.
    #[error("wallet unreachable: {0}")]
    Unreachable(String),
    /// The node refused (insufficient funds, a rejected transaction...).
    #[error("wallet refused: {0}")]
    Refused(String),
}

/// What the payer needs from the node's wallet. Real: `chain::wallet::NodeWallet`.
pub trait Wallet {
    /// Funds (fee from the wallet's change) and signs a transaction paying `outputs`.
    fn build_payment(
        &mut self,
        outputs: &BTreeMap<String, u64>,
    ) -> Result<SignedPayment, WalletError>;
    /// Sends a raw transaction; one the node already has counts as sent.
    fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError>;
    /// Whether the node holds `txid`, in its mempool or its chain.
    fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError>;
    /// Where transaction `txid` stands on the node.
    fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError>;
    /// Whether transaction `txid` pays every `(output script, amount)` listed, exactly.
    fn pays_outputs(&mut self, txid: &str, outputs: &[(Vec<u8>, u64)])
        -> Result<bool, WalletError>;
    /// Why a raw transaction the node does not hold can never be mined (its inputs are
    /// spent or do not exist), or `None` if it still could be.
    fn never_minable(&mut self, raw_tx: &str) -> Result<Option<String>, WalletError>;
    /// The txids of every payment the wallet made (sent, not abandoned, not conflicted)
    /// since `since_unix_s` (at least: older ones may be listed too): after a restore, each
    /// must be a payout the ledger knows. Fails while the wallet cannot list them all (the
    /// node in its initial block download, the wallet rescanning).
    fn sends_since(&mut self, since_unix_s: u64) -> Result<Vec<String>, WalletError>;

    /// Unlocks every coin the wallet holds locked that none of `keep` (raw transactions of
    /// payouts still pending) spends, and says how many: a payout funded just before a
    /// crash, whose intent was never written, must not keep its coins locked until the node
    /// restarts. The pool's node wallet is the pool's: a lock the pool does not hold is not
    /// an operator's to keep.
    fn release_stale_locks(&mut self, _keep: &[&str]) -> Result<usize, WalletError> {
        Ok(0)
    }

    /// The most outputs one payment may pay (a Monero transaction has 16, one of them the
    /// change); a run pays the largest balances first, up to it, and leaves the rest for
    /// the next run.
    fn payment_outputs_max(&self) -> usize {
        super::PAYOUT_OUTPUTS_PER_BATCH_MAX
    }
}

/// Where a payout transaction stands on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// In the active chain, under this many blocks (at least 1).
    Confirmed(u64),
    /// In the mempool.
    InMempool,
    /// Known to the wallet but in neither the chain nor the mempool (evicted, or lost in a
    /// node restart): it can be sent again.
    Dropped,
    /// Double-spent: these transactions spend some of its inputs, and the first of them
    /// to be mined is this many blocks deep (0 while none is mined).
    Conflicted { depth: u64, conflicts: Vec<String> },
    /// Unknown to the node altogether.
    Unknown,
}
