//! Payouts end to end on litecoind regtest: three miners with their own addresses mine
//! through `otedama run`, the test matures the blocks, and the pool pays from the node's
//! wallet. The node's `getreceivedbyaddress` must show exactly what the ledger owed each
//! miner, under PPLNS and under SOLO, and again when the control plane is killed (it sends
//! itself SIGKILL at the step) between writing the payout intent and broadcasting it, and
//! between broadcasting it and recording it as sent. A miner put on the deny list keeps its
//! balance and is not paid, while the others are.

#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::collections::BTreeMap;
use std::time::Duration;

use otedama_controlplane::regtest::FUNDING_WALLET;
use otedama_controlplane::tasks::payouts::PAYOUT_REQUESTS_QUEUED_MAX;
use otedama_tests::wait_until;
use payout_scenario::{
    start, start_behind_proxy, start_with, units, ADMIN_TOKEN, MINERS_WALLET, POOL_FEE_PPM,
    POOL_WALLET,
};

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
    // Each miner's own payments (read through its index) add up to what the node paid it,
    // and its page lists the same.
    for (miner, amount) in &expected {
        let own = scenario
            .pool
            .get_json(&format!("/api/v1/miners/{miner}/payments"))?;
        let listed: u64 = own
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["amount"].as_u64().unwrap())
            .sum();
        assert_eq!(listed, *amount, "{miner}: {own}");
        let page = scenario.pool.get_json(&format!("/api/v1/miners/{miner}"))?;
        assert_eq!(page["payments"], own, "{miner}");
    }
    // One batch a page: the first page names the next, which holds the older batch and
    // is the last.
    let page = |query: &str| -> anyhow::Result<(serde_json::Value, Option<String>)> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/payments{query}",
            scenario.pool.api_port
        );
        let response = ureq::get(&url).call()?;
        let cursor = response.header("x-next-cursor").map(str::to_string);
        Ok((response.into_json()?, cursor))
    };
    let (first, cursor) = page("?limit=1")?;
    let cursor = cursor.expect("a full page names the next");
    let (second, last) = page(&format!("?limit=1&cursor={cursor}"))?;
    assert_eq!(first[0], payments[0]);
    assert_eq!(second[0], payments[1]);
    let (after, _) = page(&format!(
        "?limit=1&cursor={}",
        last.expect("second page full")
    ))?;
    assert_eq!(after, serde_json::json!([]));
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

/// Issue 15, point 5: a control plane killed after the wallet funded and signed a payout
/// (its coins locked) but before the intent was written has paid nothing; started again,
/// it unlocks those coins, and the next run pays every miner exactly once.
#[test]
fn a_crash_between_funding_and_intent_leaves_no_coin_locked() -> anyhow::Result<()> {
    let (scenario, _run) = start("pplns")?;
    scenario.mine(3)?;
    scenario.mature()?;
    let owed = scenario.owed_nonzero()?;
    assert!(!owed.is_empty());
    std::fs::write(&scenario.fault_file, "payout:funded")?;
    let _ = scenario.run_payout();
    wait_until(Duration::from_secs(30), "the fault to fire", || {
        !scenario.fault_file.exists()
    })?;
    let node = &scenario.nodes.miner;
    wait_until(
        Duration::from_secs(60),
        "the funded coins to be unlocked",
        || {
            node.call_wallet(POOL_WALLET, "listlockunspent", serde_json::json!([]))
                .is_ok_and(|locked| locked.as_array().is_some_and(Vec::is_empty))
        },
    )?;
    for miner in owed.keys() {
        assert_eq!(scenario.received(miner)?, 0, "nothing was sent");
    }
    // The payout thread unlocks the coins as it starts, which may be before the restarted
    // control plane's API listens.
    scenario.pool.wait_ready(Duration::from_secs(60))?;
    assert_eq!(scenario.owed_nonzero()?, owed);
    let mut ran = None;
    wait_until(Duration::from_secs(30), "a payout run", || {
        ran = scenario
            .run_payout()
            .ok()
            .filter(|(status, _)| *status == 200);
        ran.is_some()
    })?;
    let (_, body) = ran.unwrap();
    assert!(body["batch"]["txid"].is_string(), "{body}");
    scenario.wait_paid(&owed)?;
    scenario.check_conservation()?;
    Ok(())
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
    scenario.mine_until_each_earned(0, 8)?;
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

/// Issue 15, point 5: a sent payout is followed on the node until it is final. The
/// operator bumps its fee (`bumpfee`: a replacement with another txid that pays every
/// output); once the replacement is under `payout_confirmations` blocks the payout is
/// `confirmed`, paid by the replacement, and every miner received its amount once.
#[test]
fn a_payout_is_followed_until_final_and_a_fee_bump_pays_once() -> anyhow::Result<()> {
    let (scenario, _run) = start_with("pplns", &["--payout-confirmations", "3"])?;
    let (owed, txid) = scenario.pay_once()?;
    let bumped =
        scenario
            .nodes
            .miner
            .call_wallet("otedama", "bumpfee", serde_json::json!([txid]))?;
    let replacement = bumped["txid"].as_str().unwrap().to_string();
    assert_ne!(replacement, txid);
    let mempool = scenario
        .nodes
        .miner
        .call("getrawmempool", serde_json::json!([]))?;
    assert_eq!(
        mempool,
        serde_json::json!([replacement]),
        "the bump replaced the payout"
    );
    let state = || scenario.latest_payment();
    assert_eq!(state()?["state"], "sent");
    let funding = &scenario.nodes.funding_address;
    scenario.nodes.miner.generate_to(funding, 2)?;
    // Under two blocks of three: not final yet.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(state()?["state"], "sent", "{}", state()?);
    scenario.nodes.miner.generate_to(funding, 1)?;
    wait_until(Duration::from_secs(60), "the payout to be final", || {
        state().is_ok_and(|payment| payment["state"] == "confirmed")
    })?;
    let payment = state()?;
    assert_eq!(payment["txid"], txid.as_str(), "{payment}");
    assert_eq!(payment["paid_by_txid"], replacement.as_str(), "{payment}");
    for (miner, amount) in &owed {
        assert_eq!(scenario.received(miner)?, *amount, "{miner} paid once");
    }
    scenario.check_conservation()?;
    Ok(())
}

/// Issue 15, point 5: a sent payout the node forgets (restarted without its mempool, its
/// wallet told not to send anything again itself) is sent again by the pool from its own
/// record, then followed to its confirmations: every miner is paid exactly once.
#[test]
fn a_dropped_payout_is_sent_again_and_pays_once() -> anyhow::Result<()> {
    let (mut scenario, _run) = start_with("pplns", &["--payout-confirmations", "2"])?;
    let (owed, txid) = scenario.pay_once()?;

    scenario.nodes.miner.restart_with(&[
        "-persistmempool=0",
        "-walletbroadcast=0",
        // Not even from the peer, which has the payout in its mempool.
        "-connect=0",
    ])?;
    let node = &scenario.nodes.miner;
    let mempool_size = || -> anyhow::Result<u64> {
        Ok(node.call("getmempoolinfo", serde_json::json!([]))?["size"]
            .as_u64()
            .unwrap())
    };
    // The pool cannot look it up before the wallet is back: dropped, for sure, here.
    assert_eq!(mempool_size()?, 0);
    for wallet in [POOL_WALLET, MINERS_WALLET, FUNDING_WALLET] {
        node.call("loadwallet", serde_json::json!([wallet]))?;
    }
    wait_until(
        Duration::from_secs(60),
        "the pool to send the payout again",
        || {
            node.call("getmempoolentry", serde_json::json!([txid]))
                .is_ok()
        },
    )?;
    node.generate_to(&scenario.nodes.funding_address, 2)?;
    let state = || scenario.latest_payment();
    wait_until(Duration::from_secs(60), "the payout to be final", || {
        state().is_ok_and(|payment| payment["state"] == "confirmed")
    })?;
    let payment = state()?;
    assert_eq!(payment["txid"], txid.as_str(), "{payment}");
    assert!(payment["paid_by_txid"].is_null(), "{payment}");
    for (miner, amount) in &owed {
        assert_eq!(scenario.received(miner)?, *amount, "{miner} paid once");
    }
    scenario.check_conservation()?;
    Ok(())
}

/// Issue 15, point 5: a sent payout whose inputs another transaction spends is noticed.
/// The operator's wallet replaces it (BIP125: the payout signals replacement) with a
/// transaction that spends the same coins back to the wallet and pays none of the miners;
/// once that conflict is under `payout_confirmations` blocks the payout is `failed`, its
/// amounts are owed again exactly once, and the next run pays every miner exactly once.
#[test]
fn a_double_spent_payout_fails_and_is_paid_again_once() -> anyhow::Result<()> {
    let (scenario, _run) = start_with("pplns", &["--payout-confirmations", "2"])?;
    let (owed, txid) = scenario.pay_once()?;

    // The conflict: the payout's own inputs, to a new address of the pool's wallet, at a
    // higher fee.
    let node = &scenario.nodes.miner;
    let wallet =
        |method: &str, params: serde_json::Value| node.call_wallet(POOL_WALLET, method, params);
    let payout = wallet("gettransaction", serde_json::json!([txid]))?;
    let decoded = wallet(
        "decoderawtransaction",
        serde_json::json!([payout["hex"].as_str().unwrap()]),
    )?;
    let inputs: Vec<serde_json::Value> = decoded["vin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| serde_json::json!({"txid": input["txid"], "vout": input["vout"]}))
        .collect();
    let outputs_total: u64 = decoded["vout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|output| units(&output["value"]))
        .sum::<anyhow::Result<u64>>()?;
    let inputs_total = outputs_total + units(&payout["fee"])?;
    let back = wallet("getnewaddress", serde_json::json!([]))?;
    let conflict_fee = 1_000_000;
    let raw = wallet(
        "createrawtransaction",
        serde_json::json!([inputs, {back.as_str().unwrap(): format!("{:.8}", (inputs_total - conflict_fee) as f64 / 1e8)}]),
    )?;
    let signed = wallet("signrawtransactionwithwallet", serde_json::json!([raw]))?;
    assert_eq!(signed["complete"], true, "{signed}");
    let conflict = node.call("sendrawtransaction", serde_json::json!([signed["hex"]]))?;
    assert_ne!(conflict.as_str(), Some(txid.as_str()));
    let state = || scenario.latest_payment();
    // Replaced but not buried: the payout may still come back, so it stands.
    node.generate_to(&scenario.nodes.funding_address, 1)?;
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(state()?["state"], "sent", "{}", state()?);
    node.generate_to(&scenario.nodes.funding_address, 1)?;
    wait_until(Duration::from_secs(60), "the payout to be failed", || {
        state().is_ok_and(|payment| payment["state"] == "failed")
    })?;
    assert_eq!(scenario.owed_nonzero()?, owed, "owed again, once");
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(scenario.owed_nonzero()?, owed, "and only once");
    for miner in owed.keys() {
        assert_eq!(
            scenario.received(miner)?,
            0,
            "{miner} got nothing from the conflict"
        );
    }

    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    scenario.wait_paid(&owed)?;
    scenario.check_conservation()?;
    Ok(())
}

/// Issue 15, point 5: a pending payout whose inputs were spent elsewhere can never be
/// sent, and used to block every later run. The node refuses its broadcast (a fault proxy
/// answers `sendrawtransaction` with 503) while the wallet spends every coin elsewhere;
/// cancelling is refused while the transaction could still be mined, then accepted, the
/// amounts come back once, and the next run pays every miner exactly once.
#[test]
fn a_payout_that_can_never_be_sent_is_cancelled_and_paid_again_once() -> anyhow::Result<()> {
    use otedama_tests::fault_proxy::FaultMix;
    let (scenario, _run) = start_behind_proxy(
        "pplns",
        &["sendrawtransaction"],
        FaultMix {
            delay_percent: 0,
            drop_percent: 0,
            cut_percent: 0,
            unavailable_percent: 100,
            delay: Duration::ZERO,
        },
    )?;
    scenario.mine(3)?;
    scenario.mature()?;
    let owed = scenario.owed_nonzero()?;
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["still_open"], serde_json::json!([1]), "{body}");
    let cancel = || {
        scenario.pool.json_call(
            "POST",
            "/api/v1/admin/payouts/1/cancel",
            Some(ADMIN_TOKEN),
            None,
        )
    };
    let (status, answer) = cancel()?;
    assert_eq!(status, 409, "still minable: {answer}");

    // The operator's wallet spends every coin, the payout's locked ones included.
    let node = &scenario.nodes.miner;
    node.call_wallet("otedama", "lockunspent", serde_json::json!([true]))?;
    let balance = node.call_wallet("otedama", "getbalance", serde_json::json!([]))?;
    let sink = node.call_wallet("otedama", "getnewaddress", serde_json::json!([]))?;
    node.call_wallet(
        "otedama",
        "sendtoaddress",
        serde_json::json!([sink, balance, "", "", true]),
    )?;
    node.generate_to(&scenario.nodes.funding_address, 1)?;
    scenario.proxy.as_ref().unwrap().heal();

    let (status, answer) = cancel()?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "cancelled", "{answer}");
    // The public sees a fixed reason; the node's words stay with the operator.
    let public = scenario.latest_payment()?;
    assert_eq!(
        public["last_error"], "cancelled by the operator",
        "{public}"
    );
    let full = otedama_tests::admin_get(&scenario.pool, "/api/v1/admin/payments", ADMIN_TOKEN)?;
    assert!(
        full[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("missing-inputs")),
        "{full}"
    );
    let (status, _) = cancel()?;
    assert_eq!(status, 409, "once");
    assert_eq!(scenario.owed_nonzero()?, owed);
    scenario.check_conservation()?;

    // The next run pays every miner what it was owed, once.
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"]["batch_id"], 2, "{body}");
    scenario.wait_paid(&owed)?;
    let payments = scenario.pool.get_json("/api/v1/payments")?;
    let states: Vec<&str> = payments
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["sent", "cancelled"], "{payments}");
    Ok(())
}

/// Issue 16: the API never waits for the payout thread. The node's `sendrawtransaction`
/// is held for 15 s by a fault proxy while a payout runs (the payout thread holds the
/// ledger's lock across that call); meanwhile the public routes that read the ledger
/// answer well within their deadline.
#[test]
fn the_api_answers_while_a_payout_waits_on_the_wallet() -> anyhow::Result<()> {
    const HELD: Duration = Duration::from_secs(15);
    const DEADLINE: Duration = Duration::from_secs(2);
    let (scenario, _run) = start_behind_proxy(
        "pplns",
        &["sendrawtransaction"],
        otedama_tests::fault_proxy::FaultMix {
            delay_percent: 100,
            drop_percent: 0,
            cut_percent: 0,
            unavailable_percent: 0,
            delay: HELD,
        },
    )?;
    scenario.mine(3)?;
    scenario.mature()?;
    let miner = scenario.miners[0].clone();
    let payout_started = std::time::Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let payout = scope.spawn(|| scenario.run_payout());
        // Probe only once the proxy holds the call (the payout thread waits on the node).
        let proxy = scenario.proxy.as_ref().expect("the fault proxy");
        wait_until(HELD, "the payout to reach sendrawtransaction", || {
            proxy.count(
                "sendrawtransaction",
                otedama_tests::fault_proxy::Fault::Delay,
            ) > 0
        })?;
        // PAYOUT_REQUESTS_QUEUED_MAX at its edge: with the payout thread held, that many
        // more runs wait in its queue, and every request past them hears 503 at once. Sent
        // first, well inside the hold, so none can be taken from the queue meanwhile.
        let extra = 2;
        let asks: Vec<_> = (0..PAYOUT_REQUESTS_QUEUED_MAX + extra)
            .map(|_| {
                let pool = &scenario.pool;
                scope.spawn(move || {
                    let asked = std::time::Instant::now();
                    pool.post_admin("/api/v1/admin/payouts/run", ADMIN_TOKEN)
                        .map(|(status, body)| (status, body, asked.elapsed()))
                })
            })
            .collect();
        // Reads, and writes through the ledger's lock (the operator's and KYC's): the
        // payout thread holds no lock across the wallet call, so none waits for it.
        let reads = [
            "/api/v1/stats".to_string(),
            "/api/v1/payments".to_string(),
            format!("/api/v1/miners/{miner}"),
            "/metrics".to_string(),
            "/health".to_string(),
        ]
        .map(|path| ("GET", path, None));
        let writes = [
            (
                "PUT",
                format!("/api/v1/admin/miners/{miner}/settings"),
                Some(serde_json::json!({"payout_min": "100"})),
            ),
            (
                "PUT",
                format!("/api/v1/admin/kyc/{miner}"),
                Some(serde_json::json!({"state": "verified"})),
            ),
        ];
        for (method, path, body) in reads.into_iter().chain(writes) {
            let asked = std::time::Instant::now();
            let (status, answer) =
                scenario
                    .pool
                    .json_call(method, &path, Some(ADMIN_TOKEN), body.as_ref())?;
            let took = asked.elapsed();
            assert!(
                took < DEADLINE,
                "{method} {path} took {took:?} while the payout waited"
            );
            assert_eq!(status, 200, "{method} {path}: {answer}");
        }
        let checks_done_at = payout_started.elapsed();
        let mut refused = 0;
        let mut queued = Vec::new();
        for ask in asks {
            let (status, body, took) = ask.join().expect("a payout request")?;
            if status == 503 {
                assert!(took < DEADLINE, "a refusal took {took:?}");
                assert!(
                    body.to_string().contains("PAYOUT_REQUESTS_QUEUED_MAX"),
                    "{body}"
                );
                refused += 1;
            } else {
                queued.push((status, body));
            }
        }
        assert_eq!(refused, extra, "{queued:?}");
        assert!(
            payout_started.elapsed() >= HELD,
            "the queued runs answered before the held call ended"
        );
        for (status, body) in queued {
            assert_eq!(status, 200, "a queued run: {body}");
        }
        assert!(
            checks_done_at < HELD,
            "the checks ran after the held call ended"
        );
        let (status, body) = payout.join().expect("the payout thread")?;
        assert_eq!(status, 200, "{body}");
        Ok(())
    })?;
    assert!(payout_started.elapsed() >= HELD, "the call was not held");
    Ok(())
}
