//! `otedama miner`: a multi-threaded CPU miner that speaks Stratum V1 the way cpuminer
//! does. One thread owns the connection; worker threads scan nonces on the newest job,
//! each with its own extranonce2, and hand winning nonces back as `mining.submit`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use otedama_kernels::scrypt::scrypt_pow;
use otedama_kernels::{sha256d, Algorithm, Target};
use otedama_shared::sv1::client::{request_line, submit_line, NotifiedJob};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AlgoArg {
    Scrypt,
    Sha256d,
}

#[derive(Clone, Debug, clap::Args)]
pub struct MinerArgs {
    /// Pool URL, stratum+tcp://HOST:PORT.
    #[arg(long)]
    pub url: String,
    /// Worker name to authorize, such as ADDRESS.WORKER.
    #[arg(long)]
    pub user: String,
    #[arg(long, default_value = "x")]
    pub password: String,
    #[arg(long, value_enum, default_value = "scrypt")]
    pub algo: AlgoArg,
    /// Mining threads (default: 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    pub duration: Option<u64>,
}

/// What the worker threads mine on; replaced whenever a job or difficulty arrives.
#[derive(Clone)]
struct Work {
    job: NotifiedJob,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    target: Target,
    generation: u64,
}

struct Shared {
    work: Mutex<Option<Work>>,
    generation: AtomicU64,
    hashes: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    stop: AtomicBool,
}

pub fn run(args: MinerArgs) -> anyhow::Result<()> {
    let address = args
        .url
        .strip_prefix("stratum+tcp://")
        .context("--url must look like stratum+tcp://HOST:PORT")?
        .trim_end_matches('/')
        .to_string();
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let algorithm = match args.algo {
        AlgoArg::Scrypt => Algorithm::Scrypt,
        AlgoArg::Sha256d => Algorithm::Sha256d,
    };
    let shared = Arc::new(Shared {
        work: Mutex::new(None),
        generation: AtomicU64::new(0),
        hashes: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let (submit_tx, submit_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let workers: Vec<_> = (0..args.threads)
        .map(|index| {
            let (shared, submit_tx, user) = (shared.clone(), submit_tx.clone(), args.user.clone());
            std::thread::spawn(move || mine(index, algorithm, &shared, &submit_tx, &user))
        })
        .collect();
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let started = Instant::now();
    let mut last_report = Instant::now();
    while deadline.is_none_or(|d| Instant::now() < d) {
        if let Err(error) = session(
            &address,
            &args,
            &shared,
            &submit_rx,
            deadline,
            &mut last_report,
            started,
        ) {
            eprintln!("miner: {error:#}; reconnecting in 1 s");
            *shared.work.lock().expect("work lock") = None;
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    shared.stop.store(true, Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    println!(
        "miner done: accepted {} rejected {} hashrate {:.0} H/s",
        shared.accepted.load(Relaxed),
        shared.rejected.load(Relaxed),
        shared.hashes.load(Relaxed) as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One connection: subscribe, authorize, then relay work and submits until it drops.
fn session(
    address: &str,
    args: &MinerArgs,
    shared: &Shared,
    submits: &crossbeam_channel::Receiver<Vec<u8>>,
    deadline: Option<Instant>,
    last_report: &mut Instant,
    started: Instant,
) -> anyhow::Result<()> {
    let mut stream =
        TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    stream.write_all(&request_line(
        1,
        "mining.subscribe",
        json!(["otedama-miner/0.1"]),
    ))?;
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
    while deadline.is_none_or(|d| Instant::now() < d) {
        while let Ok(submit) = submits.try_recv() {
            stream.write_all(&submit)?;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            *last_report = Instant::now();
            eprintln!(
                "miner: accepted {} rejected {} hashrate {:.0} H/s",
                shared.accepted.load(Relaxed),
                shared.rejected.load(Relaxed),
                shared.hashes.load(Relaxed) as f64 / started.elapsed().as_secs_f64()
            );
        }
        match reader.read_line(&mut line) {
            Ok(0) => bail!("pool closed the connection"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
        let message: Value = serde_json::from_str(line.trim()).context("pool sent invalid JSON")?;
        line.clear();
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
                    if message["result"] == json!(true) {
                        shared.accepted.fetch_add(1, Relaxed);
                    } else {
                        shared.rejected.fetch_add(1, Relaxed);
                    }
                }
                _ => {}
            },
        }
        if let (Some(job), Some((extranonce1, size))) = (pending_job.take(), subscription.as_ref())
        {
            let generation = shared.generation.fetch_add(1, Relaxed) + 1;
            let target =
                Target::from_difficulty(algorithm_of(args), difficulty).unwrap_or(Target::MAX);
            *shared.work.lock().expect("work lock") = Some(Work {
                job,
                extranonce1: extranonce1.clone(),
                extranonce2_size: *size,
                target,
                generation,
            });
        }
    }
    Ok(())
}

fn algorithm_of(args: &MinerArgs) -> Algorithm {
    match args.algo {
        AlgoArg::Scrypt => Algorithm::Scrypt,
        AlgoArg::Sha256d => Algorithm::Sha256d,
    }
}

static NEXT_SUBMIT_ID: AtomicU64 = AtomicU64::new(100);

fn mine(
    index: usize,
    algorithm: Algorithm,
    shared: &Shared,
    submits: &crossbeam_channel::Sender<Vec<u8>>,
    user: &str,
) {
    // Hashes between checks for new work: scrypt is ~1000x slower than SHA256d.
    let check_every = match algorithm {
        Algorithm::Scrypt => 64,
        Algorithm::Sha256d => 65_536,
    };
    let mut extranonce2_counter: u64 = 0;
    while !shared.stop.load(Relaxed) {
        let Some(work) = shared.work.lock().expect("work lock").clone() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        // Thread index in the top byte keeps threads on disjoint extranonce2 ranges.
        extranonce2_counter += 1;
        let mut extranonce2 = vec![0u8; work.extranonce2_size];
        let counter_bytes = ((index as u64) << 56 | extranonce2_counter).to_be_bytes();
        let take = extranonce2.len().min(8);
        extranonce2[..take].copy_from_slice(&counter_bytes[8 - take..]);
        if take > 0 {
            extranonce2[0] = index as u8;
        }
        let ntime = work.job.ntime;
        let version = work.job.version;
        let mut header = work
            .job
            .header(&work.extranonce1, &extranonce2, ntime, version);
        let mut nonce: u32 = 0;
        loop {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let pow = match algorithm {
                Algorithm::Scrypt => scrypt_pow(&header),
                Algorithm::Sha256d => sha256d(&header),
            };
            if work.target.is_met_by(&pow) {
                let id = NEXT_SUBMIT_ID.fetch_add(1, Relaxed);
                let _ = submits.send(submit_line(
                    id,
                    user,
                    &work.job.job_id,
                    &extranonce2,
                    ntime,
                    nonce,
                    None,
                ));
            }
            nonce = nonce.wrapping_add(1);
            if nonce % check_every == 0 {
                shared.hashes.fetch_add(check_every as u64, Relaxed);
                if shared.stop.load(Relaxed) || shared.generation.load(Relaxed) != work.generation {
                    break;
                }
            }
            if nonce == 0 {
                break; // nonce space exhausted: next extranonce2
            }
        }
    }
}
