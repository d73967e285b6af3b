//! Payouts: how a found block's reward is divided (schemes), kept as integers to the unit.
//! The ledger, the block lifecycle and payments build on this (issue 4, in progress).

pub mod ledger;
pub mod lifecycle;
pub mod schemes;
