//! Cluster mode: the exchange on every control plane, run by the leader alone.
//!
//! Every write the exchange makes (a journal entry, an account or API key) goes first to
//! the replicated exchange stream, fenced on the stream position of the last write this
//! control plane applied, exactly as the ledger's writes go to theirs
//! (`otedama_cluster::ledger`). A standby applies the same writes in the same order and
//! replays the journal entries into its own book, so it holds the leader's exchange.
//!
//! Invariants:
//! - Only the leader takes commands (`ensure_leads`): a standby answers 503.
//! - On taking over, the new leader reads the stream to its end and then writes a fence
//!   of its own (the start count, which also keeps key-challenge serials rising across
//!   leaders). A write the former leader still had on its way is fenced on an earlier
//!   position, so after the fence it can no longer land: the pending transfers the new
//!   leader then settles, from what it read, stay settled (no deposit given twice).
//! - A write the stream did not take is not made here either. After any failed write the
//!   exchange takes no command until it is taken over again (the payout thread's next
//!   pass): the take-over reads whether the stream holds the write after all, and settles
//!   a transfer it left pending before anything else takes the journal's next sequence.

use super::*;

use otedama_cluster::ledger::{LedgerStream, Step};
use otedama_dex::journal::REPLICA_POSITION_KEY;

/// Batches of the exchange stream (up to `LEDGER_WRITES_PER_FETCH_MAX` writes, or 2 s,
/// each) a standby reads in one pass at most, holding the exchange's lock.
pub const STANDBY_FETCHES_PER_PASS_MAX: usize = 2;

/// The first byte of each stream message: which store the write is for.
const JOURNAL_WRITE: u8 = b'j';
const ACCOUNTS_WRITE: u8 = b'a';

/// How often the exchange stream's size is asked at most, and how long an answer may take.
const ROOM_CHECK_INTERVAL_MS: u64 = 1_000;
const ROOM_CHECK_WAIT_MS: u64 = 2_000;

/// In the accounts store, with every accounts write the leader makes: the journal's stream
/// position at that moment. A journal found behind it at open was lost or restored older
/// than the accounts, and its book would be stale.
const JOURNAL_SEEN_KEY: &[u8] = b"r/journal-position";

/// Cluster mode: the exchange stream and this control plane's place in it.
pub struct Replication {
    pub stream: LedgerStream,
    /// Whether this control plane holds the leader's lease now.
    pub leading: Arc<otedama_cluster::host::LeaseStatus>,
    /// Bytes of the stream past which user commands are refused
    /// (`exchange_stream_bytes_max`; the stream keeps a reserve beyond it for settling).
    bytes_max: u64,
    /// When the stream's size was last asked, and whether it was under `bytes_max`.
    room: Option<(std::time::Instant, bool)>,
    /// The stream position of the last write made or applied here.
    position: u64,
}

impl Replication {
    pub fn new(
        stream: LedgerStream,
        leading: Arc<otedama_cluster::host::LeaseStatus>,
        bytes_max: u64,
    ) -> Self {
        Replication {
            stream,
            leading,
            bytes_max,
            room: None,
            position: 0,
        }
    }

    /// Whether the stream has room for user commands, asked at most once a
    /// `ROOM_CHECK_INTERVAL_MS`; while it cannot be asked, the last answer stands.
    fn has_room(&mut self) -> bool {
        let fresh = self.room.is_some_and(|(at, _)| {
            at.elapsed() < std::time::Duration::from_millis(ROOM_CHECK_INTERVAL_MS)
        });
        if !fresh {
            let room = match self.stream.bytes(ROOM_CHECK_WAIT_MS) {
                Ok(bytes) => bytes < self.bytes_max,
                Err(error) => {
                    tracing::warn!(%error, "cannot ask the exchange stream's size");
                    self.room.is_none_or(|(_, room)| room)
                }
            };
            if !room && self.room.is_none_or(|(_, before)| before) {
                tracing::error!(
                    bytes_max = self.bytes_max,
                    "the exchange stream is full (exchange_stream_bytes_max): the exchange takes no more commands"
                );
            }
            self.room = Some((std::time::Instant::now(), room));
        }
        self.room.is_none_or(|(_, room)| room)
    }

    /// Sends `batch`, for the store `target`, to the stream right after the last write
    /// made here, and adds its stream position to it.
    fn replicate(&mut self, target: u8, batch: &mut rocksdb::WriteBatch) -> Result<(), String> {
        if !self.leading.held() {
            return Err("this control plane is not the leader".into());
        }
        let mut payload = Vec::with_capacity(1 + batch.size_in_bytes());
        payload.push(target);
        payload.extend_from_slice(batch.data());
        let position = self.stream.append(&payload, self.position)?;
        batch.put(REPLICA_POSITION_KEY, position.to_be_bytes());
        self.position = position;
        Ok(())
    }
}

pub type SharedReplication = Arc<Mutex<Replication>>;

/// Why a standby or a leader that lost its place takes no command.
pub(super) fn unavailable(why: impl std::fmt::Display) -> DexError {
    DexError::Unavailable(format!(
        "{why}: exchange commands go to the leading control plane"
    ))
}

impl DexService {
    /// Cluster mode: opens the exchange as a standby whose writes go through
    /// `replication`. It takes no command until `take_over`.
    pub fn open_replicated(
        dir: &Path,
        empty: Exchange,
        replication: Replication,
    ) -> anyhow::Result<Self> {
        let mut service = Self::open_store(dir, empty)?;
        let (journal, accounts) = service.store_positions()?;
        // Every command needs an account, and every take-over writes the accounts first:
        // a journal that followed the stream beside accounts that never did is a store
        // lost or restored on its own, whose account ids would be given again.
        if journal > 0 && accounts == 0 {
            anyhow::bail!(
                "the exchange journal in {} follows the exchange stream but its accounts store does not \
                 (lost or restored on its own): restore both from one backup, or start this control plane \
                 on a new exchange store",
                dir.display()
            );
        }
        let journal_seen = match service.accounts.get(JOURNAL_SEEN_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .context("the stored journal position is not 8 bytes")?,
            ),
            None => 0,
        };
        if journal < journal_seen {
            anyhow::bail!(
                "the exchange journal in {} is behind its accounts store (stream position {journal} \
                 against {journal_seen}: lost or restored on its own): restore both from one backup, \
                 or start this control plane on a new exchange store",
                dir.display()
            );
        }
        let position = journal.max(accounts);
        // Its history is not in the stream: a standby would get only what changes after.
        if position == 0 && (service.dex.exchange.applied() > 0 || service.next_account > 1) {
            anyhow::bail!(
                "this exchange has history that is not in the cluster's exchange stream (it was a single host's): \
                 start the cluster's control planes on new exchange stores"
            );
        }
        let replication = Arc::new(Mutex::new(Replication {
            position,
            ..replication
        }));
        let gate = replication.clone();
        service
            .dex
            .journal
            .set_gate(Some(Box::new(move |batch: &mut rocksdb::WriteBatch| {
                gate.lock()
                    .expect("replication lock")
                    .replicate(JOURNAL_WRITE, batch)
            })));
        service.replication = Some(replication);
        Ok(service)
    }

    /// The stream position of the last write applied here (0 outside cluster mode): the
    /// later of the journal's and the accounts', since each write goes to one of them and
    /// they are applied in order. The next write is fenced on it.
    pub fn replica_position(&self) -> anyhow::Result<u64> {
        let (journal, accounts) = self.store_positions()?;
        Ok(journal.max(accounts))
    }

    /// The stream positions of the last write applied to the journal and to the accounts.
    fn store_positions(&self) -> anyhow::Result<(u64, u64)> {
        let journal = self
            .dex
            .journal
            .replica_position()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let accounts = otedama_dex::journal::replica_position(&self.accounts)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((journal, accounts))
    }

    /// Whether this exchange takes commands: always outside cluster mode; in it, while
    /// this control plane holds the lease in the term it took the exchange over in (a
    /// lease lost and held again is a new term, whose take-over reads what another
    /// leader may have written in between).
    pub fn leads(&self) -> bool {
        match &self.replication {
            None => true,
            Some(replication) => {
                let leading = &replication.lock().expect("replication lock").leading;
                leading.held() && self.taken_term == Some(leading.term())
            }
        }
    }

    /// Refuses a command unless this exchange leads and its stream has room for it.
    pub fn ensure_leads(&mut self) -> Result<(), DexError> {
        if !self.leads() {
            return Err(unavailable(
                "this control plane does not run the exchange now",
            ));
        }
        if let Some(replication) = &self.replication {
            if !replication.lock().expect("replication lock").has_room() {
                return Err(DexError::Unavailable(
                    "the exchange stream is full (exchange_stream_bytes_max): the exchange takes no more commands"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Cluster mode, after a write that failed (not taken by the stream, or taken but not
    /// made here): no command until the next take-over.
    pub(super) fn lose_place(&mut self, error: &dyn std::fmt::Display) {
        if self.taken_term.take().is_some() {
            tracing::error!(%error, "exchange write failed; no command until the exchange stream is read again at the next pass");
        }
    }

    /// Every accounts write: through the stream first in cluster mode, then synced here.
    pub(super) fn write_accounts(&mut self, mut batch: rocksdb::WriteBatch) -> anyhow::Result<()> {
        if let Some(replication) = &self.replication {
            let journal = self
                .dex
                .journal
                .replica_position()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            batch.put(JOURNAL_SEEN_KEY, journal.to_be_bytes());
            let replicated = replication
                .lock()
                .expect("replication lock")
                .replicate(ACCOUNTS_WRITE, &mut batch);
            if let Err(error) = replicated {
                self.lose_place(&error);
                anyhow::bail!("exchange write not replicated: {error}");
            }
        }
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        if let Err(error) = self.accounts.write_opt(batch, &sync) {
            // The stream may hold what this store does not: it is read again first.
            self.lose_place(&error);
            return Err(error.into());
        }
        Ok(())
    }

    /// Cluster mode: applies every write in the stream after this exchange's position;
    /// how many. The leader reads to the end before it takes over
    /// (`STANDBY_FETCHES_PER_PASS_MAX` is for a standby's passes).
    pub fn catch_up(&mut self) -> anyhow::Result<usize> {
        self.catch_up_for(usize::MAX)
    }

    /// `catch_up`, reading at most `fetches_max` batches of the stream: a standby far
    /// behind (a first start, a leader writing as fast as it reads) catches up over
    /// several passes instead of holding the exchange's lock, and its pass, without end.
    fn catch_up_for(&mut self, fetches_max: usize) -> anyhow::Result<usize> {
        let Some(replication) = self.replication.clone() else {
            return Ok(0);
        };
        let stream = replication.lock().expect("replication lock").stream.clone();
        let mut chunks = otedama_cluster::ledger::LedgerChunks::default();
        let (mut read_through, mut applied) = (self.replica_position()?, 0);
        for _ in 0..fetches_max {
            let messages = stream
                .after(read_through)
                .map_err(|error| anyhow::anyhow!("reading the exchange stream: {error}"))?;
            let Some(last) = messages.last() else {
                break;
            };
            read_through = last.position;
            let steps: Vec<Step> = messages
                .into_iter()
                .flat_map(|message| chunks.take(message))
                .collect();
            applied += self.apply_steps(steps)?;
        }
        replication.lock().expect("replication lock").position = self.replica_position()?;
        // Every journal entry applied to the book: a replay that failed once is tried
        // again here, every pass, rather than leave the book behind its journal.
        self.dex
            .journal
            .replay_into(&mut self.dex.exchange)
            .map_err(|e| anyhow::anyhow!("replaying the exchange journal: {e}"))?;
        anyhow::ensure!(
            self.dex.exchange.applied() + 1 == self.dex.journal.next_sequence(),
            "the exchange's book ({}) is not at its journal's end ({})",
            self.dex.exchange.applied(),
            self.dex.journal.next_sequence() - 1
        );
        Ok(applied)
    }

    fn apply_steps(&mut self, steps: Vec<Step>) -> anyhow::Result<usize> {
        let mut applied = 0;
        for step in steps {
            let position = self.replica_position()?;
            match step {
                Step::Apply {
                    position: at,
                    batch,
                } if at > position => {
                    self.apply_replicated(&batch, at)?;
                    applied += 1;
                }
                Step::Skip { through } if through > position => {
                    let mut sync = rocksdb::WriteOptions::default();
                    sync.set_sync(true);
                    self.accounts
                        .put_opt(REPLICA_POSITION_KEY, through.to_be_bytes(), &sync)?;
                }
                _ => {}
            }
        }
        Ok(applied)
    }

    /// Makes one write the leader made at `position`, and brings what this process holds
    /// in memory (the book, the next account, the start count) up to it.
    fn apply_replicated(&mut self, payload: &[u8], position: u64) -> anyhow::Result<()> {
        match payload.split_first() {
            Some((&JOURNAL_WRITE, batch)) => {
                self.dex
                    .journal
                    .apply_replicated(batch, position)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let before = self.dex.exchange.applied();
                self.dex
                    .journal
                    .replay_into(&mut self.dex.exchange)
                    .map_err(|e| {
                        anyhow::anyhow!("replaying the exchange stream's write {position}: {e}")
                    })?;
                let after = self.dex.exchange.applied();
                if after / SNAPSHOT_INTERVAL_COMMANDS > before / SNAPSHOT_INTERVAL_COMMANDS {
                    if let Err(error) = self.dex.journal.save_snapshot(&self.dex.exchange) {
                        tracing::error!(%error, after, "exchange snapshot failed; replay will be longer");
                    }
                }
            }
            Some((&ACCOUNTS_WRITE, batch)) => {
                let mut batch = rocksdb::WriteBatch::from_data(batch);
                batch.put(REPLICA_POSITION_KEY, position.to_be_bytes());
                let mut sync = rocksdb::WriteOptions::default();
                sync.set_sync(true);
                self.accounts.write_opt(batch, &sync)?;
                self.next_account = next_account_id(&self.accounts)?;
                self.start_count = stored_start_count(&self.accounts)?;
            }
            _ => anyhow::bail!(
                "the exchange stream's write {position} is for no store this version knows"
            ),
        }
        Ok(())
    }

    /// Cluster mode, on taking over: reads the stream to its end, fences it with a write
    /// of its own (the next start count), then settles the transfers the former leader
    /// left pending. Until this returns `Ok`, the exchange takes no command; on an error
    /// the next pass tries again.
    pub fn take_over(&mut self, ledger: &mut Ledger) -> anyhow::Result<()> {
        self.taken_term = None;
        let Some(replication) = self.replication.clone() else {
            return Ok(());
        };
        let term = replication.lock().expect("replication lock").leading.term();
        self.catch_up()?;
        self.begin_start(ledger)?;
        self.taken_term = Some(term);
        tracing::warn!(
            applied = self.dex.exchange.applied(),
            start_count = self.start_count,
            "this control plane runs the exchange"
        );
        Ok(())
    }

    /// Cluster mode: this control plane no longer leads; it takes no command.
    pub fn step_down(&mut self) {
        if self.taken_term.take().is_some() {
            tracing::warn!("this control plane no longer runs the exchange");
        }
    }
}

/// Cluster mode, at every payout pass, with the ledger read to the stream's end: a
/// standby's exchange follows the leader's; a leader's is taken over once in each term
/// it leads, with the ledger fenced in that term first (`ledger_fenced` if the caller
/// did). Whether it took the exchange over now.
pub fn follow_leadership(
    dex: &mut DexService,
    ledger: &Mutex<Ledger>,
    leads: bool,
    ledger_fenced: bool,
) -> anyhow::Result<bool> {
    if !leads {
        dex.step_down();
        dex.catch_up_for(STANDBY_FETCHES_PER_PASS_MAX)?;
        return Ok(false);
    }
    if dex.leads() {
        return Ok(false);
    }
    // Read first, without the ledger's lock: the take-over's own catch-up then finds
    // little or nothing.
    dex.catch_up()?;
    // Lock order: the exchange (the caller's), then the ledger.
    let mut ledger = ledger.lock().expect("ledger lock");
    if !ledger_fenced {
        ledger.fence()?;
    }
    dex.take_over(&mut ledger)?;
    Ok(true)
}

/// The id the next new account gets: one past the highest (ids are given in order from 1).
pub(super) fn next_account_id(accounts: &DB) -> anyhow::Result<AccountId> {
    let mut end = ADDRESS_PREFIX.to_vec();
    end.extend_from_slice(&u64::MAX.to_be_bytes());
    let mut newest = accounts.iterator(rocksdb::IteratorMode::From(
        &end,
        rocksdb::Direction::Reverse,
    ));
    match newest.next().transpose()? {
        Some((key, _))
            if key.len() == ADDRESS_PREFIX.len() + 8 && key.starts_with(ADDRESS_PREFIX) =>
        {
            let id: [u8; 8] = key[ADDRESS_PREFIX.len()..].try_into().expect("8 bytes");
            Ok(u64::from_be_bytes(id) + 1)
        }
        _ => Ok(1),
    }
}

/// The start count kept in the accounts store; 0 before the first start.
pub(super) fn stored_start_count(accounts: &DB) -> anyhow::Result<u64> {
    Ok(match accounts.get(START_COUNT_KEY)? {
        Some(stored) => u64::from_be_bytes(
            stored
                .as_slice()
                .try_into()
                .context("the stored start count is not 8 bytes")?,
        ),
        None => 0,
    })
}
