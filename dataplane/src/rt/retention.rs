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
//!   Nothing is cut while the shipper is not connected or has stopped on a log at odds
//!   with the stream (its `shipped_through` may then be a former session's).
//!
//! Whatever `share_retention_hours` says, a record stays `SHARE_LOG_KEEP_MIN_MS` at least:
//! JetStream syncs its files only every two minutes by default, so a power loss of every
//! NATS server can take the stream's last acknowledged batches back, and the shipper
//! then ships them again from this log, which must still hold them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use otedama_cluster::ShipperStatus;
use otedama_shared::clock::now_ms;
use otedama_sharelog::writer::{Release, ShareLogHandle};

/// How often the share log is asked to cut.
pub const SHARE_LOG_RELEASE_INTERVAL_MS: u64 = 60_000;
/// The least time a record stays in the share log, whatever the retention (see the
/// module's doc): well past JetStream's two-minute sync interval.
pub const SHARE_LOG_KEEP_MIN_MS: u64 = 15 * 60_000;

/// Below which sequence this process's share log may be cut (see the module's doc).
pub fn release_floor(shipper: Option<&ShipperStatus>, control_plane_floor: u64) -> u64 {
    match shipper {
        Some(status)
            if status.connected.load(Ordering::Acquire)
                && !status.diverged.load(Ordering::Acquire) =>
        {
            status
                .shipped_through
                .load(Ordering::Acquire)
                .saturating_sub(1)
        }
        Some(_) => 0,
        None => control_plane_floor,
    }
}

/// Asks the share log to cut, on a thread of its own, for as long as the process runs.
pub fn start(
    log: ShareLogHandle,
    control_plane_floor: Arc<AtomicU64>,
    retention_ms: u64,
    shipper: Option<Arc<ShipperStatus>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("share-retention".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(SHARE_LOG_RELEASE_INTERVAL_MS));
            let floor = release_floor(
                shipper.as_deref(),
                control_plane_floor.load(Ordering::Acquire),
            );
            if floor > 0 {
                log.release(Release {
                    floor,
                    keep_from_ms: now_ms().saturating_sub(retention_ms.max(SHARE_LOG_KEEP_MIN_MS)),
                });
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cluster mode cuts below the stream's last record of the log, never it, and only
    /// while the shipper is connected and agrees with the stream; single-host mode below
    /// what the control plane said.
    #[test]
    fn the_floor_is_the_control_planes_or_the_stream_s_last_record() {
        assert_eq!(release_floor(None, 0), 0);
        assert_eq!(release_floor(None, 1_234), 1_234);
        let shipper = ShipperStatus::default();
        shipper.connected.store(true, Ordering::Release);
        assert_eq!(release_floor(Some(&shipper), 1_234), 0);
        shipper.shipped_through.store(501, Ordering::Release);
        assert_eq!(release_floor(Some(&shipper), 1_234), 500);
        shipper.connected.store(false, Ordering::Release);
        assert_eq!(release_floor(Some(&shipper), 1_234), 0, "not connected");
        shipper.connected.store(true, Ordering::Release);
        shipper.diverged.store(true, Ordering::Release);
        assert_eq!(
            release_floor(Some(&shipper), 1_234),
            0,
            "at odds with the stream"
        );
    }
}
