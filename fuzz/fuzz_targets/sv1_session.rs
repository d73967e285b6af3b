//! The Stratum V1 session on arbitrary lines from a miner: subscribe, authorize, submit or
//! garbage, in any order. It answers or refuses; it never panics.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use otedama_kernels::Algorithm;
use otedama_shared::job::{AlgorithmName, HexHash, JobTemplate};
use otedama_shared::sv1::{Session, SessionConfig};
use otedama_shared::{DuplicateFilter, Job, JobBook};

fn jobs() -> JobBook {
    let template = JobTemplate {
        job_id: 1,
        height: 431,
        prevhash: [0x11; 32],
        coinbase_prefix: hex::decode("02000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0e02af01").unwrap(),
        coinbase_suffix: hex::decode("ffffffff0100f2052a01000000160014000000000000000000000000000000000000000000000000").unwrap(),
        merkle_branch: vec![HexHash([0x22; 32])],
        version: 0x2000_0000,
        bits: 0x207f_ffff,
        ntime: 1_700_000_000,
        clean_jobs: true,
        algorithm: AlgorithmName::Sha256d,
    };
    let mut book = JobBook::default();
    book.insert(Arc::new(Job::new(template).unwrap()));
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
