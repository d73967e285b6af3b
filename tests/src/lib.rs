//! Helpers for Otedama's end-to-end tests: real `litecoind` and `bitcoind` regtest nodes, the real
//! `otedama` binary in its roles, real sockets on loopback. Nothing here is mocked.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub use otedama_controlplane::regtest::{free_port, NodeKind, RegtestNode, RegtestPair};

pub mod fault_proxy;
pub mod monitoring;
pub mod nats;

/// The `otedama` binary built beside this test executable.
pub fn otedama_binary() -> PathBuf {
    workspace_binary("otedama")
}

/// A binary of this workspace, built beside this test executable.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins` (`cargo xtask test` does this)",
        path.display()
    );
    path
}

/// A child process that is killed when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_9();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_9();
        }
    }
}

/// Ports and paths of one pool under test.
pub struct PoolSetup {
    /// The pool's `--coin`: the nodes' coin.
    pub coin: &'static str,
    pub stratum_port: u16,
    pub api_port: u16,
    pub data_dir: PathBuf,
    pub payout_address: String,
    pub rpc_url: String,
    pub start_difficulty: f64,
    /// More flags for `otedama <role>`, after the ones every test needs.
    pub extra_args: Vec<String>,
    /// Environment for `otedama <role>`.
    pub env: Vec<(String, String)>,
    /// Where `otedama <role>` writes its log (stderr, appended); inherited when `None`.
    pub log_file: Option<PathBuf>,
}

impl PoolSetup {
    pub fn new(nodes: &RegtestPair, data_dir: &Path, start_difficulty: f64) -> Self {
        PoolSetup {
            coin: nodes.miner.kind.coin(),
            stratum_port: free_port(),
            api_port: free_port(),
            data_dir: data_dir.to_path_buf(),
            payout_address: nodes.wallet_address.clone(),
            rpc_url: nodes.miner.rpc_url(),
            start_difficulty,
            extra_args: Vec::new(),
            env: Vec::new(),
            log_file: None,
        }
    }

    fn command(&self, role: &str) -> Command {
        let mut command = Command::new(otedama_binary());
        command
            .arg(role)
            .args(["--coin", self.coin, "--network", "regtest"])
            .args(["--node-rpc-url", &self.rpc_url])
            .args([
                "--node-rpc-user",
                "otedama",
                "--node-rpc-password",
                "otedama-regtest",
            ])
            .args(["--payout-address", &self.payout_address])
            .args([
                "--stratum-listen",
                &format!("127.0.0.1:{}", self.stratum_port),
            ])
            .args(["--api-listen", &format!("127.0.0.1:{}", self.api_port)])
            .args(["--start-difficulty", &self.start_difficulty.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args);
        // Vardiff every second unless the test chose its own interval.
        if !self
            .extra_args
            .iter()
            .any(|arg| arg == "--vardiff-share-interval-s")
        {
            command.args(["--vardiff-share-interval-s", "1"]);
        }
        command
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// Starts `otedama <role>` (run, dataplane or controlplane).
    pub fn spawn(&self, role: &str) -> anyhow::Result<Process> {
        let mut command = self.command(role);
        if let Some(path) = &self.log_file {
            // Appended to, so a role started again (after a kill) keeps the earlier log.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            command.stderr(log);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting otedama {role}"))?;
        Ok(Process {
            child,
            name: role.into(),
        })
    }

    pub fn stratum_address(&self) -> String {
        format!("127.0.0.1:{}", self.stratum_port)
    }

    pub fn stratum_url(&self) -> String {
        format!("stratum+tcp://127.0.0.1:{}", self.stratum_port)
    }

    /// `GET /api/v1/stats`.
    pub fn stats(&self) -> anyhow::Result<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/stats", self.api_port);
        Ok(ureq::get(&url).call()?.into_json()?)
    }

    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        Ok(ureq::get(&url).call()?.into_string()?)
    }

    /// Waits until the Stratum port accepts connections and the pool has a job.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, "the pool to accept miners", || {
            TcpStream::connect(self.stratum_address()).is_ok()
                && self.stats().is_ok_and(|s| s["height"].as_u64() > Some(0))
        })
    }

    /// `GET path` on the API, as JSON.
    pub fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        Ok(ureq::get(&url).call()?.into_json()?)
    }

    /// The blocks the pool found that the node accepted, from `/api/v1/blocks`.
    pub fn accepted_blocks(&self) -> anyhow::Result<Vec<Value>> {
        // One page of the most the API gives (`API_LIST_ITEMS_MAX`); the default page of
        // 100 would leave out the oldest blocks of a long run.
        let blocks = self.get_json("/api/v1/blocks?limit=1000")?;
        anyhow::ensure!(
            blocks.as_array().map_or(0, Vec::len) < 1000,
            "a thousand blocks or more: this helper reads one page"
        );
        Ok(blocks
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|b| b["rejected_reason"].is_null())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Whether every block the node accepted from the pool is confirmed (the ones it
    /// rejected have no status to reach).
    pub fn accepted_blocks_confirmed(&self) -> bool {
        self.accepted_blocks()
            .is_ok_and(|blocks| blocks.iter().all(|block| block["status"] == "confirmed"))
    }

    /// `POST path` on the API with a bearer token; the status and the JSON body, whatever
    /// the status.
    pub fn post_admin(&self, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        let request = ureq::post(&url).set("Authorization", &format!("Bearer {token}"));
        match request.call() {
            Ok(response) => Ok((response.status(), response.into_json()?)),
            Err(ureq::Error::Status(status, response)) => {
                Ok((status, response.into_json().unwrap_or(Value::Null)))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Any request on the API: the status and the body as text, whatever the status.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        let mut request = ureq::request(method, &url);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let answer = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(body),
            None => request.call(),
        };
        match answer {
            Ok(response) => Ok((response.status(), response.into_string()?)),
            Err(ureq::Error::Status(status, response)) => {
                Ok((status, response.into_string().unwrap_or_default()))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// `http` with an optional bearer token and a JSON body; the answer as JSON (or the
    /// text as a JSON string when it is not JSON).
    pub fn json_call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let authorization = bearer.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|value| ("Authorization", value))
            .into_iter()
            .collect();
        let body = body.map(Value::to_string);
        let (status, text) = self.http(method, path, &headers, body.as_deref())?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Starts `otedama miner` against this pool, mining for the pool's own address.
    pub fn spawn_miner(&self, worker: &str, threads: usize) -> anyhow::Result<Process> {
        self.spawn_miner_as(&format!("{}.{worker}", self.payout_address), threads)
    }

    /// Starts `otedama miner` authorizing as `user` (`ADDRESS.RIG`), hashing the coin's
    /// algorithm.
    pub fn spawn_miner_as(&self, user: &str, threads: usize) -> anyhow::Result<Process> {
        let algo = match self.coin {
            "bitcoin" => "sha256d",
            _ => "scrypt",
        };
        spawn_miner_at(&self.stratum_url(), user, threads, &["--algo", algo])
    }
}

/// Starts `otedama miner --url URL` (any protocol it speaks) as `user`, mining scrypt
/// unless `extra_args` name another `--algo`, with `extra_args` (such as `--quic-ca FILE`).
pub fn spawn_miner_at(
    url: &str,
    user: &str,
    threads: usize,
    extra_args: &[&str],
) -> anyhow::Result<Process> {
    let child = Command::new(otedama_binary())
        .arg("miner")
        .args(["--url", url])
        .args(["--user", user])
        .args(if extra_args.contains(&"--algo") {
            &[][..]
        } else {
            &["--algo", "scrypt"][..]
        })
        .args(["--threads", &threads.to_string()])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting otedama miner")?;
    Ok(Process {
        child,
        name: format!("miner {user}"),
    })
}

/// Runs `otedama miner --algo sha256d` on `url` for `seconds` as `SYNTHETIC_PAYOUT_ADDRESS.
/// worker` and returns how many shares the pool answered `true` (the miner's own count).
pub fn mine_for(url: &str, worker: &str, seconds: u64) -> u64 {
    let output = Command::new(otedama_binary())
        .args(["miner", "--url", url, "--algo", "sha256d"])
        .args(["--user", &format!("{SYNTHETIC_PAYOUT_ADDRESS}.{worker}")])
        .args(["--duration", &seconds.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("running otedama miner");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let done = stdout
        .lines()
        .find_map(|line| line.strip_prefix("miner done: accepted "))
        .unwrap_or_else(|| panic!("the miner's summary: {stdout}"));
    done.split(' ').next().unwrap().parse().unwrap()
}

/// The records of a share log, read as the control plane reads one (a RocksDB secondary
/// in a fresh directory under `scratch`).
pub fn share_log_records(log: &Path, scratch: &Path) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let secondary = scratch.join(format!(
        "count-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut tail =
        otedama_sharelog::tail::ShareLogTail::new(0, log.to_path_buf(), secondary, Some(0), 0);
    let mut count = 0;
    loop {
        let read = tail.poll().expect("reading a share log").len() as u64;
        if read == 0 {
            return count;
        }
        count += read;
    }
}

/// The shares the control plane on `api_port` holds in its share history from the last
/// hour (`/api/v1/stats`).
pub fn history_shares(api_port: u16) -> Option<u64> {
    let url = format!("http://127.0.0.1:{api_port}/api/v1/stats");
    let stats: Value = ureq::get(&url).call().ok()?.into_json().ok()?;
    stats["windows"]["3600s"]["shares"].as_u64()
}

/// Waits up to `timeout` for the control plane on `api_port` to hold in its history every
/// share the share `logs` hold, then checks, a few seconds later, that it holds exactly
/// that many (none twice) and that the logs hold at least the `acknowledged` shares (each
/// one a miner was told `true` for). Returns the count.
pub fn assert_history_holds_each_share_once(
    api_port: u16,
    logs: &[PathBuf],
    scratch: &Path,
    acknowledged: u64,
    timeout: Duration,
) -> u64 {
    let written = || {
        logs.iter()
            .map(|log| share_log_records(log, scratch))
            .sum::<u64>()
    };
    let mut counted = 0;
    wait_until(timeout, "every written share in the history", || {
        counted = history_shares(api_port).unwrap_or(0);
        counted >= written()
    })
    .unwrap_or_else(|error| panic!("{error:#}: {counted} of {}", written()));
    std::thread::sleep(Duration::from_secs(3));
    let total = written();
    assert!(
        total >= acknowledged,
        "{total} written, {acknowledged} acknowledged"
    );
    assert_eq!(
        history_shares(api_port),
        Some(total),
        "each share counted once"
    );
    total
}

/// The command for `otedama ROLE` on the synthetic chain (Bitcoin regtest, paying
/// `SYNTHETIC_PAYOUT_ADDRESS`) in `dir`, with `flags` after the common ones.
pub fn synthetic_role_command(
    role: &str,
    dir: &Path,
    flags: &[&str],
    listen: &[String],
) -> Command {
    let mut command = Command::new(otedama_binary());
    command
        .args([role, "--chain", "synthetic", "--coin", "bitcoin"])
        .args(["--network", "regtest"])
        .args(["--payout-address", SYNTHETIC_PAYOUT_ADDRESS])
        .args(listen)
        .args(["--share-log-sync", "false"])
        .args(flags)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// `otedama ROLE` on the synthetic chain (`synthetic_role_command`), started.
fn spawn_synthetic_role(role: &str, dir: &Path, flags: &[&str], listen: &[String]) -> Process {
    let child = synthetic_role_command(role, dir, flags, listen)
        .spawn()
        .expect("starting otedama");
    Process {
        child,
        name: format!("{role} in {}", dir.display()),
    }
}

/// A data plane on its own "host" (cluster mode: `flags` give `--nats-url` and
/// `--cluster-host`): its own data directory, ports and share log, and no control plane
/// (its link goes over NATS). Returns it once its V1 port listens, with that address.
pub fn spawn_synthetic_dataplane(dir: &Path, flags: &[&str]) -> (Process, String) {
    let (v1, listen) = dataplane_listen_flags();
    let process = spawn_synthetic_role("dataplane", dir, flags, &listen);
    wait_until(Duration::from_secs(90), "the data plane's listener", || {
        TcpStream::connect(&v1).is_ok()
    })
    .expect("the data plane listens");
    (process, v1)
}

/// A data plane's listen flags on free loopback ports (V1, V2, QUIC), with the V1 address.
pub fn dataplane_listen_flags() -> (String, [String; 6]) {
    let v1 = format!("127.0.0.1:{}", free_port());
    let listen = [
        "--stratum-listen".to_string(),
        v1.clone(),
        "--sv2-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--quic-listen".into(),
        format!("127.0.0.1:{}", free_port()),
    ];
    (v1, listen)
}

/// The JSON summary (the last line) of an `otedama-loadgen` run that must have succeeded,
/// with its whole stdout for messages.
pub fn loadgen_summary(output: &std::process::Output, what: &str) -> (Value, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{what}: loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a summary");
    let summary = serde_json::from_str(last).expect("the last line is JSON");
    (summary, stdout)
}

/// Checks a loadgen summary of miners handed from one data plane to another `handovers`
/// times: no connection refused, no error, every miner held at the end and reconnected
/// each time.
pub fn assert_every_miner_handed_over(
    summary: &Value,
    stdout: &str,
    what: &str,
    miners: usize,
    handovers: u64,
) {
    assert_eq!(
        summary["connect_errors"], 0,
        "{what}: no connection refused: {stdout}"
    );
    assert_eq!(summary["errors"], 0, "{what}: {stdout}");
    assert_eq!(
        summary["connections"], miners,
        "{what}: every miner held at the end: {stdout}"
    );
    let reconnects = summary["reconnects"].as_u64().unwrap_or(0);
    assert!(
        reconnects >= handovers * miners as u64,
        "{what}: every miner was asked to move {handovers} times and did: {reconnects} reconnects: {stdout}"
    );
}

/// A control plane alone (cluster mode: `flags` give `--nats-url` and `--cluster-host`),
/// once its API answers, with the API's port.
pub fn spawn_synthetic_controlplane(dir: &Path, flags: &[&str]) -> (Process, u16) {
    let api_port = free_port();
    let listen = ["--api-listen".to_string(), format!("127.0.0.1:{api_port}")];
    let process = spawn_synthetic_role("controlplane", dir, flags, &listen);
    wait_until(Duration::from_secs(90), "the control plane's API", || {
        history_shares(api_port).is_some()
    })
    .expect("the control plane answers");
    (process, api_port)
}

/// `GET path` on the admin API with the bearer token.
pub fn admin_get(pool: &PoolSetup, path: &str, token: &str) -> anyhow::Result<Value> {
    let url = format!("http://127.0.0.1:{}{path}", pool.api_port);
    Ok(ureq::get(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()?
        .into_json()?)
}

/// Checks the pool's accepted blocks against the node, not against the pool: each is on
/// the node's active chain, once, and its coinbase pays exactly the reward the pool
/// recorded; and every block of the chain at `pool_heights` (where only the pool mined) is
/// one of them. Returns the accepted blocks.
pub fn check_blocks_against_chain(
    pool: &PoolSetup,
    node: &RegtestNode,
    pool_heights: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<Vec<Value>> {
    let accepted = pool.accepted_blocks()?;
    let mut hashes = std::collections::BTreeSet::new();
    for block in &accepted {
        let hash = block["hash"].as_str().context("a block hash")?;
        anyhow::ensure!(hashes.insert(hash.to_string()), "{hash} recorded twice");
        let on_node = node.call("getblock", json!([hash, 2]))?;
        anyhow::ensure!(
            on_node["confirmations"].as_i64().unwrap_or(-1) >= 1,
            "accepted block {hash} is not on the node's active chain"
        );
        let coinbase_units: u64 = on_node["tx"][0]["vout"]
            .as_array()
            .context("a coinbase")?
            .iter()
            .map(|out| {
                let coins = format!("{:.8}", out["value"].as_f64().unwrap_or(0.0));
                otedama_ledger::Amount::parse(&coins)
                    .map_or(u64::MAX, otedama_ledger::Amount::units)
            })
            .sum();
        anyhow::ensure!(
            Some(coinbase_units) == block["reward"].as_u64(),
            "block {hash}: the coinbase pays {coinbase_units}, the pool recorded {}",
            block["reward"]
        );
    }
    for height in pool_heights {
        let hash = node.call("getblockhash", json!([height]))?;
        let hash = hash.as_str().context("a block hash")?;
        anyhow::ensure!(
            hashes.contains(hash),
            "the chain's block {hash} at height {height} is not among the pool's accepted blocks"
        );
    }
    Ok(accepted)
}

/// What the ledger holds for every account, from `/api/v1/admin/miners`: immature,
/// mature, paying and paid added up; and the accounts as the API gave them.
pub fn ledger_total(pool: &PoolSetup, admin_token: &str) -> anyhow::Result<(u64, Value)> {
    let accounts = admin_get(pool, "/api/v1/admin/miners", admin_token)?;
    let total = accounts
        .as_array()
        .context("the accounts are a list")?
        .iter()
        .map(|account| {
            [
                "balance_immature",
                "balance_mature",
                "balance_paying",
                "paid",
            ]
            .iter()
            .map(|field| account[field].as_u64().unwrap_or(0))
            .sum::<u64>()
        })
        .sum();
    Ok((total, accounts))
}

/// Waits until in-flight block candidates have settled: neither the pool's count of found
/// blocks nor the node's height moves across two reads 1.5 s apart.
pub fn wait_blocks_settled(pool: &PoolSetup, nodes: &RegtestPair) -> anyhow::Result<()> {
    let mut last = (u64::MAX, u64::MAX);
    wait_until(Duration::from_secs(30), "block counts to settle", || {
        std::thread::sleep(Duration::from_millis(1500));
        let now = (
            pool.stats()
                .map(|s| s["blocks_found"].as_u64().unwrap())
                .unwrap_or(0),
            nodes.miner.block_count().unwrap_or(0),
        );
        let settled = now == last;
        last = now;
        settled
    })
}

/// A synthetic pool for load: every nonce is a valid share (the difficulty floor is below
/// 2^-32) and difficulty never moves, so `otedama-loadgen` can submit at any rate.
pub const EVERY_NONCE_A_SHARE: [&str; 6] = [
    "--difficulty-min",
    "1e-10",
    "--start-difficulty",
    "1e-10",
    "--vardiff-share-interval-s",
    "0",
];

/// A Bitcoin regtest address, for pools on the synthetic chain.
pub const SYNTHETIC_PAYOUT_ADDRESS: &str = "bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt";
/// A Litecoin regtest address (printed by litecoind), for scrypt pools on the synthetic chain.
pub const SYNTHETIC_LITECOIN_ADDRESS: &str = "rltc1qhpuak4f6hryvjxpu5k08xgu99mwkmyzr40vf4j";

/// Starts of a synthetic pool, each on fresh ports, before its failure is reported.
const SYNTHETIC_POOL_START_ATTEMPTS_MAX: u32 = 3;

/// Flags for a synthetic pool where nearly any nonce is a share (difficulty 1e-6, floor
/// 1e-9, no vardiff) and jobs stay put for a minute.
pub const EASY_SHARE_FLAGS: [&str; 8] = [
    "--start-difficulty",
    "1e-6",
    "--difficulty-min",
    "1e-9",
    "--vardiff-share-interval-s",
    "0",
    "--synthetic-job-interval-ms",
    "60000",
];

/// `otedama run` on the synthetic chain (SHA256d jobs, no node), listening for Stratum V1,
/// V2 over Noise and V2 over QUIC on free loopback ports.
pub struct SyntheticPool {
    pub process: Process,
    pub v1: String,
    pub sv2: String,
    pub quic: std::net::SocketAddr,
    pub api_port: u16,
    /// The authority key the pool printed, base58check.
    pub authority_key: String,
    /// The self-signed QUIC certificate the pool made.
    pub quic_certificate: PathBuf,
    pub data_dir: tempfile::TempDir,
}

impl SyntheticPool {
    /// Starts the pool with `extra_args` after the listeners (difficulty, cores, …) and
    /// waits until it has a job.
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_coin("bitcoin", SYNTHETIC_PAYOUT_ADDRESS, extra_args)
    }

    /// The pool in a data directory kept from another run (a restart after a crash).
    pub fn start_in(data_dir: tempfile::TempDir, extra_args: &[&str]) -> Self {
        Self::start_coin_in(data_dir, "bitcoin", SYNTHETIC_PAYOUT_ADDRESS, extra_args)
    }

    /// The same pool for Litecoin (scrypt shares), paying `SYNTHETIC_LITECOIN_ADDRESS`.
    pub fn start_litecoin(extra_args: &[&str]) -> Self {
        Self::start_coin("litecoin", SYNTHETIC_LITECOIN_ADDRESS, extra_args)
    }

    /// The Litecoin pool in a data directory the test prepared (its share log on a small
    /// disk, say).
    pub fn start_litecoin_in(data_dir: tempfile::TempDir, extra_args: &[&str]) -> Self {
        Self::start_coin_in(data_dir, "litecoin", SYNTHETIC_LITECOIN_ADDRESS, extra_args)
    }

    fn start_coin(coin: &str, payout_address: &str, extra_args: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().expect("a temporary directory");
        Self::start_coin_in(data_dir, coin, payout_address, extra_args)
    }

    fn start_coin_in(
        mut data_dir: tempfile::TempDir,
        coin: &str,
        payout_address: &str,
        extra_args: &[&str],
    ) -> Self {
        // A chosen port can still be taken before the pool binds it (by another listener):
        // a pool that exits before its first job starts again on fresh ports.
        for attempt in 1..=SYNTHETIC_POOL_START_ATTEMPTS_MAX {
            match Self::launch(data_dir, coin, payout_address, extra_args) {
                Ok(pool) => return pool,
                Err((returned_dir, error)) => {
                    assert!(
                        attempt < SYNTHETIC_POOL_START_ATTEMPTS_MAX,
                        "the synthetic pool started: {error:#}"
                    );
                    eprintln!("{error:#}; again on other ports");
                    data_dir = returned_dir;
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// One start on fresh ports: the pool once it has a job and listens, or the data
    /// directory back with why it did not.
    fn launch(
        data_dir: tempfile::TempDir,
        coin: &str,
        payout_address: &str,
        extra_args: &[&str],
    ) -> Result<Self, (tempfile::TempDir, anyhow::Error)> {
        let v1 = format!("127.0.0.1:{}", free_port());
        let sv2 = format!("127.0.0.1:{}", free_port());
        let quic: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        let api_port = free_port();
        let mut child = Command::new(otedama_binary())
            .args(["run", "--chain", "synthetic", "--coin", coin])
            .args(["--network", "regtest"])
            .args(["--payout-address", payout_address])
            .args(["--stratum-listen", &v1, "--sv2-listen", &sv2])
            .args(["--quic-listen", &quic.to_string()])
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .args(["--share-log-sync", "false"])
            .args(extra_args)
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting otedama run");
        let authority_key = first_stdout_line(&mut child)
            .trim()
            .rsplit('/')
            .next()
            .expect("a URL")
            .to_string();
        let mut pool = SyntheticPool {
            process: Process {
                child,
                name: "run".into(),
            },
            v1,
            sv2,
            quic,
            api_port,
            authority_key,
            quic_certificate: data_dir.path().join("quic-cert.pem"),
            data_dir,
        };
        let mut exited = None;
        let started = wait_until(Duration::from_secs(90), "the pool's first job", || {
            if let Ok(Some(status)) = pool.process.child.try_wait() {
                exited = Some(status);
                return true;
            }
            pool.try_stats()
                .is_some_and(|s| s["height"].as_u64() > Some(0))
        })
        .and_then(|()| match exited {
            Some(status) => bail!("the pool exited before its first job ({status})"),
            None => Ok(()),
        })
        // The control plane answers before the data plane has bound its listeners.
        .and_then(|()| {
            wait_until(Duration::from_secs(30), "the Stratum listeners", || {
                [&pool.v1, &pool.sv2]
                    .iter()
                    .all(|address| TcpStream::connect(address.as_str()).is_ok())
            })
        });
        match started {
            Ok(()) => Ok(pool),
            Err(error) => {
                let SyntheticPool {
                    process, data_dir, ..
                } = pool;
                drop(process);
                Err((data_dir, error))
            }
        }
    }

    fn try_stats(&self) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/stats", self.api_port);
        ureq::get(&url).call().ok()?.into_json().ok()
    }

    /// `GET /api/v1/stats`.
    pub fn stats(&self) -> Value {
        self.try_stats().expect("the stats answer")
    }

    /// `GET /health`: the status code and the body.
    pub fn health(&self) -> anyhow::Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}/health", self.api_port);
        match ureq::get(&url).call() {
            Ok(response) => Ok((response.status(), response.into_string()?)),
            Err(ureq::Error::Status(status, response)) => Ok((status, response.into_string()?)),
            Err(error) => Err(error.into()),
        }
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.api_port);
        Ok(ureq::get(&url).call()?.into_string()?)
    }

    /// Waits (counters come up once a second) until `/metrics` counts at least `at_least`
    /// data-plane refusals for `reason`.
    pub fn wait_for_refusals(&self, reason: &str, at_least: f64) -> anyhow::Result<()> {
        let sample = format!("otedama_dataplane_refusals_total{{reason=\"{reason}\"}}");
        wait_until(Duration::from_secs(10), &sample, || {
            self.metrics()
                .is_ok_and(|m| metric_value(&m, &sample).is_some_and(|count| count >= at_least))
        })
    }
}

/// The value of one sample (`name{labels}`) in Prometheus text, if present.
pub fn metric_value(metrics: &str, sample: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
}

/// A TCP connection to `address` from the loopback address `source`.
pub fn connect_from(source: std::net::Ipv4Addr, address: &str) -> anyhow::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let target: std::net::SocketAddrV4 = address.parse().context("an IPv4 address")?;
    let socket_address = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a fresh socket; the address structs live across the calls that read them,
    // and the descriptor is closed on every error path or owned by the returned stream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = socket_address(source, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), length) != 0 {
            anyhow::bail!("bind {source}: {}", std::io::Error::last_os_error());
        }
        let remote = socket_address(*target.ip(), target.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), length) != 0 {
            anyhow::bail!("connect {address}: {}", std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// The first line a child prints on stdout; the rest is read and dropped on a thread, so
/// the child never writes into a pipe nobody reads.
pub fn first_stdout_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = first_tx.send(first);
        }
        for _ in lines {}
    });
    first_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child printed a first line")
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The addresses paid by the coinbase of the block at `height`.
pub fn coinbase_addresses(node: &RegtestNode, height: u64) -> anyhow::Result<Vec<String>> {
    let hash = node.call("getblockhash", json!([height]))?;
    let block = node.call("getblock", json!([hash, 2]))?;
    let outputs = block["tx"][0]["vout"]
        .as_array()
        .context("coinbase has outputs")?;
    // Litecoin Core 0.21 lists `addresses`; newer Core versions give a single `address`.
    Ok(outputs
        .iter()
        .flat_map(|o| {
            let script = &o["scriptPubKey"];
            let single = script["address"].as_str().map(str::to_string);
            let listed = script["addresses"].as_array().cloned().unwrap_or_default();
            single.into_iter().chain(
                listed
                    .into_iter()
                    .filter_map(|a| a.as_str().map(str::to_string)),
            )
        })
        .collect())
}

/// A minimal blocking Stratum V1 client for tests that need to see each reply.
pub struct StratumTestClient {
    writer: TcpStream,
    reader: std::io::BufReader<TcpStream>,
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    pub difficulty: f64,
    pub job: Option<otedama_shared::sv1::client::NotifiedJob>,
    next_id: u64,
}

impl StratumTestClient {
    pub fn connect(address: &str) -> anyhow::Result<Self> {
        let writer =
            TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
        Self::over(writer)
    }

    /// Connects to `address` from `source` (any of 127.0.0.0/8 on loopback), as a miner on
    /// another host would.
    pub fn connect_from(source: std::net::Ipv4Addr, address: &str) -> anyhow::Result<Self> {
        Self::over(connect_from(source, address)?)
    }

    fn over(writer: TcpStream) -> anyhow::Result<Self> {
        writer.set_read_timeout(Some(Duration::from_secs(30)))?;
        let reader = std::io::BufReader::new(writer.try_clone()?);
        Ok(StratumTestClient {
            writer,
            reader,
            extranonce1: Vec::new(),
            extranonce2_size: 0,
            difficulty: 1.0,
            job: None,
            next_id: 1,
        })
    }

    /// How long `read_message` waits for a line before it fails.
    pub fn set_read_timeout(&self, timeout: Duration) -> anyhow::Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// The socket and a reader positioned after everything read so far, for tests that
    /// pipeline raw lines.
    pub fn into_raw(self) -> (TcpStream, std::io::BufReader<TcpStream>) {
        (self.writer, self.reader)
    }

    /// Sends a raw line (newline added if missing).
    pub fn send_raw(&mut self, line: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        self.writer.write_all(line)?;
        if line.last() != Some(&b'\n') {
            self.writer.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads one message, applying notifications to the client's state.
    pub fn read_message(&mut self) -> anyhow::Result<Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(PoolClosed.into());
        }
        let message: Value =
            serde_json::from_str(&line).with_context(|| format!("pool sent {line:?}"))?;
        match message["method"].as_str() {
            Some("mining.notify") => {
                self.job =
                    otedama_shared::sv1::client::NotifiedJob::from_params(&message["params"]);
            }
            Some("mining.set_difficulty") => {
                self.difficulty = message["params"][0].as_f64().unwrap_or(1.0)
            }
            _ => {}
        }
        Ok(message)
    }

    /// Sends a request and returns its reply, handling notifications that come first.
    pub fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(&otedama_shared::sv1::client::request_line(
            id, method, params,
        ))?;
        loop {
            let message = self.read_message()?;
            if message["id"] == json!(id) {
                return Ok(message);
            }
        }
    }

    /// Subscribes and authorizes `worker`, then waits for the first job.
    pub fn start(&mut self, worker: &str) -> anyhow::Result<()> {
        let reply = self.request("mining.subscribe", json!(["otedama-tests"]))?;
        self.extranonce1 = hex::decode(reply["result"][1].as_str().context("extranonce1")?)?;
        self.extranonce2_size = reply["result"][2].as_u64().context("extranonce2 size")? as usize;
        let reply = self.request("mining.authorize", json!([worker, "x"]))?;
        anyhow::ensure!(reply["result"] == json!(true), "authorize refused: {reply}");
        while self.job.is_none() {
            self.read_message()?;
        }
        Ok(())
    }

    /// Finds a scrypt nonce that meets the current difficulty on the current job.
    pub fn mine(&self, extranonce2: &[u8]) -> (u32, u32) {
        let job = self.job.as_ref().expect("a job");
        let nonce = self.find_nonce(extranonce2, otedama_kernels::Algorithm::Scrypt, |header| {
            otedama_kernels::scrypt::scrypt_pow(header)
        });
        (job.ntime, nonce)
    }

    /// Finds a SHA256d nonce that meets the current difficulty on the current job.
    pub fn mine_sha256d(&self, extranonce2: &[u8]) -> u32 {
        self.find_nonce(extranonce2, otedama_kernels::Algorithm::Sha256d, |header| {
            otedama_kernels::sha256d::sha256d(header)
        })
    }

    /// The first nonce whose header, at the job's ntime, meets the current difficulty
    /// under `algorithm`, whose proof of work `pow` computes.
    fn find_nonce(
        &self,
        extranonce2: &[u8],
        algorithm: otedama_kernels::Algorithm,
        pow: impl Fn(&[u8; 80]) -> [u8; 32],
    ) -> u32 {
        let job = self.job.as_ref().expect("a job");
        let target = otedama_kernels::Target::from_difficulty(algorithm, self.difficulty).unwrap();
        let mut header = job.header(&self.extranonce1, extranonce2, job.ntime, job.version);
        (0u32..)
            .find(|nonce| {
                header[76..80].copy_from_slice(&nonce.to_le_bytes());
                target.is_met_by(&pow(&header))
            })
            .expect("the nonce space holds a share at test difficulties")
    }

    /// Mines and submits one share on the current job; returns the reply.
    /// Submits `nonce` on the current job at its ntime (with rolled `version_bits`, the
    /// BIP310 sixth parameter, if given) and returns the reply.
    pub fn submit_nonce(
        &mut self,
        worker: &str,
        extranonce2: &[u8],
        nonce: u32,
        version_bits: Option<u32>,
    ) -> anyhow::Result<Value> {
        let job = self.job.as_ref().expect("a job");
        let mut params = vec![
            json!(worker),
            json!(job.job_id),
            json!(hex::encode(extranonce2)),
            json!(format!("{:08x}", job.ntime)),
            json!(format!("{nonce:08x}")),
        ];
        params.extend(version_bits.map(|bits| json!(format!("{bits:08x}"))));
        self.request("mining.submit", Value::Array(params))
    }

    pub fn submit_share(
        &mut self,
        worker: &str,
        extranonce2: &[u8],
    ) -> anyhow::Result<(Value, u32)> {
        let (ntime, nonce) = self.mine(extranonce2);
        let job_id = self.job.as_ref().expect("a job").job_id.clone();
        let params = json!([
            worker,
            job_id,
            hex::encode(extranonce2),
            format!("{ntime:08x}"),
            format!("{nonce:08x}")
        ]);
        Ok((self.request("mining.submit", params)?, nonce))
    }
}

/// The pool ended a connection: end of stream where a message was awaited.
#[derive(Debug)]
pub struct PoolClosed;

impl std::fmt::Display for PoolClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pool closed the connection")
    }
}

impl std::error::Error for PoolClosed {}

/// Whether reading a connection failed because the peer ended it (end of stream, reset or
/// abort), not because the read timed out: a test of a disconnect must not count a silent
/// socket that is still open as closed.
pub fn closed_by_peer(error: &anyhow::Error) -> bool {
    if error.downcast_ref::<PoolClosed>().is_some() {
        return true;
    }
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
    })
}
