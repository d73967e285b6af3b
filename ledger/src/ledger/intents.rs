//! Payout intents: written with their debits in one batch, followed to a final state,
//! and indexed (unsettled intents, each account's payouts, totals per state) in the same
//! batch as every change, so a crash leaves the intents and their indexes agreeing.

use rocksdb::{IteratorMode, WriteBatch};

use super::*;

impl Ledger {
    /// Builds the intent indexes where they do not cover every intent: a ledger written
    /// before they existed, or one an older release wrote to after they were built (a
    /// downgrade and upgrade again). An older release writes intents without their
    /// indexes: a new intent shows as a count of batches that is not the last batch id
    /// (ids run from 1 without gaps, and no intent is ever deleted), and a state change as
    /// an unsettled entry whose intent is settled (only unsettled intents change state).
    /// Rebuilt in one batch with the marker: a crash leaves the old index or the new one.
    pub(super) fn index_intents_if_stale(&self) -> Result<(), LedgerError> {
        if self.db.get(INTENT_INDEX_KEY)?.is_some() {
            let counted: u64 = self.intent_totals()?.values().map(|t| t.batches).sum();
            let unsettled_hold = self
                .unsettled_intents()?
                .iter()
                .all(|i| matches!(i.state, IntentState::Open | IntentState::Sent));
            if counted + 1 == self.next_batch_id()? && unsettled_hold {
                return Ok(());
            }
            tracing::warn!("payout intents written without their indexes (an older release?); indexing them again");
        }
        let mut batch = WriteBatch::default();
        let mut totals = IntentTotals::new();
        for (_, intent) in self.scan::<PayoutIntent>(INTENT_PREFIX)? {
            stage_intent_indexes(&mut batch, &mut totals, None, &intent);
        }
        batch.put(INTENT_TOTALS_KEY, serde_json::to_vec(&totals)?);
        batch.put(INTENT_INDEX_KEY, b"1");
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Payout batch `batch_id`, if there is one.
    pub fn intent(&self, batch_id: u64) -> Result<Option<PayoutIntent>, LedgerError> {
        self.get(&key(INTENT_PREFIX, &batch_id.to_be_bytes()))
    }

    /// Fails unless the intent indexes agree with the intents themselves: the totals,
    /// the unsettled index, and every account's payouts. For tests and simulations.
    #[cfg(any(test, feature = "test-support"))]
    pub fn assert_intent_indexes(&self, context: &str) {
        let intents = self.intents().expect("intents");
        let mut totals = IntentTotals::new();
        let mut by_account: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        for intent in &intents {
            let tally = totals.entry(intent.state).or_default();
            tally.batches += 1;
            tally.amount += intent.outputs.values().sum::<u64>();
            for (account, amount) in &intent.outputs {
                by_account
                    .entry(account)
                    .or_default()
                    .push((intent.batch_id, *amount));
            }
        }
        let mut kept = self.intent_totals().expect("totals");
        kept.retain(|_, tally| tally.batches > 0);
        assert_eq!(kept, totals, "{context}: intent totals");
        let unsettled: Vec<u64> = intents
            .iter()
            .filter(|i| matches!(i.state, IntentState::Open | IntentState::Sent))
            .map(|i| i.batch_id)
            .collect();
        let indexed: Vec<u64> = self
            .unsettled_intents()
            .expect("unsettled")
            .iter()
            .map(|i| i.batch_id)
            .collect();
        assert_eq!(indexed, unsettled, "{context}: unsettled index");
        for (account, mut expected) in by_account {
            expected.reverse();
            let listed: Vec<(u64, u64)> = self
                .payouts_of(account, None, usize::MAX)
                .expect("payouts")
                .iter()
                .map(|p| (p.intent.batch_id, p.amount))
                .collect();
            assert_eq!(listed, expected, "{context}: {account}'s payouts");
        }
        let next = intents.last().map_or(1, |i| i.batch_id + 1);
        assert_eq!(self.next_batch_id().expect("next id"), next, "{context}");
    }

    /// Batches and amounts by intent state.
    pub fn intent_totals(&self) -> Result<IntentTotals, LedgerError> {
        Ok(self.get(INTENT_TOTALS_KEY)?.unwrap_or_default())
    }

    /// Intents not final yet (open or sent), oldest first, read through their index.
    pub(super) fn unsettled_intents(&self) -> Result<Vec<PayoutIntent>, LedgerError> {
        let mut intents = Vec::new();
        for (batch_id, _) in self.scan::<u8>(UNSETTLED_PREFIX)? {
            let intent_key = key(INTENT_PREFIX, &batch_id);
            if let Some(intent) = self.get::<PayoutIntent>(&intent_key)? {
                intents.push(intent);
            }
        }
        Ok(intents)
    }

    /// Up to `limit` of `account`'s payouts, newest first, with a batch id below
    /// `before` if given; only those are read.
    pub fn payouts_of(
        &self,
        account: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AccountPayout>, LedgerError> {
        let prefix = account_payout_prefix(account);
        let upper = [prefix.as_slice(), &before.unwrap_or(u64::MAX).to_be_bytes()].concat();
        let mut payouts = Vec::new();
        let from = IteratorMode::From(&upper, rocksdb::Direction::Reverse);
        for item in self.db.iterator(from) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || payouts.len() == limit {
                break;
            }
            // `before` itself is excluded (no batch has the id u64::MAX).
            if k.as_ref() >= upper.as_slice() {
                continue;
            }
            let batch_id = &k[prefix.len()..];
            let Some(intent) = self.get::<PayoutIntent>(&key(INTENT_PREFIX, batch_id))? else {
                continue;
            };
            payouts.push(AccountPayout {
                amount: serde_json::from_slice(&v)?,
                intent,
            });
        }
        Ok(payouts)
    }

    /// Every payout intent, oldest first.
    pub fn intents(&self) -> Result<Vec<PayoutIntent>, LedgerError> {
        Ok(self
            .scan(INTENT_PREFIX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Up to `limit` intents, newest first, with a batch id below `before` if given; only
    /// those are read.
    pub fn intents_newest_first(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PayoutIntent>, LedgerError> {
        // Intent keys are the prefix and a big-endian batch id: every one sorts below the
        // prefix followed by nine 0xff bytes.
        let upper = match before {
            Some(batch_id) => key(INTENT_PREFIX, &batch_id.to_be_bytes()),
            None => key(INTENT_PREFIX, &[0xff; 9]),
        };
        let mut intents = Vec::new();
        let from = IteratorMode::From(&upper, rocksdb::Direction::Reverse);
        for item in self.db.iterator(from) {
            let (k, v) = item?;
            if !k.starts_with(INTENT_PREFIX) || intents.len() == limit {
                break;
            }
            if k.as_ref() >= upper.as_slice() {
                continue;
            }
            intents.push(serde_json::from_slice(&v)?);
        }
        Ok(intents)
    }

    pub fn open_intents(&self) -> Result<Vec<PayoutIntent>, LedgerError> {
        let mut intents = self.unsettled_intents()?;
        intents.retain(|i| i.state == IntentState::Open);
        Ok(intents)
    }

    /// Intents the node holds but that are not yet final: followed to their confirmations.
    pub fn sent_intents(&self) -> Result<Vec<PayoutIntent>, LedgerError> {
        let mut intents = self.unsettled_intents()?;
        intents.retain(|i| i.state == IntentState::Sent);
        Ok(intents)
    }

    /// Cancels a pending (open) intent: every amount goes back from paying to mature in the
    /// same batch as the state change, so it happens once. The caller has made sure its
    /// transaction can never be mined.
    pub fn cancel_intent(
        &mut self,
        batch_id: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<Applied, LedgerError> {
        let intent_key = key(INTENT_PREFIX, &batch_id.to_be_bytes());
        let Some(mut intent) = self.get::<PayoutIntent>(&intent_key)? else {
            return Ok(Applied::NotApplicable);
        };
        if intent.state != IntentState::Open {
            return Ok(Applied::AlreadyDone);
        }
        intent.state = IntentState::Cancelled;
        self.return_amounts(intent_key, intent, reason, now_ms)
    }

    /// Puts every output of an intent that paid nothing back in its account's mature
    /// balance (from paying when `Cancelled`, from paid when `Failed`), with the intent's
    /// new state and reason, in one batch: it happens once.
    pub(super) fn return_amounts(
        &mut self,
        intent_key: Vec<u8>,
        mut intent: PayoutIntent,
        reason: &str,
        now_ms: u64,
    ) -> Result<Applied, LedgerError> {
        let (kind, was_paid, previous) = match intent.state {
            IntentState::Cancelled => (EntryKind::PayoutCancelled, false, IntentState::Open),
            IntentState::Failed => (EntryKind::PayoutReturned, true, IntentState::Sent),
            other => unreachable!("only cancelled or failed intents return amounts, not {other:?}"),
        };
        let reference = format!("batch:{}", intent.batch_id);
        let mut change = Change::new(self);
        for (account, amount) in &intent.outputs {
            change.apply(account, kind, *amount, &reference, |b| {
                if was_paid {
                    b.paid -= amount;
                } else {
                    b.paying -= amount;
                }
                b.mature += amount;
            })?;
        }
        intent.last_error = Some(reason.to_string());
        intent.settled_at_ms = Some(now_ms);
        change.put_intent(intent_key, Some(previous), &intent)?;
        change.commit()?;
        Ok(Applied::Done)
    }

    /// Records why an intent needs the operator (no balance moves).
    pub fn note_error(&mut self, batch_id: u64, error: &str) -> Result<(), LedgerError> {
        self.note(batch_id, |intent| {
            let changed = intent.last_error.as_deref() != Some(error);
            intent.last_error = Some(error.to_string());
            changed
        })
    }

    /// Records a sent intent's confirmations at the last look (no balance moves).
    pub fn note_confirmations(
        &mut self,
        batch_id: u64,
        confirmations: i64,
    ) -> Result<(), LedgerError> {
        self.note(batch_id, |intent| {
            let changed = intent.confirmations != confirmations;
            intent.confirmations = confirmations;
            changed
        })
    }

    /// Changes an intent's notes (not its state or amounts); written only if `change`
    /// says something changed.
    pub(super) fn note(
        &mut self,
        batch_id: u64,
        change: impl FnOnce(&mut PayoutIntent) -> bool,
    ) -> Result<(), LedgerError> {
        let intent_key = key(INTENT_PREFIX, &batch_id.to_be_bytes());
        let Some(mut intent) = self.get::<PayoutIntent>(&intent_key)? else {
            return Ok(());
        };
        if change(&mut intent) {
            let mut batch = WriteBatch::default();
            batch.put(intent_key, serde_json::to_vec(&intent)?);
            self.write(batch)?;
        }
        Ok(())
    }

    /// Intent `batch_id` with its key if it is `Sent`; otherwise what a step on it does:
    /// nothing, because it does not exist or is past `Sent` already.
    #[allow(clippy::type_complexity)]
    pub(super) fn sent_intent(
        &self,
        batch_id: u64,
    ) -> Result<Result<(Vec<u8>, PayoutIntent), Applied>, LedgerError> {
        let intent_key = key(INTENT_PREFIX, &batch_id.to_be_bytes());
        Ok(match self.get::<PayoutIntent>(&intent_key)? {
            None => Err(Applied::NotApplicable),
            Some(intent) if intent.state != IntentState::Sent => Err(Applied::AlreadyDone),
            Some(intent) => Ok((intent_key, intent)),
        })
    }

    /// A sent intent is final: its transaction (or `paid_by_txid`, a replacement paying
    /// every output) has the confirmations asked for. No balance moves: it was paid when
    /// sent.
    pub fn confirm_intent(
        &mut self,
        batch_id: u64,
        confirmations: i64,
        paid_by_txid: Option<String>,
        now_ms: u64,
    ) -> Result<Applied, LedgerError> {
        let (intent_key, mut intent) = match self.sent_intent(batch_id)? {
            Ok(sent) => sent,
            Err(applied) => return Ok(applied),
        };
        intent.state = IntentState::Confirmed;
        intent.confirmations = confirmations;
        intent.paid_by_txid = paid_by_txid;
        intent.settled_at_ms = Some(now_ms);
        let mut change = Change::new(self);
        change.put_intent(intent_key, Some(IntentState::Sent), &intent)?;
        change.commit()?;
        Ok(Applied::Done)
    }

    /// A sent intent's transaction was double-spent, deeply, by one that does not pay its
    /// outputs: every amount goes back from paid to mature, in the same batch as the
    /// state change, so it happens exactly once whatever crashes around it.
    pub fn fail_intent(
        &mut self,
        batch_id: u64,
        confirmations: i64,
        reason: &str,
        now_ms: u64,
    ) -> Result<Applied, LedgerError> {
        let (intent_key, mut intent) = match self.sent_intent(batch_id)? {
            Ok(sent) => sent,
            Err(applied) => return Ok(applied),
        };
        intent.state = IntentState::Failed;
        intent.confirmations = confirmations;
        self.return_amounts(intent_key, intent, reason, now_ms)
    }

    /// The id the next payout batch gets: one past the last intent's (keys sort by id).
    pub fn next_batch_id(&self) -> Result<u64, LedgerError> {
        let upper = key(INTENT_PREFIX, &[0xff; 9]);
        let last = self
            .db
            .iterator(IteratorMode::From(&upper, rocksdb::Direction::Reverse))
            .next()
            .transpose()?
            .filter(|(k, _)| k.starts_with(INTENT_PREFIX))
            .and_then(|(k, _)| k[INTENT_PREFIX.len()..].try_into().ok())
            .map(u64::from_be_bytes);
        Ok(last.map_or(1, |id| id + 1))
    }

    /// Writes a payout intent and its debits (mature → paying) in one batch. Refuses, and
    /// writes nothing, if any output exceeds its account's mature balance.
    pub fn open_intent(&mut self, intent: &PayoutIntent) -> Result<Applied, LedgerError> {
        let intent_key = key(INTENT_PREFIX, &intent.batch_id.to_be_bytes());
        if self.db.get(&intent_key)?.is_some() {
            return Ok(Applied::AlreadyDone);
        }
        let reference = format!("batch:{}", intent.batch_id);
        let mut change = Change::new(self);
        for (account, amount) in &intent.outputs {
            let mature = change.balances_of(account)?.mature;
            if mature < *amount {
                return Err(LedgerError::Overdraft {
                    account: account.clone(),
                    amount: *amount,
                    mature,
                });
            }
            change.apply(account, EntryKind::PayoutDebit, *amount, &reference, |b| {
                b.mature -= amount;
                b.paying += amount;
            })?;
        }
        change.put_intent(intent_key, None, intent)?;
        change.commit()?;
        Ok(Applied::Done)
    }

    /// The node holds the intent's transaction: its outputs move from paying to paid.
    pub fn complete_intent(&mut self, batch_id: u64, now_ms: u64) -> Result<Applied, LedgerError> {
        let intent_key = key(INTENT_PREFIX, &batch_id.to_be_bytes());
        let Some(mut intent) = self.get::<PayoutIntent>(&intent_key)? else {
            return Ok(Applied::NotApplicable);
        };
        if intent.state == IntentState::Sent {
            return Ok(Applied::AlreadyDone);
        }
        let reference = format!("batch:{batch_id}");
        let mut change = Change::new(self);
        for (account, amount) in &intent.outputs {
            change.apply(account, EntryKind::PayoutSent, *amount, &reference, |b| {
                b.paying -= amount;
                b.paid += amount;
            })?;
        }
        let previous = intent.state;
        intent.state = IntentState::Sent;
        intent.sent_at_ms = Some(now_ms);
        intent.last_error = None;
        change.put_intent(intent_key, Some(previous), &intent)?;
        change.commit()?;
        Ok(Applied::Done)
    }

    /// Records a failed broadcast and when to try again.
    pub fn note_broadcast_failure(
        &mut self,
        batch_id: u64,
        error: &str,
        next_attempt_ms: u64,
    ) -> Result<(), LedgerError> {
        let intent_key = key(INTENT_PREFIX, &batch_id.to_be_bytes());
        let Some(mut intent) = self.get::<PayoutIntent>(&intent_key)? else {
            return Ok(());
        };
        intent.broadcast_attempts += 1;
        intent.next_attempt_ms = next_attempt_ms;
        intent.last_error = Some(error.to_string());
        let mut batch = WriteBatch::default();
        batch.put(intent_key, serde_json::to_vec(&intent)?);
        self.write(batch)
    }
}

pub(super) fn account_payout_prefix(account: &str) -> Vec<u8> {
    [ACCOUNT_PAYOUT_PREFIX, account.as_bytes(), b"\0"].concat()
}

/// Adds to `batch` what an intent's write changes in the indexes: the unsettled index,
/// the account index (for a new intent), and `totals` (the caller writes them).
pub(super) fn stage_intent_indexes(
    batch: &mut WriteBatch,
    totals: &mut IntentTotals,
    previous: Option<IntentState>,
    intent: &PayoutIntent,
) {
    let amount: u64 = intent.outputs.values().sum();
    if let Some(previous) = previous {
        let tally = totals.entry(previous).or_default();
        tally.batches = tally.batches.saturating_sub(1);
        tally.amount = tally.amount.saturating_sub(amount);
    } else {
        for (account, paid) in &intent.outputs {
            let account_key = [
                account_payout_prefix(account).as_slice(),
                &intent.batch_id.to_be_bytes(),
            ]
            .concat();
            batch.put(account_key, paid.to_string());
        }
    }
    let tally = totals.entry(intent.state).or_default();
    tally.batches += 1;
    tally.amount += amount;
    let unsettled_key = key(UNSETTLED_PREFIX, &intent.batch_id.to_be_bytes());
    match intent.state {
        IntentState::Open | IntentState::Sent => batch.put(unsettled_key, b"0"),
        _ => batch.delete(unsettled_key),
    }
}
