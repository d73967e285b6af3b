//! The audit trail: an append-only, hash-chained log of admin actions and payout batches
//! in RocksDB. Each entry carries the SHA-256 of the one before it, so an entry edited or
//! removed on disk breaks the chain at that point and `verify` names it.
//!
//! Retention never edits the chain: `prune_before` cuts it at a checkpoint that keeps the
//! first kept entry's sequence and the hash it links to, and verification starts there.
//! The head (sequence and hash of the newest entry) is published so it can be anchored
//! outside the host; an anchored head later proves the chain up to it was not rewritten.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash the first entry links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Entries are keyed by their 8-byte big-endian sequence; the checkpoint has this key,
/// which sorts after every entry key.
const CHECKPOINT_KEY: &[u8] = b"~checkpoint";

type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Where the kept chain starts after pruning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The first entry still kept.
    pub first_sequence: u64,
    /// The hash that entry links to (the last pruned entry's hash).
    pub previous_hash: String,
    pub pruned_at_ms: u64,
}

/// The newest entry's sequence and hash: what gets anchored outside the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    /// Entries ever appended (the next sequence).
    pub entries: u64,
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub sequence: u64,
    pub at_ms: u64,
    /// Who acted: `admin` (token holder) or `system` (the payout thread).
    pub actor: String,
    pub action: String,
    pub detail: Value,
    pub previous_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// SHA-256 over the entry's fields (all but `hash`), in a fixed JSON form.
    fn compute_hash(&self) -> String {
        let body = serde_json::json!([
            self.sequence,
            self.at_ms,
            self.actor,
            self.action,
            self.detail,
            self.previous_hash
        ]);
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit storage: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("audit entry is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("cannot prune before {0}: the chain has no such entry")]
    NoSuchEntry(u64),
}

/// Where the chain first fails to hold.
#[derive(Debug, PartialEq, Eq)]
pub struct BrokenLink {
    pub sequence: u64,
    pub why: String,
}

pub struct AuditLog {
    db: DB,
    /// (next sequence, hash of the last entry, time of the last entry): appends are
    /// serialized through it.
    head: Mutex<(u64, String, u64)>,
    /// The last verification's outcome (`record_verification`): 0 none yet, 1 intact,
    /// 2 broken.
    verified: std::sync::atomic::AtomicU8,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        let head = read_head(&db)?;
        Ok(AuditLog {
            db,
            head: Mutex::new(head),
            verified: Default::default(),
        })
    }

    /// Opens a log another process may be writing, to read or verify it.
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        Self::open_read_only_with(&Options::default(), path)
    }

    /// `open_read_only` with the caller's options (a backup's check keeps RocksDB's info
    /// log out of the backup with `set_db_log_dir`).
    pub fn open_read_only_with(options: &Options, path: &Path) -> Result<Self, AuditError> {
        let db = DB::open_for_read_only(options, path, false)?;
        let head = read_head(&db)?;
        Ok(AuditLog {
            db,
            head: Mutex::new(head),
            verified: Default::default(),
        })
    }

    /// Keeps what the last full verification (`verify`) found, for `/metrics`.
    pub fn record_verification(&self, intact: bool) {
        let state = if intact { 1 } else { 2 };
        self.verified
            .store(state, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the chain held at the last verification; `None` before the first.
    pub fn verified_intact(&self) -> Option<bool> {
        match self.verified.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    pub fn head(&self) -> ChainHead {
        let head = self.head.lock().expect("audit lock");
        ChainHead {
            entries: head.0,
            hash: head.1.clone(),
        }
    }

    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        Ok(match self.db.get(CHECKPOINT_KEY)? {
            Some(value) => Some(serde_json::from_slice(&value)?),
            None => None,
        })
    }

    /// Drops every entry before `first_kept` (which must exist), keeping a checkpoint
    /// with the hash the first kept entry links to, in one atomic write.
    pub fn prune_before(&self, first_kept: u64, now_ms: u64) -> Result<u64, AuditError> {
        let _append = self.head.lock().expect("audit lock");
        let kept: AuditEntry = match self.db.get(first_kept.to_be_bytes())? {
            Some(value) => serde_json::from_slice(&value)?,
            None => return Err(AuditError::NoSuchEntry(first_kept)),
        };
        let from = self.checkpoint()?.map_or(0, |c| c.first_sequence);
        let checkpoint = Checkpoint {
            first_sequence: first_kept,
            previous_hash: kept.previous_hash,
            pruned_at_ms: now_ms,
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range(from.to_be_bytes(), first_kept.to_be_bytes());
        batch.put(CHECKPOINT_KEY, serde_json::to_vec(&checkpoint)?);
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(first_kept.saturating_sub(from))
    }

    /// The first entry at or after `at_ms`, if any: where a retention cut may go.
    pub fn first_at_or_after(&self, at_ms: u64) -> Result<Option<u64>, AuditError> {
        for item in self.entries() {
            let (_, value) = item?;
            let entry: AuditEntry = serde_json::from_slice(&value)?;
            if entry.at_ms >= at_ms {
                return Ok(Some(entry.sequence));
            }
        }
        Ok(None)
    }

    /// Entries appended in `[from_ms, to_ms)`, oldest first, at most `limit`; entries are
    /// appended in time order, so the walk stops at the first one past the period.
    pub fn between(
        &self,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let mut found = Vec::new();
        for item in self.entries() {
            let (_, value) = item?;
            let entry: AuditEntry = serde_json::from_slice(&value)?;
            if entry.at_ms >= to_ms || found.len() == limit {
                break;
            }
            if entry.at_ms >= from_ms {
                found.push(entry);
            }
        }
        Ok(found)
    }

    /// Every entry in sequence order (not the checkpoint).
    fn entries(&self) -> impl Iterator<Item = Result<KeyValue, rocksdb::Error>> + '_ {
        self.db
            .iterator(IteratorMode::Start)
            .take_while(|item| item.as_ref().map_or(true, |(key, _)| key.len() == 8))
    }

    pub fn append(
        &self,
        at_ms: u64,
        actor: &str,
        action: &str,
        detail: Value,
    ) -> Result<AuditEntry, AuditError> {
        let mut head = self.head.lock().expect("audit lock");
        let mut entry = AuditEntry {
            sequence: head.0,
            // Invariant: entries are in time order. A writer that read the clock before
            // another took the lock, or a clock stepped back, gets the previous entry's
            // time, so the entries of any period are one run of the chain and an export
            // cut at a time loses none between its parts.
            at_ms: at_ms.max(head.2),
            actor: actor.into(),
            action: action.into(),
            detail,
            previous_hash: head.1.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.put_opt(
            entry.sequence.to_be_bytes(),
            serde_json::to_vec(&entry)?,
            &options,
        )?;
        *head = (entry.sequence + 1, entry.hash.clone(), entry.at_ms);
        Ok(entry)
    }

    /// The newest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let mut entries = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::End)
            .filter(|item| item.as_ref().map_or(true, |(key, _)| key.len() == 8))
            .take(limit)
        {
            let (_, value) = item?;
            entries.push(serde_json::from_slice(&value)?);
        }
        Ok(entries)
    }

    /// Walks the chain from the start; `Err` names the first entry that does not hold.
    /// Returns how many entries hold (from the checkpoint, if the chain was pruned).
    pub fn verify(&self) -> Result<Result<u64, BrokenLink>, AuditError> {
        let (mut expected_sequence, mut previous) = match self.checkpoint()? {
            Some(c) => (c.first_sequence, c.previous_hash),
            None => (0, GENESIS_HASH.to_string()),
        };
        let first = expected_sequence;
        for item in self.entries() {
            let (key, value) = item?;
            let at =
                <[u8; 8]>::try_from(key.as_ref()).map_or(expected_sequence, u64::from_be_bytes);
            let broken = |why: &str| {
                Ok(Err(BrokenLink {
                    sequence: at,
                    why: why.into(),
                }))
            };
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(&value) else {
                return broken("unreadable entry");
            };
            if entry.sequence != expected_sequence || at != expected_sequence {
                return broken("sequence gap");
            }
            if entry.previous_hash != previous {
                return broken("previous_hash does not match the entry before");
            }
            if entry.compute_hash() != entry.hash {
                return broken("hash does not match the entry's contents");
            }
            previous = entry.hash;
            expected_sequence += 1;
        }
        Ok(Ok(expected_sequence - first))
    }
}

/// The next sequence and the newest entry's hash (or the checkpoint's, if every entry
/// after it was pruned, or the genesis hash).
fn read_head(db: &DB) -> Result<(u64, String, u64), AuditError> {
    let newest = db
        .iterator(IteratorMode::End)
        .find(|item| item.as_ref().map_or(true, |(key, _)| key.len() == 8))
        .transpose()?;
    if let Some((_, value)) = newest {
        let last: AuditEntry = serde_json::from_slice(&value)?;
        return Ok((last.sequence + 1, last.hash, last.at_ms));
    }
    Ok(match db.get(CHECKPOINT_KEY)? {
        Some(value) => {
            let checkpoint: Checkpoint = serde_json::from_slice(&value)?;
            (checkpoint.first_sequence, checkpoint.previous_hash, 0)
        }
        None => (0, GENESIS_HASH.to_string(), 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry stamped before the one ahead of it (its writer read the clock first, or
    /// the clock stepped back) takes that entry's time, here and after a reopen.
    #[test]
    fn entries_stay_in_time_order_whatever_the_stamps() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            log.append(100, "admin", "a", serde_json::json!({}))
                .unwrap();
            let late = log.append(99, "admin", "b", serde_json::json!({})).unwrap();
            assert_eq!(late.at_ms, 100);
        }
        let log = AuditLog::open(dir.path()).unwrap();
        let after_reopen = log.append(50, "admin", "c", serde_json::json!({})).unwrap();
        assert_eq!(after_reopen.at_ms, 100);
        assert_eq!(log.between(0, 100, 10).unwrap().len(), 0);
        assert_eq!(log.between(100, 101, 10).unwrap().len(), 3);
        assert_eq!(log.verify().unwrap(), Ok(3));
    }

    #[test]
    fn an_edited_entry_breaks_the_chain_at_that_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 0..3 {
            log.append(i, "admin", "fee.set", serde_json::json!({"percent": i}))
                .unwrap();
        }
        assert_eq!(log.verify().unwrap(), Ok(3));
        drop(log);
        let log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(
            log.append(9, "system", "payout", Value::Null)
                .unwrap()
                .sequence,
            3
        );
        let mut edited = log.recent(4).unwrap().pop().unwrap();
        assert_eq!(edited.sequence, 0);
        edited.detail = serde_json::json!({"percent": 50});
        log.db
            .put(0u64.to_be_bytes(), serde_json::to_vec(&edited).unwrap())
            .unwrap();
        let broken = log.verify().unwrap().unwrap_err();
        assert_eq!(broken.sequence, 0);
    }

    #[test]
    fn a_period_export_holds_its_entries_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 0..10 {
            log.append(i * 1000, "admin", "fee.set", serde_json::json!({"n": i}))
                .unwrap();
        }
        let sequences = |from_ms, to_ms, limit| -> Vec<u64> {
            log.between(from_ms, to_ms, limit)
                .unwrap()
                .iter()
                .map(|e| e.sequence)
                .collect()
        };
        assert_eq!(
            sequences(2_000, 5_000, 100),
            [2, 3, 4],
            "from inclusive, to exclusive"
        );
        assert_eq!(
            sequences(2_000, 5_000, 3),
            [2, 3, 4],
            "the limit at its edge"
        );
        assert_eq!(sequences(2_000, 5_000, 2), [2, 3]);
        assert!(sequences(10_000, u64::MAX, 100).is_empty());
    }

    #[test]
    fn pruning_cuts_at_a_checkpoint_and_the_rest_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 0..10 {
            log.append(i * 1000, "admin", "fee.set", serde_json::json!({"n": i}))
                .unwrap();
        }
        let head = log.head();
        assert_eq!(log.first_at_or_after(4_500).unwrap(), Some(5));
        assert_eq!(log.prune_before(5, 99).unwrap(), 5);
        assert_eq!(log.verify().unwrap(), Ok(5));
        assert_eq!(log.recent(100).unwrap().len(), 5);
        assert_eq!(log.head(), head, "pruning never moves the head");
        drop(log);
        // Reopened: appends carry on from the head; a second cut starts at the first.
        let log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), head);
        assert_eq!(
            log.append(1, "system", "x", Value::Null).unwrap().sequence,
            10
        );
        assert_eq!(log.prune_before(8, 100).unwrap(), 3);
        assert_eq!(log.verify().unwrap(), Ok(3));
        assert!(matches!(
            log.prune_before(2, 0),
            Err(AuditError::NoSuchEntry(2))
        ));
        // Editing the checkpoint's hash breaks the first kept entry.
        let mut checkpoint = log.checkpoint().unwrap().unwrap();
        checkpoint.previous_hash = GENESIS_HASH.into();
        log.db
            .put(CHECKPOINT_KEY, serde_json::to_vec(&checkpoint).unwrap())
            .unwrap();
        assert_eq!(log.verify().unwrap().unwrap_err().sequence, 8);
    }
}
