//! Strict hex helpers for Stratum fields: exact lengths, either letter case.

/// Decodes `text` into exactly `N` bytes, or `None` if the length or any digit is wrong.
pub fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Decodes an 8-digit big-endian hex u32 such as an ntime, nonce or version field.
pub fn decode_u32_be(text: &str) -> Option<u32> {
    decode_exact::<4>(text).map(u32::from_be_bytes)
}

/// Hash in internal byte order, printed in display (byte-reversed) order.
pub fn display_hex(hash: &[u8; 32]) -> String {
    let mut bytes = *hash;
    bytes.reverse();
    hex::encode(bytes)
}

/// Parses a display-order hash into internal byte order.
pub fn from_display_hex(text: &str) -> Option<[u8; 32]> {
    let mut bytes = decode_exact::<32>(text)?;
    bytes.reverse();
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_length_and_either_case() {
        assert_eq!(decode_exact::<2>("aBcD"), Some([0xab, 0xcd]));
        assert_eq!(decode_exact::<2>("abc"), None);
        assert_eq!(decode_exact::<2>("abcde0"), None);
        assert_eq!(decode_exact::<2>("zzzz"), None);
        assert_eq!(decode_u32_be("0000FFFF"), Some(0xffff));
        assert_eq!(decode_u32_be("+000ffff"), None);
    }
}
