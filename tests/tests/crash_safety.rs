//! A share the pool acknowledged must survive `kill -9` of the data plane: the ack is sent
//! only after the share log's WAL holds it.

use std::time::Duration;

use serde_json::json;

use otedama_sharelog::writer::read_share_log;
use otedama_tests::{wait_until, PoolSetup, RegtestPair, StratumTestClient};

#[test]
fn acknowledged_shares_survive_kill_9_of_the_data_plane() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let pool = PoolSetup::new(&nodes, &root.path().join("pool"), 0.001);
    let _control = pool.spawn("controlplane")?;
    let mut data = pool.spawn("dataplane")?;
    pool.wait_ready(Duration::from_secs(60))?;

    let worker = format!("{}.crash", pool.payout_address);
    let mut client = StratumTestClient::connect(&pool.stratum_address())?;
    client.start(&worker)?;
    let mut acknowledged = Vec::new();
    let mut counter = 0u32;
    while acknowledged.len() < 12 {
        counter += 1;
        let extranonce2 = counter.to_be_bytes();
        let (reply, nonce) = client.submit_share(&worker, &extranonce2)?;
        if reply["result"] == json!(true) {
            acknowledged.push((extranonce2.to_vec(), nonce));
        } else {
            // On regtest every share is a block, so the job often goes stale under us.
            assert_eq!(reply["error"][0], json!(21), "unexpected refusal: {reply}");
        }
    }
    data.kill_9();

    let stored = read_share_log(&root.path().join("pool").join("shares"))?;
    for (extranonce2, nonce) in &acknowledged {
        let found = stored.iter().any(|record| {
            record.extranonce2 == *extranonce2
                && record.extranonce1 == client.extranonce1
                && record.header[76..80] == nonce.to_le_bytes()
                && record.worker == worker
        });
        assert!(
            found,
            "acknowledged share {} / {nonce:#x} is missing after kill -9",
            hex::encode(extranonce2)
        );
    }

    // The data plane comes back on the same log and keeps appending to it.
    let _data = pool.spawn("dataplane")?;
    wait_until(Duration::from_secs(30), "the data plane to return", || {
        StratumTestClient::connect(&pool.stratum_address())
            .and_then(|mut c| c.start(&worker))
            .is_ok()
    })?;
    Ok(())
}
