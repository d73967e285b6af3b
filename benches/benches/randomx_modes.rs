//! RandomX validations per second on one core, in the same run: `randomx-rs` used
//! naively (its recommended flags, a cache of its own, one `calculate_hash` at a time) and
//! the pool's kernel (`otedama_kernels::randomx`: one seed shared by every core's VM,
//! hashes in batches) in light and fast mode, with and without large pages, and the memory
//! each seed holds. Fast mode and large pages run only under `cargo bench`: a dataset takes
//! a minute or more to build on one core, and large pages need `vm.nr_hugepages` reserved
//! (1,300 pages of 2 MiB hold a dataset and its cache; without them that row says so).
//!
//! Run: `cargo bench -p otedama-benches --bench randomx_modes`.

use std::time::Instant;

use otedama_kernels::randomx::{RandomXMode, RandomXSeed};
use randomx_rs::{RandomXCache, RandomXFlag, RandomXVM};

/// Hashing blobs per measurement under `cargo bench` in fast mode, and in light mode
/// (several times slower a hash); `cargo test` hashes a few.
const BLOBS_FAST_BENCH: usize = 20_000;
const BLOBS_LIGHT_BENCH: usize = 1_000;
const BLOBS_SMOKE: usize = 8;
/// Inputs per batch: a loaded core's pass, as for scrypt.
const BATCH: usize = 16;
const SEED: [u8; 32] = [0x5e; 32];

/// Monero-shaped hashing blobs (76 bytes) with the nonce at byte 39.
fn blobs(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut blob = vec![0x10; 76];
            blob[39..43].copy_from_slice(&(i as u32).to_le_bytes());
            blob
        })
        .collect()
}

fn per_s(count: usize, started: Instant) -> f64 {
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let bench = std::env::args().any(|arg| arg == "--bench");
    let (light_count, fast_count) = if bench {
        (BLOBS_LIGHT_BENCH, BLOBS_FAST_BENCH)
    } else {
        (BLOBS_SMOKE, BLOBS_SMOKE)
    };

    // Naive: the binding as its README shows it.
    let inputs = blobs(light_count);
    let flags = RandomXFlag::get_recommended_flags();
    let started = Instant::now();
    let cache = RandomXCache::new(flags, &SEED).expect("a cache");
    let naive_vm = RandomXVM::new(flags, Some(cache), None).expect("a VM");
    let naive_prepare_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let naive: Vec<Vec<u8>> = inputs
        .iter()
        .map(|blob| naive_vm.calculate_hash(blob).expect("a hash"))
        .collect();
    let naive_per_s = per_s(inputs.len(), started);
    println!(
        "randomx-rs naively (light, recommended flags, one at a time): {naive_per_s:.0} hashes/s (cache built in {naive_prepare_s:.1} s)"
    );

    let modes: &[(RandomXMode, bool)] = if bench {
        &[
            (RandomXMode::Light, false),
            (RandomXMode::Light, true),
            (RandomXMode::Fast, false),
            (RandomXMode::Fast, true),
        ]
    } else {
        &[(RandomXMode::Light, false)]
    };
    for &(mode, large_pages) in modes {
        let count = match mode {
            RandomXMode::Light => light_count,
            RandomXMode::Fast => fast_count,
        };
        let inputs = blobs(count);
        let started = Instant::now();
        let seed = match RandomXSeed::prepare_exact(&SEED, mode, large_pages) {
            Ok(seed) => seed,
            Err(error) => {
                println!("{mode:?}, large pages {large_pages}: not prepared ({error})");
                continue;
            }
        };
        let prepare_s = started.elapsed().as_secs_f64();
        let vm = seed.vm().expect("a VM");
        let started = Instant::now();
        let mut hashes = Vec::with_capacity(count);
        let mut batch = Vec::new();
        for chunk in inputs.chunks(BATCH) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            vm.hash_batch(&refs, &mut batch).expect("hashes");
            hashes.extend_from_slice(&batch);
        }
        let batch_per_s = per_s(count, started);
        let started = Instant::now();
        for blob in &inputs[..count.min(BATCH * 8)] {
            std::hint::black_box(vm.hash(blob).expect("a hash"));
        }
        let single_per_s = per_s(count.min(BATCH * 8), started);
        // Every mode computes the same hashes as the naive binding.
        for (hash, expected) in hashes.iter().zip(&naive) {
            assert_eq!(&hash[..], &expected[..], "{mode:?} agrees with light mode");
        }
        println!(
            "{mode:?}, large pages {large_pages}: {batch_per_s:.0} hashes/s in batches of {BATCH} ({:.2}x naive), {single_per_s:.0} one at a time; seed prepared in {prepare_s:.1} s, {} MiB held",
            batch_per_s / naive_per_s,
            seed.memory_bytes() / (1024 * 1024)
        );
    }
}
