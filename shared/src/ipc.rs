//! The local link between the control plane and the data plane: JSON lines over a Unix
//! stream socket. Jobs flow down; block candidates and share counters flow up. Volumes are
//! small (a job per block or template change, a counter update per second), so a readable
//! format costs nothing that matters and makes the link easy to inspect.

use serde::{Deserialize, Serialize};

use crate::bans::{BanList, BANS_MAX};
use crate::job::JobTemplate;
use crate::share::BlockCandidate;

/// Longest IPC line accepted; a job with a few thousand branch hashes fits easily.
pub const IPC_LINE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Bytes of ban entries one message carries at most (each entry measured as JSON, with
/// its separator): a list at `BANS_MAX` goes in several messages, each far under
/// `IPC_LINE_BYTES_MAX`.
pub const BAN_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Control plane → data plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Downstream {
    Job(JobTemplate),
    /// One part of the whole ban list, sent at link start and on every change. Parts come
    /// in order on one link; the list takes effect whole when the `last` part arrives.
    Bans {
        part: BanList,
        last: bool,
    },
    /// Single-host mode: for each data-plane process (by its index), the sequence below
    /// which its share log holds nothing the control plane would read again, even after a
    /// restart: every share there is credited and scanned for blocks, with the share
    /// history a restart reads kept above it. The data plane may cut its log below it,
    /// once the shares are also older than `share_retention_hours`
    /// (`otedama_sharelog::retention`). Sent on change, at most every
    /// `SHARE_LOG_FLOORS_INTERVAL_MS`, and at link start once known. Pairs (process,
    /// floor), not a map: an internally tagged enum cannot read a map's number keys back.
    ShareLogFloors {
        floors: Vec<(u32, u64)>,
    },
    /// A Monero block template, for the data plane's Monero listeners.
    MoneroJob(MoneroJobTemplate),
}

/// A Monero block template as the control plane sends it (`MoneroJob` once decoded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneroJobTemplate {
    pub job_id: u64,
    pub height: u64,
    #[serde(with = "hex::serde")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex::serde")]
    pub seed_hash: [u8; 32],
    /// In decimal: a JSON number past 2^53 is not read exactly by every reader.
    pub network_difficulty: String,
    /// The whole block, its reserved bytes zero.
    #[serde(with = "hex::serde")]
    pub blob: Vec<u8>,
    pub reserved_offset: usize,
    pub reserve_size: u8,
}

impl MoneroJobTemplate {
    /// The job, checked as `MoneroJob::new` checks a template.
    pub fn into_job(self) -> Result<crate::monero::stratum::MoneroJob, String> {
        let difficulty: u128 = self
            .network_difficulty
            .parse()
            .map_err(|_| format!("network difficulty {:?}", self.network_difficulty))?;
        crate::monero::stratum::MoneroJob::new(
            self.job_id,
            self.height,
            self.prev_hash,
            self.seed_hash,
            difficulty,
            self.blob,
            self.reserved_offset,
            self.reserve_size,
        )
        .map_err(|error| error.to_string())
    }
}

/// A block a Monero share found, on its way to `submit_block`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneroBlockCandidate {
    pub job_id: u64,
    pub height: u64,
    /// The whole block, with the share's extra nonce and nonce.
    #[serde(with = "hex::serde")]
    pub blob: Vec<u8>,
    /// The id monerod gives it.
    #[serde(with = "hex::serde")]
    pub block_id: [u8; 32],
    pub worker: String,
    pub found_at_ms: u64,
    /// False for a block whose share was not credited (below its share target, or a new
    /// tip while it was hashed): the block is the pool's all the same.
    pub credited: bool,
}

/// Least time between two `Downstream::ShareLogFloors` of a control plane.
pub const SHARE_LOG_FLOORS_INTERVAL_MS: u64 = 10_000;

/// The messages that carry `list`, each at most `BAN_MESSAGE_BYTES_MAX` of entries; an
/// empty list is one message.
pub fn ban_messages(list: &BanList) -> Vec<Downstream> {
    let mut messages = Vec::new();
    let mut part = BanList::default();
    let mut part_bytes = 0;
    let flush = |part: &mut BanList, part_bytes: &mut usize, messages: &mut Vec<Downstream>| {
        messages.push(Downstream::Bans {
            part: std::mem::take(part),
            last: false,
        });
        *part_bytes = 0;
    };
    for address in &list.addresses {
        let bytes = json_bytes(address);
        if part_bytes + bytes > BAN_MESSAGE_BYTES_MAX && !part.is_empty() {
            flush(&mut part, &mut part_bytes, &mut messages);
        }
        part.addresses.insert(address.clone());
        part_bytes += bytes;
    }
    for network in &list.networks {
        let bytes = json_bytes(network);
        if part_bytes + bytes > BAN_MESSAGE_BYTES_MAX && !part.is_empty() {
            flush(&mut part, &mut part_bytes, &mut messages);
        }
        part.networks.insert(*network);
        part_bytes += bytes;
    }
    messages.push(Downstream::Bans { part, last: true });
    messages
}

/// An entry's size in a message: measured as JSON, not guessed (a control character is
/// six bytes there), with its separator.
fn json_bytes<T: Serialize>(entry: &T) -> usize {
    serde_json::to_string(entry).map_or(BAN_MESSAGE_BYTES_MAX, |json| json.len()) + 1
}

/// Puts a ban list back together from its parts, on the data plane. Bounded: a list that
/// would pass `BANS_MAX` entries is dropped whole (the control plane never sends one).
#[derive(Default)]
pub struct BanListAssembler {
    pending: BanList,
    overflowed: bool,
}

impl BanListAssembler {
    /// Adds a part; the whole list once the last part is in (`Err` if it overflowed).
    pub fn add(&mut self, part: BanList, last: bool) -> Option<Result<BanList, usize>> {
        if self.pending.len() + part.len() > BANS_MAX {
            self.overflowed = true;
            self.pending = BanList::default();
        }
        if !self.overflowed {
            self.pending.addresses.extend(part.addresses);
            self.pending.networks.extend(part.networks);
        }
        if !last {
            return None;
        }
        let overflowed = std::mem::take(&mut self.overflowed);
        let list = std::mem::take(&mut self.pending);
        Some(if overflowed { Err(BANS_MAX) } else { Ok(list) })
    }
}

/// Bytes of a data-plane host's name at most: it is part of stream names
/// (`OTEDAMA_SHARES_NAME_PROCESS`), which NATS bounds, and of every share subject.
pub const CLUSTER_HOST_NAME_BYTES_MAX: usize = 64;

/// Whether `name` can name a data-plane host in cluster mode: one NATS subject token of
/// letters, digits, `-` and `_`, of at most `CLUSTER_HOST_NAME_BYTES_MAX` bytes (its
/// shares go to `otedama.shares.NAME.PROCESS`, in the stream `OTEDAMA_SHARES_NAME_PROCESS`).
pub fn is_cluster_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= CLUSTER_HOST_NAME_BYTES_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Data plane → control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Upstream {
    /// A block found now: never sent before.
    BlockCandidate(BlockCandidate),
    /// A block sent on an earlier link, sent again because that link may have died
    /// before the control plane read it: a control plane before this one may have
    /// submitted it, so the node is asked before it is judged stale.
    BlockCandidateResent(BlockCandidate),
    Counters(DataplaneCounters),
    /// A block a Monero share found.
    MoneroBlock(MoneroBlockCandidate),
}

/// Upper bounds, in seconds, of the share acknowledgement latency histogram: from a share
/// passing validation to its `true` being sent, which is the share log's durability wait.
/// Fine below 25 ms, where a disk's fsync and a core's turn lie, so that a p99 read from
/// the buckets is a bound within a third of the true value there, not a factor of 2.5.
pub const ACK_LATENCY_BUCKETS_S: [f64; 19] = [
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The stages of a share's way from validation to its acknowledgement, in order; the
/// first three make up the acknowledgement latency (`ACK_LATENCY_BUCKETS_S`), the last
/// follows it:
/// - `queue`: from passing validation (just before the append) until the share log's
///   writer takes its batch;
/// - `disk`: the batch's write and fsync;
/// - `handoff`: from durable until the share's core handles the completion;
/// - `reply`: from then until the core has written the miner's replies;
/// - `replicate` (cluster mode with `share_ack = "replicated"` only): from durable until the
///   share shipper has the batch in the replicated stream; `handoff` then counts from there.
///   Last in the list, though between `disk` and `handoff` in time, so a data plane of an
///   older release, which sends four stages, is read right.
pub const ACK_STAGES: [&str; 5] = ["queue", "disk", "handoff", "reply", "replicate"];
/// The stages every acknowledgement passes (`replicate` is cluster mode's).
pub const ACK_STAGES_ALWAYS: usize = 4;

/// Upper bounds, in seconds, of the stage histograms (`ACK_STAGES`): finer than the
/// acknowledgement's at the low end, since a stage can take microseconds.
pub const ACK_STAGE_BUCKETS_S: [f64; 22] = [
    0.00002, 0.00005, 0.0001, 0.00015, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
    0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A latency histogram's running totals: counts per bucket (not cumulative; slower ones
/// only in `count`), the count and the sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyTotals {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_us: u64,
}

impl LatencyTotals {
    /// Adds another process's totals (of the same bucket bounds).
    pub fn add(&mut self, other: &LatencyTotals) {
        self.add_parts(&other.buckets, other.count, other.sum_us);
    }

    /// `add` for totals held as separate fields (`DataplaneCounters::ack_latency_*`).
    pub fn add_parts(&mut self, buckets: &[u64], count: u64, sum_us: u64) {
        if self.buckets.len() < buckets.len() {
            self.buckets.resize(buckets.len(), 0);
        }
        for (total, count) in self.buckets.iter_mut().zip(buckets) {
            *total += count;
        }
        self.count += count;
        self.sum_us += sum_us;
    }
}

/// Running totals since the data plane started; the control plane keeps the latest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataplaneCounters {
    pub connections: u64,
    /// `connections` by front end (counted the way accepted shares are).
    #[serde(default)]
    pub connections_by_protocol: SharesByProtocol,
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
    /// The acknowledgement latency by stage, in `ACK_STAGES` order, over
    /// `ACK_STAGE_BUCKETS_S`.
    #[serde(default)]
    pub ack_stages: Vec<LatencyTotals>,
    /// Refusals by `Refusal::name`.
    #[serde(default)]
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// Whether the share log cannot write: true from a failed write (a full disk, an I/O
    /// error) until one works again. Shares are refused meanwhile.
    #[serde(default)]
    pub share_log_failing: bool,
    /// Share-log batches whose write failed; their shares were refused.
    #[serde(default)]
    pub share_log_failed_batches: u64,
    /// Records cut from the share log by retention (`otedama_sharelog::retention`).
    #[serde(default)]
    pub share_log_released_records: u64,
    /// Cluster mode: whether this data plane ships its share log to the cluster's stream
    /// (`otedama_cluster::shares`); the fields below are its shipper's.
    #[serde(default)]
    pub share_shipping: bool,
    /// Every share of this data plane's log below this sequence is in the stream.
    #[serde(default)]
    pub share_shipped_through: u64,
    #[serde(default)]
    pub share_shipping_connected: bool,
    /// Shipping stopped because the log does not hold the stream's last record of it.
    #[serde(default)]
    pub share_shipping_diverged: bool,
    #[serde(default)]
    pub share_shipping_failed_sessions: u64,
    /// The most shares one core of this data plane held for its batch hasher at once.
    /// (Named `scrypt_queued_peak` before SHA256d shares waited there too.)
    #[serde(default, alias = "scrypt_queued_peak")]
    pub pow_queued_peak: u64,
    /// The most accepted shares one core of this data plane held for the disk at once.
    #[serde(default)]
    pub durability_queued_peak: u64,
}

/// Why the data plane refused a share or a connection for a reason of its own (Stratum
/// rejections by error code are counted apart), for
/// `otedama_dataplane_refusals_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A core's duplicate filter was at `DUPLICATE_FILTER_SHARES_PER_CORE_MAX`.
    ShareFilterFull,
    /// A TCP connection refused at accept: its address had `connections_per_ip_max`.
    ConnectionsPerIp,
    /// Closed: not logged in within `STRATUM_LOGIN_DEADLINE_S`.
    LoginDeadline,
    /// Closed: a line or frame left unfinished for `STRATUM_PARTIAL_LINE_DEADLINE_S`.
    PartialLineDeadline,
    /// Closed: silent for `connection_idle_timeout_s`.
    IdleTimeout,
    /// A QUIC Initial answered with a Retry: too many logins pending on the core, and the
    /// address not yet validated.
    QuicRetry,
    /// A connection refused or closed by the ban list or the deny list.
    Banned,
    /// Closed: the miner did not read what the pool sent (`SEND_BACKLOG_BYTES_MAX`).
    SendBacklog,
    /// Closed: a line or frame over its limit.
    Oversize,
    /// Closed: what the peer sent is not the protocol (not JSON, a failed handshake, a
    /// frame that does not decrypt or decode).
    ProtocolError,
    /// A QUIC connection refused: its core had `quic_connections_per_core_max`.
    QuicCoreFull,
    /// A connection or channel refused: its core had every extranonce1 it can hand out
    /// held by live ones.
    ExtranoncesExhausted,
    /// Cluster mode: a connection refused, or closed, because the host's lease on its
    /// identity lapsed (another host may be given its extranonce1 values).
    ClusterLeaseLost,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::ShareFilterFull,
        Refusal::ConnectionsPerIp,
        Refusal::LoginDeadline,
        Refusal::PartialLineDeadline,
        Refusal::IdleTimeout,
        Refusal::QuicRetry,
        Refusal::Banned,
        Refusal::SendBacklog,
        Refusal::Oversize,
        Refusal::ProtocolError,
        Refusal::QuicCoreFull,
        Refusal::ExtranoncesExhausted,
        Refusal::ClusterLeaseLost,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ShareFilterFull => "share_filter_full",
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::LoginDeadline => "login_deadline",
            Refusal::PartialLineDeadline => "partial_line_deadline",
            Refusal::IdleTimeout => "idle_timeout",
            Refusal::QuicRetry => "quic_retry",
            Refusal::Banned => "banned",
            Refusal::SendBacklog => "send_backlog",
            Refusal::Oversize => "oversize",
            Refusal::ProtocolError => "protocol_error",
            Refusal::QuicCoreFull => "quic_core_full",
            Refusal::ExtranoncesExhausted => "extranonces_exhausted",
            Refusal::ClusterLeaseLost => "cluster_lease_lost",
        }
    }
}

/// Accepted shares by the front end they came through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharesByProtocol {
    pub v1: u64,
    /// Stratum V2 over TCP (Noise).
    pub v2: u64,
    /// Stratum V2 over QUIC.
    pub quic: u64,
    /// Monero's Stratum dialect.
    #[serde(default)]
    pub monero: u64,
}

impl std::ops::AddAssign for SharesByProtocol {
    fn add_assign(&mut self, other: Self) {
        self.v1 += other.v1;
        self.v2 += other.v2;
        self.quic += other.quic;
        self.monero += other.monero;
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
    /// Entries that fill exactly `BAN_MESSAGE_BYTES_MAX` go in one message; one entry more
    /// starts a second.
    #[test]
    fn a_ban_message_holds_exactly_its_byte_limit() {
        // Each entry is 61 characters: 64 bytes as JSON with its quotes and separator.
        let entry = |index: usize| format!("{index:061}");
        assert_eq!(json_bytes(&entry(0)), 64);
        let per_message = BAN_MESSAGE_BYTES_MAX / 64;
        let mut list = BanList::default();
        list.addresses.extend((0..per_message).map(entry));
        let messages = ban_messages(&list);
        assert_eq!(messages.len(), 1, "exactly the limit fits in one");
        list.addresses.insert(entry(per_message));
        let messages = ban_messages(&list);
        assert_eq!(messages.len(), 2);
        let Downstream::Bans { part, last } = &messages[0] else {
            panic!("a ban message");
        };
        assert_eq!((part.len(), *last), (per_message, false));
    }

    /// Issue 16: a ban list at `BANS_MAX`, of the longest entries, reaches the data plane
    /// in messages under `IPC_LINE_BYTES_MAX`, and comes back whole.
    #[test]
    fn a_full_ban_list_travels_in_bounded_messages() {
        use crate::bans::IpNetwork;
        let mut list = BanList::default();
        for i in 0..BANS_MAX / 2 {
            // A bech32m address is at most 90 characters.
            list.addresses.insert(format!("{i:0>90}"));
        }
        for i in 0..BANS_MAX - BANS_MAX / 2 {
            let network: IpNetwork = format!(
                "ffff:ffff:ffff:ffff:ffff:ffff:{:x}:{:x}/128",
                i >> 16,
                i & 0xffff
            )
            .parse()
            .unwrap();
            list.networks.insert(network);
        }
        assert_eq!(list.len(), BANS_MAX);
        let messages = ban_messages(&list);
        assert!(messages.len() > 1);
        let mut assembler = BanListAssembler::default();
        let mut whole = None;
        for (index, message) in messages.iter().enumerate() {
            let line = encode(message);
            assert!(
                line.len() <= IPC_LINE_BYTES_MAX,
                "message {index}: {} bytes",
                line.len()
            );
            let Downstream::Bans { part, last } = decode(&line[..line.len() - 1]).unwrap() else {
                panic!("a ban message");
            };
            assert_eq!(last, index + 1 == messages.len());
            if let Some(result) = assembler.add(part, last) {
                whole = Some(result.unwrap());
            }
        }
        assert_eq!(whole, Some(list));

        // One entry over the limit and the list is refused whole, and the next one is fine.
        let mut over = assembler.add(
            BanList {
                addresses: (0..=BANS_MAX).map(|i| format!("a{i}")).collect(),
                networks: Default::default(),
            },
            true,
        );
        assert_eq!(over.take(), Some(Err(BANS_MAX)));
        // Entries that grow in JSON (a control character is six bytes there) still fit.
        let escaped = BanList {
            addresses: (0..20_000).map(|i| format!("{i:\u{1}>128}")).collect(),
            networks: Default::default(),
        };
        for message in ban_messages(&escaped) {
            assert!(encode(&message).len() <= IPC_LINE_BYTES_MAX);
        }
        let empty = ban_messages(&BanList::default());
        assert_eq!(empty.len(), 1);
        let Downstream::Bans { part, last } = empty[0].clone() else {
            panic!("a ban message");
        };
        assert_eq!(assembler.add(part, last), Some(Ok(BanList::default())));
    }

    use super::*;

    /// A host name is one subject token of at most `CLUSTER_HOST_NAME_BYTES_MAX` bytes.
    #[test]
    fn a_host_name_holds_its_limit() {
        assert!(is_cluster_host_name(
            &"a".repeat(CLUSTER_HOST_NAME_BYTES_MAX)
        ));
        assert!(!is_cluster_host_name(
            &"a".repeat(CLUSTER_HOST_NAME_BYTES_MAX + 1)
        ));
        assert!(is_cluster_host_name("dp-1_a"));
        for bad in ["", "dp.1", "dp 1", "dp*", "dp>", "dé"] {
            assert!(!is_cluster_host_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let job = Downstream::Job(crate::job::tests::template(5, true));
        let line = encode(&job);
        assert_eq!(decode::<Downstream>(&line[..line.len() - 1]).unwrap(), job);
        let floors = Downstream::ShareLogFloors {
            floors: vec![(0, 7), (3, u64::MAX)],
        };
        let line = encode(&floors);
        assert_eq!(
            decode::<Downstream>(&line[..line.len() - 1]).unwrap(),
            floors
        );
        let up = Upstream::Counters(DataplaneCounters {
            connections: 3,
            ..Default::default()
        });
        let line = encode(&up);
        assert_eq!(decode::<Upstream>(&line[..line.len() - 1]).unwrap(), up);
    }
}
