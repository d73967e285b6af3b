//! Stratum V2 end to end on a real Litecoin regtest node: `otedama run --sv2-listen`
//! prints and serves its authority key, `otedama miner --url stratum2+tcp://…/KEY` mines
//! through Noise on a standard channel next to a V1 miner, the node accepts every block
//! the pool reports, and both miners' shares land in one share log and are credited the
//! same way.

use std::time::Duration;

use serde_json::json;

use otedama_shared::sv2::noise::decode_authority_public_key;
use otedama_tests::{free_port, spawn_miner_at, wait_until, PoolSetup, RegtestPair};

/// About 650 scrypt hashes a share: regtest blocks every second or so on 2 cores.
const START_DIFFICULTY: f64 = 0.01;

#[test]
fn sv2_and_v1_miners_find_blocks_the_node_accepts() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), START_DIFFICULTY);
    let sv2_port = free_port();
    pool.extra_args = vec!["--sv2-listen".into(), format!("127.0.0.1:{sv2_port}")];
    let _run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;

    let stats = pool.stats()?;
    let key = stats["sv2_authority_key"]
        .as_str()
        .expect("stats name the SV2 authority key")
        .to_string();
    let secret = std::fs::read_to_string(pool.data_dir.join("sv2-authority.key"))?;
    let secret: [u8; 32] = hex::decode(secret.trim())?.try_into().unwrap();
    let authority = otedama_shared::sv2::noise::AuthorityKey::from_secret(secret).unwrap();
    assert_eq!(
        decode_authority_public_key(&key),
        Some(authority.public_x())
    );

    let v2_address = nodes.miner.call("getnewaddress", json!([]))?;
    let v1_address = nodes.miner.call("getnewaddress", json!([]))?;
    let (v2_address, v1_address) = (v2_address.as_str().unwrap(), v1_address.as_str().unwrap());
    let found_before = stats["blocks_found"].as_u64().unwrap();
    let height_before = nodes.miner.block_count()?;
    let mut miners = vec![
        spawn_miner_at(
            &format!("stratum2+tcp://127.0.0.1:{sv2_port}/{key}"),
            &format!("{v2_address}.v2rig"),
            1,
        )?,
        spawn_miner_at(&pool.stratum_url(), &format!("{v1_address}.v1rig"), 1)?,
    ];
    wait_until(
        Duration::from_secs(240),
        "blocks from both protocols",
        || {
            pool.stats().is_ok_and(|s| {
                let by_protocol = &s["shares_accepted_by_protocol"];
                s["blocks_found"].as_u64().unwrap_or(0) >= found_before + 6
                    && by_protocol["v2"].as_u64().unwrap_or(0) >= 3
                    && by_protocol["v1"].as_u64().unwrap_or(0) >= 3
            })
        },
    )?;
    for miner in &mut miners {
        miner.terminate();
    }
    let mut last = (u64::MAX, u64::MAX);
    wait_until(Duration::from_secs(30), "block counts to settle", || {
        std::thread::sleep(Duration::from_millis(1500));
        let now = (
            pool.stats()
                .map(|s| s["blocks_found"].as_u64().unwrap())
                .unwrap_or(0),
            nodes.miner.block_count().unwrap_or(0),
        );
        let settled = now == last;
        last = now;
        settled
    })?;
    let stats = pool.stats()?;
    let found = stats["blocks_found"].as_u64().unwrap() - found_before;
    assert_eq!(
        nodes.miner.block_count()? - height_before,
        found,
        "the node's height rises by exactly the blocks the pool found"
    );
    assert_eq!(stats["shares_accepted_by_protocol"]["quic"], 0);

    // One share log, one crediting: both miners show shares and immature credit.
    for address in [v2_address, v1_address] {
        let miner = pool.get_json(&format!("/api/v1/miners/{address}"))?;
        assert!(
            miner["windows"]["3600s"]["shares"].as_u64().unwrap_or(0) > 0,
            "{address}: {miner}"
        );
        assert!(
            miner["balance_immature"].as_u64().unwrap_or(0) > 0,
            "{address}: {miner}"
        );
    }
    Ok(())
}
