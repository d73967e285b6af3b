//! A data-plane process's identity in the cluster: a slot number (0 to 255) it holds by a
//! lease in the replicated key-value bucket `HOST_BUCKET`, and from which its extranonce1
//! values take their first byte, so no two processes of the cluster can ever hand out
//! the same extranonce1 (a miner given the same extranonce1 by two hosts could send one
//! share to both and be credited twice).
//!
//! Two keys, each written only by compare-and-set, hold a claim:
//! - `name.HOST.PROCESS` holds the claimant's identity (a random number kept in its data
//!   directory) and its slot, so two machines configured with the same host name cannot
//!   both run: the second waits until the first's lease lapses.
//! - `slot.N` holds `HOST.PROCESS.IDENTITY`, so no two processes hold one slot.
//!
//! The bucket drops an entry `HOST_LEASE_TTL_MS` after its last write; the holder
//! rewrites both every `HOST_LEASE_RENEW_MS`, each write naming the revision it replaces.
//!
//! Invariant: a process uses its slot only while `LeaseStatus::held`, which ends
//! `HOST_LEASE_HELD_MS` after the last renewal that succeeded was *sent*. The bucket
//! stamps that write when it arrives, after it was sent, and drops it `HOST_LEASE_TTL_MS`
//! after the stamp, so the holder stops `HOST_LEASE_TTL_MS − HOST_LEASE_HELD_MS` (5 s)
//! before anyone else can claim the slot: room for the data plane's once-a-second check
//! and for the two clocks' rates to differ.
//!
//! A restarted process with the same data directory (same identity) takes its own claim
//! back at once; the identity's lock (`load_or_create_identity`) keeps two processes off
//! one data directory. The identity file must therefore not be copied to another machine.
//! It also binds the directory to the host name it was first claimed under: its share log
//! shipped under a second name would be read, and counted, twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_lite::StreamExt;

/// The bucket host claims live in.
pub const HOST_BUCKET: &str = "OTEDAMA_HOSTS";
/// How long the bucket keeps a claim after its last write.
pub const HOST_LEASE_TTL_MS: u64 = 20_000;
/// How long after sending a renewal that succeeded the holder still uses its slot.
pub const HOST_LEASE_HELD_MS: u64 = 15_000;
/// How often the holder renews.
pub const HOST_LEASE_RENEW_MS: u64 = 4_000;
/// Pause before trying again after a renewal or claim that could not reach the bucket.
pub const HOST_LEASE_RETRY_MS: u64 = 1_000;
/// Slots in the cluster: one byte of extranonce1.
pub const HOST_SLOTS_MAX: usize = 256;
/// How long a start waits for its claim (a name still held by a previous machine's lease
/// is free after `HOST_LEASE_TTL_MS`).
pub const HOST_CLAIM_WAIT_MS: u64 = 60_000;
/// How often a claim that keeps waiting says why in the log.
const CLAIM_REPORT_INTERVAL_MS: u64 = 10_000;
/// How long one attempt of a claim (opening the bucket, or claiming and renewing once)
/// may take: every request in it has its own timeout, but an await the client never ends
/// (a connection that hangs mid-handshake) must not hold a data plane that serves nobody
/// past its claim's deadline without a word.
const CLAIM_ATTEMPT_MS: u64 = 4 * KV_REQUEST_TIMEOUT_MS + 5_000;
/// How long a process whose slot another holds keeps asking for it back before it gives
/// up (`LeaseStatus::given_up`): every answer in that time must say the slot or name is
/// another's (an unreachable bucket starts the count again). Its cores hand out
/// extranonce1 values that begin with the slot, so it cannot move to another slot while
/// it runs; a data plane that gives up ends, and its next start claims a free slot. A
/// single `Taken` answer can come from a race with another claimant that then lets go;
/// ten seconds of them cannot.
pub const HOST_SLOT_TAKEN_GIVE_UP_MS: u64 = 10_000;
/// How long one request to the bucket may take.
const KV_REQUEST_TIMEOUT_MS: u64 = 3_000;

const _: () = assert!(HOST_LEASE_HELD_MS + 2 * HOST_LEASE_RETRY_MS < HOST_LEASE_TTL_MS);
const _: () = assert!(HOST_LEASE_RENEW_MS * 3 <= HOST_LEASE_HELD_MS);

/// Milliseconds on this process's monotonic clock, from 1 (0 reads as "never").
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether the lease is held, shared with the cores that check it.
#[derive(Debug, Default)]
pub struct LeaseStatus {
    /// `monotonic_ms` until which the slot may be used; 0 when lost.
    held_until_ms: AtomicU64,
    /// Renewals the bucket took.
    pub renewals: AtomicU64,
    /// Times the lease ran out or was found taken while the process ran.
    pub lapses: AtomicU64,
    /// Terms begun: a holder that takes the lease (again) begins a new one.
    terms: AtomicU64,
    /// The bucket's revision when the current (or last) term began: it grows with every
    /// write to the bucket, so a later term's is greater than any earlier term's.
    term_revision: AtomicU64,
    /// Asked of the holder by its process: let the lease go (it cannot act on it).
    release_asked: AtomicBool,
    /// Another process has held this slot for `HOST_SLOT_TAKEN_GIVE_UP_MS`: the keeper
    /// has stopped, and the lease will not be held again in this process's life.
    given_up: AtomicBool,
}

impl LeaseStatus {
    pub fn held(&self) -> bool {
        self.held_at(monotonic_ms())
    }

    /// The current term's number (see `began_term`).
    pub fn term(&self) -> u64 {
        self.terms.load(Ordering::Acquire)
    }

    /// The holder is taking the lease anew at bucket revision `revision` (called before
    /// the `renewed` that holds it): whatever was true of the last term, such as having
    /// read what others wrote, is not of this one.
    pub fn began_term(&self, revision: u64) {
        self.term_revision.store(revision, Ordering::Release);
        self.terms.fetch_add(1, Ordering::AcqRel);
    }

    /// The bucket revision at which the current (or last) term began: what this holder
    /// stamps its writes with, so that a newer holder's readers can tell them late.
    pub fn term_revision(&self) -> u64 {
        self.term_revision.load(Ordering::Acquire)
    }

    /// Asks the lease's keeper to let it go and stand aside for a while.
    pub fn ask_release(&self) {
        self.release_asked.store(true, Ordering::Release);
    }

    /// Whether a release was asked, clearing the request.
    pub fn take_release_request(&self) -> bool {
        self.release_asked.swap(false, Ordering::AcqRel)
    }

    pub fn held_at(&self, now_ms: u64) -> bool {
        now_ms < self.held_until_ms.load(Ordering::Acquire)
    }

    /// The bucket took a renewal sent at `sent_ms`.
    pub fn renewed(&self, sent_ms: u64) {
        self.held_until_ms
            .fetch_max(sent_ms + HOST_LEASE_HELD_MS, Ordering::AcqRel);
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// Someone else holds the claim now: stop at once.
    pub fn lost(&self) {
        self.held_until_ms.store(0, Ordering::Release);
    }

    /// Whether the keeper gave the slot up to another process for good (see
    /// `HOST_SLOT_TAKEN_GIVE_UP_MS`): the process should end, so that its next start
    /// claims another slot.
    pub fn given_up(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }
}

/// What one data-plane process needs to claim its slot.
#[derive(Clone, Debug)]
pub struct HostLeaseConfig {
    pub nats_urls: Vec<String>,
    /// The host's name in the cluster (a NATS subject token).
    pub host: String,
    pub process: u32,
    /// Where this process's identity is kept (in its data directory).
    pub identity_file: PathBuf,
    /// Copies the bucket keeps (1 to 5).
    pub replicas: usize,
    /// How long `HostLease::claim` waits.
    pub claim_wait_ms: u64,
}

/// The key that names a process's claim.
pub fn name_key(host: &str, process: u32) -> String {
    format!("name.{host}.{process}")
}

pub fn slot_key(slot: u8) -> String {
    format!("slot.{slot}")
}

fn slot_of_key(key: &str) -> Option<u8> {
    key.strip_prefix("slot.")?.parse().ok()
}

/// What a process writes under its slot key.
pub fn slot_value(host: &str, process: u32, identity: u64) -> String {
    format!("{host}.{process}.{identity:016x}")
}

/// What a process writes under its name key: its identity, then its slot once it has one.
fn name_value(identity: u64, slot: Option<u8>) -> String {
    match slot {
        Some(slot) => format!("{identity:016x} {slot}"),
        None => format!("{identity:016x}"),
    }
}

/// The identity and slot a name key's value holds.
fn parse_name_value(value: &[u8]) -> Option<(u64, Option<u8>)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(' ');
    let identity = u64::from_str_radix(parts.next()?, 16).ok()?;
    let slot = match parts.next() {
        Some(slot) => Some(slot.parse().ok()?),
        None => None,
    };
    parts.next().is_none().then_some((identity, slot))
}

/// The `pick`-th free slot (modulo how many are free), so two processes starting at
/// once seldom reach for the same one; `None` when all are taken.
pub fn choose_free_slot(taken: &std::collections::BTreeSet<u8>, pick: u64) -> Option<u8> {
    let free = HOST_SLOTS_MAX - taken.len();
    if free == 0 {
        return None;
    }
    (0..=u8::MAX)
        .filter(|slot| !taken.contains(slot))
        .nth((pick % free as u64) as usize)
}

/// This process's identity in the cluster, kept in its data directory: a random number
/// made on the first start and the host name it was first claimed under. While held,
/// the lock beside it keeps a second process off the same directory: one started there by
/// mistake would otherwise take this claim "back" as its own and, failing later on the
/// share log's lock, let it go under a process still using the slot.
#[derive(Debug)]
pub struct Identity {
    pub id: u64,
    _lock: std::fs::File,
}

/// Takes `path`'s lock and reads the identity there, or makes one (random, never 0)
/// bound to `host` and writes it durably. A directory first claimed under another name
/// is refused: its share log was shipped under that name, and shipped under a new one it
/// would be read, and counted, again.
pub fn load_or_create_identity(path: &Path, host: &str) -> anyhow::Result<Identity> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another process runs on this data directory ({} is locked)",
            lock_path.display()
        );
    }
    let written = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(error)
                .with_context(|| format!("reading the cluster identity {}", path.display()))
        }
    };
    let id = match written {
        Some(text) => {
            let mut parts = text.split_whitespace();
            let id = parts
                .next()
                .and_then(|id| u64::from_str_radix(id, 16).ok())
                .filter(|id| *id != 0)
                .with_context(|| format!("{} does not hold a cluster identity", path.display()))?;
            match parts.next() {
                Some(named) if named != host => anyhow::bail!(
                    "this data directory's share log was shipped as host {named:?}: as {host:?} it would be shipped, and counted, again \
                     (give it back its name, or start {host:?} on a new data directory)"
                ),
                Some(_) => return Ok(Identity { id, _lock: lock }),
                None => id,
            }
        }
        None => rand::random::<u64>().max(1),
    };
    let temporary = path.with_extension("new");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        writeln!(file, "{id:016x} {host}")?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Identity { id, _lock: lock })
}

/// A claim this process holds: both keys and the revisions it last wrote.
#[derive(Clone, Copy, Debug)]
struct Claim {
    slot: u8,
    name_revision: u64,
    slot_revision: u64,
}

/// Why a claim or renewal did not succeed.
#[derive(Debug)]
enum ClaimError {
    /// Another process holds the name or the slot.
    Taken(String),
    /// The bucket could not be reached or did not answer; try again.
    Unreachable(anyhow::Error),
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ClaimError {
    fn from(error: E) -> Self {
        ClaimError::Unreachable(anyhow::Error::from(error))
    }
}

struct Claimant<'a> {
    store: &'a kv::Store,
    host: &'a str,
    process: u32,
    identity: u64,
}

impl Claimant<'_> {
    fn name(&self) -> String {
        name_key(self.host, self.process)
    }

    fn slot_value(&self) -> String {
        slot_value(self.host, self.process, self.identity)
    }

    /// Writes `value` under `key` if the key is free or holds `ours(value)`; the new
    /// revision.
    async fn take_key(
        &self,
        key: &str,
        value: String,
        ours: impl Fn(&[u8]) -> bool,
    ) -> Result<u64, ClaimError> {
        let entry = self.store.entry(key).await?;
        let live = entry
            .as_ref()
            .filter(|entry| entry.operation == kv::Operation::Put);
        match live {
            Some(entry) if ours(&entry.value) => {
                match self.store.update(key, value.into(), entry.revision).await {
                    Ok(revision) => Ok(revision),
                    Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(
                        ClaimError::Taken(format!("{key} changed while it was taken back")),
                    ),
                    Err(error) => Err(error.into()),
                }
            }
            Some(entry) => Err(ClaimError::Taken(format!(
                "{key} is held by {}",
                String::from_utf8_lossy(&entry.value)
            ))),
            None => match self.store.create(key, value.into()).await {
                Ok(revision) => Ok(revision),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(ClaimError::Taken(format!("{key} was taken meanwhile")))
                }
                Err(error) => Err(error.into()),
            },
        }
    }

    /// Claims the name, then a slot: `wanted` if given (a lapsed lease is only taken back
    /// with the slot its miners' values carry), else the one the name last named, else a
    /// free one.
    async fn claim(&self, wanted: Option<u8>) -> Result<Claim, ClaimError> {
        let identity = self.identity;
        let is_our_name =
            |value: &[u8]| parse_name_value(value).is_some_and(|(id, _)| id == identity);
        let named_before = self
            .store
            .entry(self.name())
            .await?
            .filter(|entry| entry.operation == kv::Operation::Put)
            .and_then(|entry| parse_name_value(&entry.value))
            .filter(|(id, _)| *id == identity)
            .and_then(|(_, slot)| slot);
        let name_revision = self
            .take_key(
                &self.name(),
                name_value(identity, named_before),
                is_our_name,
            )
            .await?;
        let our_slot_value = self.slot_value();
        let is_our_slot = |value: &[u8]| value == our_slot_value.as_bytes();
        let first_choice = match wanted.or(named_before) {
            Some(slot) => slot,
            None => self.free_slot().await?,
        };
        let (slot, slot_revision) = match self
            .take_key(&slot_key(first_choice), our_slot_value.clone(), is_our_slot)
            .await
        {
            Ok(revision) => (first_choice, revision),
            // At a start (`wanted` is none: no miner holds a value of the slot yet) the
            // slot the name held before may be another's by now: take a free one.
            Err(ClaimError::Taken(_)) if wanted.is_none() && named_before.is_some() => {
                let slot = self.free_slot().await?;
                let revision = self
                    .take_key(&slot_key(slot), our_slot_value.clone(), is_our_slot)
                    .await?;
                (slot, revision)
            }
            Err(error) => return Err(error),
        };
        let name_revision = self
            .update(
                &self.name(),
                name_value(identity, Some(slot)),
                name_revision,
            )
            .await?;
        Ok(Claim {
            slot,
            name_revision,
            slot_revision,
        })
    }

    /// A slot no key names, picked at random among the free ones. The slots in use are
    /// the bucket's `slot.*` subjects, as the stream's information lists them: one
    /// request, and no consumer, which a data-plane host may not make (consumers could
    /// deliver the bucket's messages to any subject, see `crate::permissions`). A slot let
    /// go by a delete still has its marker there and counts as taken until it lapses.
    async fn free_slot(&self) -> Result<u8, ClaimError> {
        let mut taken = std::collections::BTreeSet::new();
        let prefix = format!("$KV.{HOST_BUCKET}.");
        let mut subjects = self
            .store
            .stream
            .info_with_subjects(format!("{prefix}slot.*"))
            .await?;
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject?;
            if let Some(slot) = subject.strip_prefix(&prefix).and_then(slot_of_key) {
                taken.insert(slot);
            }
        }
        choose_free_slot(&taken, rand::random())
            .ok_or_else(|| ClaimError::Taken("every slot is held".into()))
    }

    async fn update(&self, key: &str, value: String, revision: u64) -> Result<u64, ClaimError> {
        match self.store.update(key, value.into(), revision).await {
            Ok(revision) => Ok(revision),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(
                ClaimError::Taken(format!("{key} was written by someone else")),
            ),
            Err(error) => Err(error.into()),
        }
    }

    /// Rewrites both keys over the revisions last written. A write whose answer was lost
    /// leaves the key one revision on: it is ours if it still holds our value, which only
    /// this process writes.
    async fn renew(&self, claim: &mut Claim) -> Result<(), ClaimError> {
        let name_value = name_value(self.identity, Some(claim.slot));
        claim.name_revision = self
            .rewrite(&self.name(), name_value, claim.name_revision)
            .await?;
        claim.slot_revision = self
            .rewrite(
                &slot_key(claim.slot),
                self.slot_value(),
                claim.slot_revision,
            )
            .await?;
        Ok(())
    }

    async fn rewrite(&self, key: &str, value: String, revision: u64) -> Result<u64, ClaimError> {
        match self.update(key, value.clone(), revision).await {
            Err(ClaimError::Taken(_)) => {
                let current = self
                    .store
                    .entry(key)
                    .await?
                    .filter(|entry| entry.operation == kv::Operation::Put);
                match current {
                    Some(entry) if entry.value == value.as_bytes() => {
                        self.update(key, value, entry.revision).await
                    }
                    _ => Err(ClaimError::Taken(format!("{key} lapsed or was taken"))),
                }
            }
            other => other,
        }
    }

    /// Lets the claim go on a clean stop, so the slot and name are free at once.
    async fn release(&self, claim: &Claim) {
        self.forget(
            &slot_key(claim.slot),
            self.slot_value(),
            claim.slot_revision,
        )
        .await;
        let name_value = name_value(self.identity, Some(claim.slot));
        self.forget(&self.name(), name_value, claim.name_revision)
            .await;
    }

    /// Deletes `key` if it still holds `value` (ours): over `revision`, or, when a renewal
    /// whose answer was lost moved the key on, over the revision that holds our value.
    /// Left to lapse by its time-to-live (logged) if neither can be done within
    /// `RELEASE_ATTEMPTS_MAX` attempts; never deleted once another value is in it.
    async fn forget(&self, key: &str, value: String, revision: u64) {
        let mut revision = revision;
        for _ in 0..RELEASE_ATTEMPTS_MAX {
            if self
                .store
                .delete_expect_revision(key, Some(revision))
                .await
                .is_ok()
            {
                return;
            }
            match self.store.entry(key).await {
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put && entry.value == value.as_bytes() =>
                {
                    revision = entry.revision;
                }
                // Gone already, or another's now.
                Ok(_) => return,
                Err(_) => {}
            }
        }
        tracing::warn!(
            key,
            lapses_in_ms = HOST_LEASE_TTL_MS,
            "could not let a host key go: it lapses by itself"
        );
    }
}

/// Attempts a clean stop makes at deleting each of its keys.
const RELEASE_ATTEMPTS_MAX: usize = 3;

/// The host bucket (made if missing), which also holds the control planes' leader key
/// (`crate::leader`).
pub(crate) async fn open_bucket(
    nats_urls: &[String],
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let client = crate::connect(nats_urls, Some(KV_REQUEST_TIMEOUT_MS)).await?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(KV_REQUEST_TIMEOUT_MS));
    // The bucket's stream, made as the key-value layer makes one. (The client's own
    // `create_key_value` first reads the account's limits, a reply nats-server 2.9 words
    // in a way this client cannot read.)
    let ttl = Duration::from_millis(HOST_LEASE_TTL_MS);
    context
        .get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{HOST_BUCKET}"),
            subjects: vec![format!("$KV.{HOST_BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|error| anyhow::anyhow!("the host bucket {HOST_BUCKET}: {error}"))?;
    context
        .get_key_value(HOST_BUCKET)
        .await
        .map_err(|error| anyhow::anyhow!("the host bucket {HOST_BUCKET}: {error}"))
}

/// A slot claimed, and the thread that keeps the lease.
pub struct HostLease {
    slot: u8,
    /// Held for the process's life: its lock keeps a second process off the directory.
    _identity: Identity,
    status: Arc<LeaseStatus>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostLease {
    /// Claims a slot, waiting up to `claim_wait_ms` (a name or slot still under another
    /// process's lease; the cluster unreachable), then keeps the lease on a thread of its
    /// own until dropped.
    pub fn claim(config: HostLeaseConfig) -> anyhow::Result<Self> {
        if !otedama_shared::ipc::is_cluster_host_name(&config.host) {
            anyhow::bail!(
                "host name {:?} must be letters, digits, '-' and '_' only",
                config.host
            );
        }
        crate::server_addresses(&config.nats_urls)?;
        let identity = load_or_create_identity(&config.identity_file, &config.host)?;
        let status = Arc::new(LeaseStatus::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (claimed_tx, claimed_rx) = std::sync::mpsc::channel::<anyhow::Result<u8>>();
        let (thread_status, thread_stop) = (status.clone(), stop.clone());
        let thread =
            crate::spawn_on_runtime(format!("host-lease-{}", config.process), move || {
                keep_lease(config, identity.id, thread_status, thread_stop, claimed_tx)
            })?;
        let slot = match claimed_rx.recv() {
            Ok(Ok(slot)) => slot,
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => anyhow::bail!("the host lease thread ended before claiming"),
        };
        Ok(HostLease {
            slot,
            _identity: identity,
            status,
            stop,
            thread: Some(thread),
        })
    }

    pub fn slot(&self) -> u8 {
        self.slot
    }

    pub fn status(&self) -> Arc<LeaseStatus> {
        self.status.clone()
    }
}

impl Drop for HostLease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sleeps `ms`, in short steps so a stop is seen soon; whether to stop.
async fn pause(ms: u64, stop: &AtomicBool) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now())).await;
    }
    stop.load(Ordering::Relaxed)
}

async fn keep_lease(
    config: HostLeaseConfig,
    identity: u64,
    status: Arc<LeaseStatus>,
    stop: Arc<AtomicBool>,
    claimed: std::sync::mpsc::Sender<anyhow::Result<u8>>,
) {
    let deadline = Instant::now() + Duration::from_millis(config.claim_wait_ms);
    let mut last_reason;
    // Why the claim waits, now and then: a data plane takes no miner meanwhile, and its log
    // must say why.
    let mut next_report = Instant::now() + Duration::from_millis(CLAIM_REPORT_INTERVAL_MS);
    let mut report = |reason: &str| {
        if Instant::now() >= next_report {
            tracing::warn!(host = %config.host, process = config.process, reason, "waiting to claim a host slot");
            next_report = Instant::now() + Duration::from_millis(CLAIM_REPORT_INTERVAL_MS);
        }
    };
    let attempt = Duration::from_millis(CLAIM_ATTEMPT_MS);
    let store = loop {
        match tokio::time::timeout(attempt, open_bucket(&config.nats_urls, config.replicas)).await {
            Ok(Ok(store)) => break store,
            Ok(Err(error)) => last_reason = format!("{error:#}"),
            Err(_) => {
                last_reason = format!("opening the host bucket took over {CLAIM_ATTEMPT_MS} ms")
            }
        }
        report(&last_reason);
        if Instant::now() >= deadline || pause(HOST_LEASE_RETRY_MS, &stop).await {
            let _ = claimed.send(Err(anyhow::anyhow!(
                "no host slot claimed within {} ms: {last_reason}",
                config.claim_wait_ms
            )));
            return;
        }
    };
    let claimant = Claimant {
        store: &store,
        host: &config.host,
        process: config.process,
        identity,
    };
    // Claimed, then renewed once more before any miner is taken: the second write shows
    // the claim was not overwritten by a racing one.
    let mut claim = loop {
        let sent_ms = monotonic_ms();
        let claimed_and_renewed = async {
            let mut claim = claimant.claim(None).await?;
            claimant.renew(&mut claim).await.map(|()| claim)
        };
        // A claim cut short by the bound may have written its keys: they hold this
        // process's identity, so the next attempt takes them again.
        let result = match tokio::time::timeout(attempt, claimed_and_renewed).await {
            Ok(result) => result,
            Err(_) => Err(ClaimError::Unreachable(anyhow::anyhow!(
                "a claim took over {CLAIM_ATTEMPT_MS} ms"
            ))),
        };
        match result {
            Ok(claim) => {
                status.renewed(sent_ms);
                break claim;
            }
            Err(ClaimError::Taken(why)) => last_reason = why,
            Err(ClaimError::Unreachable(error)) => last_reason = format!("{error:#}"),
        }
        report(&last_reason);
        if Instant::now() >= deadline || pause(HOST_LEASE_RETRY_MS, &stop).await {
            let _ = claimed.send(Err(anyhow::anyhow!(
                "no host slot claimed within {} ms: {last_reason}",
                config.claim_wait_ms
            )));
            return;
        }
    };
    tracing::info!(host = %config.host, process = config.process, slot = claim.slot, "host slot claimed");
    let _ = claimed.send(Ok(claim.slot));
    let mut lost = false;
    // When the answers began to say another process holds the slot.
    let mut taken_since: Option<Instant> = None;
    loop {
        let wait = if lost || !status.held() {
            HOST_LEASE_RETRY_MS
        } else {
            HOST_LEASE_RENEW_MS
        };
        if pause(wait, &stop).await {
            break;
        }
        let sent_ms = monotonic_ms();
        // Bounded as a claim is: a renewal that hangs must neither keep the lease looking
        // renewed (it lapses by `status`'s clock meanwhile) nor hold a stop for ever.
        let renewal = async {
            if lost {
                claimant.claim(Some(claim.slot)).await
            } else {
                let mut renewed = claim;
                claimant.renew(&mut renewed).await.map(|()| renewed)
            }
        };
        let result = match tokio::time::timeout(attempt, renewal).await {
            Ok(result) => result,
            Err(_) => Err(ClaimError::Unreachable(anyhow::anyhow!(
                "a renewal took over {CLAIM_ATTEMPT_MS} ms"
            ))),
        };
        match result {
            Ok(renewed) => {
                if lost || !status.held_at(sent_ms) {
                    tracing::warn!(slot = renewed.slot, "host lease held again");
                }
                claim = renewed;
                lost = false;
                taken_since = None;
                status.renewed(sent_ms);
            }
            Err(ClaimError::Taken(why)) => {
                if !lost {
                    status.lost();
                    status.lapses.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        slot = claim.slot,
                        why,
                        "host lease lost: no new miners until this slot is held again"
                    );
                }
                lost = true;
                let since = *taken_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(HOST_SLOT_TAKEN_GIVE_UP_MS) {
                    tracing::error!(
                        slot = claim.slot,
                        why,
                        "another process has held this slot for {HOST_SLOT_TAKEN_GIVE_UP_MS} ms: giving it up"
                    );
                    status.given_up.store(true, Ordering::Release);
                    return;
                }
            }
            Err(ClaimError::Unreachable(error)) => {
                taken_since = None;
                if status.held() && !status.held_at(monotonic_ms() + HOST_LEASE_RENEW_MS) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "host lease: renewal failed, the lease runs out soon"
                    );
                } else if !status.held() && !lost {
                    // Ran out by time: the bucket may have dropped it by now.
                    status.lapses.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        slot = claim.slot,
                        error = format!("{error:#}"),
                        "host lease lapsed: the cluster is out of reach"
                    );
                    lost = true;
                }
            }
        }
    }
    if !lost {
        // A stop waits for this: bounded, and the keys lapse by themselves if it is cut.
        let _ = tokio::time::timeout(attempt, claimant.release(&claim)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_lease_is_held_for_its_term_from_the_renewal_sent_not_answered() {
        let status = LeaseStatus::default();
        assert!(!status.held_at(1));
        status.renewed(1_000);
        assert!(status.held_at(1_000 + HOST_LEASE_HELD_MS - 1));
        assert!(!status.held_at(1_000 + HOST_LEASE_HELD_MS));
        // An older renewal answered late never shortens a newer one.
        status.renewed(5_000);
        status.renewed(2_000);
        assert!(status.held_at(5_000 + HOST_LEASE_HELD_MS - 1));
        status.lost();
        assert!(!status.held_at(5_001));
    }

    #[test]
    fn free_slots_are_chosen_among_the_free_only_and_none_when_full() {
        let mut taken: BTreeSet<u8> = [0, 1, 5].into_iter().collect();
        let chosen: BTreeSet<u8> = (0..1000)
            .filter_map(|pick| choose_free_slot(&taken, pick))
            .collect();
        assert_eq!(chosen.len(), HOST_SLOTS_MAX - 3);
        assert!(chosen.is_disjoint(&taken));
        taken = (0..=u8::MAX).collect();
        assert_eq!(choose_free_slot(&taken, 7), None);
        taken.remove(&200);
        assert_eq!(choose_free_slot(&taken, 12345), Some(200));
    }

    #[test]
    fn name_values_read_back_and_foreign_ones_are_refused() {
        assert_eq!(
            parse_name_value(name_value(0xab, None).as_bytes()),
            Some((0xab, None))
        );
        assert_eq!(
            parse_name_value(name_value(u64::MAX, Some(255)).as_bytes()),
            Some((u64::MAX, Some(255)))
        );
        for bad in ["", "xyz", "ab 256", "ab 1 2", "ab  1"] {
            assert_eq!(parse_name_value(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(slot_of_key("slot.17"), Some(17));
        assert_eq!(slot_of_key("slot.256"), None);
        assert_eq!(slot_of_key("name.a.0"), None);
    }

    /// Made once and read back; held by one process at a time; bound to its first name;
    /// a damaged file refused.
    #[test]
    fn an_identity_is_made_once_locked_and_bound_to_its_name() {
        let dir = std::env::temp_dir().join(format!("otedama-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("cluster-identity");
        let made = load_or_create_identity(&path, "dp-a").unwrap();
        assert_ne!(made.id, 0);
        let busy = load_or_create_identity(&path, "dp-a").unwrap_err();
        assert!(format!("{busy:#}").contains("another process"), "{busy:#}");
        let id = made.id;
        drop(made);
        assert_eq!(load_or_create_identity(&path, "dp-a").unwrap().id, id);
        let renamed = load_or_create_identity(&path, "dp-b").unwrap_err();
        assert!(
            format!("{renamed:#}").contains("shipped as host \"dp-a\""),
            "{renamed:#}"
        );
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(load_or_create_identity(&path, "dp-a").is_err());
        std::fs::write(&path, "0 dp-a\n").unwrap();
        assert!(load_or_create_identity(&path, "dp-a").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
