//! Stratum V2, sans-IO: the data types (`wire`), framing (`frame`) and the Common and
//! Mining sub-protocol messages (`messages`).
//!
//! Why our own codec rather than the Reference Implementation's `binary_sv2`/`codec_sv2`:
//! the data plane decodes each frame in place from a core's receive buffer and encodes
//! straight into a connection's send buffer, with no allocation per message; the
//! reference crates' message types and buffer pools are built around their own I/O
//! layer. Interoperability is what matters, so the reference crates are the independent
//! peer in our interop tests, and the byte vectors in `tests/sv2_codec.rs` come from the
//! specification's field tables.

pub mod client;
pub mod frame;
pub mod messages;
pub mod noise;
pub mod server;
pub mod wire;

/// The ALPN token of Stratum V2 over QUIC: the pool's listener and every client agree on
/// it.
pub const QUIC_ALPN: &[u8] = b"sv2";

pub use frame::{Frame, FrameDecoder, FrameError, FrameHeader};
pub use messages::{Decoded, Message};
pub use wire::{DecodeError, LengthError};
