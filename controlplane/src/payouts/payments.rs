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

use std::collections::BTreeMap;

use otedama_shared::address::{script_for_address, AddressRule};

use super::ledger::{IntentState, Ledger, LedgerError, PayoutIntent};

/// Outputs in one payout transaction; larger runs pay the biggest balances first and
/// leave the rest for the next run.
pub const PAYOUT_OUTPUTS_PER_BATCH_MAX: usize = 500;
/// Back-off between broadcast attempts of one intent: doubles from the first, capped.
pub const BROADCAST_RETRY_FIRST_MS: u64 = 5_000;
pub const BROADCAST_RETRY_MAX_MS: u64 = 600_000;

/// A funded, signed transaction from the wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPayment {
    pub raw_tx: String,
    pub txid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The request may not have reached the node; trying again is safe.
    #[error("wallet unreachable: {0}")]
    Unreachable(String),
    /// The node refused (insufficient funds, a rejected transaction...).
    #[error("wallet refused: {0}")]
    Refused(String),
}

/// What the payer needs from the node's wallet. Real: `chain::wallet::NodeWallet`.
pub trait Wallet {
    /// Funds (fee from the wallet's change) and signs a transaction paying `outputs`.
    fn build_payment(
        &mut self,
        outputs: &BTreeMap<String, u64>,
    ) -> Result<SignedPayment, WalletError>;
    /// Sends a raw transaction; one the node already has counts as sent.
    fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError>;
    /// Whether the node holds `txid`, in its mempool or its chain.
    fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError>;
    /// Where transaction `txid` stands on the node.
    fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError>;
    /// Whether transaction `txid` pays every `(output script, amount)` listed, exactly.
    fn pays_outputs(&mut self, txid: &str, outputs: &[(Vec<u8>, u64)])
        -> Result<bool, WalletError>;
}

/// Where a payout transaction stands on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// In the active chain, under this many blocks (at least 1).
    Confirmed(u64),
    /// In the mempool.
    InMempool,
    /// Known to the wallet but in neither the chain nor the mempool (evicted, or lost in a
    /// node restart): it can be sent again.
    Dropped,
    /// Double-spent: these transactions spend some of its inputs, and the first of them
    /// to be mined is this many blocks deep (0 while none is mined).
    Conflicted { depth: u64, conflicts: Vec<String> },
    /// Unknown to the node altogether.
    Unknown,
}

/// Where the run may stop on purpose, for crash tests. `Fault` returns `true` to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayoutStep {
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
    pub kyc: Option<crate::kyc::KycRule>,
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
        .saturating_mul(1u64 << attempts.min(20))
        .min(BROADCAST_RETRY_MAX_MS)
}

/// Brings every open intent whose retry time has come in line with the node.
pub fn reconcile(
    ledger: &mut Ledger,
    wallet: &mut dyn Wallet,
    now_ms: u64,
    report: &mut RunReport,
) -> Result<(), PayoutError> {
    for intent in ledger.open_intents()? {
        if intent.next_attempt_ms > now_ms {
            report.still_open.push(intent.batch_id);
            continue;
        }
        let sent = match wallet.knows_transaction(&intent.txid) {
            Ok(true) => Ok(()),
            Ok(false) => wallet.broadcast(&intent.raw_tx),
            Err(error) => Err(error),
        };
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

/// Follows every sent payout until it is final (issue 15: a payout is not paid for good
/// when the mempool takes it):
/// - buried under `confirmations_required` blocks: `Confirmed`;
/// - out of the mempool and unmined: the same raw transaction is sent again;
/// - double-spent by a transaction that pays every output exactly (a fee bump, say): that
///   transaction is followed instead, and the intent confirms with it;
/// - double-spent by anything else, buried under `confirmations_required` blocks: `Failed`,
///   and every amount goes back to its balance, once (`Ledger::fail_intent`).
pub fn follow_sent(
    ledger: &mut Ledger,
    wallet: &mut dyn Wallet,
    rule: &AddressRule,
    confirmations_required: u64,
    now_ms: u64,
) -> Result<(), PayoutError> {
    for intent in ledger.sent_intents()? {
        let batch_id = intent.batch_id;
        match wallet.transaction_status(&intent.txid)? {
            TxStatus::Confirmed(depth) if depth >= confirmations_required => {
                ledger.confirm_intent(batch_id, depth as i64, None, now_ms)?;
                tracing::info!(batch_id, txid = %intent.txid, depth, "payout confirmed");
            }
            TxStatus::Confirmed(depth) => ledger.note_confirmations(batch_id, depth as i64)?,
            TxStatus::InMempool => ledger.note_confirmations(batch_id, 0)?,
            TxStatus::Dropped | TxStatus::Unknown => {
                // Safe to send again: it is the only transaction that may pay these outputs.
                match wallet.broadcast(&intent.raw_tx) {
                    Ok(()) => {
                        tracing::warn!(batch_id, txid = %intent.txid, "payout had left the mempool unmined; sent again")
                    }
                    Err(error) => {
                        tracing::warn!(batch_id, txid = %intent.txid, %error, "payout left the mempool and cannot be sent again yet")
                    }
                }
            }
            TxStatus::Conflicted { depth, conflicts } => {
                let scripts = output_scripts(rule, &intent)?;
                let mut replacement = None;
                for conflict in &conflicts {
                    if wallet.pays_outputs(conflict, &scripts)? {
                        replacement = Some(conflict.clone());
                        break;
                    }
                }
                match replacement {
                    Some(paid_by) => {
                        if let TxStatus::Confirmed(depth) = wallet.transaction_status(&paid_by)? {
                            if depth >= confirmations_required {
                                ledger.confirm_intent(
                                    batch_id,
                                    depth as i64,
                                    Some(paid_by.clone()),
                                    now_ms,
                                )?;
                                tracing::info!(batch_id, txid = %intent.txid, %paid_by, depth, "payout confirmed through a replacement that pays every output");
                            }
                        }
                    }
                    None if depth >= confirmations_required => {
                        let reason = format!(
                            "double-spent by {} ({depth} blocks deep); the amounts are back in the balances",
                            conflicts.join(", ")
                        );
                        ledger.fail_intent(batch_id, -(depth as i64), &reason, now_ms)?;
                        tracing::error!(batch_id, txid = %intent.txid, %reason, "payout failed");
                    }
                    None => ledger.note_confirmations(batch_id, -(depth as i64))?,
                }
            }
        }
    }
    Ok(())
}

/// The output scripts and amounts a payout's transaction must pay.
fn output_scripts(
    rule: &AddressRule,
    intent: &PayoutIntent,
) -> Result<Vec<(Vec<u8>, u64)>, PayoutError> {
    intent
        .outputs
        .iter()
        .map(|(address, amount)| {
            script_for_address(rule, address)
                .map(|script| (script, *amount))
                .map_err(|e| PayoutError::Wallet(WalletError::Refused(e.to_string())))
        })
        .collect()
}

/// What each address was paid in batches written since `since_ms` (sent or not).
fn paid_since(ledger: &Ledger, since_ms: u64) -> Result<BTreeMap<String, u64>, LedgerError> {
    let mut paid: BTreeMap<String, u64> = BTreeMap::new();
    for intent in ledger.intents()? {
        if intent.created_at_ms >= since_ms {
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
        if let Some(rule) = policy.kyc {
            let paid = paid_in_period.get(&account).copied().unwrap_or(0);
            if rule.holds(paid, balances.mature, ledger.kyc(&account)?.as_ref()) {
                kyc_held.insert(account, balances.mature);
                continue;
            }
        }
        candidates.push((balances.mature, account));
    }
    candidates.sort_by(|a, b| b.cmp(a));
    Ok(Payable {
        outputs: candidates
            .into_iter()
            .take(PAYOUT_OUTPUTS_PER_BATCH_MAX)
            .map(|(amount, account)| (account, amount))
            .collect(),
        kyc_held,
    })
}

/// One payout run. `stop_at` lets a crash test end the run at a step as a `kill -9`
/// would; production passes `|_| false`.
pub fn run(
    ledger: &mut Ledger,
    wallet: &mut dyn Wallet,
    policy: &PayoutPolicy,
    now_ms: u64,
    stop_at: &mut dyn FnMut(PayoutStep) -> bool,
) -> Result<RunReport, PayoutError> {
    let mut report = RunReport::default();
    reconcile(ledger, wallet, now_ms, &mut report)?;
    if !report.still_open.is_empty() {
        return Ok(report);
    }
    let Payable { outputs, kyc_held } = payable(ledger, policy, now_ms)?;
    report.kyc_held = kyc_held;
    if outputs.is_empty() {
        return Ok(report);
    }
    let signed = wallet.build_payment(&outputs)?;
    let intent = PayoutIntent {
        batch_id: ledger.next_batch_id()?,
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
    ledger.open_intent(&intent)?;
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
            ledger.complete_intent(batch_id, now_ms)?;
            report.completed.push(batch_id);
        }
        Err(error) => {
            tracing::warn!(batch_id, %error, "payout broadcast failed; it will be retried");
            ledger.note_broadcast_failure(
                batch_id,
                &error.to_string(),
                now_ms + retry_delay_ms(0),
            )?;
            report.still_open.push(batch_id);
        }
    }
    report.batch = ledger
        .intents()?
        .into_iter()
        .find(|i| i.batch_id == batch_id);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::coin::{Coin, CoinParams, Network};
    use crate::payouts::simulation::regtest_address;

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
            address_rule: CoinParams::new(Coin::Litecoin, Network::Regtest).address,
            never_pay: Vec::new(),
            frozen: Default::default(),
            kyc: None,
        };
        assert_eq!(payable(&ledger, &policy, 0).unwrap().outputs.len(), 2);
        // The list holds the canonical form; the ledger may hold another case of it.
        policy.frozen.insert(denied.clone());
        let paid = payable(&ledger, &policy, 0).unwrap().outputs;
        assert_eq!(paid.keys().collect::<Vec<_>>(), [&free]);
        assert_eq!(ledger.balances(&denied).unwrap().mature, 7_000);
    }

    #[test]
    fn kyc_holds_what_would_pass_the_threshold_in_the_period_until_verified() {
        use crate::kyc::{KycRecord, KycRule, KycState};
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
            address_rule: CoinParams::new(Coin::Litecoin, Network::Regtest).address,
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
        /// Transactions that pay every output they are asked about.
        payers: Vec<String>,
        broadcasts: Vec<String>,
    }

    impl Wallet for ScriptedNode {
        fn build_payment(
            &mut self,
            _: &BTreeMap<String, u64>,
        ) -> Result<SignedPayment, WalletError> {
            unreachable!("follow_sent builds nothing")
        }
        fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError> {
            self.broadcasts.push(raw_tx.to_string());
            Ok(())
        }
        fn knows_transaction(&mut self, _: &str) -> Result<bool, WalletError> {
            Ok(true)
        }
        fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError> {
            Ok(self.status.get(txid).cloned().unwrap_or(TxStatus::Unknown))
        }
        fn pays_outputs(&mut self, txid: &str, _: &[(Vec<u8>, u64)]) -> Result<bool, WalletError> {
            Ok(self.payers.iter().any(|payer| payer == txid))
        }
    }

    /// A ledger with one sent payout of 300 to `miner` (txid `t1`), from a matured block.
    fn sent_payout(dir: &std::path::Path, miner: &str) -> Ledger {
        let mut ledger = Ledger::open(dir).unwrap();
        let credit: BTreeMap<String, u64> = [(miner.to_string(), 1_000)].into_iter().collect();
        ledger.credit_block("block", &credit).unwrap();
        ledger.mature_block("block").unwrap();
        let intent = PayoutIntent {
            batch_id: 1,
            created_at_ms: 0,
            outputs: [(miner.to_string(), 300)].into_iter().collect(),
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
        ledger
    }

    /// Issue 15, point 5: every way a sent payout can end, and that a double-spend gives
    /// the amounts back exactly once.
    #[test]
    fn sent_payouts_end_confirmed_resent_or_failed_once() {
        let rule = CoinParams::new(Coin::Litecoin, Network::Regtest).address;
        let miner = regtest_address(1);
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = sent_payout(dir.path(), &miner);
        let mut node = ScriptedNode::default();
        let state = |ledger: &Ledger| ledger.intents().unwrap()[0].clone();
        let balances = |ledger: &Ledger| ledger.balances(&miner).unwrap();

        // Under too few blocks: still sent. Dropped from the mempool: sent again.
        node.status.insert("t1".into(), TxStatus::Confirmed(2));
        follow_sent(&mut ledger, &mut node, &rule, 3, 10).unwrap();
        assert_eq!(
            (state(&ledger).state, state(&ledger).confirmations),
            (IntentState::Sent, 2)
        );
        node.status.insert("t1".into(), TxStatus::Dropped);
        follow_sent(&mut ledger, &mut node, &rule, 3, 20).unwrap();
        assert_eq!(node.broadcasts, vec!["raw-t1".to_string()]);
        assert_eq!(state(&ledger).state, IntentState::Sent);

        // Double-spent by something that does not pay the miner, not yet deep: waits.
        let conflicted = |depth| TxStatus::Conflicted {
            depth,
            conflicts: vec!["thief".into()],
        };
        node.status.insert("t1".into(), conflicted(2));
        follow_sent(&mut ledger, &mut node, &rule, 3, 30).unwrap();
        assert_eq!(state(&ledger).state, IntentState::Sent);
        assert_eq!(balances(&ledger).paid, 300);
        // Deep enough: failed, and the 300 is back in the mature balance, once.
        node.status.insert("t1".into(), conflicted(3));
        follow_sent(&mut ledger, &mut node, &rule, 3, 40).unwrap();
        follow_sent(&mut ledger, &mut node, &rule, 3, 50).unwrap();
        assert_eq!(state(&ledger).state, IntentState::Failed);
        assert_eq!(state(&ledger).settled_at_ms, Some(40));
        let after = balances(&ledger);
        assert_eq!((after.mature, after.paying, after.paid), (1_000, 0, 0));

        // Another ledger: the conflict is a fee bump that pays every output.
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = sent_payout(dir.path(), &miner);
        let mut node = ScriptedNode {
            payers: vec!["bump".into()],
            ..ScriptedNode::default()
        };
        node.status.insert(
            "t1".into(),
            TxStatus::Conflicted {
                depth: 5,
                conflicts: vec!["bump".into()],
            },
        );
        node.status.insert("bump".into(), TxStatus::Confirmed(5));
        follow_sent(&mut ledger, &mut node, &rule, 3, 60).unwrap();
        let payout = state(&ledger);
        assert_eq!(payout.state, IntentState::Confirmed);
        assert_eq!(payout.paid_by_txid.as_deref(), Some("bump"));
        assert_eq!(balances(&ledger).paid, 300, "paid once, by the replacement");
    }
}
