//! The credit rule on a running pool, over real sockets (issue 15, point 1): a Stratum V1
//! miner that asks for a difficulty eight times higher after its first job and keeps
//! mining at the old one must earn what an honest miner earns per hash, not about twice.
//! Both mine real SHA256d shares on the synthetic chain; their credit is read back from
//! the share log the data plane wrote.

use std::collections::HashMap;

use serde_json::json;

use otedama_kernels::{sha256d, Algorithm, Target};
use otedama_tests::{StratumTestClient, SyntheticPool, SYNTHETIC_PAYOUT_ADDRESS};

/// 2^-29: about one SHA256d hash in eight meets it.
const BASE_DIFFICULTY: f64 = 1.0 / (1u64 << 29) as f64;
const RAISE_FACTOR: f64 = 8.0;
const HASHES_PER_MINER: u32 = 240_000;

/// Hashes `HASHES_PER_MINER` nonces on the client's job and submits every one that meets
/// `submit_difficulty`. Returns the hashes done.
fn mine(client: &mut StratumTestClient, worker: &str, submit_difficulty: f64) -> u64 {
    let target = Target::from_difficulty(Algorithm::Sha256d, submit_difficulty).unwrap();
    let job = client.job.clone().expect("a job");
    let extranonce2 = vec![0u8; client.extranonce2_size];
    let mut header = job.header(&client.extranonce1, &extranonce2, job.ntime, job.version);
    for nonce in 0..HASHES_PER_MINER {
        header[76..80].copy_from_slice(&nonce.to_le_bytes());
        if !target.is_met_by(&sha256d(&header)) {
            continue;
        }
        let params = json!([
            worker,
            job.job_id,
            hex::encode(&extranonce2),
            format!("{:08x}", job.ntime),
            format!("{nonce:08x}")
        ]);
        let reply = client.request("mining.submit", params).expect("a reply");
        // Refusals are expected for the attacker after the grace (low difficulty, 23);
        // a stale job would spoil the comparison.
        assert_ne!(reply["error"][0], json!(21), "{reply}");
    }
    HASHES_PER_MINER as u64
}

#[test]
fn raising_the_difficulty_and_mining_low_earns_no_more_than_honest_work() {
    let pool = SyntheticPool::start(&[
        "--cores",
        "0",
        "--start-difficulty",
        &BASE_DIFFICULTY.to_string(),
        "--difficulty-min",
        "1e-10",
        "--vardiff-share-interval-s",
        "0",
        "--synthetic-job-interval-ms",
        "3600000",
    ]);
    let honest_worker = format!("{SYNTHETIC_PAYOUT_ADDRESS}.honest");
    let attacker_worker = format!("{SYNTHETIC_PAYOUT_ADDRESS}.attacker");

    let mut honest = StratumTestClient::connect(&pool.v1).unwrap();
    honest.start(&honest_worker).unwrap();
    assert_eq!(honest.difficulty, BASE_DIFFICULTY);
    let honest_hashes = mine(&mut honest, &honest_worker, BASE_DIFFICULTY);

    let mut attacker = StratumTestClient::connect(&pool.v1).unwrap();
    attacker.start(&attacker_worker).unwrap();
    let reply = attacker
        .request(
            "mining.suggest_difficulty",
            json!([BASE_DIFFICULTY * RAISE_FACTOR]),
        )
        .unwrap();
    assert_eq!(reply["result"], json!(true));
    let attacker_hashes = mine(&mut attacker, &attacker_worker, BASE_DIFFICULTY);

    drop((honest, attacker));
    let mut pool = pool;
    pool.process.terminate();
    let records =
        otedama_sharelog::writer::read_share_log(&pool.data_dir.path().join("shares")).unwrap();
    let mut credit: HashMap<String, f64> = HashMap::new();
    for record in &records {
        *credit.entry(record.worker.clone()).or_default() += record.difficulty;
    }
    let per_hash =
        |worker: &str, hashes: u64| credit.get(worker).copied().unwrap_or(0.0) / hashes as f64;
    let honest_rate = per_hash(&honest_worker, honest_hashes);
    let attacker_rate = per_hash(&attacker_worker, attacker_hashes);
    let expected = Algorithm::Sha256d.difficulty_one().to_f64() / 2f64.powi(256);
    println!(
        "credit per hash over the promise: honest {:.4}, attacker {:.4} ({} shares stored)",
        honest_rate / expected,
        attacker_rate / expected,
        records.len()
    );
    assert!(
        (honest_rate / expected - 1.0).abs() < 0.05,
        "the honest miner is credited {} of its work",
        honest_rate / expected
    );
    let ratio = attacker_rate / honest_rate;
    assert!(
        (ratio - 1.0).abs() < 0.1,
        "the attacker earns {ratio} times the honest miner's credit per hash"
    );
}
