//! Jobs for tests here and in the crates that use this one (feature `test-support`).

use otedama_shared::job::{AlgorithmName, HexHash, JobTemplate};

use super::BuiltJob;

/// A job with id `job_id` and one transaction, for tests.
pub fn job(job_id: u64) -> BuiltJob {
    BuiltJob {
        job: JobTemplate {
            job_id,
            height: 7,
            prevhash: [3; 32],
            coinbase_prefix: vec![1, 2],
            coinbase_suffix: vec![3],
            merkle_branch: vec![HexHash([4; 32])],
            version: 0x2000_0000,
            bits: 0x207f_ffff,
            ntime: 1_700_000_000,
            clean_jobs: true,
            algorithm: AlgorithmName::Scrypt,
        },
        transactions: vec![vec![9, 9, 9]],
        txids: vec![[5; 32]],
        has_witness_commitment: true,
        mweb: Some(vec![8]),
        coinbase_value: 5_000_000_000,
    }
}
