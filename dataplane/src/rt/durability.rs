//! A share's way to its acknowledgement: stored in the share log (its block sent up first),
//! counted against the connection's and the core's allowances, and acknowledged once the
//! share log reports it durable (or refused if the write failed).

use super::*;
use otedama_sharelog::writer::StoreError;
use std::sync::atomic::Ordering;

/// How often a core looks at the share shipper's progress while acknowledgements wait
/// for replication (`share_ack = "replicated"`): well under the stream's own quorum round
/// trip, so the look adds little to it.
const REPLICATION_POLL_US: u64 = 200;

/// Block candidates one core holds after the upstream queue refused them, resent every
/// second. Each is a few hundred bytes; a found block is rare outside regtest, so the
/// list only fills if the link stays down while the core finds this many blocks.
pub const BLOCK_CANDIDATES_HELD_MAX: usize = 256;

/// Candidates waiting for room on the upstream queue, oldest first. Holding them here
/// (besides the block scan, which finds a stored share's block in the share log) means a
/// block whose share could not be stored either still reaches the node once the link
/// drains. The control plane submits a block once by its hash, so a candidate that
/// arrives both ways is not submitted twice.
#[derive(Default)]
pub struct HeldCandidates {
    held: VecDeque<BlockCandidate>,
}

impl HeldCandidates {
    /// Holds a refused candidate. At `BLOCK_CANDIDATES_HELD_MAX` the oldest gives way (a
    /// newer block builds on a newer tip, so it is the one still worth submitting) and is
    /// returned, for the caller to log whole.
    pub fn hold(&mut self, candidate: BlockCandidate) -> Option<BlockCandidate> {
        let evicted = if self.held.len() >= BLOCK_CANDIDATES_HELD_MAX {
            self.held.pop_front()
        } else {
            None
        };
        self.held.push_back(candidate);
        evicted
    }

    /// Sends held candidates, oldest first, while the queue has room; returns how many
    /// went.
    pub fn resend(&mut self, upstream: &crossbeam_channel::Sender<Upstream>) -> usize {
        let mut sent = 0;
        while let Some(candidate) = self.held.pop_front() {
            match upstream.try_send(Upstream::BlockCandidate(candidate)) {
                Ok(()) => sent += 1,
                Err(refused) => {
                    if let Upstream::BlockCandidate(candidate) = refused.into_inner() {
                        self.held.push_front(candidate);
                    }
                    break;
                }
            }
        }
        sent
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Every candidate still held, oldest first.
    pub fn take_all(&mut self) -> Vec<BlockCandidate> {
        self.held.drain(..).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Logs a candidate the pool can no longer submit by itself, whole, so the operator can.
pub(super) fn log_lost_candidate(candidate: &BlockCandidate, why: &str) {
    tracing::error!(
        candidate = %serde_json::to_string(candidate).unwrap_or_default(),
        why,
        "block candidate lost to the pool; submit it by hand"
    );
}

impl Core {
    /// Sends an accepted share's block up at once, then appends the share to the share
    /// log. The block goes first and whatever the share log says: a valid block is worth
    /// submitting even if its share cannot be kept. One the upstream queue refuses is held
    /// and resent (`HeldCandidates`), and found in the share log by the control plane's
    /// block scan as well. On success the share counts against the connection's and the
    /// core's allowances until it is durable; `false` if it could not be stored.
    pub fn store_share(
        &self,
        awaiting_ack: &Gate,
        record: &ShareRecord,
        block: Option<BlockCandidate>,
    ) -> bool {
        if let Some(block) = block {
            self.send_block_up(block);
        }
        if let Err(error) = self.share_log.append(self.index, record) {
            tracing::error!(%error, "share not stored");
            return false;
        }
        awaiting_ack.take(1);
        self.awaiting_durability.take(1);
        true
    }

    /// A block from a share that earns nothing (`UncreditedBlock`): the block goes up at
    /// once, and its record (difficulty 0) to the share log, where a candidate lost on the
    /// way is found again. The miner's refusal is already queued; nothing more is said to
    /// it when the record is durable.
    pub fn store_uncredited_block(
        &self,
        peer: Peer,
        mut uncredited: UncreditedBlock,
        protocol: Protocol,
    ) {
        uncredited.record.protocol = Some(protocol);
        let validated_at = std::time::Instant::now();
        if self.store_share(
            peer.awaiting_ack(),
            &uncredited.record,
            Some(uncredited.block),
        ) {
            self.await_durability(AwaitingAck {
                share: Box::new(UncreditedOnDisk { peer }),
                protocol,
                validated_at,
            });
        } else {
            tracing::error!("{UNCREDITED_RECORD_NOT_STORED}");
        }
    }

    /// Sends a block candidate to the control plane at once, or holds it for resending if
    /// the upstream queue is full; in cluster mode to the host's own submitter as well.
    pub fn send_block_up(&self, block: BlockCandidate) {
        self.counters
            .block_candidates
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(relay) = &self.block_relay {
            // The relay only hastens a block: one it has no room for still goes up the
            // link and into the share log, where the control plane finds it.
            if relay.try_send(block.clone()).is_err() {
                tracing::warn!(
                    height = block.height,
                    "the host's block submitter is busy or gone: this block goes through the control plane only"
                );
            }
        }
        // Behind candidates already held, a new one waits its turn.
        self.resend_held_candidates();
        let mut held = self.held_candidates.borrow_mut();
        let refused = if held.is_empty() {
            self.upstream
                .try_send(Upstream::BlockCandidate(block))
                .err()
                .map(|refused| refused.into_inner())
        } else {
            Some(Upstream::BlockCandidate(block))
        };
        if let Some(Upstream::BlockCandidate(block)) = refused {
            tracing::error!(
                held = held.len() + 1,
                "upstream queue full: block candidate held for resending"
            );
            if let Some(evicted) = held.hold(block) {
                log_lost_candidate(&evicted, "BLOCK_CANDIDATES_HELD_MAX reached");
            }
        }
    }

    /// Sends what the upstream queue has room for of the held candidates (every second,
    /// and before a new one).
    pub fn resend_held_candidates(&self) {
        let mut held = self.held_candidates.borrow_mut();
        if !held.is_empty() && held.resend(&self.upstream) > 0 {
            tracing::info!(still_held = held.len(), "held block candidates sent up");
        }
    }

    /// Queues the acknowledgement of a share `store_share` took.
    pub fn await_durability(&self, awaiting: AwaitingAck) {
        self.awaiting.borrow_mut().push_back(awaiting);
    }

    /// With `share_ack = "replicated"`: waits until the share shipper has every share of
    /// `done` in the replicated stream, and returns when it had (`None` without that
    /// setting, or for a batch that was not stored). The core's completions are taken one
    /// at a time in order, so later batches wait behind this one; how many can wait is
    /// bounded by the core's durability allowance, which stops the core taking shares
    /// once full.
    ///
    /// Invariant: a share is acknowledged `true` only once the stream holds it (its
    /// number is below `shipped_through`). A shipper that stopped for good (the log and
    /// the stream disagree, `diverged`) or whose thread ended never will, so the batch is
    /// refused instead; so is every batch when replication was asked for but no shipper
    /// runs.
    pub(super) async fn await_replication(
        &self,
        done: &mut Completed,
    ) -> Option<std::time::Instant> {
        if !self.config.share_ack_replicated || done.result.is_err() {
            return None;
        }
        let Some(shipper) = self.counters.share_shipping.get() else {
            done.result = Err(StoreError::NotReplicated("no share shipper runs".into()));
            return None;
        };
        // Once per batch: the shipper then reads the log at once, and goes on polling on
        // its own while it has records to ship (a wake every look would keep it catching
        // up with the log thousands of times a second when it cannot move on).
        shipper.wake();
        loop {
            // Looked at first: a shipper that stopped has the last word, whatever figure
            // it left behind.
            if shipper.diverged.load(Ordering::Acquire) {
                done.result = Err(StoreError::NotReplicated(
                    "the share shipper stopped: the log and the stream disagree".into(),
                ));
                return None;
            }
            if shipper.shipped_through.load(Ordering::Acquire) >= done.through_sequence {
                return Some(std::time::Instant::now());
            }
            if shipper.ended.load(Ordering::Acquire) {
                done.result = Err(StoreError::NotReplicated(
                    "the share shipper has ended".into(),
                ));
                return None;
            }
            glommio::timer::sleep(std::time::Duration::from_micros(REPLICATION_POLL_US)).await;
        }
    }

    /// The share log made the next `done.shares` of this core's shares durable (or failed
    /// to): answer each miner, in order, and let readers go on. Each connection's replies
    /// are sent once at the end, so a batch's acknowledgements share a send (and, in V2,
    /// fold into one SubmitShares.Success per channel). `replicated_at`: when the stream
    /// had the batch too (`await_replication`).
    pub(super) fn complete_shares(
        &self,
        done: Completed,
        replicated_at: Option<std::time::Instant>,
    ) {
        let now_s = now_s();
        let now = std::time::Instant::now();
        let [queue, disk, handoff, reply, replicate] = &self.counters.ack_stages;
        let micros = |from: std::time::Instant, to: std::time::Instant| {
            to.saturating_duration_since(from).as_micros() as u64
        };
        if done.result.is_ok() {
            disk.record(micros(done.taken_at, done.written_at), done.shares as u64);
            if let Some(replicated_at) = replicated_at {
                replicate.record(micros(done.written_at, replicated_at), done.shares as u64);
            }
            let handed_at = replicated_at.unwrap_or(done.written_at);
            handoff.record(micros(handed_at, now), done.shares as u64);
        }
        let mut touched: Vec<Peer> = Vec::new();
        let mut touched_wires: std::collections::HashSet<*const ()> = Default::default();
        for _ in 0..done.shares {
            let Some(AwaitingAck {
                share,
                protocol,
                validated_at,
            }) = self.awaiting.borrow_mut().pop_front()
            else {
                tracing::error!("share log completed more shares than this core sent");
                break;
            };
            let (credited, peer) = share.answer(done.result.is_ok(), now_s, &self.jobs.borrow());
            // An uncredited block's record (`None`) was counted as refused when it was found.
            if let (Some(difficulty), true) = (credited, done.result.is_ok()) {
                self.counters.accepted(difficulty, protocol);
                self.counters.acknowledged(micros(validated_at, now));
                queue.record(micros(validated_at, done.taken_at), 1);
            } else if credited.is_some() {
                self.counters.rejected(ErrorCode::Other);
            }
            peer.awaiting_ack().give_back(1);
            if touched_wires.insert(peer.identity()) {
                touched.push(peer);
            }
        }
        for peer in touched {
            peer.flush();
        }
        if done.result.is_ok() {
            reply.record(micros(now, std::time::Instant::now()), done.shares as u64);
        }
        self.awaiting_durability.give_back(done.shares);
    }
}

const UNCREDITED_RECORD_NOT_STORED: &str =
    "the record of an uncredited block could not be stored; the block went up, but a restart before its submission loses it";

/// The record of an uncredited block on its way to the disk: nothing to tell the miner.
struct UncreditedOnDisk {
    peer: Peer,
}

impl AwaitingDisk for UncreditedOnDisk {
    fn answer(self: Box<Self>, durable: bool, _now_s: u64, _jobs: &JobBook) -> (Option<f64>, Peer) {
        if !durable {
            tracing::error!("{UNCREDITED_RECORD_NOT_STORED}");
        }
        (None, self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::candidate;

    /// `BLOCK_CANDIDATES_HELD_MAX` candidates are held; one more evicts exactly the oldest.
    /// Once the queue has room they go up oldest first, and what does not fit stays held.
    #[test]
    fn held_candidates_hold_their_limit_and_go_up_in_order() {
        let mut held = HeldCandidates::default();
        for height in 0..BLOCK_CANDIDATES_HELD_MAX as u64 {
            assert!(held.hold(candidate(height)).is_none());
        }
        assert_eq!(held.len(), BLOCK_CANDIDATES_HELD_MAX);
        let evicted = held.hold(candidate(BLOCK_CANDIDATES_HELD_MAX as u64));
        assert_eq!(evicted.map(|c| c.height), Some(0));
        assert_eq!(held.len(), BLOCK_CANDIDATES_HELD_MAX);

        let room = 10;
        let (upstream, link) = crossbeam_channel::bounded(room);
        assert_eq!(held.resend(&upstream), room);
        assert_eq!(held.len(), BLOCK_CANDIDATES_HELD_MAX - room);
        let heights: Vec<u64> = link
            .try_iter()
            .map(|message| match message {
                Upstream::BlockCandidate(candidate) => candidate.height,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(heights, (1..=room as u64).collect::<Vec<_>>());
        // The queue drained: the rest go, next in line first.
        let (upstream, link) = crossbeam_channel::bounded(BLOCK_CANDIDATES_HELD_MAX);
        assert_eq!(held.resend(&upstream), BLOCK_CANDIDATES_HELD_MAX - room);
        assert!(held.is_empty());
        match link.try_recv().unwrap() {
            Upstream::BlockCandidate(candidate) => assert_eq!(candidate.height, room as u64 + 1),
            _ => unreachable!(),
        }
    }
}
