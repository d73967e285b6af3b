//! Mining jobs as the data plane sees them, and the per-core book of live jobs.
//!
//! The control plane builds a `JobTemplate` from the node's block template and sends it
//! down. Each core turns it into a `Job` once: the coinbase prefix's midstate, the network
//! and notify line are computed here, not per connection, because every V1 miner receives
//! the same `mining.notify` bytes.

use std::sync::Arc;

use otedama_kernels::{Algorithm, Midstate, Target};
use serde::{Deserialize, Serialize};

use crate::limits::{JOBS_REMEMBERED_MAX, STALE_JOB_IDS_REMEMBERED_MAX};

/// What the control plane sends down for each new piece of work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTemplate {
    pub job_id: u64,
    pub height: u64,
    /// Previous block hash, internal byte order.
    #[serde(with = "hex::serde")]
    pub prevhash: [u8; 32],
    /// Coinbase (without witness) before the extranonce slot.
    #[serde(with = "hex::serde")]
    pub coinbase_prefix: Vec<u8>,
    /// Coinbase (without witness) after the extranonce slot.
    #[serde(with = "hex::serde")]
    pub coinbase_suffix: Vec<u8>,
    /// Right-hand siblings from the coinbase up to the merkle root, internal byte order.
    pub merkle_branch: Vec<HexHash>,
    pub version: u32,
    pub bits: u32,
    pub ntime: u32,
    /// True when this job replaces every earlier one (a new previous block).
    pub clean_jobs: bool,
    pub algorithm: AlgorithmName,
}

/// A 32-byte hash carried as hex on the wire between the planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HexHash(#[serde(with = "hex::serde")] pub [u8; 32]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmName {
    Sha256d,
    Scrypt,
}

impl From<AlgorithmName> for Algorithm {
    fn from(name: AlgorithmName) -> Self {
        match name {
            AlgorithmName::Sha256d => Algorithm::Sha256d,
            AlgorithmName::Scrypt => Algorithm::Scrypt,
        }
    }
}

/// A job ready for validation on a core.
#[derive(Debug)]
pub struct Job {
    pub template: JobTemplate,
    pub algorithm: Algorithm,
    pub coinbase_prefix_midstate: Midstate,
    pub merkle_branch: Vec<[u8; 32]>,
    pub network_target: Target,
    /// The network target's difficulty: the most a miner is held to on this job
    /// (`WorkState::follow_network`).
    pub network_difficulty: f64,
    /// The complete `mining.notify` line, newline included.
    pub notify_line: Arc<[u8]>,
    /// A digest of everything a share's header commits to besides the miner's own fields
    /// (extranonces, ntime, nonce, rolled version): the previous block, the coinbase around
    /// the extranonces, the merkle branch and bits. Two jobs with the same key take the same
    /// headers, so they share one duplicate set, whatever their ids.
    pub content_key: [u8; 32],
}

/// See `Job::content_key`. Variable-length fields are length-prefixed, so no two
/// different templates run together into the same bytes.
fn content_key(template: &JobTemplate) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(
        64 + template.coinbase_prefix.len()
            + template.coinbase_suffix.len()
            + 32 * template.merkle_branch.len(),
    );
    bytes.extend_from_slice(&template.prevhash);
    for part in [&template.coinbase_prefix, &template.coinbase_suffix] {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    bytes.extend_from_slice(&(template.merkle_branch.len() as u64).to_le_bytes());
    for hash in &template.merkle_branch {
        bytes.extend_from_slice(&hash.0);
    }
    bytes.extend_from_slice(&template.bits.to_le_bytes());
    otedama_kernels::sha256d(&bytes)
}

/// Why a job template cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("bits {0:#010x} is not a valid compact target")]
    BadBits(u32),
}

impl Job {
    pub fn new(template: JobTemplate) -> Result<Self, JobError> {
        let network_target =
            Target::from_compact(template.bits).map_err(|_| JobError::BadBits(template.bits))?;
        let notify_line = crate::sv1::notify_line(&template, template.clean_jobs).into();
        let content_key = content_key(&template);
        let algorithm: Algorithm = template.algorithm.into();
        Ok(Job {
            content_key,
            algorithm,
            network_difficulty: network_target.to_difficulty(algorithm),
            coinbase_prefix_midstate: Midstate::new(&template.coinbase_prefix),
            merkle_branch: template.merkle_branch.iter().map(|h| h.0).collect(),
            network_target,
            notify_line,
            template,
        })
    }

    pub fn job_id(&self) -> u64 {
        self.template.job_id
    }

    /// The target a share of this job held to `difficulty` must meet
    /// (`work::share_target_within_network`).
    pub fn share_target(&self, difficulty: f64) -> Target {
        crate::work::share_target_within_network(
            self.algorithm,
            difficulty,
            Some((self.network_difficulty, self.network_target)),
        )
    }

    /// Full coinbase (without witness) for the given extranonces.
    pub fn coinbase(&self, extranonce1: &[u8], extranonce2: &[u8]) -> Vec<u8> {
        let t = &self.template;
        let mut out = Vec::with_capacity(
            t.coinbase_prefix.len()
                + extranonce1.len()
                + extranonce2.len()
                + t.coinbase_suffix.len(),
        );
        out.extend_from_slice(&t.coinbase_prefix);
        out.extend_from_slice(extranonce1);
        out.extend_from_slice(extranonce2);
        out.extend_from_slice(&t.coinbase_suffix);
        out
    }
}

/// How a job id submitted by a miner resolves.
#[derive(Debug)]
pub enum JobLookup<'a> {
    Current(&'a Arc<Job>),
    /// Known, but a newer block has made it worthless.
    Stale,
    Unknown,
}

/// The live jobs on one core: the newest jobs since the last new block, plus the ids of
/// recently replaced ones so that late shares are told "stale" rather than "unknown".
#[derive(Debug, Default)]
pub struct JobBook {
    live: Vec<Arc<Job>>,
    stale_ids: Vec<u64>,
}

impl JobBook {
    /// Adds a job. A clean job retires every earlier one. Returns the ids that retired, so
    /// duplicate filters can drop them.
    pub fn insert(&mut self, job: Arc<Job>) -> Vec<u64> {
        let mut retired = Vec::new();
        if job.template.clean_jobs {
            retired.extend(self.live.drain(..).map(|j| j.job_id()));
        } else if self.live.len() >= JOBS_REMEMBERED_MAX {
            retired.push(self.live.remove(0).job_id());
        }
        self.stale_ids.extend(retired.iter().copied());
        let overflow = self
            .stale_ids
            .len()
            .saturating_sub(STALE_JOB_IDS_REMEMBERED_MAX);
        self.stale_ids.drain(..overflow);
        self.live.push(job);
        retired
    }

    pub fn lookup(&self, job_id: u64) -> JobLookup<'_> {
        if let Some(job) = self.live.iter().rev().find(|j| j.job_id() == job_id) {
            JobLookup::Current(job)
        } else if self.stale_ids.contains(&job_id) {
            JobLookup::Stale
        } else {
            JobLookup::Unknown
        }
    }

    /// The full id of a live or recently retired job whose low 32 bits are
    /// `job_id_low32`: Stratum V2 carries job ids as U32.
    pub fn full_id_of_low32(&self, job_id_low32: u32) -> Option<u64> {
        self.live
            .iter()
            .rev()
            .map(|job| job.job_id())
            .chain(self.stale_ids.iter().rev().copied())
            .find(|id| *id as u32 == job_id_low32)
    }

    pub fn newest(&self) -> Option<&Arc<Job>> {
        self.live.last()
    }

    /// Whether a live job has this `Job::content_key`.
    pub fn holds_content(&self, content_key: &[u8; 32]) -> bool {
        self.live.iter().any(|job| &job.content_key == content_key)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn template(job_id: u64, clean_jobs: bool) -> JobTemplate {
        JobTemplate {
            job_id,
            height: 200,
            prevhash: [7; 32],
            coinbase_prefix: hex::decode("01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff1302c800").unwrap(),
            coinbase_suffix: hex::decode("ffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000").unwrap(),
            merkle_branch: vec![HexHash([1; 32])],
            version: 0x2000_0000,
            bits: 0x207fffff,
            ntime: 1_700_000_000,
            clean_jobs,
            algorithm: AlgorithmName::Scrypt,
        }
    }

    /// Every header field the miner does not choose is in the content key; the job id,
    /// ntime and version (which the miner may set or roll) are not.
    #[test]
    fn the_content_key_covers_what_the_header_commits_to_besides_the_miner() {
        let key = |template: JobTemplate| Job::new(template).unwrap().content_key;
        let base = key(template(1, true));
        let changed: [fn(&mut JobTemplate); 5] = [
            |t| t.prevhash[0] ^= 1,
            |t| t.coinbase_prefix.push(0),
            |t| t.coinbase_suffix[0] ^= 1,
            |t| t.merkle_branch.push(HexHash([9; 32])),
            |t| t.bits -= 1,
        ];
        for change in changed {
            let mut other = template(1, true);
            change(&mut other);
            assert_ne!(key(other), base);
        }
        let mut same = template(2, false);
        same.ntime += 600;
        same.version ^= 0x2000;
        assert_eq!(key(same), base);
    }

    #[test]
    fn clean_job_retires_the_rest_and_they_read_as_stale() {
        let mut book = JobBook::default();
        book.insert(Arc::new(Job::new(template(1, true)).unwrap()));
        book.insert(Arc::new(Job::new(template(2, false)).unwrap()));
        let retired = book.insert(Arc::new(Job::new(template(3, true)).unwrap()));
        assert_eq!(retired, vec![1, 2]);
        assert!(matches!(book.lookup(2), JobLookup::Stale));
        assert!(matches!(book.lookup(3), JobLookup::Current(_)));
        assert!(matches!(book.lookup(99), JobLookup::Unknown));
    }

    #[test]
    fn live_jobs_are_capped_at_jobs_remembered_max() {
        let mut book = JobBook::default();
        for id in 0..(JOBS_REMEMBERED_MAX as u64 + 1) {
            book.insert(Arc::new(Job::new(template(id, id == 0)).unwrap()));
        }
        assert!(matches!(book.lookup(0), JobLookup::Stale));
        assert!(matches!(book.lookup(1), JobLookup::Current(_)));
    }

    /// Replaced ids are remembered up to `STALE_JOB_IDS_REMEMBERED_MAX`: at the limit the
    /// oldest still reads stale, one more retired job makes it unknown.
    #[test]
    fn stale_ids_hold_their_limit() {
        let mut book = JobBook::default();
        let mut next_id = 0u64;
        let mut clean = |book: &mut JobBook| {
            next_id += 1;
            book.insert(Arc::new(Job::new(template(next_id, true)).unwrap()));
        };
        // Each clean job retires the one before it: ids 1..=N are stale, N+1 is live.
        for _ in 0..=STALE_JOB_IDS_REMEMBERED_MAX {
            clean(&mut book);
        }
        assert_eq!(book.stale_ids.len(), STALE_JOB_IDS_REMEMBERED_MAX);
        assert!(matches!(book.lookup(1), JobLookup::Stale));
        clean(&mut book);
        assert_eq!(book.stale_ids.len(), STALE_JOB_IDS_REMEMBERED_MAX);
        assert!(matches!(book.lookup(1), JobLookup::Unknown));
        assert!(matches!(book.lookup(2), JobLookup::Stale));
    }

    #[test]
    fn bad_bits_are_refused() {
        let mut bad = template(1, true);
        bad.bits = 0x04923456;
        assert_eq!(Job::new(bad).unwrap_err(), JobError::BadBits(0x04923456));
    }
}
