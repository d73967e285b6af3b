//! Found blocks across a control-plane failover (issue 20), every part a real process:
//! litecoind regtest, a three-server NATS JetStream cluster, a data-plane host with no
//! control plane of its own, and two control planes (one leads, one stands by), mined on
//! by `otedama miner`. The standby holds every block the leader found (and every job
//! they were found on) from the block and job streams; once the leader is killed with
//! SIGKILL, the new leader builds the jobs, finds and submits blocks itself, and matures
//! the former leader's blocks as well as its own: every accepted block is credited once,
//! and the credits add up to the coinbases the node paid the pool, to the unit.

#[path = "common/cluster_roles.rs"]
mod cluster_roles;
#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::time::Duration;

use serde_json::json;

use otedama_tests::nats::NatsCluster;
use otedama_tests::{ledger_total, wait_until, NodeKind, PoolSetup, Process, RegtestPair};

use cluster_roles::{accepted, balance, role_setup};
use payout_scenario::{ADMIN_TOKEN, COINBASE_MATURITY};

/// How long the standby may take to lead once the leader is killed: the lease's 20 s
/// term, a pass, and room for a loaded machine.
const TAKEOVER_S_MAX: u64 = 90;

/// Mines on `dataplane` as `address` until `pool` has `found_at_least` accepted blocks.
fn mine_until(dataplane: &PoolSetup, pool: &PoolSetup, address: &str, found_at_least: usize) {
    let mut miner = dataplane
        .spawn_miner_as(&format!("{address}.rig"), 1)
        .unwrap();
    wait_until(Duration::from_secs(240), "blocks to be found", || {
        accepted(pool).len() >= found_at_least
    })
    .unwrap();
    miner.terminate();
}

#[test]
fn a_new_leader_holds_and_matures_every_block_the_former_leader_found() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let root = tempfile::tempdir().unwrap();
    let nodes = RegtestPair::start_kind(root.path(), 101, NodeKind::Litecoin).unwrap();
    nodes.miner.call("createwallet", json!(["miners"])).unwrap();
    let address = nodes
        .miner
        .call_wallet("miners", "getnewaddress", json!(["", "bech32"]))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(root.path().join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();

    let a = role_setup(&nodes, root.path(), "cp-a", &urls);
    let mut leader: Process = a.spawn("controlplane").unwrap();
    wait_until(
        Duration::from_secs(90),
        "the first control plane's API",
        || a.stats().is_ok_and(|s| s["height"].as_u64() > Some(0)),
    )
    .unwrap();
    let dataplane = role_setup(&nodes, root.path(), "dp-1", &urls);
    let _dataplane: Process = dataplane.spawn("dataplane").unwrap();
    wait_until(Duration::from_secs(90), "the data plane's listener", || {
        std::net::TcpStream::connect(dataplane.stratum_address()).is_ok()
    })
    .unwrap();
    let b = role_setup(&nodes, root.path(), "cp-b", &urls);
    let _standby: Process = b.spawn("controlplane").unwrap();
    wait_until(Duration::from_secs(90), "the standby's API", || {
        b.stats().is_ok()
    })
    .unwrap();

    // The leader finds blocks; the standby holds the same records, from the block stream,
    // and the same credits, from the ledger stream.
    mine_until(&dataplane, &a, &address, 3);
    wait_until(
        Duration::from_secs(60),
        "the leader to credit its blocks",
        || balance(&a, &address).is_some_and(|(immature, _)| immature > 0),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let found_by_a = accepted(&a);
    wait_until(
        Duration::from_secs(30),
        "the standby to hold the leader's blocks",
        || accepted(&b) == found_by_a && balance(&b, &address) == balance(&a, &address),
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}: leader {found_by_a:?} {:?}, standby {:?} {:?}",
            balance(&a, &address),
            accepted(&b),
            balance(&b, &address)
        )
    });
    assert_eq!(
        b.stats().unwrap()["blocks_found"].as_u64(),
        Some(found_by_a.len() as u64),
        "the standby counts the leader's blocks once"
    );

    leader.kill_9();
    let killed_at = std::time::Instant::now();
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Until the new leader leads, the data plane serves the former leader's last job, and
    // the blocks found on it wait (in its link's resend queue, and in its share log);
    // then the new leader rebuilds such a block from the job it read from the job stream
    // and submits it, and builds the jobs after it.
    wait_until(
        Duration::from_secs(TAKEOVER_S_MAX),
        "the standby to lead (a miner finds a block through it)",
        || {
            let mut miner = dataplane
                .spawn_miner_as(&format!("{address}.rig"), 1)
                .unwrap();
            let found = wait_until(Duration::from_secs(10), "a block", || {
                accepted(&b).len() > found_by_a.len()
            });
            miner.terminate();
            found.is_ok()
        },
    )
    .unwrap();
    eprintln!(
        "the standby led and took a block {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    mine_until(&dataplane, &b, &address, found_by_a.len() + 2);
    std::thread::sleep(Duration::from_secs(3));
    let found = accepted(&b);
    assert!(
        found_by_a
            .iter()
            .all(|(hash, reward)| found.get(hash) == Some(reward)),
        "the new leader keeps the former leader's blocks: {found_by_a:?} in {found:?}"
    );

    // A block found on one of the former leader's jobs (ids are milliseconds of the
    // wall clock at their building, all before the kill; the new leader's are after its
    // lease term) was rebuilt and submitted by the new leader.
    let job_ids: Vec<u64> = b
        .accepted_blocks()
        .unwrap()
        .iter()
        .filter(|block| !found_by_a.contains_key(block["hash"].as_str().unwrap()))
        .map(|block| block["job_id"].as_u64().unwrap())
        .collect();
    assert!(
        job_ids.iter().any(|id| *id < killed_at_ms),
        "a block on a former leader's job was submitted by the new leader: job ids {job_ids:?}, killed at {killed_at_ms}"
    );

    // Every block matures on the new leader, the former leader's too.
    nodes
        .miner
        .generate_to(&nodes.funding_address, COINBASE_MATURITY)
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "every found block to be confirmed",
        || b.accepted_blocks_confirmed(),
    )
    .unwrap();
    // Each accepted block credited once: the credits are the rewards, and the rewards are
    // the coinbases the node's wallet of the pool received.
    let rewards: u64 = accepted(&b).values().sum();
    wait_until(
        Duration::from_secs(60),
        "the ledger to credit and mature every block",
        || {
            ledger_total(&b, ADMIN_TOKEN).is_ok_and(|(credited, accounts)| {
                credited == rewards
                    && accounts
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|account| account["balance_immature"].as_u64().unwrap_or(0) == 0)
            })
        },
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}: {rewards} in rewards, {:?}",
            ledger_total(&b, ADMIN_TOKEN)
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let (credited, accounts) = ledger_total(&b, ADMIN_TOKEN).unwrap();
    assert_eq!(credited, rewards, "credited once: {accounts}");
    let listed = nodes
        .miner
        .call_wallet(
            "otedama",
            "listtransactions",
            json!(["*", 100_000, 0, true]),
        )
        .unwrap();
    let coinbases: u64 = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["category"] == "generate")
        .map(|entry| payout_scenario::units(&entry["amount"]).unwrap())
        .sum();
    assert_eq!(
        coinbases, credited,
        "the pool's coinbases on the chain are its credits: {accounts}"
    );
}
