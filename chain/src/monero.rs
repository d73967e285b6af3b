//! Monero for the pool: monerod's JSON-RPC (block templates with room reserved for the
//! pool's extra nonce, block submission, the chain's tip, the daemon's own proof-of-work
//! hash for a cross-check), the work a template gives a miner (through
//! `otedama_shared::monero`, which the data plane shares), RandomX's seed schedule, and
//! payout addresses (checked in `otedama_shared::monero`, re-exported here). The same `RpcError` as the Bitcoin-family client, so
//! callers handle one error type.
//!
//! monerod speaks JSON-RPC 2.0 at `/json_rpc`, without credentials unless started with
//! `--rpc-login` (not supported here yet: bind it to loopback or a private network).

use std::time::Duration;

use serde_json::{json, Value};

use crate::jobs::submit::{settle_block, ChainPlace, Verdict};
use crate::rpc::{json_reply, json_rpc_result, RpcError};
use otedama_shared::address::{AddressRule, MoneroAddressRule};
pub use otedama_shared::monero::{
    blob_with_extra_nonce, parse_monero_address, payout_address, MoneroAddress, MoneroAddressError,
    MoneroAddressKind, MoneroBlobError, MoneroWork, MONERO_ADDRESS_BYTES_MAX, MONERO_NONCE_BYTES,
};

/// Blocks before a coinbase output can be spent (`CRYPTONOTE_MINED_MONEY_UNLOCK_WINDOW`):
/// a found block's reward is credited as immature until then.
pub const MONERO_COINBASE_MATURITY: u64 = 60;

/// The payout address rule for a Monero network, for the ledger, bans and payouts.
/// Regtest takes mainnet's addresses.
pub fn monero_address_rule(network: crate::coin::Network) -> AddressRule {
    use crate::coin::Network;
    let (network_name, network) = match network {
        Network::Mainnet => ("monero mainnet", monero::Network::Mainnet),
        Network::Testnet => ("monero testnet", monero::Network::Testnet),
        Network::Regtest => ("monero regtest", monero::Network::Mainnet),
    };
    AddressRule::Monero(MoneroAddressRule {
        network_name,
        network,
    })
}

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
    /// The blob with `extra_nonce` written over the reserved bytes; `None` unless it is
    /// exactly as long as they are. A shorter one would leave the template's zeros after
    /// it, so `[1]` and `[1, 0]` would be the same work under two names.
    pub fn with_extra_nonce(&self, extra_nonce: &[u8]) -> Option<Vec<u8>> {
        blob_with_extra_nonce(
            &self.blob,
            self.reserved_offset,
            self.reserve_size,
            extra_nonce,
        )
        .ok()
    }
}

impl MoneroBlockTemplate {
    /// The work for one extra nonce: the block with `extra_nonce` in the reserved bytes,
    /// decoded, and what a miner hashes for it. The coinbase's hash, and with it the
    /// transactions' tree root in the hashing blob, changes with every extra nonce, so each
    /// one has its own hashing blob.
    pub fn work(&self, extra_nonce: &[u8]) -> Result<MoneroWork, MoneroBlobError> {
        MoneroWork::for_extra_nonce(
            &self.blob,
            self.reserved_offset,
            self.reserve_size,
            extra_nonce,
        )
    }
}

/// Blocks between RandomX seed changes, and how long after a change's height the new seed
/// takes over (monerod's `rx_seedheight`).
pub const RANDOMX_SEED_EPOCH_BLOCKS: u64 = 2048;
pub const RANDOMX_SEED_LAG_BLOCKS: u64 = 64;

/// The height whose block hash seeds RandomX for a block at `height`.
pub fn randomx_seed_height(height: u64) -> u64 {
    if height <= RANDOMX_SEED_EPOCH_BLOCKS + RANDOMX_SEED_LAG_BLOCKS {
        0
    } else {
        (height - RANDOMX_SEED_LAG_BLOCKS - 1) & !(RANDOMX_SEED_EPOCH_BLOCKS - 1)
    }
}

/// The most RandomX seeds held at once: the one jobs use and the next, prepared before
/// the switch. Each is 256 MiB in light mode and about 2.3 GiB in fast mode, so this bound
/// is the pool's RandomX memory (`RandomXSeed::memory_bytes` each).
pub const RANDOMX_SEEDS_HELD_MAX: usize = 2;

/// What to do with a seed's prepared cache and dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedAction {
    /// Prepare it; jobs under it wait for it when it is the current seed.
    Prepare([u8; 32]),
    /// Let it go (VMs still hashing under it keep it until they are replaced).
    Release([u8; 32]),
}

/// Which seeds the pool holds, decided from each template alone (sans-IO: the caller
/// prepares and releases). monerod names the next seed (`next_seed_hash`) 64 blocks before
/// the switch, so its dataset is ready when the first job under it comes.
///
/// Invariants, checked by a seeded simulation of heights with reorganisations: after each
/// template the current seed is held; never more than `RANDOMX_SEEDS_HELD_MAX` are; a
/// seed named as next before its switch is never prepared again at the switch.
#[derive(Debug, Default)]
pub struct SeedPlan {
    held: Vec<[u8; 32]>,
}

impl SeedPlan {
    pub fn held(&self) -> &[[u8; 32]] {
        &self.held
    }

    /// The seeds `template`'s jobs need (`seed_hash`, and `next_seed_hash` if named):
    /// releases first, so memory never holds more than the bound, then the current seed's
    /// preparation, then the next's.
    pub fn on_template(&mut self, seed: [u8; 32], next: Option<[u8; 32]>) -> Vec<SeedAction> {
        let wanted: Vec<[u8; 32]> = std::iter::once(seed)
            .chain(next.filter(|next| *next != seed))
            .collect();
        let mut actions: Vec<SeedAction> = self
            .held
            .iter()
            .filter(|held| !wanted.contains(held))
            .map(|held| SeedAction::Release(*held))
            .collect();
        self.held.retain(|held| wanted.contains(held));
        for want in wanted {
            if !self.held.contains(&want) {
                self.held.push(want);
                actions.push(SeedAction::Prepare(want));
            }
        }
        debug_assert!(self.held.len() <= RANDOMX_SEEDS_HELD_MAX);
        actions
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
    /// `http://HOST:PORT`, for the endpoints outside JSON-RPC.
    base_url: String,
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
        let base_url = base_url.trim_end_matches('/').to_string();
        MoneroRpc {
            url: format!("{base_url}/json_rpc"),
            base_url,
            agent,
        }
    }

    /// Calls one of monerod's endpoints outside JSON-RPC (`get_transactions`,
    /// `is_key_image_spent`), whose reply is the result itself, with the same check of its
    /// status.
    pub fn call_endpoint(&self, endpoint: &str, body: Value) -> Result<Value, RpcError> {
        let url = format!("{}/{endpoint}", self.base_url);
        let reply = json_reply(
            self.agent.post(&url).send_json(body),
            &url,
            endpoint,
            Some(MONERO_RPC_REPLY_BYTES_MAX),
        )?;
        match reply["status"].as_str() {
            Some("OK") => Ok(reply),
            status => Err(RpcError::Node {
                method: endpoint.into(),
                code: 0,
                message: format!("status {}", status.unwrap_or("missing")),
            }),
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
        let template = MoneroBlockTemplate {
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
        };
        // Invariant: the pool's rebuild of the hashing blob is the daemon's for the
        // template as sent (reserved bytes zero). A block format the decoder reads but
        // roots differently (a hard fork ahead of the crate) would otherwise have every
        // miner hash a blob no block has, and every block found be lost unnoticed.
        let rebuilt = MoneroWork::from_block_blob(template.blob.clone())
            .map_err(|e| malformed(METHOD, format!("template blob: {e}")))?;
        if rebuilt.hashing_blob() != template.hashing_blob {
            return Err(malformed(
                METHOD,
                "the hashing blob rebuilt from the template is not monerod's",
            ));
        }
        Ok(template)
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

    /// `calc_pow`: the daemon's own RandomX hash of `hashing_blob` under `seed_hash`, to
    /// check the pool's kernel against.
    pub fn calc_pow(
        &self,
        major_version: u8,
        height: u64,
        hashing_blob: &[u8],
        seed_hash: &[u8; 32],
    ) -> Result<[u8; 32], RpcError> {
        const METHOD: &str = "calc_pow";
        let result = self.call(
            METHOD,
            json!({
                "major_version": major_version,
                "height": height,
                "block_blob": hex::encode(hashing_blob),
                "seed_hash": hex::encode(seed_hash),
            }),
        )?;
        let text = result
            .as_str()
            .ok_or_else(|| malformed(METHOD, format!("not a string: {result}")))?;
        hex::decode(text)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| malformed(METHOD, format!("not a 32-byte hash: {text}")))
    }

    /// `get_block_header_by_hash`: a block the daemon has, in the chain or not.
    pub fn block_header_by_hash(&self, hash: &[u8; 32]) -> Result<MoneroBlockHeader, RpcError> {
        const METHOD: &str = "get_block_header_by_hash";
        let result = self.call(METHOD, json!({"hash": hex::encode(hash)}))?;
        header_of(&result["block_header"], METHOD)
    }

    /// `get_last_block_header`: the tip.
    pub fn last_block_header(&self) -> Result<MoneroBlockHeader, RpcError> {
        const METHOD: &str = "get_last_block_header";
        let result = self.call(METHOD, json!({}))?;
        header_of(&result["block_header"], METHOD)
    }
}

/// monerod's CORE_RPC_ERROR_CODE_INTERNAL_ERROR, which `get_block_header_by_hash` answers
/// for a block the daemon does not have (tried on regtest).
const MONERO_RPC_UNKNOWN_BLOCK: i64 = -5;
/// CORE_RPC_ERROR_CODE_CORE_BUSY: the daemon is syncing and will answer later.
const MONERO_RPC_CORE_BUSY: i64 = -9;

/// Reads one answer to `submit_block`. monerod answers OK for a block it already had and
/// for one it only put on a side chain, so OK is settled by the chain, not by the answer.
pub fn judge_monero_submit(answer: &Result<(), RpcError>) -> Verdict {
    match answer {
        Ok(()) => Verdict::AskChain("taken, but not on the active chain".into()),
        Err(RpcError::Node { code, message, .. }) if *code != MONERO_RPC_CORE_BUSY => {
            Verdict::Rejected(format!("rpc-error {code}: {message}"))
        }
        Err(error) => Verdict::NoAnswer(error.to_string()),
    }
}

/// Where monerod has block `id`: on its main chain, on a side chain (`orphan_status`), or
/// not at all. `Err` when it did not answer.
pub fn monero_chain_place(rpc: &MoneroRpc, id: &[u8; 32]) -> Result<ChainPlace, RpcError> {
    const METHOD: &str = "get_block_header_by_hash";
    match rpc.call(METHOD, json!({"hash": hex::encode(id)})) {
        Ok(result) => match result["block_header"]["orphan_status"].as_bool() {
            Some(false) => Ok(ChainPlace::Active),
            Some(true) => Ok(ChainPlace::Aside),
            None => Err(malformed(METHOD, "no orphan_status")),
        },
        Err(RpcError::Node { code, .. }) if code == MONERO_RPC_UNKNOWN_BLOCK => {
            Ok(ChainPlace::Unknown)
        }
        Err(error) => Err(error),
    }
}

/// Submits a found block (`blob`, whose id is `id`) until monerod settles it, with the
/// guarantees of `jobs::submit::settle_block`: `None` once it is on the main chain, else
/// the reason it is not.
pub fn monero_submit_until_settled(
    rpc: &MoneroRpc,
    blob: &[u8],
    id: &[u8; 32],
    can_still_win: &dyn Fn() -> bool,
) -> Option<String> {
    settle_block(
        &hex::encode(id),
        || judge_monero_submit(&rpc.submit_block(blob)),
        || monero_chain_place(rpc, id),
        can_still_win,
        |delay_ms| std::thread::sleep(Duration::from_millis(delay_ms)),
    )
}

fn header_of(header: &Value, method: &str) -> Result<MoneroBlockHeader, RpcError> {
    Ok(MoneroBlockHeader {
        height: u64_field(header, "height", method)?,
        hash: hash_field(header, "hash", method)?,
        reward: u64_field(header, "reward", method)?,
    })
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

    /// OK is settled by the chain (a known block and a side-chain block are both OK); a
    /// busy daemon and a lost reply are retried; any other refusal is final.
    #[test]
    fn a_submit_answer_is_judged_as_monerod_means_it() {
        let node = |code| {
            Err(RpcError::Node {
                method: "submit_block".into(),
                code,
                message: "m".into(),
            })
        };
        assert!(matches!(judge_monero_submit(&Ok(())), Verdict::AskChain(_)));
        assert!(matches!(
            judge_monero_submit(&node(-7)),
            Verdict::Rejected(_)
        ));
        assert!(matches!(
            judge_monero_submit(&node(MONERO_RPC_CORE_BUSY)),
            Verdict::NoAnswer(_)
        ));
        let lost = Err(RpcError::Unreachable {
            url: "u".into(),
            detail: "d".into(),
        });
        assert!(matches!(judge_monero_submit(&lost), Verdict::NoAnswer(_)));
    }

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

    /// monerod's `rx_seedheight`: the first seed serves through height 2048 + 64; each
    /// later one takes over 64 blocks after its epoch's first height.
    #[test]
    fn the_seed_height_follows_monerods_schedule() {
        for (height, seed) in [
            (0, 0),
            (1, 0),
            (2112, 0),
            (2113, 2048),
            (4160, 2048),
            (4161, 4096),
            (3_000_000, 2_998_272),
            // Mainnet heights whose seeds the RandomX vectors use.
            (2_845_298, 2_844_672),
            (3_258_003, 3_256_320),
            (3_258_099, 3_256_320),
            (3_456_098, 3_454_976),
            (3_455_040, 3_452_928),
            (3_455_041, 3_454_976),
        ] {
            assert_eq!(randomx_seed_height(height), seed, "height {height}");
        }
    }

    /// A seeded walk of the chain's height, mostly forward with reorganisations back
    /// across seed changes, with templates as monerod makes them (the next seed named
    /// from 64 blocks before its switch): the current seed is always held, never more than
    /// two are, and a switch the next seed was named ahead of prepares nothing.
    #[test]
    fn seeds_are_prepared_before_their_switch_and_held_two_at_most() {
        let seed_of = |height: u64| -> [u8; 32] {
            let mut seed = [0; 32];
            seed[..8].copy_from_slice(&randomx_seed_height(height).to_le_bytes());
            seed
        };
        let mut plan = SeedPlan::default();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut height = 1u64;
        let (mut switches_seen, mut prepared_at_switch) = (0, 0);
        let mut previous: Option<([u8; 32], Option<[u8; 32]>)> = None;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            height = match state % 1000 {
                0 => height.saturating_sub(state % 300).max(1),
                _ => height + 1,
            };
            let seed = seed_of(height);
            let next = seed_of(height + RANDOMX_SEED_LAG_BLOCKS);
            let next = (next != seed).then_some(next);
            let actions = plan.on_template(seed, next);
            assert!(plan.held().contains(&seed), "height {height}");
            assert!(plan.held().len() <= RANDOMX_SEEDS_HELD_MAX);
            if let Some((previous_seed, Some(named))) = previous {
                if seed != previous_seed && seed == named {
                    switches_seen += 1;
                    if actions.contains(&SeedAction::Prepare(seed)) {
                        prepared_at_switch += 1;
                    }
                }
            }
            previous = Some((seed, next));
        }
        assert!(switches_seen > 50, "{switches_seen} switches");
        assert_eq!(prepared_at_switch, 0);
    }

    /// The Monero project's general fund, a mainnet standard address.
    /// An extra nonce fills the reserved bytes exactly, and one byte more is refused.
    #[test]
    fn an_extra_nonce_fits_its_reserved_bytes_and_no_more() {
        let template = template();
        let blob = template.with_extra_nonce(&[7; 8]).unwrap();
        assert_eq!(&blob[90..98], &[7; 8]);
        assert_eq!(&blob[..90], &template.blob[..90]);
        assert_eq!(&blob[98..], &template.blob[98..]);
        assert_eq!(template.with_extra_nonce(&[7; 9]), None);
        assert_eq!(
            template.with_extra_nonce(&[7; 7]),
            None,
            "shorter is refused too"
        );
        // A template whose reserved bytes run past its blob (never from a checked reply).
        let short = MoneroBlockTemplate {
            reserved_offset: 95,
            ..template
        };
        assert_eq!(short.with_extra_nonce(&[7; 8]), None);
    }
}
