//! Full SHA256d share validation against the SHA-256 compression bound, in one run.
//!
//! A V1 share costs a fixed number of SHA-256 compressions: the coinbase tail after the
//! midstate, its second hash, 12 merkle levels of 3 compressions each, and the header's 3.
//! The bound is the best compression rate measured here (`sha2`, our SHA-NI single stream,
//! or two streams interleaved) divided by that count; the figure that matters is how close
//! full validation (parsing aside) comes to it. The same shares also go through the
//! data plane's own path without its I/O: Stratum V1 sessions (`handle_line`: JSON, every
//! rule, the batch hasher as the data plane runs it, the duplicate filter, the share
//! record, the acknowledgement), which is what one core does per share besides the socket
//! and the share log.
//!
//! Run: `cargo bench -p otedama-benches --bench share_bound`.

use std::hint::black_box;
use std::time::Instant;

use otedama_kernels::{sha256d::compress_only, sha_ni, Algorithm, Target};
use otedama_shared::job::Job;
use otedama_shared::pow_batch::{hash_batch, HashedShare};
use otedama_shared::share::{validate_share, validate_share_pair};
use otedama_shared::sv1::client::{request_line, submit_line, NotifiedJob};
use otedama_shared::sv1::{Outcome, Session, SessionConfig};
use otedama_shared::work::FrontEndConfig;
use otedama_shared::{DuplicateFilter, JobBook};

/// The allocator the data plane runs with (`otedama/src/main.rs`): the session path's
/// records, replies and waiting shares are allocated per share.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COINBASE_PREFIX_BYTES: usize = 64;
const COINBASE_SUFFIX_BYTES: usize = 90;
const MERKLE_DEPTH: usize = 12;
/// Shares timed under `cargo bench`; `cargo test` runs the same code once, briefly.
const SHARES_BENCH: u32 = 2_000_000;
const SHARES_SMOKE: u32 = 1_000;

fn compressions_per_share() -> u64 {
    // Tail after a one-block midstate: en1 + en2 + suffix + 9 bytes of padding, rounded up.
    let tail_bytes = 4 + 4 + COINBASE_SUFFIX_BYTES + 9;
    let coinbase = tail_bytes.div_ceil(64) as u64 + 1;
    let merkle = MERKLE_DEPTH as u64 * 3;
    let header = 3;
    coinbase + merkle + header
}

/// Stratum V1 sessions on one core as the data plane runs them, I/O aside: every share's
/// line is parsed, checked, hashed, claimed in the duplicate filter, recorded and
/// acknowledged. Shares come from two connections in turn. With `ready_per_pass` set,
/// they wait for the core's batch hasher (`defer_pow`, `pow_batch::hash_batch`, the
/// claims' slots prefetched) and are finished that many at a time: 2 is the least for a
/// pair, 16 a full pass of the data plane's hasher (`POW_SHARES_PER_PASS_MAX`), which a
/// loaded core has ready. Without, each session hashes its shares one at a time. The
/// difficulty is the lowest, so every share is accepted.
struct SessionPath {
    jobs: JobBook,
    now_s: u64,
    sessions: Vec<Session>,
    duplicates: DuplicateFilter,
    ready_per_pass: Option<usize>,
    hashed: Vec<HashedShare>,
    accepted: u64,
}

impl SessionPath {
    /// The sessions, subscribed and authorized, and the job id they were sent.
    fn new(job: &std::sync::Arc<Job>, ready_per_pass: Option<usize>) -> (Self, String) {
        let now_s = job.template.ntime as u64 + 10;
        let mut jobs = JobBook::default();
        jobs.insert(job.clone());
        let mut path = SessionPath {
            jobs,
            now_s,
            sessions: Vec::new(),
            duplicates: DuplicateFilter::default(),
            ready_per_pass,
            hashed: Vec::new(),
            accepted: 0,
        };
        let mut job_id = String::new();
        for connection in 0..2u8 {
            let mut front_end = FrontEndConfig::plain(Algorithm::Sha256d, 1e-10, 1e-10);
            front_end.defer_pow = ready_per_pass.is_some();
            let mut session = Session::new(SessionConfig {
                extranonce1: vec![1, 2, 3, connection],
                extranonce2_size: 4,
                front_end,
            });
            for (id, method, params) in [
                (1, "mining.subscribe", serde_json::json!([])),
                (2, "mining.authorize", serde_json::json!(["w", "x"])),
            ] {
                let line = request_line(id, method, params);
                let _ = session.handle_line(
                    &line[..line.len() - 1],
                    now_s,
                    &path.jobs,
                    &mut path.duplicates,
                );
            }
            let sent = session.poll_transmit().unwrap_or_default();
            let notify = sent
                .split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
                .find(|message| message["method"] == "mining.notify")
                .expect("a job after authorize");
            job_id = NotifiedJob::from_params(&notify["params"])
                .expect("a valid notify")
                .job_id;
            path.sessions.push(session);
        }
        (path, job_id)
    }

    fn acknowledge(&mut self, connection: usize, outcome: Outcome) {
        let Outcome::ShareAccepted(share) = outcome else {
            panic!("share refused: {outcome:?}")
        };
        self.accepted += 1;
        let session = &mut self.sessions[connection];
        session.handle_share_durable(&share.request_id, self.now_s, &self.jobs);
        black_box(session.transmit_pending());
        session.transmitted();
    }

    /// Sends every line (in turn to each connection) and finishes every share; returns
    /// the time it took.
    fn run(&mut self, lines: &[Vec<u8>]) -> std::time::Duration {
        let started = Instant::now();
        let per_pass = self.ready_per_pass.unwrap_or(1);
        for (pass, ready) in lines.chunks(per_pass).enumerate() {
            let mut waiting = Vec::with_capacity(per_pass);
            for (at, line) in ready.iter().enumerate() {
                let connection = (pass * per_pass + at) % 2;
                let line = black_box(&line[..line.len() - 1]);
                let outcome = self.sessions[connection].handle_line(
                    line,
                    self.now_s,
                    &self.jobs,
                    &mut self.duplicates,
                );
                match outcome {
                    Outcome::NeedsPow(pending) => waiting.push((connection, pending)),
                    outcome => self.acknowledge(connection, outcome),
                }
            }
            if waiting.is_empty() {
                continue;
            }
            let inputs: Vec<_> = waiting.iter().map(|(_, pending)| pending.input()).collect();
            hash_batch(&inputs, &mut self.hashed, Some(&self.duplicates));
            drop(inputs);
            for (at, (connection, pending)) in waiting.into_iter().enumerate() {
                let hashed = self.hashed[at];
                let outcome = self.sessions[connection].handle_pow(
                    pending,
                    &hashed,
                    self.now_s,
                    &mut self.duplicates,
                );
                self.acknowledge(connection, outcome);
            }
        }
        started.elapsed()
    }
}

/// Rounds the paired kernel and the session paths take turns in, so that a change in the
/// machine's speed during the run (other guests on the host) falls on all of them alike.
const ROUNDS: usize = 20;

fn main() {
    let shares = if std::env::args().any(|arg| arg == "--bench") {
        SHARES_BENCH
    } else {
        SHARES_SMOKE
    };
    let job = otedama_benches::sample_sha256d_job(
        COINBASE_PREFIX_BYTES,
        COINBASE_SUFFIX_BYTES,
        MERKLE_DEPTH,
    );
    let target = Target::from_difficulty(Algorithm::Sha256d, 1.0).expect("difficulty 1");

    let started = Instant::now();
    let mut met = 0u32;
    for nonce in 0..shares {
        let submission = otedama_benches::sample_submission(nonce);
        met += validate_share(black_box(&job), &submission, &target).is_ok() as u32;
    }
    let shares_per_s = shares as f64 / started.elapsed().as_secs_f64();

    // The paired kernel and the session paths in turns, each over the same number of
    // shares (a quarter of the rest's: the lines are made up front and kept in memory).
    let session_shares = shares / 4;
    let (mut inline, job_id) = SessionPath::new(&job, None);
    let (mut pairs, _) = SessionPath::new(&job, Some(2));
    let (mut passes, _) = SessionPath::new(&job, Some(16));
    let lines: Vec<Vec<u8>> = (0..session_shares)
        .map(|nonce| {
            let extranonce2 = (nonce / 1_000_000).to_be_bytes();
            let ntime = job.template.ntime;
            submit_line(
                10 + nonce as u64,
                "w",
                &job_id,
                &extranonce2,
                ntime,
                nonce,
                None,
            )
        })
        .collect();
    let mut met_paired = 0u32;
    let mut paired_time = std::time::Duration::ZERO;
    let mut times = [std::time::Duration::ZERO; 3];
    let per_round = (session_shares as usize).div_ceil(ROUNDS);
    for (round, chunk) in lines.chunks(per_round).enumerate() {
        let started = Instant::now();
        let first = (round * per_round) as u32;
        for nonce in (first..first + chunk.len() as u32).step_by(2) {
            let (a, b) = (
                otedama_benches::sample_submission(nonce),
                otedama_benches::sample_submission(nonce + 1),
            );
            let results = validate_share_pair(black_box(&job), [&a, &b], &target);
            met_paired += results.iter().filter(|r| r.is_ok()).count() as u32;
        }
        paired_time += started.elapsed();
        for (path, time) in [&mut inline, &mut pairs, &mut passes]
            .into_iter()
            .zip(&mut times)
        {
            *time += path.run(chunk);
        }
    }
    let paired_per_s = lines.len().next_multiple_of(2) as f64 / paired_time.as_secs_f64();
    let [inline_per_s, pairs_per_s, passes_per_s] = [&inline, &pairs, &passes]
        .map(|path| path.accepted as f64)
        .into_iter()
        .zip(times)
        .map(|(accepted, time)| accepted / time.as_secs_f64())
        .collect::<Vec<_>>()
        .try_into()
        .expect("three paths");
    for path in [&inline, &pairs, &passes] {
        assert_eq!(path.accepted, session_shares as u64, "every share accepted");
    }

    let blocks = shares as u64 * compressions_per_share();
    let block = [0x5au8; 64];
    let mut state = [0x6a09_e667u32; 8];
    let started = Instant::now();
    for _ in 0..blocks {
        compress_only(&mut state, black_box(&block));
    }
    black_box(state);
    let sha2_per_s = blocks as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for _ in 0..blocks {
        sha_ni::compress(&mut state, black_box(&block));
    }
    black_box(state);
    let single_per_s = blocks as f64 / started.elapsed().as_secs_f64();

    let mut other = [0x510e_527fu32; 8];
    let started = Instant::now();
    for _ in 0..blocks / 2 {
        sha_ni::compress2(&mut state, black_box(&block), &mut other, black_box(&block));
    }
    black_box((state, other));
    let interleaved_per_s = (blocks / 2 * 2) as f64 / started.elapsed().as_secs_f64();

    // The bound uses the cheapest compression measured, whichever way it was run.
    let compressions_per_s = sha2_per_s.max(single_per_s).max(interleaved_per_s);
    let bound_shares_per_s = compressions_per_s / compressions_per_share() as f64;

    println!("compressions per share: {}", compressions_per_share());
    println!(
        "full V1 share validation (one core): {shares_per_s:.0} shares/s ({met} met difficulty 1)"
    );
    println!("raw SHA-256 compression, sha2:       {sha2_per_s:.0} blocks/s");
    println!("raw SHA-256 compression, SHA-NI:     {single_per_s:.0} blocks/s");
    println!("raw SHA-256 compression, 2-way NI:   {interleaved_per_s:.0} blocks/s");
    println!("compression bound:                   {bound_shares_per_s:.0} shares/s");
    println!(
        "paired V1 share validation (2-way):  {paired_per_s:.0} shares/s ({met_paired} met difficulty 1; in turns with the session paths below, {ROUNDS} rounds)"
    );
    println!(
        "validation / bound:                  {:.1} % single, {:.1} % paired",
        100.0 * shares_per_s / bound_shares_per_s,
        100.0 * paired_per_s / bound_shares_per_s
    );
    println!("V1 session path, no I/O, one at a time:  {inline_per_s:.0} shares/s");
    println!("V1 session path, batch hasher, 2 ready:  {pairs_per_s:.0} shares/s");
    println!("V1 session path, batch hasher, 16 ready: {passes_per_s:.0} shares/s");
    println!(
        "session path / paired kernel:            {:.1} % one at a time, {:.1} % 2 ready, {:.1} % 16 ready",
        100.0 * inline_per_s / paired_per_s,
        100.0 * pairs_per_s / paired_per_s,
        100.0 * passes_per_s / paired_per_s
    );
}
