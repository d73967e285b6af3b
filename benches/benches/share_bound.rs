//! Full SHA256d share validation against the SHA-256 compression bound, in one run.
//!
//! A V1 share costs a fixed number of SHA-256 compressions: the coinbase tail after the
//! midstate, its second hash, 12 merkle levels of 3 compressions each, and the header's 3.
//! The bound is the best compression rate measured here (`sha2`, our SHA-NI single stream,
//! or two streams interleaved) divided by that count; the figure that matters is how close
//! full validation (parsing aside) comes to it.
//!
//! Run: `cargo bench -p otedama-benches --bench share_bound`.

use std::hint::black_box;
use std::time::Instant;

use otedama_kernels::{sha256d::compress_only, sha_ni, Algorithm, Target};
use otedama_shared::share::{validate_share, validate_share_pair};

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
}
