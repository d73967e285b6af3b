//! Litecoin's proof of work: scrypt with N=1024, r=1, p=1, the 80-byte header as both
//! password and salt, and a 32-byte output read as a little-endian integer.

/// log2(N) for Litecoin's scrypt.
const SCRYPT_LOG_N: u8 = 10;
const SCRYPT_R: u32 = 1;
const SCRYPT_P: u32 = 1;

/// Scrypt proof-of-work hash of a block header, in internal (little-endian) byte order.
pub fn scrypt_pow(header: &[u8; 80]) -> [u8; 32] {
    let params = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, 32)
        .expect("constant scrypt parameters are valid");
    let mut out = [0u8; 32];
    scrypt::scrypt(header, header, &params, &mut out).expect("32-byte output is a valid length");
    out
}

/// Headers hashed side by side by the widest multi-lane kernel: 16 with AVX-512 (one
/// 512-bit register holds the same Salsa20 word of all 16), 8 with AVX2, 4 with the SSE2
/// baseline. `scrypt_lanes` says which this CPU runs.
pub const SCRYPT_LANES_MAX: usize = 16;
/// Lanes of the AVX2 kernel, which also takes the chunks of 8 or fewer on an AVX-512 CPU.
const AVX2_LANES: usize = 8;
const SCRYPT_N: usize = 1 << SCRYPT_LOG_N;
/// 32-bit words in one 128-byte scrypt block (r = 1).
const BLOCK_WORDS: usize = 32;

/// Scrypt proof-of-work hashes of many headers, several at a time: `out[i]` is
/// `scrypt_pow(&headers[i])`, bit for bit.
///
/// The memory-hard core (ROMix with Salsa20/8) runs "vertically": word `w` of every lane
/// sits in one vector, so each Salsa20 step is one vector add, rotate and xor for all lanes
/// at once. Only ROMix's data-dependent reads are per lane. The two PBKDF2-HMAC-SHA256
/// steps use `sha2`, which takes SHA-NI when the CPU has it. Runs on any x86-64 (SSE2) and
/// uses AVX2 when the CPU has it; other targets get the same code, vectorized as their
/// compiler can.
pub fn scrypt_pow_many(headers: &[[u8; 80]], out: &mut [[u8; 32]]) {
    assert_eq!(headers.len(), out.len(), "one output per header");
    match widest_kernel() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            // SAFETY: the CPU supports AVX-512F (and so AVX2), checked by `widest_kernel`.
            unsafe { scrypt_many_x86::<true>(headers, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY: the CPU supports AVX2, checked by `widest_kernel`.
            unsafe { scrypt_many_x86::<false>(headers, out) }
        }
        Kernel::Portable => scrypt_many_lanes::<4>(headers, out),
    }
}

/// `scrypt_pow_many` on the 8-lane AVX2 kernel even where AVX-512 is there, for
/// same-run comparisons (`benches/scrypt_lanes`); the portable kernel without AVX2.
pub fn scrypt_pow_many_avx2(headers: &[[u8; 80]], out: &mut [[u8; 32]]) {
    assert_eq!(headers.len(), out.len(), "one output per header");
    match widest_kernel() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx2 => {
            // SAFETY: the CPU supports AVX2, checked by `widest_kernel`.
            unsafe { scrypt_many_x86::<false>(headers, out) }
        }
        Kernel::Portable => scrypt_many_lanes::<4>(headers, out),
    }
}

/// How many headers the widest kernel this CPU runs hashes in one pass: a batch of this
/// many costs about what one of a single header does.
pub fn scrypt_lanes() -> usize {
    match widest_kernel() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => SCRYPT_LANES_MAX,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => AVX2_LANES,
        Kernel::Portable => 4,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

fn widest_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2") {
            return Kernel::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
    }
    Kernel::Portable
}

/// The x86 kernels: with `WIDE`, chunks of 16 on AVX-512 and a last chunk of 8 or fewer
/// on AVX2 (half the work of a mostly empty 16-lane pass); otherwise chunks of 8 on AVX2.
///
/// # Safety
/// The CPU must support AVX2, and AVX-512F when `WIDE`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scrypt_many_x86<const WIDE: bool>(headers: &[[u8; 80]], out: &mut [[u8; 32]]) {
    let chunk_lanes = if WIDE { SCRYPT_LANES_MAX } else { AVX2_LANES };
    ROMIX_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.resize(SCRYPT_N * BLOCK_WORDS * chunk_lanes, 0);
        for (headers, out) in headers.chunks(chunk_lanes).zip(out.chunks_mut(chunk_lanes)) {
            if headers.len() > AVX2_LANES {
                let mut x = [[0u32; SCRYPT_LANES_MAX]; BLOCK_WORDS];
                expand_lanes(headers, &mut x);
                // SAFETY: only reached with `WIDE`, so the CPU has AVX-512F; scratch holds
                // N blocks of 16 lanes.
                unsafe { avx512::romix(&mut x, &mut scratch) };
                finish_lanes(headers, &x, out);
            } else {
                let mut x = [[0u32; AVX2_LANES]; BLOCK_WORDS];
                expand_lanes(headers, &mut x);
                // SAFETY: AVX2 is enabled for this function; scratch holds at least N
                // blocks of 8 lanes.
                unsafe { avx2::romix(&mut x, &mut scratch) };
                finish_lanes(headers, &x, out);
            }
        }
    });
}

/// PBKDF2-HMAC-SHA256(header, header, 1, 128) for each lane, transposed into words.
#[inline(always)]
fn expand_lanes<const L: usize>(headers: &[[u8; 80]], x: &mut [[u32; L]; BLOCK_WORDS]) {
    for (lane, header) in headers.iter().enumerate() {
        let mut block = [0u8; 128];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(header, header, 1, &mut block);
        for (word, bytes) in x.iter_mut().zip(block.chunks_exact(4)) {
            word[lane] = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
        }
    }
}

/// PBKDF2-HMAC-SHA256(header, ROMix output, 1, 32) for each lane.
#[inline(always)]
fn finish_lanes<const L: usize>(
    headers: &[[u8; 80]],
    x: &[[u32; L]; BLOCK_WORDS],
    out: &mut [[u8; 32]],
) {
    for (lane, (header, hash)) in headers.iter().zip(out.iter_mut()).enumerate() {
        let mut block = [0u8; 128];
        for (bytes, word) in block.chunks_exact_mut(4).zip(x.iter()) {
            bytes.copy_from_slice(&word[lane].to_le_bytes());
        }
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(header, &block, 1, hash);
    }
}

/// ROMix on 8 lanes with AVX2 intrinsics: one `__m256i` per Salsa20 word. The scratch
/// keeps each lane's block whole, with 8 x 8 transposes on the way in and out, as the
/// AVX-512 kernel does (see there why).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{AVX2_LANES as L, BLOCK_WORDS, SCRYPT_N};

    /// `s[target] ^= rotl(s[a] + s[c], K)`; `R` is `32 - K` (stable Rust cannot compute
    /// it from `K` in a const argument).
    #[inline(always)]
    unsafe fn step<const K: i32, const R: i32>(
        s: &mut [__m256i; 16],
        target: usize,
        a: usize,
        c: usize,
    ) {
        let sum = _mm256_add_epi32(s[a], s[c]);
        let rotated = _mm256_or_si256(_mm256_slli_epi32::<K>(sum), _mm256_srli_epi32::<R>(sum));
        s[target] = _mm256_xor_si256(s[target], rotated);
    }

    #[inline(always)]
    unsafe fn xor_salsa8(b: &mut [__m256i; 16], with: &[__m256i; 16]) {
        for i in 0..16 {
            b[i] = _mm256_xor_si256(b[i], with[i]);
        }
        let mut s = *b;
        for _ in 0..4 {
            step::<7, 25>(&mut s, 4, 0, 12);
            step::<7, 25>(&mut s, 9, 5, 1);
            step::<7, 25>(&mut s, 14, 10, 6);
            step::<7, 25>(&mut s, 3, 15, 11);
            step::<9, 23>(&mut s, 8, 4, 0);
            step::<9, 23>(&mut s, 13, 9, 5);
            step::<9, 23>(&mut s, 2, 14, 10);
            step::<9, 23>(&mut s, 7, 3, 15);
            step::<13, 19>(&mut s, 12, 8, 4);
            step::<13, 19>(&mut s, 1, 13, 9);
            step::<13, 19>(&mut s, 6, 2, 14);
            step::<13, 19>(&mut s, 11, 7, 3);
            step::<18, 14>(&mut s, 0, 12, 8);
            step::<18, 14>(&mut s, 5, 1, 13);
            step::<18, 14>(&mut s, 10, 6, 2);
            step::<18, 14>(&mut s, 15, 11, 7);
            step::<7, 25>(&mut s, 1, 0, 3);
            step::<7, 25>(&mut s, 6, 5, 4);
            step::<7, 25>(&mut s, 11, 10, 9);
            step::<7, 25>(&mut s, 12, 15, 14);
            step::<9, 23>(&mut s, 2, 1, 0);
            step::<9, 23>(&mut s, 7, 6, 5);
            step::<9, 23>(&mut s, 8, 11, 10);
            step::<9, 23>(&mut s, 13, 12, 15);
            step::<13, 19>(&mut s, 3, 2, 1);
            step::<13, 19>(&mut s, 4, 7, 6);
            step::<13, 19>(&mut s, 9, 8, 11);
            step::<13, 19>(&mut s, 14, 13, 12);
            step::<18, 14>(&mut s, 0, 3, 2);
            step::<18, 14>(&mut s, 5, 4, 7);
            step::<18, 14>(&mut s, 10, 9, 8);
            step::<18, 14>(&mut s, 15, 14, 13);
        }
        for i in 0..16 {
            b[i] = _mm256_add_epi32(b[i], s[i]);
        }
    }

    #[inline(always)]
    unsafe fn block_mix(x: &mut [__m256i; BLOCK_WORDS]) {
        let (b0, b1) = x.split_at_mut(16);
        let b0: &mut [__m256i; 16] = b0.try_into().expect("16 words");
        let b1: &mut [__m256i; 16] = b1.try_into().expect("16 words");
        xor_salsa8(b0, b1);
        xor_salsa8(b1, b0);
    }

    /// Transposes an 8 x 8 matrix of 32-bit words held as 8 rows: 4 x 4 transposes
    /// inside each 128-bit lane, then the lanes put in place.
    #[inline(always)]
    unsafe fn transpose8(rows: &mut [__m256i; 8]) {
        let mut t = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
        }
        // u[4k + m], 128-bit lane L: column 4L + m of rows 4k .. 4k + 3.
        let mut u = [_mm256_setzero_si256(); 8];
        for k in 0..2 {
            u[4 * k] = _mm256_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 1] = _mm256_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 2] = _mm256_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
            u[4 * k + 3] = _mm256_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
        }
        for m in 0..4 {
            rows[m] = _mm256_permute2x128_si256::<0x20>(u[m], u[4 + m]);
            rows[4 + m] = _mm256_permute2x128_si256::<0x31>(u[m], u[4 + m]);
        }
    }

    /// ROMix (r = 1) on 8 lanes. `v` must hold N × 32 × 8 words: lane l's block j at
    /// words j*256 + l*32 .. + 32.
    #[target_feature(enable = "avx2")]
    pub unsafe fn romix(words: &mut [[u32; L]; BLOCK_WORDS], v: &mut [u32]) {
        assert!(v.len() >= SCRYPT_N * BLOCK_WORDS * L);
        let mut x = [_mm256_setzero_si256(); BLOCK_WORDS];
        for (vector, word) in x.iter_mut().zip(words.iter()) {
            *vector = _mm256_loadu_si256(word.as_ptr().cast());
        }
        let base = v.as_mut_ptr();
        for i in 0..SCRYPT_N {
            let block = base.add(i * BLOCK_WORDS * L);
            for quarter in 0..4 {
                let mut rows: [__m256i; 8] =
                    x[quarter * 8..quarter * 8 + 8].try_into().expect("8 words");
                transpose8(&mut rows);
                for (lane, row) in rows.iter().enumerate() {
                    _mm256_storeu_si256(block.add(lane * BLOCK_WORDS + quarter * 8).cast(), *row);
                }
            }
            block_mix(&mut x);
        }
        let index_mask = _mm256_set1_epi32((SCRYPT_N - 1) as i32);
        for _ in 0..SCRYPT_N {
            // Integerify: the first word of the last 64-byte half picks each lane's block.
            let picks = _mm256_and_si256(x[16], index_mask);
            let mut blocks = [0u32; L];
            _mm256_storeu_si256(blocks.as_mut_ptr().cast(), picks);
            for quarter in 0..4 {
                let mut rows = [_mm256_setzero_si256(); 8];
                for (lane, row) in rows.iter_mut().enumerate() {
                    let at = blocks[lane] as usize * BLOCK_WORDS * L + lane * BLOCK_WORDS;
                    *row = _mm256_loadu_si256(base.add(at + quarter * 8).cast());
                }
                transpose8(&mut rows);
                for (vector, row) in x[quarter * 8..quarter * 8 + 8].iter_mut().zip(rows) {
                    *vector = _mm256_xor_si256(*vector, row);
                }
            }
            block_mix(&mut x);
        }
        for (vector, word) in x.iter().zip(words.iter_mut()) {
            _mm256_storeu_si256(word.as_mut_ptr().cast(), *vector);
        }
    }
}

/// ROMix on 16 lanes with AVX-512F intrinsics: one `__m512i` per Salsa20 word, and
/// `vprold`, one rotate where AVX2 needs two shifts and an or (5 instructions a Salsa20
/// step become 3).
///
/// The scratch keeps each lane's block whole (128 bytes) rather than word by word across
/// lanes. ROMix's second loop reads one block per lane at a data-dependent address: kept
/// word by word, that is one scalar load per lane and word (512 an iteration, then put
/// together into vectors); kept whole, it is two vector loads per lane and a 16 x 16
/// transpose of each half block, and the first loop pays the same transpose to store.
/// Measured on one core (BENCHMARKS.md): 21,329/s with scalar loads, 36,000/s or so with
/// the transposes; with the reads taken out altogether (wrong output, a probe) 47,607/s.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK_WORDS, SCRYPT_LANES_MAX as L, SCRYPT_N};

    /// Transposes a 16 x 16 matrix of 32-bit words held as 16 rows: 4 x 4 transposes
    /// inside each 128-bit lane (32- then 64-bit unpacks), then the 128-bit lanes put in
    /// place (two rounds of `vshufi32x4`). 64 shuffles, the cheap in-lane ones first.
    #[inline(always)]
    unsafe fn transpose16(rows: &mut [__m512i; 16]) {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
        }
        // u[4k + m], 128-bit lane L: column 4L + m of rows 4k .. 4k + 3.
        let mut u = [_mm512_setzero_si512(); 16];
        for k in 0..4 {
            u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
            u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
        }
        for m in 0..4 {
            let low_lanes = _mm512_shuffle_i32x4::<0x44>(u[m], u[4 + m]);
            let high_lanes = _mm512_shuffle_i32x4::<0xee>(u[m], u[4 + m]);
            let low_lanes_2 = _mm512_shuffle_i32x4::<0x44>(u[8 + m], u[12 + m]);
            let high_lanes_2 = _mm512_shuffle_i32x4::<0xee>(u[8 + m], u[12 + m]);
            rows[m] = _mm512_shuffle_i32x4::<0x88>(low_lanes, low_lanes_2);
            rows[4 + m] = _mm512_shuffle_i32x4::<0xdd>(low_lanes, low_lanes_2);
            rows[8 + m] = _mm512_shuffle_i32x4::<0x88>(high_lanes, high_lanes_2);
            rows[12 + m] = _mm512_shuffle_i32x4::<0xdd>(high_lanes, high_lanes_2);
        }
    }

    /// `s[target] ^= rotl(s[a] + s[c], K)`.
    #[inline(always)]
    unsafe fn step<const K: i32>(s: &mut [__m512i; 16], target: usize, a: usize, c: usize) {
        let sum = _mm512_add_epi32(s[a], s[c]);
        s[target] = _mm512_xor_si512(s[target], _mm512_rol_epi32::<K>(sum));
    }

    #[inline(always)]
    unsafe fn xor_salsa8(b: &mut [__m512i; 16], with: &[__m512i; 16]) {
        for i in 0..16 {
            b[i] = _mm512_xor_si512(b[i], with[i]);
        }
        let mut s = *b;
        for _ in 0..4 {
            step::<7>(&mut s, 4, 0, 12);
            step::<7>(&mut s, 9, 5, 1);
            step::<7>(&mut s, 14, 10, 6);
            step::<7>(&mut s, 3, 15, 11);
            step::<9>(&mut s, 8, 4, 0);
            step::<9>(&mut s, 13, 9, 5);
            step::<9>(&mut s, 2, 14, 10);
            step::<9>(&mut s, 7, 3, 15);
            step::<13>(&mut s, 12, 8, 4);
            step::<13>(&mut s, 1, 13, 9);
            step::<13>(&mut s, 6, 2, 14);
            step::<13>(&mut s, 11, 7, 3);
            step::<18>(&mut s, 0, 12, 8);
            step::<18>(&mut s, 5, 1, 13);
            step::<18>(&mut s, 10, 6, 2);
            step::<18>(&mut s, 15, 11, 7);
            step::<7>(&mut s, 1, 0, 3);
            step::<7>(&mut s, 6, 5, 4);
            step::<7>(&mut s, 11, 10, 9);
            step::<7>(&mut s, 12, 15, 14);
            step::<9>(&mut s, 2, 1, 0);
            step::<9>(&mut s, 7, 6, 5);
            step::<9>(&mut s, 8, 11, 10);
            step::<9>(&mut s, 13, 12, 15);
            step::<13>(&mut s, 3, 2, 1);
            step::<13>(&mut s, 4, 7, 6);
            step::<13>(&mut s, 9, 8, 11);
            step::<13>(&mut s, 14, 13, 12);
            step::<18>(&mut s, 0, 3, 2);
            step::<18>(&mut s, 5, 4, 7);
            step::<18>(&mut s, 10, 9, 8);
            step::<18>(&mut s, 15, 14, 13);
        }
        for i in 0..16 {
            b[i] = _mm512_add_epi32(b[i], s[i]);
        }
    }

    #[inline(always)]
    unsafe fn block_mix(x: &mut [__m512i; BLOCK_WORDS]) {
        let (b0, b1) = x.split_at_mut(16);
        let b0: &mut [__m512i; 16] = b0.try_into().expect("16 words");
        let b1: &mut [__m512i; 16] = b1.try_into().expect("16 words");
        xor_salsa8(b0, b1);
        xor_salsa8(b1, b0);
    }

    /// ROMix (r = 1) on 16 lanes. `v` must hold N × 32 × 16 words: lane l's block j at
    /// words j*512 + l*32 .. + 32.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn romix(words: &mut [[u32; L]; BLOCK_WORDS], v: &mut [u32]) {
        assert!(v.len() >= SCRYPT_N * BLOCK_WORDS * L);
        let mut x = [_mm512_setzero_si512(); BLOCK_WORDS];
        for (vector, word) in x.iter_mut().zip(words.iter()) {
            *vector = _mm512_loadu_si512(word.as_ptr().cast());
        }
        let base = v.as_mut_ptr();
        for i in 0..SCRYPT_N {
            let block = base.add(i * BLOCK_WORDS * L);
            for half in 0..2 {
                let mut rows: [__m512i; 16] =
                    x[half * 16..half * 16 + 16].try_into().expect("16 words");
                transpose16(&mut rows);
                for (lane, row) in rows.iter().enumerate() {
                    _mm512_storeu_si512(block.add(lane * BLOCK_WORDS + half * 16).cast(), *row);
                }
            }
            block_mix(&mut x);
        }
        let index_mask = _mm512_set1_epi32((SCRYPT_N - 1) as i32);
        for _ in 0..SCRYPT_N {
            // Integerify: the first word of the last 64-byte half picks each lane's block.
            let picks = _mm512_and_si512(x[16], index_mask);
            let mut blocks = [0u32; L];
            _mm512_storeu_si512(blocks.as_mut_ptr().cast(), picks);
            for half in 0..2 {
                let mut rows = [_mm512_setzero_si512(); 16];
                for (lane, row) in rows.iter_mut().enumerate() {
                    let at = blocks[lane] as usize * BLOCK_WORDS * L + lane * BLOCK_WORDS;
                    *row = _mm512_loadu_si512(base.add(at + half * 16).cast());
                }
                transpose16(&mut rows);
                for (vector, row) in x[half * 16..half * 16 + 16].iter_mut().zip(rows) {
                    *vector = _mm512_xor_si512(*vector, row);
                }
            }
            block_mix(&mut x);
        }
        for (vector, word) in x.iter().zip(words.iter_mut()) {
            _mm512_storeu_si512(word.as_mut_ptr().cast(), *vector);
        }
    }
}

thread_local! {
    /// ROMix's scratch (N blocks per lane: 2 MiB for 16 lanes), kept per thread so that a
    /// validating core allocates it once.
    static ROMIX_SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
fn scrypt_many_lanes<const L: usize>(headers: &[[u8; 80]], out: &mut [[u8; 32]]) {
    ROMIX_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.resize(SCRYPT_N * BLOCK_WORDS * L, 0);
        for (headers, out) in headers.chunks(L).zip(out.chunks_mut(L)) {
            let mut x = [[0u32; L]; BLOCK_WORDS];
            expand_lanes(headers, &mut x);
            romix_lanes::<L>(&mut x, &mut scratch);
            finish_lanes(headers, &x, out);
        }
    });
}

/// ROMix (r = 1) on L lanes at once; `v` holds N blocks of L lanes.
#[inline(always)]
fn romix_lanes<const L: usize>(x: &mut [[u32; L]; BLOCK_WORDS], v: &mut [u32]) {
    let v = &mut v[..SCRYPT_N * BLOCK_WORDS * L];
    for block in v.chunks_exact_mut(BLOCK_WORDS * L) {
        for (stored, word) in block.chunks_exact_mut(L).zip(x.iter()) {
            stored.copy_from_slice(word);
        }
        block_mix_lanes(x);
    }
    for _ in 0..SCRYPT_N {
        // Integerify: the first word of the last 64-byte half picks each lane's block.
        let mut picks = [0usize; L];
        for (pick, word) in picks.iter_mut().zip(x[16].iter()) {
            *pick = (*word as usize & (SCRYPT_N - 1)) * BLOCK_WORDS * L;
        }
        for (w, word) in x.iter_mut().enumerate() {
            for (lane, value) in word.iter_mut().enumerate() {
                *value ^= v[picks[lane] + w * L + lane];
            }
        }
        block_mix_lanes(x);
    }
}

/// BlockMix for r = 1: B0 = Salsa(B0 ^ B1), then B1 = Salsa(B1 ^ B0).
#[inline(always)]
fn block_mix_lanes<const L: usize>(x: &mut [[u32; L]; BLOCK_WORDS]) {
    let (b0, b1) = x.split_at_mut(16);
    let b0: &mut [[u32; L]; 16] = b0.try_into().expect("16 words");
    let b1: &mut [[u32; L]; 16] = b1.try_into().expect("16 words");
    xor_salsa8_lanes(b0, b1);
    xor_salsa8_lanes(b1, b0);
}

/// `b ^= with; b += Salsa20/8(b)`, on every lane.
#[inline(always)]
fn xor_salsa8_lanes<const L: usize>(b: &mut [[u32; L]; 16], with: &[[u32; L]; 16]) {
    for (word, other) in b.iter_mut().zip(with.iter()) {
        for lane in 0..L {
            word[lane] ^= other[lane];
        }
    }
    let mut s = *b;
    #[inline(always)]
    fn step<const L: usize>(s: &mut [[u32; L]; 16], target: usize, a: usize, c: usize, k: u32) {
        let (sum_a, sum_c) = (s[a], s[c]);
        for ((value, x), y) in s[target].iter_mut().zip(sum_a).zip(sum_c) {
            *value ^= x.wrapping_add(y).rotate_left(k);
        }
    }
    for _ in 0..4 {
        // Column round.
        step(&mut s, 4, 0, 12, 7);
        step(&mut s, 9, 5, 1, 7);
        step(&mut s, 14, 10, 6, 7);
        step(&mut s, 3, 15, 11, 7);
        step(&mut s, 8, 4, 0, 9);
        step(&mut s, 13, 9, 5, 9);
        step(&mut s, 2, 14, 10, 9);
        step(&mut s, 7, 3, 15, 9);
        step(&mut s, 12, 8, 4, 13);
        step(&mut s, 1, 13, 9, 13);
        step(&mut s, 6, 2, 14, 13);
        step(&mut s, 11, 7, 3, 13);
        step(&mut s, 0, 12, 8, 18);
        step(&mut s, 5, 1, 13, 18);
        step(&mut s, 10, 6, 2, 18);
        step(&mut s, 15, 11, 7, 18);
        // Row round.
        step(&mut s, 1, 0, 3, 7);
        step(&mut s, 6, 5, 4, 7);
        step(&mut s, 11, 10, 9, 7);
        step(&mut s, 12, 15, 14, 7);
        step(&mut s, 2, 1, 0, 9);
        step(&mut s, 7, 6, 5, 9);
        step(&mut s, 8, 11, 10, 9);
        step(&mut s, 13, 12, 15, 9);
        step(&mut s, 3, 2, 1, 13);
        step(&mut s, 4, 7, 6, 13);
        step(&mut s, 9, 8, 11, 13);
        step(&mut s, 14, 13, 12, 13);
        step(&mut s, 0, 3, 2, 18);
        step(&mut s, 5, 4, 7, 18);
        step(&mut s, 10, 9, 8, 18);
        step(&mut s, 15, 14, 13, 18);
    }
    for (word, mixed) in b.iter_mut().zip(s.iter()) {
        for lane in 0..L {
            word[lane] = word[lane].wrapping_add(mixed[lane]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift, so the test needs no RNG crate and every run checks the same inputs.
    fn pseudo_random_headers(count: usize, mut seed: u64) -> Vec<[u8; 80]> {
        (0..count)
            .map(|_| {
                let mut header = [0u8; 80];
                for byte in header.iter_mut() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *byte = seed as u8;
                }
                header
            })
            .collect()
    }

    #[test]
    fn multi_lane_kernels_match_the_crate_bit_for_bit() {
        // Without AVX2 the widest kernel is the portable one, checked below anyway; the AVX2
        // kernel would go untested, so a machine without it fails here, loudly.
        assert!(
            std::is_x86_feature_detected!("avx2"),
            "this CPU has no AVX2: the 8-lane scrypt kernel cannot be tested here"
        );
        let avx512 = widest_kernel() == Kernel::Avx512;
        if !avx512 {
            eprintln!("this CPU has no AVX-512F: the 16-lane scrypt kernel is not run here");
        }
        // 35 headers: two full groups of 16 and a last of 3 (on AVX2: four of 8 and 3; on
        // the portable kernel: eight of 4 and 3); 25: a partly filled group of 16 (9).
        for count in [35, 25] {
            let headers = pseudo_random_headers(count, 0x9e37_79b9_7f4a_7c15 ^ count as u64);
            let mut widest = vec![[0u8; 32]; count];
            scrypt_pow_many(&headers, &mut widest);
            let mut avx2 = vec![[0u8; 32]; count];
            // SAFETY: AVX2 was checked above.
            unsafe { scrypt_many_x86::<false>(&headers, &mut avx2) };
            let mut portable = vec![[0u8; 32]; count];
            scrypt_many_lanes::<4>(&headers, &mut portable);
            for (i, header) in headers.iter().enumerate() {
                let expected = scrypt_pow(header);
                assert_eq!(
                    widest[i], expected,
                    "{count} headers: header {i}, widest kernel"
                );
                assert_eq!(
                    avx2[i], expected,
                    "{count} headers: header {i}, AVX2 kernel"
                );
                assert_eq!(
                    portable[i], expected,
                    "{count} headers: header {i}, 4 lanes"
                );
            }
        }
        assert_eq!(scrypt_lanes(), if avx512 { 16 } else { 8 });
    }
}
