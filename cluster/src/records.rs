//! Cluster mode: the control plane's records that a standby must hold before it can lead,
//! in replicated streams keyed by subject: every block found and what became of it
//! (`RecordKind::Blocks`), every job built (`RecordKind::Jobs`), which a block share
//! names by id and which the block cannot be rebuilt without, and the operator's ban list
//! (`RecordKind::Bans`), which must not lapse when the leader changes.
//!
//! The leader publishes each record before it writes it itself (`RecordPublisher`); a
//! record the stream did not take is not written, so no control plane holds a record the
//! others cannot have. Every control plane follows the stream (`follow`) and writes the
//! records others published; its own it has. Each subject keeps only its newest message
//! (a block's latest state, a job's chunk), so the stream's size follows what is live.
//!
//! Invariant: `Leadership::leads` is true only once every follower has read its stream
//! to the end after this control plane's lease began; a former leader's last record
//! precedes that (it stops writing before the lease can lapse, see `crate::host`), so a
//! new leader never acts on blocks or jobs without every record the former one made.
//!
//! The ban list is published fenced (`RecordPublisher::publish_fenced`): one message, taken
//! only if the stream's last one of it is the one its publisher's list was made from, so
//! no publisher can replace a newer list with a change to an older one.
//!
//! A job may be larger than one NATS message (a template full of transactions): it goes
//! in chunks of `RECORD_CHUNK_BYTES`, one subject each, and a follower writes it once it
//! holds every chunk. A follower keeps where it stands (stream identity and position) in
//! a file, so a restart reads only what is new; writing a record again changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;

use crate::host::{monotonic_ms, LeaseStatus};

/// Bytes of one message's payload at most: half NATS's default 1 MiB message limit.
pub const RECORD_CHUNK_BYTES: usize = 512 * 1024;
/// Chunks of one record at most (32 MiB): above any block template a node can give.
pub const RECORD_CHUNKS_MAX: usize = 64;
/// Records a follower may hold in part at once (a leader killed mid-record leaves one);
/// the oldest is dropped for a new one past this.
pub const RECORDS_IN_PART_MAX: usize = 4;
/// Bytes the job stream keeps (each job's newest chunks; the oldest jobs go first).
pub const JOB_STREAM_BYTES_MAX: i64 = 256 * 1024 * 1024;
/// Messages the block stream keeps: one a block, the oldest blocks go first.
pub const BLOCK_STREAM_MESSAGES_MAX: i64 = 1_000_000;
/// How long one request to the stream may take.
const RECORD_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long a publisher's caller waits for the stream to take a record.
const RECORD_CALLER_WAIT_MS: u64 = 2 * RECORD_REQUEST_TIMEOUT_MS + 1_000;
const FOLLOW_IDLE_POLL_MS: u64 = 200;
const FOLLOW_RETRY_DELAY_MS: u64 = 1_000;
/// How long a control plane may hold the lease without having read the streams to their
/// end before it lets the lease go (`Leadership`): one that cannot (its disk full, the
/// streams out of its reach) must not keep a healthy standby from leading.
pub const LEAD_CATCH_UP_MAX_MS: u64 = 60_000;
/// How often a caught-up follower checks that the stream has not gone back behind it.
const FOLLOW_STREAM_CHECK_MS: u64 = 2_000;
/// The header naming the control plane that published a message.
const ORIGIN_HEADER: &str = "Otedama-Origin";
/// The header naming one publication of a record: chunks of two publications of the same
/// record are never put together.
const PUBLICATION_HEADER: &str = "Otedama-Publication";
/// The header giving the publisher's lease term (`LeaseStatus::term_revision`): a
/// follower passes over a record stamped with an older term than one it has read.
const TERM_HEADER: &str = "Otedama-Term";
/// The header giving how many chunks the record has.
const CHUNKS_HEADER: &str = "Otedama-Chunks";

/// Which records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Keyed by block hash (display hex); the payload is the block's record.
    Blocks,
    /// Keyed by job id (decimal); the payload is the stored job.
    Jobs,
    /// The operator's ban list, under one key (`BAN_LIST_KEY`); the payload is the list
    /// as JSON. Only the newest is kept, so a control plane started late, or a standby
    /// that takes over, enforces the list the last leader published.
    Bans,
}

/// The key of the operator's ban list in `RecordKind::Bans`.
pub const BAN_LIST_KEY: &str = "operator";
/// Messages the ban stream keeps: the chunks of one list at most (a full list of
/// `BANS_MAX` entries takes about 13).
pub const BAN_STREAM_MESSAGES_MAX: i64 = RECORD_CHUNKS_MAX as i64;

impl RecordKind {
    pub fn stream(self) -> &'static str {
        match self {
            RecordKind::Blocks => "OTEDAMA_BLOCKS",
            RecordKind::Jobs => "OTEDAMA_JOBS",
            RecordKind::Bans => "OTEDAMA_BANS",
        }
    }

    /// Whether the kind is published fenced (`RecordPublisher::publish_fenced`), so the
    /// stream's order is its only order. Its followers then write every record: their own
    /// process's too (its publisher writes it only from there, so a publication whose
    /// answer was lost is still enforced here as everywhere), and one of an older lease
    /// term (the fence already ordered it; passed over, it would stay the stream's last
    /// while no follower holds it).
    fn is_fenced(self) -> bool {
        matches!(self, RecordKind::Bans)
    }

    fn prefix(self) -> &'static str {
        match self {
            RecordKind::Blocks => "otedama.blocks",
            RecordKind::Jobs => "otedama.jobs",
            RecordKind::Bans => "otedama.bans",
        }
    }

    fn config(self, replicas: usize) -> jetstream::stream::Config {
        let mut config = jetstream::stream::Config {
            name: self.stream().to_string(),
            subjects: vec![format!("{}.>", self.prefix())],
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            max_messages_per_subject: 1,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        };
        match self {
            RecordKind::Blocks => config.max_messages = BLOCK_STREAM_MESSAGES_MAX,
            RecordKind::Jobs => config.max_bytes = JOB_STREAM_BYTES_MAX,
            RecordKind::Bans => config.max_messages = BAN_STREAM_MESSAGES_MAX,
        }
        config
    }
}

/// The subject of chunk `index` of record `key`.
fn chunk_subject(kind: RecordKind, key: &str, index: usize) -> String {
    format!("{}.{key}.{index}", kind.prefix())
}

/// A record key is one subject token: letters and digits only, so no key can name
/// another's subject.
fn is_record_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `(key, chunk index)` of a subject of `kind`'s stream.
fn parse_chunk_subject(kind: RecordKind, subject: &str) -> Option<(String, usize)> {
    let rest = subject.strip_prefix(kind.prefix())?.strip_prefix('.')?;
    let (key, index) = rest.split_once('.')?;
    (is_record_key(key)).then_some(())?;
    Some((key.to_string(), index.parse().ok()?))
}

/// The chunks a record of `bytes` bytes is sent in.
fn chunk_count(bytes: usize) -> usize {
    bytes.div_ceil(RECORD_CHUNK_BYTES).max(1)
}

/// What the publisher's thread is asked.
enum Request {
    /// Send the record; `fence`: only if the stream's last message of it (one message: a
    /// fenced record is never chunked) is at this sequence, 0 for none.
    Send {
        payload: Vec<u8>,
        fence: Option<u64>,
    },
    /// Read the stream's last message of the record.
    Look,
}

/// What the publisher's thread answers.
enum Answer {
    /// Taken, at this stream sequence (its last chunk's).
    Taken(u64),
    /// The last message of the record and its sequence, if any.
    Last(Option<(Vec<u8>, u64)>),
}

struct Publish {
    key: String,
    request: Request,
    reply: mpsc::Sender<Result<Answer, SendError>>,
    deadline: Instant,
}

/// Why a record was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// A fenced record whose fence did not hold: the stream's last message of it is at
    /// another sequence (someone published since, or the caller's copy is behind).
    Stale,
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Stale => write!(f, "the stream holds a newer record"),
            SendError::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// Who publishes: this control plane's id for this run (its own follower passes over
/// what it sent), and its lease (nothing is sent while it is not held).
#[derive(Clone)]
pub struct Publisher {
    pub origin: String,
    pub lease: Arc<LeaseStatus>,
}

/// The leader's side: publishes records and waits until the stream has every chunk.
#[derive(Clone)]
pub struct RecordPublisher {
    kind: RecordKind,
    requests: tokio::sync::mpsc::UnboundedSender<Publish>,
}

impl RecordPublisher {
    pub fn start(
        nats_urls: Vec<String>,
        replicas: usize,
        kind: RecordKind,
        publisher: Publisher,
    ) -> anyhow::Result<Self> {
        crate::server_addresses(&nats_urls)?;
        let (requests, incoming) = tokio::sync::mpsc::unbounded_channel::<Publish>();
        crate::spawn_on_runtime(format!("{}-out", kind.prefix()), move || {
            publish_loop(nats_urls, replicas, kind, publisher, incoming)
        })?;
        Ok(RecordPublisher { kind, requests })
    }

    /// Sends record `key`; `Ok` once the stream holds all of it.
    pub fn publish(&self, key: &str, payload: &[u8]) -> Result<(), String> {
        if chunk_count(payload.len()) > RECORD_CHUNKS_MAX {
            return Err(format!(
                "a {}-byte record is over the {} chunks of {RECORD_CHUNK_BYTES} bytes a record may have",
                payload.len(),
                RECORD_CHUNKS_MAX
            ));
        }
        let request = Request::Send {
            payload: payload.to_vec(),
            fence: None,
        };
        match self.ask(key, request) {
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Sends record `key` as one message, taken by the stream only if its last message of
    /// `key` is at `after_sequence` (0: it has none), atomically: a publisher whose copy
    /// is behind the stream, or a second publisher, cannot overwrite a newer record. The
    /// stream sequence it was taken at.
    pub fn publish_fenced(
        &self,
        key: &str,
        payload: &[u8],
        after_sequence: u64,
    ) -> Result<u64, SendError> {
        if payload.len() > RECORD_CHUNK_BYTES {
            return Err(SendError::Failed(format!(
                "a fenced record is one message of at most {RECORD_CHUNK_BYTES} bytes"
            )));
        }
        let request = Request::Send {
            payload: payload.to_vec(),
            fence: Some(after_sequence),
        };
        match self.ask(key, request)? {
            Answer::Taken(sequence) => Ok(sequence),
            Answer::Last(_) => Err(SendError::Failed("a send answered as a look".into())),
        }
    }

    /// The stream's last message of record `key` (whole only for a record of one message,
    /// as fenced ones are) and its sequence; `None` if it has none.
    pub fn last_message(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, String> {
        match self.ask(key, Request::Look) {
            Ok(Answer::Last(last)) => Ok(last),
            Ok(Answer::Taken(_)) => Err("a look answered as a send".into()),
            Err(error) => Err(error.to_string()),
        }
    }

    fn ask(&self, key: &str, request: Request) -> Result<Answer, SendError> {
        if !is_record_key(key) {
            return Err(SendError::Failed(format!("{key:?} is not a record key")));
        }
        let (reply, answer) = mpsc::channel();
        let deadline = Instant::now() + Duration::from_millis(RECORD_CALLER_WAIT_MS - 1_000);
        self.requests
            .send(Publish {
                key: key.to_string(),
                request,
                reply,
                deadline,
            })
            .map_err(|_| {
                SendError::Failed(format!("the {} publisher has ended", self.kind.stream()))
            })?;
        answer
            .recv_timeout(Duration::from_millis(RECORD_CALLER_WAIT_MS))
            .map_err(|_| {
                SendError::Failed(format!("no answer from the {} stream", self.kind.stream()))
            })?
    }
}

/// A data-plane host's side (cluster mode): reads whole records by key, as their
/// publisher's last publication has them, without following the stream. The host's block
/// relay reads the job a block was found on this way, so the host can build the block
/// and submit it itself.
#[derive(Clone)]
pub struct RecordReader {
    kind: RecordKind,
    requests: tokio::sync::mpsc::UnboundedSender<ReadRequest>,
}

struct ReadRequest {
    key: String,
    reply: mpsc::Sender<Result<Option<Vec<u8>>, String>>,
    deadline: Instant,
}

impl RecordReader {
    /// Starts the reader's thread; it connects at its first read. It never makes the
    /// stream: a record the leader never published is not there.
    pub fn start(nats_urls: Vec<String>, kind: RecordKind) -> anyhow::Result<Self> {
        crate::server_addresses(&nats_urls)?;
        let (requests, incoming) = tokio::sync::mpsc::unbounded_channel::<ReadRequest>();
        crate::spawn_on_runtime(format!("{}-read", kind.prefix()), move || {
            read_loop(nats_urls, kind, incoming)
        })?;
        Ok(RecordReader { kind, requests })
    }

    /// Record `key` whole; `None` if the stream has none of it. Gives up by `deadline`
    /// (between two chunks' requests, each of which may take `RECORD_REQUEST_TIMEOUT_MS`).
    pub fn read(&self, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, String> {
        if !is_record_key(key) {
            return Err(format!("{key:?} is not a record key"));
        }
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(ReadRequest {
                key: key.to_string(),
                reply,
                deadline,
            })
            .map_err(|_| format!("the {} reader has ended", self.kind.stream()))?;
        let wait = deadline.saturating_duration_since(Instant::now())
            + Duration::from_millis(RECORD_REQUEST_TIMEOUT_MS);
        answer
            .recv_timeout(wait)
            .map_err(|_| format!("no answer from the {} stream", self.kind.stream()))?
    }
}

async fn read_loop(
    nats_urls: Vec<String>,
    kind: RecordKind,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<ReadRequest>,
) {
    let mut opened: Option<jetstream::stream::Stream> = None;
    while let Some(request) = incoming.recv().await {
        if Instant::now() >= request.deadline {
            let _ = request.reply.send(Err("expired before it was read".into()));
            continue;
        }
        if opened.is_none() {
            match open_existing(&nats_urls, kind).await {
                Ok(stream) => opened = Some(stream),
                Err(error) => {
                    let _ = request.reply.send(Err(format!("{error:#}")));
                    continue;
                }
            }
        }
        let stream = opened.as_ref().expect("opened above");
        let result = read_whole(stream, kind, &request.key, request.deadline).await;
        if result.is_err() {
            // Open it again for the next one: this connection may be what failed.
            opened = None;
        }
        let _ = request.reply.send(result);
    }
}

async fn open_existing(
    nats_urls: &[String],
    kind: RecordKind,
) -> anyhow::Result<jetstream::stream::Stream> {
    let client = crate::connect(nats_urls, Some(RECORD_REQUEST_TIMEOUT_MS)).await?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(RECORD_REQUEST_TIMEOUT_MS));
    context
        .get_stream(kind.stream())
        .await
        .map_err(|error| anyhow::anyhow!("the {} stream: {error}", kind.stream()))
}

/// Every chunk of record `key`'s last publication, put together. Chunks of two
/// publications are never mixed: a chunk of another publication than chunk 0's (one under
/// way) makes the read fail, and its caller may read again.
async fn read_whole(
    stream: &jetstream::stream::Stream,
    kind: RecordKind,
    key: &str,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, String> {
    let mut whole = Vec::new();
    let mut publication = None;
    let mut chunks = 1;
    let mut index = 0;
    while index < chunks {
        if Instant::now() >= deadline {
            return Err(format!("record {key} not read in time"));
        }
        let message = match stream
            .get_last_raw_message_by_subject(&chunk_subject(kind, key, index))
            .await
        {
            Ok(message) => message,
            Err(error)
                if index == 0
                    && error.kind()
                        == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                return Ok(None)
            }
            Err(error) => {
                return Err(format!(
                    "reading chunk {index} of record {key} in {}: {error}",
                    kind.stream()
                ))
            }
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| AsRef::<str>::as_ref(value).to_string())
        };
        let this_publication = header(PUBLICATION_HEADER).unwrap_or_default();
        if index == 0 {
            chunks = header(CHUNKS_HEADER)
                .and_then(|text| text.parse::<usize>().ok())
                .filter(|count| (1..=RECORD_CHUNKS_MAX).contains(count))
                .ok_or_else(|| format!("record {key} has no valid chunk count"))?;
            publication = Some(this_publication);
        } else if publication.as_deref() != Some(this_publication.as_str()) {
            return Err(format!(
                "record {key} is being published again: its chunks are of two publications"
            ));
        }
        whole.extend_from_slice(&message.payload);
        index += 1;
    }
    Ok(Some(whole))
}

async fn connect(
    nats_urls: &[String],
    replicas: usize,
    kind: RecordKind,
) -> anyhow::Result<(jetstream::Context, jetstream::stream::Stream)> {
    let client = crate::connect(nats_urls, Some(RECORD_REQUEST_TIMEOUT_MS)).await?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(RECORD_REQUEST_TIMEOUT_MS));
    let stream = context
        .get_or_create_stream(kind.config(replicas))
        .await
        .map_err(|error| anyhow::anyhow!("the {} stream: {error}", kind.stream()))?;
    Ok((context, stream))
}

async fn publish_loop(
    nats_urls: Vec<String>,
    replicas: usize,
    kind: RecordKind,
    publisher: Publisher,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<Publish>,
) {
    let mut context: Option<(jetstream::Context, jetstream::stream::Stream)> = None;
    let mut publications = 0u64;
    while let Some(request) = incoming.recv().await {
        publications += 1;
        if Instant::now() >= request.deadline {
            let _ = request
                .reply
                .send(Err(SendError::Failed("expired before it was sent".into())));
            continue;
        }
        if context.is_none() {
            match connect(&nats_urls, replicas, kind).await {
                Ok(opened) => context = Some(opened),
                Err(error) => {
                    let _ = request
                        .reply
                        .send(Err(SendError::Failed(format!("{error:#}"))));
                    continue;
                }
            }
        }
        let (opened, stream) = context.as_ref().expect("connected above");
        let result = match &request.request {
            Request::Look => look(stream, kind, &request.key).await.map(Answer::Last),
            Request::Send { payload, fence } => send(
                opened,
                kind,
                &publisher,
                publications,
                &request,
                payload,
                *fence,
            )
            .await
            .map(Answer::Taken),
        };
        if matches!(result, Err(SendError::Failed(_))) {
            // Connect again for the next one: this connection may be what failed.
            context = None;
        }
        let _ = request.reply.send(result);
    }
}

/// The stream's last message of record `key` (its chunk 0) and its sequence.
async fn look(
    stream: &jetstream::stream::Stream,
    kind: RecordKind,
    key: &str,
) -> Result<Option<(Vec<u8>, u64)>, SendError> {
    match stream
        .get_last_raw_message_by_subject(&chunk_subject(kind, key, 0))
        .await
    {
        Ok(message) => Ok(Some((message.payload.to_vec(), message.sequence))),
        Err(error)
            if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            Ok(None)
        }
        Err(error) => Err(SendError::Failed(format!(
            "reading the {} stream: {error}",
            kind.stream()
        ))),
    }
}

/// Sends one record's chunks, each only while the lease is held and the caller still
/// waits (a former leader, or an answer given up on, sends nothing more); a fenced one
/// (one chunk) with the stream's check of its subject's last sequence. The sequence of
/// its last chunk.
async fn send(
    context: &jetstream::Context,
    kind: RecordKind,
    publisher: &Publisher,
    publication: u64,
    request: &Publish,
    payload: &[u8],
    fence: Option<u64>,
) -> Result<u64, SendError> {
    let key = request.key.as_str();
    let failed = |why: String| SendError::Failed(why);
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(RECORD_CHUNK_BYTES).collect()
    };
    if fence.is_some() && chunks.len() != 1 {
        return Err(failed(format!("fenced record {key} is over one message")));
    }
    let publication = format!("{}-{publication}", publisher.origin);
    let term = publisher.lease.term_revision().to_string();
    let mut acks = Vec::with_capacity(chunks.len());
    for (index, chunk) in chunks.iter().enumerate() {
        if !publisher.lease.held() {
            return Err(failed(format!(
                "record {key} not sent: this control plane does not hold the lease"
            )));
        }
        if Instant::now() >= request.deadline {
            return Err(failed(format!("record {key} not sent in time")));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ORIGIN_HEADER, publisher.origin.as_str());
        headers.insert(PUBLICATION_HEADER, publication.as_str());
        headers.insert(TERM_HEADER, term.as_str());
        headers.insert(CHUNKS_HEADER, chunks.len().to_string().as_str());
        if let Some(after) = fence {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                after.to_string().as_str(),
            );
        }
        let ack = context
            .publish_with_headers(
                chunk_subject(kind, key, index),
                headers,
                Bytes::copy_from_slice(chunk),
            )
            .await
            .map_err(|error| failed(format!("sending record {key}: {error}")))?;
        acks.push(ack);
    }
    let mut last = 0;
    for ack in acks {
        let taken = tokio::time::timeout(Duration::from_millis(RECORD_REQUEST_TIMEOUT_MS), ack)
            .await
            .map_err(|_| failed(format!("no acknowledgement of record {key}")))?;
        match taken {
            Ok(ack) => last = ack.sequence,
            Err(error)
                if fence.is_some()
                    && error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                return Err(SendError::Stale)
            }
            Err(error) => return Err(failed(format!("record {key} refused: {error}"))),
        }
    }
    Ok(last)
}

/// How far a follower has read, shared with `Leadership`.
#[derive(Debug, Default)]
pub struct FollowerStatus {
    /// `monotonic_ms` at which the last read that found the stream's end was sent; 0
    /// until one has.
    caught_up_at_ms: AtomicU64,
    /// Records written from the stream.
    pub applied: AtomicU64,
}

impl FollowerStatus {
    /// Whether the follower has read to the stream's end with a read sent after `at_ms`.
    pub fn caught_up_after(&self, at_ms: u64) -> bool {
        self.caught_up_at_ms.load(Relaxed) > at_ms
    }
}

/// Writes one record a follower read: its key and payload. An error stops the follower
/// at that record, which it reads again after `FOLLOW_RETRY_DELAY_MS`.
/// Its third argument is the stream sequence of the record's last message.
pub type ApplyRecord = Box<dyn FnMut(&str, &[u8], u64) -> anyhow::Result<()> + Send>;

/// Follows `kind`'s stream on a thread of its own for the process's life, writing with
/// `apply` every record published by another origin than `origin` (every record, for
/// fenced kinds: `RecordKind::is_fenced`), and keeping its place
/// in `position_file`.
pub fn follow(
    nats_urls: Vec<String>,
    replicas: usize,
    kind: RecordKind,
    origin: String,
    position_file: PathBuf,
    apply: ApplyRecord,
) -> anyhow::Result<Arc<FollowerStatus>> {
    crate::server_addresses(&nats_urls)?;
    let status = Arc::new(FollowerStatus::default());
    let mut follower = Follower {
        kind,
        origin,
        position_file,
        apply,
        position: Position::default(),
        in_part: BTreeMap::new(),
        newest_term: 0,
    };
    (follower.position, follower.newest_term) = follower.load_position();
    let thread_status = status.clone();
    crate::spawn_on_runtime(format!("{}-in", kind.prefix()), move || async move {
        loop {
            if let Err(error) = follower.session(&nats_urls, replicas, &thread_status).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    stream = kind.stream(),
                    "record follower: starting again"
                );
            }
            tokio::time::sleep(Duration::from_millis(FOLLOW_RETRY_DELAY_MS)).await;
        }
    })?;
    Ok(status)
}

/// Where a follower stands: the stream's identity (its creation time, ns) and the last
/// position read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Position {
    epoch: u64,
    sequence: u64,
}

/// A record of which some chunks are read.
struct InPart {
    /// Its publication (`PUBLICATION_HEADER`): a chunk of another starts it over.
    publication: String,
    chunks: Vec<Option<Bytes>>,
    /// The stream position of its first chunk read: the follower's saved place stays
    /// before it until the record is whole.
    first_sequence: u64,
    /// The newest term read before that chunk: saved with that place, so a restart
    /// decides every message after it as this run did.
    term_before: u64,
}

struct Follower {
    kind: RecordKind,
    origin: String,
    position_file: PathBuf,
    apply: ApplyRecord,
    position: Position,
    in_part: BTreeMap<String, InPart>,
    /// The newest lease term read on the stream, own records included: a record of an
    /// older term after it is a former leader's, sent late, and is passed over. Kept with
    /// the follower's place (`save_position`): a follower started again after a newer
    /// term's record still passes over a former leader's late one.
    newest_term: u64,
}

impl Follower {
    /// The saved place and the newest term read up to it (0 from a file saved before
    /// terms were kept).
    fn load_position(&self) -> (Position, u64) {
        let Ok(text) = std::fs::read_to_string(&self.position_file) else {
            return (Position::default(), 0);
        };
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(epoch)), Some(Ok(sequence)), term) => (
                Position { epoch, sequence },
                term.and_then(Result::ok).unwrap_or(0),
            ),
            _ => {
                tracing::warn!(file = %self.position_file.display(), "unreadable record stream position: reading the stream from its start");
                (Position::default(), 0)
            }
        }
    }

    /// Saves the place to start from after a restart, before any record still in part,
    /// with the newest term read up to that place.
    fn save_position(&self) -> anyhow::Result<()> {
        let (before_in_part, term) = self
            .in_part
            .values()
            .min_by_key(|part| part.first_sequence)
            .map(|part| (part.first_sequence.saturating_sub(1), part.term_before))
            .unwrap_or((self.position.sequence, self.newest_term));
        let text = format!("{} {} {}\n", self.position.epoch, before_in_part, term);
        let temporary = self.position_file.with_extension("new");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &self.position_file)?;
        Ok(())
    }

    async fn session(
        &mut self,
        nats_urls: &[String],
        replicas: usize,
        status: &FollowerStatus,
    ) -> anyhow::Result<()> {
        let (_, mut stream) = connect(nats_urls, replicas, self.kind).await?;
        let info = stream.info().await?;
        let epoch = crate::stream_epoch(info);
        if epoch != self.position.epoch {
            // A stream made again (or the first read): its positions are new.
            self.position = Position { epoch, sequence: 0 };
            self.in_part.clear();
            self.newest_term = 0;
        }
        let filter = format!("{}.>", self.kind.prefix());
        let mut saved = self.position;
        let mut checked_at = Instant::now();
        loop {
            let asked_at_ms = monotonic_ms();
            let message = match stream
                .get_first_raw_message_by_subject(&filter, self.position.sequence + 1)
                .await
            {
                Ok(message) => message,
                Err(error)
                    if error.kind()
                        == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    // Nothing after our place: the end, unless the stream went back behind
                    // it (made again under us, or a single copy that lost its unsynced
                    // tail); then it is read again from its start.
                    if checked_at.elapsed() >= Duration::from_millis(FOLLOW_STREAM_CHECK_MS) {
                        checked_at = Instant::now();
                        let info = stream.info().await?;
                        let epoch = crate::stream_epoch(info);
                        if epoch != self.position.epoch
                            || info.state.last_sequence < self.position.sequence
                        {
                            tracing::warn!(stream = self.kind.stream(), position = self.position.sequence, last = info.state.last_sequence, "the record stream is behind this follower (made again, or its tail lost): reading it again from its start");
                            self.position = Position { epoch, sequence: 0 };
                            self.in_part.clear();
                            self.newest_term = 0;
                            self.save_position()?;
                            saved = self.position;
                            continue;
                        }
                    }
                    status.caught_up_at_ms.fetch_max(asked_at_ms, Relaxed);
                    if saved != self.position {
                        self.save_position()?;
                        saved = self.position;
                    }
                    tokio::time::sleep(Duration::from_millis(FOLLOW_IDLE_POLL_MS)).await;
                    continue;
                }
                Err(error) => anyhow::bail!("reading {}: {error}", self.kind.stream()),
            };
            if self.take(&message)? {
                status.applied.fetch_add(1, Relaxed);
            }
            self.position.sequence = message.sequence;
        }
    }

    /// Takes one message: writes the record it completes, unless this control plane
    /// published it. Whether a record was written.
    fn take(&mut self, message: &jetstream::message::StreamMessage) -> anyhow::Result<bool> {
        let Some((key, index)) = parse_chunk_subject(self.kind, message.subject.as_str()) else {
            tracing::error!(subject = %message.subject, "a message in the record stream under no record's subject: skipped");
            return Ok(false);
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| AsRef::<str>::as_ref(value).to_string())
        };
        let term = header(TERM_HEADER)
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0);
        let term_before = self.newest_term;
        // Its own blocks and jobs a control plane wrote before it published them; its own
        // ban lists it takes from the stream like anyone's (`RecordKind::is_fenced`).
        if !self.kind.is_fenced() && header(ORIGIN_HEADER).as_deref() == Some(self.origin.as_str())
        {
            self.newest_term = self.newest_term.max(term);
            return Ok(false);
        }
        if term < self.newest_term && !self.kind.is_fenced() {
            tracing::warn!(subject = %message.subject, term, newest_term = self.newest_term, "a record of a former leader's term after a newer term's: passed over");
            return Ok(false);
        }
        self.newest_term = self.newest_term.max(term);
        let publication = header(PUBLICATION_HEADER).unwrap_or_default();
        let chunks = header(CHUNKS_HEADER)
            .and_then(|text| text.parse::<usize>().ok())
            .filter(|count| (1..=RECORD_CHUNKS_MAX).contains(count) && index < *count);
        let Some(chunks) = chunks else {
            tracing::error!(subject = %message.subject, "a record chunk without a valid chunk count: skipped");
            return Ok(false);
        };
        if chunks == 1 {
            self.in_part.remove(&key);
            (self.apply)(&key, &message.payload, message.sequence)?;
            return Ok(true);
        }
        // A publisher sends a record's chunks in order, so a record is begun only at its
        // chunk 0: a later chunk with nothing begun belongs to a record written before
        // this follower's place (read again after a restart) and would never complete.
        if index != 0 && !self.in_part.contains_key(&key) {
            return Ok(false);
        }
        if !self.in_part.contains_key(&key) && self.in_part.len() >= RECORDS_IN_PART_MAX {
            let oldest = self
                .in_part
                .iter()
                .min_by_key(|(_, part)| part.first_sequence)
                .map(|(key, _)| key.clone())
                .expect("not empty");
            tracing::warn!(record = %oldest, "a record left in part (its publisher stopped midway): dropped");
            self.in_part.remove(&oldest);
        }
        let fresh = || InPart {
            publication: publication.clone(),
            chunks: vec![None; chunks],
            first_sequence: message.sequence,
            term_before,
        };
        let part = self.in_part.entry(key.clone()).or_insert_with(fresh);
        if part.publication != publication || part.chunks.len() != chunks {
            // Published again: start it over from this chunk.
            *part = fresh();
        }
        part.chunks[index] = Some(message.payload.clone());
        if part.chunks.iter().any(Option::is_none) {
            return Ok(false);
        }
        let whole: Vec<u8> = part
            .chunks
            .iter()
            .flat_map(|chunk| chunk.as_ref().expect("every chunk").iter().copied())
            .collect();
        (self.apply)(&key, &whole, message.sequence)?;
        self.in_part.remove(&key);
        Ok(true)
    }
}

/// Whether this control plane may act as the leader on blocks and jobs: its lease is
/// held, and every follower added has read its stream to the end since the lease began
/// (see the module's invariant).
pub struct Leadership {
    lease: Arc<LeaseStatus>,
    followers: Mutex<Vec<Arc<FollowerStatus>>>,
    /// The lease term (`LeaseStatus::term`) last seen held, and when it was first seen.
    term_seen: Mutex<Option<(u64, u64)>>,
}

impl Leadership {
    pub fn new(lease: Arc<LeaseStatus>) -> Arc<Self> {
        Arc::new(Leadership {
            lease,
            followers: Mutex::new(Vec::new()),
            term_seen: Mutex::new(None),
        })
    }

    /// Adds a follower that must be caught up before this control plane leads.
    pub fn wait_for(&self, follower: Arc<FollowerStatus>) {
        self.followers.lock().expect("followers").push(follower);
    }

    pub fn lease(&self) -> &Arc<LeaseStatus> {
        &self.lease
    }

    /// Whether this control plane may act as the leader now. The callers that act on the
    /// answer call this: it starts the catch-up clock of a new term, and lets the lease go
    /// when the catch-up has taken over `LEAD_CATCH_UP_MAX_MS`.
    pub fn leads(&self) -> bool {
        self.leads_at(monotonic_ms())
    }

    /// The same answer as `leads` from what the callers that act have seen, without taking
    /// any decision: for metrics and status pages, whose reads must not change what the
    /// process does.
    pub fn observed_leading(&self) -> bool {
        self.observed_leading_at(monotonic_ms())
    }

    fn observed_leading_at(&self, now_ms: u64) -> bool {
        let Some(term) = self.held_term(now_ms) else {
            return false;
        };
        let Some((seen_term, since_ms)) = *self.term_seen.lock().expect("term seen") else {
            return false;
        };
        seen_term == term && self.followers_caught_up_after(since_ms)
    }

    /// The lease term, if the lease is held at `now_ms`. The term is read on both sides
    /// of the lease: a term that ends and another that begins between the reads is never
    /// taken for the one seen before.
    fn held_term(&self, now_ms: u64) -> Option<u64> {
        let term = self.lease.term();
        (self.lease.held_at(now_ms) && self.lease.term() == term).then_some(term)
    }

    /// Whether every follower has read its stream to the end with a read sent after
    /// `since_ms`.
    fn followers_caught_up_after(&self, since_ms: u64) -> bool {
        self.followers
            .lock()
            .expect("followers")
            .iter()
            .all(|follower| follower.caught_up_after(since_ms))
    }

    fn leads_at(&self, now_ms: u64) -> bool {
        let Some(term) = self.held_term(now_ms) else {
            return false;
        };
        let since_ms = {
            let mut seen = self.term_seen.lock().expect("term seen");
            match *seen {
                Some((seen_term, since_ms)) if seen_term == term => since_ms,
                _ => {
                    *seen = Some((term, now_ms));
                    now_ms
                }
            }
        };
        let caught_up = self.followers_caught_up_after(since_ms);
        if !caught_up && now_ms.saturating_sub(since_ms) >= LEAD_CATCH_UP_MAX_MS {
            tracing::error!(
                waited_ms = now_ms - since_ms,
                "this control plane holds the lease but has not read the block and job streams to their end: letting the lease go"
            );
            self.lease.ask_release();
            // The wait starts again if the lease is still held at the next look.
            *self.term_seen.lock().expect("term seen") = Some((term, now_ms));
        }
        caught_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(position_file: PathBuf) -> Follower {
        Follower {
            kind: RecordKind::Blocks,
            origin: "test".into(),
            position_file,
            apply: Box::new(|_, _, _| Ok(())),
            position: Position::default(),
            in_part: BTreeMap::new(),
            newest_term: 0,
        }
    }

    /// A follower started again knows the newest term read up to its saved place, so a
    /// former leader's late record is passed over after a restart as before it; with a
    /// record in part, the place and the term are those from before its first chunk. A
    /// file saved before terms were kept reads as term 0.
    #[test]
    fn the_newest_term_is_kept_with_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("position");
        let mut saving = follower(file.clone());
        saving.position = Position {
            epoch: 7,
            sequence: 40,
        };
        saving.newest_term = 12;
        saving.save_position().unwrap();
        assert_eq!(
            follower(file.clone()).load_position(),
            (
                Position {
                    epoch: 7,
                    sequence: 40
                },
                12
            )
        );
        saving.in_part.insert(
            "abc".into(),
            InPart {
                publication: "p".into(),
                chunks: vec![None; 2],
                first_sequence: 31,
                term_before: 9,
            },
        );
        saving.save_position().unwrap();
        assert_eq!(
            follower(file.clone()).load_position(),
            (
                Position {
                    epoch: 7,
                    sequence: 30
                },
                9
            )
        );
        std::fs::write(&file, "7 40\n").unwrap();
        assert_eq!(
            follower(file).load_position(),
            (
                Position {
                    epoch: 7,
                    sequence: 40
                },
                0
            )
        );
    }

    /// Keys are single subject tokens: no key can reach into another's subjects.
    #[test]
    fn record_keys_are_one_subject_token() {
        assert!(is_record_key("00ab"));
        assert!(is_record_key("1733480000000"));
        for bad in ["", "a.b", "a*", ">", "a b", &"a".repeat(65)] {
            assert!(!is_record_key(bad), "{bad:?}");
        }
        let subject = chunk_subject(RecordKind::Jobs, "17", 3);
        assert_eq!(subject, "otedama.jobs.17.3");
        assert_eq!(
            parse_chunk_subject(RecordKind::Jobs, &subject),
            Some(("17".into(), 3))
        );
        assert_eq!(parse_chunk_subject(RecordKind::Blocks, &subject), None);
        assert_eq!(
            parse_chunk_subject(RecordKind::Jobs, "otedama.jobs.a.b.1"),
            None
        );
    }

    /// A record of exactly `RECORD_CHUNKS_MAX` chunks is sent; one byte more is refused
    /// before anything is sent.
    #[test]
    fn a_record_holds_its_chunk_limit() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(RECORD_CHUNK_BYTES), 1);
        assert_eq!(chunk_count(RECORD_CHUNK_BYTES + 1), 2);
        assert_eq!(
            chunk_count(RECORD_CHUNK_BYTES * RECORD_CHUNKS_MAX),
            RECORD_CHUNKS_MAX
        );
        let (requests, _incoming) = tokio::sync::mpsc::unbounded_channel();
        let publisher = RecordPublisher {
            kind: RecordKind::Jobs,
            requests,
        };
        let error = publisher
            .publish("1", &vec![0; RECORD_CHUNK_BYTES * RECORD_CHUNKS_MAX + 1])
            .unwrap_err();
        assert!(error.contains("chunks"), "{error}");
    }

    /// A standby leads only once its followers have read to the end after its lease
    /// began: a read that ended before (while another led) does not count, and a new
    /// term starts the wait again.
    #[test]
    fn leading_waits_for_every_follower_after_the_lease_begins() {
        let lease = Arc::new(LeaseStatus::default());
        let leadership = Leadership::new(lease.clone());
        let follower = Arc::new(FollowerStatus::default());
        leadership.wait_for(follower.clone());
        follower.caught_up_at_ms.store(100, Relaxed);
        assert!(!leadership.leads_at(150), "no lease");
        lease.began_term(7);
        lease.renewed(140);
        assert!(
            !leadership.leads_at(150),
            "caught up before the lease began"
        );
        follower.caught_up_at_ms.store(151, Relaxed);
        assert!(leadership.leads_at(160));
        // Lost and taken again: the earlier catch-up does not cover the new term.
        lease.lost();
        assert!(!leadership.leads_at(170));
        lease.began_term(9);
        lease.renewed(170);
        assert!(!leadership.leads_at(180));
        follower.caught_up_at_ms.store(181, Relaxed);
        assert!(leadership.leads_at(190));
        assert!(!lease.take_release_request());
    }

    /// A holder that cannot read the streams to their end lets the lease go after
    /// `LEAD_CATCH_UP_MAX_MS`, not before.
    #[test]
    fn a_holder_that_cannot_catch_up_lets_the_lease_go() {
        let lease = Arc::new(LeaseStatus::default());
        let leadership = Leadership::new(lease.clone());
        leadership.wait_for(Arc::new(FollowerStatus::default()));
        lease.began_term(3);
        lease.renewed(1_000);
        assert!(!leadership.leads_at(1_000));
        lease.renewed(1_000 + LEAD_CATCH_UP_MAX_MS - 5_000);
        assert!(!leadership.leads_at(1_000 + LEAD_CATCH_UP_MAX_MS - 1));
        assert!(!lease.take_release_request());
        assert!(!leadership.leads_at(1_000 + LEAD_CATCH_UP_MAX_MS));
        assert!(lease.take_release_request());
    }

    /// A metric's read of the leadership takes no decision: it neither starts a term's
    /// catch-up clock nor lets the lease go, and agrees with `leads` once that has looked.
    #[test]
    fn observing_the_leadership_changes_nothing() {
        let lease = Arc::new(LeaseStatus::default());
        let leadership = Leadership::new(lease.clone());
        let follower = Arc::new(FollowerStatus::default());
        leadership.wait_for(follower.clone());
        lease.began_term(3);
        lease.renewed(1_000);
        assert!(!leadership.observed_leading_at(1_000));
        assert!(leadership.term_seen.lock().unwrap().is_none());
        lease.renewed(1_000 + LEAD_CATCH_UP_MAX_MS);
        assert!(!leadership.observed_leading_at(1_000 + LEAD_CATCH_UP_MAX_MS));
        assert!(!lease.take_release_request());
        assert!(!leadership.leads_at(1_000 + LEAD_CATCH_UP_MAX_MS));
        follower
            .caught_up_at_ms
            .store(1_001 + LEAD_CATCH_UP_MAX_MS, Relaxed);
        assert!(leadership.observed_leading_at(1_002 + LEAD_CATCH_UP_MAX_MS));
        assert!(leadership.leads_at(1_002 + LEAD_CATCH_UP_MAX_MS));
    }
}
