//! The batch hasher, sans-IO: shares that wait for their proof of work
//! (`Outcome::NeedsPow` of either protocol) are hashed several at once. Scrypt goes
//! through as many lanes as the CPU has (`scrypt_lanes()`), SHA256d in pairs: two shares'
//! merkle branches and headers as two interleaved SHA-NI streams, which is what lets one
//! core reach the paired kernel's rate when two or more shares are ready on it. The data
//! plane's hasher task and the benchmarks call the same `hash_batch`.

use otedama_kernels::scrypt::{scrypt_lanes, scrypt_pow, scrypt_pow_many, SCRYPT_LANES_MAX};
use otedama_kernels::sha256d::{sha256d_80, sha256d_80_x2};

use crate::duplicates::DuplicateFilter;
use crate::job::Job;
use crate::share::{build_header, build_headers_x2, ShareSubmission};

/// The most extranonce bytes, extranonce1 and extranonce2 together, a share waiting for
/// its hash keeps (`OwnedSubmission`): twice the 4 + 4 the pool hands out.
pub const WAITING_EXTRANONCE_BYTES_MAX: usize = 16;

/// A `ShareSubmission` that owns its bytes, so a share can wait for the hasher while its
/// session moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedSubmission {
    extranonces: [u8; WAITING_EXTRANONCE_BYTES_MAX],
    extranonce1_len: u8,
    extranonce2_len: u8,
    pub ntime: u32,
    pub nonce: u32,
    pub version: u32,
}

impl OwnedSubmission {
    /// `None` if the extranonces together exceed `WAITING_EXTRANONCE_BYTES_MAX`.
    pub fn new(submission: &ShareSubmission<'_>) -> Option<Self> {
        let (one, two) = (submission.extranonce1, submission.extranonce2);
        if one.len() + two.len() > WAITING_EXTRANONCE_BYTES_MAX {
            return None;
        }
        let mut extranonces = [0u8; WAITING_EXTRANONCE_BYTES_MAX];
        extranonces[..one.len()].copy_from_slice(one);
        extranonces[one.len()..one.len() + two.len()].copy_from_slice(two);
        Some(OwnedSubmission {
            extranonces,
            extranonce1_len: one.len() as u8,
            extranonce2_len: two.len() as u8,
            ntime: submission.ntime,
            nonce: submission.nonce,
            version: submission.version,
        })
    }

    pub fn extranonce1(&self) -> &[u8] {
        &self.extranonces[..usize::from(self.extranonce1_len)]
    }

    pub fn extranonce2(&self) -> &[u8] {
        let start = usize::from(self.extranonce1_len);
        &self.extranonces[start..start + usize::from(self.extranonce2_len)]
    }

    pub fn get(&self) -> ShareSubmission<'_> {
        ShareSubmission {
            extranonce1: self.extranonce1(),
            extranonce2: self.extranonce2(),
            ntime: self.ntime,
            nonce: self.nonce,
            version: self.version,
        }
    }
}

/// What one waiting share needs hashed.
#[derive(Clone, Copy, Debug)]
pub enum PowInput<'a> {
    /// A scrypt share: its header and the header's SHA256d are known (the share was
    /// claimed in the duplicate filter with it, so a copy never costs a scrypt); the scrypt
    /// of the header is what is missing.
    Scrypt {
        header: &'a [u8; 80],
        header_hash: &'a [u8; 32],
    },
    /// A SHA256d share: coinbase, merkle root, header and its hash are all to be computed,
    /// and the hash is the proof of work.
    Sha256d {
        job: &'a Job,
        submission: ShareSubmission<'a>,
    },
}

/// A share's header, the header's SHA256d, and its proof-of-work value (the SHA256d again
/// for a SHA256d share).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashedShare {
    pub header: [u8; 80],
    pub header_hash: [u8; 32],
    pub pow: [u8; 32],
}

impl HashedShare {
    const EMPTY: HashedShare = HashedShare {
        header: [0; 80],
        header_hash: [0; 32],
        pow: [0; 32],
    };

    fn sha256d(header: [u8; 80], header_hash: [u8; 32]) -> Self {
        HashedShare {
            header,
            header_hash,
            pow: header_hash,
        }
    }
}

/// Hashes every input: `hashed[i]` belongs to `inputs[i]` (`hashed` is replaced). Scrypt
/// shares go `scrypt_lanes()` at a time (a lone one through the one-lane kernel, cheaper
/// than a mostly empty multi-lane pass), SHA256d shares two at a time in input order; an
/// odd one out is hashed alone.
///
/// With `claims_in`, each SHA256d share's duplicate-filter slot is asked of the CPU as
/// soon as its hash is known (`DuplicateFilter::prefetch`): at a core's share rate the
/// filter is far larger than the cache, and a slot asked for while the rest of the batch
/// hashes is there when the share is claimed. Asked for only after the whole batch, the
/// first claims still waited for memory (BENCHMARKS.md, issue 19).
pub fn hash_batch(
    inputs: &[PowInput<'_>],
    hashed: &mut Vec<HashedShare>,
    claims_in: Option<&DuplicateFilter>,
) {
    let prefetch = |job: &Job, hashed: &HashedShare| {
        if let Some(duplicates) = claims_in {
            duplicates.prefetch(&job.content_key, &hashed.header_hash);
        }
    };
    hashed.clear();
    hashed.resize(inputs.len(), HashedShare::EMPTY);
    // Made on the first scrypt share: its buffers are a kilobyte and a half to clear.
    let mut scrypt: Option<ScryptLanes> = None;
    let mut waiting_sha256d: Option<(usize, &Job, &ShareSubmission<'_>)> = None;
    for (index, input) in inputs.iter().enumerate() {
        match input {
            PowInput::Scrypt {
                header,
                header_hash,
            } => {
                hashed[index].header = **header;
                hashed[index].header_hash = **header_hash;
                scrypt
                    .get_or_insert_with(ScryptLanes::new)
                    .push(index, header, hashed);
            }
            PowInput::Sha256d { job, submission } => match waiting_sha256d.take() {
                None => waiting_sha256d = Some((index, job, submission)),
                Some((first, first_job, first_submission)) => {
                    let headers =
                        build_headers_x2([first_job, job], [first_submission, submission]);
                    let hashes = sha256d_80_x2(&headers[0], &headers[1]);
                    hashed[first] = HashedShare::sha256d(headers[0], hashes[0]);
                    hashed[index] = HashedShare::sha256d(headers[1], hashes[1]);
                    prefetch(first_job, &hashed[first]);
                    prefetch(job, &hashed[index]);
                }
            },
        }
    }
    if let Some((index, job, submission)) = waiting_sha256d {
        let header = build_header(job, submission);
        hashed[index] = HashedShare::sha256d(header, sha256d_80(&header));
        prefetch(job, &hashed[index]);
    }
    if let Some(mut scrypt) = scrypt {
        scrypt.finish(hashed);
    }
}

/// Scrypt headers gathered until the widest kernel's lanes are full.
struct ScryptLanes {
    lanes: usize,
    indices: [usize; SCRYPT_LANES_MAX],
    headers: [[u8; 80]; SCRYPT_LANES_MAX],
    count: usize,
}

impl ScryptLanes {
    fn new() -> Self {
        ScryptLanes {
            lanes: scrypt_lanes().min(SCRYPT_LANES_MAX),
            indices: [0; SCRYPT_LANES_MAX],
            headers: [[0; 80]; SCRYPT_LANES_MAX],
            count: 0,
        }
    }

    fn push(&mut self, index: usize, header: &[u8; 80], hashed: &mut [HashedShare]) {
        self.indices[self.count] = index;
        self.headers[self.count] = *header;
        self.count += 1;
        if self.count == self.lanes {
            self.finish(hashed);
        }
    }

    fn finish(&mut self, hashed: &mut [HashedShare]) {
        let mut pows = [[0u8; 32]; SCRYPT_LANES_MAX];
        match self.count {
            0 => return,
            1 => pows[0] = scrypt_pow(&self.headers[0]),
            count => scrypt_pow_many(&self.headers[..count], &mut pows[..count]),
        }
        for (index, pow) in self.indices[..self.count].iter().zip(pows) {
            hashed[*index].pow = pow;
        }
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{AlgorithmName, HexHash, JobTemplate};
    use otedama_kernels::scrypt::scrypt_pow;

    fn job(job_id: u64, depth: usize, algorithm: AlgorithmName) -> Job {
        Job::new(JobTemplate {
            job_id,
            height: 800_000,
            prevhash: [3; 32],
            coinbase_prefix: vec![0x11; 64],
            coinbase_suffix: vec![0x22; 90],
            merkle_branch: (0..depth)
                .map(|i| HexHash([i as u8 ^ job_id as u8; 32]))
                .collect(),
            version: 0x2000_0000,
            bits: 0x1d00_ffff,
            ntime: 1_700_000_000,
            clean_jobs: true,
            algorithm,
        })
        .unwrap()
    }

    /// Whatever the mix (two jobs of different merkle depths, odd counts, scrypt beside
    /// SHA256d), every share's result is the one-at-a-time result.
    #[test]
    fn a_batch_hashes_each_share_as_it_would_be_hashed_alone() {
        let jobs = [
            job(1, 12, AlgorithmName::Sha256d),
            job(2, 12, AlgorithmName::Sha256d),
            job(3, 5, AlgorithmName::Sha256d),
        ];
        let submissions: Vec<OwnedSubmission> = (0..41u32)
            .map(|nonce| {
                OwnedSubmission::new(&ShareSubmission {
                    extranonce1: &[1, 2, 3, nonce as u8],
                    extranonce2: &[5, 6, 7, 8],
                    ntime: 1_700_000_000 + nonce,
                    nonce,
                    version: 0x2000_0000 | nonce << 13,
                })
                .unwrap()
            })
            .collect();
        let scrypt_headers: Vec<[u8; 80]> = (0..19u8).map(|i| [i; 80]).collect();
        let scrypt_hashes: Vec<[u8; 32]> = scrypt_headers.iter().map(sha256d_80).collect();
        // A filter holding one job's content, so the prefetches have a table to ask for;
        // with it or without, the hashes are the same.
        let mut duplicates = DuplicateFilter::default();
        crate::work::claim_share(&jobs[0], [7; 32], &mut duplicates).unwrap();
        for (count, claims_in) in [0, 1, 2, 3, 17, 41]
            .into_iter()
            .zip([None, Some(&duplicates)].into_iter().cycle())
        {
            let mut inputs = Vec::new();
            for (i, owned) in submissions.iter().take(count).enumerate() {
                inputs.push(PowInput::Sha256d {
                    job: &jobs[i % 3],
                    submission: owned.get(),
                });
                if let Some(header) = scrypt_headers.get(i) {
                    inputs.push(PowInput::Scrypt {
                        header,
                        header_hash: &scrypt_hashes[i],
                    });
                }
            }
            let mut hashed = vec![HashedShare::EMPTY; 3];
            hash_batch(&inputs, &mut hashed, claims_in);
            assert_eq!(hashed.len(), inputs.len());
            for (input, result) in inputs.iter().zip(&hashed) {
                let alone = match input {
                    PowInput::Scrypt {
                        header,
                        header_hash,
                    } => HashedShare {
                        header: **header,
                        header_hash: **header_hash,
                        pow: scrypt_pow(header),
                    },
                    PowInput::Sha256d { job, submission } => {
                        let header = build_header(job, submission);
                        HashedShare::sha256d(header, sha256d_80(&header))
                    }
                };
                assert_eq!(*result, alone);
            }
        }
    }

    /// The edge of `WAITING_EXTRANONCE_BYTES_MAX`: exactly that many bytes are kept (and
    /// given back as they came), one more is refused.
    #[test]
    fn an_owned_submission_holds_its_limit() {
        let bytes = [7u8; WAITING_EXTRANONCE_BYTES_MAX + 1];
        let at_limit = ShareSubmission {
            extranonce1: &bytes[..WAITING_EXTRANONCE_BYTES_MAX - 4],
            extranonce2: &bytes[..4],
            ntime: 1,
            nonce: 2,
            version: 3,
        };
        assert_eq!(OwnedSubmission::new(&at_limit).unwrap().get(), at_limit);
        let over = ShareSubmission {
            extranonce1: &bytes[..WAITING_EXTRANONCE_BYTES_MAX - 3],
            ..at_limit
        };
        assert_eq!(OwnedSubmission::new(&over), None);
    }
}
