//! `otedama demo`: a whole pool on one machine. It starts two peered regtest nodes
//! (Litecoin by default, or Bitcoin with `--coin bitcoin`), mines 101 blocks so the pool's
//! wallet has mature coins (Litecoin: up to MWEB activation, with a peg-in, as mainnet has
//! it), runs `otedama run`
//! against them with two CPU miners, each mining for its own address in a second wallet,
//! and prints the pool's progress and each miner's balances until Ctrl-C or `--duration`.
//! Once the first blocks have their 100 confirmations the pool pays the miners from the
//! node's wallet, and the demo shows each payment and what the node says each miner got.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use otedama_controlplane::regtest::{free_port, NodeKind, RegtestPair};

/// The coins the demo runs: each on its own regtest node.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DemoCoin {
    /// Litecoin (scrypt) on litecoind.
    Litecoin,
    /// Bitcoin (SHA256d) on bitcoind (Bitcoin Knots, fetched and unpacked on first use).
    Bitcoin,
}

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// The coin, and so the node and the algorithm.
    #[arg(long, value_enum, default_value = "litecoin")]
    pub coin: DemoCoin,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Mining threads per CPU miner.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Share difficulty the miners start at (scrypt difficulty 1 is 65536 hashes, SHA256d
    /// difficulty 1 is 2^32). Default: 0.01 for Litecoin, 0.001 for Bitcoin, about a share
    /// a second per CPU thread.
    #[arg(long)]
    pub start_difficulty: Option<f64>,
    /// Seconds per share that variable difficulty aims for on each miner.
    #[arg(long, default_value_t = 2.0)]
    pub vardiff_share_interval_s: f64,
    /// pplns, pps, fpps, prop, solo or pplnt.
    #[arg(long, default_value = "pplns")]
    pub payout_scheme: String,
    /// PPLNS window in multiples of the network difficulty. Regtest's network difficulty
    /// is far below one CPU share, so mainnet's usual 2 would be a fraction of a share.
    #[arg(long, default_value_t = 100_000.0)]
    pub pplns_window_factor: f64,
    /// Seconds between payout runs.
    #[arg(long, default_value_t = 20)]
    pub payout_interval_s: u64,
}

/// Seconds between the demo's balance reports.
const BALANCES_EVERY_S: u64 = 10;

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
    let (kind, algo, ticker, start_difficulty, algorithm) = match args.coin {
        DemoCoin::Litecoin => (
            NodeKind::Litecoin,
            "scrypt",
            "LTC",
            0.01,
            otedama_kernels::Algorithm::Scrypt,
        ),
        DemoCoin::Bitcoin => (
            NodeKind::Bitcoin,
            "sha256d",
            "BTC",
            0.001,
            otedama_kernels::Algorithm::Sha256d,
        ),
    };
    let start_difficulty = args.start_difficulty.unwrap_or(start_difficulty);
    println!(
        "demo: starting two regtest {} nodes in {}",
        kind.daemon(),
        root.path().display()
    );
    let nodes = RegtestPair::start_kind(root.path(), 101, kind)?;
    if kind == NodeKind::Litecoin {
        // Blocks come about twice a second: without this the chain would stop at MWEB
        // activation (height 432) after about three minutes.
        nodes.activate_mweb()?;
    }
    let payout = nodes.wallet_address.clone();
    let start_height = nodes.miner.block_count()?;
    // The miners' addresses live in a wallet of their own, so what the node says they
    // received is exactly what the pool paid them.
    nodes
        .miner
        .call("createwallet", serde_json::json!(["miners"]))?;
    let miners = ["cpu1", "cpu2"]
        .iter()
        .map(|name| {
            let address = nodes.miner.call_wallet(
                "miners",
                "getnewaddress",
                serde_json::json!([name, "bech32"]),
            )?;
            Ok((
                name.to_string(),
                address.as_str().context("address")?.to_string(),
            ))
        })
        .collect::<anyhow::Result<Vec<(String, String)>>>()?;
    println!("demo: node height {start_height}; the pool's wallet is {payout}");
    for (name, address) in &miners {
        println!("demo: miner {name} mines for {address}");
    }
    let token_file = root.path().join("admin-token");
    let token = hex::encode(rand::random::<[u8; 32]>());
    std::fs::write(&token_file, &token)?;

    let stratum_port = free_port();
    let api_port = free_port();
    let executable = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    let pool = Command::new(&executable)
        .arg("run")
        .args(["--coin", kind.coin(), "--network", "regtest"])
        .args(["--node-rpc-url", &nodes.miner.rpc_url()])
        .args([
            "--node-rpc-user",
            nodes.miner.rpc_user(),
            "--node-rpc-password",
            nodes.miner.rpc_password(),
        ])
        .args(["--payout-address", &payout])
        .args(["--node-wallet", "otedama"])
        .args(["--payout-scheme", &args.payout_scheme])
        .args([
            "--pplns-window-factor",
            &args.pplns_window_factor.to_string(),
        ])
        .args(["--pool-fee-percent", "1"])
        .args(["--payout-min", "0.001"])
        .args(["--payout-interval-s", &args.payout_interval_s.to_string()])
        .arg("--admin-token-file")
        .arg(&token_file)
        .args(["--stratum-listen", &format!("127.0.0.1:{stratum_port}")])
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--start-difficulty", &start_difficulty.to_string()])
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
    println!("demo: pool listening on stratum+tcp://127.0.0.1:{stratum_port}");
    println!("demo: dashboard http://127.0.0.1:{api_port}/  API http://127.0.0.1:{api_port}/api/v1/stats");
    println!(
        "demo: admin token in {} (curl -H \"Authorization: Bearer $(cat {})\" -X POST http://127.0.0.1:{api_port}/api/v1/admin/payouts/run)",
        token_file.display(),
        token_file.display()
    );
    println!(
        "demo: {} payouts every {}s, 1% fee; a block's reward is payable after 100 confirmations",
        args.payout_scheme, args.payout_interval_s
    );
    for (name, address) in &miners {
        let miner = Command::new(&executable)
            .arg("miner")
            .args(["--url", &format!("stratum+tcp://127.0.0.1:{stratum_port}")])
            .args(["--user", &format!("{address}.{name}"), "--algo", algo])
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
    let api_base = format!("http://127.0.0.1:{api_port}/api/v1");
    let api = format!("{api_base}/stats");
    let get = |url: &str| -> Value {
        ureq::get(url)
            .call()
            .ok()
            .and_then(|r| r.into_json().ok())
            .unwrap_or(Value::Null)
    };
    let mut next_balances_s = BALANCES_EVERY_S;
    let mut payments_shown = 0;
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
        let hashrate = difficulty_sum * algorithm.hashes_per_difficulty_one()
            / started.elapsed().as_secs_f64();
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
        if started.elapsed().as_secs() >= next_balances_s {
            next_balances_s += BALANCES_EVERY_S;
            for (name, address) in &miners {
                let miner = get(&format!("{api_base}/miners/{address}"));
                println!(
                    "demo:        {name}: immature {} mature {} paid {} (units of 1e-8 {ticker})",
                    miner["balance_immature"], miner["balance_mature"], miner["paid"]
                );
            }
        }
        let payments = get(&format!("{api_base}/payments"));
        let payments = payments.as_array().cloned().unwrap_or_default();
        // Newest first: show the ones not shown yet, oldest of them first.
        for payment in payments
            .iter()
            .take(payments.len().saturating_sub(payments_shown))
            .rev()
        {
            println!(
                "demo: payment batch {} txid {} state {} total {}",
                payment["batch_id"], payment["txid"], payment["state"], payment["total"]
            );
        }
        payments_shown = payments_shown.max(payments.len());
    }
    for (name, address) in &miners {
        let miner = get(&format!("{api_base}/miners/{address}"));
        let received = nodes
            .miner
            .call_wallet(
                "miners",
                "getreceivedbyaddress",
                serde_json::json!([address, 0]),
            )
            .ok()
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        println!(
            "demo: {name} {address}: the pool says paid {} + immature {} + mature {} (1e-8 {ticker}); the node says it received {received:.8} {ticker}",
            miner["paid"], miner["balance_immature"], miner["balance_mature"]
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
