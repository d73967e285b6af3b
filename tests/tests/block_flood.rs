//! A flood of block candidates cannot hold back an honest miner's block (issue 15,
//! point 2). On regtest about every other scrypt hash is a block, so one connection at the
//! lowest difficulty that sends random nonces as fast as it can makes thousands of block
//! candidates a second. Once it stops, an honest miner's block, found on a job newer than
//! any the flooder saw, must be on the node within a second of its acknowledgement. (Before
//! issue 15 one thread submitted every candidate in arrival order: the honest block waited
//! behind the whole backlog, minutes on regtest.)

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use otedama_kernels::scrypt::scrypt_pow;
use otedama_kernels::Target;
use otedama_shared::sv1::client::NotifiedJob;
use otedama_tests::{wait_until, PoolSetup, RegtestPair, StratumTestClient};

const FLOOD_S: u64 = 3;

#[test]
fn an_honest_block_reaches_the_node_within_a_second_after_a_candidate_flood() -> anyhow::Result<()>
{
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), 0.001);
    // The flood needs a floor where every hash is a share (so about every other one a
    // block), and vardiff off so that it stays there: the default floor and the bound on
    // lowering by suggestion exist precisely to stop such a miner.
    pool.extra_args.extend(
        [
            "--difficulty-min",
            "1e-9",
            "--vardiff-share-interval-s",
            "0",
        ]
        .map(String::from),
    );
    let _run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;

    // The flooder: lowest difficulty, random nonces on the newest job it was sent, replies
    // read and dropped.
    let flooder_worker = format!("{}.flood", pool.payout_address);
    let mut flooder = StratumTestClient::connect(&pool.stratum_address())?;
    flooder.start(&flooder_worker)?;
    flooder.request("mining.suggest_difficulty", json!([1e-9]))?;
    let newest = Arc::new(Mutex::new(flooder.job.clone().expect("a job")));
    let (mut writer, reader) = flooder.into_raw();
    let drain = {
        let newest = newest.clone();
        std::thread::spawn(move || {
            let mut lines = 0u64;
            for line in reader.lines() {
                let Ok(line) = line else { break };
                lines += 1;
                let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if message["method"] == "mining.notify" {
                    if let Some(job) = NotifiedJob::from_params(&message["params"]) {
                        *newest.lock().unwrap() = job;
                    }
                }
            }
            lines
        })
    };
    let candidates_before = pool.stats()?["block_candidates"].as_u64().unwrap_or(0);
    let flood_until = Instant::now() + Duration::from_secs(FLOOD_S);
    let mut nonce = 0u32;
    while Instant::now() < flood_until {
        let job = newest.lock().unwrap().clone();
        let mut batch = Vec::new();
        for _ in 0..200 {
            nonce += 1;
            let params = json!([
                flooder_worker,
                job.job_id,
                "00000000",
                format!("{:08x}", job.ntime),
                format!("{nonce:08x}")
            ]);
            batch.extend(otedama_shared::sv1::client::request_line(
                u64::from(nonce),
                "mining.submit",
                params,
            ));
        }
        if writer.write_all(&batch).is_err() {
            break;
        }
    }
    let flooders_last_prevhash = newest.lock().unwrap().prevhash;
    let _ = writer.shutdown(std::net::Shutdown::Both);
    drop(writer);
    let replies = drain.join().expect("the reader thread");
    let flood_ended = Instant::now();
    let candidates = pool.stats()?["block_candidates"].as_u64().unwrap_or(0) - candidates_before;
    println!("flood: {nonce} shares sent, {replies} replies, {candidates} block candidates");
    assert!(
        candidates >= 500,
        "the flood made only {candidates} block candidates"
    );

    // The honest miner: its measured block is on a job newer than any the flooder saw,
    // so no flood candidate competes at its height and only the flood's backlog could
    // hold it back. If the flood's last job makes no block, the honest miner makes one
    // first (not measured) to move the chain on.
    let honest_worker = format!("{}.honest", pool.payout_address);
    let mut honest = StratumTestClient::connect(&pool.stratum_address())?;
    honest.start(&honest_worker)?;
    honest.set_read_timeout(Duration::from_millis(500))?;
    if !wait_for_newer_job(&mut honest, &flooders_last_prevhash, Duration::from_secs(3)) {
        let (_, reply) = submit_block_share(&mut honest, &honest_worker)?;
        println!("no block on the flood's last job; the honest miner made one: {reply}");
        anyhow::ensure!(
            wait_for_newer_job(
                &mut honest,
                &flooders_last_prevhash,
                Duration::from_secs(30)
            ),
            "no new job 30 s after the flood"
        );
    }
    println!(
        "the honest miner has a newer job {:?} after the flood",
        flood_ended.elapsed()
    );
    let (hash, reply) = submit_block_share(&mut honest, &honest_worker)?;
    let acknowledged = Instant::now();
    assert_eq!(reply["result"], json!(true), "{reply}");
    wait_until(
        Duration::from_secs(30),
        "the honest block on the node",
        || nodes.miner.call("getblockheader", json!([hash])).is_ok(),
    )?;
    let took = acknowledged.elapsed();
    println!("the honest block {hash} was on the node {took:?} after its acknowledgement");
    assert!(
        took < Duration::from_secs(1),
        "the honest block took {took:?} to reach the node"
    );
    Ok(())
}

/// Reads until the client holds a job on another previous block than `prevhash`.
fn wait_for_newer_job(
    client: &mut StratumTestClient,
    prevhash: &[u8; 32],
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if client
            .job
            .as_ref()
            .is_some_and(|job| &job.prevhash != prevhash)
        {
            return true;
        }
        let _ = client.read_message();
    }
    client
        .job
        .as_ref()
        .is_some_and(|job| &job.prevhash != prevhash)
}

/// Finds a block (a hash that meets both the share and the network target) on the
/// client's job and submits it; the block hash and the pool's reply.
fn submit_block_share(
    client: &mut StratumTestClient,
    worker: &str,
) -> anyhow::Result<(String, serde_json::Value)> {
    let job = client.job.clone().expect("a job");
    let network = Target::from_compact(job.bits).expect("valid bits");
    let share = Target::from_difficulty(otedama_kernels::Algorithm::Scrypt, client.difficulty)
        .expect("a share target");
    let extranonce2 = rand::random::<[u8; 4]>();
    let mut header = job.header(&client.extranonce1, &extranonce2, job.ntime, job.version);
    let nonce = (0u32..)
        .find(|n| {
            header[76..80].copy_from_slice(&n.to_le_bytes());
            let pow = scrypt_pow(&header);
            network.is_met_by(&pow) && share.is_met_by(&pow)
        })
        .expect("a block nonce");
    header[76..80].copy_from_slice(&nonce.to_le_bytes());
    let mut hash = otedama_kernels::sha256d(&header);
    hash.reverse();
    let reply = client.request(
        "mining.submit",
        json!([
            worker,
            job.job_id,
            hex::encode(extranonce2),
            format!("{:08x}", job.ntime),
            format!("{nonce:08x}")
        ]),
    )?;
    Ok((hex::encode(hash), reply))
}
