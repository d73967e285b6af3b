//! The control plane's long-running work, one file per concern; `service` starts it and
//! wires the threads together.

pub mod backups;
pub mod blocks;
pub mod compliance;
pub mod hashrate;
pub mod payouts;
pub mod templates;
