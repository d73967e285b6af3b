//! The share shipper: copies one data-plane process's share log into a replicated
//! JetStream stream of its own (`share_stream_name`: `OTEDAMA_SHARES_HOST_PROCESS`), on
//! the subject `otedama.shares.HOST.PROCESS`. One stream per log, so the writes of a
//! cluster's logs spread over the stream leaders the servers elect (each stream is a
//! replication group of its own) instead of all going through one.
//!
//! The local share log stays the first durable stage (a miner's `true` still waits for
//! it); the shipper follows it as a RocksDB secondary (`ShareLogTail`) and publishes its
//! records in batches of at most `SHARES_PER_BATCH_MAX` records and `SHARE_BATCH_BYTES_MAX`
//! bytes, one batch at a time, each acknowledged by the stream (after its replicas'
//! quorum has it) before the next goes.
//!
//! Invariant: every record of the log reaches the stream exactly once, in log order.
//! - The shipper keeps no cursor of its own: after a start or any failure it reads where
//!   to go on from the stream (the last batch on its subject) and follows the log from the
//!   record after it. A batch the stream took whose acknowledgement was lost is therefore
//!   not sent again.
//! - Each batch's message id names its first record (`message_id`: host, process, first
//!   sequence). A batch proposed before a failure whose fate the shipper could not learn
//!   (no quorum, a lost acknowledgement) and a batch sent after it from the same record
//!   carry the same id, whatever their lengths, so the stream keeps only the first within
//!   its duplicate window; an acknowledgement that says `duplicate` makes the shipper read
//!   its place again. (nats-server before 2.9.21 checks the header below only against
//!   batches already stored, not against one still being replicated: this id is what
//!   covers that case there.)
//! - Each batch names the stream sequence of the batch before it on its subject
//!   (`Nats-Expected-Last-Subject-Sequence`), so a batch that would follow anything but
//!   the batch the shipper last saw is refused and the shipper reads its place again.
//! - On resuming, the shipper reads the log from the stream's last record, not after it,
//!   and goes on only if the log holds that very record. A log that lost records the
//!   stream has (a power loss with `share_log_sync` off, a data directory wiped, a second
//!   host under the same name) would otherwise reuse their numbers for new shares, which
//!   would never be shipped. It stops shipping that log instead (`ShipperStatus::diverged`
//!   and an error in the log) until an operator looks; the local log keeps every share,
//!   and the data plane takes no miner while its shipper has stopped so (`Core::admit`):
//!   in cluster mode only shipped shares are counted.
//!
//! The shipper also publishes the log's clock (`clock_subject`): a time T such that every
//! record of the log stamped at or before T is in the stream before the clock message.
//! It is sent only once every record the shipper has read is acknowledged, at most every
//! `SHIP_CLOCK_INTERVAL_MS`, and rolls up the one before it, so the subject holds one
//! message. A reader of the stream (`crate::mirror`) thereby knows how far in time it
//! has read each log, even one with no share for a while, as a local reader knows from
//! the log's own clock.
//!
//! Each stream is created with no limits: the shipper's place is the subject's last batch,
//! so a retention policy must keep at least that one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream;
use bytes::{BufMut, Bytes, BytesMut};

use otedama_shared::ShareRecord;
use otedama_sharelog::tail::ShareLogTail;

/// The beginning of every share stream's name (`share_stream_name`).
pub const SHARE_STREAM_PREFIX: &str = "OTEDAMA_SHARES_";
/// The one stream every log shared before a stream per log. No log's stream can be made
/// beside it (its subjects cover theirs), and the control planes' mirrors read nothing
/// while it exists: its shares are in no stream they read.
pub const LEGACY_SHARE_STREAM: &str = "OTEDAMA_SHARES";
const SHARE_SUBJECT_PREFIX: &str = "otedama.shares";
const CLOCK_SUBJECT_PREFIX: &str = "otedama.clocks";
/// Least time between two clock messages of one log.
pub const SHIP_CLOCK_INTERVAL_MS: u64 = 1_000;
/// Records in one batch at most: one share-log group commit is at most 4,096 too.
pub const SHARES_PER_BATCH_MAX: usize = 4096;
/// Bytes of one batch's payload at most, below NATS's default 1 MiB message limit.
pub const SHARE_BATCH_BYTES_MAX: usize = 512 * 1024;
/// How long a batch waits for the stream's acknowledgement (and any JetStream request for
/// its answer) before the shipper takes the connection for broken and reads its place
/// again.
pub const SHIP_ACK_TIMEOUT_MS: u64 = 10_000;
/// Failed sessions in a row between two warnings while the cluster stays unreachable.
const FAILURES_PER_WARNING: u64 = 60;
/// Pause before a new session after a failed one.
pub const SHIP_RETRY_DELAY_MS: u64 = 500;
/// Pause between looks at a log with nothing new.
const SHIP_IDLE_POLL_MS: u64 = 20;
/// How long a session reads the log again when it comes back empty before the stream's
/// last record of it is found, before taking the log for one that lost it.
const LOG_CHECK_WAIT_MS: u64 = 3_000;
/// The stream's duplicate window (the message ids' reach).
const SHARE_STREAM_DUPLICATE_WINDOW_S: u64 = 120;
const BATCH_FORMAT_VERSION: u8 = 1;
/// Per record: sequence (8 bytes) and length (4).
const RECORD_HEADER_BYTES: usize = 12;
/// Version (1) and record count (4).
const BATCH_HEADER_BYTES: usize = 5;

/// The stream of one process's log: its batches and its clock. `host` must be a subject
/// token (`ShipperConfig::validate`), which is also a valid stream name.
pub fn share_stream_name(host: &str, process: u32) -> String {
    format!("{SHARE_STREAM_PREFIX}{host}_{process}")
}

/// The host and process a share stream's name names, if it is one `share_stream_name`
/// makes (a host may hold `_`; the process is the digits after the last one).
pub fn parse_share_stream_name(name: &str) -> Option<(String, u32)> {
    let (host, process) = name.strip_prefix(SHARE_STREAM_PREFIX)?.rsplit_once('_')?;
    if !otedama_shared::ipc::is_cluster_host_name(host) {
        return None;
    }
    let process: u32 = process.parse().ok()?;
    // One name per log: `+1` or `01` would parse to a process another name has.
    (share_stream_name(host, process) == name).then(|| (host.to_string(), process))
}

/// The subject one process's batches go to. `host` must be a subject token
/// (`ShipperConfig::validate`).
pub fn share_subject(host: &str, process: u32) -> String {
    format!("{SHARE_SUBJECT_PREFIX}.{host}.{process}")
}

/// The subject one process's log clock goes to (see the module's doc).
pub fn clock_subject(host: &str, process: u32) -> String {
    format!("{CLOCK_SUBJECT_PREFIX}.{host}.{process}")
}

/// Both of one process's subjects, batches and clock, in one filter.
pub fn log_subjects(host: &str, process: u32) -> String {
    format!("otedama.*.{host}.{process}")
}

/// The host and process a share subject names.
pub fn parse_share_subject(subject: &str) -> Option<(String, u32)> {
    let rest = subject
        .strip_prefix(SHARE_SUBJECT_PREFIX)?
        .strip_prefix('.')?;
    let (host, process) = rest.split_once('.')?;
    if !otedama_shared::ipc::is_cluster_host_name(host) {
        return None;
    }
    Some((host.to_string(), process.parse().ok()?))
}

/// A clock message's payload: milliseconds, little-endian.
pub fn decode_clock(payload: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(payload).ok().map(u64::from_le_bytes)
}

/// One process's share stream, made by its shipper if missing, with both subjects and
/// roll-ups allowed.
pub async fn share_stream(
    context: &jetstream::Context,
    replicas: usize,
    host: &str,
    process: u32,
) -> anyhow::Result<jetstream::stream::Stream> {
    let config = jetstream::stream::Config {
        name: share_stream_name(host, process),
        subjects: vec![share_subject(host, process), clock_subject(host, process)],
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(SHARE_STREAM_DUPLICATE_WINDOW_S),
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        ..Default::default()
    };
    let name = config.name.clone();
    if context.get_stream(LEGACY_SHARE_STREAM).await.is_ok() {
        anyhow::bail!(
            "the cluster still has the stream {LEGACY_SHARE_STREAM}, which every log shared before a stream per log: {name} cannot be made beside it (see the README's upgrade steps)"
        );
    }
    let mut stream = context
        .get_or_create_stream(config.clone())
        .await
        .map_err(|error| anyhow::anyhow!("the share stream {name}: {error}"))?;
    let info = stream
        .info()
        .await
        .map_err(|error| anyhow::anyhow!("the share stream {name}: {error}"))?;
    if !info.config.allow_rollup || info.config.subjects != config.subjects {
        let mut updated = info.config.clone();
        updated.subjects = config.subjects;
        updated.allow_rollup = true;
        context
            .update_stream(updated)
            .await
            .map_err(|error| anyhow::anyhow!("updating the share stream {name}: {error}"))?;
    }
    Ok(stream)
}

/// A batch's message id: its origin and its first record's sequence (not its last: two
/// batches from the same record are the same batch to the stream; see the module's doc).
pub fn message_id(host: &str, process: u32, first: u64) -> String {
    format!("{host}:{process}:{first}")
}

/// A batch's payload: version, count, then each record's sequence, length and bytes (the
/// share log's own encoding), all little-endian.
pub fn encode_batch(records: &[(u64, Vec<u8>)]) -> Bytes {
    let bytes = BATCH_HEADER_BYTES
        + records
            .iter()
            .map(|(_, record)| RECORD_HEADER_BYTES + record.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(bytes);
    out.put_u8(BATCH_FORMAT_VERSION);
    out.put_u32_le(records.len() as u32);
    for (sequence, record) in records {
        out.put_u64_le(*sequence);
        out.put_u32_le(record.len() as u32);
        out.put_slice(record);
    }
    out.freeze()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("share batch of format {0}, not {BATCH_FORMAT_VERSION}")]
    Version(u8),
    #[error("share batch cut short")]
    Truncated,
    #[error("share batch with bytes after its last record")]
    Trailing,
    #[error("share batch with no record")]
    Empty,
    #[error("share batch whose sequences do not rise")]
    Order,
    #[error("share record {0} unreadable")]
    Record(u64),
}

/// Reads a batch `encode_batch` made; every fault of a foreign or damaged payload is an
/// error, never a panic.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<(u64, ShareRecord)>, BatchError> {
    let (&version, rest) = payload.split_first().ok_or(BatchError::Truncated)?;
    if version != BATCH_FORMAT_VERSION {
        return Err(BatchError::Version(version));
    }
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or(BatchError::Truncated)?;
    let count = u32::from_le_bytes(*count) as usize;
    if count == 0 {
        return Err(BatchError::Empty);
    }
    // Each record takes at least its header, so a count the payload cannot hold is refused
    // before anything is reserved for it.
    if count > rest.len() / RECORD_HEADER_BYTES {
        return Err(BatchError::Truncated);
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let (sequence, after) = rest.split_first_chunk::<8>().ok_or(BatchError::Truncated)?;
        let (length, after) = after
            .split_first_chunk::<4>()
            .ok_or(BatchError::Truncated)?;
        let sequence = u64::from_le_bytes(*sequence);
        let length = u32::from_le_bytes(*length) as usize;
        if after.len() < length {
            return Err(BatchError::Truncated);
        }
        let (record, after) = after.split_at(length);
        if records
            .last()
            .is_some_and(|(previous, _)| *previous >= sequence)
        {
            return Err(BatchError::Order);
        }
        let record = ShareRecord::decode(record).map_err(|_| BatchError::Record(sequence))?;
        records.push((sequence, record));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(BatchError::Trailing);
    }
    Ok(records)
}

/// What one shipper needs.
#[derive(Clone, Debug)]
pub struct ShipperConfig {
    /// `nats://HOST:PORT` of one or more servers of the cluster.
    pub nats_urls: Vec<String>,
    /// This host's name in the cluster: letters, digits, `-` and `_`.
    pub host: String,
    /// The data-plane process whose log this is (its index on the host).
    pub process: u32,
    /// The process's share log (the primary's directory).
    pub share_log: PathBuf,
    /// A directory of the shipper's own for its secondary instance.
    pub tail_dir: PathBuf,
    /// Copies the stream keeps (1 to 5; 3 on a three-server cluster).
    pub replicas: usize,
}

impl ShipperConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !otedama_shared::ipc::is_cluster_host_name(&self.host) {
            anyhow::bail!(
                "host name {:?} must be letters, digits, '-' and '_' only, at most 64 bytes (a NATS subject token)",
                self.host
            );
        }
        if !(1..=5).contains(&self.replicas) {
            anyhow::bail!("stream replicas must be 1 to 5, not {}", self.replicas);
        }
        crate::server_addresses(&self.nats_urls)?;
        Ok(())
    }
}

/// How far a shipper has come, shared with whoever watches it (metrics, tests).
#[derive(Debug, Default)]
pub struct ShipperStatus {
    /// Every record below this sequence is in the stream, and the log holds the stream's
    /// last record of it (a log that lost records never moves this on).
    pub shipped_through: AtomicU64,
    /// Batches the stream acknowledged.
    pub batches: AtomicU64,
    /// Sessions that failed and were started again.
    pub failed_sessions: AtomicU64,
    /// Whether the current session is connected and knows its place.
    pub connected: AtomicBool,
    /// The log does not hold the stream's last record of it: shipping has stopped for an
    /// operator to look (see the module's doc).
    pub diverged: AtomicBool,
    /// The shipper's thread has ended (stopped, or failed): nothing more will be shipped
    /// by this shipper.
    pub ended: AtomicBool,
    /// Rung by whoever waits for a record to be shipped (`wake`): the shipper then reads
    /// the log at once instead of after its idle pause.
    log_grew: tokio::sync::Notify,
}

impl ShipperStatus {
    /// Tells an idle shipper that the log holds records someone waits on (with
    /// `share_ack = "replicated"`, a miner's acknowledgement). Cheap; from any thread.
    pub fn wake(&self) {
        self.log_grew.notify_one();
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// Worth another session: the cluster, the connection, an acknowledgement.
    #[error(transparent)]
    Retry(#[from] anyhow::Error),
    /// Not worth another: the log and the stream disagree.
    #[error("{0}")]
    Diverged(String),
}

/// The shipper's thread and its controls.
pub struct ShareShipper {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    status: Arc<ShipperStatus>,
}

impl ShareShipper {
    /// Starts shipping on a thread of its own (a current-thread tokio runtime: the data
    /// plane's cores run glommio, which the NATS client cannot use).
    pub fn start(config: ShipperConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(ShipperStatus::default());
        let (thread_stop, thread_status) = (stop.clone(), status.clone());
        let ended = EndedGuard(status.clone());
        let thread =
            crate::spawn_on_runtime(format!("share-ship-{}", config.process), move || {
                ship(config, thread_status, thread_stop, ended)
            })?;
        Ok(ShareShipper {
            thread: Some(thread),
            stop,
            status,
        })
    }

    pub fn status(&self) -> Arc<ShipperStatus> {
        self.status.clone()
    }

    /// Stops after the batch under way (its acknowledgement waited for, at most
    /// `SHIP_ACK_TIMEOUT_MS`) and waits for the thread. What is not shipped yet is shipped
    /// by the next shipper of this log, from the stream's last batch.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ShareShipper {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Marks the shipper ended however its thread ends, so that nobody waits on it
/// (`ShipperStatus::ended`): held by the thread's task, it is dropped when the task
/// returns or panics, and with the task itself if the thread could not build its runtime.
struct EndedGuard(Arc<ShipperStatus>);

impl Drop for EndedGuard {
    fn drop(&mut self) {
        self.0.connected.store(false, Relaxed);
        self.0.ended.store(true, Relaxed);
    }
}

async fn ship(
    config: ShipperConfig,
    status: Arc<ShipperStatus>,
    stop: Arc<AtomicBool>,
    _ended: EndedGuard,
) {
    let mut failures_in_a_row = 0u64;
    loop {
        let shipped_before = status.batches.load(Relaxed);
        match session(&config, &status, &stop).await {
            Ok(()) => return,
            Err(SessionError::Diverged(why)) => {
                status.connected.store(false, Relaxed);
                status.diverged.store(true, Relaxed);
                tracing::error!(
                    process = config.process,
                    why,
                    "share shipper stopped: the share log and the stream disagree; the log keeps every share, and nothing more is shipped from it until an operator looks"
                );
                return;
            }
            Err(SessionError::Retry(error)) => {
                status.connected.store(false, Relaxed);
                status.failed_sessions.fetch_add(1, Relaxed);
                if status.batches.load(Relaxed) > shipped_before {
                    failures_in_a_row = 0;
                }
                if failures_in_a_row.is_multiple_of(FAILURES_PER_WARNING) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        failures_in_a_row,
                        "share shipper: reading its place again"
                    );
                }
                failures_in_a_row += 1;
                if stop.load(Relaxed) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(SHIP_RETRY_DELAY_MS)).await;
            }
        }
    }
}

/// The stream's last record of this log and the stream sequence of its batch, if any.
async fn last_shipped(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<(Option<(u64, Vec<u8>)>, u64), SessionError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let records = decode_batch(&message.payload).map_err(|error| {
                SessionError::Diverged(format!(
                    "the last message on {subject} is not a share batch: {error}"
                ))
            })?;
            let (last, record) = records.last().expect("a decoded batch holds records");
            Ok((Some((*last, record.encode())), message.sequence))
        }
        Err(error)
            if matches!(
                error.kind(),
                jetstream::stream::LastRawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok((None, 0))
        }
        Err(error) => Err(anyhow::anyhow!("reading the last batch of {subject}: {error}").into()),
    }
}

/// One connection: find the place in the stream, check the log still holds it, then ship
/// until stopped or failed.
async fn session(
    config: &ShipperConfig,
    status: &ShipperStatus,
    stop: &AtomicBool,
) -> Result<(), SessionError> {
    let client = crate::connect(&config.nats_urls, Some(SHIP_ACK_TIMEOUT_MS)).await?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(SHIP_ACK_TIMEOUT_MS));
    let stream = share_stream(&context, config.replicas, &config.host, config.process).await?;
    let subject = share_subject(&config.host, config.process);
    let clock = clock_subject(&config.host, config.process);
    let mut clock_sent_ms = 0u64;
    let mut clock_sent_at: Option<std::time::Instant> = None;
    // When a read first came back empty while the stream's last record was still to be
    // found in the log: the re-reads are counted from there.
    let mut first_empty_read: Option<std::time::Instant> = None;
    let (mut to_check, mut last_on_subject) = last_shipped(&stream, &subject).await?;
    let mut next_sequence = match &to_check {
        Some((last, _)) => last.checked_add(1).ok_or_else(|| {
            SessionError::Diverged(format!("the last record on {subject} is numbered {last}"))
        })?,
        None => 0,
    };
    if to_check.is_none() {
        // Nothing of this log in the stream yet: nothing to check.
        status.shipped_through.store(next_sequence, Relaxed);
    } else {
        // A stream that lost its last batches (every server's power at once) ends lower
        // than a former session saw: the figure never claims more than the stream holds.
        status.shipped_through.fetch_min(next_sequence, Relaxed);
    }
    status.connected.store(true, Relaxed);
    tracing::info!(%subject, next_sequence, "share shipper: shipping");
    // Read from the last shipped record itself, to check that the log still holds it.
    let mut tail = ShareLogTail::new(
        config.process,
        config.share_log.clone(),
        config.tail_dir.clone(),
        Some(to_check.as_ref().map_or(0, |(last, _)| *last)),
        0,
    );
    loop {
        if stop.load(Relaxed) {
            return Ok(());
        }
        // Every record read so far is acknowledged here (the last poll's were shipped
        // below before this turn), so the tail's clock holds for the stream.
        let through_ms = tail.written_through_ms();
        if to_check.is_none()
            && through_ms > clock_sent_ms
            && clock_sent_at
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(SHIP_CLOCK_INTERVAL_MS))
        {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_ROLLUP, "sub");
            let ack = context
                .publish_with_headers(
                    clock.clone(),
                    headers,
                    Bytes::copy_from_slice(&through_ms.to_le_bytes()),
                )
                .await
                .map_err(anyhow::Error::from)?;
            tokio::time::timeout(Duration::from_millis(SHIP_ACK_TIMEOUT_MS), ack)
                .await
                .map_err(|_| anyhow::anyhow!("no acknowledgement within {SHIP_ACK_TIMEOUT_MS} ms"))?
                .map_err(anyhow::Error::from)?;
            clock_sent_ms = through_ms;
            clock_sent_at = Some(std::time::Instant::now());
        }
        let mut read = tail.poll().map_err(anyhow::Error::from)?;
        if let Some((last, shipped)) = to_check.take() {
            match read.first() {
                None if first_empty_read
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    < Duration::from_millis(LOG_CHECK_WAIT_MS) =>
                {
                    // A read can come back empty short of records the log holds (a
                    // catch-up that met a WAL file being retired stops at the gap it
                    // saw): read again before calling the log short.
                    to_check = Some((last, shipped));
                    tokio::time::sleep(Duration::from_millis(SHIP_IDLE_POLL_MS)).await;
                    continue;
                }
                None => {
                    // The log (open before the shipper starts, and read to its end) ends
                    // before that record: it lost records the stream has, and its next
                    // shares would reuse their numbers. Found within `LOG_CHECK_WAIT_MS`
                    // of the first empty read. With `share_ack = "replicated"` no share of
                    // this log is acknowledged meanwhile; with acks local, the few taken
                    // before this stay in the local log only, for the operator.
                    return Err(SessionError::Diverged(format!(
                        "the stream's last record of this log is number {last}, past the log's end"
                    )));
                }
                Some((sequence, record))
                    if *sequence == last
                        && ShareRecord::decode(&shipped).is_ok_and(|s| s.same_share(record)) =>
                {
                    read.remove(0);
                    // Only now, with the log known to hold the stream's last record of
                    // it: set before, a log that lost records would have its new shares,
                    // numbered as the lost ones, taken for shipped (a `share_ack =
                    // "replicated"` acknowledgement waits on this figure).
                    status.shipped_through.store(next_sequence, Relaxed);
                }
                Some((sequence, _)) => {
                    let holds = if *sequence == last {
                        "holds with other contents"
                    } else {
                        "does not hold"
                    };
                    return Err(SessionError::Diverged(format!(
                        "the stream's last record of this log is number {last}, which the log {holds} (it reads {sequence} there)"
                    )));
                }
            }
        }
        if read.is_empty() {
            let _ = tokio::time::timeout(
                Duration::from_millis(SHIP_IDLE_POLL_MS),
                status.log_grew.notified(),
            )
            .await;
            continue;
        }
        let mut pending = read
            .into_iter()
            .map(|(sequence, record)| (sequence, record.encode()))
            .peekable();
        while pending.peek().is_some() {
            if stop.load(Relaxed) {
                return Ok(());
            }
            let mut batch = Vec::new();
            let mut bytes = BATCH_HEADER_BYTES;
            while let Some((_, record)) = pending.peek() {
                let size = RECORD_HEADER_BYTES + record.len();
                if batch.len() == SHARES_PER_BATCH_MAX
                    || (!batch.is_empty() && bytes + size > SHARE_BATCH_BYTES_MAX)
                {
                    break;
                }
                bytes += size;
                batch.push(pending.next().expect("peeked"));
            }
            let (first, last) = (batch[0].0, batch[batch.len() - 1].0);
            debug_assert!(first >= next_sequence, "the log is followed forward only");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                message_id(&config.host, config.process, first).as_str(),
            );
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                last_on_subject.to_string().as_str(),
            );
            let ack = context
                .publish_with_headers(subject.clone(), headers, encode_batch(&batch))
                .await
                .map_err(anyhow::Error::from)?;
            let ack = tokio::time::timeout(Duration::from_millis(SHIP_ACK_TIMEOUT_MS), ack)
                .await
                .map_err(|_| anyhow::anyhow!("no acknowledgement within {SHIP_ACK_TIMEOUT_MS} ms"))?
                .map_err(anyhow::Error::from)?;
            if ack.duplicate {
                // A batch from the same record is in the stream already, sent before a
                // failure; it may end before or after this one. Its end is the place.
                return Err(anyhow::anyhow!(
                    "a batch from record {first} was in the stream already"
                )
                .into());
            }
            last_on_subject = ack.sequence;
            next_sequence = last + 1;
            status.shipped_through.store(next_sequence, Relaxed);
            status.batches.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job_id: u64) -> ShareRecord {
        ShareRecord {
            accepted_at_ms: 1_700_000_000_000 + job_id,
            job_id,
            height: 7,
            worker: format!("addr.rig{job_id}"),
            difficulty: 1.5,
            achieved_difficulty: 3.0,
            is_block: job_id.is_multiple_of(2),
            header: [job_id as u8; 80],
            extranonce1: vec![1, 2, 3, 4],
            extranonce2: vec![5, 6, 7, 8],
            protocol: None,
        }
    }

    /// Each log has one stream name and each name one log; a name of anything else, or
    /// another spelling of a process number, names none.
    #[test]
    fn a_share_stream_name_names_one_log() {
        for (host, process) in [("dp-1", 0u32), ("a_b", 12), ("h", u32::MAX)] {
            let name = share_stream_name(host, process);
            assert_eq!(
                parse_share_stream_name(&name),
                Some((host.to_string(), process))
            );
        }
        for name in [
            "OTEDAMA_SHARES",
            "OTEDAMA_SHARES_",
            "OTEDAMA_SHARES_dp",
            "OTEDAMA_SHARES_dp_",
            "OTEDAMA_SHARES__1",
            "OTEDAMA_SHARES_dp_01",
            "OTEDAMA_SHARES_dp_+1",
            "OTEDAMA_SHARES_d.p_1",
            "OTEDAMA_SHARES_dp_4294967296",
            "OTEDAMA_JOBS",
        ] {
            assert_eq!(parse_share_stream_name(name), None, "{name}");
        }
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let records: Vec<(u64, Vec<u8>)> = [3u64, 4, 9]
            .iter()
            .map(|sequence| (*sequence, record(*sequence).encode()))
            .collect();
        let decoded = decode_batch(&encode_batch(&records)).unwrap();
        assert_eq!(decoded.len(), 3);
        for ((sequence, record), (expected_sequence, bytes)) in decoded.iter().zip(&records) {
            assert_eq!(sequence, expected_sequence);
            assert_eq!(&record.encode(), bytes);
        }
    }

    /// Every cut of a good batch, a wrong version, a count the payload cannot hold,
    /// trailing bytes, falling sequences and a damaged record are errors, not panics.
    #[test]
    fn every_damaged_batch_is_refused() {
        let records: Vec<(u64, Vec<u8>)> = (0..3)
            .map(|sequence| (sequence, record(sequence).encode()))
            .collect();
        let good = encode_batch(&records);
        for cut in 0..good.len() {
            assert!(decode_batch(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_version = good.to_vec();
        wrong_version[0] = 2;
        assert_eq!(decode_batch(&wrong_version), Err(BatchError::Version(2)));
        let mut huge_count = good.to_vec();
        huge_count[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_batch(&huge_count), Err(BatchError::Truncated));
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(decode_batch(&trailing), Err(BatchError::Trailing));
        assert_eq!(decode_batch(&encode_batch(&[])), Err(BatchError::Empty));
        let falling = encode_batch(&[records[1].clone(), records[0].clone()]);
        assert_eq!(decode_batch(&falling), Err(BatchError::Order));
        let damaged = encode_batch(&[(5, vec![0xff; 10])]);
        assert_eq!(decode_batch(&damaged), Err(BatchError::Record(5)));
    }

    #[test]
    fn a_host_name_must_be_one_subject_token() {
        let config = |host: &str| ShipperConfig {
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            host: host.into(),
            process: 0,
            share_log: PathBuf::new(),
            tail_dir: PathBuf::new(),
            replicas: 3,
        };
        assert!(config("dp-1_a").validate().is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b"] {
            assert!(config(bad).validate().is_err(), "{bad:?}");
        }
    }
}
