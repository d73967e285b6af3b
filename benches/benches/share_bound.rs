//! Full SHA256d share validation against the SHA-256 compression bound, in one run.
//!
//! A V1 share costs a fixed number of SHA-256 compressions: the coinbase tail after the
//! midstate, its second hash, 12 merkle levels of 3 compressions each, and the header's 3.
//! The bound is the best compression rate measured here (`sha2`, our SHA-NI single stream,
//! or two streams interleaved) divided by that count; the figure that matters is how close
//! full validation (parsing aside) comes to it. The same shares also go through the
//! data plane's own path without its I/O: a Stratum V1 session (`handle_line`: JSON,
//! every rule, the duplicate filter, the share record, the acknowledgement), which is what
//! one core does per share besides the socket and the share log.
//!
//! Run: `cargo bench -p otedama-benches --bench share_bound`.

use std::hint::black_box;
use std::time::Instant;

use otedama_kernels::{sha256d::compress_only, sha_ni, Algorithm, Target};
use otedama_shared::job::Job;
use otedama_shared::share::{validate_share, validate_share_pair};
use otedama_shared::sv1::client::{request_line, submit_line, NotifiedJob};
use otedama_shared::sv1::{Outcome, Session, SessionConfig};
use otedama_shared::work::FrontEndConfig;
use otedama_shared::{DuplicateFilter, JobBook};

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

/// Shares per second through a V1 session on one core, I/O aside: every share's line is
/// parsed, checked, hashed, claimed in the duplicate filter, recorded and acknowledged.
/// The difficulty is the lowest, so every share is accepted.
fn session_path(job: &std::sync::Arc<Job>, shares: u32) -> f64 {
    let now_s = job.template.ntime as u64 + 10;
    let mut jobs = JobBook::default();
    jobs.insert(job.clone());
    let mut session = Session::new(SessionConfig {
        extranonce1: vec![1, 2, 3, 4],
        extranonce2_size: 4,
        front_end: FrontEndConfig::plain(Algorithm::Sha256d, 1e-10, 1e-10),
    });
    let mut duplicates = DuplicateFilter::default();
    let send = |session: &mut Session, line: &[u8], duplicates: &mut DuplicateFilter| {
        session.handle_line(&line[..line.len() - 1], now_s, &jobs, duplicates)
    };
    send(
        &mut session,
        &request_line(1, "mining.subscribe", serde_json::json!([])),
        &mut duplicates,
    );
    send(
        &mut session,
        &request_line(2, "mining.authorize", serde_json::json!(["w", "x"])),
        &mut duplicates,
    );
    let sent = session.poll_transmit().unwrap_or_default();
    let notify = sent
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .find(|message| message["method"] == "mining.notify")
        .expect("a job after authorize");
    let notified = NotifiedJob::from_params(&notify["params"]).expect("a valid notify");
    let lines: Vec<Vec<u8>> = (0..shares)
        .map(|nonce| {
            let extranonce2 = (nonce / 1_000_000).to_be_bytes();
            submit_line(
                10 + nonce as u64,
                "w",
                &notified.job_id,
                &extranonce2,
                job.template.ntime,
                nonce,
                None,
            )
        })
        .collect();
    let started = Instant::now();
    let mut accepted = 0u32;
    for line in &lines {
        match send(&mut session, black_box(line), &mut duplicates) {
            Outcome::ShareAccepted(share) => {
                accepted += 1;
                session.handle_share_durable(&share.request_id, now_s, &jobs);
                black_box(session.transmit_pending());
                session.transmitted();
            }
            other => panic!("share refused: {other:?}"),
        }
    }
    let per_s = accepted as f64 / started.elapsed().as_secs_f64();
    assert_eq!(accepted, shares);
    per_s
}

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

    let started = Instant::now();
    let mut met_paired = 0u32;
    for nonce in 0..shares / 2 {
        let (a, b) = (
            otedama_benches::sample_submission(nonce * 2),
            otedama_benches::sample_submission(nonce * 2 + 1),
        );
        let results = validate_share_pair(black_box(&job), [&a, &b], &target);
        met_paired += results.iter().filter(|r| r.is_ok()).count() as u32;
    }
    let paired_per_s = (shares / 2 * 2) as f64 / started.elapsed().as_secs_f64();
    // A quarter as many: the lines are made up front and kept in memory.
    let session_per_s = session_path(&job, shares / 4);

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
        "paired V1 share validation (2-way):  {paired_per_s:.0} shares/s ({met_paired} met difficulty 1)"
    );
    println!(
        "validation / bound:                  {:.1} % single, {:.1} % paired",
        100.0 * shares_per_s / bound_shares_per_s,
        100.0 * paired_per_s / bound_shares_per_s
    );
    println!("V1 session path, no I/O (one core):  {session_per_s:.0} shares/s");
    println!(
        "session path / paired kernel:        {:.1} %",
        100.0 * session_per_s / paired_per_s
    );
}
