//! The payout thread (`runner`): it drives the ledger crate (`otedama_ledger`) from the
//! share logs, the block store and the node wallet, and answers the admin API.

mod credit;
pub mod runner;

pub use credit::BLOCK_SHARE_WAIT_MS;
#[cfg(test)]
mod simulation;
