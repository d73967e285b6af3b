//! A full disk under a running pool (`otedama run`, synthetic Litecoin chain) whose share
//! log is on a size-limited tmpfs: shares are refused with Stratum error 20 and never
//! acknowledged, `/health` answers 503 saying the share log cannot write, and once space
//! returns the pool takes shares again and reports healthy, by itself. Small memtables
//! (`--share-log-memtable-mib 1`) keep RocksDB's WAL preallocation small, so the disk's
//! end is reached after a few thousand shares. Mounting needs root (CAP_SYS_ADMIN);
//! without it the test fails and says so.

use std::time::{Duration, Instant};

use serde_json::json;

use otedama_sharelog::test_support::SmallDisk;
use otedama_tests::{wait_until, StratumTestClient, SyntheticPool, SYNTHETIC_LITECOIN_ADDRESS};

/// Room for RocksDB's first files and its preallocated WAL, and little more.
const SHARE_DISK_BYTES: usize = 16 << 20;
/// Shares a full disk must refuse within.
const SHARES_BEFORE_REFUSAL_MAX: u32 = 200_000;

#[test]
fn a_full_disk_refuses_shares_reports_unhealthy_and_recovers_by_itself() {
    let data_dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(data_dir.path().join("shares"), SHARE_DISK_BYTES);
    // Every nonce a share, and vardiff off: the test's one thread makes shares quickly.
    let pool = SyntheticPool::start_litecoin_in(
        data_dir,
        &[
            "--difficulty-min",
            "1e-9",
            "--start-difficulty",
            "1e-9",
            "--vardiff-share-interval-s",
            "0",
            "--share-log-memtable-mib",
            "1",
        ],
    );
    let worker = format!("{SYNTHETIC_LITECOIN_ADDRESS}.disk");
    let mut miner = StratumTestClient::connect(&pool.v1).unwrap();
    miner.start(&worker).unwrap();
    let mut extranonce2 = 0u64;
    let mut submit = |miner: &mut StratumTestClient| {
        extranonce2 += 1;
        let bytes = extranonce2.to_be_bytes();
        let size = miner.extranonce2_size;
        let (reply, _) = miner
            .submit_share(&worker, &bytes[bytes.len() - size..])
            .unwrap();
        reply
    };
    let reply = submit(&mut miner);
    assert_eq!(reply["result"], json!(true), "{reply}");
    assert_eq!(pool.health().unwrap().0, 200);

    let filler = disk.fill();
    let started = Instant::now();
    let mut submitted = 0u32;
    let refused = loop {
        let reply = submit(&mut miner);
        submitted += 1;
        if reply["result"] != json!(true) {
            break reply;
        }
        assert!(
            submitted < SHARES_BEFORE_REFUSAL_MAX,
            "a full disk refused none of {submitted} shares in {:?}",
            started.elapsed()
        );
    };
    // Refused with error 20, never acknowledged.
    assert_eq!(refused["result"], json!(null), "{refused}");
    assert_eq!(refused["error"][0], json!(20), "{refused}");
    wait_until(
        Duration::from_secs(10),
        "/health to report the share log",
        || {
            pool.health().is_ok_and(|(status, body)| {
                status == 503 && body.contains("share log cannot write")
            })
        },
    )
    .unwrap();
    let reply = submit(&mut miner);
    assert_ne!(
        reply["result"],
        json!(true),
        "acknowledged on a full disk: {reply}"
    );

    std::fs::remove_file(filler).unwrap();
    wait_until(Duration::from_secs(30), "a share taken again", || {
        submit(&mut miner)["result"] == json!(true)
    })
    .unwrap();
    wait_until(Duration::from_secs(10), "/health healthy again", || {
        pool.health().is_ok_and(|(status, _)| status == 200)
    })
    .unwrap();
    // The pool stops before its share log's disk goes.
    drop(pool);
    drop(disk);
}
