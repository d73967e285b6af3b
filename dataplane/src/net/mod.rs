//! Network front ends: the glue between sockets and the sans-IO protocol sessions.

pub mod quic;
pub mod sv1;
pub mod sv2;
pub mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
