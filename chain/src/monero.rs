//! monerod's JSON-RPC, as a pool needs it (issue 22, first slice): block templates with
//! room reserved for the pool's extra nonce, block submission, and the chain's tip. The
//! same `RpcError` as the Bitcoin-family client, so callers handle one error type.
//!
//! monerod speaks JSON-RPC 2.0 at `/json_rpc`, without credentials unless started with
//! `--rpc-login` (not supported here yet: bind it to loopback or a private network).

use std::time::Duration;

use serde_json::{json, Value};

use crate::rpc::{json_rpc_result, RpcError};

/// The most bytes monerod reserves in a template's extra field for the pool
/// (`get_block_template`'s `reserve_size`). The call takes up to 255, but monerod 0.18
/// builds no template past 127 ("failed to create block template", tried on regtest:
/// 127 works, 128 does not), so 127 is the most worth asking for.
pub const RESERVE_SIZE_MAX: u8 = 127;
/// How long one call may take; a template with a full mempool is built in milliseconds.
pub const MONERO_RPC_TIMEOUT_S: u64 = 30;
/// The longest reply read from the daemon: a template of the largest block (a few MB,
/// twice over in hex) fits many times; a reply past it is an error, not memory spent.
pub const MONERO_RPC_REPLY_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// A monerod block template, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroBlockTemplate {
    /// The whole block, to be submitted once its nonce and extra nonce are set.
    pub blob: Vec<u8>,
    /// What miners hash (the header, the transactions' tree root and their count) for the
    /// blob as sent, with the reserved bytes zero. Once an extra nonce is written the
    /// coinbase changes and so does the tree root in it: this one is then stale.
    pub hashing_blob: Vec<u8>,
    pub difficulty: u128,
    pub height: u64,
    /// Where the reserved bytes start in `blob`.
    pub reserved_offset: usize,
    /// How many bytes were reserved there.
    pub reserve_size: u8,
    /// The RandomX key block's hash for this height.
    pub seed_hash: [u8; 32],
    /// The next key block's hash once a seed change is near, for preparing its dataset.
    pub next_seed_hash: Option<[u8; 32]>,
    /// The coinbase reward in atomic units (piconero).
    pub expected_reward: u64,
    pub prev_hash: [u8; 32],
}

impl MoneroBlockTemplate {
    /// The blob with `extra_nonce` written at the start of the reserved bytes; `None` if it
    /// does not fit in them.
    pub fn with_extra_nonce(&self, extra_nonce: &[u8]) -> Option<Vec<u8>> {
        if extra_nonce.len() > self.reserve_size as usize {
            return None;
        }
        let end = self.reserved_offset.checked_add(extra_nonce.len())?;
        let mut blob = self.blob.clone();
        blob.get_mut(self.reserved_offset..end)?
            .copy_from_slice(extra_nonce);
        Some(blob)
    }
}

/// The chain's tip as monerod reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroBlockHeader {
    pub height: u64,
    pub hash: [u8; 32],
    pub reward: u64,
}

/// A blocking monerod RPC client.
#[derive(Clone)]
pub struct MoneroRpc {
    url: String,
    agent: ureq::Agent,
}

impl MoneroRpc {
    /// `base_url` is the daemon's RPC address, `http://HOST:PORT`.
    pub fn new(base_url: &str) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(MONERO_RPC_TIMEOUT_S))
            .build();
        MoneroRpc {
            url: format!("{}/json_rpc", base_url.trim_end_matches('/')),
            agent,
        }
    }

    /// Calls `method` and returns its `result`.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let body = json!({"jsonrpc": "2.0", "id": "0", "method": method, "params": params});
        let result = json_rpc_result(
            self.agent.post(&self.url).send_json(body),
            &self.url,
            method,
            Some(MONERO_RPC_REPLY_BYTES_MAX),
        )?;
        // An answer with a status other than OK is the daemon declining: "BUSY" while it
        // syncs, for one.
        match result["status"].as_str() {
            None | Some("OK") => Ok(result),
            Some(status) => Err(RpcError::Node {
                method: method.into(),
                code: 0,
                message: format!("status {status}"),
            }),
        }
    }

    /// `get_block_template` paying the coinbase to `wallet_address`, with `reserve_size`
    /// bytes kept in the coinbase's extra field for the pool's extra nonce.
    pub fn block_template(
        &self,
        wallet_address: &str,
        reserve_size: u8,
    ) -> Result<MoneroBlockTemplate, RpcError> {
        const METHOD: &str = "get_block_template";
        let result = self.call(
            METHOD,
            json!({"wallet_address": wallet_address, "reserve_size": reserve_size}),
        )?;
        let blob = hex_field(&result, "blocktemplate_blob", METHOD)?;
        let reserved_offset = usize::try_from(u64_field(&result, "reserved_offset", METHOD)?)
            .map_err(|e| malformed(METHOD, e))?;
        let reserved_end = reserved_offset.checked_add(reserve_size as usize);
        if reserved_end.is_none_or(|end| end > blob.len()) {
            return Err(malformed(
                METHOD,
                format!(
                    "reserved bytes at {reserved_offset} (+{reserve_size}) past a {}-byte blob",
                    blob.len()
                ),
            ));
        }
        // `wide_difficulty` (a hex string) carries all 128 bits; `difficulty` only the low 64.
        let difficulty = match result["wide_difficulty"].as_str() {
            Some(wide) => u128::from_str_radix(wide.strip_prefix("0x").unwrap_or(wide), 16)
                .map_err(|e| malformed(METHOD, format!("wide_difficulty {wide}: {e}")))?,
            None => u128::from(u64_field(&result, "difficulty", METHOD)?),
        };
        if difficulty == 0 {
            return Err(malformed(METHOD, "difficulty 0"));
        }
        let next_seed_hash = match result["next_seed_hash"].as_str() {
            None | Some("") => None,
            Some(_) => Some(hash_field(&result, "next_seed_hash", METHOD)?),
        };
        Ok(MoneroBlockTemplate {
            hashing_blob: hex_field(&result, "blockhashing_blob", METHOD)?,
            blob,
            difficulty,
            height: u64_field(&result, "height", METHOD)?,
            reserved_offset,
            reserve_size,
            seed_hash: hash_field(&result, "seed_hash", METHOD)?,
            next_seed_hash,
            expected_reward: u64_field(&result, "expected_reward", METHOD)?,
            prev_hash: hash_field(&result, "prev_hash", METHOD)?,
        })
    }

    /// `submit_block`: `Ok` when the daemon did not reject the block, which includes a
    /// block it already had and one that only joined a side chain; whether a found block
    /// is in the chain is for the caller to confirm from the chain. A rejection is
    /// `RpcError::Node`.
    pub fn submit_block(&self, blob: &[u8]) -> Result<(), RpcError> {
        let result = self.call("submit_block", json!([hex::encode(blob)]))?;
        match result["status"].as_str() {
            Some("OK") => Ok(()),
            _ => Err(malformed("submit_block", result)),
        }
    }

    /// `get_last_block_header`: the tip.
    pub fn last_block_header(&self) -> Result<MoneroBlockHeader, RpcError> {
        const METHOD: &str = "get_last_block_header";
        let result = self.call(METHOD, json!({}))?;
        let header = &result["block_header"];
        Ok(MoneroBlockHeader {
            height: u64_field(header, "height", METHOD)?,
            hash: hash_field(header, "hash", METHOD)?,
            reward: u64_field(header, "reward", METHOD)?,
        })
    }
}

fn malformed(method: &str, detail: impl std::fmt::Display) -> RpcError {
    RpcError::Malformed {
        method: method.into(),
        detail: detail.to_string(),
    }
}

fn u64_field(value: &Value, name: &str, method: &str) -> Result<u64, RpcError> {
    value[name]
        .as_u64()
        .ok_or_else(|| malformed(method, format!("no number {name} in {value}")))
}

fn hex_field(value: &Value, name: &str, method: &str) -> Result<Vec<u8>, RpcError> {
    let text = value[name]
        .as_str()
        .ok_or_else(|| malformed(method, format!("no string {name}")))?;
    hex::decode(text).map_err(|e| malformed(method, format!("{name}: {e}")))
}

fn hash_field(value: &Value, name: &str, method: &str) -> Result<[u8; 32], RpcError> {
    hex_field(value, name, method)?
        .try_into()
        .map_err(|bytes: Vec<u8>| {
            malformed(method, format!("{name}: {} bytes, not 32", bytes.len()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> MoneroBlockTemplate {
        MoneroBlockTemplate {
            blob: vec![0; 100],
            hashing_blob: vec![0; 76],
            difficulty: 1,
            height: 1,
            reserved_offset: 90,
            reserve_size: 8,
            seed_hash: [0; 32],
            next_seed_hash: None,
            expected_reward: 1,
            prev_hash: [0; 32],
        }
    }

    /// An extra nonce fills the reserved bytes exactly, and one byte more is refused.
    #[test]
    fn an_extra_nonce_fits_its_reserved_bytes_and_no_more() {
        let template = template();
        let blob = template.with_extra_nonce(&[7; 8]).unwrap();
        assert_eq!(&blob[90..98], &[7; 8]);
        assert_eq!(&blob[..90], &template.blob[..90]);
        assert_eq!(&blob[98..], &template.blob[98..]);
        assert_eq!(template.with_extra_nonce(&[7; 9]), None);
        // A template whose reserved bytes run past its blob (never from a checked reply).
        let short = MoneroBlockTemplate {
            reserved_offset: 95,
            ..template
        };
        assert_eq!(short.with_extra_nonce(&[7; 8]), None);
    }
}
