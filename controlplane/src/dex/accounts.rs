//! Exchange accounts: one per miner address, created with its first API key; keys are
//! kept as digests, one per address (a new key revokes the old), and a key challenge's
//! serial can be used once.

use super::*;

impl DexService {
    /// The exchange account of `address`, if it has one.
    pub fn account_id(&self, address: &str) -> anyhow::Result<Option<AccountId>> {
        let Some(bytes) = self
            .accounts
            .get(prefixed(ACCOUNT_PREFIX, address.as_bytes()))?
        else {
            return Ok(None);
        };
        let bytes: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("the exchange account record of {address} is corrupt"))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    pub(super) fn ensure_account(&mut self, address: &str) -> anyhow::Result<AccountId> {
        if let Some(id) = self.account_id(address)? {
            return Ok(id);
        }
        if self.next_account > self.accounts_max {
            anyhow::bail!("the exchange holds ACCOUNTS_MAX ({ACCOUNTS_MAX}) accounts");
        }
        let id = self.next_account;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(
            prefixed(ACCOUNT_PREFIX, address.as_bytes()),
            id.to_be_bytes(),
        );
        batch.put(
            prefixed(ADDRESS_PREFIX, &id.to_be_bytes()),
            address.as_bytes(),
        );
        self.write_accounts(batch)?;
        self.next_account += 1;
        Ok(id)
    }

    /// A new API key for `address`, which replaces the one it had. Only its SHA-256 is kept.
    /// A new API key for `address`, replacing its old one, made by answering the challenge
    /// with `challenge_serial`; `None` if that challenge, or a newer one, was answered
    /// already (challenges are single use: the serial of the last one answered is kept
    /// with the key, so a replayed signature gets nothing).
    pub fn create_key(
        &mut self,
        address: &str,
        challenge_serial: u128,
        now_ms: u64,
    ) -> anyhow::Result<Option<String>> {
        let serial_key = prefixed(KEY_CHALLENGE_SERIAL_PREFIX, address.as_bytes());
        if let Some(answered) = self.accounts.get(&serial_key)? {
            let answered = u128::from_be_bytes(
                answered
                    .as_slice()
                    .try_into()
                    .context("a stored challenge serial is not 16 bytes")?,
            );
            if challenge_serial <= answered {
                return Ok(None);
            }
        }
        self.ensure_account(address)?;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let key = format!("otd_{}", hex::encode(secret));
        let digest = key_digest(&key);
        let mut batch = rocksdb::WriteBatch::default();
        if let Some(old) = self
            .accounts
            .get(prefixed(KEY_OF_ADDRESS_PREFIX, address.as_bytes()))?
        {
            batch.delete(prefixed(KEY_PREFIX, &old));
        }
        let record = KeyRecord {
            address: address.to_string(),
            created_at_ms: now_ms,
        };
        batch.put(prefixed(KEY_PREFIX, &digest), serde_json::to_vec(&record)?);
        batch.put(prefixed(KEY_OF_ADDRESS_PREFIX, address.as_bytes()), digest);
        batch.put(serial_key, challenge_serial.to_be_bytes());
        self.write_accounts(batch)?;
        Ok(Some(key))
    }

    /// The address an API key belongs to.
    pub fn authenticate(&self, key: &str) -> Option<String> {
        let bytes = self
            .accounts
            .get(prefixed(KEY_PREFIX, &key_digest(key)))
            .ok()??;
        serde_json::from_slice::<KeyRecord>(&bytes)
            .ok()
            .map(|r| r.address)
    }
}
