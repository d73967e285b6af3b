//! Payouts end to end on litecoind regtest: three miners with their own addresses mine
//! through `otedama run`, the test matures the blocks, and the pool pays from the node's
//! wallet. The node's `getreceivedbyaddress` must show exactly what the ledger owed each
//! miner, under PPLNS and under SOLO, and again when the control plane is killed (it sends
//! itself SIGKILL at the step) between writing the payout intent and broadcasting it, and
//! between broadcasting it and recording it as sent. A miner put on the deny list keeps its
//! balance and is not paid, while the others are.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use otedama_tests::{wait_until, PoolSetup, RegtestPair};

/// About 650 scrypt hashes a share: blocks every second or so on a 2-core machine.
const START_DIFFICULTY: f64 = 0.01;
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
const MINERS_WALLET: &str = "miners";
const COINBASE_MATURITY: u64 = 100;
/// 1 % fee, in parts per million.
const POOL_FEE_PPM: u64 = 10_000;

struct Scenario {
    _root: tempfile::TempDir,
    nodes: RegtestPair,
    pool: PoolSetup,
    miners: Vec<String>,
    fault_file: std::path::PathBuf,
}

fn start(scheme: &str) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    start_with(scheme, &[])
}

/// `start` with more `otedama run` flags.
fn start_with(
    scheme: &str,
    extra_args: &[&str],
) -> anyhow::Result<(Scenario, otedama_tests::Process)> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    nodes.miner.call("createwallet", json!([MINERS_WALLET]))?;
    let miners = (0..3)
        .map(|_| {
            let address =
                nodes
                    .miner
                    .call_wallet(MINERS_WALLET, "getnewaddress", json!(["", "bech32"]))?;
            Ok(address.as_str().unwrap().to_string())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let token_file = root.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;
    let fault_file = root.path().join("fault");
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), START_DIFFICULTY);
    pool.extra_args = [
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
        "otedama",
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
            _root: root,
            nodes,
            pool,
            miners,
            fault_file,
        },
        run,
    ))
}

impl Scenario {
    /// Mines with every miner until `blocks` more blocks are found, then lets it settle.
    fn mine(&self, blocks: u64) -> anyhow::Result<()> {
        let found = self.pool.stats()?["blocks_found"].as_u64().unwrap();
        let mut processes = self
            .miners
            .iter()
            .enumerate()
            .map(|(i, address)| self.pool.spawn_miner_as(&format!("{address}.rig{i}"), 1))
            .collect::<anyhow::Result<Vec<_>>>()?;
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

    /// Mines past maturity on the node itself and waits until the ledger has matured
    /// every accepted block.
    fn mature(&self) -> anyhow::Result<()> {
        let burn = self
            .nodes
            .miner
            .call_wallet("otedama", "getnewaddress", json!([]))?;
        self.nodes
            .miner
            .generate_to(burn.as_str().unwrap(), COINBASE_MATURITY)?;
        wait_until(
            Duration::from_secs(90),
            "every found block to be confirmed",
            || {
                self.pool.get_json("/api/v1/blocks").is_ok_and(|blocks| {
                    blocks
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|b| b["rejected_reason"].is_null())
                        .all(|b| b["status"] == "confirmed")
                })
            },
        )?;
        // The payout thread settles confirmed blocks within a pass.
        wait_until(Duration::from_secs(30), "the ledger to mature them", || {
            self.balances()
                .is_ok_and(|b| b.values().all(|m| m["balance_immature"] == 0))
        })
    }

    fn balances(&self) -> anyhow::Result<BTreeMap<String, Value>> {
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

    fn received(&self, address: &str) -> anyhow::Result<u64> {
        let coins = self.nodes.miner.call_wallet(
            MINERS_WALLET,
            "getreceivedbyaddress",
            json!([address, 0]),
        )?;
        // JSON gives the amount as a float; 8 decimals recover its exact value (any amount
        // of coins below 2^53 units survives the round trip).
        let coins = coins.as_f64().unwrap_or(0.0);
        otedama_controlplane::config::parse_amount(&format!("{coins:.8}"))
    }

    /// The blocks the node accepted; each record's header (the share that found it)
    /// must hash to the block's hash.
    fn accepted_blocks(&self) -> anyhow::Result<Vec<Value>> {
        let blocks: Vec<Value> = self
            .pool
            .get_json("/api/v1/blocks")?
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["rejected_reason"].is_null())
            .cloned()
            .collect();
        for block in &blocks {
            let header = hex::decode(block["header"].as_str().unwrap_or_default())?;
            let mut hash = otedama_kernels::sha256d::sha256d(&header);
            hash.reverse();
            assert_eq!(block["hash"], hex::encode(hash), "{block}");
        }
        Ok(blocks)
    }

    /// Every unit of every accepted block is credited to someone: miners plus the pool's
    /// fee account add up to the rewards exactly.
    fn check_conservation(&self) -> anyhow::Result<()> {
        let rewards: u64 = self
            .accepted_blocks()?
            .iter()
            .map(|b| b["reward"].as_u64().unwrap())
            .sum();
        let accounts = otedama_tests::admin_get(&self.pool, "/api/v1/admin/miners", ADMIN_TOKEN)?;
        let credited: u64 = accounts
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                [
                    "balance_immature",
                    "balance_mature",
                    "balance_paying",
                    "paid",
                ]
                .iter()
                .map(|k| a[k].as_u64().unwrap())
                .sum::<u64>()
            })
            .sum();
        assert_eq!(
            credited, rewards,
            "credits must add up to the rewards: {accounts}"
        );
        Ok(())
    }

    /// What each miner is owed now, from the ledger.
    fn owed(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(self
            .balances()?
            .into_iter()
            .map(|(m, b)| (m, b["balance_mature"].as_u64().unwrap()))
            .collect())
    }

    /// Waits until the node has paid each miner `expected` in total, and the ledger agrees.
    fn wait_paid(&self, expected: &BTreeMap<String, u64>) -> anyhow::Result<()> {
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

    fn run_payout(&self) -> anyhow::Result<(u16, Value)> {
        self.pool
            .post_admin("/api/v1/admin/payouts/run", ADMIN_TOKEN)
    }
}

/// Runs one scheme: a clean payout, then a second one with the control plane killed at
/// `fault`; each miner must end paid exactly what it was owed, once.
fn pays_each_miner_exactly_once(scheme: &str, fault: &str) -> anyhow::Result<()> {
    let (scenario, _run) = start(scheme)?;

    // A clean run.
    scenario.mine(4)?;
    scenario.mature()?;
    scenario.check_conservation()?;
    let owed = scenario.owed()?;
    assert!(
        owed.values().filter(|v| **v > 0).count() >= 1,
        "someone must be owed something: {owed:?}"
    );
    if scheme == "solo" {
        // SOLO: each miner is owed exactly the rewards of the blocks it found, less the fee.
        let mut expected: BTreeMap<String, u64> =
            scenario.miners.iter().map(|m| (m.clone(), 0)).collect();
        for block in scenario.accepted_blocks()? {
            let reward = block["reward"].as_u64().unwrap();
            let finder = block["worker"].as_str().unwrap().split('.').next().unwrap();
            *expected.get_mut(finder).unwrap() += reward - reward * POOL_FEE_PPM / 1_000_000;
        }
        assert_eq!(owed, expected);
    }
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    let batch = &body["batch"];
    assert!(
        batch["txid"].as_str().is_some_and(|t| t.len() == 64),
        "{body}"
    );
    let paid_first: BTreeMap<String, u64> =
        owed.clone().into_iter().filter(|(_, v)| *v > 0).collect();
    scenario.wait_paid(&paid_first)?;
    let payments = scenario.pool.get_json("/api/v1/payments")?;
    assert_eq!(payments[0]["txid"], batch["txid"]);
    assert_eq!(payments[0]["state"], "sent");

    // A second round of blocks, paid with the control plane killed at `fault`.
    scenario.mine(3)?;
    scenario.mature()?;
    scenario.check_conservation()?;
    let owed_now = scenario.owed()?;
    std::fs::write(&scenario.fault_file, fault)?;
    // The control plane dies by SIGKILL in the middle of the request; the API may answer with an
    // error or not at all.
    let _ = scenario.run_payout();
    wait_until(Duration::from_secs(30), "the fault to fire", || {
        !scenario.fault_file.exists()
    })?;
    let expected: BTreeMap<String, u64> = scenario
        .miners
        .iter()
        .map(|m| {
            (
                m.clone(),
                paid_first.get(m).copied().unwrap_or(0) + owed_now[m],
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    // The supervisor restarts the control plane, which reconciles the open intent.
    scenario.wait_paid(&expected)?;
    // Another run finds nothing more to pay, and the node's totals do not move.
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    assert!(body["batch"].is_null(), "nothing is owed any more: {body}");
    std::thread::sleep(Duration::from_secs(2));
    for (miner, amount) in &expected {
        assert_eq!(scenario.received(miner)?, *amount, "{miner} paid once");
    }
    let payments = scenario.pool.get_json("/api/v1/payments")?;
    assert_eq!(payments.as_array().unwrap().len(), 2, "{payments}");
    let audit = otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/audit", ADMIN_TOKEN)?;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "payouts.run"));
    assert!(
        !audit.to_string().contains(ADMIN_TOKEN),
        "the token never appears"
    );
    Ok(())
}

#[test]
fn pplns_pays_each_miner_once_across_a_crash_between_intent_and_broadcast() -> anyhow::Result<()> {
    pays_each_miner_exactly_once("pplns", "payout:intent-written")
}

#[test]
fn solo_pays_each_miner_once_across_a_crash_between_broadcast_and_record() -> anyhow::Result<()> {
    pays_each_miner_exactly_once("solo", "payout:broadcast")
}

#[test]
fn a_denied_miner_keeps_its_balance_and_is_not_paid() -> anyhow::Result<()> {
    let lists = tempfile::tempdir()?;
    let deny = lists.path().join("deny.txt");
    std::fs::write(&deny, "# nobody yet\n")?;
    let (scenario, _run) = start_with(
        "pplns",
        &[
            "--deny-list-file",
            deny.to_str().unwrap(),
            "--deny-list-reload-s",
            "1",
        ],
    )?;
    scenario.mine(3)?;
    scenario.mature()?;
    let owed = scenario.owed()?;
    let denied = scenario
        .miners
        .iter()
        .max_by_key(|m| owed[*m])
        .unwrap()
        .clone();
    assert!(owed[&denied] > 0, "{owed:?}");
    let expected: BTreeMap<String, u64> = owed
        .iter()
        .filter(|(m, v)| **m != denied && **v > 0)
        .map(|(m, v)| (m.clone(), *v))
        .collect();
    assert!(!expected.is_empty(), "PPLNS credits every miner: {owed:?}");

    // The list is re-read; the hit on an address with a balance is audited.
    std::fs::write(&deny, format!("{denied}\n"))?;
    wait_until(Duration::from_secs(30), "the deny list hit", || {
        otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/audit", ADMIN_TOKEN).is_ok_and(
            |audit| {
                audit.as_array().unwrap().iter().any(|e| {
                    e["action"] == "deny_list.hit" && e["detail"]["address"] == denied.as_str()
                })
            },
        )
    })?;
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    scenario.wait_paid(&expected)?;
    assert_eq!(
        scenario.received(&denied)?,
        0,
        "a denied address is never paid"
    );
    let balances = scenario.balances()?;
    assert_eq!(
        balances[&denied]["balance_mature"].as_u64(),
        Some(owed[&denied]),
        "its balance stays, frozen"
    );
    // A later run still holds it.
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    assert!(body["batch"].is_null(), "{body}");
    scenario.check_conservation()?;
    Ok(())
}
