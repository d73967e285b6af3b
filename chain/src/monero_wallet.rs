//! monero-wallet-rpc as the payer's wallet (`otedama_ledger::payments::Wallet`), with
//! monerod for what only the chain can say.
//!
//! A payment is made in two steps, as the ledger's intent and reconcile rules need: the
//! wallet builds and signs the transaction without relaying it (`do_not_relay`), the ledger
//! writes it down with its hash, and only then is it relayed. The `raw_tx` the ledger keeps
//! is the wallet's pending transaction (what `relay_tx` takes, destinations included) and
//! the signed transaction (whose key images tell whether it can still be mined). Relaying
//! it again after a crash sends the same transaction: the same key images, so it can never
//! pay twice.
//!
//! The pending transaction holds the transaction's secret key, so the ledger (and its
//! backups) now hold it too. With it, and a recipient's address, anyone can prove that
//! this transaction paid that address that amount; it spends nothing. The ledger already
//! holds every payout's addresses, amounts and txid in the clear, and its own intent is
//! that proof in all but cryptography, so the key tells a reader of the ledger nothing the
//! ledger does not. It is never shown by the API (`payment_json_full` leaves `raw_tx` out).
//!
//! Monero's outputs are not readable from the chain without the recipients' keys, so what
//! a transaction pays comes from the wallet's own record of it (`get_transfer_by_txid`),
//! and an output is named by its address (the canonical text's bytes) where the Bitcoin
//! family uses its script.

use std::time::Duration;

use serde_json::{json, Value};

use crate::monero::MoneroRpc;
use crate::rpc::{json_rpc_result, RpcError};
use otedama_ledger::payments::{SignedPayment, TxStatus, Wallet, WalletError};

/// Destinations one payment takes: a transaction has at most 16 outputs, one of them the
/// change. The ledger splits a larger batch.
pub const MONERO_PAYMENT_DESTINATIONS_MAX: usize = 15;
/// How long one wallet call may take: building a transaction with many inputs is seconds.
pub const MONERO_WALLET_RPC_TIMEOUT_S: u64 = 120;
/// The longest reply read from the wallet: a pending transaction's metadata is tens of
/// kilobytes; a transfer list of a busy wallet more.
pub const MONERO_WALLET_REPLY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Marks a `raw_tx` as this wallet's: `xmr1:TXID:METADATA:BLOB`, all hex.
const RAW_TX_PREFIX: &str = "xmr1:";
/// monero-wallet-rpc's WALLET_RPC_ERROR_CODE_NOT_OPEN: a restarted wallet-rpc has no
/// wallet open until it is told to open one.
const WALLET_NOT_OPEN: i64 = -13;

/// The wallet's balance in atomic units (piconero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoneroBalance {
    pub total: u64,
    /// What can be spent now: outputs past their lock (60 blocks for a coinbase, 10 for a
    /// transfer).
    pub unlocked: u64,
}

pub struct MoneroWallet {
    url: String,
    agent: ureq::Agent,
    daemon: MoneroRpc,
    /// The wallet file this client opened or created, opened again when a restarted
    /// wallet-rpc has none open.
    wallet_name: std::sync::Mutex<Option<String>>,
}

impl MoneroWallet {
    /// `wallet_url` is monero-wallet-rpc's address (`http://HOST:PORT`), started with
    /// `--disable-rpc-login` on a private address; `daemon` the node it uses.
    pub fn new(wallet_url: &str, daemon: MoneroRpc) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(MONERO_WALLET_RPC_TIMEOUT_S))
            .build();
        MoneroWallet {
            url: format!("{}/json_rpc", wallet_url.trim_end_matches('/')),
            agent,
            daemon,
            wallet_name: std::sync::Mutex::new(None),
        }
    }

    fn call_once(&self, method: &str, params: &Value) -> Result<Value, RpcError> {
        let body = json!({"jsonrpc": "2.0", "id": "0", "method": method, "params": params});
        json_rpc_result(
            self.agent.post(&self.url).send_json(body),
            &self.url,
            method,
            Some(MONERO_WALLET_REPLY_BYTES_MAX),
        )
    }

    /// Calls `method` on the wallet and returns its `result`. A wallet-rpc restarted since
    /// this client opened its wallet has none open: it is opened again and the call made
    /// once more.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match self.call_once(method, &params) {
            Err(RpcError::Node { code, .. }) if code == WALLET_NOT_OPEN => {
                let name = self.wallet_name.lock().expect("name lock").clone();
                let Some(name) = name else {
                    return self.call_once(method, &params);
                };
                self.call_once("open_wallet", &json!({"filename": name, "password": ""}))?;
                self.call_once(method, &params)
            }
            other => other,
        }
    }

    /// Creates a wallet file in the wallet's directory and opens it.
    pub fn create_wallet(&self, name: &str) -> Result<(), RpcError> {
        self.call(
            "create_wallet",
            json!({"filename": name, "password": "", "language": "English"}),
        )?;
        *self.wallet_name.lock().expect("name lock") = Some(name.to_string());
        Ok(())
    }

    pub fn open_wallet(&self, name: &str) -> Result<(), RpcError> {
        self.call("open_wallet", json!({"filename": name, "password": ""}))?;
        *self.wallet_name.lock().expect("name lock") = Some(name.to_string());
        Ok(())
    }

    /// The open wallet's primary address.
    pub fn primary_address(&self) -> Result<String, RpcError> {
        let result = self.call("get_address", json!({"account_index": 0}))?;
        result["address"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| malformed("get_address", "no address"))
    }

    /// Reads the chain up to the daemon's tip.
    pub fn refresh(&self) -> Result<(), RpcError> {
        self.call("refresh", json!({})).map(drop)
    }

    pub fn balance(&self) -> Result<MoneroBalance, RpcError> {
        let result = self.call("get_balance", json!({"account_index": 0}))?;
        let field = |name: &str| {
            result[name]
                .as_u64()
                .ok_or_else(|| malformed("get_balance", format!("no {name}")))
        };
        Ok(MoneroBalance {
            total: field("balance")?,
            unlocked: field("unlocked_balance")?,
        })
    }

    /// The daemon's view of `txid`: `None` if it holds it nowhere, else the height of its
    /// block (`None` inside while in the pool).
    fn daemon_transaction(&self, txid: &str) -> Result<Option<Option<u64>>, RpcError> {
        const METHOD: &str = "get_transactions";
        let reply = self
            .daemon
            .call_endpoint(METHOD, json!({"txs_hashes": [txid]}))?;
        let missed = reply["missed_tx"]
            .as_array()
            .is_some_and(|missed| missed.iter().any(|m| m == txid));
        if missed {
            return Ok(None);
        }
        let Some(tx) = reply["txs"].as_array().and_then(|txs| txs.first()) else {
            return Ok(None);
        };
        if tx["in_pool"] == json!(true) {
            return Ok(Some(None));
        }
        tx["block_height"]
            .as_u64()
            .map(|height| Some(Some(height)))
            .ok_or_else(|| malformed(METHOD, "a mined transaction without its height"))
    }

    /// The wallet's record of a transfer it made, if it has one.
    fn wallet_transfer(&self, txid: &str) -> Result<Option<Value>, RpcError> {
        match self.call("get_transfer_by_txid", json!({"txid": txid})) {
            Ok(result) => Ok(Some(result["transfer"].clone())),
            // monero-wallet-rpc's WALLET_RPC_ERROR_CODE_WRONG_TXID: not a transfer of its.
            Err(RpcError::Node { code: -8, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

fn malformed(method: &str, detail: impl std::fmt::Display) -> RpcError {
    RpcError::Malformed {
        method: method.into(),
        detail: detail.to_string(),
    }
}

fn wallet_error(error: RpcError) -> WalletError {
    match error {
        RpcError::Unreachable { .. } => WalletError::Unreachable(error.to_string()),
        other => WalletError::Refused(other.to_string()),
    }
}

/// A payment as the ledger keeps it.
fn raw_tx(txid: &str, metadata: &str, blob: &str) -> String {
    format!("{RAW_TX_PREFIX}{txid}:{metadata}:{blob}")
}

/// A kept payment's parts.
struct Kept<'a> {
    txid: &'a str,
    /// The wallet's pending transaction, which `relay_tx` takes.
    metadata: &'a str,
    /// The signed transaction.
    blob: &'a str,
}

fn parts(raw_tx: &str) -> Result<Kept<'_>, WalletError> {
    let mut fields = raw_tx
        .strip_prefix(RAW_TX_PREFIX)
        .map(|rest| rest.splitn(3, ':'));
    let mut next = || fields.as_mut().and_then(Iterator::next);
    match (next(), next(), next()) {
        (Some(txid), Some(metadata), Some(blob)) if !txid.is_empty() => Ok(Kept {
            txid,
            metadata,
            blob,
        }),
        _ => Err(WalletError::Refused(
            "not a payment of the Monero wallet".into(),
        )),
    }
}

/// The key images a signed transaction spends.
fn key_images(blob_hex: &str) -> Result<Vec<String>, WalletError> {
    let bytes = hex::decode(blob_hex)
        .map_err(|e| WalletError::Refused(format!("transaction blob is not hex: {e}")))?;
    let tx: monero::Transaction = monero::consensus::deserialize(&bytes)
        .map_err(|e| WalletError::Refused(format!("transaction blob does not decode: {e}")))?;
    Ok(tx
        .prefix
        .inputs
        .iter()
        .filter_map(|input| match input {
            monero::TxIn::ToKey { k_image, .. } => Some(hex::encode(k_image.image.as_bytes())),
            monero::TxIn::Gen { .. } => None,
        })
        .collect())
}

impl Wallet for MoneroWallet {
    fn build_payment(
        &mut self,
        outputs: &std::collections::BTreeMap<String, u64>,
    ) -> Result<SignedPayment, WalletError> {
        if outputs.is_empty() || outputs.len() > MONERO_PAYMENT_DESTINATIONS_MAX {
            return Err(WalletError::Refused(format!(
                "a Monero payment pays 1 to {MONERO_PAYMENT_DESTINATIONS_MAX} addresses, not {}",
                outputs.len()
            )));
        }
        let destinations: Vec<Value> = outputs
            .iter()
            .map(|(address, amount)| json!({"address": address, "amount": amount}))
            .collect();
        // Signed, not relayed: the ledger writes it down first. The fee comes from the
        // change, so each address receives exactly its amount.
        let result = self
            .call(
                "transfer",
                json!({"destinations": destinations, "priority": 0, "do_not_relay": true,
                       "get_tx_hex": true, "get_tx_metadata": true}),
            )
            .map_err(wallet_error)?;
        let text = |name: &str| {
            result[name]
                .as_str()
                .filter(|text| !text.is_empty())
                .ok_or_else(|| WalletError::Refused(format!("transfer returned no {name}")))
        };
        let (txid, metadata, blob) = (text("tx_hash")?, text("tx_metadata")?, text("tx_blob")?);
        // Its coins frozen, so no other payment is built from them while this one waits
        // to be written, relayed or mined (a wallet puts a dropped transaction's coins
        // back): `release_stale_locks` thaws those of a payment that was never written.
        let images = key_images(blob)?;
        for (at, image) in images.iter().enumerate() {
            if let Err(error) = self.call("freeze", json!({"key_image": image})) {
                for frozen in &images[..at] {
                    let _ = self.call("thaw", json!({"key_image": frozen}));
                }
                return Err(wallet_error(error));
            }
        }
        let _ = self.call("store", json!({}));
        Ok(SignedPayment {
            raw_tx: raw_tx(txid, metadata, blob),
            txid: txid.to_string(),
        })
    }

    fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError> {
        let kept = parts(raw_tx)?;
        self.call("relay_tx", json!({"hex": kept.metadata}))
            .map(drop)
            .map_err(wallet_error)
    }

    fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError> {
        Ok(self
            .daemon_transaction(txid)
            .map_err(wallet_error)?
            .is_some())
    }

    fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError> {
        match self.daemon_transaction(txid).map_err(wallet_error)? {
            Some(Some(height)) => {
                let tip = self.daemon.last_block_header().map_err(wallet_error)?;
                Ok(TxStatus::Confirmed(
                    tip.height.saturating_sub(height).saturating_add(1),
                ))
            }
            Some(None) => Ok(TxStatus::InMempool),
            // Monero does not say which transaction spent a dropped one's key images:
            // `never_minable` tells the ledger whether it may still be sent.
            None => match self.wallet_transfer(txid).map_err(wallet_error)? {
                Some(_) => Ok(TxStatus::Dropped),
                None => Ok(TxStatus::Unknown),
            },
        }
    }

    fn pays_outputs(
        &mut self,
        txid: &str,
        outputs: &[(Vec<u8>, u64)],
    ) -> Result<bool, WalletError> {
        let Some(transfer) = self.wallet_transfer(txid).map_err(wallet_error)? else {
            return Ok(false);
        };
        let paid: Vec<(Vec<u8>, u64)> = transfer["destinations"]
            .as_array()
            .map(|destinations| {
                destinations
                    .iter()
                    .filter_map(|d| {
                        Some((
                            d["address"].as_str()?.as_bytes().to_vec(),
                            d["amount"].as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(outputs.iter().all(|wanted| paid.contains(wanted)))
    }

    fn never_minable(&mut self, raw_tx: &str) -> Result<Option<String>, WalletError> {
        const METHOD: &str = "is_key_image_spent";
        let kept = parts(raw_tx)?;
        let images = key_images(kept.blob)?;
        let reply = self
            .daemon
            .call_endpoint(METHOD, json!({"key_images": images}))
            .map_err(wallet_error)?;
        let statuses = reply["spent_status"]
            .as_array()
            .filter(|statuses| statuses.len() == images.len())
            .ok_or_else(|| wallet_error(malformed(METHOD, "one status per key image")))?;
        // 1: spent in the chain; 2: in the pool, which may still drop the other
        // transaction.
        let Some(at) = statuses.iter().position(|status| status == 1) else {
            return Ok(None);
        };
        // Spent by this very transaction (mined while the ledger did not see it) is not
        // "never": it is paid.
        if self
            .daemon_transaction(kept.txid)
            .map_err(wallet_error)?
            .is_some()
        {
            return Ok(None);
        }
        Ok(Some(format!(
            "its key image {} is spent in the chain by another transaction",
            images[at]
        )))
    }

    fn sends_since(&mut self, since_unix_s: u64) -> Result<Vec<String>, WalletError> {
        // A list from a daemon still syncing, or a wallet behind it (restored, rescanning),
        // would miss sends: refused until both are at the tip.
        let info = self
            .daemon
            .call("get_info", json!({}))
            .map_err(wallet_error)?;
        if info["synchronized"] != json!(true) || info["busy_syncing"] == json!(true) {
            return Err(WalletError::Unreachable(
                "monerod is still syncing: the wallet's sends are not all known".into(),
            ));
        }
        let daemon_height = info["height"].as_u64().unwrap_or(u64::MAX);
        let wallet_height = self.call("get_height", json!({})).map_err(wallet_error)?["height"]
            .as_u64()
            .unwrap_or(0);
        if wallet_height < daemon_height {
            return Err(WalletError::Unreachable(format!(
                "the wallet has read {wallet_height} of {daemon_height} blocks: its sends are not all known"
            )));
        }
        let result = self
            .call("get_transfers", json!({"out": true, "pending": true}))
            .map_err(wallet_error)?;
        let mut sends = Vec::new();
        for kind in ["out", "pending"] {
            for transfer in result[kind].as_array().into_iter().flatten() {
                if transfer["timestamp"].as_u64().unwrap_or(u64::MAX) >= since_unix_s {
                    if let Some(txid) = transfer["txid"].as_str() {
                        sends.push(txid.to_string());
                    }
                }
            }
        }
        sends.sort();
        sends.dedup();
        Ok(sends)
    }

    /// Thaws every frozen coin that no payment in `keep` spends: coins frozen for a
    /// payment that was built and never written (the pool stopped, or the batch changed
    /// while it was built).
    fn release_stale_locks(&mut self, keep: &[&str]) -> Result<usize, WalletError> {
        let mut kept_images = std::collections::BTreeSet::new();
        for raw_tx in keep {
            // A pending payment that cannot be read keeps every coin frozen.
            let Ok(kept) = parts(raw_tx) else {
                return Ok(0);
            };
            let Ok(images) = key_images(kept.blob) else {
                return Ok(0);
            };
            kept_images.extend(images);
        }
        let result = self
            .call("incoming_transfers", json!({"transfer_type": "available"}))
            .map_err(wallet_error)?;
        let mut thawed = 0;
        for transfer in result["transfers"].as_array().into_iter().flatten() {
            let Some(image) = transfer["key_image"].as_str() else {
                continue;
            };
            if transfer["frozen"] == json!(true) && !kept_images.contains(image) {
                self.call("thaw", json!({"key_image": image}))
                    .map_err(wallet_error)?;
                thawed += 1;
            }
        }
        Ok(thawed)
    }

    fn payment_outputs_max(&self) -> usize {
        MONERO_PAYMENT_DESTINATIONS_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payment's two parts come back out of the string the ledger keeps; anything else
    /// is not this wallet's.
    #[test]
    fn a_kept_payment_splits_into_its_parts() {
        let kept = raw_tx("ee", "abcd", "0102");
        let parts_of = parts(&kept).unwrap();
        assert_eq!(
            (parts_of.txid, parts_of.metadata, parts_of.blob),
            ("ee", "abcd", "0102")
        );
        for other in [
            "0200000001",
            "xmr1:abcd",
            "xmr1:ab:cd",
            "xmr1::ab:cd",
            "xmr2:ee:ab:cd",
            "",
        ] {
            assert!(parts(other).is_err(), "{other}");
        }
        assert!(key_images("zz").is_err());
        assert!(key_images("00").is_err());
    }
}
