//! Everything that talks to, or about, the chain node.

pub mod coin;
pub mod rpc;
pub mod synthetic;
pub mod template;
pub mod wallet;
