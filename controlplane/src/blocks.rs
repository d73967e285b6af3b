//! The record of every block the pool submitted and what the node said, in RocksDB, keyed
//! by block hash so a block is recorded once however often it is seen.

use std::path::Path;

use rocksdb::{Options, DB};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
