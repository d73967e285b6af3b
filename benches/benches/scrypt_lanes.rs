//! Scrypt validations per second on one core: the `scrypt` crate (one header at a time)
//! and Otedama's multi-lane kernel (8 headers per pass with AVX2), in the same run, with
//! their ratio.
//!
//! Run: `cargo bench -p otedama-benches --bench scrypt_lanes`.

use std::hint::black_box;
use std::time::Instant;

use otedama_kernels::scrypt::{scrypt_pow, scrypt_pow_many, SCRYPT_LANES_MAX};

/// Headers hashed per measurement under `cargo bench`; `cargo test` runs a few.
const HEADERS_BENCH: usize = 16_384;
const HEADERS_SMOKE: usize = 16;

fn headers(count: usize) -> Vec<[u8; 80]> {
    (0..count)
        .map(|i| {
            let mut header = [0x42u8; 80];
            header[76..80].copy_from_slice(&(i as u32).to_le_bytes());
            header
        })
        .collect()
}

fn main() {
    let count = if std::env::args().any(|arg| arg == "--bench") {
        HEADERS_BENCH
    } else {
        HEADERS_SMOKE
    };
    let inputs = headers(count);

    let crate_count = count / 4;
    let started = Instant::now();
    for header in &inputs[..crate_count] {
        black_box(scrypt_pow(black_box(header)));
    }
    let crate_per_s = crate_count as f64 / started.elapsed().as_secs_f64();

    let mut out = vec![[0u8; 32]; count];
    let started = Instant::now();
    scrypt_pow_many(black_box(&inputs), &mut out);
    let lanes_per_s = count as f64 / started.elapsed().as_secs_f64();
    black_box(&out);
    assert_eq!(out[0], scrypt_pow(&inputs[0]), "kernels disagree");

    let avx2 = std::is_x86_feature_detected!("avx2");
    println!("scrypt N=1024 r=1 p=1 on 80-byte headers, one core");
    println!("scrypt crate, one at a time:   {crate_per_s:.0} hashes/s");
    println!(
        "multi-lane kernel ({} lanes):   {lanes_per_s:.0} hashes/s",
        if avx2 { SCRYPT_LANES_MAX } else { 4 }
    );
    println!(
        "multi-lane / crate:            {:.2}x",
        lanes_per_s / crate_per_s
    );
}
