//! Regtest nodes for the demo and the end-to-end tests: start a real `litecoind` (Litecoin
//! Core, Debian's package) or `bitcoind` (Bitcoin Knots, fetched by `knots`) in a directory
//! of our own, wait for its RPC, peer two of them (a Litecoin template needs a peer even on
//! regtest), and stop them again.

pub mod knots;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use otedama_chain::rpc::{RpcAuth, RpcClient};

const NODE_START_TIMEOUT_S: u64 = 60;
/// Starts of a new node, each on fresh ports, before its failure is reported.
const NODE_START_ATTEMPTS_MAX: u32 = 3;
const RPC_USER: &str = "otedama";
const RPC_PASSWORD: &str = "otedama-regtest";

/// The lowest port `free_port` hands out: above the registered services tests might meet.
const TEST_PORT_LOW: u32 = 20_000;
/// Ports `free_port` needs below the ephemeral range to use it at all.
const TEST_PORTS_MIN: u32 = 1_000;

/// A loopback port that was free (TCP and UDP) a moment ago, chosen below the kernel's
/// ephemeral range when there is room. A port from `bind(0)` comes from that range, so any
/// outgoing connection in the meantime (a test opens thousands) can take it as its source
/// port before the child binds it; below the range only another listener can. Successive
/// calls in one process walk the range from a start set by the process id, so two tests
/// of a binary never get the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(TEST_PORT_LOW);
    if span >= TEST_PORTS_MIN {
        let _ = NEXT.compare_exchange(
            0,
            std::process::id().wrapping_mul(7_919) % span + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        for _ in 0..span {
            let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
            let port = (TEST_PORT_LOW + offset) as u16;
            let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
            if free {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Makes sure `litecoind` and `litecoin-cli` exist, installing Debian's package when we are
/// root, and otherwise saying exactly what to install.
pub fn ensure_litecoind() -> anyhow::Result<()> {
    if on_path("litecoind") {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        bail!("litecoind is not installed; run: sudo apt-get install -y litecoind");
    }
    eprintln!("litecoind is missing; installing Debian's litecoind package with apt-get");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "litecoind"][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed; install litecoind by hand: apt-get install -y litecoind",
                args.join(" ")
            );
        }
    }
    if !on_path("litecoind") {
        bail!("apt-get installed litecoind but it is not on PATH");
    }
    Ok(())
}

/// Which node software a regtest node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// `litecoind`, from Debian's `litecoind` package.
    Litecoin,
    /// `bitcoind`, from Debian unstable's `bitcoin-knots`, unpacked beside the pool.
    Bitcoin,
}

impl NodeKind {
    /// The daemon's name, for messages.
    pub fn daemon(self) -> &'static str {
        match self {
            NodeKind::Litecoin => "litecoind",
            NodeKind::Bitcoin => "bitcoind",
        }
    }

    /// The pool's `--coin` for this node.
    pub fn coin(self) -> &'static str {
        match self {
            NodeKind::Litecoin => "litecoin",
            NodeKind::Bitcoin => "bitcoin",
        }
    }

    /// The daemon, ready to take its arguments: installed (Litecoin) or fetched and
    /// unpacked (Bitcoin) first if missing.
    fn command(self) -> anyhow::Result<Command> {
        Ok(match self {
            NodeKind::Litecoin => {
                ensure_litecoind()?;
                Command::new("litecoind")
            }
            NodeKind::Bitcoin => knots::ensure_knots()?.command("bitcoind"),
        })
    }
}

pub struct RegtestNode {
    pub kind: NodeKind,
    pub datadir: PathBuf,
    pub rpc_port: u16,
    pub p2p_port: u16,
    pub rpc: RpcClient,
    child: Option<Child>,
}

impl RegtestNode {
    /// Starts a Litecoin node whose data lives in `datadir` (created if needed).
    pub fn start(datadir: &Path) -> anyhow::Result<Self> {
        Self::start_kind(datadir, NodeKind::Litecoin)
    }

    /// Starts a node of `kind` whose data lives in `datadir` (created if needed).
    pub fn start_kind(datadir: &Path, kind: NodeKind) -> anyhow::Result<Self> {
        std::fs::create_dir_all(datadir)
            .with_context(|| format!("creating {}", datadir.display()))?;
        // A port found free can be taken before the node binds it (an outgoing
        // connection's source port comes from the same range): a node that exits at start
        // gets fresh ports, a few times.
        let mut attempt = 1;
        loop {
            let (rpc_port, p2p_port) = (free_port(), free_port());
            let rpc = RpcClient::new(
                &format!("http://127.0.0.1:{rpc_port}"),
                RpcAuth::UserPassword {
                    user: RPC_USER.into(),
                    password: RPC_PASSWORD.into(),
                },
            );
            let mut node = RegtestNode {
                kind,
                datadir: datadir.to_path_buf(),
                rpc_port,
                p2p_port,
                rpc,
                child: None,
            };
            match node.launch(&[]) {
                Ok(()) => return Ok(node),
                Err(error) if attempt < NODE_START_ATTEMPTS_MAX => {
                    eprintln!("{error:#}; again on other ports");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Stops the node and starts it again on the same data and ports, with `extra_args`
    /// (a test's way to make the node forget its mempool: `-persistmempool=0`). Wallets
    /// must be loaded again.
    pub fn restart_with(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        self.stop();
        self.launch(extra_args)
    }

    fn launch(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        let (datadir, rpc_port, p2p_port) = (&self.datadir, self.rpc_port, self.p2p_port);
        let daemon = self.kind.daemon();
        let mut command = self.kind.command()?;
        match self.kind {
            // Litecoin Core takes no BIP125 replacements unless asked: the payout tests
            // bump a payout's fee as an operator with replacement on would. No Tor: its
            // listener and control connection would take ports other nodes may be given.
            NodeKind::Litecoin => command.args(["-mempoolreplacement=1", "-listenonion=0"]),
            // Bitcoin Core binds a Tor listener on the P2P port + 1 by default, which may
            // be another node's free port here.
            NodeKind::Bitcoin => command.arg("-listenonion=0"),
        };
        let child = command
            .arg("-regtest")
            .arg(format!("-datadir={}", datadir.display()))
            .arg(format!("-port={p2p_port}"))
            .arg(format!("-rpcport={rpc_port}"))
            .arg(format!("-rpcuser={RPC_USER}"))
            .arg(format!("-rpcpassword={RPC_PASSWORD}"))
            .args([
                "-server=1",
                "-listen=1",
                "-bind=127.0.0.1",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
            ])
            .args([
                "-dnsseed=0",
                "-discover=0",
                "-fallbackfee=0.0002",
                "-printtoconsole=0",
                "-rpcthreads=8",
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {daemon}"))?;
        self.child = Some(child);
        let node = self;
        let datadir = node.datadir.clone();
        let deadline = Instant::now() + Duration::from_secs(NODE_START_TIMEOUT_S);
        loop {
            match node.rpc.get_blockchain_info() {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    if let Some(status) = node
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!(
                            "{daemon} exited at start ({status}); see {}/regtest/debug.log",
                            datadir.display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => {
                    bail!("{daemon} did not answer RPC within {NODE_START_TIMEOUT_S} s: {error}")
                }
            }
        }
        Ok(())
    }

    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    pub fn rpc_user(&self) -> &'static str {
        RPC_USER
    }

    pub fn rpc_password(&self) -> &'static str {
        RPC_PASSWORD
    }

    pub fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        Ok(self.rpc.call(method, params)?)
    }

    /// A wallet RPC against the named wallet (the node may have several loaded).
    pub fn call_wallet(&self, wallet: &str, method: &str, params: Value) -> anyhow::Result<Value> {
        Ok(self
            .rpc
            .for_path(&format!("/wallet/{wallet}"))
            .call(method, params)?)
    }

    /// Peers this node with `other` and waits until the connection is up. `onetry` makes
    /// one attempt, which fails while the other node is still opening its P2P port (its RPC
    /// can answer first), so it is asked again each second until the nodes are connected.
    pub fn connect(&self, other: &RegtestNode) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next_attempt = Instant::now();
        while self.call("getconnectioncount", json!([]))?.as_u64() == Some(0) {
            if Instant::now() > deadline {
                bail!("regtest nodes did not connect within 30 s");
            }
            if Instant::now() >= next_attempt {
                self.call(
                    "addnode",
                    json!([format!("127.0.0.1:{}", other.p2p_port), "onetry"]),
                )?;
                next_attempt = Instant::now() + Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Creates (or loads) a wallet and returns a new bech32 address from it.
    pub fn wallet_address(&self) -> anyhow::Result<String> {
        if self.call("createwallet", json!(["otedama"])).is_err() {
            let _ = self.call("loadwallet", json!(["otedama"]));
        }
        let address = self.call("getnewaddress", json!(["", "bech32"]))?;
        Ok(address
            .as_str()
            .context("getnewaddress returned no string")?
            .to_string())
    }

    pub fn generate_to(&self, address: &str, blocks: u64) -> anyhow::Result<()> {
        self.call("generatetoaddress", json!([blocks, address]))?;
        Ok(())
    }

    pub fn block_count(&self) -> anyhow::Result<u64> {
        Ok(self.rpc.get_block_count()?)
    }

    /// Asks the node to stop and waits for it; kills it if it will not.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self.rpc.call("stop", json!([]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RegtestNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The wallet that holds the pre-mined coins and whatever the tests mine on the node
/// itself: never the pool's, so the pool's wallet holds only what its own blocks paid it.
pub const FUNDING_WALLET: &str = "funding";

/// Two peered regtest nodes, ready for getblocktemplate: the first has the pool's wallet
/// (`otedama`, empty) and a funding wallet with `mature_blocks` blocks mined to it.
pub struct RegtestPair {
    pub miner: RegtestNode,
    pub peer: RegtestNode,
    /// An address of the pool's wallet.
    pub wallet_address: String,
    /// An address of `FUNDING_WALLET`.
    pub funding_address: String,
}

impl RegtestPair {
    /// Two Litecoin nodes.
    pub fn start(root: &Path, mature_blocks: u64) -> anyhow::Result<Self> {
        Self::start_kind(root, mature_blocks, NodeKind::Litecoin)
    }

    /// Two nodes of `kind`.
    pub fn start_kind(root: &Path, mature_blocks: u64, kind: NodeKind) -> anyhow::Result<Self> {
        let miner = RegtestNode::start_kind(&root.join("node-a"), kind)?;
        let peer = RegtestNode::start_kind(&root.join("node-b"), kind)?;
        miner.connect(&peer)?;
        // The pool's wallet first: `wallet_address` asks the node's only wallet.
        let wallet_address = miner.wallet_address()?;
        miner.call("createwallet", json!([FUNDING_WALLET]))?;
        let funding_address = miner
            .call_wallet(FUNDING_WALLET, "getnewaddress", json!(["", "bech32"]))?
            .as_str()
            .context("getnewaddress returned no string")?
            .to_string();
        miner.generate_to(&funding_address, mature_blocks)?;
        // The wallet learns of new blocks after the node connects them: a spend sent at
        // once can find no funds yet (CI on 631168a saw "Insufficient funds" here).
        let coin = match kind {
            NodeKind::Litecoin => otedama_chain::coin::Coin::Litecoin,
            NodeKind::Bitcoin => otedama_chain::coin::Coin::Bitcoin,
        };
        let maturity =
            otedama_chain::coin::CoinParams::new(coin, otedama_chain::coin::Network::Regtest)
                .coinbase_maturity;
        if mature_blocks > maturity {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while miner
                .call_wallet(FUNDING_WALLET, "getbalance", json!([]))?
                .as_f64()
                .unwrap_or(0.0)
                <= 0.0
            {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the funding wallet saw no mature coinbase within 30 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Ok(RegtestPair {
            miner,
            peer,
            wallet_address,
            funding_address,
        })
    }
}

impl RegtestPair {
    /// Litecoin: brings the chain past MWEB activation now, as mainnet has been since
    /// 2022 (see `activate_mweb`). A chain left before it stops at height 431 unless a
    /// peg-in is sent in time, so whatever mines for long (the demo, the longest tests)
    /// starts here; the tests of the pool's own first MWEB block do not.
    pub fn activate_mweb(&self) -> anyhow::Result<()> {
        activate_mweb(&self.miner, &self.funding_address)
    }
}

/// The height at which Litecoin's regtest activates MWEB (BIP9 by height, always signalled).
pub const LITECOIN_REGTEST_MWEB_HEIGHT: u64 = 432;

/// Brings a Litecoin regtest chain past MWEB activation: mines to the block before it,
/// pegs a coin of the funding wallet into the MWEB, and mines the activating block with
/// that peg-in. litecoind cannot build the first MWEB block without one (its integrating
/// transaction would have no input: `bad-txns-vin-empty`), so without it a node stops at
/// height 431; after it every template carries the MWEB block the pool must append. (A
/// peg-in sent before height 431 would make litecoind's templates before activation fail
/// instead, so it is sent only there.)
fn activate_mweb(node: &RegtestNode, funding_address: &str) -> anyhow::Result<()> {
    let height = node
        .call("getblockcount", json!([]))?
        .as_u64()
        .context("getblockcount returned no number")?;
    if height >= LITECOIN_REGTEST_MWEB_HEIGHT {
        return Ok(());
    }
    node.generate_to(funding_address, LITECOIN_REGTEST_MWEB_HEIGHT - 1 - height)?;
    let mweb_address = node
        .call_wallet(FUNDING_WALLET, "getnewaddress", json!(["", "mweb"]))?
        .as_str()
        .context("getnewaddress returned no MWEB address")?
        .to_string();
    // The wallet sees the coinbases it can spend once the node has connected them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match node.call_wallet(FUNDING_WALLET, "sendtoaddress", json!([mweb_address, 1])) {
            Ok(_) => break,
            Err(error) if std::time::Instant::now() < deadline => {
                tracing::debug!(%error, "peg-in not sent yet");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(error) => return Err(error.context("pegging a coin into the MWEB")),
        }
    }
    node.generate_to(funding_address, 1)?;
    Ok(())
}
