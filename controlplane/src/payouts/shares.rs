//! The control plane's view of accepted shares, for payouts and per-miner statistics.
//!
//! The data plane's share logs are the record of every share a miner was told was
//! accepted. The control plane reads them as a RocksDB secondary instance, which follows
//! a primary's WAL without taking its lock, so the hot path pays nothing for it and a
//! share that was acknowledged is exactly a share that can be paid: nothing is streamed
//! twice, and nothing the data plane lost can be credited.
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
use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};

use otedama_shared::address::payout_address_of;
use otedama_shared::share::{share_log_key, share_log_sequence, SHARE_LOG_CLOCK_KEY};
use otedama_shared::ShareRecord;

use super::schemes::RoundShare;
use crate::api::now_ms;

/// Shares kept in memory. PPLNS needs its window and PROP/PPLNT their round; at 100,000
/// shares/s this is the last ten seconds, at 1,000/s almost an hour. Rounds longer than
/// this are cut to their newest shares, and the cut is logged.
pub const SHARE_HISTORY_MAX: usize = 1_000_000;
/// Shares read from one log per poll, so one poll cannot stall the payout loop.
pub const SHARES_PER_POLL_MAX: usize = 200_000;
/// How long a hole in a share log's sequence is waited on before it is read past.
pub const SHARE_LOG_GAP_WAIT_MS: u64 = 30_000;
/// How long a log's clock may stand still before the tail asks whether its writer is
/// still there.
pub const SHARE_LOG_STILL_MS: u64 = 5_000;

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
    /// Worker name → (shares, last share time).
    pub workers: BTreeMap<String, (u64, u64)>,
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
            if share.accepted_at_ms > now_ms {
                continue;
            }
            let miner = miners.entry(share.address.clone()).or_default();
            miner.shares += 1;
            miner.difficulty_sum += share.difficulty;
            let worker = miner.workers.entry(share.worker.to_string()).or_default();
            worker.0 += 1;
            worker.1 = worker.1.max(share.accepted_at_ms);
        }
        miners
    }
}

/// Follows one data-plane process's share log as a RocksDB secondary instance.
pub struct ShareLogTail {
    pub process: u32,
    primary: PathBuf,
    secondary: PathBuf,
    db: Option<DB>,
    position: TailPosition,
    /// A hole in the sequence seen at `next_sequence`, and since when.
    gap_seen: Option<(u64, std::time::Instant)>,
    /// The log's clock as last read, and since when it has had that value.
    clock_seen: Option<(u64, std::time::Instant)>,
    /// With no start sequence: how many of the newest shares to read at first.
    backfill: usize,
}

/// How far a tail has read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailPosition {
    pub next_sequence: Option<u64>,
    /// Every share stamped at or before this has been read (see `SHARE_LOG_CLOCK_KEY`).
    pub written_through_ms: u64,
}

impl ShareLogTail {
    /// Starts at `next_sequence` when given (PPS/FPPS resume exactly where they credited),
    /// otherwise `backfill` shares before the log's end.
    pub fn new(
        process: u32,
        primary: PathBuf,
        secondary: PathBuf,
        next_sequence: Option<u64>,
        backfill: usize,
    ) -> Self {
        ShareLogTail {
            process,
            primary,
            secondary,
            db: None,
            gap_seen: None,
            clock_seen: None,
            position: TailPosition {
                next_sequence,
                written_through_ms: 0,
            },
            backfill,
        }
    }

    /// The next sequence this tail will read.
    pub fn next_sequence(&self) -> Option<u64> {
        self.position.next_sequence
    }

    /// Every share of this log stamped at or before this time has been read by `poll`.
    pub fn written_through_ms(&self) -> u64 {
        self.position.written_through_ms
    }

    pub fn position(&self) -> TailPosition {
        self.position
    }

    /// Reads again from `position` (one `position` gave before), as if the polls since had
    /// not happened.
    pub fn rewind(&mut self, position: TailPosition) {
        self.position = position;
    }

    /// Shares the data plane has made durable since the last poll, in log order. A log
    /// that does not exist yet (its data plane has not started) reads as empty.
    pub fn poll(&mut self) -> Result<Vec<(u64, ShareRecord)>, rocksdb::Error> {
        // Taken before the look: a data plane opens its log before it takes a share and
        // stamps shares when it writes them, never below the system clock, so a log that
        // does not exist yet, or whose writer is gone, will hold no share stamped before
        // this moment that is not already written.
        let looked_at_ms = now_ms();
        // Asked only when the clock has stood still for long (a live writer moves it every
        // `SHARE_LOG_CLOCK_INTERVAL_MS`): a stopped data plane must not hold every round
        // of the pool back.
        let writer_gone = self
            .clock_seen
            .is_some_and(|(_, since)| since.elapsed().as_millis() as u64 >= SHARE_LOG_STILL_MS)
            && !primary_lock_held(&self.primary);
        if self.db.is_none() {
            if !self.primary.join("CURRENT").exists() {
                self.position.written_through_ms = self
                    .position
                    .written_through_ms
                    .max(looked_at_ms.saturating_sub(1));
                return Ok(Vec::new());
            }
            let mut options = Options::default();
            // A secondary must keep every table file open to follow the primary's.
            options.set_max_open_files(-1);
            self.db = Some(DB::open_as_secondary(
                &options,
                &self.primary,
                &self.secondary,
            )?);
        }
        let db = self.db.as_ref().expect("opened above");
        db.try_catch_up_with_primary()?;
        // The clock is read first: every record stamped at or before it is already in
        // what the iterator below sees (catch-up applies the primary's log in order).
        let clock_ms = db
            .get(SHARE_LOG_CLOCK_KEY)?
            .and_then(|value| <[u8; 8]>::try_from(value.as_slice()).ok())
            .map(u64::from_le_bytes);
        let start = match self.position.next_sequence {
            Some(next) => next,
            None => {
                let end = db
                    .iterator(IteratorMode::End)
                    .next()
                    .transpose()?
                    .and_then(|(k, _)| share_log_sequence(&k))
                    .map_or(0, |last| last + 1);
                end.saturating_sub(self.backfill as u64)
            }
        };
        let mut read = Vec::new();
        let mut next = start;
        let mut last_stamp_ms = None;
        let mut reached_end = true;
        for item in db.iterator(IteratorMode::From(
            &share_log_key(start),
            Direction::Forward,
        )) {
            if read.len() >= SHARES_PER_POLL_MAX {
                reached_end = false;
                break;
            }
            let (k, v) = item?;
            let Some(sequence) = share_log_sequence(&k) else {
                continue;
            };
            // The writer numbers shares without holes, so a hole is a record this catch-up
            // did not show yet (a WAL the primary retired while it was being read): stop
            // before it and read it next time, rather than step past a share for good. A
            // hole that stays (a log pruned at its start) is stepped over after a while.
            if sequence > next && !gap_passed(&mut self.gap_seen, self.process, next, sequence) {
                reached_end = false;
                break;
            }
            next = sequence + 1;
            match ShareRecord::decode(&v) {
                Ok(record) => {
                    last_stamp_ms = Some(record.accepted_at_ms);
                    read.push((sequence, record));
                }
                Err(error) => {
                    tracing::error!(process = self.process, sequence, %error, "unreadable share record skipped")
                }
            }
        }
        self.position.next_sequence = Some(next);
        // Stamps never decrease along the log, so every record stamped before the last one
        // read has been read; having read to the end, so has every record the clock covers.
        let mut through = last_stamp_ms.map_or(0, |stamp| stamp.saturating_sub(1));
        if reached_end {
            through = through.max(clock_ms.unwrap_or(0));
            if writer_gone {
                through = through.max(looked_at_ms.saturating_sub(1));
            }
        }
        if self
            .clock_seen
            .is_none_or(|(seen, _)| Some(seen) != clock_ms)
        {
            self.clock_seen = clock_ms.map(|clock| (clock, std::time::Instant::now()));
        }
        self.position.written_through_ms = self.position.written_through_ms.max(through);
        Ok(read)
    }
}

/// Whether the hole from `missing` up to `present` has stayed long enough to be a hole
/// for good (`SHARE_LOG_GAP_WAIT_MS`).
fn gap_passed(
    gap_seen: &mut Option<(u64, std::time::Instant)>,
    process: u32,
    missing: u64,
    present: u64,
) -> bool {
    match *gap_seen {
        Some((at, since)) if at == missing => {
            let passed = since.elapsed().as_millis() as u64 >= SHARE_LOG_GAP_WAIT_MS;
            if passed {
                tracing::error!(
                    process,
                    missing,
                    present,
                    "share log has a hole that never filled; reading past it"
                );
                *gap_seen = None;
            }
            passed
        }
        _ => {
            *gap_seen = Some((missing, std::time::Instant::now()));
            false
        }
    }
}

/// Whether a process holds the primary's RocksDB lock: a data plane running on the log.
/// RocksDB locks its LOCK file with `fcntl`, and `F_GETLK` only asks, taking nothing. It
/// cannot see a lock this process holds (a data plane in the same process, as in tests);
/// it is asked only of a log whose clock stood still for `SHARE_LOG_STILL_MS`. When it
/// cannot tell, the writer is taken to be there.
fn primary_lock_held(primary: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(primary.join("LOCK")) else {
        return true;
    };
    // SAFETY: `flock` is plain data, zero is a valid value for every field, and `fcntl`
    // only writes into the struct it is given, for the open descriptor it is given.
    unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) != 0
            || lock.l_type != libc::F_UNLCK as libc::c_short
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
    fn activity_counts_workers_inside_the_window_only() {
        let mut history = ShareHistory::default();
        history.insert(vec![
            share(100, 0, 0, "a.rig1"),
            share(200, 0, 1, "a.rig2"),
            share(250, 0, 2, "a.rig2"),
            share(300, 0, 3, "b"),
        ]);
        let activity = history.activity(300, 150);
        let a = &activity["a"];
        assert_eq!((a.shares, a.difficulty_sum), (2, 2.0));
        assert_eq!(a.workers["a.rig2"], (2, 250));
        assert!(!a.workers.contains_key("a.rig1"));
        assert_eq!(activity["b"].shares, 1);
    }

    fn record(index: u64) -> ShareRecord {
        ShareRecord {
            accepted_at_ms: 1_000 + index,
            job_id: 1,
            height: 100,
            worker: format!("miner{}.rig", index % 3),
            difficulty: index as f64 + 1.0,
            achieved_difficulty: index as f64 + 1.0,
            is_block: false,
            header: [0; 80],
            extranonce1: vec![0; 4],
            extranonce2: vec![0; 4],
        }
    }

    fn sequences(read: &[(u64, ShareRecord)]) -> Vec<u64> {
        read.iter().map(|(sequence, _)| *sequence).collect()
    }

    #[test]
    fn tails_follow_a_live_share_log_from_where_they_are_told() {
        use otedama_dataplane::store::ShareLog;
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("shares");
        let tail_at = |name: &str, start: Option<u64>, backfill: usize| {
            ShareLogTail::new(0, primary.clone(), dir.path().join(name), start, backfill)
        };
        let mut from_start = tail_at("from-start", Some(0), 0);
        let before_ms = now_ms();
        assert!(
            from_start.poll().unwrap().is_empty(),
            "a log that does not exist yet reads as empty"
        );
        assert!(
            from_start.written_through_ms() + 1 >= before_ms,
            "and holds no share stamped before it was looked at"
        );

        let (completions, mut durable) = futures_channel::mpsc::unbounded();
        let log = ShareLog::open(&primary, true, vec![completions]).unwrap();
        let mut stored = 0;
        let mut append = |range: std::ops::Range<u64>| {
            for index in range.clone() {
                log.handle().append(0, &record(index)).unwrap();
            }
            // The tail may only see what the writer has made durable.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while stored < range.end as usize {
                match durable.try_recv() {
                    Ok(done) => stored += done.shares,
                    _ if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    _ => panic!("the share log never made {range:?} durable"),
                }
            }
        };
        append(0..10);
        let read = from_start.poll().unwrap();
        assert_eq!(sequences(&read), (0..10).collect::<Vec<_>>());
        let stamped = |index: u64, at_ms: u64| ShareRecord {
            accepted_at_ms: at_ms,
            ..record(index)
        };
        assert_eq!(read[7].1, stamped(7, read[7].1.accepted_at_ms));
        assert_eq!(from_start.next_sequence(), Some(10));
        let last_stamp_ms = read[9].1.accepted_at_ms;
        assert!(from_start.written_through_ms() + 1 >= last_stamp_ms);

        // An idle log's clock moves on, and the tail with it; a share written later is
        // stamped after everything the tail says it has read.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while from_start.written_through_ms() < last_stamp_ms {
            assert!(from_start.poll().unwrap().is_empty());
            assert!(
                std::time::Instant::now() < deadline,
                "the clock never moved"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let through_ms = from_start.written_through_ms();
        let position = from_start.position();

        // While the data plane keeps writing, each poll reads only what is new.
        append(10..15);
        let read = from_start.poll().unwrap();
        assert_eq!(sequences(&read), (10..15).collect::<Vec<_>>());
        assert!(read.iter().all(|(_, r)| r.accepted_at_ms > through_ms));
        assert!(from_start.poll().unwrap().is_empty());
        // A rewound tail reads the same shares again and knows no more than it did then.
        from_start.rewind(position);
        assert_eq!(from_start.written_through_ms(), through_ms);
        assert_eq!(
            sequences(&from_start.poll().unwrap()),
            (10..15).collect::<Vec<_>>()
        );

        // A PPS restart resumes at the ledger's cursor; other schemes backfill history.
        let mut resumed = tail_at("resumed", Some(12), 0);
        assert_eq!(sequences(&resumed.poll().unwrap()), vec![12, 13, 14]);
        let mut backfilled = tail_at("backfilled", None, 4);
        assert_eq!(sequences(&backfilled.poll().unwrap()), vec![11, 12, 13, 14]);
        append(15..16);
        assert_eq!(sequences(&backfilled.poll().unwrap()), vec![15]);
        let mut past_the_end = tail_at("past-the-end", Some(100), 0);
        assert!(past_the_end.poll().unwrap().is_empty());
        log.close();
    }

    /// A hole in the sequence is a record a catch-up did not show yet: the tail stops
    /// before it, claims nothing past it, and reads on once it is there.
    #[test]
    fn a_tail_stops_at_a_hole_and_reads_on_once_it_fills() {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("shares");
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, &primary).unwrap();
        let put = |sequence: u64| {
            let record = ShareRecord {
                accepted_at_ms: 1_000 + sequence,
                ..record(sequence)
            };
            db.put(share_log_key(sequence), record.encode()).unwrap();
        };
        for sequence in [0, 1, 3] {
            put(sequence);
        }
        db.put(SHARE_LOG_CLOCK_KEY, 5_000u64.to_le_bytes()).unwrap();
        db.flush_wal(true).unwrap();
        let mut tail = ShareLogTail::new(0, primary.clone(), dir.path().join("tail"), Some(0), 0);
        assert_eq!(sequences(&tail.poll().unwrap()), vec![0, 1]);
        assert_eq!(tail.next_sequence(), Some(2));
        assert_eq!(
            tail.written_through_ms(),
            1_000,
            "not the clock: the hole may hold older shares"
        );
        put(2);
        db.flush_wal(true).unwrap();
        assert_eq!(sequences(&tail.poll().unwrap()), vec![2, 3]);
        assert_eq!(tail.written_through_ms(), 5_000);
    }

    /// A data plane that stopped leaves its log's clock where it was; once it has stood
    /// still for `SHARE_LOG_STILL_MS` and no process holds the log, the tail counts the log
    /// as read up to now, so one stopped data plane does not hold every round back.
    #[test]
    fn a_log_whose_writer_is_gone_stops_holding_rounds_back() {
        use otedama_dataplane::store::ShareLog;
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("shares");
        let (completions, mut durable) = futures_channel::mpsc::unbounded();
        let log = ShareLog::open(&primary, true, vec![completions]).unwrap();
        log.handle().append(0, &record(0)).unwrap();
        while durable.try_recv().is_err() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        log.close();
        let stopped_ms = now_ms();
        let mut tail = ShareLogTail::new(0, primary, dir.path().join("tail"), Some(0), 0);
        assert_eq!(tail.poll().unwrap().len(), 1);
        assert!(tail.written_through_ms() < stopped_ms);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tail.written_through_ms() < stopped_ms {
            assert!(tail.poll().unwrap().is_empty());
            assert!(
                std::time::Instant::now() < deadline,
                "a stopped log held rounds back"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
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
