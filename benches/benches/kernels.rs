//! Share-validation kernels next to their baselines, in one criterion run, ending with the
//! ratios between them:
//! - SHA256d share validation (coinbase from a midstate, a 12-deep merkle branch, the
//!   header, the target check), single and paired, against the raw SHA-256 compression
//!   loop, single-stream and 2-way interleaved: validation as a share of the bound;
//! - Litecoin scrypt: the multi-lane kernel against the `scrypt` crate.
//!
//! Run: `cargo bench -p otedama-benches --bench kernels`.

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, Throughput};

use otedama_kernels::scrypt::{scrypt_pow, scrypt_pow_many, SCRYPT_LANES_MAX};
use otedama_kernels::{sha256d::compress_only, sha_ni, Algorithm, Target};
use otedama_shared::share::{validate_share, validate_share_pair};

/// Compressions one sample share costs (see `share_bound.rs` for the count).
const COMPRESSIONS_PER_SHARE: f64 = 42.0;

/// Mean time per element over every iteration criterion ran, kept beside criterion's own
/// statistics so the ratios can be printed at the end of the same run.
#[derive(Default)]
struct MeanTime {
    total: Cell<Duration>,
    elements: Cell<u64>,
}

impl MeanTime {
    /// Times `iters` runs of `body`, each worth `elements` elements.
    fn time(&self, iters: u64, elements: u64, mut body: impl FnMut()) -> Duration {
        let started = Instant::now();
        for _ in 0..iters {
            body();
        }
        let elapsed = started.elapsed();
        self.total.set(self.total.get() + elapsed);
        self.elements.set(self.elements.get() + iters * elements);
        elapsed
    }

    fn ns_per_element(&self) -> f64 {
        self.total.get().as_nanos() as f64 / self.elements.get().max(1) as f64
    }
}

#[derive(Default)]
struct Means {
    share: MeanTime,
    share_pair: MeanTime,
    compress: MeanTime,
    compress_x2: MeanTime,
    scrypt_crate: MeanTime,
    scrypt_lanes: MeanTime,
}

fn sha256d_share(c: &mut Criterion, means: &Means) {
    let job = otedama_benches::sample_sha256d_job(64, 90, 12);
    let target = Target::from_difficulty(Algorithm::Sha256d, 1.0).unwrap();
    let mut group = c.benchmark_group("sha256d");
    group.throughput(Throughput::Elements(1));
    let mut nonce = 0u32;
    group.bench_function("full_v1_share_validation", |b| {
        b.iter_custom(|iters| {
            means.share.time(iters, 1, || {
                nonce = nonce.wrapping_add(1);
                let submission = otedama_benches::sample_submission(nonce);
                black_box(validate_share(&job, &submission, &target).is_ok());
            })
        })
    });
    group.throughput(Throughput::Elements(2));
    group.bench_function("paired_v1_share_validation", |b| {
        b.iter_custom(|iters| {
            means.share_pair.time(iters, 2, || {
                nonce = nonce.wrapping_add(2);
                let a = otedama_benches::sample_submission(nonce);
                let b = otedama_benches::sample_submission(nonce + 1);
                let results = validate_share_pair(&job, [&a, &b], &target);
                black_box(results.iter().filter(|r| r.is_ok()).count());
            })
        })
    });
    let block = [0x5au8; 64];
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw_compression_per_block", |b| {
        let mut state = [0u32; 8];
        b.iter_custom(|iters| {
            means.compress.time(iters, 1, || {
                compress_only(&mut state, black_box(&block));
                black_box(state[0]);
            })
        })
    });
    group.throughput(Throughput::Elements(2));
    group.bench_function("raw_compression_2way_per_pair", |b| {
        let (mut a, mut other) = ([0u32; 8], [1u32; 8]);
        b.iter_custom(|iters| {
            means.compress_x2.time(iters, 2, || {
                sha_ni::compress2(&mut a, black_box(&block), &mut other, black_box(&block));
                black_box((a[0], other[0]));
            })
        })
    });
    group.finish();
}

fn scrypt(c: &mut Criterion, means: &Means) {
    let header = [7u8; 80];
    // Distinct headers: equal ones would make every lane read the same scratch lines.
    let headers: [[u8; 80]; SCRYPT_LANES_MAX] = std::array::from_fn(|lane| [lane as u8 + 1; 80]);
    let mut out = [[0u8; 32]; SCRYPT_LANES_MAX];
    let mut group = c.benchmark_group("scrypt");
    group.throughput(Throughput::Elements(1));
    group.bench_function("scrypt_1024_1_1_crate", |b| {
        b.iter_custom(|iters| {
            means.scrypt_crate.time(iters, 1, || {
                black_box(scrypt_pow(black_box(&header)));
            })
        })
    });
    group.throughput(Throughput::Elements(SCRYPT_LANES_MAX as u64));
    group.bench_function("scrypt_1024_1_1_multi_lane", |b| {
        b.iter_custom(|iters| {
            means.scrypt_lanes.time(iters, SCRYPT_LANES_MAX as u64, || {
                scrypt_pow_many(black_box(&headers), &mut out);
                black_box(&out);
            })
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let means = Means::default();
    sha256d_share(&mut criterion, &means);
    scrypt(&mut criterion, &means);
    criterion.final_summary();

    let compression_ns = means
        .compress
        .ns_per_element()
        .min(means.compress_x2.ns_per_element());
    let bound_ns = COMPRESSIONS_PER_SHARE * compression_ns;
    println!("ratios in this run (mean time per element over every iteration criterion ran):");
    println!(
        "  compression: {:.1} ns single-stream, {:.1} ns 2-way; bound {:.0} ns/share ({:.0} shares/s)",
        means.compress.ns_per_element(),
        means.compress_x2.ns_per_element(),
        bound_ns,
        1e9 / bound_ns
    );
    for (name, mean) in [("single", &means.share), ("paired", &means.share_pair)] {
        println!(
            "  {name} share validation: {:.0} ns/share ({:.0} shares/s), {:.1} % of the bound",
            mean.ns_per_element(),
            1e9 / mean.ns_per_element(),
            100.0 * bound_ns / mean.ns_per_element()
        );
    }
    println!(
        "  scrypt: crate {:.0} hashes/s, multi-lane {:.0} hashes/s, {:.2}x",
        1e9 / means.scrypt_crate.ns_per_element(),
        1e9 / means.scrypt_lanes.ns_per_element(),
        means.scrypt_crate.ns_per_element() / means.scrypt_lanes.ns_per_element()
    );
}
