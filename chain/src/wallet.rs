//! The node's wallet as the payer uses it, over Bitcoin Core wallet RPC: fund and sign a
//! batch with `createrawtransaction` → `fundrawtransaction` → `signrawtransactionwithwallet`,
//! send with `sendrawtransaction`, and look a txid up with `gettransaction` (the wallet's
//! own record, confirmed or not) and `getrawtransaction` (the mempool).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::rpc::{RpcClient, RpcError};
use otedama_ledger::payments::{SignedPayment, TxStatus, Wallet, WalletError};
use otedama_ledger::Amount;

/// Bitcoin Core's codes for "already have it": RPC_VERIFY_ALREADY_IN_CHAIN, and the
/// mempool's own rejection reasons for a transaction it holds.
const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;

pub struct NodeWallet {
    rpc: RpcClient,
}

impl NodeWallet {
    pub fn new(rpc: RpcClient) -> Self {
        NodeWallet { rpc }
    }
}

fn wallet_error(error: RpcError) -> WalletError {
    match error {
        RpcError::Unreachable { .. } => WalletError::Unreachable(error.to_string()),
        other => WalletError::Refused(other.to_string()),
    }
}

impl Wallet for NodeWallet {
    fn build_payment(
        &mut self,
        outputs: &BTreeMap<String, u64>,
    ) -> Result<SignedPayment, WalletError> {
        let amounts: serde_json::Map<String, Value> = outputs
            .iter()
            .map(|(address, amount)| {
                (
                    address.clone(),
                    json!(Amount::from_units(*amount).to_string()),
                )
            })
            .collect();
        let unfunded = self
            .rpc
            .call("createrawtransaction", json!([[], amounts]))
            .map_err(wallet_error)?;
        // The wallet adds inputs and a change output and pays the fee from the change, so
        // each miner receives exactly its balance. The inputs are locked, so the wallet
        // spends them on nothing else while the payout waits to be sent; the transaction
        // signals replaceability, so an operator can bump its fee (a replacement that pays
        // every output still counts as the payout: see `payments::follow_sent`).
        let funded = self
            .rpc
            .call(
                "fundrawtransaction",
                json!([unfunded, {"lockUnspents": true, "replaceable": true}]),
            )
            .map_err(wallet_error)?;
        let signed = match self
            .rpc
            .call("signrawtransactionwithwallet", json!([funded["hex"]]))
        {
            Ok(signed) if signed["complete"] == json!(true) => signed,
            failed => {
                // Nothing will spend the inputs funding locked: give them back.
                self.unlock_inputs(&funded["hex"]);
                return Err(match failed {
                    Err(error) => wallet_error(error),
                    Ok(signed) => WalletError::Refused(format!(
                        "the wallet could not sign every input: {}",
                        signed["errors"]
                    )),
                });
            }
        };
        let raw_tx = signed["hex"]
            .as_str()
            .ok_or_else(|| WalletError::Refused("signed transaction has no hex".into()))?
            .to_string();
        let decoded = self
            .rpc
            .call("decoderawtransaction", json!([raw_tx]))
            .map_err(wallet_error)?;
        let txid = decoded["txid"]
            .as_str()
            .ok_or_else(|| WalletError::Refused("decoded transaction has no txid".into()))?
            .to_string();
        Ok(SignedPayment { raw_tx, txid })
    }

    fn broadcast(&mut self, raw_tx: &str) -> Result<(), WalletError> {
        match self.rpc.call("sendrawtransaction", json!([raw_tx])) {
            Ok(_) => Ok(()),
            Err(RpcError::Node { code, .. }) if code == RPC_VERIFY_ALREADY_IN_CHAIN => Ok(()),
            Err(RpcError::Node { ref message, .. })
                if message.contains("txn-already-in-mempool")
                    || message.contains("txn-already-known") =>
            {
                Ok(())
            }
            Err(error) => Err(wallet_error(error)),
        }
    }

    fn transaction_status(&mut self, txid: &str) -> Result<TxStatus, WalletError> {
        let tx = match self.rpc.call("gettransaction", json!([txid])) {
            Ok(tx) => tx,
            Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => {
                return match self.rpc.call("getrawtransaction", json!([txid])) {
                    Ok(_) => Ok(TxStatus::InMempool),
                    Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => {
                        Ok(TxStatus::Unknown)
                    }
                    Err(error) => Err(wallet_error(error)),
                };
            }
            Err(error) => return Err(wallet_error(error)),
        };
        let confirmations = tx["confirmations"].as_i64().unwrap_or(0);
        let conflicts: Vec<String> = tx["walletconflicts"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if confirmations > 0 {
            return Ok(TxStatus::Confirmed(confirmations as u64));
        }
        if confirmations < 0 {
            return Ok(TxStatus::Conflicted {
                depth: confirmations.unsigned_abs(),
                conflicts,
            });
        }
        match self.rpc.call("getmempoolentry", json!([txid])) {
            Ok(_) => Ok(TxStatus::InMempool),
            // Out of the mempool, unmined: replaced by a conflict still in the mempool, or
            // dropped.
            Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => {
                if conflicts.is_empty() {
                    Ok(TxStatus::Dropped)
                } else {
                    Ok(TxStatus::Conflicted {
                        depth: 0,
                        conflicts,
                    })
                }
            }
            Err(error) => Err(wallet_error(error)),
        }
    }

    fn pays_outputs(
        &mut self,
        txid: &str,
        outputs: &[(Vec<u8>, u64)],
    ) -> Result<bool, WalletError> {
        let Some(transaction) = self.transaction(txid)? else {
            return Ok(false);
        };
        let paid: Vec<(Vec<u8>, u64)> = transaction
            .output
            .iter()
            .map(|out| (out.script_pubkey.to_bytes(), out.value.to_sat()))
            .collect();
        Ok(outputs.iter().all(|wanted| paid.contains(wanted)))
    }

    fn never_minable(&mut self, raw_tx: &str) -> Result<Option<String>, WalletError> {
        let verdict = self
            .rpc
            .call("testmempoolaccept", json!([[raw_tx]]))
            .map_err(wallet_error)?;
        let reason = verdict[0]["reject-reason"].as_str().unwrap_or("");
        // Only a missing or spent input makes it unminable for ever; a low fee, a full
        // mempool or a conflict still in the mempool can pass.
        let never = reason.contains("missing-inputs") || reason.contains("missingorspent");
        Ok(never.then(|| reason.to_string()))
    }

    fn release_stale_locks(&mut self, keep: &[&str]) -> Result<usize, WalletError> {
        let decoded: Option<Vec<bitcoin::Transaction>> = keep
            .iter()
            .map(|raw| {
                let bytes = hex::decode(raw).ok()?;
                bitcoin::consensus::deserialize::<bitcoin::Transaction>(&bytes).ok()
            })
            .collect();
        // A pending payout whose inputs cannot be told keeps every lock.
        let Some(decoded) = decoded else {
            return Ok(0);
        };
        let kept: std::collections::HashSet<(String, u32)> = decoded
            .into_iter()
            .flat_map(|tx| {
                tx.input.into_iter().map(|input| {
                    (
                        input.previous_output.txid.to_string(),
                        input.previous_output.vout,
                    )
                })
            })
            .collect();
        let locked = self
            .rpc
            .call("listlockunspent", json!([]))
            .map_err(wallet_error)?;
        let stale: Vec<Value> = locked
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|coin| {
                let outpoint = (
                    coin["txid"].as_str().unwrap_or_default().to_string(),
                    coin["vout"].as_u64().unwrap_or(u64::MAX) as u32,
                );
                !kept.contains(&outpoint)
            })
            .map(|coin| json!({"txid": coin["txid"], "vout": coin["vout"]}))
            .collect();
        if !stale.is_empty() {
            self.rpc
                .call("lockunspent", json!([true, stale]))
                .map_err(wallet_error)?;
        }
        Ok(stale.len())
    }

    fn knows_transaction(&mut self, txid: &str) -> Result<bool, WalletError> {
        match self.rpc.call("gettransaction", json!([txid])) {
            // A conflicted transaction (negative confirmations) will never pay.
            Ok(tx) => return Ok(tx["confirmations"].as_i64().unwrap_or(0) >= 0),
            Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => {}
            Err(error) => return Err(wallet_error(error)),
        }
        match self.rpc.call("getrawtransaction", json!([txid])) {
            Ok(_) => Ok(true),
            Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => Ok(false),
            Err(error) => Err(wallet_error(error)),
        }
    }

    fn sends_since(&mut self, since_unix_s: u64) -> Result<Vec<String>, WalletError> {
        let chain = self
            .rpc
            .call("getblockchaininfo", json!([]))
            .map_err(wallet_error)?;
        if chain["initialblockdownload"].as_bool() != Some(false) {
            return Err(WalletError::Unreachable(
                "the node is in its initial block download: its wallet may not list every payment yet".into(),
            ));
        }
        let wallet = self
            .rpc
            .call("getwalletinfo", json!([]))
            .map_err(wallet_error)?;
        if wallet["scanning"].is_object() {
            return Err(WalletError::Unreachable(
                "the wallet is rescanning: it may not list every payment yet".into(),
            ));
        }
        // `listsinceblock` from the newest block whose time is before `since_unix_s`
        // gives every wallet transaction in a later block or in none: one call, however
        // long the wallet's history. Block times may run up to two hours out of order,
        // which the caller's margin covers; the search only picks where to start.
        let tip = chain["blocks"]
            .as_u64()
            .ok_or_else(|| WalletError::Refused("getblockchaininfo without blocks".into()))?;
        let block_time = |height: u64| -> Result<u64, WalletError> {
            let hash = self
                .rpc
                .call("getblockhash", json!([height]))
                .map_err(wallet_error)?;
            let header = self
                .rpc
                .call("getblockheader", json!([hash]))
                .map_err(wallet_error)?;
            header["time"]
                .as_u64()
                .ok_or_else(|| WalletError::Refused(format!("block {height} has no time")))
        };
        let start = if block_time(0)? >= since_unix_s {
            String::new()
        } else {
            // The highest height whose block time is before `since_unix_s`.
            let (mut below, mut above) = (0u64, tip + 1);
            while above - below > 1 {
                let middle = below + (above - below) / 2;
                if block_time(middle)? < since_unix_s {
                    below = middle;
                } else {
                    above = middle;
                }
            }
            let hash = self
                .rpc
                .call("getblockhash", json!([below]))
                .map_err(wallet_error)?;
            hash.as_str().unwrap_or_default().to_string()
        };
        let listed = self
            .rpc
            .call("listsinceblock", json!([start, 1, true]))
            .map_err(wallet_error)?;
        let mut sends = std::collections::BTreeSet::new();
        for entry in listed["transactions"].as_array().into_iter().flatten() {
            let sent = entry["category"] == "send"
                && entry["abandoned"].as_bool() != Some(true)
                && entry["confirmations"].as_i64().unwrap_or(0) >= 0;
            if let (true, Some(txid)) = (sent, entry["txid"].as_str()) {
                sends.insert(txid.to_string());
            }
        }
        Ok(sends.into_iter().collect())
    }
}

impl NodeWallet {
    /// Unlocks the inputs of a funded transaction that will not be sent (best effort: a
    /// node restart unlocks them anyway).
    fn unlock_inputs(&self, transaction_hex: &Value) {
        let Ok(decoded) = self
            .rpc
            .call("decoderawtransaction", json!([transaction_hex]))
        else {
            return;
        };
        let inputs: Vec<Value> = decoded["vin"]
            .as_array()
            .map(|vin| {
                vin.iter()
                    .map(|input| json!({"txid": input["txid"], "vout": input["vout"]}))
                    .collect()
            })
            .unwrap_or_default();
        if let Err(error) = self.rpc.call("lockunspent", json!([true, inputs])) {
            tracing::warn!(%error, "cannot unlock the inputs of a payout that was not signed");
        }
    }

    /// Transaction `txid` from the wallet's record if it has one, or the mempool, decoded
    /// here from its bytes so every amount is exact.
    fn transaction(&self, txid: &str) -> Result<Option<bitcoin::Transaction>, WalletError> {
        let hex = match self.rpc.call("gettransaction", json!([txid])) {
            Ok(tx) => tx["hex"].clone(),
            Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => {
                match self.rpc.call("getrawtransaction", json!([txid])) {
                    Ok(hex) => hex,
                    Err(RpcError::Node { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => {
                        return Ok(None)
                    }
                    Err(error) => return Err(wallet_error(error)),
                }
            }
            Err(error) => return Err(wallet_error(error)),
        };
        let bytes = hex
            .as_str()
            .and_then(|text| hex::decode(text).ok())
            .ok_or_else(|| WalletError::Refused(format!("transaction {txid} has no hex")))?;
        bitcoin::consensus::deserialize(&bytes)
            .map(Some)
            .map_err(|e| WalletError::Refused(format!("transaction {txid} does not decode: {e}")))
    }
}
