//! `otedama demo`: a whole pool on one machine. It starts two peered Litecoin regtest
//! nodes, mines 101 blocks so the wallet has mature coins, runs `otedama run` against them
//! with two CPU miners, and prints progress until Ctrl-C or `--duration`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use otedama_controlplane::regtest::{free_port, RegtestPair};

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Mining threads per CPU miner.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Share difficulty the miners start at (scrypt difficulty 1 is 65536 hashes).
    #[arg(long, default_value_t = 0.01)]
    pub start_difficulty: f64,
    /// Seconds per share that variable difficulty aims for on each miner.
    #[arg(long, default_value_t = 2.0)]
    pub vardiff_share_interval_s: f64,
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        for child in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::signals::install_stop_handler();
    let root = tempfile::Builder::new()
        .prefix("otedama-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    println!(
        "demo: starting two regtest litecoind nodes in {}",
        root.path().display()
    );
    let nodes = RegtestPair::start(root.path(), 101)?;
    let payout = nodes.wallet_address.clone();
    let start_height = nodes.miner.block_count()?;
    println!("demo: node height {start_height}; pool pays {payout}");

    let stratum_port = free_port();
    let api_port = free_port();
    let executable = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    let pool = Command::new(&executable)
        .arg("run")
        .args(["--coin", "litecoin", "--network", "regtest"])
        .args(["--node-rpc-url", &nodes.miner.rpc_url()])
        .args([
            "--node-rpc-user",
            nodes.miner.rpc_user(),
            "--node-rpc-password",
            nodes.miner.rpc_password(),
        ])
        .args(["--payout-address", &payout])
        .args(["--stratum-listen", &format!("127.0.0.1:{stratum_port}")])
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--start-difficulty", &args.start_difficulty.to_string()])
        .args([
            "--vardiff-share-interval-s",
            &args.vardiff_share_interval_s.to_string(),
        ])
        .arg("--data-dir")
        .arg(root.path().join("pool"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .context("starting the pool")?;
    children.0.push(pool);
    wait_for_port(stratum_port, Duration::from_secs(60))?;
    println!("demo: pool listening on stratum+tcp://127.0.0.1:{stratum_port}, API on http://127.0.0.1:{api_port}/api/v1/stats");
    for name in ["cpu1", "cpu2"] {
        let miner = Command::new(&executable)
            .arg("miner")
            .args(["--url", &format!("stratum+tcp://127.0.0.1:{stratum_port}")])
            .args(["--user", &format!("{payout}.{name}"), "--algo", "scrypt"])
            .args(["--threads", &args.threads.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a CPU miner")?;
        children.0.push(miner);
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let started = Instant::now();
    let api = format!("http://127.0.0.1:{api_port}/api/v1/stats");
    let mut stats = Value::Null;
    while !crate::signals::stop_requested() && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_secs(2));
        stats = ureq::get(&api)
            .call()
            .ok()
            .and_then(|r| r.into_json().ok())
            .unwrap_or(Value::Null);
        let height = nodes.miner.block_count().unwrap_or(0);
        let difficulty_sum = stats["accepted_difficulty_sum"].as_f64().unwrap_or(0.0);
        let hashrate = difficulty_sum * 65536.0 / started.elapsed().as_secs_f64();
        println!(
            "demo: {:>4}s  shares {} accepted / {} rejected  ~{:.0} H/s  blocks found {} (rejected {})  node height {}",
            started.elapsed().as_secs(),
            stats["shares_accepted"],
            stats["shares_rejected"],
            hashrate,
            stats["blocks_found"],
            stats["blocks_rejected"],
            height
        );
    }
    drop(children);
    let height = nodes.miner.block_count()?;
    let found = stats["blocks_found"].as_u64().unwrap_or(0);
    println!(
        "demo: done. The pool found {found} blocks that the node accepted; the node's height rose by {} ({} -> {}).",
        height - start_height,
        start_height,
        height
    );
    Ok(())
}

fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("the pool did not open port {port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
