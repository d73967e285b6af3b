//! The payout thread (`runner`): it drives the ledger crate (`otedama_ledger`) from the
//! share logs, the block store and the node wallet, and answers the admin API.

pub mod runner;
#[cfg(test)]
mod simulation;
