//! Cluster mode: a data-plane host submits the blocks its miners find to the node itself,
//! besides sending them up the link to the control plane (as ckpool's passthrough nodes
//! and DATUM gateways do). During a control-plane failover the link has no leader to take
//! a block for up to half a minute, and a block that waits that long is likely orphaned.
//!
//! The host builds the block from the job it was found on, read from the replicated job
//! stream (`RecordKind::Jobs`: the leader publishes each job there before any data plane
//! is given it), and the candidate's header and coinbase. Only the control plane records
//! and credits blocks: it submits the same block again when it takes the candidate (from
//! the link, or from the share log's block scan), hears `duplicate`, and asks the chain
//! (`otedama_chain::jobs::submit`), so a block is credited once whichever submission
//! reached the node first. In cluster mode the control plane asks the node before it
//! calls any candidate stale, since the tip may have moved on to the block itself.
//!
//! Invariant: the relay only hastens a block. Every candidate still goes up the link and
//! into the share log whatever happens here; a candidate the relay cannot take (queue
//! full, job not found, node unreachable past `BLOCK_RELAY_TRY_MS`) is left to them.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use otedama_chain::jobs::store::JobStore;
use otedama_chain::jobs::submit::{judge_submit_answer, Verdict, SUBMIT_READ_TIMEOUT_S};
use otedama_chain::jobs::{assemble_block, BuiltJob};
use otedama_chain::rpc::RpcClient;
use otedama_cluster::records::{RecordKind, RecordReader};
use otedama_shared::hex32::display_hex;
use otedama_shared::share::BlockCandidate;

/// Candidates waiting for the relay. A block is rare; past this the cores' `try_send`
/// fails and the block goes through the control plane only.
pub const BLOCK_RELAY_QUEUE_MAX: usize = 64;
/// Block hashes the relay remembers having taken, so a candidate seen twice is
/// submitted once.
pub const BLOCK_RELAY_SEEN_MAX: usize = 1_024;
/// How long the relay keeps at one block (reading its job, waiting for the node's
/// answer): no new attempt starts past it, and one under way ends within one request's
/// timeout (the job stream's 10 s, `SUBMIT_READ_TIMEOUT_S`). Past it the block is the
/// control plane's alone: a node that cannot be reached from this host for that long is
/// no better a path than the link.
pub const BLOCK_RELAY_TRY_MS: u64 = 30_000;
const BLOCK_RELAY_RETRY_DELAY_MS: u64 = 500;

/// Starts the relay's thread: it reads jobs from the cluster at `nats_urls` and submits
/// to the node `rpc` names. The sender the data plane's cores queue candidates on.
pub fn start(rpc: RpcClient, nats_urls: Vec<String>) -> anyhow::Result<Sender<BlockCandidate>> {
    let jobs = RecordReader::start(nats_urls, RecordKind::Jobs)?;
    let rpc = rpc.with_read_timeout(Duration::from_secs(SUBMIT_READ_TIMEOUT_S));
    let (candidates, incoming) = crossbeam_channel::bounded(BLOCK_RELAY_QUEUE_MAX);
    std::thread::Builder::new()
        .name("block-relay".into())
        .spawn(move || relay_loop(&jobs, &rpc, incoming))?;
    Ok(candidates)
}

/// The hashes of the last `BLOCK_RELAY_SEEN_MAX` blocks taken.
#[derive(Default)]
struct Seen {
    order: VecDeque<[u8; 32]>,
    hashes: HashSet<[u8; 32]>,
}

impl Seen {
    /// Whether `hash` is new (it is then remembered, and the oldest forgotten past the
    /// limit).
    fn first_time(&mut self, hash: [u8; 32]) -> bool {
        if !self.hashes.insert(hash) {
            return false;
        }
        self.order.push_back(hash);
        if self.order.len() > BLOCK_RELAY_SEEN_MAX {
            let oldest = self.order.pop_front().expect("over the limit");
            self.hashes.remove(&oldest);
        }
        true
    }
}

/// Jobs the relay keeps after reading them, the newest: on a network where most shares
/// are blocks (regtest, testnet's minimum-difficulty blocks) one job's candidates come in
/// a burst, and a job can be 32 MiB.
const BLOCK_RELAY_JOBS_KEPT_MAX: usize = 4;

fn relay_loop(jobs: &RecordReader, rpc: &RpcClient, incoming: Receiver<BlockCandidate>) {
    let mut seen = Seen::default();
    let mut kept: VecDeque<(u64, std::sync::Arc<BuiltJob>)> = VecDeque::new();
    for candidate in incoming {
        let Ok(header) = <[u8; 80]>::try_from(candidate.header.as_slice()) else {
            continue;
        };
        let hash = otedama_kernels::sha256d(&header);
        if !seen.first_time(hash) {
            continue;
        }
        let hash = display_hex(&hash);
        let deadline = Instant::now() + Duration::from_millis(BLOCK_RELAY_TRY_MS);
        let job = match kept.iter().find(|(id, _)| *id == candidate.job_id) {
            Some((_, job)) => job.clone(),
            None => {
                let Some(job) = read_job(jobs, candidate.job_id, &hash, deadline) else {
                    continue;
                };
                let job = std::sync::Arc::new(job);
                if kept.len() == BLOCK_RELAY_JOBS_KEPT_MAX {
                    kept.pop_front();
                }
                kept.push_back((candidate.job_id, job.clone()));
                job
            }
        };
        let block = match assemble_block(&job, &candidate) {
            Ok(block) => block,
            Err(error) => {
                tracing::warn!(%hash, %error, "block relay: cannot build the block from the job stream's job; the control plane submits it");
                continue;
            }
        };
        submit(rpc, &hex::encode(block), &hash, candidate.height, deadline);
    }
}

/// The job a block was found on, from the job stream; `None` (logged) if it cannot be
/// had before `deadline`.
fn read_job(jobs: &RecordReader, job_id: u64, hash: &str, deadline: Instant) -> Option<BuiltJob> {
    loop {
        match jobs.read(&job_id.to_string(), deadline) {
            Ok(Some(bytes)) => {
                return match JobStore::decode(job_id, &bytes) {
                    Ok(job) => Some(job),
                    Err(error) => {
                        tracing::warn!(%hash, %error, "block relay: the job stream's job is unreadable; the control plane submits the block");
                        None
                    }
                };
            }
            Ok(None) => {
                tracing::warn!(%hash, job_id, "block relay: the job is not in the job stream; the control plane submits the block");
                return None;
            }
            Err(error) if Instant::now() + retry_delay() >= deadline => {
                tracing::warn!(%hash, job_id, %error, "block relay: cannot read the job; the control plane submits the block");
                return None;
            }
            Err(error) => {
                tracing::debug!(%hash, %error, "block relay: reading the job again");
                std::thread::sleep(retry_delay());
            }
        }
    }
}

/// Submits until the node gives an answer the block can be judged by, or `deadline`.
/// Only logged: the control plane records the block when it settles it.
fn submit(rpc: &RpcClient, block_hex: &str, hash: &str, height: u64, deadline: Instant) {
    loop {
        match judge_submit_answer(&rpc.submit_block(block_hex)) {
            Verdict::Accepted => {
                tracing::info!(%hash, height, "block relay: the node accepted the block from this host");
                return;
            }
            Verdict::AskChain(reason) => {
                tracing::info!(%hash, height, %reason, "block relay: the node already has the block");
                return;
            }
            Verdict::Rejected(reason) => {
                tracing::warn!(%hash, height, %reason, "block relay: the node refused the block");
                return;
            }
            Verdict::NoAnswer(why) if Instant::now() + retry_delay() >= deadline => {
                tracing::warn!(%hash, height, %why, "block relay: no answer from the node; the control plane submits the block");
                return;
            }
            Verdict::NoAnswer(why) => {
                tracing::debug!(%hash, %why, "block relay: submitting again");
                std::thread::sleep(retry_delay());
            }
        }
    }
}

fn retry_delay() -> Duration {
    Duration::from_millis(BLOCK_RELAY_RETRY_DELAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash is taken once; the memory holds `BLOCK_RELAY_SEEN_MAX` hashes and forgets
    /// the oldest first.
    #[test]
    fn seen_hashes_are_taken_once_up_to_the_limit() {
        let mut seen = Seen::default();
        let hash = |n: usize| {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(n as u64).to_le_bytes());
            hash
        };
        for n in 0..BLOCK_RELAY_SEEN_MAX {
            assert!(seen.first_time(hash(n)));
        }
        assert!(!seen.first_time(hash(0)), "held at the limit");
        assert!(seen.first_time(hash(BLOCK_RELAY_SEEN_MAX)));
        assert_eq!(seen.hashes.len(), BLOCK_RELAY_SEEN_MAX);
        assert!(seen.first_time(hash(0)), "the oldest was forgotten");
        assert!(!seen.first_time(hash(BLOCK_RELAY_SEEN_MAX)));
    }
}
