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
