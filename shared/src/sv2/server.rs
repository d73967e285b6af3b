//! The pool's side of one Stratum V2 connection, after the transport (Noise over TCP, or
//! QUIC's TLS) has turned bytes into frames: SetupConnection, standard and extended
//! mining channels, jobs, targets and shares.
//!
//! Share rules come from `crate::work`, the same functions V1 uses, so a V2 share is
//! accepted, rejected and credited exactly as the same share over V1 would be; only the
//! words differ (the reference implementation's error codes).
//!
//! Extranonces: every channel gets its own 4-byte prefix from the core's extranonce1
//! allocator, so channels never share a coinbase and a share can only collide with one on
//! the same core, as in V1. A standard channel's extranonce is the prefix and 4 zero
//! bytes, fixed, so the pool computes its merkle root once per job and each share costs
//! one header hash. An extended channel rolls the other 4 bytes itself.
//!
//! Group channel: when the client can take extended jobs (it did not set
//! REQUIRES_STANDARD_JOBS, as a proxy would not), all its standard channels join one
//! group, and each new job goes out once, as a NewExtendedMiningJob to the group, instead
//! of one NewMiningJob per channel; the client derives each channel's merkle root from its
//! extranonce prefix (the pool computes the same roots to check shares). A device that
//! mines headers only sets the flag and gets per-channel jobs.
//!
//! One file, past the usual length, because it is one state machine: every handler reads
//! and writes the same session and channel state, and its invariants (sequence numbers,
//! the extranonce and job maps, the acknowledgement window) are each checked in one place.

use std::sync::Arc;

use otedama_kernels::sha256d::sha256d_80;
use otedama_kernels::{Algorithm, Target};

use crate::bans::BanList;
use crate::job::{Job, JobBook};
use crate::limits::{empty_outbox, EXTRANONCE1_BYTES, EXTRANONCE2_BYTES, JOBS_REMEMBERED_MAX};
use crate::share::{build_header, header_from_root, merkle_root, pow_hash, ShareRecord};
use crate::share::{BlockCandidate, Protocol, UncreditedBlock};
use crate::share::{DuplicateFilter, ShareSubmission};
use crate::work::{
    check_ntime, check_version, claim_share, credit_share, vet_worker_name, CreditedShare,
    FrontEndConfig, Rejection, ShareTerms, WorkState,
};

use super::frame::FrameHeader;
use super::messages::*;
use super::wire::{Seq0255U256, Str0255, B032, B064K};
use super::{Decoded, Message};

/// Channels one connection may open (a proxy opens one per device behind it, or one
/// extended channel for all of them).
pub const CHANNELS_PER_CONNECTION_MAX: usize = 64;

/// Channels one connection may open over its life, closed ones included. Each open takes
/// an extranonce prefix from its core; opening and closing without end would churn that
/// space for nothing a miner needs.
pub const CHANNEL_OPENS_PER_CONNECTION_MAX: usize = 1024;

/// Mining-protocol SetupConnection flags a client may set (spec 5.3.1): standard jobs only,
/// its own work selection, version rolling.
pub const SETUP_FLAG_REQUIRES_STANDARD_JOBS: u32 = 1;
pub const SETUP_FLAG_REQUIRES_WORK_SELECTION: u32 = 1 << 1;
pub const SETUP_FLAG_REQUIRES_VERSION_ROLLING: u32 = 1 << 2;
/// SetupConnection.Success flag: the client must not roll the version.
pub const SUCCESS_FLAG_REQUIRES_FIXED_VERSION: u32 = 1;

/// Error codes as the reference implementation spells them.
pub mod error_code {
    pub const INVALID_CHANNEL_ID: &str = "invalid-channel-id";
    pub const STALE_SHARE: &str = "stale-share";
    pub const INVALID_JOB_ID: &str = "invalid-job-id";
    pub const DIFFICULTY_TOO_LOW: &str = "difficulty-too-low";
    pub const DUPLICATE_SHARE: &str = "duplicate-share";
    pub const BAD_EXTRANONCE_SIZE: &str = "bad-extranonce-size";
    pub const VERSION_ROLLING_NOT_ALLOWED: &str = "version-rolling-not-allowed";
    pub const INVALID_SHARE: &str = "invalid-share";
    pub const UNKNOWN_USER: &str = "unknown-user";
    pub const INVALID_USER_IDENTITY: &str = "invalid-user-identity";
    pub const CHANNEL_CAPACITY_EXHAUSTED: &str = "channel-capacity-exhausted";
    pub const MIN_EXTRANONCE_SIZE_TOO_LARGE: &str = "min-extranonce-size-too-large";
    pub const MAX_TARGET_OUT_OF_RANGE: &str = "max-target-out-of-range";
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported-protocol";
    pub const PROTOCOL_VERSION_MISMATCH: &str = "protocol-version-mismatch";
    pub const UNSUPPORTED_FEATURE_FLAGS: &str = "unsupported-feature-flags";
    /// Not in the specification: the pool cannot check this share for duplicates until a
    /// new job comes (`Rejection::FilterFull`).
    pub const SHARE_FILTER_FULL: &str = "share-filter-full";
}

/// The message a share was refused with.
pub fn rejection_code(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::UnknownJob => error_code::INVALID_JOB_ID,
        Rejection::StaleJob => error_code::STALE_SHARE,
        Rejection::NtimeOutOfRange => error_code::INVALID_SHARE,
        Rejection::VersionBitsNotAllowed => error_code::VERSION_ROLLING_NOT_ALLOWED,
        Rejection::LowDifficulty | Rejection::BlockBelowShareTarget => {
            error_code::DIFFICULTY_TOO_LOW
        }
        Rejection::Duplicate => error_code::DUPLICATE_SHARE,
        Rejection::FilterFull => error_code::SHARE_FILTER_FULL,
    }
}

/// What the core provides to a connection for one call.
pub struct Context<'a> {
    pub now_s: u64,
    pub jobs: &'a JobBook,
    pub duplicates: &'a mut DuplicateFilter,
    /// A fresh `EXTRANONCE1_BYTES` prefix from the core's allocator; `None` when every
    /// prefix the core can hand out is held (the channel is refused).
    pub allocate_extranonce_prefix: &'a mut dyn FnMut() -> Option<Vec<u8>>,
}

/// What the glue must do after a frame.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Continue,
    /// A request or share was refused with this code (the reply is queued).
    Rejected(&'static str),
    /// Store the share durably, then call `handle_share_durable`.
    ShareAccepted(Box<AcceptedShare>),
    /// Compute `scrypt_pow(&pending.header)` and pass it to `handle_pow`.
    NeedsPow(Box<PendingPow>),
    /// A block from a share that cannot be credited: its channel closed while the share
    /// was hashed, or its hash missed the share target but met the network's
    /// (`Rejection::BlockBelowShareTarget`). Nothing is stored for the miner (the refusal,
    /// with this code, is queued), but the block is the pool's and goes to the node.
    BlockOnly(Box<UncreditedBlock>, &'static str),
    /// End the connection; the reason is for logs.
    Close(&'static str),
}

/// A share that passed every check and waits to be durable.
#[derive(Debug, PartialEq)]
pub struct AcceptedShare {
    pub channel_id: u32,
    pub sequence_number: u32,
    pub record: ShareRecord,
    pub block: Option<BlockCandidate>,
}

/// A scrypt share waiting for its proof-of-work value.
#[derive(Debug)]
pub struct PendingPow {
    pub header: [u8; 80],
    header_hash: [u8; 32],
    job: Arc<Job>,
    terms: ShareTerms,
    channel_id: u32,
    sequence_number: u32,
    extranonce2: [u8; EXTRANONCE2_BYTES],
    /// The channel's prefix and worker when the share came in, so a block found while the
    /// channel closes can still be assembled (`Outcome::BlockOnly`). Filled only for a
    /// share that waits for the batch hasher; empty (no allocation) otherwise.
    extranonce_prefix: Vec<u8>,
    worker: String,
}

impl PendingPow {
    /// What the batch hasher computes for this share (`pow_batch::hash_batch`): its
    /// scrypt; header and hash are known.
    pub fn input(&self) -> crate::pow_batch::PowInput<'_> {
        crate::pow_batch::PowInput::Scrypt {
            header: &self.header,
            header_hash: &self.header_hash,
        }
    }
}

impl PartialEq for PendingPow {
    fn eq(&self, other: &Self) -> bool {
        (self.channel_id, self.sequence_number, self.header)
            == (other.channel_id, other.sequence_number, other.header)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChannelKind {
    Standard,
    Extended,
}

/// The group channel all standard channels of a connection belong to.
#[derive(Debug)]
struct Group {
    id: u32,
    /// Whether SetNewPrevHash has gone out to the group.
    has_prev_hash: bool,
}

#[derive(Debug)]
struct Channel {
    id: u32,
    kind: ChannelKind,
    worker: String,
    extranonce_prefix: Vec<u8>,
    work: WorkState,
    /// Standard channels: the merkle root of each job held, computed when it was sent.
    merkle_roots: Vec<(u64, [u8; 32])>,
    /// Whether SetNewPrevHash has gone out, so that later jobs may be active at once.
    has_prev_hash: bool,
    /// A standard channel in the connection's group gets its jobs through the group.
    in_group: bool,
    /// Target last sent (in Success or SetTarget).
    announced_difficulty: f64,
}

/// The state machine of one connection.
#[derive(Debug)]
pub struct Session {
    config: FrontEndConfig,
    setup_done: bool,
    /// The client asked for version rolling and the pool allows it.
    version_rolling: bool,
    /// The client can only take NewMiningJob (header-only device): no group channel.
    requires_standard_jobs: bool,
    /// The group of this connection's standard channels, once one is open.
    group: Option<Group>,
    channels: Vec<Channel>,
    /// Channels opened so far, closed ones included (`CHANNEL_OPENS_PER_CONNECTION_MAX`).
    channel_opens: usize,
    /// Extranonce prefixes of channels closed since the glue last asked: it gives them
    /// back to its core (`poll_released_extranonce_prefix`).
    released_prefixes: Vec<Vec<u8>>,
    next_channel_id: u32,
    outbox: Vec<u8>,
    /// Where the last frame in the outbox, a SubmitShares.Success, starts, so the next
    /// acknowledgement for the same channel folds into it.
    last_success_at: Option<usize>,
    /// A Reconnect was queued (`request_reconnect`): it is sent once.
    reconnect_requested: bool,
}

/// NewExtendedMiningJob for a channel or a group.
fn encode_extended_job(
    channel_id: u32,
    job: &Job,
    min_ntime: Option<u32>,
    version_rolling_allowed: bool,
    out: &mut Vec<u8>,
) {
    let path = Seq0255U256::from_bytes(job.merkle_branch.as_flattened())
        .expect("a block's merkle branch is under 255 levels");
    Message::NewExtendedMiningJob(NewExtendedMiningJob {
        channel_id,
        job_id: job.job_id() as u32,
        min_ntime,
        version: job.template.version,
        version_rolling_allowed,
        merkle_path: path,
        coinbase_tx_prefix: B064K::new(&job.template.coinbase_prefix)
            .expect("a coinbase prefix is under 64 KiB"),
        coinbase_tx_suffix: B064K::new(&job.template.coinbase_suffix)
            .expect("a coinbase suffix is under 64 KiB"),
    })
    .encode(out);
}

fn encode_set_new_prev_hash(channel_id: u32, job: &Job, out: &mut Vec<u8>) {
    Message::SetNewPrevHash(SetNewPrevHash {
        channel_id,
        job_id: job.job_id() as u32,
        prev_hash: job.template.prevhash,
        min_ntime: job.template.ntime,
        nbits: job.template.bits,
    })
    .encode(out);
}

/// Bytes of a SubmitShares.Success frame: header and four fixed fields.
const SUBMIT_SUCCESS_FRAME_BYTES: usize = 6 + 4 + 4 + 4 + 8;

impl Session {
    pub fn new(config: FrontEndConfig) -> Self {
        Session {
            config,
            setup_done: false,
            version_rolling: false,
            requires_standard_jobs: false,
            group: None,
            channels: Vec::new(),
            channel_opens: 0,
            released_prefixes: Vec::new(),
            next_channel_id: 1,
            outbox: Vec::new(),
            last_success_at: None,
            reconnect_requested: false,
        }
    }

    /// Plaintext frames to send, for the transport to encrypt; follow with `transmitted`.
    pub fn transmit_pending(&self) -> &[u8] {
        &self.outbox
    }

    pub fn transmitted(&mut self) {
        empty_outbox(&mut self.outbox);
        self.last_success_at = None;
    }

    /// Queues a Reconnect to this same host and port (empty host, port 0), which a client
    /// answers by connecting again and opening its channels anew: how a draining data plane
    /// hands a miner to its replacement. Sent once, and only after SetupConnection (before
    /// it the client has not said it speaks the mining protocol); `true` if queued now.
    pub fn request_reconnect(&mut self) -> bool {
        if self.reconnect_requested || !self.setup_done {
            return false;
        }
        self.reconnect_requested = true;
        self.push(&Message::Reconnect(Reconnect {
            new_host: Str0255::new("").expect("empty"),
            new_port: 0,
        }));
        true
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// An extranonce prefix no open channel holds any more (its channel was closed): the
    /// glue gives it back to the allocator, which never hands out a prefix that is held.
    pub fn poll_released_extranonce_prefix(&mut self) -> Option<Vec<u8>> {
        self.released_prefixes.pop()
    }

    /// The extranonce prefixes the open channels hold, to give back when the connection
    /// ends.
    pub fn extranonce_prefixes(&self) -> impl Iterator<Item = &[u8]> {
        self.channels
            .iter()
            .map(|channel| channel.extranonce_prefix.as_slice())
    }

    /// Handles one received frame.
    pub fn handle_frame(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
        context: &mut Context<'_>,
    ) -> Outcome {
        let message = match Message::decode(header, payload) {
            Ok(Decoded::Message(message)) => message,
            // The pool is the endpoint for everything it receives, so the spec has unknown
            // extensions ignored.
            Ok(Decoded::UnknownExtension { .. }) => return Outcome::Continue,
            Err(_) => return Outcome::Close("malformed message"),
        };
        if !self.setup_done {
            return match message {
                Message::SetupConnection(setup) => self.handle_setup(&setup),
                _ => Outcome::Close("message before SetupConnection"),
            };
        }
        match message {
            Message::OpenStandardMiningChannel(open) => self.open_channel(
                ChannelKind::Standard,
                open.request_id,
                open.user_identity.as_str(),
                open.nominal_hash_rate,
                &open.max_target,
                0,
                context,
            ),
            Message::OpenExtendedMiningChannel(open) => self.open_channel(
                ChannelKind::Extended,
                open.request_id,
                open.user_identity.as_str(),
                open.nominal_hash_rate,
                &open.max_target,
                open.min_extranonce_size,
                context,
            ),
            Message::SubmitSharesStandard(share) => self.handle_submit(
                share.channel_id,
                share.sequence_number,
                share.job_id,
                share.nonce,
                share.ntime,
                share.version,
                None,
                context,
            ),
            Message::SubmitSharesExtended(share) => self.handle_submit(
                share.channel_id,
                share.sequence_number,
                share.job_id,
                share.nonce,
                share.ntime,
                share.version,
                Some(share.extranonce.as_bytes()),
                context,
            ),
            Message::UpdateChannel(update) => self.handle_update_channel(&update, context.now_s),
            Message::CloseChannel(close) => {
                if let Some(index) = self.channel_index(close.channel_id) {
                    let channel = self.channels.remove(index);
                    self.released_prefixes.push(channel.extranonce_prefix);
                }
                Outcome::Continue
            }
            Message::SetupConnection(_) => Outcome::Close("SetupConnection sent twice"),
            _ => Outcome::Close("message a client does not send"),
        }
    }

    fn handle_setup(&mut self, setup: &SetupConnection<'_>) -> Outcome {
        let refuse = |session: &mut Self, flags: u32, code: &'static str| {
            session.push(&Message::SetupConnectionError(SetupConnectionError {
                flags,
                error_code: Str0255::new(code).expect("short code"),
            }));
            Outcome::Rejected(code)
        };
        if setup.protocol != PROTOCOL_MINING {
            return refuse(self, 0, error_code::UNSUPPORTED_PROTOCOL);
        }
        if !(setup.min_version..=setup.max_version).contains(&PROTOCOL_VERSION) {
            return refuse(self, 0, error_code::PROTOCOL_VERSION_MISMATCH);
        }
        // Work selection needs Job Declaration, which this pool does not run.
        let mut unsupported = setup.flags & SETUP_FLAG_REQUIRES_WORK_SELECTION;
        let rolling_allowed = self.config.version_rolling_mask != 0;
        if setup.flags & SETUP_FLAG_REQUIRES_VERSION_ROLLING != 0 && !rolling_allowed {
            unsupported |= SETUP_FLAG_REQUIRES_VERSION_ROLLING;
        }
        if unsupported != 0 {
            return refuse(self, unsupported, error_code::UNSUPPORTED_FEATURE_FLAGS);
        }
        self.setup_done = true;
        self.version_rolling = rolling_allowed;
        self.requires_standard_jobs = setup.flags & SETUP_FLAG_REQUIRES_STANDARD_JOBS != 0;
        let flags = if rolling_allowed {
            0
        } else {
            SUCCESS_FLAG_REQUIRES_FIXED_VERSION
        };
        self.push(&Message::SetupConnectionSuccess(SetupConnectionSuccess {
            used_version: PROTOCOL_VERSION,
            flags,
        }));
        Outcome::Continue
    }

    #[allow(clippy::too_many_arguments)]
    fn open_channel(
        &mut self,
        kind: ChannelKind,
        request_id: u32,
        user_identity: &str,
        nominal_hash_rate: f32,
        max_target: &[u8; 32],
        min_extranonce_size: u16,
        context: &mut Context<'_>,
    ) -> Outcome {
        let refuse = |session: &mut Self, code: &'static str| {
            session.push(&Message::OpenMiningChannelError(OpenMiningChannelError {
                request_id,
                error_code: Str0255::new(code).expect("short code"),
            }));
            Outcome::Rejected(code)
        };
        if self.channels.len() >= CHANNELS_PER_CONNECTION_MAX
            || self.channel_opens >= CHANNEL_OPENS_PER_CONNECTION_MAX
        {
            return refuse(self, error_code::CHANNEL_CAPACITY_EXHAUSTED);
        }
        let worker = match vet_worker_name(
            user_identity,
            self.config.payout_address_rule.as_ref(),
            &self.config.bans,
        ) {
            Ok(worker) => worker,
            Err(refusal) => {
                let code = match refusal {
                    crate::work::WorkerRefusal::Banned => error_code::UNKNOWN_USER,
                    _ => error_code::INVALID_USER_IDENTITY,
                };
                return refuse(self, code);
            }
        };
        if kind == ChannelKind::Extended && min_extranonce_size as usize > EXTRANONCE2_BYTES {
            return refuse(self, error_code::MIN_EXTRANONCE_SIZE_TOO_LARGE);
        }
        let algorithm = self.config.algorithm;
        // The easiest target the miner takes sets its difficulty floor.
        let max_target = Target::from_le_bytes(max_target);
        if max_target.is_zero() {
            return refuse(self, error_code::MAX_TARGET_OUT_OF_RANGE);
        }
        let miner_floor = max_target.to_difficulty(algorithm);
        if miner_floor > crate::limits::DIFFICULTY_MAX {
            return refuse(self, error_code::MAX_TARGET_OUT_OF_RANGE);
        }
        let mut work =
            WorkState::for_front_end(&self.config, self.start_difficulty(nominal_hash_rate));
        if miner_floor > work.difficulty() {
            work.set_difficulty_floor(miner_floor.max(self.config.difficulty_min));
        }
        // The first target already within the network's difficulty of the job the channel
        // gets next.
        if let Some(job) = context.jobs.newest() {
            work.follow_network(job);
        }
        self.channel_opens += 1;
        let Some(prefix) = (context.allocate_extranonce_prefix)() else {
            return refuse(self, error_code::CHANNEL_CAPACITY_EXHAUSTED);
        };
        debug_assert_eq!(prefix.len(), EXTRANONCE1_BYTES);
        let id = self.allocate_channel_id();
        let in_group = kind == ChannelKind::Standard && !self.requires_standard_jobs;
        let group_channel_id = if in_group {
            match &self.group {
                Some(group) => group.id,
                None => {
                    let group_id = self.allocate_channel_id();
                    self.group = Some(Group {
                        id: group_id,
                        has_prev_hash: false,
                    });
                    group_id
                }
            }
        } else {
            0
        };
        let target = work.share_target(algorithm).to_le_bytes();
        let channel = Channel {
            id,
            kind,
            worker,
            extranonce_prefix: prefix,
            announced_difficulty: work.difficulty(),
            work,
            merkle_roots: Vec::new(),
            has_prev_hash: false,
            in_group,
        };
        match kind {
            ChannelKind::Standard => {
                let mut extranonce = channel.extranonce_prefix.clone();
                extranonce.resize(EXTRANONCE1_BYTES + EXTRANONCE2_BYTES, 0);
                self.push(&Message::OpenStandardMiningChannelSuccess(
                    OpenStandardMiningChannelSuccess {
                        request_id,
                        channel_id: id,
                        target,
                        extranonce_prefix: B032::new(&extranonce).expect("8 bytes"),
                        group_channel_id,
                    },
                ));
            }
            ChannelKind::Extended => {
                self.push(&Message::OpenExtendedMiningChannelSuccess(
                    OpenExtendedMiningChannelSuccess {
                        request_id,
                        channel_id: id,
                        target,
                        extranonce_size: EXTRANONCE2_BYTES as u16,
                        extranonce_prefix: B032::new(&channel.extranonce_prefix).expect("4 bytes"),
                        group_channel_id: 0,
                    },
                ));
            }
        }
        self.channels.push(channel);
        // The first job goes to the channel itself, even in a group: the group's next job
        // may be a block away.
        if let Some(job) = context.jobs.newest().cloned() {
            let index = self.channels.len() - 1;
            self.send_job_to_channel(index, &job, context.now_s, false);
        }
        Outcome::Continue
    }

    /// Channel and group ids share one space: 1, 2, 3, … (0 means "no group").
    fn allocate_channel_id(&mut self) -> u32 {
        let id = self.next_channel_id;
        self.next_channel_id = self.next_channel_id.wrapping_add(1).max(1);
        id
    }

    /// The first difficulty of a channel: from the hash rate the miner states, so that it
    /// starts near vardiff's share interval, or the configured start without one.
    fn start_difficulty(&self, nominal_hash_rate: f32) -> f64 {
        let rate = nominal_hash_rate as f64;
        match self.config.vardiff {
            Some(vardiff) if rate.is_finite() && rate > 0.0 => {
                rate * vardiff.share_interval_target_s
                    / self.config.algorithm.hashes_per_difficulty_one()
            }
            _ => self.config.start_difficulty,
        }
    }

    fn handle_update_channel(&mut self, update: &UpdateChannel, now_s: u64) -> Outcome {
        let algorithm = self.config.algorithm;
        let pool_floor = self.config.difficulty_min;
        let Some(index) = self.channel_index(update.channel_id) else {
            self.push(&Message::UpdateChannelError(UpdateChannelError {
                channel_id: update.channel_id,
                error_code: Str0255::new(error_code::INVALID_CHANNEL_ID).expect("short"),
            }));
            return Outcome::Rejected(error_code::INVALID_CHANNEL_ID);
        };
        let max_target = Target::from_le_bytes(&update.maximum_target);
        let miner_floor = max_target.to_difficulty(algorithm);
        if max_target.is_zero() || miner_floor > crate::limits::DIFFICULTY_MAX {
            self.push(&Message::UpdateChannelError(UpdateChannelError {
                channel_id: update.channel_id,
                error_code: Str0255::new(error_code::MAX_TARGET_OUT_OF_RANGE).expect("short"),
            }));
            return Outcome::Rejected(error_code::MAX_TARGET_OUT_OF_RANGE);
        }
        self.channels[index]
            .work
            .set_difficulty_floor(miner_floor.max(pool_floor));
        self.announce_target(index, now_s);
        Outcome::Continue
    }

    fn channel_index(&self, channel_id: u32) -> Option<usize> {
        self.channels.iter().position(|c| c.id == channel_id)
    }

    /// Sends a job to every channel: once to the group for the grouped standard channels,
    /// and to each other channel on its own.
    pub fn handle_new_job(&mut self, job: &Job, now_s: u64) {
        let mut grouped = 0;
        for index in 0..self.channels.len() {
            let via_group = self.channels[index].in_group;
            grouped += via_group as usize;
            self.send_job_to_channel(index, job, now_s, via_group);
        }
        if grouped > 0 {
            self.send_job_to_group(job);
        }
    }

    fn send_job_to_group(&mut self, job: &Job) {
        let version_rolling = self.version_rolling;
        let Some(group) = self.group.as_mut() else {
            return;
        };
        let activate_with_prev_hash = job.template.clean_jobs || !group.has_prev_hash;
        group.has_prev_hash = true;
        let group_id = group.id;
        encode_extended_job(
            group_id,
            job,
            (!activate_with_prev_hash).then_some(job.template.ntime),
            version_rolling,
            &mut self.outbox,
        );
        if activate_with_prev_hash {
            encode_set_new_prev_hash(group_id, job, &mut self.outbox);
        }
        self.last_success_at = None;
    }

    /// Records `job` on a channel (retarget, the jobs it holds, its merkle root) and, unless
    /// the group carries it, sends it.
    fn send_job_to_channel(&mut self, index: usize, job: &Job, now_s: u64, via_group: bool) {
        if self.channels[index].work.retarget_before_job(job, now_s) {
            self.announce_target(index, now_s);
        }
        let version_rolling = self.version_rolling;
        let channel = &mut self.channels[index];
        channel.work.record_sent(job, now_s);
        let job_id_wire = job.job_id() as u32;
        // A job on a new previous block goes out as a future job activated by
        // SetNewPrevHash; one on the current block is active at once.
        let activate_with_prev_hash =
            job.template.clean_jobs || !(channel.has_prev_hash || via_group);
        let min_ntime = (!activate_with_prev_hash).then_some(job.template.ntime);
        let mut frame = Vec::new();
        match channel.kind {
            ChannelKind::Standard => {
                let root = merkle_root(job, &channel.extranonce_prefix, &[0; EXTRANONCE2_BYTES]);
                if job.template.clean_jobs {
                    channel.merkle_roots.clear();
                }
                if channel.merkle_roots.len() >= JOBS_REMEMBERED_MAX {
                    channel.merkle_roots.remove(0);
                }
                channel.merkle_roots.push((job.job_id(), root));
                if via_group {
                    // The group's SetNewPrevHash covers this channel too.
                    channel.has_prev_hash = true;
                    return;
                }
                Message::NewMiningJob(NewMiningJob {
                    channel_id: channel.id,
                    job_id: job_id_wire,
                    min_ntime,
                    version: job.template.version,
                    merkle_root: root,
                })
                .encode(&mut frame);
            }
            ChannelKind::Extended => {
                encode_extended_job(channel.id, job, min_ntime, version_rolling, &mut frame);
            }
        }
        if activate_with_prev_hash {
            channel.has_prev_hash = true;
            encode_set_new_prev_hash(channel.id, job, &mut frame);
        }
        self.outbox.extend_from_slice(&frame);
        self.last_success_at = None;
    }

    /// Sends SetTarget if the channel's difficulty moved since it was last announced, and
    /// makes it apply to every job the channel holds, as SetTarget does.
    fn announce_target(&mut self, index: usize, now_s: u64) {
        let algorithm = self.config.algorithm;
        let channel = &mut self.channels[index];
        let difficulty = channel.work.difficulty();
        if difficulty == channel.announced_difficulty {
            return;
        }
        channel.announced_difficulty = difficulty;
        channel.work.apply_difficulty_to_sent_jobs(now_s);
        let message = Message::SetTarget(SetTarget {
            channel_id: channel.id,
            maximum_target: channel.work.share_target(algorithm).to_le_bytes(),
        });
        self.push(&message);
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_submit(
        &mut self,
        channel_id: u32,
        sequence_number: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
        extranonce: Option<&[u8]>,
        context: &mut Context<'_>,
    ) -> Outcome {
        let Some(index) = self.channel_index(channel_id) else {
            return self.reject(channel_id, sequence_number, error_code::INVALID_CHANNEL_ID);
        };
        // Any submission shows the channel is not silent.
        self.channels[index].work.note_submit(context.now_s);
        let channel = &self.channels[index];
        let full_job_id = channel
            .work
            .sent_job_by_low32(job_id)
            .map(|sent| sent.job_id)
            .or_else(|| context.jobs.full_id_of_low32(job_id));
        let resolved = match full_job_id {
            Some(full) => channel.work.resolve(context.jobs, full, context.now_s),
            None => Err(Rejection::UnknownJob),
        };
        let (job, terms) = match resolved {
            Ok(resolved) => resolved,
            Err(rejection) => {
                return self.reject(channel_id, sequence_number, rejection_code(rejection))
            }
        };
        let mut extranonce2 = [0u8; EXTRANONCE2_BYTES];
        let header = match (channel.kind, extranonce) {
            (ChannelKind::Standard, None) => {
                let Some((_, root)) = channel
                    .merkle_roots
                    .iter()
                    .find(|(id, _)| *id == terms.job_id)
                else {
                    return self.reject(channel_id, sequence_number, error_code::STALE_SHARE);
                };
                let root = *root;
                if let Err(rejection) = self.check_fields(&job, ntime, version, context.now_s) {
                    return self.reject(channel_id, sequence_number, rejection_code(rejection));
                }
                header_from_root(&job, version, ntime, nonce, &root)
            }
            (ChannelKind::Extended, Some(extranonce)) => {
                if extranonce.len() != EXTRANONCE2_BYTES {
                    return self.reject(
                        channel_id,
                        sequence_number,
                        error_code::BAD_EXTRANONCE_SIZE,
                    );
                }
                extranonce2.copy_from_slice(extranonce);
                if let Err(rejection) = self.check_fields(&job, ntime, version, context.now_s) {
                    return self.reject(channel_id, sequence_number, rejection_code(rejection));
                }
                let channel = &self.channels[index];
                build_header(
                    &job,
                    &ShareSubmission {
                        extranonce1: &channel.extranonce_prefix,
                        extranonce2: &extranonce2,
                        ntime,
                        nonce,
                        version,
                    },
                )
            }
            // A standard share on an extended channel or the other way round.
            _ => return self.reject(channel_id, sequence_number, error_code::INVALID_CHANNEL_ID),
        };
        let header_hash = sha256d_80(&header);
        if let Err(rejection) = claim_share(&job, header_hash, context.duplicates) {
            return self.reject(channel_id, sequence_number, rejection_code(rejection));
        }
        let mut pending = PendingPow {
            header_hash,
            header,
            job,
            terms,
            channel_id,
            sequence_number,
            extranonce2,
            extranonce_prefix: Vec::new(),
            worker: String::new(),
        };
        match pending.job.algorithm {
            Algorithm::Scrypt if self.config.defer_pow => {
                // Only a share that waits for the hasher can see its channel close first
                // (`Outcome::BlockOnly`); one hashed here is finished at once, without
                // the copies.
                let channel = &self.channels[index];
                pending.extranonce_prefix = channel.extranonce_prefix.clone();
                pending.worker = channel.worker.clone();
                Outcome::NeedsPow(Box::new(pending))
            }
            algorithm => {
                let pow = pow_hash(algorithm, &pending.header, &pending.header_hash);
                self.finish_share(pending, &pow, context.now_s, context.duplicates)
            }
        }
    }

    fn check_fields(
        &self,
        job: &Job,
        ntime: u32,
        version: u32,
        now_s: u64,
    ) -> Result<(), Rejection> {
        check_ntime(job, ntime, now_s)?;
        let mask = self
            .version_rolling
            .then_some(self.config.version_rolling_mask);
        check_version(job.template.version, mask, version)?;
        Ok(())
    }

    /// Finishes a share whose proof-of-work value the glue computed.
    pub fn handle_pow(
        &mut self,
        pending: PendingPow,
        pow: &[u8; 32],
        now_s: u64,
        duplicates: &mut DuplicateFilter,
    ) -> Outcome {
        self.finish_share(pending, pow, now_s, duplicates)
    }

    fn finish_share(
        &mut self,
        pending: PendingPow,
        pow: &[u8; 32],
        now_s: u64,
        duplicates: &mut DuplicateFilter,
    ) -> Outcome {
        let PendingPow {
            header,
            header_hash,
            job,
            terms,
            channel_id,
            sequence_number,
            extranonce2,
            extranonce_prefix,
            worker,
        } = pending;
        // The channel may have closed while the share was hashed: the share is not
        // credited, but a block it found is still sent up.
        let Some(index) = self.channel_index(channel_id) else {
            let refused = self.reject(channel_id, sequence_number, error_code::INVALID_CHANNEL_ID);
            let is_block = match credit_share(&job, terms, header, header_hash, pow, duplicates) {
                Ok(credited) => credited.valid.is_block,
                Err(rejection) => rejection == Rejection::BlockBelowShareTarget,
            };
            if !is_block {
                return refused;
            }
            return Outcome::BlockOnly(
                Box::new(UncreditedBlock::new(
                    &job,
                    header,
                    pow,
                    worker,
                    (&extranonce_prefix, &extranonce2),
                    now_s,
                )),
                error_code::INVALID_CHANNEL_ID,
            );
        };
        let CreditedShare { valid, difficulty } =
            match credit_share(&job, terms, header, header_hash, pow, duplicates) {
                Ok(credited) => credited,
                Err(Rejection::BlockBelowShareTarget) => {
                    let code = rejection_code(Rejection::BlockBelowShareTarget);
                    self.reject(channel_id, sequence_number, code);
                    let channel = &self.channels[index];
                    return Outcome::BlockOnly(
                        Box::new(UncreditedBlock::new(
                            &job,
                            header,
                            pow,
                            channel.worker.clone(),
                            (&channel.extranonce_prefix, &extranonce2),
                            now_s,
                        )),
                        code,
                    );
                }
                Err(rejection) => {
                    return self.reject(channel_id, sequence_number, rejection_code(rejection))
                }
            };
        let channel = &self.channels[index];
        let block = valid.is_block.then(|| BlockCandidate {
            job_id: terms.job_id,
            height: job.template.height,
            header: valid.header.to_vec(),
            coinbase: job.coinbase(&channel.extranonce_prefix, &extranonce2),
            worker: channel.worker.clone(),
            found_at_ms: now_s * 1000,
        });
        let record = ShareRecord {
            accepted_at_ms: now_s * 1000,
            job_id: terms.job_id,
            height: job.template.height,
            worker: channel.worker.clone(),
            difficulty,
            achieved_difficulty: valid.achieved_difficulty,
            is_block: valid.is_block,
            header: valid.header,
            extranonce1: channel.extranonce_prefix.clone(),
            extranonce2: extranonce2.to_vec(),
            // Over QUIC the data plane's glue says so.
            protocol: Some(Protocol::V2),
        };
        Outcome::ShareAccepted(Box::new(AcceptedShare {
            channel_id,
            sequence_number,
            record,
            block,
        }))
    }

    /// The share is durable: acknowledge it. Acknowledgements for one channel that follow
    /// each other fold into one SubmitShares.Success, as the spec allows.
    pub fn handle_share_durable(&mut self, share: &AcceptedShare, now_s: u64) {
        let credit = share.record.difficulty.round() as u64;
        let folded = self.last_success_at.is_some_and(|at| {
            self.outbox.len() == at + SUBMIT_SUCCESS_FRAME_BYTES
                && self.outbox[at + 6..at + 10] == share.channel_id.to_le_bytes()
        });
        if folded {
            let at = self.last_success_at.expect("checked") + 6;
            let count = u32::from_le_bytes(self.outbox[at + 8..at + 12].try_into().expect("4"));
            let sum = u64::from_le_bytes(self.outbox[at + 12..at + 20].try_into().expect("8"));
            self.outbox[at + 4..at + 8].copy_from_slice(&share.sequence_number.to_le_bytes());
            self.outbox[at + 8..at + 12].copy_from_slice(&(count + 1).to_le_bytes());
            self.outbox[at + 12..at + 20].copy_from_slice(&(sum + credit).to_le_bytes());
        } else {
            let at = self.outbox.len();
            Message::SubmitSharesSuccess(SubmitSharesSuccess {
                channel_id: share.channel_id,
                last_sequence_number: share.sequence_number,
                new_submits_accepted_count: 1,
                new_shares_sum: credit,
            })
            .encode(&mut self.outbox);
            self.last_success_at = Some(at);
        }
        if let Some(index) = self.channel_index(share.channel_id) {
            // SetTarget covers the jobs the channel holds, so no job is sent again.
            if self.channels[index].work.on_share_durable(now_s) {
                self.announce_target(index, now_s);
            }
        }
    }

    /// When `handle_timeout` has something to do: the earliest moment a channel counts as
    /// silent (`VARDIFF_SILENT_SHARE_INTERVALS`).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.channels
            .iter()
            .filter_map(|channel| channel.work.silent_at_s())
            .min()
    }

    /// Time has come to `now_s`: each channel silent for too long gets a lower target
    /// (SetTarget, which covers the jobs it holds). Returns whether anything was queued.
    pub fn handle_timeout(&mut self, now_s: u64) -> bool {
        let mut queued = false;
        for index in 0..self.channels.len() {
            if self.channels[index].work.retarget_if_silent(now_s) {
                self.announce_target(index, now_s);
                queued = true;
            }
        }
        queued
    }

    /// The share could not be stored: tell the miner it was not credited.
    pub fn handle_share_store_failed(&mut self, share: &AcceptedShare) {
        self.reject(
            share.channel_id,
            share.sequence_number,
            error_code::INVALID_SHARE,
        );
    }

    /// Takes a new ban list; `true` if a channel's worker is now banned (the glue closes
    /// the connection).
    pub fn update_bans(&mut self, bans: Arc<BanList>) -> bool {
        let banned = self.channels.iter().any(|c| bans.bans_worker(&c.worker));
        self.config.bans = bans;
        banned
    }

    fn reject(&mut self, channel_id: u32, sequence_number: u32, code: &'static str) -> Outcome {
        self.push(&Message::SubmitSharesError(SubmitSharesError {
            channel_id,
            sequence_number,
            error_code: Str0255::new(code).expect("short code"),
        }));
        Outcome::Rejected(code)
    }

    fn push(&mut self, message: &Message<'_>) {
        message.encode(&mut self.outbox);
        self.last_success_at = None;
    }
}

#[cfg(test)]
mod outbox_tests {
    use super::*;
    use crate::limits::OUTBOX_KEEP_BYTES_MAX;

    /// Between flushes a connection keeps an outbox of at most `OUTBOX_KEEP_BYTES_MAX`:
    /// exactly that is kept, one byte more is given back.
    #[test]
    fn the_outbox_kept_between_flushes_holds_its_limit() {
        let mut session = Session::new(FrontEndConfig::plain(
            otedama_kernels::Algorithm::Sha256d,
            1.0,
            1.0,
        ));
        session.outbox = Vec::with_capacity(OUTBOX_KEEP_BYTES_MAX);
        session.outbox.push(1);
        session.transmitted();
        assert!(session.outbox.is_empty());
        assert_eq!(session.outbox.capacity(), OUTBOX_KEEP_BYTES_MAX);
        session.outbox.reserve_exact(OUTBOX_KEEP_BYTES_MAX + 1);
        session.transmitted();
        assert_eq!(session.outbox.capacity(), 0);
    }
}
