//! Control-plane failover (issue 20), every part a real process against a real
//! three-server NATS JetStream cluster: two control planes (one leads, one stands by) and
//! a data-plane host without a control plane, mined on by `otedama miner`. The leader is
//! killed with SIGKILL; the standby leads within the lease's term, the data plane's link
//! moves to it, and the shares the data plane wrote, before and after the kill, are the
//! shares the new leader's history holds: none lost, none twice.

use std::time::{Duration, Instant};

use otedama_tests::nats::{cluster_flags, NatsCluster};
use otedama_tests::{
    assert_history_holds_each_share_once, history_shares, mine_for, share_log_records,
    spawn_synthetic_controlplane, spawn_synthetic_dataplane, wait_until,
};

/// How long the standby may take to lead once the leader is killed: the lease's 20 s
/// term, a pass, and room for a loaded machine.
const TAKEOVER_S_MAX: u64 = 45;

#[test]
fn a_killed_leader_is_replaced_and_every_written_share_is_counted_once() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let flags = |name: &'static str| cluster_flags(&urls, name);
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
    let logs = [dataplane_dir.join("shares")];
    assert_history_holds_each_share_once(
        leader_api,
        &logs,
        &scratch,
        first,
        Duration::from_secs(60),
    );
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
    assert_history_holds_each_share_once(
        standby_api,
        &logs,
        &scratch,
        first + second,
        Duration::from_secs(60),
    );
}
