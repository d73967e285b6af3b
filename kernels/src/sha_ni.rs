//! SHA-256 compression on SHA-NI, one stream or two interleaved.
//!
//! `sha256rnds2` has a latency of several cycles and a throughput of one per cycle or
//! better, so a single message stream leaves the unit idle between dependent rounds. Two
//! independent streams (two shares, or two merkle paths) fill those gaps. This module is
//! the raw function; the share path decides what to pair. Checked against `sha2`'s
//! `compress256` on random input in the tests below.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// SHA-256 round constants (FIPS 180-4, 4.2.2), four per group of rounds.
const ROUND_CONSTANTS: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Whether this CPU has the instructions the functions below need.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse4.1")
            && std::is_x86_feature_detected!("ssse3")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One SHA-256 compression of `block` into `state`. Falls back to `sha2` without SHA-NI.
pub fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has SHA, SSE4.1 and SSSE3, checked just above.
        unsafe { x86::compress_lanes::<1>([state], [block]) };
        return;
    }
    sha2::compress256(state, &[(*block).into()]);
}

/// Two independent compressions, interleaved: `a` with `block_a`, `b` with `block_b`.
pub fn compress2(a: &mut [u32; 8], block_a: &[u8; 64], b: &mut [u32; 8], block_b: &[u8; 64]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has SHA, SSE4.1 and SSSE3, checked just above.
        unsafe { x86::compress_lanes::<2>([a, b], [block_a, block_b]) };
        return;
    }
    sha2::compress256(a, &[(*block_a).into()]);
    sha2::compress256(b, &[(*block_b).into()]);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// Compresses `S` independent streams with their rounds interleaved.
    #[target_feature(enable = "sha,sse4.1,ssse3")]
    pub unsafe fn compress_lanes<const S: usize>(
        states: [&mut [u32; 8]; S],
        blocks: [&[u8; 64]; S],
    ) {
        let byte_swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        // SHA-NI keeps the state as ABEF and CDGH.
        let mut abef = [_mm_setzero_si128(); S];
        let mut cdgh = [_mm_setzero_si128(); S];
        for s in 0..S {
            let dcba = _mm_shuffle_epi32::<0xB1>(_mm_loadu_si128(states[s].as_ptr().cast()));
            let efgh = _mm_shuffle_epi32::<0x1B>(_mm_loadu_si128(states[s].as_ptr().add(4).cast()));
            abef[s] = _mm_alignr_epi8::<8>(dcba, efgh);
            cdgh[s] = _mm_blend_epi16::<0xF0>(efgh, dcba);
        }
        let (abef_in, cdgh_in) = (abef, cdgh);
        // The message schedule, four words per vector, 16 vectors for 64 rounds.
        let mut w = [[_mm_setzero_si128(); S]; 16];
        for group in 0..16 {
            for s in 0..S {
                w[group][s] = if group < 4 {
                    _mm_shuffle_epi8(
                        _mm_loadu_si128(blocks[s].as_ptr().add(group * 16).cast()),
                        byte_swap,
                    )
                } else {
                    let partial = _mm_sha256msg1_epu32(w[group - 4][s], w[group - 3][s]);
                    let partial = _mm_add_epi32(
                        partial,
                        _mm_alignr_epi8::<4>(w[group - 1][s], w[group - 2][s]),
                    );
                    _mm_sha256msg2_epu32(partial, w[group - 1][s])
                };
                let k = _mm_loadu_si128(ROUND_CONSTANTS.as_ptr().add(group * 4).cast());
                let message = _mm_add_epi32(w[group][s], k);
                cdgh[s] = _mm_sha256rnds2_epu32(cdgh[s], abef[s], message);
                abef[s] =
                    _mm_sha256rnds2_epu32(abef[s], cdgh[s], _mm_shuffle_epi32::<0x0E>(message));
            }
        }
        for s in 0..S {
            let abef = _mm_add_epi32(abef[s], abef_in[s]);
            let cdgh = _mm_add_epi32(cdgh[s], cdgh_in[s]);
            let feba = _mm_shuffle_epi32::<0x1B>(abef);
            let dchg = _mm_shuffle_epi32::<0xB1>(cdgh);
            let dcba = _mm_blend_epi16::<0xF0>(feba, dchg);
            let hgfe = _mm_alignr_epi8::<8>(dchg, feba);
            _mm_storeu_si128(states[s].as_mut_ptr().cast(), dcba);
            _mm_storeu_si128(states[s].as_mut_ptr().add(4).cast(), hgfe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(seed: &mut u64) -> u8 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed as u8
    }

    #[test]
    fn one_and_two_streams_match_sha2_on_random_input() {
        // Without SHA-NI `compress` is the sha2 crate's, and this would compare it with
        // itself: a pass that proves nothing. The pool's hosts have it; say so loudly.
        assert!(
            available(),
            "this CPU has no SHA-NI (sha, sse4.1, ssse3): the SHA-NI kernel cannot be tested here"
        );
        let mut seed = 0x243f_6a88_85a3_08d3u64;
        for _ in 0..200 {
            let mut states = [[0u32; 8]; 2];
            let mut blocks = [[0u8; 64]; 2];
            for (state, block) in states.iter_mut().zip(blocks.iter_mut()) {
                for word in state.iter_mut() {
                    *word = u32::from_le_bytes([0; 4].map(|_| pseudo_random(&mut seed)));
                }
                block.iter_mut().for_each(|b| *b = pseudo_random(&mut seed));
            }
            let mut expected = states;
            for (state, block) in expected.iter_mut().zip(blocks.iter()) {
                sha2::compress256(state, &[(*block).into()]);
            }
            let mut single = states;
            compress(&mut single[0], &blocks[0]);
            compress(&mut single[1], &blocks[1]);
            assert_eq!(single, expected);
            let [mut a, mut b] = states;
            compress2(&mut a, &blocks[0], &mut b, &blocks[1]);
            assert_eq!([a, b], expected);
        }
    }
}
