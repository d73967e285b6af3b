//! The whole pool against a real Litecoin regtest node: CPU miners mine through
//! `otedama run`, every share is a block on regtest, and the node must accept exactly the
//! blocks the pool reports, each paying the payout address, before and after MWEB
//! activation at height 432.

use std::time::Duration;

use serde_json::{json, Value};

use otedama_tests::{coinbase_addresses, wait_until, PoolSetup, RegtestPair};

/// Scrypt difficulty for the miners: about 650 hashes a share, so blocks come every second
/// or so on a shared 2-core machine.
const START_DIFFICULTY: f64 = 0.01;
const MWEB_ACTIVATION_HEIGHT: u64 = 432;

/// Mines with two miners until the pool reports `blocks` more found blocks, stops the
/// miners, and checks the node's height rose by exactly the pool's count.
fn mine_phase(pool: &PoolSetup, nodes: &RegtestPair, blocks: u64) -> anyhow::Result<(u64, u64)> {
    let found_before = pool.stats()?["blocks_found"].as_u64().unwrap();
    let height_before = nodes.miner.block_count()?;
    let mut miners = vec![pool.spawn_miner("rig1", 1)?, pool.spawn_miner("rig2", 1)?];
    wait_until(Duration::from_secs(240), "blocks to be found", || {
        pool.stats()
            .is_ok_and(|s| s["blocks_found"].as_u64().unwrap_or(0) >= found_before + blocks)
    })?;
    for miner in &mut miners {
        miner.terminate();
    }
    otedama_tests::wait_blocks_settled(pool, nodes)?;
    let found = pool.stats()?["blocks_found"].as_u64().unwrap() - found_before;
    let height_after = nodes.miner.block_count()?;
    assert_eq!(
        height_after - height_before,
        found,
        "node height must rise by exactly the blocks the pool found"
    );
    for height in height_before + 1..=height_after {
        let paid = coinbase_addresses(&nodes.miner, height)?;
        assert!(
            paid.contains(&pool.payout_address),
            "block {height} pays {paid:?}, not the pool"
        );
    }
    // The pool's own record, checked against the chain: each accepted block on it once,
    // with the reward its coinbase really pays, and every block of this phase among them.
    otedama_tests::check_blocks_against_chain(
        pool,
        &nodes.miner,
        height_before + 1..=height_after,
    )?;
    Ok((height_before, height_after))
}

#[test]
fn pool_finds_blocks_the_node_accepts_before_and_after_mweb() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let pool = PoolSetup::new(&nodes, &root.path().join("pool"), START_DIFFICULTY);
    let _run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;

    // Before MWEB: plain segwit blocks.
    let (_, height) = mine_phase(&pool, &nodes, 5)?;
    assert!(height < MWEB_ACTIVATION_HEIGHT);
    let stats = pool.stats()?;
    assert!(stats["shares_accepted"].as_u64().unwrap() >= 5);
    assert!(stats["connections"].as_u64().is_some());

    // The node mines up to the block before activation, then a peg-in enters the mempool:
    // block 432 can only be built with one, and its template then carries the HogEx and
    // `mweb`. (Sent earlier, the peg-in makes litecoind's own templates for the blocks
    // before 432 fail with bad-txns-vin-empty.)
    let target = MWEB_ACTIVATION_HEIGHT - 1;
    nodes
        .miner
        .generate_to(&nodes.funding_address, target - height)?;
    let funding = otedama_controlplane::regtest::FUNDING_WALLET;
    let mweb_address = nodes
        .miner
        .call_wallet(funding, "getnewaddress", json!(["", "mweb"]))?;
    nodes
        .miner
        .call_wallet(funding, "sendtoaddress", json!([mweb_address, 1.0]))?;
    wait_until(
        Duration::from_secs(30),
        "the pool to follow the node's blocks",
        || {
            pool.stats()
                .is_ok_and(|s| s["height"].as_u64() == Some(target))
        },
    )?;

    // After activation: the pool itself mines block 432 and those after it.
    let (_, height) = mine_phase(&pool, &nodes, 8)?;
    assert!(height > MWEB_ACTIVATION_HEIGHT, "reached {height}");
    let info = nodes.miner.call("getblockchaininfo", json!([]))?;
    assert_eq!(info["softforks"]["mweb"]["active"], json!(true), "{info}");
    let hash = nodes
        .miner
        .call("getblockhash", json!([MWEB_ACTIVATION_HEIGHT]))?;
    let block = nodes.miner.call("getblock", json!([hash, 1]))?;
    assert!(
        block["tx"].as_array().unwrap().len() >= 2,
        "block 432 holds the peg-in and the HogEx: {block}"
    );

    // Block lifecycle: the first phase's blocks now have over 300 confirmations, so they
    // turn confirmed; invalidating the newest pool block on the node makes it an orphan.
    let found_blocks = || -> anyhow::Result<Vec<Value>> {
        let mut accepted = pool.accepted_blocks()?;
        accepted.sort_by_key(|b| b["height"].as_u64());
        Ok(accepted)
    };
    let accepted = found_blocks()?;
    let (oldest, newest) = (
        accepted.first().unwrap()["hash"].clone(),
        accepted.last().unwrap()["hash"].clone(),
    );
    nodes.miner.call("invalidateblock", json!([newest]))?;
    let status_of = |blocks: &[Value], hash: &Value| {
        blocks
            .iter()
            .find(|b| &b["hash"] == hash)
            .map(|b| b["status"].clone())
    };
    wait_until(
        Duration::from_secs(60),
        "found blocks to turn confirmed and orphaned",
        || {
            found_blocks().is_ok_and(|blocks| {
                status_of(&blocks, &oldest) == Some(json!("confirmed"))
                    && status_of(&blocks, &newest) == Some(json!("orphaned"))
            })
        },
    )?;

    // Metrics are served in the Prometheus text format.
    let metrics = pool.get_text("/metrics")?;
    assert!(metrics.contains("# TYPE otedama_blocks_total counter"));
    Ok(())
}
