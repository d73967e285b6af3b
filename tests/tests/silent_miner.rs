//! A miner that hashes far slower than the difficulty it was given (an ASIC that
//! overstates its hash rate, a miner that suggests more than it can do) sends no share, so
//! vardiff never sees one to act on. After `VARDIFF_SILENT_SHARE_INTERVALS` target
//! intervals without a share the pool lowers the difficulty by itself and sends the job
//! again so that it applies (issue 17), on a real pool (`otedama run`, synthetic chain).

use std::time::{Duration, Instant};

use otedama_shared::vardiff::{VARDIFF_SILENT_SHARE_INTERVALS, VARDIFF_STEP_FACTOR_MAX};
use otedama_tests::{StratumTestClient, SyntheticPool, SYNTHETIC_PAYOUT_ADDRESS};

const SHARE_INTERVAL_S: u64 = 1;
const CLAIMED_DIFFICULTY: f64 = 1_000_000.0;

#[test]
fn a_silent_miner_gets_a_lower_difficulty_and_the_job_again() {
    let pool = SyntheticPool::start(&["--vardiff-share-interval-s", &SHARE_INTERVAL_S.to_string()]);
    let mut client = StratumTestClient::connect(&pool.v1).unwrap();
    client
        .start(&format!("{SYNTHETIC_PAYOUT_ADDRESS}.silent"))
        .unwrap();
    // A raise is always taken: the miner now has a target it will never meet here.
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
    // No share: the pool lowers the difficulty by one step, then sends the job again.
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
    // The window began with the first job, a moment before the raise; the sweep runs
    // every second.
    assert!(
        waited <= silent_for + Duration::from_secs(2),
        "lowered after {waited:?}"
    );
    let next = client.read_message().expect("the job again");
    assert_eq!(next["method"], "mining.notify", "{next}");
}
