//! A seeded simulation of the payout path against a real RocksDB ledger: random shares,
//! found blocks, orphans, credit passes and payout runs, with a crash after any step of
//! crediting or paying and a node that drops requests and replies at random.
//!
//! Every ledger step is one atomic RocksDB batch, so a crash anywhere is, as far as the
//! ledger can tell, a crash between two steps: the simulation crashes by dropping the
//! ledger (and everything the payout thread held in memory) between steps, reopening it
//! from disk, and starting again the way `PayoutRunner::run` does, by reconciling open
//! intents. After every step it checks that:
//! - every transaction the node holds is exactly one intent's, so nothing is paid that the
//!   ledger does not know about, and no batch is paid twice;
//! - balances plus payments equal what was credited: the rewards of credited blocks not
//!   orphaned, plus every PPS/FPPS share credit;
//! - PPS/FPPS credited exactly the shares before the ledger's cursor.
//!
//! At the end, with faults off, everything owed is paid and the node's totals match the
//! ledger's to the unit. Every scheme runs on `SEEDS / 6` seeds, and each must have seen
//! crashes, payments and wallet refusals. A failure names its seed; `OTEDAMA_SIM_SEED=N`
//! replays one.

use std::collections::BTreeMap;

use bitcoin::bech32::{self, Hrp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::ledger::{BlockState, IntentState, Ledger};
use super::payments::{
    self, PayoutPolicy, RunReport, SignedPayment, TxStatus, Wallet, WalletError,
};
use super::schemes::{per_share_credit, split_block, Round, RoundShare, Scheme};
use crate::chain::coin::{Coin, CoinParams, Network};

const STEPS_PER_SEED: usize = 400;
/// Seeds run; each scheme gets `SEEDS / 6` of them (scheme = `SCHEMES[seed % 6]`), and the
/// coverage (crashes, payments, wallet refusals) is checked per scheme.
const SEEDS: u64 = 18;
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
/// PPS/FPPS's value of a block, and the network difficulty the shares are weighed against.
const BLOCK_VALUE: u64 = 2_500_000_000;
const NETWORK_DIFFICULTY: f64 = 1_000.0;

/// What the fake node holds: every transaction it accepted, by txid, with its outputs.
#[derive(Default)]
struct Node {
    held: BTreeMap<String, BTreeMap<String, u64>>,
    built: u64,
    /// Requests the wallet refused outright (funds short, fee too low).
    refusals: u64,
}

impl Node {
    fn received(&self) -> BTreeMap<String, u64> {
        let mut received = BTreeMap::new();
        for outputs in self.held.values() {
            for (account, amount) in outputs {
                *received.entry(account.clone()).or_insert(0) += amount;
            }
        }
        received
    }
}

/// The node's wallet as the payer sees it, losing requests and replies with `fault_pct`,
/// and refusing some outright (a third as often) as a real wallet does when its funds
/// are short or a fee is too low.
struct FlakyWallet<'a> {
    node: &'a mut Node,
    rng: &'a mut StdRng,
    fault_pct: u32,
}

impl FlakyWallet<'_> {
    fn fails(&mut self) -> bool {
        self.rng.gen_range(0..100) < self.fault_pct
    }

    fn refuses(&mut self) -> bool {
        let refuses = self.rng.gen_range(0..300) < self.fault_pct;
        self.node.refusals += refuses as u64;
        refuses
    }
}

impl Wallet for FlakyWallet<'_> {
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
        self.node.built += 1;
        let raw_tx = serde_json::to_string(&(self.node.built, outputs)).expect("encodable");
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
        self.node.held.entry(txid).or_insert(outputs);
        if self.fails() {
            return Err(WalletError::Unreachable("reply lost".into()));
        }
        Ok(())
    }

    fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError> {
        if self.fails() {
            return Err(WalletError::Unreachable("request lost".into()));
        }
        Ok(self.node.held.contains_key(txid))
    }

    /// This node mines nothing: what it holds stays in its mempool.
    fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError> {
        Ok(match self.knows_transaction(txid)? {
            true => TxStatus::InMempool,
            false => TxStatus::Unknown,
        })
    }

    fn pays_outputs(&mut self, _: &str, _: &[(Vec<u8>, u64)]) -> Result<bool, WalletError> {
        Ok(false)
    }

    /// Every transaction this wallet builds stays minable.
    fn never_minable(&mut self, _: &str) -> Result<Option<String>, WalletError> {
        Ok(None)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Pending,
    Confirmed,
    Orphaned,
}

struct FoundBlock {
    hash: String,
    reward: u64,
    finder: String,
    at_ms: u64,
    network_difficulty: f64,
    fate: Fate,
}

struct Simulation {
    rng: StdRng,
    dir: tempfile::TempDir,
    ledger: Option<Ledger>,
    node: Node,
    scheme: Scheme,
    policy: PayoutPolicy,
    miners: Vec<String>,
    /// The share log of one data-plane process; a share's sequence is its index.
    shares: Vec<RoundShare>,
    blocks: Vec<FoundBlock>,
    now_ms: u64,
    crash_pct: u32,
    fault_pct: u32,
    crashes: u32,
}

pub(crate) fn regtest_address(index: u8) -> String {
    let hrp = Hrp::parse("rltc").expect("valid hrp");
    bech32::segwit::encode_v0(hrp, &[index + 1; 20]).expect("valid program")
}

impl Simulation {
    fn new(seed: u64) -> Self {
        let rng = StdRng::seed_from_u64(seed);
        let scheme = SCHEMES[(seed % SCHEMES.len() as u64) as usize];
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(&dir.path().join("ledger")).expect("ledger opens");
        Simulation {
            rng,
            ledger: Some(ledger),
            dir,
            node: Node::default(),
            scheme,
            policy: PayoutPolicy {
                payout_min: PAYOUT_MIN,
                address_rule: CoinParams::new(Coin::Litecoin, Network::Regtest).address,
                never_pay: vec![FEE_ACCOUNT.to_string()],
                frozen: Default::default(),
                kyc: None,
            },
            miners: (0..MINERS).map(regtest_address).collect(),
            shares: Vec::new(),
            blocks: Vec::new(),
            now_ms: 1_000_000,
            crash_pct: 10,
            fault_pct: 15,
            crashes: 0,
        }
    }

    fn ledger(&mut self) -> &mut Ledger {
        self.ledger.as_mut().expect("open between steps")
    }

    /// Whether the process dies right after the step just taken.
    fn crash_now(&mut self) -> bool {
        self.rng.gen_range(0..100) < self.crash_pct
    }

    /// A `kill -9` and a restart: only what the ledger wrote survives, and the restarted
    /// payout thread reconciles open intents before anything else.
    fn crash_and_restart(&mut self) {
        self.crashes += 1;
        drop(self.ledger.take());
        self.ledger = Some(Ledger::open(&self.dir.path().join("ledger")).expect("ledger reopens"));
        self.reconcile();
    }

    fn reconcile(&mut self) {
        let mut ledger = self.ledger.take().expect("open");
        let mut wallet = FlakyWallet {
            node: &mut self.node,
            rng: &mut self.rng,
            fault_pct: self.fault_pct,
        };
        let mut report = RunReport::default();
        // A node that cannot be reached leaves the intents open for the next run.
        let _ = payments::reconcile(&mut ledger, &mut wallet, self.now_ms, &mut report);
        self.ledger = Some(ledger);
    }

    fn add_share(&mut self) {
        let miner = self.miners[self.rng.gen_range(0..self.miners.len())].clone();
        let difficulty = f64::from(self.rng.gen_range(1u32..=64)) / 4.0;
        self.shares.push(RoundShare {
            address: miner,
            difficulty,
            accepted_at_ms: self.now_ms,
        });
    }

    fn find_block(&mut self) {
        let finder = self.miners[self.rng.gen_range(0..self.miners.len())].clone();
        self.blocks.push(FoundBlock {
            hash: format!("{:064x}", self.blocks.len() + 1),
            reward: self.rng.gen_range(100_000_000..5_000_000_000),
            finder,
            at_ms: self.now_ms,
            // The difficulty moves between blocks, so windows span changes.
            network_difficulty: f64::from(self.rng.gen_range(1u32..=8)) * 10.0,
            fate: Fate::Pending,
        });
    }

    fn decide_a_fate(&mut self) {
        let pending: Vec<usize> = (0..self.blocks.len())
            .filter(|i| self.blocks[*i].fate == Fate::Pending)
            .collect();
        if let Some(&index) = pending.first() {
            self.blocks[index].fate = if self.rng.gen_range(0..100) < 80 {
                Fate::Confirmed
            } else {
                Fate::Orphaned
            };
        }
    }

    /// The PPS/FPPS credit of shares `from..to`, computed apart from the ledger.
    fn share_credits(&self, from: usize, to: usize) -> BTreeMap<String, u64> {
        let mut credits = BTreeMap::new();
        for share in &self.shares[from..to] {
            let credit = per_share_credit(
                BLOCK_VALUE,
                POOL_FEE_PPM,
                share.difficulty,
                NETWORK_DIFFICULTY,
            );
            if credit > 0 {
                *credits.entry(share.address.clone()).or_insert(0) += credit;
            }
        }
        credits
    }

    /// One pass of the payout thread, as its atomic steps; returns `false` if the process
    /// died after one of them.
    fn credit_pass(&mut self) -> bool {
        if matches!(self.scheme, Scheme::Pps | Scheme::Fpps) {
            let from = self.ledger().share_cursor(0).expect("cursor").unwrap_or(0) as usize;
            let to = self.rng.gen_range(from..=self.shares.len());
            if to > from {
                let credits = self.share_credits(from, to);
                let cursors = BTreeMap::from([(0u32, to as u64)]);
                self.ledger()
                    .credit_shares(&cursors, &credits)
                    .expect("credit shares");
                if self.crash_now() {
                    return false;
                }
            }
        }
        for index in 0..self.blocks.len() {
            let hash = self.blocks[index].hash.clone();
            if self.ledger().block_state(&hash).expect("state").is_none() {
                let credits = self.block_credits(index);
                self.ledger()
                    .credit_block(&hash, &credits)
                    .expect("credit block");
                if self.crash_now() {
                    return false;
                }
            }
            let settled = match (
                self.ledger().block_state(&hash).expect("state"),
                self.blocks[index].fate,
            ) {
                (Some(BlockState::Immature), Fate::Confirmed) => {
                    self.ledger().mature_block(&hash).expect("mature");
                    true
                }
                (Some(BlockState::Immature), Fate::Orphaned) => {
                    self.ledger().orphan_block(&hash).expect("orphan");
                    true
                }
                _ => false,
            };
            if settled && self.crash_now() {
                return false;
            }
        }
        true
    }

    /// A block's split as the payout thread computes it: its round runs from the previous
    /// block, and everything not credited to a miner goes to the pool's account.
    fn block_credits(&self, index: usize) -> BTreeMap<String, u64> {
        let block = &self.blocks[index];
        let shares: Vec<RoundShare> = self
            .shares
            .iter()
            .rev()
            .filter(|s| s.accepted_at_ms <= block.at_ms)
            .cloned()
            .collect();
        let start_ms = index.checked_sub(1).map_or(0, |p| self.blocks[p].at_ms);
        let round = Round {
            finder: &block.finder,
            shares_newest_first: &shares,
            round_shares: shares
                .iter()
                .take_while(|s| s.accepted_at_ms > start_ms)
                .count(),
            network_difficulty: block.network_difficulty,
            start_ms,
            end_ms: block.at_ms,
        };
        let split = split_block(self.scheme, block.reward, POOL_FEE_PPM, &round);
        let mut credits = split.credits;
        if split.pool > 0 {
            *credits.entry(FEE_ACCOUNT.to_string()).or_insert(0) += split.pool;
        }
        credits
    }

    /// A payout run; returns `false` if the process died inside it.
    fn payout_run(&mut self) -> bool {
        let mut ledger = self.ledger.take().expect("open");
        let crash_pct = self.crash_pct;
        let mut stop_rng = StdRng::seed_from_u64(self.rng.gen());
        let mut wallet = FlakyWallet {
            node: &mut self.node,
            rng: &mut self.rng,
            fault_pct: self.fault_pct,
        };
        let mut stop_at = |_| stop_rng.gen_range(0..100) < crash_pct;
        let result = payments::run(
            &mut ledger,
            &mut wallet,
            &self.policy,
            self.now_ms,
            &mut stop_at,
        );
        self.ledger = Some(ledger);
        match result {
            Err(payments::PayoutError::Stopped(_)) => false,
            Err(payments::PayoutError::Ledger(error)) => panic!("ledger failed: {error}"),
            // A wallet failure leaves the ledger as it was, or the intent open to retry.
            Err(payments::PayoutError::Wallet(_)) | Ok(_) => !self.crash_now(),
        }
    }

    fn step(&mut self) {
        self.now_ms += self.rng.gen_range(100..30_000);
        let survived = match self.rng.gen_range(0..100) {
            0..=39 => {
                self.add_share();
                true
            }
            40..=47 => {
                self.find_block();
                true
            }
            48..=57 => {
                self.decide_a_fate();
                true
            }
            58..=77 => self.credit_pass(),
            _ => self.payout_run(),
        };
        if !survived {
            self.crash_and_restart();
        }
    }

    fn check(&mut self, context: &str) {
        let ledger = self.ledger.as_ref().expect("open");
        let intents = ledger.intents().expect("intents");
        let balances = ledger.all_balances().expect("balances");

        // Nothing is paid that the ledger does not know about, and no batch twice.
        let mut by_txid = BTreeMap::new();
        for intent in &intents {
            assert!(
                by_txid.insert(intent.txid.clone(), intent).is_none(),
                "{context}: two intents share txid {}",
                intent.txid
            );
            if intent.state == IntentState::Sent {
                assert!(
                    self.node.held.contains_key(&intent.txid),
                    "{context}: batch {} is recorded as sent but the node never got it",
                    intent.batch_id
                );
            }
        }
        for (txid, outputs) in &self.node.held {
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
        let received = self.node.received();
        for (account, b) in &balances {
            let got = received.get(account).copied().unwrap_or(0);
            assert!(
                got >= b.paid && got <= b.paid + b.paying,
                "{context}: {account} received {got}, ledger says paid {} paying {}",
                b.paid,
                b.paying
            );
        }

        // Balances plus payments equal what was credited.
        let mut credited_rewards = 0u64;
        for block in &self.blocks {
            match ledger.block_state(&block.hash).expect("state") {
                Some(BlockState::Immature | BlockState::Mature) => credited_rewards += block.reward,
                Some(BlockState::Orphaned) | None => {}
            }
        }
        let cursor = ledger.share_cursor(0).expect("cursor").unwrap_or(0) as usize;
        let share_credits: u64 = self.share_credits(0, cursor).values().sum();
        assert_eq!(
            ledger.pps_credited().expect("pps"),
            share_credits,
            "{context}: PPS credited exactly the shares before its cursor"
        );
        let total: u64 = balances.values().map(|b| b.total()).sum();
        assert_eq!(
            total,
            credited_rewards + share_credits,
            "{context}: balances plus payments must equal credited rewards"
        );
    }

    /// Faults off: every block settles, every credit lands, and payouts run until nothing
    /// is owed.
    fn drain(&mut self) {
        self.crash_pct = 0;
        self.fault_pct = 0;
        for block in &mut self.blocks {
            if block.fate == Fate::Pending {
                block.fate = Fate::Confirmed;
            }
        }
        self.crash_and_restart();
        assert!(self.credit_pass());
        if matches!(self.scheme, Scheme::Pps | Scheme::Fpps) {
            // The pass credits a random prefix of the log; finish it.
            while self.ledger().share_cursor(0).expect("cursor").unwrap_or(0)
                < self.shares.len() as u64
            {
                assert!(self.credit_pass());
            }
        }
        for _ in 0..5 {
            // Past any back-off.
            self.now_ms += payments::BROADCAST_RETRY_MAX_MS;
            assert!(self.payout_run());
        }
        self.check("after draining");
        let ledger = self.ledger.as_ref().expect("open");
        assert!(ledger.open_intents().expect("intents").is_empty());
        let received = self.node.received();
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
            .map(|b| b.reward)
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
}

/// What one seed's run went through.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    crashes: u32,
    payments: usize,
    refusals: u64,
}

fn simulate(seed: u64) -> Coverage {
    let mut sim = Simulation::new(seed);
    for step in 0..STEPS_PER_SEED {
        sim.step();
        sim.check(&format!("seed {seed}, step {step}"));
    }
    let refusals = sim.node.refusals;
    sim.drain();
    Coverage {
        crashes: sim.crashes,
        payments: sim.node.held.len(),
        refusals,
    }
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
                total.refusals += run.refusals;
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
            run.crashes > 0 && run.payments > 0 && run.refusals > 0,
            "{scheme}: {run:?}"
        );
    }
}
