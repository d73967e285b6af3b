//! The control plane's end of the data-plane link: a Unix socket that data planes connect
//! to. Each gets a job built for it at once (a new job of the current work) and every new
//! one after; its block candidates go to the submitter and its counters into the pool
//! state.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::tasks::blocks::SourcedCandidate;
use otedama_chain::jobs::submit::CandidateSource;
use otedama_shared::ipc::{self, Downstream, Upstream, IPC_LINE_BYTES_MAX};
use otedama_shared::job::JobTemplate;

use otedama_shared::bans::BanList;

use crate::bans::BanStore;
use crate::stats::PoolState;

/// Every link's id, whichever way it came (the socket, a NATS session).
static NEXT_LINK: AtomicU64 = AtomicU64::new(0);

/// Cluster mode: serves data planes through sessions over NATS (`otedama_cluster::link`),
/// each exactly as a data plane on the socket, while this control plane leads, until the
/// connection to the cluster fails.
pub async fn serve_nats(
    nats_urls: &[String],
    state: Arc<PoolState>,
    bans: Arc<BanStore>,
    candidates: crossbeam_channel::Sender<SourcedCandidate>,
    leading: Arc<otedama_cluster::LeaseStatus>,
) -> anyhow::Result<()> {
    let accepting = move || leading.held();
    otedama_cluster::link::serve_sessions(nats_urls, accepting, |stream, session| {
        let link_id = NEXT_LINK.fetch_add(1, Relaxed);
        tracing::info!(link_id, %session, "data plane connected over NATS");
        let (state, candidates, bans) = (state.clone(), candidates.clone(), bans.subscribe());
        tokio::spawn(async move {
            serve_link(link_id, stream, state.clone(), bans, candidates).await;
            state.dataplane_gone(link_id);
            tracing::warn!(link_id, %session, "data plane disconnected");
        });
    })
    .await
}

pub async fn serve(
    socket: &Path,
    state: Arc<PoolState>,
    bans: Arc<BanStore>,
    candidates: crossbeam_channel::Sender<SourcedCandidate>,
) -> anyhow::Result<()> {
    // A socket file left by a crashed run would make bind fail.
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding IPC socket {}", socket.display()))?;
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

/// The share-log floors as the link carries them: (process, floor) pairs.
fn floors_message(floors: &std::collections::BTreeMap<u32, u64>) -> Downstream {
    Downstream::ShareLogFloors {
        floors: floors
            .iter()
            .map(|(process, floor)| (*process, *floor))
            .collect(),
    }
}

async fn serve_link(
    link_id: u64,
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    state: Arc<PoolState>,
    mut bans: tokio::sync::watch::Receiver<Arc<BanList>>,
    candidates: crossbeam_channel::Sender<SourcedCandidate>,
) {
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut jobs = state.job_broadcast.subscribe();
    let mut floors = state.share_log_floors.subscribe();
    // A new link is sent no job built before it opened: the data plane may have served
    // that job before a restart (its duplicate filter then empty) or under an extranonce1
    // space now another process's. A new job of the current work is built at once, and
    // reaches this link marked clean, as after a gap, so nothing older stays live.
    let mut lagged = true;
    state.request_fresh_job();
    let writer = tokio::spawn(async move {
        // The bans go first, so no miner of a banned address is served even briefly.
        let mut first_messages = ipc::ban_messages(&bans.borrow_and_update());
        let known_floors = floors.borrow_and_update().clone();
        if !known_floors.is_empty() {
            first_messages.push(floors_message(&known_floors));
        }
        for message in first_messages {
            if write_half.write_all(&ipc::encode(&message)).await.is_err() {
                return;
            }
        }
        loop {
            let messages = tokio::select! {
                job = jobs.recv() => match link_job(job, &mut lagged) {
                    LinkJob::Send(job) => vec![Downstream::Job(job)],
                    LinkJob::Skip => continue,
                    LinkJob::Closed => return,
                },
                changed = bans.changed() => match changed {
                    Ok(()) => ipc::ban_messages(&bans.borrow_and_update()),
                    Err(_) => return,
                },
                changed = floors.changed() => match changed {
                    Ok(()) => vec![floors_message(&floors.borrow_and_update())],
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
            Ok(message @ (Upstream::BlockCandidate(_) | Upstream::BlockCandidateResent(_))) => {
                let candidate = match message {
                    Upstream::BlockCandidate(candidate) => (candidate, CandidateSource::Live),
                    Upstream::BlockCandidateResent(candidate) => {
                        (candidate, CandidateSource::Recovered)
                    }
                    Upstream::Counters(_) | Upstream::MoneroBlock(_) => {
                        unreachable!("matched above")
                    }
                };
                // A full queue holds this link back (it reads nothing more until there is
                // room) rather than drop a block: the wait runs off the async workers.
                if let Err(crossbeam_channel::TrySendError::Full(candidate)) =
                    candidates.try_send(candidate)
                {
                    let candidates = candidates.clone();
                    let _ = tokio::task::spawn_blocking(move || candidates.send(candidate)).await;
                }
            }
            Ok(Upstream::Counters(counters)) => state.update_dataplane(link_id, counters),
            // The control plane has no Monero chain yet (issue 22): the block is logged
            // whole, for the operator to submit by hand, never dropped quietly.
            Ok(Upstream::MoneroBlock(block)) => tracing::error!(
                block = %String::from_utf8_lossy(&ipc::encode(&Upstream::MoneroBlock(block))),
                "a data plane found a Monero block, and this control plane serves no Monero chain: submit its blob by hand"
            ),
            Err(error) => tracing::error!(%error, "undecodable message from a data plane"),
        }
    }
    writer.abort();
}

/// What a link does with what the job broadcast gave it.
#[derive(Debug, PartialEq)]
enum LinkJob {
    Send(JobTemplate),
    Skip,
    Closed,
}

/// A link more than `JOBS_BROADCAST_QUEUED_MAX` jobs behind has missed some, perhaps the
/// clean job that started the current block; so the first job it sends after the gap is
/// marked clean, and the data plane retires every job it holds from before it (otherwise
/// jobs on an old block could stay live and earn credit for stale work).
fn link_job(
    received: Result<JobTemplate, tokio::sync::broadcast::error::RecvError>,
    lagged: &mut bool,
) -> LinkJob {
    match received {
        Ok(mut job) => {
            job.clean_jobs |= std::mem::take(lagged);
            LinkJob::Send(job)
        }
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
            *lagged = true;
            LinkJob::Skip
        }
        Err(tokio::sync::broadcast::error::RecvError::Closed) => LinkJob::Closed,
    }
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

    /// A link `JOBS_BROADCAST_QUEUED_MAX` jobs behind misses none and sends them as they
    /// are; one more and it skips exactly the oldest, sends the next marked clean (the
    /// skipped one may have been a new block's clean job), then the rest as they are.
    #[test]
    fn a_lagging_link_skips_the_oldest_job_and_sends_the_next_clean() {
        use crate::stats::{PoolState, JOBS_BROADCAST_QUEUED_MAX};
        let pool = PoolState::new(0, 0);
        let mut jobs = pool.job_broadcast.subscribe();
        let job = |job_id: u64| JobTemplate {
            job_id,
            height: 1,
            prevhash: [0; 32],
            coinbase_prefix: Vec::new(),
            coinbase_suffix: Vec::new(),
            merkle_branch: Vec::new(),
            version: 0x2000_0000,
            bits: 0x207f_ffff,
            ntime: 0,
            clean_jobs: false,
            algorithm: otedama_shared::job::AlgorithmName::Sha256d,
        };
        let mut lagged = false;
        let mut next = |jobs: &mut tokio::sync::broadcast::Receiver<JobTemplate>| {
            let received = jobs.try_recv().map_err(|error| match error {
                tokio::sync::broadcast::error::TryRecvError::Lagged(missed) => {
                    tokio::sync::broadcast::error::RecvError::Lagged(missed)
                }
                _ => tokio::sync::broadcast::error::RecvError::Closed,
            });
            link_job(received, &mut lagged)
        };
        let max = JOBS_BROADCAST_QUEUED_MAX as u64;
        for job_id in 0..max {
            pool.job_broadcast.send(job(job_id)).unwrap();
        }
        assert_eq!(
            next(&mut jobs),
            LinkJob::Send(job(0)),
            "at the limit none is missed"
        );
        // max - 1 unread; two more is one past the limit.
        for job_id in max..max + 2 {
            pool.job_broadcast.send(job(job_id)).unwrap();
        }
        assert_eq!(next(&mut jobs), LinkJob::Skip);
        let mut first_after_gap = job(2);
        first_after_gap.clean_jobs = true;
        assert_eq!(next(&mut jobs), LinkJob::Send(first_after_gap));
        for job_id in 3..max + 2 {
            assert_eq!(next(&mut jobs), LinkJob::Send(job(job_id)));
        }
        drop(pool);
        assert_eq!(next(&mut jobs), LinkJob::Closed);
    }

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
