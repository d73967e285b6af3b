//! A copy of another host's share log, kept by the control plane from the cluster's share
//! stream (`otedama_cluster::mirror`), in the share log's own format, so the control
//! plane's readers (`tail::ShareLogTail`) follow it as they follow a local log.
//!
//! Applying is idempotent: a record is written under its own sequence with its own bytes,
//! and the clock only moves forward, so a message applied twice (a restart re-reads from
//! the last position written) changes nothing. Each write carries the stream position of
//! the message it applies, in the same batch, so the copy and its position never part,
//! whatever is lost with the page cache: the copy is rebuilt from the stream, not synced.

use std::path::Path;

use rocksdb::{Options, WriteBatch, WriteOptions, DB};

use crate::format::{share_log_key, MIRROR_POSITION_KEY, MIRROR_STREAM_KEY, SHARE_LOG_CLOCK_KEY};
use crate::retention;

pub struct MirrorLog {
    db: DB,
}

impl MirrorLog {
    pub fn open(path: &Path) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        // Files a compaction leaves are deleted in the background, not by the mirror's
        // thread (a cut's own files go on it: `retention::release_below`).
        options.set_avoid_unnecessary_blocking_io(true);
        Ok(MirrorLog {
            db: DB::open(&options, path)?,
        })
    }

    /// The stream sequence of the last message applied; 0 before any.
    pub fn position(&self) -> Result<u64, rocksdb::Error> {
        self.read_u64(MIRROR_POSITION_KEY)
    }

    /// Which stream `position` counts in (`MIRROR_STREAM_KEY`); 0 before any.
    pub fn stream(&self) -> Result<u64, rocksdb::Error> {
        self.read_u64(MIRROR_STREAM_KEY)
    }

    /// Reads from the start of `stream` from now on: a stream made anew (deleted, its
    /// storage lost) numbers its messages from 1 again, and a position in the old one
    /// would skip the new one's first messages. Its records, shipped again from the logs,
    /// are the same records under the same numbers, so applying them again is harmless.
    pub fn follow_stream(&self, stream: u64) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        batch.put(MIRROR_STREAM_KEY, stream.to_le_bytes());
        batch.put(MIRROR_POSITION_KEY, 0u64.to_le_bytes());
        self.write(batch)
    }

    /// The copy's clock (`SHARE_LOG_CLOCK_KEY`); 0 before any.
    pub fn clock_ms(&self) -> Result<u64, rocksdb::Error> {
        self.read_u64(SHARE_LOG_CLOCK_KEY)
    }

    fn read_u64(&self, key: &[u8]) -> Result<u64, rocksdb::Error> {
        Ok(self
            .db
            .get(key)?
            .and_then(|value| <[u8; 8]>::try_from(value.as_slice()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// Writes a batch's records (sequence, encoded record) and the message's position.
    pub fn apply_records(
        &self,
        records: &[(u64, Vec<u8>)],
        position: u64,
    ) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        for (sequence, record) in records {
            batch.put(share_log_key(*sequence), record);
        }
        batch.put(MIRROR_POSITION_KEY, position.to_le_bytes());
        self.write(batch)
    }

    /// Moves the clock to `clock_ms` if that is later (every record stamped at or before
    /// it is in the copy), with the message's position.
    pub fn apply_clock(&self, clock_ms: u64, position: u64) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        if clock_ms > self.clock_ms()? {
            batch.put(SHARE_LOG_CLOCK_KEY, clock_ms.to_le_bytes());
        }
        batch.put(
            MIRROR_POSITION_KEY,
            position.max(self.position()?).to_le_bytes(),
        );
        self.write(batch)
    }

    /// The copy's first and last record's sequences (`retention::record_range`).
    pub fn record_range(&self) -> Result<Option<(u64, u64)>, rocksdb::Error> {
        retention::record_range(&self.db)
    }

    /// Where the copy may be cut (`retention::release_point`).
    pub fn release_point(
        &self,
        floor: u64,
        keep_from_ms: u64,
    ) -> Result<Option<u64>, rocksdb::Error> {
        retention::release_point(&self.db, floor, keep_from_ms)
    }

    /// Deletes every record before `sequence` (`retention::release_below`).
    pub fn release_below(&self, sequence: u64) -> Result<(), rocksdb::Error> {
        retention::release_below(&self.db, sequence, &WriteOptions::default())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        // The WAL stays on (the tails replay it as secondaries); no sync: see the module's doc.
        self.db.write_opt(batch, &WriteOptions::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::tests::record;
    use crate::tail::ShareLogTail;

    /// A copy reads back through a tail as the log it copies, applying a message twice
    /// changes nothing, the clock never goes back, and the position is kept.
    #[test]
    fn a_mirror_reads_as_a_share_log_and_applies_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        let mirror = MirrorLog::open(&path).unwrap();
        assert_eq!(mirror.position().unwrap(), 0);
        let first: Vec<(u64, Vec<u8>)> = (0..5).map(|i| (i, record(i).encode())).collect();
        mirror.apply_records(&first, 3).unwrap();
        mirror.apply_records(&first, 3).unwrap();
        mirror.apply_clock(1_010, 4).unwrap();
        mirror.apply_clock(1_002, 4).unwrap();
        assert_eq!(mirror.clock_ms().unwrap(), 1_010);
        assert_eq!(mirror.position().unwrap(), 4);
        let mut tail = ShareLogTail::new(7, path.clone(), dir.path().join("tail"), Some(0), 0)
            .without_writer_check();
        let read = tail.poll().unwrap();
        assert_eq!(read.len(), 5);
        assert!(read
            .iter()
            .enumerate()
            .all(|(i, (sequence, r))| *sequence == i as u64
                && r.encode() == record(i as u64).encode()));
        assert_eq!(tail.written_through_ms(), 1_010);
        let second: Vec<(u64, Vec<u8>)> = (5..8).map(|i| (i, record(i).encode())).collect();
        mirror.apply_records(&second, 9).unwrap();
        assert_eq!(tail.poll().unwrap().len(), 3);
        drop(mirror);
        let mirror = MirrorLog::open(&path).unwrap();
        assert_eq!(mirror.position().unwrap(), 9);
        mirror.follow_stream(77).unwrap();
        assert_eq!(
            (mirror.stream().unwrap(), mirror.position().unwrap()),
            (77, 0)
        );
        assert_eq!(mirror.clock_ms().unwrap(), 1_010, "the clock stays");
    }

    /// A copy is cut only below its readers' floor, only where records are older than the
    /// retention, never at its last record, and across holes; the cut copy reads on as
    /// before, and its clock and position stay.
    #[test]
    fn a_copy_is_cut_only_below_its_floor_and_its_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        let mirror = MirrorLog::open(&path).unwrap();
        assert_eq!(mirror.release_point(100, u64::MAX).unwrap(), None);
        // Records 10..30, stamped 1_010..1_029.
        let records: Vec<(u64, Vec<u8>)> = (10..30).map(|i| (i, record(i).encode())).collect();
        mirror.apply_records(&records, 5).unwrap();
        mirror.apply_clock(1_030, 6).unwrap();
        assert_eq!(mirror.record_range().unwrap(), Some((10, 29)));
        // The floor decides.
        assert_eq!(mirror.release_point(15, u64::MAX).unwrap(), Some(15));
        assert_eq!(mirror.release_point(10, u64::MAX).unwrap(), None);
        assert_eq!(mirror.release_point(3, u64::MAX).unwrap(), None);
        // The retention decides: records stamped 1_020 and later are kept.
        assert_eq!(mirror.release_point(25, 1_020).unwrap(), Some(20));
        assert_eq!(mirror.release_point(25, 1_010).unwrap(), None);
        for keep_from_ms in 1_010..1_040 {
            let expected = (keep_from_ms - 1_000).clamp(10, 25);
            assert_eq!(
                mirror.release_point(25, keep_from_ms).unwrap(),
                (expected > 10).then_some(expected),
                "keep from {keep_from_ms}"
            );
        }
        // The last record stays, whatever the floor.
        assert_eq!(mirror.release_point(u64::MAX, u64::MAX).unwrap(), Some(29));
        mirror.release_below(13).unwrap();
        assert_eq!(mirror.record_range().unwrap(), Some((13, 29)));
        assert_eq!(mirror.release_point(25, u64::MAX).unwrap(), Some(25));
        mirror.release_below(25).unwrap();
        assert_eq!(mirror.record_range().unwrap(), Some((25, 29)));
        // A hole (records a purged stream never brought) is cut across.
        let late: Vec<(u64, Vec<u8>)> = (40..45).map(|i| (i, record(i).encode())).collect();
        mirror.apply_records(&late, 7).unwrap();
        assert_eq!(mirror.release_point(42, u64::MAX).unwrap(), Some(42));
        // A floor inside the hole cuts at the hole's start: the same records.
        assert_eq!(mirror.release_point(35, u64::MAX).unwrap(), Some(30));
        assert_eq!(mirror.release_point(42, 1_041).unwrap(), Some(41));
        mirror.apply_clock(1_030, 8).unwrap();
        assert_eq!(
            (mirror.clock_ms().unwrap(), mirror.position().unwrap()),
            (1_030, 8)
        );
        mirror.release_below(42).unwrap();
        let mut tail = ShareLogTail::new(7, path.clone(), dir.path().join("tail"), Some(42), 0)
            .without_writer_check();
        let read: Vec<u64> = tail.poll().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(read, (42..45).collect::<Vec<_>>());
    }
}
