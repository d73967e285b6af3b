//! Payouts: found blocks and shares become integer balances in the ledger (schemes,
//! lifecycle, shares), and mature balances become batched wallet payments that are paid
//! exactly once (payments), driven by one thread (runner).

pub mod ledger;
pub mod lifecycle;
pub mod payments;
pub mod runner;
pub mod schemes;
pub mod shares;
#[cfg(test)]
mod simulation;
