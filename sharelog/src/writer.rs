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
//!
//! The writer stamps each record's `accepted_at_ms` as it writes it, never below an earlier
//! stamp, and keeps the log's clock (`SHARE_LOG_CLOCK_KEY`) with each batch and while
//! idle: the control plane cuts a round exactly at a block's own share record once every
//! log's clock has passed it (see `crate::tail` and `otedama_ledger::shares`).
//!
//! When a write fails (a full disk, an I/O error: RocksDB then refuses every write), the
//! batch's shares are refused and the writer closes the database and opens it again, at
//! most once per `SHARE_LOG_REOPEN_INTERVAL_MS`, until a write works: the pool recovers by
//! itself once there is space again. `ShareLogStatus` tells the data plane's counters (and
//! so `/health` and `/metrics`) whether the log can write. After a reopen the next
//! sequence is read back from the log, so a batch that reached the disk even though its
//! write reported an error keeps its numbers: none is written twice and none skipped.
//!
//! The log is cut below what nobody needs any more on request (`ShareLogReleaser::release`,
//! `crate::retention`) by a thread of its own, not the writer: the cut's files are dropped
//! with a MANIFEST write and unlinked there, which must not hold acknowledgements back. It
//! is one range deletion, never the last record, so numbering goes on from it after any
//! restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use futures_channel::mpsc::UnboundedSender;
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

use crate::format::{
    share_log_key, share_log_sequence, SHARE_LOG_CLOCK_INTERVAL_MS, SHARE_LOG_CLOCK_KEY,
};
use crate::retention;
use otedama_shared::clock::now_ms;
use otedama_shared::ShareRecord;

/// Shares written in one batch at most.
pub const SHARE_BATCH_MAX: usize = 4096;
/// Shares one core may have queued or in the writer at once. A core at the limit stops
/// reading from its miners until the writer catches up: back-pressure, not memory growth.
pub const SHARES_AWAITING_DURABILITY_PER_CORE_MAX: usize = 16_384;
/// Least time between two attempts to reopen a share log whose writes fail.
pub const SHARE_LOG_REOPEN_INTERVAL_MS: u64 = 1000;

/// Whether the share log can write, for health checks and metrics.
#[derive(Debug)]
pub struct ShareLogStatus {
    writable: AtomicBool,
    failed_batches: AtomicU64,
    /// Records cut from the log (`ShareLogReleaser::release`).
    pub released_records: AtomicU64,
    /// The sequence the next record will get: every record below it is written (or was
    /// lost to a failed write, and its number never used again).
    pub next_sequence: AtomicU64,
}

impl Default for ShareLogStatus {
    fn default() -> Self {
        ShareLogStatus {
            writable: AtomicBool::new(true),
            failed_batches: AtomicU64::new(0),
            released_records: AtomicU64::new(0),
            next_sequence: AtomicU64::new(0),
        }
    }
}

impl ShareLogStatus {
    /// False from a failed write until a write works again.
    pub fn writable(&self) -> bool {
        self.writable.load(Relaxed)
    }

    /// Batches whose write failed (their shares were refused, never acknowledged).
    pub fn failed_batches(&self) -> u64 {
        self.failed_batches.load(Relaxed)
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("share log queue is full")]
    QueueFull,
    #[error("share log writer has stopped")]
    WriterGone,
    #[error("share log write failed: {0}")]
    Write(String),
    #[error("share log cannot write until it reopens: {0}")]
    Unavailable(String),
    /// Stored in the log, but with `share_ack = "replicated"` not acknowledged: its
    /// shipper stopped for good (the log and the replicated stream disagree, or its thread
    /// ended) or none runs.
    #[error("share stored but not replicated: {0}")]
    NotReplicated(String),
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
    /// When the writer took the batch off the queue.
    pub taken_at: std::time::Instant,
    /// When the batch's write (and fsync) returned.
    pub written_at: std::time::Instant,
    /// The sequence the log's next share gets after this batch: on `Ok`, every share of
    /// the batch is numbered below it, which is what a wait for the share shipper compares
    /// with (`ShipperStatus::shipped_through`).
    pub through_sequence: u64,
}

/// What may be cut from the log (`ShareLogReleaser::release`, `crate::retention`): records
/// below `floor` stamped before `keep_from_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub floor: u64,
    pub keep_from_ms: u64,
}

/// A cloneable handle that cores use to append shares.
#[derive(Clone)]
pub struct ShareLogHandle {
    queue: Sender<PendingShare>,
}

/// Asks the log to be cut (`ShareLog::releaser`): kept apart from `ShareLogHandle`, so a
/// thread that only cuts never holds the writer's queue open.
#[derive(Clone)]
pub struct ShareLogReleaser {
    releases: Sender<Release>,
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

impl ShareLogReleaser {
    /// Asks the log's cutting thread to cut it (see `Release`). One request waits at most:
    /// a newer one while it waits is dropped, and the next one asked for (they come
    /// periodically) cuts at least as far. A log written through a test's sink is never
    /// cut.
    pub fn release(&self, release: Release) {
        let _ = self.releases.try_send(release);
    }
}

/// Where batches go. RocksDB in production; tests put a faulty one in its place to check
/// that nothing is acknowledged when a write fails.
pub trait BatchSink: Send + 'static {
    /// Stores the batch, whose first share gets sequence number `first_sequence`, with the
    /// log's clock set to `written_through_ms` in the same write. Returns only once the
    /// batch is as durable as the sink promises.
    fn write(
        &mut self,
        batch: &[PendingShare],
        first_sequence: u64,
        written_through_ms: u64,
    ) -> Result<(), StoreError>;

    /// Moves the log's clock forward while no share comes (nothing else is written).
    fn write_clock(&mut self, _written_through_ms: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// After a failed write: makes the sink usable again if it can (RocksDB: close and
    /// reopen the database) and returns the sequence the next share gets, read back from
    /// what is stored (`None`: go on with the writer's own count).
    fn recover(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

struct RocksSink {
    /// `None` while closed after a failure, until `recover` opens it again.
    db: Option<Arc<DB>>,
    /// The open database for the cutting thread (`cut_on_request`), which holds it only
    /// while it cuts: a reopen that finds it still held fails and is tried again a second
    /// later.
    shared: SharedLog,
    path: PathBuf,
    open_options: Options,
    options: WriteOptions,
    /// As durable as the shares: a clock a reader saw must never fall back after a power
    /// loss, or a share written after the restart could be stamped below it. Idle clock
    /// writes happen only while no share comes, so syncing them costs nothing that counts.
    clock_options: WriteOptions,
}

impl BatchSink for RocksSink {
    fn write(
        &mut self,
        batch: &[PendingShare],
        first_sequence: u64,
        written_through_ms: u64,
    ) -> Result<(), StoreError> {
        let mut write = WriteBatch::default();
        for (offset, item) in batch.iter().enumerate() {
            write.put(share_log_key(first_sequence + offset as u64), &item.value);
        }
        write.put(SHARE_LOG_CLOCK_KEY, written_through_ms.to_le_bytes());
        self.open_db()?
            .write_opt(write, &self.options)
            .map_err(|e| StoreError::Write(e.to_string()))
    }

    fn write_clock(&mut self, written_through_ms: u64) -> Result<(), StoreError> {
        self.open_db()?
            .put_opt(
                SHARE_LOG_CLOCK_KEY,
                written_through_ms.to_le_bytes(),
                &self.clock_options,
            )
            .map_err(|e| StoreError::Write(e.to_string()))
    }

    fn recover(&mut self) -> Result<Option<u64>, StoreError> {
        // RocksDB keeps refusing writes after an I/O error (it has no resume in its C
        // API); closing it and opening it again replays its WAL and clears the error, once
        // the disk lets it write its files.
        self.db = None;
        let db = DB::open(&self.open_options, &self.path)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let next_sequence = last_sequence(&db).map_or(0, |s| s + 1);
        let db = Arc::new(db);
        *self.shared.lock().expect("shared log") = Arc::downgrade(&db);
        self.db = Some(db);
        Ok(Some(next_sequence))
    }
}

impl RocksSink {
    fn open_db(&self) -> Result<&DB, StoreError> {
        self.db
            .as_deref()
            .ok_or_else(|| StoreError::Unavailable("closed after a failed write".into()))
    }
}

/// The open share log as the cutting thread reaches it: a weak reference, under a lock
/// the cut holds throughout (so `ShareLog::close` waits for a cut under way; the writer
/// takes it only to publish a reopened database).
type SharedLog = Arc<std::sync::Mutex<std::sync::Weak<DB>>>;

/// The cutting thread: each request cuts the open log (`crate::retention`), until every
/// releaser is gone. The database is held only during a cut, and the count is raised once
/// it is let go.
fn cut_on_request(requests: Receiver<Release>, shared: SharedLog, status: Arc<ShareLogStatus>) {
    for release in requests {
        let held = shared.lock().expect("shared log");
        let Some(db) = held.upgrade() else {
            continue;
        };
        let cut = (|| -> Result<u64, rocksdb::Error> {
            let Some((first, _)) = retention::record_range(&db)? else {
                return Ok(0);
            };
            let Some(below) = retention::release_point(&db, release.floor, release.keep_from_ms)?
            else {
                return Ok(0);
            };
            // Not synced: a deletion lost with the page cache is made again by the next
            // request.
            retention::release_below(&db, below, &WriteOptions::default())?;
            Ok(below - first)
        })();
        drop(db);
        drop(held);
        match cut {
            Ok(released) => {
                status.released_records.fetch_add(released, Relaxed);
                if released > 0 {
                    tracing::debug!(released, below = release.floor, "share log cut");
                }
            }
            // Not a failed share write: nothing is refused for it, and the next request
            // tries again.
            Err(error) => tracing::warn!(%error, "cannot cut the share log"),
        }
    }
}

/// One memtable; with [`MEMTABLES_MAX`] of them this is the share log's largest buffer,
/// which `otedama-tune` sizes `vm.nr_hugepages` for (128 MiB per process).
pub const MEMTABLE_BYTES: usize = 64 << 20;
pub const MEMTABLES_MAX: i32 = 2;
// otedama-tune plans hugepages for this much per process (its `SHARE_LOG_MEMTABLE_BYTES`);
// the two crates do not depend on each other, so the figure is checked here.
const _: () = assert!(MEMTABLE_BYTES * MEMTABLES_MAX as usize == 128 << 20);
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// The open share log and its writer thread.
pub struct ShareLog {
    writer: Option<JoinHandle<()>>,
    handle: Option<ShareLogHandle>,
    releaser: ShareLogReleaser,
    status: Arc<ShareLogStatus>,
    /// The cutting thread's hold on the database (`cut_on_request`): taken at close, so a
    /// cut under way ends, and its hold goes, before `close` returns.
    cut_gate: SharedLog,
    /// Set by `close`: the writer ends once its queue is empty even while a handle still
    /// exists (an executor that ended without dropping its tasks keeps theirs).
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl ShareLog {
    /// Opens (or creates) the log at `path`. `cores[i]` receives the completions of the
    /// shares core `i` appends.
    pub fn open(
        path: &Path,
        sync: bool,
        cores: Vec<UnboundedSender<Completed>>,
    ) -> Result<Self, rocksdb::Error> {
        Self::open_with_memtable(path, sync, cores, MEMTABLE_BYTES)
    }

    /// `open` with memtables of `memtable_bytes` (`share_log_memtable_mib`): less memory
    /// on a small host. RocksDB sizes its WAL preallocation from it, so tests of a full
    /// disk use a small one to reach the disk's end soon.
    pub fn open_with_memtable(
        path: &Path,
        sync: bool,
        cores: Vec<UnboundedSender<Completed>>,
        memtable_bytes: usize,
    ) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_max_background_jobs(2);
        options.set_write_buffer_size(memtable_bytes);
        options.set_max_write_buffer_number(MEMTABLES_MAX);
        // The memtables take huge pages where `otedama-tune` reserved them (vm.nr_hugepages);
        // RocksDB falls back to malloc where none are free.
        options.set_memtable_huge_page_size(HUGE_PAGE_BYTES);
        // Files a compaction leaves are deleted by RocksDB's background threads, not by the
        // writer thread that acknowledges shares (a cut's go on the cutting thread).
        options.set_avoid_unnecessary_blocking_io(true);
        let db = DB::open(&options, path)?;
        let next_sequence = last_sequence(&db).map_or(0, |s| s + 1);
        // Stamps go on above the clock the last writer left, even if the system clock
        // stepped back across the restart.
        let clock_floor_ms = db
            .get(SHARE_LOG_CLOCK_KEY)?
            .and_then(|value| <[u8; 8]>::try_from(value.as_slice()).ok())
            .map_or(0, |value| u64::from_le_bytes(value).saturating_add(1));
        let ahead_ms = clock_floor_ms.saturating_sub(now_ms());
        if ahead_ms > 10_000 {
            tracing::warn!(ahead_ms, "the share log's clock is ahead of the system clock (was the time wrong?); stamps go on from the log's clock at the real rate");
        }
        let options_synced = || {
            let mut options = WriteOptions::default();
            options.set_sync(sync);
            options
        };
        let db = Arc::new(db);
        let shared: SharedLog = Arc::new(std::sync::Mutex::new(Arc::downgrade(&db)));
        let (shared_for_cut, shared_for_close) = (shared.clone(), shared.clone());
        let sink = RocksSink {
            db: Some(db),
            shared: shared.clone(),
            path: path.to_path_buf(),
            open_options: options,
            options: options_synced(),
            clock_options: options_synced(),
        };
        let (releases, requests) = bounded(1);
        let status = Arc::new(ShareLogStatus::default());
        let cut_status = status.clone();
        std::thread::Builder::new()
            .name("share-log-cut".into())
            .spawn(move || cut_on_request(requests, shared_for_cut, cut_status))
            .expect("spawning the share log's cutting thread");
        Ok(ShareLog::start(
            sink,
            next_sequence,
            clock_floor_ms,
            cores,
            (releases, status, shared_for_close),
        ))
    }

    /// A log that writes through `sink`; for fault-injection tests.
    pub fn with_sink(
        sink: impl BatchSink,
        next_sequence: u64,
        cores: Vec<UnboundedSender<Completed>>,
    ) -> Self {
        // No cutting thread: a request goes nowhere.
        let (releases, _) = bounded(1);
        let status = Arc::new(ShareLogStatus::default());
        ShareLog::start(
            sink,
            next_sequence,
            0,
            cores,
            (releases, status, SharedLog::default()),
        )
    }

    fn start(
        sink: impl BatchSink,
        next_sequence: u64,
        clock_floor_ms: u64,
        cores: Vec<UnboundedSender<Completed>>,
        (releases, status, cut_gate): (Sender<Release>, Arc<ShareLogStatus>, SharedLog),
    ) -> Self {
        // Every core may have its full allowance queued; the queue never refuses a share a
        // core was allowed to accept.
        let (queue, receiver) =
            bounded(cores.len().max(1) * SHARES_AWAITING_DURABILITY_PER_CORE_MAX);
        let writer_status = status.clone();
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer_closing = closing.clone();
        let writer = std::thread::Builder::new()
            .name("share-log".into())
            .spawn(move || {
                let mut writer = Writer {
                    sink,
                    status: writer_status,
                    next_sequence,
                    broken_since: None,
                };
                writer.run(receiver, clock_floor_ms, cores, &writer_closing)
            })
            .expect("spawning the share log writer");
        ShareLog {
            writer: Some(writer),
            handle: Some(ShareLogHandle { queue }),
            releaser: ShareLogReleaser { releases },
            status,
            cut_gate,
            closing,
        }
    }

    pub fn handle(&self) -> ShareLogHandle {
        self.handle.clone().expect("handle exists until close")
    }

    /// Where to ask for the log to be cut (`Release`).
    pub fn releaser(&self) -> ShareLogReleaser {
        self.releaser.clone()
    }

    /// Whether the log can write, shared with the writer.
    pub fn status(&self) -> Arc<ShareLogStatus> {
        self.status.clone()
    }

    /// Stops the writer after it has drained the queue, and any cut under way; the
    /// database is closed when this returns. Called once nothing appends any more: a
    /// share queued after the queue was seen empty would not be written.
    pub fn close(mut self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        *self.cut_gate.lock().expect("shared log") = std::sync::Weak::new();
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
        .filter(|(key, _)| share_log_sequence(key).is_some())
        .filter_map(|(_, value)| ShareRecord::decode(&value).ok())
        .collect()
}

/// The last share's sequence (the clock key sorts first, so the last key is a share's).
fn last_sequence(db: &DB) -> Option<u64> {
    retention::last_sequence(db).ok().flatten()
}

/// The writer's stamps. Invariant: a stamp is never below `floor_ms`, and every clock
/// written is below the floor at that moment, so a record is never stamped at or before
/// a clock already in the log, even if the system clock steps back. The floor moves on at
/// the real rate (a monotonic clock) when the system clock is behind it, so a log whose
/// clock was once set ahead (a wrong time, corrected) still moves and its rounds are cut.
struct LogClock {
    floor_ms: u64,
    floor_at: std::time::Instant,
}

impl LogClock {
    fn new(floor_ms: u64) -> Self {
        LogClock {
            floor_ms,
            floor_at: std::time::Instant::now(),
        }
    }

    /// The stamp for records written now.
    fn stamp(&mut self, now_ms: u64) -> u64 {
        let carried = self
            .floor_ms
            .saturating_add(self.floor_at.elapsed().as_millis() as u64);
        let previous_ms = self.floor_ms;
        self.floor_ms = now_ms.max(carried);
        self.floor_at = std::time::Instant::now();
        // Invariant: stamps never go back along one log (`ShareRecord::accepted_at_ms`),
        // whatever the wall clock does.
        debug_assert!(self.floor_ms >= previous_ms);
        self.floor_ms
    }

    /// The clock to write with records stamped `stamp_ms`: more may come at that stamp.
    fn through_before(stamp_ms: u64) -> u64 {
        stamp_ms.saturating_sub(1)
    }

    /// The clock to write while idle, if it moved: everything before now is written.
    fn idle(&mut self, now_ms: u64, written_ms: u64) -> Option<u64> {
        let through = Self::through_before(self.stamp(now_ms));
        (through > written_ms).then_some(through)
    }
}

/// The writer thread: the sink, the next sequence number and whether the sink is broken.
///
/// Invariant: `next_sequence` never goes back, and a number is used once: a batch whose
/// write failed keeps its numbers (it may have reached the WAL that the control plane
/// tails), and after a reopen the writer goes on from the larger of its own count and the
/// log's. A hole is stepped over by the control plane; a number used twice would not be.
struct Writer<S: BatchSink> {
    sink: S,
    status: Arc<ShareLogStatus>,
    next_sequence: u64,
    /// When the last write or reopen failed, while the sink is broken.
    broken_since: Option<std::time::Instant>,
}

impl<S: BatchSink> Writer<S> {
    /// Whether the sink may be written to: a broken one is reopened, at most once per
    /// `SHARE_LOG_REOPEN_INTERVAL_MS`.
    fn ready(&mut self) -> Result<(), StoreError> {
        let Some(failed_at) = self.broken_since else {
            return Ok(());
        };
        if failed_at.elapsed() < std::time::Duration::from_millis(SHARE_LOG_REOPEN_INTERVAL_MS) {
            return Err(StoreError::Unavailable("waiting to reopen".into()));
        }
        match self.sink.recover() {
            Ok(stored_next) => {
                if let Some(stored_next) = stored_next {
                    if stored_next < self.next_sequence {
                        tracing::error!(
                            stored_next,
                            counted_next = self.next_sequence,
                            "the share log holds fewer shares than were written; numbering goes on after the last one written"
                        );
                    }
                    self.next_sequence = self.next_sequence.max(stored_next);
                }
                self.broken_since = None;
                tracing::info!(next_sequence = self.next_sequence, "share log reopened");
                Ok(())
            }
            Err(error) => {
                self.broken_since = Some(std::time::Instant::now());
                Err(error)
            }
        }
    }

    fn failed(&mut self, error: &StoreError) {
        if self.broken_since.is_none() {
            tracing::error!(%error, "share log cannot write: shares are refused until it reopens");
        } else {
            tracing::debug!(%error, "share log still cannot write");
        }
        self.broken_since = Some(std::time::Instant::now());
        self.status.writable.store(false, Relaxed);
    }

    fn run(
        &mut self,
        receiver: Receiver<PendingShare>,
        clock_floor_ms: u64,
        cores: Vec<UnboundedSender<Completed>>,
        closing: &std::sync::atomic::AtomicBool,
    ) {
        let mut batch: Vec<PendingShare> = Vec::with_capacity(SHARE_BATCH_MAX);
        let mut per_core = vec![0usize; cores.len()];
        let mut clock = LogClock::new(clock_floor_ms);
        let mut clock_written_ms = clock_floor_ms.saturating_sub(1);
        let idle = std::time::Duration::from_millis(SHARE_LOG_CLOCK_INTERVAL_MS);
        self.status.next_sequence.store(self.next_sequence, Relaxed);
        loop {
            let first = match receiver.recv_timeout(idle) {
                Ok(first) => first,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if closing.load(std::sync::atomic::Ordering::SeqCst) && receiver.is_empty() {
                        return;
                    }
                    if let Some(through) = clock.idle(now_ms(), clock_written_ms) {
                        let written = self.ready().and_then(|()| self.sink.write_clock(through));
                        match written {
                            Ok(()) => {
                                clock_written_ms = through;
                                self.status.writable.store(true, Relaxed);
                            }
                            Err(StoreError::Unavailable(_)) => {}
                            Err(error) => self.failed(&error),
                        }
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            batch.push(first);
            while batch.len() < SHARE_BATCH_MAX {
                match receiver.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let taken_at = std::time::Instant::now();
            // Stamped only once the sink is ready: while it was being reopened its lock was
            // free, and a control plane that took the writer for gone may have moved the
            // log's clock to its own now; a stamp taken before would fall below it.
            let result = self.ready().and_then(|()| {
                let stamp_ms = clock.stamp(now_ms());
                for item in &mut batch {
                    ShareRecord::stamp_encoded(&mut item.value, stamp_ms);
                }
                let through = LogClock::through_before(stamp_ms);
                self.sink.write(&batch, self.next_sequence, through)?;
                clock_written_ms = clock_written_ms.max(through);
                Ok(())
            });
            let written_at = std::time::Instant::now();
            match &result {
                Ok(()) => {
                    self.next_sequence += batch.len() as u64;
                    self.status.writable.store(true, Relaxed);
                }
                Err(error) => {
                    self.status.failed_batches.fetch_add(1, Relaxed);
                    if !matches!(error, StoreError::Unavailable(_)) {
                        // A write that reported an error may still have reached the WAL a
                        // reader tails, and then be lost: its numbers are never used again
                        // (the control plane steps over the hole).
                        self.next_sequence += batch.len() as u64;
                        self.failed(error);
                    }
                }
            }
            self.status.next_sequence.store(self.next_sequence, Relaxed);
            for item in batch.drain(..) {
                per_core[item.core] += 1;
            }
            for (core, shares) in per_core.iter_mut().enumerate() {
                if *shares > 0 {
                    // A core that has stopped no longer waits; its shares are stored all
                    // the same.
                    let _ = cores[core].unbounded_send(Completed {
                        shares: *shares,
                        result: result.clone(),
                        taken_at,
                        written_at,
                        through_sequence: self.next_sequence,
                    });
                    *shares = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::SmallDisk;

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
            protocol: None,
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

    /// A release cuts only what its floor and retention allow, never the last record, and
    /// numbering goes on after it across a restart.
    #[test]
    fn a_release_cuts_below_its_floor_and_numbering_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = futures_channel::mpsc::unbounded();
        let log = ShareLog::open(dir.path(), true, vec![tx]).unwrap();
        let (handle, releaser, status) = (log.handle(), log.releaser(), log.status());
        for i in 0..100 {
            handle.append(0, &record(i)).unwrap();
        }
        let mut durable = 0;
        while durable < 100 {
            match rx.try_recv() {
                Ok(completed) => durable += completed.shares,
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        let released = |expected: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while status.released_records.load(Relaxed) != expected {
                assert!(
                    std::time::Instant::now() < deadline,
                    "released {}",
                    status.released_records.load(Relaxed)
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        // Stamped now: a retention from an hour ago keeps them all.
        let hour_ago = now_ms() - 3_600_000;
        releaser.release(Release {
            floor: 60,
            keep_from_ms: hour_ago,
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            status.released_records.load(Relaxed),
            0,
            "every record is younger than the retention"
        );
        releaser.release(Release {
            floor: 60,
            keep_from_ms: u64::MAX,
        });
        released(60);
        releaser.release(Release {
            floor: u64::MAX,
            keep_from_ms: u64::MAX,
        });
        released(99);
        drop(handle);
        log.close();
        completions_of(dir.path(), 100..103);
        let ids: Vec<u64> = read_share_log(dir.path())
            .unwrap()
            .iter()
            .map(|r| r.job_id)
            .collect();
        assert_eq!(ids, vec![99, 100, 101, 102]);
        let db = DB::open_for_read_only(&Options::default(), dir.path(), false).unwrap();
        assert_eq!(retention::record_range(&db).unwrap(), Some((99, 102)));
    }

    fn clock_of(path: &Path) -> u64 {
        let db = DB::open_for_read_only(&Options::default(), path, false).unwrap();
        let value = db.get(SHARE_LOG_CLOCK_KEY).unwrap().expect("a clock");
        u64::from_le_bytes(value.as_slice().try_into().unwrap())
    }

    #[test]
    fn stamps_never_go_back_and_the_clock_covers_every_record_written() {
        let dir = tempfile::tempdir().unwrap();
        completions_of(dir.path(), 0..50);
        let stamps = |path: &Path| -> Vec<u64> {
            read_share_log(path)
                .unwrap()
                .iter()
                .map(|r| r.accepted_at_ms)
                .collect()
        };
        let first = stamps(dir.path());
        assert_eq!(first.len(), 50);
        assert!(first.windows(2).all(|w| w[0] <= w[1]), "{first:?}");
        assert!(first[0] > 1, "the writer's stamp replaces the session's");
        let clock = clock_of(dir.path());
        assert!(clock + 1 >= first[49], "clock {clock} behind {}", first[49]);

        // Idle, the clock moves on by itself; records written after it are stamped above.
        let (tx, _rx) = futures_channel::mpsc::unbounded();
        let log = ShareLog::open(dir.path(), true, vec![tx]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let idle_clock = loop {
            // A read-only open sees what the running writer has put in the WAL.
            let value = clock_of(dir.path());
            if value > clock {
                break value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "idle clock never moved"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        log.handle().append(0, &record(50)).unwrap();
        log.close();
        let all = stamps(dir.path());
        assert!(all[50] > idle_clock, "{} after clock {idle_clock}", all[50]);
        assert_eq!(
            last_sequence(&DB::open_for_read_only(&Options::default(), dir.path(), false).unwrap()),
            Some(50)
        );
    }

    #[test]
    fn a_full_disk_refuses_shares_and_the_log_recovers_by_itself_when_space_returns() {
        let mount_point = tempfile::tempdir().unwrap();
        let disk = SmallDisk::mount(mount_point.path().join("disk"), 32 << 20);
        let path = disk.path().join("shares");
        let (tx, mut rx) = futures_channel::mpsc::unbounded();
        // Small memtables: RocksDB preallocates its WAL from their size, and a write past
        // the preallocation is what meets the full disk.
        let log = ShareLog::open_with_memtable(&path, true, vec![tx], 256 << 10).unwrap();
        let status = log.status();
        let handle = log.handle();
        // One share at a time, so each completion names it.
        let mut append = |id: u64| -> bool {
            handle.append(0, &record(id)).unwrap();
            loop {
                match rx.try_recv() {
                    Ok(completed) => {
                        assert_eq!(completed.shares, 1);
                        return completed.result.is_ok();
                    }
                    Err(futures_channel::mpsc::TryRecvError::Closed) => {
                        panic!("the writer stopped")
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
                }
            }
        };
        let mut acknowledged = Vec::new();
        let mut id = 0u64;
        for _ in 0..100 {
            assert!(append(id));
            acknowledged.push(id);
            id += 1;
        }
        let filler = disk.fill();
        let refused_at = loop {
            assert!(id < 100_000, "a full disk never refused a share");
            if append(id) {
                acknowledged.push(id);
            } else {
                break id;
            }
            id += 1;
        };
        assert!(
            !status.writable(),
            "refused at {refused_at}, yet reported writable"
        );
        // Still full: every share is refused, none acknowledged.
        for _ in 0..20 {
            id += 1;
            assert!(!append(id));
        }
        std::fs::remove_file(filler).unwrap();
        let freed = std::time::Instant::now();
        loop {
            id += 1;
            if append(id) {
                acknowledged.push(id);
                break;
            }
            assert!(
                freed.elapsed() < std::time::Duration::from_secs(30),
                "the log did not recover after space returned"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(status.writable());
        assert!(status.failed_batches() >= 21);
        for _ in 0..100 {
            id += 1;
            assert!(append(id));
            acknowledged.push(id);
        }
        // The writer stops once every handle is gone.
        drop(handle);
        log.close();
        // Every acknowledged share is in the log, each once and in order; a refused one
        // may be there too only if its write reached the disk after all.
        let stored: Vec<u64> = read_share_log(&path)
            .unwrap()
            .iter()
            .map(|r| r.job_id)
            .collect();
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
        for id in &acknowledged {
            assert!(
                stored.binary_search(id).is_ok(),
                "acknowledged share {id} lost"
            );
        }
    }

    /// A sink that records each batch's size and holds its first write until the test
    /// lets it go.
    struct HeldSink {
        entered: crossbeam_channel::Sender<()>,
        release: crossbeam_channel::Receiver<()>,
        batch_sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }
    impl BatchSink for HeldSink {
        fn write(&mut self, batch: &[PendingShare], _: u64, _: u64) -> Result<(), StoreError> {
            let mut sizes = self.batch_sizes.lock().unwrap();
            if sizes.is_empty() {
                self.entered.send(()).unwrap();
                self.release.recv().unwrap();
            }
            sizes.push(batch.len());
            Ok(())
        }
    }

    /// With the writer busy, one core queues exactly its
    /// `SHARES_AWAITING_DURABILITY_PER_CORE_MAX` shares and is refused the next; the
    /// writer then takes them in batches of exactly `SHARE_BATCH_MAX`.
    #[test]
    fn the_queue_and_the_batch_hold_their_limits_at_the_edge() {
        let (entered, has_entered) = crossbeam_channel::bounded(1);
        let (let_go, release) = crossbeam_channel::bounded(1);
        let batch_sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = futures_channel::mpsc::unbounded();
        let log = ShareLog::with_sink(
            HeldSink {
                entered,
                release,
                batch_sizes: batch_sizes.clone(),
            },
            0,
            vec![tx],
        );
        let handle = log.handle();
        handle.append(0, &record(0)).unwrap();
        has_entered.recv().unwrap();
        for job_id in 1..=SHARES_AWAITING_DURABILITY_PER_CORE_MAX as u64 {
            handle.append(0, &record(job_id)).unwrap();
        }
        assert_eq!(handle.queued(), SHARES_AWAITING_DURABILITY_PER_CORE_MAX);
        assert_eq!(
            handle.append(0, &record(u64::MAX)),
            Err(StoreError::QueueFull)
        );
        let_go.send(()).unwrap();
        drop(handle);
        log.close();
        let sizes = batch_sizes.lock().unwrap().clone();
        assert_eq!(sizes[0], 1);
        assert!(
            sizes.iter().all(|size| *size <= SHARE_BATCH_MAX),
            "{sizes:?}"
        );
        assert_eq!(
            sizes[1..],
            vec![SHARE_BATCH_MAX; SHARES_AWAITING_DURABILITY_PER_CORE_MAX / SHARE_BATCH_MAX]
        );
        let mut durable = 0;
        while let Ok(completed) = rx.try_recv() {
            assert!(completed.result.is_ok());
            durable += completed.shares;
        }
        assert_eq!(durable, SHARES_AWAITING_DURABILITY_PER_CORE_MAX + 1);
    }

    /// A sink whose writes fail: every completion must say so.
    struct FailingSink;
    impl BatchSink for FailingSink {
        fn write(&mut self, _: &[PendingShare], _: u64, _: u64) -> Result<(), StoreError> {
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
