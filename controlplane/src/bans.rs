//! The operator's ban list: payout addresses and IP networks the pool refuses. It is kept
//! in `bans.json` in the data directory (written to a temporary file, synced, then renamed
//! over the old one, so a crash leaves either list whole) and every change goes to the
//! data planes at once, which close the connections it covers.
//!
//! A ban stops mining, not payment: what a banned miner earned before stays its own.
//!
//! The compliance deny list (see `otedama_compliance::deny_list`) joins the operator's
//! list in what the data planes receive, so a denied address cannot authorize either; it
//! is never written to `bans.json`, because it is re-read from its own files.
//!
//! Cluster mode: the operator's list lives in the replicated stream `OTEDAMA_BANS`
//! (`otedama_cluster::records`), and `bans.json` is each control plane's copy. Only the
//! leader changes it, one change at a time, and only once it has read that stream to its
//! end (`Leadership::leads`), so a change is always made to the newest list. A change goes
//! to the stream only; every control plane, the one that made it included, writes and
//! enforces what it reads there, in stream order (`replace_operator_list`). A standby
//! that takes over thus enforces every ban the former leader made. Invariants: no change
//! is enforced anywhere that the stream did not take, and every list the stream took is
//! enforced everywhere, also one whose publisher was told it failed (an answer lost).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;

use otedama_cluster::records::SendError;
use otedama_shared::bans::{BanList, IpNetwork, BANS_MAX};

/// A change the admin API asks for.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BanChange {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub networks: Vec<IpNetwork>,
}

#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error("the ban list would hold {0} entries; at most {BANS_MAX}")]
    TooMany(usize),
    #[error("saving the ban list: {0}")]
    Storage(String),
    /// Cluster mode: this control plane stands by (or has not read the ban stream to its
    /// end since it began to lead).
    #[error("this control plane does not lead the cluster: change the bans on the leader (otedama_cluster_leading 1)")]
    NotLeading,
    /// Cluster mode: the replicated stream did not confirm the change. It was not made
    /// unless the stream took it and only the answer was lost; then every control plane
    /// applies it: read the list back.
    #[error("the cluster's ban stream did not confirm the change, which is made only if the stream took it (read the list back): {0}")]
    NotReplicated(String),
    /// Cluster mode: the stream holds a newer list than this control plane has applied (an
    /// earlier change, perhaps one reported failed that the stream took after all): the
    /// stream refused this one, computed from the older list. Nothing was changed.
    #[error("the cluster's ban stream holds a newer list than this control plane has applied yet: nothing was changed; try again")]
    EarlierNotApplied,
    /// Cluster mode: the list would be over `BAN_LIST_CLUSTER_BYTES_MAX`.
    #[error("in cluster mode the operator's ban list is one message of at most {BAN_LIST_CLUSTER_BYTES_MAX} bytes as JSON, and this one would be {0}: put long lists in deny_list_file")]
    TooLargeForCluster(usize),
    /// Cluster mode: the stream took the change, and this control plane has not applied
    /// its copy within `BAN_CHANGE_APPLIED_WAIT_MS`; it will.
    #[error("the cluster's ban stream took the change; this control plane has not applied it yet")]
    NotYetApplied,
}

/// Sends a ban list to the cluster's stream as one message, taken only if the stream's
/// last list is at the given sequence (0: none); the sequence it was taken at.
pub type PublishBanList = Box<dyn Fn(&BanList, u64) -> Result<u64, SendError> + Send + Sync>;
/// The stream's last list and its sequence, if it holds one.
pub type LastBanList = Box<dyn Fn() -> Result<Option<(BanList, u64)>, String> + Send + Sync>;

/// Cluster mode: how changes reach the other control planes.
pub struct BanReplication {
    /// Whether this control plane may change the list now (`Leadership::leads`).
    pub leads: Box<dyn Fn() -> bool + Send + Sync>,
    pub publish: PublishBanList,
    pub last: LastBanList,
}

pub struct BanStore {
    path: PathBuf,
    /// The operator's list and the deny list's addresses; the lock serializes changes, so
    /// two admin requests cannot lose one another's edit.
    lists: Mutex<(BanList, BTreeSet<String>)>,
    /// What the data planes enforce: both lists together.
    current: watch::Sender<Arc<BanList>>,
    /// Cluster mode only.
    replication: std::sync::OnceLock<BanReplication>,
    /// Cluster mode: held for a whole change, from reading the list to seeing the stream's
    /// copy applied, so no two changes of this process are computed from the same list.
    changing: Mutex<()>,
    /// Cluster mode: the stream sequence of the list held here (0: none known). A change
    /// is published fenced on it, so the stream refuses one computed from an older list.
    stream_sequence: std::sync::atomic::AtomicU64,
}

/// Cluster mode: how long a change waits to see the stream's copy applied here.
pub const BAN_CHANGE_APPLIED_WAIT_MS: u64 = 10_000;
/// Cluster mode: the operator's list as JSON at most, one record chunk (about 7,000
/// addresses): long lists belong in `deny_list_file`, which each control plane reads.
pub const BAN_LIST_CLUSTER_BYTES_MAX: usize = otedama_cluster::records::RECORD_CHUNK_BYTES;

impl BanStore {
    /// Opens the list at `path`; a missing file is an empty list.
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let list = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the ban list {}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BanList::default(),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        // The data planes refuse a list over the limit whole, so one here would leave them
        // enforcing none of it.
        if list.len() > BANS_MAX {
            anyhow::bail!(
                "the ban list {} holds {} entries, more than BANS_MAX ({BANS_MAX}); remove some",
                path.display(),
                list.len()
            );
        }
        Ok(BanStore {
            path,
            current: watch::Sender::new(Arc::new(list.clone())),
            lists: Mutex::new((list, BTreeSet::new())),
            replication: std::sync::OnceLock::new(),
            changing: Mutex::new(()),
            stream_sequence: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Cluster mode: changes go to the stream first, and only the leader makes them.
    pub fn replicate_with(&self, replication: BanReplication) {
        let _ = self.replication.set(replication);
    }

    /// Cluster mode: sends the operator's list as this control plane holds it to the
    /// stream if the stream holds none (a cluster started from a single-host pool's
    /// `bans.json`, or a stream made again), and this control plane leads, which it does
    /// only once it has read the stream to its end. A list the stream holds is never
    /// replaced this way: a leader with a fresh data directory cannot wipe it. An empty
    /// list is not sent. Whether a list was sent.
    pub fn seed_if_absent(&self) -> Result<bool, BanError> {
        let Some(replication) = self.replication.get() else {
            return Ok(false);
        };
        let _changing = self.changing.lock().expect("ban change lock");
        let list = self.operator_list();
        if list.is_empty() || !(replication.leads)() {
            return Ok(false);
        }
        cluster_sized(&list)?;
        // Fenced on "none": atomic, whoever else publishes meanwhile.
        match (replication.publish)(&list, 0) {
            Ok(_) => Ok(true),
            Err(SendError::Stale) => Ok(false),
            Err(SendError::Failed(why)) => Err(BanError::NotReplicated(why)),
        }
    }

    /// Cluster mode: the operator's list another control plane published, read from the
    /// stream: written here and enforced. A list that together with this control plane's
    /// deny list is over `BANS_MAX` is written but not sent to the data planes (they would
    /// refuse it whole), which keep the list enforced before; logged.
    ///
    /// `stream_sequence` is the stream message's: the list held here is the stream's as of
    /// it, which a change's publication is fenced on.
    pub fn replace_operator_list(&self, list: BanList, stream_sequence: u64) -> anyhow::Result<()> {
        let mut lists = self.lists.lock().expect("ban list lock");
        // The sequence last, once the list is in force: a change waiting for it then
        // answers with the list it made.
        let applied = |store: &Self| {
            store
                .stream_sequence
                .store(stream_sequence, std::sync::atomic::Ordering::Release)
        };
        if list == lists.0 {
            applied(self);
            return Ok(());
        }
        self.save(&list)?;
        let merged = merge(&list, &lists.1);
        lists.0 = list;
        if merged.len() > BANS_MAX {
            tracing::error!(
                entries = merged.len(),
                "the cluster's ban list and this control plane's deny list exceed BANS_MAX together: the data planes keep the list they had"
            );
        } else {
            self.current.send_replace(Arc::new(merged));
        }
        applied(self);
        Ok(())
    }

    /// Rewrites the operator's list with each address of the pool's coin and network in
    /// canonical form (`canonical_address_for`), as the data planes compare them: a list
    /// saved before addresses were compared by output script holds them as typed, and a
    /// `3…` entry would never match the `M…` form a miner's shares are recorded under.
    pub fn canonicalize(&self, rule: &otedama_shared::address::AddressRule) -> anyhow::Result<()> {
        let mut lists = self.lists.lock().expect("ban list lock");
        let mut list = lists.0.clone();
        list.addresses = list
            .addresses
            .iter()
            .map(|address| {
                otedama_shared::address::canonical_address_for(rule, address)
                    .unwrap_or_else(|_| address.clone())
            })
            .collect();
        if list == lists.0 {
            return Ok(());
        }
        self.save(&list)?;
        let merged = Arc::new(merge(&list, &lists.1));
        lists.0 = list;
        self.current.send_replace(merged);
        Ok(())
    }

    /// What the data planes enforce: the operator's bans and the deny list.
    pub fn current(&self) -> Arc<BanList> {
        self.current.borrow().clone()
    }

    /// The operator's own bans (what the admin API edits and `bans.json` holds).
    pub fn operator_list(&self) -> BanList {
        self.lists.lock().expect("ban list lock").0.clone()
    }

    /// Replaces the deny list's addresses and publishes the merged list.
    pub fn set_denied(&self, denied: BTreeSet<String>) -> Result<(), BanError> {
        let mut lists = self.lists.lock().expect("ban list lock");
        let merged = merge(&lists.0, &denied);
        if merged.len() > BANS_MAX {
            return Err(BanError::TooMany(merged.len()));
        }
        lists.1 = denied;
        self.current.send_replace(Arc::new(merged));
        Ok(())
    }

    /// Every new list, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BanList>> {
        self.current.subscribe()
    }

    /// Adds (`ban`) or removes the change's entries, saves the list and publishes it.
    pub fn apply(&self, change: &BanChange, ban: bool) -> Result<Arc<BanList>, BanError> {
        if let Some(replication) = self.replication.get() {
            return self.apply_replicated(replication, change, ban);
        }
        let mut lists = self.lists.lock().expect("ban list lock");
        let list = changed(&lists.0, change, ban);
        let merged = merge(&list, &lists.1);
        if merged.len() > BANS_MAX {
            return Err(BanError::TooMany(merged.len()));
        }
        self.save(&list)
            .map_err(|e| BanError::Storage(format!("{e:#}")))?;
        lists.0 = list;
        let merged = Arc::new(merged);
        self.current.send_replace(merged.clone());
        Ok(merged)
    }

    /// Cluster mode: the change to the stream, then, once this control plane's follower
    /// has applied the stream's copy (`replace_operator_list`), the list enforced. The
    /// list is never changed here directly, so the stream's order is the only order.
    fn apply_replicated(
        &self,
        replication: &BanReplication,
        change: &BanChange,
        ban: bool,
    ) -> Result<Arc<BanList>, BanError> {
        use std::sync::atomic::Ordering::Acquire;
        let _changing = self.changing.lock().expect("ban change lock");
        if !(replication.leads)() {
            return Err(BanError::NotLeading);
        }
        // At most twice: a second time only when the first found this copy's sequence
        // unknown (after a restart) while its list is the stream's.
        for _ in 0..2 {
            let after = self.stream_sequence.load(Acquire);
            let (list, denied) = {
                let lists = self.lists.lock().expect("ban list lock");
                (changed(&lists.0, change, ban), lists.1.clone())
            };
            let merged = merge(&list, &denied);
            if merged.len() > BANS_MAX {
                return Err(BanError::TooMany(merged.len()));
            }
            cluster_sized(&list)?;
            match (replication.publish)(&list, after) {
                Ok(sequence) => {
                    // Enforced once this control plane's follower applied it, as everywhere.
                    let deadline = std::time::Instant::now()
                        + std::time::Duration::from_millis(BAN_CHANGE_APPLIED_WAIT_MS);
                    while self.stream_sequence.load(Acquire) < sequence {
                        if std::time::Instant::now() >= deadline {
                            return Err(BanError::NotYetApplied);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    return Ok(self.current());
                }
                // The stream's list is not the one this change was made to.
                Err(SendError::Stale) => match (replication.last)() {
                    Ok(Some((theirs, sequence))) if theirs == self.operator_list() => {
                        // Never below what the follower stored meanwhile.
                        self.stream_sequence
                            .fetch_max(sequence, std::sync::atomic::Ordering::AcqRel);
                    }
                    Ok(None) => self
                        .stream_sequence
                        .store(0, std::sync::atomic::Ordering::Release),
                    Ok(Some(_)) => return Err(BanError::EarlierNotApplied),
                    Err(why) => return Err(BanError::NotReplicated(why)),
                },
                Err(SendError::Failed(why)) => return Err(BanError::NotReplicated(why)),
            }
        }
        Err(BanError::EarlierNotApplied)
    }

    fn save(&self, list: &BanList) -> anyhow::Result<()> {
        use std::io::Write as _;
        let temporary = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(list)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        Ok(())
    }
}

/// Cluster mode: the operator's list goes to the stream as one message, so every reader
/// has each list whole or not at all (a list in several chunks could be left half
/// replaced by a publisher that failed between them). `BAN_LIST_CLUSTER_BYTES_MAX`.
fn cluster_sized(list: &BanList) -> Result<(), BanError> {
    let bytes = serde_json::to_vec(list).expect("ban lists serialize").len();
    if bytes > BAN_LIST_CLUSTER_BYTES_MAX {
        return Err(BanError::TooLargeForCluster(bytes));
    }
    Ok(())
}

/// `list` with the change's entries added (`ban`) or removed.
fn changed(list: &BanList, change: &BanChange, ban: bool) -> BanList {
    let mut list = list.clone();
    for address in &change.addresses {
        // Stored as the data planes compare them (bech32 in lower case).
        let address = otedama_shared::address::canonical_address(address).into_owned();
        if ban {
            list.addresses.insert(address);
        } else {
            list.addresses.remove(&address);
        }
    }
    for network in &change.networks {
        if ban {
            list.networks.insert(*network);
        } else {
            list.networks.remove(network);
        }
    }
    list
}

fn merge(operator: &BanList, denied: &BTreeSet<String>) -> BanList {
    let mut merged = operator.clone();
    merged.addresses.extend(denied.iter().cloned());
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list saved with a Litecoin P2SH address in its old `3…` form bans the `M…` form a
    /// miner's shares are recorded under, once canonicalized at start.
    #[test]
    fn a_saved_ban_matches_every_encoding_of_its_script() {
        let rule = otedama_chain::coin::CoinParams::new(
            otedama_chain::coin::Coin::Litecoin,
            otedama_chain::coin::Network::Mainnet,
        )
        .address;
        let encode = |prefix: u8| {
            let mut payload = vec![prefix];
            payload.extend_from_slice(&[0x42; 20]);
            bitcoin::base58::encode_check(&payload)
        };
        let (old, current) = (encode(5), encode(50));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let saved = BanList {
            addresses: [old.clone()].into(),
            networks: Default::default(),
        };
        std::fs::write(&path, serde_json::to_vec(&saved).unwrap()).unwrap();
        let store = BanStore::open(path.clone()).unwrap();
        assert!(!store.current().bans_worker(&format!("{current}.rig")));
        store.canonicalize(&rule).unwrap();
        assert!(store.current().bans_worker(&format!("{current}.rig")));
        let reopened = BanStore::open(path).unwrap();
        assert!(reopened.current().bans_worker(&current));
    }

    /// The cluster's ban stream as the tests see it: every list it took with its sequence,
    /// fenced as JetStream fences a subject; a live follower applies each to `follower`.
    #[derive(Default)]
    struct FakeStream {
        lists: Vec<(BanList, u64)>,
        next_sequence: u64,
        taking: bool,
    }

    fn replicate(
        store: &Arc<BanStore>,
        stream: &Arc<Mutex<FakeStream>>,
        leading: &Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let (out, look, follower, leads) = (
            stream.clone(),
            stream.clone(),
            store.clone(),
            leading.clone(),
        );
        store.replicate_with(BanReplication {
            leads: Box::new(move || leads.load(Relaxed)),
            publish: Box::new(move |list, after| {
                let mut stream = out.lock().unwrap();
                if !stream.taking {
                    return Err(SendError::Failed("no quorum".into()));
                }
                if stream.lists.last().map_or(0, |(_, at)| *at) != after {
                    return Err(SendError::Stale);
                }
                stream.next_sequence += 1;
                let sequence = stream.next_sequence;
                stream.lists.push((list.clone(), sequence));
                follower
                    .replace_operator_list(list.clone(), sequence)
                    .unwrap();
                Ok(sequence)
            }),
            last: Box::new(move || Ok(look.lock().unwrap().lists.last().cloned())),
        });
    }

    /// Cluster mode: a change is made only while leading, goes to the stream fenced on the
    /// list it was made to, and is enforced from the stream's copy; a list is seeded only
    /// into an empty stream.
    #[test]
    fn a_replicated_change_needs_the_lead_and_the_newest_list() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let store = Arc::new(BanStore::open(path.clone()).unwrap());
        let stream = Arc::new(Mutex::new(FakeStream::default()));
        let leading = Arc::new(AtomicBool::new(false));
        replicate(&store, &stream, &leading);
        let change = |address: &str| BanChange {
            addresses: vec![address.into()],
            ..Default::default()
        };
        assert!(matches!(
            store.apply(&change("a"), true),
            Err(BanError::NotLeading)
        ));
        assert!(
            !store.seed_if_absent().unwrap(),
            "an empty list is not seeded"
        );
        leading.store(true, Relaxed);
        assert!(matches!(
            store.apply(&change("a"), true),
            Err(BanError::NotReplicated(_))
        ));
        assert!(store.current().addresses.is_empty(), "nothing enforced");
        assert!(!path.exists(), "nothing written");
        stream.lock().unwrap().taking = true;
        store.apply(&change("a"), true).unwrap();
        assert!(store.current().bans_worker("a.rig"));
        assert!(!store.seed_if_absent().unwrap(), "the stream holds a list");

        // A list this control plane has not applied yet (one it sent whose answer was
        // lost, say): a change made to the older copy is refused, and made once the
        // follower has applied the newer list.
        let newer = {
            let mut stream = stream.lock().unwrap();
            let mut newer = stream.lists.last().unwrap().0.clone();
            newer.addresses.insert("b".into());
            stream.next_sequence += 1;
            let sequence = stream.next_sequence;
            stream.lists.push((newer.clone(), sequence));
            (newer, sequence)
        };
        assert!(matches!(
            store.apply(&change("c"), true),
            Err(BanError::EarlierNotApplied)
        ));
        store.replace_operator_list(newer.0, newer.1).unwrap();
        store.apply(&change("c"), true).unwrap();
        assert!(["a.1", "b.1", "c.1"]
            .iter()
            .all(|worker| store.current().bans_worker(worker)));

        // After a restart the list's sequence is unknown; the stream's list is the one
        // held, so the change goes through.
        let restarted = Arc::new(BanStore::open(path.clone()).unwrap());
        replicate(&restarted, &stream, &leading);
        restarted.apply(&change("d"), true).unwrap();
        assert!(restarted.current().bans_worker("d.1") && restarted.current().bans_worker("a.1"));

        // One message of the stream holds the whole list, or the change is refused.
        let long = BanChange {
            addresses: (0..9_000).map(|i| format!("address-{i:056}")).collect(),
            ..Default::default()
        };
        assert!(matches!(
            restarted.apply(&long, true),
            Err(BanError::TooLargeForCluster(_))
        ));

        // Another control plane's list, read from the stream.
        let mut theirs = BanList::default();
        theirs.addresses.insert("other".into());
        restarted
            .set_denied(BTreeSet::from(["denied".to_string()]))
            .unwrap();
        restarted.replace_operator_list(theirs.clone(), 99).unwrap();
        assert_eq!(restarted.operator_list(), theirs);
        assert!(
            restarted.current().bans_worker("other.rig")
                && restarted.current().bans_worker("denied.x")
        );
        assert!(!restarted.current().bans_worker("a.rig"));
        assert_eq!(*BanStore::open(path.clone()).unwrap().current(), theirs);

        // A store whose stream is empty seeds it with its list.
        stream.lock().unwrap().lists.clear();
        assert!(restarted.seed_if_absent().unwrap());
        assert_eq!(stream.lock().unwrap().lists.len(), 1);
    }

    #[test]
    fn bans_survive_a_reopen_and_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let store = BanStore::open(path.clone()).unwrap();
        let mut updates = store.subscribe();
        let change = BanChange {
            addresses: vec!["addr".into()],
            networks: vec!["10.0.0.0/8".parse().unwrap()],
        };
        store.apply(&change, true).unwrap();
        assert!(updates.has_changed().unwrap());
        assert!(updates.borrow_and_update().bans_worker("addr.rig"));
        let reopened = BanStore::open(path.clone()).unwrap();
        assert_eq!(*reopened.current(), *store.current());
        reopened
            .apply(
                &BanChange {
                    addresses: vec!["addr".into()],
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        let list = BanStore::open(path.clone()).unwrap().current();
        assert!(list.addresses.is_empty() && list.networks.len() == 1);

        // Denied addresses are enforced with the operator's bans but never saved.
        let store = BanStore::open(path.clone()).unwrap();
        store
            .set_denied(BTreeSet::from(["denied".to_string()]))
            .unwrap();
        assert!(store.current().bans_worker("denied.rig"));
        store
            .apply(
                &BanChange {
                    addresses: vec!["operator".into()],
                    ..Default::default()
                },
                true,
            )
            .unwrap();
        assert!(store.current().bans_worker("denied.rig"));
        assert!(!store.operator_list().addresses.contains("denied"));
        let saved = BanStore::open(path).unwrap().current();
        assert!(saved.addresses.contains("operator") && !saved.addresses.contains("denied"));
    }

    #[test]
    fn the_list_holds_bans_max_entries_and_refuses_one_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = BanStore::open(dir.path().join("bans.json")).unwrap();
        let full = BanChange {
            addresses: (0..BANS_MAX).map(|i| format!("address{i}")).collect(),
            ..Default::default()
        };
        assert_eq!(store.apply(&full, true).unwrap().len(), BANS_MAX);
        let one_more = BanChange {
            networks: vec!["192.0.2.1".parse().unwrap()],
            ..Default::default()
        };
        assert!(matches!(
            store.apply(&one_more, true),
            Err(BanError::TooMany(n)) if n == BANS_MAX + 1
        ));
        assert_eq!(
            store.current().len(),
            BANS_MAX,
            "a refused change changes nothing"
        );
    }
}
