//! The Monero Stratum session: see `otedama_shared::fuzz_harness::monero_session`, which `cargo test` also replays
//! every committed input through.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| otedama_shared::fuzz_harness::monero_session(data));
