//! Share-validation kernels next to their baselines, in one run:
//! - SHA256d share validation (coinbase from a midstate, a 12-deep merkle branch, the
//!   header, the target check) against the raw SHA-256 compression loop;
//! - Litecoin scrypt against one SHA256d header hash.
//!
//! Run: `cargo bench -p otedama-benches --bench kernels`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use otedama_kernels::{sha256d::compress_only, Algorithm, Target};
use otedama_shared::share::validate_share;

fn sha256d_share(c: &mut Criterion) {
    let job = otedama_benches::sample_sha256d_job(60, 90, 12);
    let target = Target::from_difficulty(Algorithm::Sha256d, 1.0).unwrap();
    let mut group = c.benchmark_group("sha256d");
    group.throughput(Throughput::Elements(1));
    let mut nonce = 0u32;
    group.bench_function("full_v1_share_validation", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            let submission = otedama_benches::sample_submission(nonce);
            black_box(validate_share(&job, &submission, &target).is_ok())
        })
    });
    // One share costs ~ (coinbase tail blocks + 12×2 merkle + 3 header) compressions; the
    // bound is measured per compression so the ratio can be computed from both lines.
    let block = [0x5au8; 64];
    group.bench_function("raw_compression_per_block", |b| {
        let mut state = [0u32; 8];
        b.iter(|| {
            compress_only(&mut state, black_box(&block));
            black_box(state[0])
        })
    });
    group.finish();
}

fn scrypt(c: &mut Criterion) {
    let header = [7u8; 80];
    let mut group = c.benchmark_group("scrypt");
    group.throughput(Throughput::Elements(1));
    group.bench_function("scrypt_1024_1_1_crate", |b| {
        b.iter(|| otedama_kernels::scrypt::scrypt_pow(black_box(&header)))
    });
    group.bench_function("sha256d_header_baseline", |b| {
        b.iter(|| otedama_kernels::sha256d(black_box(&header)))
    });
    group.finish();
}

criterion_group!(benches, sha256d_share, scrypt);
criterion_main!(benches);
