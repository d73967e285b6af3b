//! The control plane's end of the data-plane link: a Unix socket that data planes connect
//! to. Each gets the current job at once and every new one after; its block candidates go
//! to the submitter and its counters into the pool state.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use otedama_shared::ipc::{self, Downstream, Upstream, IPC_LINE_BYTES_MAX};
use otedama_shared::sv1::BlockCandidate;

use otedama_shared::bans::BanList;

use crate::bans::BanStore;
use crate::stats::PoolState;

pub async fn serve(
    socket: &Path,
    state: Arc<PoolState>,
    bans: Arc<BanStore>,
    candidates: crossbeam_channel::Sender<BlockCandidate>,
) -> anyhow::Result<()> {
    // A socket file left by a crashed run would make bind fail.
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding IPC socket {}", socket.display()))?;
    static NEXT_LINK: AtomicU64 = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await.context("accepting a data plane")?;
        let link_id = NEXT_LINK.fetch_add(1, Relaxed);
        tracing::info!(link_id, "data plane connected");
        let (state, candidates, bans) = (state.clone(), candidates.clone(), bans.subscribe());
        tokio::spawn(async move {
            serve_link(link_id, stream, state.clone(), bans, candidates).await;
            state.dataplane_gone(link_id);
            tracing::warn!(link_id, "data plane disconnected");
        });
    }
}

async fn serve_link(
    link_id: u64,
    stream: UnixStream,
    state: Arc<PoolState>,
    mut bans: tokio::sync::watch::Receiver<Arc<BanList>>,
    candidates: crossbeam_channel::Sender<BlockCandidate>,
) {
    let (read_half, mut write_half) = stream.into_split();
    let mut jobs = state.job_broadcast.subscribe();
    let first = state.current_job();
    let writer = tokio::spawn(async move {
        // The bans go first, so no miner of a banned address is served even briefly.
        let mut first_messages = ipc::ban_messages(&bans.borrow_and_update());
        first_messages.extend(first.map(Downstream::Job));
        for message in first_messages {
            if write_half.write_all(&ipc::encode(&message)).await.is_err() {
                return;
            }
        }
        loop {
            let messages = tokio::select! {
                job = jobs.recv() => match job {
                    Ok(job) => vec![Downstream::Job(job)],
                    // Missed jobs are superseded by the next one; the newest is what matters.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                changed = bans.changed() => match changed {
                    Ok(()) => ipc::ban_messages(&bans.borrow_and_update()),
                    Err(_) => return,
                },
            };
            for message in messages {
                if write_half.write_all(&ipc::encode(&message)).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::new();
    while read_line(&mut reader, &mut line).await {
        match ipc::decode::<Upstream>(&line[..line.len() - 1]) {
            Ok(Upstream::BlockCandidate(candidate)) => {
                // Never a blocking send on the async runtime (see CANDIDATES_IN_TRANSIT_MAX).
                if let Err(crossbeam_channel::TrySendError::Full(candidate)) =
                    candidates.try_send(candidate)
                {
                    tracing::error!(
                        job_id = candidate.job_id,
                        "block candidates in transit at their limit: this one is left to the block scan"
                    );
                }
            }
            Ok(Upstream::Counters(counters)) => state.update_dataplane(link_id, counters),
            Err(error) => tracing::error!(%error, "undecodable message from a data plane"),
        }
    }
    writer.abort();
}

/// Reads the next message line from a data plane, newline included, into `line`: at most
/// `IPC_LINE_BYTES_MAX` bytes. False at the link's end, on an error, or for a line longer
/// than that or cut short: the link is then dropped.
async fn read_line(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> bool {
    line.clear();
    match reader
        .take(IPC_LINE_BYTES_MAX as u64)
        .read_until(b'\n', line)
        .await
    {
        Ok(0) | Err(_) => false,
        Ok(_) if line.last() != Some(&b'\n') => {
            tracing::error!("IPC line too long or truncated from a data plane; dropping the link");
            false
        }
        Ok(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of exactly `IPC_LINE_BYTES_MAX` bytes, newline included, is read; a line
    /// one byte longer drops the link.
    #[tokio::test(flavor = "current_thread")]
    async fn a_line_at_the_limit_is_read_and_one_byte_more_is_not() {
        let mut at_limit = vec![b'x'; IPC_LINE_BYTES_MAX - 1];
        at_limit.push(b'\n');
        let mut line = Vec::new();
        let mut reader = tokio::io::BufReader::new(&at_limit[..]);
        assert!(read_line(&mut reader, &mut line).await);
        assert_eq!(line.len(), IPC_LINE_BYTES_MAX);
        assert!(!read_line(&mut reader, &mut line).await, "then the end");

        let mut over = vec![b'x'; IPC_LINE_BYTES_MAX];
        over.push(b'\n');
        let mut reader = tokio::io::BufReader::new(&over[..]);
        assert!(!read_line(&mut reader, &mut line).await);
    }
}
