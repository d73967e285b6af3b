//! The block template the session tests and the fuzz targets share: height 431, a
//! two-level merkle branch, regtest bits, SHA256d.

use otedama_shared::job::{AlgorithmName, HexHash, JobTemplate};

pub fn template(job_id: u64, clean_jobs: bool) -> JobTemplate {
    JobTemplate {
        job_id,
        height: 431,
        prevhash: [0x11; 32],
        coinbase_prefix: hex::decode("02000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0e02af01").unwrap(),
        coinbase_suffix: hex::decode("ffffffff0100f2052a01000000160014000000000000000000000000000000000000000000000000").unwrap(),
        merkle_branch: vec![HexHash([0x22; 32]), HexHash([0x33; 32])],
        version: 0x2000_0000,
        bits: 0x207f_ffff,
        ntime: 1_700_000_000,
        clean_jobs,
        algorithm: AlgorithmName::Sha256d,
    }
}
