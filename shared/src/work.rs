//! The share rules every front end applies, whatever the protocol: which job a share may
//! name, the difficulty it is held to and credited at, the ntime window, version rolling,
//! and duplicates. Stratum V1 connections and Stratum V2 channels each own a `WorkState`
//! and call these functions, so both protocols accept and credit exactly the same shares;
//! only the words they reject with differ.

use std::sync::Arc;

use otedama_kernels::{Algorithm, Target};

use crate::address::{canonical_worker_for, AddressRule};
use crate::bans::BanList;
use crate::duplicates::{Claim, DuplicateFilter};
use crate::job::{Job, JobBook, JobLookup};
use crate::limits::{
    DIFFICULTY_CHANGE_GRACE_S, DIFFICULTY_LOWERINGS_PER_INTERVAL_MAX,
    DIFFICULTY_LOWERING_INTERVAL_S, DIFFICULTY_MAX, DIFFICULTY_MIN, JOBS_REMEMBERED_MAX,
    NETWORK_DIFFICULTY_CAP_MIN, NTIME_FUTURE_SECONDS_MAX, WORKER_NAME_BYTES_MAX,
};
use crate::share::{check_pow, ValidShare};
use crate::vardiff::{Vardiff, VardiffConfig};

/// The terms a front end holds its miners to, the same for a Stratum V1 connection and a
/// Stratum V2 channel; each core builds one from the pool's configuration.
#[derive(Clone, Debug)]
pub struct FrontEndConfig {
    pub start_difficulty: f64,
    /// The pool's floor for a miner's difficulty (at least `limits::DIFFICULTY_MIN`).
    pub difficulty_min: f64,
    /// Version bits miners may roll (BIP310, BIP320); 0x1fffe000 is the common choice, 0
    /// means none.
    pub version_rolling_mask: u32,
    pub algorithm: Algorithm,
    /// `None` keeps the difficulty where the start value or the miner's suggestion put it.
    pub vardiff: Option<VardiffConfig>,
    /// Hand shares back as `Outcome::NeedsPow` so the glue can hash several at once (the
    /// core's batch hasher, `pow_batch::hash_batch`): scrypt shares of both protocols, and
    /// Stratum V1 SHA256d shares, whose coinbase and merkle branch are per share. Off, the
    /// session hashes each share itself.
    pub defer_pow: bool,
    /// The network difficulty below which a chain counts as a test chain and a miner's
    /// difficulty is capped at this instead (`WorkState::network_cap`): normally
    /// `limits::NETWORK_DIFFICULTY_CAP_MIN`; simulations that cannot mine at difficulty 1
    /// set it lower.
    pub network_difficulty_cap_min: f64,
    /// When set, a worker name must start with a payout address of this coin and network
    /// (`ADDRESS` or `ADDRESS.RIG`): a share is only worth taking if it can be paid.
    pub payout_address_rule: Option<AddressRule>,
    /// Addresses refused at authorize; the session's `update_bans` replaces it when the
    /// operator changes the list.
    pub bans: Arc<BanList>,
}

impl FrontEndConfig {
    /// The plainest terms for `algorithm`: this start and floor, the common version mask
    /// (0x1fffe000), no vardiff, no batching, no payout-address rule, no bans. Tests,
    /// benches and fuzz targets start here and change what they are about.
    pub fn plain(algorithm: Algorithm, start_difficulty: f64, difficulty_min: f64) -> Self {
        FrontEndConfig {
            start_difficulty,
            difficulty_min,
            version_rolling_mask: 0x1fff_e000,
            algorithm,
            vardiff: None,
            defer_pow: false,
            network_difficulty_cap_min: NETWORK_DIFFICULTY_CAP_MIN,
            payout_address_rule: None,
            bans: Default::default(),
        }
    }
}

/// Why a share was refused, before it is put into a protocol's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The job id was never sent to this miner.
    UnknownJob,
    /// The job was sent, but a new block (or the job memory's limit) has retired it.
    StaleJob,
    /// ntime is before the job's or too far past the pool's clock.
    NtimeOutOfRange,
    /// The miner changed version bits it was not allowed to roll.
    VersionBitsNotAllowed,
    /// The proof of work does not meet the share target.
    LowDifficulty,
    /// The proof of work misses the share target but meets the network's: the hash is a
    /// block (a floor above the network's, or a miner sending below its target). The
    /// share is refused as low difficulty and earns nothing, since crediting it would
    /// break the credit rule, but the front end sends the block up.
    BlockBelowShareTarget,
    /// The same share was accepted before.
    Duplicate,
    /// The core's duplicate filter is at its bound (`DUPLICATE_FILTER_SHARES_PER_CORE_MAX`)
    /// and this share proves less work than its job's floor: refused.
    FilterFull,
}

/// Why a worker name (V1 `mining.authorize`, V2 `user_identity`) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkerRefusal {
    #[error("invalid worker name")]
    Malformed,
    #[error("worker name must be ADDRESS or ADDRESS.RIG: {0}")]
    NotAPayoutAddress(String),
    #[error("this payout address is banned")]
    Banned,
}

/// A worker name is 1 to `WORKER_NAME_BYTES_MAX` bytes without control characters, starts
/// with a payable address when the pool requires one (a share is only worth taking if it
/// can be paid), and is not banned. Returns the name the pool records the miner's shares
/// under: with a payout rule, its address in canonical form (`canonical_worker_for`), so
/// every encoding of one output script is one party to the ledger, bans, deny lists and
/// KYC.
pub fn vet_worker_name(
    name: &str,
    payout_address_rule: Option<&AddressRule>,
    bans: &BanList,
) -> Result<String, WorkerRefusal> {
    if name.is_empty() || name.len() > WORKER_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(WorkerRefusal::Malformed);
    }
    let recorded = match payout_address_rule {
        Some(rule) => canonical_worker_for(rule, name)
            .map_err(|error| WorkerRefusal::NotAPayoutAddress(error.to_string()))?,
        None => name.to_string(),
    };
    if bans.bans_worker(&recorded) {
        return Err(WorkerRefusal::Banned);
    }
    Ok(recorded)
}

/// A job as one miner (V1 connection or V2 channel) received it, with the difficulty it
/// was sent at and, for a short while after a change, the easier one it was sent at before.
///
/// Invariant (the credit rule): a share's credit is fixed before its hash is known. It is
/// the difficulty of the target the share was required to meet when it arrived
/// (`required_difficulty`), never a function of how far the hash beat that target. For
/// every miner and every strategy the expected credit per hash is then
/// `diff1_target / 2^256` difficulty units: a miner that submits only part of what meets
/// the target earns less, never more. The old rule (accept at the easiest difficulty ever
/// sent, credit the newest when the hash met it) paid about twice the work to a miner that
/// asked for D, then 1000·D, and kept mining at D.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SentJob {
    pub job_id: u64,
    /// The difficulty the job was last sent at (or last moved to by a target change).
    pub difficulty: f64,
    /// Until `grace_until_s`, shares only have to meet this easier difficulty (and are
    /// credited at it): they were mined before the miner heard of the change.
    pub grace_difficulty: f64,
    pub grace_until_s: u64,
    /// The job's network difficulty and target: a miner's difficulty stays under the
    /// easiest of the jobs it holds (`WorkState::follow_network`).
    pub network: (f64, Target),
}

/// What the rules of `WorkState` need of a job, whatever its coin: its id, whether it
/// replaces every job before it, and its network's difficulty and target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkJob {
    pub job_id: u64,
    pub clean: bool,
    pub network: (f64, Target),
}

impl From<&Job> for WorkJob {
    fn from(job: &Job) -> Self {
        WorkJob {
            job_id: job.job_id(),
            clean: job.template.clean_jobs,
            network: (job.network_difficulty, job.network_target),
        }
    }
}

impl From<&Arc<Job>> for WorkJob {
    fn from(job: &Arc<Job>) -> Self {
        WorkJob::from(&**job)
    }
}

impl SentJob {
    fn new(job: WorkJob, difficulty: f64) -> Self {
        SentJob {
            job_id: job.job_id,
            difficulty,
            grace_difficulty: difficulty,
            grace_until_s: 0,
            network: job.network,
        }
    }

    /// The difficulty a share arriving at `now_s` must meet and is credited at: during the
    /// grace after a change, the easier of the old and new; afterwards the new one.
    pub fn required_difficulty(&self, now_s: u64) -> f64 {
        if now_s < self.grace_until_s {
            self.grace_difficulty.min(self.difficulty)
        } else {
            self.difficulty
        }
    }

    /// Moves the job to `difficulty`. Shares mined for the difficulty required until now
    /// are still taken (at that difficulty) for `DIFFICULTY_CHANGE_GRACE_S`. A change during
    /// a grace keeps the easiest difficulty of the grace but starts it again, so a miner
    /// that changes its difficulty over and over is held to, and credited at, the easiest
    /// one: never more than its work.
    fn change_difficulty(&mut self, difficulty: f64, now_s: u64) {
        if difficulty == self.difficulty {
            return;
        }
        self.grace_difficulty = self.required_difficulty(now_s);
        self.grace_until_s = now_s + DIFFICULTY_CHANGE_GRACE_S;
        self.difficulty = difficulty;
    }

    /// What a share for this job (`job`, the job this was recorded for) arriving at
    /// `now_s` must meet.
    pub fn terms(&self, job: &Job, now_s: u64) -> ShareTerms {
        ShareTerms::new(job, self.required_difficulty(now_s))
    }
}

/// The terms of one share, fixed when it arrives and before its hash is computed: the job
/// it names and the difficulty it must meet, which is also the difficulty it is credited
/// at (see `SentJob` for the rule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShareTerms {
    pub job_id: u64,
    pub difficulty: f64,
    /// What the share's proof of work must meet: `Job::share_target(difficulty)`.
    pub share_target: Target,
}

impl ShareTerms {
    pub fn new(job: &Job, difficulty: f64) -> Self {
        ShareTerms {
            job_id: job.job_id(),
            difficulty,
            share_target: job.share_target(difficulty),
        }
    }
}

/// What `Job::share_target` depends on: the algorithm, the network's bits and the
/// difficulty's bits.
type ShareTargetKey = (Algorithm, u32, u64);

/// How far under the network's difficulty a capped miner is held (relative): a Stratum V1
/// miner computes its target from a float, and for about one bits value in twelve the
/// exact network difficulty comes back a hair harder than the network target, so a hash in
/// that sliver would not be sent. A billionth below leaves room for any float rounding; it
/// costs the miner a billionth of the credit of such shares.
const NETWORK_DIFFICULTY_CAP_MARGIN: f64 = 1e-9;

/// The difficulty of one miner and the jobs it holds.
#[derive(Clone, Debug)]
pub struct WorkState {
    /// What the miner is held to: `wanted_difficulty` under the network's cap (`capped`).
    difficulty: f64,
    /// The difficulty the pool would give the miner on any network: the start value,
    /// suggestions, vardiff's retargets, within the floor and `DIFFICULTY_MAX`. Kept while
    /// a network below it caps `difficulty`, so the miner gets it back when the network
    /// rises again (a testnet's minimum-difficulty blocks come and go).
    wanted_difficulty: f64,
    difficulty_floor: f64,
    /// The difficulty the pool chose for this miner: the start value, then each of
    /// vardiff's retargets (and a lowering it allowed). Suggestions below it are limited
    /// (`suggest_difficulty`).
    measured_difficulty: f64,
    /// Lowerings below `measured_difficulty` taken since `lowering_window_start_s`.
    lowerings: u32,
    lowering_window_start_s: u64,
    vardiff: Option<Vardiff>,
    /// See `FrontEndConfig::network_difficulty_cap_min`.
    network_difficulty_cap_min: f64,
    /// The easiest network difficulty and target among the jobs the miner holds
    /// (`follow_network`); `None` before the first job.
    network: Option<(f64, Target)>,
    /// Oldest first, at most `JOBS_REMEMBERED_MAX`.
    sent_jobs: Vec<SentJob>,
    /// The last share target `resolve` computed: a miner's shares are nearly all held to
    /// one difficulty on one network, and a target from a difficulty costs about a tenth
    /// of a SHA256d share's validation (BENCHMARKS.md).
    last_share_target: std::cell::Cell<Option<(ShareTargetKey, Target)>>,
}

impl WorkState {
    /// `difficulty_floor` is the pool's floor for this miner (never below `DIFFICULTY_MIN`).
    pub fn new(
        start_difficulty: f64,
        difficulty_floor: f64,
        vardiff: Option<VardiffConfig>,
    ) -> Self {
        let difficulty_floor = difficulty_floor.max(DIFFICULTY_MIN);
        let difficulty = start_difficulty.clamp(difficulty_floor, DIFFICULTY_MAX);
        WorkState {
            difficulty,
            wanted_difficulty: difficulty,
            difficulty_floor,
            measured_difficulty: difficulty,
            lowerings: 0,
            lowering_window_start_s: 0,
            vardiff: vardiff.map(Vardiff::new),
            network_difficulty_cap_min: NETWORK_DIFFICULTY_CAP_MIN,
            network: None,
            sent_jobs: Vec::new(),
            last_share_target: std::cell::Cell::new(None),
        }
    }

    /// A miner's state under a front end's terms, starting at `start_difficulty`.
    pub fn for_front_end(config: &FrontEndConfig, start_difficulty: f64) -> Self {
        let mut work = WorkState::new(start_difficulty, config.difficulty_min, config.vardiff);
        work.network_difficulty_cap_min = config.network_difficulty_cap_min;
        work
    }

    /// The difficulty the miner is held to now.
    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// The target of the current difficulty, as Stratum V2 announces it
    /// (`share_target_within_network`).
    pub fn share_target(&self, algorithm: Algorithm) -> Target {
        share_target_within_network(algorithm, self.difficulty, self.network)
    }

    /// The most a miner is held to on the networks of the jobs it holds, or `INFINITY`
    /// before the first job: just under the easiest network difficulty
    /// (`NETWORK_DIFFICULTY_CAP_MARGIN`), or `network_difficulty_cap_min` on a chain below
    /// that.
    ///
    /// Invariant (no block is lost to the share target): on a chain of real difficulty a
    /// miner is never held above the network difficulty of any job it holds. A miner only
    /// sends what meets its share target, so one held above the network's would keep
    /// every block whose hash falls between the two, by accident (a big miner on a testnet,
    /// whose difficulty vardiff raises past the network's) or on purpose (a suggestion far
    /// above it). Two things may hold it above: the floor (the operator's, or a Stratum V2
    /// device's `max_target`), and, on a chain below `network_difficulty_cap_min`
    /// (regtest), any difficulty up to that.
    fn network_cap(&self) -> f64 {
        self.network
            .map_or(f64::INFINITY, |(network_difficulty, _)| {
                if network_difficulty < self.network_difficulty_cap_min {
                    self.network_difficulty_cap_min
                } else {
                    network_difficulty * (1.0 - NETWORK_DIFFICULTY_CAP_MARGIN)
                }
            })
    }

    /// Sets `difficulty` from `wanted_difficulty` under the network's cap, never below the
    /// floor; whether it changed.
    fn settle(&mut self) -> bool {
        let before = self.difficulty;
        self.difficulty = self
            .wanted_difficulty
            .min(self.network_cap())
            .clamp(self.difficulty_floor, DIFFICULTY_MAX);
        self.difficulty != before
    }

    /// Before `job` goes out: the miner's difficulty is capped by the easiest network among
    /// `job` and the jobs it keeps holding (all of them, unless `job` is clean), and goes
    /// back up to what the pool wants for it when the network rises. Returns whether the
    /// difficulty changed.
    pub fn follow_network(&mut self, job: impl Into<WorkJob>) -> bool {
        let job = job.into();
        let mut easiest = job.network;
        if !job.clean {
            for sent in &self.sent_jobs {
                if sent.network.0 < easiest.0 {
                    easiest = sent.network;
                }
            }
        }
        self.network = Some(easiest);
        self.settle()
    }

    /// Raises (or lowers) the floor, for a miner that states the easiest target it takes
    /// (Stratum V2's `max_target`); the difficulty moves up to it if needed.
    pub fn set_difficulty_floor(&mut self, difficulty_floor: f64) {
        self.difficulty_floor = difficulty_floor.clamp(DIFFICULTY_MIN, DIFFICULTY_MAX);
        self.wanted_difficulty = self.wanted_difficulty.max(self.difficulty_floor);
        self.measured_difficulty = self.measured_difficulty.max(self.difficulty_floor);
        self.settle();
    }

    /// Sets the difficulty outright, within the floor and `DIFFICULTY_MAX` (and held under
    /// the network's cap).
    pub fn set_difficulty(&mut self, difficulty: f64) {
        self.wanted_difficulty = difficulty.clamp(self.difficulty_floor, DIFFICULTY_MAX);
        self.settle();
    }

    /// Takes a miner's suggestion (V1 `mining.suggest_difficulty`) as a hint within bounds:
    /// never below the floor, and below the difficulty the pool measured for the miner at
    /// most `DIFFICULTY_LOWERINGS_PER_INTERVAL_MAX` times per
    /// `DIFFICULTY_LOWERING_INTERVAL_S`; past that the miner stays at the measured value.
    /// So re-sending a tiny suggestion cannot keep undoing vardiff (a flood of nearly free
    /// shares the pool must validate and store), while a miner that asks once is served.
    /// A suggestion while a job's difficulty-change grace runs is ignored: every change
    /// starts the grace again at the easiest difficulty of the one before, so raising a
    /// little every second would keep a miner held (and credited) at one lowering's
    /// difficulty for ever. Returns whether the suggestion was taken as asked (within the
    /// floor and maximum; the network's cap still applies).
    pub fn suggest_difficulty(&mut self, suggested: f64, now_s: u64) -> bool {
        if self.sent_jobs.iter().any(|sent| now_s < sent.grace_until_s) {
            return false;
        }
        let suggested = suggested.clamp(self.difficulty_floor, DIFFICULTY_MAX);
        // Silence is counted from when the miner learns the difficulty it asked for.
        if let Some(vardiff) = self.vardiff.as_mut() {
            vardiff.note_activity(now_s);
        }
        let taken = if suggested >= self.measured_difficulty {
            self.wanted_difficulty = suggested;
            true
        } else {
            if now_s >= self.lowering_window_start_s + DIFFICULTY_LOWERING_INTERVAL_S {
                self.lowering_window_start_s = now_s;
                self.lowerings = 0;
            }
            if self.lowerings < DIFFICULTY_LOWERINGS_PER_INTERVAL_MAX {
                self.lowerings += 1;
                self.wanted_difficulty = suggested;
                // Asking for the same value again is then no further lowering.
                self.measured_difficulty = suggested;
                true
            } else {
                self.wanted_difficulty = self.measured_difficulty;
                false
            }
        };
        self.settle();
        taken
    }

    /// Before `job` goes out: follows its network difficulty (`follow_network`), then
    /// gives vardiff a chance to retarget, which catches miners that stopped sending
    /// shares altogether. Returns whether the difficulty changed.
    pub fn retarget_before_job(&mut self, job: impl Into<WorkJob>, now_s: u64) -> bool {
        let followed = self.follow_network(job);
        let current = self.difficulty;
        let next = self
            .vardiff
            .as_mut()
            .and_then(|v| v.retarget(now_s, current));
        self.take_vardiff(next, now_s) || followed
    }

    /// Takes vardiff's new difficulty, if any, within the floor (a V2 channel's
    /// `max_target` can set it above the pool's) and `DIFFICULTY_MAX`; whether the
    /// difficulty changed. A raise while the network caps the miner is dropped: vardiff
    /// sees the share rate at the cap, not at what the pool wants, and taking it would
    /// overwrite the difficulty the miner goes back to when the network rises.
    fn take_vardiff(&mut self, next: Option<f64>, now_s: u64) -> bool {
        let Some(next) = next.map(|next| next.clamp(self.difficulty_floor, DIFFICULTY_MAX)) else {
            return false;
        };
        let capped = self.difficulty < self.wanted_difficulty;
        if next == self.difficulty || (capped && next > self.difficulty) {
            return false;
        }
        self.wanted_difficulty = next;
        self.measured_difficulty = next;
        if let Some(vardiff) = self.vardiff.as_mut() {
            vardiff.note_activity(now_s);
        }
        self.settle()
    }

    /// The miner submitted a share (any, good or not): it is not silent.
    pub fn note_submit(&mut self, now_s: u64) {
        if let Some(vardiff) = self.vardiff.as_mut() {
            vardiff.note_activity(now_s);
        }
    }

    /// When `retarget_if_silent` would lower the difficulty if no share comes first.
    pub fn silent_at_s(&self) -> Option<u64> {
        self.vardiff.as_ref()?.silent_at_s()
    }

    /// Lowers the difficulty of a miner that has sent no share for
    /// `VARDIFF_SILENT_SHARE_INTERVALS` target intervals. Returns whether it changed; the
    /// front end announces it (and, for V1, sends the job again so that it applies).
    pub fn retarget_if_silent(&mut self, now_s: u64) -> bool {
        let current = self.difficulty;
        let next = self
            .vardiff
            .as_mut()
            .and_then(|v| v.retarget_silent(now_s, current));
        self.take_vardiff(next, now_s)
    }

    /// An accepted share is durable: count it for vardiff. Returns whether the difficulty
    /// changed, so the front end can announce it.
    pub fn on_share_durable(&mut self, now_s: u64) -> bool {
        let current = self.difficulty;
        let Some(vardiff) = self.vardiff.as_mut() else {
            return false;
        };
        vardiff.on_share();
        let next = vardiff.retarget(now_s, current);
        self.take_vardiff(next, now_s)
    }

    /// Records that `job` goes out at the current difficulty. A clean job forgets every
    /// earlier one. A job sent again at a new difficulty changes as `SentJob` describes.
    pub fn record_sent(&mut self, job: impl Into<WorkJob>, now_s: u64) {
        let job = job.into();
        let job_id = job.job_id;
        if job.clean {
            self.sent_jobs.retain(|e| e.job_id == job_id);
        }
        let difficulty = self.difficulty;
        if let Some(entry) = self.sent_jobs.iter_mut().find(|e| e.job_id == job_id) {
            entry.change_difficulty(difficulty, now_s);
        } else {
            if self.sent_jobs.len() >= JOBS_REMEMBERED_MAX {
                self.sent_jobs.remove(0);
            }
            self.sent_jobs.push(SentJob::new(job, difficulty));
        }
    }

    /// The current difficulty now applies to every job the miner holds (Stratum V2's
    /// SetTarget covers all of a channel's jobs), with the same grace as `record_sent`.
    pub fn apply_difficulty_to_sent_jobs(&mut self, now_s: u64) {
        let difficulty = self.difficulty;
        for entry in &mut self.sent_jobs {
            entry.change_difficulty(difficulty, now_s);
        }
    }

    pub fn sent_job(&self, job_id: u64) -> Option<SentJob> {
        self.sent_jobs
            .iter()
            .rev()
            .find(|e| e.job_id == job_id)
            .copied()
    }

    /// The full id of a job this miner holds whose low 32 bits are `job_id_low32`
    /// (Stratum V2 carries job ids as U32).
    pub fn sent_job_by_low32(&self, job_id_low32: u32) -> Option<SentJob> {
        self.sent_jobs
            .iter()
            .rev()
            .find(|e| e.job_id as u32 == job_id_low32)
            .copied()
    }

    /// `job.share_target(difficulty)`, from `last_share_target` when it was the last one
    /// computed.
    fn share_target_of(&self, job: &Job, difficulty: f64) -> Target {
        let key = (job.algorithm, job.template.bits, difficulty.to_bits());
        match self.last_share_target.get() {
            Some((last_key, target)) if last_key == key => target,
            _ => {
                let target = job.share_target(difficulty);
                self.last_share_target.set(Some((key, target)));
                target
            }
        }
    }

    /// The job a share arriving at `now_s` names, if this miner may still submit to it,
    /// with the terms the share is held to.
    pub fn resolve(
        &self,
        jobs: &JobBook,
        job_id: u64,
        now_s: u64,
    ) -> Result<(Arc<Job>, ShareTerms), Rejection> {
        let sent = self.sent_job(job_id);
        match (jobs.lookup(job_id), sent) {
            (JobLookup::Current(job), Some(sent)) => {
                let difficulty = sent.required_difficulty(now_s);
                let terms = ShareTerms {
                    job_id,
                    difficulty,
                    share_target: self.share_target_of(job, difficulty),
                };
                debug_assert_eq!(terms, sent.terms(job, now_s));
                Ok((job.clone(), terms))
            }
            (JobLookup::Unknown, None) => Err(Rejection::UnknownJob),
            _ => Err(Rejection::StaleJob),
        }
    }
}

/// A share's ntime may not precede its job's, nor run more than
/// `NTIME_FUTURE_SECONDS_MAX` ahead of the pool's clock.
pub fn check_ntime(job: &Job, ntime: u32, now_s: u64) -> Result<(), Rejection> {
    if ntime < job.template.ntime || ntime as u64 > now_s + NTIME_FUTURE_SECONDS_MAX {
        return Err(Rejection::NtimeOutOfRange);
    }
    Ok(())
}

/// BIP310 / BIP320: the share's full version may differ from the job's only in the bits of
/// `mask` (`None`: rolling was not negotiated, so it must equal the job's).
pub fn check_version(job_version: u32, mask: Option<u32>, version: u32) -> Result<u32, Rejection> {
    let rollable = mask.unwrap_or(0);
    if (version ^ job_version) & !rollable != 0 {
        return Err(Rejection::VersionBitsNotAllowed);
    }
    Ok(version)
}

/// A share that passed every rule, with the difficulty it is credited at.
#[derive(Clone, Debug, PartialEq)]
pub struct CreditedShare {
    pub valid: ValidShare,
    pub difficulty: f64,
}

/// Claims a share in the duplicate filter as it arrives, before its proof of work is
/// computed (see `DuplicateFilter`): `Duplicate` if the same header was taken before or is
/// waiting for its hash, `FilterFull` if the filter is at its bound and this share proves
/// less work than its job's floor.
pub fn claim_share(
    job: &Job,
    header_hash: [u8; 32],
    duplicates: &mut DuplicateFilter,
) -> Result<(), Rejection> {
    // A SHA256d share's hash is its proof of work: whether it found a block is known now.
    let is_block = job.algorithm == otedama_kernels::Algorithm::Sha256d
        && job.network_target.is_met_by(&header_hash);
    match duplicates.insert(&job.content_key, job.algorithm, header_hash, is_block) {
        Claim::Taken => Ok(()),
        Claim::Duplicate => Err(Rejection::Duplicate),
        Claim::Full | Claim::BelowFloor => Err(Rejection::FilterFull),
    }
}

/// The check after the proof of work of a claimed share: the target of its terms, then
/// the duplicate filter's floor (a scrypt share's work is known only now). The credit is
/// the terms' difficulty, whatever the hash achieved (the credit rule on `SentJob`). A
/// share that falls short gives its claim back.
pub fn credit_share(
    job: &Job,
    terms: ShareTerms,
    header: [u8; 80],
    header_hash: [u8; 32],
    pow: &[u8; 32],
    duplicates: &mut DuplicateFilter,
) -> Result<CreditedShare, Rejection> {
    match check_pow(job, header, header_hash, pow, &terms.share_target) {
        // A SHA256d share's work was judged when it was claimed; a scrypt share's is known
        // only now.
        Ok(valid)
            if job.algorithm == otedama_kernels::Algorithm::Sha256d
                || duplicates.settle(&job.content_key, &header_hash, pow, valid.is_block) =>
        {
            Ok(CreditedShare {
                valid,
                difficulty: terms.difficulty,
            })
        }
        Ok(_) => Err(Rejection::FilterFull),
        Err(_) if job.network_target.is_met_by(pow) => {
            // The claim stays (a scrypt one is settled as a block), so the block goes up
            // once and a copy is refused as a duplicate. A scrypt block the filter cannot
            // keep (its blocks of this tip at their bound, under the floor: regtest only)
            // is refused and not sent, as an accepted one would be: were it sent, a copy
            // could be claimed and sent again.
            if job.algorithm == otedama_kernels::Algorithm::Scrypt
                && !duplicates.settle(&job.content_key, &header_hash, pow, true)
            {
                return Err(Rejection::FilterFull);
            }
            Err(Rejection::BlockBelowShareTarget)
        }
        Err(_) => {
            duplicates.remove(&job.content_key, &header_hash);
            Err(Rejection::LowDifficulty)
        }
    }
}

/// The target of a difficulty; `Target::MAX` for difficulties too low to express.
pub fn share_target(algorithm: Algorithm, difficulty: f64) -> Target {
    Target::from_difficulty(algorithm, difficulty).unwrap_or(Target::MAX)
}

/// The target of a difficulty on a network of the given difficulty and target. At or
/// below the network's difficulty it is never harder than the network target: a
/// difficulty capped at the network's (`WorkState::network_cap`) goes through a float, and
/// the round trip could make its target a hair harder than the network's, refusing (and
/// telling a miner not to send) a hash that is a block.
pub fn share_target_within_network(
    algorithm: Algorithm,
    difficulty: f64,
    network: Option<(f64, Target)>,
) -> Target {
    let target = share_target(algorithm, difficulty);
    match network {
        Some((network_difficulty, network_target)) if difficulty <= network_difficulty => {
            target.max(network_target)
        }
        _ => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::tests::template;

    /// A scrypt job of the test template with other bits: 0x1e0ffff0 (Litecoin's easiest)
    /// is scrypt difficulty 16, 0x1d00ffff is 65,536.
    fn job_with_bits(job_id: u64, bits: u32) -> Job {
        let mut template = template(job_id, true);
        template.bits = bits;
        Job::new(template).unwrap()
    }

    /// However a miner's difficulty is raised (its suggestion, vardiff, the operator), it
    /// is held to just under the network's, and a hash exactly at the network target is
    /// taken as a block. When the network rises again, the miner gets back what the pool
    /// wants for it. A floor may stay above, and so may difficulties up to
    /// `NETWORK_DIFFICULTY_CAP_MIN` on a test chain.
    #[test]
    fn a_miner_is_never_held_above_the_network_difficulty() {
        let job = job_with_bits(1, 0x1e0f_fff0);
        let network_difficulty = job.network_difficulty;
        assert!(
            (network_difficulty - 16.0).abs() < 1e-3,
            "{network_difficulty}"
        );
        let cap = network_difficulty * (1.0 - NETWORK_DIFFICULTY_CAP_MARGIN);
        let mut work = WorkState::new(1_000.0, 1e-6, None);
        assert!(work.retarget_before_job(&job, 0));
        assert_eq!(work.difficulty(), cap);
        // Under the network's difficulty, the target is never harder than the network's.
        assert!(work.share_target(job.algorithm) >= job.network_target);
        work.record_sent(&job, 0);
        // Above it by suggestion or outright: still capped.
        work.suggest_difficulty(1e6, DIFFICULTY_CHANGE_GRACE_S);
        assert_eq!(work.difficulty(), cap);
        work.set_difficulty(1e9);
        assert_eq!(work.difficulty(), cap);
        let terms = work
            .sent_job(1)
            .unwrap()
            .terms(&job, DIFFICULTY_CHANGE_GRACE_S);
        assert_eq!(terms.difficulty, cap);
        // The hardest hash that is a block: exactly the network target.
        let pow = job.network_target.to_le_bytes();
        let mut duplicates = DuplicateFilter::default();
        claim_share(&job, [5; 32], &mut duplicates).unwrap();
        let credited = credit_share(&job, terms, [0; 80], [5; 32], &pow, &mut duplicates).unwrap();
        assert!(credited.valid.is_block);
        assert_eq!(credited.difficulty, cap);
        // A network that gets harder gives the miner back what the pool wants (here the
        // 1e9 set above), up to the new network's.
        let harder = job_with_bits(2, 0x1b00_ffff);
        assert!(harder.network_difficulty > 1e9);
        assert!(work.retarget_before_job(&harder, 100));
        assert_eq!(work.difficulty(), 1e9);
        // A floor above the network's stays: the operator's choice.
        let mut floored = WorkState::new(1.0, 32.0, None);
        floored.retarget_before_job(&job, 0);
        assert_eq!(floored.difficulty(), 32.0);
        assert!(floored.share_target(job.algorithm) < job.network_target);
        // Regtest (scrypt difficulty about 2^-15): held to at most 1, not to the network's.
        let regtest = Job::new(template(3, true)).unwrap();
        assert!(regtest.network_difficulty < 1e-4);
        let mut on_regtest = WorkState::new(4.0, 1e-6, None);
        assert!(on_regtest.retarget_before_job(&regtest, 0));
        assert_eq!(on_regtest.difficulty(), NETWORK_DIFFICULTY_CAP_MIN);
        on_regtest.set_difficulty(0.01);
        assert_eq!(on_regtest.difficulty(), 0.01);
    }

    /// A job on an easier network that does not replace the ones held (not clean) caps
    /// the miner by the easiest of them: Stratum V2's SetTarget covers every job a channel
    /// holds, and a block on the older one must still be sent.
    #[test]
    fn the_easiest_network_among_the_jobs_held_caps_the_miner() {
        let easy = job_with_bits(1, 0x1e0f_fff0);
        let mut hard_template = template(2, false);
        hard_template.bits = 0x1d00_ffff;
        let hard = Job::new(hard_template).unwrap();
        let mut work = WorkState::new(1e9, 1e-6, None);
        work.retarget_before_job(&easy, 0);
        work.record_sent(&easy, 0);
        work.retarget_before_job(&hard, 1);
        work.record_sent(&hard, 1);
        assert!(work.difficulty() < easy.network_difficulty);
        // A clean job replaces them all: its own network alone counts.
        let clean = job_with_bits(3, 0x1d00_ffff);
        work.retarget_before_job(&clean, 2);
        assert!(work.difficulty() > 60_000.0, "{}", work.difficulty());
    }

    /// While the network caps a miner, vardiff's raises (it sees the share rate at the
    /// cap) do not overwrite what the miner goes back to; its lowerings do.
    #[test]
    fn vardiff_under_the_cap_keeps_what_the_miner_goes_back_to() {
        let vardiff = VardiffConfig {
            difficulty_min: 1e-6,
            ..VardiffConfig::default()
        };
        let mut work = WorkState::new(1_000.0, 1e-6, Some(vardiff));
        let dip = job_with_bits(1, 0x1e0f_fff0);
        work.retarget_before_job(&dip, 0);
        let capped = work.difficulty();
        assert!(capped < 16.0);
        // A burst of shares at the cap: vardiff would raise, but the cap holds.
        for _ in 0..crate::vardiff::VARDIFF_BURST_SHARES_MAX {
            assert!(!work.on_share_durable(1));
        }
        assert_eq!(work.difficulty(), capped);
        let back = job_with_bits(2, 0x1d00_ffff);
        assert!(work.retarget_before_job(&back, 2));
        assert_eq!(work.difficulty(), 1_000.0);
    }

    /// A difficulty capped at the network's goes through a float. For some bits (about one
    /// in twelve of those sampled) the plain round trip lands a hair harder than the network
    /// target and would refuse a block; `share_target_within_network` never does.
    #[test]
    fn the_network_difficulty_gives_back_the_network_target() {
        let job = job_with_bits(1, 0x1801_f334);
        let plain = share_target(job.algorithm, job.network_difficulty);
        assert!(plain < job.network_target);
        assert_eq!(job.share_target(job.network_difficulty), job.network_target);
    }

    #[test]
    fn version_may_differ_only_inside_the_mask() {
        let job_version = 0x2000_0000;
        assert_eq!(
            check_version(job_version, None, job_version),
            Ok(job_version)
        );
        assert_eq!(
            check_version(job_version, None, 0x2000_2000),
            Err(Rejection::VersionBitsNotAllowed)
        );
        let mask = Some(0x1fff_e000);
        assert_eq!(
            check_version(job_version, mask, 0x3fff_e000),
            Ok(0x3fff_e000)
        );
        assert_eq!(
            check_version(job_version, mask, 0x2000_1000),
            Err(Rejection::VersionBitsNotAllowed)
        );
        assert_eq!(
            check_version(job_version, mask, 0x0000_2000),
            Err(Rejection::VersionBitsNotAllowed)
        );
    }

    #[test]
    fn ntime_window_edges() {
        let job = Job::new(template(1, true)).unwrap();
        let start = job.template.ntime;
        let now_s = start as u64 + 10;
        assert_eq!(check_ntime(&job, start, now_s), Ok(()));
        assert_eq!(
            check_ntime(&job, start - 1, now_s),
            Err(Rejection::NtimeOutOfRange)
        );
        let latest = (now_s + NTIME_FUTURE_SECONDS_MAX) as u32;
        assert_eq!(check_ntime(&job, latest, now_s), Ok(()));
        assert_eq!(
            check_ntime(&job, latest + 1, now_s),
            Err(Rejection::NtimeOutOfRange)
        );
    }

    #[test]
    fn a_target_change_takes_the_old_difficulty_only_during_the_grace() {
        let job = Job::new(template(1, true)).unwrap();
        let mut work = WorkState::new(4.0, 1.0, None);
        let changed_at_s = 1_000;
        work.record_sent(&job, changed_at_s - 10);
        work.set_difficulty(8.0);
        work.apply_difficulty_to_sent_jobs(changed_at_s);
        let sent = work.sent_job(1).unwrap();
        let grace_end_s = changed_at_s + DIFFICULTY_CHANGE_GRACE_S;
        assert_eq!(sent.required_difficulty(changed_at_s), 4.0);
        assert_eq!(sent.required_difficulty(grace_end_s - 1), 4.0);
        assert_eq!(sent.required_difficulty(grace_end_s), 8.0);
        // Lower, inside the grace: the easier one at once.
        work.set_difficulty(2.0);
        work.apply_difficulty_to_sent_jobs(changed_at_s + 1);
        let sent = work.sent_job(1).unwrap();
        assert_eq!(sent.required_difficulty(changed_at_s + 1), 2.0);
        assert_eq!(sent.required_difficulty(changed_at_s + 100), 2.0);
    }

    #[test]
    fn repeated_changes_hold_a_miner_to_the_easiest_difficulty_of_the_grace() {
        let job = Job::new(template(1, true)).unwrap();
        let mut work = WorkState::new(1.0, 1.0, None);
        work.record_sent(&job, 0);
        for step_s in 1..50 {
            let difficulty = if step_s % 2 == 1 { 1000.0 } else { 1.0 };
            work.set_difficulty(difficulty);
            work.apply_difficulty_to_sent_jobs(step_s);
            let terms = work.sent_job(1).unwrap().terms(&job, step_s);
            assert_eq!(terms.difficulty, 1.0, "step {step_s}");
        }
    }

    /// A found block is credited whatever the duplicate filter's bound, and its copy is
    /// still refused (here the bound is zero: no other share is taken at all).
    #[test]
    fn a_block_is_taken_past_the_filter_bound_and_its_copy_is_not() {
        // SHA256d: whether a share is a block is known when it is claimed.
        let mut sha256d = template(1, true);
        sha256d.algorithm = crate::job::AlgorithmName::Sha256d;
        let job = Job::new(sha256d).unwrap();
        let terms = ShareTerms::new(&job, 0.5);
        let mut duplicates = DuplicateFilter::with_shares_max(0);
        // Regtest bits: a hash of all zeros meets the network target.
        claim_share(&job, [0; 32], &mut duplicates).unwrap();
        let credited =
            credit_share(&job, terms, [0; 80], [0; 32], &[0; 32], &mut duplicates).unwrap();
        assert!(credited.valid.is_block);
        assert_eq!(
            claim_share(&job, [0; 32], &mut duplicates),
            Err(Rejection::Duplicate)
        );
    }

    #[test]
    fn a_share_is_credited_at_its_terms_whatever_its_hash_achieved() {
        let job = Job::new(template(1, true)).unwrap();
        let terms = ShareTerms::new(&job, 0.5);
        let mut duplicates = DuplicateFilter::default();
        // A proof-of-work value of zero meets every target.
        claim_share(&job, [9; 32], &mut duplicates).unwrap();
        let credited =
            credit_share(&job, terms, [0; 80], [9; 32], &[0; 32], &mut duplicates).unwrap();
        assert_eq!(credited.difficulty, 0.5);
        assert!(credited.valid.achieved_difficulty > 1e9);
        assert_eq!(
            claim_share(&job, [9; 32], &mut duplicates),
            Err(Rejection::Duplicate)
        );
        // One that falls short gives its claim back: sent again, it is judged again.
        claim_share(&job, [8; 32], &mut duplicates).unwrap();
        assert_eq!(
            credit_share(&job, terms, [0; 80], [8; 32], &[0xff; 32], &mut duplicates),
            Err(Rejection::LowDifficulty)
        );
        assert_eq!(claim_share(&job, [8; 32], &mut duplicates), Ok(()));
    }

    #[test]
    fn a_clean_resend_of_the_same_job_keeps_its_difficulty_history() {
        let job = Job::new(template(1, true)).unwrap();
        let mut work = WorkState::new(4.0, 1.0, None);
        work.record_sent(&job, 0);
        work.set_difficulty(400.0);
        work.record_sent(&job, 10);
        assert_eq!(work.sent_job(1).unwrap().required_difficulty(10), 4.0);
        // The same clean job again inside the grace (a control-plane reconnect): the grace
        // runs on as it was, neither cleared nor started again.
        work.record_sent(&job, 11);
        let sent = work.sent_job(1).unwrap();
        assert_eq!(sent.required_difficulty(11), 4.0);
        assert_eq!(sent.grace_until_s, 10 + DIFFICULTY_CHANGE_GRACE_S);
        assert_eq!(
            sent.required_difficulty(10 + DIFFICULTY_CHANGE_GRACE_S),
            400.0
        );
    }

    #[test]
    fn jobs_resolve_as_current_stale_or_unknown() {
        let mut book = JobBook::default();
        let mut work = WorkState::new(1.0, 1.0, None);
        let first = Arc::new(Job::new(template(7, true)).unwrap());
        book.insert(first.clone());
        work.record_sent(&first, 0);
        assert!(work.resolve(&book, 7, 0).is_ok());
        assert_eq!(work.sent_job_by_low32(7).unwrap().job_id, 7);
        let second = Arc::new(Job::new(template(8, true)).unwrap());
        book.insert(second.clone());
        work.record_sent(&second, 0);
        assert_eq!(work.resolve(&book, 7, 0).unwrap_err(), Rejection::StaleJob);
        assert_eq!(
            work.resolve(&book, 99, 0).unwrap_err(),
            Rejection::UnknownJob
        );
    }

    #[test]
    fn suggestions_lower_the_difficulty_once_per_interval_and_never_below_the_floor() {
        let vardiff = VardiffConfig {
            difficulty_min: 0.5,
            ..VardiffConfig::default()
        };
        let mut work = WorkState::new(64.0, 0.5, Some(vardiff));
        let start_s = 1_000;
        // Raising is always taken.
        assert!(work.suggest_difficulty(128.0, start_s));
        assert_eq!(work.difficulty(), 128.0);
        // The first lowering below the measured 64 is taken, down to the floor at most.
        assert!(work.suggest_difficulty(1e-9, start_s));
        assert_eq!(work.difficulty(), 0.5);
        // The same value again is no further lowering.
        assert!(work.suggest_difficulty(0.5, start_s + 1));
        // Vardiff measures the miner at 2 (a burst of shares at 0.5).
        work.retarget_before_job(&job_with_bits(1, 0x1d00_ffff), start_s + 1);
        for _ in 0..crate::vardiff::VARDIFF_BURST_SHARES_MAX {
            work.on_share_durable(start_s + 2);
        }
        assert_eq!(work.difficulty(), 2.0);
        // A second lowering inside the interval is held at the measured value.
        let last_s = start_s + DIFFICULTY_LOWERING_INTERVAL_S - 1;
        assert!(!work.suggest_difficulty(1e-9, last_s));
        assert_eq!(work.difficulty(), 2.0);
        assert!(!work.suggest_difficulty(1.0, last_s));
        assert_eq!(work.difficulty(), 2.0);
        // Once the interval is over, one more.
        assert!(work.suggest_difficulty(1.0, start_s + DIFFICULTY_LOWERING_INTERVAL_S));
        assert_eq!(work.difficulty(), 1.0);
        assert!(!work.suggest_difficulty(0.5, start_s + DIFFICULTY_LOWERING_INTERVAL_S));
        assert_eq!(work.difficulty(), 1.0);
    }

    /// Whatever `DIFFICULTY_LOWERINGS_PER_INTERVAL_MAX` is set to: that many lowerings in
    /// one interval are taken, each below the last, and the next is held.
    #[test]
    fn lowerings_hold_their_limit_per_interval() {
        let mut work = WorkState::new(1024.0, 1e-3, None);
        let start_s = 5_000;
        let mut asked = 1024.0;
        for _ in 0..DIFFICULTY_LOWERINGS_PER_INTERVAL_MAX {
            asked /= 2.0;
            assert!(work.suggest_difficulty(asked, start_s));
            assert_eq!(work.difficulty(), asked);
        }
        assert!(!work.suggest_difficulty(asked / 2.0, start_s + DIFFICULTY_LOWERING_INTERVAL_S - 1));
        assert_eq!(work.difficulty(), asked);
        assert!(work.suggest_difficulty(asked / 2.0, start_s + DIFFICULTY_LOWERING_INTERVAL_S));
        assert_eq!(work.difficulty(), asked / 2.0);
    }

    /// A miner's memory of the jobs it was sent holds `JOBS_REMEMBERED_MAX`: one more job
    /// (not a new block) forgets exactly the oldest, and a job sent again is not counted
    /// twice.
    #[test]
    fn sent_jobs_hold_their_limit() {
        let mut work = WorkState::new(1.0, 1.0, None);
        let jobs: Vec<Job> = (1..=JOBS_REMEMBERED_MAX as u64 + 1)
            .map(|id| Job::new(template(id, id == 1)).unwrap())
            .collect();
        let remembered =
            |work: &WorkState| -> Vec<u64> { work.sent_jobs.iter().map(|e| e.job_id).collect() };
        for job in &jobs[..JOBS_REMEMBERED_MAX] {
            work.record_sent(job, 0);
        }
        work.record_sent(&jobs[3], 1);
        assert_eq!(remembered(&work).len(), JOBS_REMEMBERED_MAX);
        assert_eq!(
            remembered(&work)[0],
            jobs[0].job_id(),
            "nothing forgotten yet"
        );
        work.record_sent(&jobs[JOBS_REMEMBERED_MAX], 2);
        let kept = remembered(&work);
        assert_eq!(kept.len(), JOBS_REMEMBERED_MAX);
        assert_eq!(kept[0], jobs[1].job_id(), "the oldest is forgotten");
        assert_eq!(*kept.last().unwrap(), jobs[JOBS_REMEMBERED_MAX].job_id());
    }

    #[test]
    fn suggestions_while_a_grace_runs_cannot_keep_the_easy_difficulty_alive() {
        let job = Job::new(template(1, true)).unwrap();
        let mut work = WorkState::new(64.0, 0.5, None);
        work.record_sent(&job, 0);
        // The one lowering of the interval, then a raise back up.
        assert!(work.suggest_difficulty(1.0, 1_000));
        work.record_sent(&job, 1_000);
        assert!(work.suggest_difficulty(64.0, 1_000 + DIFFICULTY_CHANGE_GRACE_S));
        work.record_sent(&job, 1_000 + DIFFICULTY_CHANGE_GRACE_S);
        // Raising a little every second would restart the grace at 1.0 each time; a
        // suggestion inside the grace is ignored, so the grace ends and 1.0 with it.
        let raised_s = 1_000 + DIFFICULTY_CHANGE_GRACE_S;
        let mut taken = 0;
        for step_s in 1..DIFFICULTY_CHANGE_GRACE_S * 10 {
            let now_s = raised_s + step_s;
            if work.suggest_difficulty(64.0 + step_s as f64, now_s) {
                taken += 1;
            }
            work.record_sent(&job, now_s);
            if step_s >= DIFFICULTY_CHANGE_GRACE_S {
                let required = work.sent_job(1).unwrap().required_difficulty(now_s);
                assert!(required >= 64.0, "step {step_s}: {required}");
            }
        }
        assert!(
            taken > 0 && taken < DIFFICULTY_CHANGE_GRACE_S * 10 - 1,
            "{taken}"
        );
    }

    #[test]
    fn the_default_floor_makes_a_share_cost_the_miner_more_than_the_pool() {
        use crate::limits::{difficulty_floor, pool_cost_per_share_hashes, SHARE_COST_MARGIN};
        for algorithm in [Algorithm::Sha256d, Algorithm::Scrypt] {
            let floor = difficulty_floor(algorithm);
            assert!(floor >= DIFFICULTY_MIN, "{algorithm:?}");
            // Expected hashes per share at the floor, from the target itself.
            let target = share_target(algorithm, floor);
            let hashes = 2f64.powi(256) / (target.to_f64() + 1.0);
            let pool = pool_cost_per_share_hashes(algorithm);
            assert!(
                hashes >= SHARE_COST_MARGIN * pool * 0.999,
                "{algorithm:?}: {hashes} hashes a share at {floor:e}, pool {pool}"
            );
            assert!(hashes <= SHARE_COST_MARGIN * pool * 1.001, "{algorithm:?}");
        }
        // The old default of 1e-6 gave scrypt a target no hash can miss.
        assert_eq!(share_target(Algorithm::Scrypt, 1e-6), Target::MAX);
    }

    #[test]
    fn difficulty_is_clamped_to_the_floor_and_the_maximum() {
        let mut work = WorkState::new(0.001, 0.5, None);
        assert_eq!(work.difficulty(), 0.5);
        work.set_difficulty(f64::MAX);
        assert_eq!(work.difficulty(), DIFFICULTY_MAX);
    }
}
