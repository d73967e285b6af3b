//! The per-core bound on scrypt shares waiting for the hasher
//! (`SHARES_AWAITING_POW_PER_CORE_MAX`), at its edge, on a real pool (`otedama run` on the
//! synthetic chain, Litecoin, one core): more connections than the bound can hold flood
//! shares at once. The core's queue fills to the bound exactly and never past it, the
//! readers wait instead, and every share is still answered.

use std::time::Duration;

use serde_json::json;

use otedama_dataplane::net::wire::SHARES_AWAITING_ACK_PER_CONNECTION_MAX;
use otedama_dataplane::rt::SHARES_AWAITING_POW_PER_CORE_MAX;
use otedama_sharelog::writer::SHARES_AWAITING_DURABILITY_PER_CORE_MAX;
use otedama_tests::{metric_value, wait_until, StratumTestClient, SyntheticPool};

#[test]
fn the_scrypt_queue_fills_to_its_bound_and_every_share_is_answered() {
    // Twice the bound in flight if nothing held the readers back.
    let connections = 2 * SHARES_AWAITING_POW_PER_CORE_MAX / SHARES_AWAITING_ACK_PER_CONNECTION_MAX;
    let shares_per_connection = SHARES_AWAITING_ACK_PER_CONNECTION_MAX + 44;
    let pool = SyntheticPool::start_litecoin(&["--cores", "0"]);
    let worker = format!("{}.flood", otedama_tests::SYNTHETIC_LITECOIN_ADDRESS);
    let mut clients: Vec<StratumTestClient> = (0..connections)
        .map(|_| {
            let mut client = StratumTestClient::connect(&pool.v1).unwrap();
            client.start(&worker).unwrap();
            client
        })
        .collect();
    // Each connection's shares in one write (any nonce: most miss the target, and every
    // one is hashed), every connection before reading any answer.
    for (index, client) in clients.iter_mut().enumerate() {
        let job = client.job.as_ref().expect("a job");
        let (job_id, ntime) = (job.job_id.clone(), format!("{:08x}", job.ntime));
        let extranonce2 = "00".repeat(client.extranonce2_size);
        let mut flood = Vec::new();
        for share in 0..shares_per_connection {
            let line = json!({
                "id": 1_000 + share,
                "method": "mining.submit",
                "params": [worker, job_id, extranonce2, ntime, format!("{:08x}", index * 100_000 + share)],
            });
            flood.extend_from_slice(line.to_string().as_bytes());
            flood.push(b'\n');
        }
        client.send_raw(&flood).unwrap();
    }
    for client in &mut clients {
        client.set_read_timeout(Duration::from_secs(60)).unwrap();
        let mut answered = std::collections::BTreeSet::new();
        while answered.len() < shares_per_connection {
            let message = client.read_message().expect("every share is answered");
            if let Some(id) = message["id"].as_u64().filter(|id| *id >= 1_000) {
                assert!(answered.insert(id), "share {id} answered twice");
            }
        }
    }
    let sample = "otedama_dataplane_pow_queued_peak";
    let mut peak = None;
    // Each core publishes its peaks once a second, and the control plane reads them on
    // its own period: wait for the flood's peak to show, then check it is exactly the bound.
    let _ = wait_until(Duration::from_secs(10), "the counters to come up", || {
        peak = pool.metrics().ok().and_then(|m| metric_value(&m, sample));
        peak.is_some_and(|p| p >= SHARES_AWAITING_POW_PER_CORE_MAX as f64)
    });
    assert_eq!(
        peak,
        Some(SHARES_AWAITING_POW_PER_CORE_MAX as f64),
        "the queue reached its bound and never passed it"
    );
    // Queued scrypt shares hold their place under the durability bound too.
    let metrics = pool.metrics().unwrap();
    let durability = metric_value(&metrics, "otedama_dataplane_durability_queued_peak").unwrap();
    assert!(
        durability >= SHARES_AWAITING_POW_PER_CORE_MAX as f64
            && durability <= SHARES_AWAITING_DURABILITY_PER_CORE_MAX as f64,
        "durability peak {durability}"
    );
}
