//! The pool's side of the chain: the node's JSON-RPC, each coin's parameters and address
//! rules, block templates turned into Stratum jobs, winning shares assembled into blocks
//! and submitted with every answer recorded, the node's wallet as the ledger's `Wallet`,
//! and the signed-message proof that a miner holds its address. `monero` is monerod's RPC,
//! the first part of the Monero family (templates and submission; not yet wired to jobs). Blocking on purpose: each
//! caller is a dedicated control-plane thread, so this crate has no async runtime.

pub mod blocks;
pub mod coin;
pub mod jobs;
pub mod monero;
pub mod monero_wallet;
pub mod rpc;
pub mod signed_message;
pub mod synthetic;
pub mod template;
pub mod wallet;
