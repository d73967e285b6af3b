//! The operator's ban list: payout addresses and IP networks the pool refuses. It is kept
//! in `bans.json` in the data directory (written to a temporary file, synced, then renamed
//! over the old one, so a crash leaves either list whole) and every change goes to the
//! data planes at once, which close the connections it covers.
//!
//! A ban stops mining, not payment: what a banned miner earned before stays its own.

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
}

pub struct BanStore {
    path: PathBuf,
    /// Serializes changes, so two admin requests cannot lose one another's edit.
    edit: Mutex<()>,
    current: watch::Sender<Arc<BanList>>,
}

impl BanStore {
    /// Opens the list at `path`; a missing file is an empty list.
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let list = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the ban list {}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BanList::default(),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        Ok(BanStore {
            path,
            edit: Mutex::new(()),
            current: watch::Sender::new(Arc::new(list)),
        })
    }

    pub fn current(&self) -> Arc<BanList> {
        self.current.borrow().clone()
    }

    /// Every new list, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BanList>> {
        self.current.subscribe()
    }

    /// Adds (`ban`) or removes the change's entries, saves the list and publishes it.
    pub fn apply(&self, change: &BanChange, ban: bool) -> Result<Arc<BanList>, BanError> {
        let _edit = self.edit.lock().expect("ban list lock");
        let mut list = (*self.current()).clone();
        for address in &change.addresses {
            if ban {
                list.addresses.insert(address.clone());
            } else {
                list.addresses.remove(address);
            }
        }
        for network in &change.networks {
            if ban {
                list.networks.insert(*network);
            } else {
                list.networks.remove(network);
            }
        }
        if list.len() > BANS_MAX {
            return Err(BanError::TooMany(list.len()));
        }
        self.save(&list)
            .map_err(|e| BanError::Storage(format!("{e:#}")))?;
        let list = Arc::new(list);
        self.current.send_replace(list.clone());
        Ok(list)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let list = BanStore::open(path).unwrap().current();
        assert!(list.addresses.is_empty() && list.networks.len() == 1);
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
