//! Backup and restore on litecoind regtest: `otedama backup` copies the data directory of a
//! pool whose miners are submitting shares, `otedama backup verify` checks it, and
//! `otedama restore` puts it into an empty directory a new pool runs on. A payout the
//! original pool sent after the backup is not in the restored ledger, so the restored
//! pool must not pay again: it holds payouts while the node's wallet shows that payment,
//! and the node's received amounts stay as they were. Restored from a backup taken after
//! that payout, the hold lifts by itself at the first payout run, and is audited.
//! Meanwhile the original pool takes scheduled backups every 10 s and keeps the newest 2,
//! each of which verifies.

#[path = "common/payout_scenario.rs"]
mod payout_scenario;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use otedama_controlplane::backup::RESTORE_HOLD_FILE;
use otedama_tests::{otedama_binary, wait_until, PoolSetup};
use payout_scenario::{start_with, ADMIN_TOKEN, START_DIFFICULTY};

fn otedama(args: &[&str], paths: &[&Path]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(otedama_binary())
        .args(args)
        .args(paths)
        .env("RUST_LOG", "warn")
        .output()?)
}

fn succeeds(output: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<String> {
    let output = std::process::Command::new(otedama_binary())
        .arg("backup")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--to")
        .arg(to)
        .env("RUST_LOG", "warn")
        .output()?;
    Ok(succeeds(output, "otedama backup"))
}

fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(otedama_binary())
        .arg("restore")
        .arg("--from")
        .arg(from)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()?)
}

fn metric(pool: &PoolSetup, name: &str) -> Option<u64> {
    let text = pool.get_text("/metrics").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn a_restored_pool_never_pays_what_was_paid_after_its_backup() -> anyhow::Result<()> {
    let scheduled = tempfile::tempdir()?;
    let scheduled_dir = scheduled.path().display().to_string();
    let (scenario, mut run) = start_with(
        "pplns",
        &[
            "--backup-dir",
            &scheduled_dir,
            "--backup-interval-s",
            "10",
            "--backups-kept",
            "2",
        ],
    )?;
    scenario.mine(3)?;
    scenario.mature()?;

    // Backup 1, taken while every miner submits shares.
    let mut miners = scenario.spawn_miners()?;
    let accepted = || {
        scenario
            .pool
            .stats()
            .ok()
            .and_then(|s| s["shares_accepted"].as_u64())
    };
    let before = accepted().unwrap_or(0);
    wait_until(Duration::from_secs(60), "shares to flow", || {
        accepted().is_some_and(|now| now >= before + 20)
    })?;
    let backup_1 = scenario.root.path().join("backup-1");
    let summary = backup(&scenario.pool.data_dir, &backup_1)?;
    assert!(
        summary.contains("ledger") && summary.contains("shares"),
        "{summary}"
    );
    let during = accepted().unwrap_or(0);
    wait_until(Duration::from_secs(30), "shares to go on flowing", || {
        accepted().is_some_and(|now| now > during)
    })?;
    for miner in &mut miners {
        miner.terminate();
    }
    let verified = succeeds(otedama(&["backup", "verify"], &[&backup_1])?, "verify");
    assert!(verified.contains("verified"), "{verified}");

    // A payout after backup 1.
    let owed = scenario.owed_nonzero()?;
    assert!(!owed.is_empty(), "someone must be owed something");
    let (status, body) = scenario.run_payout()?;
    assert_eq!(status, 200, "{body}");
    let txid = body["batch"]["txid"].as_str().unwrap().to_string();
    scenario.wait_paid(&owed)?;
    let received = |addresses: &[String]| -> anyhow::Result<BTreeMap<String, u64>> {
        addresses
            .iter()
            .map(|a| Ok((a.clone(), scenario.received(a)?)))
            .collect()
    };
    let received_after_payout = received(&scenario.miners)?;

    // Backup 2, after the payout; then the pool stops for good, once it has taken three
    // scheduled backups.
    let backup_2 = scenario.root.path().join("backup-2");
    backup(&scenario.pool.data_dir, &backup_2)?;
    wait_until(Duration::from_secs(90), "three scheduled backups", || {
        metric(&scenario.pool, "otedama_backups_taken_total") >= Some(3)
    })?;
    assert_eq!(
        metric(&scenario.pool, "otedama_backup_failures_total"),
        Some(0)
    );
    assert!(
        metric(
            &scenario.pool,
            "otedama_backup_last_success_timestamp_seconds"
        ) > Some(0)
    );
    run.terminate();
    // Complete ones: the pool may have stopped in the middle of one more.
    let mut kept: Vec<_> = std::fs::read_dir(scheduled.path())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|dir| {
            dir.join(otedama_controlplane::backup::MANIFEST_FILE)
                .exists()
        })
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    for dir in &kept {
        succeeds(
            otedama(&["backup", "verify"], &[dir])?,
            "verify a scheduled backup",
        );
    }

    // A restore refuses a data directory that holds anything, the live one included.
    let refused = restore(&backup_1, &scenario.pool.data_dir)?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Restored from backup 1: the payout after it is not in that ledger.
    let restored_1 = scenario.root.path().join("restored-1");
    succeeds(restore(&backup_1, &restored_1)?, "restore of backup 1");
    assert!(restored_1.join(RESTORE_HOLD_FILE).exists());
    let mut pool_1 = PoolSetup::new(&scenario.nodes, &restored_1, START_DIFFICULTY);
    pool_1.extra_args = scenario.pool.extra_args.clone();
    let mut run_1 = pool_1.spawn("run")?;
    pool_1.wait_ready(Duration::from_secs(60))?;
    let (status, body) = pool_1.post_admin("/api/v1/admin/payouts/run", ADMIN_TOKEN)?;
    assert_ne!(status, 200, "{body}");
    let why = body.to_string();
    assert!(
        why.contains("held after a restore") && why.contains(&txid),
        "{why}"
    );
    assert!(metric(&pool_1, "otedama_payouts_held_after_restore") >= Some(1));
    assert!(restored_1.join(RESTORE_HOLD_FILE).exists());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(received(&scenario.miners)?, received_after_payout);
    run_1.terminate();

    // Restored from backup 2: the wallet's payments are all in its ledger, so the first
    // payout run lifts the hold (nothing is owed, so nothing is paid).
    let restored_2 = scenario.root.path().join("restored-2");
    succeeds(restore(&backup_2, &restored_2)?, "restore of backup 2");
    let mut pool_2 = PoolSetup::new(&scenario.nodes, &restored_2, START_DIFFICULTY);
    pool_2.extra_args = scenario.pool.extra_args.clone();
    let mut run_2 = pool_2.spawn("run")?;
    pool_2.wait_ready(Duration::from_secs(60))?;
    let (status, body) = pool_2.post_admin("/api/v1/admin/payouts/run", ADMIN_TOKEN)?;
    assert_eq!(status, 200, "{body}");
    assert!(!restored_2.join(RESTORE_HOLD_FILE).exists());
    assert_eq!(
        metric(&pool_2, "otedama_payouts_held_after_restore"),
        Some(0)
    );
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, audit) = pool_2.http(
        "GET",
        "/api/v1/admin/audit",
        &[("Authorization", &bearer)],
        None,
    )?;
    assert_eq!(status, 200, "{audit}");
    assert!(audit.contains("payouts_resumed_after_restore"), "{audit}");
    assert_eq!(received(&scenario.miners)?, received_after_payout);
    run_2.terminate();
    succeeds(
        otedama(&["audit", "verify", "--data-dir"], &[&restored_2])?,
        "audit verify",
    );
    Ok(())
}
