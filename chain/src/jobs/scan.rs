//! The block scan: every share log is read for block shares (`is_block`), and each one
//! that has no block record yet is handed to the submitters, so a found block reaches the
//! node even when its message over the data-plane link was lost (a control plane killed
//! with the candidate in its socket, a link that was down, a full queue). The candidate
//! is rebuilt from the share record and the stored job.
//!
//! Invariant: a scan cursor never passes a block share whose block has no record; after
//! any crash, the scan starts again at or before the first unsettled block share.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otedama_kernels::sha256d;
use otedama_shared::hex32::display_hex;
use otedama_shared::share::BlockCandidate;
use otedama_shared::{Job, ShareRecord};

use super::store::JobStoreError;
use super::submit::{CandidateQueue, CandidateSource, Pushed};
use super::BuiltJob;
use crate::blocks::BlockStore;
use otedama_sharelog::tail::{ShareLogTail, SHARES_PER_POLL_MAX};

/// How long a block share may wait for the live path to record it before the scan hands
/// it to the submitters itself.
pub const BLOCK_SCAN_GRACE_MS: u64 = 2_000;
/// Shares before the end of a share log that a first scan (no cursor yet) starts at.
pub const BLOCK_SCAN_BACKFILL_SHARES: usize = 100_000;

/// A block share without a block record yet.
struct Unsettled {
    sequence: u64,
    hash: [u8; 32],
    record: ShareRecord,
    seen_at: Instant,
}

/// One share log's scan.
struct LogScan {
    tail: ShareLogTail,
    unsettled: VecDeque<Unsettled>,
    cursor_saved: Option<u64>,
}

pub struct BlockScan {
    logs: Vec<LogScan>,
}

impl BlockScan {
    /// Starts each log's scan at its saved cursor, or `BLOCK_SCAN_BACKFILL_SHARES` before
    /// its end the first time.
    pub fn new(
        store: &BlockStore,
        tails: impl Fn(u32, Option<u64>) -> ShareLogTail,
        processes: u32,
    ) -> Self {
        let mut scan = BlockScan { logs: Vec::new() };
        for process in 0..processes {
            scan.add_log(store, process, |cursor| tails(process, cursor));
        }
        scan
    }

    /// Adds log `process` (in cluster mode, a mirrored log found after the start, under
    /// its ledger id), scanned from its saved cursor or, the first time, its backfill.
    pub fn add_log(
        &mut self,
        store: &BlockStore,
        process: u32,
        tail: impl FnOnce(Option<u64>) -> ShareLogTail,
    ) {
        let cursor = store.scan_cursor(process).unwrap_or_else(|error| {
            tracing::error!(%error, process, "cannot read the block scan cursor; scanning from the backfill");
            None
        });
        self.logs.push(LogScan {
            tail: tail(cursor),
            unsettled: VecDeque::new(),
            cursor_saved: cursor,
        });
    }

    /// Reads what the logs gained, hands the block shares the live path has not settled
    /// in time to `queue`, and saves each cursor. `job` finds a job by id (`Err` when the
    /// disk cannot say, and the share stays unsettled). Unless `settle` (a standby control
    /// plane, whose records come from the leader), nothing is handed on or recorded: the
    /// block shares without a record stay unsettled, and the cursors wait before them.
    pub fn step(
        &mut self,
        store: &BlockStore,
        queue: &CandidateQueue<(BlockCandidate, CandidateSource)>,
        job: &dyn Fn(u64) -> Result<Option<Arc<BuiltJob>>, JobStoreError>,
        settle: bool,
    ) {
        for log in &mut self.logs {
            loop {
                let read = match log.tail.poll() {
                    Ok(read) => read,
                    Err(error) => {
                        tracing::warn!(%error, process = log.tail.process, "block scan cannot read the share log");
                        break;
                    }
                };
                let full = read.len() >= SHARES_PER_POLL_MAX;
                // Monero blocks go up whole in their candidates; a Monero record's header
                // is not a block header (`MoneroAcceptedShare::record`).
                let blocks = read.into_iter().filter(|(_, r)| {
                    r.is_block && r.protocol != Some(otedama_shared::Protocol::Monero)
                });
                for (sequence, record) in blocks {
                    log.unsettled.push_back(Unsettled {
                        sequence,
                        hash: sha256d(&record.header),
                        record,
                        seen_at: Instant::now(),
                    });
                }
                if !full {
                    break;
                }
            }
            log.unsettled
                .retain(|u| !store.contains(&display_hex(&u.hash)).unwrap_or(false));
            let grace = Duration::from_millis(BLOCK_SCAN_GRACE_MS);
            log.unsettled.retain(|u| {
                if !settle || u.seen_at.elapsed() < grace || queue.is_pending(&u.hash) {
                    return true;
                }
                let job = match job(u.record.job_id) {
                    Ok(Some(job)) => job,
                    // Settled once recorded; a record that could not be written (the
                    // disk, or in cluster mode the block stream) leaves it unsettled, so
                    // the payout thread never waits for it without end.
                    Ok(None) => {
                        tracing::error!(hash = %display_hex(&u.hash), job_id = u.record.job_id, "block share for a job that is not stored: cannot rebuild its block");
                        return !record_unsubmittable(store, u, "its job is not stored");
                    }
                    // The disk could not say: keep it unsettled and ask again next time.
                    Err(error) => {
                        tracing::error!(%error, hash = %display_hex(&u.hash), "cannot read the job of a block share; trying again");
                        return true;
                    }
                };
                match candidate_from_record(&job, &u.record) {
                    Some(candidate) => {
                        tracing::warn!(hash = %display_hex(&u.hash), height = candidate.height, "block share found by the scan, not by the link: submitting");
                        if let Pushed::QueuedDropping(dropped) = queue.push(
                            u.hash,
                            candidate.height,
                            (candidate, CandidateSource::Recovered),
                        ) {
                            tracing::warn!(dropped = %display_hex(&dropped), "block candidate queue full");
                        }
                        true
                    }
                    None => {
                        tracing::error!(hash = %display_hex(&u.hash), "block share does not match its job");
                        !record_unsubmittable(store, u, "it does not match its job")
                    }
                }
            });
            let cursor = log
                .unsettled
                .front()
                .map(|u| u.sequence)
                .or(log.tail.next_sequence());
            if let Some(cursor) = cursor.filter(|c| Some(*c) != log.cursor_saved) {
                match store.set_scan_cursor(log.tail.process, cursor) {
                    Ok(()) => log.cursor_saved = Some(cursor),
                    Err(error) => tracing::error!(%error, "cannot save the block scan cursor"),
                }
            }
        }
    }
}

/// Records a block share whose block cannot be rebuilt, as refused with why: the operator
/// sees it among the rejected blocks, and the payout thread knows it will never become a
/// block (rounds after it wait for every block share to be recorded). Whether the record
/// is written.
fn record_unsubmittable(store: &BlockStore, unsettled: &Unsettled, why: &str) -> bool {
    let record = crate::blocks::BlockRecord {
        hash: display_hex(&unsettled.hash),
        height: unsettled.record.height,
        worker: unsettled.record.worker.clone(),
        job_id: unsettled.record.job_id,
        submitted_at_ms: 0,
        rejected_reason: Some(format!("unsubmittable: {why}")),
        reward: 0,
        status: Default::default(),
        confirmations: 0,
        network_difficulty: 0.0,
        header: hex::encode(unsettled.record.header),
        found_at_ms: unsettled.record.accepted_at_ms,
    };
    match store.record(&record, true) {
        Ok(_) => true,
        Err(error) => {
            tracing::error!(%error, hash = %record.hash, "cannot record an unsubmittable block share; trying again");
            false
        }
    }
}

/// The candidate a block share stands for: its header and the coinbase its job makes with
/// its extranonces. `None` if the job's merkle root with that coinbase is not the header's.
pub fn candidate_from_record(job: &BuiltJob, record: &ShareRecord) -> Option<BlockCandidate> {
    let data_plane_job = Job::new(job.job.clone()).ok()?;
    let coinbase = data_plane_job.coinbase(&record.extranonce1, &record.extranonce2);
    let root = otedama_kernels::merkle_root_from_branch(
        &sha256d(&coinbase),
        &data_plane_job.merkle_branch,
    );
    if record.header[36..68] != root {
        return None;
    }
    Some(BlockCandidate {
        job_id: record.job_id,
        height: record.height,
        header: record.header.to_vec(),
        coinbase,
        worker: record.worker.clone(),
        found_at_ms: record.accepted_at_ms,
    })
}
