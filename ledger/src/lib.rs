//! The pool's money: found blocks and shares become integer balances (`schemes`,
//! `lifecycle`, `shares`), kept in a RocksDB ledger that conserves every unit (`ledger`),
//! and mature balances become batched payments, each paid exactly once, through a
//! `payments::Wallet` the caller supplies. Amounts are exact integers of the coin's
//! smallest unit, written and read as coins by `amount`.
//!
//! Sans-IO apart from the ledger's own database: no async runtime, no HTTP, no node RPC
//! (the control plane's payout thread drives it and implements `Wallet` over the node).

pub mod amount;
pub mod ledger;
pub mod lifecycle;
pub mod payments;
pub mod schemes;
pub mod shares;

pub use amount::Amount;

// RocksDB's C++ runtime comes with the share log crate (its build script).
use otedama_sharelog as _;
