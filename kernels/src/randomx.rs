//! RandomX, Monero's proof of work (`rx/0`), through `randomx-rs`: the reference
//! implementation, built from its C++ source. A seed (the key block's hash, which
//! changes every 2048 blocks) is prepared once into a cache of 256 MiB and, in fast mode,
//! a dataset of about 2 GiB shared by every core's virtual machine; each core then hashes
//! with a VM of its own.
//!
//! Unlike the rest of this crate, a hash here allocates its 32-byte result (the binding
//! returns a `Vec`): next to a RandomX hash's hundreds of microseconds that is noise.
//!
//! Difficulty is Monero's: a hash, read as a 256-bit little-endian number, meets
//! difficulty `d` when `hash × d` stays below 2^256.

use randomx_rs::{RandomXCache, RandomXDataset, RandomXError, RandomXFlag, RandomXVM};

/// Bytes of a RandomX seed (a block hash) and of a RandomX hash.
pub const RANDOMX_SEED_BYTES: usize = 32;
/// The longest input hashed. A Monero hashing blob is 76 bytes plus a few for larger
/// varints; nothing a miner sends is hashed past this.
pub const RANDOMX_INPUT_BYTES_MAX: usize = 256;
/// The cache's size (RandomX's Argon2 memory: 262,144 KiB), in light and fast mode alike.
pub const RANDOMX_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// One dataset item.
const RANDOMX_DATASET_ITEM_BYTES: u64 = 64;
/// The dataset: RandomX's base size (2 GiB) and its extra items (32 MiB less one item).
pub const RANDOMX_DATASET_BYTES: u64 = 2_147_483_648 + 33_554_368;
/// What fast mode holds for one seed: the cache and the dataset.
pub const RANDOMX_FAST_MODE_BYTES: u64 = RANDOMX_CACHE_BYTES + RANDOMX_DATASET_BYTES;

/// How a seed is prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomXMode {
    /// With the dataset (about 2 GiB a seed): hashes several times faster.
    Fast,
    /// With the cache alone (256 MiB a seed): for hosts without the memory.
    Light,
}

/// Why a seed could not be prepared or an input hashed.
#[derive(Debug, thiserror::Error)]
pub enum RandomXFailure {
    #[error("RandomX: {0}")]
    Library(#[from] RandomXError),
    #[error("RandomX input of {0} bytes (1 to {RANDOMX_INPUT_BYTES_MAX})")]
    InputSize(usize),
    #[error("RandomX returned {0} bytes, not 32")]
    OutputSize(usize),
}

/// One seed, prepared: the cache, and in fast mode the dataset, from which each core makes
/// its VM (`RandomXSeed::vm`). What was asked may not be what was had: fast mode falls back
/// to light when the dataset cannot be allocated, and large pages to ordinary ones; the
/// caller logs `mode()` and `large_pages()`.
pub struct RandomXSeed {
    key: [u8; RANDOMX_SEED_BYTES],
    mode: RandomXMode,
    large_pages: bool,
    flags: RandomXFlag,
    cache: RandomXCache,
    dataset: Option<RandomXDataset>,
}

// SAFETY: the cache and the dataset are written only while `prepare` initialises them,
// before the value exists; after that RandomX reads them and never writes them, and its
// documentation lets many VMs on many threads share one cache or dataset. The handles are
// `Arc`s (atomic counts) around the library's pointers, released once, by the last drop.
unsafe impl Send for RandomXSeed {}
// SAFETY: as for `Send`: nothing reached through `&RandomXSeed` is ever written.
unsafe impl Sync for RandomXSeed {}

impl RandomXSeed {
    /// Prepares `key` for `wanted`: large pages first, then ordinary memory, and in fast
    /// mode light mode last. In fast mode the dataset is initialised here, on this thread
    /// (a minute or more on one core: do it before the seed is needed). The fall-back
    /// catches an allocation refused, not one the kernel grants and then cannot back: with
    /// overcommit a dataset in ordinary pages is granted and the process killed as it is
    /// written, so ask for fast mode only where `RANDOMX_FAST_MODE_BYTES` is available.
    pub fn prepare(
        key: &[u8; RANDOMX_SEED_BYTES],
        wanted: RandomXMode,
    ) -> Result<Self, RandomXFailure> {
        let modes: &[RandomXMode] = match wanted {
            RandomXMode::Fast => &[RandomXMode::Fast, RandomXMode::Light],
            RandomXMode::Light => &[RandomXMode::Light],
        };
        let mut last_error = None;
        for &mode in modes {
            for large_pages in [true, false] {
                match Self::prepare_exact(key, mode, large_pages) {
                    Ok(seed) => return Ok(seed),
                    Err(error) => last_error = Some(error),
                }
            }
        }
        Err(last_error.expect("at least one mode was tried"))
    }

    /// Prepares `key` in exactly this mode and memory, or fails (no large pages reserved,
    /// not enough memory for the dataset).
    pub fn prepare_exact(
        key: &[u8; RANDOMX_SEED_BYTES],
        mode: RandomXMode,
        large_pages: bool,
    ) -> Result<Self, RandomXFailure> {
        let mut flags = RandomXFlag::get_recommended_flags();
        if large_pages {
            flags |= RandomXFlag::FLAG_LARGE_PAGES;
        }
        if mode == RandomXMode::Fast {
            flags |= RandomXFlag::FLAG_FULL_MEM;
        }
        let cache = RandomXCache::new(flags, key)?;
        let dataset = match mode {
            RandomXMode::Fast => Some(RandomXDataset::new(flags, cache.clone(), 0)?),
            RandomXMode::Light => None,
        };
        Ok(RandomXSeed {
            key: *key,
            mode,
            large_pages,
            flags,
            cache,
            dataset,
        })
    }

    pub fn key(&self) -> &[u8; RANDOMX_SEED_BYTES] {
        &self.key
    }

    pub fn mode(&self) -> RandomXMode {
        self.mode
    }

    pub fn large_pages(&self) -> bool {
        self.large_pages
    }

    /// The memory this seed holds: the cache, and the dataset in fast mode.
    pub fn memory_bytes(&self) -> u64 {
        let dataset = match self.dataset {
            Some(_) => RandomXDataset::count()
                .map_or(0, |items| u64::from(items) * RANDOMX_DATASET_ITEM_BYTES),
            None => 0,
        };
        RANDOMX_CACHE_BYTES + dataset
    }

    /// A VM for one core, sharing this seed's cache or dataset. Its own 2 MiB scratchpad
    /// is in ordinary pages: `randomx-rs` does not check the library's VM for null, and a
    /// scratchpad that cannot get a large page is the likeliest null (large pages all taken
    /// by the seeds), which would crash at the first hash. Whatever large pages would give
    /// the scratchpad is given up for that (not measured; the bench's VMs are all made
    /// so). The other null, JIT memory refused by a host that forbids writable and
    /// executable pages, is not caught here.
    pub fn vm(&self) -> Result<RandomXVm, RandomXFailure> {
        let flags = self.flags & !RandomXFlag::FLAG_LARGE_PAGES;
        let vm = match &self.dataset {
            Some(dataset) => RandomXVM::new(flags, None, Some(dataset.clone()))?,
            None => RandomXVM::new(flags, Some(self.cache.clone()), None)?,
        };
        Ok(RandomXVm { key: self.key, vm })
    }
}

/// One core's RandomX machine for one seed. Not `Send`: it stays on the thread that made it.
pub struct RandomXVm {
    key: [u8; RANDOMX_SEED_BYTES],
    vm: RandomXVM,
}

impl RandomXVm {
    /// The seed this VM hashes under.
    pub fn key(&self) -> &[u8; RANDOMX_SEED_BYTES] {
        &self.key
    }

    pub fn hash(&self, input: &[u8]) -> Result<[u8; 32], RandomXFailure> {
        check_input(input)?;
        to_hash(self.vm.calculate_hash(input)?)
    }

    /// Hashes several inputs at once (RandomX overlaps one hash's program generation with
    /// the previous one's execution), into `out` in the same order.
    pub fn hash_batch(
        &self,
        inputs: &[&[u8]],
        out: &mut Vec<[u8; 32]>,
    ) -> Result<(), RandomXFailure> {
        out.clear();
        if inputs.is_empty() {
            return Ok(());
        }
        for input in inputs {
            check_input(input)?;
        }
        // The library's pipelined calls leave the SSE control register as the last
        // program set it (rounding mode, flush-to-zero), where its one-at-a-time call
        // restores it; every float after them on this thread would be computed under
        // that state. Restored here, on success or failure.
        #[cfg(target_arch = "x86_64")]
        let hashes = {
            let saved = sse_control();
            let hashes = self.vm.calculate_hash_set(inputs);
            set_sse_control(saved);
            hashes
        };
        #[cfg(not(target_arch = "x86_64"))]
        let hashes: Result<Vec<Vec<u8>>, RandomXError> = inputs
            .iter()
            .map(|input| self.vm.calculate_hash(input))
            .collect();
        let result = hashes.map_err(RandomXFailure::from).and_then(|hashes| {
            if hashes.len() != inputs.len() {
                return Err(RandomXFailure::OutputSize(hashes.len()));
            }
            hashes.into_iter().try_for_each(|hash| {
                out.push(to_hash(hash)?);
                Ok(())
            })
        });
        if result.is_err() {
            out.clear();
        }
        result
    }
}

/// The SSE control and status register (MXCSR).
#[cfg(target_arch = "x86_64")]
fn sse_control() -> u32 {
    let mut value: u32 = 0;
    // SAFETY: `stmxcsr` writes the register into the 4 bytes given and touches nothing
    // else.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut value, options(nostack, preserves_flags));
    }
    value
}

#[cfg(target_arch = "x86_64")]
fn set_sse_control(value: u32) {
    // SAFETY: `value` was read by `sse_control` on this thread before RandomX changed the
    // register, so this puts back the state the surrounding Rust code runs under.
    unsafe {
        std::arch::asm!(
            "ldmxcsr [{}]",
            in(reg) &value,
            options(nostack, preserves_flags, readonly)
        );
    }
}

fn check_input(input: &[u8]) -> Result<(), RandomXFailure> {
    if input.is_empty() || input.len() > RANDOMX_INPUT_BYTES_MAX {
        return Err(RandomXFailure::InputSize(input.len()));
    }
    Ok(())
}

fn to_hash(bytes: Vec<u8>) -> Result<[u8; 32], RandomXFailure> {
    let length = bytes.len();
    bytes
        .try_into()
        .map_err(|_| RandomXFailure::OutputSize(length))
}

/// The hash's four 64-bit words, least significant first (Monero reads a hash so).
fn words(hash: &[u8; 32]) -> [u64; 4] {
    std::array::from_fn(|i| u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes")))
}

/// Whether `hash` meets `difficulty` as monerod checks a block: `hash × difficulty` fits in
/// 256 bits. Difficulty 0 is met by nothing (no job has it; it would otherwise be met by
/// every hash).
pub fn meets_difficulty(hash: &[u8; 32], difficulty: u128) -> bool {
    if difficulty == 0 {
        return false;
    }
    let hash = words(hash);
    let low = difficulty as u64;
    let high = (difficulty >> 64) as u64;
    // hash × difficulty in six words: hash × low, plus hash × high one word up.
    let mut product = [0u64; 6];
    for (shift, factor) in [(0, low), (1, high)] {
        let mut carry = 0u128;
        for (i, word) in hash.iter().enumerate() {
            let sum =
                u128::from(*word) * u128::from(factor) + u128::from(product[i + shift]) + carry;
            product[i + shift] = sum as u64;
            carry = sum >> 64;
        }
        let mut at = 4 + shift;
        while carry != 0 && at < 6 {
            let sum = u128::from(product[at]) + carry;
            product[at] = sum as u64;
            carry = sum >> 64;
            at += 1;
        }
    }
    product[4] == 0 && product[5] == 0
}

/// The difficulty `hash` proves: 2^256 ÷ the hash read little-endian (`f64::INFINITY` for a
/// hash of 0), as a share record keeps it.
pub fn hash_difficulty(hash: &[u8; 32]) -> f64 {
    let value = words(hash)
        .iter()
        .rev()
        .fold(0f64, |value, word| value * 2f64.powi(64) + *word as f64);
    2f64.powi(256) / value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RandomX's own vectors (its `tests.cpp`), in light mode: the binding computes what the
    /// reference does.
    #[test]
    fn light_mode_matches_the_reference_vectors() {
        let vectors: [(&[u8], &[u8], &str); 4] = [
            (
                b"test key 000",
                b"This is a test",
                "639183aae1bf4c9a35884cb46b09cad9175f04efd7684e7262a0ac1c2f0b4e3f",
            ),
            (
                b"test key 000",
                b"Lorem ipsum dolor sit amet",
                "300a0adb47603dedb42228ccb2b211104f4da45af709cd7547cd049e9489c969",
            ),
            (
                b"test key 000",
                b"sed do eiusmod tempor incididunt ut labore et dolore magna aliqua",
                "c36d4ed4191e617309867ed66a443be4075014e2b061bcdaf9ce7b721d2b77a8",
            ),
            (
                b"test key 001",
                b"sed do eiusmod tempor incididunt ut labore et dolore magna aliqua",
                "e9ff4503201c0c2cca26d285c93ae883f9b1d30c9eb240b820756f2d5a7905fc",
            ),
        ];
        for (key, input, expected) in vectors {
            // The reference vectors' keys are shorter than a seed; a seed is a block hash,
            // so they go through the binding directly.
            let flags = RandomXFlag::get_recommended_flags();
            let cache = RandomXCache::new(flags, key).unwrap();
            let vm = RandomXVM::new(flags, Some(cache), None).unwrap();
            assert_eq!(hex::encode(vm.calculate_hash(input).unwrap()), expected);
        }
        // Through this module: one seed, one VM, one at a time and in a batch.
        let seed = RandomXSeed::prepare(&[7; 32], RandomXMode::Light).unwrap();
        assert_eq!(seed.mode(), RandomXMode::Light);
        assert_eq!(seed.memory_bytes(), RANDOMX_CACHE_BYTES);
        let vm = seed.vm().unwrap();
        let inputs: [&[u8]; 3] = [b"a", b"bb", b"a"];
        let mut batch = Vec::new();
        vm.hash_batch(&inputs, &mut batch).unwrap();
        let one_at_a_time: Vec<_> = inputs.iter().map(|input| vm.hash(input).unwrap()).collect();
        assert_eq!(batch, one_at_a_time);
        assert_eq!(batch[0], batch[2]);
        assert_ne!(batch[0], batch[1]);
    }

    /// A batch leaves the SSE control register (rounding, flush-to-zero) as it found it,
    /// so the floats after it (difficulties, vardiff) are computed as Rust expects.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_batch_leaves_the_float_state_as_it_was() {
        let vm = RandomXSeed::prepare(&[3; 32], RandomXMode::Light)
            .unwrap()
            .vm()
            .unwrap();
        let before = sse_control();
        let inputs: Vec<Vec<u8>> = (0..32u8).map(|i| vec![i; 76]).collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let mut out = Vec::new();
        vm.hash_batch(&refs, &mut out).unwrap();
        assert_eq!(out.len(), inputs.len());
        assert_eq!(sse_control(), before);
        assert_eq!(1.0f64 / 3.0, 0.333_333_333_333_333_3);
    }

    #[test]
    fn the_dataset_is_the_size_stated() {
        let items = u64::from(RandomXDataset::count().unwrap());
        assert_eq!(items * RANDOMX_DATASET_ITEM_BYTES, RANDOMX_DATASET_BYTES);
    }

    /// Inputs a miner shapes: empty and one byte past `RANDOMX_INPUT_BYTES_MAX` are
    /// refused, the limit itself is hashed.
    #[test]
    fn inputs_are_bounded() {
        let vm = RandomXSeed::prepare(&[1; 32], RandomXMode::Light)
            .unwrap()
            .vm()
            .unwrap();
        assert!(matches!(vm.hash(&[]), Err(RandomXFailure::InputSize(0))));
        assert!(vm.hash(&[0; RANDOMX_INPUT_BYTES_MAX]).is_ok());
        assert!(matches!(
            vm.hash(&[0; RANDOMX_INPUT_BYTES_MAX + 1]),
            Err(RandomXFailure::InputSize(_))
        ));
        let mut out = Vec::new();
        assert!(vm
            .hash_batch(&[b"ok", &[0; RANDOMX_INPUT_BYTES_MAX + 1]], &mut out)
            .is_err());
    }

    fn hash_of(value_le: [u64; 4]) -> [u8; 32] {
        let mut hash = [0; 32];
        for (i, word) in value_le.iter().enumerate() {
            hash[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        hash
    }

    /// The edges of `hash × difficulty < 2^256`, against exact products.
    #[test]
    fn difficulty_is_checked_as_monerod_does() {
        let max = hash_of([u64::MAX; 4]);
        assert!(meets_difficulty(&max, 1));
        assert!(!meets_difficulty(&max, 2));
        assert!(
            !meets_difficulty(&[0; 32], 0),
            "difficulty 0 is met by nothing"
        );
        assert!(meets_difficulty(&[0; 32], u128::MAX));
        // 2^255 - 1 meets 2, 2^255 does not.
        let below_half = hash_of([u64::MAX, u64::MAX, u64::MAX, u64::MAX >> 1]);
        let half = hash_of([0, 0, 0, 1 << 63]);
        assert!(meets_difficulty(&below_half, 2));
        assert!(!meets_difficulty(&half, 2));
        // The largest difficulty: hash 2^128 meets 2^128 - 1 (product 2^256 - 2^128),
        // hash 2^128 + 2^64 does not (product past 2^256).
        let at = hash_of([0, 0, 1, 0]);
        let past = hash_of([0, 1, 1, 0]);
        assert!(meets_difficulty(&at, u128::MAX));
        assert!(!meets_difficulty(&past, u128::MAX));
        // Hash 2^192 meets 2^64 - 1 (product 2^256 - 2^192), not 2^64 (product 2^256).
        let top = hash_of([0, 0, 0, 1]);
        assert!(meets_difficulty(&top, u128::from(u64::MAX)));
        assert!(!meets_difficulty(&top, 1 << 64));
        // A seeded sweep against the exact product in 512 bits.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let shift = next() % 256;
            let value = [next(), next(), next(), next() >> (shift % 64)];
            let difficulty = (u128::from(next()) << 64 | u128::from(next())) >> (next() % 128);
            let expected = exact_product_fits(value, difficulty);
            assert_eq!(
                meets_difficulty(&hash_of(value), difficulty),
                expected && difficulty != 0,
                "{value:x?} × {difficulty}"
            );
        }
    }

    /// The product by the schoolbook method over 32-bit halves, as a check independent of
    /// the one under test.
    fn exact_product_fits(value: [u64; 4], difficulty: u128) -> bool {
        let a: Vec<u64> = value
            .iter()
            .flat_map(|w| [w & 0xffff_ffff, w >> 32])
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|i| (difficulty >> (32 * i)) as u64 & 0xffff_ffff)
            .collect();
        let mut out = [0u64; 13];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                out[i + j] += (x * y) & 0xffff_ffff;
                out[i + j + 1] += (x * y) >> 32;
            }
        }
        for i in 0..12 {
            out[i + 1] += out[i] >> 32;
            out[i] &= 0xffff_ffff;
        }
        out[8..].iter().all(|limb| *limb == 0)
    }

    #[test]
    fn a_hash_proves_its_difficulty() {
        assert_eq!(hash_difficulty(&hash_of([0, 0, 0, 1 << 63])), 2.0);
        assert_eq!(hash_difficulty(&hash_of([0, 0, 0, 1])), 2f64.powi(64));
        assert_eq!(hash_difficulty(&[0; 32]), f64::INFINITY);
    }
}
