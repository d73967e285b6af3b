//! The share log's keys: a share's sequence number, and the log's clock.

/// The share log's key of the share with sequence number `sequence`: big-endian, so keys
/// sort in log order.
pub fn share_log_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

/// The sequence number of a share-log key; `None` for the clock key.
pub fn share_log_sequence(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// The share log's clock: a little-endian millisecond time T, written by the log's writer
/// with every batch and every `SHARE_LOG_CLOCK_INTERVAL_MS` while idle, that promises
/// every record stamped at or before T is already in the log (records are stamped when
/// written, never below an earlier clock). A reader that sees the clock sees every record
/// written before it, so it knows it has read all of the log up to T, even from a log
/// with no share since. The key is shorter than a sequence key and zero, so it sorts
/// before every share and the last key is still the last share's.
pub const SHARE_LOG_CLOCK_KEY: &[u8] = &[0];
/// A mirrored copy's position in the cluster's share stream (`mirror`). A prefix of every
/// sequence key sorts before it, so, as the clock key, it is never read as a share and the
/// last key is still the last share's.
pub const MIRROR_POSITION_KEY: &[u8] = &[0, 0];
/// Which stream a mirrored copy's position is in (its creation time): a stream made anew
/// numbers its messages from 1 again. Sorts before every share as the keys above.
pub const MIRROR_STREAM_KEY: &[u8] = &[0, 0, 0];
/// How often an idle share-log writer moves its clock forward.
pub const SHARE_LOG_CLOCK_INTERVAL_MS: u64 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_key_sorts_before_every_share_and_is_no_sequence() {
        assert!(SHARE_LOG_CLOCK_KEY < &share_log_key(0)[..]);
        assert_eq!(share_log_sequence(SHARE_LOG_CLOCK_KEY), None);
        assert_eq!(share_log_sequence(&share_log_key(77)), Some(77));
        assert!(MIRROR_POSITION_KEY < &share_log_key(0)[..]);
        assert_eq!(share_log_sequence(MIRROR_POSITION_KEY), None);
        assert!(MIRROR_STREAM_KEY < &share_log_key(0)[..]);
        assert_eq!(share_log_sequence(MIRROR_STREAM_KEY), None);
    }
}
