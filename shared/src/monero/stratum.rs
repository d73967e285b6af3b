//! The Monero Stratum dialect, server side and sans-IO: the JSON-RPC 2.0 lines xmrig and
//! the miners that follow it speak (`login`, `getjob`, `submit`, `keepalived`, and the
//! `job` notification), held to the rules every front end shares: the difficulty, its
//! vardiff and the credit rule of the jobs a miner was sent (`WorkState`, `SentJob`), the
//! duplicate filter, and stale work.
//!
//! A share is claimed in the duplicate filter by the SHA256d of its RandomX input before
//! it is hashed, as a scrypt share is: a copy never costs a RandomX hash (milliseconds of
//! a core). The glue hashes `MoneroPendingPow::input` with the VM of its seed and passes
//! the hash to `handle_pow`; an accepted share is stored durably before
//! `handle_share_durable` sends the miner its `OK`.
//!
//! Refusals go out as `{"code":-1,"message":…}`, the form Monero miners read (they show the
//! message); the Stratum code (20–25) each one stands for is in `MoneroOutcome` for
//! counters.

use std::sync::Arc;

use otedama_kernels::randomx::{hash_difficulty, meets_difficulty};
use otedama_kernels::sha256d::sha256d;
use otedama_kernels::Target;
use serde_json::{json, Map, Value};

use crate::bans::BanList;
use crate::duplicates::{Claim, DuplicateFilter};
use crate::error_code::ErrorCode;
use crate::limits::{empty_outbox, JOBS_REMEMBERED_MAX, WORKER_NAME_BYTES_MAX};
use crate::share::{Protocol, ShareRecord};
use crate::sv1::request::{read_envelope, Envelope, RequestId};
use crate::work::{FrontEndConfig, WorkJob, WorkState};

use super::{payout_address, MoneroBlobError, MoneroWork, MONERO_NONCE_BYTES};

/// The one algorithm this dialect serves: RandomX as Monero runs it.
pub const MONERO_ALGORITHM: &str = "rx/0";
/// The longest `login` taken: an address, a dot and a rig name, as the share log records
/// them (`WORKER_NAME_BYTES_MAX`).
pub const MONERO_LOGIN_BYTES_MAX: usize = WORKER_NAME_BYTES_MAX;
/// Jobs of one tip a book holds; a job older than these is refused as stale.
pub const MONERO_JOBS_HELD_MAX: usize = JOBS_REMEMBERED_MAX;
/// Shares of one session that may wait for their RandomX hash at once. A miner that sends
/// more is refused (code 20) until they are finished: each costs the pool milliseconds of
/// a core, so a burst of claimed results must not turn into as many hashes. An honest
/// miner at a sane difficulty has one or two in flight.
pub const MONERO_SHARES_WAITING_PER_SESSION_MAX: usize = 4;
/// What one share costs the pool in a miner's RandomX hashes: one hash to validate it, in
/// light mode about 7 times a fast-mode miner's (34 against 230 hashes a second a core,
/// BENCHMARKS.md), so 8; the fixed cost of a durable share (about 16 µs) is small beside
/// it.
pub const RANDOMX_POOL_COST_PER_SHARE_HASHES: f64 = 8.0;
/// The default floor of a Monero miner's difficulty (`limits::SHARE_COST_MARGIN` times
/// the pool's cost, in hashes: Monero's difficulty 1 is one hash), for the operator's
/// `difficulty_min`. Tests and regtest may set a lower one, as for the other coins.
pub const MONERO_DIFFICULTY_FLOOR: f64 =
    crate::limits::SHARE_COST_MARGIN * RANDOMX_POOL_COST_PER_SHARE_HASHES;

/// Where the nonce's last byte sits in a hashing blob of today's header (two one-byte
/// versions, a timestamp varint of five bytes, the previous block's hash, then the
/// nonce). In nicehash mode the pool fixes this byte per connection and the miner
/// iterates the other three.
pub const NICEHASH_BYTE_OFFSET: usize = 42;

/// A block template as the data plane serves it to Monero miners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroJob {
    pub job_id: u64,
    pub height: u64,
    /// The previous block: a job of another previous block is stale.
    pub prev_hash: [u8; 32],
    /// The RandomX key block's hash: the glue hashes shares with the VM of this seed.
    pub seed_hash: [u8; 32],
    pub network_difficulty: u128,
    /// The block, with the reserved bytes zero.
    blob: Vec<u8>,
    reserved_offset: usize,
    reserve_size: u8,
    /// Names the template in the duplicate filter: the SHA256d of its blob.
    content_key: [u8; 32],
    /// `network_difficulty` as a 256-bit bound (`monero_network_target`).
    network_target: Target,
}

impl MoneroJob {
    /// A job of a template; refused unless its blob decodes, re-encodes to itself, and
    /// has its nonce where miners put it (`NICEHASH_BYTE_OFFSET`), checked with zero
    /// reserved bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: u64,
        height: u64,
        prev_hash: [u8; 32],
        seed_hash: [u8; 32],
        network_difficulty: u128,
        blob: Vec<u8>,
        reserved_offset: usize,
        reserve_size: u8,
    ) -> Result<Self, MoneroBlobError> {
        if network_difficulty == 0 {
            return Err(MoneroBlobError::Undecodable("network difficulty 0".into()));
        }
        let job = MoneroJob {
            job_id,
            height,
            prev_hash,
            seed_hash,
            network_difficulty,
            content_key: sha256d(&blob),
            network_target: monero_network_target(network_difficulty),
            blob,
            reserved_offset,
            reserve_size,
        };
        let work = job.work(&vec![0; usize::from(reserve_size)])?;
        if work.nonce_offset() + MONERO_NONCE_BYTES != NICEHASH_BYTE_OFFSET + 1 {
            return Err(MoneroBlobError::Undecodable(format!(
                "nonce at byte {}, not {}",
                work.nonce_offset(),
                NICEHASH_BYTE_OFFSET + 1 - MONERO_NONCE_BYTES
            )));
        }
        Ok(job)
    }

    /// One connection's work: the block with its extra nonce in the reserved bytes.
    pub fn work(&self, extra_nonce: &[u8]) -> Result<MoneroWork, MoneroBlobError> {
        MoneroWork::for_extra_nonce(
            &self.blob,
            self.reserved_offset,
            self.reserve_size,
            extra_nonce,
        )
    }

    pub fn reserve_size(&self) -> u8 {
        self.reserve_size
    }

    pub fn content_key(&self) -> &[u8; 32] {
        &self.content_key
    }

    /// What `WorkState` needs of it. Every Monero job replaces the ones before it for new
    /// work, but shares of the jobs before on the same tip are still taken (the book's
    /// `lookup`), so none is `clean` here.
    fn work_job(&self) -> WorkJob {
        WorkJob {
            job_id: self.job_id,
            clean: false,
            network: (self.network_difficulty as f64, self.network_target),
        }
    }
}

/// The target a hash must not exceed to meet `difficulty`, monerod's rule
/// (hash × difficulty < 2^256) as a 256-bit bound: ⌊(2^256 − 1) / difficulty⌋, by long
/// division. `difficulty` 0 gives `Target::MAX`.
pub fn monero_network_target(difficulty: u128) -> Target {
    if difficulty == 0 {
        return Target::MAX;
    }
    let mut quotient = [0u8; 32];
    let mut remainder: u128 = 0;
    // The dividend's bits are all ones, most significant first.
    for bit in (0..256).rev() {
        let carry = remainder >> 127;
        remainder = (remainder << 1) | 1;
        if carry == 1 || remainder >= difficulty {
            // With the carry the true remainder is 2^128 + `remainder` > `difficulty`, and
            // the difference fits: it is below `difficulty`.
            remainder = remainder.wrapping_sub(difficulty);
            quotient[bit / 8] |= 1 << (bit % 8);
        }
    }
    Target::from_le_bytes(&quotient)
}

/// The 64-bit target a miner is sent for `difficulty` (8 bytes little-endian in the job's
/// `target`): a hash meets it when its last 8 bytes, read little-endian, are below it,
/// which is how miners test. ⌊2^64 / difficulty⌋, at least 1.
pub fn share_target64(difficulty: f64) -> u64 {
    if difficulty <= 1.0 {
        return u64::MAX;
    }
    let target = (18_446_744_073_709_551_616.0 / difficulty).floor();
    (target as u64).max(1)
}

/// What a share that meets `target64` proves, in Monero difficulty (expected hashes):
/// 2^64 / target64. A share is credited this, not the difficulty asked, so the credit is
/// the work the target demands, whatever the rounding of the target.
pub fn target64_difficulty(target64: u64) -> f64 {
    18_446_744_073_709_551_616.0 / target64 as f64
}

fn meets_target64(hash: &[u8; 32], target64: u64) -> bool {
    let top = u64::from_le_bytes(hash[24..32].try_into().expect("8 bytes"));
    top < target64
}

/// The live jobs of one core: those of the newest job's tip, newest last, at most
/// `MONERO_JOBS_HELD_MAX`.
#[derive(Debug, Default)]
pub struct MoneroJobBook {
    jobs: Vec<Arc<MoneroJob>>,
}

impl MoneroJobBook {
    /// Adds a job. One of a new tip drops every job of the old one: their shares are stale.
    pub fn insert(&mut self, job: Arc<MoneroJob>) {
        if self
            .jobs
            .last()
            .is_some_and(|newest| newest.prev_hash != job.prev_hash)
        {
            self.jobs.clear();
        }
        if self.jobs.len() >= MONERO_JOBS_HELD_MAX {
            self.jobs.remove(0);
        }
        self.jobs.push(job);
    }

    pub fn newest(&self) -> Option<&Arc<MoneroJob>> {
        self.jobs.last()
    }

    pub fn lookup(&self, job_id: u64) -> Option<&Arc<MoneroJob>> {
        self.jobs.iter().rev().find(|job| job.job_id == job_id)
    }

    /// Drops the duplicate filter's sets of contents no live job has (on a new tip, all of
    /// the old tip's: `DuplicateFilter::retire_unheld`).
    pub fn retire_in(&self, duplicates: &mut DuplicateFilter) {
        duplicates.retire_unheld(self.newest().map(|job| job.prev_hash), |content_key| {
            self.jobs.iter().any(|job| &job.content_key == content_key)
        });
    }
}

/// Per-connection settings chosen by the core that accepted it.
#[derive(Clone, Debug)]
pub struct MoneroSessionConfig {
    /// The miner's session id (`login`'s `id`), which its requests must carry.
    pub session_id: String,
    /// This connection's bytes for the template's reserved room: unique among the
    /// connections of the pool, or shared by up to 256 with distinct `nicehash_byte`s.
    pub extra_nonce: Vec<u8>,
    /// In nicehash mode, the nonce's last byte this connection must keep (the pool writes
    /// it into the blob it sends, and a share with another is refused).
    pub nicehash_byte: Option<u8>,
    /// The network whose addresses may log in (regtest takes mainnet's).
    pub network: monero::Network,
    /// Difficulty, its floor and vardiff, as every front end's miners are held to them
    /// (the algorithm and version fields do not apply).
    pub front_end: FrontEndConfig,
}

/// What the glue must do after a line.
#[derive(Debug, PartialEq)]
pub enum MoneroOutcome {
    /// Nothing beyond sending what `poll_transmit` holds.
    Continue,
    /// A request was refused (the reply is queued); the code is for counters.
    Rejected(ErrorCode),
    /// Hash `input()` with the VM of `seed_hash()` and pass the hash to `handle_pow`.
    NeedsPow(Box<MoneroPendingPow>),
    /// Store the share durably, then call `handle_share_durable`.
    ShareAccepted(Box<MoneroAcceptedShare>),
    /// A block from a share that cannot be credited (it missed its share target, or a new
    /// tip came while it was hashed); the refusal is queued, the block is the pool's.
    BlockOnly(Box<MoneroBlock>, ErrorCode),
    /// Close the connection (its refusal, if any, is queued first).
    Close(MoneroCloseReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoneroCloseReason {
    NotJson,
    /// The hash the miner sent is not the hash of what it sent. An honest miner never
    /// sends one (it computes the same function); a dishonest one would make the pool
    /// spend a RandomX hash per line, so it is not given a second.
    ResultMismatch,
}

/// A share waiting for its RandomX hash.
#[derive(Debug, PartialEq)]
pub struct MoneroPendingPow {
    request_id: RequestId,
    job: Arc<MoneroJob>,
    input: Vec<u8>,
    nonce: [u8; MONERO_NONCE_BYTES],
    claimed_result: [u8; 32],
    fingerprint: [u8; 32],
    target64: u64,
    worker: String,
    tip_generation: u64,
}

impl MoneroPendingPow {
    /// The RandomX input: this connection's hashing blob with the miner's nonce.
    pub fn input(&self) -> &[u8] {
        &self.input
    }

    pub fn seed_hash(&self) -> &[u8; 32] {
        &self.job.seed_hash
    }

    /// The hash the miner says its input has (checked against the true one in
    /// `handle_pow`).
    pub fn claimed_result(&self) -> [u8; 32] {
        self.claimed_result
    }
}

/// A block a share found, ready for `submit_block`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroBlock {
    pub job_id: u64,
    pub height: u64,
    /// The whole block with the share's extra nonce and nonce.
    pub blob: Vec<u8>,
    /// The id monerod will give it (`MoneroWork::block_id`).
    pub block_id: [u8; 32],
    pub pow: [u8; 32],
    pub worker: String,
}

/// A share that passed every check and awaits durability.
#[derive(Debug, PartialEq)]
pub struct MoneroAcceptedShare {
    pub request_id: RequestId,
    pub job_id: u64,
    pub height: u64,
    /// Recorded as `ADDRESS` or `ADDRESS.RIG`, the address canonical.
    pub worker: String,
    /// The credit: the work its target demands (`target64_difficulty`).
    pub difficulty: f64,
    pub pow: [u8; 32],
    pub nonce: [u8; MONERO_NONCE_BYTES],
    pub block: Option<MoneroBlock>,
}

impl MoneroAcceptedShare {
    /// The share as the share log keeps it, for the connection of `extra_nonce`. A Monero
    /// record's `header` holds the share's RandomX hash in its first 32 bytes and zeros
    /// after (a Monero hashing blob has no fixed length, and a block goes up whole in its
    /// candidate); `extranonce1` is the connection's extra nonce and `extranonce2` the
    /// nonce; `protocol` is `Monero`, by which a reader tells the form apart.
    pub fn record(&self, extra_nonce: &[u8], accepted_at_ms: u64) -> ShareRecord {
        let mut header = [0u8; 80];
        header[..32].copy_from_slice(&self.pow);
        ShareRecord {
            accepted_at_ms,
            job_id: self.job_id,
            height: self.height,
            worker: self.worker.clone(),
            difficulty: self.difficulty,
            achieved_difficulty: hash_difficulty(&self.pow),
            is_block: self.block.is_some(),
            header,
            extranonce1: extra_nonce.to_vec(),
            extranonce2: self.nonce.to_vec(),
            protocol: Some(Protocol::Monero),
        }
    }
}

/// One job as this connection was sent it.
#[derive(Debug)]
struct SentMoneroJob {
    job: Arc<MoneroJob>,
    /// This connection's hashing blob (its extra nonce, and its nicehash byte if any).
    hashing_blob: Vec<u8>,
    /// The session's sends (`MoneroSession::sends`) that carried this job: its wire ids
    /// are those of `first_send..=last_send`.
    first_send: u32,
    last_send: u32,
}

/// A job's id on the wire: its own id (16 hex digits) and the session's send count (8),
/// so a job sent again at a new difficulty has a new id, and a share names both.
fn wire_job_id(job_id: u64, send: u32) -> String {
    format!("{job_id:016x}{send:08x}")
}

fn parse_wire_job_id(text: &str) -> Option<(u64, u32)> {
    let bytes = crate::hex32::decode_exact::<12>(text)?;
    let (job, send) = bytes.split_at(8);
    Some((
        u64::from_be_bytes(job.try_into().ok()?),
        u32::from_be_bytes(send.try_into().ok()?),
    ))
}

/// The 64-bit target of `difficulty` for `job`: `share_target64`, but at or below the
/// network's difficulty never harder than the network's own bound, so no hash that is a
/// block fails the miner's test (the difficulty is capped just under the network's, and
/// the float's rounding could put the share target a hair under the block's).
fn target64_within_network(difficulty: f64, job: &MoneroJob) -> u64 {
    let target64 = share_target64(difficulty);
    if difficulty > job.network_difficulty as f64 {
        return target64;
    }
    let network = job.network_target.to_le_bytes();
    let network_top = u64::from_le_bytes(network[24..32].try_into().expect("8 bytes"));
    target64.max(network_top.saturating_add(1))
}

#[derive(Debug)]
pub struct MoneroSession {
    config: MoneroSessionConfig,
    /// The name shares are recorded under, once logged in.
    worker: Option<String>,
    work: WorkState,
    /// Oldest first, at most `JOBS_REMEMBERED_MAX`, as `WorkState` remembers them.
    sent: Vec<SentMoneroJob>,
    /// Jobs sent so far (the wire ids' second part).
    sends: u32,
    /// Shares handed to the glue for their hash and not finished or abandoned.
    waiting: usize,
    /// The miner sent a result that is not its input's hash: every later line closes.
    lied: bool,
    outbox: Vec<u8>,
}

impl MoneroSession {
    pub fn new(config: MoneroSessionConfig) -> Self {
        let work = WorkState::for_front_end(&config.front_end, config.front_end.start_difficulty);
        MoneroSession {
            config,
            worker: None,
            work,
            sent: Vec::new(),
            sends: 0,
            waiting: 0,
            lied: false,
            outbox: Vec::new(),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbox.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbox))
        }
    }

    pub fn transmit_pending(&self) -> &[u8] {
        &self.outbox
    }

    pub fn transmitted(&mut self) {
        empty_outbox(&mut self.outbox);
    }

    pub fn difficulty(&self) -> f64 {
        self.work.difficulty()
    }

    pub fn is_mining(&self) -> bool {
        self.worker.is_some()
    }

    /// Whether the miner sent a result that is not its input's hash: its shares still
    /// waiting need not be hashed (`abandon` them).
    pub fn has_lied(&self) -> bool {
        self.lied
    }

    /// A new ban list, for the logins still to come on this connection.
    pub fn update_bans(&mut self, bans: Arc<BanList>) {
        self.config.front_end.bans = bans;
    }

    /// The name shares are recorded under, once logged in.
    pub fn worker(&self) -> Option<&str> {
        self.worker.as_deref()
    }

    /// This connection's extra nonce (`MoneroSessionConfig::extra_nonce`).
    pub fn extra_nonce(&self) -> &[u8] {
        &self.config.extra_nonce
    }

    /// Handles one request line at `now_s` (Unix seconds).
    pub fn handle_line(
        &mut self,
        line: &[u8],
        now_s: u64,
        jobs: &MoneroJobBook,
        duplicates: &mut DuplicateFilter,
    ) -> MoneroOutcome {
        if self.lied {
            return MoneroOutcome::Close(MoneroCloseReason::ResultMismatch);
        }
        let (id, method, params) = match read_envelope(line) {
            Envelope::NotJson => return MoneroOutcome::Close(MoneroCloseReason::NotJson),
            Envelope::Refused(id, message) => return self.reject(&id, ErrorCode::Other, message),
            Envelope::Reply => return MoneroOutcome::Continue,
            Envelope::Request { id, method, params } => (id, method, params),
        };
        let params = match params {
            Value::Null => Map::new(),
            Value::Object(params) => params,
            _ => return self.reject(&id, ErrorCode::Other, "params must be an object"),
        };
        let (method, params) = (method.as_str(), &params);
        if method == "login" {
            return self.handle_login(&id, params, jobs, now_s);
        }
        if self.worker.is_none() {
            return self.reject(&id, ErrorCode::NotSubscribed, "Unauthenticated");
        }
        if params.get("id").and_then(Value::as_str) != Some(self.config.session_id.as_str()) {
            return self.reject(&id, ErrorCode::UnauthorizedWorker, "Unauthenticated");
        }
        match method {
            "getjob" => match jobs.newest() {
                Some(job) => {
                    let job = job.clone();
                    match self.job_object(&job, now_s) {
                        Some(object) => {
                            self.reply(&id, object);
                            MoneroOutcome::Continue
                        }
                        None => self.reject(&id, ErrorCode::Other, "no work for this connection"),
                    }
                }
                None => self.reject(&id, ErrorCode::Other, "no work yet"),
            },
            "keepalived" => {
                self.reply(&id, json!({"status": "KEEPALIVED"}));
                MoneroOutcome::Continue
            }
            "submit" => self.handle_submit(&id, params, now_s, jobs, duplicates),
            _ => self.reject(&id, ErrorCode::Other, "unknown method"),
        }
    }

    fn handle_login(
        &mut self,
        id: &RequestId,
        params: &Map<String, Value>,
        jobs: &MoneroJobBook,
        now_s: u64,
    ) -> MoneroOutcome {
        if self.worker.is_some() {
            return self.reject(id, ErrorCode::Other, "already logged in");
        }
        let Some(login) = params.get("login").and_then(Value::as_str) else {
            return self.reject(id, ErrorCode::UnauthorizedWorker, "login must be a string");
        };
        if let Some(algorithms) = params.get("algo") {
            let offered = algorithms.as_array().is_some_and(|list| {
                list.iter()
                    .any(|name| name.as_str() == Some(MONERO_ALGORITHM))
            });
            if !offered {
                return self.reject(id, ErrorCode::Other, "this pool mines rx/0 only");
            }
        }
        let rig_id = params.get("rigid").and_then(Value::as_str);
        let worker = match vet_login(
            login,
            rig_id,
            self.config.network,
            &self.config.front_end.bans,
        ) {
            Ok(worker) => worker,
            Err(message) => return self.reject(id, ErrorCode::UnauthorizedWorker, &message),
        };
        let Some(job) = jobs.newest().cloned() else {
            return self.reject(id, ErrorCode::Other, "no work yet, try again shortly");
        };
        self.worker = Some(worker);
        let Some(job_object) = self.job_object(&job, now_s) else {
            self.worker = None;
            return self.reject(id, ErrorCode::Other, "no work for this connection");
        };
        let mut extensions = vec!["algo", "keepalive"];
        if self.config.nicehash_byte.is_some() {
            extensions.push("nicehash");
        }
        self.reply(
            id,
            json!({
                "id": self.config.session_id,
                "job": job_object,
                "extensions": extensions,
                "status": "OK",
            }),
        );
        MoneroOutcome::Continue
    }

    /// Sends `job` as a `job` notification (new work, or the same job at a new
    /// difficulty). Nothing before login.
    pub fn handle_new_job(&mut self, job: &Arc<MoneroJob>, now_s: u64) {
        if self.worker.is_none() {
            return;
        }
        if let Some(object) = self.job_object(job, now_s) {
            self.notify(object);
        }
    }

    /// The job object for `job` at the current difficulty, recording it as sent. `None`
    /// when this connection's extra nonce does not fit the template (a configuration
    /// fault, never the miner's).
    fn job_object(&mut self, job: &Arc<MoneroJob>, now_s: u64) -> Option<Value> {
        // A job sent before (again, at a new difficulty, or asked for with `getjob`)
        // keeps its blob: the rebuild decodes the whole block and hashes its tree.
        let earlier = self
            .sent
            .iter()
            .position(|sent| {
                sent.job.job_id == job.job_id && sent.job.content_key == job.content_key
            })
            .map(|at| self.sent.remove(at));
        let (hashing_blob, first_send) = match earlier {
            Some(sent) => (sent.hashing_blob, sent.first_send),
            None => {
                let work = job.work(&self.config.extra_nonce).ok()?;
                let mut hashing_blob = work.hashing_blob().to_vec();
                if let Some(byte) = self.config.nicehash_byte {
                    hashing_blob[NICEHASH_BYTE_OFFSET] = byte;
                }
                (hashing_blob, self.sends)
            }
        };
        self.work.retarget_before_job(job.work_job(), now_s);
        self.work.record_sent(job.work_job(), now_s);
        if self.sent.len() >= JOBS_REMEMBERED_MAX {
            self.sent.remove(0);
        }
        let target64 = target64_within_network(self.work.difficulty(), job);
        // Each send has its own id: some miners take a job whose id they saw before for a
        // duplicate and reconnect, or start their nonces over (`wire_job_id`).
        let send = self.sends;
        self.sends = self.sends.wrapping_add(1);
        let object = json!({
            "blob": hex::encode(&hashing_blob),
            "job_id": wire_job_id(job.job_id, send),
            "target": hex::encode(target64.to_le_bytes()),
            "id": self.config.session_id,
            "height": job.height,
            "seed_hash": hex::encode(job.seed_hash),
            "algo": MONERO_ALGORITHM,
        });
        self.sent.push(SentMoneroJob {
            job: job.clone(),
            hashing_blob,
            first_send,
            last_send: send,
        });
        Some(object)
    }

    fn handle_submit(
        &mut self,
        id: &RequestId,
        params: &Map<String, Value>,
        now_s: u64,
        jobs: &MoneroJobBook,
        duplicates: &mut DuplicateFilter,
    ) -> MoneroOutcome {
        self.work.note_submit(now_s);
        let field = |name: &str| params.get(name).and_then(Value::as_str);
        if let Some(algorithm) = params.get("algo") {
            if algorithm.as_str() != Some(MONERO_ALGORITHM) {
                return self.reject(id, ErrorCode::Other, "this pool mines rx/0 only");
            }
        }
        let Some((job_id, send)) = field("job_id").and_then(parse_wire_job_id) else {
            return self.reject(id, ErrorCode::JobNotFound, "Invalid job id");
        };
        let Some(sent) = self.sent.iter().find(|sent| {
            sent.job.job_id == job_id && (sent.first_send..=sent.last_send).contains(&send)
        }) else {
            return self.reject(id, ErrorCode::JobNotFound, "Invalid job id");
        };
        let (job, hashing_blob) = (sent.job.clone(), sent.hashing_blob.clone());
        // Live means this very template: the same id minted again for another (a second
        // control plane after a failover) is not the job this share was mined on.
        if jobs
            .lookup(job_id)
            .is_none_or(|live| live.content_key != job.content_key)
        {
            return self.reject(id, ErrorCode::JobNotFound, "Block expired");
        }
        if self.waiting >= MONERO_SHARES_WAITING_PER_SESSION_MAX {
            return self.reject(
                id,
                ErrorCode::Other,
                "too many shares waiting for their hash",
            );
        }
        let Some(nonce) = field("nonce").and_then(crate::hex32::decode_exact::<4>) else {
            return self.reject(id, ErrorCode::Other, "nonce must be 8 hex digits");
        };
        if let Some(byte) = self.config.nicehash_byte {
            if nonce[MONERO_NONCE_BYTES - 1] != byte {
                return self.reject(
                    id,
                    ErrorCode::Other,
                    "nonce outside this connection's range",
                );
            }
        }
        let Some(claimed_result) = field("result").and_then(crate::hex32::decode_exact::<32>)
        else {
            return self.reject(id, ErrorCode::Other, "result must be 64 hex digits");
        };
        let Some(sent_job) = self.work.sent_job(job_id) else {
            return self.reject(id, ErrorCode::JobNotFound, "Invalid job id");
        };
        let target64 = target64_within_network(sent_job.required_difficulty(now_s), &job);
        let nonce_offset = NICEHASH_BYTE_OFFSET + 1 - MONERO_NONCE_BYTES;
        let mut input = hashing_blob;
        input[nonce_offset..nonce_offset + MONERO_NONCE_BYTES].copy_from_slice(&nonce);
        // The miner's own hash must meet its target (or the network's) before the pool
        // spends a RandomX hash on it; whether it is the true hash is checked after.
        if !meets_target64(&claimed_result, target64)
            && !meets_difficulty(&claimed_result, job.network_difficulty)
        {
            return self.reject(id, ErrorCode::LowDifficulty, "Low difficulty share");
        }
        let fingerprint = sha256d(&input);
        match duplicates.insert(
            &job.content_key,
            otedama_kernels::Algorithm::Scrypt,
            fingerprint,
            false,
        ) {
            Claim::Taken => {}
            Claim::Duplicate => {
                return self.reject(id, ErrorCode::Duplicate, "Duplicate share");
            }
            Claim::Full | Claim::BelowFloor => {
                return self.reject(
                    id,
                    ErrorCode::Other,
                    "share filter full of shares of more work; wait for new work",
                );
            }
        }
        let worker = self.worker.clone().expect("logged in");
        self.waiting += 1;
        MoneroOutcome::NeedsPow(Box::new(MoneroPendingPow {
            request_id: id.clone(),
            job,
            input,
            nonce,
            claimed_result,
            fingerprint,
            target64,
            worker,
            tip_generation: duplicates.tip_generation(),
        }))
    }

    /// Finishes a share with its RandomX hash `pow` (of `pending.input()` under
    /// `pending.seed_hash()`).
    pub fn handle_pow(
        &mut self,
        pending: MoneroPendingPow,
        pow: &[u8; 32],
        duplicates: &mut DuplicateFilter,
    ) -> MoneroOutcome {
        let MoneroPendingPow {
            request_id: id,
            job,
            input: _,
            nonce,
            claimed_result,
            fingerprint,
            target64,
            worker,
            tip_generation,
        } = pending;
        self.waiting = self.waiting.saturating_sub(1);
        let is_block = meets_difficulty(pow, job.network_difficulty);
        let block = is_block.then(|| self.block(&job, nonce, pow, &worker));
        if *pow != claimed_result {
            // The claim stays, with the true hash's work so the filter may forget it
            // like any other: the same input again is the same lie. The session is done
            // (`lied`); a block the input proves is still the pool's.
            self.lied = true;
            let kept = duplicates.settle(&job.content_key, &fingerprint, pow, is_block);
            self.reject(&id, ErrorCode::Other, "Invalid result");
            return match block {
                Some(block) if kept => MoneroOutcome::BlockOnly(Box::new(block), ErrorCode::Other),
                _ => MoneroOutcome::Close(MoneroCloseReason::ResultMismatch),
            };
        }
        if tip_generation != duplicates.tip_generation() {
            // A new tip dropped the filter's sets while the share was hashed: it may be the
            // copy of one credited before, so it is not credited. A block still goes up.
            self.reject(&id, ErrorCode::JobNotFound, "Block expired");
            return match block {
                Some(block) => MoneroOutcome::BlockOnly(Box::new(block), ErrorCode::JobNotFound),
                None => MoneroOutcome::Rejected(ErrorCode::JobNotFound),
            };
        }
        if !meets_target64(pow, target64) {
            if let Some(block) = block {
                // Kept claimed and remembered as a block, so a copy is refused. A block
                // the filter cannot keep (its blocks of this tip at their bound, under
                // the floor: regtest only) is refused and not sent, as for scrypt
                // (`work::credit_share`): were it sent, a copy could be sent again.
                if !duplicates.settle(&job.content_key, &fingerprint, pow, true) {
                    return self.reject(
                        &id,
                        ErrorCode::Other,
                        "share filter full of shares of more work; wait for new work",
                    );
                }
                self.reject(&id, ErrorCode::LowDifficulty, "Low difficulty share");
                return MoneroOutcome::BlockOnly(Box::new(block), ErrorCode::LowDifficulty);
            }
            duplicates.remove(&job.content_key, &fingerprint);
            return self.reject(&id, ErrorCode::LowDifficulty, "Low difficulty share");
        }
        if !duplicates.settle(&job.content_key, &fingerprint, pow, is_block) {
            return self.reject(
                &id,
                ErrorCode::Other,
                "share filter full of shares of more work; wait for new work",
            );
        }
        MoneroOutcome::ShareAccepted(Box::new(MoneroAcceptedShare {
            request_id: id,
            job_id: job.job_id,
            height: job.height,
            worker,
            difficulty: target64_difficulty(target64),
            pow: *pow,
            nonce,
            block,
        }))
    }

    /// Gives back the claim of a share the glue will not hash (the connection closed,
    /// the seed's VM is gone): its copy may then be sent again and counted once.
    pub fn abandon(&mut self, pending: MoneroPendingPow, duplicates: &mut DuplicateFilter) {
        self.waiting = self.waiting.saturating_sub(1);
        duplicates.remove(&pending.job.content_key, &pending.fingerprint);
    }

    /// `abandon`, for a share the glue could not hash (its seed's VM is gone, or the hash
    /// failed): the miner hears it is stale.
    pub fn abandon_stale(&mut self, pending: MoneroPendingPow, duplicates: &mut DuplicateFilter) {
        let id = pending.request_id.clone();
        self.abandon(pending, duplicates);
        self.reject(&id, ErrorCode::JobNotFound, "Block expired");
    }

    /// An accepted share the share log could not keep: refused, not credited.
    pub fn handle_share_store_failed(&mut self, request_id: &RequestId) {
        self.reject(request_id, ErrorCode::Other, "share could not be stored");
    }

    /// The block a share found: the connection's work rebuilt from the template (its
    /// blob is not kept per connection: it holds every transaction's hash). It builds:
    /// the same job and extra nonce built when the job was sent (`job_object`), and the
    /// build is a function of those alone.
    fn block(
        &self,
        job: &MoneroJob,
        nonce: [u8; MONERO_NONCE_BYTES],
        pow: &[u8; 32],
        worker: &str,
    ) -> MoneroBlock {
        let work = job
            .work(&self.config.extra_nonce)
            .expect("the work built when its job was sent");
        MoneroBlock {
            job_id: job.job_id,
            height: job.height,
            blob: work.block_blob_with_nonce(nonce),
            block_id: work.block_id(nonce),
            pow: *pow,
            worker: worker.to_string(),
        }
    }

    /// An accepted share is durable: the miner hears `OK`, and vardiff counts it; a new
    /// difficulty goes out with the newest job.
    pub fn handle_share_durable(
        &mut self,
        request_id: &RequestId,
        now_s: u64,
        jobs: &MoneroJobBook,
    ) {
        self.reply(request_id, json!({"status": "OK"}));
        if self.work.on_share_durable(now_s) {
            if let Some(job) = jobs.newest().cloned() {
                self.handle_new_job(&job, now_s);
            }
        }
    }

    fn reply(&mut self, id: &RequestId, result: Value) {
        self.outbox.extend_from_slice(b"{\"id\":");
        id.write_to(&mut self.outbox);
        self.outbox
            .extend_from_slice(b",\"jsonrpc\":\"2.0\",\"error\":null,\"result\":");
        serde_json::to_writer(&mut self.outbox, &result).expect("JSON values serialize");
        self.outbox.extend_from_slice(b"}\n");
    }

    fn notify(&mut self, job: Value) {
        let line = json!({"jsonrpc": "2.0", "method": "job", "params": job});
        serde_json::to_writer(&mut self.outbox, &line).expect("JSON values serialize");
        self.outbox.push(b'\n');
    }

    fn reject(&mut self, id: &RequestId, code: ErrorCode, message: &str) -> MoneroOutcome {
        self.outbox.extend_from_slice(b"{\"id\":");
        id.write_to(&mut self.outbox);
        self.outbox
            .extend_from_slice(b",\"jsonrpc\":\"2.0\",\"error\":{\"code\":-1,\"message\":");
        serde_json::to_writer(&mut self.outbox, message).expect("a string serializes");
        self.outbox.extend_from_slice(b"},\"result\":null}\n");
        MoneroOutcome::Rejected(code)
    }
}

/// A `login` as the name shares are recorded under: `ADDRESS` or `ADDRESS.RIG` (the rig
/// from the login, else from `rigid`), the address checked for `network`, in its
/// canonical form and not integrated (`payout_address`: so one wallet is one party to the
/// ledger and bans), the rig printable,
/// the whole at most `MONERO_LOGIN_BYTES_MAX`.
pub fn vet_login(
    login: &str,
    rig_id: Option<&str>,
    network: monero::Network,
    bans: &BanList,
) -> Result<String, String> {
    if login.is_empty() || login.len() > MONERO_LOGIN_BYTES_MAX {
        return Err(format!(
            "login must be 1 to {MONERO_LOGIN_BYTES_MAX} bytes: ADDRESS or ADDRESS.RIG"
        ));
    }
    let (address, rig) = match login.split_once('.') {
        Some((address, rig)) => (address, Some(rig)),
        None => (login, rig_id),
    };
    if let Some(rig) = rig {
        if rig.is_empty() || !rig.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err("rig name must be printable ASCII without spaces".into());
        }
    }
    let address = payout_address(address, network).map_err(|error| error.to_string())?;
    let recorded = match rig {
        Some(rig) => format!("{}.{rig}", address.text),
        None => address.text,
    };
    if recorded.len() > MONERO_LOGIN_BYTES_MAX {
        return Err(format!(
            "address and rig together exceed {MONERO_LOGIN_BYTES_MAX} bytes"
        ));
    }
    if bans.bans_worker(&recorded) {
        return Err("banned".into());
    }
    Ok(recorded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz_harness::monero_template::{template_blob, EXTRA_NONCE_BYTES};
    use otedama_kernels::randomx::{RandomXMode, RandomXSeed};
    use otedama_kernels::Algorithm;
    use std::sync::OnceLock;

    /// The Monero project's general fund address (mainnet).
    const ADDRESS: &str =
        "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
    const SEED: [u8; 32] = [0x5e; 32];

    fn seed() -> &'static RandomXSeed {
        static PREPARED: OnceLock<RandomXSeed> = OnceLock::new();
        PREPARED.get_or_init(|| RandomXSeed::prepare(&SEED, RandomXMode::Light).unwrap())
    }

    fn randomx(input: &[u8]) -> [u8; 32] {
        seed().vm().unwrap().hash(input).unwrap()
    }

    fn job(job_id: u64, prev: u8, network_difficulty: u128) -> Arc<MoneroJob> {
        let (blob, reserved_offset) = template_blob(prev);
        Arc::new(
            MoneroJob::new(
                job_id,
                100,
                [prev; 32],
                SEED,
                network_difficulty,
                blob,
                reserved_offset,
                EXTRA_NONCE_BYTES,
            )
            .unwrap(),
        )
    }

    fn config(connection: u8, start_difficulty: f64) -> MoneroSessionConfig {
        MoneroSessionConfig {
            session_id: format!("s{connection}"),
            extra_nonce: vec![connection; EXTRA_NONCE_BYTES as usize],
            nicehash_byte: None,
            network: monero::Network::Mainnet,
            front_end: FrontEndConfig::plain(Algorithm::Sha256d, start_difficulty, 1.0),
        }
    }

    fn line(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    /// Every line the session queued, parsed.
    fn sent(session: &mut MoneroSession) -> Vec<Value> {
        let bytes = session.poll_transmit().unwrap_or_default();
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    struct Pool {
        jobs: MoneroJobBook,
        duplicates: DuplicateFilter,
    }

    impl Pool {
        fn new(network_difficulty: u128) -> Self {
            let mut jobs = MoneroJobBook::default();
            jobs.insert(job(1, 0, network_difficulty));
            Pool {
                jobs,
                duplicates: DuplicateFilter::default(),
            }
        }

        fn send(&mut self, session: &mut MoneroSession, value: Value) -> MoneroOutcome {
            session.handle_line(&line(value), 1_000, &self.jobs, &mut self.duplicates)
        }

        /// Logs in and returns the job object the login reply carried.
        fn login(&mut self, session: &mut MoneroSession) -> Value {
            let outcome = self.send(
                session,
                json!({"id": 1, "jsonrpc": "2.0", "method": "login",
                       "params": {"login": format!("{ADDRESS}.rig1"), "pass": "x",
                                  "agent": "test/1", "algo": ["rx/0"]}}),
            );
            assert_eq!(outcome, MoneroOutcome::Continue);
            let reply = sent(session).remove(0);
            assert_eq!(reply["result"]["status"], "OK", "{reply}");
            reply["result"]["job"].clone()
        }

        fn submit(
            &mut self,
            session: &mut MoneroSession,
            job: &Value,
            nonce: &str,
            result: &str,
        ) -> MoneroOutcome {
            self.send(
                session,
                json!({"id": 7, "jsonrpc": "2.0", "method": "submit",
                       "params": {"id": job["id"], "job_id": job["job_id"],
                                  "nonce": nonce, "result": result, "algo": "rx/0"}}),
            )
        }

        /// Submits `nonce` with its true hash and hashes it as the glue would.
        fn submit_honestly(
            &mut self,
            session: &mut MoneroSession,
            job: &Value,
            nonce: [u8; 4],
        ) -> MoneroOutcome {
            let mut blob = hex::decode(job["blob"].as_str().unwrap()).unwrap();
            blob[39..43].copy_from_slice(&nonce);
            let hash = randomx(&blob);
            match self.submit(session, job, &hex::encode(nonce), &hex::encode(hash)) {
                MoneroOutcome::NeedsPow(pending) => {
                    assert_eq!(pending.input(), blob, "the input is the miner's blob");
                    assert_eq!(pending.seed_hash(), &SEED);
                    let pow = randomx(pending.input());
                    session.handle_pow(*pending, &pow, &mut self.duplicates)
                }
                outcome => outcome,
            }
        }
    }

    fn error_message(session: &mut MoneroSession) -> String {
        let reply = sent(session).pop().unwrap();
        assert_eq!(reply["error"]["code"], -1, "{reply}");
        assert!(reply["result"].is_null());
        reply["error"]["message"].as_str().unwrap().to_string()
    }

    /// The network target is monerod's rule exactly: a hash meets a difficulty when
    /// hash × difficulty < 2^256, at the edges and over a seeded sweep.
    #[test]
    fn the_network_target_is_monerods_rule() {
        assert_eq!(monero_network_target(1), Target::MAX);
        assert_eq!(monero_network_target(0), Target::MAX);
        let mut half = [0xff; 32];
        half[31] = 0x7f;
        assert_eq!(monero_network_target(2), Target::from_le_bytes(&half));
        let mut state = 0x0123_4567_89ab_cdefu64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..5_000 {
            let difficulty = match round % 3 {
                0 => u128::from(next() >> (next() % 64)).max(1),
                1 => (u128::from(next()) << 64 | u128::from(next())) >> (next() % 128),
                _ => u128::from(next() % 1000 + 1),
            }
            .max(1);
            let target = monero_network_target(difficulty);
            let mut hash = [0u8; 32];
            for chunk in hash.chunks_exact_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            // Hashes near the target: just at it and one above.
            let at = target.to_le_bytes();
            for candidate in [hash, at] {
                assert_eq!(
                    target.is_met_by(&candidate),
                    meets_difficulty(&candidate, difficulty),
                    "difficulty {difficulty}"
                );
            }
            // One above the target (none above `Target::MAX`).
            if let Some(index) = at.iter().position(|byte| *byte != 0xff) {
                let mut above = at;
                above[index] += 1;
                above[..index].fill(0);
                assert!(
                    !meets_difficulty(&above, difficulty),
                    "difficulty {difficulty}"
                );
            }
        }
    }

    /// The 64-bit target a miner is sent and the credit of a share that meets it: the
    /// credit is the work the target demands (2^64 / target), never less than asked by
    /// more than the target's rounding, and a hash is tested as miners test it.
    #[test]
    fn a_share_is_credited_the_work_its_target_demands() {
        assert_eq!(share_target64(0.5), u64::MAX);
        assert_eq!(share_target64(1.0), u64::MAX);
        assert_eq!(share_target64(4_294_967_296.0), 4_294_967_296);
        assert_eq!(share_target64(1e30), 1);
        for difficulty in [2.0, 3.0, 1000.0, 123_456.7, 3.1e11] {
            let target = share_target64(difficulty);
            let credit = target64_difficulty(target);
            assert!(credit >= difficulty, "{difficulty}: {credit}");
            assert!(
                credit <= difficulty * (1.0 + 2.0 / target as f64),
                "{difficulty}"
            );
        }
        let mut hash = [0u8; 32];
        hash[24..32].copy_from_slice(&999u64.to_le_bytes());
        assert!(meets_target64(&hash, 1000));
        assert!(!meets_target64(&hash, 999));
    }

    /// Login: the address is checked (network, checksum, canonical form, length), the
    /// algorithm list must name rx/0, and the reply carries the session id, a job for
    /// this connection and the extensions.
    #[test]
    fn a_login_is_checked_and_answered_with_a_job() {
        let mut pool = Pool::new(1_000_000);
        let mut session = MoneroSession::new(config(1, 1.0));
        let keys: monero::Address = ADDRESS.parse().unwrap();
        let stagenet = monero::Address::standard(
            monero::Network::Stagenet,
            keys.public_spend,
            keys.public_view,
        )
        .to_string();
        let integrated = monero::Address::integrated(
            monero::Network::Mainnet,
            keys.public_spend,
            keys.public_view,
            monero::util::address::PaymentId::from([7; 8]),
        )
        .to_string();
        for (params, expected) in [
            (json!({"login": stagenet}), "is a Stagenet address"),
            (json!({"login": integrated}), "is an integrated address"),
            (
                json!({"login": format!("{ADDRESS}x")}),
                "not a Monero address",
            ),
            (
                json!({"login": "x".repeat(MONERO_LOGIN_BYTES_MAX + 1)}),
                "login must be",
            ),
            (json!({"login": format!("{ADDRESS}.")}), "rig name"),
            (json!({"login": format!("{ADDRESS}.a b")}), "rig name"),
            (json!({"login": ADDRESS, "algo": ["cn/r"]}), "rx/0 only"),
            (json!({"login": 5}), "login must be a string"),
        ] {
            let outcome = pool.send(
                &mut session,
                json!({"id": 1, "method": "login", "params": params}),
            );
            assert!(matches!(outcome, MoneroOutcome::Rejected(_)));
            let message = error_message(&mut session);
            assert!(message.contains(expected), "{message} for {params}");
            assert!(!session.is_mining());
        }
        // Nothing but login before login.
        assert_eq!(
            pool.send(
                &mut session,
                json!({"id": 2, "method": "getjob", "params": {"id": "s1"}})
            ),
            MoneroOutcome::Rejected(ErrorCode::NotSubscribed)
        );
        assert_eq!(error_message(&mut session), "Unauthenticated");

        let job = pool.login(&mut session);
        assert!(session.is_mining());
        assert_eq!(job["id"], "s1");
        assert_eq!(job["algo"], "rx/0");
        assert_eq!(job["height"], 100);
        assert_eq!(job["seed_hash"], hex::encode(SEED));
        assert_eq!(job["job_id"], "000000000000000100000000");
        assert_eq!(job["target"], "ffffffffffffffff");
        // The blob is this connection's: its extra nonce's hashing blob.
        let expected = pool.jobs.newest().unwrap().work(&[1; 8]).unwrap();
        assert_eq!(job["blob"], hex::encode(expected.hashing_blob()));
        let other = pool.jobs.newest().unwrap().work(&[2; 8]).unwrap();
        assert_ne!(expected.hashing_blob(), other.hashing_blob());
        // A second login is refused; keepalived and getjob answer.
        pool.send(
            &mut session,
            json!({"id": 3, "method": "login", "params": {"login": ADDRESS}}),
        );
        assert_eq!(error_message(&mut session), "already logged in");
        pool.send(
            &mut session,
            json!({"id": 4, "method": "keepalived", "params": {"id": "s1"}}),
        );
        assert_eq!(sent(&mut session)[0]["result"]["status"], "KEEPALIVED");
        pool.send(
            &mut session,
            json!({"id": 5, "method": "getjob", "params": {"id": "s1"}}),
        );
        assert_eq!(sent(&mut session)[0]["result"]["blob"], job["blob"]);
        // Another session's id is not this one's.
        pool.send(
            &mut session,
            json!({"id": 6, "method": "keepalived", "params": {"id": "s2"}}),
        );
        assert_eq!(error_message(&mut session), "Unauthenticated");
    }

    /// A share goes from submit through its RandomX hash to durability and `OK`, credited
    /// the work its target demands; every bad input gets its own error while another miner
    /// on the same core carries on.
    #[test]
    fn shares_are_checked_hashed_and_acknowledged() {
        let mut pool = Pool::new(u128::MAX);
        let mut miner = MoneroSession::new(config(1, 1.0));
        let mut other = MoneroSession::new(config(2, 1.0));
        let job = pool.login(&mut miner);
        let other_job = pool.login(&mut other);

        let MoneroOutcome::ShareAccepted(share) =
            pool.submit_honestly(&mut miner, &job, [1, 0, 0, 0])
        else {
            panic!("not accepted")
        };
        assert_eq!(share.worker, format!("{ADDRESS}.rig1"));
        assert_eq!(share.difficulty, target64_difficulty(u64::MAX));
        assert_eq!(share.job_id, 1);
        assert!(share.block.is_none());
        assert!(
            sent(&mut miner).is_empty(),
            "no OK before the share is durable"
        );
        miner.handle_share_durable(&share.request_id, 1_000, &pool.jobs);
        let ok = sent(&mut miner).remove(0);
        assert_eq!(ok["id"], 7);
        assert_eq!(ok["result"]["status"], "OK");
        assert!(ok["error"].is_null());

        // The same nonce again: refused as a duplicate before any hash.
        let outcome = pool.submit(&mut miner, &job, "01000000", &hex::encode([0; 32]));
        assert_eq!(outcome, MoneroOutcome::Rejected(ErrorCode::Duplicate));
        assert_eq!(error_message(&mut miner), "Duplicate share");
        // The other miner's same nonce is other work (its own extra nonce).
        assert!(matches!(
            pool.submit_honestly(&mut other, &other_job, [1, 0, 0, 0]),
            MoneroOutcome::ShareAccepted(_)
        ));

        // Malformed nonces and results.
        for (nonce, result, expected) in [
            (
                "0100000",
                hex::encode([0; 32]),
                "nonce must be 8 hex digits",
            ),
            (
                "010000000",
                hex::encode([0; 32]),
                "nonce must be 8 hex digits",
            ),
            (
                "zz000000",
                hex::encode([0; 32]),
                "nonce must be 8 hex digits",
            ),
            ("02000000", "00".repeat(31), "result must be 64 hex digits"),
        ] {
            assert!(matches!(
                pool.submit(&mut miner, &job, nonce, &result),
                MoneroOutcome::Rejected(_)
            ));
            assert_eq!(error_message(&mut miner), expected);
        }
        // An unknown job, and another session's id.
        let mut unknown = job.clone();
        unknown["job_id"] = json!("00000000000000ff00000000");
        pool.submit(&mut miner, &unknown, "03000000", &hex::encode([0; 32]));
        assert_eq!(error_message(&mut miner), "Invalid job id");
        let mut short = job.clone();
        short["job_id"] = json!("1");
        pool.submit(&mut miner, &short, "03000000", &hex::encode([0; 32]));
        assert_eq!(error_message(&mut miner), "Invalid job id");
        let mut foreign = job.clone();
        foreign["id"] = json!("s2");
        pool.submit(&mut miner, &foreign, "03000000", &hex::encode([0; 32]));
        assert_eq!(error_message(&mut miner), "Unauthenticated");
        // Another algorithm named in the submit.
        pool.send(
            &mut miner,
            json!({"id": 8, "method": "submit", "params": {"id": "s1", "job_id": job["job_id"],
                   "nonce": "04000000", "result": hex::encode([0; 32]), "algo": "cn/r"}}),
        );
        assert_eq!(error_message(&mut miner), "this pool mines rx/0 only");

        // The other miner carried on through all of it.
        assert!(matches!(
            pool.submit_honestly(&mut other, &other_job, [9, 0, 0, 0]),
            MoneroOutcome::ShareAccepted(_)
        ));
    }

    /// A result that does not meet the miner's target is refused without a hash; one that
    /// claims to meet it but is not the input's hash closes the connection (a miner that
    /// lies would make the pool hash for nothing), and its copy stays refused.
    #[test]
    fn a_low_or_false_result_costs_the_miner_not_the_pool() {
        let mut pool = Pool::new(u128::MAX);
        // Difficulty 2^32: a target of 2^32 in the last 8 bytes.
        let mut miner = MoneroSession::new(config(1, 4_294_967_296.0));
        let job = pool.login(&mut miner);
        assert_eq!(job["target"], hex::encode(4_294_967_296u64.to_le_bytes()));
        let mut low = [0u8; 32];
        low[24..32].copy_from_slice(&4_294_967_296u64.to_le_bytes());
        assert_eq!(
            pool.submit(&mut miner, &job, "01000000", &hex::encode(low)),
            MoneroOutcome::Rejected(ErrorCode::LowDifficulty)
        );
        assert_eq!(error_message(&mut miner), "Low difficulty share");
        // A result just under the target, not the true hash (which meets 2^-32 odds).
        let mut claimed = [0u8; 32];
        claimed[24..32].copy_from_slice(&4_294_967_295u64.to_le_bytes());
        let MoneroOutcome::NeedsPow(pending) =
            pool.submit(&mut miner, &job, "01000000", &hex::encode(claimed))
        else {
            panic!("a meeting result is hashed")
        };
        let pow = randomx(pending.input());
        assert_ne!(pow, claimed);
        assert_eq!(
            miner.handle_pow(*pending, &pow, &mut pool.duplicates),
            MoneroOutcome::Close(MoneroCloseReason::ResultMismatch)
        );
        assert_eq!(error_message(&mut miner), "Invalid result");
        // The same input again (on a new connection of the same extra nonce) is refused
        // before any hash.
        let mut again = MoneroSession::new(config(1, 4_294_967_296.0));
        let job = pool.login(&mut again);
        assert_eq!(
            pool.submit(&mut again, &job, "01000000", &hex::encode(claimed)),
            MoneroOutcome::Rejected(ErrorCode::Duplicate)
        );
    }

    /// A job of a new tip makes the old tip's jobs stale; a share of a job this
    /// connection was never sent is unknown.
    #[test]
    fn shares_of_an_old_tip_are_stale() {
        let mut pool = Pool::new(u128::MAX);
        let mut miner = MoneroSession::new(config(1, 1.0));
        let old = pool.login(&mut miner);
        // A second job on the same tip: shares of the first are still taken.
        pool.jobs.insert(job(2, 0, u128::MAX));
        miner.handle_new_job(&pool.jobs.newest().unwrap().clone(), 1_000);
        let second = sent(&mut miner).remove(0);
        assert_eq!(second["method"], "job");
        let second = second["params"].clone();
        assert_eq!(second["job_id"], "000000000000000200000001");
        assert!(matches!(
            pool.submit_honestly(&mut miner, &old, [1, 0, 0, 0]),
            MoneroOutcome::ShareAccepted(_)
        ));
        // A new tip.
        pool.jobs.insert(job(3, 9, u128::MAX));
        pool.jobs.retire_in(&mut pool.duplicates);
        for stale in [&old, &second] {
            assert_eq!(
                pool.submit(&mut miner, stale, "02000000", &hex::encode([0; 32])),
                MoneroOutcome::Rejected(ErrorCode::JobNotFound)
            );
            assert_eq!(error_message(&mut miner), "Block expired");
        }
    }

    /// A share whose hash meets the network's difficulty carries the block: the whole
    /// blob with this connection's extra nonce and the nonce, and the id monerod will
    /// name it by. In nicehash mode the pool's byte is in the blob and a nonce without it
    /// is refused.
    #[test]
    fn a_block_is_found_and_nicehash_keeps_its_byte() {
        let mut pool = Pool::new(1);
        let mut config = config(3, 1.0);
        config.nicehash_byte = Some(0xa7);
        let mut miner = MoneroSession::new(config);
        let outcome = pool.send(
            &mut miner,
            json!({"id": 1, "method": "login", "params": {"login": ADDRESS, "rigid": "r2"}}),
        );
        assert_eq!(outcome, MoneroOutcome::Continue);
        let reply = sent(&mut miner).remove(0);
        assert_eq!(
            reply["result"]["extensions"],
            json!(["algo", "keepalive", "nicehash"])
        );
        let job = reply["result"]["job"].clone();
        let blob = hex::decode(job["blob"].as_str().unwrap()).unwrap();
        assert_eq!(blob[NICEHASH_BYTE_OFFSET], 0xa7);
        assert_eq!(
            pool.submit(&mut miner, &job, "01000000", &hex::encode([0; 32])),
            MoneroOutcome::Rejected(ErrorCode::Other)
        );
        assert_eq!(
            error_message(&mut miner),
            "nonce outside this connection's range"
        );
        let nonce = [5, 6, 7, 0xa7];
        let MoneroOutcome::ShareAccepted(share) = pool.submit_honestly(&mut miner, &job, nonce)
        else {
            panic!("not accepted")
        };
        assert_eq!(share.worker, format!("{ADDRESS}.r2"));
        let block = share.block.expect("difficulty 1: every hash is a block");
        let work = pool.jobs.newest().unwrap().work(&[3; 8]).unwrap();
        assert_eq!(block.blob, work.block_blob_with_nonce(nonce));
        assert_eq!(block.block_id, work.block_id(nonce));
        assert_eq!(block.pow, share.pow);
        assert_eq!(block.height, 100);
    }

    /// A line that is not JSON closes the connection; a request of another shape is
    /// refused and the session goes on.
    #[test]
    fn odd_lines_are_refused_or_close() {
        let mut pool = Pool::new(u128::MAX);
        let mut miner = MoneroSession::new(config(1, 1.0));
        assert_eq!(
            miner.handle_line(b"{not json", 1, &pool.jobs, &mut pool.duplicates),
            MoneroOutcome::Close(MoneroCloseReason::NotJson)
        );
        pool.send(&mut miner, json!([1, 2]));
        assert_eq!(error_message(&mut miner), "request must be a JSON object");
        pool.send(
            &mut miner,
            json!({"id": 1, "method": "login", "params": [ADDRESS]}),
        );
        assert_eq!(error_message(&mut miner), "params must be an object");
        pool.send(&mut miner, json!({"id": 1, "method": 5}));
        assert_eq!(error_message(&mut miner), "method must be a string");
        pool.login(&mut miner);
        pool.send(
            &mut miner,
            json!({"id": 2, "method": "mining.subscribe", "params": {"id": "s1"}}),
        );
        assert_eq!(error_message(&mut miner), "unknown method");
        // Before any job, a login is refused (the miner retries).
        let empty = MoneroJobBook::default();
        let mut early = MoneroSession::new(config(4, 1.0));
        early.handle_line(
            &line(json!({"id": 1, "method": "login", "params": {"login": ADDRESS}})),
            1,
            &empty,
            &mut pool.duplicates,
        );
        assert_eq!(error_message(&mut early), "no work yet, try again shortly");
        assert!(!early.is_mining());
    }

    /// A share of a job id this session was sent under another send, or of an id the book
    /// holds for another template, is not taken; a job sent again (here by `getjob`) gets
    /// a new id and keeps its blob, and shares of either id count.
    #[test]
    fn wire_ids_name_one_send_of_one_template() {
        let mut pool = Pool::new(u128::MAX);
        let mut miner = MoneroSession::new(config(1, 1.0));
        let first = pool.login(&mut miner);
        pool.send(
            &mut miner,
            json!({"id": 5, "method": "getjob", "params": {"id": "s1"}}),
        );
        let again = sent(&mut miner).remove(0)["result"].clone();
        assert_eq!(again["job_id"], "000000000000000100000001");
        assert_eq!(again["blob"], first["blob"]);
        for (job, nonce) in [(&first, [1, 0, 0, 0]), (&again, [2, 0, 0, 0])] {
            assert!(matches!(
                pool.submit_honestly(&mut miner, job, nonce),
                MoneroOutcome::ShareAccepted(_)
            ));
        }
        let mut unsent = first.clone();
        unsent["job_id"] = json!("000000000000000100000002");
        pool.submit(&mut miner, &unsent, "03000000", &hex::encode([0; 32]));
        assert_eq!(error_message(&mut miner), "Invalid job id");
        // Job id 1 minted again for another template (a second control plane): the
        // session's job 1 is not live.
        pool.jobs.insert(job(1, 0x10, u128::MAX));
        assert_eq!(
            pool.submit(&mut miner, &first, "04000000", &hex::encode([0; 32])),
            MoneroOutcome::Rejected(ErrorCode::JobNotFound)
        );
        assert_eq!(error_message(&mut miner), "Block expired");
    }

    /// At most `MONERO_SHARES_WAITING_PER_SESSION_MAX` shares of a session wait for their
    /// hash; the next is refused until one is finished or abandoned, and an abandoned
    /// share's claim is given back.
    #[test]
    fn a_session_has_a_bounded_number_of_hashes_in_flight() {
        let mut pool = Pool::new(u128::MAX);
        let mut miner = MoneroSession::new(config(1, 1.0));
        let job = pool.login(&mut miner);
        let mut waiting = Vec::new();
        for nonce in 0..MONERO_SHARES_WAITING_PER_SESSION_MAX as u8 {
            let MoneroOutcome::NeedsPow(pending) = pool.submit(
                &mut miner,
                &job,
                &hex::encode([nonce, 0, 0, 0]),
                &hex::encode([0; 32]),
            ) else {
                panic!("share {nonce} waits")
            };
            waiting.push(pending);
        }
        assert_eq!(
            pool.submit(&mut miner, &job, "ff000000", &hex::encode([0; 32])),
            MoneroOutcome::Rejected(ErrorCode::Other)
        );
        assert_eq!(
            error_message(&mut miner),
            "too many shares waiting for their hash"
        );
        let first = waiting.remove(0);
        let input = first.input().to_vec();
        miner.abandon(*first, &mut pool.duplicates);
        // Its copy is taken again (the claim was given back), and fills the free place.
        let mut blob = hex::decode(job["blob"].as_str().unwrap()).unwrap();
        blob[39..43].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(blob, input);
        assert!(matches!(
            pool.submit(&mut miner, &job, "00000000", &hex::encode([0; 32])),
            MoneroOutcome::NeedsPow(_)
        ));
    }

    /// After a false result every line closes, and a false result whose input is a block
    /// still hands the block to the pool.
    #[test]
    fn a_false_result_ends_the_session_but_keeps_a_block() {
        let mut pool = Pool::new(1);
        let mut miner = MoneroSession::new(config(1, 1.0));
        let job = pool.login(&mut miner);
        let MoneroOutcome::NeedsPow(pending) =
            pool.submit(&mut miner, &job, "01000000", &hex::encode([0; 32]))
        else {
            panic!("a meeting result is hashed")
        };
        let pow = randomx(pending.input());
        let MoneroOutcome::BlockOnly(block, ErrorCode::Other) =
            miner.handle_pow(*pending, &pow, &mut pool.duplicates)
        else {
            panic!("the block is kept")
        };
        assert_eq!(block.pow, pow);
        assert_eq!(error_message(&mut miner), "Invalid result");
        assert_eq!(
            pool.send(
                &mut miner,
                json!({"id": 9, "method": "keepalived", "params": {"id": "s1"}})
            ),
            MoneroOutcome::Close(MoneroCloseReason::ResultMismatch)
        );
    }

    /// A miner held at the network's difficulty is sent a target no harder than the
    /// block's bound: every hash that is a block meets it.
    #[test]
    fn a_capped_target_is_never_harder_than_the_networks() {
        for network_difficulty in [3u128, 1000, 123_456_789, 300_000_000_000] {
            let job = job(1, 0, network_difficulty);
            let capped = network_difficulty as f64 * (1.0 - 1e-9);
            let target64 = target64_within_network(capped, &job);
            let network = job.network_target.to_le_bytes();
            let network_top = u64::from_le_bytes(network[24..32].try_into().unwrap());
            assert!(target64 > network_top, "{network_difficulty}");
            // The largest hash that is a block meets the share target.
            assert!(meets_target64(&network, target64));
            assert!(meets_difficulty(&network, network_difficulty));
        }
        let job = job(1, 0, 1000);
        assert_eq!(
            target64_within_network(4000.0, &job),
            share_target64(4000.0)
        );
        assert_eq!(MONERO_DIFFICULTY_FLOOR, 128.0);
    }
}
