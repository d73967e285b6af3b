//! The control plane's view of accepted shares, for payouts and per-miner statistics.
//!
//! The data plane's share logs are the record of every share a miner was told was
//! accepted. The control plane reads them as a RocksDB secondary instance, which follows
//! a primary's WAL without taking its lock, so the hot path pays nothing for it and a
//! share that was acknowledged is exactly a share that can be paid: nothing is streamed
//! twice, and nothing the data plane lost can be credited.
//!
//! `ShareHistory` is the sans-IO part: recent shares in a canonical order (accepted time,
//! then data-plane process, then log sequence), from which rounds and hashrates are cut.
//! The order does not depend on when the logs were read, so a round recomputed after a
//! restart is the round computed before it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, Options, DB};

use otedama_shared::address::payout_address_of;
use otedama_shared::ShareRecord;

use super::schemes::RoundShare;

/// Shares kept in memory. PPLNS needs its window and PROP/PPLNT their round; at 100,000
/// shares/s this is the last ten seconds, at 1,000/s almost an hour. Rounds longer than
/// this are cut to their newest shares, and the cut is logged.
pub const SHARE_HISTORY_MAX: usize = 1_000_000;
/// Shares read from one log per poll, so one poll cannot stall the payout loop.
pub const SHARES_PER_POLL_MAX: usize = 200_000;

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

    fn order_key(&self) -> (u64, u32, u64) {
        (self.accepted_at_ms, self.process, self.sequence)
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

    /// Adds shares; each log's come in order, but logs interleave, so each share goes to
    /// its place. Almost always that place is the end.
    pub fn insert(&mut self, mut batch: Vec<HistoryShare>) {
        batch.sort_by_key(HistoryShare::order_key);
        for share in batch {
            let key = share.order_key();
            if self.shares.back().is_none_or(|last| last.order_key() < key) {
                self.shares.push_back(share);
            } else {
                let at = self.shares.partition_point(|s| s.order_key() < key);
                if self.shares.get(at).is_some_and(|s| s.order_key() == key) {
                    continue;
                }
                self.shares.insert(at, share);
            }
        }
        while self.shares.len() > SHARE_HISTORY_MAX {
            self.shares.pop_front();
            self.evicted += 1;
        }
    }

    /// The oldest share kept, if any.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.shares.front().map(|s| s.accepted_at_ms)
    }

    /// Shares accepted at or before `until_ms`, newest first, as the schemes take them.
    pub fn round_newest_first(&self, until_ms: u64) -> Vec<RoundShare> {
        self.shares
            .iter()
            .rev()
            .skip_while(|s| s.accepted_at_ms > until_ms)
            .map(|s| RoundShare {
                address: s.address.to_string(),
                difficulty: s.difficulty,
                accepted_at_ms: s.accepted_at_ms,
            })
            .collect()
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
    next_sequence: Option<u64>,
    /// With no start sequence: how many of the newest shares to read at first.
    backfill: usize,
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
            next_sequence,
            backfill,
        }
    }

    /// The next sequence this tail will read.
    pub fn next_sequence(&self) -> Option<u64> {
        self.next_sequence
    }

    /// Reads again from `next_sequence` (a value `next_sequence` gave before), as if the
    /// polls since had not happened.
    pub fn rewind(&mut self, next_sequence: Option<u64>) {
        self.next_sequence = next_sequence;
    }

    /// Shares the data plane has made durable since the last poll, in log order. A log
    /// that does not exist yet (its data plane has not started) reads as empty.
    pub fn poll(&mut self) -> Result<Vec<(u64, ShareRecord)>, rocksdb::Error> {
        if self.db.is_none() {
            if !self.primary.join("CURRENT").exists() {
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
        let start = match self.next_sequence {
            Some(next) => next,
            None => {
                let end = db
                    .iterator(IteratorMode::End)
                    .next()
                    .transpose()?
                    .and_then(|(k, _)| k.as_ref().try_into().ok())
                    .map_or(0, |k: [u8; 8]| u64::from_be_bytes(k) + 1);
                end.saturating_sub(self.backfill as u64)
            }
        };
        let mut read = Vec::new();
        let mut next = start;
        for item in db.iterator(IteratorMode::From(&start.to_be_bytes(), Direction::Forward)) {
            let (k, v) = item?;
            let Ok(bytes) = <[u8; 8]>::try_from(k.as_ref()) else {
                continue;
            };
            let sequence = u64::from_be_bytes(bytes);
            next = sequence + 1;
            match ShareRecord::decode(&v) {
                Ok(record) => read.push((sequence, record)),
                Err(error) => {
                    tracing::error!(process = self.process, sequence, %error, "unreadable share record skipped")
                }
            }
            if read.len() >= SHARES_PER_POLL_MAX {
                break;
            }
        }
        self.next_sequence = Some(next);
        Ok(read)
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
        let round = first.round_newest_first(25);
        assert_eq!(
            round.iter().map(|s| s.accepted_at_ms).collect::<Vec<_>>(),
            vec![20, 10]
        );
        assert_eq!(round[1].address, "a");
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
        assert!(
            from_start.poll().unwrap().is_empty(),
            "a log that does not exist yet reads as empty"
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
        assert_eq!(read[7].1, record(7));
        assert_eq!(from_start.next_sequence(), Some(10));

        // While the data plane keeps writing, each poll reads only what is new.
        append(10..15);
        assert_eq!(
            sequences(&from_start.poll().unwrap()),
            (10..15).collect::<Vec<_>>()
        );
        assert!(from_start.poll().unwrap().is_empty());

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
