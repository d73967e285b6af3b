//! Found blocks: candidates from the data planes' links and from the block scan of the
//! share logs go through one queue to the submitter threads, which settle each with the
//! node; the status loop follows every found block until it matures or is orphaned.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use otedama_kernels::sha256d;
use otedama_shared::hex32::display_hex;
use otedama_shared::share::BlockCandidate;

use crate::api::now_ms;
use crate::config::PoolConfig;
use crate::stats::PoolState;
use otedama_chain::blocks::{BlockRecord, BlockStore, STALE_CANDIDATE_REASON_PREFIX};
use otedama_chain::jobs::scan::{BlockScan, BLOCK_SCAN_BACKFILL_SHARES};
use otedama_chain::jobs::store::JobStore;
use otedama_chain::jobs::submit::{
    chain_place_when_answered, submit_until_settled, CandidateQueue, CandidateSource, ChainPlace,
    Pushed,
};
use otedama_chain::jobs::{assemble_block, BuiltJob};
use otedama_chain::rpc::RpcClient;
use otedama_cluster::records::Leadership;
use otedama_ledger::lifecycle::{classify, BlockStatus};
use otedama_sharelog::tail::ShareLogTail;

/// Milliseconds between two reads of the share logs by the block scan.
pub(crate) const BLOCK_SCAN_INTERVAL_MS: u64 = 500;

/// A job by id: the ones this process built are in memory, older ones on disk. `Err`
/// when the disk could not say, which is not the same as "no such job".
pub(crate) fn find_job(
    state: &PoolState,
    jobs: &JobStore,
    job_id: u64,
) -> Result<Option<Arc<BuiltJob>>, otedama_chain::jobs::store::JobStoreError> {
    match state.job(job_id) {
        Some(job) => Ok(Some(job)),
        None => Ok(jobs.get(job_id)?.map(Arc::new)),
    }
}

/// Cluster mode: the share mirror's logs and the ledger that numbers them.
pub(crate) struct ScanMirror {
    pub status: Arc<otedama_cluster::mirror::MirrorStatus>,
    pub ledger: Arc<std::sync::Mutex<otedama_ledger::ledger::Ledger>>,
}

/// Reads the share logs for block shares the live path missed (see `jobs::scan`): the
/// local data planes' logs, or in cluster mode the copies of every host's log (the scan
/// is then how a block share found on another host reaches this host's submitters).
pub(crate) fn block_scan_loop(
    config: PoolConfig,
    state: Arc<PoolState>,
    store: Arc<BlockStore>,
    jobs: Arc<JobStore>,
    queue: Arc<Candidates>,
    mirror: Option<ScanMirror>,
    leadership: Option<Arc<Leadership>>,
) {
    let processes = match mirror {
        Some(_) => 0,
        // Both slots of every process: a log written during an upgrade holds shares too.
        None => config.share_log_slots() as u32,
    };
    let tail = |process: u32, cursor: Option<u64>| {
        ShareLogTail::new(
            process,
            config.share_log_path(process as usize),
            config.data_dir.join(format!("block-scan-{process}")),
            cursor,
            BLOCK_SCAN_BACKFILL_SHARES,
        )
    };
    let mut scan = BlockScan::new(&store, tail, processes);
    let job = |job_id: u64| find_job(&state, &jobs, job_id);
    let mut followed = std::collections::BTreeSet::new();
    loop {
        if let Some(mirror) = &mirror {
            for log in mirror.status.logs() {
                if followed.contains(&log.name) {
                    continue;
                }
                let id = match mirror.ledger.lock().expect("ledger lock").log_id(&log.name) {
                    Ok(id) => id,
                    Err(error) => {
                        tracing::error!(%error, log = %log.name, "cannot number a mirrored share log; trying again");
                        break;
                    }
                };
                scan.add_log(&store, id, |cursor| {
                    ShareLogTail::new(
                        id,
                        log.path.clone(),
                        config.data_dir.join(format!("block-scan-{}", log.name)),
                        cursor,
                        BLOCK_SCAN_BACKFILL_SHARES,
                    )
                    .without_writer_check()
                });
                followed.insert(log.name);
            }
        }
        // A standby reads the logs too, but only the leader submits what it finds: the
        // standby's found blocks come from the leader's records, and its scan hands on
        // what is still unrecorded once it leads.
        let settle = leadership
            .as_ref()
            .is_none_or(|leadership| leadership.leads());
        scan.step(&store, &queue, &job, settle);
        std::thread::sleep(Duration::from_millis(BLOCK_SCAN_INTERVAL_MS));
    }
}

/// Block candidates on their way from the data planes' links to the submitters' queue.
/// The forwarding thread only hashes a header and pushes it, so this stays near empty; a
/// link that finds it full waits for room (off the async workers) and reads nothing more
/// meanwhile, so the data plane's own bounded queue takes the back-pressure.
pub const CANDIDATES_IN_TRANSIT_MAX: usize = 4096;

/// A candidate from a data plane's link, with whether it is new or a resend.
pub(crate) type SourcedCandidate = (BlockCandidate, CandidateSource);

pub(crate) fn candidate_channel() -> (Sender<SourcedCandidate>, Receiver<SourcedCandidate>) {
    crossbeam_channel::bounded(CANDIDATES_IN_TRANSIT_MAX)
}

/// The block candidates waiting for a submitter, with where each came from.
pub(crate) type Candidates = CandidateQueue<(BlockCandidate, CandidateSource)>;

/// Moves candidates from the data planes' links into the submitters' queue: a new one as
/// `Live`, one a data plane sent again on a new link as `Recovered` (an earlier control
/// plane may have submitted it, so the node is asked before it is called stale).
pub(crate) fn queue_link_candidates(
    queue: Arc<Candidates>,
    candidates: Receiver<SourcedCandidate>,
) {
    for (candidate, source) in candidates {
        let Ok(header) = <[u8; 80]>::try_from(candidate.header.as_slice()) else {
            tracing::warn!(
                job_id = candidate.job_id,
                "block candidate without an 80-byte header"
            );
            continue;
        };
        let hash = sha256d(&header);
        let height = candidate.height;
        if let Pushed::QueuedDropping(dropped) = queue.push(hash, height, (candidate, source)) {
            tracing::warn!(dropped = %display_hex(&dropped), "block candidate queue full: dropped the lowest (the block scan finds it again)");
        }
    }
}

/// How long a submitter holds a candidate for this control plane to lead (cluster mode:
/// a data plane's link may reach a new leader before it has read the former one's
/// records) before it lets the candidate go to the block scan.
pub(crate) const SUBMIT_LEAD_WAIT_MS: u64 = 30_000;

/// Whether this control plane leads, waiting up to `SUBMIT_LEAD_WAIT_MS` for it; always
/// outside cluster mode.
fn leads_within(leadership: Option<&Leadership>) -> bool {
    let Some(leadership) = leadership else {
        return true;
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(SUBMIT_LEAD_WAIT_MS);
    while !leadership.leads() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Where a candidate may have been submitted from already: in cluster mode anywhere, as
/// every data-plane host submits its blocks itself too (`otedama::block_relay`), so the
/// node is asked before a candidate whose previous block is no longer the tip is called
/// stale (the tip may be that very block).
fn source_in_mode(source: CandidateSource, cluster_mode: bool) -> CandidateSource {
    if cluster_mode {
        CandidateSource::Recovered
    } else {
        source
    }
}

/// One of `SUBMITTER_THREADS`: takes the best candidate, settles it with the node and
/// records the outcome. In cluster mode only the leader does; a standby leaves candidates
/// unrecorded, and the block scan hands them over again once one leads.
pub(crate) fn submitter_loop(
    rpc: RpcClient,
    state: Arc<PoolState>,
    store: Arc<BlockStore>,
    jobs: Arc<JobStore>,
    queue: Arc<Candidates>,
    triggers: Sender<()>,
    leadership: Option<Arc<Leadership>>,
) {
    loop {
        let (hash, (candidate, source)) = queue.pop();
        // In cluster mode a data-plane host submits its blocks to the node itself as well
        // (`otedama::block_relay`), and the pool's tip may have moved on to this very
        // block: no candidate is called stale before the node is asked.
        let source = source_in_mode(source, leadership.is_some());
        if !leads_within(leadership.as_deref()) {
            tracing::warn!(hash = %display_hex(&hash), "block candidate not submitted: this control plane does not lead (the leader's block scan hands it on)");
            queue.done(&hash);
            continue;
        }
        match find_job(&state, &jobs, candidate.job_id) {
            Ok(Some(job)) => {
                settle_candidate(&rpc, &state, &store, &job, &candidate, source, &triggers)
            }
            // Not recorded either way: the block scan hands it over again, and says so if
            // the job is gone for good.
            Ok(None) => tracing::warn!(
                job_id = candidate.job_id,
                "block candidate for a job neither kept nor stored"
            ),
            Err(error) => tracing::error!(
                %error,
                job_id = candidate.job_id,
                "cannot read the job of a block candidate"
            ),
        }
        queue.done(&hash);
    }
}

/// Submits one candidate unless it is recorded already or can no longer win, and records
/// what the node said.
pub(crate) fn settle_candidate(
    rpc: &RpcClient,
    state: &PoolState,
    store: &BlockStore,
    job: &BuiltJob,
    candidate: &BlockCandidate,
    source: CandidateSource,
    triggers: &Sender<()>,
) {
    let Ok(header) = <[u8; 80]>::try_from(candidate.header.as_slice()) else {
        return;
    };
    let hash = display_hex(&sha256d(&header));
    if store.contains(&hash).unwrap_or(false) {
        return;
    }
    let prevhash: [u8; 32] = header[4..36].try_into().expect("32 bytes");
    let can_still_win = || state.tip_prevhash().is_none_or(|tip| tip == prevhash);
    let stale =
        format!("{STALE_CANDIDATE_REASON_PREFIX}: the pool's tip moved on before submission");
    let reason = match (can_still_win(), source) {
        // Never submitted, and it cannot win: no round trip.
        (false, CandidateSource::Live) => Some(stale),
        // A process before this one, or a data-plane host, may have submitted it: ask
        // the node first.
        (false, CandidateSource::Recovered) => match chain_place_when_answered(rpc, &hash) {
            Ok(ChainPlace::Active) => None,
            // Unknown to this node, yet it may be out there (a host's relay may have given
            // it to another node): submitted, it is ours if it is on the chain now, and
            // stale as before otherwise.
            Ok(ChainPlace::Unknown) => match assemble_block(job, candidate) {
                Ok(block) => {
                    submit_until_settled(rpc, &hex::encode(&block), &hash, &|| false).map(|_| stale)
                }
                Err(error) => Some(format!("assembly-failed: {error}")),
            },
            Ok(ChainPlace::Aside) => Some(stale),
            // Left unrecorded: the block scan hands it over again later.
            Err(error) => {
                tracing::error!(%hash, %error, "the node does not say whether it has a recovered block; asking again later");
                return;
            }
        },
        (true, _) => match assemble_block(job, candidate) {
            Ok(block) => submit_until_settled(rpc, &hex::encode(&block), &hash, &can_still_win),
            Err(error) => Some(format!("assembly-failed: {error}")),
        },
    };
    let is_stale = reason
        .as_deref()
        .is_some_and(|r| r.starts_with(STALE_CANDIDATE_REASON_PREFIX));
    let record = BlockRecord {
        hash: hash.clone(),
        height: candidate.height,
        worker: candidate.worker.clone(),
        job_id: candidate.job_id,
        submitted_at_ms: now_ms(),
        rejected_reason: reason.clone(),
        reward: job.coinbase_value,
        status: BlockStatus::Pending,
        confirmations: 0,
        network_difficulty: otedama_kernels::Target::from_compact(job.job.bits)
            .map_or(0.0, |t| t.to_difficulty(job.job.algorithm.into())),
        header: hex::encode(&candidate.header),
        found_at_ms: candidate.found_at_ms,
    };
    let first_time = match store.record(&record, !is_stale) {
        Ok(first_time) => first_time,
        // Not recorded, so not counted: the block scan hands the share over again, and
        // the node is asked whether it has the block.
        Err(error) => {
            tracing::error!(%error, %hash, reason = ?reason, "cannot record block outcome; the block scan settles it again");
            return;
        }
    };
    match (&reason, first_time) {
        (None, true) => {
            state
                .blocks_found
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%hash, height = candidate.height, worker = %candidate.worker, "block accepted by the node");
            state.publish_event(crate::events::PoolEvent::BlockAccepted(record.clone()));
            let _ = triggers.send(());
        }
        (Some(_), true) if is_stale => {
            tracing::debug!(%hash, height = candidate.height, "stale block candidate")
        }
        (Some(reason), true) => {
            state
                .blocks_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%hash, height = candidate.height, reason = %reason, "block rejected by the node");
        }
        (_, false) => tracing::info!(%hash, "block already recorded"),
    }
}

/// Seconds between checks of found blocks' confirmations.
pub(crate) const BLOCK_STATUS_CHECK_INTERVAL_S: u64 = 10;

/// Follows every accepted, not yet final block on the node: pending → confirmed once it
/// has `coinbase_maturity` confirmations, or orphaned once it leaves the best chain. In
/// cluster mode only the leader does (a standby has the leader's records).
pub(crate) fn block_status_loop(
    rpc: RpcClient,
    store: Arc<BlockStore>,
    coinbase_maturity: u64,
    leadership: Option<Arc<Leadership>>,
) {
    loop {
        let leads = leadership
            .as_ref()
            .is_none_or(|leadership| leadership.leads());
        for block in store.pending().into_iter().filter(|_| leads) {
            let confirmations = match rpc.call("getblockheader", serde_json::json!([block.hash])) {
                Ok(header) => header["confirmations"].as_i64().unwrap_or(0),
                Err(error) => {
                    tracing::warn!(%error, hash = %block.hash, "cannot check a found block");
                    continue;
                }
            };
            let status = classify(confirmations, coinbase_maturity);
            if status != block.status || confirmations != block.confirmations {
                if status != block.status {
                    tracing::info!(hash = %block.hash, height = block.height, ?status, confirmations, "block status changed");
                }
                if let Err(error) = store.update_status(&block.hash, status, confirmations) {
                    tracing::error!(%error, hash = %block.hash, "cannot record block status");
                }
            }
        }
        std::thread::sleep(Duration::from_secs(BLOCK_STATUS_CHECK_INTERVAL_S));
    }
}

/// With a synthetic chain there is no node to take blocks: count and log them.
pub(crate) fn discard_candidates(state: Arc<PoolState>, candidates: Receiver<SourcedCandidate>) {
    for (candidate, _) in candidates {
        state
            .blocks_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(height = candidate.height, worker = %candidate.worker, "synthetic chain: block candidate not submitted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In cluster mode no candidate counts as never submitted, so none is called stale
    /// before the node is asked; outside it a live candidate stays live.
    #[test]
    fn in_cluster_mode_every_candidate_may_have_been_submitted() {
        for source in [CandidateSource::Live, CandidateSource::Recovered] {
            assert_eq!(source_in_mode(source, true), CandidateSource::Recovered);
            assert_eq!(source_in_mode(source, false), source);
        }
    }

    /// Candidates in transit stop at `CANDIDATES_IN_TRANSIT_MAX`; one more is refused at
    /// once (the link then waits for room) rather than queued without bound.
    #[test]
    fn candidates_in_transit_hold_their_limit() {
        let (links, forwarder) = candidate_channel();
        let candidate = || BlockCandidate {
            job_id: 1,
            height: 1,
            header: vec![0; 80],
            coinbase: Vec::new(),
            worker: "w".into(),
            found_at_ms: 0,
        };
        for _ in 0..CANDIDATES_IN_TRANSIT_MAX {
            links
                .try_send((candidate(), CandidateSource::Live))
                .expect("room up to the limit");
        }
        assert!(matches!(
            links.try_send((candidate(), CandidateSource::Live)),
            Err(crossbeam_channel::TrySendError::Full(_))
        ));
        forwarder.recv().unwrap();
        links
            .try_send((candidate(), CandidateSource::Live))
            .expect("room again");
    }
}
