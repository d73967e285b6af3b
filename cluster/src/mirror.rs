//! The control plane's copy of every data-plane process's share log, read from the log's
//! share stream: one `MirrorLog` per log (`otedama_sharelog::mirror`), in the share log's own
//! format, which the payout thread and the block scan then follow as they follow a local
//! log. A control plane in cluster mode thus credits the shares of every host the same
//! way it credits its own host's.
//!
//! Each log is read on its own, from its own stream (`crate::shares::share_stream_name`:
//! its batches and its clock, in stream order), from the position its copy stores, one
//! message at a time, so a restart or a lost connection goes on where the copy stands and
//! a message read twice changes nothing (see `MirrorLog`). A stream that cannot be read
//! (its replicas electing a leader) holds back only its own log; the others go on. New
//! logs are found by listing the share streams every `MIRROR_DISCOVER_MS`.
//!
//! A log's clock comes from its shipper (`crate::shares`). A log whose host has said
//! nothing (no batch, no clock) for `MIRROR_LOG_SILENT_MS` while this mirror is connected
//! and has read all there is, and whose host holds no claim in the host bucket any more
//! (it takes no miner), has its copy's clock moved to now, so a host that is gone does
//! not hold every round of the pool back. Shares it ships later (it had them on its disk)
//! are still read; they are credited under per-share schemes, and count in rounds whose
//! window still reaches their time, but a round already cut before them is not cut again.
//!
//! Retention (`Retention`, set by the control plane once its readers exist): every
//! `Retention::pass_interval_ms` each copy is cut below its release point, and the
//! leader also purges the log's stream of the batches that lie wholly below it
//! (`purge_below`). Invariant: a record is released only once (a) it lies below the
//! floor the control plane gives for its log, the lowest sequence any of its readers
//! would read again after a restart (the ledger's crediting cursor, or on the leader
//! where its payout tails have read to, less the share history; the block scan's cursor),
//! so it is credited in the replicated ledger and scanned for blocks, and (b) it was
//! stamped longer than `Retention::keep_ms` ago (15 minutes at least). A
//! log's last record, and in the stream its last batch (the shipper's place), are never
//! released. The stream is purged only by the leader, with its own floors: a standby's
//! block scan is not the one whose cursor guards unrecorded blocks. A standby whose copy
//! was behind finds a hole where the purged batches were, which its readers step over:
//! every share in it is credited, and outside every round a restart would cut.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_lite::StreamExt;

use otedama_sharelog::mirror::MirrorLog;

use crate::shares::{
    decode_batch, decode_clock, log_subjects, parse_share_stream_name, share_stream_name,
    share_subject, LEGACY_SHARE_STREAM,
};

/// How often the share streams are listed for new logs.
pub const MIRROR_DISCOVER_MS: u64 = 2_000;
/// How long a log may say nothing before its copy's clock is moved to now, if its host
/// holds no claim any more (`host_gone`).
pub const MIRROR_LOG_SILENT_MS: u64 = 20_000;
/// How long a log may say nothing while its host still holds its claim before it stops
/// holding rounds back all the same (a host whose shipper stopped for good).
pub const MIRROR_LOG_SILENT_WITH_LEASE_MS: u64 = 600_000;
/// Messages read from one log before the next log has its turn.
const MIRROR_MESSAGES_PER_TURN: usize = 64;
const MIRROR_IDLE_POLL_MS: u64 = 20;
const MIRROR_RETRY_DELAY_MS: u64 = 500;
/// Least time between two warnings about one log whose stream cannot be read.
const MIRROR_LOG_WARN_MS: u64 = 30_000;
/// The first and the longest pause before a log whose stream could not be read is tried
/// again; it doubles from one to the other.
const MIRROR_LOG_RETRY_MIN_MS: u64 = 500;
const MIRROR_LOG_RETRY_MAX_MS: u64 = 30_000;
/// How often a caught-up log's stream is asked whether it is still the stream the copy
/// follows (made again, or short of the copy's place: the copy then reads it from its
/// start, `Copy::follow`).
const MIRROR_STREAM_CHECK_MS: u64 = 2_000;

const MIRROR_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// How often the copies are cut (`Retention`).
pub const SHARE_RETENTION_PASS_INTERVAL_MS: u64 = 60_000;
/// How often the leader purges one log's batches from the share stream at most: each
/// purge looks for its place with about log2(stream length) reads of whole batches (up to
/// `SHARE_BATCH_BYTES_MAX` each), so they are spread out.
pub const SHARE_STREAM_PURGE_INTERVAL_MS: u64 = 600_000;

/// The lowest sequence of the log named (`HOST.PROCESS`) that the control plane's readers
/// would read again after a restart, given the copy's next sequence (`Retention::floor`).
pub type LogFloor = Box<dyn Fn(&str, u64) -> Option<u64> + Send + Sync>;

/// What decides how far the copies and the share stream are cut (see the module's doc).
pub struct Retention {
    /// Records stamped less than this long ago are kept, whatever the floor.
    pub keep_ms: u64,
    pub pass_interval_ms: u64,
    /// Least time between two purges of one log's batches (`SHARE_STREAM_PURGE_INTERVAL_MS`).
    pub purge_interval_ms: u64,
    /// The lowest sequence of the log named (`HOST.PROCESS`) that this control plane's
    /// readers would read again after a restart, given the copy's next sequence; `None`
    /// while not known, and nothing of that log is cut.
    pub floor: LogFloor,
    /// Whether this control plane purges the stream too: only the leader does.
    pub purges_stream: Box<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("keep_ms", &self.keep_ms)
            .field("pass_interval_ms", &self.pass_interval_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct MirrorConfig {
    pub nats_urls: Vec<String>,
    /// Where the copies live, one directory per log (`HOST.PROCESS`).
    pub root: PathBuf,
}

/// One log the mirror copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirroredLog {
    /// `HOST.PROCESS`: the log's name, for the ledger's log ids.
    pub name: String,
    /// The copy, to follow as a share log (`ShareLogTail::without_writer_check`).
    pub path: PathBuf,
}

/// How far the mirror has come, shared with its readers.
#[derive(Debug, Default)]
pub struct MirrorStatus {
    pub connected: AtomicBool,
    /// Stream messages applied.
    pub messages: AtomicU64,
    pub failed_sessions: AtomicU64,
    logs: Mutex<Vec<MirroredLog>>,
    /// Whether the stream's logs have been listed once: before, a log may be missing.
    discovered: AtomicBool,
    retention: OnceLock<Retention>,
    /// Records cut from the copies (`Retention`).
    pub released_records: AtomicU64,
    /// Share batches this control plane purged from the stream.
    pub purged_batches: AtomicU64,
}

impl MirrorStatus {
    pub fn discovered(&self) -> bool {
        self.discovered.load(Relaxed)
    }

    /// Starts cutting the copies and (when leading) the stream; a second call is ignored.
    pub fn set_retention(&self, retention: Retention) {
        let _ = self.retention.set(retention);
    }

    /// Every log found so far, in the order found.
    pub fn logs(&self) -> Vec<MirroredLog> {
        self.logs.lock().expect("mirror logs").clone()
    }
}

pub struct ShareMirror {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    status: Arc<MirrorStatus>,
}

impl ShareMirror {
    /// Opens the copies already on disk (so their logs are known before the cluster
    /// answers) and mirrors on a thread of its own.
    pub fn start(config: MirrorConfig) -> anyhow::Result<Self> {
        crate::server_addresses(&config.nats_urls)?;
        std::fs::create_dir_all(&config.root)?;
        let status = Arc::new(MirrorStatus::default());
        let mut copies = BTreeMap::new();
        let mut names: Vec<String> = std::fs::read_dir(&config.root)?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| {
                // One directory per log: `dp.01` is not a second copy of `dp.1`.
                name.split_once('.').is_some_and(|(host, process)| {
                    process.parse::<u32>().is_ok_and(|process| {
                        format!("{host}.{process}") == *name
                            && parse_share_stream_name(&share_stream_name(host, process)).is_some()
                    })
                })
            })
            .collect();
        names.sort();
        for name in names {
            let copy = Copy::open(&config.root, &name)?;
            status.logs.lock().expect("mirror logs").push(MirroredLog {
                name: name.clone(),
                path: config.root.join(&name),
            });
            copies.insert(name, copy);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_status, thread_stop) = (status.clone(), stop.clone());
        let thread = crate::spawn_on_runtime("share-mirror", move || {
            mirror(config, copies, thread_status, thread_stop)
        })?;
        Ok(ShareMirror {
            thread: Some(thread),
            stop,
            status,
        })
    }

    pub fn status(&self) -> Arc<MirrorStatus> {
        self.status.clone()
    }
}

impl Drop for ShareMirror {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One log's copy and what the mirror knows of it.
struct Copy {
    log: MirrorLog,
    /// The log's stream (`share_stream_name`).
    stream_name: String,
    /// The log's stream as opened in this session; `None` until opened (its copy then
    /// follows it: `Copy::follow`), and again after a failed read.
    stream: Option<jetstream::stream::Stream>,
    /// When opening or reading the stream last failed, for the log's warnings.
    failed_at: Option<Instant>,
    /// Failures in a row, and when the log is tried again: a log whose stream cannot be
    /// read is tried less and less often (`MIRROR_LOG_RETRY_MAX_MS` at most), so it does
    /// not slow the turns of the others.
    failures: u32,
    retry_at: Option<Instant>,
    /// When the stream's identity was last checked (`MIRROR_STREAM_CHECK_MS`).
    checked_at: Option<Instant>,
    filter: String,
    /// The subject of the log's batches.
    subject: String,
    /// The copy's first record when this control plane last purged the stream below it,
    /// and when.
    purged_below: u64,
    purged_at: Option<Instant>,
    /// When its host last said something (or the mirror started).
    last_heard: Instant,
    /// Whether the silence has been logged.
    silent: bool,
    /// When the host bucket was last asked about this silent log's host.
    gone_checked_at: Option<Instant>,
}

impl Copy {
    fn open(root: &std::path::Path, name: &str) -> anyhow::Result<Self> {
        let (host, process) = name
            .split_once('.')
            .and_then(|(host, process)| Some((host, process.parse::<u32>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("{name} names no log"))?;
        Ok(Copy {
            log: MirrorLog::open(&root.join(name))
                .map_err(|error| anyhow::anyhow!("the copy of {name}: {error}"))?,
            stream_name: share_stream_name(host, process),
            stream: None,
            failed_at: None,
            failures: 0,
            retry_at: None,
            checked_at: None,
            filter: log_subjects(host, process),
            subject: share_subject(host, process),
            purged_below: 0,
            purged_at: None,
            last_heard: Instant::now(),
            silent: false,
            gone_checked_at: None,
        })
    }
}

impl Copy {
    /// Makes the copy count in the stream made at `epoch`, from its start if its position
    /// is in another stream or past this one's last message.
    fn follow(&mut self, name: &str, epoch: u64, last_sequence: u64) -> anyhow::Result<()> {
        let (stream, position) = (self.log.stream()?, self.log.position()?);
        if stream != epoch || position > last_sequence {
            if stream != 0 {
                tracing::warn!(log = %name, position, last_sequence, "the share stream was made anew: its copy is read again from the start");
            }
            self.log.follow_stream(epoch)?;
        }
        Ok(())
    }
}

async fn mirror(
    config: MirrorConfig,
    mut copies: BTreeMap<String, Copy>,
    status: Arc<MirrorStatus>,
    stop: Arc<AtomicBool>,
) {
    let mut failures_in_a_row = 0u64;
    while !stop.load(Relaxed) {
        let applied_before = status.messages.load(Relaxed);
        if let Err(error) = session(&config, &mut copies, &status, &stop).await {
            status.connected.store(false, Relaxed);
            status.failed_sessions.fetch_add(1, Relaxed);
            if status.messages.load(Relaxed) > applied_before {
                failures_in_a_row = 0;
            }
            if failures_in_a_row.is_multiple_of(60) {
                tracing::warn!(
                    error = format!("{error:#}"),
                    failures_in_a_row,
                    "share mirror: starting again"
                );
            }
            failures_in_a_row += 1;
            tokio::time::sleep(Duration::from_millis(MIRROR_RETRY_DELAY_MS)).await;
        }
    }
}

async fn session(
    config: &MirrorConfig,
    copies: &mut BTreeMap<String, Copy>,
    status: &MirrorStatus,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let client = crate::connect(&config.nats_urls, Some(MIRROR_REQUEST_TIMEOUT_MS)).await?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(MIRROR_REQUEST_TIMEOUT_MS));
    for copy in copies.values_mut() {
        copy.stream = None;
    }
    status.connected.store(true, Relaxed);
    let mut discovered_at: Option<Instant> = None;
    let mut cut_at: Option<Instant> = None;
    while !stop.load(Relaxed) {
        if discovered_at.is_none_or(|at| at.elapsed() >= Duration::from_millis(MIRROR_DISCOVER_MS))
        {
            discover(&context, &config.root, copies, status).await?;
            discovered_at = Some(Instant::now());
            status.discovered.store(true, Relaxed);
        }
        let mut applied = 0;
        for (name, copy) in copies.iter_mut() {
            if copy.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let caught_up = match read_log(&context, name, copy, status).await {
                Ok((read, caught_up)) => {
                    applied += read;
                    copy.failures = 0;
                    copy.retry_at = None;
                    caught_up
                }
                Err(error) => {
                    // This log waits, holding rounds back; the others go on. Its stream
                    // is opened again after a pause that grows while it keeps failing.
                    copy.stream = None;
                    copy.failures = copy.failures.saturating_add(1);
                    let pause_ms = MIRROR_LOG_RETRY_MIN_MS
                        .saturating_mul(1 << copy.failures.min(16).saturating_sub(1))
                        .min(MIRROR_LOG_RETRY_MAX_MS);
                    copy.retry_at = Some(Instant::now() + Duration::from_millis(pause_ms));
                    if copy
                        .failed_at
                        .is_none_or(|at| at.elapsed() >= Duration::from_millis(MIRROR_LOG_WARN_MS))
                    {
                        tracing::warn!(log = %name, error = format!("{error:#}"), "share mirror: cannot read this log's stream; trying again");
                        copy.failed_at = Some(Instant::now());
                    }
                    false
                }
            };
            if caught_up && copy.last_heard.elapsed() >= Duration::from_millis(MIRROR_LOG_SILENT_MS)
            {
                let now_ms = otedama_shared::clock::now_ms().saturating_sub(1);
                // Once a second at most: the copy's clock is a write, the look a request.
                let due = copy
                    .gone_checked_at
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                if due && now_ms >= copy.log.clock_ms()? + 1_000 && {
                    copy.gone_checked_at = Some(Instant::now());
                    host_gone(&context, name, copy.last_heard.elapsed()).await
                } {
                    if !copy.silent {
                        tracing::warn!(log = %name, silent_ms = MIRROR_LOG_SILENT_MS, "share log silent and its host gone: it no longer holds rounds back");
                        copy.silent = true;
                    }
                    let position = copy.log.position()?;
                    copy.log.apply_clock(now_ms, position)?;
                }
            }
        }
        if let Some(retention) = status.retention.get() {
            if cut_at
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(retention.pass_interval_ms))
            {
                cut_at = Some(Instant::now());
                cut(copies, retention, status).await;
            }
        }
        if applied == 0 {
            tokio::time::sleep(Duration::from_millis(MIRROR_IDLE_POLL_MS)).await;
        }
    }
    Ok(())
}

/// Reads up to `MIRROR_MESSAGES_PER_TURN` messages of one log into its copy, opening its
/// stream first if this session has not. How many were read, and whether the copy has
/// all the stream holds (only then may the log's silence count).
///
/// A stream that is not there is an error, so the log holds rounds back: the copy was
/// made when the stream was found, and a stream answered as missing may be one whose
/// replicas are electing a leader. A log's stream is therefore never deleted while a
/// control plane keeps its copy.
async fn read_log(
    context: &jetstream::Context,
    name: &str,
    copy: &mut Copy,
    status: &MirrorStatus,
) -> anyhow::Result<(usize, bool)> {
    if copy.stream.is_none() {
        let stream = match context.get_stream(&copy.stream_name).await {
            Ok(stream) => stream,
            Err(error) if stream_missing(&error) => {
                anyhow::bail!(
                    "{} is missing: this log holds rounds back",
                    copy.stream_name
                )
            }
            Err(error) => anyhow::bail!("opening {}: {error}", copy.stream_name),
        };
        let info = stream.cached_info();
        copy.follow(name, crate::stream_epoch(info), info.state.last_sequence)?;
        copy.checked_at = Some(Instant::now());
        copy.stream = Some(stream);
    }
    let stream = copy.stream.clone().expect("opened above");
    let mut read = 0;
    for _ in 0..MIRROR_MESSAGES_PER_TURN {
        let after = copy.log.position()?;
        let message = match stream
            .get_first_raw_message_by_subject(&copy.filter, after + 1)
            .await
        {
            Ok(message) => message,
            Err(error)
                if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                // Nothing after the copy's place. Now and then the stream is asked whether
                // it is still the one the copy follows: one made again under the same name
                // (or short of the copy's place) is read from its start.
                if copy
                    .checked_at
                    .is_none_or(|at| at.elapsed() >= Duration::from_millis(MIRROR_STREAM_CHECK_MS))
                {
                    copy.checked_at = Some(Instant::now());
                    let info = stream.get_info().await?;
                    let followed = copy.log.position()?;
                    copy.follow(name, crate::stream_epoch(&info), info.state.last_sequence)?;
                    if copy.log.position()? != followed {
                        return Ok((read, false));
                    }
                }
                return Ok((read, true));
            }
            Err(error) => anyhow::bail!("reading {}: {error}", copy.stream_name),
        };
        apply(name, copy, &message)?;
        read += 1;
        status.messages.fetch_add(1, Relaxed);
    }
    Ok((read, false))
}

/// Whether opening a stream failed because there is none of that name.
fn stream_missing(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(error)
            if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// One retention pass (see the module's doc): each copy is cut below its release point,
/// and when this control plane leads, the stream below each copy's first record. A
/// failure is logged and tried again on the next pass; mirroring goes on meanwhile.
async fn cut(copies: &mut BTreeMap<String, Copy>, retention: &Retention, status: &MirrorStatus) {
    let keep_from_ms = otedama_shared::clock::now_ms().saturating_sub(retention.keep_ms);
    let purges_stream = (retention.purges_stream)();
    for (name, copy) in copies.iter_mut() {
        let first = match cut_copy(name, &copy.log, retention, keep_from_ms, status) {
            Ok(Some(first)) => first,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(log = %name, %error, "cannot cut a share log's copy; trying again later");
                continue;
            }
        };
        // Every record before the copy's first was released here or never reached it
        // (the stream had lost it already): the stream may lose it too.
        let purged_lately = copy
            .purged_at
            .is_some_and(|at| at.elapsed() < Duration::from_millis(retention.purge_interval_ms));
        if !purges_stream || first <= copy.purged_below || purged_lately {
            continue;
        }
        // Purged only through a stream this session has opened and read from.
        let Some(stream) = copy.stream.clone() else {
            continue;
        };
        copy.purged_at = Some(Instant::now());
        match purge_below(&stream, &copy.subject, first).await {
            Ok(purged) => {
                copy.purged_below = first;
                status.purged_batches.fetch_add(purged, Relaxed);
                if purged > 0 {
                    tracing::debug!(log = %name, below = first, purged, "share stream purged");
                }
            }
            Err(error) => {
                tracing::warn!(log = %name, error = format!("{error:#}"), "cannot purge the share stream; trying again later")
            }
        }
    }
}

/// Cuts one copy below its release point; returns its first record after the cut, if it
/// holds any.
fn cut_copy(
    name: &str,
    log: &MirrorLog,
    retention: &Retention,
    keep_from_ms: u64,
    status: &MirrorStatus,
) -> anyhow::Result<Option<u64>> {
    let Some((first, last)) = log.record_range()? else {
        return Ok(None);
    };
    let Some(floor) = (retention.floor)(name, last + 1) else {
        return Ok(Some(first));
    };
    let Some(release) = log.release_point(floor, keep_from_ms)? else {
        return Ok(Some(first));
    };
    log.release_below(release)?;
    status
        .released_records
        .fetch_add(release.saturating_sub(first), Relaxed);
    Ok(log.record_range()?.map(|(first, _)| first))
}

/// Purges `subject`'s batches whose records all lie before `release`, never its last batch
/// (the shipper's place); returns how many went. A binary search over stream sequences
/// finds the first batch to keep, since a log's batches hold ever higher records: about
/// log2(stream length) requests, whatever the stream holds.
async fn purge_below(
    stream: &jetstream::stream::Stream,
    subject: &str,
    release: u64,
) -> anyhow::Result<u64> {
    let released = |message: &jetstream::message::StreamMessage| {
        decode_batch(&message.payload)
            .ok()
            .and_then(|records| records.last().map(|(sequence, _)| *sequence < release))
            .unwrap_or(false)
    };
    let first = match stream.get_first_raw_message_by_subject(subject, 1).await {
        Ok(message) => message,
        Err(error)
            if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            return Ok(0)
        }
        Err(error) => anyhow::bail!("reading {subject}'s first batch: {error}"),
    };
    if !released(&first) {
        return Ok(0);
    }
    let last = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .map_err(|error| anyhow::anyhow!("reading {subject}'s last batch: {error}"))?
        .sequence;
    // Invariants: every batch of the subject at or before `below` is released; `keep` is
    // the last batch or one not released; the subject has no batch in [bound, keep).
    let (mut below, mut bound, mut keep) = (first.sequence, last, last);
    while below + 1 < bound {
        let middle = below + (bound - below) / 2;
        let message = stream
            .get_first_raw_message_by_subject(subject, middle)
            .await
            .map_err(|error| anyhow::anyhow!("reading {subject} from {middle}: {error}"))?;
        if message.sequence >= bound {
            bound = middle;
        } else if released(&message) {
            below = message.sequence;
        } else {
            keep = message.sequence;
            bound = middle;
        }
    }
    let response = stream
        .purge()
        .filter(subject)
        .sequence(keep)
        .await
        .map_err(|error| anyhow::anyhow!("purging {subject} below {keep}: {error}"))?;
    Ok(response.purged)
}

/// Whether a silent log's host is gone: it holds no claim in the host bucket
/// (`crate::host`), or has been silent for `MIRROR_LOG_SILENT_WITH_LEASE_MS` while
/// holding one (its shipper stopped for good: a log at odds with the stream). A host that
/// holds its claim still takes shares, which it will ship, so its log holds rounds back.
async fn host_gone(context: &jetstream::Context, name: &str, silent_for: Duration) -> bool {
    if silent_for >= Duration::from_millis(MIRROR_LOG_SILENT_WITH_LEASE_MS) {
        return true;
    }
    let Some((host, process)) = name
        .split_once('.')
        .and_then(|(host, process)| Some((host, process.parse::<u32>().ok()?)))
    else {
        return true;
    };
    let bucket = match context.get_key_value(crate::host::HOST_BUCKET).await {
        Ok(bucket) => bucket,
        // No bucket: no host has ever claimed a slot.
        Err(_) => return true,
    };
    match bucket.entry(crate::host::name_key(host, process)).await {
        Ok(Some(entry)) => entry.operation != jetstream::kv::Operation::Put,
        Ok(None) => true,
        // Unknown: the log keeps holding rounds back until the bucket answers.
        Err(_) => false,
    }
}

/// Opens a copy for every log that has a share stream and no copy yet.
async fn discover(
    context: &jetstream::Context,
    root: &std::path::Path,
    copies: &mut BTreeMap<String, Copy>,
    status: &MirrorStatus,
) -> anyhow::Result<()> {
    let mut names = context.stream_names();
    let mut found = Vec::new();
    while let Some(name) = names.next().await {
        let name = name?;
        // Its shippers' shares are not in the streams read here; moving on without them
        // (a silent log's clock moved to now) would cut rounds short of them.
        anyhow::ensure!(
            name != LEGACY_SHARE_STREAM,
            "the cluster still has the stream {LEGACY_SHARE_STREAM}, which every log shared before a stream per log: nothing is read until it is gone (see the README's upgrade steps)"
        );
        if let Some((host, process)) = parse_share_stream_name(&name) {
            found.push((
                format!("{host}.{process}"),
                share_subject(&host, process),
                name,
            ));
        }
    }
    found.sort();
    for (name, subject, stream_name) in found {
        if copies.contains_key(&name) {
            continue;
        }
        // A log counts from its first batch, as it did when a stream's subjects were
        // listed: a stream made by a shipper that has shipped nothing yet holds no round
        // back.
        // One that cannot be read now is looked at again on the next pass.
        let Ok(stream) = context.get_stream(&stream_name).await else {
            continue;
        };
        if stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_err()
        {
            continue;
        }
        let copy = Copy::open(root, &name)?;
        tracing::info!(log = %name, "share log found in the cluster: mirrored from now on");
        copies.insert(name.clone(), copy);
        status.logs.lock().expect("mirror logs").push(MirroredLog {
            path: root.join(&name),
            name,
        });
    }
    Ok(())
}

/// Writes one message into its log's copy: a batch's records, or the log's clock.
fn apply(
    name: &str,
    copy: &mut Copy,
    message: &jetstream::message::StreamMessage,
) -> anyhow::Result<()> {
    let subject = message.subject.as_str();
    if subject.starts_with("otedama.shares.") {
        match decode_batch(&message.payload) {
            Ok(records) => {
                let encoded: Vec<(u64, Vec<u8>)> = records
                    .into_iter()
                    .map(|(sequence, record)| (sequence, record.encode()))
                    .collect();
                copy.log.apply_records(&encoded, message.sequence)?;
            }
            Err(error) => {
                // Not a batch of ours: stepped over (its place kept), never a reason to
                // stop reading the log.
                tracing::error!(log = %name, sequence = message.sequence, %error, "a message in the share stream is not a share batch: skipped");
                copy.log.apply_clock(0, message.sequence)?;
                return Ok(());
            }
        }
    } else {
        match decode_clock(&message.payload) {
            Some(clock_ms) => copy.log.apply_clock(clock_ms, message.sequence)?,
            None => copy.log.apply_clock(0, message.sequence)?,
        }
    }
    copy.last_heard = Instant::now();
    if copy.silent {
        tracing::info!(log = %name, "share log heard from again");
        copy.silent = false;
    }
    Ok(())
}
