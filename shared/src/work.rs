//! The share rules every front end applies, whatever the protocol: which job a share may
//! name, the difficulty it is held to and credited at, the ntime window, version rolling,
//! and duplicates. Stratum V1 connections and Stratum V2 channels each own a `WorkState`
//! and call these functions, so both protocols accept and credit exactly the same shares;
//! only the words they reject with differ.

use std::sync::Arc;

use otedama_kernels::{Algorithm, Target};

use crate::address::{payout_address_of, script_for_address, AddressRule};
use crate::bans::BanList;
use crate::job::{Job, JobBook, JobLookup};
use crate::limits::{
    DIFFICULTY_MAX, DIFFICULTY_MIN, JOBS_REMEMBERED_MAX, NTIME_FUTURE_SECONDS_MAX,
    WORKER_NAME_BYTES_MAX,
};
use crate::share::{check_pow, DuplicateFilter, ValidShare};
use crate::vardiff::{Vardiff, VardiffConfig};

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
    /// The same share was accepted before.
    Duplicate,
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
/// can be paid), and is not banned.
pub fn vet_worker_name(
    name: &str,
    payout_address_rule: Option<&AddressRule>,
    bans: &BanList,
) -> Result<(), WorkerRefusal> {
    if name.is_empty() || name.len() > WORKER_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(WorkerRefusal::Malformed);
    }
    if let Some(rule) = payout_address_rule {
        script_for_address(rule, payout_address_of(name))
            .map_err(|error| WorkerRefusal::NotAPayoutAddress(error.to_string()))?;
    }
    if bans.bans_worker(name) {
        return Err(WorkerRefusal::Banned);
    }
    Ok(())
}

/// A job as one miner (V1 connection or V2 channel) received it, with the difficulties it
/// was sent at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SentJob {
    pub job_id: u64,
    /// The easiest difficulty this job was sent at: shares meeting it are accepted.
    pub difficulty_min: f64,
    /// The newest difficulty: shares meeting it are credited at it.
    pub difficulty_latest: f64,
}

/// The difficulty of one miner and the jobs it holds.
#[derive(Clone, Debug)]
pub struct WorkState {
    difficulty: f64,
    difficulty_floor: f64,
    vardiff: Option<Vardiff>,
    /// Oldest first, at most `JOBS_REMEMBERED_MAX`.
    sent_jobs: Vec<SentJob>,
}

impl WorkState {
    /// `difficulty_floor` is the pool's floor for this miner (never below `DIFFICULTY_MIN`).
    pub fn new(
        start_difficulty: f64,
        difficulty_floor: f64,
        vardiff: Option<VardiffConfig>,
    ) -> Self {
        let difficulty_floor = difficulty_floor.max(DIFFICULTY_MIN);
        WorkState {
            difficulty: start_difficulty.clamp(difficulty_floor, DIFFICULTY_MAX),
            difficulty_floor,
            vardiff: vardiff.map(Vardiff::new),
            sent_jobs: Vec::new(),
        }
    }

    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// Raises (or lowers) the floor, for a miner that states the easiest target it takes
    /// (Stratum V2's `max_target`); the difficulty moves up to it if needed.
    pub fn set_difficulty_floor(&mut self, difficulty_floor: f64) {
        self.difficulty_floor = difficulty_floor.clamp(DIFFICULTY_MIN, DIFFICULTY_MAX);
        self.difficulty = self.difficulty.max(self.difficulty_floor);
    }

    /// Sets the difficulty a miner asked for (or one derived from its hash rate), kept
    /// within the pool's floor and `DIFFICULTY_MAX`.
    pub fn set_difficulty(&mut self, difficulty: f64) {
        self.difficulty = difficulty.clamp(self.difficulty_floor, DIFFICULTY_MAX);
    }

    /// Gives vardiff a chance to retarget before a job goes out, which catches miners that
    /// stopped sending shares altogether. Returns whether the difficulty changed.
    pub fn retarget_before_job(&mut self, now_s: u64) -> bool {
        let current = self.difficulty;
        match self
            .vardiff
            .as_mut()
            .and_then(|v| v.retarget(now_s, current))
        {
            Some(next) => {
                self.difficulty = next;
                true
            }
            None => false,
        }
    }

    /// An accepted share is durable: count it for vardiff. Returns whether the difficulty
    /// changed, so the front end can announce it.
    pub fn on_share_durable(&mut self, now_s: u64) -> bool {
        let current = self.difficulty;
        let Some(vardiff) = self.vardiff.as_mut() else {
            return false;
        };
        vardiff.on_share();
        match vardiff.retarget(now_s, current) {
            Some(next) => {
                self.difficulty = next;
                true
            }
            None => false,
        }
    }

    /// Records that `job` goes out at the current difficulty. A clean job forgets every
    /// earlier one. A job sent again at a new difficulty still accepts shares at the
    /// easiest difficulty it was sent at (they may be in flight) but credits the newest to
    /// shares that meet it, so neither side gains from the change.
    pub fn record_sent(&mut self, job: &Job) {
        let job_id = job.job_id();
        if job.template.clean_jobs {
            self.sent_jobs.clear();
        }
        let difficulty = self.difficulty;
        if let Some(entry) = self.sent_jobs.iter_mut().find(|e| e.job_id == job_id) {
            entry.difficulty_min = entry.difficulty_min.min(difficulty);
            entry.difficulty_latest = difficulty;
        } else {
            if self.sent_jobs.len() >= JOBS_REMEMBERED_MAX {
                self.sent_jobs.remove(0);
            }
            self.sent_jobs.push(SentJob {
                job_id,
                difficulty_min: difficulty,
                difficulty_latest: difficulty,
            });
        }
    }

    /// The current difficulty now applies to every job the miner holds (Stratum V2's
    /// SetTarget covers all of a channel's jobs), with the same in-flight rule as
    /// `record_sent`.
    pub fn apply_difficulty_to_sent_jobs(&mut self) {
        let difficulty = self.difficulty;
        for entry in &mut self.sent_jobs {
            entry.difficulty_min = entry.difficulty_min.min(difficulty);
            entry.difficulty_latest = difficulty;
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

    /// The job a share names, if this miner may still submit to it.
    pub fn resolve(&self, jobs: &JobBook, job_id: u64) -> Result<(Arc<Job>, SentJob), Rejection> {
        let sent = self.sent_job(job_id);
        match (jobs.lookup(job_id), sent) {
            (JobLookup::Current(job), Some(sent)) => Ok((job.clone(), sent)),
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

/// The checks after the proof of work: the target of the easiest difficulty the job was
/// sent at, the credit, and the duplicate filter (last, so a rejected share is never
/// remembered).
pub fn credit_share(
    job: &Job,
    sent: SentJob,
    header: [u8; 80],
    header_hash: [u8; 32],
    pow: &[u8; 32],
    duplicates: &mut DuplicateFilter,
) -> Result<CreditedShare, Rejection> {
    let share_target = share_target(job.algorithm, sent.difficulty_min);
    let valid = check_pow(job, header, header_hash, pow, &share_target)
        .map_err(|_| Rejection::LowDifficulty)?;
    let difficulty = if valid.achieved_difficulty >= sent.difficulty_latest {
        sent.difficulty_latest
    } else {
        sent.difficulty_min
    };
    if !duplicates.insert(sent.job_id, valid.header_hash) {
        return Err(Rejection::Duplicate);
    }
    Ok(CreditedShare { valid, difficulty })
}

/// The target of a difficulty; `Target::MAX` for difficulties too low to express.
pub fn share_target(algorithm: Algorithm, difficulty: f64) -> Target {
    Target::from_difficulty(algorithm, difficulty).unwrap_or(Target::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::tests::template;

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
    fn a_target_change_keeps_in_flight_shares_at_the_easier_difficulty() {
        let job = Job::new(template(1, true)).unwrap();
        let mut work = WorkState::new(4.0, 1.0, None);
        work.record_sent(&job);
        work.set_difficulty(8.0);
        work.apply_difficulty_to_sent_jobs();
        let sent = work.sent_job(1).unwrap();
        assert_eq!((sent.difficulty_min, sent.difficulty_latest), (4.0, 8.0));
        work.set_difficulty(2.0);
        work.apply_difficulty_to_sent_jobs();
        let sent = work.sent_job(1).unwrap();
        assert_eq!((sent.difficulty_min, sent.difficulty_latest), (2.0, 2.0));
    }

    #[test]
    fn jobs_resolve_as_current_stale_or_unknown() {
        let mut book = JobBook::default();
        let mut work = WorkState::new(1.0, 1.0, None);
        let first = Arc::new(Job::new(template(7, true)).unwrap());
        book.insert(first.clone());
        work.record_sent(&first);
        assert!(work.resolve(&book, 7).is_ok());
        assert_eq!(work.sent_job_by_low32(7).unwrap().job_id, 7);
        let second = Arc::new(Job::new(template(8, true)).unwrap());
        book.insert(second.clone());
        work.record_sent(&second);
        assert_eq!(work.resolve(&book, 7).unwrap_err(), Rejection::StaleJob);
        assert_eq!(work.resolve(&book, 99).unwrap_err(), Rejection::UnknownJob);
    }

    #[test]
    fn difficulty_is_clamped_to_the_floor_and_the_maximum() {
        let mut work = WorkState::new(0.001, 0.5, None);
        assert_eq!(work.difficulty(), 0.5);
        work.set_difficulty(f64::MAX);
        assert_eq!(work.difficulty(), DIFFICULTY_MAX);
    }
}
