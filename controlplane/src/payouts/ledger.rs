//! The ledger: an append-only log of balance changes in RocksDB, with each account's
//! balances kept beside it and written in the same atomic batch. Amounts are integers in
//! the coin's smallest unit. Immature (the block may still be orphaned), mature (payable)
//! and paid are kept apart.
//!
//! Each block's credits and state (immature, mature, orphaned) are stored under its hash in
//! the same batch as the balance changes they cause: a block is credited, matured or
//! orphaned at most once, however often it is seen and whenever the process dies.

use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::schemes::BlockSplit;

/// One account's balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    pub immature: u64,
    pub mature: u64,
    pub paid: u64,
}

/// Why a balance changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A found block's share, immature until the block matures.
    BlockCredit,
    /// The block reached maturity: immature → mature.
    Matured,
    /// The block left the best chain: its immature credit is taken back.
    Orphaned,
}

/// One line of the append-only log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub sequence: u64,
    pub account: String,
    pub kind: EntryKind,
    pub amount: u64,
    /// The block hash (display hex) the entry belongs to.
    pub block: String,
}

/// What a ledger step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The step had already been applied; nothing changed.
    AlreadyDone,
    /// The block was never credited, or was already orphaned or matured.
    NotApplicable,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger storage: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("ledger record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

const ENTRY_PREFIX: &[u8] = b"e/";
const BALANCE_PREFIX: &[u8] = b"b/";
const BLOCK_PREFIX: &[u8] = b"k/";

/// A block's split, as credited, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CreditedBlock {
    credits: BTreeMap<String, u64>,
    state: BlockState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BlockState {
    Immature,
    Mature,
    Orphaned,
}

pub struct Ledger {
    db: DB,
    next_sequence: u64,
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        let next_sequence = db
            // "e0" sorts just after every "e/…" key: the first entry key below it is the last.
            .iterator(IteratorMode::From(b"e0", rocksdb::Direction::Reverse))
            .filter_map(Result::ok)
            .find(|(k, _)| k.starts_with(ENTRY_PREFIX))
            .and_then(|(k, _)| k[ENTRY_PREFIX.len()..].try_into().ok())
            .map_or(0, |bytes: [u8; 8]| u64::from_be_bytes(bytes) + 1);
        Ok(Ledger { db, next_sequence })
    }

    pub fn balances(&self, account: &str) -> Result<Balances, LedgerError> {
        Ok(
            match self.db.get(key(BALANCE_PREFIX, account.as_bytes()))? {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => Balances::default(),
            },
        )
    }

    /// Every account with its balances.
    pub fn all_balances(&self) -> Result<BTreeMap<String, Balances>, LedgerError> {
        let mut all = BTreeMap::new();
        for item in self.db.prefix_iterator(BALANCE_PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(BALANCE_PREFIX) {
                break;
            }
            let account = String::from_utf8_lossy(&k[BALANCE_PREFIX.len()..]).into_owned();
            all.insert(account, serde_json::from_slice(&v)?);
        }
        Ok(all)
    }

    /// The whole log, oldest first.
    pub fn entries(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        let mut entries = Vec::new();
        for item in self.db.prefix_iterator(ENTRY_PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(ENTRY_PREFIX) {
                break;
            }
            entries.push(serde_json::from_slice(&v)?);
        }
        Ok(entries)
    }

    /// Credits a found block's split as immature, once per block hash.
    pub fn credit_block(
        &mut self,
        block: &str,
        split: &BlockSplit,
    ) -> Result<Applied, LedgerError> {
        if self.db.get(key(BLOCK_PREFIX, block.as_bytes()))?.is_some() {
            return Ok(Applied::AlreadyDone);
        }
        let mut change = Change::new(self);
        for (account, amount) in &split.credits {
            change.apply(account, EntryKind::BlockCredit, *amount, block, |b| {
                b.immature += amount
            })?;
        }
        let record = CreditedBlock {
            credits: split.credits.clone(),
            state: BlockState::Immature,
        };
        change.batch.put(
            key(BLOCK_PREFIX, block.as_bytes()),
            serde_json::to_vec(&record)?,
        );
        change.commit()?;
        Ok(Applied::Done)
    }

    /// Moves a credited block's immature credits to mature, once.
    pub fn mature_block(&mut self, block: &str) -> Result<Applied, LedgerError> {
        self.settle(block, BlockState::Mature)
    }

    /// Takes back an orphaned block's immature credits, once. A matured block cannot be
    /// orphaned any more: maturity is 100 confirmations, past any reorganization the pool
    /// is built to survive.
    pub fn orphan_block(&mut self, block: &str) -> Result<Applied, LedgerError> {
        self.settle(block, BlockState::Orphaned)
    }

    fn settle(&mut self, block: &str, to: BlockState) -> Result<Applied, LedgerError> {
        let block_key = key(BLOCK_PREFIX, block.as_bytes());
        let Some(bytes) = self.db.get(&block_key)? else {
            return Ok(Applied::NotApplicable);
        };
        let mut record: CreditedBlock = serde_json::from_slice(&bytes)?;
        match (record.state, to) {
            (state, to) if state == to => return Ok(Applied::AlreadyDone),
            (BlockState::Immature, _) => {}
            _ => return Ok(Applied::NotApplicable),
        }
        let kind = match to {
            BlockState::Mature => EntryKind::Matured,
            _ => EntryKind::Orphaned,
        };
        let mut change = Change::new(self);
        for (account, amount) in &record.credits {
            change.apply(account, kind, *amount, block, |b| {
                b.immature -= amount;
                if to == BlockState::Mature {
                    b.mature += amount;
                }
            })?;
        }
        record.state = to;
        change.batch.put(block_key, serde_json::to_vec(&record)?);
        change.commit()?;
        Ok(Applied::Done)
    }
}

/// One atomic ledger change: log entries and the balances they move, in one batch.
struct Change<'a> {
    ledger: &'a mut Ledger,
    batch: WriteBatch,
    balances: BTreeMap<String, Balances>,
    next_sequence: u64,
}

impl<'a> Change<'a> {
    fn new(ledger: &'a mut Ledger) -> Self {
        let next_sequence = ledger.next_sequence;
        Change {
            ledger,
            batch: WriteBatch::default(),
            balances: BTreeMap::new(),
            next_sequence,
        }
    }

    fn apply(
        &mut self,
        account: &str,
        kind: EntryKind,
        amount: u64,
        block: &str,
        update: impl FnOnce(&mut Balances),
    ) -> Result<(), LedgerError> {
        let entry = LedgerEntry {
            sequence: self.next_sequence,
            account: account.to_string(),
            kind,
            amount,
            block: block.to_string(),
        };
        self.batch.put(
            key(ENTRY_PREFIX, &self.next_sequence.to_be_bytes()),
            serde_json::to_vec(&entry)?,
        );
        self.next_sequence += 1;
        if !self.balances.contains_key(account) {
            let current = self.ledger.balances(account)?;
            self.balances.insert(account.to_string(), current);
        }
        update(self.balances.get_mut(account).expect("inserted above"));
        Ok(())
    }

    fn commit(mut self) -> Result<(), LedgerError> {
        for (account, balances) in &self.balances {
            self.batch.put(
                key(BALANCE_PREFIX, account.as_bytes()),
                serde_json::to_vec(balances)?,
            );
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.ledger
            .db
            .write_opt(std::mem::take(&mut self.batch), &options)?;
        self.ledger.next_sequence = self.next_sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pairs: &[(&str, u64)]) -> BlockSplit {
        BlockSplit {
            pool: 0,
            credits: pairs.iter().map(|(a, v)| (a.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_block_is_credited_once_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let block = split(&[("a", 600), ("b", 400)]);
        assert_eq!(ledger.credit_block("h1", &block).unwrap(), Applied::Done);
        assert_eq!(
            ledger.credit_block("h1", &block).unwrap(),
            Applied::AlreadyDone
        );
        drop(ledger);
        let mut ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(
            ledger.credit_block("h1", &block).unwrap(),
            Applied::AlreadyDone
        );
        assert_eq!(
            ledger.balances("a").unwrap(),
            Balances {
                immature: 600,
                mature: 0,
                paid: 0
            }
        );
        assert_eq!(ledger.entries().unwrap().len(), 2);
        // Sequence numbers carry on after the reopen.
        ledger.credit_block("h2", &split(&[("a", 1)])).unwrap();
        let sequences: Vec<u64> = ledger
            .entries()
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(sequences, vec![0, 1, 2]);
    }

    #[test]
    fn maturing_moves_credits_and_an_orphan_takes_them_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .credit_block("good", &split(&[("a", 600), ("b", 400)]))
            .unwrap();
        ledger.credit_block("orphan", &split(&[("a", 50)])).unwrap();
        assert_eq!(ledger.mature_block("good").unwrap(), Applied::Done);
        assert_eq!(ledger.mature_block("good").unwrap(), Applied::AlreadyDone);
        assert_eq!(ledger.orphan_block("orphan").unwrap(), Applied::Done);
        assert_eq!(ledger.orphan_block("orphan").unwrap(), Applied::AlreadyDone);
        // An orphan never matures, a matured block is never orphaned, an unknown one is neither.
        assert_eq!(
            ledger.mature_block("orphan").unwrap(),
            Applied::NotApplicable
        );
        assert_eq!(ledger.orphan_block("good").unwrap(), Applied::NotApplicable);
        assert_eq!(
            ledger.mature_block("unknown").unwrap(),
            Applied::NotApplicable
        );
        assert_eq!(
            ledger.balances("a").unwrap(),
            Balances {
                immature: 0,
                mature: 600,
                paid: 0
            }
        );
        assert_eq!(
            ledger.balances("b").unwrap(),
            Balances {
                immature: 0,
                mature: 400,
                paid: 0
            }
        );
        let total: u64 = ledger
            .all_balances()
            .unwrap()
            .values()
            .map(|b| b.immature + b.mature + b.paid)
            .sum();
        assert_eq!(
            total, 1000,
            "the orphan's 50 is gone, the good block's 1000 is all there"
        );
    }
}
