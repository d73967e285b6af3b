//! Proof that a miner holds its payout address's key: the compact signatures of
//! `signmessage` / `verifymessage` (Litecoin Core, Bitcoin Core and the wallets that
//! follow BIP137). The 65-byte signature recovers a public key; the claim holds when that
//! key's P2PKH, P2SH-P2WPKH or P2WPKH script (compressed keys; P2PKH only for uncompressed)
//! is the address's script. Which of those the header byte names does not matter: whoever
//! holds the key controls all of them.

use base64::Engine;
use bitcoin::hashes::{hash160, sha256d, Hash};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, Secp256k1};

use otedama_shared::address::{script_for_address, AddressRule};

/// What the coin's wallets put before the message they sign.
pub fn message_magic(coin_name: &str) -> String {
    format!("{coin_name} Signed Message:\n")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature is not base64 of 65 bytes")]
    Malformed,
    #[error("the signature's header byte {0} is not 27 to 42")]
    BadHeader(u8),
    #[error("no public key recovers from the signature")]
    Unrecoverable,
    #[error("the signature was not made by the key of {0}")]
    WrongKey(String),
    #[error(transparent)]
    Address(#[from] otedama_shared::address::AddressError),
}

fn push_compact_size(out: &mut Vec<u8>, n: usize) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
}

/// The digest a wallet signs for `message`: SHA-256d of the magic and the message, each
/// preceded by its length as a compact size.
pub fn message_digest(magic: &str, message: &str) -> [u8; 32] {
    let mut data = Vec::with_capacity(magic.len() + message.len() + 10);
    push_compact_size(&mut data, magic.len());
    data.extend_from_slice(magic.as_bytes());
    push_compact_size(&mut data, message.len());
    data.extend_from_slice(message.as_bytes());
    sha256d::Hash::hash(&data).to_byte_array()
}

/// Checks that `signature_base64` signs `message` with the key behind `address`.
pub fn verify(
    rule: &AddressRule,
    magic: &str,
    address: &str,
    message: &str,
    signature_base64: &str,
) -> Result<(), SignatureError> {
    let expected_script = script_for_address(rule, address)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(signature_base64.trim())
        .map_err(|_| SignatureError::Malformed)?;
    let [header, compact @ ..]: [u8; 65] =
        bytes.try_into().map_err(|_| SignatureError::Malformed)?;
    if !(27..=42).contains(&header) {
        return Err(SignatureError::BadHeader(header));
    }
    let compressed = header >= 31;
    let recovery_id = RecoveryId::from_i32(i32::from((header - 27) & 3))
        .map_err(|_| SignatureError::Malformed)?;
    let signature = RecoverableSignature::from_compact(&compact, recovery_id)
        .map_err(|_| SignatureError::Malformed)?;
    let digest = Message::from_digest(message_digest(magic, message));
    let key = Secp256k1::verification_only()
        .recover_ecdsa(&digest, &signature)
        .map_err(|_| SignatureError::Unrecoverable)?;
    let key_hash = if compressed {
        hash160::Hash::hash(&key.serialize())
    } else {
        hash160::Hash::hash(&key.serialize_uncompressed())
    };
    let key_hash = key_hash.to_byte_array();
    let p2pkh = [&[0x76, 0xa9, 0x14][..], &key_hash, &[0x88, 0xac]].concat();
    let p2wpkh = [&[0x00, 0x14][..], &key_hash].concat();
    let p2sh_p2wpkh = [
        &[0xa9, 0x14][..],
        &hash160::Hash::hash(&p2wpkh).to_byte_array(),
        &[0x87],
    ]
    .concat();
    let matches = expected_script == p2pkh
        || (compressed && (expected_script == p2wpkh || expected_script == p2sh_p2wpkh));
    if matches {
        Ok(())
    } else {
        Err(SignatureError::WrongKey(address.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coin::{Coin, CoinParams, Network};

    /// Made by Litecoin Core 0.21.2.1 on regtest: `signmessagewithprivkey` with the key
    /// 0x11…11 (compressed); `verifymessage` answered true. The key's three addresses come
    /// from `importprivkey` then `getaddressesbylabel`.
    const MESSAGE: &str = "Otedama API key for X\nnonce: 00";
    const SIGNATURE: &str =
        "IGwJj4IA818yLrARosZGCpfOqHCplYRGWwtMMeIUOYj5fEnGnyy1j7RzlolpRtq8YSAACnHm12veC1saNp5dEe4=";
    const P2PKH: &str = "n4XmX91N5FfccY678vaG1ELNtXh6skVES7";
    const P2SH_P2WPKH: &str = "QiAoB797x5SG3EHCRRJkwgmxkXNkyWJ1FC";
    const P2WPKH: &str = "rltc1ql3e9pgs3mmwuwrh95fecme0s0qtn2880fj58ks";
    /// Another key's address (0x22…22 would do; this is the wallet's own).
    const OTHER: &str = "mnuQwtnmZkXFpdTWxQFJ34YwFRVAcD8Q2F";

    fn check(address: &str, message: &str, signature: &str) -> Result<(), SignatureError> {
        let rule = CoinParams::new(Coin::Litecoin, Network::Regtest).address;
        verify(
            &rule,
            &message_magic("Litecoin"),
            address,
            message,
            signature,
        )
    }

    #[test]
    fn litecoin_core_signatures_verify_for_each_address_of_the_key() {
        for address in [P2PKH, P2SH_P2WPKH, P2WPKH] {
            assert_eq!(check(address, MESSAGE, SIGNATURE), Ok(()), "{address}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(
            check(OTHER, MESSAGE, SIGNATURE),
            Err(SignatureError::WrongKey(OTHER.into()))
        );
        // Another message recovers another key.
        assert!(matches!(
            check(P2PKH, "Otedama API key for X\nnonce: 01", SIGNATURE),
            Err(SignatureError::WrongKey(_))
        ));
        // Bitcoin's magic is not Litecoin's.
        let rule = CoinParams::new(Coin::Litecoin, Network::Regtest).address;
        assert!(verify(&rule, &message_magic("Bitcoin"), P2PKH, MESSAGE, SIGNATURE).is_err());
        assert_eq!(
            check(P2PKH, MESSAGE, "not base64!"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            check(P2PKH, MESSAGE, "AAAA"),
            Err(SignatureError::Malformed)
        );
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(SIGNATURE)
            .unwrap();
        bytes[0] = 43;
        let bad_header = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(
            check(P2PKH, MESSAGE, &bad_header),
            Err(SignatureError::BadHeader(43))
        );
        // The same signature with the uncompressed flag names the uncompressed key's
        // address, which is not this one.
        bytes[0] = 27 + 1;
        let uncompressed = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(matches!(
            check(P2WPKH, MESSAGE, &uncompressed),
            Err(SignatureError::WrongKey(_))
        ));
        assert!(matches!(
            check("mainnet-nonsense", MESSAGE, SIGNATURE),
            Err(SignatureError::Address(_))
        ));
    }
}
