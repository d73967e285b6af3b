//! Crediting: the payout thread's reading of the share logs into the share history (and,
//! under PPS/FPPS, into the ledger), and each found block's round cut from that history
//! and credited once, by its hash, whatever the order in which blocks and shares arrive.

use std::collections::BTreeMap;

use otedama_chain::blocks::BlockRecord;
use otedama_ledger::ledger::BlockState;
use otedama_ledger::lifecycle::BlockStatus;
use otedama_ledger::schemes::{per_share_credit, split_block, Round, Scheme};
use otedama_ledger::shares::{HistoryShare, ShareKey};
use otedama_shared::hex32::display_hex;
use otedama_sharelog::tail::ShareLogTail;

use super::runner::{PayoutRunner, PayoutSettings};

/// How far past a block's time every share log must be read before the block's round is
/// cut by time, when its own share record was not found (the share log refused to write
/// it, or it is older than the history kept). Log time, not wall time: a stalled log
/// holds the cut back rather than let it fall early.
pub const BLOCK_SHARE_WAIT_MS: u64 = 10_000;
/// How long a block may wait for a lagging share log before the wait is logged.
const BLOCK_CUT_WAIT_WARN_MS: u64 = 60_000;

impl PayoutRunner {
    /// Reads every log's new shares into the history and, under PPS/FPPS, credits them.
    /// Invariant: the shares read and the log positions after them are one ledger write
    /// (`Ledger::credit_shares`). If reading or that write fails, every tail goes back to
    /// where this pass started, so the next pass reads the same shares again: none is
    /// skipped, and none is credited twice (the stored cursors guard a replay).
    pub(super) fn read_shares(
        &mut self,
        settings: &PayoutSettings,
        block_value: Option<crate::stats::BlockValue>,
    ) -> anyhow::Result<()> {
        let starts: Vec<_> = self.tails.iter().map(ShareLogTail::position).collect();
        let result = self.read_and_credit_shares(settings, block_value);
        if result.is_err() {
            for (tail, start) in self.tails.iter_mut().zip(starts) {
                tail.rewind(start);
            }
        }
        result
    }

    pub(super) fn read_and_credit_shares(
        &mut self,
        settings: &PayoutSettings,
        block_value: Option<crate::stats::BlockValue>,
    ) -> anyhow::Result<()> {
        let mut batch = Vec::new();
        let mut block_shares = Vec::new();
        let mut cursors = BTreeMap::new();
        let mut credits: BTreeMap<String, u64> = BTreeMap::new();
        // Where each log's per-share credit stands: shares before it were credited by an
        // earlier pass (a tail reads some of them again, for the history, after a start).
        // Shares in a round a block already paid (before a switch to a per-share scheme)
        // are not credited again either.
        let (credited_to, rounds_paid_through): (Vec<u64>, Option<ShareKey>) = match block_value {
            Some(_) => {
                let ledger = self.ledger.lock().expect("ledger lock");
                let cursors = self
                    .tails
                    .iter()
                    .map(|tail| Ok(ledger.share_cursor(tail.process)?.unwrap_or(0)))
                    .collect::<anyhow::Result<_>>()?;
                drop(ledger);
                (cursors, self.rounds_paid_through()?)
            }
            None => (Vec::new(), None),
        };
        for (index, tail) in self.tails.iter_mut().enumerate() {
            let read = tail.poll()?;
            if read.is_empty() {
                continue;
            }
            let credit_from = credited_to.get(index).copied().unwrap_or(u64::MAX);
            for (sequence, record) in read {
                // Invariant: a share is credited only in its own coin's units. A Monero
                // record's difficulty is in RandomX hashes, and this control plane pays
                // its own coin: the record is passed over, not credited, not a round's.
                if record.protocol == Some(otedama_shared::Protocol::Monero) {
                    continue;
                }
                let share = HistoryShare::from_record(tail.process, sequence, &record);
                if record.is_block {
                    let hash = display_hex(&otedama_kernels::sha256d(&record.header));
                    block_shares.push((hash, share.key()));
                }
                let unpaid = sequence >= credit_from
                    && rounds_paid_through.is_none_or(|through| share.key() > through);
                if let Some(value) = block_value.filter(|_| unpaid) {
                    let block_value = match settings.scheme {
                        Scheme::Fpps => value.subsidy + value.fees_mean,
                        _ => value.subsidy,
                    };
                    let credit = per_share_credit(
                        block_value,
                        settings.pool_fee_ppm,
                        share.difficulty,
                        value.network_difficulty,
                    );
                    if credit > 0 {
                        *credits.entry(share.address.to_string()).or_default() += credit;
                    }
                }
                batch.push(share);
            }
            // Only cursors that move: the ledger takes a batch with any cursor that does
            // not as credited already, whole.
            if let Some(next) = tail.next_sequence().filter(|next| *next > credit_from) {
                cursors.insert(tail.process, next);
            }
        }
        if matches!(settings.scheme, Scheme::Pps | Scheme::Fpps) && !cursors.is_empty() {
            self.ledger
                .lock()
                .expect("ledger lock")
                .credit_shares(&cursors, &credits)?;
        }
        if !batch.is_empty() {
            let mut history = self.history.lock().expect("history lock");
            history.insert(batch);
            for (hash, key) in block_shares {
                history.note_block_share(hash, key);
            }
        }
        Ok(())
    }

    /// The greatest round end of any credited block (its stored cut, or for a block
    /// credited before cuts were stored, its found time): every share at or before it is
    /// in a round a block paid, so a per-share scheme (after a switch, which takes a
    /// restart) never credits it again. Worked out from the block store and the ledger,
    /// so a ledger written before this rule has it too.
    pub(super) fn rounds_paid_through(&self) -> anyhow::Result<Option<ShareKey>> {
        let ledger = self.ledger.lock().expect("ledger lock");
        let mut through = None;
        for block in self.blocks.all() {
            if block.rejected_reason.is_some() || ledger.block_state(&block.hash)?.is_none() {
                continue;
            }
            let cut = ledger
                .round_end(&block.hash)?
                .unwrap_or(ShareKey::after_ms(block.round_end_ms()));
            through = through.max(Some(cut));
        }
        Ok(through)
    }

    /// Credits every accepted block whose round can be cut, in round order, then settles
    /// blocks that matured or left the chain.
    ///
    /// Invariant: a round is (previous block's share record, this block's share record] in
    /// `ShareKey` order, and it is cut only when every share log has been read at least up
    /// to this block's share's stamp, so each share lands in exactly one round. A block
    /// whose share has not been read yet is stamped after everything read so far, so it
    /// sorts after every block that can be cut now; one whose found time is not past the
    /// candidate's holds it back until it is placed, and so does any block share read but
    /// not yet recorded (a block still being submitted), so a block recorded late cannot
    /// fall inside a round already paid. If one does anyway (its share was older than the
    /// history kept), it is paid over the round that already holds its shares.
    pub(super) fn credit_blocks(
        &mut self,
        settings: &PayoutSettings,
        now_ms: u64,
    ) -> anyhow::Result<()> {
        let accepted: Vec<BlockRecord> = self
            .blocks
            .all()
            .into_iter()
            .filter(|b| b.rejected_reason.is_none())
            .collect();
        let read_through_ms = match &self.mirrored {
            // Cluster mode: nothing is read through before the stream's logs are known (the
            // mirror's first listing), nor while no log is: a round cut then would leave
            // out every share not yet read.
            Some(mirrored) if !mirrored.listed || self.tails.is_empty() => 0,
            _ => self
                .tails
                .iter()
                .map(ShareLogTail::written_through_ms)
                .min()
                .unwrap_or(u64::MAX),
        };
        let ledger = self.ledger.clone();
        let mut ledger = ledger.lock().expect("ledger lock");
        // Shares a per-share scheme paid (before a switch to this one) are in no round.
        let mut paid_per_share = BTreeMap::new();
        for tail in &self.tails {
            if let Some(cursor) = ledger.share_cursor(tail.process)? {
                paid_per_share.insert(tail.process, cursor);
            }
        }
        // Every block's cut: kept with its credit, its share record's place, or (after the
        // wait) its found time; `None` while its share may still be read.
        let mut cuts: Vec<(ShareKey, usize)> = Vec::new();
        let mut unplaced_found_ms: Option<u64> = None;
        let unrecorded_block_share: Option<ShareKey>;
        {
            let mut history = self.history.lock().expect("history lock");
            // A block share with no record at all yet (its block is still being submitted,
            // or the block scan has yet to find it) may become a block: no round after it
            // is cut until it has a record.
            let mut unrecorded: Option<ShareKey> = None;
            for (hash, key) in history.unrecorded_block_shares() {
                if self.blocks.contains(&hash)? {
                    history.mark_block_recorded(&hash);
                } else {
                    unrecorded = Some(unrecorded.map_or(key, |first| first.min(key)));
                }
            }
            unrecorded_block_share = unrecorded;
            for (index, block) in accepted.iter().enumerate() {
                let cut = if ledger.block_state(&block.hash)?.is_some() {
                    Some(
                        ledger
                            .round_end(&block.hash)?
                            .unwrap_or(ShareKey::after_ms(block.round_end_ms())),
                    )
                } else if let Some(key) = history.block_share(&block.hash) {
                    Some(key)
                } else if read_through_ms
                    >= block
                        .round_end_ms()
                        .saturating_add(self.block_share_wait_ms)
                {
                    tracing::warn!(hash = %block.hash, found_at_ms = block.round_end_ms(), "the block's share record was not read; its round is cut at its found time");
                    Some(ShareKey::after_ms(block.round_end_ms()))
                } else {
                    None
                };
                match cut {
                    Some(cut) => cuts.push((cut, index)),
                    None => {
                        let found = block.round_end_ms();
                        unplaced_found_ms = Some(unplaced_found_ms.map_or(found, |u| u.min(found)));
                        note_cut_wait(&mut self.cut_waits, &self.tails, &block.hash, now_ms);
                    }
                }
            }
        }
        cuts.sort();
        let mut credited: Vec<bool> = cuts
            .iter()
            .map(|(_, index)| Ok(ledger.block_state(&accepted[*index].hash)?.is_some()))
            .collect::<anyhow::Result<_>>()?;
        for position in 0..cuts.len() {
            let (cut, index) = cuts[position];
            let block = &accepted[index];
            if credited[position] {
                continue;
            }
            let lagging = read_through_ms < cut.accepted_at_ms;
            let behind_unplaced =
                unplaced_found_ms.is_some_and(|found| found <= cut.accepted_at_ms);
            let behind_unrecorded = unrecorded_block_share.is_some_and(|key| key < cut);
            if lagging || behind_unplaced || behind_unrecorded {
                note_cut_wait(&mut self.cut_waits, &self.tails, &block.hash, now_ms);
                continue;
            }
            let start = (0..position)
                .rev()
                .find(|p| credited[*p])
                .map_or(ShareKey::after_ms(0), |p| cuts[p].0);
            // A block placed before a round already paid (its share was not read in time,
            // so it was placed by its found time after the rounds around it were cut): the
            // shares before it were paid by that round's block, so it is paid over that
            // same round. The round's miners earned both blocks; no share is paid from a
            // round twice, and none is left out.
            let end = match (position + 1..cuts.len()).find(|p| credited[*p]) {
                Some(absorbing) => {
                    tracing::warn!(hash = %block.hash, "a block placed before a round already paid is paid over that round");
                    cuts[absorbing].0
                }
                None => cut,
            };
            // A block whose own share a per-share scheme credited (found under PPS, cut
            // after a switch) had its round paid share by share: it is the pool's, as
            // under PPS.
            let paid_as_shares = paid_per_share
                .get(&cut.process)
                .is_some_and(|cursor| cut.sequence < *cursor);
            let credits = if paid_as_shares {
                BTreeMap::from([(settings.fee_account.clone(), block.reward)])
            } else {
                self.block_credits(settings, block, start, end, &paid_per_share)
            };
            ledger.credit_block_round(&block.hash, &credits, Some(cut))?;
            credited[position] = true;
            self.cut_waits.remove(&block.hash);
            tracing::info!(hash = %block.hash, height = block.height, reward = block.reward, accounts = credits.len(), round_end_ms = cut.accepted_at_ms, "block credited");
        }
        for block in &accepted {
            let settled = match (ledger.block_state(&block.hash)?, block.status) {
                (Some(BlockState::Immature), BlockStatus::Confirmed) => {
                    ledger.mature_block(&block.hash)?;
                    "matured"
                }
                (Some(BlockState::Immature), BlockStatus::Orphaned) => {
                    ledger.orphan_block(&block.hash)?;
                    "orphaned"
                }
                _ => continue,
            };
            tracing::info!(hash = %block.hash, height = block.height, settled, "block settled in the ledger");
        }
        Ok(())
    }

    /// Every account's part of a block's reward, the pool's fee included: they add up to
    /// the reward exactly.
    pub(super) fn block_credits(
        &self,
        settings: &PayoutSettings,
        block: &BlockRecord,
        start: ShareKey,
        end: ShareKey,
        paid_per_share: &BTreeMap<u32, u64>,
    ) -> BTreeMap<String, u64> {
        let history = self.history.lock().expect("history lock");
        if history
            .oldest_ms()
            .is_some_and(|oldest| oldest > start.accepted_at_ms && history.evicted > 0)
        {
            tracing::warn!(hash = %block.hash, "the round is longer than the share history kept; its oldest shares are not counted");
        }
        let (shares, round_shares) = history.round_newest_first(start, end, paid_per_share);
        drop(history);
        let finder = otedama_shared::address::payout_address_of(&block.worker);
        let round = Round {
            finder,
            shares_newest_first: &shares,
            round_shares,
            network_difficulty: block.network_difficulty,
            start_ms: start.accepted_at_ms,
            end_ms: end.accepted_at_ms,
        };
        let split = split_block(settings.scheme, block.reward, settings.pool_fee_ppm, &round);
        let mut credits = split.credits;
        if split.pool > 0 {
            *credits.entry(settings.fee_account.clone()).or_default() += split.pool;
        }
        credits
    }
}

/// Remembers since when a block's round has waited to be cut, and says so once the wait
/// is long, naming how far each share log has been read.
fn note_cut_wait(
    cut_waits: &mut BTreeMap<String, u64>,
    tails: &[ShareLogTail],
    hash: &str,
    now_ms: u64,
) {
    let since = *cut_waits.entry(hash.to_string()).or_insert(now_ms);
    if now_ms.saturating_sub(since) >= BLOCK_CUT_WAIT_WARN_MS {
        cut_waits.insert(hash.to_string(), now_ms);
        let logs: Vec<(u32, u64)> = tails
            .iter()
            .map(|tail| (tail.process, tail.written_through_ms()))
            .collect();
        tracing::warn!(%hash, ?logs, "a found block's round waits for a share log that is not moving (is a data plane down?)");
    }
}
