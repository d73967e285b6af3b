//! Payout runs: mature balances become one batched transaction from the node's wallet,
//! paid exactly once whatever crashes in between.
//!
//! A run has three steps, and a crash between any two is safe:
//! 1. the wallet funds and signs a transaction paying every account at or above its
//!    threshold (nothing is broadcast, nothing is written);
//! 2. the intent (batch id, outputs, raw transaction, txid) is written in the same atomic
//!    batch as the debits (mature → paying);
//! 3. the transaction is broadcast, and once the node holds it the intent is completed
//!    (paying → paid).
//!
//! On every run, and so after every restart, open intents are reconciled first: if the
//! node knows the txid the intent completes; otherwise the same raw transaction is
//! broadcast again, with exponential back-off between failures. A new batch is never
//! built while an intent is open, so no second transaction can spend what the first one
//! was built from, and the first stays the only one that can pay its outputs.
//!
//! Invariant: no wallet call is made with the ledger locked. A wallet RPC can take its
//! whole timeout (30 s), and the API, the exchange and the operator write through the same
//! lock; they must never wait for the node. This holds because intents are written by the
//! payout thread alone (the API asks it through `PayoutRequest`), so an intent read before
//! a call is still the ledger's when its outcome is written; and a batch funded with the
//! ledger free is written only if it still pays exactly what is payable then (`run`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use otedama_shared::address::{script_for_address, AddressRule};

use crate::ledger::{IntentState, Ledger, LedgerError, PayoutIntent};

mod follow;
mod wallet;

pub use follow::{
    apply_follow_step, cancel_pending, follow_sent, judge_sent, CancelRefusal, FollowStep,
};
pub use wallet::{SignedPayment, TxStatus, Wallet, WalletError};

/// Outputs in one payout transaction; larger runs pay the biggest balances first and
/// leave the rest for the next run.
pub const PAYOUT_OUTPUTS_PER_BATCH_MAX: usize = 500;
/// Fundings one run may make: after another writer (the exchange, the operator, KYC, the
/// deny list) changed what is payable while the wallet funded a batch, the run funds it
/// again without the accounts that changed, until this many fundings in all. One account
/// moving its balance in every funding window so delays only itself.
pub const PAYOUT_FUNDING_ATTEMPTS_MAX: u32 = 4;
/// Back-off between broadcast attempts of one intent: doubles from the first, capped.
pub const BROADCAST_RETRY_FIRST_MS: u64 = 5_000;
pub const BROADCAST_RETRY_MAX_MS: u64 = 600_000;
/// Doublings of the first back-off counted at most: the shift stays far inside `u64`,
/// and the cap is reached well before the count stops (asserted below), so every
/// attempt past the cap waits `BROADCAST_RETRY_MAX_MS`.
const BROADCAST_RETRY_DOUBLINGS_MAX: u32 = 20;
const _: () =
    assert!(BROADCAST_RETRY_FIRST_MS << BROADCAST_RETRY_DOUBLINGS_MAX >= BROADCAST_RETRY_MAX_MS);

/// Where the run may stop on purpose, for crash tests. `Fault` returns `true` to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayoutStep {
    /// The wallet funded and signed the transaction (its coins locked); nothing is written.
    Funded,
    /// The intent and its debits are written; nothing was broadcast.
    IntentWritten,
    /// The transaction was broadcast; the intent is still open.
    Broadcast,
}

/// The payout policy: thresholds and what must never be paid.
#[derive(Clone, Debug)]
pub struct PayoutPolicy {
    /// Pool-wide threshold; a miner's own setting may only raise it.
    pub payout_min: u64,
    pub address_rule: AddressRule,
    /// Accounts kept, not paid: the pool's own wallet address (its fee and PPS funds).
    pub never_pay: Vec<String>,
    /// Accounts on the deny list: their balances are held (frozen), never paid.
    pub frozen: std::collections::BTreeSet<String>,
    /// Above this within its period, an address is paid only once verified.
    pub kyc: Option<otedama_compliance::kyc::KycRule>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    /// Intents that the node now holds, including ones from earlier runs.
    pub completed: Vec<u64>,
    /// Intents still open (broadcast failed; they are retried).
    pub still_open: Vec<u64>,
    /// The batch this run created, if any.
    pub batch: Option<PayoutIntent>,
    /// Payable balances held for KYC, by address.
    pub kyc_held: BTreeMap<String, u64>,
    /// Batches funded and then dropped unsent because what was payable changed meanwhile.
    pub dropped: u32,
}

/// What a run may pay, and what KYC holds back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payable {
    pub outputs: BTreeMap<String, u64>,
    pub kyc_held: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PayoutError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error("stopped at {0:?} (fault injection)")]
    Stopped(PayoutStep),
}

/// Back-off after `attempts` failed broadcasts.
pub fn retry_delay_ms(attempts: u32) -> u64 {
    BROADCAST_RETRY_FIRST_MS
        .saturating_mul(1u64 << attempts.min(BROADCAST_RETRY_DOUBLINGS_MAX))
        .min(BROADCAST_RETRY_MAX_MS)
}

/// The ledger, locked for one step. A poisoned lock means the payout thread panicked
/// between two writes; every write is one atomic batch, so what the ledger holds is whole.
fn locked(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Brings every open intent whose retry time has come in line with the node.
pub fn reconcile(
    ledger: &Mutex<Ledger>,
    wallet: &mut dyn Wallet,
    now_ms: u64,
    report: &mut RunReport,
) -> Result<(), PayoutError> {
    let open = locked(ledger).open_intents()?;
    for intent in open {
        if intent.next_attempt_ms > now_ms {
            report.still_open.push(intent.batch_id);
            continue;
        }
        let sent = match wallet.knows_transaction(&intent.txid) {
            Ok(true) => Ok(()),
            Ok(false) => wallet.broadcast(&intent.raw_tx),
            Err(error) => Err(error),
        };
        let mut ledger = locked(ledger);
        match sent {
            Ok(()) => {
                ledger.complete_intent(intent.batch_id, now_ms)?;
                tracing::info!(batch_id = intent.batch_id, txid = %intent.txid, "payout sent");
                report.completed.push(intent.batch_id);
            }
            Err(error) => {
                let next = now_ms + retry_delay_ms(intent.broadcast_attempts);
                tracing::warn!(batch_id = intent.batch_id, txid = %intent.txid, %error, retry_at_ms = next, "payout broadcast failed");
                ledger.note_broadcast_failure(intent.batch_id, &error.to_string(), next)?;
                report.still_open.push(intent.batch_id);
            }
        }
    }
    Ok(())
}

/// Unlocks the coins of a payout a crash kept from being written (funded, its coins
/// locked, no intent): every lock but the pending intents' inputs. Best effort, logged: a
/// node restart unlocks them too. The payout thread is the only one that funds payouts,
/// and it does so only after this, so no lock it still needs is released.
pub fn release_stale_locks(ledger: &Mutex<Ledger>, wallet: &mut dyn Wallet) {
    let open = locked(ledger).open_intents();
    let pending: Vec<String> = match open {
        Ok(intents) => intents.into_iter().map(|i| i.raw_tx).collect(),
        Err(error) => {
            tracing::error!(%error, "cannot read pending payouts");
            return;
        }
    };
    let keep: Vec<&str> = pending.iter().map(String::as_str).collect();
    match wallet.release_stale_locks(&keep) {
        Ok(0) => {}
        Ok(released) => {
            tracing::warn!(
                released,
                "coins locked for a payout that was never written are unlocked"
            )
        }
        Err(error) => {
            tracing::warn!(%error, "cannot release stale coin locks; a node restart does")
        }
    }
}

/// What each address was paid in batches written since `since_ms` (sent or not).
fn paid_since(ledger: &Ledger, since_ms: u64) -> Result<BTreeMap<String, u64>, LedgerError> {
    let mut paid: BTreeMap<String, u64> = BTreeMap::new();
    for intent in ledger.intents()? {
        // A failed or cancelled batch paid nothing: its amounts went back to the balances.
        let paid_nothing = matches!(intent.state, IntentState::Failed | IntentState::Cancelled);
        if intent.created_at_ms >= since_ms && !paid_nothing {
            for (account, amount) in intent.outputs {
                *paid.entry(account).or_default() += amount;
            }
        }
    }
    Ok(paid)
}

/// The accounts a run pays now and how much: every valid address at or above its
/// threshold, biggest first, up to `PAYOUT_OUTPUTS_PER_BATCH_MAX`; and the ones KYC holds.
pub fn payable(
    ledger: &Ledger,
    policy: &PayoutPolicy,
    now_ms: u64,
) -> Result<Payable, LedgerError> {
    payable_at_most(ledger, policy, now_ms, PAYOUT_OUTPUTS_PER_BATCH_MAX)
}

/// `payable`, with at most `outputs_max` outputs (the wallet's `payment_outputs_max`).
pub fn payable_at_most(
    ledger: &Ledger,
    policy: &PayoutPolicy,
    now_ms: u64,
    outputs_max: usize,
) -> Result<Payable, LedgerError> {
    let paid_in_period = match policy.kyc {
        Some(rule) => paid_since(ledger, now_ms.saturating_sub(rule.period_ms))?,
        None => BTreeMap::new(),
    };
    let mut kyc_held = BTreeMap::new();
    let mut candidates = Vec::new();
    for (account, balances) in ledger.all_balances()? {
        if balances.mature == 0
            || policy.never_pay.contains(&account)
            || policy.frozen.contains(
                &otedama_shared::address::canonical_address_for(&policy.address_rule, &account)
                    .unwrap_or_else(|_| {
                        otedama_shared::address::canonical_address(&account).into_owned()
                    }),
            )
        {
            continue;
        }
        let threshold = ledger
            .payout_min(&account)?
            .unwrap_or(0)
            .max(policy.payout_min)
            .max(1);
        if balances.mature < threshold {
            continue;
        }
        if script_for_address(&policy.address_rule, &account).is_err() {
            continue;
        }
        // A pending or rejected record holds every payout, whatever the amount and
        // whether or not a KYC threshold is set; the threshold holds unverified addresses
        // that would pass it.
        let record = ledger.kyc(&account)?;
        let paid = paid_in_period.get(&account).copied().unwrap_or(0);
        let held = record.as_ref().is_some_and(|r| r.state.holds())
            || policy
                .kyc
                .is_some_and(|rule| rule.holds(paid, balances.mature, record.as_ref()));
        if held {
            kyc_held.insert(account, balances.mature);
            continue;
        }
        candidates.push((balances.mature, account));
    }
    candidates.sort_by(|a, b| b.cmp(a));
    Ok(Payable {
        outputs: candidates
            .into_iter()
            .take(outputs_max.min(PAYOUT_OUTPUTS_PER_BATCH_MAX))
            .map(|(amount, account)| (account, amount))
            .collect(),
        kyc_held,
    })
}

/// One payout run. `policy` is read again each time it is needed (the deny list can change
/// while the wallet funds a batch). `stop_at` lets a crash test end the run at a step as a
/// `kill -9` would; production passes `|_| false`.
pub fn run(
    ledger: &Mutex<Ledger>,
    wallet: &mut dyn Wallet,
    policy: &dyn Fn() -> PayoutPolicy,
    now_ms: u64,
    stop_at: &mut dyn FnMut(PayoutStep) -> bool,
) -> Result<RunReport, PayoutError> {
    let mut report = RunReport::default();
    reconcile(ledger, wallet, now_ms, &mut report)?;
    if !report.still_open.is_empty() {
        return Ok(report);
    }
    let outputs_max = wallet.payment_outputs_max().max(1);
    let Payable {
        mut outputs,
        kyc_held,
    } = payable_at_most(&locked(ledger), &policy(), now_ms, outputs_max)?;
    report.kyc_held = kyc_held;
    let (signed, mut written) = loop {
        if outputs.is_empty() {
            return Ok(report);
        }
        release_stale_locks(ledger, wallet);
        let signed = wallet.build_payment(&outputs)?;
        if stop_at(PayoutStep::Funded) {
            return Err(PayoutError::Stopped(PayoutStep::Funded));
        }
        let written = locked(ledger);
        // The ledger was free while the wallet funded the batch: the exchange, the
        // operator, KYC or the deny list may have moved a balance, raised a threshold or
        // held an address since. The batch is written only if every output is payable now,
        // for the same amount; otherwise it is dropped unsent (its coins unlocked) and
        // funded again without the accounts that changed.
        let now_payable = payable_at_most(&written, &policy(), now_ms, outputs_max)?.outputs;
        let changed: Vec<String> = outputs
            .iter()
            .filter(|(account, amount)| now_payable.get(*account) != Some(*amount))
            .map(|(account, _)| account.clone())
            .collect();
        if changed.is_empty() {
            break (signed, written);
        }
        drop(written);
        report.dropped += 1;
        tracing::warn!(
            txid = %signed.txid,
            changed = changed.len(),
            "what is payable changed while the payout was funded; dropped unsent"
        );
        release_stale_locks(ledger, wallet);
        if report.dropped >= PAYOUT_FUNDING_ATTEMPTS_MAX {
            return Ok(report);
        }
        outputs = now_payable;
        for account in &changed {
            outputs.remove(account);
        }
    };
    let intent = PayoutIntent {
        batch_id: written.next_batch_id()?,
        created_at_ms: now_ms,
        outputs,
        raw_tx: signed.raw_tx,
        txid: signed.txid,
        state: IntentState::Open,
        broadcast_attempts: 0,
        next_attempt_ms: now_ms,
        last_error: None,
        sent_at_ms: None,
        confirmations: 0,
        paid_by_txid: None,
        settled_at_ms: None,
    };
    written.open_intent(&intent)?;
    drop(written);
    tracing::info!(batch_id = intent.batch_id, txid = %intent.txid, outputs = intent.outputs.len(), total = intent.outputs.values().sum::<u64>(), "payout intent written");
    if stop_at(PayoutStep::IntentWritten) {
        return Err(PayoutError::Stopped(PayoutStep::IntentWritten));
    }
    let batch_id = intent.batch_id;
    match wallet.broadcast(&intent.raw_tx) {
        Ok(()) => {
            if stop_at(PayoutStep::Broadcast) {
                return Err(PayoutError::Stopped(PayoutStep::Broadcast));
            }
            locked(ledger).complete_intent(batch_id, now_ms)?;
            report.completed.push(batch_id);
        }
        Err(error) => {
            tracing::warn!(batch_id, %error, "payout broadcast failed; it will be retried");
            locked(ledger).note_broadcast_failure(
                batch_id,
                &error.to_string(),
                now_ms + retry_delay_ms(0),
            )?;
            report.still_open.push(batch_id);
        }
    }
    report.batch = locked(ledger).intent(batch_id)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Litecoin regtest's address rule, as the control plane's coin parameters give it.
    const LITECOIN_REGTEST: AddressRule =
        AddressRule::Bitcoin(otedama_shared::address::BitcoinAddressRule {
            network_name: "litecoin regtest",
            pubkey_hash_prefix: 111,
            script_hash_prefixes: &[58, 196],
            bech32_hrp: "rltc",
        });

    /// A distinct, valid Litecoin regtest address (P2WPKH) for each index.
    fn regtest_address(index: u8) -> String {
        let hrp = bitcoin::bech32::Hrp::parse("rltc").expect("valid hrp");
        bitcoin::bech32::segwit::encode_v0(hrp, &[index + 1; 20]).expect("valid program")
    }

    #[test]
    fn a_frozen_account_keeps_its_balance_and_is_not_paid() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let (free, denied) = (regtest_address(1), regtest_address(2));
        let split: BTreeMap<String, u64> = [(free.clone(), 5_000), (denied.clone(), 7_000)]
            .into_iter()
            .collect();
        ledger.credit_block("block", &split).unwrap();
        ledger.mature_block("block").unwrap();
        let mut policy = PayoutPolicy {
            payout_min: 1_000,
            address_rule: LITECOIN_REGTEST,
            never_pay: Vec::new(),
            frozen: Default::default(),
            kyc: None,
        };
        assert_eq!(payable(&ledger, &policy, 0).unwrap().outputs.len(), 2);
        // A wallet that pays one output a payment (`Wallet::payment_outputs_max`) gets the
        // biggest balance first.
        let one = payable_at_most(&ledger, &policy, 0, 1).unwrap().outputs;
        assert_eq!(
            one.into_iter().collect::<Vec<_>>(),
            [(denied.clone(), 7_000)]
        );
        // The list holds the canonical form; the ledger may hold another case of it.
        policy.frozen.insert(denied.clone());
        let paid = payable(&ledger, &policy, 0).unwrap().outputs;
        assert_eq!(paid.keys().collect::<Vec<_>>(), [&free]);
        assert_eq!(ledger.balances(&denied).unwrap().mature, 7_000);
    }

    /// A batch pays at most `PAYOUT_OUTPUTS_PER_BATCH_MAX` accounts, the biggest balances
    /// first; the rest wait for the next run.
    #[test]
    fn a_batch_holds_its_output_limit_biggest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let accounts: Vec<String> = (0..=PAYOUT_OUTPUTS_PER_BATCH_MAX)
            .map(|i| {
                let program: Vec<u8> = (i as u32)
                    .to_be_bytes()
                    .iter()
                    .cycle()
                    .take(20)
                    .copied()
                    .collect();
                bitcoin::bech32::segwit::encode_v0(
                    bitcoin::bech32::Hrp::parse("rltc").unwrap(),
                    &program,
                )
                .unwrap()
            })
            .collect();
        let credit: BTreeMap<String, u64> = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), 1_000 + i as u64))
            .collect();
        ledger.credit_block("block", &credit).unwrap();
        ledger.mature_block("block").unwrap();
        let policy = PayoutPolicy {
            payout_min: 1,
            address_rule: LITECOIN_REGTEST,
            never_pay: Vec::new(),
            frozen: Default::default(),
            kyc: None,
        };
        let outputs = payable(&ledger, &policy, 0).unwrap().outputs;
        assert_eq!(outputs.len(), PAYOUT_OUTPUTS_PER_BATCH_MAX);
        assert!(!outputs.contains_key(&accounts[0]), "the smallest waits");
    }

    /// Broadcast retries back off by doubling up to `BROADCAST_RETRY_MAX_MS`, never past.
    #[test]
    fn broadcast_retries_back_off_to_their_cap() {
        assert_eq!(retry_delay_ms(0), BROADCAST_RETRY_FIRST_MS);
        assert_eq!(retry_delay_ms(6), 320_000);
        assert_eq!(retry_delay_ms(7), BROADCAST_RETRY_MAX_MS);
        assert_eq!(
            retry_delay_ms(BROADCAST_RETRY_DOUBLINGS_MAX),
            BROADCAST_RETRY_MAX_MS
        );
        assert_eq!(
            retry_delay_ms(BROADCAST_RETRY_DOUBLINGS_MAX + 1),
            BROADCAST_RETRY_MAX_MS
        );
        assert_eq!(retry_delay_ms(u32::MAX), BROADCAST_RETRY_MAX_MS);
    }

    #[test]
    fn kyc_holds_what_would_pass_the_threshold_in_the_period_until_verified() {
        use otedama_compliance::kyc::{KycRecord, KycRule, KycState};
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let (small, large) = (regtest_address(1), regtest_address(2));
        let split: BTreeMap<String, u64> = [(small.clone(), 400), (large.clone(), 1_001)]
            .into_iter()
            .collect();
        ledger.credit_block("block", &split).unwrap();
        ledger.mature_block("block").unwrap();
        let day_ms = 86_400_000;
        let policy = PayoutPolicy {
            payout_min: 1,
            address_rule: LITECOIN_REGTEST,
            never_pay: Vec::new(),
            frozen: Default::default(),
            kyc: Some(KycRule {
                threshold: 1_000,
                period_ms: day_ms,
            }),
        };
        let now_ms = 10 * day_ms;
        let first = payable(&ledger, &policy, now_ms).unwrap();
        assert_eq!(first.outputs, BTreeMap::from([(small.clone(), 400)]));
        assert_eq!(first.kyc_held, BTreeMap::from([(large.clone(), 1_001)]));

        // 400 paid today: another 601 would pass 1,000 within the period, 600 would not.
        let intent = PayoutIntent {
            batch_id: 1,
            created_at_ms: now_ms,
            outputs: first.outputs.clone(),
            raw_tx: "00".into(),
            txid: "t".into(),
            state: IntentState::Sent,
            broadcast_attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
            sent_at_ms: Some(now_ms),
            confirmations: 0,
            paid_by_txid: None,
            settled_at_ms: None,
        };
        ledger.open_intent(&intent).unwrap();
        let more: BTreeMap<String, u64> = [(small.clone(), 601)].into_iter().collect();
        ledger.credit_block("block2", &more).unwrap();
        ledger.mature_block("block2").unwrap();
        assert_eq!(
            payable(&ledger, &policy, now_ms + 1).unwrap().kyc_held,
            BTreeMap::from([(small.clone(), 601), (large.clone(), 1_001)])
        );
        // A day later the first payout is out of the period.
        assert!(payable(&ledger, &policy, now_ms + day_ms + 1)
            .unwrap()
            .outputs
            .contains_key(&small));

        let verified = KycRecord {
            state: KycState::Verified,
            updated_at_ms: now_ms,
            source: "admin".into(),
            reference: None,
        };
        ledger.set_kyc(&large, &verified).unwrap();
        let after = payable(&ledger, &policy, now_ms + 1).unwrap();
        assert_eq!(after.outputs.get(&large), Some(&1_001));
        assert!(!after.kyc_held.contains_key(&large));
    }

    /// A node whose answers about transactions the test sets.
    #[derive(Default)]
    struct ScriptedNode {
        status: BTreeMap<String, TxStatus>,
        /// What each transaction pays: (output script, amount).
        pays: BTreeMap<String, Vec<(Vec<u8>, u64)>>,
        broadcasts: Vec<String>,
        /// Raw transactions the node says can never be mined, with its reason.
        never_minable: BTreeMap<String, String>,
    }

    impl Wallet for ScriptedNode {
        fn build_payment(
            &mut self,
            _: &BTreeMap<String, u64>,
        ) -> Result<SignedPayment, WalletError> {
            unreachable!("following builds nothing")
        }
        fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError> {
            self.broadcasts.push(raw_tx.to_string());
            match self.never_minable.get(raw_tx) {
                Some(reason) => Err(WalletError::Refused(reason.clone())),
                None => Ok(()),
            }
        }
        fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError> {
            Ok(!matches!(
                self.status.get(txid),
                None | Some(TxStatus::Unknown)
            ))
        }
        fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError> {
            Ok(self.status.get(txid).cloned().unwrap_or(TxStatus::Unknown))
        }
        fn pays_outputs(
            &mut self,
            txid: &str,
            outputs: &[(Vec<u8>, u64)],
        ) -> Result<bool, WalletError> {
            let paid = self.pays.get(txid).cloned().unwrap_or_default();
            Ok(outputs.iter().all(|wanted| paid.contains(wanted)))
        }
        fn never_minable(&mut self, raw_tx: &str) -> Result<Option<String>, WalletError> {
            Ok(self.never_minable.get(raw_tx).cloned())
        }
        fn sends_since(&mut self, _: u64) -> Result<Vec<String>, WalletError> {
            Ok(self.status.keys().cloned().collect())
        }
    }

    /// A ledger with one sent payout (txid `t1`) of 300 to each of `miners`, from a
    /// matured block of 1,000 each.
    fn sent_payout(dir: &std::path::Path, miners: &[String]) -> Mutex<Ledger> {
        let mut ledger = Ledger::open(dir).unwrap();
        let credit: BTreeMap<String, u64> = miners.iter().map(|m| (m.clone(), 1_000)).collect();
        ledger.credit_block("block", &credit).unwrap();
        ledger.mature_block("block").unwrap();
        let intent = PayoutIntent {
            batch_id: 1,
            created_at_ms: 0,
            outputs: miners.iter().map(|m| (m.clone(), 300)).collect(),
            raw_tx: "raw-t1".into(),
            txid: "t1".into(),
            state: IntentState::Open,
            broadcast_attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
            sent_at_ms: None,
            confirmations: 0,
            paid_by_txid: None,
            settled_at_ms: None,
        };
        ledger.open_intent(&intent).unwrap();
        ledger.complete_intent(1, 0).unwrap();
        std::sync::Mutex::new(ledger)
    }

    fn payout(ledger: &Mutex<Ledger>) -> PayoutIntent {
        ledger.lock().unwrap().intents().unwrap()[0].clone()
    }

    fn conflicted(conflicts: &[&str]) -> TxStatus {
        TxStatus::Conflicted {
            depth: 1,
            conflicts: conflicts.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Issue 15, point 5: a sent payout waits, is sent again, fails once (the amounts come
    /// back exactly once) when a transaction paying none of its outputs is mined deep.
    #[test]
    fn a_sent_payout_is_resent_and_fails_once_when_double_spent() {
        let rule = LITECOIN_REGTEST;
        let miners = [regtest_address(1), regtest_address(2)];
        let dir = tempfile::tempdir().unwrap();
        let ledger = sent_payout(dir.path(), &miners);
        let mut node = ScriptedNode::default();
        let follow =
            |node: &mut ScriptedNode, now_ms| follow_sent(&ledger, node, &rule, 3, now_ms).unwrap();

        node.status.insert("t1".into(), TxStatus::Confirmed(2));
        follow(&mut node, 10);
        assert_eq!(
            (payout(&ledger).state, payout(&ledger).confirmations),
            (IntentState::Sent, 2)
        );
        node.status.insert("t1".into(), TxStatus::Dropped);
        follow(&mut node, 20);
        assert_eq!(node.broadcasts, vec!["raw-t1".to_string()]);
        assert_eq!(payout(&ledger).state, IntentState::Sent);

        // A thief's spend of an input, mined but not deep: the payout waits.
        node.status.insert("t1".into(), conflicted(&["thief"]));
        node.status.insert("thief".into(), TxStatus::Confirmed(2));
        follow(&mut node, 30);
        assert_eq!(payout(&ledger).state, IntentState::Sent);
        // Deep enough: failed, and each 300 is back in its mature balance, once.
        node.status.insert("thief".into(), TxStatus::Confirmed(3));
        follow(&mut node, 40);
        follow(&mut node, 50);
        let failed = payout(&ledger);
        assert_eq!(
            (failed.state, failed.settled_at_ms),
            (IntentState::Failed, Some(40))
        );
        for miner in &miners {
            let balances = ledger.lock().unwrap().balances(miner).unwrap();
            assert_eq!(
                (balances.mature, balances.paying, balances.paid),
                (1_000, 0, 0)
            );
        }
    }

    /// The mined conflict decides: a fee bump that pays every output confirms the payout
    /// (whichever order the node lists the conflicts in); one that pays only some outputs
    /// holds it for the operator, neither confirmed nor failed.
    #[test]
    fn a_replacement_confirms_a_payout_only_if_it_pays_every_output() {
        let rule = LITECOIN_REGTEST;
        let miners = [regtest_address(1), regtest_address(2)];
        let scripts: Vec<(Vec<u8>, u64)> = miners
            .iter()
            .map(|m| (script_for_address(&rule, m).unwrap(), 300))
            .collect();
        for (listed, expected) in [
            (["bump-unmined", "bump-mined"], IntentState::Confirmed),
            (["bump-mined", "bump-unmined"], IntentState::Confirmed),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let ledger = sent_payout(dir.path(), &miners);
            let mut node = ScriptedNode::default();
            node.status.insert("t1".into(), conflicted(&listed));
            node.status
                .insert("bump-unmined".into(), TxStatus::InMempool);
            node.status
                .insert("bump-mined".into(), TxStatus::Confirmed(3));
            node.pays.insert("bump-unmined".into(), scripts.clone());
            node.pays.insert("bump-mined".into(), scripts.clone());
            follow_sent(&ledger, &mut node, &rule, 3, 60).unwrap();
            let confirmed = payout(&ledger);
            assert_eq!(confirmed.state, expected, "{listed:?}");
            assert_eq!(confirmed.paid_by_txid.as_deref(), Some("bump-mined"));
        }
        // A mined replacement that pays the first miner only: held, nothing moves.
        let dir = tempfile::tempdir().unwrap();
        let ledger = sent_payout(dir.path(), &miners);
        let mut node = ScriptedNode::default();
        node.status.insert("t1".into(), conflicted(&["partial"]));
        node.status
            .insert("partial".into(), TxStatus::Confirmed(10));
        node.pays.insert("partial".into(), vec![scripts[0].clone()]);
        follow_sent(&ledger, &mut node, &rule, 3, 70).unwrap();
        assert_eq!(payout(&ledger).state, IntentState::Sent);
        let balances = ledger.lock().unwrap().balances(&miners[1]).unwrap();
        assert_eq!((balances.mature, balances.paid), (700, 300));
    }

    /// Issue 15, point 5: a pending payout the node can never take is cancelled only when
    /// the node says so, and its amounts come back once; the next run can then pay again.
    #[test]
    fn a_pending_payout_is_cancelled_only_when_it_can_never_be_mined() {
        let miner = regtest_address(1);
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let credit: BTreeMap<String, u64> = [(miner.clone(), 1_000)].into_iter().collect();
        ledger.credit_block("block", &credit).unwrap();
        ledger.mature_block("block").unwrap();
        let intent = PayoutIntent {
            batch_id: 1,
            created_at_ms: 0,
            outputs: [(miner.clone(), 400)].into_iter().collect(),
            raw_tx: "raw-t1".into(),
            txid: "t1".into(),
            state: IntentState::Open,
            broadcast_attempts: 3,
            next_attempt_ms: 0,
            last_error: Some("bad-txns-inputs-missingorspent".into()),
            sent_at_ms: None,
            confirmations: 0,
            paid_by_txid: None,
            settled_at_ms: None,
        };
        ledger.open_intent(&intent).unwrap();
        let ledger = Mutex::new(ledger);
        let mut node = ScriptedNode::default();
        // The node holds it, or would still take it: refused, nothing moves.
        node.status.insert("t1".into(), TxStatus::InMempool);
        assert!(matches!(
            cancel_pending(&ledger, &mut node, 1, 10),
            Err(CancelRefusal::StillMinable { detail, .. }) if detail.contains("holds")
        ));
        node.status.clear();
        assert!(matches!(
            cancel_pending(&ledger, &mut node, 1, 10),
            Err(CancelRefusal::StillMinable { detail, .. }) if detail.contains("accept")
        ));
        assert_eq!(ledger.lock().unwrap().balances(&miner).unwrap().paying, 400);
        assert!(matches!(
            cancel_pending(&ledger, &mut node, 9, 10),
            Err(CancelRefusal::NoSuchBatch(9))
        ));
        node.never_minable
            .insert("raw-t1".into(), "missing-inputs".into());
        let reason = cancel_pending(&ledger, &mut node, 1, 20).unwrap();
        assert!(reason.contains("missing-inputs"), "{reason}");
        let balances = ledger.lock().unwrap().balances(&miner).unwrap();
        assert_eq!(
            (balances.mature, balances.paying, balances.paid),
            (1_000, 0, 0)
        );
        assert_eq!(
            ledger.lock().unwrap().intents().unwrap()[0].state,
            IntentState::Cancelled
        );
        // Once only.
        assert!(matches!(
            cancel_pending(&ledger, &mut node, 1, 30),
            Err(CancelRefusal::NotPending(1))
        ));
        assert_eq!(
            ledger.lock().unwrap().balances(&miner).unwrap().mature,
            1_000
        );
        assert!(
            ledger.lock().unwrap().open_intents().unwrap().is_empty(),
            "the next run may pay again"
        );
    }

    /// A write another part of the pool makes to the ledger (or to the policy).
    type LedgerWrite = Box<dyn FnOnce(&mut Ledger)>;

    /// A wallet that fails the test if it is called with the ledger locked, and lets the
    /// test write to the ledger (as the exchange, KYC or the operator would) while it funds.
    struct WalletBesideTheLedger {
        ledger: std::sync::Arc<Mutex<Ledger>>,
        during_build: Vec<LedgerWrite>,
        built: Vec<BTreeMap<String, u64>>,
        held: std::collections::BTreeSet<String>,
        refuse_broadcast: bool,
        released: usize,
    }

    impl WalletBesideTheLedger {
        fn new(ledger: &std::sync::Arc<Mutex<Ledger>>, during_build: Vec<LedgerWrite>) -> Self {
            WalletBesideTheLedger {
                ledger: ledger.clone(),
                during_build,
                built: Vec::new(),
                held: Default::default(),
                refuse_broadcast: false,
                released: 0,
            }
        }

        fn ledger_is_free(&self, call: &str) {
            assert!(
                self.ledger.try_lock().is_ok(),
                "wallet.{call} was called with the ledger locked"
            );
        }
    }

    impl Wallet for WalletBesideTheLedger {
        fn build_payment(
            &mut self,
            outputs: &BTreeMap<String, u64>,
        ) -> Result<SignedPayment, WalletError> {
            self.ledger_is_free("build_payment");
            if !self.during_build.is_empty() {
                let write = self.during_build.remove(0);
                write(&mut self.ledger.lock().unwrap());
            }
            self.built.push(outputs.clone());
            let txid = format!("t{}", self.built.len());
            Ok(SignedPayment {
                raw_tx: format!("raw-{txid}"),
                txid,
            })
        }
        fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError> {
            self.ledger_is_free("broadcast");
            if self.refuse_broadcast {
                return Err(WalletError::Unreachable("node down".into()));
            }
            self.held
                .insert(raw_tx.trim_start_matches("raw-").to_string());
            Ok(())
        }
        fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError> {
            self.ledger_is_free("knows_transaction");
            Ok(self.held.contains(txid))
        }
        fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError> {
            self.ledger_is_free("transaction_status");
            Ok(match self.held.contains(txid) {
                true => TxStatus::Confirmed(10),
                false => TxStatus::Unknown,
            })
        }
        fn pays_outputs(&mut self, _: &str, _: &[(Vec<u8>, u64)]) -> Result<bool, WalletError> {
            self.ledger_is_free("pays_outputs");
            Ok(false)
        }
        fn never_minable(&mut self, _: &str) -> Result<Option<String>, WalletError> {
            self.ledger_is_free("never_minable");
            Ok(None)
        }
        fn sends_since(&mut self, _: u64) -> Result<Vec<String>, WalletError> {
            self.ledger_is_free("sends_since");
            Ok(self.held.iter().cloned().collect())
        }
        fn release_stale_locks(&mut self, _: &[&str]) -> Result<usize, WalletError> {
            self.ledger_is_free("release_stale_locks");
            self.released += 1;
            Ok(0)
        }
    }

    /// A ledger holding `mature` for each of `accounts`.
    fn matured(dir: &std::path::Path, accounts: &[String], mature: u64) -> Mutex<Ledger> {
        let mut ledger = Ledger::open(dir).unwrap();
        let credit: BTreeMap<String, u64> = accounts.iter().map(|a| (a.clone(), mature)).collect();
        ledger.credit_block("block", &credit).unwrap();
        ledger.mature_block("block").unwrap();
        Mutex::new(ledger)
    }

    fn regtest_policy(frozen: std::collections::BTreeSet<String>) -> PayoutPolicy {
        PayoutPolicy {
            payout_min: 100,
            address_rule: LITECOIN_REGTEST,
            never_pay: Vec::new(),
            frozen,
            kyc: None,
        }
    }

    /// Issue 16: the payout thread holds no lock across a wallet call, so the API and the
    /// exchange never wait for the node. A batch funded while another writer changed what
    /// is payable (the exchange took a balance, the operator raised a threshold, the deny
    /// list took an address) is dropped unsent and funded again without the accounts that
    /// changed, never paid from the stale view; the others are paid in the same run.
    #[test]
    fn a_payout_run_never_holds_the_ledger_across_a_wallet_call() {
        let (a, b, c) = (regtest_address(1), regtest_address(2), regtest_address(3));
        let dir = tempfile::tempdir().unwrap();
        let ledger = std::sync::Arc::new(matured(
            dir.path(),
            &[a.clone(), b.clone(), c.clone()],
            1_000,
        ));
        let denied = std::sync::Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let policy = {
            let denied = denied.clone();
            move || regtest_policy(denied.lock().unwrap().clone())
        };
        let (deposit_of_a, threshold_of_b, deny_c) = (a.clone(), b.clone(), c.clone());
        let mut wallet = WalletBesideTheLedger::new(
            &ledger,
            vec![
                // The exchange takes 600 of A's balance while the first batch is funded.
                Box::new(move |ledger: &mut Ledger| {
                    let deposit = crate::ledger::Transfer {
                        id: 1,
                        kind: crate::ledger::TransferKind::Deposit,
                        account: deposit_of_a,
                        amount: 600,
                        exchange_sequence: 1,
                        state: crate::ledger::TransferState::Pending,
                        created_at_ms: 0,
                    };
                    ledger.begin_transfer(&deposit).unwrap();
                }),
                // The operator raises B's threshold above its balance during the second.
                Box::new(move |ledger: &mut Ledger| {
                    ledger.set_payout_min(&threshold_of_b, 5_000).unwrap();
                }),
                // The deny list takes C during the third.
                Box::new(move |_: &mut Ledger| {
                    denied.lock().unwrap().insert(deny_c);
                }),
            ],
        );
        let mut never = |_| false;
        let report = run(&ledger, &mut wallet, &policy, 10, &mut never).unwrap();
        assert_eq!(report.dropped, 3, "{report:?}");
        let paid = report.batch.expect("the fourth funding is written").outputs;
        assert_eq!(paid, BTreeMap::from([(a.clone(), 400)]));
        assert_eq!(
            wallet.built,
            [
                BTreeMap::from([(a.clone(), 1_000), (b.clone(), 1_000), (c.clone(), 1_000)]),
                BTreeMap::from([(b.clone(), 1_000), (c.clone(), 1_000)]),
                // A is payable again, for its new balance.
                BTreeMap::from([(a.clone(), 400), (c.clone(), 1_000)]),
                BTreeMap::from([(a.clone(), 400)]),
            ]
        );
        // Coins unlocked before each funding and after each dropped one.
        assert_eq!(wallet.released, 4 + 3);
        {
            let ledger = ledger.lock().unwrap();
            assert_eq!(ledger.balances(&a).unwrap().paid, 400);
            assert_eq!(ledger.balances(&b).unwrap().mature, 1_000);
            assert_eq!(ledger.balances(&c).unwrap().mature, 1_000);
            ledger.assert_intent_indexes("after the run");
        }
        // Following, retrying and cancelling call the wallet with the ledger free too.
        follow_sent(
            &ledger,
            &mut wallet,
            &regtest_policy(Default::default()).address_rule,
            3,
            40,
        )
        .unwrap();
        {
            let mut ledger = ledger.lock().unwrap();
            ledger
                .credit_block("block 2", &BTreeMap::from([(a.clone(), 500)]))
                .unwrap();
            ledger.mature_block("block 2").unwrap();
        }
        wallet.refuse_broadcast = true;
        let report = run(&ledger, &mut wallet, &policy, 50, &mut never).unwrap();
        assert_eq!(report.still_open, [2]);
        let report = run(&ledger, &mut wallet, &policy, 100_000, &mut never).unwrap();
        assert_eq!(report.still_open, [2], "retried, still refused");
        assert!(matches!(
            cancel_pending(&ledger, &mut wallet, 2, 100_001),
            Err(CancelRefusal::StillMinable { .. })
        ));
    }

    /// At `PAYOUT_FUNDING_ATTEMPTS_MAX` dropped fundings a run gives up, writing nothing;
    /// the next run pays everyone.
    #[test]
    fn a_run_gives_up_after_its_funding_attempts_and_the_next_one_pays() {
        let accounts: Vec<String> = (1..=PAYOUT_FUNDING_ATTEMPTS_MAX as u8 + 1)
            .map(regtest_address)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let ledger = std::sync::Arc::new(matured(dir.path(), &accounts, 1_000));
        // Each funding, one more account takes 1 unit to the exchange.
        let moves: Vec<LedgerWrite> = accounts
            .iter()
            .take(PAYOUT_FUNDING_ATTEMPTS_MAX as usize)
            .enumerate()
            .map(|(index, account)| {
                let account = account.clone();
                Box::new(move |ledger: &mut Ledger| {
                    let deposit = crate::ledger::Transfer {
                        id: index as u64 + 1,
                        kind: crate::ledger::TransferKind::Deposit,
                        account,
                        amount: 1,
                        exchange_sequence: index as u64 + 1,
                        state: crate::ledger::TransferState::Pending,
                        created_at_ms: 0,
                    };
                    ledger.begin_transfer(&deposit).unwrap();
                }) as LedgerWrite
            })
            .collect();
        let mut wallet = WalletBesideTheLedger::new(&ledger, moves);
        let policy = || regtest_policy(Default::default());
        let mut never = |_| false;
        let report = run(&ledger, &mut wallet, &policy, 10, &mut never).unwrap();
        assert_eq!(
            (report.dropped, report.batch),
            (PAYOUT_FUNDING_ATTEMPTS_MAX, None)
        );
        assert!(ledger.lock().unwrap().intents().unwrap().is_empty());
        let report = run(&ledger, &mut wallet, &policy, 20, &mut never).unwrap();
        let paid = report.batch.expect("the next run pays").outputs;
        assert_eq!(paid.len(), accounts.len());
    }

    /// A sent payout the node has forgotten and can never mine (its inputs went
    /// elsewhere) is not silently sent again for ever: the reason lands on the batch for
    /// the operator, and no balance moves on a guess.
    #[test]
    fn a_sent_payout_that_can_never_be_mined_is_flagged_for_the_operator() {
        let rule = LITECOIN_REGTEST;
        let miners = [regtest_address(1)];
        let dir = tempfile::tempdir().unwrap();
        let ledger = sent_payout(dir.path(), &miners);
        let mut node = ScriptedNode::default();
        node.never_minable
            .insert("raw-t1".into(), "missing-inputs".into());
        follow_sent(&ledger, &mut node, &rule, 3, 10).unwrap();
        let flagged = payout(&ledger);
        assert_eq!(flagged.state, IntentState::Sent);
        assert!(
            flagged
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("never minable")),
            "{flagged:?}"
        );
        assert_eq!(
            ledger.lock().unwrap().balances(&miners[0]).unwrap().paid,
            300
        );
    }
}
