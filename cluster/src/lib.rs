//! The pool across hosts, on NATS JetStream: what a data-plane host sends to the cluster
//! and how. Single-host mode needs none of it.
//!
//! So far:
//! - the share shipper (`shares`), which copies a data-plane process's local share log
//!   into a replicated JetStream stream, exactly once and in order, resuming from the
//!   stream itself after any failure;
//! - host identity (`host`): each data-plane process holds a slot of the cluster by a
//!   lease, and its extranonce1 values start with that slot;
//! - the share mirror (`mirror`): the control plane's copy of every process's log, read
//!   from the stream, which its payouts and block scan follow as local logs;
//! - the control-plane link over NATS (`link`): the local socket's byte stream in
//!   numbered chunks, so a data-plane host needs no control plane of its own;
//! - the ledger's writes in a replicated stream (`ledger`), fenced by position, so a
//!   standby control plane holds the leader's exact ledger, and the leader's lease
//!   (`leader`) that says which control plane writes;
//! - the found blocks and built jobs in replicated streams (`records`), so a new leader
//!   holds every block and job the former one made.

pub mod host;
pub mod leader;
pub mod ledger;
pub mod link;
pub mod mirror;
pub mod records;
pub mod shares;

pub use host::{HostLease, HostLeaseConfig, LeaseStatus};

pub use shares::{
    clock_subject, decode_batch, encode_batch, message_id, share_subject, ShareShipper,
    ShipperConfig, ShipperStatus, SHARES_PER_BATCH_MAX, SHARE_BATCH_BYTES_MAX, SHARE_STREAM,
};

/// Runs `task` on a thread of its own with a current-thread tokio runtime: the NATS client
/// needs one, and its callers are the data plane's glommio cores or blocking code. A
/// runtime that cannot be built ends the thread at once (logged), which its owner sees as
/// a closed channel or a status that never moves.
pub(crate) fn spawn_on_runtime<F, Fut>(
    name: impl Into<String>,
    task: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(task()),
                Err(error) => tracing::error!(%error, "no async runtime for a cluster thread"),
            }
        })
}

/// Parses `--nats-url` values (`nats://HOST:PORT`, `tls://HOST:PORT`) into the client's
/// server list.
pub fn server_addresses(urls: &[String]) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    if urls.is_empty() {
        anyhow::bail!("no NATS URL given");
    }
    urls.iter()
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|error| anyhow::anyhow!("NATS URL {url}: {error}"))
        })
        .collect()
}
