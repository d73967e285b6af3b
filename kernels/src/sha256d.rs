//! SHA-256 and double SHA-256 through the `sha2` crate, which picks SHA-NI at run time
//! when the CPU has it. `Midstate` keeps the compression state after the fixed prefix of a
//! message (the coinbase before the extranonce), so each share hashes only its own tail.

use sha2::{Digest, Sha256};

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const BLOCK_BYTES: usize = 64;

/// Double SHA-256 of `data`, in internal (little-endian) byte order.
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// Single SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The SHA-256 state after some whole 64-byte blocks of a message, plus the bytes of the
/// prefix that did not fill a block. Hashing `prefix ‖ tail` from a midstate gives the same
/// digest as hashing it from scratch, but costs only the blocks that hold the tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Midstate {
    state: [u32; 8],
    blocks_done: u64,
    pending: [u8; BLOCK_BYTES],
    pending_len: usize,
}

impl Midstate {
    /// Compresses every whole block of `prefix` and keeps the remainder.
    pub fn new(prefix: &[u8]) -> Self {
        let mut state = SHA256_INITIAL_STATE;
        let whole = prefix.len() / BLOCK_BYTES * BLOCK_BYTES;
        compress_blocks(&mut state, &prefix[..whole]);
        let mut pending = [0u8; BLOCK_BYTES];
        let pending_len = prefix.len() - whole;
        pending[..pending_len].copy_from_slice(&prefix[whole..]);
        Midstate {
            state,
            blocks_done: (whole / BLOCK_BYTES) as u64,
            pending,
            pending_len,
        }
    }

    /// Length in bytes of the prefix this midstate stands for.
    pub fn prefix_len(&self) -> usize {
        self.blocks_done as usize * BLOCK_BYTES + self.pending_len
    }

    /// SHA-256 of `prefix ‖ parts[0] ‖ parts[1] ‖ …`, finishing from this midstate.
    pub fn finish_sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut state = self.state;
        let mut block = self.pending;
        let mut fill = self.pending_len;
        let mut total = self.prefix_len() as u64;
        for part in parts {
            let mut rest: &[u8] = part;
            total += rest.len() as u64;
            while !rest.is_empty() {
                let take = (BLOCK_BYTES - fill).min(rest.len());
                block[fill..fill + take].copy_from_slice(&rest[..take]);
                fill += take;
                rest = &rest[take..];
                if fill == BLOCK_BYTES {
                    compress_blocks(&mut state, &block);
                    fill = 0;
                }
            }
        }
        // FIPS 180-4 padding: 0x80, zeros, then the message length in bits, big-endian.
        block[fill] = 0x80;
        block[fill + 1..].fill(0);
        if fill + 1 > BLOCK_BYTES - 8 {
            compress_blocks(&mut state, &block);
            block.fill(0);
        }
        block[BLOCK_BYTES - 8..].copy_from_slice(&(total * 8).to_be_bytes());
        compress_blocks(&mut state, &block);
        state_to_bytes(&state)
    }

    /// Double SHA-256 of `prefix ‖ parts…`.
    pub fn finish_sha256d(&self, parts: &[&[u8]]) -> [u8; 32] {
        second_hash(&self.finish_sha256(parts))
    }
}

/// The share path hashes only three lengths: 32 (the second hash), 64 (a merkle pair) and
/// 80 (a header). For those, padding is fixed, so these helpers go straight to the
/// compression function with precomputed padding, skipping the streaming API's buffering;
/// the `_x2` forms run two messages through `sha_ni::compress2`, interleaved.
fn padding_block(message_bytes: u64, tail: &[u8]) -> [u8; BLOCK_BYTES] {
    let mut block = [0u8; BLOCK_BYTES];
    block[..tail.len()].copy_from_slice(tail);
    block[tail.len()] = 0x80;
    block[BLOCK_BYTES - 8..].copy_from_slice(&(message_bytes * 8).to_be_bytes());
    block
}

/// SHA-256 of a 32-byte digest: the second half of every SHA256d.
fn second_hash(first: &[u8; 32]) -> [u8; 32] {
    let mut state = SHA256_INITIAL_STATE;
    crate::sha_ni::compress(&mut state, &padding_block(32, first));
    state_to_bytes(&state)
}

fn second_hash_x2(a: &[u8; 32], b: &[u8; 32]) -> [[u8; 32]; 2] {
    let (mut state_a, mut state_b) = (SHA256_INITIAL_STATE, SHA256_INITIAL_STATE);
    crate::sha_ni::compress2(
        &mut state_a,
        &padding_block(32, a),
        &mut state_b,
        &padding_block(32, b),
    );
    [state_to_bytes(&state_a), state_to_bytes(&state_b)]
}

/// SHA256d of exactly 64 bytes (a merkle node's two children).
pub fn sha256d_64(data: &[u8; 64]) -> [u8; 32] {
    let mut state = SHA256_INITIAL_STATE;
    crate::sha_ni::compress(&mut state, data);
    crate::sha_ni::compress(&mut state, &padding_block(64, &[]));
    second_hash(&state_to_bytes(&state))
}

/// `sha256d_64` of two messages at once.
pub fn sha256d_64_x2(a: &[u8; 64], b: &[u8; 64]) -> [[u8; 32]; 2] {
    let (mut state_a, mut state_b) = (SHA256_INITIAL_STATE, SHA256_INITIAL_STATE);
    crate::sha_ni::compress2(&mut state_a, a, &mut state_b, b);
    let padding = padding_block(64, &[]);
    crate::sha_ni::compress2(&mut state_a, &padding, &mut state_b, &padding);
    second_hash_x2(&state_to_bytes(&state_a), &state_to_bytes(&state_b))
}

/// SHA256d of an 80-byte block header.
pub fn sha256d_80(header: &[u8; 80]) -> [u8; 32] {
    let mut state = SHA256_INITIAL_STATE;
    let (first, tail) = header.split_at(BLOCK_BYTES);
    crate::sha_ni::compress(&mut state, first.try_into().expect("64 bytes"));
    crate::sha_ni::compress(&mut state, &padding_block(80, tail));
    second_hash(&state_to_bytes(&state))
}

/// `sha256d_80` of two headers at once.
pub fn sha256d_80_x2(a: &[u8; 80], b: &[u8; 80]) -> [[u8; 32]; 2] {
    let (mut state_a, mut state_b) = (SHA256_INITIAL_STATE, SHA256_INITIAL_STATE);
    crate::sha_ni::compress2(
        &mut state_a,
        a[..BLOCK_BYTES].try_into().expect("64 bytes"),
        &mut state_b,
        b[..BLOCK_BYTES].try_into().expect("64 bytes"),
    );
    crate::sha_ni::compress2(
        &mut state_a,
        &padding_block(80, &a[BLOCK_BYTES..]),
        &mut state_b,
        &padding_block(80, &b[BLOCK_BYTES..]),
    );
    second_hash_x2(&state_to_bytes(&state_a), &state_to_bytes(&state_b))
}

fn compress_blocks(state: &mut [u32; 8], data: &[u8]) {
    debug_assert_eq!(data.len() % BLOCK_BYTES, 0);
    for chunk in data.chunks_exact(BLOCK_BYTES) {
        crate::sha_ni::compress(state, chunk.try_into().expect("whole blocks"));
    }
}

fn state_to_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (word, bytes) in state.iter().zip(out.chunks_exact_mut(4)) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Runs the raw SHA-256 compression function over `blocks` 64-byte blocks of `data`;
/// benchmarks use it as the bound a full share validation is measured against.
pub fn compress_only(state: &mut [u32; 8], data: &[u8]) {
    compress_blocks(state, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_string_digest_is_the_fips_value() {
        assert_eq!(
            hex::encode(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn midstate_matches_plain_hash_for_every_split() {
        let message: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for prefix_len in 0..message.len() {
            let midstate = Midstate::new(&message[..prefix_len]);
            let tail = &message[prefix_len..];
            let split = tail.len() / 2;
            assert_eq!(
                midstate.finish_sha256d(&[&tail[..split], &tail[split..]]),
                sha256d(&message),
                "prefix {prefix_len}"
            );
        }
    }

    #[test]
    fn fixed_length_forms_match_the_streaming_hash() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut byte = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        for _ in 0..100 {
            let a64: [u8; 64] = std::array::from_fn(|_| byte());
            let b64: [u8; 64] = std::array::from_fn(|_| byte());
            let a80: [u8; 80] = std::array::from_fn(|_| byte());
            let b80: [u8; 80] = std::array::from_fn(|_| byte());
            assert_eq!(sha256d_64(&a64), sha256d(&a64));
            assert_eq!(sha256d_64_x2(&a64, &b64), [sha256d(&a64), sha256d(&b64)]);
            assert_eq!(sha256d_80(&a80), sha256d(&a80));
            assert_eq!(sha256d_80_x2(&a80, &b80), [sha256d(&a80), sha256d(&b80)]);
        }
    }
}
