//! Point-in-time recovery on litecoind regtest. A backup is taken while three miners mine;
//! they go on to find more blocks; then the pool stops and its ledger is treated as lost.
//! The backup, restored with the live share logs (`otedama restore
//! --replay-share-logs-from`), credits every share and block written after it on its own:
//! its ledger reaches the live ledger's state hash (`otedama ledger hash`).

#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::path::Path;
use std::time::Duration;

use otedama_tests::{otedama_binary, wait_until, PoolSetup};
use payout_scenario::{start, START_DIFFICULTY};

fn otedama(args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let output = std::process::Command::new(otedama_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "otedama {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn ledger_hash(data_dir: &Path) -> anyhow::Result<String> {
    otedama(&[
        "ledger".as_ref(),
        "hash".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ])
}

/// Waits until the ledger's state hash stood still for `quiet`: every share read and
/// every round cut.
fn settled(data_dir: &Path, quiet: Duration) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last = ledger_hash(data_dir)?;
    let mut since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = ledger_hash(data_dir)?;
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= quiet {
            return Ok(last);
        }
    }
    anyhow::bail!("the ledger in {} did not settle", data_dir.display())
}

#[test]
fn a_backup_replays_the_share_logs_written_after_it_to_the_live_ledger() -> anyhow::Result<()> {
    let (scenario, mut run) = start("pplns")?;
    scenario.mine(2)?;
    let found = || {
        scenario
            .pool
            .stats()
            .ok()
            .and_then(|s| s["blocks_found"].as_u64())
    };
    let mut miners = scenario.spawn_miners()?;
    std::thread::sleep(Duration::from_secs(2));
    let backup = scenario.root.path().join("backup");
    otedama(&[
        "backup".as_ref(),
        "--data-dir".as_ref(),
        scenario.pool.data_dir.as_os_str(),
        "--to".as_ref(),
        backup.as_os_str(),
    ])?;
    let at_backup = found().unwrap_or(0);
    wait_until(
        Duration::from_secs(240),
        "three blocks after the backup",
        || found().is_some_and(|now| now >= at_backup + 3),
    )?;
    for miner in &mut miners {
        miner.terminate();
    }
    let live = settled(&scenario.pool.data_dir, Duration::from_secs(8))?;
    let live_balances = scenario.balances()?;
    run.terminate();
    assert_eq!(ledger_hash(&scenario.pool.data_dir)?, live);

    // The backup alone owes less: the blocks after it are not in its ledger.
    let backup_data = backup.join("data");
    assert_ne!(ledger_hash(&backup_data)?, live);

    let restored = scenario.root.path().join("restored");
    otedama(&[
        "restore".as_ref(),
        "--from".as_ref(),
        backup.as_os_str(),
        "--data-dir".as_ref(),
        restored.as_os_str(),
        "--replay-share-logs-from".as_ref(),
        scenario.pool.data_dir.as_os_str(),
    ])?;
    assert!(restored
        .join(otedama_controlplane::backup::REPLAY_START_FILE)
        .exists());
    let mut pool = PoolSetup::new(&scenario.nodes, &restored, START_DIFFICULTY);
    pool.extra_args = scenario.pool.extra_args.clone();
    let mut run_restored = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;
    let reached = wait_until(
        Duration::from_secs(120),
        "the restored ledger to reach the live one's state hash",
        || ledger_hash(&restored).is_ok_and(|hash| hash == live),
    );
    if reached.is_err() {
        let restored_balances: Vec<_> = scenario
            .miners
            .iter()
            .map(|m| pool.get_json(&format!("/api/v1/miners/{m}")).ok())
            .collect();
        panic!(
            "restored ledger {} != live {live}\nlive balances: {live_balances:?}\nrestored: {restored_balances:?}",
            ledger_hash(&restored)?
        );
    }
    // The replay is over once every log was read past what it added.
    wait_until(Duration::from_secs(30), "the replay to finish", || {
        !restored
            .join(otedama_controlplane::backup::REPLAY_START_FILE)
            .exists()
    })?;
    run_restored.terminate();
    Ok(())
}
