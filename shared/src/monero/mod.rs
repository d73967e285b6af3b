//! Monero's work and addresses, where both planes reach them: a block blob decoded into the
//! hashing blob miners hash (through the `monero` crate, refusing any blob that does not
//! encode back to its own bytes), and payout addresses checked for their network and
//! canonical form. The control plane gets templates from monerod (`otedama_chain::monero`);
//! the data plane checks a miner's login and makes each connection's work here.

pub mod stratum;

/// Why a block blob cannot be worked on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneroBlobError {
    #[error("extra nonce of {length} bytes where {reserved} are reserved")]
    ExtraNonceLength { length: usize, reserved: u8 },
    #[error("block blob does not decode: {0}")]
    Undecodable(String),
    #[error("block blob decodes but does not encode back to the same bytes")]
    NotCanonical,
}

/// A template's block with `extra_nonce` written over its `reserve_size` bytes at
/// `reserved_offset`. It must fill them exactly: a shorter one would leave the template's
/// zeros after it, so `[1]` and `[1, 0]` would be the same work under two names.
pub fn blob_with_extra_nonce(
    blob: &[u8],
    reserved_offset: usize,
    reserve_size: u8,
    extra_nonce: &[u8],
) -> Result<Vec<u8>, MoneroBlobError> {
    let wrong_length = MoneroBlobError::ExtraNonceLength {
        length: extra_nonce.len(),
        reserved: reserve_size,
    };
    if extra_nonce.len() != usize::from(reserve_size) {
        return Err(wrong_length);
    }
    let end = reserved_offset
        .checked_add(extra_nonce.len())
        .filter(|end| *end <= blob.len())
        .ok_or(wrong_length)?;
    let mut with = blob.to_vec();
    with[reserved_offset..end].copy_from_slice(extra_nonce);
    Ok(with)
}

/// One miner's work from a template: the whole block (to submit once a nonce meets the
/// network's difficulty) and its hashing blob (header, transactions' tree root, their
/// count), each with the nonce at `nonce_offset`.
/// Its fields stay private: the nonce's place is only right for the blobs it was found in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroWork {
    block_blob: Vec<u8>,
    hashing_blob: Vec<u8>,
    /// Where the 4 nonce bytes sit, the same in both blobs (the header starts both).
    nonce_offset: usize,
}

/// Bytes of a Monero nonce, as a miner sends them (8 hex digits) and as the blob holds them.
pub const MONERO_NONCE_BYTES: usize = 4;

impl MoneroWork {
    /// Decodes a block blob. Invariant: the blob encodes back to exactly these bytes, so
    /// the hashing blob derived from the decoded block is the one monerod derives from the
    /// bytes submitted; a blob the decoder reads otherwise is refused, never mined.
    pub fn from_block_blob(block_blob: Vec<u8>) -> Result<Self, MoneroBlobError> {
        let block: monero::Block = monero::consensus::deserialize(&block_blob)
            .map_err(|e| MoneroBlobError::Undecodable(e.to_string()))?;
        if monero::consensus::serialize(&block) != block_blob {
            return Err(MoneroBlobError::NotCanonical);
        }
        let header = monero::consensus::serialize(&block.header);
        let nonce_offset = header.len() - MONERO_NONCE_BYTES;
        let hashing_blob = block.serialize_hashable();
        debug_assert_eq!(hashing_blob[..header.len()], block_blob[..header.len()]);
        Ok(MoneroWork {
            block_blob,
            hashing_blob,
            nonce_offset,
        })
    }

    /// The work of a template's block for one extra nonce (`blob_with_extra_nonce`).
    pub fn for_extra_nonce(
        blob: &[u8],
        reserved_offset: usize,
        reserve_size: u8,
        extra_nonce: &[u8],
    ) -> Result<Self, MoneroBlobError> {
        Self::from_block_blob(blob_with_extra_nonce(
            blob,
            reserved_offset,
            reserve_size,
            extra_nonce,
        )?)
    }

    pub fn block_blob(&self) -> &[u8] {
        &self.block_blob
    }

    /// What miners hash, with the nonce as the template has it.
    pub fn hashing_blob(&self) -> &[u8] {
        &self.hashing_blob
    }

    pub fn nonce_offset(&self) -> usize {
        self.nonce_offset
    }

    fn nonce_range(&self) -> std::ops::Range<usize> {
        self.nonce_offset..self.nonce_offset + MONERO_NONCE_BYTES
    }

    /// The hashing blob with a miner's nonce bytes, as its RandomX input.
    pub fn hashing_blob_with_nonce(&self, nonce: [u8; MONERO_NONCE_BYTES]) -> Vec<u8> {
        let mut blob = self.hashing_blob.clone();
        blob[self.nonce_range()].copy_from_slice(&nonce);
        blob
    }

    /// The block with a miner's nonce bytes, as submitted.
    pub fn block_blob_with_nonce(&self, nonce: [u8; MONERO_NONCE_BYTES]) -> Vec<u8> {
        let mut blob = self.block_blob.clone();
        blob[self.nonce_range()].copy_from_slice(&nonce);
        blob
    }

    /// The block's id with this nonce, as monerod names it once accepted: Keccak-256 of
    /// the hashing blob after its length, so an id monerod reports for a submitted block
    /// also proves the blob the pool hashed was the block's. (Monero keeps one historical
    /// exception, mainnet block 202612, which no block made now can be.)
    pub fn block_id(&self, nonce: [u8; MONERO_NONCE_BYTES]) -> [u8; 32] {
        let blob = self.hashing_blob_with_nonce(nonce);
        let mut preimage = monero::consensus::serialize(&monero::VarInt(blob.len() as u64));
        preimage.extend_from_slice(&blob);
        monero::cryptonote::hash::keccak_256(&preimage)
    }
}

/// A Monero payout address, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneroAddress {
    /// The address as its canonical base58 encoding, which is also how it must be given.
    pub text: String,
    pub kind: MoneroAddressKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoneroAddressKind {
    Standard,
    Subaddress,
    /// With the 8-byte payment id an exchange tells its deposits apart by.
    Integrated {
        payment_id: [u8; 8],
    },
}

/// Longest Monero address: an integrated one, 106 characters.
pub const MONERO_ADDRESS_BYTES_MAX: usize = 106;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneroAddressError {
    #[error("an address of {length} bytes is longer than any Monero address ({MONERO_ADDRESS_BYTES_MAX})")]
    TooLong { length: usize },
    #[error("{address:?} is not a Monero address: {why}")]
    Undecodable { address: String, why: String },
    #[error("{address:?} is a {found:?} address, not {expected:?}")]
    WrongNetwork {
        address: String,
        found: monero::Network,
        expected: monero::Network,
    },
    #[error("{address:?} is not in its canonical encoding")]
    NotCanonical { address: String },
    #[error(
        "{address:?} is an integrated address: give the wallet's standard address or a \
         subaddress (payment ids are not taken)"
    )]
    Integrated { address: String },
}

/// The address a miner may be paid at: `parse_monero_address`, and not an integrated
/// address. Invariant: one wallet key pair has one payout text. An integrated address is
/// the standard address's keys with a payment id of the sender's choosing, 2^64 texts for
/// one wallet; taking them would let a banned or deny-listed wallet come back under a
/// fresh text, and split one wallet's balance across ledger accounts. (A subaddress has
/// keys of its own that no one without the view key can tie to its wallet, as a fresh
/// Bitcoin address has; nothing the pool could compare would tell them apart.)
pub fn payout_address(
    text: &str,
    network: monero::Network,
) -> Result<MoneroAddress, MoneroAddressError> {
    let address = parse_monero_address(text, network)?;
    if let MoneroAddressKind::Integrated { .. } = address.kind {
        return Err(MoneroAddressError::Integrated {
            address: text.into(),
        });
    }
    Ok(address)
}

/// Checks a payout address for `network` (regtest takes mainnet's): the base58 blocks, the
/// checksum, both public keys on the curve, and the network byte. Only the canonical
/// encoding is taken, so one address has one text for bans, the ledger and payouts.
pub fn parse_monero_address(
    text: &str,
    network: monero::Network,
) -> Result<MoneroAddress, MoneroAddressError> {
    if text.len() > MONERO_ADDRESS_BYTES_MAX {
        return Err(MoneroAddressError::TooLong { length: text.len() });
    }
    let address: monero::Address = text.parse().map_err(|e: monero::util::address::Error| {
        MoneroAddressError::Undecodable {
            address: text.into(),
            why: e.to_string(),
        }
    })?;
    if address.network != network {
        return Err(MoneroAddressError::WrongNetwork {
            address: text.into(),
            found: address.network,
            expected: network,
        });
    }
    if address.to_string() != text {
        return Err(MoneroAddressError::NotCanonical {
            address: text.into(),
        });
    }
    let kind = match address.addr_type {
        monero::AddressType::Standard => MoneroAddressKind::Standard,
        monero::AddressType::SubAddress => MoneroAddressKind::Subaddress,
        monero::AddressType::Integrated(payment_id) => MoneroAddressKind::Integrated {
            payment_id: payment_id.to_fixed_bytes(),
        },
    };
    Ok(MoneroAddress {
        text: text.into(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz_harness::monero_template::MAINNET_BLOCK_V12_HEX;

    const GENERAL_FUND: &str =
        "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

    #[test]
    fn addresses_are_checked_for_their_network_and_form() {
        let standard = parse_monero_address(GENERAL_FUND, monero::Network::Mainnet).unwrap();
        assert_eq!(standard.kind, MoneroAddressKind::Standard);
        assert_eq!(standard.text, GENERAL_FUND);
        assert!(matches!(
            parse_monero_address(GENERAL_FUND, monero::Network::Stagenet),
            Err(MoneroAddressError::WrongNetwork { .. })
        ));
        // The same keys as an integrated address (with a payment id) and as a subaddress
        // of another network: each is told apart.
        let keys: monero::Address = GENERAL_FUND.parse().unwrap();
        let payment_id = monero::util::address::PaymentId::from([9; 8]);
        let integrated = monero::Address::integrated(
            monero::Network::Mainnet,
            keys.public_spend,
            keys.public_view,
            payment_id,
        )
        .to_string();
        assert_eq!(integrated.len(), MONERO_ADDRESS_BYTES_MAX);
        assert_eq!(
            parse_monero_address(&integrated, monero::Network::Mainnet)
                .unwrap()
                .kind,
            MoneroAddressKind::Integrated { payment_id: [9; 8] }
        );
        // Parsed, but not a payout address: the standard one is.
        assert_eq!(
            payout_address(&integrated, monero::Network::Mainnet),
            Err(MoneroAddressError::Integrated {
                address: integrated.clone()
            })
        );
        assert_eq!(
            payout_address(GENERAL_FUND, monero::Network::Mainnet)
                .unwrap()
                .text,
            GENERAL_FUND
        );
        let sub = monero::Address::subaddress(
            monero::Network::Testnet,
            keys.public_spend,
            keys.public_view,
        )
        .to_string();
        assert_eq!(
            parse_monero_address(&sub, monero::Network::Testnet)
                .unwrap()
                .kind,
            MoneroAddressKind::Subaddress
        );
        // One character changed fails the checksum; one past the longest is refused
        // before decoding; trailing text is not the same address.
        let mut broken = GENERAL_FUND.to_string();
        broken.replace_range(
            10..11,
            if &GENERAL_FUND[10..11] == "a" {
                "b"
            } else {
                "a"
            },
        );
        assert!(matches!(
            parse_monero_address(&broken, monero::Network::Mainnet),
            Err(MoneroAddressError::Undecodable { .. })
        ));
        let long = format!("{integrated}1");
        assert_eq!(
            parse_monero_address(&long, monero::Network::Mainnet),
            Err(MoneroAddressError::TooLong {
                length: MONERO_ADDRESS_BYTES_MAX + 1
            })
        );
        assert!(
            parse_monero_address(&format!("{GENERAL_FUND}1"), monero::Network::Mainnet).is_err()
        );
        assert!(parse_monero_address("", monero::Network::Mainnet).is_err());
    }

    /// A mainnet block (version 12, only its coinbase) and the hashing blob monerod
    /// derives from it: the rebuild gives the same, with the nonce after the header's
    /// three varints and the previous block's hash.
    #[test]
    fn a_mainnet_block_gives_monerods_hashing_blob() {
        let block = hex::decode(MAINNET_BLOCK_V12_HEX).unwrap();
        let work = MoneroWork::from_block_blob(block.clone()).unwrap();
        assert_eq!(
            hex::encode(work.hashing_blob()),
            "0c0c94debaf805beb3489c722a285c092a32e7c6893abfc7d069699c8326fc3445a749c5276b62\
             00000000602d0d4710e2c2d38da0cce097accdf5dc18b1d34323880c1aae90ab8f6be6e201"
        );
        // Two one-byte versions, a five-byte timestamp, 32 bytes of previous hash.
        assert_eq!(work.nonce_offset(), 39);
        let nonce = [0xde, 0xad, 0xbe, 0xef];
        assert_eq!(&work.block_blob_with_nonce(nonce)[39..43], &nonce);
        assert_eq!(&work.hashing_blob_with_nonce(nonce)[39..43], &nonce);
        // The minor version written as a two-byte varint: the same number, other bytes.
        // It is refused, never mined as a block whose bytes the node would read apart.
        let mut padded = vec![block[0], 0x8c, 0x00];
        padded.extend_from_slice(&block[2..]);
        assert!(matches!(
            MoneroWork::from_block_blob(padded),
            Err(MoneroBlobError::NotCanonical | MoneroBlobError::Undecodable(_))
        ));
        // Trailing bytes after the block.
        let mut longer = block;
        longer.push(0);
        assert!(MoneroWork::from_block_blob(longer).is_err());
    }

    /// A blob that is not a block, or one cut short, gives no work.
    #[test]
    fn a_blob_that_is_not_a_block_gives_no_work() {
        assert!(matches!(
            MoneroWork::from_block_blob(vec![0; 100]),
            Err(MoneroBlobError::Undecodable(_))
        ));
        assert!(matches!(
            MoneroWork::from_block_blob(Vec::new()),
            Err(MoneroBlobError::Undecodable(_))
        ));
    }
}
