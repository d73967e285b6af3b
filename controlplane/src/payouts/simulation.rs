//! A seeded simulation of the whole payout path: the real `PayoutRunner` over two real
//! share logs (written by the data plane's own writer, as two data-plane processes would),
//! a real block store and a real RocksDB ledger, with random shares, found blocks (some
//! recorded before their share is written, some refused by the node), orphans, credit
//! passes and payout runs, a crash after any ledger write of a pass or any step of a
//! payout, and a wallet that loses requests and replies and refuses some outright.
//!
//! A crash drops the runner with everything it held in memory (history, tails, the open
//! ledger) and starts a new one from disk the way `PayoutRunner::run` does; the share logs
//! and the block store stay, as the data planes and the chain do. After every step the
//! simulation checks that:
//! - every transaction the node holds is exactly one intent's, so nothing is paid that the
//!   ledger does not know about, and no batch is paid twice;
//! - balances plus payments equal what was credited: the rewards of credited blocks not
//!   orphaned, plus the PPS/FPPS credit of exactly the shares before the ledger's cursors,
//!   computed here from the shares this simulation wrote, not from what the runner did.
//!
//! At the end, with faults off, every block is credited and settled and everything owed
//! is paid; the node's totals match the ledger's to the unit; and each block's credits are
//! the split of exactly its round as this simulation cuts it on its own: every share of
//! both logs in (stamp, process, sequence) order, rounds ending at each accepted block's
//! own share record.
//!
//! Every scheme runs on `SEEDS / 6` seeds, and each must have seen crashes, payments,
//! confirmations and wallet refusals. A failure names its seed; `OTEDAMA_SIM_SEED=N`
//! replays one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};

use bitcoin::bech32::{self, Hrp};
use futures_channel::mpsc::UnboundedReceiver;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use otedama_shared::hex32::display_hex;
use otedama_shared::ShareRecord;
use otedama_sharelog::writer::{read_share_log, Completed, ShareLog};

use super::runner::{share_log_tails, PayoutRunner, PayoutSettings};
use crate::api::now_ms;
use crate::stats::{BlockValue, PoolState};
use otedama_chain::blocks::{BlockRecord, BlockStore};
use otedama_chain::coin::{Coin, CoinParams, Network};
use otedama_ledger::ledger::{EntryKind, IntentState, Ledger};
use otedama_ledger::lifecycle::BlockStatus;
use otedama_ledger::payments::{self, PayoutPolicy, SignedPayment, TxStatus, Wallet, WalletError};
use otedama_ledger::schemes::{per_share_credit, split_block, Round, RoundShare, Scheme};
use otedama_ledger::shares::{ShareHistory, ShareKey};

const STEPS_PER_SEED: usize = 300;
/// Seeds run; each scheme gets `SEEDS / 6` of them (scheme = `SCHEMES[seed % 6]`), and the
/// coverage (crashes, payments, confirmations, wallet refusals) is checked per scheme.
const SEEDS: u64 = 18;
/// Data-plane processes, each with its own share log.
const PROCESSES: usize = 2;
const MINERS: u8 = 5;
const FEE_ACCOUNT: &str = "pool-fee";
const SCHEMES: [Scheme; 6] = [
    Scheme::Pplns { window_factor: 2.0 },
    Scheme::Prop,
    Scheme::Pplnt { presence_min: 0.5 },
    Scheme::Solo,
    Scheme::Pps,
    Scheme::Fpps,
];
const POOL_FEE_PPM: u64 = 12_345;
const PAYOUT_MIN: u64 = 10_000;
const PAYOUT_CONFIRMATIONS: u64 = 3;
/// The block value PPS/FPPS credit shares at, and the network difficulty they are
/// weighed against.
const SUBSIDY: u64 = 2_500_000_000;
const FEES_MEAN: u64 = 40_000_000;
const NETWORK_DIFFICULTY: f64 = 1_000.0;

/// What the fake node holds: every transaction it accepted, by txid, with its outputs and
/// how many blocks it has been mined under.
#[derive(Default)]
struct Node {
    held: BTreeMap<String, (BTreeMap<String, u64>, u64)>,
    built: u64,
    /// Requests the wallet refused outright (funds short, fee too low).
    refusals: u64,
}

impl Node {
    fn received(&self) -> BTreeMap<String, u64> {
        let mut received = BTreeMap::new();
        for (outputs, _) in self.held.values() {
            for (account, amount) in outputs {
                *received.entry(account.clone()).or_insert(0) += amount;
            }
        }
        received
    }

    /// One block mined: it takes every transaction in the mempool.
    fn mine(&mut self) {
        for (_, confirmations) in self.held.values_mut() {
            *confirmations += 1;
        }
    }
}

/// The node's wallet as the payer sees it, losing requests and replies with `fault_pct`,
/// and refusing some outright (as often: the coverage check needs some in every scheme
/// whatever the timing) as a real wallet does when its funds are short or a fee is too low.
///
/// Every call also checks that the runner's ledger is unlocked: the payout thread must
/// never hold it across a wallet call (issue 16), whichever path a run takes.
struct FlakyWallet {
    node: Arc<Mutex<Node>>,
    rng: StdRng,
    fault_pct: Arc<AtomicU32>,
    ledger: Arc<Mutex<Ledger>>,
}

impl FlakyWallet {
    fn ledger_is_free(&self) {
        assert!(
            self.ledger.try_lock().is_ok(),
            "a wallet call was made with the ledger locked"
        );
    }

    fn fails(&mut self) -> bool {
        self.ledger_is_free();
        self.rng.gen_range(0..100) < self.fault_pct.load(SeqCst)
    }

    fn refuses(&mut self) -> bool {
        let refuses = self.rng.gen_range(0..100) < self.fault_pct.load(SeqCst);
        self.node.lock().unwrap().refusals += refuses as u64;
        refuses
    }
}

impl Wallet for FlakyWallet {
    fn build_payment(
        &mut self,
        outputs: &BTreeMap<String, u64>,
    ) -> Result<SignedPayment, WalletError> {
        if self.fails() {
            return Err(WalletError::Unreachable("build lost".into()));
        }
        if self.refuses() {
            return Err(WalletError::Refused("insufficient funds".into()));
        }
        // Each build spends different coins, so it is a different transaction.
        let mut node = self.node.lock().unwrap();
        node.built += 1;
        let raw_tx = serde_json::to_string(&(node.built, outputs)).expect("encodable");
        let txid = hex::encode(Sha256::digest(raw_tx.as_bytes()));
        Ok(SignedPayment { raw_tx, txid })
    }

    fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError> {
        if self.fails() {
            return Err(WalletError::Unreachable("request lost".into()));
        }
        if self.refuses() {
            return Err(WalletError::Refused("min relay fee not met".into()));
        }
        let (_, outputs): (u64, BTreeMap<String, u64>) =
            serde_json::from_str(raw_tx).expect("a transaction this wallet built");
        let txid = hex::encode(Sha256::digest(raw_tx.as_bytes()));
        self.node
            .lock()
            .unwrap()
            .held
            .entry(txid)
            .or_insert((outputs, 0));
        if self.fails() {
            return Err(WalletError::Unreachable("reply lost".into()));
        }
        Ok(())
    }

    fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError> {
        if self.fails() {
            return Err(WalletError::Unreachable("request lost".into()));
        }
        Ok(self.node.lock().unwrap().held.contains_key(txid))
    }

    fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError> {
        if self.fails() {
            return Err(WalletError::Unreachable("request lost".into()));
        }
        Ok(match self.node.lock().unwrap().held.get(txid) {
            Some((_, 0)) => TxStatus::InMempool,
            Some((_, confirmations)) => TxStatus::Confirmed(*confirmations),
            None => TxStatus::Unknown,
        })
    }

    fn pays_outputs(&mut self, _: &str, _: &[(Vec<u8>, u64)]) -> Result<bool, WalletError> {
        self.ledger_is_free();
        Ok(false)
    }

    /// Every transaction this wallet builds stays minable.
    fn never_minable(&mut self, _: &str) -> Result<Option<String>, WalletError> {
        self.ledger_is_free();
        Ok(None)
    }

    fn release_stale_locks(&mut self, _: &[&str]) -> Result<usize, WalletError> {
        self.ledger_is_free();
        Ok(0)
    }

    fn sends_since(&mut self, _: u64) -> Result<Vec<String>, WalletError> {
        self.ledger_is_free();
        Ok(self.node.lock().unwrap().held.keys().cloned().collect())
    }
}

/// One share this simulation wrote, as it knows it apart from the runner.
struct Written {
    address: String,
    difficulty: f64,
    /// The block it found, if it is a block share.
    block: Option<String>,
}

/// One data-plane process's share log, written by the data plane's own writer.
struct DataPlane {
    path: PathBuf,
    log: Option<ShareLog>,
    durable: UnboundedReceiver<Completed>,
    /// Every share written, in log order: index = sequence.
    written: Vec<Written>,
}

impl DataPlane {
    fn open(path: PathBuf) -> Self {
        let (completions, durable) = futures_channel::mpsc::unbounded();
        // Unsynced: the simulation's crashes are the control plane's, not the disk's.
        let log = ShareLog::open(&path, false, vec![completions]).expect("share log opens");
        DataPlane {
            path,
            log: Some(log),
            durable,
            written: Vec::new(),
        }
    }

    /// Appends a share and waits until the writer has stored it, as the data plane waits
    /// before a miner hears `true`.
    fn append(&mut self, record: &ShareRecord, written: Written) {
        let log = self.log.as_ref().expect("open");
        log.handle().append(0, record).expect("queued");
        loop {
            match self.durable.try_recv() {
                Ok(done) => {
                    done.result.expect("stored");
                    break;
                }
                Err(futures_channel::mpsc::TryRecvError::Closed) => {
                    panic!("the share log writer stopped")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
            }
        }
        self.written.push(written);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Pending,
    Confirmed,
    Orphaned,
}

struct FoundBlock {
    record: BlockRecord,
    process: usize,
    /// The block's share, until it is written to its log.
    share: Option<ShareRecord>,
    /// Whether the block store has its record yet (submission can take a while).
    recorded: bool,
    fate: Fate,
}

struct Simulation {
    rng: StdRng,
    dir: tempfile::TempDir,
    runner: Option<PayoutRunner>,
    blocks_store: Arc<BlockStore>,
    planes: Vec<DataPlane>,
    node: Arc<Mutex<Node>>,
    scheme: Scheme,
    miners: Vec<String>,
    blocks: Vec<FoundBlock>,
    now_ms: u64,
    crash_pct: Arc<AtomicU32>,
    fault_pct: Arc<AtomicU32>,
    /// Set when the payout fault hook stopped a run (the process died there).
    stopped: Arc<AtomicBool>,
    crashes: u32,
}

pub(crate) fn regtest_address(index: u8) -> String {
    let hrp = Hrp::parse("rltc").expect("valid hrp");
    bech32::segwit::encode_v0(hrp, &[index + 1; 20]).expect("valid program")
}

fn per_share(scheme: Scheme) -> bool {
    matches!(scheme, Scheme::Pps | Scheme::Fpps)
}

impl Simulation {
    fn new(seed: u64) -> Self {
        let scheme = SCHEMES[(seed % SCHEMES.len() as u64) as usize];
        let dir = tempfile::tempdir().expect("temp dir");
        let planes = (0..PROCESSES)
            .map(|index| DataPlane::open(dir.path().join(format!("shares-{index}"))))
            .collect();
        let blocks_store =
            Arc::new(BlockStore::open(&dir.path().join("blocks")).expect("block store opens"));
        let mut sim = Simulation {
            rng: StdRng::seed_from_u64(seed),
            dir,
            runner: None,
            blocks_store,
            planes,
            node: Arc::default(),
            scheme,
            miners: (0..MINERS).map(regtest_address).collect(),
            blocks: Vec::new(),
            now_ms: 1_000_000,
            crash_pct: Arc::new(AtomicU32::new(8)),
            fault_pct: Arc::new(AtomicU32::new(15)),
            stopped: Arc::default(),
            crashes: 0,
        };
        sim.start_runner();
        sim
    }

    /// A control plane's payout thread, started from what is on disk.
    fn start_runner(&mut self) {
        let root = self.dir.path();
        let ledger = Ledger::open(&root.join("ledger")).expect("ledger opens");
        let logs: Vec<PathBuf> = self.planes.iter().map(|p| p.path.clone()).collect();
        let tails = share_log_tails(
            &ledger,
            &logs,
            logs.len(),
            root,
            per_share(self.scheme),
            None,
        )
        .expect("tails");
        let pool = PoolState::new(0, 0);
        pool.set_block_value(BlockValue {
            subsidy: SUBSIDY,
            fees_mean: FEES_MEAN,
            network_difficulty: NETWORK_DIFFICULTY,
        });
        let crash_pct = self.crash_pct.clone();
        let stopped = self.stopped.clone();
        let mut stop_rng = StdRng::seed_from_u64(self.rng.gen());
        let ledger = Arc::new(Mutex::new(ledger));
        let mut runner = PayoutRunner {
            ledger: ledger.clone(),
            history: Arc::new(Mutex::new(ShareHistory::default())),
            settings: Arc::new(RwLock::new(PayoutSettings {
                scheme: self.scheme,
                pool_fee_ppm: POOL_FEE_PPM,
                fee_account: FEE_ACCOUNT.into(),
                payout_interval_s: 3600,
                payout_confirmations: PAYOUT_CONFIRMATIONS,
                policy: PayoutPolicy {
                    payout_min: PAYOUT_MIN,
                    address_rule: CoinParams::new(Coin::Litecoin, Network::Regtest).address,
                    never_pay: vec![FEE_ACCOUNT.to_string()],
                    frozen: Default::default(),
                    kyc: None,
                },
            })),
            blocks: self.blocks_store.clone(),
            pool,
            audit: Arc::new(crate::audit::AuditLog::open(&root.join("audit")).expect("audit")),
            tails,
            mirrored: None,
            cluster: None,
            wallet: Some(Box::new(FlakyWallet {
                node: self.node.clone(),
                rng: StdRng::seed_from_u64(self.rng.gen()),
                fault_pct: self.fault_pct.clone(),
                ledger,
            })),
            fault: Box::new(move |_| {
                let stop = stop_rng.gen_range(0..100) < crash_pct.load(SeqCst);
                stopped.fetch_or(stop, SeqCst);
                stop
            }),
            kyc_notices: None,
            next_follow_ms: 0,
            cut_waits: BTreeMap::new(),
            // Every block share is written in the end; never cut a round by time here.
            block_share_wait_ms: u64::MAX / 4,
            next_floors_ms: 0,
            restore_hold_dir: None,
            replay: None,
            dex: Default::default(),
        };
        runner.start(self.now_ms);
        self.runner = Some(runner);
    }

    fn runner(&mut self) -> &mut PayoutRunner {
        self.runner.as_mut().expect("running between steps")
    }

    /// A `kill -9` of the control plane and a restart: only what its stores wrote survives.
    fn crash_and_restart(&mut self) {
        self.crashes += 1;
        drop(self.runner.take());
        self.start_runner();
    }

    fn crashes_now(&mut self) -> bool {
        self.rng.gen_range(0..100) < self.crash_pct.load(SeqCst)
    }

    fn share_record(&mut self, worker: &str, is_block: bool) -> (ShareRecord, f64) {
        let difficulty = f64::from(self.rng.gen_range(1u32..=64)) / 4.0;
        let mut header = [0u8; 80];
        self.rng.fill(&mut header[..]);
        let record = ShareRecord {
            // The writer stamps it; this is the session's time, replaced.
            accepted_at_ms: 0,
            job_id: 1,
            height: 500,
            worker: worker.into(),
            difficulty,
            achieved_difficulty: difficulty,
            is_block,
            header,
            extranonce1: vec![0; 4],
            extranonce2: vec![0; 4],
            protocol: None,
        };
        (record, difficulty)
    }

    fn add_share(&mut self) {
        let miner = self.miners[self.rng.gen_range(0..self.miners.len())].clone();
        let worker = format!("{miner}.rig{}", self.rng.gen_range(0..3));
        let process = self.rng.gen_range(0..PROCESSES);
        let (record, difficulty) = self.share_record(&worker, false);
        self.planes[process].append(
            &record,
            Written {
                address: miner,
                difficulty,
                block: None,
            },
        );
    }

    /// A block share: the node may take or refuse the block, and its record may reach the
    /// block store before the share reaches the log, or some steps after (a submission
    /// that takes a while, while later blocks are found and their rounds could be cut).
    fn find_block(&mut self) {
        let finder = self.miners[self.rng.gen_range(0..self.miners.len())].clone();
        let process = self.rng.gen_range(0..PROCESSES);
        let (share, _) = self.share_record(&format!("{finder}.rig0"), true);
        let hash = display_hex(&otedama_kernels::sha256d(&share.header));
        let refused = self.rng.gen_range(0..100) < 10;
        let record = BlockRecord {
            hash,
            height: 500 + self.blocks.len() as u64,
            worker: share.worker.clone(),
            job_id: 1,
            submitted_at_ms: now_ms(),
            rejected_reason: refused.then(|| "bad-txns-inputs-missingorspent".into()),
            reward: self.rng.gen_range(100_000_000..5_000_000_000),
            status: BlockStatus::Pending,
            confirmations: 0,
            // The difficulty moves between blocks, so windows span changes.
            network_difficulty: f64::from(self.rng.gen_range(1u32..=8)) * 10.0,
            header: hex::encode(share.header),
            // The session's time, whole seconds: never after the writer's stamp.
            found_at_ms: now_ms() / 1000 * 1000,
        };
        let mut block = FoundBlock {
            record,
            process,
            share: Some(share),
            recorded: false,
            fate: Fate::Pending,
        };
        match self.rng.gen_range(0..3) {
            0 => {
                self.write_block_share(&mut block);
                self.record_block(&mut block);
            }
            1 => self.record_block(&mut block),
            _ => self.write_block_share(&mut block),
        }
        self.blocks.push(block);
    }

    fn record_block(&mut self, block: &mut FoundBlock) {
        if !block.recorded {
            self.blocks_store
                .record(&block.record, true)
                .expect("block recorded");
            block.recorded = true;
        }
    }

    fn write_block_share(&mut self, block: &mut FoundBlock) {
        if let Some(share) = block.share.take() {
            self.planes[block.process].append(
                &share,
                Written {
                    address: otedama_shared::address::payout_address_of(&share.worker).into(),
                    difficulty: share.difficulty,
                    block: Some(block.record.hash.clone()),
                },
            );
        }
    }

    /// Block shares recorded before they were written reach their logs, and blocks whose
    /// shares were written first get their records.
    fn write_late_block_shares(&mut self) {
        let mut blocks = std::mem::take(&mut self.blocks);
        for block in &mut blocks {
            self.write_block_share(block);
            self.record_block(block);
        }
        self.blocks = blocks;
    }

    fn decide_a_fate(&mut self) {
        let pending = self.blocks.iter().position(|b| {
            b.fate == Fate::Pending
                && b.record.rejected_reason.is_none()
                && b.share.is_none()
                && b.recorded
        });
        if let Some(index) = pending {
            let (fate, status, confirmations) = if self.rng.gen_range(0..100) < 80 {
                (Fate::Confirmed, BlockStatus::Confirmed, 101)
            } else {
                (Fate::Orphaned, BlockStatus::Orphaned, -1)
            };
            self.blocks[index].fate = fate;
            let hash = self.blocks[index].record.hash.clone();
            self.blocks_store
                .update_status(&hash, status, confirmations)
                .expect("status stored");
        }
    }

    /// One pass of the payout thread, dying after a random number of its ledger writes
    /// now and then; returns `false` if it died.
    fn credit_pass(&mut self) -> bool {
        let crash = self.crashes_now();
        let commits = self.rng.gen_range(0..4);
        let now_ms = self.now_ms;
        let runner = self.runner();
        if crash {
            runner.ledger.lock().unwrap().crash_after_commits(commits);
        }
        match runner.pass(now_ms) {
            Ok(()) => !crash,
            Err(_) if crash => false,
            Err(error) => panic!("a pass failed without a fault: {error:#}"),
        }
    }

    /// A payout run; returns `false` if the process died inside it.
    fn payout_run(&mut self) -> bool {
        let now_ms = self.now_ms;
        self.stopped.store(false, SeqCst);
        let result = self.runner().pay(now_ms);
        if self.stopped.load(SeqCst) {
            return false;
        }
        match result {
            // A wallet failure leaves the ledger as it was, or the intent open to retry.
            Ok(_) => !self.crashes_now(),
            Err(error)
                if error
                    .downcast_ref::<payments::PayoutError>()
                    .is_some_and(|e| matches!(e, payments::PayoutError::Wallet(_))) =>
            {
                !self.crashes_now()
            }
            Err(error) => panic!("payout run failed: {error:#}"),
        }
    }

    fn step(&mut self) {
        self.now_ms += self.rng.gen_range(100..30_000);
        let survived = match self.rng.gen_range(0..100) {
            0..=39 => {
                self.add_share();
                true
            }
            40..=45 => {
                self.find_block();
                true
            }
            46..=49 => {
                self.write_late_block_shares();
                true
            }
            50..=57 => {
                self.decide_a_fate();
                true
            }
            58..=61 => {
                self.node.lock().unwrap().mine();
                true
            }
            62..=81 => self.credit_pass(),
            _ => self.payout_run(),
        };
        if !survived {
            self.crash_and_restart();
        }
    }

    /// The PPS/FPPS credit of each process's shares before `cursors`, computed from what
    /// was written, apart from the runner.
    fn share_credits(&self, cursors: &[usize]) -> u64 {
        let value = match self.scheme {
            Scheme::Fpps => SUBSIDY + FEES_MEAN,
            _ => SUBSIDY,
        };
        self.planes
            .iter()
            .zip(cursors)
            .flat_map(|(plane, cursor)| &plane.written[..*cursor])
            .map(|share| {
                per_share_credit(value, POOL_FEE_PPM, share.difficulty, NETWORK_DIFFICULTY)
            })
            .sum()
    }

    fn check(&mut self, context: &str) {
        let ledger = self.runner().ledger.clone();
        let ledger = ledger.lock().unwrap();
        let intents = ledger.intents().expect("intents");
        let balances = ledger.all_balances().expect("balances");
        let node = self.node.lock().unwrap();
        ledger.assert_intent_indexes(context);

        // Nothing is paid that the ledger does not know about, and no batch twice.
        let mut by_txid = BTreeMap::new();
        for intent in &intents {
            assert!(
                by_txid.insert(intent.txid.clone(), intent).is_none(),
                "{context}: two intents share txid {}",
                intent.txid
            );
            if matches!(intent.state, IntentState::Sent | IntentState::Confirmed) {
                assert!(
                    node.held.contains_key(&intent.txid),
                    "{context}: batch {} is recorded as sent but the node never got it",
                    intent.batch_id
                );
            }
        }
        for (txid, (outputs, _)) in &node.held {
            let intent = by_txid.get(txid).unwrap_or_else(|| {
                panic!("{context}: the node holds {txid}, which no intent names")
            });
            assert_eq!(
                &intent.outputs, outputs,
                "{context}: batch {}",
                intent.batch_id
            );
        }
        let open_intents = intents
            .iter()
            .filter(|i| i.state == IntentState::Open)
            .count();
        assert!(
            open_intents <= 1,
            "{context}: {open_intents} intents open at once"
        );

        // Per account: the node paid at least what the ledger calls paid, and at most that
        // plus what is in flight.
        let received = node.received();
        for (account, b) in &balances {
            let got = received.get(account).copied().unwrap_or(0);
            assert!(
                got >= b.paid && got <= b.paid + b.paying,
                "{context}: {account} received {got}, ledger says paid {} paying {}",
                b.paid,
                b.paying
            );
        }
        drop(node);

        // Balances plus payments equal what was credited.
        let mut credited_rewards = 0u64;
        for block in &self.blocks {
            use otedama_ledger::ledger::BlockState;
            match ledger.block_state(&block.record.hash).expect("state") {
                Some(BlockState::Immature | BlockState::Mature) => {
                    credited_rewards += block.record.reward
                }
                Some(BlockState::Orphaned) | None => {}
            }
        }
        let cursors: Vec<usize> = (0..PROCESSES as u32)
            .map(|p| ledger.share_cursor(p).expect("cursor").unwrap_or(0) as usize)
            .collect();
        let share_credits = self.share_credits(&cursors);
        assert_eq!(
            ledger.pps_credited().expect("pps"),
            share_credits,
            "{context}: PPS credited exactly the shares before its cursors {cursors:?}"
        );
        let total: u64 = balances.values().map(|b| b.total()).sum();
        assert_eq!(
            total,
            credited_rewards + share_credits,
            "{context}: balances plus payments must equal credited rewards"
        );
    }

    /// Every block's credits as this simulation cuts its round on its own, from the logs'
    /// records in (stamp, process, sequence) order.
    fn expected_block_credits(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut all: Vec<(ShareKey, &Written)> = Vec::new();
        for (process, plane) in self.planes.iter().enumerate() {
            let stored = read_share_log(&plane.path).expect("log reads");
            assert_eq!(stored.len(), plane.written.len(), "every share stored");
            for (sequence, (record, written)) in stored.iter().zip(&plane.written).enumerate() {
                assert_eq!(record.difficulty, written.difficulty);
                let key = ShareKey {
                    accepted_at_ms: record.accepted_at_ms,
                    process: process as u32,
                    sequence: sequence as u64,
                };
                all.push((key, written));
            }
        }
        all.sort_by_key(|(key, _)| *key);
        let accepted: BTreeMap<&str, &FoundBlock> = self
            .blocks
            .iter()
            .filter(|b| b.record.rejected_reason.is_none())
            .map(|b| (b.record.hash.as_str(), b))
            .collect();
        let mut expected = BTreeMap::new();
        let mut round_start = 0;
        for (end, (key, written)) in all.iter().enumerate() {
            let Some(block) = written.block.as_deref().and_then(|h| accepted.get(h)) else {
                continue;
            };
            let shares_newest_first: Vec<RoundShare> = all[..=end]
                .iter()
                .rev()
                .map(|(key, w)| RoundShare {
                    address: w.address.clone(),
                    difficulty: w.difficulty,
                    accepted_at_ms: key.accepted_at_ms,
                })
                .collect();
            let round = Round {
                finder: written.address.as_str(),
                shares_newest_first: &shares_newest_first,
                round_shares: end + 1 - round_start,
                network_difficulty: block.record.network_difficulty,
                start_ms: round_start
                    .checked_sub(1)
                    .map_or(0, |previous| all[previous].0.accepted_at_ms),
                end_ms: key.accepted_at_ms,
            };
            let split = split_block(self.scheme, block.record.reward, POOL_FEE_PPM, &round);
            let mut credits = split.credits;
            if split.pool > 0 {
                *credits.entry(FEE_ACCOUNT.to_string()).or_insert(0) += split.pool;
            }
            expected.insert(block.record.hash.clone(), credits);
            round_start = end + 1;
        }
        expected
    }

    /// Faults off: every block share written and every block settled, passes until every
    /// credit lands, and payouts until nothing is owed.
    fn drain(&mut self) {
        self.crash_pct.store(0, SeqCst);
        self.fault_pct.store(0, SeqCst);
        self.write_late_block_shares();
        for index in 0..self.blocks.len() {
            if self.blocks[index].fate == Fate::Pending
                && self.blocks[index].record.rejected_reason.is_none()
            {
                self.blocks[index].fate = Fate::Confirmed;
                let hash = self.blocks[index].record.hash.clone();
                self.blocks_store
                    .update_status(&hash, BlockStatus::Confirmed, 101)
                    .expect("status stored");
            }
        }
        self.crash_and_restart();
        // Passes until the logs' clocks pass the last block share and every block is in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let accepted = self
            .blocks
            .iter()
            .filter(|b| b.record.rejected_reason.is_none())
            .count();
        loop {
            let now_ms = self.now_ms;
            self.runner().pass(now_ms).expect("a pass without faults");
            let ledger = self.runner().ledger.clone();
            let ledger = ledger.lock().unwrap();
            let settled = self.blocks.iter().all(|b| {
                b.record.rejected_reason.is_some()
                    || ledger
                        .block_state(&b.record.hash)
                        .expect("state")
                        .is_some_and(|s| s != otedama_ledger::ledger::BlockState::Immature)
            });
            let credited_all = !per_share(self.scheme)
                || (0..PROCESSES).all(|p| {
                    ledger.share_cursor(p as u32).expect("cursor").unwrap_or(0)
                        == self.planes[p].written.len() as u64
                });
            if settled && credited_all {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let states: Vec<String> = self
                    .blocks
                    .iter()
                    .map(|b| {
                        format!(
                            "{} {:?} found {} state {:?}",
                            &b.record.hash[..8],
                            b.record.rejected_reason,
                            b.record.found_at_ms,
                            ledger.block_state(&b.record.hash).expect("state")
                        )
                    })
                    .collect();
                drop(ledger);
                let runner = self.runner();
                let logs: Vec<u64> = runner
                    .tails
                    .iter()
                    .map(|t| t.written_through_ms())
                    .collect();
                panic!(
                    "{accepted} accepted blocks never all credited and settled (PPS cursors done: {credited_all}); logs read through {logs:?}; blocks {states:#?}"
                );
            }
            drop(ledger);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for _ in 0..5 {
            // Past any back-off, and with every payment confirmed.
            self.now_ms += payments::BROADCAST_RETRY_MAX_MS;
            assert!(self.payout_run());
            for _ in 0..PAYOUT_CONFIRMATIONS {
                self.node.lock().unwrap().mine();
            }
            self.now_ms += super::runner::PAYOUT_FOLLOW_INTERVAL_MS;
            let now_ms = self.now_ms;
            self.runner().pass(now_ms).expect("a pass without faults");
        }
        self.check("after draining");

        let ledger = self.runner().ledger.clone();
        let ledger = ledger.lock().unwrap();
        // Each block's credits are exactly its round's split.
        let expected = self.expected_block_credits();
        let mut credited: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for entry in ledger.entries().expect("entries") {
            if entry.kind == EntryKind::BlockCredit {
                *credited
                    .entry(entry.reference.clone())
                    .or_default()
                    .entry(entry.account.clone())
                    .or_insert(0) += entry.amount;
            }
        }
        for (hash, credits) in &expected {
            let got = credited.get(hash).cloned().unwrap_or_default();
            assert_eq!(&got, credits, "block {hash}: credits are its round's split");
        }
        assert_eq!(
            credited.len(),
            expected.len(),
            "every accepted block credited once"
        );

        assert!(ledger.open_intents().expect("intents").is_empty());
        for intent in ledger.intents().expect("intents") {
            assert_eq!(
                intent.state,
                IntentState::Confirmed,
                "batch {}",
                intent.batch_id
            );
        }
        let received = self.node.lock().unwrap().received();
        for miner in &self.miners {
            let b = ledger.balances(miner).expect("balances");
            assert_eq!(b.immature, 0, "{miner}: every block settled");
            assert_eq!(b.paying, 0, "{miner}: nothing in flight");
            assert!(
                b.mature < PAYOUT_MIN,
                "{miner}: everything payable was paid: {b:?}"
            );
            assert_eq!(received.get(miner).copied().unwrap_or(0), b.paid, "{miner}");
        }
        let confirmed: u64 = self
            .blocks
            .iter()
            .filter(|b| b.fate == Fate::Confirmed)
            .map(|b| b.record.reward)
            .sum();
        let fee_account = ledger.balances(FEE_ACCOUNT).expect("balances");
        let miners_total: u64 = self
            .miners
            .iter()
            .map(|m| ledger.balances(m).expect("balances").total())
            .sum();
        assert_eq!(
            miners_total + fee_account.total(),
            confirmed + ledger.pps_credited().expect("pps"),
            "every confirmed unit is someone's"
        );
    }

    fn close(mut self) {
        drop(self.runner.take());
        for plane in &mut self.planes {
            if let Some(log) = plane.log.take() {
                log.close();
            }
        }
    }
}

/// What one seed's run went through.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    crashes: u32,
    payments: usize,
    confirmed: usize,
    refusals: u64,
    blocks_credited: usize,
}

fn simulate(seed: u64) -> Coverage {
    let mut sim = Simulation::new(seed);
    for step in 0..STEPS_PER_SEED {
        sim.step();
        sim.check(&format!("seed {seed}, step {step}"));
    }
    let refusals = sim.node.lock().unwrap().refusals;
    // Payouts followed to their confirmations while the faults were on.
    let confirmed = sim
        .runner()
        .ledger
        .lock()
        .unwrap()
        .intents()
        .expect("intents")
        .iter()
        .filter(|i| i.state == IntentState::Confirmed)
        .count();
    sim.drain();
    let node = sim.node.lock().unwrap();
    let coverage = Coverage {
        crashes: sim.crashes,
        payments: node.held.len(),
        confirmed,
        refusals,
        blocks_credited: sim
            .blocks
            .iter()
            .filter(|b| b.record.rejected_reason.is_none())
            .count(),
    };
    drop(node);
    sim.close();
    coverage
}

#[test]
fn seeded_crashes_never_pay_twice_and_never_lose_a_unit() {
    let seeds: Vec<u64> = match std::env::var("OTEDAMA_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("OTEDAMA_SIM_SEED is a number")],
        Err(_) => (0..SEEDS).collect(),
    };
    let replay_one = seeds.len() == 1;
    let mut per_scheme: BTreeMap<String, Coverage> = BTreeMap::new();
    for seed in seeds {
        let scheme = format!("{:?}", SCHEMES[(seed % SCHEMES.len() as u64) as usize]);
        match std::panic::catch_unwind(|| simulate(seed)) {
            Ok(run) => {
                let total = per_scheme.entry(scheme).or_default();
                total.crashes += run.crashes;
                total.payments += run.payments;
                total.confirmed += run.confirmed;
                total.refusals += run.refusals;
                total.blocks_credited += run.blocks_credited;
            }
            Err(_) => panic!(
                "payout simulation failed with seed {seed} ({scheme}); replay it with OTEDAMA_SIM_SEED={seed}"
            ),
        }
    }
    println!("payout simulation per scheme: {per_scheme:?}");
    if replay_one {
        return;
    }
    // Every scheme must have exercised what the simulation claims to.
    assert_eq!(per_scheme.len(), SCHEMES.len(), "{per_scheme:?}");
    for (scheme, run) in &per_scheme {
        assert!(
            run.crashes > 0
                && run.payments > 0
                && run.confirmed > 0
                && run.refusals > 0
                && run.blocks_credited > 0,
            "{scheme}: {run:?}"
        );
    }
}
