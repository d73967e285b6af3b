//! No share is credited twice across a data-plane restart. The duplicate filter lives in
//! memory and starts empty, so a data plane that served again, after a restart, a job it
//! served before would take again every share sent on it before (a miner that gets its
//! former extranonce1 back, by opening connections until it does, replays them all). A
//! restarted data plane therefore refuses the jobs it may have served before, and the
//! control plane sends it a new one at once, whose coinbase carries its own id (checked
//! in `otedama_chain::jobs::builder`'s tests: the synthetic chain's tag differs per job
//! anyway).
//!
//! Real processes: a control plane and a data plane on one host (the synthetic chain),
//! the data plane killed with SIGKILL and started again on its data directory.

use std::time::Duration;

use serde_json::json;

use otedama_tests::{
    history_shares, spawn_synthetic_controlplane, spawn_synthetic_dataplane, wait_until,
    StratumTestClient, EASY_SHARE_FLAGS, SYNTHETIC_PAYOUT_ADDRESS,
};

#[test]
fn a_restarted_data_plane_takes_no_share_again_on_a_job_it_served_before() {
    let dir = tempfile::tempdir().unwrap();
    let (_controlplane, api_port) = spawn_synthetic_controlplane(dir.path(), &EASY_SHARE_FLAGS);
    let (mut dataplane, v1) = spawn_synthetic_dataplane(dir.path(), &EASY_SHARE_FLAGS);
    let worker = format!("{SYNTHETIC_PAYOUT_ADDRESS}.replay");

    // One share taken before the restart.
    let mut before = StratumTestClient::connect(&v1).unwrap();
    before.start(&worker).unwrap();
    let served = before.job.clone().unwrap();
    let extranonce2 = vec![7u8; before.extranonce2_size];
    let nonce = before.mine_sha256d(&extranonce2);
    let reply = before
        .submit_nonce(&worker, &extranonce2, nonce, None)
        .unwrap();
    assert_eq!(reply["result"], json!(true), "{reply}");
    wait_until(Duration::from_secs(30), "the share in the history", || {
        history_shares(api_port) == Some(1)
    })
    .unwrap();

    dataplane.kill_9();
    let (_dataplane, v1) = spawn_synthetic_dataplane(dir.path(), &EASY_SHARE_FLAGS);
    let mut after = StratumTestClient::connect(&v1).unwrap();
    after.set_read_timeout(Duration::from_secs(20)).unwrap();
    // The job comes at once, not at the synthetic chain's next block (a minute away).
    after.start(&worker).unwrap();
    let fresh = after.job.clone().unwrap();
    assert_ne!(
        fresh.job_id, served.job_id,
        "the restarted data plane serves a new job, not the one it served before"
    );
    assert_eq!(fresh.prevhash, served.prevhash, "of the same block");
    // The share taken before, sent again on the job it was found on: the job is not
    // served any more.
    let replay = after
        .request(
            "mining.submit",
            json!([
                worker,
                served.job_id,
                hex::encode(&extranonce2),
                format!("{:08x}", served.ntime),
                format!("{nonce:08x}")
            ]),
        )
        .unwrap();
    assert_eq!(replay["result"], json!(null), "{replay}");
    assert_eq!(replay["error"][0], json!(21), "job not found: {replay}");
    // The new job takes shares; the history holds the first share and this one only.
    let nonce = after.mine_sha256d(&extranonce2);
    let reply = after
        .submit_nonce(&worker, &extranonce2, nonce, None)
        .unwrap();
    assert_eq!(
        reply["result"],
        json!(true),
        "a share on the new job: {reply}"
    );
    wait_until(
        Duration::from_secs(30),
        "the second share in the history",
        || history_shares(api_port) == Some(2),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(history_shares(api_port), Some(2));
}
