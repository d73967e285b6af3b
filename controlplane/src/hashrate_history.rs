//! The pool's and each miner's hash rate over time, kept in a RocksDB store of its own
//! (`hashrate` in the data directory) at a fixed resolution, so the web page charts the
//! last hour, day and week, across restarts too.
//!
//! Each sample is the hash rate over the `SAMPLE_WINDOW_S` before it, from the share
//! history: the pool's every `hashrate_sample_interval_s` (a minute unless configured),
//! each miner's every `MINER_SAMPLES_PER_POOL_SAMPLE` times that. Samples are keyed by
//! time first, so retention
//! (`HASHRATE_HISTORY_KEEP_S`) is one range deletion, and a miner's series is one point
//! read per sample time.
//!
//! Bounds: the store holds at most `MINER_SAMPLES_KEPT_MAX` miner samples (each sample
//! time keeps the fastest miners, as many as that allows over a week at the configured
//! interval), and a chart at most `CHART_POINTS_MAX` points (averaged buckets), so
//! neither a crowd of tiny miners (one address each, a share each now and then) nor a
//! week-long chart grows without limit.

use std::path::Path;

use rocksdb::{Direction, IteratorMode, Options, DB};

/// Seconds between the pool's samples unless configured (`hashrate_sample_interval_s`).
pub const POOL_SAMPLE_INTERVAL_S_DEFAULT: u64 = 60;
/// The shortest `hashrate_sample_interval_s`.
pub const POOL_SAMPLE_INTERVAL_S_MIN: u64 = 10;
/// The longest `hashrate_sample_interval_s`.
pub const POOL_SAMPLE_INTERVAL_S_MAX: u64 = 3_600;
/// A miner is sampled this many times less often than the pool: a pool has one series,
/// but as many miner series as miners.
pub const MINER_SAMPLES_PER_POOL_SAMPLE: u64 = 10;
/// The window each sample's hash rate is measured over.
pub const SAMPLE_WINDOW_S: u64 = 600;
/// How long samples are kept: the longest chart, a week.
pub const HASHRATE_HISTORY_KEEP_S: u64 = 7 * 86_400;
/// Miner samples the store keeps at most over `HASHRATE_HISTORY_KEEP_S`, about 1.2 GB
/// of keys at its fullest.
pub const MINER_SAMPLES_KEPT_MAX: u64 = 20_000_000;
/// Points one chart holds at most; a longer series is averaged into this many buckets.
pub const CHART_POINTS_MAX: usize = 360;
/// The charts the API offers, by name and span in seconds.
pub const CHART_SPANS: [(&str, u64); 3] = [("1h", 3_600), ("24h", 86_400), ("7d", 7 * 86_400)];

const POOL_PREFIX: &[u8] = b"p";
const MINER_PREFIX: &[u8] = b"m";

/// The pool's figures at one sample time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolSample {
    pub hashrate: f64,
    pub miners: u32,
    pub workers: u32,
}

pub struct HashrateHistory {
    db: DB,
    pool_interval_s: u64,
}

fn pool_key(at_s: u64) -> Vec<u8> {
    [POOL_PREFIX, &at_s.to_be_bytes()].concat()
}

fn miner_key(at_s: u64, address: &str) -> Vec<u8> {
    [MINER_PREFIX, &at_s.to_be_bytes(), address.as_bytes()].concat()
}

/// The sample time due at `now_s` for samples every `interval_s`, if it is later than
/// `last_s`: the newest multiple of the interval, so every host and restart samples at
/// the same times.
pub fn sample_due(last_s: Option<u64>, now_s: u64, interval_s: u64) -> Option<u64> {
    let at_s = now_s - now_s % interval_s.max(1);
    (last_s.is_none_or(|last| at_s > last) && at_s > 0).then_some(at_s)
}

/// `points` (time order) averaged into at most `points_max` buckets of equal time span
/// over `[from_s, to_s)`; each bucket is stamped with its first sample's time.
pub fn downsample(
    points: &[(u64, f64)],
    from_s: u64,
    to_s: u64,
    points_max: usize,
) -> Vec<(u64, f64)> {
    if points.len() <= points_max || points_max == 0 {
        return points.to_vec();
    }
    let span_s = to_s.saturating_sub(from_s).max(1);
    let bucket_s = span_s.div_ceil(points_max as u64).max(1);
    let mut out: Vec<(u64, f64, u32)> = Vec::with_capacity(points_max);
    let mut current_bucket = None;
    for &(at_s, value) in points {
        let bucket = at_s.saturating_sub(from_s) / bucket_s;
        match out.last_mut() {
            Some((_, sum, count)) if current_bucket == Some(bucket) => {
                *sum += value;
                *count += 1;
            }
            _ => {
                out.push((at_s, value, 1));
                current_bucket = Some(bucket);
            }
        }
    }
    out.into_iter()
        .map(|(at_s, sum, count)| (at_s, sum / count as f64))
        .collect()
}

impl HashrateHistory {
    /// Opens (or creates) the store, sampling the pool every `pool_interval_s`.
    pub fn open(path: &Path, pool_interval_s: u64) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        Ok(HashrateHistory {
            db: DB::open(&options, path)?,
            pool_interval_s: pool_interval_s.max(1),
        })
    }

    /// Seconds between the pool's samples.
    pub fn pool_interval_s(&self) -> u64 {
        self.pool_interval_s
    }

    /// Seconds between each miner's samples.
    pub fn miner_interval_s(&self) -> u64 {
        self.pool_interval_s * MINER_SAMPLES_PER_POOL_SAMPLE
    }

    /// Miners one sample time stores at most, the fastest first: `MINER_SAMPLES_KEPT_MAX`
    /// spread over the week's sample times (about 20,000 at the default interval).
    pub fn miners_per_sample_max(&self) -> usize {
        let sample_times = HASHRATE_HISTORY_KEEP_S
            .div_ceil(self.miner_interval_s())
            .max(1);
        (MINER_SAMPLES_KEPT_MAX / sample_times).max(1) as usize
    }

    pub fn record_pool(&self, at_s: u64, sample: PoolSample) -> Result<(), rocksdb::Error> {
        let mut value = sample.hashrate.to_le_bytes().to_vec();
        value.extend_from_slice(&sample.miners.to_le_bytes());
        value.extend_from_slice(&sample.workers.to_le_bytes());
        self.db.put(pool_key(at_s), value)
    }

    /// Stores each miner's hash rate at `at_s`: the `miners_per_sample_max` fastest of
    /// `miners`, in one write.
    pub fn record_miners(
        &self,
        at_s: u64,
        mut miners: Vec<(&str, f64)>,
    ) -> Result<(), rocksdb::Error> {
        let most = self.miners_per_sample_max();
        if miners.len() > most {
            miners.select_nth_unstable_by(most - 1, |a, b| b.1.total_cmp(&a.1));
            miners.truncate(most);
        }
        let mut batch = rocksdb::WriteBatch::default();
        for (address, hashrate) in miners {
            batch.put(miner_key(at_s, address), hashrate.to_le_bytes());
        }
        self.db.write(batch)
    }

    /// Drops every sample taken before `cutoff_s`.
    pub fn forget_before(&self, cutoff_s: u64) -> Result<(), rocksdb::Error> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range(pool_key(0), pool_key(cutoff_s));
        batch.delete_range(miner_key(0, ""), miner_key(cutoff_s, ""));
        self.db.write(batch)
    }

    /// The pool's samples in `[from_s, to_s)`, at most `CHART_POINTS_MAX` of them.
    pub fn pool_series(&self, from_s: u64, to_s: u64) -> Result<Vec<(u64, f64)>, rocksdb::Error> {
        let mut points = Vec::new();
        let end = pool_key(to_s);
        for item in self
            .db
            .iterator(IteratorMode::From(&pool_key(from_s), Direction::Forward))
        {
            let (key, value) = item?;
            if key.as_ref() >= end.as_slice() || !key.starts_with(POOL_PREFIX) {
                break;
            }
            let (Ok(at), Some(hashrate)) = (
                <[u8; 8]>::try_from(&key[POOL_PREFIX.len()..]),
                value.get(..8).and_then(|v| <[u8; 8]>::try_from(v).ok()),
            ) else {
                continue;
            };
            points.push((u64::from_be_bytes(at), f64::from_le_bytes(hashrate)));
        }
        Ok(downsample(&points, from_s, to_s, CHART_POINTS_MAX))
    }

    /// `address`'s samples in `[from_s, to_s)`, at most `CHART_POINTS_MAX` of them. A
    /// sample time without the miner (it sent nothing then) reads as zero once the miner
    /// has appeared, so a stopped rig shows as a drop, not as a gap.
    pub fn miner_series(
        &self,
        address: &str,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<(u64, f64)>, rocksdb::Error> {
        let interval_s = self.miner_interval_s();
        let first = from_s.div_ceil(interval_s) * interval_s;
        let times: Vec<u64> = (first..to_s).step_by(interval_s as usize).collect();
        let keys: Vec<Vec<u8>> = times.iter().map(|&at| miner_key(at, address)).collect();
        let mut points = Vec::with_capacity(times.len());
        let mut seen = false;
        for (at_s, value) in times.iter().zip(self.db.multi_get(keys)) {
            let hashrate = value?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(f64::from_le_bytes);
            seen |= hashrate.is_some();
            if seen {
                points.push((*at_s, hashrate.unwrap_or(0.0)));
            }
        }
        Ok(downsample(&points, from_s, to_s, CHART_POINTS_MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fall_on_multiples_of_their_interval_once_each() {
        assert_eq!(sample_due(None, 125, 60), Some(120));
        assert_eq!(sample_due(Some(120), 179, 60), None);
        assert_eq!(sample_due(Some(120), 180, 60), Some(180));
        // A clock stepped back does not sample a time again.
        assert_eq!(sample_due(Some(180), 130, 60), None);
    }

    #[test]
    fn a_long_series_is_averaged_into_at_most_the_chart_s_points() {
        let week = 7 * 86_400;
        let points: Vec<(u64, f64)> = (0..week / 60).map(|i| (i * 60, (i % 2) as f64)).collect();
        let chart = downsample(&points, 0, week, CHART_POINTS_MAX);
        assert!(chart.len() <= CHART_POINTS_MAX, "{}", chart.len());
        assert!(chart.len() >= CHART_POINTS_MAX - 1);
        // Each bucket averages alternating 0 and 1.
        assert!(
            chart.iter().all(|(_, v)| (v - 0.5).abs() < 0.01),
            "{chart:?}"
        );
        let short = [(60, 1.0), (120, 2.0)];
        assert_eq!(
            downsample(&short, 0, 3600, CHART_POINTS_MAX),
            short.to_vec()
        );
    }

    /// Series read back what was stored, in time order, within their span; retention
    /// drops the older samples of the pool and of every miner; a miner's missing sample
    /// reads as zero after its first.
    #[test]
    fn series_round_trip_and_retention_forgets_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let history = HashrateHistory::open(dir.path(), 60).unwrap();
        let sample = |hashrate| PoolSample {
            hashrate,
            miners: 2,
            workers: 3,
        };
        for (at, rate) in [(60, 1.0), (120, 2.0), (180, 3.0)] {
            history.record_pool(at, sample(rate)).unwrap();
        }
        history
            .record_miners(600, vec![("alice", 5.0), ("bob", 7.0)])
            .unwrap();
        history.record_miners(1800, vec![("alice", 6.0)]).unwrap();
        assert_eq!(
            history.pool_series(0, 3600).unwrap(),
            [(60, 1.0), (120, 2.0), (180, 3.0)]
        );
        assert_eq!(history.pool_series(100, 180).unwrap(), [(120, 2.0)]);
        assert_eq!(
            history.miner_series("alice", 0, 2400).unwrap(),
            [(600, 5.0), (1200, 0.0), (1800, 6.0)]
        );
        assert_eq!(history.miner_series("bob", 0, 2400).unwrap().len(), 3);
        assert!(history.miner_series("carol", 0, 2400).unwrap().is_empty());
        history.forget_before(1000).unwrap();
        assert!(history.pool_series(0, 3600).unwrap().is_empty());
        assert_eq!(
            history.miner_series("alice", 0, 2400).unwrap(),
            [(1800, 6.0)]
        );
        assert!(history.miner_series("bob", 0, 2400).unwrap().is_empty());
    }

    #[test]
    fn a_sample_keeps_only_the_fastest_miners_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let history = HashrateHistory::open(dir.path(), 60).unwrap();
        let most = history.miners_per_sample_max();
        assert_eq!(
            most, 19_841,
            "20 M samples over a week of 10-minute samples"
        );
        let names: Vec<String> = (0..most + 1).map(|i| format!("m{i}")).collect();
        let miners: Vec<(&str, f64)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i as f64 + 1.0))
            .collect();
        history.record_miners(600, miners).unwrap();
        // The slowest (m0) is the one left out.
        assert!(history.miner_series("m0", 0, 1200).unwrap().is_empty());
        assert_eq!(history.miner_series("m1", 0, 1200).unwrap(), [(600, 2.0)]);
        let fastest = format!("m{most}");
        assert_eq!(
            history.miner_series(&fastest, 0, 1200).unwrap(),
            [(600, (most + 1) as f64)]
        );
    }
}
