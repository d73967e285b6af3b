//! The share log's one owner: its key format (`format`), the data plane's group-commit
//! writer (`writer`), the control plane's follower of it (`tail`) and, in cluster mode,
//! the control plane's copy of another host's log (`mirror`), and cutting a log below
//! what nobody needs any more (`retention`). Accepted shares live
//! in one RocksDB per data-plane process; a miner hears `true` only once its share is
//! durable here, and payouts read nothing else.

pub mod format;
pub mod mirror;
pub mod retention;
pub mod tail;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod writer;
