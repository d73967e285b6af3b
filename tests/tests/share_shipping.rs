//! The share shipper (issue 20) against a real three-server NATS JetStream cluster: a
//! data-plane process's share log reaches the replicated stream exactly once and in order
//! while one server is killed, waits without acknowledging anything while two are, goes
//! on once they return, and a shipper started again goes on from the stream's last batch
//! without sending any record twice.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use otedama_cluster::{share_subject, ShareShipper, ShipperConfig};
use otedama_shared::ShareRecord;
use otedama_sharelog::writer::ShareLog;
use otedama_tests::nats::{cluster_flags, shipped_records, NatsCluster};
use otedama_tests::{
    metric_value, spawn_miner_at, wait_until, StratumTestClient, SyntheticPool,
    SYNTHETIC_PAYOUT_ADDRESS,
};

const HOST: &str = "dp-a";

fn record(job_id: u64) -> ShareRecord {
    ShareRecord {
        accepted_at_ms: 1,
        job_id,
        height: 2,
        worker: "addr.rig".into(),
        difficulty: 1.0,
        achieved_difficulty: 2.0,
        is_block: false,
        header: [(job_id % 251) as u8; 80],
        extranonce1: vec![1, 2, 3, 4],
        extranonce2: job_id.to_le_bytes().to_vec(),
        protocol: None,
    }
}

/// Appends records whose job ids run over `ids` (the log numbers them from its end).
fn append(log: &ShareLog, ids: std::ops::Range<u64>) {
    let handle = log.handle();
    for id in ids {
        while handle.append(0, &record(id)).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Every record on the process's subject, in stream order: (its number in the log, job id).
fn shipped(urls: &[String], host: &str) -> Vec<(u64, u64)> {
    shipped_records(urls, Some(&share_subject(host, 0)))
        .into_iter()
        .map(|(_, number, record)| (number, record.job_id))
        .collect()
}

#[test]
fn the_share_log_reaches_the_stream_once_and_in_order_through_a_killed_server() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("shares");
    let (completions, _completed) = futures_channel::mpsc::unbounded();
    let log = ShareLog::open(&log_path, false, vec![completions]).unwrap();
    let urls = cluster.urls();
    let config = |tail: &str| ShipperConfig {
        nats_urls: urls.clone(),
        host: HOST.into(),
        process: 0,
        share_log: log_path.clone(),
        tail_dir: dir.path().join(tail),
        replicas: 3,
    };

    append(&log, 0..20_000);
    let shipper = ShareShipper::start(config("tail-1")).unwrap();
    let status = shipper.status();
    wait_until(Duration::from_secs(60), "a first part shipped", || {
        status
            .shipped_through
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5_000
    })
    .unwrap();
    let shipped_through = || status.shipped_through.load(Relaxed);
    // A server of the three dies while batches go; the other two hold the quorum.
    cluster.servers[1].kill_9();
    append(&log, 20_000..30_000);
    wait_until(Duration::from_secs(120), "30,000 shipped", || {
        shipped_through() >= 30_000
    })
    .unwrap();
    // A second one dies: no quorum, nothing is acknowledged, the shipper keeps trying.
    // Down past the acknowledgement timeout, so the batch in flight fails its session
    // whatever the machine's speed (back sooner, its acknowledgement may still arrive).
    cluster.servers[2].kill_9();
    append(&log, 30_000..35_000);
    std::thread::sleep(Duration::from_millis(
        otedama_cluster::shares::SHIP_ACK_TIMEOUT_MS + 2_000,
    ));
    assert_eq!(shipped_through(), 30_000, "acknowledged without a quorum");
    cluster.servers[1].restart().unwrap();
    cluster.servers[2].restart().unwrap();
    wait_until(Duration::from_secs(120), "35,000 shipped", || {
        shipped_through() >= 35_000
    })
    .unwrap();
    assert!(
        status.failed_sessions.load(Relaxed) >= 1,
        "the lost quorum failed a session, which read its place again"
    );
    shipper.stop();

    // A new shipper (a restarted data plane) reads its place from the stream.
    append(&log, 35_000..40_000);
    let again = ShareShipper::start(config("tail-2")).unwrap();
    let status = again.status();
    wait_until(Duration::from_secs(120), "40,000 shipped", || {
        status
            .shipped_through
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 40_000
    })
    .unwrap();
    again.stop();
    log.close();

    let records = shipped(&urls, HOST);
    assert_eq!(records.len(), 40_000, "each record once");
    for (index, (sequence, job_id)) in records.iter().enumerate() {
        assert_eq!(*sequence, index as u64, "in log order, no gap");
        assert_eq!(*job_id, index as u64);
    }
}

/// `otedama run --nats-url … --cluster-host NAME`: every share the pool accepted from a
/// miner reaches the stream, on the data-plane process's subject.
#[test]
fn a_pool_in_cluster_mode_ships_every_accepted_share() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let flags = cluster_flags(&urls, "dp-e2e");
    let pool = SyntheticPool::start(&flags);
    let accepted = || pool.stats()["shares_accepted"].as_u64().unwrap_or(0);
    let mut miner = spawn_miner_at(
        &format!("stratum+tcp://{}", pool.v1),
        &format!("{SYNTHETIC_PAYOUT_ADDRESS}.cluster"),
        1,
        &["--algo", "sha256d"],
    )
    .unwrap();
    wait_until(Duration::from_secs(60), "shares accepted", || {
        accepted() >= 50
    })
    .unwrap();
    miner.terminate();
    // The counters reach the API once a second: wait until they stand still.
    let mut last = accepted();
    loop {
        std::thread::sleep(Duration::from_millis(2_500));
        let now = accepted();
        if now == last {
            break;
        }
        last = now;
    }
    let mut shipped_count = 0;
    wait_until(
        Duration::from_secs(60),
        "every accepted share shipped",
        || {
            shipped_count = shipped(&urls, "dp-e2e").len() as u64;
            shipped_count >= last
        },
    )
    .unwrap();
    assert_eq!(
        shipped_count, last,
        "shipped as many as accepted, none twice"
    );
    // What an operator sees of it (counters reach the API once a second).
    wait_until(Duration::from_secs(10), "the shipper in /metrics", || {
        pool.metrics().is_ok_and(|metrics| {
            metric_value(&metrics, "otedama_share_shipping_planes") == Some(1.0)
                && metric_value(&metrics, "otedama_share_shipping_disconnected") == Some(0.0)
        })
    })
    .unwrap();
    let metrics = pool.metrics().unwrap();
    assert_eq!(
        metric_value(&metrics, "otedama_share_shipping_diverged"),
        Some(0.0)
    );
}

/// A log that lost the stream's last record of it (here: a new, empty data directory
/// under the same host name) would number new shares as the lost ones were; the shipper
/// sees that the log does not hold that record and stops shipping it, so no share is
/// skipped for a number the stream already has. So does a message on the subject that
/// is not a share batch.
#[test]
fn a_log_that_lost_the_streams_last_record_is_not_shipped_over() {
    let cluster = NatsCluster::start(1).unwrap();
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let config = |log: &str, tail: &str| ShipperConfig {
        nats_urls: urls.clone(),
        host: HOST.into(),
        process: 0,
        share_log: dir.path().join(log),
        tail_dir: dir.path().join(tail),
        replicas: 1,
    };
    let (completions, _completed) = futures_channel::mpsc::unbounded();
    let first = ShareLog::open(&dir.path().join("first"), false, vec![completions]).unwrap();
    append(&first, 0..1_000);
    let shipper = ShareShipper::start(config("first", "tail-first")).unwrap();
    let status = shipper.status();
    wait_until(Duration::from_secs(60), "1,000 shipped", || {
        status.shipped_through.load(Relaxed) >= 1_000
    })
    .unwrap();
    shipper.stop();
    first.close();

    let (completions, _completed) = futures_channel::mpsc::unbounded();
    let second = ShareLog::open(&dir.path().join("second"), false, vec![completions]).unwrap();
    append(&second, 5_000..7_000);
    let shipper = ShareShipper::start(config("second", "tail-second")).unwrap();
    let status = shipper.status();
    wait_until(Duration::from_secs(60), "the divergence seen", || {
        status.diverged.load(Relaxed)
    })
    .unwrap();
    shipper.stop();
    second.close();
    // A log with fewer records than the stream (a wiped data directory under the same
    // name) is found out at once, before it could reach those numbers.
    let (completions, _completed) = futures_channel::mpsc::unbounded();
    let empty = ShareLog::open(&dir.path().join("empty"), false, vec![completions]).unwrap();
    let shipper = ShareShipper::start(config("empty", "tail-empty")).unwrap();
    let status = shipper.status();
    wait_until(Duration::from_secs(30), "the shorter log seen", || {
        status.diverged.load(Relaxed)
    })
    .unwrap();
    shipper.stop();
    empty.close();
    let records = shipped(&urls, HOST);
    assert_eq!(records.len(), 1_000, "nothing of the second log shipped");
    assert!(records.iter().all(|(sequence, job_id)| sequence == job_id));

    // A stray message on the subject.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(otedama_cluster::server_addresses(&urls).unwrap())
            .await
            .unwrap();
        let context = async_nats::jetstream::new(client);
        context
            .publish(share_subject(HOST, 0), "not a batch".into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let shipper = ShareShipper::start(config("first", "tail-third")).unwrap();
    let status = shipper.status();
    wait_until(Duration::from_secs(60), "the stray message refused", || {
        status.diverged.load(Relaxed)
    })
    .unwrap();
    assert_eq!(status.batches.load(Relaxed), 0);
}

/// A host whose share log lost what it had shipped (its data directory's log wiped, the
/// host started again under its name) takes no miner: the shares it would acknowledge
/// could never be shipped, and in cluster mode only shipped shares are counted.
#[test]
fn a_pool_whose_log_lost_shipped_shares_takes_no_miner() {
    let cluster = NatsCluster::start(1).unwrap();
    let urls = cluster.urls();
    let mut flags = cluster_flags(&urls, "dp-w");
    flags.extend(["--share-stream-replicas", "1"]);
    let pool = SyntheticPool::start(&flags);
    let accepted = || pool.stats()["shares_accepted"].as_u64().unwrap_or(0);
    let mut miner = spawn_miner_at(
        &format!("stratum+tcp://{}", pool.v1),
        &format!("{SYNTHETIC_PAYOUT_ADDRESS}.wiped"),
        1,
        &["--algo", "sha256d"],
    )
    .unwrap();
    wait_until(Duration::from_secs(60), "shares accepted", || {
        accepted() >= 20
    })
    .unwrap();
    miner.terminate();
    wait_until(Duration::from_secs(60), "shares shipped", || {
        shipped(&urls, "dp-w").len() >= 20
    })
    .unwrap();

    let otedama_tests::SyntheticPool {
        mut process,
        data_dir,
        ..
    } = pool;
    process.kill_9();
    std::fs::remove_dir_all(data_dir.path().join("shares")).unwrap();
    let pool = SyntheticPool::start_in(data_dir, &flags);
    let refused = |pool: &SyntheticPool| {
        let mut client = StratumTestClient::connect(&pool.v1).unwrap();
        client.set_read_timeout(Duration::from_secs(5)).unwrap();
        client
            .start(&format!("{SYNTHETIC_PAYOUT_ADDRESS}.again"))
            .is_err()
    };
    wait_until(Duration::from_secs(30), "new miners refused", || {
        refused(&pool)
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(refused(&pool), "still refused");
    wait_until(
        Duration::from_secs(10),
        "the divergence in /metrics",
        || {
            pool.metrics().is_ok_and(|metrics| {
                metric_value(&metrics, "otedama_share_shipping_diverged") == Some(1.0)
            })
        },
    )
    .unwrap();
}

/// The extranonce2 of every record on the process's subject (a share's own mark here).
fn shipped_extranonce2s(urls: &[String], host: &str) -> Vec<Vec<u8>> {
    shipped_records(urls, Some(&share_subject(host, 0)))
        .into_iter()
        .map(|(_, _, record)| record.extranonce2)
        .collect()
}

/// `--share-ack replicated`: a miner hears `true` only once the replicated stream holds
/// its share. Each share is looked for in the stream right after its `true`; with two of
/// the three servers killed (no quorum) a share gets no answer at all, and its `true`
/// comes once they are back, with the share in the stream.
#[test]
fn a_replicated_acknowledgement_waits_for_the_stream() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let mut flags = cluster_flags(&urls, "dp-r");
    flags.extend(["--share-ack", "replicated"]);
    let pool = SyntheticPool::start(&flags);
    let worker = format!("{SYNTHETIC_PAYOUT_ADDRESS}.replicated");
    let mut client = StratumTestClient::connect(&pool.v1).unwrap();
    client.set_read_timeout(Duration::from_secs(60)).unwrap();
    client.start(&worker).unwrap();

    for index in 0u32..10 {
        let extranonce2 = index.to_be_bytes();
        let nonce = client.mine_sha256d(&extranonce2);
        let reply = client
            .submit_nonce(&worker, &extranonce2, nonce, None)
            .unwrap();
        assert_eq!(reply["result"], serde_json::json!(true), "{reply}");
        assert!(
            shipped_extranonce2s(&urls, "dp-r").contains(&extranonce2.to_vec()),
            "share {index} was acknowledged before the stream held it"
        );
    }

    // No quorum: the share is stored on the host, but not acknowledged.
    cluster.servers[1].kill_9();
    cluster.servers[2].kill_9();
    let extranonce2 = 1000u32.to_be_bytes();
    let nonce = client.mine_sha256d(&extranonce2);
    // Not long: without a quorum the host's lease is not renewed either, and it closes
    // its miners once the lease lapses (`HOST_LEASE_HELD_MS`, 15 s after the last
    // renewal), which the servers' return and elections must come well within.
    client.set_read_timeout(Duration::from_secs(3)).unwrap();
    let unanswered = client.submit_nonce(&worker, &extranonce2, nonce, None);
    assert!(
        unanswered.is_err(),
        "answered without a quorum: {unanswered:?}"
    );
    cluster.servers[1].restart().unwrap();
    cluster.servers[2].restart().unwrap();
    client.set_read_timeout(Duration::from_secs(90)).unwrap();
    let reply = loop {
        let message = client.read_message().unwrap();
        if message.get("result").is_some() && !message["id"].is_null() {
            break message;
        }
    };
    assert_eq!(reply["result"], serde_json::json!(true), "{reply}");
    assert!(
        shipped_extranonce2s(&urls, "dp-r").contains(&extranonce2.to_vec()),
        "the share held through the outage was acknowledged before the stream held it"
    );
    wait_until(
        Duration::from_secs(10),
        "the replicate stage in /metrics",
        || {
            pool.metrics().is_ok_and(|metrics| {
                metric_value(
                    &metrics,
                    "otedama_share_ack_stage_seconds_count{stage=\"replicate\"}",
                )
                .is_some_and(|count| count >= 11.0)
            })
        },
    )
    .unwrap();
}

/// `share_ack = "replicated"` without cluster mode has no stream to wait for: refused at
/// start with the reason.
#[test]
fn replicated_acknowledgements_need_cluster_mode() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(otedama_tests::otedama_binary())
        .args(["run", "--chain", "synthetic", "--coin", "bitcoin"])
        .args([
            "--network",
            "regtest",
            "--payout-address",
            SYNTHETIC_PAYOUT_ADDRESS,
        ])
        .args(["--share-ack", "replicated", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs cluster mode"), "{stderr}");
}
