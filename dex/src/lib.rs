//! Otedama's exchange, where miners convert what they earn: a matching engine per market
//! (`book`), balances and settlement across markets (`exchange`), and the RocksDB journal
//! that every accepted command enters before its events go out (`journal`). The first two
//! are sans-IO and deterministic, so the journal's replay rebuilds the exact state.

pub mod book;
pub mod exchange;
pub mod journal;
pub mod sim;

pub use book::{
    AccountId, DoneReason, Event, NewOrder, OrderId, OrderKind, Reject, SelfTradePrevention, Side,
    TimeInForce,
};
pub use exchange::{
    AssetId, AssetSpec, Balance, Command, Exchange, ExchangeReject, MarketId, MarketSpec,
};
