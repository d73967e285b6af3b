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
pub mod permissions;
pub mod records;
pub mod shares;

pub use host::{HostLease, HostLeaseConfig, LeaseStatus};

pub use shares::{
    clock_subject, decode_batch, encode_batch, message_id, parse_share_stream_name,
    share_stream_name, share_subject, ShareShipper, ShipperConfig, ShipperStatus,
    SHARES_PER_BATCH_MAX, SHARE_BATCH_BYTES_MAX, SHARE_STREAM_PREFIX,
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

/// How this process proves itself to the NATS servers and checks them: TLS with the
/// operator's CA (and a client certificate where the servers verify clients), and a NATS
/// credentials file (a user JWT and its NKey seed, as `nsc` writes them). Set once at
/// start, before any connection (`set_security`); every connection of the process uses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// PEM CA certificates that sign the servers' certificates; given, TLS is required.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and its key, for servers that verify clients (`verify: true`).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// A NATS `.creds` file.
    pub credentials_file: Option<std::path::PathBuf>,
}

impl NatsSecurity {
    /// Whether each file named is readable and the certificate and key come together.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            anyhow::bail!("nats_tls_cert_file and nats_tls_key_file go together");
        }
        for path in [
            &self.tls_ca_file,
            &self.tls_cert_file,
            &self.tls_key_file,
            &self.credentials_file,
        ]
        .into_iter()
        .flatten()
        {
            std::fs::File::open(path)
                .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
        }
        Ok(())
    }
}

static SECURITY: std::sync::OnceLock<NatsSecurity> = std::sync::OnceLock::new();

/// Sets how every NATS connection of this process is secured; refused once set to
/// something else (a process belongs to one cluster).
pub fn set_security(security: NatsSecurity) -> anyhow::Result<()> {
    security.check()?;
    let set = SECURITY.get_or_init(|| security.clone());
    if *set != security {
        anyhow::bail!("the NATS connection security was already set to something else");
    }
    Ok(())
}

/// Connects to the cluster's servers `urls` as every part of this crate does: 5 s to
/// connect, `request_timeout_ms` for a request (the client's default when `None`),
/// secured as `set_security` said.
/// A stream's identity across its lives: when it was made, in nanoseconds (never 0, which
/// stands for no stream).
pub(crate) fn stream_epoch(info: &async_nats::jetstream::stream::Info) -> u64 {
    info.created
        .unix_timestamp_nanos()
        .clamp(1, u64::MAX as i128) as u64
}

/// The prefix of a data-plane host's reply subjects: its own, so its permissions let it
/// read the replies to its requests and no one else's (`permissions::dataplane_subscribe`).
pub fn inbox_prefix(host: &str) -> String {
    format!("_INBOX_{host}")
}

/// The reply prefix of every connection of this process, once a data-plane process sets
/// it (`set_dataplane_host`); the client's default otherwise.
static INBOX_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every connection of this process use data-plane host `host`'s reply prefix. Set
/// once at a data plane's start, before any connection; a second call is refused.
pub fn set_dataplane_host(host: &str) -> anyhow::Result<()> {
    INBOX_PREFIX
        .set(inbox_prefix(host))
        .map_err(|_| anyhow::anyhow!("the data-plane host is set once"))
}

pub(crate) async fn connect(
    urls: &[String],
    request_timeout_ms: Option<u64>,
) -> anyhow::Result<async_nats::Client> {
    let mut options =
        async_nats::ConnectOptions::new().connection_timeout(std::time::Duration::from_secs(5));
    if let Some(prefix) = INBOX_PREFIX.get() {
        options = options.custom_inbox_prefix(prefix);
    }
    if let Some(ms) = request_timeout_ms {
        options = options.request_timeout(Some(std::time::Duration::from_millis(ms)));
    }
    if let Some(security) = SECURITY.get() {
        if let Some(path) = &security.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|error| anyhow::anyhow!("NATS credentials {}: {error}", path.display()))?;
        }
        if let Some(path) = &security.tls_ca_file {
            options = options
                .require_tls(true)
                .add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&security.tls_cert_file, &security.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options.connect(server_addresses(urls)?).await?)
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
