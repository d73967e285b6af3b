//! Follows a data-plane process's share log from another process (the control plane's
//! payouts and statistics), as a RocksDB secondary instance: it replays the primary's WAL
//! without taking its lock, so the writer's hot path pays nothing for it, and it reads only
//! what the writer made durable. A hole in the sequence is waited on
//! (`SHARE_LOG_GAP_WAIT_MS`), and a log whose clock stands still while no process holds it
//! stops holding rounds back (`SHARE_LOG_STILL_MS`).

use std::path::PathBuf;

use rocksdb::{Direction, IteratorMode, Options, DB};

use otedama_shared::ShareRecord;

use crate::format::{share_log_key, share_log_sequence, SHARE_LOG_CLOCK_KEY};
use otedama_shared::clock::now_ms;

/// Shares read from one log per poll, so one poll cannot stall the payout loop.
pub const SHARES_PER_POLL_MAX: usize = 200_000;
/// How long a hole in a share log's sequence is waited on before it is read past.
pub const SHARE_LOG_GAP_WAIT_MS: u64 = 30_000;
/// How long a log's clock may stand still before the tail asks whether its writer is
/// still there.
pub const SHARE_LOG_STILL_MS: u64 = 5_000;

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
    /// Whether a log whose clock stands still is asked if its writer is gone (a local
    /// log). A mirrored copy's clock is kept by its mirror, which judges that itself.
    writer_check: bool,
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
            writer_check: true,
        }
    }

    /// For a mirrored copy (`crate::mirror`): its clock alone says how far it is written.
    pub fn without_writer_check(mut self) -> Self {
        self.writer_check = false;
        self
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
        let writer_gone = self.writer_check
            && self
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
pub fn primary_lock_held(primary: &std::path::Path) -> bool {
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
pub(crate) mod tests {
    use super::*;

    /// A share record numbered `index` (the mirror's tests use it too).
    pub(crate) fn record(index: u64) -> ShareRecord {
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
            protocol: None,
        }
    }

    fn sequences(read: &[(u64, ShareRecord)]) -> Vec<u64> {
        read.iter().map(|(sequence, _)| *sequence).collect()
    }

    #[test]
    fn tails_follow_a_live_share_log_from_where_they_are_told() {
        use crate::writer::ShareLog;
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

    /// One poll reads at most `SHARES_PER_POLL_MAX` shares, so one poll cannot stall the
    /// payout loop; the next reads on from there.
    #[test]
    fn a_poll_reads_its_limit_and_the_next_poll_the_rest() {
        use crate::writer::{ShareLog, StoreError};
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("shares");
        let (completions, mut durable) = futures_channel::mpsc::unbounded();
        let log = ShareLog::open(&primary, false, vec![completions]).unwrap();
        let total = SHARES_PER_POLL_MAX as u64 + 1;
        let mut stored = 0u64;
        let mut drain = |stored: &mut u64| {
            while let Ok(done) = durable.try_recv() {
                assert!(done.result.is_ok());
                *stored += done.shares as u64;
            }
        };
        for index in 0..total {
            loop {
                match log.handle().append(0, &record(index)) {
                    Ok(()) => break,
                    Err(StoreError::QueueFull) => {
                        drain(&mut stored);
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(error) => panic!("{error}"),
                }
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while stored < total {
            drain(&mut stored);
            assert!(std::time::Instant::now() < deadline, "not all durable");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut tail = ShareLogTail::new(0, primary, dir.path().join("tail"), Some(0), 0);
        let first = tail.poll().unwrap();
        assert_eq!(first.len(), SHARES_PER_POLL_MAX);
        assert_eq!(first.last().unwrap().0, SHARES_PER_POLL_MAX as u64 - 1);
        assert_eq!(sequences(&tail.poll().unwrap()), vec![total - 1]);
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
        use crate::writer::ShareLog;
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
}
