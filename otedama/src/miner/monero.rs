//! `otedama miner --algo randomx`: Monero's Stratum dialect as xmrig speaks it. `login`
//! with the wallet address (and the algorithms the miner runs), then every `job` goes to
//! the workers, which hash its blob with RandomX under the job's seed, and what they find
//! goes back as `submit` with the nonce and the hash. The miner keeps the nonce's last
//! byte when the pool's login reply names the `nicehash` extension.

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use otedama_kernels::randomx::{RandomXMode, RandomXSeed};
use otedama_kernels::Target;

use super::*;

/// Where the 4 nonce bytes sit in a Monero hashing blob of today's header.
pub(super) const NONCE_OFFSET: usize = 39;
/// The shortest blob that holds a nonce at `NONCE_OFFSET`.
const BLOB_BYTES_MIN: usize = NONCE_OFFSET + 4;
/// The longest blob taken from a pool: a header, a tree root and a count are under 100
/// bytes; RandomX takes at most `RANDOMX_INPUT_BYTES_MAX`.
const BLOB_BYTES_MAX: usize = otedama_kernels::randomx::RANDOMX_INPUT_BYTES_MAX;
/// With nothing else sent for this long, the miner says it is alive (`keepalived`), as
/// xmrig does, so a pool's idle deadline does not drop a slow miner.
const KEEPALIVE_INTERVAL_S: u64 = 60;

/// The 256-bit target a pool's `target` stands for: 4 bytes little-endian (expanded as
/// miners do, `u64::MAX / (u32::MAX / t)`) or 8. A hash meets it when its last 8 bytes,
/// read little-endian, are below the 64-bit value.
pub(super) fn parse_target(text: &str) -> Option<Target> {
    let target64 = match text.len() {
        8 => {
            let t = u32::from_le_bytes(otedama_shared::hex32::decode_exact::<4>(text)?);
            let divisor = u32::MAX.checked_div(t)?;
            u64::MAX.checked_div(u64::from(divisor))?
        }
        16 => u64::from_le_bytes(otedama_shared::hex32::decode_exact::<8>(text)?),
        _ => return None,
    };
    // top64 < t64 ⟺ hash ≤ t64 · 2^192 − 1.
    let below = target64.checked_sub(1)?;
    let mut bytes = [0xff; 32];
    bytes[24..32].copy_from_slice(&below.to_le_bytes());
    Some(Target::from_le_bytes(&bytes))
}

/// A `job` (login's or notified) as the workers' work.
fn monero_work(job: &Value, session_id: &str, nicehash: bool) -> anyhow::Result<WorkTemplate> {
    let text = |name: &str| {
        job[name]
            .as_str()
            .with_context(|| format!("the job has no {name}"))
    };
    let blob = hex::decode(text("blob")?).context("the job's blob is not hex")?;
    if !(BLOB_BYTES_MIN..=BLOB_BYTES_MAX).contains(&blob.len()) {
        bail!("a blob of {} bytes", blob.len());
    }
    if job["algo"].as_str().is_some_and(|algo| algo != "rx/0") {
        bail!("the pool sent a job for {}, not rx/0", job["algo"]);
    }
    let seed_hash = otedama_shared::hex32::decode_exact::<32>(text("seed_hash")?)
        .context("the job's seed_hash is not 32 bytes of hex")?;
    Ok(WorkTemplate::Monero {
        blob,
        job_id: text("job_id")?.to_string(),
        session_id: session_id.to_string(),
        seed_hash,
        nicehash,
    })
}

/// One connection: login, then relay jobs to the workers and their finds back as submits.
pub(super) fn session(address: &str, run: &mut Run<'_>) -> anyhow::Result<()> {
    let (args, shared, found) = (run.args, run.shared, run.found);
    let session_start = shared.withdraw_work();
    let mut stream = connect_tcp(address)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    let login = json!({"id": 1, "jsonrpc": "2.0", "method": "login",
        "params": {"login": args.user, "pass": args.password,
                   "agent": "otedama-miner/0.1", "algo": ["rx/0"]}});
    let mut line = serde_json::to_vec(&login)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut last_sent = Instant::now();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut session_id: Option<(String, bool)> = None;
    let mut pending_job: Option<Value> = None;
    let mut unanswered: u64 = 1;
    let mut text = String::new();
    while run.running() {
        while let Ok(share) = found.try_recv() {
            if share.generation <= session_start {
                continue;
            }
            if let WorkTemplate::Monero {
                job_id, session_id, ..
            } = &share.template
            {
                let submit = json!({"id": NEXT_SUBMIT_ID.fetch_add(1, Relaxed),
                    "jsonrpc": "2.0", "method": "submit",
                    "params": {"id": session_id, "job_id": job_id,
                               "nonce": hex::encode(share.nonce.to_le_bytes()),
                               "result": hex::encode(share.pow), "algo": "rx/0"}});
                let mut line = serde_json::to_vec(&submit)?;
                line.push(b'\n');
                stream.write_all(&line)?;
                last_sent = Instant::now();
                unanswered += 1;
            }
        }
        if let Some((id, _)) = &session_id {
            if last_sent.elapsed() >= Duration::from_secs(KEEPALIVE_INTERVAL_S) {
                let keepalive = json!({"id": 2, "jsonrpc": "2.0", "method": "keepalived",
                    "params": {"id": id}});
                let mut line = serde_json::to_vec(&keepalive)?;
                line.push(b'\n');
                stream.write_all(&line)?;
                last_sent = Instant::now();
                unanswered += 1;
            }
        }
        run.report();
        run.check_pool(unanswered > 0)?;
        match read_pool_line(&mut reader, &mut text)? {
            None => continue,
            Some(0) => bail!("pool closed the connection"),
            Some(_) => run.heard(),
        }
        let message: Value = serde_json::from_str(text.trim()).context("pool sent invalid JSON")?;
        text.clear();
        if message["method"].is_null() && !message["id"].is_null() {
            unanswered = unanswered.saturating_sub(1);
        }
        match (message["method"].as_str(), message["id"].as_u64()) {
            (Some("job"), _) => pending_job = Some(message["params"].clone()),
            (Some(_), _) => {}
            (None, Some(1)) => {
                let result = &message["result"];
                if !message["error"].is_null() || result["status"] != "OK" {
                    bail!("login refused: {}", message["error"]);
                }
                let id = result["id"]
                    .as_str()
                    .context("the login reply has no session id")?;
                let nicehash = result["extensions"]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|e| e == "nicehash"));
                session_id = Some((id.to_string(), nicehash));
                pending_job = Some(result["job"].clone());
            }
            (None, Some(id)) if id >= 100 => {
                if message["result"]["status"] == "OK" {
                    shared.accepted.fetch_add(1, Relaxed);
                } else {
                    shared.rejected.fetch_add(1, Relaxed);
                    eprintln!("miner: share refused: {}", message["error"]);
                }
            }
            _ => {}
        }
        if let (Some(job), Some((id, nicehash))) = (pending_job.take(), session_id.as_ref()) {
            let target = parse_target(job["target"].as_str().unwrap_or_default())
                .context("the job's target is not 4 or 8 bytes of hex")?;
            let template = monero_work(&job, id, *nicehash)?;
            if let WorkTemplate::Monero { seed_hash, .. } = &template {
                prepare_seed(shared, seed_hash, args.randomx_fast)?;
            }
            let generation = shared.generation.fetch_add(1, Relaxed) + 1;
            *shared.work.lock().expect("work lock") = Some(Work {
                template,
                target,
                generation,
            });
        }
    }
    Ok(())
}

/// Makes `seed_hash` the workers' seed unless it already is: light mode (256 MiB, a
/// second to prepare), or fast mode with `--randomx-fast` (2 GiB and a minute or more).
fn prepare_seed(shared: &Shared, seed_hash: &[u8; 32], fast: bool) -> anyhow::Result<()> {
    if shared
        .randomx
        .lock()
        .expect("seed lock")
        .as_ref()
        .is_some_and(|seed| seed.key() == seed_hash)
    {
        return Ok(());
    }
    let mode = if fast {
        RandomXMode::Fast
    } else {
        RandomXMode::Light
    };
    eprintln!(
        "miner: preparing RandomX seed {} ({mode:?})",
        hex::encode(seed_hash)
    );
    let seed = RandomXSeed::prepare(seed_hash, mode)
        .map_err(|error| anyhow::anyhow!("preparing the RandomX seed: {error:?}"))?;
    *shared.randomx.lock().expect("seed lock") = Some(Arc::new(seed));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both target forms, as xmrig reads them: 4 bytes expand to 64, 8 are taken as
    /// they are; a hash meets the target when its last 8 bytes are below it.
    #[test]
    fn targets_are_read_as_miners_read_them() {
        let eight = parse_target(&hex::encode(4_294_967_296u64.to_le_bytes())).unwrap();
        let mut hash = [0u8; 32];
        hash[24..32].copy_from_slice(&4_294_967_295u64.to_le_bytes());
        hash[..24].fill(0xff);
        assert!(eight.is_met_by(&hash));
        hash[24..32].copy_from_slice(&4_294_967_296u64.to_le_bytes());
        hash[..24].fill(0);
        assert!(!eight.is_met_by(&hash));
        // 0xb88d0600 (little-endian 0x00068db8) expands to u64::MAX / (u32::MAX / t).
        let four = parse_target("b88d0600").unwrap();
        let t64 = u64::MAX / (u64::from(u32::MAX / 0x0006_8db8));
        let mut at = [0u8; 32];
        at[24..32].copy_from_slice(&(t64 - 1).to_le_bytes());
        assert!(four.is_met_by(&at));
        at[24..32].copy_from_slice(&t64.to_le_bytes());
        assert!(!four.is_met_by(&at));
        for bad in ["", "00000000", "0000000000000000", "zz000000", "000000"] {
            assert!(parse_target(bad).is_none(), "{bad}");
        }
    }
}
