//! Otedama's benchmarks and, later, its load generator. Benchmarks print their figures
//! next to a baseline measured in the same run; nothing here asserts on speed.

use std::sync::Arc;

use otedama_shared::job::{AlgorithmName, HexHash, JobTemplate};
use otedama_shared::share::ShareSubmission;
use otedama_shared::Job;

/// A SHA256d job shaped like a mainnet one: a coinbase split around the extranonce and a
/// merkle branch of `merkle_depth` levels.
pub fn sample_sha256d_job(
    coinbase_prefix_bytes: usize,
    coinbase_suffix_bytes: usize,
    merkle_depth: usize,
) -> Arc<Job> {
    let template = JobTemplate {
        job_id: 1,
        height: 800_000,
        prevhash: [3; 32],
        coinbase_prefix: vec![0x11; coinbase_prefix_bytes],
        coinbase_suffix: vec![0x22; coinbase_suffix_bytes],
        merkle_branch: (0..merkle_depth).map(|i| HexHash([i as u8; 32])).collect(),
        version: 0x2000_0000,
        bits: 0x1703_a30c,
        ntime: 1_700_000_000,
        clean_jobs: true,
        algorithm: AlgorithmName::Sha256d,
    };
    Arc::new(Job::new(template).expect("constant bits are valid"))
}

/// A submission for `sample_sha256d_job` that differs only in its nonce.
pub fn sample_submission(nonce: u32) -> ShareSubmission<'static> {
    ShareSubmission {
        extranonce1: &[1, 2, 3, 4],
        extranonce2: &[5, 6, 7, 8],
        ntime: 1_700_000_000,
        nonce,
        version: 0x2000_0000,
    }
}
