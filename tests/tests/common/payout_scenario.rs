//! A pool on regtest (litecoind, or bitcoind for the Bitcoin tests) with miners of their
//! own addresses, for the payout, exchange and KYC tests: start it, mine, mature, and
//! read balances and payments.

// Each test binary that includes this uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use otedama_tests::{wait_until, NodeKind, PoolSetup, RegtestPair};

/// About 650 scrypt hashes a share: blocks every second or so on a 2-core machine.
pub const START_DIFFICULTY: f64 = 0.01;
/// About 4.3 million SHA256d hashes a share: about a second per CPU thread.
pub const START_DIFFICULTY_SHA256D: f64 = 0.001;
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
pub const MINERS_WALLET: &str = "miners";
/// The node wallet the pool pays from and is paid to (`--node-wallet`).
pub const POOL_WALLET: &str = "otedama";
pub const COINBASE_MATURITY: u64 = 100;
/// 1 % fee, in parts per million.
pub const POOL_FEE_PPM: u64 = 10_000;

pub struct Scenario {
    pub root: tempfile::TempDir,
    pub nodes: RegtestPair,
    pub pool: PoolSetup,
    pub miners: Vec<String>,
    pub fault_file: std::path::PathBuf,
    /// Between the pool and the node, when the test asked for one.
    pub proxy: Option<otedama_tests::fault_proxy::FaultProxy>,
}

pub fn start(scheme: &str) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    start_with(scheme, &[])
}

/// `start` with more `otedama run` flags.
pub fn start_with(
    scheme: &str,
    extra_args: &[&str],
) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    start_with_addresses(scheme, extra_args, ["bech32"; 3])
}

/// `start_with`, the miners' addresses of the given types (`legacy`, `p2sh-segwit`,
/// `bech32`).
pub fn start_with_addresses(
    scheme: &str,
    extra_args: &[&str],
    address_types: [&str; 3],
) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    start_full(NodeKind::Litecoin, scheme, extra_args, &address_types, None)
}

/// A pool on `kind`'s regtest, one miner per address type (`legacy`, `p2sh-segwit`,
/// `bech32`, and on Bitcoin `bech32m`).
pub fn start_kind(
    kind: NodeKind,
    scheme: &str,
    address_types: &[&str],
) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    start_full(kind, scheme, &[], address_types, None)
}

/// `start_with`, the pool talking to the node through a fault proxy that spoils `methods`
/// as `mix` says (`Scenario::proxy` heals it).
pub fn start_behind_proxy(
    scheme: &str,
    methods: &[&str],
    mix: otedama_tests::fault_proxy::FaultMix,
) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    start_full(
        NodeKind::Litecoin,
        scheme,
        &[],
        &["bech32"; 3],
        Some((methods, mix)),
    )
}

fn start_full(
    kind: NodeKind,
    scheme: &str,
    extra_args: &[&str],
    address_types: &[&str],
    proxy: Option<(&[&str], otedama_tests::fault_proxy::FaultMix)>,
) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start_kind(root.path(), 101, kind)?;
    nodes.miner.call("createwallet", json!([MINERS_WALLET]))?;
    let miners = address_types
        .iter()
        .map(|address_type| {
            let address = nodes.miner.call_wallet(
                MINERS_WALLET,
                "getnewaddress",
                json!(["", address_type]),
            )?;
            Ok(address.as_str().unwrap().to_string())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let token_file = root.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;
    let fault_file = root.path().join("fault");
    let start_difficulty = match kind {
        NodeKind::Litecoin => START_DIFFICULTY,
        NodeKind::Bitcoin => START_DIFFICULTY_SHA256D,
    };
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), start_difficulty);
    let proxy = proxy.map(|(methods, mix)| {
        let node_port = nodes
            .miner
            .rpc_url()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        otedama_tests::fault_proxy::FaultProxy::start(node_port, methods, mix, 1)
    });
    if let Some(proxy) = &proxy {
        pool.rpc_url = proxy.url();
    }
    pool.extra_args = payout_flags(scheme, &token_file)
        .into_iter()
        .chain(extra_args.iter().map(|s| s.to_string()))
        .collect();
    pool.env = vec![(
        "OTEDAMA_FAULT_FILE".into(),
        fault_file.display().to_string(),
    )];
    let run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;
    Ok((
        Scenario {
            root,
            nodes,
            pool,
            miners,
            fault_file,
            proxy,
        },
        run,
    ))
}

/// The flags every payout scenario's pool runs with: `scheme`, a 1 % fee,
/// `COINBASE_MATURITY`, no scheduled payout (the tests ask for each), the node wallet
/// `POOL_WALLET`, a PPLNS window wide enough for regtest and the admin token in
/// `token_file`.
pub fn payout_flags(scheme: &str, token_file: &std::path::Path) -> Vec<String> {
    [
        "--payout-scheme",
        scheme,
        "--pool-fee-percent",
        "1",
        "--coinbase-maturity",
        &COINBASE_MATURITY.to_string(),
        "--payout-interval-s",
        "86400",
        "--payout-min",
        "0.001",
        "--node-wallet",
        POOL_WALLET,
        // Regtest's network difficulty is ~5e-10: a window of a few shares needs a factor
        // far above mainnet's 2.
        "--pplns-window-factor",
        "200000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ])
    .collect()
}

impl Scenario {
    /// Mines with every miner until `blocks` more blocks are found, then lets it settle.
    pub fn mine(&self, blocks: u64) -> anyhow::Result<()> {
        let found = self.pool.stats()?["blocks_found"].as_u64().unwrap();
        let mut processes = self.spawn_miners()?;
        wait_until(Duration::from_secs(240), "blocks to be found", || {
            self.pool
                .stats()
                .is_ok_and(|s| s["blocks_found"].as_u64().unwrap_or(0) >= found + blocks)
        })?;
        for process in &mut processes {
            process.terminate();
        }
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    }

    /// A CPU miner (one thread) for each miner address, worker `rig<index>`.
    pub fn spawn_miners(&self) -> anyhow::Result<Vec<otedama_tests::Process>> {
        self.miners
            .iter()
            .enumerate()
            .map(|(i, address)| self.pool.spawn_miner_as(&format!("{address}.rig{i}"), 1))
            .collect()
    }

    /// Mines two blocks at a time until every miner has earned more than `units` (immature
    /// or mature), at most `rounds_max` times: PPLNS on regtest's second-long blocks can
    /// leave a miner that connected late out of a few rounds.
    pub fn mine_until_each_earned(&self, units: u64, rounds_max: usize) -> anyhow::Result<()> {
        for _ in 0..rounds_max {
            self.mine(2)?;
            let earned = self.balances()?;
            let total = |b: &Value| {
                b["balance_immature"].as_u64().unwrap_or(0)
                    + b["balance_mature"].as_u64().unwrap_or(0)
            };
            if earned.values().all(|b| total(b) > units) {
                return Ok(());
            }
        }
        anyhow::bail!("after {rounds_max} rounds some miner has not earned {units}")
    }

    /// Mines past maturity on the node itself (to the funding wallet, never the pool's)
    /// and waits until the ledger has matured every accepted block.
    pub fn mature(&self) -> anyhow::Result<()> {
        self.nodes
            .miner
            .generate_to(&self.nodes.funding_address, COINBASE_MATURITY)?;
        wait_until(
            Duration::from_secs(90),
            "every found block to be confirmed",
            || self.pool.accepted_blocks_confirmed(),
        )?;
        // The payout thread settles confirmed blocks within a pass.
        wait_until(Duration::from_secs(30), "the ledger to mature them", || {
            self.balances()
                .is_ok_and(|b| b.values().all(|m| m["balance_immature"] == 0))
        })
    }

    pub fn balances(&self) -> anyhow::Result<BTreeMap<String, Value>> {
        self.miners
            .iter()
            .map(|m| {
                Ok((
                    m.clone(),
                    self.pool.get_json(&format!("/api/v1/miners/{m}"))?,
                ))
            })
            .collect()
    }

    pub fn received(&self, address: &str) -> anyhow::Result<u64> {
        let coins = self.nodes.miner.call_wallet(
            MINERS_WALLET,
            "getreceivedbyaddress",
            json!([address, 0]),
        )?;
        units(&coins)
    }

    /// The blocks the node accepted; each record's header (the share that found it)
    /// must hash to the block's hash.
    pub fn accepted_blocks(&self) -> anyhow::Result<Vec<Value>> {
        let blocks = self.pool.accepted_blocks()?;
        for block in &blocks {
            let header = hex::decode(block["header"].as_str().unwrap_or_default())?;
            let mut hash = otedama_kernels::sha256d::sha256d(&header);
            hash.reverse();
            assert_eq!(block["hash"], hex::encode(hash), "{block}");
        }
        Ok(blocks)
    }

    /// The ledger against the chain, as the node's wallet of the pool sees it (the pool's
    /// wallet holds nothing but what its blocks paid it, see `FUNDING_WALLET`):
    /// - the pool's coinbases add up to every credit, miners' and the pool's fee, to the
    ///   unit, and so do the rewards the pool recorded;
    /// - what the wallet still holds, plus every fee its transactions paid, is exactly what
    ///   the ledger has not paid out (no payout may be in flight when this is called).
    pub fn check_conservation(&self) -> anyhow::Result<()> {
        let rewards: u64 = self
            .accepted_blocks()?
            .iter()
            .map(|b| b["reward"].as_u64().unwrap())
            .sum();
        let (credited, accounts) = otedama_tests::ledger_total(&self.pool, ADMIN_TOKEN)?;
        assert_eq!(
            credited, rewards,
            "credits must add up to the rewards: {accounts}"
        );
        let node = &self.nodes.miner;
        let listed = node.call_wallet(
            POOL_WALLET,
            "listtransactions",
            json!(["*", 100_000, 0, true]),
        )?;
        let mut coinbases = 0u64;
        let mut fees: BTreeMap<String, u64> = BTreeMap::new();
        for entry in listed.as_array().unwrap() {
            match entry["category"].as_str().unwrap_or_default() {
                // "orphan" is a coinbase no longer in the active chain: not received.
                "generate" | "immature" => coinbases += units(&entry["amount"])?,
                // Each output of a send repeats its transaction's fee; a transaction
                // replaced or conflicted out of the chain paid none.
                "send"
                    if entry["confirmations"].as_i64().unwrap_or(0) >= 0
                        && entry["replaced_by_txid"].is_null()
                        && entry["abandoned"] != true =>
                {
                    let txid = entry["txid"].as_str().unwrap().to_string();
                    fees.insert(txid, units(&entry["fee"])?);
                }
                _ => {}
            }
        }
        assert_eq!(
            coinbases, credited,
            "the pool's coinbases on the chain must equal its credits: {accounts}"
        );
        let field = |name: &str| -> u64 {
            accounts
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a[name].as_u64().unwrap_or(0))
                .sum()
        };
        assert_eq!(
            field("balance_paying"),
            0,
            "no payout in flight: {accounts}"
        );
        let unpaid = field("balance_immature") + field("balance_mature");
        let balances = node.call_wallet(POOL_WALLET, "getbalances", json!([]))?;
        let held = ["trusted", "untrusted_pending", "immature"]
            .iter()
            .map(|kind| units(&balances["mine"][kind]))
            .sum::<anyhow::Result<u64>>()?;
        let fees_paid: u64 = fees.values().sum();
        assert_eq!(
            held + fees_paid,
            unpaid,
            "the pool's wallet ({held} held, {fees_paid} paid in fees) must hold what the ledger has not paid out: {accounts}"
        );
        Ok(())
    }

    /// The miners owed something now, with what they are owed.
    pub fn owed_nonzero(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(self.owed()?.into_iter().filter(|(_, v)| *v > 0).collect())
    }

    /// What each miner is owed now, from the ledger.
    pub fn owed(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(self
            .balances()?
            .into_iter()
            .map(|(m, b)| (m, b["balance_mature"].as_u64().unwrap()))
            .collect())
    }

    /// Waits until the node has paid each miner `expected` in total, and the ledger agrees.
    pub fn wait_paid(&self, expected: &BTreeMap<String, u64>) -> anyhow::Result<()> {
        wait_until(
            Duration::from_secs(120),
            "the payout to reach the node",
            || {
                expected
                    .iter()
                    .all(|(m, amount)| self.received(m).is_ok_and(|r| r == *amount))
            },
        )?;
        wait_until(Duration::from_secs(60), "the ledger to record it", || {
            self.balances().is_ok_and(|b| {
                expected.iter().all(|(m, amount)| {
                    b[m]["paid"].as_u64() == Some(*amount) && b[m]["balance_paying"] == 0
                })
            })
        })
    }

    /// Mines three blocks, matures them, runs a payout and waits until the node has paid
    /// it: what each miner was owed (someone was), and the payout's txid.
    pub fn pay_once(&self) -> anyhow::Result<(BTreeMap<String, u64>, String)> {
        self.mine(3)?;
        self.mature()?;
        let owed = self.owed_nonzero()?;
        assert!(!owed.is_empty());
        let (status, body) = self.run_payout()?;
        assert_eq!(status, 200, "{body}");
        let txid = body["batch"]["txid"].as_str().unwrap().to_string();
        self.wait_paid(&owed)?;
        Ok((owed, txid))
    }

    /// The newest payout batch, as `/api/v1/payments` shows it.
    pub fn latest_payment(&self) -> anyhow::Result<Value> {
        Ok(self.pool.get_json("/api/v1/payments")?[0].clone())
    }

    pub fn run_payout(&self) -> anyhow::Result<(u16, Value)> {
        self.pool
            .post_admin("/api/v1/admin/payouts/run", ADMIN_TOKEN)
    }
}

/// A node's amount in coins as units, sign dropped. JSON gives it as a float; 8 decimals
/// recover its exact value (any amount below 2^53 units survives the round trip).
pub fn units(coins: &Value) -> anyhow::Result<u64> {
    let coins = coins.as_f64().unwrap_or(0.0).abs();
    Ok(otedama_ledger::Amount::parse(&format!("{coins:.8}"))?.units())
}
