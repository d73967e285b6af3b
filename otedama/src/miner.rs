//! `otedama miner`: a multi-threaded CPU miner. Over Stratum V1 it speaks the way cpuminer
//! does; over Stratum V2 (`stratum2+tcp://HOST:PORT/KEY`, Noise pinned to the pool's
//! authority key) it is a header-only device on a standard channel. One thread owns the
//! connection; worker threads scan nonces on the newest work, each on its own extranonce2
//! (V1) or version bits (V2), and hand what they find back to it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use otedama_kernels::scrypt::scrypt_pow;
use otedama_kernels::{sha256d, Algorithm, Target};
use otedama_shared::limits::SV2_DEVICE_PAYLOAD_BYTES_MAX;
use otedama_shared::sv1::client::{request_line, submit_line, NotifiedJob};
use otedama_shared::sv2::client::{ClientEvent, StandardClient};
use otedama_shared::sv2::noise::{decode_authority_public_key, NoiseClient, NoiseTransport};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AlgoArg {
    Scrypt,
    Sha256d,
}

#[derive(Clone, Debug, clap::Args)]
pub struct MinerArgs {
    /// Pool URL: stratum+tcp://HOST:PORT (V1), stratum2+tcp://HOST:PORT/KEY (V2 with
    /// Noise, KEY being the pool's authority public key) or stratum2+quic://HOST:PORT (V2
    /// over QUIC, TLS 1.3).
    #[arg(long)]
    pub url: String,
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
}

/// A share a worker thread found, for the connection thread to submit.
struct Found {
    template: WorkTemplate,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version: u32,
}

/// Version bits a V2 miner rolls (BIP320), as the pool allows by default.
const VERSION_ROLLING_MASK: u32 = 0x1fff_e000;

/// The pool a URL names.
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
}

pub fn run(args: MinerArgs) -> anyhow::Result<()> {
    let endpoint = parse_url(&args.url)?;
    // Built once: its session store lets every reconnection resume, with 0-RTT.
    let quic_client = match &endpoint {
        Endpoint::Quic { .. } => Some(otedama_client::quic_client_config(args.quic_ca.as_deref())?),
        _ => None,
    };
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
    let (found_tx, found_rx) = crossbeam_channel::unbounded::<Found>();
    let workers: Vec<_> = (0..args.threads)
        .map(|index| {
            let (shared, found_tx) = (shared.clone(), found_tx.clone());
            std::thread::spawn(move || mine(index, algorithm, &shared, &found_tx))
        })
        .collect();
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let started = Instant::now();
    let mut last_report = Instant::now();
    while deadline.is_none_or(|d| Instant::now() < d) {
        let result = match &endpoint {
            Endpoint::V1 { address } => session(
                address,
                &args,
                &shared,
                &found_rx,
                deadline,
                &mut last_report,
                started,
            ),
            Endpoint::V2 { address, .. } | Endpoint::Quic { address } => {
                connect_v2(&endpoint, quic_client.as_ref()).and_then(|mut link| {
                    session_v2(
                        link.as_mut(),
                        address,
                        &args,
                        &shared,
                        &found_rx,
                        deadline,
                        &mut last_report,
                        started,
                    )
                })
            }
        };
        if let Err(error) = result {
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
    found: &crossbeam_channel::Receiver<Found>,
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
        while let Ok(share) = found.try_recv() {
            if let WorkTemplate::V1 { job, .. } = &share.template {
                let id = NEXT_SUBMIT_ID.fetch_add(1, Relaxed);
                stream.write_all(&submit_line(
                    id,
                    &args.user,
                    &job.job_id,
                    &share.extranonce2,
                    share.ntime,
                    share.nonce,
                    None,
                ))?;
            }
        }
        report(shared, last_report, started);
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

fn report(shared: &Shared, last_report: &mut Instant, started: Instant) {
    if last_report.elapsed() >= Duration::from_secs(10) {
        *last_report = Instant::now();
        eprintln!(
            "miner: accepted {} rejected {} hashrate {:.0} H/s",
            shared.accepted.load(Relaxed),
            shared.rejected.load(Relaxed),
            shared.hashes.load(Relaxed) as f64 / started.elapsed().as_secs_f64()
        );
    }
}

/// The V2 transport a URL names: Noise over TCP, or QUIC.
fn connect_v2(
    endpoint: &Endpoint,
    quic_client: Option<&quinn::ClientConfig>,
) -> anyhow::Result<Box<dyn FrameLink>> {
    Ok(match endpoint {
        Endpoint::V2 { address, authority } => Box::new(NoiseLink::connect(address, *authority)?),
        Endpoint::Quic { address } => Box::new(QuicLink::connect(
            address,
            quic_client.context("no QUIC client configuration")?,
        )?),
        Endpoint::V1 { .. } => bail!("a stratum+tcp URL is Stratum V1, not V2"),
    })
}

/// A transport carrying plaintext SV2 frames both ways.
trait FrameLink {
    fn send(&mut self, frames: &[u8]) -> anyhow::Result<()>;
    /// Waits a short while for bytes and hands each whole frame to `on_frame`.
    fn receive(
        &mut self,
        on_frame: &mut dyn FnMut(&otedama_shared::sv2::FrameHeader, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
}

/// Noise over TCP.
struct NoiseLink {
    stream: TcpStream,
    transport: NoiseTransport,
    buffer: Vec<u8>,
}

impl NoiseLink {
    fn connect(address: &str, authority: [u8; 32]) -> anyhow::Result<Self> {
        let mut stream =
            TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        let (mut noise, request) = NoiseClient::start(
            authority,
            SV2_DEVICE_PAYLOAD_BYTES_MAX,
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        stream.write_all(&request)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buffer = vec![0u8; 64 * 1024];
        let transport = loop {
            let read = std::io::Read::read(&mut stream, &mut buffer)?;
            if read == 0 {
                bail!("the pool closed the connection during the Noise handshake");
            }
            if let Some(transport) = noise
                .feed(&buffer[..read], unix_now_s() as u32)
                .map_err(|e| anyhow::anyhow!("Noise handshake with {address}: {e}"))?
            {
                break transport;
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(NoiseLink {
            stream,
            transport,
            buffer,
        })
    }
}

impl FrameLink for NoiseLink {
    fn send(&mut self, frames: &[u8]) -> anyhow::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(frames.len() + 64);
        self.transport.encrypt_frames(frames, &mut out);
        self.stream.write_all(&out)?;
        Ok(())
    }

    fn receive(
        &mut self,
        on_frame: &mut dyn FnMut(&otedama_shared::sv2::FrameHeader, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match std::io::Read::read(&mut self.stream, &mut self.buffer) {
            Ok(0) => bail!("pool closed the connection"),
            Ok(read) => self.transport.feed(&self.buffer[..read]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
        while let Some((header, payload)) = self
            .transport
            .next_frame()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            on_frame(&header, payload)?;
        }
        Ok(())
    }
}

/// SV2 frames on one bidirectional QUIC stream (quinn on a current-thread runtime that
/// runs while this thread waits for frames).
struct QuicLink {
    runtime: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    receive: quinn::RecvStream,
    decoder: otedama_shared::sv2::FrameDecoder,
    buffer: Vec<u8>,
}

impl QuicLink {
    fn connect(address: &str, config: &quinn::ClientConfig) -> anyhow::Result<Self> {
        use std::net::ToSocketAddrs;
        let remote = address
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{address} resolves to nothing"))?;
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (endpoint, connection, send, receive) = runtime.block_on(async {
            let local: std::net::SocketAddr = if remote.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let mut endpoint = quinn::Endpoint::client(local)?;
            endpoint.set_default_client_config(config.clone());
            let connecting = endpoint.connect(remote, host)?;
            // A resumed session sends SetupConnection as 0-RTT data.
            let connection = match connecting.into_0rtt() {
                Ok((connection, _)) => connection,
                Err(connecting) => tokio::time::timeout(Duration::from_secs(10), connecting)
                    .await
                    .context("QUIC handshake timed out")??,
            };
            let (send, receive) = connection.open_bi().await?;
            anyhow::Ok((endpoint, connection, send, receive))
        })?;
        Ok(QuicLink {
            runtime,
            endpoint,
            connection,
            send,
            receive,
            decoder: otedama_shared::sv2::FrameDecoder::new(SV2_DEVICE_PAYLOAD_BYTES_MAX),
            buffer: vec![0u8; 64 * 1024],
        })
    }
}

impl Drop for QuicLink {
    /// Closes the connection so the pool frees it now, not at its idle timeout.
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"miner stopped");
        let endpoint = self.endpoint.clone();
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
}

impl FrameLink for QuicLink {
    fn send(&mut self, frames: &[u8]) -> anyhow::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        self.runtime.block_on(self.send.write_all(frames))?;
        Ok(())
    }

    fn receive(
        &mut self,
        on_frame: &mut dyn FnMut(&otedama_shared::sv2::FrameHeader, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let read = self.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(50),
                self.receive.read(&mut self.buffer),
            )
            .await
        });
        match read {
            Err(_elapsed) => return Ok(()),
            Ok(Ok(Some(length))) => self.decoder.feed(&self.buffer[..length]),
            Ok(Ok(None)) => bail!("the pool ended the stream"),
            Ok(Err(error)) => return Err(error.into()),
        }
        while let Some(frame) = self
            .decoder
            .next_frame()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            on_frame(&frame.header, frame.payload)?;
        }
        Ok(())
    }
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One Stratum V2 connection: a standard channel, work in, shares out.
#[allow(clippy::too_many_arguments)]
fn session_v2(
    link: &mut dyn FrameLink,
    address: &str,
    args: &MinerArgs,
    shared: &Shared,
    found: &crossbeam_channel::Receiver<Found>,
    deadline: Option<Instant>,
    last_report: &mut Instant,
    started: Instant,
) -> anyhow::Result<()> {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
    // The hash rate the pool sizes the first target for; vardiff corrects it.
    let nominal_hash_rate = args.declared_hashrate.unwrap_or(match args.algo {
        AlgoArg::Scrypt => 5_000.0 * args.threads as f32,
        AlgoArg::Sha256d => 5_000_000.0 * args.threads as f32,
    });
    let mut client = StandardClient::new(
        &args.user,
        nominal_hash_rate,
        host,
        port.parse().unwrap_or(0),
    );
    let mut published_generation = None;
    while deadline.is_none_or(|d| Instant::now() < d) {
        while let Ok(share) = found.try_recv() {
            if let WorkTemplate::V2 {
                channel_id, job_id, ..
            } = share.template
            {
                let work = otedama_shared::sv2::client::MiningWork {
                    header: [0; 80],
                    channel_id,
                    job_id,
                    target: Target::MAX,
                    generation: 0,
                };
                client.submit(&work, share.nonce, share.ntime, share.version);
            }
        }
        link.send(client.transmit_pending())?;
        client.transmitted();
        report(shared, last_report, started);
        link.receive(&mut |header, payload| {
            match client
                .handle_frame(header, payload)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                ClientEvent::SharesAccepted { count, .. } => {
                    shared.accepted.fetch_add(count as u64, Relaxed);
                }
                ClientEvent::ShareRejected { code, .. } => {
                    shared.rejected.fetch_add(1, Relaxed);
                    eprintln!("miner: share rejected: {code}");
                }
                _ => {}
            }
            Ok(())
        })?;
        if let Some(work) = client.work() {
            if published_generation != Some(work.generation) {
                published_generation = Some(work.generation);
                let generation = shared.generation.fetch_add(1, Relaxed) + 1;
                *shared.work.lock().expect("work lock") = Some(Work {
                    template: WorkTemplate::V2 {
                        header: work.header,
                        channel_id: work.channel_id,
                        job_id: work.job_id,
                    },
                    target: work.target,
                    generation,
                });
            }
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
    found: &crossbeam_channel::Sender<Found>,
) {
    // Hashes between checks for new work: scrypt is ~1000x slower than SHA256d.
    let check_every = match algorithm {
        Algorithm::Scrypt => 64,
        Algorithm::Sha256d => 65_536,
    };
    let mut roll_counter: u64 = 0;
    while !shared.stop.load(Relaxed) {
        let Some(work) = shared.work.lock().expect("work lock").clone() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
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
                    template: work.template.clone(),
                    extranonce2: extranonce2.clone(),
                    ntime,
                    nonce,
                    version,
                });
            }
            nonce = nonce.wrapping_add(1);
            if nonce % check_every == 0 {
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
