//! An upgrade under load: `otedama run` gets SIGHUP while `otedama-loadgen` keeps 300 V1
//! miners and 60 V2 (Noise) miners submitting, twice in a row. Each time the data plane's
//! replacement starts in the process's other share-log slot, accepts, and the old process
//! hands its miners over (`client.reconnect` over V1, Reconnect over V2) and exits. From
//! the miners' side: no connection refused, no error, every miner reconnected; from the
//! pool's side: every share a V1 miner heard `true` for is in one of the two share logs.
//! QUIC miners are not in it: the kernel spreads UDP by a hash over the sockets bound to
//! the port, so when the replacement binds some of the old process's QUIC packets reach
//! it, and those miners reconnect on their own (the README says so).

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use otedama_tests::{
    assert_every_miner_handed_over, loadgen_summary, wait_until, workspace_binary, SyntheticPool,
    EVERY_NONCE_A_SHARE,
};

const MINERS: usize = 300;
const V2_MINERS: usize = 60;
const DRAIN_S: &str = "6";

/// Connections queued on a listener when it closes move to the replacement's listener
/// only with this on (`otedama-tune` sets it on pool hosts); without it the kernel resets
/// them, which is what the test would then see.
fn migrate_queued_connections() {
    let path = "/proc/sys/net/ipv4/tcp_migrate_req";
    if std::fs::read_to_string(path).is_ok_and(|value| value.trim() == "1") {
        return;
    }
    std::fs::write(path, "1").unwrap_or_else(|error| {
        panic!(
            "this test needs net.ipv4.tcp_migrate_req = 1 (as otedama-tune sets it), and setting it failed: {error}; \
             run it as root or set it first (sysctl -w net.ipv4.tcp_migrate_req=1)"
        )
    });
}

/// The data-plane children of the supervisor `pid`.
fn dataplanes(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|child| child.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"dataplane"))
        })
        .collect()
}

/// Sends SIGHUP to the supervisor and waits until the data plane `old` has exited and one
/// other runs in its place.
fn upgrade(supervisor: u32, old: u32) -> u32 {
    // SAFETY: kill(2) on the pool the test started.
    assert_eq!(unsafe { libc::kill(supervisor as i32, libc::SIGHUP) }, 0);
    wait_until(
        Duration::from_secs(90),
        "the old data plane to drain and exit",
        || {
            let now = dataplanes(supervisor);
            !now.contains(&old) && now.len() == 1
        },
    )
    .unwrap();
    let replacement = dataplanes(supervisor)[0];
    assert_ne!(replacement, old);
    replacement
}

#[test]
fn a_data_plane_is_replaced_under_load_without_dropping_a_miner() {
    migrate_queued_connections();
    let mut pool = SyntheticPool::start(
        &[
            &EVERY_NONCE_A_SHARE[..],
            &[
                "--synthetic-job-interval-ms",
                "2000",
                "--dataplane-drain-s",
                DRAIN_S,
            ],
        ]
        .concat(),
    );
    let supervisor = pool.process.child.id();
    let first = dataplanes(supervisor);
    assert_eq!(first.len(), 1, "one data plane at the start: {first:?}");
    let acked_file = pool.data_dir.path().join("loadgen-acked.txt");
    let loadgen = Command::new(workspace_binary("otedama-loadgen"))
        .args(["--target", &pool.v1, "--protocol", "v1"])
        .args(["--connections", &MINERS.to_string(), "--rate", "3000"])
        .args(["--duration", "40", "--connect-rate", "2000"])
        .arg("--acked-shares-out")
        .arg(&acked_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting otedama-loadgen");
    let v2_loadgen = Command::new(workspace_binary("otedama-loadgen"))
        .args(["--target", &pool.sv2, "--protocol", "v2"])
        .args(["--authority-key", &pool.authority_key])
        .args(["--connections", &V2_MINERS.to_string(), "--rate", "600"])
        .args(["--duration", "40", "--connect-rate", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting otedama-loadgen for V2");
    std::thread::sleep(Duration::from_secs(6));
    let started = Instant::now();
    let second = upgrade(supervisor, first[0]);
    let first_swap = started.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    // Back to the first slot, which the first process left.
    let third = upgrade(supervisor, second);
    assert_ne!(third, first[0]);
    let output = loadgen.wait_with_output().expect("otedama-loadgen ends");
    let (summary, stdout) = loadgen_summary(&output, "V1");
    eprintln!("{stdout}");
    assert!(
        first_swap < Duration::from_secs(40),
        "the first swap ended inside the load: {first_swap:?}"
    );
    assert_every_miner_handed_over(&summary, &stdout, "V1", MINERS, 2);
    let acked = summary["shares_acked"].as_u64().unwrap();

    let output = v2_loadgen
        .wait_with_output()
        .expect("otedama-loadgen for V2 ends");
    let (v2, stdout) = loadgen_summary(&output, "V2");
    eprintln!("{stdout}");
    // Each V2 miner moved on Reconnect: a close without it would count as an error.
    assert_every_miner_handed_over(&v2, &stdout, "V2", V2_MINERS, 2);
    assert!(v2["shares_acked"].as_u64() > Some(1_000), "{stdout}");
    pool.process.terminate();

    // Every acknowledged share is in the share log of the slot that took it.
    let mut logged = HashSet::new();
    let mut per_slot = Vec::new();
    let mut partitions = Vec::new();
    for log in ["shares", "shares-1"] {
        let records = otedama_sharelog::writer::read_share_log(&pool.data_dir.path().join(log))
            .unwrap_or_else(|error| panic!("reading {log}: {error}"));
        per_slot.push(records.len());
        partitions.push(
            records
                .iter()
                .map(|record| record.extranonce1[0])
                .collect::<HashSet<u8>>(),
        );
        for record in records {
            logged.insert(format!(
                "{} {}",
                hex::encode(&record.extranonce1),
                hex::encode(&record.extranonce2)
            ));
        }
    }
    assert!(
        per_slot.iter().all(|&n| n > 0),
        "both slots took shares: {per_slot:?}"
    );
    // The two copies, running side by side, never handed out one extranonce1 partition.
    assert!(
        partitions[0].is_disjoint(&partitions[1]),
        "slot 0 used {:?}, slot 1 {:?}",
        partitions[0],
        partitions[1]
    );
    let lines = std::fs::read_to_string(&acked_file).expect("the acknowledged shares");
    let mut checked = 0u64;
    for line in lines.lines() {
        assert!(
            logged.contains(line),
            "acknowledged but not in a share log: {line}"
        );
        checked += 1;
    }
    assert_eq!(checked, acked, "the file lists every acknowledged share");
    assert!(
        acked > 10_000,
        "the load ran across both swaps: {acked} acknowledged"
    );
}
