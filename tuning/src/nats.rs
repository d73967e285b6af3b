//! Sizing a NATS server of cluster mode from the load it must carry, with the figures
//! measured in BENCHMARKS.md ("Replicated acknowledgements, jobs over NATS, and ten
//! hosts"): what each server stores, writes, sends and spends per share. A pure function
//! of its input, like the plan; the `otedama_nats` Ansible role writes its result into
//! the server's configuration and unit.

use serde::Serialize;

/// Bytes one share takes in the share stream on each server that holds a replica
/// (measured: about 200 B per share per server on a three-server R3 cluster).
pub const STREAM_BYTES_PER_SHARE: u64 = 200;
/// NATS CPU per share, every server together, at most (measured 4–7 µs).
pub const CPU_NS_PER_SHARE: u64 = 7_000;
/// What the other streams hold at most, on every server: the job stream's bound
/// (`JOB_STREAM_BYTES_MAX`), and room for the ledger, block, ban and host records.
pub const OTHER_STREAMS_BYTES: u64 = 256 * 1024 * 1024 + 768 * 1024 * 1024;
/// The pool's streams are all file-backed; memory storage only holds the server's own.
pub const MEMORY_STORE_BYTES: u64 = 256 * 1024 * 1024;
/// Headroom on the computed store: JetStream refuses writes at its limit, and a share
/// stream that refuses batches holds every replicated acknowledgement.
pub const STORE_HEADROOM_PERCENT: u64 = 25;
/// Share records of each log the stream keeps whatever their age: the share history a
/// control plane reads again after a restart (`otedama_ledger::shares::SHARE_HISTORY_MAX`).
pub const SHARE_HISTORY_RECORDS_PER_LOG: u64 = 1_000_000;
/// The longest retention sized: a year, as the pool's `share_retention_hours` allows.
pub const RETENTION_HOURS_MAX: u64 = 24 * 366;
/// Open files: each pool process keeps a handful of connections, and the file store a
/// file per block of each stream.
pub const OPEN_FILES_MAX: u64 = 65_536;

#[derive(Clone, Copy, Debug)]
pub struct NatsLoad {
    /// Shares per second the whole pool takes.
    pub shares_per_second: u64,
    /// Hours of shares the share stream holds (the pool's `share_retention_hours`): the
    /// leader control plane purges older ones once they are credited.
    pub retention_hours: u64,
    /// Share logs in the cluster (two slots per data-plane process over every host): the
    /// stream keeps
    /// each one's share history whatever its age (`SHARE_HISTORY_RECORDS_PER_LOG`).
    pub share_logs: u64,
    /// Hours the pool may go on taking shares while nothing is purged (no leader, the
    /// ledger stream or the node down, a block share not yet recorded): the stream keeps
    /// every share nobody has credited, so it fills after this long.
    pub outage_hours: u64,
    /// NATS servers in the cluster.
    pub servers: u64,
    /// Copies of each stream (`share_stream_replicas`).
    pub replicas: u64,
}

/// What one server needs, with the reason for each figure.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NatsSizing {
    pub max_file_store_bytes: u64,
    pub max_memory_store_bytes: u64,
    pub open_files_max: u64,
    /// Share-stream bytes each server that holds a replica writes per second. The share
    /// stream is one stream: each of its `replicas` servers holds all of it.
    pub stream_write_bytes_per_second: u64,
    /// Bytes each server sends to the others per second, leading a stream: each batch to
    /// every other replica.
    pub replication_send_bytes_per_second: u64,
    /// Cores of NATS CPU per server, if one server leads every stream (the worst case).
    pub cpu_cores_millis: u64,
    pub reasons: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NatsSizingError {
    #[error("--servers must be at least 1")]
    NoServers,
    #[error("--replicas must lie between 1 and 5 and not exceed --servers ({servers})")]
    Replicas { servers: u64 },
    #[error("--retention-hours must be at most {RETENTION_HOURS_MAX}")]
    RetentionTooLong,
    #[error("--outage-hours must be at most {RETENTION_HOURS_MAX}")]
    OutageTooLong,
}

pub fn size(load: &NatsLoad) -> Result<NatsSizing, NatsSizingError> {
    if load.servers == 0 {
        return Err(NatsSizingError::NoServers);
    }
    if !(1..=5).contains(&load.replicas) || load.replicas > load.servers {
        return Err(NatsSizingError::Replicas {
            servers: load.servers,
        });
    }
    if load.retention_hours > RETENTION_HOURS_MAX {
        return Err(NatsSizingError::RetentionTooLong);
    }
    if load.outage_hours > RETENTION_HOURS_MAX {
        return Err(NatsSizingError::OutageTooLong);
    }
    // A stream per share log, each written in full by the `replicas` servers that hold it;
    // any server may hold a replica of every one (the cluster places replicas, and moves
    // them on failure), so each is sized for all of them.
    let stream_write = load.shares_per_second * STREAM_BYTES_PER_SHARE;
    let history_bytes = load.share_logs * SHARE_HISTORY_RECORDS_PER_LOG * STREAM_BYTES_PER_SHARE;
    let stream_bytes =
        stream_write * 3_600 * (load.retention_hours + load.outage_hours) + history_bytes;
    let store = (stream_bytes + OTHER_STREAMS_BYTES) * (100 + STORE_HEADROOM_PERCENT) / 100;
    let send = load.shares_per_second * STREAM_BYTES_PER_SHARE * (load.replicas - 1);
    let cpu_millis = (load.shares_per_second * CPU_NS_PER_SHARE).div_ceil(1_000_000);
    let reasons = vec![
        format!(
            "max_file_store: {} shares/s x {STREAM_BYTES_PER_SHARE} B = {} B/s of share streams on a server holding one of the {} replicas of every log's stream (any of the {} may), for {} hours of retention and {} hours of outage (while nothing is credited, nothing is purged), plus {} logs' share history ({SHARE_HISTORY_RECORDS_PER_LOG} records each) = {} B, plus {} B for the other streams, plus {STORE_HEADROOM_PERCENT} %",
            load.shares_per_second, stream_write, load.replicas, load.servers, load.retention_hours, load.outage_hours, load.share_logs, history_bytes, OTHER_STREAMS_BYTES
        ),
        format!("max_memory_store: the pool's streams are file-backed; {MEMORY_STORE_BYTES} B for the server's own"),
        format!("LimitNOFILE: {OPEN_FILES_MAX}, for the pool processes' connections and the file store's blocks"),
        format!(
            "network: leading every log's share stream (the most it can lead), a server sends each batch to its {} other replicas: {} B/s",
            load.replicas - 1,
            send
        ),
        format!(
            "cpu: at most {CPU_NS_PER_SHARE} ns of NATS CPU per share: {} millicores if one server leads every stream",
            cpu_millis
        ),
    ];
    Ok(NatsSizing {
        max_file_store_bytes: store,
        max_memory_store_bytes: MEMORY_STORE_BYTES,
        open_files_max: OPEN_FILES_MAX,
        stream_write_bytes_per_second: stream_write,
        replication_send_bytes_per_second: send,
        cpu_cores_millis: cpu_millis,
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(shares_per_second: u64, servers: u64, replicas: u64) -> NatsLoad {
        NatsLoad {
            shares_per_second,
            retention_hours: 48,
            share_logs: 6,
            outage_hours: 24,
            servers,
            replicas,
        }
    }

    /// A million miners at a share every 10 s on three servers: 20 MB/s of stream on
    /// each, 6.5 TB for two days and a day's outage with headroom, and 0.7 core of NATS
    /// CPU at most.
    #[test]
    fn a_million_miners_on_three_servers() {
        let sizing = size(&load(100_000, 3, 3)).unwrap();
        assert_eq!(sizing.stream_write_bytes_per_second, 20_000_000);
        assert_eq!(
            sizing.max_file_store_bytes,
            (20_000_000 * 3_600 * 72 + 6 * 1_000_000 * 200 + OTHER_STREAMS_BYTES) * 125 / 100
        );
        assert_eq!(sizing.replication_send_bytes_per_second, 40_000_000);
        assert_eq!(sizing.cpu_cores_millis, 700);
    }

    /// With five servers and three replicas, any server may hold a replica of every log's
    /// share stream, so each is sized for all of them.
    #[test]
    fn every_server_is_sized_for_a_whole_replica() {
        let three = size(&load(10_000, 3, 3)).unwrap();
        let five = size(&load(10_000, 5, 3)).unwrap();
        assert_eq!(five.max_file_store_bytes, three.max_file_store_bytes);
        assert_eq!(five.stream_write_bytes_per_second, 2_000_000);
    }

    #[test]
    fn impossible_loads_are_refused() {
        assert_eq!(size(&load(1, 0, 1)), Err(NatsSizingError::NoServers));
        assert_eq!(
            size(&load(1, 2, 3)),
            Err(NatsSizingError::Replicas { servers: 2 })
        );
        assert_eq!(
            size(&load(1, 6, 6)),
            Err(NatsSizingError::Replicas { servers: 6 })
        );
        let mut long = load(1, 3, 3);
        long.retention_hours = RETENTION_HOURS_MAX + 1;
        assert_eq!(size(&long), Err(NatsSizingError::RetentionTooLong));
        long.retention_hours = 0;
        long.outage_hours = RETENTION_HOURS_MAX + 1;
        assert_eq!(size(&long), Err(NatsSizingError::OutageTooLong));
        // No retention and no outage still keep every log's history.
        long.retention_hours = 0;
        long.outage_hours = 0;
        assert_eq!(
            size(&long).unwrap().max_file_store_bytes,
            (6 * 1_000_000 * 200 + OTHER_STREAMS_BYTES) * 125 / 100
        );
    }
}
