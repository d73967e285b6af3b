//! Stratum V2 end to end on a real Litecoin regtest node: `otedama run --sv2-listen
//! --quic-listen` prints and serves its authority key and QUIC certificate; `otedama miner`
//! mines through Noise (`stratum2+tcp://…/KEY`) and through QUIC (`stratum2+quic://…`) on
//! standard channels next to a V1 miner; the node accepts every block the pool reports,
//! each protocol finds blocks, and all three miners' shares land in one share log and are
//! credited the same way.

use std::time::Duration;

use serde_json::json;

use otedama_shared::sv2::noise::decode_authority_public_key;
use otedama_tests::{free_port, spawn_miner_at, wait_until, PoolSetup, RegtestPair};

/// About 650 scrypt hashes a share: regtest blocks every second or so on 2 cores.
const START_DIFFICULTY: f64 = 0.01;

#[test]
fn v1_v2_and_quic_miners_find_blocks_the_node_accepts() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), START_DIFFICULTY);
    let (sv2_port, quic_port) = (free_port(), free_port());
    pool.extra_args = vec![
        "--sv2-listen".into(),
        format!("127.0.0.1:{sv2_port}"),
        "--quic-listen".into(),
        format!("127.0.0.1:{quic_port}"),
        // A PPLNS window of every share in the run (regtest's network difficulty is tiny):
        // each block then credits all three miners, whichever found it, so every miner
        // shows credit even if the node turned down its own blocks as height races.
        "--pplns-window-factor".into(),
        "1e12".into(),
    ];
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

    let address = || -> anyhow::Result<String> {
        Ok(nodes
            .miner
            .call_wallet(
                otedama_controlplane::regtest::FUNDING_WALLET,
                "getnewaddress",
                json!([]),
            )?
            .as_str()
            .unwrap()
            .to_string())
    };
    let (v2_address, quic_address, v1_address) = (address()?, address()?, address()?);
    let certificate = pool.data_dir.join("quic-cert.pem");
    let certificate = certificate.to_str().unwrap();
    let found_before = stats["blocks_found"].as_u64().unwrap();
    let height_before = nodes.miner.block_count()?;
    let mut miners = vec![
        spawn_miner_at(
            &format!("stratum2+tcp://127.0.0.1:{sv2_port}/{key}"),
            &format!("{v2_address}.v2rig"),
            1,
            &[],
        )?,
        spawn_miner_at(
            &format!("stratum2+quic://127.0.0.1:{quic_port}"),
            &format!("{quic_address}.quicrig"),
            1,
            &["--quic-ca", certificate],
        )?,
        spawn_miner_at(&pool.stratum_url(), &format!("{v1_address}.v1rig"), 1, &[])?,
    ];
    // On regtest every share is a block, so shares per protocol are blocks per protocol.
    wait_until(
        Duration::from_secs(240),
        "blocks from all three protocols",
        || {
            pool.stats().is_ok_and(|s| {
                let by_protocol = &s["shares_accepted_by_protocol"];
                s["blocks_found"].as_u64().unwrap_or(0) >= found_before + 9
                    && ["v1", "v2", "quic"]
                        .iter()
                        .all(|p| by_protocol[p].as_u64().unwrap_or(0) >= 3)
            })
        },
    )?;
    for miner in &mut miners {
        miner.terminate();
    }
    otedama_tests::wait_blocks_settled(&pool, &nodes)?;
    let stats = pool.stats()?;
    let found = stats["blocks_found"].as_u64().unwrap() - found_before;
    let height_after = nodes.miner.block_count()?;
    assert_eq!(
        height_after - height_before,
        found,
        "the node's height rises by exactly the blocks the pool found"
    );
    // Each protocol's own blocks, on the chain (not the pool's word for it).
    let accepted = otedama_tests::check_blocks_against_chain(
        &pool,
        &nodes.miner,
        height_before + 1..=height_after,
    )?;
    for address in [&v2_address, &quic_address, &v1_address] {
        let own = accepted
            .iter()
            .filter(|b| {
                b["worker"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(address.as_str())
            })
            .count();
        assert!(own > 0, "no block of {address}'s protocol is on the chain");
    }
    // One share log, one crediting: every miner shows shares and, once the blocks are
    // credited (a few seconds after they are found), immature credit.
    for address in [&v2_address, &quic_address, &v1_address] {
        let miner = pool.get_json(&format!("/api/v1/miners/{address}"))?;
        assert!(
            miner["windows"]["3600s"]["shares"].as_u64().unwrap_or(0) > 0,
            "{address}: {miner}"
        );
    }
    wait_until(Duration::from_secs(60), "every miner's credit", || {
        [&v2_address, &quic_address, &v1_address]
            .iter()
            .all(|address| {
                pool.get_json(&format!("/api/v1/miners/{address}"))
                    .is_ok_and(|miner| miner["balance_immature"].as_u64().unwrap_or(0) > 0)
            })
    })?;
    Ok(())
}
