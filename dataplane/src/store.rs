//! The share log: accepted shares in RocksDB, written by one thread with group commit.
//!
//! Cores hand records over one bounded crossbeam queue. The writer drains whatever is
//! queued (up to `SHARE_BATCH_MAX`), writes it as one `WriteBatch` and, when `sync` is on,
//! waits for the WAL to reach the disk. Only then does it tell each core how many of its
//! shares the batch held, in one message per core, and the core acknowledges them in order.
//! A miner's `true` therefore means the share survives `kill -9` and, with `sync`, power
//! loss too; with `sync` off the WAL sits in the page cache and survives a process crash
//! only. The cost of `sync` is measured in BENCHMARKS.md.
//!
//! A core's shares reach the writer in the order the core queued them and the writer keeps
//! that order, so completions carry only a count: no per-share channel or allocation.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use futures_channel::mpsc::UnboundedSender;
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

use otedama_shared::ShareRecord;

/// Shares written in one batch at most.
pub const SHARE_BATCH_MAX: usize = 4096;
/// Shares one core may have queued or in the writer at once. A core at the limit stops
/// reading from its miners until the writer catches up: back-pressure, not memory growth.
pub const SHARES_AWAITING_DURABILITY_PER_CORE_MAX: usize = 16_384;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("share log queue is full")]
    QueueFull,
    #[error("share log writer has stopped")]
    WriterGone,
    #[error("share log write failed: {0}")]
    Write(String),
}

/// One encoded share on its way to the writer.
pub struct PendingShare {
    /// The core (index within this process) to tell when it is durable.
    pub core: usize,
    pub value: Vec<u8>,
}

/// The writer's word to one core: its next `shares` shares, in queue order, are durable
/// (or, on `Err`, were not stored).
#[derive(Debug)]
pub struct Completed {
    pub shares: usize,
    pub result: Result<(), StoreError>,
}

/// A cloneable handle that cores use to append shares.
#[derive(Clone)]
pub struct ShareLogHandle {
    queue: Sender<PendingShare>,
}

impl ShareLogHandle {
    /// Shares waiting for the writer right now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a record from `core`. Its completion arrives on that core's channel.
    pub fn append(&self, core: usize, record: &ShareRecord) -> Result<(), StoreError> {
        match self.queue.try_send(PendingShare {
            core,
            value: record.encode(),
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StoreError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::WriterGone),
        }
    }
}

/// Where batches go. RocksDB in production; tests put a faulty one in its place to check
/// that nothing is acknowledged when a write fails.
pub trait BatchSink: Send + 'static {
    /// Stores the batch, whose first share gets sequence number `first_sequence`. Returns
    /// only once the batch is as durable as the sink promises.
    fn write(&mut self, batch: &[PendingShare], first_sequence: u64) -> Result<(), StoreError>;
}

struct RocksSink {
    db: Arc<DB>,
    options: WriteOptions,
}

impl BatchSink for RocksSink {
    fn write(&mut self, batch: &[PendingShare], first_sequence: u64) -> Result<(), StoreError> {
        let mut write = WriteBatch::default();
        for (offset, item) in batch.iter().enumerate() {
            write.put(key(first_sequence + offset as u64), &item.value);
        }
        self.db
            .write_opt(write, &self.options)
            .map_err(|e| StoreError::Write(e.to_string()))
    }
}

/// One memtable; with [`MEMTABLES_MAX`] of them this is the share log's largest buffer,
/// which `otedama-tune` sizes `vm.nr_hugepages` for (128 MiB per process).
pub const MEMTABLE_BYTES: usize = 64 << 20;
pub const MEMTABLES_MAX: i32 = 2;
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// The open share log and its writer thread.
pub struct ShareLog {
    db: Option<Arc<DB>>,
    writer: Option<JoinHandle<()>>,
    handle: Option<ShareLogHandle>,
}

/// Key of the n-th share: its sequence number, big-endian, so keys sort in arrival order.
fn key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

impl ShareLog {
    /// Opens (or creates) the log at `path`. `cores[i]` receives the completions of the
    /// shares core `i` appends.
    pub fn open(
        path: &Path,
        sync: bool,
        cores: Vec<UnboundedSender<Completed>>,
    ) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_max_background_jobs(2);
        options.set_write_buffer_size(MEMTABLE_BYTES);
        options.set_max_write_buffer_number(MEMTABLES_MAX);
        // The memtables take huge pages where `otedama-tune` reserved them (vm.nr_hugepages);
        // RocksDB falls back to malloc where none are free.
        options.set_memtable_huge_page_size(HUGE_PAGE_BYTES);
        let db = Arc::new(DB::open(&options, path)?);
        let next_sequence = last_sequence(&db).map_or(0, |s| s + 1);
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        let sink = RocksSink {
            db: db.clone(),
            options: write_options,
        };
        let mut log = ShareLog::with_sink(sink, next_sequence, cores);
        log.db = Some(db);
        Ok(log)
    }

    /// A log that writes through `sink`; for fault-injection tests.
    pub fn with_sink(
        sink: impl BatchSink,
        next_sequence: u64,
        cores: Vec<UnboundedSender<Completed>>,
    ) -> Self {
        // Every core may have its full allowance queued; the queue never refuses a share a
        // core was allowed to accept.
        let (queue, receiver) =
            bounded(cores.len().max(1) * SHARES_AWAITING_DURABILITY_PER_CORE_MAX);
        let writer = std::thread::Builder::new()
            .name("share-log".into())
            .spawn(move || write_loop(sink, receiver, next_sequence, cores))
            .expect("spawning the share log writer");
        ShareLog {
            db: None,
            writer: Some(writer),
            handle: Some(ShareLogHandle { queue }),
        }
    }

    pub fn handle(&self) -> ShareLogHandle {
        self.handle.clone().expect("handle exists until close")
    }

    /// Every stored record, in arrival order. For tests and recovery tools, not the hot path.
    pub fn read_all(&self) -> Vec<ShareRecord> {
        self.db.as_deref().map(read_all).unwrap_or_default()
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

fn write_loop(
    mut sink: impl BatchSink,
    receiver: Receiver<PendingShare>,
    mut next_sequence: u64,
    cores: Vec<UnboundedSender<Completed>>,
) {
    let mut batch: Vec<PendingShare> = Vec::with_capacity(SHARE_BATCH_MAX);
    let mut per_core = vec![0usize; cores.len()];
    while let Ok(first) = receiver.recv() {
        batch.push(first);
        while batch.len() < SHARE_BATCH_MAX {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let result = sink.write(&batch, next_sequence);
        match &result {
            Ok(()) => next_sequence += batch.len() as u64,
            Err(error) => tracing::error!(%error, shares = batch.len(), "share log batch failed"),
        }
        for item in batch.drain(..) {
            per_core[item.core] += 1;
        }
        for (core, shares) in per_core.iter_mut().enumerate() {
            if *shares > 0 {
                // A core that has stopped no longer waits; its shares are stored all the same.
                let _ = cores[core].unbounded_send(Completed {
                    shares: *shares,
                    result: result.clone(),
                });
                *shares = 0;
            }
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

    fn completions_of(log_path: &Path, records: std::ops::Range<u64>) -> Vec<Completed> {
        let (tx, mut rx) = futures_channel::mpsc::unbounded();
        let log = ShareLog::open(log_path, true, vec![tx]).unwrap();
        for i in records.clone() {
            log.handle().append(0, &record(i)).unwrap();
        }
        log.close();
        let mut completions = Vec::new();
        while let Ok(completed) = rx.try_recv() {
            completions.push(completed);
        }
        completions
    }

    #[test]
    fn shares_are_durable_and_ordered_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let completions = completions_of(dir.path(), 0..100);
        assert_eq!(completions.iter().map(|c| c.shares).sum::<usize>(), 100);
        assert!(completions.iter().all(|c| c.result.is_ok()));
        completions_of(dir.path(), 100..101);
        let ids: Vec<u64> = read_share_log(dir.path())
            .unwrap()
            .iter()
            .map(|r| r.job_id)
            .collect();
        assert_eq!(ids, (0..=100).collect::<Vec<_>>());
    }

    /// A sink whose writes fail: every completion must say so.
    struct FailingSink;
    impl BatchSink for FailingSink {
        fn write(&mut self, _: &[PendingShare], _: u64) -> Result<(), StoreError> {
            Err(StoreError::Write("injected".into()))
        }
    }

    #[test]
    fn a_failed_batch_is_reported_to_each_core_and_never_as_durable() {
        let (tx0, mut rx0) = futures_channel::mpsc::unbounded();
        let (tx1, mut rx1) = futures_channel::mpsc::unbounded();
        let log = ShareLog::with_sink(FailingSink, 0, vec![tx0, tx1]);
        for i in 0..10 {
            log.handle().append((i % 2) as usize, &record(i)).unwrap();
        }
        log.close();
        for rx in [&mut rx0, &mut rx1] {
            let mut shares = 0;
            while let Ok(completed) = rx.try_recv() {
                assert!(completed.result.is_err());
                shares += completed.shares;
            }
            assert_eq!(shares, 5);
        }
    }
}
