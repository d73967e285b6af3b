//! The record of every block the pool submitted and what the node said, in RocksDB, keyed
//! by block hash so a block is recorded once however often it is seen.

use std::path::Path;

use rocksdb::{Options, DB};
use serde::{Deserialize, Serialize};

use otedama_ledger::lifecycle::BlockStatus;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// Display-order block hash.
    pub hash: String,
    pub height: u64,
    pub worker: String,
    pub job_id: u64,
    pub submitted_at_ms: u64,
    /// `None` when the node accepted the block; otherwise the node's reason.
    pub rejected_reason: Option<String>,
    pub reward: u64,
    /// Pending until mature, then confirmed; orphaned if it left the best chain. Records
    /// written before this field existed read as pending and are checked again.
    #[serde(default)]
    pub status: BlockStatus,
    /// Confirmations at the last check (-1: outside the best chain).
    #[serde(default)]
    pub confirmations: i64,
    /// The network difficulty of the block's job, on the pool's share-difficulty scale:
    /// the PPLNS window is a multiple of it.
    #[serde(default)]
    pub network_difficulty: f64,
    /// The share that found the block: its 80-byte header (version, previous hash, merkle
    /// root, ntime, bits, nonce), hex.
    #[serde(default)]
    pub header: String,
    /// When the data plane accepted the share that found the block; 0 in records written
    /// before this field (their round ends at `submitted_at_ms`).
    #[serde(default)]
    pub found_at_ms: u64,
}

/// The reason given to a candidate that was never submitted because the pool's tip had
/// moved past its previous block.
pub const STALE_CANDIDATE_REASON_PREFIX: &str = "stale-prevblk";

impl BlockRecord {
    /// Where the block's round ends: when its share was accepted, not when the node took
    /// the block (which may be much later after retries or a restart).
    pub fn round_end_ms(&self) -> u64 {
        if self.found_at_ms > 0 {
            self.found_at_ms
        } else {
            self.submitted_at_ms
        }
    }

    /// A candidate that could no longer win and was not submitted: kept so the block scan
    /// knows it is settled, but not a block the pool found or the node refused.
    pub fn is_stale_candidate(&self) -> bool {
        self.rejected_reason
            .as_deref()
            .is_some_and(|reason| reason.starts_with(STALE_CANDIDATE_REASON_PREFIX))
    }
}

/// Keys other than block hashes start with `~`, which no hex hash does; their values are
/// not JSON, so `all` passes over them.
fn scan_cursor_key(process: u32) -> Vec<u8> {
    format!("~block-scan/{process}").into_bytes()
}

/// What `BlockStore::apply_replicated` did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// Written; the record it replaced, if any.
    Written(Option<BlockRecord>),
    /// Not written: the block's status here is final; the record kept.
    Kept(BlockRecord),
}

/// Sends a record to the other control planes before this one writes it (cluster mode);
/// an error keeps the record from being written.
pub type BlockReplicator = Box<dyn Fn(&BlockRecord) -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BlockStoreError {
    #[error("block store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("block record not replicated, so not written: {0}")]
    Replication(String),
}

pub struct BlockStore {
    db: DB,
    /// Cluster mode: every record and status change goes to the block stream first.
    replicator: std::sync::OnceLock<BlockReplicator>,
}

impl BlockStore {
    pub fn open(path: &Path) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        Ok(BlockStore {
            db: DB::open(&options, path)?,
            replicator: std::sync::OnceLock::new(),
        })
    }

    /// Cluster mode: from now on every record and status change is replicated before it
    /// is written (set once, before any write).
    pub fn replicate_with(&self, replicator: BlockReplicator) {
        if self.replicator.set(replicator).is_err() {
            tracing::error!("the block store's replicator was set twice; the first stays");
        }
    }

    fn replicate(&self, record: &BlockRecord) -> Result<(), BlockStoreError> {
        match self.replicator.get() {
            Some(replicate) => replicate(record).map_err(BlockStoreError::Replication),
            None => Ok(()),
        }
    }

    /// Records the outcome; returns false if this hash was already recorded. Synced to
    /// disk unless `sync` is false, which is for outcomes that may be lost in a power cut
    /// (a stale candidate: the block scan finds it again and the node is asked).
    pub fn record(&self, record: &BlockRecord, sync: bool) -> Result<bool, BlockStoreError> {
        if self.contains(&record.hash)? {
            return Ok(false);
        }
        self.replicate(record)?;
        let value = serde_json::to_vec(record).expect("block records serialize");
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(sync);
        self.db.put_opt(record.hash.as_bytes(), value, &options)?;
        Ok(true)
    }

    /// Writes a record another control plane made (read from the block stream), as it
    /// stands there: the newest state of that block, unless the block's status here is
    /// final already (confirmed or orphaned: `pending` never looks at it again, so a late
    /// record must not turn a confirmed block into an orphan, nor the reverse).
    pub fn apply_replicated(&self, record: &BlockRecord) -> Result<Applied, rocksdb::Error> {
        let before: Option<BlockRecord> = self
            .db
            .get_pinned(record.hash.as_bytes())?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some(before) = before.as_ref() {
            let final_here = before.rejected_reason.is_none() && before.status.is_final();
            if final_here && *before != *record {
                return Ok(Applied::Kept(before.clone()));
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.put_opt(
            record.hash.as_bytes(),
            serde_json::to_vec(record).expect("block records serialize"),
            &options,
        )?;
        Ok(Applied::Written(before))
    }

    /// Where the block scan of data-plane process `process`'s share log resumes.
    pub fn scan_cursor(&self, process: u32) -> Result<Option<u64>, rocksdb::Error> {
        Ok(self
            .db
            .get_pinned(scan_cursor_key(process))?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    pub fn set_scan_cursor(&self, process: u32, next_sequence: u64) -> Result<(), rocksdb::Error> {
        self.db
            .put(scan_cursor_key(process), next_sequence.to_be_bytes())
    }

    /// Whether block `hash` (display hex) has a record.
    pub fn contains(&self, hash: &str) -> Result<bool, rocksdb::Error> {
        Ok(self.db.get_pinned(hash.as_bytes())?.is_some())
    }

    /// Stores a block's latest status and confirmations (the record must exist).
    pub fn update_status(
        &self,
        hash: &str,
        status: BlockStatus,
        confirmations: i64,
    ) -> Result<(), BlockStoreError> {
        let Some(bytes) = self.db.get(hash.as_bytes())? else {
            return Ok(());
        };
        let Ok(mut record) = serde_json::from_slice::<BlockRecord>(&bytes) else {
            return Ok(());
        };
        record.status = status;
        record.confirmations = confirmations;
        self.replicate(&record)?;
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.put_opt(
            hash.as_bytes(),
            serde_json::to_vec(&record).expect("block records serialize"),
            &options,
        )?;
        Ok(())
    }

    /// Blocks the node accepted whose status can still change.
    pub fn pending(&self) -> Vec<BlockRecord> {
        self.all()
            .into_iter()
            .filter(|r| r.rejected_reason.is_none() && !r.status.is_final())
            .collect()
    }

    pub fn all(&self) -> Vec<BlockRecord> {
        let mut records: Vec<BlockRecord> = self
            .db
            .iterator(rocksdb::IteratorMode::Start)
            .filter_map(Result::ok)
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        records.sort_by_key(|r| (r.round_end_ms(), r.height));
        records
    }

    /// Every record but stale candidates: the blocks the pool submitted.
    pub fn submitted(&self) -> Vec<BlockRecord> {
        let mut all = self.all();
        all.retain(|record| !record.is_stale_candidate());
        all
    }

    /// (accepted, rejected) counts of submitted blocks.
    pub fn counts(&self) -> (u64, u64) {
        let all = self.submitted();
        let accepted = all.iter().filter(|r| r.rejected_reason.is_none()).count() as u64;
        (accepted, all.len() as u64 - accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: &str, status: BlockStatus, confirmations: i64) -> BlockRecord {
        BlockRecord {
            hash: hash.into(),
            height: 7,
            worker: "w".into(),
            job_id: 1,
            submitted_at_ms: 1,
            rejected_reason: None,
            reward: 50,
            status,
            confirmations,
            network_difficulty: 1.0,
            header: String::new(),
            found_at_ms: 1,
        }
    }

    /// A replicated record moves a pending block on, but never changes a final status: a
    /// former leader's late "orphaned" cannot undo a confirmation, nor the reverse.
    #[test]
    fn a_replicated_record_never_changes_a_final_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .apply_replicated(&record("aa", BlockStatus::Pending, 1))
                .unwrap(),
            Applied::Written(None)
        );
        let confirmed = record("aa", BlockStatus::Confirmed, 100);
        assert!(matches!(
            store.apply_replicated(&confirmed).unwrap(),
            Applied::Written(Some(_))
        ));
        // The same final record again is harmless; a different one is refused.
        assert!(matches!(
            store.apply_replicated(&confirmed).unwrap(),
            Applied::Written(Some(_))
        ));
        assert_eq!(
            store
                .apply_replicated(&record("aa", BlockStatus::Orphaned, -1))
                .unwrap(),
            Applied::Kept(confirmed.clone())
        );
        assert_eq!(store.all(), vec![confirmed]);
    }

    /// With a replicator, a record it refuses is not written.
    #[test]
    fn a_record_not_replicated_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        store.replicate_with(Box::new(|_| Err("the stream is out of reach".into())));
        let error = store
            .record(&record("bb", BlockStatus::Pending, 0), true)
            .unwrap_err();
        assert!(matches!(error, BlockStoreError::Replication(_)), "{error}");
        assert!(!store.contains("bb").unwrap());
    }
}
