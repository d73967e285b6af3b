//! The data plane's side of share retention: every `SHARE_LOG_RELEASE_INTERVAL_MS` it asks
//! its share log's writer to cut the records nobody needs any more and older than
//! `share_retention_hours` (`otedama_sharelog::retention`). Who needs a record differs by
//! mode (`release_floor`):
//! - single-host mode: the control plane reads the log itself, and says below which
//!   sequence it never will again (`Downstream::ShareLogFloors`, after every share there
//!   is credited and scanned for blocks); 0, so nothing, until it has said;
//! - cluster mode: no control plane reads this log, only the share shipper; every record
//!   below `ShipperStatus::shipped_through` is in the replicated stream, and the stream's
//!   last record of the log, by which the shipper checks the log at each start, stays.
//!   The floor is what the stream held `SHARE_LOG_KEEP_MIN_MS` ago (`ShippedSamples`), not
//!   now: JetStream syncs its files only every two minutes by default, so a power loss of
//!   every NATS server can take the stream's last acknowledged batches back, and the
//!   shipper then ships them again from this log, which must still hold them, however old
//!   their shares are (a shipper catching up after an outage ships old shares). Samples
//!   are taken only while the shipper is connected and agrees with the stream.
//!
//! Whatever `share_retention_hours` says, a record stays `SHARE_LOG_KEEP_MIN_MS` at least.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use otedama_cluster::host::monotonic_ms;
use otedama_cluster::ShipperStatus;
use otedama_shared::clock::now_ms;
use otedama_sharelog::retention::SHARE_LOG_KEEP_MIN_MS;
use otedama_sharelog::writer::{Release, ShareLogReleaser};

/// How often the share log is asked to cut.
pub const SHARE_LOG_RELEASE_INTERVAL_MS: u64 = 60_000;

/// Cluster mode: what the shipper had shipped, sampled over time, so that the floor is
/// what the stream has held without a break for `SHARE_LOG_KEEP_MIN_MS` (see the module's
/// doc). The samples go whenever the shipper is not connected or at odds with the stream,
/// and none is higher than a later one. Sans-IO: it takes a monotonic `now_ms`. At most
/// one sample older than the keep is kept, so it holds about
/// `SHARE_LOG_KEEP_MIN_MS / SHARE_LOG_RELEASE_INTERVAL_MS` samples.
#[derive(Debug, Default)]
pub struct ShippedSamples {
    samples: std::collections::VecDeque<(u64, u64)>,
}

impl ShippedSamples {
    /// Notes the shipper's state at `now_ms` and returns the floor: below the stream's
    /// last record of the log as of `SHARE_LOG_KEEP_MIN_MS` ago, or 0.
    pub fn floor(&mut self, shipper: &ShipperStatus, now_ms: u64) -> u64 {
        if !shipper.connected.load(Ordering::Acquire) || shipper.diverged.load(Ordering::Acquire) {
            // The stream may have lost what it held (every server down): nothing it held
            // before counts until it has held it again for a while.
            self.samples.clear();
            return 0;
        }
        let shipped_through = shipper.shipped_through.load(Ordering::Acquire);
        // A stream that took records back (a new session found its last record lower) takes
        // them back from every sample too.
        for sample in &mut self.samples {
            sample.1 = sample.1.min(shipped_through);
        }
        self.samples.push_back((now_ms, shipped_through));
        let Some(settled_before) = now_ms.checked_sub(SHARE_LOG_KEEP_MIN_MS) else {
            return 0;
        };
        while self.samples.len() > 1 && self.samples[1].0 <= settled_before {
            self.samples.pop_front();
        }
        match self.samples.front() {
            // The stream's last record as of then stays: the shipper checks the log by it.
            Some(&(at_ms, shipped_through)) if at_ms <= settled_before => {
                shipped_through.saturating_sub(1)
            }
            _ => 0,
        }
    }
}

/// Asks the share log to cut, on a thread of its own, for as long as the process runs.
pub fn start(
    log: ShareLogReleaser,
    control_plane_floor: Arc<AtomicU64>,
    retention_ms: u64,
    shipper: Option<Arc<ShipperStatus>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("share-retention".into())
        .spawn(move || {
            let mut samples = ShippedSamples::default();
            loop {
                std::thread::sleep(Duration::from_millis(SHARE_LOG_RELEASE_INTERVAL_MS));
                let floor = match &shipper {
                    Some(shipper) => samples.floor(shipper, monotonic_ms()),
                    None => control_plane_floor.load(Ordering::Acquire),
                };
                if floor > 0 {
                    log.release(Release {
                        floor,
                        keep_from_ms: now_ms()
                            .saturating_sub(retention_ms.max(SHARE_LOG_KEEP_MIN_MS)),
                    });
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cluster mode cuts below the stream's last record of the log as of
    /// `SHARE_LOG_KEEP_MIN_MS` ago, never it, with samples only from a shipper connected
    /// and at one with the stream.
    #[test]
    fn the_floor_is_what_the_stream_held_a_while_ago() {
        const MINUTE: u64 = 60_000;
        let keep = SHARE_LOG_KEEP_MIN_MS;
        let shipper = ShipperStatus::default();
        let mut samples = ShippedSamples::default();
        shipper.connected.store(true, Ordering::Release);
        shipper.shipped_through.store(100, Ordering::Release);
        assert_eq!(samples.floor(&shipper, 0), 0, "nothing is old enough yet");
        shipper.shipped_through.store(5_000, Ordering::Release);
        assert_eq!(samples.floor(&shipper, keep - 1), 0);
        assert_eq!(samples.floor(&shipper, keep), 99, "as of the first sample");
        assert_eq!(samples.floor(&shipper, 2 * keep - 2), 99);
        assert_eq!(
            samples.floor(&shipper, 2 * keep - 1),
            4_999,
            "as of the second"
        );
        // A new session that found the stream's last record lower lowers every sample.
        shipper.shipped_through.store(3_000, Ordering::Release);
        assert_eq!(samples.floor(&shipper, 2 * keep + MINUTE), 2_999);
        // Disconnected, or at odds with the stream: every sample goes, and the floor
        // waits a whole keep again.
        shipper.shipped_through.store(9_000, Ordering::Release);
        shipper.connected.store(false, Ordering::Release);
        assert_eq!(samples.floor(&shipper, 2 * keep + 2 * MINUTE), 0);
        shipper.connected.store(true, Ordering::Release);
        assert_eq!(samples.floor(&shipper, 2 * keep + 3 * MINUTE), 0);
        shipper.diverged.store(true, Ordering::Release);
        assert_eq!(samples.floor(&shipper, 3 * keep + 3 * MINUTE), 0);
        shipper.diverged.store(false, Ordering::Release);
        assert_eq!(samples.floor(&shipper, 3 * keep + 4 * MINUTE), 0);
        // Bounded: one sample a minute, and at most one older than the keep.
        for minute in 0..1_000 {
            samples.floor(&shipper, 4 * keep + minute * MINUTE);
        }
        assert!(samples.samples.len() as u64 <= keep / MINUTE + 2);
        assert_eq!(samples.floor(&shipper, 4 * keep + 1_000 * MINUTE), 8_999);
    }
}
