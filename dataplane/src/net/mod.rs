//! Network front ends: the glue between sockets and the sans-IO protocol sessions.

pub mod monero;
pub mod quic;
pub mod sv1;
pub mod sv2;
pub mod wire;

pub use otedama_shared::clock::now_s;
