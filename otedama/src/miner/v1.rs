//! `otedama miner` over Stratum V1: subscribe, authorize (and roll versions where the
//! pool allows), then relay the newest job to the workers and their finds back as submits.

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use otedama_kernels::Target;
use otedama_shared::sv1::client::{request_line, submit_line, NotifiedJob};

use super::*;

/// The miner's `mining.subscribe` (id 1), the first line of a session and the failback
/// check's question.
pub(super) fn subscribe_line() -> Vec<u8> {
    request_line(1, "mining.subscribe", json!(["otedama-miner/0.1"]))
}

/// One connection: subscribe, authorize, then relay work and submits until it drops.
pub(super) fn session(address: &str, run: &mut Run<'_>) -> anyhow::Result<()> {
    let (args, shared, found) = (run.args, run.shared, run.found);
    // Finds on an earlier connection's work are not this connection's to submit.
    let session_start = shared.withdraw_work();
    let mut stream = connect_tcp(address)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    stream.write_all(&subscribe_line())?;
    stream.write_all(&request_line(
        2,
        "mining.authorize",
        json!([args.user, args.password]),
    ))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut subscription: Option<(Vec<u8>, usize)> = None;
    let mut difficulty = 1.0;
    let mut pending_job: Option<NotifiedJob> = None;
    let mut line = String::new();
    // Requests sent (subscribe and authorize so far) that the pool has not answered.
    let mut unanswered: u64 = 2;
    // With `--accepted-log`: each share this session submitted and the pool has not
    // answered, by request id, as its line in the log. Answered ones leave at once.
    let mut submitted: std::collections::HashMap<u64, String> = Default::default();
    // The pool asked for a reconnect (`client.reconnect`, a pool handing its miners to its
    // replacement): nothing more is submitted here, and once every request is answered
    // the session ends and the miner connects to the same address again.
    let mut reconnect_asked = false;
    while run.running() {
        if reconnect_asked {
            // Found on this session's job: worth nothing on the next connection.
            while found.try_recv().is_ok() {}
            if unanswered == 0 {
                eprintln!("miner: the pool asked to reconnect: connecting again");
                return Ok(());
            }
        }
        while let Ok(share) = found.try_recv() {
            if share.generation <= session_start {
                continue;
            }
            if let WorkTemplate::V1 {
                job, extranonce1, ..
            } = &share.template
            {
                let id = NEXT_SUBMIT_ID.fetch_add(1, Relaxed);
                if run.accepted_log.is_some() {
                    submitted.insert(
                        id,
                        format!(
                            "{} {} {:08x} {:08x}\n",
                            hex::encode(extranonce1),
                            hex::encode(&share.extranonce2),
                            share.ntime,
                            share.nonce
                        ),
                    );
                }
                stream.write_all(&submit_line(
                    id,
                    &args.user,
                    &job.job_id,
                    &share.extranonce2,
                    share.ntime,
                    share.nonce,
                    None,
                ))?;
                unanswered += 1;
            }
        }
        run.report();
        run.check_pool(unanswered > 0)?;
        match read_pool_line(&mut reader, &mut line) {
            Ok(Some(0)) if reconnect_asked => {
                eprintln!("miner: the pool asked to reconnect and closed: connecting again");
                return Ok(());
            }
            Ok(Some(0)) => bail!("pool closed the connection"),
            Ok(Some(_)) => run.heard(),
            Ok(None) => continue,
            // A reset after the request is the reconnect too.
            Err(_) if reconnect_asked => {
                eprintln!("miner: the pool asked to reconnect and closed: connecting again");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let message: Value = serde_json::from_str(line.trim()).context("pool sent invalid JSON")?;
        line.clear();
        if message["method"].is_null() && !message["id"].is_null() {
            // The answer to one of the miner's requests.
            unanswered = unanswered.saturating_sub(1);
        }
        match message["method"].as_str() {
            Some("mining.notify") => {
                pending_job = NotifiedJob::from_params(&message["params"]);
                if pending_job.is_none() {
                    bail!("pool sent a malformed mining.notify");
                }
            }
            Some("mining.set_difficulty") => {
                difficulty = message["params"][0]
                    .as_f64()
                    .context("malformed set_difficulty")?;
            }
            // To the same address whatever it names: the miner mines where it was told.
            Some("client.reconnect") => {
                reconnect_asked = true;
                shared.withdraw_work();
            }
            Some(_) => {}
            None => match message["id"].as_u64() {
                Some(1) => {
                    let result = &message["result"];
                    let extranonce1 =
                        hex::decode(result[1].as_str().unwrap_or("")).context("bad extranonce1")?;
                    let size = result[2].as_u64().context("bad extranonce2 size")? as usize;
                    subscription = Some((extranonce1, size));
                }
                Some(2) if message["result"] != json!(true) => {
                    bail!("authorization refused: {}", message["error"])
                }
                Some(id) if id >= 100 => {
                    let line = submitted.remove(&id);
                    if message["result"] == json!(true) {
                        shared.accepted.fetch_add(1, Relaxed);
                        if let (Some(log), Some(line)) = (run.accepted_log.as_mut(), line) {
                            log.write_all(line.as_bytes())
                                .context("writing --accepted-log")?;
                        }
                    } else {
                        shared.rejected.fetch_add(1, Relaxed);
                    }
                }
                _ => {}
            },
        }
        if reconnect_asked {
            pending_job = None;
        }
        if let (Some(job), Some((extranonce1, size))) = (pending_job.take(), subscription.as_ref())
        {
            let generation = shared.generation.fetch_add(1, Relaxed) + 1;
            let target =
                Target::from_difficulty(algorithm_of(args), difficulty).unwrap_or(Target::MAX);
            *shared.work.lock().expect("work lock") = Some(Work {
                template: WorkTemplate::V1 {
                    job,
                    extranonce1: extranonce1.clone(),
                    extranonce2_size: *size,
                },
                target,
                generation,
            });
        }
    }
    Ok(())
}
