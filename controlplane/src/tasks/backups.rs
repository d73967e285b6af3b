//! Scheduled backups: every `backup_interval_s` the control plane backs up its data
//! directory (`backup::take`) into a new `otedama-UNIXTIME` directory of `backup_dir`, then
//! deletes the oldest complete backups beyond `backups_kept` and any backup cut short.
//!
//! Only directories named as this task names them are ever deleted, and a complete backup
//! only once `backups_kept` newer complete ones exist: retention never leaves fewer good
//! backups than it keeps, even when backups keep failing (a full disk, say).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::backup::MANIFEST_FILE;
use crate::config::PoolConfig;
use crate::stats::PoolState;

/// A failed backup is tried again this soon, or at the next interval if that is sooner.
pub const BACKUP_RETRY_S: u64 = 600;
/// The first backup after a start waits at most this long (a pool restarting in a loop
/// takes one a minute, and retention bounds what they hold).
pub const BACKUP_FIRST_DELAY_S_MAX: u64 = 60;
const BACKUP_NAME_PREFIX: &str = "otedama-";

/// What `/metrics` shows of scheduled backups.
#[derive(Default)]
pub struct BackupCounters {
    /// 0 while scheduled backups are off.
    pub interval_s: AtomicU64,
    /// The newest complete scheduled backup's time (found in `backup_dir` at start), 0 if
    /// none.
    pub last_success_unix_s: AtomicU64,
    pub last_duration_ms: AtomicU64,
    pub last_bytes: AtomicU64,
    /// Since this start.
    pub taken: AtomicU64,
    pub failures: AtomicU64,
}

/// A scheduled backup's directory: its name's time, and whether it is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Taken {
    created_at_unix_s: u64,
    path: PathBuf,
    complete: bool,
}

/// The scheduled backups in `backup_dir`, oldest first; anything else there is ignored.
fn scheduled_backups(backup_dir: &Path) -> std::io::Result<Vec<Taken>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(backup_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(time) = name
            .strip_prefix(BACKUP_NAME_PREFIX)
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
        else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            continue;
        }
        found.push(Taken {
            created_at_unix_s: time,
            complete: entry.path().join(MANIFEST_FILE).is_file(),
            path: entry.path(),
        });
    }
    found.sort_by_key(|taken| taken.created_at_unix_s);
    Ok(found)
}

/// What retention deletes: every backup cut short, and the oldest complete ones beyond
/// `kept`.
fn to_delete(backups: &[Taken], kept: usize) -> Vec<PathBuf> {
    let complete = backups.iter().filter(|b| b.complete).count();
    let mut surplus = complete.saturating_sub(kept);
    backups
        .iter()
        .filter(|backup| match backup.complete {
            false => true,
            true if surplus > 0 => {
                surplus -= 1;
                true
            }
            true => false,
        })
        .map(|backup| backup.path.clone())
        .collect()
}

/// Starts the backup thread if `backup_dir` is set.
pub fn start(config: &PoolConfig, state: &Arc<PoolState>) -> anyhow::Result<()> {
    let Some(backup_dir) = config.backup_dir.clone() else {
        return Ok(());
    };
    std::fs::create_dir_all(&backup_dir)?;
    let (data_dir, interval_s, kept) = (
        config.data_dir.clone(),
        config.backup_interval_s,
        config.backups_kept as usize,
    );
    state.backups.interval_s.store(interval_s, Relaxed);
    let state = state.clone();
    std::thread::Builder::new()
        .name("backups".into())
        .spawn(move || run(&data_dir, &backup_dir, interval_s, kept, &state))?;
    Ok(())
}

fn run(data_dir: &Path, backup_dir: &Path, interval_s: u64, kept: usize, state: &PoolState) {
    let started = otedama_shared::clock::now_s();
    // The newest complete backup counts, across restarts; one dated after now (the clock
    // was ahead when it was taken) is not trusted to put the next one off.
    let last = scheduled_backups(backup_dir)
        .ok()
        .and_then(|all| all.iter().rev().find(|b| b.complete).cloned())
        .map(|b| b.created_at_unix_s)
        .filter(|last| *last <= started);
    if let Some(last) = last {
        state.backups.last_success_unix_s.store(last, Relaxed);
    }
    let first_delay_s = interval_s.min(BACKUP_FIRST_DELAY_S_MAX);
    let mut next = last
        .map_or(started, |last| last + interval_s)
        .max(started + first_delay_s);
    loop {
        let now = otedama_shared::clock::now_s();
        if now < next {
            std::thread::sleep(Duration::from_secs((next - now).min(5)));
            continue;
        }
        // Named and dated by the clock as it is: never by an earlier backup's time, which a
        // clock that ran ahead once would carry forward (and with it the restore hold's
        // window). Two in one second wait for the next.
        let created = now;
        let target = backup_dir.join(format!("{BACKUP_NAME_PREFIX}{created}"));
        if target.exists() {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let clock = std::time::Instant::now();
        match crate::backup::take(data_dir, &target, created) {
            Ok(manifest) => {
                let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
                state.backups.last_success_unix_s.store(created, Relaxed);
                state
                    .backups
                    .last_duration_ms
                    .store(clock.elapsed().as_millis() as u64, Relaxed);
                state.backups.last_bytes.store(bytes, Relaxed);
                tracing::info!(backup = %target.display(), bytes, stores = manifest.stores.len(), "scheduled backup taken");
                next = created + interval_s;
            }
            Err(error) => {
                state.backups.failures.fetch_add(1, Relaxed);
                tracing::error!(error = format!("{error:#}"), backup = %target.display(), "scheduled backup failed; its directory is removed");
                if let Err(error) = std::fs::remove_dir_all(&target) {
                    if error.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(%error, backup = %target.display(), "cannot remove the failed backup");
                    }
                }
                next = now + interval_s.min(BACKUP_RETRY_S);
            }
        }
        prune(backup_dir, kept);
        // Counted once retention has run, so a count is a state of the directory too.
        if state.backups.last_success_unix_s.load(Relaxed) == created {
            state.backups.taken.fetch_add(1, Relaxed);
        }
    }
}

/// Retention: deletes what `to_delete` names, each first renamed out of the names
/// `scheduled_backups` reads (a deletion cut short must not leave a manifest behind that
/// makes half a backup count as complete), and what such a deletion left before.
fn prune(backup_dir: &Path, kept: usize) {
    let all = match scheduled_backups(backup_dir) {
        Ok(all) => all,
        Err(error) => {
            tracing::warn!(%error, "cannot list the backup directory");
            return;
        }
    };
    for path in to_delete(&all, kept) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let doomed = backup_dir.join(format!(".{}.deleting", name.unwrap_or_default()));
        if let Err(error) = std::fs::rename(&path, &doomed) {
            tracing::warn!(%error, backup = %path.display(), "cannot delete an old backup");
            continue;
        }
        tracing::info!(backup = %path.display(), "old backup deleted");
    }
    let Ok(entries) = std::fs::read_dir(backup_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!(".{BACKUP_NAME_PREFIX}")) && name.ends_with(".deleting") {
            if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(%error, path = %entry.path().display(), "cannot delete an old backup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(root: &Path, time: u64, complete: bool) -> PathBuf {
        let path = root.join(format!("otedama-{time}"));
        std::fs::create_dir_all(&path).unwrap();
        if complete {
            std::fs::write(path.join(MANIFEST_FILE), b"{}").unwrap();
        }
        path
    }

    #[test]
    fn retention_keeps_the_newest_complete_backups_and_nothing_else_is_touched() {
        let root = tempfile::tempdir().unwrap();
        let old = backup(root.path(), 100, true);
        let cut_short = backup(root.path(), 150, false);
        let middle = backup(root.path(), 200, true);
        let newest = backup(root.path(), 300, true);
        // Not ours: another name, a file of our name's shape.
        std::fs::create_dir_all(root.path().join("otedama-keep-me")).unwrap();
        std::fs::write(root.path().join("otedama-400"), b"").unwrap();
        let all = scheduled_backups(root.path()).unwrap();
        assert_eq!(
            all.iter().map(|b| b.created_at_unix_s).collect::<Vec<_>>(),
            [100, 150, 200, 300]
        );
        assert_eq!(to_delete(&all, 2), [old.clone(), cut_short.clone()]);
        assert_eq!(to_delete(&all, 3), std::slice::from_ref(&cut_short));
        assert_eq!(to_delete(&all, 1), [old, cut_short.clone(), middle]);
        // Failing backups never thin out the good ones below `kept`.
        let failing: Vec<Taken> = (0..5)
            .map(|i| Taken {
                created_at_unix_s: 400 + i,
                path: root.path().join(format!("otedama-{}", 400 + i)),
                complete: false,
            })
            .collect();
        let with_failures = [all.clone(), failing].concat();
        let deleted = to_delete(&with_failures, 3);
        assert!(!deleted.contains(&newest));
        assert_eq!(
            with_failures
                .iter()
                .filter(|b| b.complete && !deleted.contains(&b.path))
                .count(),
            3
        );
    }

    #[test]
    fn pruning_renames_before_it_deletes_and_finishes_a_deletion_cut_short() {
        let root = tempfile::tempdir().unwrap();
        backup(root.path(), 100, true);
        backup(root.path(), 200, true);
        // A deletion killed midway: renamed, half gone.
        let leftover = root.path().join(".otedama-50.deleting");
        std::fs::create_dir_all(leftover.join("data")).unwrap();
        prune(root.path(), 1);
        let mut names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["otedama-200"]);
    }
}
