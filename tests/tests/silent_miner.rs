//! A miner that hashes far slower than the difficulty it was given (an ASIC that
//! overstates its hash rate, a miner that suggests more than it can do) sends no share, so
//! vardiff never sees one to act on. After `VARDIFF_SILENT_SHARE_INTERVALS` target
//! intervals without a submission the pool lowers the difficulty by itself and sends the
//! job again, and a share at the lower difficulty is then accepted (issue 17), on a real
//! pool (`otedama run`, synthetic chain, SHA256d). Over Stratum V2, a CPU miner that
//! declares a hash rate hundreds of times its own is brought down by SetTarget until its
//! shares come.

use std::time::{Duration, Instant};

use serde_json::json;

use otedama_kernels::{sha256d, Algorithm, Target};
use otedama_shared::vardiff::{VARDIFF_SILENT_SHARE_INTERVALS, VARDIFF_STEP_FACTOR_MAX};
use otedama_tests::{
    spawn_miner_at, wait_until, StratumTestClient, SyntheticPool, SYNTHETIC_PAYOUT_ADDRESS,
};

const SHARE_INTERVAL_S: u64 = 1;
/// What the miner asks for: more than it will ever send a share at here.
const CLAIMED_DIFFICULTY: f64 = 0.004;

#[test]
fn a_silent_miner_gets_a_lower_difficulty_and_the_job_again() {
    // No new block while the test runs (the synthetic chain makes one every 10 s by
    // default): the share at the end must be on the job the silence sweep sent again, not
    // stale (CI on 7e3e30b saw code 21 here).
    let pool = SyntheticPool::start(&[
        "--vardiff-share-interval-s",
        &SHARE_INTERVAL_S.to_string(),
        "--start-difficulty",
        "0.0001",
        "--synthetic-job-interval-ms",
        "600000",
    ]);
    let worker = format!("{SYNTHETIC_PAYOUT_ADDRESS}.silent");
    let mut client = StratumTestClient::connect(&pool.v1).unwrap();
    client.start(&worker).unwrap();
    // A raise is always taken: the miner now has a target it does not try to meet.
    client
        .send_raw(
            format!(r#"{{"id":50,"method":"mining.suggest_difficulty","params":[{CLAIMED_DIFFICULTY}]}}"#)
                .as_bytes(),
        )
        .unwrap();
    let silent_for = Duration::from_secs(VARDIFF_SILENT_SHARE_INTERVALS * SHARE_INTERVAL_S);
    client.set_read_timeout(silent_for * 4).unwrap();
    while client.difficulty != CLAIMED_DIFFICULTY {
        client.read_message().expect("the raised difficulty");
    }
    let raised_at = Instant::now();
    // No submission: the pool lowers the difficulty by one step, then sends the job again.
    let lowered = loop {
        let message = client
            .read_message()
            .expect("a lower difficulty for a silent miner");
        if message["method"] == "mining.set_difficulty" {
            break message["params"][0].as_f64().unwrap();
        }
    };
    let waited = raised_at.elapsed();
    assert_eq!(lowered, CLAIMED_DIFFICULTY / VARDIFF_STEP_FACTOR_MAX);
    // Silence counts from the raise, in whole seconds, swept once a second.
    assert!(
        waited + Duration::from_secs(1) >= silent_for
            && waited <= silent_for + Duration::from_secs(3),
        "lowered after {waited:?}, silent for {silent_for:?}"
    );
    let next = client.read_message().expect("the job again");
    assert_eq!(next["method"], "mining.notify", "{next}");

    // The lower difficulty applies: a share that meets it but not the claimed one is
    // accepted.
    let job = client.job.clone().expect("a job");
    let extranonce2 = vec![0u8; client.extranonce2_size];
    let (lower, claimed) = (
        Target::from_difficulty(Algorithm::Sha256d, lowered).unwrap(),
        Target::from_difficulty(Algorithm::Sha256d, CLAIMED_DIFFICULTY).unwrap(),
    );
    let mut header = job.header(&client.extranonce1, &extranonce2, job.ntime, job.version);
    let nonce = (0u32..)
        .find(|nonce| {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let hash = sha256d(&header);
            lower.is_met_by(&hash) && !claimed.is_met_by(&hash)
        })
        .unwrap();
    let reply = client
        .submit_nonce(&worker, &extranonce2, nonce, None)
        .unwrap();
    assert_eq!(reply["result"], json!(true), "{reply}");
}

#[test]
fn an_sv2_miner_that_overstates_its_hash_rate_is_brought_down_until_it_finds_shares() {
    let pool = SyntheticPool::start(&["--vardiff-share-interval-s", &SHARE_INTERVAL_S.to_string()]);
    // One CPU thread (about 5 MH/s of SHA256d here, less on a busy machine) declaring
    // 1 GH/s: the first target asks for a share every 200 s or so of its real work.
    let _miner = spawn_miner_at(
        &format!("stratum2+tcp://{}/{}", pool.sv2, pool.authority_key),
        &format!("{SYNTHETIC_PAYOUT_ADDRESS}.overstated"),
        1,
        &["--algo", "sha256d", "--declared-hashrate", "1e9"],
    )
    .unwrap();
    // Each silent period lowers it 4 times: about four of them reach what the miner does
    // here; the wait allows for a miner several times slower (CI on aa29f27 ran out of 12
    // periods at 10 GH/s declared, with the machine busy).
    let periods = 20;
    wait_until(
        Duration::from_secs(periods * VARDIFF_SILENT_SHARE_INTERVALS * SHARE_INTERVAL_S),
        "the overstating miner's shares",
        || pool.stats()["shares_accepted_by_protocol"]["v2"].as_u64() >= Some(3),
    )
    .unwrap();
}
