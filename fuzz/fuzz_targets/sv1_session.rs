//! The Stratum V1 session: see `otedama_shared::fuzz_harness::sv1_session`, which `cargo test` also replays
//! every committed input through.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| otedama_shared::fuzz_harness::sv1_session(data));
