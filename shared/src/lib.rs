//! Otedama's protocol types and codecs, shared by the data plane, the control plane and
//! the clients (CPU miner, load generator).
//!
//! Everything here is sans-IO: sessions take bytes, events and `now`, and return bytes to
//! send and events for the rest of the pool. Nothing in this crate opens a socket, reads a
//! clock or spawns a thread, so every protocol rule is testable with plain byte vectors.

pub mod address;
pub mod bans;
pub mod hex32;
pub mod ipc;
pub mod job;
pub mod limits;
pub mod share;
pub mod sv1;
pub mod sv2;
pub mod vardiff;
pub mod work;

pub use job::{Job, JobBook, JobLookup};
pub use share::{DuplicateFilter, ShareRecord};
