//! Otedama's control plane: the process that owns the pool's relationship with the chain.
//!
//! It wires the chain crate's parts into long-running tasks (templates to jobs for the
//! data plane, winning shares to blocks, blocks to payouts), and serves the HTTP API and
//! Prometheus metrics. It never validates shares itself and never holds a miner
//! connection; that is the data plane's work.

// The OpenAPI document is one `json!` literal, deeper than the default limit allows.
#![recursion_limit = "256"]

pub mod api;
pub mod audit;
pub mod backup;
pub mod bans;
pub mod config;
pub mod dex;
pub mod events;
pub mod hashrate_history;
pub mod ipc;
pub mod metrics;
pub mod payouts;
pub mod regtest;
pub mod service;
pub mod stats;
pub mod tasks;

/// Whether this build carries the crash-test hook (`fault-injection`, turned on only by the
/// end-to-end tests): the `otedama` binary warns at every start when it does.
pub const FAULT_INJECTION_BUILT: bool = cfg!(feature = "fault-injection");
