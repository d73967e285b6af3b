//! The share log: accepted shares in RocksDB, written by one thread with group commit.
//!
//! Cores hand records over a bounded crossbeam queue. The writer drains whatever is queued
//! (up to `SHARE_BATCH_MAX`), writes it as one `WriteBatch` and, when `sync` is on, waits
//! for the WAL to reach the disk before completing every share in the batch. A miner's
//! `true` therefore means the share survives `kill -9` and power loss alike; with `sync`
//! off it survives a process crash only (the WAL is in the page cache).

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use futures_channel::oneshot;
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

use otedama_shared::ShareRecord;

/// Shares written in one batch at most.
pub const SHARE_BATCH_MAX: usize = 4096;
/// Shares waiting for the writer at most; a full queue rejects shares instead of growing.
pub const SHARE_QUEUE_MAX: usize = 65_536;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("share log queue is full")]
    QueueFull,
    #[error("share log writer has stopped")]
    WriterGone,
    #[error("share log write failed: {0}")]
    Write(String),
}

struct PendingShare {
    value: Vec<u8>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A cloneable handle that cores use to append shares.
#[derive(Clone)]
pub struct ShareLogHandle {
    queue: Sender<PendingShare>,
}

impl ShareLogHandle {
    /// Queues a record; the returned receiver completes once it is durable.
    pub fn append(
        &self,
        record: &ShareRecord,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (done, wait) = oneshot::channel();
        match self.queue.try_send(PendingShare {
            value: record.encode(),
            done,
        }) {
            Ok(()) => Ok(wait),
            Err(TrySendError::Full(_)) => Err(StoreError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::WriterGone),
        }
    }
}

/// The open share log and its writer thread.
pub struct ShareLog {
    db: Arc<DB>,
    writer: Option<JoinHandle<()>>,
    handle: Option<ShareLogHandle>,
}

/// Key of the n-th share: its sequence number, big-endian, so keys sort in arrival order.
fn key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

impl ShareLog {
    pub fn open(path: &Path, sync: bool) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_max_background_jobs(2);
        let db = Arc::new(DB::open(&options, path)?);
        let next_sequence = last_sequence(&db).map_or(0, |s| s + 1);
        let (queue, receiver) = bounded(SHARE_QUEUE_MAX);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("share-log".into())
            .spawn(move || write_loop(&writer_db, receiver, next_sequence, sync))
            .expect("spawning the share log writer");
        Ok(ShareLog {
            db,
            writer: Some(writer),
            handle: Some(ShareLogHandle { queue }),
        })
    }

    pub fn handle(&self) -> ShareLogHandle {
        self.handle.clone().expect("handle exists until close")
    }

    /// Every stored record, in arrival order. For tests and recovery tools, not the hot path.
    pub fn read_all(&self) -> Vec<ShareRecord> {
        read_all(&self.db)
    }

    /// Stops the writer after it has drained the queue.
    pub fn close(mut self) {
        self.handle.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Opens a share log read-only and returns its records (used by tests and `otedama` tools
/// while no data plane holds the database).
pub fn read_share_log(path: &Path) -> Result<Vec<ShareRecord>, rocksdb::Error> {
    let db = DB::open_for_read_only(&Options::default(), path, false)?;
    Ok(read_all(&db))
}

fn read_all(db: &DB) -> Vec<ShareRecord> {
    db.iterator(rocksdb::IteratorMode::Start)
        .filter_map(Result::ok)
        .filter_map(|(_, value)| ShareRecord::decode(&value).ok())
        .collect()
}

fn last_sequence(db: &DB) -> Option<u64> {
    let (key, _) = db.iterator(rocksdb::IteratorMode::End).next()?.ok()?;
    Some(u64::from_be_bytes(key.as_ref().try_into().ok()?))
}

fn write_loop(db: &DB, receiver: Receiver<PendingShare>, mut next_sequence: u64, sync: bool) {
    let mut write_options = WriteOptions::default();
    write_options.set_sync(sync);
    let mut batch_items: Vec<PendingShare> = Vec::with_capacity(SHARE_BATCH_MAX);
    while let Ok(first) = receiver.recv() {
        batch_items.push(first);
        while batch_items.len() < SHARE_BATCH_MAX {
            match receiver.try_recv() {
                Ok(item) => batch_items.push(item),
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch::default();
        for item in &batch_items {
            batch.put(key(next_sequence), &item.value);
            next_sequence += 1;
        }
        let result = db
            .write_opt(batch, &write_options)
            .map_err(|e| StoreError::Write(e.to_string()));
        if let Err(error) = &result {
            tracing::error!(%error, shares = batch_items.len(), "share log batch failed");
        }
        for item in batch_items.drain(..) {
            // A miner that disconnected no longer waits; its share is stored all the same.
            let _ = item.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job_id: u64) -> ShareRecord {
        ShareRecord {
            accepted_at_ms: 1,
            job_id,
            height: 2,
            worker: "w".into(),
            difficulty: 1.0,
            achieved_difficulty: 2.0,
            is_block: false,
            header: [0; 80],
            extranonce1: vec![1],
            extranonce2: vec![2],
        }
    }

    #[test]
    fn shares_are_durable_and_ordered_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShareLog::open(dir.path(), true).unwrap();
        let waits: Vec<_> = (0..100)
            .map(|i| log.handle().append(&record(i)).unwrap())
            .collect();
        for wait in waits {
            futures_lite::future::block_on(wait).unwrap().unwrap();
        }
        log.close();
        let log = ShareLog::open(dir.path(), true).unwrap();
        let wait = log.handle().append(&record(100)).unwrap();
        futures_lite::future::block_on(wait).unwrap().unwrap();
        let ids: Vec<u64> = log.read_all().iter().map(|r| r.job_id).collect();
        assert_eq!(ids, (0..=100).collect::<Vec<_>>());
    }
}
