//! The server side of one Stratum V1 connection, as a state machine.
//!
//! The glue feeds it one line at a time with `handle_line(line, now, …)` and new work with
//! `handle_new_job`; it drains bytes to send with `poll_transmit`. A share that passes every
//! check comes back as `Outcome::ShareAccepted`: the glue stores it and only then calls
//! `handle_share_durable`, so the miner's `true` always means "on disk".

use std::sync::Arc;

use serde_json::{json, Value};

use crate::bans::BanList;
use crate::job::{Job, JobBook};
use crate::limits::{empty_outbox, WORKERS_PER_CONNECTION_MAX};
use crate::pow_batch::{OwnedSubmission, PowInput};
use crate::share::{BlockCandidate, DuplicateFilter, ShareRecord, UncreditedBlock};
use crate::work::{vet_worker_name, FrontEndConfig, ShareTerms, WorkState};

use super::request::{parse_borrowed, read_envelope, Envelope, RequestId};
use super::{set_difficulty_line, ErrorCode};

/// Per-connection settings chosen by the core that accepted it.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    /// The terms every front end holds its miners to, V2 channels included.
    pub front_end: FrontEndConfig,
}

/// What the glue must do after a line.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Nothing beyond sending what `poll_transmit` holds.
    Continue,
    /// A request was refused with this Stratum code (already queued as a reply).
    Rejected(ErrorCode),
    /// Store the share durably, then call `handle_share_durable(request_id)`.
    ShareAccepted(Box<AcceptedShare>),
    /// A share passed every check that comes before its hash: hash it with the others
    /// waiting (`PendingPow::input`, `pow_batch::hash_batch`) and pass the result to
    /// `handle_pow`. Only with `FrontEndConfig::defer_pow`, for scrypt and SHA256d alike.
    NeedsPow(Box<PendingPow>),
    /// A block from a share that cannot be credited: its hash missed the share target but
    /// met the network's (`Rejection::BlockBelowShareTarget`), or a new tip came while it
    /// waited for the hasher. The refusal with this code is queued; the block is the
    /// pool's and goes to the node.
    BlockOnly(Box<UncreditedBlock>, ErrorCode),
    /// Close this connection (the reason is for logs and counters).
    Close(CloseReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    NotJson,
}

/// A share that passed validation and awaits durability.
#[derive(Debug, PartialEq)]
pub struct AcceptedShare {
    pub request_id: RequestId,
    pub record: ShareRecord,
    pub block: Option<BlockCandidate>,
}

/// A share waiting for its proof-of-work value; everything `handle_pow` needs to finish it,
/// so the session's state may move on (new jobs, more shares) in between.
#[derive(Debug)]
pub struct PendingPow {
    pub(super) request_id: RequestId,
    pub(super) job: std::sync::Arc<Job>,
    pub(super) job_id: u64,
    pub(super) terms: ShareTerms,
    pub(super) worker: String,
    pub(super) submission: OwnedSubmission,
    /// A scrypt share's header and its SHA256d, with which it was claimed in the duplicate
    /// filter before the wait. `None` for a SHA256d share: the hasher builds its header,
    /// and its claim (the SHA256d is the fingerprint) follows in `handle_pow`.
    pub(super) claimed: Option<([u8; 80], [u8; 32])>,
    /// `DuplicateFilter::tip_generation` when the share arrived.
    pub(super) tip_generation: u64,
}

impl PendingPow {
    /// What the batch hasher computes for this share.
    pub fn input(&self) -> PowInput<'_> {
        match &self.claimed {
            Some((header, header_hash)) => PowInput::Scrypt {
                header,
                header_hash,
            },
            None => PowInput::Sha256d {
                job: &self.job,
                submission: self.submission.get(),
            },
        }
    }
}

impl PartialEq for PendingPow {
    fn eq(&self, other: &Self) -> bool {
        self.request_id == other.request_id
            && self.submission == other.submission
            && self.claimed == other.claimed
    }
}

#[derive(Debug)]
pub struct Session {
    pub(super) config: SessionConfig,
    pub(super) subscribed: bool,
    /// Authorized workers: the name the miner submits with, and the name its shares are
    /// recorded under (its address in canonical form, see `vet_worker_name`).
    pub(super) workers: Vec<(String, String)>,
    /// Difficulty, vardiff and the jobs sent: the rules V1 and V2 share.
    pub(super) work: WorkState,
    /// Difficulty last announced with `mining.set_difficulty`, if any.
    announced_difficulty: Option<f64>,
    pub(super) version_mask: Option<u32>,
    pub(super) extranonce_subscribed: bool,
    outbox: Vec<u8>,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        let work = WorkState::for_front_end(&config.front_end, config.front_end.start_difficulty);
        Session {
            config,
            subscribed: false,
            workers: Vec::new(),
            work,
            announced_difficulty: None,
            version_mask: None,
            extranonce_subscribed: false,
            outbox: Vec::new(),
        }
    }

    /// Bytes to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbox.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbox))
        }
    }

    /// Bytes waiting to be sent, for glue that writes them in place; follow with
    /// `transmitted`.
    pub fn transmit_pending(&self) -> &[u8] {
        &self.outbox
    }

    /// The bytes from `transmit_pending` are sent (or copied elsewhere). An idle connection
    /// should not keep a notify-sized buffer, so a large outbox is given back.
    pub fn transmitted(&mut self) {
        empty_outbox(&mut self.outbox);
    }

    pub fn is_mining(&self) -> bool {
        self.subscribed && !self.workers.is_empty()
    }

    pub fn difficulty(&self) -> f64 {
        self.work.difficulty()
    }

    pub fn extranonce1(&self) -> &[u8] {
        &self.config.extranonce1
    }

    /// Handles one request line. `now_s` is Unix time in seconds.
    pub fn handle_line(
        &mut self,
        line_bytes: &[u8],
        now_s: u64,
        jobs: &JobBook,
        duplicates: &mut DuplicateFilter,
    ) -> Outcome {
        // Shares are nearly every line a miner sends: read them in place, without a Value.
        if let Some(request) = parse_borrowed(line_bytes) {
            if request.method == "mining.submit" {
                let Some(id) = request
                    .id
                    .map_or(Some(RequestId::Null), RequestId::from_json)
                else {
                    return self.reject(&RequestId::Null, ErrorCode::Other, "request id too long");
                };
                return self.handle_submit(&id, request.params.as_slice(), now_s, jobs, duplicates);
            }
        }
        let (id, method, params) = match read_envelope(line_bytes) {
            Envelope::NotJson => return Outcome::Close(CloseReason::NotJson),
            Envelope::Refused(id, message) => return self.reject(&id, ErrorCode::Other, message),
            // A reply to something we sent (we send only notifications): nothing to do.
            Envelope::Reply => return Outcome::Continue,
            Envelope::Request { id, method, params } => (id, method, params),
        };
        let params = match params {
            Value::Null => Vec::new(),
            Value::Array(params) => params,
            _ => return self.reject(&id, ErrorCode::Other, "params must be an array"),
        };
        let (method, params) = (method.as_str(), &params);
        match method {
            "mining.subscribe" => self.handle_subscribe(&id, params, jobs, now_s),
            "mining.authorize" => self.handle_authorize(&id, params, jobs, now_s),
            "mining.configure" => self.handle_configure(&id, params),
            "mining.suggest_difficulty" => self.handle_suggest_difficulty(&id, params, jobs, now_s),
            "mining.extranonce.subscribe" => {
                self.extranonce_subscribed = true;
                self.reply(&id, json!(true));
                Outcome::Continue
            }
            "mining.submit" => {
                let Some(fields) = params.iter().map(Value::as_str).collect::<Option<Vec<_>>>()
                else {
                    return self.reject(&id, ErrorCode::Other, "submit needs 5 or 6 string params");
                };
                self.handle_submit(&id, &fields, now_s, jobs, duplicates)
            }
            _ => self.reject(&id, ErrorCode::Other, "unknown method"),
        }
    }

    fn handle_subscribe(
        &mut self,
        id: &RequestId,
        params: &[Value],
        jobs: &JobBook,
        now_s: u64,
    ) -> Outcome {
        if params
            .iter()
            .take(2)
            .any(|p| !(p.is_string() || p.is_null()))
        {
            return self.reject(id, ErrorCode::Other, "subscribe params must be strings");
        }
        let extranonce1 = hex::encode(&self.config.extranonce1);
        let result = json!([
            [
                ["mining.set_difficulty", extranonce1],
                ["mining.notify", extranonce1]
            ],
            extranonce1,
            self.config.extranonce2_size,
        ]);
        self.reply(id, result);
        let was_mining = self.is_mining();
        self.subscribed = true;
        if !was_mining {
            self.start_work(jobs, now_s);
        }
        Outcome::Continue
    }

    fn handle_authorize(
        &mut self,
        id: &RequestId,
        params: &[Value],
        jobs: &JobBook,
        now_s: u64,
    ) -> Outcome {
        let (Some(Value::String(name)), password) = (params.first(), params.get(1)) else {
            return self.reject(id, ErrorCode::Other, "authorize needs [worker, password]");
        };
        if !matches!(password, None | Some(Value::String(_)) | Some(Value::Null)) {
            return self.reject(id, ErrorCode::Other, "password must be a string");
        }
        let recorded = match vet_worker_name(
            name,
            self.config.front_end.payout_address_rule.as_ref(),
            &self.config.front_end.bans,
        ) {
            Ok(recorded) => recorded,
            Err(refusal) => {
                return self.reject(id, ErrorCode::UnauthorizedWorker, &refusal.to_string())
            }
        };
        if !self.workers.iter().any(|(given, _)| given == name) {
            if self.workers.len() >= WORKERS_PER_CONNECTION_MAX {
                return self.reject(id, ErrorCode::Other, "too many workers on one connection");
            }
            self.workers.push((name.clone(), recorded));
        }
        self.reply(id, json!(true));
        if self.workers.len() == 1 && self.subscribed {
            self.start_work(jobs, now_s);
        }
        Outcome::Continue
    }

    fn handle_suggest_difficulty(
        &mut self,
        id: &RequestId,
        params: &[Value],
        jobs: &JobBook,
        now_s: u64,
    ) -> Outcome {
        let Some(suggested) = params.first().and_then(Value::as_f64) else {
            return self.reject(id, ErrorCode::Other, "suggest_difficulty needs [number]");
        };
        if !(suggested.is_finite() && suggested > 0.0) {
            return self.reject(id, ErrorCode::Other, "difficulty must be positive");
        }
        // A hint within bounds (`WorkState::suggest_difficulty`); the reply is `true`
        // either way, and the difficulty the miner gets follows in `set_difficulty`.
        self.work.suggest_difficulty(suggested, now_s);
        self.reply(id, json!(true));
        self.resend_newest_job(jobs, now_s);
        Outcome::Continue
    }

    fn start_work(&mut self, jobs: &JobBook, now_s: u64) {
        if !self.resend_newest_job(jobs, now_s) {
            self.announce_difficulty();
        }
    }

    /// Sends the newest job again, so a difficulty change takes effect at once rather than
    /// at the next block. Returns false when there is no job yet.
    fn resend_newest_job(&mut self, jobs: &JobBook, now_s: u64) -> bool {
        match jobs.newest().cloned() {
            Some(job) => {
                self.handle_new_job(&job, now_s);
                true
            }
            None => false,
        }
    }

    /// Sends a job (and the difficulty, if it changed) to a miner that is ready for work.
    /// Takes a new ban list. Returns `true` if a worker this connection authorized is now
    /// banned: the glue closes the connection, since its shares can no longer be paid.
    pub fn update_bans(&mut self, bans: Arc<BanList>) -> bool {
        let banned = self
            .workers
            .iter()
            .any(|(_, recorded)| bans.bans_worker(recorded));
        self.config.front_end.bans = bans;
        banned
    }

    /// Asks the miner to reconnect to the same address (`client.reconnect` with no
    /// parameters): the pool process is handing its miners to its replacement. Shares the
    /// miner still sends on this connection are taken as before.
    pub fn request_reconnect(&mut self) {
        self.outbox
            .extend_from_slice(b"{\"id\":null,\"method\":\"client.reconnect\",\"params\":[]}\n");
    }

    pub fn handle_new_job(&mut self, job: &Job, now_s: u64) {
        if !self.is_mining() {
            return;
        }
        self.work.retarget_before_job(job, now_s);
        self.announce_difficulty();
        self.work.record_sent(job, now_s);
        self.outbox.extend_from_slice(&job.notify_line);
    }

    fn announce_difficulty(&mut self) {
        let difficulty = self.work.difficulty();
        if self.announced_difficulty != Some(difficulty) {
            self.outbox
                .extend_from_slice(&set_difficulty_line(difficulty));
            self.announced_difficulty = Some(difficulty);
        }
    }

    /// When `handle_timeout` has something to do: the moment this miner counts as silent
    /// (`VARDIFF_SILENT_SHARE_INTERVALS`), while it mines.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.is_mining().then(|| self.work.silent_at_s()).flatten()
    }

    /// Time has come to `now_s`: a miner silent for too long gets a lower difficulty and
    /// the newest job again, so the new difficulty applies at once. Returns whether
    /// anything was queued to send.
    pub fn handle_timeout(&mut self, now_s: u64, jobs: &JobBook) -> bool {
        self.is_mining()
            && self.work.retarget_if_silent(now_s)
            && self.resend_newest_job(jobs, now_s)
    }

    /// The accepted share is durable: acknowledge it.
    pub fn handle_share_durable(&mut self, request_id: &RequestId, now_s: u64, jobs: &JobBook) {
        self.reply_raw(request_id, b"true");
        if self.work.on_share_durable(now_s) {
            self.resend_newest_job(jobs, now_s);
        }
    }

    /// The accepted share could not be stored: tell the miner it was not credited.
    pub fn handle_share_store_failed(&mut self, request_id: &RequestId) {
        self.reject(request_id, ErrorCode::Other, "share could not be stored");
    }

    pub(super) fn reply(&mut self, id: &RequestId, result: Value) {
        let result = serde_json::to_vec(&result).expect("JSON values serialize");
        self.reply_raw(id, &result);
    }

    /// `{"id":…,"result":…,"error":null}`, written straight into the outbox.
    fn reply_raw(&mut self, id: &RequestId, result_json: &[u8]) {
        self.outbox.extend_from_slice(b"{\"id\":");
        id.write_to(&mut self.outbox);
        self.outbox.extend_from_slice(b",\"result\":");
        self.outbox.extend_from_slice(result_json);
        self.outbox.extend_from_slice(b",\"error\":null}\n");
    }

    pub(super) fn reject(&mut self, id: &RequestId, code: ErrorCode, message: &str) -> Outcome {
        self.outbox.extend_from_slice(b"{\"id\":");
        id.write_to(&mut self.outbox);
        self.outbox
            .extend_from_slice(b",\"result\":null,\"error\":[");
        let mut code_text = itoa::Buffer::new();
        self.outbox
            .extend_from_slice(code_text.format(code as i32).as_bytes());
        self.outbox.push(b',');
        serde_json::to_writer(&mut self.outbox, message).expect("a string serializes");
        self.outbox.extend_from_slice(b",null]}\n");
        Outcome::Rejected(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::OUTBOX_KEEP_BYTES_MAX;

    /// Between messages a connection keeps an outbox of at most `OUTBOX_KEEP_BYTES_MAX`:
    /// exactly that is kept, one byte more is given back.
    #[test]
    fn the_outbox_kept_between_messages_holds_its_limit() {
        let mut session = Session::new(SessionConfig {
            extranonce1: vec![0; 4],
            extranonce2_size: 4,
            front_end: FrontEndConfig::plain(otedama_kernels::Algorithm::Sha256d, 1.0, 1.0),
        });
        session.outbox = Vec::with_capacity(OUTBOX_KEEP_BYTES_MAX);
        session.outbox.push(b'x');
        session.transmitted();
        assert!(session.outbox.is_empty());
        assert_eq!(session.outbox.capacity(), OUTBOX_KEEP_BYTES_MAX);
        session.outbox.reserve_exact(OUTBOX_KEEP_BYTES_MAX + 1);
        session.transmitted();
        assert_eq!(session.outbox.capacity(), 0);
    }
}
