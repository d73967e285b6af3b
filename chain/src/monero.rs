//! Monero for the pool: monerod's JSON-RPC (block templates with room reserved for the
//! pool's extra nonce, block submission, the chain's tip, the daemon's own proof-of-work
//! hash for a cross-check), the work a template gives a miner (the hashing blob for one
//! extra nonce, rebuilt through the `monero` crate's block decoding), RandomX's seed
//! schedule, and payout addresses. The same `RpcError` as the Bitcoin-family client, so
//! callers handle one error type.
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
    /// The blob with `extra_nonce` written over the reserved bytes; `None` unless it is
    /// exactly as long as they are. A shorter one would leave the template's zeros after
    /// it, so `[1]` and `[1, 0]` would be the same work under two names.
    pub fn with_extra_nonce(&self, extra_nonce: &[u8]) -> Option<Vec<u8>> {
        if extra_nonce.len() != self.reserve_size as usize {
            return None;
        }
        let end = self.reserved_offset.checked_add(extra_nonce.len())?;
        let mut blob = self.blob.clone();
        blob.get_mut(self.reserved_offset..end)?
            .copy_from_slice(extra_nonce);
        Some(blob)
    }
}

impl MoneroBlockTemplate {
    /// The work for one extra nonce: the block with `extra_nonce` in the reserved bytes,
    /// decoded, and what a miner hashes for it. The coinbase's hash, and with it the
    /// transactions' tree root in the hashing blob, changes with every extra nonce, so each
    /// one has its own hashing blob.
    pub fn work(&self, extra_nonce: &[u8]) -> Result<MoneroWork, MoneroBlobError> {
        let blob = self
            .with_extra_nonce(extra_nonce)
            .ok_or(MoneroBlobError::ExtraNonceLength {
                length: extra_nonce.len(),
                reserved: self.reserve_size,
            })?;
        MoneroWork::from_block_blob(blob)
    }
}

/// Why a block blob cannot be worked on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneroBlobError {
    #[error("extra nonce of {length} bytes where {reserved} are reserved")]
    ExtraNonceLength { length: usize, reserved: u8 },
    #[error("block blob does not decode: {0}")]
    Undecodable(String),
    #[error("block blob decodes but does not encode back to the same bytes")]
    NotCanonical,
}

/// One miner's work from a template: the whole block (to submit once a nonce meets the
/// network's difficulty) and its hashing blob (header, transactions' tree root, their
/// count), each with the nonce at `nonce_offset`.
/// Its fields stay private: the nonce's place is only right for the blobs it was found in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroWork {
    block_blob: Vec<u8>,
    hashing_blob: Vec<u8>,
    /// Where the 4 nonce bytes sit, the same in both blobs (the header starts both).
    nonce_offset: usize,
}

/// Bytes of a Monero nonce, as a miner sends them (8 hex digits) and as the blob holds them.
pub const MONERO_NONCE_BYTES: usize = 4;

impl MoneroWork {
    /// Decodes a block blob. Invariant: the blob encodes back to exactly these bytes, so
    /// the hashing blob derived from the decoded block is the one monerod derives from the
    /// bytes submitted; a blob the decoder reads otherwise is refused, never mined.
    pub fn from_block_blob(block_blob: Vec<u8>) -> Result<Self, MoneroBlobError> {
        let block: monero::Block = monero::consensus::deserialize(&block_blob)
            .map_err(|e| MoneroBlobError::Undecodable(e.to_string()))?;
        if monero::consensus::serialize(&block) != block_blob {
            return Err(MoneroBlobError::NotCanonical);
        }
        let header = monero::consensus::serialize(&block.header);
        let nonce_offset = header.len() - MONERO_NONCE_BYTES;
        let hashing_blob = block.serialize_hashable();
        debug_assert_eq!(hashing_blob[..header.len()], block_blob[..header.len()]);
        Ok(MoneroWork {
            block_blob,
            hashing_blob,
            nonce_offset,
        })
    }

    pub fn block_blob(&self) -> &[u8] {
        &self.block_blob
    }

    /// What miners hash, with the nonce as the template has it.
    pub fn hashing_blob(&self) -> &[u8] {
        &self.hashing_blob
    }

    pub fn nonce_offset(&self) -> usize {
        self.nonce_offset
    }

    fn nonce_range(&self) -> std::ops::Range<usize> {
        self.nonce_offset..self.nonce_offset + MONERO_NONCE_BYTES
    }

    /// The hashing blob with a miner's nonce bytes, as its RandomX input.
    pub fn hashing_blob_with_nonce(&self, nonce: [u8; MONERO_NONCE_BYTES]) -> Vec<u8> {
        let mut blob = self.hashing_blob.clone();
        blob[self.nonce_range()].copy_from_slice(&nonce);
        blob
    }

    /// The block with a miner's nonce bytes, as submitted.
    pub fn block_blob_with_nonce(&self, nonce: [u8; MONERO_NONCE_BYTES]) -> Vec<u8> {
        let mut blob = self.block_blob.clone();
        blob[self.nonce_range()].copy_from_slice(&nonce);
        blob
    }

    /// The block's id with this nonce, as monerod names it once accepted: Keccak-256 of
    /// the hashing blob after its length, so an id monerod reports for a submitted block
    /// also proves the blob the pool hashed was the block's. (Monero keeps one historical
    /// exception, mainnet block 202612, which no block made now can be.)
    pub fn block_id(&self, nonce: [u8; MONERO_NONCE_BYTES]) -> [u8; 32] {
        let blob = self.hashing_blob_with_nonce(nonce);
        let mut preimage = monero::consensus::serialize(&monero::VarInt(blob.len() as u64));
        preimage.extend_from_slice(&blob);
        monero::cryptonote::hash::keccak_256(&preimage)
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

/// A Monero payout address, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroAddress {
    /// The address as its canonical base58 encoding, which is also how it must be given.
    pub text: String,
    pub kind: MoneroAddressKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoneroAddressKind {
    Standard,
    Subaddress,
    /// With the 8-byte payment id an exchange tells its deposits apart by.
    Integrated {
        payment_id: [u8; 8],
    },
}

/// Longest Monero address: an integrated one, 106 characters.
pub const MONERO_ADDRESS_BYTES_MAX: usize = 106;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneroAddressError {
    #[error("an address of {length} bytes is longer than any Monero address ({MONERO_ADDRESS_BYTES_MAX})")]
    TooLong { length: usize },
    #[error("{address:?} is not a Monero address: {why}")]
    Undecodable { address: String, why: String },
    #[error("{address:?} is a {found:?} address, not {expected:?}")]
    WrongNetwork {
        address: String,
        found: monero::Network,
        expected: monero::Network,
    },
    #[error("{address:?} is not in its canonical encoding")]
    NotCanonical { address: String },
}

/// Checks a payout address for `network` (regtest takes mainnet's): the base58 blocks, the
/// checksum, both public keys on the curve, and the network byte. Only the canonical
/// encoding is taken, so one address has one text for bans, the ledger and payouts.
pub fn parse_monero_address(
    text: &str,
    network: monero::Network,
) -> Result<MoneroAddress, MoneroAddressError> {
    if text.len() > MONERO_ADDRESS_BYTES_MAX {
        return Err(MoneroAddressError::TooLong { length: text.len() });
    }
    let address: monero::Address = text.parse().map_err(|e: monero::util::address::Error| {
        MoneroAddressError::Undecodable {
            address: text.into(),
            why: e.to_string(),
        }
    })?;
    if address.network != network {
        return Err(MoneroAddressError::WrongNetwork {
            address: text.into(),
            found: address.network,
            expected: network,
        });
    }
    if address.to_string() != text {
        return Err(MoneroAddressError::NotCanonical {
            address: text.into(),
        });
    }
    let kind = match address.addr_type {
        monero::AddressType::Standard => MoneroAddressKind::Standard,
        monero::AddressType::SubAddress => MoneroAddressKind::Subaddress,
        monero::AddressType::Integrated(payment_id) => MoneroAddressKind::Integrated {
            payment_id: payment_id.to_fixed_bytes(),
        },
    };
    Ok(MoneroAddress {
        text: text.into(),
        kind,
    })
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
        if rebuilt.hashing_blob != template.hashing_blob {
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
    const GENERAL_FUND: &str =
        "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

    #[test]
    fn addresses_are_checked_for_their_network_and_form() {
        let standard = parse_monero_address(GENERAL_FUND, monero::Network::Mainnet).unwrap();
        assert_eq!(standard.kind, MoneroAddressKind::Standard);
        assert_eq!(standard.text, GENERAL_FUND);
        assert!(matches!(
            parse_monero_address(GENERAL_FUND, monero::Network::Stagenet),
            Err(MoneroAddressError::WrongNetwork { .. })
        ));
        // The same keys as an integrated address (with a payment id) and as a subaddress
        // of another network: each is told apart.
        let keys: monero::Address = GENERAL_FUND.parse().unwrap();
        let payment_id = monero::util::address::PaymentId::from([9; 8]);
        let integrated = monero::Address::integrated(
            monero::Network::Mainnet,
            keys.public_spend,
            keys.public_view,
            payment_id,
        )
        .to_string();
        assert_eq!(integrated.len(), MONERO_ADDRESS_BYTES_MAX);
        assert_eq!(
            parse_monero_address(&integrated, monero::Network::Mainnet)
                .unwrap()
                .kind,
            MoneroAddressKind::Integrated { payment_id: [9; 8] }
        );
        let sub = monero::Address::subaddress(
            monero::Network::Testnet,
            keys.public_spend,
            keys.public_view,
        )
        .to_string();
        assert_eq!(
            parse_monero_address(&sub, monero::Network::Testnet)
                .unwrap()
                .kind,
            MoneroAddressKind::Subaddress
        );
        // One character changed fails the checksum; one past the longest is refused
        // before decoding; trailing text is not the same address.
        let mut broken = GENERAL_FUND.to_string();
        broken.replace_range(
            10..11,
            if &GENERAL_FUND[10..11] == "a" {
                "b"
            } else {
                "a"
            },
        );
        assert!(matches!(
            parse_monero_address(&broken, monero::Network::Mainnet),
            Err(MoneroAddressError::Undecodable { .. })
        ));
        let long = format!("{integrated}1");
        assert_eq!(
            parse_monero_address(&long, monero::Network::Mainnet),
            Err(MoneroAddressError::TooLong {
                length: MONERO_ADDRESS_BYTES_MAX + 1
            })
        );
        assert!(
            parse_monero_address(&format!("{GENERAL_FUND}1"), monero::Network::Mainnet).is_err()
        );
        assert!(parse_monero_address("", monero::Network::Mainnet).is_err());
    }

    /// A mainnet block (version 12, only its coinbase) and the hashing blob monerod
    /// derives from it: the rebuild gives the same, with the nonce after the header's
    /// three varints and the previous block's hash.
    #[test]
    fn a_mainnet_block_gives_monerods_hashing_blob() {
        let block = hex::decode(
            "0c0c94debaf805beb3489c722a285c092a32e7c6893abfc7d069699c8326fc3445a749c5276b62\
             00000000029b892201ffdf882201b699d4c8b1ec020223df524af2a2ef5f870adb6e1ceb03a475\
             c39f8b9ef76aa50b46ddd2a18349402b012839bfa19b7524ec7488917714c216ca254b38ed0424\
             ca65ae828a7c006aeaf10208f5316a7f6b99cca60000",
        )
        .unwrap();
        let work = MoneroWork::from_block_blob(block.clone()).unwrap();
        assert_eq!(
            hex::encode(work.hashing_blob()),
            "0c0c94debaf805beb3489c722a285c092a32e7c6893abfc7d069699c8326fc3445a749c5276b62\
             00000000602d0d4710e2c2d38da0cce097accdf5dc18b1d34323880c1aae90ab8f6be6e201"
        );
        // Two one-byte versions, a five-byte timestamp, 32 bytes of previous hash.
        assert_eq!(work.nonce_offset(), 39);
        let nonce = [0xde, 0xad, 0xbe, 0xef];
        assert_eq!(&work.block_blob_with_nonce(nonce)[39..43], &nonce);
        assert_eq!(&work.hashing_blob_with_nonce(nonce)[39..43], &nonce);
        // The minor version written as a two-byte varint: the same number, other bytes.
        // It is refused, never mined as a block whose bytes the node would read apart.
        let mut padded = vec![block[0], 0x8c, 0x00];
        padded.extend_from_slice(&block[2..]);
        assert!(matches!(
            MoneroWork::from_block_blob(padded),
            Err(MoneroBlobError::NotCanonical | MoneroBlobError::Undecodable(_))
        ));
        // Trailing bytes after the block.
        let mut longer = block;
        longer.push(0);
        assert!(MoneroWork::from_block_blob(longer).is_err());
    }

    /// A blob that is not a block, or one cut short, gives no work.
    #[test]
    fn a_blob_that_is_not_a_block_gives_no_work() {
        assert!(matches!(
            MoneroWork::from_block_blob(vec![0; 100]),
            Err(MoneroBlobError::Undecodable(_))
        ));
        assert!(matches!(
            MoneroWork::from_block_blob(Vec::new()),
            Err(MoneroBlobError::Undecodable(_))
        ));
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
