//! Every job the data planes may still be serving, on disk (RocksDB, keyed by job id), so
//! that a block found on a job built by an earlier control-plane process can still be
//! assembled, submitted and credited after a restart. A job is written, synced, before it
//! is published; the newest `JOBS_STORED_MAX` are kept.

use std::path::Path;

use rocksdb::{IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use otedama_shared::job::JobTemplate;

use super::BuiltJob;

/// Jobs kept on disk. A data plane serves at most `JOBS_REMEMBERED_MAX` (16) jobs of the
/// newest block; this also covers the jobs of the blocks before it, whose candidates the
/// block scan may still have to settle after a restart.
pub const JOBS_STORED_MAX: usize = 1024;

/// `BuiltJob` as stored: byte fields as hex.
#[derive(Serialize, Deserialize)]
struct StoredJob {
    job: JobTemplate,
    transactions: Vec<String>,
    txids: Vec<String>,
    has_witness_commitment: bool,
    mweb: Option<String>,
    coinbase_value: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    #[error("job store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("job {job_id} in the job store is unreadable: {detail}")]
    Corrupt { job_id: u64, detail: String },
}

pub struct JobStore {
    db: DB,
}

impl JobStore {
    pub fn open(path: &Path) -> Result<Self, JobStoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        Ok(JobStore {
            db: DB::open(&options, path)?,
        })
    }

    /// `job` as the store keeps it, which is also how it is sent to other control planes
    /// (cluster mode); `decode` reads it back.
    pub fn encode(job: &BuiltJob) -> Vec<u8> {
        let stored = StoredJob {
            job: job.job.clone(),
            transactions: job.transactions.iter().map(hex::encode).collect(),
            txids: job.txids.iter().map(hex::encode).collect(),
            has_witness_commitment: job.has_witness_commitment,
            mweb: job.mweb.as_ref().map(hex::encode),
            coinbase_value: job.coinbase_value,
        };
        serde_json::to_vec(&stored).expect("jobs serialize")
    }

    /// Stores `job` durably and drops the oldest past `JOBS_STORED_MAX`.
    pub fn put(&self, job: &BuiltJob) -> Result<(), JobStoreError> {
        let key = job.job.job_id.to_be_bytes();
        let mut batch = WriteBatch::default();
        batch.put(key, Self::encode(job));
        let stored_ids: Vec<Box<[u8]>> = self
            .db
            .iterator(IteratorMode::Start)
            .map(|item| item.map(|(key, _)| key))
            .collect::<Result<_, _>>()?;
        // Keys sort as the ids do (big-endian). Storing an id again replaces it and adds
        // nothing, so it must not push an older job out.
        let adds = usize::from(
            stored_ids
                .binary_search_by(|stored| stored.as_ref().cmp(&key[..]))
                .is_err(),
        );
        let excess = (stored_ids.len() + adds).saturating_sub(JOBS_STORED_MAX);
        for key in stored_ids.iter().take(excess) {
            batch.delete(key);
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    pub fn get(&self, job_id: u64) -> Result<Option<BuiltJob>, JobStoreError> {
        let Some(bytes) = self.db.get_pinned(job_id.to_be_bytes())? else {
            return Ok(None);
        };
        Self::decode(job_id, &bytes).map(Some)
    }

    /// A job from `encode`'s bytes; `job_id` names it in errors.
    pub fn decode(job_id: u64, bytes: &[u8]) -> Result<BuiltJob, JobStoreError> {
        let corrupt = |detail: String| JobStoreError::Corrupt { job_id, detail };
        let stored: StoredJob =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let bytes_of = |text: &String| hex::decode(text).map_err(|e| corrupt(e.to_string()));
        let txids = stored
            .txids
            .iter()
            .map(|text| {
                let mut txid = [0u8; 32];
                hex::decode_to_slice(text, &mut txid).map_err(|e| corrupt(e.to_string()))?;
                Ok(txid)
            })
            .collect::<Result<_, JobStoreError>>()?;
        Ok(BuiltJob {
            job: stored.job,
            transactions: stored
                .transactions
                .iter()
                .map(bytes_of)
                .collect::<Result<_, _>>()?,
            txids,
            has_witness_commitment: stored.has_witness_commitment,
            mweb: stored.mweb.as_ref().map(bytes_of).transpose()?,
            coinbase_value: stored.coinbase_value,
        })
    }

    /// The greatest job id stored: a new process numbers its jobs after it, so an id
    /// never names two different jobs even if the clock went back.
    pub fn newest_job_id(&self) -> Result<Option<u64>, JobStoreError> {
        let newest = self.db.iterator(IteratorMode::End).next().transpose()?;
        let Some((key, _)) = newest else {
            return Ok(None);
        };
        Ok(<[u8; 8]>::try_from(key.as_ref())
            .ok()
            .map(u64::from_be_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::test_support::job;

    #[test]
    fn jobs_survive_reopening_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = JobStore::open(dir.path()).unwrap();
            for job_id in 1..=(JOBS_STORED_MAX as u64 + 5) {
                store.put(&job(job_id)).unwrap();
            }
        }
        let store = JobStore::open(dir.path()).unwrap();
        assert!(store.get(5).unwrap().is_none());
        let kept = store.get(6).unwrap().unwrap();
        assert_eq!(kept.job, job(6).job);
        assert_eq!(kept.transactions, vec![vec![9, 9, 9]]);
        assert_eq!(kept.txids, vec![[5; 32]]);
        assert_eq!(kept.mweb, Some(vec![8]));
        assert_eq!(
            store.newest_job_id().unwrap(),
            Some(JOBS_STORED_MAX as u64 + 5)
        );
    }

    /// At exactly `JOBS_STORED_MAX`, storing a kept job again (a restart republishes the
    /// newest) keeps every job; one new job then pushes out exactly the oldest.
    #[test]
    fn storing_a_kept_job_again_at_the_limit_drops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let newest = JOBS_STORED_MAX as u64;
        for job_id in 1..=newest {
            store.put(&job(job_id)).unwrap();
        }
        let count = |store: &JobStore| store.db.iterator(IteratorMode::Start).count();
        assert_eq!(count(&store), JOBS_STORED_MAX);
        store.put(&job(newest)).unwrap();
        assert_eq!(count(&store), JOBS_STORED_MAX);
        assert!(
            store.get(1).unwrap().is_some(),
            "the oldest job was dropped"
        );
        store.put(&job(newest + 1)).unwrap();
        assert_eq!(count(&store), JOBS_STORED_MAX);
        assert!(store.get(1).unwrap().is_none());
        assert!(store.get(2).unwrap().is_some());
    }
}
