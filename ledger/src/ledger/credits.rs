//! Credits: found blocks credited once by hash (immature, then matured or orphaned once),
//! and PPS/FPPS share credits written with the share-log cursor that says how far they
//! go, so nothing is credited twice across crashes.

use super::*;

/// The first id a mirrored share log is given (`Ledger::log_id`): local data-plane
/// processes are numbered from 0, and a host runs at most 256 of them.
pub const CLUSTER_LOG_ID_BASE: u32 = 1 << 16;

impl Ledger {
    /// Where a credited block stands; `None` if it was never credited.
    pub fn block_state(&self, block: &str) -> Result<Option<BlockState>, LedgerError> {
        Ok(self
            .get::<CreditedBlock>(&key(BLOCK_PREFIX, block.as_bytes()))?
            .map(|b| b.state))
    }

    /// Where a credited block's round ended (`credit_block_round`).
    pub fn round_end(&self, block: &str) -> Result<Option<ShareKey>, LedgerError> {
        Ok(self
            .get::<CreditedBlock>(&key(BLOCK_PREFIX, block.as_bytes()))?
            .and_then(|b| b.round_end))
    }

    /// Credits a found block's `credits` (miners' and the pool's parts, adding up to the
    /// reward) as immature, once per block hash.
    pub fn credit_block(
        &mut self,
        block: &str,
        credits: &BTreeMap<String, u64>,
    ) -> Result<Applied, LedgerError> {
        self.credit_block_round(block, credits, None)
    }

    /// `credit_block`, keeping where the block's round ended in the same write, so the
    /// next round starts exactly there after any restart.
    pub fn credit_block_round(
        &mut self,
        block: &str,
        credits: &BTreeMap<String, u64>,
        round_end: Option<ShareKey>,
    ) -> Result<Applied, LedgerError> {
        if self.db.get(key(BLOCK_PREFIX, block.as_bytes()))?.is_some() {
            return Ok(Applied::AlreadyDone);
        }
        let mut change = Change::new(self);
        for (account, amount) in credits {
            change.apply(account, EntryKind::BlockCredit, *amount, block, |b| {
                b.immature += amount
            })?;
        }
        let record = CreditedBlock {
            credits: credits.clone(),
            state: BlockState::Immature,
            round_end,
        };
        change.batch.put(
            key(BLOCK_PREFIX, block.as_bytes()),
            serde_json::to_vec(&record)?,
        );
        change.commit()?;
        Ok(Applied::Done)
    }

    /// Moves a credited block's immature credits to mature, once.
    pub fn mature_block(&mut self, block: &str) -> Result<Applied, LedgerError> {
        self.settle(block, BlockState::Mature)
    }

    /// Takes back an orphaned block's immature credits, once. A matured block cannot be
    /// orphaned any more: maturity (100 confirmations, 60 for Monero) is past any
    /// reorganization the pool is built to survive.
    pub fn orphan_block(&mut self, block: &str) -> Result<Applied, LedgerError> {
        self.settle(block, BlockState::Orphaned)
    }

    fn settle(&mut self, block: &str, to: BlockState) -> Result<Applied, LedgerError> {
        let block_key = key(BLOCK_PREFIX, block.as_bytes());
        let Some(mut record) = self.get::<CreditedBlock>(&block_key)? else {
            return Ok(Applied::NotApplicable);
        };
        match (record.state, to) {
            (state, to) if state == to => return Ok(Applied::AlreadyDone),
            (BlockState::Immature, _) => {}
            _ => return Ok(Applied::NotApplicable),
        }
        let kind = match to {
            BlockState::Mature => EntryKind::Matured,
            _ => EntryKind::Orphaned,
        };
        let mut change = Change::new(self);
        for (account, amount) in &record.credits {
            change.apply(account, kind, *amount, block, |b| {
                b.immature -= amount;
                if to == BlockState::Mature {
                    b.mature += amount;
                }
            })?;
        }
        record.state = to;
        change.batch.put(block_key, serde_json::to_vec(&record)?);
        change.commit()?;
        Ok(Applied::Done)
    }

    /// The next share-log sequence not yet credited under PPS/FPPS, per data-plane process.
    pub fn share_cursor(&self, process: u32) -> Result<Option<u64>, LedgerError> {
        self.get(&key(CURSOR_PREFIX, &process.to_be_bytes()))
    }

    /// The id `log_id` gave the log named, if it gave one; never gives one.
    pub fn known_log_id(&self, name: &str) -> Result<Option<u32>, LedgerError> {
        self.get(&key(LOG_ID_PREFIX, name.as_bytes()))
    }

    /// The id of a share log mirrored from the cluster (`HOST.PROCESS`), under which its
    /// cursor and its shares' history keys are kept: given on first sight, written
    /// durably before it is used, and never given to another name, so two hosts' logs
    /// never share a cursor. Ids start at `CLUSTER_LOG_ID_BASE`, above every local
    /// process index.
    pub fn log_id(&mut self, name: &str) -> Result<u32, LedgerError> {
        let name_key = key(LOG_ID_PREFIX, name.as_bytes());
        if let Some(id) = self.get::<u32>(&name_key)? {
            return Ok(id);
        }
        let id = self
            .get::<u32>(LOG_ID_NEXT_KEY)?
            .unwrap_or(CLUSTER_LOG_ID_BASE);
        let next = id.checked_add(1).expect("fewer than 2^32 share logs");
        let mut change = Change::new(self);
        change.batch.put(name_key, serde_json::to_vec(&id)?);
        change
            .batch
            .put(LOG_ID_NEXT_KEY, serde_json::to_vec(&next)?);
        change.commit()?;
        Ok(id)
    }

    /// Everything PPS/FPPS has credited so far: the pool's side of its risk.
    pub fn pps_credited(&self) -> Result<u64, LedgerError> {
        Ok(self.get(PPS_CREDITED_KEY)?.unwrap_or(0))
    }

    /// PPS/FPPS: credits shares at once (mature), and moves each process's cursor past
    /// them in the same batch, so a share is credited exactly once across crashes. A
    /// cursor that would not advance means the shares were credited already.
    pub fn credit_shares(
        &mut self,
        cursors: &BTreeMap<u32, u64>,
        credits: &BTreeMap<String, u64>,
    ) -> Result<Applied, LedgerError> {
        for (process, next) in cursors {
            if self
                .share_cursor(*process)?
                .is_some_and(|stored| stored >= *next)
            {
                return Ok(Applied::AlreadyDone);
            }
        }
        let total: u64 = credits.values().sum();
        let pps_credited = self.pps_credited()? + total;
        let mut change = Change::new(self);
        for (account, amount) in credits {
            change.apply(account, EntryKind::ShareCredit, *amount, "shares", |b| {
                b.mature += amount
            })?;
        }
        for (process, next) in cursors {
            change.batch.put(
                key(CURSOR_PREFIX, &process.to_be_bytes()),
                serde_json::to_vec(next)?,
            );
        }
        change
            .batch
            .put(PPS_CREDITED_KEY, serde_json::to_vec(&pps_credited)?);
        change.commit()?;
        Ok(Applied::Done)
    }
}
