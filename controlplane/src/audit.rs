//! The audit trail: an append-only, hash-chained log of admin actions and payout batches
//! in RocksDB. Each entry carries the SHA-256 of the one before it, so an entry edited or
//! removed on disk breaks the chain at that point and `verify` names it.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash the first entry links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
}

/// Where the chain first fails to hold.
#[derive(Debug, PartialEq, Eq)]
pub struct BrokenLink {
    pub sequence: u64,
    pub why: String,
}

pub struct AuditLog {
    db: DB,
    /// (next sequence, hash of the last entry): appends are serialized through it.
    head: Mutex<(u64, String)>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        let head = match db.iterator(IteratorMode::End).next().transpose()? {
            Some((_, value)) => {
                let last: AuditEntry = serde_json::from_slice(&value)?;
                (last.sequence + 1, last.hash)
            }
            None => (0, GENESIS_HASH.to_string()),
        };
        Ok(AuditLog {
            db,
            head: Mutex::new(head),
        })
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
            at_ms,
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
        *head = (entry.sequence + 1, entry.hash.clone());
        Ok(entry)
    }

    /// The newest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let mut entries = Vec::new();
        for item in self.db.iterator(IteratorMode::End).take(limit) {
            let (_, value) = item?;
            entries.push(serde_json::from_slice(&value)?);
        }
        Ok(entries)
    }

    /// Walks the chain from the start; `Err` names the first entry that does not hold.
    pub fn verify(&self) -> Result<Result<u64, BrokenLink>, AuditError> {
        let mut previous = GENESIS_HASH.to_string();
        let mut expected_sequence = 0;
        for item in self.db.iterator(IteratorMode::Start) {
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
        Ok(Ok(expected_sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
