//! Otedama's proof-of-work kernels: SHA256d with midstates, Scrypt (N=1024, r=1, p=1),
//! RandomX (through its reference implementation), merkle roots from a branch, and 256-bit
//! target arithmetic.
//!
//! Everything here is a pure function over bytes. It never allocates on the share path
//! (but for RandomX's result, see `randomx`), never does I/O and never panics on input a
//! peer controls; the data plane calls it from every core at once without locks.

pub mod merkle;
pub mod randomx;
pub mod scrypt;
pub mod sha256d;
pub mod sha_ni;
pub mod target;

pub use merkle::merkle_root_from_branch;
pub use sha256d::{sha256d, Midstate};
pub use target::{Algorithm, Target};
