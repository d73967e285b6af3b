//! The Stratum V1 session on arbitrary lines from a miner: subscribe, authorize, submit or
//! garbage, in any order. It answers or refuses; it never panics.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use otedama_kernels::Algorithm;
use otedama_shared::sv1::{Session, SessionConfig};
use otedama_shared::{DuplicateFilter, Job, JobBook};

#[path = "../../shared/tests/common/job_template.rs"]
mod job_template;

fn jobs() -> JobBook {
    let mut book = JobBook::default();
    book.insert(Arc::new(Job::new(job_template::template(1, true)).unwrap()));
    book
}

fuzz_target!(|data: &[u8]| {
    let jobs = jobs();
    let mut duplicates = DuplicateFilter::default();
    let mut session = Session::new(SessionConfig {
        extranonce1: vec![0xde, 0xad, 0xbe, 0xef],
        extranonce2_size: 4,
        start_difficulty: 1e-6,
        difficulty_min: 1e-9,
        version_rolling_mask: 0x1fff_e000,
        algorithm: Algorithm::Sha256d,
        vardiff: None,
        batch_scrypt: false,
        payout_address_rule: None,
        bans: Default::default(),
    });
    for line in data.split(|b| *b == b'\n') {
        let _ = session.handle_line(line, 1_700_000_000, &jobs, &mut duplicates);
        let _ = session.poll_transmit();
    }
});
