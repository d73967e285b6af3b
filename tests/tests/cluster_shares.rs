//! Cluster mode (issue 20): the control plane counts the shares of every data-plane host
//! from the replicated share stream (its mirror of each host's log), each exactly once,
//! against a real three-server NATS JetStream cluster. Two hosts (each a data plane with
//! its own data directory, ports and share log; host B has no control plane and takes its
//! jobs over a link session through NATS) are mined on by `otedama miner`, and the shares
//! the two logs hold, every one the miners were told `true` for among them, are the
//! shares the control plane's history holds: none missing, none twice, the co-located
//! host's local log not read beside its copy, through a killed NATS server and a control
//! plane started again (host B's session then opened again).

use std::time::Duration;

use otedama_tests::nats::{cluster_flags, NatsCluster};
use otedama_tests::{
    assert_history_holds_each_share_once, mine_for, spawn_synthetic_dataplane, SyntheticPool,
};

#[test]
fn every_share_acknowledged_on_either_host_is_counted_once_from_the_stream() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let flags = |host: &'static str| cluster_flags(&urls, host);
    let a = SyntheticPool::start(&flags("dp-a"));
    let b_dir = tempfile::tempdir().unwrap();
    let (_b, b_v1) = spawn_synthetic_dataplane(b_dir.path(), &flags("dp-b"));

    let mut acknowledged = 0;
    let url = |address: &str| format!("stratum+tcp://{address}");
    let (url_a, url_b) = (url(&a.v1), url(&b_v1));
    let miners = std::thread::scope(|scope| {
        let on_a = scope.spawn(|| mine_for(&url_a, "on-a", 12));
        let on_b = scope.spawn(|| mine_for(&url_b, "on-b", 12));
        // One server of three killed while both hosts ship: a quorum remains.
        std::thread::sleep(Duration::from_secs(4));
        cluster.servers[2].kill_9();
        (on_a.join().unwrap(), on_b.join().unwrap())
    });
    assert!(
        miners.0 > 0 && miners.1 > 0,
        "both hosts took shares: {miners:?}"
    );
    acknowledged += miners.0 + miners.1;
    // What the two hosts wrote: every share acknowledged, and any the pool took whose
    // answer the miner, stopping, did not wait for.
    let scratch = tempfile::tempdir().unwrap();
    let logs = |a: &SyntheticPool| {
        [
            a.data_dir.path().join("shares"),
            b_dir.path().join("shares"),
        ]
    };
    let total = assert_history_holds_each_share_once(
        a.api_port,
        &logs(&a),
        scratch.path(),
        acknowledged,
        Duration::from_secs(90),
    );
    eprintln!("miners {miners:?}; {total} shares written on the two hosts");

    // The control plane (and host A's data plane) killed and started again on the same
    // data directory: the history is read back from the copies, once each, and new
    // shares of host B arrive through the stream.
    cluster.servers[2].restart().unwrap();
    let SyntheticPool {
        mut process,
        data_dir,
        ..
    } = a;
    process.kill_9();
    let a = SyntheticPool::start_in(data_dir, &flags("dp-a"));
    acknowledged += mine_for(&url_b, "on-b-again", 6);
    assert_history_holds_each_share_once(
        a.api_port,
        &logs(&a),
        scratch.path(),
        acknowledged,
        Duration::from_secs(90),
    );
}
