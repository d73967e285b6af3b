//! Cutting a share log (the data plane's own, or a control plane's copy of one) below the
//! records nobody needs any more: what may go is decided by the caller's floor and
//! retention (`release_point`); how it goes is one range deletion (`release_below`).
//!
//! Invariant: a log's last record is never cut, so its last key stays the last share's
//! (the writer numbers on from it after a restart, and a shipper finds its place by it).

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

/// The least time a record stays, whatever the retention says: JetStream syncs its files
/// only every two minutes by default, so a power loss of every NATS server can take the
/// last acknowledged batches of a stream back (the share stream's, which a data plane then
/// ships again from its log; the ledger stream's, which a control plane's floors were
/// read from). Well past that interval.
pub const SHARE_LOG_KEEP_MIN_MS: u64 = 15 * 60_000;

use crate::format::{share_log_key, share_log_sequence};
use otedama_shared::ShareRecord;

/// The log's first and last record's sequences; `None` while it holds none.
pub fn record_range(db: &DB) -> Result<Option<(u64, u64)>, rocksdb::Error> {
    let Some((first, _)) = record_from(db, 0)? else {
        return Ok(None);
    };
    Ok(last_sequence(db)?.map(|last| (first, last)))
}

/// The log's last record's sequence: its last key, since every other key sorts before
/// the records.
pub fn last_sequence(db: &DB) -> Result<Option<u64>, rocksdb::Error> {
    let last = db.iterator(IteratorMode::End).next().transpose()?;
    Ok(last.and_then(|(key, _)| share_log_sequence(&key)))
}

/// Where the log may be cut (`release_below`): the first sequence to keep, if any record
/// lies before it. Every record before it lies below `floor` (what the log's readers may
/// still need) and was stamped before `keep_from_ms` (the retention), and the log's last
/// record is always kept. Stamps never decrease along a log
/// (`ShareRecord::accepted_at_ms`), so the first recent record is found by halving: a few
/// reads, however long the log. A record that cannot be read counts as recent.
pub fn release_point(
    db: &DB,
    floor: u64,
    keep_from_ms: u64,
) -> Result<Option<u64>, rocksdb::Error> {
    let Some((first, last)) = record_range(db)? else {
        return Ok(None);
    };
    // Invariants: every record before `old_below` is old; the log holds no old record in
    // [`recent_from`, min(floor, last)), so cutting there cuts the same records.
    let (mut old_below, mut recent_from) = (first, floor.min(last));
    while old_below < recent_from {
        let middle = old_below + (recent_from - old_below) / 2;
        match record_from(db, middle)? {
            Some((sequence, stamp_ms)) if sequence < recent_from && stamp_ms < keep_from_ms => {
                old_below = sequence + 1
            }
            _ => recent_from = middle,
        }
    }
    Ok((old_below > first).then_some(old_below))
}

/// The first record at or after `sequence`, with its stamp (`u64::MAX` if unreadable).
fn record_from(db: &DB, sequence: u64) -> Result<Option<(u64, u64)>, rocksdb::Error> {
    let mut records = db.iterator(IteratorMode::From(
        &share_log_key(sequence),
        Direction::Forward,
    ));
    let Some((key, value)) = records.next().transpose()? else {
        return Ok(None);
    };
    Ok(share_log_sequence(&key).map(|sequence| {
        let stamp_ms = ShareRecord::decode(&value).map_or(u64::MAX, |r| r.accepted_at_ms);
        (sequence, stamp_ms)
    }))
}

/// Deletes every record before `sequence` (from `release_point`, which is never past the
/// last record): one range deletion, then the files that hold only such records are
/// dropped at once; compaction reclaims the rest. The clock and any key shorter than a
/// sequence's sort before every record and stay.
pub fn release_below(db: &DB, sequence: u64, options: &WriteOptions) -> Result<(), rocksdb::Error> {
    let Some(last_released) = sequence.checked_sub(1) else {
        return Ok(());
    };
    let mut batch = WriteBatch::default();
    batch.delete_range(share_log_key(0), share_log_key(sequence));
    db.write_opt(batch, options)?;
    // Both ends are in the range: a file goes only if every key it holds was released.
    db.delete_file_in_range(share_log_key(0), share_log_key(last_released))
}
