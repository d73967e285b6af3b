//! Moves of the pool's coin between the ledger and the exchange, written to the ledger
//! first with the journal sequence their command takes, so a restart finishes each exactly
//! once (`recover_transfers`).

use super::*;

/// How long a transfer waits for a backup's copy of the exchange and the ledger before it
/// answers 503: not at all, since it holds the exchange's and the ledger's locks (which
/// share crediting needs) while it waits.
const TRANSFER_GATE_WAIT_MS: u64 = 0;
/// How long settling pending transfers (at start, on taking over) waits for one.
const TRANSFER_GATE_RECOVERY_WAIT_MS: u64 = 120_000;

impl DexService {
    pub(super) fn recover_transfers(&mut self, ledger: &mut Ledger) -> anyhow::Result<()> {
        // Settling writes the journal and the ledger, as a transfer does.
        let _gate = self
            .transfer_gate
            .for_transfer(TRANSFER_GATE_RECOVERY_WAIT_MS)?
            .context("a backup held the exchange's transfer gate; settling waits for it")?;
        for transfer in ledger.transfers()? {
            if transfer.state != TransferState::Pending {
                continue;
            }
            let account = self
                .account_id(&transfer.account)?
                .context("a pending transfer names an address without an exchange account")?;
            let command = self.transfer_command(&transfer, account);
            let journaled = self
                .dex
                .journal
                .command_at(transfer.exchange_sequence)
                .map_err(DexError::internal)?;
            let outcome = if journaled == Some(command) {
                TransferState::Done
            } else if journaled.is_some()
                || transfer.exchange_sequence != self.dex.journal.next_sequence()
            {
                anyhow::bail!(
                    "transfer {} expects journal entry {} to be its own or the next one",
                    transfer.id,
                    transfer.exchange_sequence
                );
            } else if transfer.kind == TransferKind::Deposit {
                // The debit is in the ledger, the credit never reached the exchange: give
                // it now, under the sequence the transfer names.
                self.events.clear();
                match self.dex.submit(&command, &mut self.events) {
                    Ok(Ok(())) => TransferState::Done,
                    Ok(Err(_)) => TransferState::Failed,
                    Err(e) => return Err(anyhow::anyhow!("exchange journal: {e}")),
                }
            } else {
                // A withdrawal the exchange never took: nothing moved.
                TransferState::Failed
            };
            ledger.finish_transfer(transfer.id, outcome)?;
            tracing::info!(
                id = transfer.id,
                ?outcome,
                "pending exchange transfer finished at start"
            );
        }
        Ok(())
    }

    pub(super) fn transfer_command(&self, transfer: &Transfer, account: AccountId) -> Command {
        match transfer.kind {
            TransferKind::Deposit => Command::Deposit {
                account,
                asset: self.pool_asset,
                amount: transfer.amount,
            },
            TransferKind::Withdrawal => Command::Withdraw {
                account,
                asset: self.pool_asset,
                amount: transfer.amount,
            },
        }
    }

    /// Moves `amount` of the pool's coin between the address's mature ledger balance and
    /// its exchange account: in for a deposit, back out (where payouts pick it up) for a
    /// withdrawal.
    pub fn transfer(
        &mut self,
        ledger: &mut Ledger,
        address: &str,
        amount: u64,
        now_ms: u64,
        kind: TransferKind,
    ) -> Result<Transfer, DexError> {
        // First: in cluster mode only an exchange taken over in this term, with room in its
        // stream, goes on; after any failed write it was taken over again (the stream read,
        // pending transfers settled), so the journal sequence the transfer names is free.
        self.ensure_leads()?;
        // Held from the first ledger write to the last, so a backup never copies the
        // ledger and the journal from the middle of a transfer.
        let _gate = self
            .transfer_gate
            .for_transfer(TRANSFER_GATE_WAIT_MS)
            .map_err(DexError::internal)?
            .ok_or_else(|| {
                DexError::Unavailable(
                    "a backup is copying the exchange and the ledger; try again in a few seconds"
                        .into(),
                )
            })?;
        let account = self.ensure_account(address)?;
        let mut transfer = Transfer {
            id: ledger.next_transfer_id().map_err(DexError::internal)?,
            kind,
            account: address.to_string(),
            amount,
            exchange_sequence: self.dex.journal.next_sequence(),
            state: TransferState::Pending,
            created_at_ms: now_ms,
        };
        let command = self.transfer_command(&transfer, account);
        // Refuse before writing anything: a refused command never reaches the ledger.
        self.dex.exchange.check(&command)?;
        match ledger.begin_transfer(&transfer) {
            Ok(()) => {}
            Err(otedama_ledger::ledger::LedgerError::Overdraft { mature, .. }) => {
                return Err(DexError::Invalid(format!(
                    "the mature balance is {}, less than {}",
                    coins_text(u128::from(mature)),
                    coins_text(u128::from(amount))
                )))
            }
            // Cluster mode: the ledger stream may hold the pending transfer even so; no
            // command takes its journal sequence before a take-over has settled it.
            Err(e) => {
                self.lose_place(&e);
                return Err(DexError::internal(e));
            }
        }
        let outcome = match self.submit(&command) {
            Ok(_) => TransferState::Done,
            Err(DexError::Refused(_)) => TransferState::Failed,
            // The journal failed, or the command was not tried: the transfer stays
            // pending, and the next start (in cluster mode, the next take-over, before any
            // other command) settles it.
            Err(e) => {
                self.lose_place(&e);
                return Err(e);
            }
        };
        if let Err(e) = ledger.finish_transfer(transfer.id, outcome) {
            // Settled by the next take-over too (its command is in the journal at its
            // sequence, or it was refused and nothing moved).
            self.lose_place(&e);
            return Err(DexError::internal(e));
        }
        transfer.state = outcome;
        Ok(transfer)
    }

    /// Credits coins that came from outside the pool (an operator's liquidity) to an
    /// address's exchange account. The pool's own coin only enters through the ledger.
    pub fn credit_external(
        &mut self,
        address: &str,
        asset_symbol: &str,
        amount: u64,
    ) -> Result<(), DexError> {
        self.ensure_leads()?;
        let asset = self.asset(asset_symbol)?;
        if asset == self.pool_asset {
            return Err(DexError::Invalid(format!(
                "{asset_symbol} enters the exchange from ledger balances (POST /api/v1/dex/deposits)"
            )));
        }
        let account = self.ensure_account(address)?;
        self.submit(&Command::Deposit {
            account,
            asset,
            amount,
        })?;
        Ok(())
    }
}
