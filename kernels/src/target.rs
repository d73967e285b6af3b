//! 256-bit targets: compact `bits` encoding, comparison with a hash, and conversion to and
//! from pool difficulty with each algorithm's conventional difficulty-1 target.
//!
//! Difficulty 1 is 0xFFFF·2^208 for SHA256d (Bitcoin's genesis target) and 0xFFFF·2^224 for
//! Scrypt, the convention of cpuminer and the common scrypt pools, 65536 times easier.

use std::cmp::Ordering;

/// Proof-of-work algorithms the pool validates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256d,
    Scrypt,
}

impl Algorithm {
    /// The power of two that multiplies 0xFFFF to give this algorithm's difficulty-1 target.
    fn difficulty_one_shift(self) -> i32 {
        match self {
            Algorithm::Sha256d => 208,
            Algorithm::Scrypt => 224,
        }
    }

    /// Hashes a miner does on average to find one share at difficulty 1: 2^256 over the
    /// difficulty-1 target (about 2^32 for SHA256d, 2^16 for Scrypt).
    pub fn hashes_per_difficulty_one(self) -> f64 {
        2f64.powi(256 - self.difficulty_one_shift()) / 65535.0
    }

    /// The difficulty-1 target.
    pub fn difficulty_one(self) -> Target {
        Target::from_u64_shifted(0xFFFF, self.difficulty_one_shift() as u32)
    }
}

/// A 256-bit unsigned target, stored as four little-endian 64-bit limbs. A hash meets the
/// target when, read as a little-endian integer, it is less than or equal to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Target {
    limbs: [u64; 4],
}

/// Why a compact `bits` value does not name a usable target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactError {
    Negative,
    Overflow,
    Zero,
}

impl Target {
    pub const MAX: Target = Target {
        limbs: [u64::MAX; 4],
    };

    pub fn from_le_bytes(bytes: &[u8; 32]) -> Self {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            *limb = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        }
        Target { limbs }
    }

    pub fn to_le_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (limb, chunk) in self.limbs.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Big-endian hex, the way block explorers and `getblocktemplate` print targets.
    pub fn to_display_hex(&self) -> String {
        let mut bytes = self.to_le_bytes();
        bytes.reverse();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_u64_shifted(value: u64, shift: u32) -> Self {
        let mut limbs = [0u64; 4];
        let limb = (shift / 64) as usize;
        let bit = shift % 64;
        if limb < 4 {
            limbs[limb] = value << bit;
            if bit != 0 && limb + 1 < 4 {
                limbs[limb + 1] = value >> (64 - bit);
            }
        }
        Target { limbs }
    }

    /// Decodes Bitcoin's compact form: an 8-bit base-256 exponent and a 23-bit mantissa.
    pub fn from_compact(bits: u32) -> Result<Self, CompactError> {
        let exponent = bits >> 24;
        let mantissa = bits & 0x007f_ffff;
        if bits & 0x0080_0000 != 0 && mantissa != 0 {
            return Err(CompactError::Negative);
        }
        let target = if exponent <= 3 {
            Target::from_u64_shifted((mantissa >> (8 * (3 - exponent))) as u64, 0)
        } else {
            let shift = 8 * (exponent - 3);
            let significant_bits = 64 - (mantissa as u64).leading_zeros();
            if mantissa != 0 && shift + significant_bits > 256 {
                return Err(CompactError::Overflow);
            }
            Target::from_u64_shifted(mantissa as u64, shift)
        };
        if target.is_zero() {
            return Err(CompactError::Zero);
        }
        Ok(target)
    }

    /// Encodes to the compact form, rounding down as Bitcoin Core's `GetCompact` does.
    pub fn to_compact(&self) -> u32 {
        let bit_length = self.bit_length();
        let mut size = bit_length.div_ceil(8);
        let mut mantissa: u64 = if size <= 3 {
            self.limbs[0] << (8 * (3 - size))
        } else {
            self.shr(8 * (size - 3)).limbs[0]
        };
        if mantissa & 0x0080_0000 != 0 {
            mantissa >>= 8;
            size += 1;
        }
        (size << 24) | mantissa as u32
    }

    pub fn is_zero(&self) -> bool {
        self.limbs == [0; 4]
    }

    fn bit_length(&self) -> u32 {
        for index in (0..4).rev() {
            if self.limbs[index] != 0 {
                return index as u32 * 64 + 64 - self.limbs[index].leading_zeros();
            }
        }
        0
    }

    fn shr(&self, shift: u32) -> Self {
        let mut limbs = [0u64; 4];
        let limb_shift = (shift / 64) as usize;
        let bit = shift % 64;
        for (index, out) in limbs.iter_mut().enumerate() {
            let source = index + limb_shift;
            if source < 4 {
                *out = self.limbs[source] >> bit;
                if bit != 0 && source + 1 < 4 {
                    *out |= self.limbs[source + 1] << (64 - bit);
                }
            }
        }
        Target { limbs }
    }

    /// Whether a hash in internal byte order meets this target.
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        Target::from_le_bytes(hash) <= *self
    }

    /// The value as a float, exact to 53 bits; enough for difficulty, never for consensus.
    pub fn to_f64(&self) -> f64 {
        self.limbs
            .iter()
            .rev()
            .fold(0.0, |acc, limb| acc * 18446744073709551616.0 + *limb as f64)
    }

    /// The largest target not above `value`, saturating at `Target::MAX`.
    fn from_f64(value: f64) -> Self {
        // NaN and anything below one give the zero target.
        if value.is_nan() || value < 1.0 {
            return Target::default();
        }
        if value >= 2f64.powi(256) {
            return Target::MAX;
        }
        let exponent = value.log2().floor() as i32;
        // Scale so the mantissa is a 53-bit integer, then shift it into place.
        let shift = exponent - 52;
        if shift <= 0 {
            return Target::from_u64_shifted(value as u64, 0);
        }
        let mantissa = (value / 2f64.powi(shift)) as u64;
        Target::from_u64_shifted(mantissa, shift as u32)
    }

    /// The share target for a pool difficulty: difficulty-1 target / difficulty.
    /// Difficulties at or below zero, or not finite, give `None`.
    pub fn from_difficulty(algorithm: Algorithm, difficulty: f64) -> Option<Self> {
        if difficulty.is_nan() || difficulty <= 0.0 || !difficulty.is_finite() {
            return None;
        }
        let quotient = 65535.0 / difficulty;
        let value = quotient * 2f64.powi(algorithm.difficulty_one_shift());
        Some(Target::from_f64(value))
    }

    /// The difficulty this target stands for: difficulty-1 target / target.
    pub fn to_difficulty(&self, algorithm: Algorithm) -> f64 {
        if self.is_zero() {
            return f64::INFINITY;
        }
        65535.0 * 2f64.powi(algorithm.difficulty_one_shift()) / self.to_f64()
    }

    /// The difficulty a hash achieved, as pools report it for a share.
    pub fn hash_difficulty(algorithm: Algorithm, hash: &[u8; 32]) -> f64 {
        Target::from_le_bytes(hash).to_difficulty(algorithm)
    }
}

impl PartialOrd for Target {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Target {
    fn cmp(&self, other: &Self) -> Ordering {
        self.limbs.iter().rev().cmp(other.limbs.iter().rev())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_bits_decode_to_the_sha256d_difficulty_one_target() {
        let target = Target::from_compact(0x1d00ffff).unwrap();
        assert_eq!(target, Algorithm::Sha256d.difficulty_one());
        assert_eq!(target.to_compact(), 0x1d00ffff);
        assert_eq!(target.to_difficulty(Algorithm::Sha256d), 1.0);
    }

    #[test]
    fn scrypt_difficulty_one_is_65536_times_the_sha256d_target() {
        let scrypt = Algorithm::Scrypt.difficulty_one();
        assert_eq!(scrypt.to_compact(), 0x1f00ffff);
        assert_eq!(scrypt.to_difficulty(Algorithm::Sha256d), 1.0 / 65536.0);
        assert_eq!(
            Target::from_difficulty(Algorithm::Scrypt, 65536.0).unwrap(),
            Algorithm::Sha256d.difficulty_one()
        );
    }

    #[test]
    fn regtest_bits_give_the_regtest_limit() {
        let target = Target::from_compact(0x207fffff).unwrap();
        assert_eq!(
            target.to_display_hex(),
            "7fffff0000000000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(target.to_compact(), 0x207fffff);
    }

    #[test]
    fn compact_rejects_negative_overflow_and_zero() {
        assert_eq!(
            Target::from_compact(0x04923456),
            Err(CompactError::Negative)
        );
        assert_eq!(
            Target::from_compact(0xff123456),
            Err(CompactError::Overflow)
        );
        assert_eq!(Target::from_compact(0x01003456), Err(CompactError::Zero));
        assert_eq!(Target::from_compact(0), Err(CompactError::Zero));
    }

    #[test]
    fn compact_round_trips_core_examples() {
        // Values from Bitcoin Core's arith_uint256 tests.
        for (bits, round_trip) in [
            (0x01123456u32, 0x01120000u32),
            (0x02123456, 0x02123400),
            (0x03123456, 0x03123456),
            (0x04123456, 0x04123456),
            (0x05009234, 0x05009234),
            (0x20123456, 0x20123456),
        ] {
            assert_eq!(Target::from_compact(bits).unwrap().to_compact(), round_trip);
        }
    }

    #[test]
    fn fractional_difficulty_round_trips() {
        for difficulty in [0.001, 0.5, 1.0, 3.75, 1024.0, 1e12] {
            let target = Target::from_difficulty(Algorithm::Scrypt, difficulty).unwrap();
            let back = target.to_difficulty(Algorithm::Scrypt);
            assert!(
                (back / difficulty - 1.0).abs() < 1e-12,
                "{difficulty} -> {back}"
            );
        }
        assert_eq!(Target::from_difficulty(Algorithm::Scrypt, 0.0), None);
        assert_eq!(Target::from_difficulty(Algorithm::Scrypt, f64::NAN), None);
        assert_eq!(
            Target::from_difficulty(Algorithm::Sha256d, 1e-80),
            Some(Target::MAX)
        );
    }

    #[test]
    fn hash_meets_target_at_the_edge() {
        let target = Target::from_compact(0x1d00ffff).unwrap();
        let equal = target.to_le_bytes();
        assert!(target.is_met_by(&equal));
        let mut above = equal;
        above[0] = 1; // target's lowest byte is zero, so this is target + 1
        assert!(!target.is_met_by(&above));
    }
}
