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
//! The stream must hold nothing but ledger writes: its positions are the ledger's.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;

/// The stream of ledger writes.
pub const LEDGER_STREAM: &str = "OTEDAMA_LEDGER";
const LEDGER_SUBJECT: &str = "otedama.ledger";
/// How long one request to the stream may take.
pub const LEDGER_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Bytes of one ledger write at most: under NATS's default 1 MiB message limit. A write
/// over it (a block credit to thousands of accounts at once) is refused whole, with this
/// error, rather than half made; raise the servers' `max_payload` for such pools.
pub const LEDGER_WRITE_BYTES_MAX: usize = 1024 * 1024 - 4096;
/// Writes read per request at most when catching up.
pub const LEDGER_WRITES_PER_FETCH_MAX: usize = 1_024;

/// Ledger writes with their stream positions, in order.
pub type Writes = Vec<(u64, Vec<u8>)>;

enum Request {
    Replicate {
        batch: Vec<u8>,
        after: u64,
        reply: mpsc::Sender<Result<u64, String>>,
        deadline: Instant,
    },
    Fetch {
        after: u64,
        reply: mpsc::Sender<Result<Writes, String>>,
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
    pub fn start(nats_urls: Vec<String>, replicas: usize) -> anyhow::Result<Self> {
        crate::server_addresses(&nats_urls)?;
        let (requests, incoming) = tokio::sync::mpsc::unbounded_channel::<Request>();
        crate::spawn_on_runtime("ledger-stream", move || {
            serve(nats_urls, replicas, incoming)
        })?;
        Ok(LedgerStream { requests })
    }

    fn ask<T>(
        &self,
        request: impl FnOnce(mpsc::Sender<Result<T, String>>, Instant) -> Request,
    ) -> Result<T, String> {
        let (reply, answer) = mpsc::channel();
        // The thread gives up on it a second before the caller does.
        let deadline = Instant::now() + Duration::from_millis(LEDGER_CALLER_WAIT_MS - 1_000);
        self.requests
            .send(request(reply, deadline))
            .map_err(|_| "the ledger stream's thread has ended".to_string())?;
        answer
            .recv_timeout(Duration::from_millis(LEDGER_CALLER_WAIT_MS))
            .map_err(|_| "no answer from the ledger stream".to_string())?
    }

    /// Appends `batch` if the stream's last write is at `after`; its position.
    pub fn append(&self, batch: &[u8], after: u64) -> Result<u64, String> {
        self.ask(|reply, deadline| Request::Replicate {
            batch: batch.to_vec(),
            after,
            reply,
            deadline,
        })
    }

    /// The writes after position `after`, in order, up to `LEDGER_WRITES_PER_FETCH_MAX`
    /// or what `LEDGER_FETCH_BUDGET_MS` allows.
    pub fn after(&self, after: u64) -> Result<Writes, String> {
        self.ask(|reply, deadline| Request::Fetch {
            after,
            reply,
            deadline,
        })
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
    let mut applied = 0;
    loop {
        let position = ledger.lock().expect("ledger lock").replica_position()?;
        let writes = stream
            .after(position)
            .map_err(|error| anyhow::anyhow!("reading the ledger stream: {error}"))?;
        if writes.is_empty() {
            return Ok(applied);
        }
        let mut ledger = ledger.lock().expect("ledger lock");
        for (position, write) in writes {
            if ledger.apply_replicated(&write, position)? {
                applied += 1;
            }
        }
    }
}

/// Applies every write of the stream after the ledger's own position; how many.
pub fn catch_up(
    stream: &LedgerStream,
    ledger: &mut otedama_ledger::ledger::Ledger,
) -> anyhow::Result<usize> {
    let mut applied = 0;
    loop {
        let writes = stream
            .after(ledger.replica_position()?)
            .map_err(|error| anyhow::anyhow!("reading the ledger stream: {error}"))?;
        if writes.is_empty() {
            return Ok(applied);
        }
        for (position, write) in writes {
            if ledger.apply_replicated(&write, position)? {
                applied += 1;
            }
        }
    }
}

async fn serve(
    nats_urls: Vec<String>,
    replicas: usize,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<Request>,
) {
    let mut stream: Option<(jetstream::Context, jetstream::stream::Stream)> = None;
    while let Some(request) = incoming.recv().await {
        if stream.is_none() {
            match open(&nats_urls, replicas).await {
                Ok(opened) => stream = Some(opened),
                Err(error) => {
                    let error = format!("{error:#}");
                    match request {
                        Request::Replicate { reply, .. } => drop(reply.send(Err(error))),
                        Request::Fetch { reply, .. } => drop(reply.send(Err(error))),
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
                ..
            } => {
                let result = match append(context, &batch, after).await {
                    Ok(position) => Ok(position),
                    // The outcome is unknown (no acknowledgement) or a refusal: the write
                    // is ours only if the stream holds these very bytes right after
                    // `after`. Otherwise it was not taken, or someone else's was.
                    Err(error) => match handle.get_raw_message(after + 1).await {
                        Ok(message) if message.payload.as_ref() == batch.as_slice() => {
                            Ok(message.sequence)
                        }
                        _ => Err(error),
                    },
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
        }
    }
}

async fn open(
    nats_urls: &[String],
    replicas: usize,
) -> anyhow::Result<(jetstream::Context, jetstream::stream::Stream)> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_millis(LEDGER_REQUEST_TIMEOUT_MS)))
        .connect(crate::server_addresses(nats_urls)?)
        .await?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(LEDGER_REQUEST_TIMEOUT_MS));
    let stream = context
        .get_or_create_stream(jetstream::stream::Config {
            name: LEDGER_STREAM.to_string(),
            subjects: vec![LEDGER_SUBJECT.to_string()],
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        })
        .await
        .map_err(|error| anyhow::anyhow!("the ledger stream: {error}"))?;
    Ok((context, stream))
}

async fn append(context: &jetstream::Context, batch: &[u8], after: u64) -> Result<u64, String> {
    if batch.len() > LEDGER_WRITE_BYTES_MAX {
        return Err(format!(
            "a ledger write of {} bytes is over the stream's {LEDGER_WRITE_BYTES_MAX}-byte limit",
            batch.len()
        ));
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        after.to_string().as_str(),
    );
    let ack = context
        .publish_with_headers(LEDGER_SUBJECT, headers, Bytes::copy_from_slice(batch))
        .await
        .map_err(|error| format!("sending a ledger write: {error}"))?;
    let ack = tokio::time::timeout(Duration::from_millis(LEDGER_REQUEST_TIMEOUT_MS), ack)
        .await
        .map_err(|_| "no acknowledgement of a ledger write".to_string())?
        .map_err(|error| format!("a ledger write refused: {error}"))?;
    Ok(ack.sequence)
}

async fn fetch(stream: &jetstream::stream::Stream, after: u64) -> Result<Writes, String> {
    let mut writes = Vec::new();
    let mut next = after + 1;
    let budget = Instant::now() + Duration::from_millis(LEDGER_FETCH_BUDGET_MS);
    while writes.len() < LEDGER_WRITES_PER_FETCH_MAX && Instant::now() < budget {
        match stream.get_raw_message(next).await {
            Ok(message) => {
                writes.push((message.sequence, message.payload.to_vec()));
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
