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
    /// Cluster mode: an earlier change (perhaps one reported failed, which the stream may
    /// still have taken) is not applied here yet: nothing was changed.
    #[error("an earlier ban change is not applied on this control plane yet (its stream follower is behind or failing): nothing was changed; try again")]
    EarlierNotApplied,
    /// Cluster mode: the list would be over `BAN_LIST_CLUSTER_BYTES_MAX`.
    #[error("in cluster mode the operator's ban list is one message of at most {BAN_LIST_CLUSTER_BYTES_MAX} bytes as JSON, and this one would be {0}: put long lists in deny_list_file")]
    TooLargeForCluster(usize),
    /// Cluster mode: the stream took the change, and this control plane has not applied
    /// its copy within `BAN_CHANGE_APPLIED_WAIT_MS`; it will.
    #[error("the cluster's ban stream took the change; this control plane has not applied it yet")]
    NotYetApplied,
}

/// Sends a ban list to the cluster's stream; `Err` says why it was not taken.
pub type PublishBanList = Box<dyn Fn(&BanList) -> Result<(), String> + Send + Sync>;
/// Sends a ban list to the cluster's stream if it holds none; whether it was sent.
pub type SeedBanList = Box<dyn Fn(&BanList) -> Result<bool, String> + Send + Sync>;

/// Cluster mode: how changes reach the other control planes.
pub struct BanReplication {
    /// Whether this control plane may change the list now (`Leadership::leads`).
    pub leads: Box<dyn Fn() -> bool + Send + Sync>,
    /// Sends the operator's whole list to the stream; `Ok` once the stream holds it.
    pub publish: PublishBanList,
    /// The same, only if the stream holds no list; whether it was sent.
    pub seed: SeedBanList,
    /// Whether this control plane's follower has read the stream to its end, applying
    /// every list in it, with a read sent after `at_ms` (`otedama_cluster::host::
    /// monotonic_ms`).
    pub applied_after: Box<dyn Fn(u64) -> bool + Send + Sync>,
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
    /// copy applied, so no two changes are computed from the same list; it holds when the
    /// last publication's answer came (`monotonic_ms`, 0 before any).
    changing: Mutex<u64>,
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
            changing: Mutex::new(0),
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
        let mut answered_ms = self.changing.lock().expect("ban change lock");
        let list = self.operator_list();
        if list.is_empty() || !(replication.leads)() {
            return Ok(false);
        }
        cluster_sized(&list)?;
        let sent = (replication.seed)(&list);
        *answered_ms = otedama_cluster::host::monotonic_ms();
        sent.map_err(BanError::NotReplicated)
    }

    /// Cluster mode: the operator's list another control plane published, read from the
    /// stream: written here and enforced. A list that together with this control plane's
    /// deny list is over `BANS_MAX` is written but not sent to the data planes (they would
    /// refuse it whole), which keep the list enforced before; logged.
    pub fn replace_operator_list(&self, list: BanList) -> anyhow::Result<()> {
        let mut lists = self.lists.lock().expect("ban list lock");
        if list == lists.0 {
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
            return Ok(());
        }
        self.current.send_replace(Arc::new(merged));
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
        let mut answered_ms = self.changing.lock().expect("ban change lock");
        if !(replication.leads)() {
            return Err(BanError::NotLeading);
        }
        // Every earlier publication, whatever its answer said (one that timed out may be in
        // the stream), applied here first: the change is made to the stream's newest list,
        // never to an older copy that would undo it.
        if !wait_applied(replication, *answered_ms) {
            return Err(BanError::EarlierNotApplied);
        }
        let (list, denied) = {
            let lists = self.lists.lock().expect("ban list lock");
            (changed(&lists.0, change, ban), lists.1.clone())
        };
        let merged = merge(&list, &denied);
        if merged.len() > BANS_MAX {
            return Err(BanError::TooMany(merged.len()));
        }
        cluster_sized(&list)?;
        let published = (replication.publish)(&list);
        *answered_ms = otedama_cluster::host::monotonic_ms();
        published.map_err(BanError::NotReplicated)?;
        if !wait_applied(replication, *answered_ms) {
            return Err(BanError::NotYetApplied);
        }
        Ok(self.current())
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

/// Waits up to `BAN_CHANGE_APPLIED_WAIT_MS` for the follower to have applied the stream
/// through a read sent after `at_ms`; whether it has.
fn wait_applied(replication: &BanReplication, at_ms: u64) -> bool {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(BAN_CHANGE_APPLIED_WAIT_MS);
    while !(replication.applied_after)(at_ms) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
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

    /// Cluster mode: a change is made only while leading, goes to the stream, and is
    /// enforced only from the stream's copy; a list is seeded only into an empty stream.
    #[test]
    fn a_replicated_change_needs_the_lead_and_the_stream() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let store = Arc::new(BanStore::open(path.clone()).unwrap());
        let (leading, taking) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        // The stream: what it took, in order; its follower applies each, as the
        // control plane's follower thread does.
        let stream = Arc::new(Mutex::new(Vec::<BanList>::new()));
        let (l, t, out, follower) = (
            leading.clone(),
            taking.clone(),
            stream.clone(),
            store.clone(),
        );
        let (t2, out2) = (taking.clone(), stream.clone());
        let applied = Arc::new(AtomicBool::new(true));
        let caught_up = applied.clone();
        store.replicate_with(BanReplication {
            leads: Box::new(move || l.load(Relaxed)),
            publish: Box::new(move |list| {
                if !t.load(Relaxed) {
                    return Err("no quorum".into());
                }
                out.lock().unwrap().push(list.clone());
                follower.replace_operator_list(list.clone()).unwrap();
                Ok(())
            }),
            seed: Box::new(move |list| {
                if !t2.load(Relaxed) {
                    return Err("no quorum".into());
                }
                let mut taken = out2.lock().unwrap();
                if !taken.is_empty() {
                    return Ok(false);
                }
                taken.push(list.clone());
                Ok(true)
            }),
            applied_after: Box::new(move |_| caught_up.load(Relaxed)),
        });
        let change = BanChange {
            addresses: vec!["addr".into()],
            ..Default::default()
        };
        assert!(matches!(
            store.apply(&change, true),
            Err(BanError::NotLeading)
        ));
        assert!(
            !store.seed_if_absent().unwrap(),
            "an empty list is not seeded"
        );
        leading.store(true, Relaxed);
        assert!(matches!(
            store.apply(&change, true),
            Err(BanError::NotReplicated(_))
        ));
        assert!(store.current().addresses.is_empty(), "nothing enforced");
        assert!(!path.exists(), "nothing written");
        taking.store(true, Relaxed);
        store.apply(&change, true).unwrap();
        assert!(store.current().bans_worker("addr.rig"));
        assert_eq!(stream.lock().unwrap().last(), Some(&store.operator_list()));
        assert!(!store.seed_if_absent().unwrap(), "the stream holds a list");
        assert_eq!(stream.lock().unwrap().len(), 1);

        // A follower behind the stream: no change is computed from its older copy.
        applied.store(false, Relaxed);
        assert!(matches!(
            store.apply(&change, false),
            Err(BanError::EarlierNotApplied)
        ));
        assert_eq!(stream.lock().unwrap().len(), 1, "nothing sent");
        applied.store(true, Relaxed);
        // One message of the stream holds the whole list, or the change is refused.
        let long = BanChange {
            addresses: (0..9_000).map(|i| format!("address-{i:056}")).collect(),
            ..Default::default()
        };
        assert!(matches!(
            store.apply(&long, true),
            Err(BanError::TooLargeForCluster(_))
        ));

        // Another control plane's list, read from the stream.
        let mut theirs = BanList::default();
        theirs.addresses.insert("other".into());
        store
            .set_denied(BTreeSet::from(["denied".to_string()]))
            .unwrap();
        store.replace_operator_list(theirs.clone()).unwrap();
        assert_eq!(store.operator_list(), theirs);
        assert!(
            store.current().bans_worker("other.rig") && store.current().bans_worker("denied.x")
        );
        assert!(!store.current().bans_worker("addr.rig"));
        assert_eq!(*BanStore::open(path.clone()).unwrap().current(), theirs);

        // A store whose stream is empty seeds it with its list.
        stream.lock().unwrap().clear();
        assert!(store.seed_if_absent().unwrap());
        assert_eq!(stream.lock().unwrap().as_slice(), &[theirs]);
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
