//! `otedama-tune`: reads a pool host (facts), computes the kernel and service settings a
//! target load needs (plan), and applies, checks and reverts them. The plan is a pure
//! function of the facts and the target; only `apply` and `revert` write, and only under
//! the root they are given, so tests run them against a scratch tree. For a NATS server of
//! cluster mode it sizes the server from the pool's load (`nats`).

pub mod apply;
pub mod facts;
pub mod nats;
pub mod plan;
