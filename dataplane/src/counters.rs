//! Pool-wide counters the cores bump without locks (relaxed atomics); the IPC thread reads
//! them once a second and sends them up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use otedama_shared::error_code::ErrorCode;
use otedama_shared::ipc::{
    DataplaneCounters, LatencyTotals, Refusal, SharesByProtocol, ACK_LATENCY_BUCKETS_S, ACK_STAGES,
    ACK_STAGE_BUCKETS_S,
};

use crate::rt::Protocol;

const REJECT_CODES: [ErrorCode; 6] = [
    ErrorCode::Other,
    ErrorCode::JobNotFound,
    ErrorCode::Duplicate,
    ErrorCode::LowDifficulty,
    ErrorCode::UnauthorizedWorker,
    ErrorCode::NotSubscribed,
];

/// A latency histogram over fixed bucket bounds (`N` of them, in seconds) that cores add
/// to without locks.
pub struct LatencyHistogram<const N: usize> {
    bounds_s: &'static [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl<const N: usize> LatencyHistogram<N> {
    pub fn new(bounds_s: &'static [f64; N]) -> Self {
        LatencyHistogram {
            bounds_s,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records `count` observations of `latency_us` each.
    pub fn record(&self, latency_us: u64, count: u64) {
        let seconds = latency_us as f64 / 1e6;
        if let Some(bucket) = self.bounds_s.iter().position(|b| seconds <= *b) {
            self.buckets[bucket].fetch_add(count, Relaxed);
        }
        self.count.fetch_add(count, Relaxed);
        self.sum_us.fetch_add(latency_us * count, Relaxed);
    }

    pub fn totals(&self) -> LatencyTotals {
        LatencyTotals {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// The index of a front end in the per-protocol counters.
fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::V1 => 0,
        Protocol::V2 => 1,
        Protocol::Quic => 2,
        Protocol::Monero => 3,
    }
}

pub struct Counters {
    /// Open connections (`connected`/`disconnected`), and by front end as below.
    connections: AtomicU64,
    connections_by_protocol: [AtomicU64; 4],
    pub shares_accepted: AtomicU64,
    /// Accepted shares by front end: V1, V2 over TCP, V2 over QUIC, Monero.
    shares_accepted_by_protocol: [AtomicU64; 4],
    /// Accepted difficulty, in millionths, so it can be summed atomically as an integer.
    pub accepted_difficulty_micro: AtomicU64,
    pub block_candidates: AtomicU64,
    /// QUIC datagrams a core passed to the core owning their connection (migrations).
    pub quic_datagrams_forwarded: AtomicU64,
    rejected: [AtomicU64; 6],
    ack_latency: LatencyHistogram<{ ACK_LATENCY_BUCKETS_S.len() }>,
    /// `ack_latency` by stage, in `ACK_STAGES` order.
    pub ack_stages: [LatencyHistogram<{ ACK_STAGE_BUCKETS_S.len() }>; ACK_STAGES.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
    /// The most shares one core held for its batch hasher at once, since start
    /// (`SHARES_AWAITING_POW_PER_CORE_MAX` bounds it).
    pub pow_queued_peak: AtomicU64,
    /// The most accepted shares one core held waiting for the disk at once, since start
    /// (`SHARES_AWAITING_DURABILITY_PER_CORE_MAX` bounds it).
    pub durability_queued_peak: AtomicU64,
    /// The share log's writer status, once the log is open.
    pub share_log: std::sync::OnceLock<std::sync::Arc<otedama_sharelog::writer::ShareLogStatus>>,
    /// Cluster mode: the share shipper's progress.
    pub share_shipping: std::sync::OnceLock<std::sync::Arc<otedama_cluster::ShipperStatus>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            connections: AtomicU64::new(0),
            connections_by_protocol: Default::default(),
            shares_accepted: AtomicU64::new(0),
            shares_accepted_by_protocol: Default::default(),
            accepted_difficulty_micro: AtomicU64::new(0),
            block_candidates: AtomicU64::new(0),
            quic_datagrams_forwarded: AtomicU64::new(0),
            rejected: Default::default(),
            ack_latency: LatencyHistogram::new(&ACK_LATENCY_BUCKETS_S),
            ack_stages: std::array::from_fn(|_| LatencyHistogram::new(&ACK_STAGE_BUCKETS_S)),
            refusals: Default::default(),
            pow_queued_peak: AtomicU64::new(0),
            durability_queued_peak: AtomicU64::new(0),
            share_log: Default::default(),
            share_shipping: Default::default(),
        }
    }
}

impl Counters {
    pub fn rejected(&self, code: ErrorCode) {
        let index = REJECT_CODES
            .iter()
            .position(|c| *c == code)
            .expect("every code is listed");
        self.rejected[index].fetch_add(1, Relaxed);
    }

    pub fn refused(&self, reason: Refusal, count: u64) {
        if count > 0 {
            let index = Refusal::ALL
                .iter()
                .position(|r| *r == reason)
                .expect("every reason is listed");
            self.refusals[index].fetch_add(count, Relaxed);
        }
    }

    /// A miner's connection opened (after its front end took it).
    pub fn connected(&self, protocol: Protocol) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_by_protocol[protocol_index(protocol)].fetch_add(1, Relaxed);
    }

    /// A connection `connected` counted closed.
    pub fn disconnected(&self, protocol: Protocol) {
        self.connections.fetch_sub(1, Relaxed);
        self.connections_by_protocol[protocol_index(protocol)].fetch_sub(1, Relaxed);
    }

    /// Open connections, over every front end.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    pub fn accepted(&self, difficulty: f64, protocol: Protocol) {
        self.shares_accepted.fetch_add(1, Relaxed);
        self.shares_accepted_by_protocol[protocol_index(protocol)].fetch_add(1, Relaxed);
        // The sum is in the pool's coin's difficulty (its hash rate is read from it); a
        // Monero share's is in RandomX hashes, another unit, and is left out.
        if protocol != Protocol::Monero {
            self.accepted_difficulty_micro
                .fetch_add((difficulty * 1e6) as u64, Relaxed);
        }
    }

    /// Records one acknowledgement `latency_us` after its share passed validation.
    pub fn acknowledged(&self, latency_us: u64) {
        self.ack_latency.record(latency_us, 1);
    }

    pub fn snapshot(&self) -> DataplaneCounters {
        let by_code: Vec<(i32, u64)> = REJECT_CODES
            .iter()
            .zip(&self.rejected)
            .map(|(c, n)| (*c as i32, n.load(Relaxed)))
            .collect();
        let ack_latency = self.ack_latency.totals();
        DataplaneCounters {
            connections: self.connections.load(Relaxed),
            connections_by_protocol: SharesByProtocol {
                v1: self.connections_by_protocol[0].load(Relaxed),
                v2: self.connections_by_protocol[1].load(Relaxed),
                quic: self.connections_by_protocol[2].load(Relaxed),
                monero: self.connections_by_protocol[3].load(Relaxed),
            },
            shares_accepted: self.shares_accepted.load(Relaxed),
            shares_accepted_by_protocol: SharesByProtocol {
                v1: self.shares_accepted_by_protocol[0].load(Relaxed),
                v2: self.shares_accepted_by_protocol[1].load(Relaxed),
                quic: self.shares_accepted_by_protocol[2].load(Relaxed),
                monero: self.shares_accepted_by_protocol[3].load(Relaxed),
            },
            shares_rejected: by_code.iter().map(|(_, n)| n).sum(),
            shares_rejected_by_code: by_code,
            accepted_difficulty_sum: self.accepted_difficulty_micro.load(Relaxed) as f64 / 1e6,
            block_candidates: self.block_candidates.load(Relaxed),
            quic_datagrams_forwarded: self.quic_datagrams_forwarded.load(Relaxed),
            ack_latency_buckets: ack_latency.buckets,
            ack_latency_count: ack_latency.count,
            ack_latency_sum_us: ack_latency.sum_us,
            ack_stages: self.ack_stages.iter().map(|stage| stage.totals()).collect(),
            share_log_failing: self
                .share_log
                .get()
                .is_some_and(|status| !status.writable()),
            share_log_failed_batches: self
                .share_log
                .get()
                .map_or(0, |status| status.failed_batches()),
            share_log_released_records: self
                .share_log
                .get()
                .map_or(0, |status| status.released_records.load(Relaxed)),
            share_shipping: self.share_shipping.get().is_some(),
            share_shipped_through: self
                .share_shipping
                .get()
                .map_or(0, |status| status.shipped_through.load(Relaxed)),
            share_shipping_connected: self
                .share_shipping
                .get()
                .is_some_and(|status| status.connected.load(Relaxed)),
            share_shipping_diverged: self
                .share_shipping
                .get()
                .is_some_and(|status| status.diverged.load(Relaxed)),
            share_shipping_failed_sessions: self
                .share_shipping
                .get()
                .map_or(0, |status| status.failed_sessions.load(Relaxed)),
            pow_queued_peak: self.pow_queued_peak.load(Relaxed),
            durability_queued_peak: self.durability_queued_peak.load(Relaxed),
            refusals: Refusal::ALL
                .iter()
                .zip(&self.refusals)
                .map(|(reason, count)| (reason.name().to_string(), count.load(Relaxed)))
                .collect(),
        }
    }
}
