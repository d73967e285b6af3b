//! Cluster mode: the ledger's writes in the replicated stream `LEDGER_STREAM`, so a
//! standby control plane holds the leader's exact ledger and can take over.
//!
//! The leader sends every write (a RocksDB write batch, byte for byte) to the stream
//! before making it (`otedama_ledger::ledger::Replicator`), naming the stream position of
//! the last write its ledger applied (`Nats-Expected-Last-Sequence`): the stream takes it
//! only if nothing was written since, so a control plane that is no longer the leader,
//! or is behind, cannot write. A standby reads the writes after its own position and
//! applies them in order (`Ledger::apply_replicated`); the leader does the same before
//! each pass, so it always writes after the last write in the stream.
//!
//! A write larger than one message goes in chunks at consecutive positions, each fenced
//! the same way; readers put them back together (`LedgerChunks`) and apply the write at
//! its last chunk's position, or, if anything stands between its chunks, void it (every
//! reader alike, since all read the same stream in the same order).
//!
//! The stream must hold nothing but ledger writes: its positions are the ledger's.
//!
//! The exchange's writes (its journal and its accounts) go the same way in a stream of
//! their own, `EXCHANGE_STREAM` (`ReplicatedLog::exchange`), whose positions are the
//! exchange's.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;

/// The stream of ledger writes.
pub const LEDGER_STREAM: &str = "OTEDAMA_LEDGER";
const LEDGER_SUBJECT: &str = "otedama.ledger";
/// The stream of the exchange's writes.
pub const EXCHANGE_STREAM: &str = "OTEDAMA_EXCHANGE";
const EXCHANGE_SUBJECT: &str = "otedama.exchange";

/// Bytes the exchange stream holds at most (on each server), unless configured
/// (`exchange_stream_bytes_max`). Its writes come from miners' requests, so without a
/// bound one account could grow it, on the servers that also hold the ledger's stream,
/// until JetStream's storage is full and ledger writes fail too. Once full, the exchange
/// takes no more commands (a write the stream refuses is made nowhere) while credits and
/// payouts go on. JetStream sets the bound aside on each replica when the stream is made,
/// so it must fit the servers' `max_file_store`.
pub const EXCHANGE_STREAM_BYTES_MAX_DEFAULT: u64 = 1 << 30;

/// Bytes the exchange stream takes beyond `exchange_stream_bytes_max`: user commands stop
/// at the bound, and this is left for what must still be written after it (a take-over's
/// fence, the settling of a pending transfer, commands taken between two looks at the
/// stream's size), so that the exchange is never left unable to settle.
pub const EXCHANGE_STREAM_RESERVE_BYTES: u64 = 8 << 20;

/// A stream of fenced writes and the one subject it takes them on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicatedLog {
    pub stream: &'static str,
    pub subject: &'static str,
    /// Bytes the stream holds at most; -1: no bound.
    pub bytes_max: i64,
}

impl ReplicatedLog {
    pub const LEDGER: ReplicatedLog = ReplicatedLog {
        stream: LEDGER_STREAM,
        subject: LEDGER_SUBJECT,
        bytes_max: -1,
    };

    /// The exchange's stream, for user commands up to `bytes_max` bytes on each server
    /// (and `EXCHANGE_STREAM_RESERVE_BYTES` more for settling).
    pub fn exchange(bytes_max: u64) -> ReplicatedLog {
        ReplicatedLog {
            stream: EXCHANGE_STREAM,
            subject: EXCHANGE_SUBJECT,
            bytes_max: i64::try_from(bytes_max.saturating_add(EXCHANGE_STREAM_RESERVE_BYTES))
                .unwrap_or(i64::MAX),
        }
    }
}
/// How long one request to the stream may take.
pub const LEDGER_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Bytes of one stream message at most: half NATS's default 1 MiB message limit. A
/// larger write (a block credited to tens of thousands of accounts at once) goes in
/// chunks of this size, each in the next position (`LedgerChunks`): a write whose chunks
/// are not all in a row, one after another, is void for every reader alike.
pub const LEDGER_CHUNK_BYTES: usize = 512 * 1024;
/// Chunks of one write at most (256 MiB).
pub const LEDGER_CHUNKS_MAX: usize = 512;
/// How much longer a caller waits for each chunk of a large write after the first.
pub const LEDGER_CHUNK_WAIT_MS: u64 = 2_000;
/// Messages read per request at most when catching up.
pub const LEDGER_WRITES_PER_FETCH_MAX: usize = 1_024;
/// The header of a chunk of a chunked write: `INDEX/COUNT`. A message without it is a
/// whole write.
const CHUNK_HEADER: &str = "Otedama-Chunk";
/// The header of a message that voids the chunked write left unfinished before it (a
/// writer that failed or died between its chunks).
const VOID_HEADER: &str = "Otedama-Void";

/// Messages a write of `bytes` bytes takes.
fn chunk_count(bytes: usize) -> usize {
    bytes.div_ceil(LEDGER_CHUNK_BYTES).max(1)
}

/// One message of the ledger stream, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerMessage {
    pub position: u64,
    pub kind: MessageKind,
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Whole,
    Chunk {
        index: usize,
        count: usize,
    },
    /// Voids the unfinished chunked write before it.
    Void,
}

/// Ledger stream messages, in order.
pub type Writes = Vec<LedgerMessage>;

/// What a reader does with the stream, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply this write at this position.
    Apply { position: u64, batch: Vec<u8> },
    /// Nothing to apply up to this position (a void write, a marker).
    Skip { through: u64 },
}

/// Puts chunked writes back together. Every reader reads the same messages in the same
/// order, so every reader makes the same writes and voids the same ones: a chunked write
/// counts only if its chunks come one after another from index 0 to the last, with
/// nothing between them; anything else that comes first voids it.
#[derive(Default)]
pub struct LedgerChunks {
    /// The chunks read so far of the write in progress: its count, and (position,
    /// payload) of each.
    partial: Option<(usize, Vec<PlacedChunk>)>,
}

/// A chunk read, with its stream position.
type PlacedChunk = (u64, Vec<u8>);

impl LedgerChunks {
    /// The steps `message` makes.
    pub fn take(&mut self, message: LedgerMessage) -> Vec<Step> {
        let mut steps = Vec::new();
        let continues = match (&self.partial, message.kind) {
            (Some((count, chunks)), MessageKind::Chunk { index, count: of }) => {
                of == *count
                    && index == chunks.len()
                    && chunks
                        .last()
                        .is_some_and(|(last, _)| message.position == last + 1)
            }
            _ => false,
        };
        if !continues {
            if let Some((_, chunks)) = self.partial.take() {
                let through = chunks.last().map_or(0, |(position, _)| *position);
                steps.push(Step::Skip { through });
            }
        }
        match message.kind {
            MessageKind::Whole => steps.push(Step::Apply {
                position: message.position,
                batch: message.payload,
            }),
            MessageKind::Void => steps.push(Step::Skip {
                through: message.position,
            }),
            MessageKind::Chunk { index, count } => {
                if continues {
                    let (_, chunks) = self.partial.as_mut().expect("continues");
                    chunks.push((message.position, message.payload));
                } else if index == 0 && count >= 2 {
                    self.partial = Some((count, vec![(message.position, message.payload)]));
                } else {
                    // A chunk of a write whose start was voided or never seen.
                    steps.push(Step::Skip {
                        through: message.position,
                    });
                }
                if self
                    .partial
                    .as_ref()
                    .is_some_and(|(count, chunks)| chunks.len() == *count)
                {
                    let (_, chunks) = self.partial.take().expect("complete");
                    let position = chunks.last().map_or(0, |(position, _)| *position);
                    let batch = chunks.into_iter().flat_map(|(_, chunk)| chunk).collect();
                    steps.push(Step::Apply { position, batch });
                }
            }
        }
        steps
    }

    /// Whether a chunked write is unfinished at the end of what was read.
    pub fn unfinished(&self) -> bool {
        self.partial.is_some()
    }
}

enum Request {
    Replicate {
        batch: Vec<u8>,
        after: u64,
        reply: mpsc::Sender<Result<u64, String>>,
        deadline: Instant,
        /// Chunks sent at most: all but in fault-injection tests.
        chunks_max: usize,
    },
    Fetch {
        after: u64,
        reply: mpsc::Sender<Result<Writes, String>>,
        deadline: Instant,
    },
    /// The bytes the stream holds.
    Bytes {
        reply: mpsc::Sender<Result<u64, String>>,
        deadline: Instant,
    },
}

/// How long a caller waits for its answer; a request still queued after that is dropped
/// unanswered, so nothing is written after its caller was told it failed.
const LEDGER_CALLER_WAIT_MS: u64 = 2 * LEDGER_REQUEST_TIMEOUT_MS + 1_000;
/// How long one catch-up read may take before it returns what it has.
const LEDGER_FETCH_BUDGET_MS: u64 = 2_000;

/// The connection to the ledger stream, on a thread of its own (callers are blocking code:
/// the payout thread, the API's handlers off their workers).
#[derive(Clone)]
pub struct LedgerStream {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
}

impl LedgerStream {
    /// The ledger's stream.
    pub fn start(nats_urls: Vec<String>, replicas: usize) -> anyhow::Result<Self> {
        Self::start_for(ReplicatedLog::LEDGER, nats_urls, replicas)
    }

    /// The stream of `log`.
    pub fn start_for(
        log: ReplicatedLog,
        nats_urls: Vec<String>,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        crate::server_addresses(&nats_urls)?;
        let (requests, incoming) = tokio::sync::mpsc::unbounded_channel::<Request>();
        crate::spawn_on_runtime(log.subject, move || {
            serve(log, nats_urls, replicas, incoming)
        })?;
        Ok(LedgerStream { requests })
    }

    /// Sends a request and waits for its answer: `LEDGER_CALLER_WAIT_MS`, and
    /// `LEDGER_CHUNK_WAIT_MS` more for each chunk after the first of a large write.
    fn ask<T>(
        &self,
        extra_chunks: usize,
        request: impl FnOnce(mpsc::Sender<Result<T, String>>, Instant) -> Request,
    ) -> Result<T, String> {
        let (reply, answer) = mpsc::channel();
        let wait_ms = LEDGER_CALLER_WAIT_MS + extra_chunks as u64 * LEDGER_CHUNK_WAIT_MS;
        // The thread gives up on it a second before the caller does.
        let deadline = Instant::now() + Duration::from_millis(wait_ms - 1_000);
        self.requests
            .send(request(reply, deadline))
            .map_err(|_| "the ledger stream's thread has ended".to_string())?;
        answer
            .recv_timeout(Duration::from_millis(wait_ms))
            .map_err(|_| "no answer from the ledger stream".to_string())?
    }

    /// Appends `batch` if the stream's last write is at `after`; its position.
    pub fn append(&self, batch: &[u8], after: u64) -> Result<u64, String> {
        self.append_cut_short(batch, after, usize::MAX)
    }

    /// Fault injection for tests: appends only the first `chunks` chunks of `batch`, as a
    /// writer killed between two chunks leaves it, and fails (with `chunks` at least the
    /// batch's, it is `append`).
    #[doc(hidden)]
    pub fn append_cut_short(&self, batch: &[u8], after: u64, chunks: usize) -> Result<u64, String> {
        self.ask(chunk_count(batch.len()) - 1, |reply, deadline| {
            Request::Replicate {
                batch: batch.to_vec(),
                after,
                reply,
                deadline,
                chunks_max: chunks,
            }
        })
    }

    /// The writes after position `after`, in order, up to `LEDGER_WRITES_PER_FETCH_MAX`
    /// or what `LEDGER_FETCH_BUDGET_MS` allows.
    pub fn after(&self, after: u64) -> Result<Writes, String> {
        self.ask(0, |reply, deadline| Request::Fetch {
            after,
            reply,
            deadline,
        })
    }

    /// The bytes the stream holds (on each server), within `wait_ms`.
    pub fn bytes(&self, wait_ms: u64) -> Result<u64, String> {
        let (reply, answer) = mpsc::channel();
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        self.requests
            .send(Request::Bytes { reply, deadline })
            .map_err(|_| "the stream's thread has ended".to_string())?;
        answer
            .recv_timeout(Duration::from_millis(wait_ms))
            .map_err(|_| "no answer from the stream".to_string())?
    }
}

/// The leader's replicator: appends through the stream, only while `leading` says so.
pub struct StreamReplicator {
    pub stream: LedgerStream,
    /// Whether this control plane holds the leader's lease now.
    pub leading: std::sync::Arc<crate::host::LeaseStatus>,
}

impl otedama_ledger::ledger::Replicator for StreamReplicator {
    fn replicate(&mut self, batch: &[u8], after: u64) -> Result<u64, String> {
        if !self.leading.held() {
            return Err("this control plane is not the leader".into());
        }
        self.stream.append(batch, after)
    }
}

/// `catch_up` for a ledger others use too: the stream is read without the lock, which is
/// taken only to apply what was read.
pub fn catch_up_shared(
    stream: &LedgerStream,
    ledger: &std::sync::Mutex<otedama_ledger::ledger::Ledger>,
) -> anyhow::Result<usize> {
    let start = ledger.lock().expect("ledger lock").replica_position()?;
    follow(stream, start, |steps| {
        apply_steps(&mut ledger.lock().expect("ledger lock"), steps)
    })
}

/// Applies every write of the stream after the ledger's own position; how many. A chunked
/// write still unfinished at the stream's end is left for a later call.
pub fn catch_up(
    stream: &LedgerStream,
    ledger: &mut otedama_ledger::ledger::Ledger,
) -> anyhow::Result<usize> {
    let start = ledger.replica_position()?;
    follow(stream, start, |steps| apply_steps(ledger, steps))
}

/// Reads the stream after `start` to its end, handing each batch of steps to `apply`
/// (the ledger's, or the exchange's for its own stream).
pub fn follow(
    stream: &LedgerStream,
    start: u64,
    mut apply: impl FnMut(Vec<Step>) -> anyhow::Result<usize>,
) -> anyhow::Result<usize> {
    let (mut chunks, mut read_through, mut applied) = (LedgerChunks::default(), start, 0);
    loop {
        let messages = stream
            .after(read_through)
            .map_err(|error| anyhow::anyhow!("reading the ledger stream: {error}"))?;
        let Some(last) = messages.last() else {
            return Ok(applied);
        };
        read_through = last.position;
        let steps: Vec<Step> = messages
            .into_iter()
            .flat_map(|message| chunks.take(message))
            .collect();
        applied += apply(steps)?;
    }
}

fn apply_steps(
    ledger: &mut otedama_ledger::ledger::Ledger,
    steps: Vec<Step>,
) -> anyhow::Result<usize> {
    let mut applied = 0;
    for step in steps {
        match step {
            Step::Apply { position, batch } => {
                if ledger.apply_replicated(&batch, position)? {
                    applied += 1;
                }
            }
            Step::Skip { through } => ledger.skip_replicated(through)?,
        }
    }
    Ok(applied)
}

async fn serve(
    log: ReplicatedLog,
    nats_urls: Vec<String>,
    replicas: usize,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<Request>,
) {
    let mut stream: Option<(jetstream::Context, jetstream::stream::Stream)> = None;
    while let Some(request) = incoming.recv().await {
        if stream.is_none() {
            match open(log, &nats_urls, replicas).await {
                Ok(opened) => stream = Some(opened),
                Err(error) => {
                    let error = format!("{error:#}");
                    match request {
                        Request::Replicate { reply, .. } => drop(reply.send(Err(error))),
                        Request::Fetch { reply, .. } => drop(reply.send(Err(error))),
                        Request::Bytes { reply, .. } => drop(reply.send(Err(error))),
                    }
                    continue;
                }
            }
        }
        let (context, handle) = stream.as_ref().expect("opened above");
        match request {
            Request::Replicate {
                reply, deadline, ..
            } if Instant::now() >= deadline => {
                let _ = reply.send(Err("expired before it was sent".into()));
            }
            Request::Replicate {
                batch,
                after,
                reply,
                deadline,
                chunks_max,
            } => {
                let result =
                    match append(log, context, handle, &batch, after, deadline, chunks_max).await {
                        Ok(position) => Ok(position),
                        // A fault injected: the cut-short write stays as a killed writer leaves it.
                        Err(error) if chunks_max != usize::MAX => Err(error),
                        Err(error) => {
                            // Refused: if what stands after `after` is a chunked write left
                            // unfinished (its writer failed or died between chunks), it is
                            // voided, so that the next try, after a catch-up, can write.
                            void_unfinished(log, context, handle, after).await;
                            Err(error)
                        }
                    };
                let _ = reply.send(result);
            }
            Request::Fetch {
                after,
                reply,
                deadline,
            } => {
                let result = if Instant::now() >= deadline {
                    Err("expired before it was read".into())
                } else {
                    fetch(handle, after).await
                };
                let _ = reply.send(result);
            }
            Request::Bytes { reply, deadline } => {
                let left = deadline.saturating_duration_since(Instant::now());
                let result = match tokio::time::timeout(left, handle.get_info()).await {
                    Ok(Ok(info)) => Ok(info.state.bytes),
                    Ok(Err(error)) => Err(format!("the stream's size: {error}")),
                    Err(_) => Err("no answer for the stream's size in time".into()),
                };
                let _ = reply.send(result);
            }
        }
    }
}

async fn open(
    log: ReplicatedLog,
    nats_urls: &[String],
    replicas: usize,
) -> anyhow::Result<(jetstream::Context, jetstream::stream::Stream)> {
    let client = crate::connect(nats_urls, Some(LEDGER_REQUEST_TIMEOUT_MS)).await?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(LEDGER_REQUEST_TIMEOUT_MS));
    let stream = context
        .get_or_create_stream(jetstream::stream::Config {
            name: log.stream.to_string(),
            subjects: vec![log.subject.to_string()],
            max_bytes: log.bytes_max,
            // Full: new writes are refused; nothing written is ever dropped.
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        })
        .await
        .map_err(|error| anyhow::anyhow!("the stream {}: {error}", log.stream))?;
    Ok((context, stream))
}

/// Appends `batch` right after position `after`: whole, or in `LEDGER_CHUNK_BYTES` chunks
/// at the positions after it, each only if the stream's last position is the one before
/// it, and only before `deadline`. A chunk whose acknowledgement was lost is ours if the
/// stream holds its very bytes at its position. The write's position is its last
/// message's.
async fn append(
    log: ReplicatedLog,
    context: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    batch: &[u8],
    after: u64,
    deadline: Instant,
    chunks_max: usize,
) -> Result<u64, String> {
    let chunks: Vec<&[u8]> = if chunk_count(batch.len()) == 1 {
        vec![batch]
    } else {
        batch.chunks(LEDGER_CHUNK_BYTES).collect()
    };
    if chunks.len() > LEDGER_CHUNKS_MAX {
        return Err(format!(
            "a ledger write of {} bytes is over the stream's {LEDGER_CHUNKS_MAX} chunks of {LEDGER_CHUNK_BYTES} bytes",
            batch.len()
        ));
    }
    let count = chunks.len();
    let mut position = after;
    for (index, chunk) in chunks.into_iter().enumerate() {
        // Nothing is sent after the caller's wait: a write cut short here is void for
        // every reader.
        if index > 0 && Instant::now() >= deadline {
            return Err("the caller's wait ran out between the chunks of a ledger write".into());
        }
        if index >= chunks_max {
            return Err(format!(
                "cut short after {chunks_max} chunks (fault injection)"
            ));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            position.to_string().as_str(),
        );
        if count > 1 {
            headers.insert(CHUNK_HEADER, format!("{index}/{count}").as_str());
        }
        position = match publish(log, context, headers, chunk).await {
            Ok(sequence) => sequence,
            Err(error) => match settle_unknown(log, context, stream, position, chunk).await {
                Some(sequence) => sequence,
                None => return Err(error),
            },
        };
    }
    Ok(position)
}

/// A message sent after `position` whose outcome is unknown (no acknowledgement) or that
/// was refused: its position if the stream holds its very bytes right after `position`.
/// Otherwise a void marker is appended there, fenced the same way, so the message can no
/// longer land later (the caller is told the write failed, and it must stay unwritten):
/// if the marker is refused, whatever took the place is read again.
async fn settle_unknown(
    log: ReplicatedLog,
    context: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    position: u64,
    payload: &[u8],
) -> Option<u64> {
    let ours = |message: &Result<jetstream::message::StreamMessage, _>| match message {
        Ok(message) if message.payload.as_ref() == payload => Some(message.sequence),
        _ => None,
    };
    if let Some(sequence) = ours(&stream.get_raw_message(position + 1).await) {
        return Some(sequence);
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        position.to_string().as_str(),
    );
    headers.insert(VOID_HEADER, "1");
    if publish(log, context, headers, &[]).await.is_ok() {
        return None;
    }
    ours(&stream.get_raw_message(position + 1).await)
}

async fn publish(
    log: ReplicatedLog,
    context: &jetstream::Context,
    headers: async_nats::HeaderMap,
    payload: &[u8],
) -> Result<u64, String> {
    let ack = context
        .publish_with_headers(log.subject, headers, Bytes::copy_from_slice(payload))
        .await
        .map_err(|error| format!("sending a write to {}: {error}", log.stream))?;
    let ack = tokio::time::timeout(Duration::from_millis(LEDGER_REQUEST_TIMEOUT_MS), ack)
        .await
        .map_err(|_| format!("no acknowledgement of a write to {}", log.stream))?
        .map_err(|error| format!("a write to {} refused: {error}", log.stream))?;
    Ok(ack.sequence)
}

/// If the stream after `after` holds nothing but the first chunks of one chunked write,
/// without its last, appends a void marker after them (only if nothing came since), so
/// every reader voids that write and the ledger's writer can go on. Only the first
/// message after `after` and the stream's last are read: each chunk is fenced on the one
/// before, so a first chunk 0 of N at `after + 1` and a last chunk I of N at
/// `after + 1 + I` are one write's first I + 1 chunks.
async fn void_unfinished(
    log: ReplicatedLog,
    context: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    after: u64,
) {
    let (Ok(first), Ok(last)) = (
        stream.get_raw_message(after + 1).await,
        stream.get_last_raw_message_by_subject(log.subject).await,
    ) else {
        return;
    };
    let (first, last) = (ledger_message(&first), ledger_message(&last));
    let unfinished = match (first.kind, last.kind) {
        (MessageKind::Chunk { index: 0, count }, MessageKind::Chunk { index, count: of }) => {
            of == count && index + 1 < count && last.position == after + 1 + index as u64
        }
        _ => false,
    };
    if !unfinished {
        return;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        last.position.to_string().as_str(),
    );
    headers.insert(VOID_HEADER, "1");
    match publish(log, context, headers, &[]).await {
        Ok(position) => {
            tracing::warn!(
                position,
                "a chunked ledger write left unfinished was voided"
            )
        }
        Err(error) => tracing::warn!(%error, "could not void an unfinished ledger write"),
    }
}

async fn fetch(stream: &jetstream::stream::Stream, after: u64) -> Result<Writes, String> {
    let mut writes = Vec::new();
    let mut next = after + 1;
    let budget = Instant::now() + Duration::from_millis(LEDGER_FETCH_BUDGET_MS);
    while writes.len() < LEDGER_WRITES_PER_FETCH_MAX && Instant::now() < budget {
        match stream.get_raw_message(next).await {
            Ok(message) => {
                writes.push(ledger_message(&message));
                next = message.sequence + 1;
            }
            Err(error)
                if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                break
            }
            Err(error) => return Err(format!("reading ledger write {next}: {error}")),
        }
    }
    Ok(writes)
}

/// A stream message as the ledger's readers take it: a chunk header that does not parse
/// makes it a chunk of nothing, which voids what it interrupts and is skipped.
fn ledger_message(message: &jetstream::message::StreamMessage) -> LedgerMessage {
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .map(|value| AsRef::<str>::as_ref(value).to_string())
    };
    let kind = if header(VOID_HEADER).is_some() {
        MessageKind::Void
    } else if let Some(chunk) = header(CHUNK_HEADER) {
        chunk
            .split_once('/')
            .and_then(|(index, count)| Some((index.parse().ok()?, count.parse().ok()?)))
            .filter(|(index, count): &(usize, usize)| {
                *index < *count && (2..=LEDGER_CHUNKS_MAX).contains(count)
            })
            .map_or(
                MessageKind::Chunk { index: 1, count: 0 },
                |(index, count)| MessageKind::Chunk { index, count },
            )
    } else {
        MessageKind::Whole
    };
    LedgerMessage {
        position: message.sequence,
        kind,
        payload: message.payload.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(position: u64, kind: MessageKind, payload: &[u8]) -> LedgerMessage {
        LedgerMessage {
            position,
            kind,
            payload: payload.to_vec(),
        }
    }

    fn chunk(position: u64, index: usize, count: usize, payload: &[u8]) -> LedgerMessage {
        message(position, MessageKind::Chunk { index, count }, payload)
    }

    fn apply(position: u64, batch: &[u8]) -> Step {
        Step::Apply {
            position,
            batch: batch.to_vec(),
        }
    }

    fn steps(messages: Vec<LedgerMessage>) -> Vec<Step> {
        let mut chunks = LedgerChunks::default();
        messages
            .into_iter()
            .flat_map(|message| chunks.take(message))
            .collect()
    }

    /// A chunked write whose chunks come in a row is applied whole, at its last chunk's
    /// position; whole writes around it are applied as they are.
    #[test]
    fn chunks_in_a_row_make_one_write() {
        assert_eq!(
            steps(vec![
                message(1, MessageKind::Whole, b"a"),
                chunk(2, 0, 3, b"bb"),
                chunk(3, 1, 3, b"cc"),
                chunk(4, 2, 3, b"d"),
                message(5, MessageKind::Whole, b"e"),
            ]),
            vec![apply(1, b"a"), apply(4, b"bbccd"), apply(5, b"e"),]
        );
    }

    /// A chunked write interrupted (by another write, a void marker, a new write's first
    /// chunk) is void, and so is a chunk of it that comes after: every reader, reading
    /// the same stream, voids the same writes.
    #[test]
    fn an_interrupted_chunked_write_is_void_for_every_reader() {
        assert_eq!(
            steps(vec![
                chunk(1, 0, 3, b"x"),
                chunk(2, 1, 3, b"y"),
                message(3, MessageKind::Whole, b"w"),
                chunk(4, 2, 3, b"z"),
            ]),
            vec![
                Step::Skip { through: 2 },
                apply(3, b"w"),
                Step::Skip { through: 4 },
            ]
        );
        assert_eq!(
            steps(vec![
                chunk(1, 0, 2, b"x"),
                message(2, MessageKind::Void, b""),
                chunk(3, 0, 2, b"p"),
                chunk(4, 1, 2, b"q"),
            ]),
            vec![
                Step::Skip { through: 1 },
                Step::Skip { through: 2 },
                apply(4, b"pq"),
            ]
        );
        // A new write's first chunk interrupts the last one.
        assert_eq!(
            steps(vec![
                chunk(1, 0, 2, b"x"),
                chunk(2, 0, 2, b"p"),
                chunk(3, 1, 2, b"q")
            ]),
            vec![Step::Skip { through: 1 }, apply(3, b"pq"),]
        );
    }

    /// Chunks out of order, of another count, or unreadable are never put together.
    #[test]
    fn stray_chunks_are_skipped() {
        assert_eq!(
            steps(vec![
                chunk(1, 1, 2, b"late"),
                chunk(2, 0, 2, b"a"),
                chunk(3, 1, 3, b"other count"),
                message(4, MessageKind::Chunk { index: 1, count: 0 }, b"unreadable"),
            ]),
            vec![
                Step::Skip { through: 1 },
                Step::Skip { through: 2 },
                Step::Skip { through: 3 },
                Step::Skip { through: 4 },
            ]
        );
        let mut chunks = LedgerChunks::default();
        assert!(chunks.take(chunk(7, 0, 2, b"a")).is_empty());
        assert!(chunks.unfinished(), "left for a later read");
    }
}
