//! Otedama's data plane: it terminates miner connections and validates their shares.
//!
//! One pinned glommio executor per core listens on every Stratum port through
//! SO_REUSEPORT, owns its connections, its buffers and its copy of the live jobs, and
//! validates shares on the core that received them, without locks. Accepted shares go to
//! the share log (`otedama_sharelog`, RocksDB with group commit) before the miner hears
//! `true`. Jobs arrive from the
//! control plane over a local socket; block candidates and counters go back up.
//!
//! It never talks to the chain node, never pays anyone and never blocks a core on I/O.

pub mod counters;
pub mod ipc;
pub mod net;
pub mod rt;
pub mod served_jobs;

#[cfg(test)]
pub(crate) mod test_support {
    /// A block candidate at `height`, for the tests of the paths that carry candidates.
    pub fn candidate(height: u64) -> otedama_shared::share::BlockCandidate {
        otedama_shared::share::BlockCandidate {
            job_id: 1,
            height,
            header: vec![0; 80],
            coinbase: vec![1; 60],
            worker: "w".into(),
            found_at_ms: 0,
        }
    }
}

use std::net::SocketAddr;
use std::path::PathBuf;

use otedama_kernels::Algorithm;

/// What the data plane needs to run.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    pub stratum_listen: Vec<SocketAddr>,
    /// Stratum V2 over TCP (Noise) listeners.
    pub sv2_listen: Vec<SocketAddr>,
    /// The key that signs each V2 connection's Noise certificate.
    pub sv2_authority: Option<otedama_shared::sv2::noise::AuthorityKey>,
    /// How long each Noise certificate is valid from its handshake.
    pub sv2_certificate_validity_s: u32,
    /// Stratum V2 over QUIC listeners (UDP).
    pub quic_listen: Vec<SocketAddr>,
    /// The QUIC listeners' certificate chain and key.
    pub quic_tls: Option<net::quic::QuicTls>,
    /// QUIC connections one core holds at most; more are refused.
    pub quic_connections_per_core_max: usize,
    /// Cores to run on; empty means every online core.
    pub cores: Vec<usize>,
    /// The share-log slot this process writes, among the host's `processes` slots (two
    /// per data-plane process, so an upgrade's two copies of one run side by side); with
    /// `cores`, it picks the slices of the extranonce1 space this process hands out.
    pub process_index: usize,
    pub processes: usize,
    /// Seconds this process takes to hand its miners over once told to drain
    /// (`rt::request_drain`): the first half spreads the requests to reconnect.
    pub drain_s: u64,
    pub start_difficulty: f64,
    pub difficulty_min: f64,
    pub algorithm: Algorithm,
    pub share_log_path: PathBuf,
    /// Wait for the WAL to reach the disk before acknowledging shares.
    pub share_log_sync: bool,
    /// Bytes in each share-log memtable (at most `MEMTABLE_BYTES`).
    pub share_log_memtable_bytes: usize,
    /// Milliseconds a share stays in the share log at least (`share_retention_hours`):
    /// older ones go once nobody needs them (`rt::retention`).
    pub share_retention_ms: u64,
    pub ipc_socket: PathBuf,
    pub version_rolling_mask: u32,
    pub connection_idle_timeout_s: u64,
    /// TCP connections (V1 and V2) this process holds from one IPv4 address or IPv6 /64.
    pub connections_per_ip_max: u32,
    /// `None` turns variable difficulty off.
    pub vardiff: Option<otedama_shared::vardiff::VardiffConfig>,
    /// Refuse at authorize a worker whose name does not start with a payout address of
    /// this coin and network.
    pub payout_address_rule: Option<otedama_shared::address::AddressRule>,
    /// Cluster mode: ship this process's share log to JetStream (`otedama_cluster`).
    pub share_shipping: Option<otedama_cluster::ShipperConfig>,
    /// Cluster mode: hold each acknowledgement until the share shipper has the share's
    /// batch in the replicated stream (`share_ack = "replicated"`), not only the local log.
    pub share_ack_replicated: bool,
    /// Cluster mode: claim a slot of the cluster (`otedama_cluster::host`) before taking
    /// any miner; `run` claims it and sets `cluster_slot`.
    pub host_lease: Option<otedama_cluster::HostLeaseConfig>,
    /// Cluster mode, once claimed: the slot every extranonce1 of this process starts
    /// with, and the lease without which the process takes no miner.
    pub cluster_slot: Option<ClusterSlot>,
    /// Cluster mode: every block candidate also goes here, to a thread that submits it to
    /// the node straight from this host (`otedama::block_relay`), so a found block does not
    /// wait for a control plane that is failing over.
    pub block_relay: Option<crossbeam_channel::Sender<otedama_shared::share::BlockCandidate>>,
    /// Monero's Stratum listeners (`net::monero`), if this process serves Monero.
    pub monero: Option<MoneroListenConfig>,
}

/// What a data plane needs to serve Monero miners.
#[derive(Clone, Debug)]
pub struct MoneroListenConfig {
    pub listen: Vec<SocketAddr>,
    /// The network whose addresses may log in.
    pub addresses: otedama_shared::address::MoneroAddressRule,
    /// How the link prepares each seed for the cores' VMs (light: 256 MiB a seed; fast:
    /// about 2 GiB more, hashes several times faster).
    pub randomx_mode: otedama_kernels::randomx::RandomXMode,
    /// In hashes (Monero's difficulty 1 is one hash).
    pub start_difficulty: f64,
    pub difficulty_min: f64,
}

/// A slot of the cluster this process holds (`otedama_cluster::host`).
#[derive(Clone, Debug)]
pub struct ClusterSlot {
    pub slot: u8,
    pub lease: std::sync::Arc<otedama_cluster::LeaseStatus>,
}

pub use rt::run;
