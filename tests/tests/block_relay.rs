//! A data-plane host submits the blocks its miners find to the node itself (issue 20,
//! `otedama::block_relay`), every part a real process: litecoind regtest, a three-server
//! NATS JetStream cluster, one control plane and a data-plane host of its own. With the
//! only control plane killed (SIGKILL), the host still serves its last job, and a block
//! found on it reaches the node from the host alone. When a control plane runs again it
//! takes the block from the host's link or share log, hears from the node that the block
//! is on the chain (the tip has moved on to the block itself, so nothing may call it
//! stale unasked), and records it as accepted, once.

#[path = "common/cluster_roles.rs"]
mod cluster_roles;
#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::time::Duration;

use otedama_tests::nats::NatsCluster;
use otedama_tests::{
    check_blocks_against_chain, coinbase_addresses, wait_until, NodeKind, Process, RegtestPair,
};

use cluster_roles::{accepted, role_setup};

#[test]
fn a_block_found_while_no_control_plane_runs_reaches_the_node_from_the_host() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let root = tempfile::tempdir().unwrap();
    let nodes = RegtestPair::start_kind(root.path(), 101, NodeKind::Litecoin).unwrap();
    std::fs::write(
        root.path().join("admin-token"),
        format!("{}\n", payout_scenario::ADMIN_TOKEN),
    )
    .unwrap();
    let first_pool_height = nodes.miner.block_count().unwrap() + 1;

    let control = role_setup(&nodes, root.path(), "cp-a", &urls);
    let mut controlplane: Process = control.spawn("controlplane").unwrap();
    wait_until(Duration::from_secs(90), "the control plane's API", || {
        control
            .stats()
            .is_ok_and(|s| s["height"].as_u64() > Some(0))
    })
    .unwrap();
    let dataplane = role_setup(&nodes, root.path(), "dp-1", &urls);
    let _dataplane: Process = dataplane.spawn("dataplane").unwrap();
    wait_until(Duration::from_secs(90), "the data plane's listener", || {
        std::net::TcpStream::connect(dataplane.stratum_address()).is_ok()
    })
    .unwrap();

    // One block through the control plane, so the host holds a job of the job stream.
    let worker = format!("{}.rig", nodes.wallet_address);
    let mut miner = dataplane.spawn_miner_as(&worker, 1).unwrap();
    wait_until(Duration::from_secs(240), "a first block", || {
        !accepted(&control).is_empty()
    })
    .unwrap();
    miner.terminate();
    // The host must serve a job on the node's tip when the control plane dies, or the
    // next block would be a side branch's. The control plane's height is its job's
    // previous block's; the link gives the host each job within milliseconds.
    wait_until(
        Duration::from_secs(60),
        "the control plane's job to build on the node's tip",
        || {
            let tip = nodes.miner.block_count().unwrap();
            control
                .stats()
                .is_ok_and(|s| s["height"].as_u64() == Some(tip))
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    controlplane.kill_9();
    let height_at_kill = nodes.miner.block_count().unwrap();
    let mut miner = dataplane.spawn_miner_as(&worker, 1).unwrap();
    wait_until(
        Duration::from_secs(240),
        "a block from the host with no control plane running",
        || nodes.miner.block_count().is_ok_and(|h| h > height_at_kill),
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}; the host's log:\n{}",
            std::fs::read_to_string(root.path().join("dp-1.log")).unwrap_or_default()
        )
    });
    miner.terminate();
    let relayed_height = height_at_kill + 1;
    assert!(
        coinbase_addresses(&nodes.miner, relayed_height)
            .unwrap()
            .contains(&nodes.wallet_address),
        "the block at {relayed_height} pays the pool"
    );
    let relayed_hash = nodes
        .miner
        .call("getblockhash", serde_json::json!([relayed_height]))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();

    // A control plane again: it records the host's block as accepted, not stale.
    let _controlplane: Process = control.spawn("controlplane").unwrap();
    wait_until(
        Duration::from_secs(180),
        "the control plane to record the host's block",
        || accepted(&control).contains_key(&relayed_hash),
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}: accepted {:?}; the control plane's log:\n{}",
            accepted(&control),
            std::fs::read_to_string(root.path().join("cp-a.log")).unwrap_or_default()
        )
    });
    let tip = nodes.miner.block_count().unwrap();
    // Every block of the chain since the pool started is the pool's and recorded once,
    // and every block it recorded is on the chain with the coinbase it recorded.
    check_blocks_against_chain(&control, &nodes.miner, first_pool_height..=tip).unwrap();
}
