//! The record of every block the pool submitted and what the node said, in RocksDB, keyed
//! by block hash so a block is recorded once however often it is seen.

use std::path::Path;

use rocksdb::{Options, DB};
use serde::{Deserialize, Serialize};

use crate::payouts::lifecycle::BlockStatus;

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
}

pub struct BlockStore {
    db: DB,
}

impl BlockStore {
    pub fn open(path: &Path) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        Ok(BlockStore {
            db: DB::open(&options, path)?,
        })
    }

    /// Records the outcome; returns false if this hash was already recorded.
    pub fn record(&self, record: &BlockRecord) -> Result<bool, rocksdb::Error> {
        if self.db.get(record.hash.as_bytes())?.is_some() {
            return Ok(false);
        }
        let value = serde_json::to_vec(record).expect("block records serialize");
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.put_opt(record.hash.as_bytes(), value, &options)?;
        Ok(true)
    }

    /// Stores a block's latest status and confirmations (the record must exist).
    pub fn update_status(
        &self,
        hash: &str,
        status: BlockStatus,
        confirmations: i64,
    ) -> Result<(), rocksdb::Error> {
        let Some(bytes) = self.db.get(hash.as_bytes())? else {
            return Ok(());
        };
        let Ok(mut record) = serde_json::from_slice::<BlockRecord>(&bytes) else {
            return Ok(());
        };
        record.status = status;
        record.confirmations = confirmations;
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.put_opt(
            hash.as_bytes(),
            serde_json::to_vec(&record).expect("block records serialize"),
            &options,
        )
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
        records.sort_by_key(|r| (r.submitted_at_ms, r.height));
        records
    }

    /// (accepted, rejected) counts.
    pub fn counts(&self) -> (u64, u64) {
        let all = self.all();
        let accepted = all.iter().filter(|r| r.rejected_reason.is_none()).count() as u64;
        (accepted, all.len() as u64 - accepted)
    }
}
