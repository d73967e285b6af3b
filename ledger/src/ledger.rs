//! The ledger: an append-only log of balance changes in RocksDB, with each account's
//! balances kept beside it and written in the same atomic batch. Amounts are integers in
//! the coin's smallest unit. Immature (the block may still be orphaned), mature (payable),
//! paying (in a payout transaction the node has not confirmed to know yet) and paid are
//! kept apart, and their sum over every account only grows by credited rewards.
//!
//! Each block's credits and state (immature, mature, orphaned) are stored under its hash in
//! the same batch as the balance changes they cause: a block is credited, matured or
//! orphaned at most once, however often it is seen and whenever the process dies.
//!
//! A payout is an intent written in one batch with its debits: the batch id, the outputs,
//! the funded and signed transaction and its txid. Whatever happens after that batch, the
//! only transaction that can pay those outputs is the one in the intent.

use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::shares::ShareKey;

mod credits;
mod intents;
mod transfers;

pub use credits::CLUSTER_LOG_ID_BASE;
use intents::stage_intent_indexes;

/// One account's balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    pub immature: u64,
    pub mature: u64,
    /// In a payout intent whose transaction the node has not yet been seen to hold.
    #[serde(default)]
    pub paying: u64,
    pub paid: u64,
}

impl Balances {
    pub fn total(&self) -> u64 {
        self.immature + self.mature + self.paying + self.paid
    }
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
    /// PPS/FPPS: shares credited at once, mature, from the pool's funds.
    ShareCredit,
    /// A payout intent: mature → paying.
    PayoutDebit,
    /// The node holds the payout transaction: paying → paid.
    PayoutSent,
    /// The payout transaction was double-spent and can never pay: paid → mature, once.
    PayoutReturned,
    /// A pending payout the operator cancelled (its transaction can never be mined):
    /// paying → mature, once.
    PayoutCancelled,
    /// Into the exchange: the miner's mature → the exchange account's mature.
    ExchangeDeposit,
    /// Out of the exchange: the exchange account's mature → the miner's mature.
    ExchangeWithdrawal,
}

/// The account holding, as mature, every unit of the pool's coin inside the exchange, so
/// the ledger's total still only grows by rewards. Not an address: never paid.
pub const EXCHANGE_ACCOUNT: &str = "@exchange";

/// Which way a transfer between the ledger and the exchange goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    Deposit,
    Withdrawal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Written; the exchange's journal may or may not hold its command yet.
    Pending,
    Done,
    /// The exchange refused it; a deposit's debit was given back.
    Failed,
}

/// A move of the pool's coin between the ledger and the exchange. The exchange command
/// that carries it is the one at `exchange_sequence` in the exchange's journal, which is
/// how a restart tells whether it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: u64,
    pub kind: TransferKind,
    pub account: String,
    pub amount: u64,
    pub exchange_sequence: u64,
    pub state: TransferState,
    pub created_at_ms: u64,
}

/// One line of the append-only log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub sequence: u64,
    pub account: String,
    pub kind: EntryKind,
    pub amount: u64,
    /// What the entry belongs to: a block hash (display hex), `batch:N` or `shares`.
    #[serde(alias = "block")]
    pub reference: String,
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
    #[error("{amount} for {account} exceeds its mature balance {mature}")]
    Overdraft {
        account: String,
        amount: u64,
        mature: u64,
    },
    /// A change whose balances moved by other than its entries say (the conservation
    /// check at commit): refused whole, nothing written. A bug, never a peer's doing.
    #[error(
        "ledger change does not balance: its entries add {expected}, its balances moved {moved}"
    )]
    Unbalanced { expected: i128, moved: i128 },
    /// A write refused by `Ledger::fail_next_commits`, for fault-injection tests: RocksDB
    /// itself fails a write only on a full or broken disk, which a test cannot arrange.
    #[error("injected ledger write failure")]
    InjectedFault,
    /// Cluster mode: the write could not be made durable in the replicated stream first
    /// (the cluster out of reach, or another control plane wrote since: this one is no
    /// longer the leader). Nothing was written.
    #[error("ledger write not replicated: {0}")]
    Replication(String),
}

/// Cluster mode: where a ledger sends each write before it makes it, so that a standby
/// control plane that applies the same writes in the same order holds the same ledger
/// (`Ledger::apply_replicated`). The writes are RocksDB write batches, byte for byte:
/// nothing is recomputed on the standby, so nothing can come out different there.
pub trait Replicator: Send + Sync {
    /// Makes `batch` durable in order after every write this ledger has applied, or
    /// fails (nothing is then written here); the position it took, stored with it.
    fn replicate(&mut self, batch: &[u8], after: u64) -> Result<u64, String>;
}

const ENTRY_PREFIX: &[u8] = b"e/";
const BALANCE_PREFIX: &[u8] = b"b/";
const BLOCK_PREFIX: &[u8] = b"k/";
const INTENT_PREFIX: &[u8] = b"p/";
const CURSOR_PREFIX: &[u8] = b"c/";
const SETTING_PREFIX: &[u8] = b"s/";
const PPS_CREDITED_KEY: &[u8] = b"m/pps_credited";
/// A mirrored share log's id (cluster mode), by its name: `l/{HOST.PROCESS}` → the id.
const LOG_ID_PREFIX: &[u8] = b"l/";
/// The id the next mirrored log is given.
const LOG_ID_NEXT_KEY: &[u8] = b"m/log_id_next";
const TRANSFER_PREFIX: &[u8] = b"t/";
const KYC_PREFIX: &[u8] = b"y/";
const KYC_CALLBACK_PREFIX: &[u8] = b"q/";
/// Intents not yet final (open or sent), by batch id: what the payout thread follows on
/// every pass, read without scanning every batch ever written.
const UNSETTLED_PREFIX: &[u8] = b"u/";
/// Each account's payouts: `a/{account}\0{batch id, big-endian}` → the amount, so a
/// miner's page reads its own payments, newest first, and nothing else.
const ACCOUNT_PAYOUT_PREFIX: &[u8] = b"a/";
/// Batches and amounts per intent state (`IntentTotals`), kept in each intent's batch.
const INTENT_TOTALS_KEY: &[u8] = b"m/intent_totals";
/// Present once the three indexes above cover every intent (ledgers written before them
/// are indexed once, at open).
const INTENT_INDEX_KEY: &[u8] = b"m/intent_index_v1";
/// Cluster mode: the position in the replicated stream of the last write applied.
const REPLICA_POSITION_KEY: &[u8] = b"m/replica_position";

/// A block's split, as credited, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CreditedBlock {
    credits: BTreeMap<String, u64>,
    state: BlockState,
    /// The block's own share record, where its round ended and the next one starts;
    /// `None` for blocks credited before rounds were cut at share records.
    #[serde(default)]
    round_end: Option<ShareKey>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    Immature,
    Mature,
    Orphaned,
}

/// Where a payout transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentState {
    /// Written with its debits; the node may or may not have the transaction yet.
    Open,
    /// The node has the transaction (mempool or chain); the outputs are paid.
    Sent,
    /// Buried under `payout_confirmations` blocks (its own, or a replacement's that pays
    /// every output, such as a fee bump): final.
    Confirmed,
    /// Cancelled by the operator while pending, once the node said its transaction can
    /// never be mined (its inputs are spent or gone): every amount went back from paying to
    /// mature (`PayoutCancelled`), once. Final.
    Cancelled,
    /// Double-spent by a transaction that does not pay its outputs, buried under
    /// `payout_confirmations` blocks: it can never pay, and its amounts went back to the
    /// balances (`PayoutReturned`), once. Final.
    Failed,
}

impl IntentState {
    /// As the API shows it.
    pub fn name(self) -> &'static str {
        match self {
            IntentState::Open => "pending",
            IntentState::Sent => "sent",
            IntentState::Confirmed => "confirmed",
            IntentState::Failed => "failed",
            IntentState::Cancelled => "cancelled",
        }
    }
}

/// Batches and the units they pay, in one intent state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentTally {
    pub batches: u64,
    pub amount: u64,
}

/// Every intent, counted by its state: kept in the same batch as each intent's writes.
pub type IntentTotals = BTreeMap<IntentState, IntentTally>;

/// One of an account's payouts, from the account index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountPayout {
    pub amount: u64,
    pub intent: PayoutIntent,
}

/// A payout batch: written before its transaction is broadcast, and the only transaction
/// that may ever pay its outputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutIntent {
    pub batch_id: u64,
    pub created_at_ms: u64,
    pub outputs: BTreeMap<String, u64>,
    /// The funded, signed transaction, hex.
    pub raw_tx: String,
    pub txid: String,
    pub state: IntentState,
    pub broadcast_attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub sent_at_ms: Option<u64>,
    /// Confirmations at the last look (negative: conflicted, that deep).
    #[serde(default)]
    pub confirmations: i64,
    /// The transaction that paid the outputs, when another than `txid` did (a fee bump).
    #[serde(default)]
    pub paid_by_txid: Option<String>,
    /// When the intent became `Confirmed` or `Failed`.
    #[serde(default)]
    pub settled_at_ms: Option<u64>,
}

/// Invariant: every method that writes takes `&mut self`, so a `reader` (shared without
/// the ledger's lock, for the API) can only read. Reads see whole commits: each write is
/// one RocksDB batch, and scans read from one implicit snapshot.
pub struct Ledger {
    db: std::sync::Arc<DB>,
    next_sequence: u64,
    /// Cluster mode: every write goes here first (`Replicator`).
    replicator: Option<Box<dyn Replicator>>,
    /// Commits still to refuse (see `fail_next_commits`).
    commits_to_fail: u32,
    /// Commits left before the process "dies" (see `crash_after_commits`).
    commits_until_crash: Option<u32>,
}

/// The last ledger entry's sequence.
fn last_entry_sequence(db: &DB) -> Option<u64> {
    db
        // "e0" sorts just after every "e/…" key: the first entry key below it is the last.
        .iterator(IteratorMode::From(b"e0", rocksdb::Direction::Reverse))
        .filter_map(Result::ok)
        .find(|(k, _)| k.starts_with(ENTRY_PREFIX))
        .and_then(|(k, _)| k[ENTRY_PREFIX.len()..].try_into().ok())
        .map(u64::from_be_bytes)
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        let next_sequence = last_entry_sequence(&db).map_or(0, |last| last + 1);
        let ledger = Ledger {
            db: std::sync::Arc::new(db),
            next_sequence,
            replicator: None,
            commits_to_fail: 0,
            commits_until_crash: None,
        };
        ledger.index_intents_if_stale()?;
        Ok(ledger)
    }

    /// A ledger another process may be writing, to read: a RocksDB secondary instance
    /// (its own files in `scratch`) caught up with the writer as of this call.
    pub fn open_secondary(path: &Path, scratch: &Path) -> Result<Self, LedgerError> {
        let mut options = Options::default();
        options.set_max_open_files(-1);
        options.set_db_log_dir(scratch);
        let db = DB::open_as_secondary(&options, path, scratch)?;
        db.try_catch_up_with_primary()?;
        let next_sequence = last_entry_sequence(&db).map_or(0, |last| last + 1);
        Ok(Ledger {
            db: std::sync::Arc::new(db),
            next_sequence,
            replicator: None,
            commits_to_fail: 0,
            commits_until_crash: None,
        })
    }

    /// What this ledger owes and has credited, as a SHA-256 digest (hex) that two ledgers
    /// share whenever they credited the same blocks and shares to the same accounts,
    /// however they got there (a live ledger, and a backup of it that credited the share
    /// logs written since): every account's balances, every credited block's split and
    /// state (not orphaned blocks: their credits went back, and a ledger that never
    /// credited one, because it saw it orphaned first, owes the same), and the
    /// per-share schemes' cursors and total. Left out, because they record how and when,
    /// not what: entry numbers and how passes grouped them, every time, payout intents'
    /// progress, settings, KYC records, exchange transfers and cluster positions.
    pub fn state_hash(&self) -> Result<String, LedgerError> {
        use sha2::Digest;
        /// A block's state, split, and where its round ended.
        type BlockOwed = (BlockState, BTreeMap<String, u64>, Option<ShareKey>);
        #[derive(Serialize)]
        struct State {
            balances: BTreeMap<String, [u64; 4]>,
            blocks: BTreeMap<String, BlockOwed>,
            share_cursors: BTreeMap<u32, u64>,
            pps_credited: u64,
        }
        let state = State {
            balances: self
                .all_balances()?
                .into_iter()
                // An account whose only credit went back (an orphan) owes what one never
                // credited owes.
                .filter(|(_, b)| b.total() > 0)
                .map(|(account, b)| (account, [b.immature, b.mature, b.paying, b.paid]))
                .collect(),
            blocks: self
                .scan::<CreditedBlock>(BLOCK_PREFIX)?
                .into_iter()
                .filter(|(_, block)| block.state != BlockState::Orphaned)
                .map(|(hash, block)| {
                    let hash = String::from_utf8_lossy(&hash).into_owned();
                    // Where its round ended: the next round is cut from there.
                    (hash, (block.state, block.credits, block.round_end))
                })
                .collect(),
            share_cursors: self
                .scan::<u64>(CURSOR_PREFIX)?
                .into_iter()
                .filter_map(|(process, next)| {
                    Some((u32::from_be_bytes(process.try_into().ok()?), next))
                })
                .collect(),
            pps_credited: self.pps_credited()?,
        };
        Ok(hex::encode(sha2::Sha256::digest(serde_json::to_vec(
            &state,
        )?)))
    }

    /// A handle on the same database for reads, which needs no lock: the API reads
    /// balances, payments and KYC records through one, so it never waits for a writer. It
    /// takes `&self` methods only, and no public `&self` method writes (indexing at open
    /// is private to `open`).
    pub fn reader(&self) -> std::sync::Arc<Ledger> {
        std::sync::Arc::new(Ledger {
            db: self.db.clone(),
            next_sequence: self.next_sequence,
            replicator: None,
            commits_to_fail: 0,
            commits_until_crash: None,
        })
    }

    /// Cluster mode: sends every later write to `replicator` before making it.
    pub fn set_replicator(&mut self, replicator: Option<Box<dyn Replicator>>) {
        self.replicator = replicator;
    }

    /// Whether any money has moved in this ledger (an entry exists).
    pub fn has_entries(&self) -> bool {
        self.next_sequence > 0
    }

    /// The replicated stream's position of the last write applied here; 0 before any.
    pub fn replica_position(&self) -> Result<u64, LedgerError> {
        Ok(self.get(REPLICA_POSITION_KEY)?.unwrap_or(0))
    }

    /// A standby's step: applies the write another control plane replicated at
    /// `position`, if it is past the last one applied (a write seen twice is skipped).
    pub fn apply_replicated(&mut self, batch: &[u8], position: u64) -> Result<bool, LedgerError> {
        if position <= self.replica_position()? {
            return Ok(false);
        }
        let mut batch = WriteBatch::from_data(batch);
        batch.put(REPLICA_POSITION_KEY, serde_json::to_vec(&position)?);
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        self.next_sequence = last_entry_sequence(&self.db).map_or(0, |last| last + 1);
        Ok(true)
    }

    /// A standby's step past stream positions that hold no write to apply (a chunked
    /// write voided, a marker): the position moves on, so the next write follows them.
    pub fn skip_replicated(&mut self, through: u64) -> Result<(), LedgerError> {
        if through <= self.replica_position()? {
            return Ok(());
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.put_opt(
            REPLICA_POSITION_KEY,
            serde_json::to_vec(&through)?,
            &options,
        )?;
        Ok(())
    }

    /// Cluster mode, on taking over: a write that holds nothing but its stream position.
    /// Once it is in the stream, a write a former leader still had on its way (fenced on
    /// an earlier position) can no longer land after this leader has read the stream, so
    /// what the new leader settles from what it read stays settled.
    pub fn fence(&mut self) -> Result<(), LedgerError> {
        self.write(WriteBatch::default())
    }

    /// Every ledger write: replicated first in cluster mode (with its position stored in
    /// the same write), then written and synced.
    fn write(&mut self, mut batch: WriteBatch) -> Result<(), LedgerError> {
        let after = match self.replicator {
            Some(_) => Some(self.get(REPLICA_POSITION_KEY)?.unwrap_or(0)),
            None => None,
        };
        if let (Some(after), Some(replicator)) = (after, self.replicator.as_mut()) {
            let position = replicator
                .replicate(batch.data(), after)
                .map_err(LedgerError::Replication)?;
            batch.put(REPLICA_POSITION_KEY, serde_json::to_vec(&position)?);
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Makes the next `count` batch commits fail as a full disk would, writing nothing:
    /// for fault-injection tests of the callers.
    pub fn fail_next_commits(&mut self, count: u32) {
        self.commits_to_fail = count;
    }

    /// Lets `commits` more batch commits through and refuses every one after, writing
    /// nothing, as if the process died there: for crash simulations, which then drop this
    /// ledger and open it again.
    pub fn crash_after_commits(&mut self, commits: u32) {
        self.commits_until_crash = Some(commits);
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, LedgerError> {
        Ok(match self.db.get(key)? {
            Some(bytes) => Some(serde_json::from_slice(&bytes)?),
            None => None,
        })
    }

    fn scan<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, LedgerError> {
        let mut all = Vec::new();
        for item in self.db.prefix_iterator(prefix) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            all.push((k[prefix.len()..].to_vec(), serde_json::from_slice(&v)?));
        }
        Ok(all)
    }

    pub fn balances(&self, account: &str) -> Result<Balances, LedgerError> {
        Ok(self
            .get(&key(BALANCE_PREFIX, account.as_bytes()))?
            .unwrap_or_default())
    }

    /// Every account with its balances.
    pub fn all_balances(&self) -> Result<BTreeMap<String, Balances>, LedgerError> {
        Ok(self
            .scan(BALANCE_PREFIX)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// The whole log, oldest first.
    pub fn entries(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        Ok(self
            .scan(ENTRY_PREFIX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// A miner's own payout threshold, if it set one.
    pub fn payout_min(&self, account: &str) -> Result<Option<u64>, LedgerError> {
        self.get(&key(SETTING_PREFIX, account.as_bytes()))
    }

    pub fn set_payout_min(&mut self, account: &str, amount: u64) -> Result<(), LedgerError> {
        let mut batch = WriteBatch::default();
        batch.put(
            key(SETTING_PREFIX, account.as_bytes()),
            serde_json::to_vec(&amount)?,
        );
        self.write(batch)
    }
}

/// One atomic ledger change: log entries and the balances they move, in one batch.
///
/// Invariant (checked at `commit`, which refuses the change otherwise): the ledger's total
/// (every account's immature + mature + paying + paid) moves by exactly what the entries
/// bring in or take out: `+` a block's or a share's credit, `-` an orphaned block's;
/// every other entry moves units within an account or between two, and adds nothing.
struct Change<'a> {
    ledger: &'a mut Ledger,
    batch: WriteBatch,
    balances: BTreeMap<String, Balances>,
    next_sequence: u64,
    /// The touched accounts' totals before this change.
    totals_before: i128,
    /// What the entries say the total moves by.
    expected_move: i128,
}

impl<'a> Change<'a> {
    fn new(ledger: &'a mut Ledger) -> Self {
        let next_sequence = ledger.next_sequence;
        Change {
            ledger,
            batch: WriteBatch::default(),
            balances: BTreeMap::new(),
            next_sequence,
            totals_before: 0,
            expected_move: 0,
        }
    }

    fn balances_of(&mut self, account: &str) -> Result<&mut Balances, LedgerError> {
        if !self.balances.contains_key(account) {
            let current = self.ledger.balances(account)?;
            self.totals_before += i128::from(current.total());
            self.balances.insert(account.to_string(), current);
        }
        Ok(self.balances.get_mut(account).expect("inserted above"))
    }

    fn apply(
        &mut self,
        account: &str,
        kind: EntryKind,
        amount: u64,
        reference: &str,
        update: impl FnOnce(&mut Balances),
    ) -> Result<(), LedgerError> {
        let entry = LedgerEntry {
            sequence: self.next_sequence,
            account: account.to_string(),
            kind,
            amount,
            reference: reference.to_string(),
        };
        self.batch.put(
            key(ENTRY_PREFIX, &self.next_sequence.to_be_bytes()),
            serde_json::to_vec(&entry)?,
        );
        self.next_sequence += 1;
        self.expected_move += match kind {
            EntryKind::BlockCredit | EntryKind::ShareCredit => i128::from(amount),
            EntryKind::Orphaned => -i128::from(amount),
            EntryKind::Matured
            | EntryKind::PayoutDebit
            | EntryKind::PayoutSent
            | EntryKind::PayoutReturned
            | EntryKind::PayoutCancelled
            | EntryKind::ExchangeDeposit
            | EntryKind::ExchangeWithdrawal => 0,
        };
        update(self.balances_of(account)?);
        Ok(())
    }

    /// Moves `amount` of mature balance from one account to another, refusing an overdraft.
    fn move_mature(
        &mut self,
        from: &str,
        to: &str,
        amount: u64,
        kind: EntryKind,
        reference: &str,
    ) -> Result<(), LedgerError> {
        let mature = self.balances_of(from)?.mature;
        if mature < amount {
            return Err(LedgerError::Overdraft {
                account: from.to_string(),
                amount,
                mature,
            });
        }
        self.apply(from, kind, amount, reference, |b| b.mature -= amount)?;
        self.apply(to, kind, amount, reference, |b| b.mature += amount)
    }

    /// Writes an intent whose state was `previous` (`None`: a new one) with its indexes
    /// and the totals, in this change's batch.
    fn put_intent(
        &mut self,
        intent_key: Vec<u8>,
        previous: Option<IntentState>,
        intent: &PayoutIntent,
    ) -> Result<(), LedgerError> {
        let mut totals = self.ledger.intent_totals()?;
        stage_intent_indexes(&mut self.batch, &mut totals, previous, intent);
        self.batch
            .put(INTENT_TOTALS_KEY, serde_json::to_vec(&totals)?);
        self.batch.put(intent_key, serde_json::to_vec(intent)?);
        Ok(())
    }

    fn commit(mut self) -> Result<(), LedgerError> {
        let totals_after: i128 = self
            .balances
            .values()
            .map(|balances| i128::from(balances.total()))
            .sum();
        let moved = totals_after - self.totals_before;
        if moved != self.expected_move {
            return Err(LedgerError::Unbalanced {
                expected: self.expected_move,
                moved,
            });
        }
        for (account, balances) in &self.balances {
            self.batch.put(
                key(BALANCE_PREFIX, account.as_bytes()),
                serde_json::to_vec(balances)?,
            );
        }
        if self.ledger.commits_to_fail > 0 {
            self.ledger.commits_to_fail -= 1;
            return Err(LedgerError::InjectedFault);
        }
        if let Some(left) = self.ledger.commits_until_crash.as_mut() {
            if *left == 0 {
                return Err(LedgerError::InjectedFault);
            }
            *left -= 1;
        }
        self.ledger.write(std::mem::take(&mut self.batch))?;
        self.ledger.next_sequence = self.next_sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conservation check at commit: a change whose balances move by other than its
    /// entries say is refused whole, and nothing of it is written.
    #[test]
    fn a_change_that_does_not_balance_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let sequence = ledger.next_sequence;
        let mut change = Change::new(&mut ledger);
        // A "maturing" that mints 5 units out of nothing.
        change
            .apply("a", EntryKind::Matured, 5, "bad", |b| b.mature += 5)
            .unwrap();
        assert!(matches!(
            change.commit(),
            Err(LedgerError::Unbalanced {
                expected: 0,
                moved: 5
            })
        ));
        assert_eq!(ledger.balances("a").unwrap(), Balances::default());
        assert_eq!(ledger.next_sequence, sequence);
        // The same units brought in as a credit balance, and are written.
        let mut change = Change::new(&mut ledger);
        change
            .apply("a", EntryKind::ShareCredit, 5, "ok", |b| b.mature += 5)
            .unwrap();
        change.commit().unwrap();
        assert_eq!(ledger.balances("a").unwrap().mature, 5);
    }

    fn split(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(a, v)| (a.to_string(), *v)).collect()
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
                ..Balances::default()
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

    /// Two ledgers that credited the same blocks and shares, in other orders and passes and
    /// one with an orphan the other never credited, share a state hash; a unit more to
    /// anyone, or a block's state, changes it; a secondary reads the writer's.
    #[test]
    fn the_state_hash_follows_what_is_owed_not_how_it_got_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = Ledger::open(&dir.path().join("live")).unwrap();
        let mut replayed = Ledger::open(&dir.path().join("replayed")).unwrap();
        live.credit_block("h1", &split(&[("a", 600), ("b", 400)]))
            .unwrap();
        live.credit_block("orphan", &split(&[("a", 50)])).unwrap();
        live.credit_block("h2", &split(&[("b", 1_000)])).unwrap();
        live.orphan_block("orphan").unwrap();
        live.mature_block("h1").unwrap();
        live.credit_shares(&BTreeMap::from([(0, 10)]), &split(&[("a", 3), ("b", 2)]))
            .unwrap();
        live.credit_shares(&BTreeMap::from([(0, 20)]), &split(&[("a", 1)]))
            .unwrap();

        replayed
            .credit_block("h2", &split(&[("b", 1_000)]))
            .unwrap();
        replayed
            .credit_shares(&BTreeMap::from([(0, 20)]), &split(&[("a", 4), ("b", 2)]))
            .unwrap();
        replayed
            .credit_block("h1", &split(&[("a", 600), ("b", 400)]))
            .unwrap();
        assert_ne!(live.state_hash().unwrap(), replayed.state_hash().unwrap());
        replayed.mature_block("h1").unwrap();
        assert_eq!(live.state_hash().unwrap(), replayed.state_hash().unwrap());
        assert_ne!(live.entries().unwrap(), replayed.entries().unwrap());

        let scratch = tempfile::tempdir().unwrap();
        let reader = Ledger::open_secondary(&dir.path().join("live"), scratch.path()).unwrap();
        assert_eq!(reader.state_hash().unwrap(), live.state_hash().unwrap());
        replayed
            .credit_shares(&BTreeMap::from([(0, 21)]), &split(&[("b", 1)]))
            .unwrap();
        assert_ne!(live.state_hash().unwrap(), replayed.state_hash().unwrap());
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
                mature: 600,
                ..Balances::default()
            }
        );
        assert_eq!(
            ledger.balances("b").unwrap(),
            Balances {
                mature: 400,
                ..Balances::default()
            }
        );
        let total: u64 = ledger
            .all_balances()
            .unwrap()
            .values()
            .map(Balances::total)
            .sum();
        assert_eq!(
            total, 1000,
            "the orphan's 50 is gone, the good block's 1000 is all there"
        );
    }

    fn intent(batch_id: u64, outputs: &[(&str, u64)]) -> PayoutIntent {
        PayoutIntent {
            batch_id,
            created_at_ms: 1,
            outputs: split(outputs),
            raw_tx: "00".into(),
            txid: format!("tx{batch_id}"),
            state: IntentState::Open,
            broadcast_attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
            confirmations: 0,
            paid_by_txid: None,
            settled_at_ms: None,
            sent_at_ms: None,
        }
    }

    #[test]
    fn intents_page_newest_first_and_a_reader_sees_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let reader = ledger.reader();
        ledger.credit_block("h", &split(&[("a", 1_000)])).unwrap();
        ledger.mature_block("h").unwrap();
        // 300 makes the big-endian batch id's low byte wrap: keys must still sort by id.
        for batch_id in [1, 2, 3, 255, 256, 300] {
            ledger.open_intent(&intent(batch_id, &[("a", 1)])).unwrap();
        }
        let ids = |page: Vec<PayoutIntent>| page.iter().map(|i| i.batch_id).collect::<Vec<_>>();
        assert_eq!(
            ids(reader.intents_newest_first(None, 2).unwrap()),
            [300, 256]
        );
        assert_eq!(
            ids(reader.intents_newest_first(Some(256), 2).unwrap()),
            [255, 3]
        );
        assert_eq!(
            ids(reader.intents_newest_first(Some(3), 10).unwrap()),
            [2, 1]
        );
        assert!(reader.intents_newest_first(Some(1), 10).unwrap().is_empty());
        assert_eq!(reader.balances("a").unwrap().paying, 6);
    }

    #[test]
    fn an_intent_debits_once_and_completes_once_and_cannot_overdraw() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .credit_block("h", &split(&[("a", 700), ("b", 300)]))
            .unwrap();
        ledger.mature_block("h").unwrap();
        assert!(matches!(
            ledger.open_intent(&intent(1, &[("a", 701)])),
            Err(LedgerError::Overdraft { .. })
        ));
        assert_eq!(
            ledger.balances("a").unwrap().mature,
            700,
            "a refused intent writes nothing"
        );
        assert_eq!(ledger.next_batch_id().unwrap(), 1);
        let paying = intent(1, &[("a", 700), ("b", 300)]);
        assert_eq!(ledger.open_intent(&paying).unwrap(), Applied::Done);
        assert_eq!(ledger.open_intent(&paying).unwrap(), Applied::AlreadyDone);
        assert_eq!(
            ledger.balances("a").unwrap(),
            Balances {
                paying: 700,
                ..Balances::default()
            }
        );
        assert_eq!(ledger.open_intents().unwrap().len(), 1);
        ledger.note_broadcast_failure(1, "node down", 99).unwrap();
        assert_eq!(ledger.open_intents().unwrap()[0].broadcast_attempts, 1);
        assert_eq!(ledger.complete_intent(1, 5).unwrap(), Applied::Done);
        assert_eq!(ledger.complete_intent(1, 6).unwrap(), Applied::AlreadyDone);
        assert_eq!(
            ledger.balances("b").unwrap(),
            Balances {
                paid: 300,
                ..Balances::default()
            }
        );
        assert!(ledger.open_intents().unwrap().is_empty());
        assert_eq!(ledger.next_batch_id().unwrap(), 2);
    }

    /// The intent indexes (totals, unsettled, per account) follow every state change, and
    /// a ledger written before them is indexed once when it opens.
    #[test]
    fn intent_indexes_follow_every_state_and_an_old_ledger_is_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .credit_block("h", &split(&[("a", 1_000), ("b", 1_000)]))
            .unwrap();
        ledger.mature_block("h").unwrap();
        for batch_id in 1..=4 {
            ledger
                .open_intent(&intent(batch_id, &[("a", 10 * batch_id), ("b", 1)]))
                .unwrap();
        }
        ledger.open_intent(&intent(5, &[("b", 7)])).unwrap();
        ledger.assert_intent_indexes("five open");
        for batch_id in 1..=3 {
            ledger.complete_intent(batch_id, 2).unwrap();
        }
        ledger.confirm_intent(1, 6, None, 3).unwrap();
        ledger.fail_intent(2, 6, "double-spent", 4).unwrap();
        ledger.cancel_intent(4, "never minable", 5).unwrap();
        ledger.assert_intent_indexes("every state");
        let totals = ledger.intent_totals().unwrap();
        assert_eq!(
            totals[&IntentState::Open],
            IntentTally {
                batches: 1,
                amount: 7
            }
        );
        assert_eq!(
            totals[&IntentState::Failed],
            IntentTally {
                batches: 1,
                amount: 21
            }
        );
        let unsettled = |ledger: &Ledger| {
            let sent = ledger.sent_intents().unwrap();
            let open = ledger.open_intents().unwrap();
            (sent.iter().chain(&open).map(|i| i.batch_id)).collect::<Vec<_>>()
        };
        assert_eq!(unsettled(&ledger), [3, 5]);
        let page = |ledger: &Ledger, before| {
            let payouts = ledger.payouts_of("a", before, 2).unwrap();
            payouts
                .iter()
                .map(|p| (p.intent.batch_id, p.amount))
                .collect::<Vec<_>>()
        };
        assert_eq!(page(&ledger, None), [(4, 40), (3, 30)]);
        assert_eq!(page(&ledger, Some(3)), [(2, 20), (1, 10)]);
        assert!(page(&ledger, Some(1)).is_empty());
        assert!(ledger.payouts_of("nobody", None, 10).unwrap().is_empty());

        // A ledger from before the indexes: they are built at open, once.
        for prefix in [UNSETTLED_PREFIX, ACCOUNT_PAYOUT_PREFIX] {
            let keys: Vec<Box<[u8]>> = ledger
                .db
                .prefix_iterator(prefix)
                .map(|item| item.unwrap().0)
                .take_while(|k| k.starts_with(prefix))
                .collect();
            for k in keys {
                ledger.db.delete(k).unwrap();
            }
        }
        ledger.db.delete(INTENT_TOTALS_KEY).unwrap();
        ledger.db.delete(INTENT_INDEX_KEY).unwrap();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.assert_intent_indexes("indexed at open");
        assert_eq!(unsettled(&ledger), [3, 5]);
        assert_eq!(page(&ledger, None), [(4, 40), (3, 30)]);

        // An older release (no indexes) confirms batch 3 and writes batch 6: opened again,
        // the indexes are rebuilt.
        let mut confirmed = ledger.intent(3).unwrap().unwrap();
        confirmed.state = IntentState::Confirmed;
        let raw_put = |ledger: &Ledger, intent: &PayoutIntent| {
            let intent_key = key(INTENT_PREFIX, &intent.batch_id.to_be_bytes());
            ledger
                .db
                .put(intent_key, serde_json::to_vec(intent).unwrap())
                .unwrap();
        };
        raw_put(&ledger, &confirmed);
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.assert_intent_indexes("a state changed behind the index");
        assert_eq!(unsettled(&ledger), [5]);
        raw_put(&ledger, &intent(6, &[("a", 1)]));
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.assert_intent_indexes("an intent written behind the index");
        assert_eq!(unsettled(&ledger), [5, 6]);
    }

    /// The replicated stream, in memory: every write in order, with a position each, and
    /// a switch that makes the next write fail as an unreachable cluster would.
    #[derive(Clone, Default)]
    struct MemoryStream {
        writes: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Replicator for MemoryStream {
        fn replicate(&mut self, batch: &[u8], after: u64) -> Result<u64, String> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("out of reach".into());
            }
            let mut writes = self.writes.lock().unwrap();
            // The stream's fencing: a write must follow the last one its writer applied.
            if after != writes.len() as u64 {
                return Err(format!(
                    "expected to follow {after}, the stream is at {}",
                    writes.len()
                ));
            }
            writes.push(batch.to_vec());
            Ok(writes.len() as u64)
        }
    }

    fn dump(ledger: &Ledger) -> Vec<(Vec<u8>, Vec<u8>)> {
        ledger
            .db
            .iterator(IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// A standby that applies the leader's replicated writes in order holds the very same
    /// database; a write the stream did not take is not made; a write applied twice is
    /// skipped; a leader behind the stream (another wrote meanwhile) is refused.
    #[test]
    fn a_standby_applying_the_replicated_writes_holds_the_same_ledger() {
        let (leader_dir, standby_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = Ledger::open(leader_dir.path()).unwrap();
        let stream = MemoryStream::default();
        leader.set_replicator(Some(Box::new(stream.clone())));
        leader
            .credit_shares(
                &BTreeMap::from([(0u32, 10u64)]),
                &split(&[("a", 5), ("b", 7)]),
            )
            .unwrap();
        leader
            .credit_block_round("blk", &split(&[("a", 100), ("c", 50)]), None)
            .unwrap();
        leader.mature_block("blk").unwrap();
        leader.set_payout_min("a", 42).unwrap();
        leader.log_id("dp-a.0").unwrap();
        stream
            .down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let before = dump(&leader);
        let refused = leader.credit_block_round("blk2", &split(&[("a", 9)]), None);
        assert!(matches!(refused, Err(LedgerError::Replication(_))));
        assert_eq!(dump(&leader), before, "nothing written");
        stream
            .down
            .store(false, std::sync::atomic::Ordering::Relaxed);

        let mut standby = Ledger::open(standby_dir.path()).unwrap();
        let writes = stream.writes.lock().unwrap().clone();
        for (index, write) in writes.iter().enumerate() {
            assert!(standby.apply_replicated(write, index as u64 + 1).unwrap());
        }
        assert!(
            !standby.apply_replicated(&writes[0], 1).unwrap(),
            "seen twice"
        );
        assert_eq!(dump(&standby), dump(&leader));
        assert_eq!(standby.replica_position().unwrap(), writes.len() as u64);
        assert_eq!(standby.next_sequence, leader.next_sequence);

        // The standby takes over and writes on; the old leader, behind, is fenced off.
        standby.set_replicator(Some(Box::new(stream.clone())));
        standby
            .credit_block_round("blk3", &split(&[("d", 3)]), None)
            .unwrap();
        let fenced = leader.credit_block_round("blk4", &split(&[("e", 4)]), None);
        assert!(
            matches!(fenced, Err(LedgerError::Replication(_))),
            "{fenced:?}"
        );
        assert_eq!(standby.balances("d").unwrap().immature, 3);
    }

    /// A mirrored log keeps its id across opens, and no two names share one.
    #[test]
    fn a_mirrored_log_is_given_one_id_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let a = ledger.log_id("dp-a.0").unwrap();
        let b = ledger.log_id("dp-b.0").unwrap();
        assert_eq!(a, CLUSTER_LOG_ID_BASE);
        assert_eq!(b, a + 1);
        assert_eq!(ledger.log_id("dp-a.0").unwrap(), a);
        drop(ledger);
        let mut ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.log_id("dp-b.0").unwrap(), b);
        assert_eq!(ledger.log_id("dp-a.1").unwrap(), b + 1);
    }

    #[test]
    fn share_credits_move_the_cursor_in_the_same_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let cursors = BTreeMap::from([(0u32, 10u64)]);
        let credits = split(&[("a", 5)]);
        assert_eq!(
            ledger.credit_shares(&cursors, &credits).unwrap(),
            Applied::Done
        );
        assert_eq!(
            ledger.credit_shares(&cursors, &credits).unwrap(),
            Applied::AlreadyDone
        );
        assert_eq!(ledger.share_cursor(0).unwrap(), Some(10));
        assert_eq!(ledger.share_cursor(1).unwrap(), None);
        assert_eq!(ledger.pps_credited().unwrap(), 5);
        assert_eq!(ledger.balances("a").unwrap().mature, 5);
    }
}
