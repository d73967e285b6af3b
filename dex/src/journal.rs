//! The exchange's journal in RocksDB: every command the exchange accepted, in order, under
//! its sequence number, and snapshots of the whole state that bound how much of the
//! journal a restart replays. `Dex` ties it together: check, append, then apply, so no
//! event leaves before its command is in the journal.

use std::path::Path;

use rocksdb::{IteratorMode, Options, WriteBatch, WriteOptions, DB};

use crate::book::Event;
use crate::book::{NewOrder, OrderKind, SelfTradePrevention, Side, TimeInForce};
use crate::exchange::{Command, Exchange, ExchangeReject, State};

const JOURNAL_PREFIX: u8 = b'j';
const SNAPSHOT_PREFIX: u8 = b's';
/// Cluster mode: the replicated stream's position of the last write applied here (8
/// bytes, big-endian). Its prefix sorts between the journal's and the snapshots', and
/// its length differs from theirs, so neither's scan ever takes it.
pub const REPLICA_POSITION_KEY: &[u8] = b"r/position";

/// Cluster mode: every journal write passes here before it is made. The gate sends the
/// batch to the replicated stream, then may add to it (its stream position); an error
/// stops the write, and nothing is written here.
pub type WriteGate = Box<dyn FnMut(&mut WriteBatch) -> Result<(), String> + Send>;
/// Longest encoded command, a `Replace`: tag, market, account, order id, price, quantity
/// (a limit `Place` takes 31 bytes, a market one 30).
pub const COMMAND_BYTES_MAX: usize = 1
    + std::mem::size_of::<crate::exchange::MarketId>()
    + std::mem::size_of::<crate::book::AccountId>()
    + std::mem::size_of::<crate::book::OrderId>()
    + 2 * std::mem::size_of::<u64>();

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("journal entry {0} is corrupt")]
    Corrupt(u64),
    #[error("snapshot {0} is corrupt: {1}")]
    CorruptSnapshot(u64, String),
    #[error("journal entry {sequence} does not apply: {reject}")]
    Diverged {
        sequence: u64,
        reject: ExchangeReject,
    },
    #[error("journal has a gap: expected entry {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    /// Cluster mode: the write was not made durable in the replicated stream first, so it
    /// was not made here either (whether the stream holds it, a catch-up says).
    #[error("journal write not replicated: {0}")]
    Replication(String),
}

/// The stream position stored in `db` under `REPLICA_POSITION_KEY`; 0 if none.
pub fn replica_position(db: &DB) -> Result<u64, JournalError> {
    match db.get(REPLICA_POSITION_KEY)? {
        None => Ok(0),
        Some(bytes) => Ok(u64::from_be_bytes(bytes.as_slice().try_into().map_err(
            |_| JournalError::Replication("the stored stream position is not 8 bytes".into()),
        )?)),
    }
}

/// The highest sequence stored under `prefix`.
fn last_key(db: &DB, prefix: u8) -> Result<Option<u64>, rocksdb::Error> {
    let mut newest = db.iterator(IteratorMode::From(
        &key(prefix, u64::MAX),
        rocksdb::Direction::Reverse,
    ));
    Ok(match newest.next().transpose()? {
        Some((k, _)) if k.len() == 9 && k[0] == prefix => {
            Some(u64::from_be_bytes(k[1..9].try_into().expect("9-byte key")))
        }
        _ => None,
    })
}

fn key(prefix: u8, sequence: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// A compact, fixed-layout encoding (little-endian): the journal is on the hot path.
pub fn encode(command: &Command, out: &mut Vec<u8>) {
    match *command {
        Command::Deposit {
            account,
            asset,
            amount,
        } => {
            out.push(1);
            out.extend_from_slice(&account.to_le_bytes());
            out.extend_from_slice(&asset.to_le_bytes());
            out.extend_from_slice(&amount.to_le_bytes());
        }
        Command::Withdraw {
            account,
            asset,
            amount,
        } => {
            out.push(2);
            out.extend_from_slice(&account.to_le_bytes());
            out.extend_from_slice(&asset.to_le_bytes());
            out.extend_from_slice(&amount.to_le_bytes());
        }
        Command::Place { market, order } => {
            out.push(3);
            out.extend_from_slice(&market.to_le_bytes());
            out.extend_from_slice(&order.account.to_le_bytes());
            out.push(order.side as u8);
            match order.kind {
                OrderKind::Limit {
                    price,
                    time_in_force,
                } => {
                    out.push(0);
                    out.extend_from_slice(&price.to_le_bytes());
                    out.push(time_in_force as u8);
                }
                OrderKind::Market { quote_max } => {
                    out.push(1);
                    out.extend_from_slice(&quote_max.to_le_bytes());
                }
            }
            out.extend_from_slice(&order.quantity.to_le_bytes());
            out.push(order.self_trade_prevention as u8);
        }
        Command::Cancel {
            market,
            account,
            order_id,
        } => {
            out.push(4);
            out.extend_from_slice(&market.to_le_bytes());
            out.extend_from_slice(&account.to_le_bytes());
            out.extend_from_slice(&order_id.to_le_bytes());
        }
        Command::Replace {
            market,
            account,
            order_id,
            price,
            quantity,
        } => {
            out.push(5);
            out.extend_from_slice(&market.to_le_bytes());
            out.extend_from_slice(&account.to_le_bytes());
            out.extend_from_slice(&order_id.to_le_bytes());
            out.extend_from_slice(&price.to_le_bytes());
            out.extend_from_slice(&quantity.to_le_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

pub fn decode(bytes: &[u8]) -> Option<Command> {
    let mut r = Reader(bytes);
    let command = match r.u8()? {
        1 => Command::Deposit {
            account: r.u64()?,
            asset: r.u16()?,
            amount: r.u64()?,
        },
        2 => Command::Withdraw {
            account: r.u64()?,
            asset: r.u16()?,
            amount: r.u64()?,
        },
        3 => {
            let market = r.u16()?;
            let account = r.u64()?;
            let side = match r.u8()? {
                0 => Side::Buy,
                1 => Side::Sell,
                _ => return None,
            };
            let kind = match r.u8()? {
                0 => OrderKind::Limit {
                    price: r.u64()?,
                    time_in_force: match r.u8()? {
                        0 => TimeInForce::Gtc,
                        1 => TimeInForce::Ioc,
                        2 => TimeInForce::Fok,
                        3 => TimeInForce::PostOnly,
                        _ => return None,
                    },
                },
                1 => OrderKind::Market {
                    quote_max: r.u64()?,
                },
                _ => return None,
            };
            let quantity = r.u64()?;
            let self_trade_prevention = match r.u8()? {
                0 => SelfTradePrevention::CancelNewest,
                1 => SelfTradePrevention::CancelOldest,
                2 => SelfTradePrevention::CancelBoth,
                _ => return None,
            };
            Command::Place {
                market,
                order: NewOrder {
                    account,
                    side,
                    kind,
                    quantity,
                    self_trade_prevention,
                },
            }
        }
        4 => Command::Cancel {
            market: r.u16()?,
            account: r.u64()?,
            order_id: r.u64()?,
        },
        5 => Command::Replace {
            market: r.u16()?,
            account: r.u64()?,
            order_id: r.u64()?,
            price: r.u64()?,
            quantity: r.u64()?,
        },
        _ => return None,
    };
    r.0.is_empty().then_some(command)
}

pub struct Journal {
    db: DB,
    write_options: WriteOptions,
    /// The sequence the next appended command gets (the first is 1).
    next_sequence: u64,
    buffer: Vec<u8>,
    /// Cluster mode: the replicated stream, ahead of every write.
    gate: Option<WriteGate>,
}

impl Journal {
    /// Opens (or creates) the journal. With `sync`, every append waits for the WAL's fsync.
    pub fn open(path: &Path, sync: bool) -> Result<Self, JournalError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        let next_sequence = last_key(&db, JOURNAL_PREFIX)?.map_or(1, |last| last + 1);
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        Ok(Journal {
            db,
            write_options,
            next_sequence,
            buffer: Vec::with_capacity(COMMAND_BYTES_MAX),
            gate: None,
        })
    }

    /// Cluster mode: sends every later write through `gate` before making it.
    pub fn set_gate(&mut self, gate: Option<WriteGate>) {
        self.gate = gate;
    }

    /// The write every append makes: through the gate first, if there is one.
    fn write(&mut self, mut batch: WriteBatch) -> Result<(), JournalError> {
        if let Some(gate) = self.gate.as_mut() {
            gate(&mut batch).map_err(JournalError::Replication)?;
        }
        self.db.write_opt(batch, &self.write_options)?;
        Ok(())
    }

    /// Cluster mode: the stream position of the last write applied here; 0 before any.
    pub fn replica_position(&self) -> Result<u64, JournalError> {
        replica_position(&self.db)
    }

    /// Cluster mode, a standby's step: makes a write another control plane replicated at
    /// `position` (its batch, byte for byte), with that position, and no gate. The
    /// commands it adds are applied to an exchange by `replay_into`.
    pub fn apply_replicated(&mut self, batch: &[u8], position: u64) -> Result<(), JournalError> {
        let mut batch = WriteBatch::from_data(batch);
        batch.put(REPLICA_POSITION_KEY, position.to_be_bytes());
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        self.next_sequence = last_key(&self.db, JOURNAL_PREFIX)?.map_or(1, |last| last + 1);
        Ok(())
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Appends one command; when this returns, it is in the journal.
    pub fn append(&mut self, command: &Command) -> Result<u64, JournalError> {
        self.buffer.clear();
        encode(command, &mut self.buffer);
        let sequence = self.next_sequence;
        let mut batch = WriteBatch::default();
        batch.put(key(JOURNAL_PREFIX, sequence), &self.buffer);
        self.write(batch)?;
        self.next_sequence += 1;
        Ok(sequence)
    }

    /// The command at `sequence`, if the journal holds it.
    pub fn command_at(&self, sequence: u64) -> Result<Option<Command>, JournalError> {
        match self.db.get(key(JOURNAL_PREFIX, sequence))? {
            Some(bytes) => decode(&bytes)
                .map(Some)
                .ok_or(JournalError::Corrupt(sequence)),
            None => Ok(None),
        }
    }

    /// Appends several commands in one write (group commit).
    pub fn append_all(&mut self, commands: &[Command]) -> Result<(), JournalError> {
        let mut batch = WriteBatch::default();
        for (i, command) in commands.iter().enumerate() {
            self.buffer.clear();
            encode(command, &mut self.buffer);
            batch.put(
                key(JOURNAL_PREFIX, self.next_sequence + i as u64),
                &self.buffer,
            );
        }
        self.write(batch)?;
        self.next_sequence += commands.len() as u64;
        Ok(())
    }

    /// Stores the exchange's whole state at its sequence.
    pub fn save_snapshot(&self, exchange: &Exchange) -> Result<(), JournalError> {
        let state = serde_json::to_vec(&exchange.state()).expect("state serializes");
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .put_opt(key(SNAPSHOT_PREFIX, exchange.applied()), state, &options)?;
        Ok(())
    }

    /// The newest snapshot, if any.
    pub fn latest_snapshot(&self) -> Result<Option<State>, JournalError> {
        let Some(sequence) = last_key(&self.db, SNAPSHOT_PREFIX)? else {
            return Ok(None);
        };
        let value = self
            .db
            .get(key(SNAPSHOT_PREFIX, sequence))?
            .ok_or(JournalError::CorruptSnapshot(sequence, "vanished".into()))?;
        serde_json::from_slice(&value)
            .map(Some)
            .map_err(|e| JournalError::CorruptSnapshot(sequence, e.to_string()))
    }

    /// Applies every journal entry after `exchange.applied()`, in order.
    pub fn replay_into(&self, exchange: &mut Exchange) -> Result<u64, JournalError> {
        let mut events = Vec::new();
        let mut replayed = 0;
        let start = key(JOURNAL_PREFIX, exchange.applied() + 1);
        for entry in self
            .db
            .iterator(IteratorMode::From(&start, rocksdb::Direction::Forward))
        {
            let (k, value) = entry?;
            if k[0] != JOURNAL_PREFIX {
                break;
            }
            let sequence = u64::from_be_bytes(k[1..9].try_into().expect("9-byte key"));
            let expected = exchange.applied() + 1;
            if sequence != expected {
                return Err(JournalError::Gap {
                    expected,
                    found: sequence,
                });
            }
            let command = decode(&value).ok_or(JournalError::Corrupt(sequence))?;
            events.clear();
            exchange
                .handle(&command, &mut events)
                .map_err(|reject| JournalError::Diverged { sequence, reject })?;
            replayed += 1;
        }
        Ok(replayed)
    }

    /// The exchange as the journal says it is: the newest snapshot (or `empty`) plus the
    /// entries after it.
    pub fn recover(&self, empty: Exchange) -> Result<Exchange, JournalError> {
        let mut exchange = match self.latest_snapshot()? {
            Some(state) => Exchange::restore(&state),
            None => empty,
        };
        self.replay_into(&mut exchange)?;
        Ok(exchange)
    }
}

/// The exchange behind its journal.
pub struct Dex {
    pub exchange: Exchange,
    pub journal: Journal,
}

impl Dex {
    /// Opens the journal at `path` and recovers the exchange from it; `empty` is the
    /// exchange before the journal's first entry.
    pub fn open(path: &Path, sync: bool, empty: Exchange) -> Result<Self, JournalError> {
        let journal = Journal::open(path, sync)?;
        let exchange = journal.recover(empty)?;
        if exchange.applied() + 1 != journal.next_sequence() {
            return Err(JournalError::Gap {
                expected: exchange.applied() + 1,
                found: journal.next_sequence(),
            });
        }
        Ok(Dex { exchange, journal })
    }

    /// Checks, journals, then applies `command`; the events come out only after the
    /// command is in the journal.
    pub fn submit(
        &mut self,
        command: &Command,
        events: &mut Vec<Event>,
    ) -> Result<Result<(), ExchangeReject>, JournalError> {
        if let Err(reject) = self.exchange.check(command) {
            return Ok(Err(reject));
        }
        self.journal.append(command)?;
        self.exchange.apply(command, events);
        Ok(Ok(()))
    }
}
