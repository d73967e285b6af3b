//! Control-plane failover (issue 20), every part a real process against a real
//! three-server NATS JetStream cluster: two control planes (one leads, one stands by) and
//! a data-plane host without a control plane, mined on by `otedama miner`. The leader is
//! killed with SIGKILL; the standby leads within the lease's term, the data plane's link
//! moves to it, and the shares the data plane wrote, before and after the kill, are the
//! shares the new leader's history holds: none lost, none twice.

use std::time::{Duration, Instant};

use otedama_tests::nats::NatsCluster;
use otedama_tests::{
    history_shares, mine_for, share_log_records, spawn_synthetic_controlplane,
    spawn_synthetic_dataplane, wait_until, EASY_SHARE_FLAGS,
};

/// How long the standby may take to lead once the leader is killed: the lease's 20 s
/// term, a pass, and room for a loaded machine.
const TAKEOVER_S_MAX: u64 = 45;

#[test]
fn a_killed_leader_is_replaced_and_every_written_share_is_counted_once() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let flags = |name: &'static str| {
        let mut flags = EASY_SHARE_FLAGS.to_vec();
        flags.extend(["--cluster-host", name]);
        for url in &urls {
            flags.extend(["--nats-url", url.as_str()]);
        }
        flags
    };
    let root = tempfile::tempdir().unwrap();
    let (mut leader, leader_api) =
        spawn_synthetic_controlplane(&root.path().join("cp-a"), &flags("cp-a"));
    let (dataplane_dir, scratch) = (root.path().join("dp-1"), root.path().join("scratch"));
    std::fs::create_dir_all(&scratch).unwrap();
    let (_dataplane, v1) = spawn_synthetic_dataplane(&dataplane_dir, &flags("dp-1"));
    let url = format!("stratum+tcp://{v1}");
    let written = || share_log_records(&dataplane_dir.join("shares"), &scratch);

    let first = mine_for(&url, "before", 8);
    assert!(
        first > 0,
        "the data plane took shares: it had a job from the leader"
    );
    let mut counted = 0;
    wait_until(
        Duration::from_secs(60),
        "the leader counted every share",
        || {
            counted = history_shares(leader_api).unwrap_or(0);
            counted >= written()
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}: {counted} of {}", written()));
    let (_standby, standby_api) =
        spawn_synthetic_controlplane(&root.path().join("cp-b"), &flags("cp-b"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        history_shares(standby_api),
        Some(0),
        "a standby credits nothing (it only follows the leader's ledger)"
    );

    leader.kill_9();
    let killed_at = Instant::now();
    let total_before = written();
    wait_until(
        Duration::from_secs(TAKEOVER_S_MAX),
        "the standby leads and has read every share",
        || history_shares(standby_api).unwrap_or(0) >= total_before,
    )
    .unwrap();
    let takeover_s = killed_at.elapsed().as_secs_f64();
    eprintln!(
        "the standby led and had counted {total_before} shares {takeover_s:.1} s after the kill"
    );

    // The data plane's link moves to the new leader; its new shares are counted too.
    let second = mine_for(&url, "after", 8);
    assert!(second > 0, "shares taken after the failover");
    wait_until(
        Duration::from_secs(60),
        "the new leader counted the new shares",
        || {
            counted = history_shares(standby_api).unwrap_or(0);
            counted >= written()
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}: {counted} of {}", written()));
    std::thread::sleep(Duration::from_secs(3));
    let total = written();
    assert!(total >= first + second, "every acknowledged share written");
    assert_eq!(
        history_shares(standby_api),
        Some(total),
        "counted once each"
    );
}
