//! The Stratum V1 session on arbitrary lines from a miner: subscribe, authorize, submit or
//! garbage, in any order. It answers or refuses; it never panics. The difficulty is below
//! 2^-32, where every nonce is a share, so submissions reach acceptance, duplicates,
//! acknowledgement and vardiff (seeds in `fuzz/seeds/sv1_session`).

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
        start_difficulty: 1e-10,
        difficulty_min: 1e-10,
        version_rolling_mask: 0x1fff_e000,
        algorithm: Algorithm::Sha256d,
        vardiff: Some(otedama_shared::vardiff::VardiffConfig {
            difficulty_min: 1e-10,
            ..Default::default()
        }),
        batch_scrypt: false,
        payout_address_rule: None,
        bans: Default::default(),
    });
    for (index, line) in data.split(|b| *b == b'\n').enumerate() {
        // Time moves on a second a line, so vardiff's windows turn over.
        let now_s = 1_700_000_000 + index as u64;
        let outcome = session.handle_line(line, now_s, &jobs, &mut duplicates);
        if let otedama_shared::sv1::Outcome::ShareAccepted(share) = outcome {
            session.handle_share_durable(&share.request_id, now_s, &jobs);
        }
        let _ = session.poll_transmit();
    }
});
