//! Transfers of the pool's coin between the ledger and the exchange, and the KYC records
//! kept beside the balances they hold back.

use super::*;

impl Ledger {
    /// Every ledger ↔ exchange transfer, oldest first.
    pub fn transfers(&self) -> Result<Vec<Transfer>, LedgerError> {
        Ok(self
            .scan(TRANSFER_PREFIX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn next_transfer_id(&self) -> Result<u64, LedgerError> {
        let last = self
            .db
            .iterator(IteratorMode::From(b"t0", rocksdb::Direction::Reverse))
            .filter_map(Result::ok)
            .find(|(k, _)| k.starts_with(TRANSFER_PREFIX))
            .and_then(|(k, _)| k[TRANSFER_PREFIX.len()..].try_into().ok())
            .map(u64::from_be_bytes);
        Ok(last.map_or(1, |id| id + 1))
    }

    /// Writes a new transfer. A deposit debits the account's mature balance into the
    /// exchange account in the same batch; a withdrawal moves nothing until `finish_transfer`.
    pub fn begin_transfer(&mut self, transfer: &Transfer) -> Result<(), LedgerError> {
        let transfer_key = key(TRANSFER_PREFIX, &transfer.id.to_be_bytes());
        let reference = format!("transfer:{}", transfer.id);
        let mut change = Change::new(self);
        if transfer.kind == TransferKind::Deposit {
            change.move_mature(
                &transfer.account,
                EXCHANGE_ACCOUNT,
                transfer.amount,
                EntryKind::ExchangeDeposit,
                &reference,
            )?;
        }
        change
            .batch
            .put(transfer_key, serde_json::to_vec(transfer)?);
        change.commit()
    }

    /// Ends a pending transfer: `Done` credits a withdrawal to the account; `Failed` gives
    /// a deposit's debit back. Anything but a pending transfer is left as it is.
    pub fn finish_transfer(&mut self, id: u64, to: TransferState) -> Result<Applied, LedgerError> {
        let transfer_key = key(TRANSFER_PREFIX, &id.to_be_bytes());
        let Some(mut transfer) = self.get::<Transfer>(&transfer_key)? else {
            return Ok(Applied::NotApplicable);
        };
        if transfer.state != TransferState::Pending || to == TransferState::Pending {
            return Ok(Applied::AlreadyDone);
        }
        let reference = format!("transfer:{id}");
        let mut change = Change::new(self);
        match (transfer.kind, to) {
            (TransferKind::Withdrawal, TransferState::Done)
            | (TransferKind::Deposit, TransferState::Failed) => change.move_mature(
                EXCHANGE_ACCOUNT,
                &transfer.account,
                transfer.amount,
                EntryKind::ExchangeWithdrawal,
                &reference,
            )?,
            _ => {}
        }
        transfer.state = to;
        change
            .batch
            .put(transfer_key, serde_json::to_vec(&transfer)?);
        change.commit()?;
        Ok(Applied::Done)
    }

    pub fn kyc(
        &self,
        account: &str,
    ) -> Result<Option<otedama_compliance::kyc::KycRecord>, LedgerError> {
        self.get(&key(KYC_PREFIX, account.as_bytes()))
    }

    pub fn set_kyc(
        &mut self,
        account: &str,
        record: &otedama_compliance::kyc::KycRecord,
    ) -> Result<(), LedgerError> {
        let mut batch = WriteBatch::default();
        batch.put(
            key(KYC_PREFIX, account.as_bytes()),
            serde_json::to_vec(record)?,
        );
        self.write(batch)
    }

    /// Records a KYC provider's verdict under its callback id, once: `false` (and nothing
    /// written) if that id was applied before, so a replayed callback cannot undo a later
    /// verdict. The id and the record are one write.
    pub fn apply_kyc_callback(
        &mut self,
        callback_id: &str,
        account: &str,
        record: &otedama_compliance::kyc::KycRecord,
    ) -> Result<bool, LedgerError> {
        let id_key = key(KYC_CALLBACK_PREFIX, callback_id.as_bytes());
        if self.db.get_pinned(&id_key)?.is_some() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.put(&id_key, serde_json::to_vec(&record.updated_at_ms)?);
        batch.put(
            key(KYC_PREFIX, account.as_bytes()),
            serde_json::to_vec(record)?,
        );
        self.write(batch)?;
        Ok(true)
    }

    /// Every address with a KYC record.
    pub fn kyc_records(
        &self,
    ) -> Result<BTreeMap<String, otedama_compliance::kyc::KycRecord>, LedgerError> {
        Ok(self
            .scan(KYC_PREFIX)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }
}
