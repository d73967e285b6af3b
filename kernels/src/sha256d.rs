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
        sha256(&self.finish_sha256(parts))
    }
}

fn compress_blocks(state: &mut [u32; 8], data: &[u8]) {
    debug_assert_eq!(data.len() % BLOCK_BYTES, 0);
    for chunk in data.chunks_exact(BLOCK_BYTES) {
        let block = sha2::digest::generic_array::GenericArray::from_slice(chunk);
        sha2::compress256(state, std::slice::from_ref(block));
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
}
