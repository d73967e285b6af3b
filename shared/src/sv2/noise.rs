//! Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256 for Stratum V2 over TCP, sans-IO.
//!
//! The handshake and the ciphers are the reference implementation's `noise_sv2`: a
//! reviewed implementation of the key agreement and the BIP340 certificate beats a new
//! one. What is ours is the part that decides how bytes move, so it fits a core's receive
//! buffer: cutting ciphertext into the 22-byte encrypted header and the payload's
//! 65,535-byte noise blocks (spec 4.6), the limit on a frame's size before any payload is
//! buffered, and the pool authority key's base58check form (spec 4.7).
//!
//! Time and randomness are arguments, so handshakes are testable and replayable.

use std::time::Duration;

use bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};
use noise_sv2::{
    Initiator, NoiseDecryptor, NoiseEncryptor, Responder, AEAD_MAC_LEN, ELLSWIFT_ENCODING_SIZE,
    INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE,
};
use rand::{CryptoRng, Rng};

use super::frame::{FrameHeader, FRAME_HEADER_BYTES};

/// Ciphertext bytes in one noise message, MAC included (spec 4.6: `MAX_CT_LEN`).
pub const NOISE_MESSAGE_BYTES_MAX: usize = 65535;
/// Plaintext bytes one noise message carries.
pub const NOISE_PLAINTEXT_BYTES_MAX: usize = NOISE_MESSAGE_BYTES_MAX - AEAD_MAC_LEN;
/// The encrypted frame header: six bytes and their MAC.
pub const ENCRYPTED_HEADER_BYTES: usize = FRAME_HEADER_BYTES + AEAD_MAC_LEN;
/// The initiator's first handshake message: its EllSwift-encoded ephemeral key.
pub const HANDSHAKE_REQUEST_BYTES: usize = ELLSWIFT_ENCODING_SIZE;
/// The responder's handshake reply.
pub const HANDSHAKE_REPLY_BYTES: usize = INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE;
/// Version prefix of an authority key's base58check form (spec 4.7).
const AUTHORITY_KEY_VERSION: [u8; 2] = [1, 0];

/// Ciphertext length of a payload of `plaintext_bytes`: each started noise message adds
/// a MAC.
pub fn ciphertext_len(plaintext_bytes: usize) -> usize {
    plaintext_bytes + plaintext_bytes.div_ceil(NOISE_PLAINTEXT_BYTES_MAX) * AEAD_MAC_LEN
}

/// Why a Noise session ended. Each ends that session only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoiseError {
    #[error("the Noise handshake failed")]
    Handshake,
    #[error("the responder's certificate is not signed by the expected authority, or expired")]
    Certificate,
    #[error("a message failed authentication (bad MAC)")]
    BadMac,
    #[error("frame payload of {length} bytes; at most {max} accepted")]
    TooLarge { length: usize, max: usize },
}

/// The pool's authority key: it signs each connection's certificate, and miners pin its
/// public half in their URL.
#[derive(Clone)]
pub struct AuthorityKey {
    secret: [u8; 32],
    public_x: [u8; 32],
}

impl std::fmt::Debug for AuthorityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityKey")
            .field("public", &self.public_base58())
            .finish_non_exhaustive()
    }
}

impl AuthorityKey {
    /// From a 32-byte secret key; `None` if it is not a valid secp256k1 scalar.
    pub fn from_secret(secret: [u8; 32]) -> Option<Self> {
        let secret_key = SecretKey::from_slice(&secret).ok()?;
        let keypair = Keypair::from_secret_key(&Secp256k1::signing_only(), &secret_key);
        Some(AuthorityKey {
            secret,
            public_x: keypair.x_only_public_key().0.serialize(),
        })
    }

    pub fn generate(rng: &mut (impl Rng + CryptoRng)) -> Self {
        loop {
            if let Some(key) = Self::from_secret(rng.gen()) {
                return key;
            }
        }
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// The x-only public key.
    pub fn public_x(&self) -> [u8; 32] {
        self.public_x
    }

    /// The form miners put in `stratum2+tcp://HOST:PORT/KEY`.
    pub fn public_base58(&self) -> String {
        encode_authority_public_key(&self.public_x)
    }
}

/// Base58check of the version prefix and the 32-byte x-only key.
pub fn encode_authority_public_key(public_x: &[u8; 32]) -> String {
    let mut data = AUTHORITY_KEY_VERSION.to_vec();
    data.extend_from_slice(public_x);
    bitcoin::base58::encode_check(&data)
}

/// The x-only key from its base58check form, checking the checksum and version.
pub fn decode_authority_public_key(text: &str) -> Option<[u8; 32]> {
    let data = bitcoin::base58::decode_check(text).ok()?;
    if data.len() != 34 || data[..2] != AUTHORITY_KEY_VERSION {
        return None;
    }
    data[2..].try_into().ok()
}

/// Moves bytes through an established session: decrypts received ciphertext into frames
/// and encrypts frames to send. Both roles use it after the handshake.
pub struct NoiseTransport {
    encryptor: NoiseEncryptor,
    decryptor: NoiseDecryptor,
    payload_bytes_max: usize,
    inbound: Vec<u8>,
    read_at: usize,
    /// The header of the frame whose payload is awaited.
    pending_header: Option<FrameHeader>,
    /// The last decrypted payload; `next_frame` lends it out.
    plaintext: Vec<u8>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for NoiseTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseTransport")
            .field("buffered", &(self.inbound.len() - self.read_at))
            .finish_non_exhaustive()
    }
}

impl NoiseTransport {
    fn new(engine: noise_sv2::NoiseEngine, payload_bytes_max: usize) -> Self {
        let (encryptor, decryptor) = engine.into_split();
        NoiseTransport {
            encryptor,
            decryptor,
            payload_bytes_max,
            inbound: Vec::new(),
            read_at: 0,
            pending_header: None,
            plaintext: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Whether a frame has begun to arrive and is not finished.
    pub fn has_partial_frame(&self) -> bool {
        self.pending_header.is_some() || self.inbound.len() > self.read_at
    }

    /// Adds received ciphertext.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.read_at > 0 && self.read_at == self.inbound.len() {
            self.inbound.clear();
            self.read_at = 0;
        }
        super::frame::release_burst(&mut self.inbound, bytes.len());
        self.inbound.extend_from_slice(bytes);
    }

    /// The next whole frame, decrypted; `None` until enough ciphertext has arrived. A frame
    /// over the limit is refused as soon as its header is read.
    pub fn next_frame(&mut self) -> Result<Option<(FrameHeader, &[u8])>, NoiseError> {
        let header = match self.pending_header {
            Some(header) => header,
            None => {
                let available = &self.inbound[self.read_at..];
                if available.len() < ENCRYPTED_HEADER_BYTES {
                    self.compact();
                    return Ok(None);
                }
                self.scratch.clear();
                self.scratch
                    .extend_from_slice(&available[..ENCRYPTED_HEADER_BYTES]);
                self.decryptor
                    .decrypt(&mut self.scratch)
                    .map_err(|_| NoiseError::BadMac)?;
                self.read_at += ENCRYPTED_HEADER_BYTES;
                let bytes: [u8; FRAME_HEADER_BYTES] = self.scratch[..]
                    .try_into()
                    .expect("a decrypted header is 6 bytes");
                let header = FrameHeader::parse(&bytes);
                let length = header.msg_length as usize;
                if length > self.payload_bytes_max {
                    return Err(NoiseError::TooLarge {
                        length,
                        max: self.payload_bytes_max,
                    });
                }
                self.pending_header = Some(header);
                header
            }
        };
        let encrypted_len = ciphertext_len(header.msg_length as usize);
        if self.inbound.len() - self.read_at < encrypted_len {
            self.compact();
            return Ok(None);
        }
        self.plaintext.clear();
        super::frame::release_burst(&mut self.plaintext, header.msg_length as usize);
        let end = self.read_at + encrypted_len;
        while self.read_at < end {
            let block_end = (self.read_at + NOISE_MESSAGE_BYTES_MAX).min(end);
            self.scratch.clear();
            self.scratch
                .extend_from_slice(&self.inbound[self.read_at..block_end]);
            self.decryptor
                .decrypt(&mut self.scratch)
                .map_err(|_| NoiseError::BadMac)?;
            self.plaintext.extend_from_slice(&self.scratch);
            self.read_at = block_end;
        }
        self.pending_header = None;
        Ok(Some((header, &self.plaintext)))
    }

    fn compact(&mut self) {
        if self.read_at > 0 {
            self.inbound.drain(..self.read_at);
            self.read_at = 0;
        }
    }

    /// Encrypts whole plaintext frames (as `Message::encode` writes them) onto `out`.
    pub fn encrypt_frames(&mut self, mut frames: &[u8], out: &mut Vec<u8>) {
        while frames.len() >= FRAME_HEADER_BYTES {
            let header_bytes: [u8; FRAME_HEADER_BYTES] =
                frames[..FRAME_HEADER_BYTES].try_into().expect("6 bytes");
            let length = FrameHeader::parse(&header_bytes).msg_length as usize;
            let (frame, rest) = frames.split_at(FRAME_HEADER_BYTES + length);
            self.seal(&frame[..FRAME_HEADER_BYTES], out);
            for block in frame[FRAME_HEADER_BYTES..].chunks(NOISE_PLAINTEXT_BYTES_MAX) {
                self.seal(block, out);
            }
            frames = rest;
        }
        debug_assert!(frames.is_empty(), "only whole frames are encrypted");
    }

    fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        self.scratch.clear();
        self.scratch.extend_from_slice(plaintext);
        // Encryption fails only when the nonce counter is exhausted (2^64 messages).
        self.encryptor
            .encrypt(&mut self.scratch)
            .expect("ChaCha20-Poly1305 encryption into a Vec cannot fail");
        out.extend_from_slice(&self.scratch);
    }
}

/// The pool's side of a connection: the handshake, then the transport.
// The transport is the steady state and is used for every frame; boxing it to shrink the
// short-lived handshake variant would add an indirection to each.
#[allow(clippy::large_enum_variant)]
pub enum NoiseServer {
    Handshake {
        responder: Box<Responder>,
        received: Vec<u8>,
        payload_bytes_max: usize,
    },
    Transport(NoiseTransport),
}

impl std::fmt::Debug for NoiseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoiseServer::Handshake { received, .. } => f
                .debug_struct("Handshake")
                .field("received", &received.len())
                .finish(),
            NoiseServer::Transport(transport) => transport.fmt(f),
        }
    }
}

impl NoiseServer {
    /// A responder whose certificates are valid for `certificate_validity_s` from the
    /// handshake on.
    pub fn new(
        authority: &AuthorityKey,
        certificate_validity_s: u32,
        payload_bytes_max: usize,
        rng: &mut (impl Rng + CryptoRng),
    ) -> Self {
        let responder = Responder::from_authority_kp_with_rng(
            &authority.public_x,
            &authority.secret,
            Duration::from_secs(certificate_validity_s as u64),
            rng,
        )
        .expect("an AuthorityKey's halves match");
        NoiseServer::Handshake {
            responder,
            received: Vec::with_capacity(HANDSHAKE_REQUEST_BYTES),
            payload_bytes_max,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self, NoiseServer::Transport(_))
    }

    /// Takes received bytes. During the handshake, the reply goes onto `out` once the
    /// initiator's 64 bytes are in; bytes after them are ciphertext for the transport.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        now_s: u32,
        rng: &mut (impl Rng + CryptoRng),
        out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        match self {
            NoiseServer::Transport(transport) => {
                transport.feed(bytes);
                Ok(())
            }
            NoiseServer::Handshake {
                responder,
                received,
                payload_bytes_max,
            } => {
                let take = (HANDSHAKE_REQUEST_BYTES - received.len()).min(bytes.len());
                received.extend_from_slice(&bytes[..take]);
                if received.len() < HANDSHAKE_REQUEST_BYTES {
                    return Ok(());
                }
                let request: [u8; HANDSHAKE_REQUEST_BYTES] =
                    received[..].try_into().expect("64 bytes");
                let (reply, engine) = responder
                    .step_1_with_now_rng(request, now_s, rng)
                    .map_err(|_| NoiseError::Handshake)?;
                out.extend_from_slice(&reply);
                let mut transport = NoiseTransport::new(engine, *payload_bytes_max);
                transport.feed(&bytes[take..]);
                *self = NoiseServer::Transport(transport);
                Ok(())
            }
        }
    }

    /// The established transport; `None` during the handshake.
    pub fn transport(&mut self) -> Option<&mut NoiseTransport> {
        match self {
            NoiseServer::Transport(transport) => Some(transport),
            NoiseServer::Handshake { .. } => None,
        }
    }
}

/// The miner's side: sends its ephemeral key, checks the pool's certificate against the
/// pinned authority key, then hands over the transport.
pub struct NoiseClient {
    initiator: Box<Initiator>,
    received: Vec<u8>,
    payload_bytes_max: usize,
}

impl NoiseClient {
    /// Returns the client and the 64 bytes to send first.
    pub fn start(
        authority_public_x: [u8; 32],
        payload_bytes_max: usize,
        rng: &mut (impl Rng + CryptoRng),
    ) -> Result<(Self, [u8; HANDSHAKE_REQUEST_BYTES]), NoiseError> {
        let mut initiator = Initiator::from_raw_k_with_rng(authority_public_x, rng)
            .map_err(|_| NoiseError::Certificate)?;
        let request = initiator.step_0().map_err(|_| NoiseError::Handshake)?;
        Ok((
            NoiseClient {
                initiator,
                received: Vec::with_capacity(HANDSHAKE_REPLY_BYTES),
                payload_bytes_max,
            },
            request,
        ))
    }

    /// Takes received bytes; once the reply is complete and the certificate verifies at
    /// `now_s`, returns the transport (holding any bytes that followed the reply).
    pub fn feed(&mut self, bytes: &[u8], now_s: u32) -> Result<Option<NoiseTransport>, NoiseError> {
        let take = (HANDSHAKE_REPLY_BYTES - self.received.len()).min(bytes.len());
        self.received.extend_from_slice(&bytes[..take]);
        if self.received.len() < HANDSHAKE_REPLY_BYTES {
            return Ok(None);
        }
        let reply: [u8; HANDSHAKE_REPLY_BYTES] = self.received[..].try_into().expect("length");
        let engine = self
            .initiator
            .step_2_with_now(reply, now_s)
            .map_err(|error| match error {
                noise_sv2::Error::InvalidCertificate(_) => NoiseError::Certificate,
                _ => NoiseError::Handshake,
            })?;
        let mut transport = NoiseTransport::new(engine, self.payload_bytes_max);
        transport.feed(&bytes[take..]);
        Ok(Some(transport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sv2::messages::{Message, SubmitSharesStandard};
    use rand::SeedableRng;

    #[test]
    fn authority_key_matches_the_spec_test_vector() {
        let raw = [
            118, 99, 112, 0, 151, 156, 28, 17, 175, 12, 48, 11, 205, 140, 127, 228, 134, 16, 252,
            233, 185, 193, 30, 61, 174, 227, 90, 224, 176, 138, 116, 85,
        ];
        let text = "9bXiEd8boQVhq7WddEcERUL5tyyJVFYdU8th3HfbNXK3Yw6GRXh";
        assert_eq!(encode_authority_public_key(&raw), text);
        assert_eq!(decode_authority_public_key(text), Some(raw));
        let mut corrupted = text.to_string();
        corrupted.replace_range(5..6, "c");
        assert_eq!(decode_authority_public_key(&corrupted), None);
    }

    #[test]
    fn ciphertext_length_follows_the_spec_formula() {
        assert_eq!(ciphertext_len(0), 0);
        assert_eq!(ciphertext_len(1), 17);
        assert_eq!(ciphertext_len(65519), 65535);
        assert_eq!(ciphertext_len(65520), 65535 + 17);
        assert_eq!(ciphertext_len(2 * 65519 + 7), 2 * 65535 + 23);
    }

    fn established(payload_bytes_max: usize) -> (NoiseTransport, NoiseTransport) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let authority = AuthorityKey::generate(&mut rng);
        let now_s = 1_800_000_000;
        let mut server = NoiseServer::new(&authority, 3600, payload_bytes_max, &mut rng);
        let (mut client, request) =
            NoiseClient::start(authority.public_x(), payload_bytes_max, &mut rng).unwrap();
        let mut reply = Vec::new();
        // One byte at a time: the handshake may arrive in any pieces.
        for byte in request {
            server.feed(&[byte], now_s, &mut rng, &mut reply).unwrap();
        }
        assert_eq!(reply.len(), HANDSHAKE_REPLY_BYTES);
        let client_transport = client.feed(&reply, now_s).unwrap().unwrap();
        let NoiseServer::Transport(server_transport) = server else {
            panic!("handshake not finished")
        };
        (client_transport, server_transport)
    }

    #[test]
    fn frames_cross_in_any_pieces_and_large_payloads_split_into_noise_blocks() {
        let (mut client, mut server) = established(1 << 20);
        let small = Message::SubmitSharesStandard(SubmitSharesStandard {
            channel_id: 1,
            sequence_number: 2,
            job_id: 3,
            nonce: 4,
            ntime: 5,
            version: 6,
        })
        .to_frame();
        // A frame of 150,000 payload bytes: three noise blocks.
        let mut large = Vec::new();
        crate::sv2::FrameHeader {
            extension_type: 0x4000,
            channel_msg: false,
            msg_type: 9,
            msg_length: 150_000,
        }
        .write(&mut large);
        large.extend((0..150_000u32).map(|i| i as u8));
        let mut plaintext = small.clone();
        plaintext.extend_from_slice(&large);
        let mut wire = Vec::new();
        client.encrypt_frames(&plaintext, &mut wire);
        assert_eq!(
            wire.len(),
            2 * ENCRYPTED_HEADER_BYTES + ciphertext_len(small.len() - 6) + ciphertext_len(150_000)
        );
        let mut frames = Vec::new();
        for piece in wire.chunks(7_001) {
            server.feed(piece);
            while let Some((header, payload)) = server.next_frame().unwrap() {
                frames.push((header, payload.to_vec()));
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].1, small[6..]);
        assert_eq!(frames[1].0.msg_length, 150_000);
        assert_eq!(frames[1].1, large[6..]);
    }

    #[test]
    fn a_bad_mac_or_an_oversized_frame_ends_the_session() {
        let (mut client, mut server) = established(1000);
        let frame = Message::SubmitSharesStandard(SubmitSharesStandard {
            channel_id: 1,
            sequence_number: 2,
            job_id: 3,
            nonce: 4,
            ntime: 5,
            version: 6,
        })
        .to_frame();
        let mut wire = Vec::new();
        client.encrypt_frames(&frame, &mut wire);
        let mut tampered = wire.clone();
        tampered[ENCRYPTED_HEADER_BYTES + 3] ^= 1;
        server.feed(&tampered);
        assert_eq!(server.next_frame().unwrap_err(), NoiseError::BadMac);

        let (mut client, mut server) = established(1000);
        let mut big = Vec::new();
        crate::sv2::FrameHeader {
            extension_type: 0,
            channel_msg: false,
            msg_type: 0,
            msg_length: 1001,
        }
        .write(&mut big);
        big.resize(6 + 1001, 0);
        let mut wire = Vec::new();
        client.encrypt_frames(&big, &mut wire);
        // Refused from the header alone, before the payload arrives.
        server.feed(&wire[..ENCRYPTED_HEADER_BYTES]);
        assert_eq!(
            server.next_frame().unwrap_err(),
            NoiseError::TooLarge {
                length: 1001,
                max: 1000
            }
        );
    }

    #[test]
    fn a_client_pinned_to_another_authority_refuses_the_pool() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let authority = AuthorityKey::generate(&mut rng);
        let other = AuthorityKey::generate(&mut rng);
        let now_s = 1_800_000_000;
        let mut server = NoiseServer::new(&authority, 3600, 1000, &mut rng);
        let (mut client, request) = NoiseClient::start(other.public_x(), 1000, &mut rng).unwrap();
        let mut reply = Vec::new();
        server.feed(&request, now_s, &mut rng, &mut reply).unwrap();
        assert_eq!(
            client.feed(&reply, now_s).unwrap_err(),
            NoiseError::Certificate
        );

        // The right key, but after the certificate's validity.
        let mut server = NoiseServer::new(&authority, 3600, 1000, &mut rng);
        let (mut client, request) =
            NoiseClient::start(authority.public_x(), 1000, &mut rng).unwrap();
        let mut reply = Vec::new();
        server.feed(&request, now_s, &mut rng, &mut reply).unwrap();
        assert_eq!(
            client.feed(&reply, now_s + 3600 + 60).unwrap_err(),
            NoiseError::Certificate
        );
    }
}
