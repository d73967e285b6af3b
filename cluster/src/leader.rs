//! Cluster mode: which control plane leads. One key of the host bucket (`LEADER_KEY`),
//! written only by compare-and-set, names the leader; it renews it as a host renews its
//! slot (`crate::host`: dropped by the bucket `HOST_LEASE_TTL_MS` after its last write,
//! held `HOST_LEASE_HELD_MS` after the last renewal sent that succeeded). The others
//! stand by and take it once it lapses, or at once when the leader lets it go on a clean
//! stop.
//!
//! The lease says who should lead; the ledger stream's fencing (`crate::ledger`) is what
//! keeps a former leader that has not noticed yet from writing.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::kv;

use crate::host::{monotonic_ms, LeaseStatus, HOST_LEASE_RENEW_MS, HOST_LEASE_RETRY_MS};

/// The key naming the leading control plane.
pub const LEADER_KEY: &str = "leader.controlplane";
/// How long a control plane that let the lease go because it could not lead on it
/// (`crate::records::Leadership`) waits before it stands for leader again.
pub const LEADER_STAND_ASIDE_MS: u64 = 60_000;

pub struct LeaderLease {
    /// Held for the process's life (its lock keeps a second process off the directory).
    _identity: crate::host::Identity,
    status: Arc<LeaseStatus>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LeaderLease {
    /// Stands for leader as `name` (this control plane, for operators) until dropped,
    /// with the identity kept in `identity_file` (its data directory): started again
    /// there after a crash, it takes its own lease back at once (its ledger catches up
    /// with the stream before any write, so being behind costs nothing).
    pub fn start(
        nats_urls: Vec<String>,
        replicas: usize,
        identity_file: &std::path::Path,
        name: String,
    ) -> anyhow::Result<Self> {
        crate::server_addresses(&nats_urls)?;
        if !otedama_shared::ipc::is_cluster_host_name(&name) {
            anyhow::bail!("control plane name {name:?} must be letters, digits, '-' and '_' only");
        }
        let identity = crate::host::load_or_create_identity(identity_file, &name)?;
        let status = Arc::new(LeaseStatus::default());
        let stop = Arc::new(AtomicBool::new(false));
        let value = format!("{name} {:016x}", identity.id);
        let (thread_status, thread_stop) = (status.clone(), stop.clone());
        let thread = crate::spawn_on_runtime("leader-lease", move || {
            keep(nats_urls, replicas, value, thread_status, thread_stop)
        })?;
        Ok(LeaderLease {
            _identity: identity,
            status,
            stop,
            thread: Some(thread),
        })
    }

    pub fn status(&self) -> Arc<LeaseStatus> {
        self.status.clone()
    }
}

impl Drop for LeaderLease {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One try: the new revision if this control plane holds the key now, `None` if another
/// does, an error if the bucket did not answer.
async fn attempt(
    store: &kv::Store,
    value: &str,
    revision: Option<u64>,
) -> anyhow::Result<Option<u64>> {
    if let Some(revision) = revision {
        return match store
            .update(LEADER_KEY, value.to_string().into(), revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // A renewal whose answer was lost moved the revision on; the key is still
                // ours if it holds our value, which no one else writes.
                match store.entry(LEADER_KEY).await? {
                    Some(entry)
                        if entry.operation == kv::Operation::Put
                            && entry.value == value.as_bytes() =>
                    {
                        Ok(Some(entry.revision))
                    }
                    _ => Ok(None),
                }
            }
            Err(error) => Err(error.into()),
        };
    }
    match store.entry(LEADER_KEY).await? {
        Some(entry) if entry.operation == kv::Operation::Put && entry.value != value.as_bytes() => {
            Ok(None)
        }
        Some(entry) if entry.operation == kv::Operation::Put => {
            match store
                .update(LEADER_KEY, value.to_string().into(), entry.revision)
                .await
            {
                Ok(revision) => Ok(Some(revision)),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(error) => Err(error.into()),
            }
        }
        _ => match store.create(LEADER_KEY, value.to_string().into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(error.into()),
        },
    }
}

async fn keep(
    nats_urls: Vec<String>,
    replicas: usize,
    value: String,
    status: Arc<LeaseStatus>,
    stop: Arc<AtomicBool>,
) {
    let mut store = None;
    let mut revision: Option<u64> = None;
    let mut leading = false;
    while !stop.load(Relaxed) {
        if store.is_none() {
            store = crate::host::open_bucket(&nats_urls, replicas).await.ok();
        }
        if let Some(bucket) = &store {
            let sent_ms = monotonic_ms();
            match attempt(bucket, &value, revision).await {
                Ok(Some(renewed)) => {
                    revision = Some(renewed);
                    if !leading {
                        status.began_term(renewed);
                    }
                    status.renewed(sent_ms);
                    if !leading {
                        tracing::warn!(%value, "this control plane leads now");
                        leading = true;
                    }
                }
                Ok(None) => {
                    if revision.take().is_some() || leading {
                        status.lost();
                        status.lapses.fetch_add(1, Relaxed);
                        tracing::error!("leadership lost: another control plane leads");
                        leading = false;
                    }
                }
                Err(error) => {
                    if leading && !status.held() {
                        status.lapses.fetch_add(1, Relaxed);
                        tracing::error!(
                            error = format!("{error:#}"),
                            "leadership lapsed: the cluster is out of reach"
                        );
                        leading = false;
                        revision = None;
                    }
                }
            }
        }
        // Asked to let go (this process holds the lease but cannot lead on it): the
        // key is deleted so another control plane leads at once, and this one stands
        // aside for `LEADER_STAND_ASIDE_MS` before it stands again.
        let mut wait = if status.held() {
            HOST_LEASE_RENEW_MS
        } else {
            HOST_LEASE_RETRY_MS
        };
        if status.take_release_request() && leading {
            if let (Some(bucket), Some(held)) = (&store, revision.take()) {
                status.lost();
                status.lapses.fetch_add(1, Relaxed);
                let _ = bucket.delete_expect_revision(LEADER_KEY, Some(held)).await;
                tracing::error!(
                    stand_aside_ms = LEADER_STAND_ASIDE_MS,
                    "leadership let go: this control plane held the lease but could not lead on it"
                );
                leading = false;
                wait = LEADER_STAND_ASIDE_MS;
            }
        }
        let until = std::time::Instant::now() + Duration::from_millis(wait);
        while std::time::Instant::now() < until && !stop.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A clean stop lets the lease go, so a standby leads at once.
    if let (Some(bucket), Some(revision)) = (&store, revision) {
        if status.held() {
            status.lost();
            let _ = bucket
                .delete_expect_revision(LEADER_KEY, Some(revision))
                .await;
        }
    }
}
