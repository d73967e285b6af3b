//! `mining.submit`: every check a share must pass, in the order that gives the miner the
//! most useful code: subscription (25), shape (20), worker (24), job (21), field sizes and
//! ranges (20), duplicate (22: a scrypt share claimed before its proof of work, a SHA256d
//! share once hashed, which with `defer_pow` is in the core's batch hasher; see
//! `DuplicateFilter`), target (23).

use crate::hex32::decode_u32_be;
use crate::limits::EXTRANONCE2_BYTES;
use otedama_kernels::sha256d::sha256d_80;
use otedama_kernels::Algorithm;

use crate::pow_batch::{HashedShare, OwnedSubmission};
use crate::share::Protocol;
use crate::share::{build_header, pow_hash, DuplicateFilter, ShareRecord, ShareSubmission};
use crate::work::{
    check_ntime, check_version, claim_share, credit_share, CreditedShare, Rejection,
};
use crate::{Job, JobBook};

use super::request::RequestId;
use super::session::{AcceptedShare, Outcome, PendingPow, Session};
use super::{job_id_from_stratum, ErrorCode};
use crate::share::{BlockCandidate, UncreditedBlock};

/// The reply to a share the duplicate filter cannot take: its job's shares fill the filter
/// and this one proves less work than those it keeps. Not a duplicate as far as anyone
/// knows, so code 20, not 22.
const FILTER_FULL_MESSAGE: &str = "share filter full of shares of more work; wait for new work";

impl Session {
    pub(super) fn handle_submit(
        &mut self,
        id: &RequestId,
        fields: &[&str],
        now_s: u64,
        jobs: &JobBook,
        duplicates: &mut DuplicateFilter,
    ) -> Outcome {
        if !self.subscribed {
            return self.reject(id, ErrorCode::NotSubscribed, "not subscribed");
        }
        if !(5..=6).contains(&fields.len()) {
            return self.reject(id, ErrorCode::Other, "submit needs 5 or 6 string params");
        }
        // Any submission shows the miner is not silent (`VARDIFF_SILENT_SHARE_INTERVALS`).
        self.work.note_submit(now_s);
        let Some(worker) = self
            .workers
            .iter()
            .find(|(given, _)| given == fields[0])
            .map(|(_, recorded)| recorded.clone())
        else {
            return self.reject(id, ErrorCode::UnauthorizedWorker, "unauthorized worker");
        };
        let Some(job_id) = job_id_from_stratum(fields[1]) else {
            return self.reject(id, ErrorCode::JobNotFound, "job not found");
        };
        let (job, terms) = match self.work.resolve(jobs, job_id, now_s) {
            Ok(resolved) => resolved,
            Err(Rejection::UnknownJob) => {
                return self.reject(id, ErrorCode::JobNotFound, "job not found")
            }
            Err(_) => return self.reject(id, ErrorCode::JobNotFound, "stale job"),
        };
        let extranonce2_size = self.config.extranonce2_size;
        let Some(extranonce2) = decode_en2(fields[2], extranonce2_size) else {
            let message = format!("extranonce2 must be {extranonce2_size} bytes of hex");
            return self.reject(id, ErrorCode::Other, &message);
        };
        let Some(ntime) = decode_u32_be(fields[3]) else {
            return self.reject(id, ErrorCode::Other, "ntime must be 8 hex digits");
        };
        if check_ntime(&job, ntime, now_s).is_err() {
            return self.reject(id, ErrorCode::Other, "ntime out of range");
        }
        let Some(nonce) = decode_u32_be(fields[4]) else {
            return self.reject(id, ErrorCode::Other, "nonce must be 8 hex digits");
        };
        let version = match fields.get(5) {
            None => job.template.version,
            Some(text) => match self.rolled_version(job.template.version, text) {
                Ok(version) => version,
                Err(message) => return self.reject(id, ErrorCode::Other, message),
            },
        };
        let submission = ShareSubmission {
            extranonce1: &self.config.extranonce1,
            extranonce2: &extranonce2[..extranonce2_size],
            ntime,
            nonce,
            version,
        };
        let Some(owned) = OwnedSubmission::new(&submission) else {
            // Only a session configured with an extranonce1 longer than the pool hands out.
            return self.reject(id, ErrorCode::Other, "extranonce1 too long for this pool");
        };
        let mut pending = PendingPow {
            request_id: id.clone(),
            job,
            job_id,
            terms,
            worker,
            submission: owned,
            claimed: None,
            tip_generation: duplicates.tip_generation(),
        };
        let defer = self.config.front_end.defer_pow;
        if defer && pending.job.algorithm == Algorithm::Sha256d {
            // Boxed only here: a share hashed at once never leaves the stack.
            return Outcome::NeedsPow(Box::new(pending));
        }
        let header = build_header(&pending.job, &submission);
        let header_hash = sha256d_80(&header);
        if let Err(refused) = self.claim(id, &pending.job, header_hash, duplicates) {
            return refused;
        }
        pending.claimed = Some((header, header_hash));
        match pending.job.algorithm {
            Algorithm::Scrypt if defer => Outcome::NeedsPow(Box::new(pending)),
            algorithm => {
                let hashed = HashedShare {
                    header,
                    header_hash,
                    pow: pow_hash(algorithm, &header, &header_hash),
                };
                self.finish_share(pending, &hashed, now_s, duplicates)
            }
        }
    }

    /// Finishes a share the glue hashed (`Outcome::NeedsPow`): `hashed` is what
    /// `pow_batch::hash_batch` computed for `pending.input()`. A SHA256d share is claimed in
    /// the duplicate filter now that its hash is known.
    pub fn handle_pow(
        &mut self,
        pending: Box<PendingPow>,
        hashed: &HashedShare,
        now_s: u64,
        duplicates: &mut DuplicateFilter,
    ) -> Outcome {
        let pending = *pending;
        match pending.claimed {
            // Hashed from this header: the glue computed the scrypt alone.
            Some((header, header_hash)) => {
                debug_assert_eq!((header, header_hash), (hashed.header, hashed.header_hash));
            }
            // A new tip dropped sets while the share waited: it may be the copy of one
            // credited before, so it is not credited (`DuplicateFilter::tip_generation`).
            // Nor is it lost if it is a block, which goes up uncredited as it would have
            // had it been hashed on arrival.
            None if pending.tip_generation != duplicates.tip_generation() => {
                self.reject(&pending.request_id, ErrorCode::JobNotFound, "stale job");
                if !pending.job.network_target.is_met_by(&hashed.pow) {
                    return Outcome::Rejected(ErrorCode::JobNotFound);
                }
                return Outcome::BlockOnly(
                    Box::new(UncreditedBlock::new(
                        &pending.job,
                        hashed.header,
                        &hashed.pow,
                        pending.worker,
                        (&self.config.extranonce1, pending.submission.extranonce2()),
                        now_s,
                    )),
                    ErrorCode::JobNotFound,
                );
            }
            None => {
                let claimed = self.claim(
                    &pending.request_id,
                    &pending.job,
                    hashed.header_hash,
                    duplicates,
                );
                if let Err(refused) = claimed {
                    return refused;
                }
            }
        }
        self.finish_share(pending, hashed, now_s, duplicates)
    }

    /// Claims the share in the duplicate filter, or queues its refusal (22, or 20 when the
    /// filter is full of shares of more work) and returns it.
    fn claim(
        &mut self,
        id: &RequestId,
        job: &Job,
        header_hash: [u8; 32],
        duplicates: &mut DuplicateFilter,
    ) -> Result<(), Outcome> {
        match claim_share(job, header_hash, duplicates) {
            Ok(()) => Ok(()),
            Err(Rejection::FilterFull) => {
                Err(self.reject(id, ErrorCode::Other, FILTER_FULL_MESSAGE))
            }
            Err(_) => Err(self.reject(id, ErrorCode::Duplicate, "duplicate share")),
        }
    }

    /// The checks after the proof of work: target, duplicate, record.
    fn finish_share(
        &mut self,
        pending: PendingPow,
        hashed: &HashedShare,
        now_s: u64,
        duplicates: &mut DuplicateFilter,
    ) -> Outcome {
        let PendingPow {
            request_id: id,
            job,
            job_id,
            terms,
            worker,
            submission,
            claimed: _,
            tip_generation: _,
        } = pending;
        let HashedShare {
            header,
            header_hash,
            pow,
        } = hashed;
        let (header, pow) = (*header, pow);
        let extranonce2 = submission.extranonce2();
        let CreditedShare { valid, difficulty } =
            match credit_share(&job, terms, header, *header_hash, pow, duplicates) {
                Ok(credited) => credited,
                Err(Rejection::BlockBelowShareTarget) => {
                    self.reject(&id, ErrorCode::LowDifficulty, "low difficulty share");
                    return Outcome::BlockOnly(
                        Box::new(UncreditedBlock::new(
                            &job,
                            header,
                            pow,
                            worker,
                            (&self.config.extranonce1, extranonce2),
                            now_s,
                        )),
                        ErrorCode::LowDifficulty,
                    );
                }
                Err(Rejection::Duplicate) => {
                    return self.reject(&id, ErrorCode::Duplicate, "duplicate share")
                }
                Err(Rejection::FilterFull) => {
                    return self.reject(&id, ErrorCode::Other, FILTER_FULL_MESSAGE)
                }
                Err(_) => {
                    return self.reject(&id, ErrorCode::LowDifficulty, "low difficulty share")
                }
            };
        let block = valid.is_block.then(|| BlockCandidate {
            job_id,
            height: job.template.height,
            header: valid.header.to_vec(),
            coinbase: job.coinbase(&self.config.extranonce1, extranonce2),
            worker: worker.clone(),
            found_at_ms: now_s * 1000,
        });
        let record = ShareRecord {
            accepted_at_ms: now_s * 1000,
            job_id,
            height: job.template.height,
            worker,
            difficulty,
            achieved_difficulty: valid.achieved_difficulty,
            is_block: valid.is_block,
            header: valid.header,
            extranonce1: self.config.extranonce1.clone(),
            extranonce2: extranonce2.to_vec(),
            protocol: Some(Protocol::V1),
        };
        Outcome::ShareAccepted(Box::new(AcceptedShare {
            request_id: id,
            record,
            block,
        }))
    }

    /// BIP310: the block version is the job's version with the masked bits replaced. A
    /// V1 miner may send only the rolled bits or the whole version; either way, the rule
    /// V1 and V2 share then holds: no bit outside the negotiated mask may differ.
    fn rolled_version(&self, job_version: u32, text: &str) -> Result<u32, &'static str> {
        let Some(mask) = self.version_mask else {
            return Err("version rolling was not negotiated");
        };
        let bits = decode_u32_be(text).ok_or("version must be 8 hex digits")?;
        let full = if bits & !mask == 0 {
            (job_version & !mask) | bits
        } else {
            bits
        };
        check_version(job_version, Some(mask), full)
            .map_err(|_| "version bits outside the negotiated mask")
    }
}

fn decode_en2(text: &str, size: usize) -> Option<[u8; EXTRANONCE2_BYTES * 2]> {
    let mut out = [0u8; EXTRANONCE2_BYTES * 2];
    if size > out.len() || text.len() != size * 2 {
        return None;
    }
    hex::decode_to_slice(text, &mut out[..size]).ok()?;
    Some(out)
}
