//! The wall clock, read in one place. The sans-IO logic takes `now` as an argument; the
//! glue around it asks here. A clock before 1970 reads as 0 rather than failing: every
//! user guards order with its own floor (the share log's stamps, the ledger's events),
//! not with the system clock.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub fn now_s() -> u64 {
    since_epoch().as_secs()
}

pub fn now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

pub fn now_us() -> u64 {
    since_epoch().as_micros() as u64
}
