//! The control-plane link over NATS, for data planes on hosts without a control plane:
//! the same byte stream as the local Unix socket (`otedama_shared::ipc`: jobs and ban
//! lists down, block candidates and counters up), carried in numbered chunks.
//!
//! A data plane opens a session by asking `LINK_OPEN_SUBJECT` (one control plane of the
//! queue group answers) with its name and a random session id; each side then sends its
//! bytes on its own subject of the session. Both sides of the existing link code see an
//! ordinary stream (a Unix socket pair on the data plane, an in-memory duplex on the
//! control plane), so the link keeps its semantics: the current ban list and job first,
//! candidates sent again on every new session, counters every second.
//!
//! Invariant: each side writes the other's bytes in order, all of them, or ends the
//! session. A chunk out of order (one lost while a connection to the cluster was
//! re-established), or `LINK_SILENT_MS` with neither a chunk nor a heartbeat, ends it;
//! the data plane then opens a new one, which starts from the full state again, as a
//! reconnected socket does.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where data planes ask for a session.
pub const LINK_OPEN_SUBJECT: &str = "otedama.link.open";
/// The queue group control planes answer in, so each request is answered once.
const LINK_QUEUE_GROUP: &str = "otedama-link";
/// Bytes of one chunk at most, far below NATS's 1 MiB message limit.
pub const LINK_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// How often a side with nothing to send says it is there.
pub const LINK_HEARTBEAT_MS: u64 = 1_000;
/// How long a side may hear nothing before it ends the session.
pub const LINK_SILENT_MS: u64 = 5_000;
/// How long a data plane waits for a control plane to answer its request.
pub const LINK_OPEN_TIMEOUT_MS: u64 = 5_000;
/// Sessions one control plane serves at once.
pub const LINK_SESSIONS_MAX: usize = 4_096;
/// What the control plane's side of a session buffers towards the link code.
const LINK_PIPE_BYTES: usize = 1 << 20;
const SEQUENCE_HEADER: &str = "Otedama-Link-Seq";

fn down_subject(session: &str) -> String {
    format!("otedama.link.{session}.down")
}

fn up_subject(session: &str) -> String {
    format!("otedama.link.{session}.up")
}

/// A session's name: `HOST.PROCESS.ID`, each a subject token.
pub fn session_name(host: &str, process: u32, id: u64) -> String {
    format!("{host}.{process}.{id:016x}")
}

/// Whether `name` is a session name `session_name` makes (a request with anything else is
/// refused: it becomes part of subjects).
pub fn is_session_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let (Some(host), Some(process), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    otedama_shared::ipc::is_cluster_host_name(host)
        && process.parse::<u32>().is_ok()
        && id.len() == 16
        && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The receiving side's order check: chunks are numbered from 0 without gaps.
#[derive(Debug, Default)]
pub struct ChunkOrder {
    next: u64,
}

impl ChunkOrder {
    /// Whether the chunk numbered `sequence` is the next one (it is then counted).
    pub fn accept(&mut self, sequence: u64) -> bool {
        if sequence == self.next {
            self.next += 1;
            true
        } else {
            false
        }
    }
}

/// Carries bytes between `pipe` and the session until either side ends, a chunk comes
/// out of order, or the other side is silent for `LINK_SILENT_MS`.
async fn pump(
    client: Client,
    pipe: impl AsyncRead + AsyncWrite,
    out_subject: String,
    mut incoming: Subscriber,
    still_serving: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let (mut from_pipe, mut to_pipe) = tokio::io::split(pipe);
    let mut out_sequence = 0u64;
    let mut order = ChunkOrder::default();
    let mut buffer = vec![0u8; LINK_CHUNK_BYTES_MAX];
    let mut heartbeat = tokio::time::interval(Duration::from_millis(LINK_HEARTBEAT_MS));
    let silent = Duration::from_millis(LINK_SILENT_MS);
    let mut deadline = tokio::time::Instant::now() + silent;
    let send = |sequence: u64, payload: Bytes| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SEQUENCE_HEADER, sequence.to_string().as_str());
        client.publish_with_headers(out_subject.clone(), headers, payload)
    };
    loop {
        tokio::select! {
            read = from_pipe.read(&mut buffer) => {
                let read = read?;
                if read == 0 {
                    return Ok(());
                }
                send(out_sequence, Bytes::copy_from_slice(&buffer[..read])).await?;
                out_sequence += 1;
                heartbeat.reset();
            }
            _ = heartbeat.tick() => {
                if !still_serving() {
                    anyhow::bail!("no longer the leader: the session ends");
                }
                // An empty chunk: numbered like the others, so a lost one is seen too.
                send(out_sequence, Bytes::new()).await?;
                out_sequence += 1;
            }
            message = incoming.next() => {
                let Some(message) = message else {
                    anyhow::bail!("the session's subscription ended");
                };
                let sequence = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(SEQUENCE_HEADER))
                    .and_then(|value| value.as_str().parse::<u64>().ok());
                if !sequence.is_some_and(|sequence| order.accept(sequence)) {
                    anyhow::bail!("a chunk out of order (one was lost): the session ends");
                }
                deadline = tokio::time::Instant::now() + silent;
                if !message.payload.is_empty() {
                    to_pipe.write_all(&message.payload).await?;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                anyhow::bail!("nothing from the other side for {LINK_SILENT_MS} ms");
            }
        }
    }
}

async fn connect(nats_urls: &[String]) -> anyhow::Result<Client> {
    crate::connect(nats_urls, None).await
}

/// The data plane's side: opens a session and returns its end of it, an ordinary Unix
/// stream that the link code reads and writes; the session lives on a thread of its own
/// until that stream is closed or the session ends (the stream then reads as ended).
pub fn open_session(
    nats_urls: &[String],
    host: &str,
    process: u32,
) -> anyhow::Result<std::os::unix::net::UnixStream> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let session = session_name(host, process, rand::random());
    let nats_urls = nats_urls.to_vec();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    crate::spawn_on_runtime("link-session", move || async move {
        let opened = async {
            let client = connect(&nats_urls).await?;
            let incoming = client.subscribe(down_subject(&session)).await?;
            let answer = tokio::time::timeout(
                Duration::from_millis(LINK_OPEN_TIMEOUT_MS),
                client.request(LINK_OPEN_SUBJECT, Bytes::from(session.clone())),
            )
            .await
            .map_err(|_| {
                anyhow::anyhow!("no control plane answered within {LINK_OPEN_TIMEOUT_MS} ms")
            })?
            .map_err(|error| anyhow::anyhow!("asking for a session: {error}"))?;
            anyhow::ensure!(
                answer.payload.as_ref() == b"ok",
                "session refused: {}",
                String::from_utf8_lossy(&answer.payload)
            );
            theirs.set_nonblocking(true)?;
            let pipe = tokio::net::UnixStream::from_std(theirs)?;
            Ok::<_, anyhow::Error>((client, incoming, pipe))
        }
        .await;
        match opened {
            Ok((client, incoming, pipe)) => {
                let _ = opened_tx.send(Ok(()));
                if let Err(error) =
                    pump(client, pipe, up_subject(&session), incoming, || true).await
                {
                    tracing::warn!(error = format!("{error:#}"), %session, "control-plane link session ended");
                }
            }
            Err(error) => {
                let _ = opened_tx.send(Err(error));
            }
        }
    })?;
    match opened_rx.recv() {
        Ok(Ok(())) => Ok(ours),
        Ok(Err(error)) => Err(error),
        Err(_) => anyhow::bail!("the link session thread ended before opening"),
    }
}

/// The control plane's side: answers session requests until the connection to the
/// cluster fails, while `accepting` says so, giving `serve` each new session's end (an
/// in-memory duplex stream that behaves as an accepted socket) and its name.
pub async fn serve_sessions(
    nats_urls: &[String],
    accepting: impl Fn() -> bool + Clone + Send + 'static,
    serve: impl Fn(tokio::io::DuplexStream, String),
) -> anyhow::Result<()> {
    let client = connect(nats_urls).await?;
    let mut requests = client
        .queue_subscribe(LINK_OPEN_SUBJECT, LINK_QUEUE_GROUP.into())
        .await?;
    let sessions = Arc::new(AtomicUsize::new(0));
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let name = String::from_utf8_lossy(&request.payload).to_string();
        if !is_session_name(&name) {
            client.publish(reply, "not a session name".into()).await?;
            continue;
        }
        // A standby control plane leaves sessions to the leader (the data plane asks
        // again, and the queue group picks again).
        if !accepting() {
            client.publish(reply, "not the leader".into()).await?;
            continue;
        }
        if sessions.load(Relaxed) >= LINK_SESSIONS_MAX {
            client.publish(reply, "too many sessions".into()).await?;
            continue;
        }
        // Subscribed before the answer, so the data plane's first chunk is not missed.
        let incoming = client.subscribe(up_subject(&name)).await?;
        let (ours, theirs) = tokio::io::duplex(LINK_PIPE_BYTES);
        client.publish(reply, "ok".into()).await?;
        sessions.fetch_add(1, Relaxed);
        let (client, sessions, session) = (client.clone(), sessions.clone(), name.clone());
        let still_serving = accepting.clone();
        tokio::spawn(async move {
            // A control plane that stops leading ends its sessions within a heartbeat:
            // the data planes then find the new leader.
            if let Err(error) = pump(
                client,
                ours,
                down_subject(&session),
                incoming,
                still_serving,
            )
            .await
            {
                tracing::warn!(error = format!("{error:#}"), %session, "data-plane link session ended");
            }
            sessions.fetch_sub(1, Relaxed);
        });
        serve(theirs, name);
    }
    anyhow::bail!("the session requests' subscription ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_taken_in_order_only() {
        let mut order = ChunkOrder::default();
        assert!(order.accept(0));
        assert!(order.accept(1));
        assert!(!order.accept(3), "a gap");
        assert!(!order.accept(1), "a repeat");
        assert!(order.accept(2));
    }

    #[test]
    fn only_well_formed_session_names_are_taken() {
        let name = session_name("dp-b", 3, 0xdead_beef);
        assert!(is_session_name(&name));
        for bad in [
            "",
            "dp-b.3",
            "dp-b.x.00000000deadbeef",
            "dp*b.3.00000000deadbeef",
            "dp-b.3.00000000deadbeeg",
            "dp-b.3.deadbeef",
            "dp-b.3.00000000deadbeef.x",
            "dp-b.3.>",
        ] {
            assert!(!is_session_name(bad), "{bad:?}");
        }
    }
}
