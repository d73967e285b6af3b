//! The control plane's view of accepted shares, for payouts and per-miner statistics.
//!
//! The data plane's share logs are the record of every share a miner was told was
//! accepted. The control plane follows them with `otedama_sharelog::tail` (a RocksDB
//! secondary instance), so a share that was acknowledged is exactly a share that can be
//! paid: nothing is streamed twice, and nothing the data plane lost can be credited.
//!
//! `ShareHistory` is the sans-IO part: recent shares in a canonical order (`ShareKey`:
//! the writer's stamp, then data-plane process, then log sequence), from which rounds and
//! hashrates are cut. The order does not depend on when the logs were read, so a round
//! recomputed after a restart is the round computed before it.
//!
//! A round ends exactly at its block's own share record. It is cut only once every log
//! has been read up to that record's stamp (`ShareLogTail::written_through_ms`, from each
//! log's clock), so no share that belongs before the block can still arrive: a share
//! before the record is in the round, a share after it in the next, and none in both.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use otedama_shared::address::payout_address_of;
use otedama_shared::{Protocol, ShareRecord};

use super::schemes::RoundShare;

/// Shares kept in memory. PPLNS needs its window and PROP/PPLNT their round; at 100,000
/// shares/s this is the last ten seconds, at 1,000/s almost an hour. Rounds longer than
/// this are cut to their newest shares, and the cut is logged.
pub const SHARE_HISTORY_MAX: usize = 1_000_000;

/// A share's place in the canonical order across every share log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShareKey {
    pub accepted_at_ms: u64,
    pub process: u32,
    pub sequence: u64,
}

impl ShareKey {
    /// After every share stamped at or before `ms`: where a round is cut when its block's
    /// share record is not known (records from before share keys were kept).
    pub fn after_ms(ms: u64) -> Self {
        ShareKey {
            accepted_at_ms: ms,
            process: u32::MAX,
            sequence: u64::MAX,
        }
    }
}

/// One accepted share, as payouts and statistics need it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryShare {
    pub accepted_at_ms: u64,
    pub process: u32,
    pub sequence: u64,
    pub address: Arc<str>,
    pub worker: Arc<str>,
    pub difficulty: f64,
    /// The front end it came through, where its record says (statistics only).
    pub protocol: Option<Protocol>,
}

impl HistoryShare {
    pub fn from_record(process: u32, sequence: u64, record: &ShareRecord) -> Self {
        HistoryShare {
            accepted_at_ms: record.accepted_at_ms,
            process,
            sequence,
            address: payout_address_of(&record.worker).into(),
            worker: record.worker.as_str().into(),
            difficulty: record.difficulty,
            protocol: record.protocol,
        }
    }

    pub fn key(&self) -> ShareKey {
        ShareKey {
            accepted_at_ms: self.accepted_at_ms,
            process: self.process,
            sequence: self.sequence,
        }
    }
}

/// What one miner did over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Activity {
    pub shares: u64,
    pub difficulty_sum: f64,
    pub workers: BTreeMap<String, WorkerActivity>,
}

/// One worker's shares in a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerActivity {
    pub shares: u64,
    pub difficulty_sum: f64,
    pub last_share_ms: u64,
    /// The difficulty of its newest share: what the pool asks of it now.
    pub last_difficulty: f64,
    /// The front end of its newest share.
    pub protocol: Option<Protocol>,
}

/// Recent shares in canonical order, bounded by `SHARE_HISTORY_MAX`.
#[derive(Default)]
pub struct ShareHistory {
    shares: VecDeque<HistoryShare>,
    /// The block shares among `shares`, by block hash (display hex): where rounds end,
    /// and whether the block is known to have a record (see `unrecorded_block_shares`).
    block_shares: BTreeMap<String, (ShareKey, bool)>,
    /// Shares dropped off the old end since start.
    pub evicted: u64,
}

impl ShareHistory {
    pub fn len(&self) -> usize {
        self.shares.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// Adds shares; each log's come in order, but logs interleave, so the batch is merged
    /// into place in one pass over the kept shares it overlaps (almost always none: it goes
    /// at the end). A share already kept is kept once.
    pub fn insert(&mut self, mut batch: Vec<HistoryShare>) {
        batch.sort_by_key(HistoryShare::key);
        batch.dedup_by_key(|s| s.key());
        let Some(first) = batch.first().map(HistoryShare::key) else {
            return;
        };
        let overlap_at = self.shares.partition_point(|s| s.key() < first);
        let overlapped: Vec<HistoryShare> = self.shares.drain(overlap_at..).collect();
        let mut kept = overlapped.into_iter().peekable();
        let mut added = batch.into_iter().peekable();
        loop {
            let next = match (kept.peek(), added.peek()) {
                (Some(old), Some(new)) if old.key() == new.key() => {
                    added.next();
                    kept.next()
                }
                (Some(old), Some(new)) if old.key() < new.key() => kept.next(),
                (Some(_), Some(_)) | (None, Some(_)) => added.next(),
                (Some(_), None) => kept.next(),
                (None, None) => break,
            };
            self.shares.extend(next);
        }
        while self.shares.len() > SHARE_HISTORY_MAX {
            self.shares.pop_front();
            self.evicted += 1;
        }
        if let Some(oldest) = self.shares.front().map(HistoryShare::key) {
            self.block_shares.retain(|_, (key, _)| *key >= oldest);
        }
    }

    /// Notes that the share at `key` (inserted with it) found block `hash`.
    pub fn note_block_share(&mut self, hash: String, key: ShareKey) {
        self.block_shares.entry(hash).or_insert((key, false));
    }

    /// Where block `hash`'s own share record is, if it was read and is still kept.
    pub fn block_share(&self, hash: &str) -> Option<ShareKey> {
        self.block_shares.get(hash).map(|(key, _)| *key)
    }

    /// The block shares kept whose block was not yet seen recorded, in no order.
    pub fn unrecorded_block_shares(&self) -> Vec<(String, ShareKey)> {
        self.block_shares
            .iter()
            .filter(|(_, (_, recorded))| !recorded)
            .map(|(hash, (key, _))| (hash.clone(), *key))
            .collect()
    }

    /// Block `hash` has a record (records are never removed, so it is asked once).
    pub fn mark_block_recorded(&mut self, hash: &str) {
        if let Some((_, recorded)) = self.block_shares.get_mut(hash) {
            *recorded = true;
        }
    }

    /// The difficulty of the shares after `after` through `through` in the canonical
    /// order (a round, from the previous block's share to its own, for its effort), or
    /// `None` when the history does not reach back that far: a sum over part of a round
    /// would understate its effort.
    pub fn difficulty_between(&self, after: ShareKey, through: ShareKey) -> Option<f64> {
        if self
            .shares
            .front()
            .is_none_or(|oldest| oldest.key() > after)
        {
            return None;
        }
        let start = self.shares.partition_point(|s| s.key() <= after);
        let end = self.shares.partition_point(|s| s.key() <= through);
        Some(
            self.shares
                .range(start..end.max(start))
                .map(|s| s.difficulty.max(0.0))
                .sum(),
        )
    }

    /// The oldest share kept, if any.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.shares.front().map(|s| s.accepted_at_ms)
    }

    /// The shares at or before `end` (a block's share), newest first, as the schemes take
    /// them, and how many of them come after `start` (the previous block's share): the
    /// round, (start, end]. The older ones are there for the PPLNS window. Shares a
    /// per-share scheme already paid (before `paid_per_share[process]`, the PPS cursors)
    /// are left out: after a switch from PPS they must not be paid again by a block.
    pub fn round_newest_first(
        &self,
        start: ShareKey,
        end: ShareKey,
        paid_per_share: &BTreeMap<u32, u64>,
    ) -> (Vec<RoundShare>, usize) {
        let unpaid = |s: &&HistoryShare| {
            paid_per_share
                .get(&s.process)
                .is_none_or(|cursor| s.sequence >= *cursor)
        };
        let shares: Vec<RoundShare> = self
            .shares
            .iter()
            .rev()
            .skip_while(|s| s.key() > end)
            .filter(unpaid)
            .map(|s| RoundShare {
                address: s.address.to_string(),
                difficulty: s.difficulty,
                accepted_at_ms: s.accepted_at_ms,
            })
            .collect();
        let in_round = self
            .shares
            .iter()
            .rev()
            .skip_while(|s| s.key() > end)
            .take_while(|s| s.key() > start)
            .filter(unpaid)
            .count();
        (shares, in_round)
    }

    /// Every miner's activity over `(now_ms - window_ms, now_ms]`.
    pub fn activity(&self, now_ms: u64, window_ms: u64) -> BTreeMap<Arc<str>, Activity> {
        let since = now_ms.saturating_sub(window_ms);
        let mut miners: BTreeMap<Arc<str>, Activity> = BTreeMap::new();
        for share in self.shares.iter().rev() {
            if share.accepted_at_ms <= since {
                break;
            }
            // Not a share: an uncredited block's record.
            if share.accepted_at_ms > now_ms || share.difficulty <= 0.0 {
                continue;
            }
            let miner = miners.entry(share.address.clone()).or_default();
            miner.shares += 1;
            miner.difficulty_sum += share.difficulty;
            let worker = miner.workers.entry(share.worker.to_string()).or_default();
            worker.shares += 1;
            worker.difficulty_sum += share.difficulty;
            // Newest first: the first share seen of a worker is its newest.
            if worker.shares == 1 {
                worker.last_share_ms = share.accepted_at_ms;
                worker.last_difficulty = share.difficulty;
                worker.protocol = share.protocol;
            }
        }
        miners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(at_ms: u64, process: u32, sequence: u64, worker: &str) -> HistoryShare {
        HistoryShare {
            accepted_at_ms: at_ms,
            process,
            sequence,
            address: otedama_shared::address::payout_address_of(worker).into(),
            worker: worker.into(),
            difficulty: 1.0,
            protocol: None,
        }
    }

    #[test]
    fn interleaved_logs_land_in_one_order_whatever_the_read_order() {
        let a = vec![share(10, 0, 0, "a.1"), share(30, 0, 1, "a.1")];
        let b = vec![share(20, 1, 0, "b"), share(30, 1, 1, "b")];
        let mut first = ShareHistory::default();
        first.insert(a.clone());
        first.insert(b.clone());
        let mut second = ShareHistory::default();
        second.insert(b);
        second.insert(a.clone());
        second.insert(a); // read twice: kept once
        let order = |h: &ShareHistory| -> Vec<(u64, u32)> {
            h.shares
                .iter()
                .map(|s| (s.accepted_at_ms, s.process))
                .collect()
        };
        assert_eq!(order(&first), vec![(10, 0), (20, 1), (30, 0), (30, 1)]);
        assert_eq!(order(&first), order(&second));
        let (round, _) = first.round_newest_first(
            ShareKey::after_ms(0),
            ShareKey::after_ms(25),
            &BTreeMap::new(),
        );
        assert_eq!(
            round.iter().map(|s| s.accepted_at_ms).collect::<Vec<_>>(),
            vec![20, 10]
        );
        assert_eq!(round[1].address, "a");
    }

    #[test]
    fn a_round_is_cut_exactly_at_its_block_share_in_every_log() {
        let mut history = ShareHistory::default();
        // Two logs with shares in the same millisecond as the block share (0, 1).
        history.insert(vec![
            share(10, 0, 0, "a"),
            share(20, 0, 1, "a"),
            share(20, 1, 0, "b"),
            share(20, 1, 1, "c"),
            share(30, 1, 2, "b"),
            share(40, 0, 2, "a"),
        ]);
        let first = ShareKey {
            accepted_at_ms: 20,
            process: 0,
            sequence: 1,
        };
        let second = ShareKey {
            accepted_at_ms: 30,
            process: 1,
            sequence: 2,
        };
        history.note_block_share("b1".into(), first);
        assert_eq!(history.block_share("b1"), Some(first));
        let none_paid = BTreeMap::new();
        let (shares, in_round) =
            history.round_newest_first(ShareKey::after_ms(0), first, &none_paid);
        assert_eq!(in_round, 2);
        assert_eq!(shares.len(), 2);
        let (shares, in_round) = history.round_newest_first(first, second, &none_paid);
        assert_eq!(
            in_round, 3,
            "the same millisecond's later shares are the next round's"
        );
        assert_eq!(shares.len(), 5, "with the older ones for a PPLNS window");
        let addresses: Vec<&str> = shares[..in_round]
            .iter()
            .map(|s| s.address.as_str())
            .collect();
        assert_eq!(addresses, vec!["b", "c", "b"]);
    }

    #[test]
    fn a_round_s_difficulty_is_known_only_if_the_history_covers_it() {
        let mut history = ShareHistory::default();
        history.insert(vec![
            share(10, 0, 0, "a"),
            share(20, 0, 1, "b"),
            share(30, 0, 2, "a"),
        ]);
        let at = |ms| ShareKey::after_ms(ms);
        let first = history.shares.front().unwrap().key();
        // From the oldest share on (a block's share ends its round and is not in the next).
        assert_eq!(history.difficulty_between(first, at(30)), Some(2.0));
        assert_eq!(history.difficulty_between(at(10), at(25)), Some(1.0));
        assert_eq!(history.difficulty_between(at(30), at(40)), Some(0.0));
        // A round that began before the oldest share kept: unknown, not understated.
        assert_eq!(history.difficulty_between(at(5), at(30)), None);
    }

    #[test]
    fn activity_counts_workers_inside_the_window_only() {
        let mut history = ShareHistory::default();
        history.insert(vec![
            share(100, 0, 0, "a.rig1"),
            HistoryShare {
                protocol: Some(Protocol::V1),
                ..share(200, 0, 1, "a.rig2")
            },
            // The rig moved to QUIC: its newest share says so.
            HistoryShare {
                protocol: Some(Protocol::Quic),
                ..share(250, 0, 2, "a.rig2")
            },
            share(300, 0, 3, "b"),
        ]);
        let activity = history.activity(300, 150);
        let a = &activity["a"];
        assert_eq!((a.shares, a.difficulty_sum), (2, 2.0));
        let rig2 = &a.workers["a.rig2"];
        assert_eq!((rig2.shares, rig2.last_share_ms), (2, 250));
        assert_eq!(rig2.difficulty_sum, 2.0);
        assert_eq!(rig2.last_difficulty, 1.0);
        assert_eq!(rig2.protocol, Some(Protocol::Quic));
        assert!(!a.workers.contains_key("a.rig1"));
        assert_eq!(activity["b"].shares, 1);
    }

    #[test]
    fn the_history_is_bounded_at_its_limit() {
        let mut history = ShareHistory::default();
        let batch: Vec<HistoryShare> = (0..SHARE_HISTORY_MAX as u64 + 3)
            .map(|i| share(i, 0, i, "a"))
            .collect();
        history.insert(batch);
        assert_eq!(history.len(), SHARE_HISTORY_MAX);
        assert_eq!(history.evicted, 3);
        assert_eq!(history.oldest_ms(), Some(3));
    }
}
