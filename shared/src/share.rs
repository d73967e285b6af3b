//! Share validation (pure), the record the share log keeps, and the duplicate filter.
//!
//! Validation rebuilds the coinbase from the job's midstate, folds it up the merkle branch,
//! hashes the 80-byte header with the job's algorithm and compares it with the share and
//! network targets. It is the same for every protocol front end.

use std::collections::{HashMap, HashSet};

use otedama_kernels::merkle::merkle_roots_from_branches_x2;
use otedama_kernels::scrypt::scrypt_pow;
use otedama_kernels::sha256d::{sha256d_80, sha256d_80_x2};
use otedama_kernels::{merkle_root_from_branch, Algorithm, Target};

use crate::job::Job;

/// The miner-chosen fields of one share, already decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareSubmission<'a> {
    pub extranonce1: &'a [u8],
    pub extranonce2: &'a [u8],
    pub ntime: u32,
    pub nonce: u32,
    pub version: u32,
}

/// A share that met its target.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidShare {
    pub header: [u8; 80],
    /// SHA256d of the header, internal order: the block hash, and the duplicate key.
    pub header_hash: [u8; 32],
    /// The difficulty the proof-of-work value achieved.
    pub achieved_difficulty: f64,
    /// Whether the proof-of-work value also meets the network target.
    pub is_block: bool,
}

/// Builds the 80-byte header for a submission.
pub fn build_header(job: &Job, submission: &ShareSubmission<'_>) -> [u8; 80] {
    let merkle_root = merkle_root_from_branch(&coinbase_hash(job, submission), &job.merkle_branch);
    header_with_root(job, submission, &merkle_root)
}

fn coinbase_hash(job: &Job, submission: &ShareSubmission<'_>) -> [u8; 32] {
    job.coinbase_prefix_midstate.finish_sha256d(&[
        submission.extranonce1,
        submission.extranonce2,
        &job.template.coinbase_suffix,
    ])
}

fn header_with_root(
    job: &Job,
    submission: &ShareSubmission<'_>,
    merkle_root: &[u8; 32],
) -> [u8; 80] {
    header_from_root(
        job,
        submission.version,
        submission.ntime,
        submission.nonce,
        merkle_root,
    )
}

/// The 80-byte header for a merkle root computed earlier: a Stratum V2 standard channel's
/// root is fixed per channel and job, so its shares cost the header hash alone.
pub fn header_from_root(
    job: &Job,
    version: u32,
    ntime: u32,
    nonce: u32,
    merkle_root: &[u8; 32],
) -> [u8; 80] {
    let mut header = [0u8; 80];
    header[0..4].copy_from_slice(&version.to_le_bytes());
    header[4..36].copy_from_slice(&job.template.prevhash);
    header[36..68].copy_from_slice(merkle_root);
    header[68..72].copy_from_slice(&ntime.to_le_bytes());
    header[72..76].copy_from_slice(&job.template.bits.to_le_bytes());
    header[76..80].copy_from_slice(&nonce.to_le_bytes());
    header
}

/// The merkle root of a job for the given extranonces.
pub fn merkle_root(job: &Job, extranonce1: &[u8], extranonce2: &[u8]) -> [u8; 32] {
    let submission = ShareSubmission {
        extranonce1,
        extranonce2,
        ntime: 0,
        nonce: 0,
        version: 0,
    };
    merkle_root_from_branch(&coinbase_hash(job, &submission), &job.merkle_branch)
}

/// The proof-of-work value of a header under an algorithm.
pub fn pow_hash(algorithm: Algorithm, header: &[u8; 80], header_hash: &[u8; 32]) -> [u8; 32] {
    match algorithm {
        Algorithm::Sha256d => *header_hash,
        Algorithm::Scrypt => scrypt_pow(header),
    }
}

/// Hashes a submission and checks it against `share_target`. `Err` carries the difficulty
/// the share did reach, for the low-difficulty reply.
pub fn validate_share(
    job: &Job,
    submission: &ShareSubmission<'_>,
    share_target: &Target,
) -> Result<ValidShare, f64> {
    let header = build_header(job, submission);
    let header_hash = sha256d_80(&header);
    let pow = pow_hash(job.algorithm, &header, &header_hash);
    check_pow(job, header, header_hash, &pow, share_target)
}

/// `validate_share` for two SHA256d shares of one job, their merkle paths and headers
/// hashed as two interleaved streams (`sha_ni::compress2`). Same results as two calls.
pub fn validate_share_pair(
    job: &Job,
    submissions: [&ShareSubmission<'_>; 2],
    share_target: &Target,
) -> [Result<ValidShare, f64>; 2] {
    debug_assert_eq!(job.algorithm, Algorithm::Sha256d);
    let coinbases = submissions.map(|submission| coinbase_hash(job, submission));
    let roots = merkle_roots_from_branches_x2(
        [&coinbases[0], &coinbases[1]],
        [&job.merkle_branch, &job.merkle_branch],
    );
    let headers = [
        header_with_root(job, submissions[0], &roots[0]),
        header_with_root(job, submissions[1], &roots[1]),
    ];
    let hashes = sha256d_80_x2(&headers[0], &headers[1]);
    [0, 1].map(|i| check_pow(job, headers[i], hashes[i], &hashes[i], share_target))
}

/// The target checks on an already computed proof-of-work value: the second half of
/// `validate_share`, for callers that compute `pow` in batches (multi-lane scrypt).
pub fn check_pow(
    job: &Job,
    header: [u8; 80],
    header_hash: [u8; 32],
    pow: &[u8; 32],
    share_target: &Target,
) -> Result<ValidShare, f64> {
    let achieved_difficulty = Target::hash_difficulty(job.algorithm, pow);
    if !share_target.is_met_by(pow) {
        return Err(achieved_difficulty);
    }
    Ok(ValidShare {
        header,
        header_hash,
        achieved_difficulty,
        is_block: job.network_target.is_met_by(pow),
    })
}

/// Hashes a share's fingerprint as itself: it is already SHA256d output, so SipHash over it
/// again (the std default, 3 % of a loaded core in a profile) buys nothing. Miners cannot
/// aim those bytes without doing the work of finding them.
#[derive(Clone, Copy, Debug, Default)]
pub struct FingerprintHashBuilder;

impl std::hash::BuildHasher for FingerprintHashBuilder {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

/// See `FingerprintHashBuilder`.
#[derive(Debug)]
pub struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `u64` arrives through `write_u64`; fold anything else in 8-byte words.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Shares one core's duplicate filter remembers at most, over all live jobs. Each costs
/// about 9 bytes of table (a 64-bit fingerprint and a control byte) and up to twice that
/// while the table grows, so the filter stays under about 75 MB per core. At the bound the
/// oldest job content's shares are forgotten first, and that content's jobs are stale from
/// then on (`Claim::Forgotten`): so a flood only ages jobs out early. Only one content
/// alone at the bound refuses new shares (`Claim::Full`): at 3,000 shares/s on one core
/// that is 23 minutes of one job, and more than a core validates between two template
/// refreshes at any rate.
pub const DUPLICATE_FILTER_SHARES_PER_CORE_MAX: usize = 1 << 22;

/// The filter's answer to a share arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time seen: the share may go on to its proof of work.
    Taken,
    /// The same share was taken before (or waits for its hash now).
    Duplicate,
    /// The filter is at `DUPLICATE_FILTER_SHARES_PER_CORE_MAX` with this job content's
    /// shares alone, and cannot tell: refused.
    Full,
    /// This job content's shares were forgotten to make room for a newer one's: its jobs
    /// are stale (a duplicate could no longer be told from a new share).
    Forgotten,
}

/// Remembers the shares taken, grouped by their job's content (`Job::content_key`). The
/// header commits to the job's content and the miner's fields, so equal header hashes
/// mean the same share, whatever job id it came under. Grouping by content, not by job
/// id, is what keeps a job re-sent under the same id (after a control-plane reconnect,
/// with `clean_jobs`) from forgetting the shares already taken for it; a set is dropped
/// once no live job has its content, when its shares are stale.
///
/// A share is kept as its fingerprint, the first 64 bits of its header hash. Equal shares
/// always have equal fingerprints, so a duplicate is never let through; two different
/// shares share one with odds of about 2^-64 per pair (the hash is SHA256d, which no one
/// can aim), and then the later one is refused, which costs its miner one share and
/// gives no one anything.
///
/// A share is claimed here when it arrives, before its proof of work is computed (which
/// for scrypt happens later, in a batch), and released if that fails: a copy sent while
/// the first waits is refused at once, and one still waiting when a new block drops the
/// set cannot start a fresh set for it.
///
/// Each core owns one; extranonce1 values are partitioned per core, so a share can only
/// ever collide with one accepted on the same core, and no cross-core lookup is needed.
///
/// Invariant: `len() <= shares_max`, and a share is never let in unchecked: a content
/// whose shares were forgotten takes no share again (`Forgotten`) until its jobs retire.
#[derive(Debug)]
pub struct DuplicateFilter {
    by_content: HashMap<[u8; 32], HashSet<u64, FingerprintHashBuilder>>,
    /// The contents of `by_content`, oldest first.
    order: std::collections::VecDeque<[u8; 32]>,
    /// Contents whose shares were forgotten at the bound.
    forgotten: HashSet<[u8; 32]>,
    shares: usize,
    shares_max: usize,
    refused_full: u64,
}

impl Default for DuplicateFilter {
    fn default() -> Self {
        DuplicateFilter::with_shares_max(DUPLICATE_FILTER_SHARES_PER_CORE_MAX)
    }
}

/// The fingerprint a share is remembered by.
fn fingerprint(header_hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(header_hash[..8].try_into().expect("8 bytes"))
}

impl DuplicateFilter {
    pub fn with_shares_max(shares_max: usize) -> Self {
        DuplicateFilter {
            by_content: HashMap::new(),
            order: Default::default(),
            forgotten: HashSet::new(),
            shares: 0,
            shares_max,
            refused_full: 0,
        }
    }

    /// Claims the share for its job's content.
    pub fn insert(&mut self, content_key: &[u8; 32], header_hash: [u8; 32]) -> Claim {
        if self.forgotten.contains(content_key) {
            self.refused_full += 1;
            return Claim::Forgotten;
        }
        let fingerprint = fingerprint(&header_hash);
        if self
            .by_content
            .get(content_key)
            .is_some_and(|set| set.contains(&fingerprint))
        {
            return Claim::Duplicate;
        }
        while self.shares >= self.shares_max {
            // Forget the oldest other content; its jobs are stale from now on.
            let Some(place) = self.order.iter().position(|c| c != content_key) else {
                self.refused_full += 1;
                return Claim::Full;
            };
            let oldest = self.order.remove(place).expect("position is in range");
            if let Some(set) = self.by_content.remove(&oldest) {
                self.shares -= set.len();
            }
            self.forgotten.insert(oldest);
        }
        let set = self.by_content.entry(*content_key).or_insert_with(|| {
            self.order.push_back(*content_key);
            HashSet::default()
        });
        set.insert(fingerprint);
        self.shares += 1;
        debug_assert!(self.shares <= self.shares_max);
        Claim::Taken
    }

    /// Forgets a share whose claim did not hold (its proof of work fell short). Only a
    /// share that was `Taken` may be given back, so this never frees another's claim.
    pub fn remove(&mut self, content_key: &[u8; 32], header_hash: &[u8; 32]) {
        if let Some(set) = self.by_content.get_mut(content_key) {
            if set.remove(&fingerprint(header_hash)) {
                self.shares -= 1;
            }
        }
    }

    /// Forgets the shares of contents no live job in `jobs` has: they can only be stale.
    pub fn retire_unlisted(&mut self, jobs: &crate::job::JobBook) {
        self.by_content
            .retain(|content_key, _| jobs.holds_content(content_key));
        self.order
            .retain(|content_key| jobs.holds_content(content_key));
        self.forgotten
            .retain(|content_key| jobs.holds_content(content_key));
        self.shares = self.by_content.values().map(HashSet::len).sum();
    }

    pub fn len(&self) -> usize {
        self.shares
    }

    pub fn is_empty(&self) -> bool {
        self.shares == 0
    }

    /// Shares refused because of the filter's bound (`Full`, `Forgotten`) since the last
    /// call.
    pub fn take_refused_full(&mut self) -> u64 {
        std::mem::take(&mut self.refused_full)
    }
}

/// One accepted share as the share log stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareRecord {
    /// When the share log's writer wrote the record (the session's time is replaced then,
    /// `ShareRecord::stamp_encoded`). Invariant: never decreases along one log, so a
    /// log's order and its time order are the same, and rounds can be cut across several
    /// logs by (time, process, sequence) with the share log's clock as the barrier.
    pub accepted_at_ms: u64,
    pub job_id: u64,
    pub height: u64,
    pub worker: String,
    pub difficulty: f64,
    pub achieved_difficulty: f64,
    pub is_block: bool,
    pub header: [u8; 80],
    pub extranonce1: Vec<u8>,
    pub extranonce2: Vec<u8>,
}

/// Why stored share bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("share record is truncated or malformed at byte {0}")]
pub struct ShareDecodeError(pub usize);

const SHARE_RECORD_VERSION: u8 = 1;
// A record's variable fields carry a one-byte length: each must fit it.
const _: () = assert!(crate::limits::WORKER_NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(crate::limits::EXTRANONCE1_BYTES <= u8::MAX as usize);
const _: () = assert!(crate::limits::EXTRANONCE2_BYTES <= u8::MAX as usize);
/// Where `accepted_at_ms` sits in an encoded record: right after the version byte.
const ACCEPTED_AT_OFFSET: usize = 1;

impl ShareRecord {
    /// A compact, versioned binary form: fixed fields first, then length-prefixed ones.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.worker.len());
        out.push(SHARE_RECORD_VERSION);
        out.extend_from_slice(&self.accepted_at_ms.to_le_bytes());
        out.extend_from_slice(&self.job_id.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.difficulty.to_le_bytes());
        out.extend_from_slice(&self.achieved_difficulty.to_le_bytes());
        out.push(self.is_block as u8);
        out.extend_from_slice(&self.header);
        for field in [
            self.extranonce1.as_slice(),
            self.extranonce2.as_slice(),
            self.worker.as_bytes(),
        ] {
            out.push(u8::try_from(field.len()).expect("fields are bounded by named limits"));
            out.extend_from_slice(field);
        }
        out
    }

    /// Replaces `accepted_at_ms` in an encoded record (the share-log writer's stamp).
    pub fn stamp_encoded(encoded: &mut [u8], accepted_at_ms: u64) {
        encoded[ACCEPTED_AT_OFFSET..ACCEPTED_AT_OFFSET + 8]
            .copy_from_slice(&accepted_at_ms.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ShareDecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(1)?[0] != SHARE_RECORD_VERSION {
            return Err(ShareDecodeError(0));
        }
        let accepted_at_ms = reader.u64()?;
        let job_id = reader.u64()?;
        let height = reader.u64()?;
        let difficulty = f64::from_bits(reader.u64()?);
        let achieved_difficulty = f64::from_bits(reader.u64()?);
        let is_block = reader.take(1)?[0] != 0;
        let header: [u8; 80] = reader.take(80)?.try_into().expect("80 bytes");
        let extranonce1 = reader.prefixed()?.to_vec();
        let extranonce2 = reader.prefixed()?.to_vec();
        let at = reader.at;
        let worker =
            String::from_utf8(reader.prefixed()?.to_vec()).map_err(|_| ShareDecodeError(at))?;
        Ok(ShareRecord {
            accepted_at_ms,
            job_id,
            height,
            worker,
            difficulty,
            achieved_difficulty,
            is_block,
            header,
            extranonce1,
            extranonce2,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], ShareDecodeError> {
        let end = self
            .at
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(ShareDecodeError(self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u64(&mut self) -> Result<u64, ShareDecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn prefixed(&mut self) -> Result<&'a [u8], ShareDecodeError> {
        let len = self.take(1)?[0] as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ShareRecord {
        ShareRecord {
            accepted_at_ms: 1_700_000_000_123,
            job_id: 42,
            height: 431,
            worker: "rltc1qexample.rig1".into(),
            difficulty: 0.001,
            achieved_difficulty: 3.5,
            is_block: true,
            header: [9; 80],
            extranonce1: vec![0, 1, 2, 3],
            extranonce2: vec![4, 5, 6, 7],
        }
    }

    #[test]
    fn paired_validation_matches_single_validation() {
        use crate::job::{AlgorithmName, HexHash, JobTemplate};
        let job = Job::new(JobTemplate {
            job_id: 1,
            height: 800_000,
            prevhash: [3; 32],
            coinbase_prefix: vec![0x11; 64],
            coinbase_suffix: vec![0x22; 90],
            merkle_branch: (0..12).map(|i| HexHash([i as u8; 32])).collect(),
            version: 0x2000_0000,
            bits: 0x1d00_ffff,
            ntime: 1_700_000_000,
            clean_jobs: true,
            algorithm: AlgorithmName::Sha256d,
        })
        .unwrap();
        // Difficulty 2^-24: some nonces pass, most fail, so both outcomes are compared.
        let target = Target::from_difficulty(Algorithm::Sha256d, 1.0 / 16_777_216.0).unwrap();
        let (mut passed, mut failed) = (0, 0);
        for nonce in 0..400u32 {
            let submissions = [nonce * 2, nonce * 2 + 1].map(|nonce| ShareSubmission {
                extranonce1: &[1, 2, 3, 4],
                extranonce2: &[5, 6, 7, 8],
                ntime: 1_700_000_000,
                nonce,
                version: 0x2000_0000,
            });
            let paired = validate_share_pair(&job, [&submissions[0], &submissions[1]], &target);
            for (pair_result, submission) in paired.iter().zip(&submissions) {
                let single = validate_share(&job, submission, &target);
                assert_eq!(*pair_result, single);
                if single.is_ok() {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        assert!(passed > 0 && failed > 0, "{passed} passed, {failed} failed");
    }

    #[test]
    fn record_round_trips() {
        let bytes = record().encode();
        assert_eq!(ShareRecord::decode(&bytes).unwrap(), record());
    }

    #[test]
    fn the_writer_stamp_replaces_only_the_time() {
        let mut bytes = record().encode();
        ShareRecord::stamp_encoded(&mut bytes, 1_800_000_000_456);
        let mut expected = record();
        expected.accepted_at_ms = 1_800_000_000_456;
        assert_eq!(ShareRecord::decode(&bytes).unwrap(), expected);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = record().encode();
        for cut in 0..bytes.len() {
            assert!(ShareRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn duplicate_filter_keys_on_job_content_and_hash() {
        let mut filter = DuplicateFilter::default();
        let mut book = crate::job::JobBook::default();
        let job = std::sync::Arc::new(Job::new(crate::job::tests::template(5, true)).unwrap());
        let live = job.content_key;
        assert_eq!(filter.insert(&[1; 32], [1; 32]), Claim::Taken);
        assert_eq!(filter.insert(&[1; 32], [1; 32]), Claim::Duplicate);
        assert_eq!(filter.insert(&live, [1; 32]), Claim::Taken);
        book.insert(job.clone());
        filter.retire_unlisted(&book);
        assert_eq!(filter.len(), 1);
        assert_eq!(filter.insert(&live, [1; 32]), Claim::Duplicate);
        filter.remove(&live, &[1; 32]);
        assert_eq!(filter.insert(&live, [1; 32]), Claim::Taken);
        // The same content under another id and a later ntime shares the set.
        let mut again = crate::job::tests::template(6, true);
        again.ntime += 60;
        assert_eq!(Job::new(again).unwrap().content_key, live);
    }

    /// Each core's filter is bounded by `DUPLICATE_FILTER_SHARES_PER_CORE_MAX`; the
    /// behaviour at a bound is tested below with a small one.
    #[test]
    fn the_core_filter_takes_its_named_bound() {
        assert_eq!(
            DuplicateFilter::default().shares_max,
            DUPLICATE_FILTER_SHARES_PER_CORE_MAX
        );
    }

    #[test]
    fn a_full_filter_refuses_new_shares_and_still_knows_the_old() {
        let mut filter = DuplicateFilter::with_shares_max(3);
        let hash = |n: u8| {
            let mut hash = [0u8; 32];
            hash[0] = n;
            hash
        };
        for n in 0..3 {
            assert_eq!(filter.insert(&[1; 32], hash(n)), Claim::Taken);
        }
        assert_eq!(filter.len(), 3);
        // At the bound with one content alone: a new share is refused and counted, a known
        // one is still a duplicate.
        assert_eq!(filter.insert(&[1; 32], hash(9)), Claim::Full);
        assert_eq!(filter.insert(&[1; 32], hash(1)), Claim::Duplicate);
        assert_eq!(filter.take_refused_full(), 1);
        assert_eq!(filter.take_refused_full(), 0);
        // A refused claim left nothing behind to give back; a failed one frees its place.
        filter.remove(&[1; 32], &hash(9));
        assert_eq!(filter.len(), 3);
        filter.remove(&[1; 32], &hash(2));
        assert_eq!(filter.insert(&[1; 32], hash(9)), Claim::Taken);
        // A newer content at the bound: the oldest content is forgotten, and its shares
        // are refused from then on (never let in unchecked, even a copy of an old one).
        assert_eq!(filter.insert(&[2; 32], hash(5)), Claim::Taken);
        assert_eq!(filter.len(), 1);
        assert_eq!(filter.insert(&[1; 32], hash(1)), Claim::Forgotten);
        assert_eq!(filter.insert(&[1; 32], hash(7)), Claim::Forgotten);
        assert_eq!(filter.take_refused_full(), 2);
        assert_eq!(filter.insert(&[2; 32], hash(5)), Claim::Duplicate);
        // Retiring every content empties it and forgets what was forgotten.
        filter.retire_unlisted(&crate::job::JobBook::default());
        assert!(filter.is_empty());
        assert_eq!(filter.insert(&[1; 32], hash(1)), Claim::Taken);
    }
}
