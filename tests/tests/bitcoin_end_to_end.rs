//! The whole pool against a real Bitcoin regtest node (Bitcoin Knots, fetched and unpacked
//! by the harness on first use): SHA256d CPU miners mine through `otedama run` under
//! payout addresses of every type, and the node must accept exactly the blocks the pool
//! reports, each paying the pool's address, with segwit spends in them so that the node
//! checks the pool's witness commitment. Then PPLNS through maturity: the node's wallet
//! pays every address type exactly what the ledger owed it.

#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::time::Duration;

use serde_json::json;

use otedama_controlplane::regtest::FUNDING_WALLET;
use otedama_tests::{coinbase_addresses, wait_until, NodeKind, PoolSetup, RegtestPair};

/// SHA256d difficulty for the miners: about 4.3 million hashes a share, a share or so a
/// second per CPU thread. On regtest every such share is also a block.
const START_DIFFICULTY: f64 = 0.001;

#[test]
fn bitcoin_pool_finds_blocks_the_node_accepts_for_every_address_type() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start_kind(root.path(), 101, NodeKind::Bitcoin)?;
    let version = nodes.miner.call("getnetworkinfo", json!([]))?["subversion"].clone();
    eprintln!("node: {version}");
    let pool = PoolSetup::new(&nodes, &root.path().join("pool"), START_DIFFICULTY);
    let _run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;
    let height_before = nodes.miner.block_count()?;
    let found_before = pool.stats()?["blocks_found"].as_u64().unwrap();

    // One miner per payout address type the node's wallet makes.
    let mut miners = Vec::new();
    let mut addresses = Vec::new();
    for kind in ["legacy", "p2sh-segwit", "bech32", "bech32m"] {
        let address =
            nodes
                .miner
                .call_wallet(FUNDING_WALLET, "getnewaddress", json!(["", kind]))?;
        let address = address.as_str().expect("an address").to_string();
        miners.push(pool.spawn_miner_as(&format!("{address}.{kind}"), 1)?);
        addresses.push((kind, address));
    }
    // Segwit spends in the mempool: the pool's blocks carry them, and the node accepts a
    // block only if its coinbase commits to their witnesses correctly.
    let mut spends = Vec::new();
    for _ in 0..3 {
        let to = nodes
            .miner
            .call_wallet(FUNDING_WALLET, "getnewaddress", json!(["", "bech32"]))?;
        let txid = nodes
            .miner
            .call_wallet(FUNDING_WALLET, "sendtoaddress", json!([to, 1.0]))?;
        spends.push(txid.as_str().expect("a txid").to_string());
    }
    wait_until(
        Duration::from_secs(240),
        "blocks from every miner, the spends mined",
        || {
            let mempool_empty = nodes
                .miner
                .call("getmempoolinfo", json!([]))
                .is_ok_and(|info| info["size"] == 0);
            mempool_empty
                && addresses.iter().all(|(_, address)| {
                    pool.get_json(&format!("/api/v1/miners/{address}"))
                        .is_ok_and(|m| m["windows"]["600s"]["shares"].as_u64() > Some(0))
                })
                && pool
                    .stats()
                    .is_ok_and(|s| s["blocks_found"].as_u64() >= Some(found_before + 6))
        },
    )?;
    for miner in &mut miners {
        miner.terminate();
    }
    otedama_tests::wait_blocks_settled(&pool, &nodes)?;
    let height_after = nodes.miner.block_count()?;
    let found = pool.stats()?["blocks_found"].as_u64().unwrap() - found_before;
    assert_eq!(
        height_after - height_before,
        found,
        "the node's height rose by exactly the blocks the pool found"
    );
    let mut witness_txs = 0;
    for height in height_before + 1..=height_after {
        let paid = coinbase_addresses(&nodes.miner, height)?;
        assert!(
            paid.contains(&pool.payout_address),
            "block {height} pays {paid:?}, not the pool"
        );
        let hash = nodes.miner.call("getblockhash", json!([height]))?;
        let block = nodes.miner.call("getblock", json!([hash, 2]))?;
        witness_txs += block["tx"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .filter(|tx| {
                tx["vin"]
                    .as_array()
                    .is_some_and(|inputs| inputs.iter().any(|i| i["txinwitness"].is_array()))
            })
            .count();
    }
    // Every spend is in one of the pool's blocks, and those blocks carry witnesses: the
    // node checked the pool's commitment to them.
    for txid in &spends {
        let mined = nodes
            .miner
            .call_wallet(FUNDING_WALLET, "gettransaction", json!([txid]))?;
        let height = mined["blockheight"].as_u64();
        assert!(
            height.is_some_and(|h| (height_before + 1..=height_after).contains(&h)),
            "{txid} was not mined by the pool: {mined}"
        );
    }
    assert!(witness_txs >= 1, "no witness reached a pool block");
    otedama_tests::check_blocks_against_chain(
        &pool,
        &nodes.miner,
        height_before + 1..=height_after,
    )?;
    Ok(())
}

/// P2PKH, P2SH-P2WPKH, P2WPKH and P2TR miners, paid by the node's wallet through PPLNS
/// after maturity, each exactly what the ledger owed it; the pool's wallet against the
/// ledger before and after.
#[test]
fn bitcoin_pays_every_address_type_after_maturity() -> anyhow::Result<()> {
    let (scenario, _run) = payout_scenario::start_kind(
        NodeKind::Bitcoin,
        "pplns",
        &["legacy", "p2sh-segwit", "bech32", "bech32m"],
    )?;
    scenario.mine_until_each_earned(0, 8)?;
    scenario.mature()?;
    scenario.check_conservation()?;
    let owed = scenario.owed_nonzero()?;
    assert_eq!(owed.len(), 4, "every miner is owed something: {owed:?}");
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    scenario.wait_paid(&owed)?;
    scenario.check_conservation()?;
    Ok(())
}
