//! A block whose hash misses the miner's share target still reaches the node. On litecoind
//! regtest about every other scrypt hash is a block, while a miner at difficulty 0.001 is
//! asked for one hash in 65: a hash between the two is refused as low difficulty (23) and
//! credited nothing, yet it is a block. The pool submits it, refuses a copy as a duplicate,
//! and keeps its record (difficulty 0, a block) in the share log, where the block scan
//! would find it again if the candidate were lost on the way.

use std::time::Duration;

use serde_json::json;

use otedama_kernels::scrypt::scrypt_pow;
use otedama_kernels::{Algorithm, Target};
use otedama_shared::sv1::client::request_line;
use otedama_sharelog::writer::read_share_log;
use otedama_tests::{wait_until, PoolSetup, RegtestPair, StratumTestClient};

#[test]
fn a_block_below_the_share_target_reaches_the_node_uncredited() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), 0.001);
    pool.extra_args
        .extend(["--vardiff-share-interval-s", "0"].map(String::from));
    let mut run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;

    let worker = format!("{}.below", pool.payout_address);
    let mut client = StratumTestClient::connect(&pool.stratum_address())?;
    client.start(&worker)?;
    assert_eq!(client.difficulty, 0.001);
    let job = client.job.clone().expect("a job");
    let network = Target::from_compact(job.bits).expect("valid bits");
    let share = Target::from_difficulty(Algorithm::Scrypt, client.difficulty).expect("a target");
    let extranonce2 = [0, 0, 0, 7];
    let mut header = job.header(&client.extranonce1, &extranonce2, job.ntime, job.version);
    let nonce = (0u32..)
        .find(|nonce| {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let pow = scrypt_pow(&header);
            network.is_met_by(&pow) && !share.is_met_by(&pow)
        })
        .expect("a block below the share target");
    header[76..80].copy_from_slice(&nonce.to_le_bytes());
    let mut hash = otedama_kernels::sha256d(&header);
    hash.reverse();
    let hash = hex::encode(hash);
    let submit = json!([
        worker,
        job.job_id,
        hex::encode(extranonce2),
        format!("{:08x}", job.ntime),
        format!("{nonce:08x}")
    ]);

    // The share and its copy in one write: the copy arrives before the block makes the
    // job stale.
    let mut lines = request_line(100, "mining.submit", submit.clone());
    lines.extend(request_line(101, "mining.submit", submit));
    client.send_raw(&lines)?;
    let mut replies = std::collections::HashMap::new();
    while replies.len() < 2 {
        let message = client.read_message()?;
        if let Some(id) = message["id"].as_u64() {
            replies.insert(id, message);
        }
    }
    assert_eq!(replies[&100]["error"][0], json!(23), "{}", replies[&100]);
    assert_eq!(
        replies[&101]["error"][0],
        json!(22),
        "a copy: {}",
        replies[&101]
    );
    wait_until(Duration::from_secs(30), "the block on the node", || {
        nodes.miner.call("getblockheader", json!([hash])).is_ok()
    })?;

    run.terminate();
    let records = read_share_log(&root.path().join("pool").join("shares"))?;
    let record = records
        .iter()
        .find(|record| record.header == header)
        .expect("the block's record in the share log");
    assert_eq!(record.difficulty, 0.0, "credited nothing");
    assert!(record.is_block);
    assert_eq!(
        records.iter().filter(|r| r.header == header).count(),
        1,
        "recorded once"
    );
    Ok(())
}
