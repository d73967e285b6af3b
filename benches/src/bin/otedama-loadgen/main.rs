//! `otedama-loadgen`: holds many miner connections to a pool on loopback (Stratum V1,
//! Stratum V2 over Noise/TCP, or Stratum V2 over QUIC), submits valid shares at a set total
//! rate, and reports what it measured: connections held, shares acknowledged per second,
//! acknowledgement latency, bytes on the wire per share, how long a new job takes to reach
//! every miner, and errors.
//!
//! It never mines. Run the pool with a difficulty floor below 2^-32 (`--difficulty-min
//! 1e-10 --start-difficulty 1e-10`) and every nonce is a valid SHA256d share, so the pool
//! does its full validation work for each one. It refuses any target outside 127.0.0.0/8
//! and ::1.
//!
//! One process holds as many connections as its open-files limit allows; `--processes P`
//! re-executes itself P times and merges the children's histograms, so a host with a
//! per-process cap can still open 100,000 connections.

mod connection;
mod initial_flood;
mod pool_metrics;
mod report;
mod v2;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use report::{Summary, WorkerReport};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "otedama-loadgen",
    version,
    about = "Stratum V1/V2/QUIC load generator for loopback pools"
)]
pub struct Args {
    /// The pool's address for the chosen protocol; must be a loopback address.
    #[arg(long)]
    pub target: String,
    /// Protocol: v1 (JSON lines), v2 (SV2 over Noise/TCP; needs --authority-key) or quic
    /// (SV2 over QUIC; needs --quic-ca for a self-signed pool).
    #[arg(long, value_enum, default_value = "v1")]
    pub protocol: Protocol,
    /// The pool's SV2 authority key (base58check), for --protocol v2.
    #[arg(long)]
    pub authority_key: Option<String>,
    /// A PEM certificate to trust for --protocol quic (default: the system's CA bundle).
    #[arg(long)]
    pub quic_ca: Option<std::path::PathBuf>,
    /// Connections to open and hold, over all processes.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Shares per second to submit, over all connections.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of measured load, after every connection is up.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Worker name to authorize: the pool takes only `ADDRESS` or `ADDRESS.RIG` with an
    /// address of its coin and network. The default suits a Bitcoin regtest pool.
    #[arg(
        long,
        default_value = "bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt.loadgen"
    )]
    pub user: String,
    /// Processes to spread the connections over (each has its own open-files limit).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Source addresses to connect from, as FIRST-LAST in 127.0.0.0/8; each one gives the
    /// kernel its own ~28,000 ephemeral ports toward the pool.
    #[arg(long, default_value = "127.0.0.10-127.0.0.60")]
    pub source_ips: SourceIps,
    /// New connections per second, over all processes (a pool's accept backlog is finite).
    #[arg(long, default_value_t = 20_000.0)]
    pub connect_rate: f64,
    /// Seconds allowed for opening every connection before the measured run starts anyway.
    #[arg(long, default_value_t = 180)]
    pub connect_timeout_s: u64,
    /// Shares one connection may have unacknowledged; a connection at the limit skips its
    /// turn (counted as `throttled`) instead of queueing without bound.
    #[arg(long, default_value_t = 64)]
    pub inflight_max: usize,
    /// The pool's API address (`api_listen`, loopback): its `/metrics` is read as the
    /// measured run starts and ends, and the acknowledgement latency is printed split into
    /// the pool's stages (queue, disk, handoff, reply) over just that run.
    #[arg(long)]
    pub pool_metrics: Option<SocketAddr>,
    /// Send `mining.suggest_difficulty` with this value after authorizing.
    #[arg(long)]
    pub suggest_difficulty: Option<f64>,
    /// Instead of mining: send QUIC Initials that never continue their handshakes, at
    /// --connect-rate per second for --duration seconds, from the --source-ips (an
    /// attacker's spoofed handshakes; see `initial_flood`).
    #[arg(long)]
    pub quic_initial_flood: bool,
    /// Write each acknowledged V1 share as `EXTRANONCE1 EXTRANONCE2` (hex) to this file, one
    /// per line, so a test can look for every one of them in the pool's share log (one
    /// process only).
    #[arg(long)]
    pub acked_shares_out: Option<std::path::PathBuf>,
    /// Internal: run as child number N of a multi-process run.
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    V1,
    V2,
    Quic,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V1 => "v1",
            Protocol::V2 => "v2",
            Protocol::Quic => "quic",
        }
    }
}

/// An inclusive range of IPv4 loopback source addresses.
#[derive(Clone, Debug)]
pub struct SourceIps {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl SourceIps {
    pub fn count(&self) -> usize {
        (u32::from(self.last) - u32::from(self.first)) as usize + 1
    }

    pub fn nth(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + (index % self.count()) as u32)
    }
}

impl FromStr for SourceIps {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|e| format!("{s:?}: {e}"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if !first.is_loopback() || !last.is_loopback() {
            return Err("source addresses must be in 127.0.0.0/8".into());
        }
        if u32::from(first) > u32::from(last) {
            return Err("the first source address is above the last".into());
        }
        Ok(SourceIps { first, last })
    }
}

/// Resolves the target and refuses anything that is not loopback.
fn loopback_target(target: &str) -> anyhow::Result<SocketAddr> {
    let addresses: Vec<SocketAddr> = target
        .to_socket_addrs()
        .with_context(|| format!("resolving --target {target}"))?
        .collect();
    let Some(first) = addresses.first().copied() else {
        bail!("--target {target} resolves to nothing");
    };
    if addresses.iter().any(|a| !a.ip().is_loopback()) {
        bail!("--target {target} is not a loopback address; the load generator only targets this host");
    }
    if matches!(first.ip(), IpAddr::V6(_)) {
        bail!("--target must be IPv4 loopback: source addresses are spread over 127.0.0.0/8");
    }
    Ok(first)
}

/// Raises the soft open-files limit to the hard one and checks that `needed` fits.
fn raise_open_files_limit(needed: usize) -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit(RLIMIT_NOFILE) failed");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit(RLIMIT_NOFILE) failed");
        }
    }
    let available = limit.rlim_cur as usize;
    // Room for the runtime's own descriptors (epoll, eventfd, stdio).
    if needed + 64 > available {
        bail!(
            "{needed} connections in one process need more than its open-files limit ({available}); \
             use --processes to spread them (about {} per process fit)",
            available.saturating_sub(64)
        );
    }
    Ok(limit.rlim_cur)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = loopback_target(&args.target)?;
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be zero or positive"
    );
    anyhow::ensure!(
        (1..=args.connections).contains(&args.processes),
        "--processes must lie between 1 and --connections"
    );
    anyhow::ensure!(
        args.acked_shares_out.is_none() || (args.processes == 1 && args.protocol == Protocol::V1),
        "--acked-shares-out takes one process and --protocol v1"
    );
    if args.quic_initial_flood {
        return initial_flood::run(&args, target);
    }
    match args.worker_index {
        Some(index) => run_child(&args, target, index),
        None if args.processes == 1 => {
            let mut before = None;
            let report = connection::run_worker(&args, target, 0, |_| {
                before = read_pool_metrics(&args)?;
                Ok(())
            })?;
            print_summary(&args, &[report], before)
        }
        None => run_parent(&args),
    }
}

/// A child of a multi-process run: ramp up, say so, wait for the parent's go, run, report.
fn run_child(args: &Args, target: SocketAddr, index: usize) -> anyhow::Result<()> {
    let report = connection::run_worker(args, target, index, |ready| {
        println!("ready {ready}");
        std::io::stdout().flush()?;
        let mut go = String::new();
        std::io::stdin().read_line(&mut go)?;
        anyhow::ensure!(go.trim() == "go", "the parent went away before the start");
        Ok(())
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Starts the children, lets them all start measuring at once, and merges their reports.
fn run_parent(args: &Args) -> anyhow::Result<()> {
    let executable = std::env::current_exe().context("finding our own executable")?;
    let mut children = Vec::new();
    for index in 0..args.processes {
        let child = Command::new(&executable)
            .args(std::env::args_os().skip(1))
            .arg("--worker-index")
            .arg(index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a load generator process")?;
        children.push(child);
    }
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("piped stdout")))
        .collect();
    let mut held = 0usize;
    for (index, reader) in readers.iter_mut().enumerate() {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let Some(ready) = line.trim().strip_prefix("ready ") else {
            bail!("load generator process {index} failed before it was ready");
        };
        held += ready.parse::<usize>().unwrap_or(0);
    }
    eprintln!(
        "loadgen: {held} of {} connections up in {} processes; measuring for {} s",
        args.connections, args.processes, args.duration
    );
    let before = read_pool_metrics(args)?;
    for child in &mut children {
        let stdin = child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "go")?;
        stdin.flush()?;
    }
    let mut reports = Vec::new();
    for (index, reader) in readers.iter_mut().enumerate() {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let report: WorkerReport = serde_json::from_str(line.trim())
            .with_context(|| format!("reading the report of process {index}"))?;
        reports.push(report);
    }
    for mut child in children {
        let _ = child.wait();
    }
    print_summary(args, &reports, before)
}

/// The pool's `/metrics`, when `--pool-metrics` names it.
fn read_pool_metrics(args: &Args) -> anyhow::Result<Option<pool_metrics::Histograms>> {
    args.pool_metrics.map(pool_metrics::read).transpose()
}

/// `before`: the pool's metrics as the measured run began.
fn print_summary(
    args: &Args,
    reports: &[WorkerReport],
    before: Option<pool_metrics::Histograms>,
) -> anyhow::Result<()> {
    let stages = match before {
        Some(before) => Some(read_pool_metrics(args)?.unwrap_or_default().since(&before)),
        None => None,
    };
    let summary = Summary::merge(reports, Duration::from_secs(args.duration))?;
    summary.print(args, stages.as_ref());
    Ok(())
}
