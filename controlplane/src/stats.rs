//! The control plane's shared view of the pool: counters from every data plane, block
//! outcomes, the node's height, and the recent jobs a block candidate may refer to.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use otedama_shared::ipc::DataplaneCounters;
use otedama_shared::job::JobTemplate;

use otedama_chain::jobs::BuiltJob;

use crate::events::PoolEvent;

/// Jobs kept for block assembly; a candidate for an older job is stale anyway.
pub const JOBS_KEPT_MAX: usize = 256;
/// Events a slow `/ws` subscriber may fall behind by before it skips ahead.
pub const EVENTS_QUEUED_MAX: usize = 256;
/// Jobs queued for each data-plane link. A link further behind skips to the oldest job
/// still queued and sends it marked clean (see `ipc::link_job`), then goes on to the
/// newest: the skipped jobs are superseded by the ones after them.
pub const JOBS_BROADCAST_QUEUED_MAX: usize = 64;

/// What a block is worth now, from the newest template: PPS pays shares against it.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct BlockValue {
    pub subsidy: u64,
    /// Mean fees per block over the recent blocks' templates (FPPS).
    pub fees_mean: u64,
    /// On the pool's share-difficulty scale.
    pub network_difficulty: f64,
}

/// What the HTTP API refused for a bound of its own, by reason, for
/// `otedama_api_refusals_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRefusal {
    /// A connection closed at accept: its address had `API_CONNECTIONS_PER_IP_MAX`.
    ConnectionsPerIp,
    /// A live-feed upgrade refused: `WS_CLIENTS_MAX` clients were connected.
    FeedFull,
    /// A connection cut: no whole request head within `API_HEADER_READ_TIMEOUT_S` (of
    /// its opening, or of its last answer on a kept-alive connection: an idle browser
    /// connection ends here too).
    HeaderTimeout,
    /// A connection cut at `API_CONNECTION_LIFETIME_S`.
    ConnectionLifetime,
    /// A request refused with 413: its body was over `API_BODY_BYTES_MAX`, or over a
    /// route's own smaller limit (the KYC callback's).
    BodyTooLarge,
}

impl ApiRefusal {
    pub const ALL: [ApiRefusal; 5] = [
        ApiRefusal::ConnectionsPerIp,
        ApiRefusal::FeedFull,
        ApiRefusal::HeaderTimeout,
        ApiRefusal::ConnectionLifetime,
        ApiRefusal::BodyTooLarge,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            ApiRefusal::ConnectionsPerIp => "connections_per_ip",
            ApiRefusal::FeedFull => "feed_full",
            ApiRefusal::HeaderTimeout => "header_timeout",
            ApiRefusal::ConnectionLifetime => "connection_lifetime",
            ApiRefusal::BodyTooLarge => "body_too_large",
        }
    }
}

pub struct PoolState {
    /// `ApiRefusal::ALL`'s counts, in that order.
    api_refusals: [AtomicU64; ApiRefusal::ALL.len()],
    block_value: Mutex<Option<BlockValue>>,
    dataplanes: Mutex<HashMap<u64, DataplaneCounters>>,
    pub blocks_found: AtomicU64,
    pub blocks_rejected: AtomicU64,
    /// Height of the node's best block, as of the last template.
    pub height: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<BuiltJob>>>,
    current_job: Mutex<Option<JobTemplate>>,
    pub job_broadcast: tokio::sync::broadcast::Sender<JobTemplate>,
    /// A data plane linked since the last job was built: it may have restarted, and a
    /// restarted one serves no job it may have served before
    /// (`otedama_dataplane::served_jobs`), so it needs a new one.
    fresh_job_requested: std::sync::atomic::AtomicBool,
    /// Wakes the job builder for such a request.
    fresh_job_waker: std::sync::OnceLock<crossbeam_channel::Sender<()>>,
    /// New-block, payment and exchange events for the `/ws` feed.
    events: tokio::sync::broadcast::Sender<PoolEvent>,
    pub started_at: std::time::Instant,
    /// When the newest job was published, in ms since `started_at`, plus one; 0 before
    /// the first.
    job_published_ms: AtomicU64,
    /// Single-host mode: below which sequence each local share log may be cut
    /// (`otedama_shared::ipc::Downstream::ShareLogFloors`), from the payout thread.
    pub share_log_floors: tokio::sync::watch::Sender<Arc<BTreeMap<u32, u64>>>,
    /// Where the payout thread's tail of each share log (by ledger id) has read to, while
    /// it leads: in cluster mode the retention keeps what it has not read yet
    /// (`tasks::payouts::start_share_retention`). Empty on a standby.
    pub share_log_read_positions: Mutex<BTreeMap<u32, u64>>,
    /// After a restore (`backup::RESTORE_HOLD_FILE`): the wallet payments since the backup
    /// that the restored ledger does not know, which hold payouts back; 0 when not held.
    pub payouts_held_after_restore: AtomicU64,
    /// Scheduled backups (`tasks::backups`).
    pub backups: crate::tasks::backups::BackupCounters,
}

/// Totals across data planes, as the API reports them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PoolTotals {
    pub connections: u64,
    pub connections_by_protocol: otedama_shared::ipc::SharesByProtocol,
    pub shares_accepted: u64,
    pub shares_accepted_by_protocol: otedama_shared::ipc::SharesByProtocol,
    pub shares_rejected: u64,
    pub shares_rejected_by_code: BTreeMap<i32, u64>,
    pub accepted_difficulty_sum: f64,
    pub block_candidates: u64,
    pub quic_datagrams_forwarded: u64,
    /// Summed over data planes, as in `DataplaneCounters`.
    pub ack_latency: otedama_shared::ipc::LatencyTotals,
    /// By stage, in `otedama_shared::ipc::ACK_STAGES` order.
    pub ack_stages: Vec<otedama_shared::ipc::LatencyTotals>,
    /// Data-plane refusals by reason (`otedama_shared::ipc::Refusal`).
    pub refusals: BTreeMap<String, u64>,
    /// Data planes whose share log cannot write now.
    pub share_log_failing_planes: u64,
    pub share_log_failed_batches: u64,
    pub share_log_released_records: u64,
    /// Cluster mode: data planes that ship their share logs, those not connected to the
    /// cluster now, those whose shipping stopped (log and stream disagree), and their
    /// failed sessions.
    pub share_shipping_planes: u64,
    pub share_shipping_disconnected_planes: u64,
    pub share_shipping_diverged_planes: u64,
    pub share_shipping_failed_sessions: u64,
    /// The highest of any data plane's per-core peaks.
    pub pow_queued_peak: u64,
    pub durability_queued_peak: u64,
}

impl PoolState {
    pub fn new(blocks_found: u64, blocks_rejected: u64) -> Arc<Self> {
        let (job_broadcast, _) = tokio::sync::broadcast::channel(JOBS_BROADCAST_QUEUED_MAX);
        let (events, _) = tokio::sync::broadcast::channel(EVENTS_QUEUED_MAX);
        Arc::new(PoolState {
            api_refusals: Default::default(),
            block_value: Mutex::new(None),
            dataplanes: Mutex::new(HashMap::new()),
            blocks_found: AtomicU64::new(blocks_found),
            blocks_rejected: AtomicU64::new(blocks_rejected),
            height: AtomicU64::new(0),
            jobs: Mutex::new(BTreeMap::new()),
            current_job: Mutex::new(None),
            job_broadcast,
            fresh_job_requested: Default::default(),
            fresh_job_waker: Default::default(),
            events,
            share_log_floors: tokio::sync::watch::Sender::new(Default::default()),
            share_log_read_positions: Default::default(),
            payouts_held_after_restore: Default::default(),
            backups: Default::default(),
            started_at: std::time::Instant::now(),
            job_published_ms: AtomicU64::new(0),
        })
    }

    /// Asks the job builder for a new job of the current work (see `fresh_job_requested`).
    pub fn request_fresh_job(&self) {
        self.fresh_job_requested.store(true, Relaxed);
        if let Some(waker) = self.fresh_job_waker.get() {
            let _ = waker.try_send(());
        }
    }

    /// Whether a new job was asked for since the last call.
    pub fn take_fresh_job_request(&self) -> bool {
        self.fresh_job_requested.swap(false, Relaxed)
    }

    /// A request taken could not be met: it stands, for the builder's next turn (without
    /// waking it at once, so a failure is not retried in a loop).
    pub fn keep_fresh_job_request(&self) {
        self.fresh_job_requested.store(true, Relaxed);
    }

    /// The job builder's wake-up channel, set once.
    pub fn wake_for_fresh_jobs(&self, waker: crossbeam_channel::Sender<()>) {
        let _ = self.fresh_job_waker.set(waker);
    }

    pub fn api_refused(&self, reason: ApiRefusal) {
        let index = ApiRefusal::ALL
            .iter()
            .position(|listed| *listed == reason)
            .expect("every reason is listed");
        self.api_refusals[index].fetch_add(1, Relaxed);
    }

    /// Each reason with its count, in `ApiRefusal::ALL`'s order.
    pub fn api_refusals(&self) -> Vec<(ApiRefusal, u64)> {
        ApiRefusal::ALL
            .iter()
            .zip(&self.api_refusals)
            .map(|(reason, count)| (*reason, count.load(Relaxed)))
            .collect()
    }

    pub fn update_dataplane(&self, link_id: u64, counters: DataplaneCounters) {
        self.dataplanes
            .lock()
            .expect("stats lock")
            .insert(link_id, counters);
    }

    /// A data plane that disconnected holds no connections any more; its share counts stay.
    pub fn dataplane_gone(&self, link_id: u64) {
        if let Some(counters) = self
            .dataplanes
            .lock()
            .expect("stats lock")
            .get_mut(&link_id)
        {
            counters.connections = 0;
            counters.connections_by_protocol = Default::default();
            // Gone, it reports nothing; whatever its log does is its restart's to tell.
            counters.share_log_failing = false;
            counters.share_shipping = false;
            counters.share_shipping_connected = false;
            counters.share_shipping_diverged = false;
        }
    }

    pub fn totals(&self) -> PoolTotals {
        let planes = self.dataplanes.lock().expect("stats lock");
        let mut totals = PoolTotals::default();
        for counters in planes.values() {
            totals.connections += counters.connections;
            totals.connections_by_protocol += counters.connections_by_protocol;
            totals.shares_accepted += counters.shares_accepted;
            totals.shares_accepted_by_protocol += counters.shares_accepted_by_protocol;
            totals.shares_rejected += counters.shares_rejected;
            totals.accepted_difficulty_sum += counters.accepted_difficulty_sum;
            totals.block_candidates += counters.block_candidates;
            totals.quic_datagrams_forwarded += counters.quic_datagrams_forwarded;
            if totals.ack_stages.len() < counters.ack_stages.len() {
                totals
                    .ack_stages
                    .resize(counters.ack_stages.len(), Default::default());
            }
            for (total, stage) in totals.ack_stages.iter_mut().zip(&counters.ack_stages) {
                total.add(stage);
            }
            totals.ack_latency.add_parts(
                &counters.ack_latency_buckets,
                counters.ack_latency_count,
                counters.ack_latency_sum_us,
            );
            for (code, count) in &counters.shares_rejected_by_code {
                *totals.shares_rejected_by_code.entry(*code).or_default() += count;
            }
            totals.share_log_failing_planes += counters.share_log_failing as u64;
            totals.share_log_failed_batches += counters.share_log_failed_batches;
            totals.share_log_released_records += counters.share_log_released_records;
            if counters.share_shipping {
                totals.share_shipping_planes += 1;
                totals.share_shipping_disconnected_planes +=
                    u64::from(!counters.share_shipping_connected);
                totals.share_shipping_diverged_planes +=
                    u64::from(counters.share_shipping_diverged);
                totals.share_shipping_failed_sessions += counters.share_shipping_failed_sessions;
            }
            totals.pow_queued_peak = totals.pow_queued_peak.max(counters.pow_queued_peak);
            totals.durability_queued_peak = totals
                .durability_queued_peak
                .max(counters.durability_queued_peak);
            for (reason, count) in &counters.refusals {
                *totals.refusals.entry(reason.clone()).or_default() += count;
            }
        }
        totals
    }

    /// Sends an event to every `/ws` subscriber (none listening is fine).
    pub fn publish_event(&self, event: PoolEvent) {
        let _ = self.events.send(event);
    }

    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<PoolEvent> {
        self.events.subscribe()
    }

    pub fn block_value(&self) -> Option<BlockValue> {
        *self.block_value.lock().expect("stats lock")
    }

    pub fn set_block_value(&self, value: BlockValue) {
        *self.block_value.lock().expect("stats lock") = Some(value);
    }

    pub fn publish_job(&self, job: Arc<BuiltJob>) {
        let template = job.job.clone();
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            jobs.insert(template.job_id, job);
            while jobs.len() > JOBS_KEPT_MAX {
                jobs.pop_first();
            }
        }
        self.height
            .store(template.height.saturating_sub(1), Relaxed);
        self.job_published_ms
            .store(self.started_at.elapsed().as_millis() as u64 + 1, Relaxed);
        *self.current_job.lock().expect("jobs lock") = Some(template.clone());
        // No data plane listening is fine: it gets the current job when it connects.
        let _ = self.job_broadcast.send(template);
    }

    /// Seconds since the newest job was published, or since the start before the first:
    /// a template that stops changing (a node stuck or unreachable) shows here.
    pub fn job_age_s(&self) -> f64 {
        let now_ms = self.started_at.elapsed().as_millis() as u64;
        let published_ms = self.job_published_ms.load(Relaxed).saturating_sub(1);
        now_ms.saturating_sub(published_ms) as f64 / 1000.0
    }

    pub fn job(&self, job_id: u64) -> Option<Arc<BuiltJob>> {
        self.jobs.lock().expect("jobs lock").get(&job_id).cloned()
    }

    /// The previous block of the newest job: the node's tip as the pool last saw it. A
    /// block candidate built on anything else can no longer win.
    pub fn tip_prevhash(&self) -> Option<[u8; 32]> {
        self.current_job
            .lock()
            .expect("jobs lock")
            .as_ref()
            .map(|job| job.prevhash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest `JOBS_KEPT_MAX` jobs are looked up; one more drops exactly the oldest.
    #[test]
    fn jobs_kept_hold_their_limit() {
        let pool = PoolState::new(0, 0);
        let newest = JOBS_KEPT_MAX as u64;
        for job_id in 1..=newest {
            pool.publish_job(Arc::new(otedama_chain::jobs::test_support::job(job_id)));
        }
        assert!(pool.job(1).is_some(), "full, nothing dropped yet");
        pool.publish_job(Arc::new(otedama_chain::jobs::test_support::job(newest + 1)));
        assert!(pool.job(1).is_none());
        assert!(pool.job(2).is_some());
        assert!(pool.job(newest + 1).is_some());
    }

    /// A feed client `EVENTS_QUEUED_MAX` events behind misses nothing; one more and it
    /// hears once how many it missed, then the newest in order.
    #[test]
    fn a_lagging_feed_client_is_told_what_it_missed() {
        let pool = PoolState::new(0, 0);
        let mut client = pool.subscribe_events();
        for index in 0..EVENTS_QUEUED_MAX {
            pool.publish_event(PoolEvent::Exchange(serde_json::json!({ "index": index })));
        }
        let first = crate::api::ws::feed_event(
            client
                .try_recv()
                .map_err(|_| tokio::sync::broadcast::error::RecvError::Closed),
        );
        assert_eq!(first, Some(serde_json::json!({"index": 0})));
        // 255 unread: two more make 257, one past the limit.
        for index in 0..2 {
            pool.publish_event(PoolEvent::Exchange(
                serde_json::json!({ "index": 1000 + index }),
            ));
        }
        let received = |client: &mut tokio::sync::broadcast::Receiver<PoolEvent>| {
            crate::api::ws::feed_event(client.try_recv().map_err(|error| match error {
                tokio::sync::broadcast::error::TryRecvError::Lagged(missed) => {
                    tokio::sync::broadcast::error::RecvError::Lagged(missed)
                }
                _ => tokio::sync::broadcast::error::RecvError::Closed,
            }))
        };
        assert_eq!(
            received(&mut client),
            Some(serde_json::json!({"type": "lagged", "missed": 1}))
        );
        // Exactly the oldest unread (index 1) went; the next is index 2.
        assert_eq!(received(&mut client), Some(serde_json::json!({"index": 2})));
    }
}
