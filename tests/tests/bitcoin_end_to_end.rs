//! The whole pool against a real Bitcoin regtest node (Bitcoin Knots, fetched and unpacked
//! by the harness on first use): SHA256d CPU miners mine through `otedama run` under
//! payout addresses of every type, over V1, SV2 (Noise) and SV2 over QUIC, and the node
//! must accept exactly the blocks the pool reports, each paying the pool's address, with
//! segwit spends in them so that the node checks the pool's witness commitment. A V1
//! client that negotiates version rolling as ASICs do (BIP310 `mining.configure`, mask
//! `1fffe000`) finds a block with rolled version bits that the node accepts. Then PPLNS
//! through maturity: the node's wallet pays every address type exactly what the ledger
//! owed it.

#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::time::Duration;

use serde_json::json;

use otedama_controlplane::regtest::FUNDING_WALLET;
use otedama_tests::{
    coinbase_addresses, free_port, spawn_miner_at, wait_until, NodeKind, PoolSetup, RegtestPair,
};

/// SHA256d difficulty for the miners: about 4.3 million hashes a share, a share or so a
/// second per CPU thread. On regtest every such share is also a block.
const START_DIFFICULTY: f64 = 0.001;

#[test]
fn bitcoin_pool_finds_blocks_the_node_accepts_for_every_address_type() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    // Four mature coinbases: the three spends below each have a confirmed coin of their
    // own (CI on 1517262 saw "Insufficient funds" for one with a single mature coin).
    let nodes = RegtestPair::start_kind(root.path(), 104, NodeKind::Bitcoin)?;
    let version = nodes.miner.call("getnetworkinfo", json!([]))?["subversion"].clone();
    eprintln!("node: {version}");
    // The load generator's default worker, and the synthetic chain's payout address (the
    // same one), are addresses this node takes.
    let help = std::process::Command::new(otedama_tests::workspace_binary("otedama-loadgen"))
        .arg("--help")
        .output()?;
    let help = String::from_utf8(help.stdout)?;
    let default_user = help
        .split("bcrt1")
        .nth(1)
        .map(|rest| {
            format!(
                "bcrt1{}",
                rest.split(['.', ']', ' ']).next().unwrap_or_default()
            )
        })
        .expect("the load generator's default worker is a bcrt1 address");
    for address in [
        default_user.as_str(),
        otedama_tests::SYNTHETIC_PAYOUT_ADDRESS,
    ] {
        let valid = nodes.miner.call("validateaddress", json!([address]))?;
        assert_eq!(valid["isvalid"], json!(true), "{address}: {valid}");
    }
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), START_DIFFICULTY);
    let (sv2_port, quic_port) = (free_port(), free_port());
    pool.extra_args = vec![
        "--sv2-listen".into(),
        format!("127.0.0.1:{sv2_port}"),
        "--quic-listen".into(),
        format!("127.0.0.1:{quic_port}"),
    ];
    let _run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;
    let height_before = nodes.miner.block_count()?;
    let stats = pool.stats()?;
    let found_before = stats["blocks_found"].as_u64().unwrap();
    let key = stats["sv2_authority_key"]
        .as_str()
        .expect("an SV2 key")
        .to_string();
    let certificate = pool.data_dir.join("quic-cert.pem");

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
    // And one over SV2 with Noise, one over SV2 on QUIC (both bech32).
    let sv2_address = addresses[2].1.clone();
    miners.push(spawn_miner_at(
        &format!("stratum2+tcp://127.0.0.1:{sv2_port}/{key}"),
        &format!("{sv2_address}.v2rig"),
        1,
        &["--algo", "sha256d"],
    )?);
    miners.push(spawn_miner_at(
        &format!("stratum2+quic://127.0.0.1:{quic_port}"),
        &format!("{sv2_address}.quicrig"),
        1,
        &[
            "--algo",
            "sha256d",
            "--quic-ca",
            certificate.to_str().unwrap(),
        ],
    )?);
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
                && pool.stats().is_ok_and(|s| {
                    let by_protocol = &s["shares_accepted_by_protocol"];
                    s["blocks_found"].as_u64() >= Some(found_before + 6)
                        && ["v1", "v2", "quic"]
                            .iter()
                            .all(|p| by_protocol[p].as_u64().unwrap_or(0) >= 2)
                })
        },
    )?;
    // Each worker of the address mining through all three front ends is listed with its own
    // (its shares' records carry it from the data plane to the miner's page).
    let worker_protocols = [
        (format!("{sv2_address}.bech32"), "v1"),
        (format!("{sv2_address}.v2rig"), "v2"),
        (format!("{sv2_address}.quicrig"), "quic"),
    ];
    wait_until(
        Duration::from_secs(60),
        "every worker listed with its protocol",
        || {
            pool.get_json(&format!("/api/v1/miners/{sv2_address}"))
                .is_ok_and(|m| {
                    worker_protocols
                        .iter()
                        .all(|(worker, protocol)| m["workers"][worker]["protocol"] == *protocol)
                })
        },
    )?;
    // Every front end's miners are counted as its connections, in the API and /metrics.
    let open = pool.stats()?["connections_by_protocol"].clone();
    let metrics = pool.get_text("/metrics")?;
    for protocol in ["v1", "v2", "quic"] {
        assert!(open[protocol].as_u64() >= Some(1), "{open}");
        let sample = format!("otedama_protocol_connections{{protocol=\"{protocol}\"}} ");
        let exported = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&sample))
            .and_then(|value| value.trim().parse::<u64>().ok());
        assert!(exported >= Some(1), "{protocol}: {exported:?}");
    }
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

    // An ASIC's V1 session: version rolling first (BIP310, the mask ASICs send), then a
    // share with rolled version bits, which on regtest is a block the node must accept
    // with exactly that version.
    const ASIC_MASK: u32 = 0x1fff_e000;
    let mut asic = otedama_tests::StratumTestClient::connect(&pool.stratum_address())?;
    let configured = asic.request(
        "mining.configure",
        json!([["version-rolling"], {"version-rolling.mask": format!("{ASIC_MASK:08x}"), "version-rolling.min-bit-count": 2}]),
    )?;
    assert_eq!(
        configured["result"]["version-rolling"],
        json!(true),
        "{configured}"
    );
    let mask = u32::from_str_radix(
        configured["result"]["version-rolling.mask"]
            .as_str()
            .unwrap(),
        16,
    )?;
    assert_eq!(
        mask, ASIC_MASK,
        "the pool's mask is the BIP320 range ASICs roll"
    );
    let worker = format!("{}.asic", addresses[2].1);
    asic.start(&worker)?;
    let job = asic.job.clone().expect("a job");
    let extranonce2 = vec![0u8; asic.extranonce2_size];
    let rolled_bits = 0x0000_6000 & mask;
    let version = (job.version & !mask) | rolled_bits;
    let target = otedama_kernels::Target::from_difficulty(
        otedama_kernels::Algorithm::Sha256d,
        asic.difficulty,
    )
    .unwrap();
    let mut header = job.header(&asic.extranonce1, &extranonce2, job.ntime, version);
    let nonce = (0u32..)
        .find(|nonce| {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            target.is_met_by(&otedama_kernels::sha256d(&header))
        })
        .unwrap();
    let reply = asic.submit_nonce(&worker, &extranonce2, nonce, Some(rolled_bits))?;
    assert_eq!(reply["result"], json!(true), "{reply}");
    let mut hash = otedama_kernels::sha256d(&header);
    hash.reverse();
    let hash = hex::encode(hash);
    let mut on_node = json!(null);
    wait_until(
        Duration::from_secs(30),
        "the rolled block on the node",
        || match nodes.miner.call("getblockheader", json!([hash])) {
            Ok(header) => {
                on_node = header;
                true
            }
            Err(_) => false,
        },
    )?;
    assert_eq!(
        on_node["version"].as_u64(),
        Some(u64::from(version)),
        "{on_node}"
    );
    // Fully validated: on the active chain, or (when another block at its height won a
    // regtest race) a valid fork the node keeps. The node stores the header before it
    // connects the block, so a first look can see neither yet: wait for one of them.
    let mut last_seen = String::new();
    let settled = wait_until(
        Duration::from_secs(30),
        "the rolled block connected or kept as a valid fork",
        || {
            let header = nodes.miner.call("getblockheader", json!([hash]));
            let tips = nodes.miner.call("getchaintips", json!([]));
            let (Ok(header), Ok(tips)) = (header, tips) else {
                return false;
            };
            let fork_status = tips.as_array().and_then(|tips| {
                tips.iter()
                    .find(|tip| tip["hash"] == json!(hash))
                    .map(|tip| tip["status"].clone())
            });
            last_seen = format!("{header} {tips}");
            header["confirmations"].as_i64() >= Some(1) || fork_status == Some(json!("valid-fork"))
        },
    );
    assert!(settled.is_ok(), "{last_seen}");
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
