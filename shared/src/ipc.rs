//! The local link between the control plane and the data plane: JSON lines over a Unix
//! stream socket. Jobs flow down; block candidates and share counters flow up. Volumes are
//! small (a job per block or template change, a counter update per second), so a readable
//! format costs nothing that matters and makes the link easy to inspect.

use serde::{Deserialize, Serialize};

use crate::bans::BanList;
use crate::job::JobTemplate;
use crate::sv1::BlockCandidate;

/// Longest IPC line accepted; a job with a few thousand branch hashes fits easily.
pub const IPC_LINE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Control plane → data plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Downstream {
    Job(JobTemplate),
    /// The whole ban list, sent at link start and on every change.
    Bans(BanList),
}

/// Data plane → control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Upstream {
    BlockCandidate(BlockCandidate),
    Counters(DataplaneCounters),
}

/// Upper bounds, in seconds, of the share acknowledgement latency histogram: from a share
/// passing validation to its `true` being sent, which is the share log's durability wait.
pub const ACK_LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Running totals since the data plane started; the control plane keeps the latest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataplaneCounters {
    pub connections: u64,
    pub shares_accepted: u64,
    #[serde(default)]
    pub shares_accepted_by_protocol: SharesByProtocol,
    pub shares_rejected: u64,
    pub shares_rejected_by_code: Vec<(i32, u64)>,
    /// Sum of the difficulty of accepted shares, for hashrate estimates.
    pub accepted_difficulty_sum: f64,
    pub block_candidates: u64,
    /// QUIC datagrams handed from the core that received them to the core owning their
    /// connection (a migrated client).
    #[serde(default)]
    pub quic_datagrams_forwarded: u64,
    /// Acknowledged shares per `ACK_LATENCY_BUCKETS_S` bucket (not cumulative); slower
    /// ones are only in `ack_latency_count`.
    #[serde(default)]
    pub ack_latency_buckets: Vec<u64>,
    #[serde(default)]
    pub ack_latency_count: u64,
    #[serde(default)]
    pub ack_latency_sum_us: u64,
}

/// Accepted shares by the front end they came through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharesByProtocol {
    pub v1: u64,
    /// Stratum V2 over TCP (Noise).
    pub v2: u64,
    /// Stratum V2 over QUIC.
    pub quic: u64,
}

impl std::ops::AddAssign for SharesByProtocol {
    fn add_assign(&mut self, other: Self) {
        self.v1 += other.v1;
        self.v2 += other.v2;
        self.quic += other.quic;
    }
}

/// Encodes one message as a line.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(message).expect("IPC messages always serialize");
    out.push(b'\n');
    out
}

/// Decodes one line (without its newline).
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let job = Downstream::Job(crate::job::tests::template(5, true));
        let line = encode(&job);
        assert_eq!(decode::<Downstream>(&line[..line.len() - 1]).unwrap(), job);
        let up = Upstream::Counters(DataplaneCounters {
            connections: 3,
            ..Default::default()
        });
        let line = encode(&up);
        assert_eq!(decode::<Upstream>(&line[..line.len() - 1]).unwrap(), up);
    }
}
