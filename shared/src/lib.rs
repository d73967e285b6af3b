//! Otedama's protocol types and codecs, shared by the data plane, the control plane and
//! the clients (CPU miner, load generator).
//!
//! Everything here is sans-IO: sessions take bytes, events and `now`, and return bytes to
//! send and events for the rest of the pool. Nothing in this crate opens a socket, reads a
//! clock or spawns a thread, so every protocol rule is testable with plain byte vectors.

// The fuzz harness includes the test fixture, which names this crate by its name.
#[cfg(any(test, feature = "fuzz-harness"))]
extern crate self as otedama_shared;

pub mod address;
pub mod bans;
pub mod clock;
pub mod duplicates;
pub mod error_code;
#[cfg(any(test, feature = "fuzz-harness"))]
pub mod fuzz_harness;
pub mod hex32;
pub mod http_path;
pub mod ipc;
pub mod job;
pub mod limits;
pub mod monero;
pub mod pow_batch;
pub mod share;
mod share_set;
pub mod sv1;
pub mod sv2;
pub mod vardiff;
pub mod work;

pub use job::{Job, JobBook, JobLookup};
pub use share::{DuplicateFilter, Protocol, ShareRecord};
