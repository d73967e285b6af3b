//! `otedama miner`: a multi-threaded CPU miner. Over Stratum V1 it speaks the way cpuminer
//! does; over Stratum V2 (`stratum2+tcp://HOST:PORT/KEY`, Noise pinned to the pool's
//! authority key) it is a header-only device on a standard channel. One thread owns the
//! connection; worker threads scan nonces on the newest work, each on its own extranonce2
//! (V1) or version bits (V2), and hand what they find back to it. With `--algo randomx`
//! a `stratum+tcp://` URL speaks Monero's dialect instead (`monero`): RandomX on the
//! pool's blob, each thread on its own part of the nonce.
//!
//! Several `--url`s are pool slots, as mining firmware has: the miner mines on the first
//! that answers, moves to the next when its pool refuses the connection, drops it or says
//! nothing for `--silent-timeout-s` while a request waits, and goes back to an earlier slot
//! as soon as that one answers again (checked every `--failback-interval-s`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use otedama_kernels::scrypt::scrypt_pow;
use otedama_kernels::{sha256d, Algorithm, Target};
use otedama_shared::clock::now_s as unix_now_s;
use otedama_shared::sv1::client::NotifiedJob;
use otedama_shared::sv2::noise::decode_authority_public_key;

mod monero;
mod v1;
mod v2;

use v1::session;
use v2::{connect_v2, session_v2};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AlgoArg {
    Scrypt,
    Sha256d,
    /// Monero's RandomX, over Monero's Stratum dialect (`stratum+tcp://` only).
    Randomx,
}

#[derive(Clone, Debug, clap::Args)]
pub struct MinerArgs {
    /// Pool URL: stratum+tcp://HOST:PORT (V1), stratum2+tcp://HOST:PORT/KEY (V2 with
    /// Noise, KEY being the pool's authority public key) or stratum2+quic://HOST:PORT (V2
    /// over QUIC, TLS 1.3). Repeat it for backup pools, in order of preference (at most 8):
    /// the miner moves to the next on a refused, dropped or silent connection and returns
    /// to an earlier one once it answers again.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Seconds a request of the miner's (subscribe, authorize, channel setup, a share) may
    /// wait with nothing at all from the pool before the miner takes the pool for dead
    /// and moves to the next URL. A pool with nothing asked of it may stay quiet (no new
    /// template, no share found) without counting as silent.
    #[arg(long, default_value_t = 120)]
    pub silent_timeout_s: u64,
    /// While mining on a backup URL, seconds between checks whether an earlier one answers
    /// again (a V1 subscribe answered, or the whole V2 Noise handshake with the URL's key;
    /// QUIC URLs are not checked: the miner returns to them only when the later ones fail).
    #[arg(long, default_value_t = 60)]
    pub failback_interval_s: u64,
    /// For stratum2+quic: a PEM certificate to trust, such as the pool's self-signed
    /// `quic-cert.pem` (default: the system's CA bundle).
    #[arg(long)]
    pub quic_ca: Option<std::path::PathBuf>,
    /// Worker name to authorize, such as ADDRESS.WORKER.
    #[arg(long)]
    pub user: String,
    #[arg(long, default_value = "x")]
    pub password: String,
    #[arg(long, value_enum, default_value = "scrypt")]
    pub algo: AlgoArg,
    /// With `--algo randomx`: hash in RandomX's fast mode (a 2 GiB dataset per seed,
    /// prepared for a minute or more, then several times the light mode's rate).
    #[arg(long)]
    pub randomx_fast: bool,
    /// Mining threads (default: 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    pub duration: Option<u64>,
    /// For stratum2: the hash rate (H/s) to declare when opening the channel, which the
    /// pool sizes the first target for (default: a CPU's, about 5 kH/s scrypt or
    /// 5 MH/s SHA256d a thread). Declaring far more than the miner does is how an
    /// overstating ASIC looks to the pool.
    #[arg(long)]
    pub declared_hashrate: Option<f32>,
    /// Append a line for each share the pool answers `true` to over Stratum V1:
    /// EXTRANONCE1 EXTRANONCE2 NTIME NONCE in hex, so that each acknowledged share can be
    /// looked for in the pool's records. (Stratum V2 acknowledges shares by count, not one
    /// by one, so its shares are not listed.)
    #[arg(long)]
    pub accepted_log: Option<std::path::PathBuf>,
}

/// What the worker threads mine on; replaced whenever a job or difficulty arrives.
#[derive(Clone)]
struct Work {
    template: WorkTemplate,
    target: Target,
    generation: u64,
}

#[derive(Clone)]
enum WorkTemplate {
    /// V1: the miner builds the coinbase and merkle root for each extranonce2.
    V1 {
        job: NotifiedJob,
        extranonce1: Vec<u8>,
        extranonce2_size: usize,
    },
    /// V2 standard channel: the header is given, nonce 0; the miner rolls the nonce and
    /// the BIP320 version bits.
    V2 {
        header: [u8; 80],
        channel_id: u32,
        job_id: u32,
    },
    /// Monero: the pool's hashing blob; the miner writes the nonce at
    /// `monero::NONCE_OFFSET`, keeping its last byte in nicehash mode.
    Monero {
        blob: Vec<u8>,
        job_id: String,
        session_id: String,
        seed_hash: [u8; 32],
        nicehash: bool,
    },
}

/// A share a worker thread found, for the connection thread to submit.
struct Found {
    /// The generation of the work it was found on (`Work::generation`).
    generation: u64,
    template: WorkTemplate,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version: u32,
    /// The proof-of-work hash it was found with (Monero's `submit` carries it).
    pow: [u8; 32],
}

/// The least time between two reconnects a pool asked for (`client.reconnect`,
/// Reconnect), so a pool asking again and again cannot spin the miner.
const RECONNECT_INTERVAL_MIN_MS: u64 = 1_000;

/// Version bits a V2 miner rolls (BIP320), as the pool allows by default.
const VERSION_ROLLING_MASK: u32 = 0x1fff_e000;

/// The pool a URL names.
#[derive(Clone)]
enum Endpoint {
    V1 {
        address: String,
    },
    V2 {
        address: String,
        authority: [u8; 32],
    },
    Quic {
        address: String,
    },
}

/// Pool URLs one miner takes at most: firmware has three slots; a few more cost nothing.
pub const POOL_URLS_MAX: usize = 8;
/// How long a failback check waits for an earlier pool's connection, and then for its
/// answer.
const FAILBACK_CONNECT_TIMEOUT_MS: u64 = 2_000;

impl Endpoint {
    fn address(&self) -> &str {
        match self {
            Endpoint::V1 { address }
            | Endpoint::V2 { address, .. }
            | Endpoint::Quic { address } => address,
        }
    }

    /// Whether the pool takes a connection and answers within `FAILBACK_CONNECT_TIMEOUT_MS`
    /// for each step: V1, a `mining.subscribe` answered; V2, the whole Noise handshake, so
    /// a host that now holds another authority key does not count. A pool that only
    /// completes the TCP handshake (its process hung, or still starting) does not count
    /// either, so the miner does not leave a working slot for it.
    fn answers(&self) -> bool {
        let timeout = Duration::from_millis(FAILBACK_CONNECT_TIMEOUT_MS);
        match self {
            Endpoint::V1 { address } => {
                let Ok(mut stream) = connect_tcp_within(address, timeout) else {
                    return false;
                };
                let subscribe = v1::subscribe_line();
                let mut byte = [0u8; 1];
                stream.set_read_timeout(Some(timeout)).is_ok()
                    && std::io::Write::write_all(&mut stream, &subscribe).is_ok()
                    && matches!(std::io::Read::read(&mut stream, &mut byte), Ok(1))
            }
            Endpoint::V2 { address, authority } => {
                v2::NoiseLink::connect_within(address, *authority, timeout, timeout).is_ok()
            }
            // No handshake to try without a whole QUIC connection.
            Endpoint::Quic { .. } => false,
        }
    }
}

/// How long a connection to a pool may take before the miner tries the next slot (the
/// system's own wait for a host that drops the handshake is minutes).
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// A TCP connection to `address` (HOST:PORT, each resolved address tried in turn), with
/// Nagle off, or the error of the last address tried.
fn connect_tcp(address: &str) -> anyhow::Result<std::net::TcpStream> {
    connect_tcp_within(address, Duration::from_millis(CONNECT_TIMEOUT_MS))
}

/// `connect_tcp` with each address given `timeout`.
fn connect_tcp_within(address: &str, timeout: Duration) -> anyhow::Result<std::net::TcpStream> {
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(address)
        .with_context(|| format!("resolving {address}"))?;
    let mut last_error = None;
    for candidate in resolved {
        match std::net::TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) => anyhow::Error::new(error).context(format!("connecting to {address}")),
        None => anyhow::anyhow!("{address} resolves to no address"),
    })
}

/// A session ended because an earlier pool slot takes connections again.
#[derive(Debug)]
struct FailBack {
    slot: usize,
}

impl std::fmt::Display for FailBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pool slot {} answers again", self.slot + 1)
    }
}

impl std::error::Error for FailBack {}

fn parse_url(url: &str) -> anyhow::Result<Endpoint> {
    if let Some(rest) = url.strip_prefix("stratum+tcp://") {
        return Ok(Endpoint::V1 {
            address: rest.trim_end_matches('/').to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("stratum2+tcp://") {
        let (address, key) = rest.split_once('/').context(
            "a stratum2+tcp URL needs the pool's authority key: stratum2+tcp://HOST:PORT/KEY",
        )?;
        let authority = decode_authority_public_key(key)
            .context("the authority key in the URL is not a valid base58check SV2 key")?;
        return Ok(Endpoint::V2 {
            address: address.to_string(),
            authority,
        });
    }
    if let Some(rest) = url.strip_prefix("stratum2+quic://") {
        return Ok(Endpoint::Quic {
            address: rest.trim_end_matches('/').to_string(),
        });
    }
    bail!("--url must be stratum+tcp://HOST:PORT, stratum2+tcp://HOST:PORT/KEY or stratum2+quic://HOST:PORT")
}

struct Shared {
    work: Mutex<Option<Work>>,
    generation: AtomicU64,
    hashes: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    stop: AtomicBool,
    /// With `--algo randomx`: the seed of the newest job, which every thread's VM uses.
    randomx: Mutex<Option<Arc<otedama_kernels::randomx::RandomXSeed>>>,
}

impl Shared {
    /// Takes the work away (a connection ended or is ending): the mining threads stop on
    /// the generation's change. Returns the new generation: finds from work before it
    /// belong to a connection that is gone and are not submitted on the next one.
    fn withdraw_work(&self) -> u64 {
        *self.work.lock().expect("work lock") = None;
        self.generation.fetch_add(1, Relaxed) + 1
    }
}

pub fn run(args: MinerArgs) -> anyhow::Result<()> {
    if args.url.len() > POOL_URLS_MAX {
        bail!("at most {POOL_URLS_MAX} --url (POOL_URLS_MAX)");
    }
    let endpoints = args
        .url
        .iter()
        .map(|url| parse_url(url).with_context(|| format!("--url {url}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Built once: its session store lets every reconnection resume, with 0-RTT.
    let quic_client = if endpoints
        .iter()
        .any(|endpoint| matches!(endpoint, Endpoint::Quic { .. }))
    {
        Some(otedama_client::quic_client_config(args.quic_ca.as_deref())?)
    } else {
        None
    };
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if args.silent_timeout_s == 0 || args.failback_interval_s == 0 {
        bail!("--silent-timeout-s and --failback-interval-s must be at least 1");
    }
    if matches!(args.algo, AlgoArg::Randomx)
        && endpoints
            .iter()
            .any(|endpoint| !matches!(endpoint, Endpoint::V1 { .. }))
    {
        bail!("--algo randomx speaks Monero's dialect over stratum+tcp:// URLs only");
    }
    let algo = args.algo;
    let shared = Arc::new(Shared {
        work: Mutex::new(None),
        generation: AtomicU64::new(0),
        hashes: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        randomx: Mutex::new(None),
    });
    let (found_tx, found_rx) = crossbeam_channel::unbounded::<Found>();
    crate::signals::install_stop_handler();
    let workers: Vec<_> = (0..args.threads)
        .map(|index| {
            let (shared, found_tx) = (shared.clone(), found_tx.clone());
            std::thread::spawn(move || mine(index, algo, &shared, &found_tx))
        })
        .collect();
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut run = Run {
        args: &args,
        shared: &shared,
        found: &found_rx,
        deadline,
        started: Instant::now(),
        last_report: Instant::now(),
        last_heard: Instant::now(),
        earlier: Vec::new(),
        next_failback_check: Instant::now(),
        accepted_log: match &args.accepted_log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => None,
        },
    };
    let mut slot = 0;
    let mut last_reconnect: Option<Instant> = None;
    while run.running() {
        let endpoint = &endpoints[slot];
        // Earlier slots a failback check may return to, best first (QUIC ones cannot be
        // checked without a whole connection).
        run.earlier = endpoints[..slot]
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, earlier)| !matches!(earlier, Endpoint::Quic { .. }))
            .collect();
        run.next_failback_check = Instant::now() + Duration::from_secs(args.failback_interval_s);
        run.last_heard = Instant::now();
        let result = match endpoint {
            Endpoint::V1 { address } if matches!(args.algo, AlgoArg::Randomx) => {
                monero::session(address, &mut run)
            }
            Endpoint::V1 { address } => session(address, &mut run),
            Endpoint::V2 { address, .. } | Endpoint::Quic { address } => {
                connect_v2(endpoint, quic_client.as_ref())
                    .and_then(|mut link| session_v2(link.as_mut(), address, &mut run))
            }
        };
        let Err(error) = result else {
            // The pool asked for a reconnect: to the same URL at once, but not more often
            // than RECONNECT_INTERVAL_MIN_MS whatever a pool asks.
            let pause = Duration::from_millis(RECONNECT_INTERVAL_MIN_MS);
            if let Some(since) = last_reconnect.map(|at| at.elapsed()) {
                std::thread::sleep(pause.saturating_sub(since));
            }
            last_reconnect = Some(Instant::now());
            continue;
        };
        // Work from the pool left behind is worth nothing to the next one.
        shared.withdraw_work();
        if let Some(FailBack { slot: earlier }) = error.downcast_ref::<FailBack>() {
            eprintln!("miner: {error}: back to {}", args.url[*earlier]);
            slot = *earlier;
            continue;
        }
        slot += 1;
        if slot == endpoints.len() {
            // Every slot failed in turn: start again from the first, after a pause.
            slot = 0;
            eprintln!(
                "miner: {}: {error:#}; trying {} in 1 s",
                endpoint.address(),
                args.url[slot]
            );
            std::thread::sleep(Duration::from_secs(1));
        } else {
            eprintln!(
                "miner: {}: {error:#}; moving to {}",
                endpoint.address(),
                args.url[slot]
            );
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
        shared.hashes.load(Relaxed) as f64 / run.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What every connection of a run shares: the flags, the workers' state and what they
/// find, when the run ends, and the progress report's clock.
struct Run<'a> {
    args: &'a MinerArgs,
    shared: &'a Shared,
    found: &'a crossbeam_channel::Receiver<Found>,
    deadline: Option<Instant>,
    started: Instant,
    last_report: Instant,
    /// When the pool of this session last sent anything.
    last_heard: Instant,
    /// Earlier pool slots (index, pool) a failback check tries, best first.
    earlier: Vec<(usize, Endpoint)>,
    next_failback_check: Instant,
    /// `--accepted-log`, open for appending.
    accepted_log: Option<std::fs::File>,
}

impl Run<'_> {
    /// Until `--duration` is up, or SIGINT/SIGTERM asks the miner to stop (it then ends
    /// its session and prints its summary, as at the end of `--duration`).
    fn running(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d) && !crate::signals::stop_requested()
    }

    /// The pool of this session sent something.
    fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Ends the session (`Err`) when its pool has sent nothing for `--silent-timeout-s`
    /// while `awaiting_answer` (a request of the miner's waits for its answer), or with a
    /// `FailBack` when an earlier slot answers again (`Endpoint::answers`). Called on every
    /// turn of a session's loop, which turns at least every 50 ms.
    fn check_pool(&mut self, awaiting_answer: bool) -> anyhow::Result<()> {
        let silent_s = self.last_heard.elapsed().as_secs();
        if awaiting_answer && silent_s >= self.args.silent_timeout_s {
            bail!("the pool sent nothing for {silent_s} s while a request waited (--silent-timeout-s)");
        }
        if self.earlier.is_empty() || Instant::now() < self.next_failback_check {
            return Ok(());
        }
        self.next_failback_check =
            Instant::now() + Duration::from_secs(self.args.failback_interval_s);
        for (slot, earlier) in &self.earlier {
            if earlier.answers() {
                return Err(FailBack { slot: *slot }.into());
            }
        }
        Ok(())
    }

    /// Prints the counts and the hash rate every 10 s.
    fn report(&mut self) {
        if self.last_report.elapsed() >= Duration::from_secs(10) {
            self.last_report = Instant::now();
            eprintln!(
                "miner: accepted {} rejected {} hashrate {:.0} H/s",
                self.shared.accepted.load(Relaxed),
                self.shared.rejected.load(Relaxed),
                self.shared.hashes.load(Relaxed) as f64 / self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// The Bitcoin-family algorithm of `--algo` (RandomX never reaches the V1 and V2
/// sessions: `run` sends it to Monero's).
fn algorithm_of(args: &MinerArgs) -> Algorithm {
    match args.algo {
        AlgoArg::Scrypt => Algorithm::Scrypt,
        AlgoArg::Sha256d | AlgoArg::Randomx => Algorithm::Sha256d,
    }
}

static NEXT_SUBMIT_ID: AtomicU64 = AtomicU64::new(100);

/// Reads a line from the pool into `line`: `Ok(None)` when none came within the socket's
/// read timeout (the session loop then turns again), `Ok(Some(0))` when the pool closed.
fn read_pool_line(
    reader: &mut impl std::io::BufRead,
    line: &mut String,
) -> std::io::Result<Option<usize>> {
    match reader.read_line(line) {
        Ok(read) => Ok(Some(read)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn mine(index: usize, algo: AlgoArg, shared: &Shared, found: &crossbeam_channel::Sender<Found>) {
    // Hashes between checks for new work: scrypt is ~1000x slower than SHA256d.
    let (algorithm, check_every) = match algo {
        AlgoArg::Scrypt => (Algorithm::Scrypt, 64),
        AlgoArg::Sha256d | AlgoArg::Randomx => (Algorithm::Sha256d, 65_536),
    };
    let mut roll_counter: u64 = 0;
    // The thread's RandomX VM, for the seed it was made with.
    let mut randomx: Option<otedama_kernels::randomx::RandomXVm> = None;
    while !shared.stop.load(Relaxed) {
        let Some(work) = shared.work.lock().expect("work lock").clone() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if let WorkTemplate::Monero { .. } = &work.template {
            mine_randomx(index, &work, &mut randomx, shared, found);
            continue;
        }
        roll_counter += 1;
        // Each pass over the nonce space gets new coinbase bytes (V1: extranonce2, thread
        // index in its top byte) or new version bits (V2: BIP320's 16 bits, thread index
        // in the top four), so threads never hash the same header.
        let (mut header, extranonce2, ntime, version) = match &work.template {
            WorkTemplate::V1 {
                job,
                extranonce1,
                extranonce2_size,
            } => {
                let mut extranonce2 = vec![0u8; *extranonce2_size];
                let counter_bytes = ((index as u64) << 56 | roll_counter).to_be_bytes();
                let take = extranonce2.len().min(8);
                extranonce2[..take].copy_from_slice(&counter_bytes[8 - take..]);
                if take > 0 {
                    extranonce2[0] = index as u8;
                }
                let header = job.header(extranonce1, &extranonce2, job.ntime, job.version);
                (header, extranonce2, job.ntime, job.version)
            }
            WorkTemplate::Monero { .. } => unreachable!("mined by mine_randomx"),
            WorkTemplate::V2 { header, .. } => {
                let base_version = u32::from_le_bytes(header[0..4].try_into().expect("4"));
                let bits = ((index as u32 & 0xf) << 12 | (roll_counter as u32 & 0xfff)) << 13;
                let version =
                    (base_version & !VERSION_ROLLING_MASK) | (bits & VERSION_ROLLING_MASK);
                let min_ntime = u32::from_le_bytes(header[68..72].try_into().expect("4"));
                let ntime = min_ntime.max(unix_now_s() as u32);
                let mut header = *header;
                header[0..4].copy_from_slice(&version.to_le_bytes());
                header[68..72].copy_from_slice(&ntime.to_le_bytes());
                (header, Vec::new(), ntime, version)
            }
        };
        let mut nonce: u32 = 0;
        loop {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let pow = match algorithm {
                Algorithm::Scrypt => scrypt_pow(&header),
                Algorithm::Sha256d => sha256d(&header),
            };
            if work.target.is_met_by(&pow) {
                let _ = found.send(Found {
                    generation: work.generation,
                    template: work.template.clone(),
                    extranonce2: extranonce2.clone(),
                    ntime,
                    nonce,
                    version,
                    pow,
                });
            }
            nonce = nonce.wrapping_add(1);
            if nonce.is_multiple_of(check_every) {
                shared.hashes.fetch_add(check_every as u64, Relaxed);
                if shared.stop.load(Relaxed) || shared.generation.load(Relaxed) != work.generation {
                    break;
                }
            }
            if nonce == 0 {
                break; // nonce space exhausted: roll the coinbase or the version
            }
        }
    }
}

/// Hashes a Monero job's blob until new work comes or this thread's part of the nonce is
/// spent: the nonce's last byte is the thread's (or, in nicehash mode, the pool's, with
/// the thread's in the byte before), the rest counts up.
fn mine_randomx(
    index: usize,
    work: &Work,
    vm: &mut Option<otedama_kernels::randomx::RandomXVm>,
    shared: &Shared,
    found: &crossbeam_channel::Sender<Found>,
) {
    let WorkTemplate::Monero {
        blob,
        seed_hash,
        nicehash,
        ..
    } = &work.template
    else {
        return;
    };
    if vm.as_ref().is_none_or(|vm| vm.key() != seed_hash) {
        let seed = shared.randomx.lock().expect("seed lock").clone();
        *vm = match seed.filter(|seed| seed.key() == seed_hash) {
            Some(seed) => match seed.vm() {
                Ok(made) => Some(made),
                Err(error) => {
                    eprintln!("miner: thread {index}: no RandomX VM: {error:?}");
                    std::thread::sleep(Duration::from_secs(1));
                    return;
                }
            },
            // The connection thread is still preparing the job's seed.
            None => {
                std::thread::sleep(Duration::from_millis(20));
                return;
            }
        };
    }
    let vm = vm.as_ref().expect("made above");
    let mut blob = blob.clone();
    let offset = monero::NONCE_OFFSET;
    let (fixed, counter_bits) = if *nicehash {
        let pool_byte = u32::from(blob[offset + 3]);
        (pool_byte << 24 | (index as u32 & 0xff) << 16, 16)
    } else {
        ((index as u32 & 0xff) << 24, 24)
    };
    for counter in 0..(1u32 << counter_bits) {
        let nonce = fixed | counter;
        blob[offset..offset + 4].copy_from_slice(&nonce.to_le_bytes());
        let Ok(pow) = vm.hash(&blob) else {
            eprintln!("miner: thread {index}: RandomX refused the blob");
            return;
        };
        shared.hashes.fetch_add(1, Relaxed);
        if work.target.is_met_by(&pow) {
            let _ = found.send(Found {
                generation: work.generation,
                template: work.template.clone(),
                extranonce2: Vec::new(),
                ntime: 0,
                nonce,
                version: 0,
                pow,
            });
        }
        if shared.stop.load(Relaxed) || shared.generation.load(Relaxed) != work.generation {
            return;
        }
    }
    // This thread's nonces are spent: wait for the next job.
    while !shared.stop.load(Relaxed) && shared.generation.load(Relaxed) == work.generation {
        std::thread::sleep(Duration::from_millis(50));
    }
}
