//! Share validation (pure), the record the share log keeps, and the duplicate filter.
//!
//! Validation rebuilds the coinbase from the job's midstate, folds it up the merkle branch,
//! hashes the 80-byte header with the job's algorithm and compares it with the share and
//! network targets. It is the same for every protocol front end.

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

/// `build_header` for two shares, of one job or two, their merkle branches folded as two
/// interleaved streams. Branches of different depths (jobs of two templates) are folded
/// one at a time.
pub fn build_headers_x2(jobs: [&Job; 2], submissions: [&ShareSubmission<'_>; 2]) -> [[u8; 80]; 2] {
    if jobs[0].merkle_branch.len() != jobs[1].merkle_branch.len() {
        return [0, 1].map(|i| build_header(jobs[i], submissions[i]));
    }
    let coinbases = [0, 1].map(|i| coinbase_hash(jobs[i], submissions[i]));
    let roots = merkle_roots_from_branches_x2(
        [&coinbases[0], &coinbases[1]],
        [&jobs[0].merkle_branch, &jobs[1].merkle_branch],
    );
    [0, 1].map(|i| header_with_root(jobs[i], submissions[i], &roots[i]))
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
    let headers = build_headers_x2([job, job], submissions);
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

pub use crate::duplicates::{Claim, DuplicateFilter, DUPLICATE_FILTER_SHARES_PER_CORE_MAX};

/// A share that also met the network target: everything the control plane needs, with
/// the template it kept, to assemble and submit the block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockCandidate {
    pub job_id: u64,
    pub height: u64,
    #[serde(with = "hex::serde")]
    pub header: Vec<u8>,
    /// The coinbase without its witness, exactly as hashed into the merkle root.
    #[serde(with = "hex::serde")]
    pub coinbase: Vec<u8>,
    pub worker: String,
    /// When the data plane accepted the block's share (`ShareRecord::accepted_at_ms`): the
    /// block's round ends there, however long its submission takes. 0 from a data plane
    /// older than this field.
    #[serde(default)]
    pub found_at_ms: u64,
}

/// A block from a share that earns nothing: its hash missed the share target but met the
/// network's (`work::Rejection::BlockBelowShareTarget`), or its Stratum V2 channel closed
/// while it was hashed. The block goes up, and its record, credited at difficulty 0, goes
/// to the share log, so that a candidate lost on the way is found there again like any
/// other block.
#[derive(Debug, PartialEq)]
pub struct UncreditedBlock {
    pub record: ShareRecord,
    pub block: BlockCandidate,
}

impl UncreditedBlock {
    /// The record and candidate of a block found on `job` with this header and proof of
    /// work, at `now_s`.
    pub fn new(
        job: &Job,
        header: [u8; 80],
        pow: &[u8; 32],
        worker: String,
        (extranonce1, extranonce2): (&[u8], &[u8]),
        now_s: u64,
    ) -> Self {
        UncreditedBlock {
            block: BlockCandidate {
                job_id: job.job_id(),
                height: job.template.height,
                header: header.to_vec(),
                coinbase: job.coinbase(extranonce1, extranonce2),
                worker: worker.clone(),
                found_at_ms: now_s * 1000,
            },
            record: ShareRecord {
                accepted_at_ms: now_s * 1000,
                job_id: job.job_id(),
                height: job.template.height,
                worker,
                difficulty: 0.0,
                achieved_difficulty: Target::hash_difficulty(job.algorithm, pow),
                is_block: true,
                header,
                extranonce1: extranonce1.to_vec(),
                extranonce2: extranonce2.to_vec(),
                // The front end's glue knows which one it is.
                protocol: None,
            },
        }
    }
}

/// Which front end a share came in through: Stratum V1, Stratum V2 over TCP with Noise,
/// or Stratum V2 over QUIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    V1,
    V2,
    Quic,
    /// Monero's Stratum dialect (`monero::stratum`). Its records have their own form
    /// (`ShareRecord::monero`).
    Monero,
}

impl Protocol {
    /// The name the API, the metrics and the page use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V1 => "v1",
            Protocol::V2 => "v2",
            Protocol::Quic => "quic",
            Protocol::Monero => "monero",
        }
    }

    /// Its byte in a share record. 0 is kept for "unknown": a field added after this one
    /// must write it, so that this byte is always present before the new field.
    fn code(self) -> u8 {
        match self {
            Protocol::V1 => 1,
            Protocol::V2 => 2,
            Protocol::Quic => 3,
            Protocol::Monero => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Protocol::V1),
            2 => Some(Protocol::V2),
            3 => Some(Protocol::Quic),
            4 => Some(Protocol::Monero),
            _ => None,
        }
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
    /// The front end the share came through; `None` in records written before the field
    /// was, or by a later writer with a front end this one does not know. It describes the
    /// share and never changes what it earns.
    pub protocol: Option<Protocol>,
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
    /// A compact, versioned binary form: fixed fields first, then length-prefixed ones,
    /// then optional trailing fields. A reader takes the trailing fields it knows and
    /// ignores any after them, so a writer may add one at the end without a new version,
    /// and old and new binaries read each other's logs during an upgrade.
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
        if let Some(protocol) = self.protocol {
            out.push(protocol.code());
        }
        out
    }

    /// The same share in both: every field equal but the front end, which one of them may
    /// lack (written, or decoded and encoded again on its way, by a binary from before the
    /// field). What a check of a copy against its original must compare.
    pub fn same_share(&self, other: &ShareRecord) -> bool {
        let protocols_agree = match (self.protocol, other.protocol) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        };
        protocols_agree
            && ShareRecord {
                protocol: None,
                ..self.clone()
            } == ShareRecord {
                protocol: None,
                ..other.clone()
            }
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
        let protocol = reader.optional_byte().and_then(Protocol::from_code);
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
            protocol,
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
    /// A trailing field's byte, if the record has one.
    fn optional_byte(&mut self) -> Option<u8> {
        self.take(1).ok().map(|byte| byte[0])
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
            protocol: Some(Protocol::Quic),
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
        // The last byte is the optional protocol: without it the record is an older one.
        let required = bytes.len() - 1;
        for cut in 0..required {
            assert!(ShareRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let older = ShareRecord::decode(&bytes[..required]).unwrap();
        assert_eq!(older.protocol, None);
        assert_eq!(
            older,
            ShareRecord {
                protocol: None,
                ..record()
            }
        );
    }

    #[test]
    fn every_protocol_round_trips_and_later_fields_are_ignored() {
        for protocol in [
            None,
            Some(Protocol::V1),
            Some(Protocol::V2),
            Some(Protocol::Quic),
        ] {
            let record = ShareRecord {
                protocol,
                ..record()
            };
            assert_eq!(ShareRecord::decode(&record.encode()).unwrap(), record);
        }
        // A later writer's front end this reader does not know, and a field after it.
        let mut bytes = ShareRecord {
            protocol: None,
            ..record()
        }
        .encode();
        bytes.extend_from_slice(&[200, 7, 7]);
        assert_eq!(ShareRecord::decode(&bytes).unwrap().protocol, None);
        let mut bytes = record().encode();
        bytes.push(9);
        assert_eq!(ShareRecord::decode(&bytes).unwrap(), record());
    }

    /// A copy that lost the front end (an older binary passed it on) is the same share; one
    /// that differs in anything else, or names another front end, is not.
    #[test]
    fn the_same_share_whatever_a_copy_kept_of_its_front_end() {
        let older_copy = ShareRecord {
            protocol: None,
            ..record()
        };
        assert!(record().same_share(&older_copy));
        assert!(older_copy.same_share(&record()));
        let other_front_end = ShareRecord {
            protocol: Some(Protocol::V1),
            ..record()
        };
        assert!(!record().same_share(&other_front_end));
        let other_nonce = ShareRecord {
            extranonce2: vec![9],
            ..older_copy.clone()
        };
        assert!(!record().same_share(&other_nonce));
    }
}
