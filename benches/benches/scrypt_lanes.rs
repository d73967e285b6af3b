//! Scrypt validations per second on one core: the `scrypt` crate (one header at a time)
//! and Otedama's multi-lane kernel (16 headers per pass with AVX-512, 8 with AVX2), and the
//! AVX2 kernel alone where AVX-512 is present, in the
//! same run, with their ratio.
//!
//! Run: `cargo bench -p otedama-benches --bench scrypt_lanes`.

use std::hint::black_box;
use std::time::Instant;

use otedama_kernels::scrypt::{scrypt_lanes, scrypt_pow, scrypt_pow_many, scrypt_pow_many_avx2};

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
    let mut out_avx2 = vec![[0u8; 32]; count];
    let started = Instant::now();
    scrypt_pow_many_avx2(black_box(&inputs), &mut out_avx2);
    let avx2_per_s = count as f64 / started.elapsed().as_secs_f64();
    black_box(&out_avx2);

    println!("scrypt N=1024 r=1 p=1 on 80-byte headers, one core");
    println!("scrypt crate, one at a time:   {crate_per_s:.0} hashes/s");
    println!(
        "multi-lane kernel ({:2} lanes):  {lanes_per_s:.0} hashes/s",
        scrypt_lanes()
    );
    println!("8-lane AVX2 kernel alone:      {avx2_per_s:.0} hashes/s");
    println!(
        "multi-lane / crate:            {:.2}x",
        lanes_per_s / crate_per_s
    );
    println!(
        "8-lane AVX2 / crate:           {:.2}x",
        avx2_per_s / crate_per_s
    );
    assert_eq!(out_avx2[0], scrypt_pow(&inputs[0]), "AVX2 kernel disagrees");
    assert_eq!(out[0], scrypt_pow(&inputs[0]), "kernels disagree");
}
