//! The node's wallet as the payer uses it, over Bitcoin Core wallet RPC: fund and sign a
//! batch with `createrawtransaction` → `fundrawtransaction` → `signrawtransactionwithwallet`,
//! send with `sendrawtransaction`, and look a txid up with `gettransaction` (the wallet's
//! own record, confirmed or not) and `getrawtransaction` (the mempool).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::rpc::{RpcClient, RpcError};
use crate::payouts::payments::{SignedPayment, Wallet, WalletError};

/// Bitcoin Core's codes for "already have it": RPC_VERIFY_ALREADY_IN_CHAIN, and the
/// mempool's own rejection reasons for a transaction it holds.
const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;

pub struct NodeWallet {
    rpc: RpcClient,
}

/// An amount in the smallest unit as the decimal string the node parses exactly
/// (Bitcoin Core takes amounts as JSON strings as well as numbers; a string never
/// passes through a float).
pub fn coins_text(amount: u64) -> String {
    format!("{}.{:08}", amount / 100_000_000, amount % 100_000_000)
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
            .map(|(address, amount)| (address.clone(), json!(coins_text(*amount))))
            .collect();
        let unfunded = self
            .rpc
            .call("createrawtransaction", json!([[], amounts]))
            .map_err(wallet_error)?;
        // The wallet adds inputs and a change output and pays the fee from the change, so
        // each miner receives exactly its balance.
        let funded = self
            .rpc
            .call(
                "fundrawtransaction",
                json!([unfunded, {"lockUnspents": false}]),
            )
            .map_err(wallet_error)?;
        let signed = self
            .rpc
            .call("signrawtransactionwithwallet", json!([funded["hex"]]))
            .map_err(wallet_error)?;
        if signed["complete"] != json!(true) {
            return Err(WalletError::Refused(format!(
                "the wallet could not sign every input: {}",
                signed["errors"]
            )));
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_written_as_exact_decimals() {
        assert_eq!(coins_text(1), "0.00000001");
        assert_eq!(coins_text(100_000_000), "1.00000000");
        assert_eq!(coins_text(2_100_000_000_000_000), "21000000.00000000");
        assert_eq!(coins_text(1_234_567_891), "12.34567891");
    }
}
