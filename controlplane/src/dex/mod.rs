//! The exchange as the pool runs it: the journaled engine (`otedama-dex`), the miners'
//! exchange accounts and API keys, and transfers of the pool's coin between the ledger and
//! the exchange that neither lose nor double a unit across a crash.
//!
//! A transfer is written to the ledger first with the journal sequence its exchange
//! command will take (a deposit's debit goes in that same write). Nothing else enters the
//! journal until the transfer is finished, and a restart finishes every pending one before
//! the exchange takes commands: the journal entry at that sequence says whether the
//! exchange saw it. Lock order, where both are held: this service, then the ledger.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rand::RngCore;
use rocksdb::{Options, DB};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use otedama_dex::journal::Dex;
use otedama_dex::{
    AccountId, AssetId, AssetSpec, Command, Event, Exchange, ExchangeReject, MarketId, MarketSpec,
    NewOrder, OrderId, OrderKind, Reject, SelfTradePrevention, Side, TimeInForce,
};

use otedama_ledger::amount::{coins_text, Amount, UNITS_PER_COIN};
use otedama_ledger::ledger::{Ledger, Transfer, TransferKind, TransferState};

mod accounts;
mod replication;
mod transfers;
mod views;

pub use replication::{follow_leadership, Replication};

use views::price_coins;

/// Price levels per side in `/orderbook` and the feed's book messages.
pub const BOOK_LEVELS_MAX: usize = 50;
/// Journal entries between snapshots; bounds the replay at start.
pub const SNAPSHOT_INTERVAL_COMMANDS: u64 = 100_000;
/// Minor units per whole coin for every asset.
pub const ASSET_SCALE: u64 = UNITS_PER_COIN;
/// Exchange accounts (addresses with an API key) at most.
pub const ACCOUNTS_MAX: u64 = 10_000_000;

/// One market as the config names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    /// `LTC-BTC`: base, then quote.
    pub symbol: String,
    /// Base coins per lot (`0.01`).
    pub lot_size: String,
    /// Quote coins per lot per tick (`0.00000001`).
    pub tick_size: String,
    /// Smallest order, in lots.
    pub min_size: u64,
}

/// Why an exchange request was refused, as the API reports it.
#[derive(Debug, thiserror::Error)]
pub enum DexError {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown market {0:?}")]
    UnknownMarket(String),
    #[error("no open order {0} of yours")]
    UnknownOrder(OrderId),
    /// The address may not move value: its payouts wait on KYC, or it is denied.
    #[error("{0}")]
    Held(String),
    #[error(transparent)]
    Refused(#[from] ExchangeReject),
    /// Cluster mode: this control plane does not run the exchange now (a standby, or a
    /// leader after a failed write until its next take-over), or the exchange stream is
    /// full.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl DexError {
    fn internal(error: impl std::fmt::Display) -> Self {
        DexError::Internal(anyhow::anyhow!("{error}"))
    }
}

/// The exchange, shared by the API and the payout thread (which holds KYC), once open.
pub type SharedDex = Arc<Mutex<DexService>>;

/// Takes what `address` has resting off the books (its value is held: KYC or deny list)
/// and tells the feed. Called with the hold written, under the exchange's lock, so no
/// order of the address can match between the hold and the cancel.
pub fn freeze_orders(dex: &mut DexService, pool: &crate::stats::PoolState, address: &str) {
    match dex.cancel_all_of(address) {
        Ok(done) => {
            if !done.is_empty() {
                tracing::info!(%address, orders = done.len(), "held address's resting orders cancelled");
            }
            for (market, events) in done {
                for message in dex.feed_messages(market, &events) {
                    pool.publish_event(crate::events::PoolEvent::Exchange(message));
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, %address, "cannot cancel a held address's resting orders")
        }
    }
}

/// What a miner asks for in `POST /api/v1/dex/orders`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub market: String,
    pub side: Side,
    /// `limit` (default) or `market`.
    #[serde(default = "limit")]
    pub r#type: String,
    /// Quote coins per whole base coin, as a decimal string.
    pub price: Option<String>,
    /// Base coins, as a decimal string; a multiple of the lot size.
    pub quantity: String,
    #[serde(default = "gtc")]
    pub time_in_force: TimeInForce,
    /// A market buy's most quote coins to spend.
    pub quote_max: Option<String>,
    #[serde(default)]
    pub self_trade_prevention: SelfTradePrevention,
}

fn limit() -> String {
    "limit".into()
}

fn gtc() -> TimeInForce {
    TimeInForce::Gtc
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyRecord {
    address: String,
    created_at_ms: u64,
}

const ACCOUNT_PREFIX: &[u8] = b"a/";
const ADDRESS_PREFIX: &[u8] = b"i/";
const KEY_PREFIX: &[u8] = b"k/";
const KEY_OF_ADDRESS_PREFIX: &[u8] = b"K/";
/// Per address, the serial of the last key challenge answered (16 bytes, big-endian).
const KEY_CHALLENGE_SERIAL_PREFIX: &[u8] = b"S/";
/// How many times the exchange has started (8 bytes, big-endian): the high half of key
/// challenge serials.
const START_COUNT_KEY: &[u8] = b"E/starts";

pub struct DexService {
    dex: Dex,
    /// Address ↔ account id, API keys (by SHA-256).
    accounts: DB,
    next_account: AccountId,
    /// `ACCOUNTS_MAX`, lowered by tests to reach it.
    accounts_max: u64,
    /// This start's number, counted in the store (`START_COUNT_KEY`).
    start_count: u64,
    pool_asset: AssetId,
    events: Vec<Event>,
    /// Set when a journal write failed: whether that command is in the journal is unknown
    /// until a restart reads it back, so nothing more is taken until then.
    journal_failed: bool,
    /// Cluster mode: the exchange stream every write goes through first.
    replication: Option<replication::SharedReplication>,
    /// Cluster mode: the lease term in which this control plane took the exchange over
    /// (`take_over`).
    taken_term: Option<u64>,
    /// Held by each transfer between its ledger and journal writes, and by a backup while
    /// it copies the two (`backup::TransferGate`).
    transfer_gate: crate::backup::TransferGate,
}

fn parse_positive(what: &str, text: &str) -> Result<u64, DexError> {
    let units = Amount::parse(text)
        .map_err(|e| DexError::Invalid(format!("{what}: {e}")))?
        .units();
    if units == 0 {
        return Err(DexError::Invalid(format!("{what} must be positive")));
    }
    Ok(units)
}

/// The engine's assets and markets for the pool's coin and the configured markets.
pub fn build_exchange(pool_coin: &str, markets: &[MarketConfig]) -> anyhow::Result<Exchange> {
    let mut assets = vec![AssetSpec {
        symbol: pool_coin.to_string(),
        scale: ASSET_SCALE,
    }];
    let mut specs = Vec::new();
    for market in markets {
        let (base, quote) = market
            .symbol
            .split_once('-')
            .with_context(|| format!("market {:?} is not BASE-QUOTE", market.symbol))?;
        if base == quote {
            anyhow::bail!("market {:?} trades a coin against itself", market.symbol);
        }
        if base != pool_coin && quote != pool_coin {
            anyhow::bail!(
                "market {:?} must trade {pool_coin}, the coin miners earn here",
                market.symbol
            );
        }
        let mut asset = |symbol: &str| -> AssetId {
            match assets.iter().position(|a| a.symbol == symbol) {
                Some(at) => at as AssetId,
                None => {
                    assets.push(AssetSpec {
                        symbol: symbol.to_string(),
                        scale: ASSET_SCALE,
                    });
                    (assets.len() - 1) as AssetId
                }
            }
        };
        let (base, quote) = (asset(base), asset(quote));
        let lot_size = Amount::parse(&market.lot_size).context("lot_size")?.units();
        let tick_size = Amount::parse(&market.tick_size)
            .context("tick_size")?
            .units();
        if lot_size == 0 || tick_size == 0 || market.min_size == 0 {
            anyhow::bail!(
                "market {:?}: lot_size, tick_size and min_size must be positive",
                market.symbol
            );
        }
        if specs.iter().any(|s: &MarketSpec| s.symbol == market.symbol) {
            anyhow::bail!("market {:?} is listed twice", market.symbol);
        }
        specs.push(MarketSpec {
            symbol: market.symbol.clone(),
            base,
            quote,
            lot_size,
            tick_size,
            min_size: market.min_size,
        });
    }
    Ok(Exchange::new(assets, specs))
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

impl DexService {
    /// Opens the journal and the accounts under `dir`, counts this start, then finishes
    /// every transfer a crash left pending (single-host mode).
    pub fn open(dir: &Path, empty: Exchange, ledger: &mut Ledger) -> anyhow::Result<Self> {
        let mut service = Self::open_store(dir, empty)?;
        service.begin_start(ledger)?;
        Ok(service)
    }

    /// Counts a start of the exchange (key challenge serials rise with it), then settles
    /// every transfer left pending. In cluster mode the count's write is also the new
    /// leader's fence in the exchange stream.
    fn begin_start(&mut self, ledger: &mut Ledger) -> anyhow::Result<()> {
        let start_count = self.start_count + 1;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(START_COUNT_KEY, start_count.to_be_bytes());
        self.write_accounts(batch)?;
        self.start_count = start_count;
        self.recover_transfers(ledger)
    }

    /// The journal and the accounts under `dir`, as stored.
    fn open_store(dir: &Path, empty: Exchange) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let configured: Vec<MarketSpec> = empty.market_specs().cloned().collect();
        let configured_assets = empty.assets().to_vec();
        let dex = Dex::open(&dir.join("journal"), true, empty)
            .map_err(|e| anyhow::anyhow!("opening the exchange journal: {e}"))?;
        let recovered: Vec<MarketSpec> = dex.exchange.market_specs().cloned().collect();
        if recovered != configured || dex.exchange.assets() != configured_assets {
            anyhow::bail!(
                "dex_markets differ from what the exchange journal in {} was started with; \
                 markets cannot change under open orders and balances",
                dir.display()
            );
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        let accounts = DB::open(&options, dir.join("accounts"))?;
        let transfer_gate = crate::backup::TransferGate::open(dir)?;
        Ok(DexService {
            dex,
            next_account: replication::next_account_id(&accounts)?,
            start_count: replication::stored_start_count(&accounts)?,
            accounts,
            accounts_max: ACCOUNTS_MAX,
            pool_asset: 0,
            events: Vec::new(),
            journal_failed: false,
            replication: None,
            taken_term: None,
            transfer_gate,
        })
    }

    pub fn exchange(&self) -> &Exchange {
        &self.dex.exchange
    }

    /// How many times the exchange has started, this start included: it grows at every
    /// start, whatever the clock says (`api::dex::KeyChallenges::new`).
    pub fn start_count(&self) -> u64 {
        self.start_count
    }

    pub fn pool_coin(&self) -> &str {
        &self.dex.exchange.assets()[usize::from(self.pool_asset)].symbol
    }

    fn submit(&mut self, command: &Command) -> Result<Vec<Event>, DexError> {
        if self.journal_failed {
            return Err(DexError::internal(
                "the exchange journal failed a write; the exchange takes commands again after a restart",
            ));
        }
        if !self.leads() {
            // A command after a transfer's ledger write (its lease lapsed in between): the
            // transfer is pending, and no other command may take its journal sequence
            // before a take-over has settled it.
            let refused =
                replication::unavailable("this control plane does not run the exchange now");
            self.lose_place(&refused);
            return Err(refused);
        }
        // The stream's room: a refusal here keeps the take-over (another would only spend
        // the stream's reserve); `transfer` drops it itself when its ledger write is made.
        self.ensure_leads()?;
        self.events.clear();
        match self.dex.submit(command, &mut self.events) {
            Ok(Ok(())) => {}
            Ok(Err(reject)) => return Err(reject.into()),
            // Cluster mode: the stream holds every write made, so it, not a restart, says
            // whether this one was: the exchange takes nothing more until the next
            // take-over has read it and settled what the write left pending.
            Err(e) if self.replication.is_some() => {
                self.lose_place(&e);
                return Err(DexError::internal(format!(
                    "the exchange could not confirm this command (journal sequence {}): whether it \
                     was taken is known once the exchange stream is read again; check before retrying ({e})",
                    self.dex.journal.next_sequence()
                )));
            }
            Err(e) => {
                self.journal_failed = true;
                tracing::error!(error = %e, "exchange journal write failed; the exchange stops taking commands");
                return Err(DexError::internal(format!("exchange journal: {e}")));
            }
        }
        let applied = self.dex.exchange.applied();
        if applied.is_multiple_of(SNAPSHOT_INTERVAL_COMMANDS) {
            if let Err(error) = self.dex.journal.save_snapshot(&self.dex.exchange) {
                tracing::error!(%error, applied, "exchange snapshot failed; replay will be longer");
            }
        }
        Ok(std::mem::take(&mut self.events))
    }

    fn asset(&self, symbol: &str) -> Result<AssetId, DexError> {
        self.dex
            .exchange
            .assets()
            .iter()
            .position(|a| a.symbol == symbol)
            .map(|at| at as AssetId)
            .ok_or_else(|| DexError::Invalid(format!("unknown asset {symbol:?}")))
    }

    fn market(&self, symbol: &str) -> Result<(MarketId, &MarketSpec), DexError> {
        let id = self
            .dex
            .exchange
            .market_id(symbol)
            .ok_or_else(|| DexError::UnknownMarket(symbol.to_string()))?;
        let spec = self
            .dex
            .exchange
            .market_specs()
            .nth(usize::from(id))
            .expect("market_id names a market");
        Ok((id, spec))
    }

    /// Places an order; returns its id (if it got one) and the events it caused.
    pub fn place(
        &mut self,
        address: &str,
        request: &OrderRequest,
    ) -> Result<(MarketId, Vec<Event>), DexError> {
        self.ensure_leads()?;
        let (market, spec) = self.market(&request.market)?;
        let spec = spec.clone();
        let quantity = lots(&spec, parse_positive("quantity", &request.quantity)?)?;
        let kind = match request.r#type.as_str() {
            "limit" => {
                let text = request
                    .price
                    .as_deref()
                    .ok_or_else(|| DexError::Invalid("a limit order needs a price".into()))?;
                OrderKind::Limit {
                    price: price_ticks(&spec, parse_positive("price", text)?)?,
                    time_in_force: request.time_in_force,
                }
            }
            "market" => {
                if request.price.is_some() {
                    return Err(DexError::Invalid("a market order takes no price".into()));
                }
                let quote_max = match (request.side, &request.quote_max) {
                    (Side::Buy, Some(text)) => parse_positive("quote_max", text)?,
                    (Side::Buy, None) => {
                        return Err(DexError::Invalid(
                            "a market buy needs quote_max, the most it may spend".into(),
                        ))
                    }
                    (Side::Sell, _) => 0,
                };
                OrderKind::Market { quote_max }
            }
            other => {
                return Err(DexError::Invalid(format!(
                    "type must be limit or market, not {other:?}"
                )))
            }
        };
        let account = self.ensure_account(address)?;
        let order = NewOrder {
            account,
            side: request.side,
            kind,
            quantity,
            self_trade_prevention: request.self_trade_prevention,
        };
        let events = self.submit(&Command::Place { market, order })?;
        Ok((market, events))
    }

    /// Cancels one of the address's open orders, in whichever market it rests.
    pub fn cancel(
        &mut self,
        address: &str,
        order_id: OrderId,
    ) -> Result<(MarketId, Vec<Event>), DexError> {
        let account = self
            .account_id(address)?
            .ok_or(DexError::UnknownOrder(order_id))?;
        let markets = self.dex.exchange.market_specs().count();
        for market in 0..markets as MarketId {
            if self
                .dex
                .exchange
                .resting_order(market, account, order_id)
                .is_ok()
            {
                let events = self.submit(&Command::Cancel {
                    market,
                    account,
                    order_id,
                })?;
                return Ok((market, events));
            }
        }
        // Another account's order and no order at all look the same from outside.
        Err(DexError::UnknownOrder(order_id))
    }

    /// Cancels every order the address has resting, in every market: an address whose
    /// value is held (KYC, deny list) must not have it taken by another's order. Returns
    /// what each cancel did, for the feed.
    pub fn cancel_all_of(
        &mut self,
        address: &str,
    ) -> Result<Vec<(MarketId, Vec<Event>)>, DexError> {
        let Some(account) = self.account_id(address)? else {
            return Ok(Vec::new());
        };
        let resting: Vec<(MarketId, OrderId)> = (0..self.dex.exchange.market_specs().count())
            .flat_map(|market| {
                let market = market as MarketId;
                self.dex
                    .exchange
                    .resting_orders(market)
                    .into_iter()
                    .filter(|order| order.account == account)
                    .map(|order| (market, order.id))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Every order is tried: one that fails does not leave the rest on the book.
        let mut done = Vec::new();
        let mut failed = None;
        for (market, order_id) in resting {
            match self.submit(&Command::Cancel {
                market,
                account,
                order_id,
            }) {
                Ok(events) => done.push((market, events)),
                Err(error) => failed = Some(error),
            }
        }
        match failed {
            Some(error) if done.is_empty() => Err(error),
            Some(error) => {
                tracing::error!(%error, %address, "a held address's order could not be cancelled");
                Ok(done)
            }
            None => Ok(done),
        }
    }

    /// Cancel-replace of one of the address's open orders: the same price and fewer lots
    /// keep its place in the queue; anything else takes it out and puts a new order (a new
    /// id) in at the back.
    pub fn replace(
        &mut self,
        address: &str,
        order_id: OrderId,
        price: &str,
        quantity: &str,
    ) -> Result<(MarketId, Vec<Event>), DexError> {
        let account = self
            .account_id(address)?
            .ok_or(DexError::UnknownOrder(order_id))?;
        let markets = self.dex.exchange.market_specs().count() as MarketId;
        let market = (0..markets)
            .find(|&m| {
                self.dex
                    .exchange
                    .resting_order(m, account, order_id)
                    .is_ok()
            })
            .ok_or(DexError::UnknownOrder(order_id))?;
        let spec = self.spec(market).clone();
        let price = price_ticks(&spec, parse_positive("price", price)?)?;
        let quantity = lots(&spec, parse_positive("quantity", quantity)?)?;
        let events = self.submit(&Command::Replace {
            market,
            account,
            order_id,
            price,
            quantity,
        })?;
        Ok((market, events))
    }

    fn spec(&self, market: MarketId) -> &MarketSpec {
        self.dex
            .exchange
            .market_specs()
            .nth(usize::from(market))
            .expect("a known market")
    }

    fn symbol_of(&self, asset: AssetId) -> &str {
        &self.dex.exchange.assets()[usize::from(asset)].symbol
    }

    /// The sums the exchange holds per asset, for conservation checks and metrics.
    pub fn totals(&self) -> BTreeMap<String, u128> {
        self.dex
            .exchange
            .assets()
            .iter()
            .enumerate()
            .map(|(i, a)| (a.symbol.clone(), self.dex.exchange.total(i as AssetId)))
            .collect()
    }
}

/// A price given in quote minor units per whole base coin, in ticks: refused unless it is
/// exactly a whole number of ticks.
fn price_ticks(spec: &MarketSpec, quote_units_per_coin: u64) -> Result<u64, DexError> {
    let per_lot = u128::from(quote_units_per_coin) * u128::from(spec.lot_size);
    let tick = u128::from(spec.tick_size) * u128::from(ASSET_SCALE);
    if per_lot % tick != 0 {
        return Err(DexError::Invalid(format!(
            "price must be a multiple of the price increment {}",
            price_coins(spec, 1)
        )));
    }
    u64::try_from(per_lot / tick).map_err(|_| DexError::Invalid("price is too large".into()))
}

/// A quantity given in base minor units, in lots: refused unless a whole number of lots.
fn lots(spec: &MarketSpec, base_units: u64) -> Result<u64, DexError> {
    if !base_units.is_multiple_of(spec.lot_size) {
        return Err(DexError::Invalid(format!(
            "quantity must be a multiple of the lot size {}",
            coins_text(u128::from(spec.lot_size))
        )));
    }
    Ok(base_units / spec.lot_size)
}

/// The HTTP status a refusal maps to.
pub fn status_of(error: &DexError) -> u16 {
    match error {
        DexError::Invalid(_) => 400,
        DexError::UnknownMarket(_) | DexError::UnknownOrder(_) => 404,
        DexError::Held(_) => 403,
        DexError::Refused(ExchangeReject::Book(Reject::UnknownOrder | Reject::NotYourOrder)) => 404,
        DexError::Refused(_) => 422,
        DexError::Internal(_) => 500,
        DexError::Unavailable(_) => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ltc_btc() -> MarketConfig {
        MarketConfig {
            symbol: "LTC-BTC".into(),
            lot_size: "0.01".into(),
            tick_size: "0.00000001".into(),
            min_size: 1,
        }
    }

    /// Each start of the exchange counts one more, from the store: key challenge serials
    /// grow across restarts without the wall clock.
    #[test]
    fn the_start_count_grows_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        for expected in 1..=3 {
            let service = DexService::open(
                &dir.path().join("dex"),
                build_exchange("LTC", &[ltc_btc()]).unwrap(),
                &mut ledger,
            )
            .unwrap();
            assert_eq!(service.start_count(), expected);
        }
    }

    /// The public book shows the best `BOOK_LEVELS_MAX` price levels of a side, best
    /// first; a level more stays in the book but off the page.
    #[test]
    fn the_public_book_shows_its_level_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        let mut service = DexService::open(
            &dir.path().join("dex"),
            build_exchange("LTC", &[ltc_btc()]).unwrap(),
            &mut ledger,
        )
        .unwrap();
        service
            .credit_external("buyer", "BTC", 100_000_000)
            .unwrap();
        let bid = |service: &mut DexService, ticks: u64| {
            let request: OrderRequest = serde_json::from_value(json!({
                "market": "LTC-BTC",
                "side": "buy",
                "price": price_coins(service.spec(0), ticks),
                "quantity": "0.01",
            }))
            .unwrap();
            service.place("buyer", &request).unwrap();
        };
        for ticks in 1..=BOOK_LEVELS_MAX as u64 {
            bid(&mut service, ticks);
        }
        let book = service.book_json("LTC-BTC").unwrap();
        assert_eq!(book["bids"].as_array().unwrap().len(), BOOK_LEVELS_MAX);
        bid(&mut service, BOOK_LEVELS_MAX as u64 + 1);
        let book = service.book_json("LTC-BTC").unwrap();
        let bids = book["bids"].as_array().unwrap();
        assert_eq!(bids.len(), BOOK_LEVELS_MAX);
        let spec = service.spec(0);
        assert_eq!(
            bids[0][0],
            price_coins(spec, BOOK_LEVELS_MAX as u64 + 1),
            "best first"
        );
        assert_eq!(bids[BOOK_LEVELS_MAX - 1][0], price_coins(spec, 2));
        assert_eq!(service.exchange().order_count(0), BOOK_LEVELS_MAX + 1);
    }

    #[test]
    fn prices_convert_exactly_and_off_tick_prices_are_refused() {
        let exchange = build_exchange("LTC", &[ltc_btc()]).unwrap();
        let spec = exchange.market_specs().next().unwrap().clone();
        // One tick is 1 sat per 0.01 LTC: 0.000001 BTC per LTC.
        assert_eq!(price_coins(&spec, 1), "0.00000100");
        assert_eq!(price_ticks(&spec, 1_250_000).unwrap(), 12_500);
        assert_eq!(price_coins(&spec, 12_500), "0.01250000");
        assert!(matches!(
            price_ticks(&spec, 1_250_001),
            Err(DexError::Invalid(_))
        ));
        assert!(build_exchange(
            "LTC",
            &[MarketConfig {
                symbol: "BTC-ETH".into(),
                ..ltc_btc()
            }]
        )
        .is_err());
        assert!(build_exchange("LTC", &[ltc_btc(), ltc_btc()]).is_err());
    }

    /// A deposit whose exchange command never reached the journal (the process died
    /// between the ledger write and the journal append) is given at the next start; one
    /// that did is only marked done. The ledger's exchange account always equals what the
    /// exchange holds of the pool's coin.
    #[test]
    fn pending_transfers_finish_exactly_once_after_a_crash() {
        use otedama_ledger::ledger::EXCHANGE_ACCOUNT;
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        let credits = BTreeMap::from([("miner".to_string(), 5_000_000u64)]);
        ledger.credit_block("b", &credits).unwrap();
        ledger.mature_block("b").unwrap();
        let open = |ledger: &mut Ledger| {
            DexService::open(
                &dir.path().join("dex"),
                build_exchange("LTC", &[ltc_btc()]).unwrap(),
                ledger,
            )
            .unwrap()
        };
        let mut service = open(&mut ledger);
        service
            .transfer(&mut ledger, "miner", 1_000_000, 1, TransferKind::Deposit)
            .unwrap();
        let account = service.account_id("miner").unwrap().unwrap();

        // A crash after the ledger write: the transfer is pending, the journal lacks it.
        let pending = Transfer {
            id: ledger.next_transfer_id().unwrap(),
            kind: TransferKind::Deposit,
            account: "miner".into(),
            amount: 2_000_000,
            exchange_sequence: service.dex.journal.next_sequence(),
            state: TransferState::Pending,
            created_at_ms: 2,
        };
        ledger.begin_transfer(&pending).unwrap();
        drop(service);
        let service = open(&mut ledger);
        assert_eq!(service.exchange().balance(account, 0).available, 3_000_000);
        assert_eq!(ledger.balances(EXCHANGE_ACCOUNT).unwrap().mature, 3_000_000);
        assert_eq!(ledger.balances("miner").unwrap().mature, 2_000_000);

        // A crash after the journal append: the transfer is pending, the journal has it.
        let mut service = service;
        let withdrawal = Transfer {
            id: ledger.next_transfer_id().unwrap(),
            kind: TransferKind::Withdrawal,
            account: "miner".into(),
            amount: 500_000,
            exchange_sequence: service.dex.journal.next_sequence(),
            state: TransferState::Pending,
            created_at_ms: 3,
        };
        ledger.begin_transfer(&withdrawal).unwrap();
        let command = service.transfer_command(&withdrawal, account);
        service.submit(&command).unwrap();
        drop(service);
        let service = open(&mut ledger);
        assert_eq!(service.exchange().balance(account, 0).available, 2_500_000);
        assert_eq!(ledger.balances(EXCHANGE_ACCOUNT).unwrap().mature, 2_500_000);
        assert_eq!(ledger.balances("miner").unwrap().mature, 2_500_000);
        assert!(ledger
            .transfers()
            .unwrap()
            .iter()
            .all(|t| t.state == TransferState::Done));
        // A third start changes nothing.
        drop(service);
        let service = open(&mut ledger);
        assert_eq!(service.exchange().balance(account, 0).available, 2_500_000);
        assert_eq!(ledger.balances("miner").unwrap().mature, 2_500_000);
    }

    #[test]
    fn a_refused_withdrawal_or_an_overdrawn_deposit_moves_nothing() {
        use otedama_ledger::ledger::EXCHANGE_ACCOUNT;
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        ledger
            .credit_block("b", &BTreeMap::from([("miner".to_string(), 100u64)]))
            .unwrap();
        ledger.mature_block("b").unwrap();
        let mut service = DexService::open(
            &dir.path().join("dex"),
            build_exchange("LTC", &[ltc_btc()]).unwrap(),
            &mut ledger,
        )
        .unwrap();
        assert!(matches!(
            service.transfer(&mut ledger, "miner", 101, 1, TransferKind::Deposit),
            Err(DexError::Invalid(_))
        ));
        assert!(matches!(
            service.transfer(&mut ledger, "miner", 1, 1, TransferKind::Withdrawal),
            Err(DexError::Refused(ExchangeReject::InsufficientBalance))
        ));
        assert_eq!(ledger.balances("miner").unwrap().mature, 100);
        assert_eq!(ledger.balances(EXCHANGE_ACCOUNT).unwrap().mature, 0);
        assert!(ledger.transfers().unwrap().is_empty());
        let key = service.create_key("miner", 50, 5).unwrap().unwrap();
        assert_eq!(service.authenticate(&key).as_deref(), Some("miner"));
        // A challenge answered again, or an older one answered after it, gets nothing.
        assert_eq!(service.create_key("miner", 50, 6).unwrap(), None);
        assert_eq!(service.create_key("miner", 49, 6).unwrap(), None);
        assert_eq!(service.authenticate(&key).as_deref(), Some("miner"));
        let newer = service.create_key("miner", 51, 6).unwrap().unwrap();
        assert_eq!(
            service.authenticate(&key),
            None,
            "a new key revokes the old"
        );
        assert_eq!(service.authenticate(&newer).as_deref(), Some("miner"));
        assert_eq!(service.authenticate("otd_guess"), None);

        // The account limit at its edge: "miner" is account 1 of 2. (A service opens with
        // the named limit; it is lowered here to reach it.)
        assert_eq!(service.accounts_max, ACCOUNTS_MAX);
        service.accounts_max = 2;
        service.create_key("second", 1, 7).unwrap().unwrap();
        assert!(service.create_key("third", 1, 8).is_err());
        assert!(
            service.create_key("miner", 52, 9).unwrap().is_some(),
            "existing accounts still work"
        );
    }
}
