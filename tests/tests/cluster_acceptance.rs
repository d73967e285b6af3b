//! Issue 20's acceptance run, every part a real process on loopback: litecoind regtest, a
//! three-server NATS JetStream cluster, two data-plane hosts (each with its own data
//! directory, ports and share log, acknowledging a share only once the replicated stream
//! holds it: `--share-ack replicated`), two control planes (one leads, one stands by),
//! and `otedama miner`s given both data-plane hosts as pool slots, in opposite orders.
//! While they mine, each part is killed with SIGKILL in turn:
//! - the NATS server leading the share stream, twice (each started again after): shares
//!   go on being acknowledged;
//! - one data-plane host, for good (its disk taken for lost): its miners move to the other;
//! - the leading control plane, in the middle of a payout (the node has taken the payment,
//!   the ledger has not recorded it): the standby leads, records that payment, and sends
//!   it neither twice nor not at all, by the node wallet's own account;
//! - the new leader in turn, while the miners mine, once the first is back as a standby:
//!   the first leads again, and shares and blocks go on.
//!
//! Every share a miner was told `true` for is credited once: the new leader's history
//! holds exactly the records of the share stream (none twice), and the stream holds at
//! least as many as the miners counted (each acknowledged share is in it, by
//! `--share-ack replicated`), through every kill. The ledger's credits are the coinbases
//! the node paid the pool, and what it has not paid out is what the pool's wallet holds.

#[path = "common/cluster_roles.rs"]
mod cluster_roles;
#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use otedama_tests::nats::{shipped_records, stream_leader, streams_not_current, NatsCluster};
use otedama_tests::{
    history_shares, ledger_total, otedama_binary, wait_until, NodeKind, PoolSetup, Process,
    RegtestPair,
};

use cluster_roles::{accepted, role_setup};
use payout_scenario::{Scenario, ADMIN_TOKEN, MINERS_WALLET, POOL_WALLET};

/// Shares each phase waits to see credited before the next kill.
const SHARES_PER_PHASE: u64 = 20;
/// Seconds between a miner's shares that vardiff aims for: on regtest about every other
/// share is a block too, and each block is a new job for every miner.
const VARDIFF_SHARE_INTERVAL_S: &str = "3";
/// How long a standby may take to lead once the leader is killed, as the issue asks: the
/// lease's 20 s term, then a read of the block and job streams to their end (measured
/// 17–21 s here; the figure is printed).
const TAKEOVER_S_MAX: u64 = 30;
/// How long the test waits for a takeover at all, so a slow one fails with its time.
const TAKEOVER_WAIT_S_MAX: u64 = 120;
/// How long a phase may take to reach its shares.
const PHASE_S_MAX: u64 = 120;

/// `otedama miner` on every URL in turn (its pool slots), as `user`, writing its output
/// (the summary with its count of shares answered `true`) to `output`, and each share
/// answered `true` to `output` with the extension `accepted` (`--accepted-log`, appended).
fn spawn_miner(urls: &[&str], user: &str, output: &Path) -> Process {
    let child = Command::new(otedama_binary())
        .arg("miner")
        .args(urls.iter().flat_map(|url| ["--url", url]))
        .args(["--user", user, "--algo", "scrypt"])
        .arg("--accepted-log")
        .arg(output.with_extension("accepted"))
        // A killed host's connections end with the process; a silent one is left soon.
        .args(["--silent-timeout-s", "10", "--failback-interval-s", "5"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(output).expect("the miner's output file"))
        .stderr(std::fs::File::create(output.with_extension("log")).expect("its log file"))
        .spawn()
        .expect("starting otedama miner");
    Process {
        child,
        name: format!("miner {user}"),
    }
}

/// Waits for a data plane's Stratum port; if it does not open (or the process ends),
/// fails with the end of the process's log.
fn wait_listening(setup: &PoolSetup, process: &mut Process) {
    let mut exited = None;
    let listening = wait_until(Duration::from_secs(90), "a data plane's listener", || {
        if let Ok(Some(status)) = process.child.try_wait() {
            exited = Some(status);
            return true;
        }
        std::net::TcpStream::connect(setup.stratum_address()).is_ok()
    });
    if listening.is_err() || exited.is_some() {
        let log = setup
            .log_file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        // Where a process that neither listens nor ends is waiting (ci50, ci68).
        let threads = if exited.is_none() {
            std::process::Command::new("gdb")
                .args(["-batch", "-ex", "thread apply all bt 12", "-p"])
                .arg(process.child.id().to_string())
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_else(|error| format!("no thread dump (gdb: {error})"))
        } else {
            String::new()
        };
        panic!(
            "the data plane on {} did not listen ({listening:?}, exit {exited:?}); its log ends:\n{}\n{threads}",
            setup.stratum_address(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Stops a miner with SIGTERM and returns its own count of shares answered `true`.
fn stop_miner(mut miner: Process, output: &Path) -> u64 {
    miner.terminate();
    let text = std::fs::read_to_string(output).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("miner done: accepted "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the miner's summary in {}: {text}", output.display()))
}

/// Whether the control plane's `/metrics` says it leads.
fn leads(pool: &PoolSetup) -> Option<bool> {
    let metrics = pool.get_text("/metrics").ok()?;
    otedama_tests::metric_value(&metrics, "otedama_cluster_leading").map(|value| value == 1.0)
}

/// Waits until the control plane on `pool` leads, and prints how long after `killed_at`
/// (the leader's kill) it did.
fn wait_to_lead(pool: &PoolSetup, killed_at: Instant, who: &str) {
    wait_until(
        Duration::from_secs(TAKEOVER_WAIT_S_MAX),
        &format!("{who} to lead"),
        || leads(pool) == Some(true),
    )
    .unwrap();
    let took = killed_at.elapsed();
    eprintln!(
        "{who} led {:.1} s after the leader was killed",
        took.as_secs_f64()
    );
    assert!(
        took <= Duration::from_secs(TAKEOVER_S_MAX),
        "{who} led {:.1} s after the leader was killed; at most {TAKEOVER_S_MAX} s",
        took.as_secs_f64()
    );
}

/// Waits until the control plane on `pool` has credited `more` shares beyond `from`.
fn wait_for_shares(pool: &PoolSetup, from: u64, more: u64, what: &str) -> u64 {
    let mut now = 0;
    wait_until(Duration::from_secs(PHASE_S_MAX), what, || {
        now = history_shares(pool.api_port).unwrap_or(0);
        now >= from + more
    })
    .unwrap_or_else(|error| panic!("{error:#}: {now} shares, from {from}"));
    now
}

/// The shares in the share stream that earn credit: every record but an uncredited
/// block's (difficulty 0: a block from a share below its target, refused to its miner,
/// which the history does not count as a share).
fn shipped_shares(urls: &[String]) -> u64 {
    shipped_records(urls, None)
        .iter()
        .filter(|(_, _, record)| record.difficulty > 0.0)
        .count() as u64
}

/// The stream's shares that earn credit, by worker (`ADDRESS.NAME`).
fn shipped_per_worker(urls: &[String]) -> BTreeMap<String, u64> {
    let mut workers = BTreeMap::new();
    for (_, _, record) in shipped_records(urls, None) {
        if record.difficulty > 0.0 {
            *workers.entry(record.worker.clone()).or_default() += 1;
        }
    }
    workers
}

/// The shares the control plane on `pool` holds in its history over the last hour, by
/// worker (`ADDRESS.NAME`), for each of `addresses`.
fn credited_per_worker(pool: &PoolSetup, addresses: &[String]) -> BTreeMap<String, u64> {
    let mut workers = BTreeMap::new();
    for address in addresses {
        let Ok(page) = pool.get_json(&format!("/api/v1/miners/{address}")) else {
            continue;
        };
        for (name, worker) in page["workers"].as_object().into_iter().flatten() {
            let full = if name.contains('.') {
                name.clone()
            } else {
                format!("{address}.{name}")
            };
            workers.insert(full, worker["shares_1h"].as_u64().unwrap_or(0));
        }
    }
    workers
}

/// Waits until `SHARES_PER_PHASE` shares beyond those in the stream now are in the
/// stream and credited by the control plane on `pool`.
fn wait_for_shipped_and_credited(urls: &[String], pool: &PoolSetup, what: &str) {
    let from = shipped_shares(urls);
    wait_for_shares(pool, from, SHARES_PER_PHASE, what);
}

/// Kills the server leading the share stream of the first host's log (once its two
/// followers are current) and waits until the control plane on `pool` credits
/// `SHARES_PER_PHASE` more shares without it; then starts it again.
fn kill_the_stream_leader(cluster: &mut NatsCluster, urls: &[String], pool: &PoolSetup) {
    let mut leader = String::new();
    let stream = otedama_cluster::share_stream_name("dp-1", 0);
    wait_until(
        Duration::from_secs(PHASE_S_MAX),
        "the share stream's replicas to be current",
        || match stream_leader(urls, &stream) {
            Some((name, current)) => {
                leader = name;
                current == 2
            }
            None => false,
        },
    )
    .unwrap();
    // Every other stream's too (the ledger's, the other host's shares, the buckets): a
    // server killed while the one started again before has not caught up on some stream
    // leaves that stream without a quorum, which is two servers lost, not one.
    let mut lagging = None;
    wait_until(
        Duration::from_secs(PHASE_S_MAX),
        "every stream's replicas to be current",
        || {
            lagging = streams_not_current(urls);
            lagging.as_ref().is_some_and(Vec::is_empty)
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}: {lagging:?}"));
    let server = cluster
        .servers
        .iter_mut()
        .find(|server| server.name == leader)
        .expect("the leader is one of ours");
    server.kill_9();
    let from = history_shares(pool.api_port).unwrap_or(0);
    wait_for_shares(
        pool,
        from,
        SHARES_PER_PHASE,
        &format!("shares credited with {leader} killed"),
    );
    server.restart().unwrap();
    eprintln!("{leader} (the share stream's leader) killed and started again");
}

#[test]
fn the_cluster_loses_and_doubles_nothing_through_each_kill() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_path_buf();
    let nodes = RegtestPair::start_kind(&root_path, 101, NodeKind::Litecoin).unwrap();
    // Past MWEB activation first: the run mines a few hundred blocks, and a chain before
    // it stops at height 431.
    nodes.activate_mweb().unwrap();
    nodes
        .miner
        .call("createwallet", json!([MINERS_WALLET]))
        .unwrap();
    let miners: Vec<String> = (0..2)
        .map(|_| {
            nodes
                .miner
                .call_wallet(MINERS_WALLET, "getnewaddress", json!(["", "bech32"]))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    std::fs::write(root_path.join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let fault_file = root_path.join("fault-cp-a");

    let mut a = role_setup(&nodes, &root_path, "cp-a", &urls);
    a.env = vec![(
        "OTEDAMA_FAULT_FILE".into(),
        fault_file.display().to_string(),
    )];
    let mut leader = a.spawn("controlplane").unwrap();
    wait_until(
        Duration::from_secs(90),
        "the first control plane to lead",
        || leads(&a) == Some(true),
    )
    .unwrap();
    let dataplanes: Vec<PoolSetup> = ["dp-1", "dp-2"]
        .iter()
        .map(|name| {
            let mut setup = role_setup(&nodes, &root_path, name, &urls);
            setup.extra_args.extend(
                [
                    "--share-ack",
                    "replicated",
                    "--vardiff-share-interval-s",
                    VARDIFF_SHARE_INTERVAL_S,
                ]
                .map(String::from),
            );
            setup
        })
        .collect();
    let mut dataplane_processes: Vec<Process> = dataplanes
        .iter()
        .map(|setup| setup.spawn("dataplane").unwrap())
        .collect();
    for (setup, process) in dataplanes.iter().zip(&mut dataplane_processes) {
        wait_listening(setup, process);
    }
    let b = role_setup(&nodes, &root_path, "cp-b", &urls);
    let mut standby = b.spawn("controlplane").unwrap();
    wait_until(Duration::from_secs(90), "the standby to stand by", || {
        leads(&b) == Some(false)
    })
    .unwrap();

    // Each miner prefers one host and has the other as its backup slot.
    let (url_1, url_2) = (dataplanes[0].stratum_url(), dataplanes[1].stratum_url());
    let slots = [
        [url_1.as_str(), url_2.as_str()],
        [url_2.as_str(), url_1.as_str()],
    ];
    let outputs: Vec<_> = (0..miners.len())
        .map(|i| root_path.join(format!("miner-{i}.out")))
        .collect();
    let running: Vec<Process> = miners
        .iter()
        .enumerate()
        .map(|(i, address)| spawn_miner(&slots[i], &format!("{address}.rig{i}"), &outputs[i]))
        .collect();

    // Everything up: shares and blocks.
    wait_for_shares(&a, 0, SHARES_PER_PHASE, "shares credited");
    wait_until(Duration::from_secs(PHASE_S_MAX), "blocks found", || {
        accepted(&a).len() >= 2
    })
    .unwrap();
    // The NATS server leading the share stream, twice over.
    kill_the_stream_leader(&mut cluster, &urls, &a);
    kill_the_stream_leader(&mut cluster, &urls, &a);
    // One data-plane host, for good: its miners move to the other.
    dataplane_processes[0].kill_9();
    let from = history_shares(a.api_port).unwrap_or(0);
    wait_for_shares(&a, from, SHARES_PER_PHASE, "shares credited with dp-1 gone");
    let mut acknowledged: u64 = running
        .into_iter()
        .zip(&outputs)
        .map(|(miner, output)| stop_miner(miner, output))
        .sum();
    eprintln!("{acknowledged} shares acknowledged before the payout");

    // The leader pays, and is killed between the node taking the payment and the ledger
    // recording it.
    let mut scenario = Scenario {
        root,
        nodes,
        pool: a,
        miners: miners.clone(),
        fault_file,
        proxy: None,
    };
    scenario.mature().unwrap();
    let owed = scenario.owed_nonzero().unwrap();
    assert!(!owed.is_empty(), "the miners are owed something");
    std::fs::write(&scenario.fault_file, "payout:broadcast").unwrap();
    let payout = scenario.run_payout();
    wait_until(
        Duration::from_secs(60),
        "the leader to be killed mid-payout",
        || matches!(leader.child.try_wait(), Ok(Some(_))),
    )
    .unwrap_or_else(|error| {
        let log = std::fs::read_to_string(root_path.join("cp-a.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{error:#}: the payout answered {payout:?}; the leader's log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    let killed_at = Instant::now();
    leader.kill_9();
    assert!(!scenario.fault_file.exists(), "the fault fired");
    // The standby leads, finds the payment the node took and records it, once.
    let former = std::mem::replace(&mut scenario.pool, b);
    wait_to_lead(&scenario.pool, killed_at, "the standby");
    scenario.wait_paid(&owed).unwrap();
    let sends: Vec<String> = scenario
        .nodes
        .miner
        .call_wallet(
            POOL_WALLET,
            "listtransactions",
            json!(["*", 100_000, 0, true]),
        )
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["category"] == "send")
        .map(|entry| entry["txid"].as_str().unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(sends.len(), 1, "one payment transaction: {sends:?}");
    for (miner, amount) in &owed {
        assert_eq!(
            scenario.received(miner).unwrap(),
            *amount,
            "{miner} paid once"
        );
    }

    // The new leader serves: the miners mine on the host left, and it finds blocks. Then
    // the former leader, started again on its data directory, stands by, and the new
    // leader is killed in turn (plainly, mid-mining): the former leads again and serves.
    let found_before = accepted(&scenario.pool).len();
    let running: Vec<Process> = miners
        .iter()
        .enumerate()
        .map(|(i, address)| {
            spawn_miner(&[url_2.as_str()], &format!("{address}.rig{i}"), &outputs[i])
        })
        .collect();
    wait_for_shipped_and_credited(&urls, &scenario.pool, "shares credited by the new leader");
    wait_until(
        Duration::from_secs(PHASE_S_MAX),
        "a block found under the new leader",
        || accepted(&scenario.pool).len() > found_before,
    )
    .unwrap();
    leader = former.spawn("controlplane").unwrap();
    wait_until(
        Duration::from_secs(90),
        "the former leader to stand by",
        || leads(&former) == Some(false),
    )
    .unwrap();
    standby.kill_9();
    let killed_at = Instant::now();
    let second = std::mem::replace(&mut scenario.pool, former);
    wait_to_lead(&scenario.pool, killed_at, "the former leader, again,");
    wait_for_shipped_and_credited(
        &urls,
        &scenario.pool,
        "shares credited after the second kill",
    );
    acknowledged += running
        .into_iter()
        .zip(&outputs)
        .map(|(miner, output)| stop_miner(miner, output))
        .sum::<u64>();

    // Every acknowledged share is in the stream, by the miners' own list of `true`s, and
    // no share is in it twice.
    let shipped: std::collections::HashSet<String> = shipped_records(&urls, None)
        .iter()
        .map(|(_, _, record)| {
            let word =
                |at: usize| u32::from_le_bytes(record.header[at..at + 4].try_into().unwrap());
            format!(
                "{} {} {:08x} {:08x}",
                hex::encode(&record.extranonce1),
                hex::encode(&record.extranonce2),
                word(68),
                word(76)
            )
        })
        .collect();
    assert_eq!(
        shipped.len(),
        shipped_records(&urls, None).len(),
        "no share twice in the stream"
    );
    let mut listed = 0u64;
    for output in &outputs {
        let accepted = std::fs::read_to_string(output.with_extension("accepted")).unwrap();
        for line in accepted.lines() {
            listed += 1;
            assert!(
                shipped.contains(line),
                "a share the miner was told true for is not in the stream: {line}"
            );
        }
    }
    assert_eq!(
        listed, acknowledged,
        "the miners list every true they counted"
    );

    // Every acknowledged share credited once: the history is the stream's shares (every
    // record but uncredited blocks'), and those are at least the miners' count of `true`s.
    let mut in_stream = 0;
    wait_until(
        Duration::from_secs(60),
        "the history to hold the stream's records",
        || {
            in_stream = shipped_shares(&urls);
            history_shares(scenario.pool.api_port) == Some(in_stream)
        },
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}: {in_stream} in the stream, {:?} credited",
            history_shares(scenario.pool.api_port)
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        history_shares(scenario.pool.api_port),
        Some(shipped_shares(&urls)),
        "each record credited once"
    );
    // Worker by worker too, so a share lost for one miner cannot hide behind one counted
    // twice for another.
    assert_eq!(
        credited_per_worker(&scenario.pool, &miners),
        shipped_per_worker(&urls),
        "each worker's shares credited once"
    );
    assert!(
        in_stream >= acknowledged,
        "{in_stream} shares in the stream, {acknowledged} acknowledged"
    );
    eprintln!(
        "{acknowledged} shares acknowledged, {in_stream} in the stream and credited once ({} uncredited blocks' records besides); the chain at height {}",
        shipped_records(&urls, None).len() as u64 - in_stream,
        scenario.nodes.miner.call("getblockcount", json!([])).unwrap()
    );

    // The ledger against the chain: credits are the coinbases, and what is not paid out
    // is what the wallet holds.
    let rewards: u64 = accepted(&scenario.pool).values().sum();
    wait_until(Duration::from_secs(60), "every block credited", || {
        ledger_total(&scenario.pool, ADMIN_TOKEN).is_ok_and(|(credited, _)| credited == rewards)
    })
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}: {rewards} in rewards, {:?} credited",
            ledger_total(&scenario.pool, ADMIN_TOKEN).map(|(credited, _)| credited)
        )
    });
    scenario.check_conservation().unwrap();
    drop((leader, second, dataplane_processes));
}
