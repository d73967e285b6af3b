//! The exchange: every market's book plus the accounts' balances, as one deterministic
//! state machine. A command is first checked (`check`, no change), then, once the journal
//! holds it, applied (`apply`, which cannot fail). Placing an order reserves what it could
//! spend; each fill moves both sides' balances in the same step that records the trade;
//! an order's end releases what its reservation has left. The sum of every account's
//! balances per asset changes only by deposits and withdrawals.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::book::{
    AccountId, Book, BookLimits, Event, IdHasher, NewOrder, OrderId, OrderKind, Reject,
    RestingOrder, Side, TimeInForce,
};

pub type AssetId = u16;
pub type MarketId = u16;

/// Trades each market keeps in memory for `GET /trades` and the feed.
pub const RECENT_TRADES_MAX: usize = 1_000;

type IdMap<V> = std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetSpec {
    pub symbol: String,
    /// Minor units per whole coin (1e8 for LTC and BTC).
    pub scale: u64,
}

/// A market trades `lot_size` minor units of `base` per lot, at prices that are multiples
/// of `tick_size` minor units of `quote` per lot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSpec {
    pub symbol: String,
    pub base: AssetId,
    pub quote: AssetId,
    pub lot_size: u64,
    pub tick_size: u64,
    /// Lots.
    pub min_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    Deposit {
        account: AccountId,
        asset: AssetId,
        amount: u64,
    },
    Withdraw {
        account: AccountId,
        asset: AssetId,
        amount: u64,
    },
    /// Prices in ticks, quantities in lots; a market buy's `quote_max` in quote minor units.
    Place { market: MarketId, order: NewOrder },
    Cancel {
        market: MarketId,
        account: AccountId,
        order_id: OrderId,
    },
    /// Same price and fewer lots: reduced in place, keeping priority. Anything else:
    /// the old order is taken out and a new GTC order (a new id) goes in.
    Replace {
        market: MarketId,
        account: AccountId,
        order_id: OrderId,
        price: u64,
        quantity: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeReject {
    #[error("unknown market")]
    UnknownMarket,
    #[error("unknown asset")]
    UnknownAsset,
    #[error("amount must be positive")]
    AmountZero,
    #[error("insufficient available balance")]
    InsufficientBalance,
    #[error("amount too large")]
    Overflow,
    #[error(transparent)]
    Book(#[from] Reject),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub available: u64,
    pub reserved: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRecord {
    pub sequence: u64,
    pub taker_order: OrderId,
    pub maker_order: OrderId,
    pub taker_side: Side,
    /// Ticks and lots.
    pub price: u64,
    pub quantity: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Reservation {
    asset: AssetId,
    amount: u64,
}

struct Market {
    spec: MarketSpec,
    book: Book,
    recent_trades: VecDeque<TradeRecord>,
}

pub struct Exchange {
    assets: Vec<AssetSpec>,
    markets: Vec<Market>,
    balances: IdMap<Vec<Balance>>,
    reservations: IdMap<Reservation>,
    next_order_id: OrderId,
    /// Commands applied so far; the journal's sequence.
    applied: u64,
    trades: u64,
    scratch: Vec<Event>,
}

/// Everything an exchange holds, in a canonical order: what a snapshot stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub assets: Vec<AssetSpec>,
    pub markets: Vec<MarketState>,
    /// `(account, balances per asset)`, by account.
    pub balances: Vec<(AccountId, Vec<Balance>)>,
    /// `(order, asset, amount)`, by order.
    pub reservations: Vec<(OrderId, AssetId, u64)>,
    pub next_order_id: OrderId,
    pub applied: u64,
    pub trades: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketState {
    pub spec: MarketSpec,
    pub resting: Vec<RestingOrder>,
    pub recent_trades: Vec<TradeRecord>,
}

impl Exchange {
    pub fn new(assets: Vec<AssetSpec>, markets: Vec<MarketSpec>) -> Self {
        for market in &markets {
            assert!(
                usize::from(market.base) < assets.len() && usize::from(market.quote) < assets.len(),
                "market {} names an unknown asset",
                market.symbol
            );
            assert!(
                market.lot_size > 0 && market.tick_size > 0,
                "zero lot or tick size"
            );
        }
        Exchange {
            markets: markets
                .into_iter()
                .map(|spec| Market {
                    book: Book::new(BookLimits {
                        min_size: spec.min_size,
                    }),
                    spec,
                    recent_trades: VecDeque::new(),
                })
                .collect(),
            assets,
            balances: IdMap::default(),
            reservations: IdMap::default(),
            next_order_id: 1,
            applied: 0,
            trades: 0,
            scratch: Vec::new(),
        }
    }

    pub fn assets(&self) -> &[AssetSpec] {
        &self.assets
    }

    pub fn market_specs(&self) -> impl Iterator<Item = &MarketSpec> {
        self.markets.iter().map(|m| &m.spec)
    }

    pub fn market_id(&self, symbol: &str) -> Option<MarketId> {
        self.markets
            .iter()
            .position(|m| m.spec.symbol == symbol)
            .map(|i| i as MarketId)
    }

    pub fn book(&self, market: MarketId) -> Option<&Book> {
        self.markets.get(usize::from(market)).map(|m| &m.book)
    }

    pub fn recent_trades(&self, market: MarketId) -> impl Iterator<Item = &TradeRecord> {
        self.markets
            .get(usize::from(market))
            .into_iter()
            .flat_map(|m| m.recent_trades.iter().rev())
    }

    pub fn balance(&self, account: AccountId, asset: AssetId) -> Balance {
        self.balances
            .get(&account)
            .and_then(|b| b.get(usize::from(asset)))
            .copied()
            .unwrap_or_default()
    }

    /// Commands applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The id the next accepted order gets.
    pub fn next_order_id(&self) -> OrderId {
        self.next_order_id
    }

    /// Checks `command` against the current state; `Ok` means `apply` will take it.
    pub fn check(&self, command: &Command) -> Result<(), ExchangeReject> {
        match *command {
            Command::Deposit {
                account,
                asset,
                amount,
            } => {
                self.asset(asset)?;
                if amount == 0 {
                    return Err(ExchangeReject::AmountZero);
                }
                let balance = self.balance(account, asset);
                balance
                    .available
                    .checked_add(balance.reserved)
                    .and_then(|b| b.checked_add(amount))
                    .ok_or(ExchangeReject::Overflow)?;
                Ok(())
            }
            Command::Withdraw {
                account,
                asset,
                amount,
            } => {
                self.asset(asset)?;
                if amount == 0 {
                    return Err(ExchangeReject::AmountZero);
                }
                if self.balance(account, asset).available < amount {
                    return Err(ExchangeReject::InsufficientBalance);
                }
                Ok(())
            }
            Command::Place { market, order } => {
                let m = self.market(market)?;
                m.book.check_place(&order)?;
                let (asset, amount) = reservation(&m.spec, &order)?;
                if self.balance(order.account, asset).available < amount {
                    return Err(ExchangeReject::InsufficientBalance);
                }
                Ok(())
            }
            Command::Cancel {
                market,
                account,
                order_id,
            } => {
                self.market(market)?.book.resting(account, order_id)?;
                Ok(())
            }
            Command::Replace {
                market,
                account,
                order_id,
                price,
                quantity,
            } => {
                let m = self.market(market)?;
                let old = m.book.resting(account, order_id)?;
                if price == old.price && quantity < old.remaining && quantity > 0 {
                    return Ok(());
                }
                let new = replacement(&old, price, quantity);
                m.book.check_replace(order_id, &new)?;
                let (asset, amount) = reservation(&m.spec, &new)?;
                // The old order's reservation comes back before the new one is taken.
                let freed = self.reservations.get(&order_id).map_or(0, |r| r.amount);
                if self.balance(account, asset).available + freed < amount {
                    return Err(ExchangeReject::InsufficientBalance);
                }
                Ok(())
            }
        }
    }

    /// Applies a command `check` accepted. Events go to `events` as `(market, event)`.
    pub fn apply(&mut self, command: &Command, events: &mut Vec<(MarketId, Event)>) {
        debug_assert_eq!(self.check(command), Ok(()));
        self.applied += 1;
        match *command {
            Command::Deposit {
                account,
                asset,
                amount,
            } => self.balance_mut(account, asset).available += amount,
            Command::Withdraw {
                account,
                asset,
                amount,
            } => self.balance_mut(account, asset).available -= amount,
            Command::Place { market, order } => {
                let order_id = self.take_order_id();
                self.place(market, order_id, &order, events);
            }
            Command::Cancel {
                market,
                account,
                order_id,
            } => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                let book = &mut self.markets[usize::from(market)].book;
                book.cancel(account, order_id, &mut scratch)
                    .expect("checked before apply");
                self.settle(market, &scratch, events);
                self.scratch = scratch;
            }
            Command::Replace {
                market,
                account,
                order_id,
                price,
                quantity,
            } => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                let m = &mut self.markets[usize::from(market)];
                let old = m.book.resting(account, order_id).expect("checked");
                if price == old.price && quantity < old.remaining {
                    m.book.reduce(order_id, quantity, &mut scratch);
                    // Release what the cut lots had reserved.
                    let per_lot = reservation_per_lot(&m.spec, old.side, price);
                    let cut = (old.remaining - quantity) * per_lot;
                    let asset = reserved_asset(&m.spec, old.side);
                    self.reservations
                        .get_mut(&order_id)
                        .expect("a resting order has a reservation")
                        .amount -= cut;
                    let balance = self.balance_mut(account, asset);
                    balance.reserved -= cut;
                    balance.available += cut;
                    events.extend(scratch.drain(..).map(|e| (market, e)));
                    self.scratch = scratch;
                } else {
                    m.book.take_out_for_replace(order_id, &mut scratch);
                    self.settle(market, &scratch, events);
                    self.scratch = scratch;
                    let new = replacement(&old, price, quantity);
                    let new_id = self.take_order_id();
                    self.place(market, new_id, &new, events);
                }
            }
        }
    }

    /// `check` then `apply`, for callers without a journal.
    pub fn handle(
        &mut self,
        command: &Command,
        events: &mut Vec<(MarketId, Event)>,
    ) -> Result<(), ExchangeReject> {
        self.check(command)?;
        self.apply(command, events);
        Ok(())
    }

    fn take_order_id(&mut self) -> OrderId {
        let id = self.next_order_id;
        self.next_order_id += 1;
        id
    }

    fn place(
        &mut self,
        market: MarketId,
        order_id: OrderId,
        order: &NewOrder,
        events: &mut Vec<(MarketId, Event)>,
    ) {
        let m = &self.markets[usize::from(market)];
        let (asset, amount) = reservation(&m.spec, order).expect("checked before apply");
        let balance = self.balance_mut(order.account, asset);
        balance.available -= amount;
        balance.reserved += amount;
        self.reservations
            .insert(order_id, Reservation { asset, amount });
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let m = &mut self.markets[usize::from(market)];
        let mut order = *order;
        if let OrderKind::Market { quote_max } = &mut order.kind {
            // The book counts in ticks × lots.
            *quote_max /= m.spec.tick_size;
        }
        m.book.place(order_id, &order, &mut scratch);
        self.settle(market, &scratch, events);
        self.scratch = scratch;
    }

    /// Moves balances for what the book did, and passes its events on.
    fn settle(
        &mut self,
        market: MarketId,
        book_events: &[Event],
        events: &mut Vec<(MarketId, Event)>,
    ) {
        let spec = &self.markets[usize::from(market)].spec;
        let (base, quote, lot_size, tick_size) =
            (spec.base, spec.quote, spec.lot_size, spec.tick_size);
        for event in book_events {
            match *event {
                Event::Trade {
                    taker_order,
                    taker_account,
                    maker_order,
                    maker_account,
                    taker_side,
                    price,
                    quantity,
                } => {
                    let base_amount = quantity * lot_size;
                    let quote_amount = quantity * price * tick_size;
                    let ((buyer, buy_order), (seller, sell_order)) = match taker_side {
                        Side::Buy => ((taker_account, taker_order), (maker_account, maker_order)),
                        Side::Sell => ((maker_account, maker_order), (taker_account, taker_order)),
                    };
                    self.consume(buy_order, buyer, quote, quote_amount);
                    self.balance_mut(buyer, base).available += base_amount;
                    self.consume(sell_order, seller, base, base_amount);
                    self.balance_mut(seller, quote).available += quote_amount;
                    self.trades += 1;
                    let recent = &mut self.markets[usize::from(market)].recent_trades;
                    if recent.len() == RECENT_TRADES_MAX {
                        recent.pop_front();
                    }
                    recent.push_back(TradeRecord {
                        sequence: self.trades,
                        taker_order,
                        maker_order,
                        taker_side,
                        price,
                        quantity,
                    });
                }
                Event::Done {
                    order_id, account, ..
                } => {
                    if let Some(left) = self.reservations.remove(&order_id) {
                        let balance = self.balance_mut(account, left.asset);
                        balance.reserved -= left.amount;
                        balance.available += left.amount;
                    }
                }
                Event::Accepted { .. } | Event::Rested { .. } | Event::Reduced { .. } => {}
            }
            events.push((market, *event));
        }
    }

    /// Spends `amount` of an order's reservation.
    fn consume(&mut self, order_id: OrderId, account: AccountId, asset: AssetId, amount: u64) {
        let reservation = self
            .reservations
            .get_mut(&order_id)
            .expect("a trading order has a reservation");
        debug_assert_eq!(reservation.asset, asset);
        reservation.amount = reservation
            .amount
            .checked_sub(amount)
            .expect("a fill never costs more than its reservation");
        self.balance_mut(account, asset).reserved -= amount;
    }

    fn balance_mut(&mut self, account: AccountId, asset: AssetId) -> &mut Balance {
        let assets = self.assets.len();
        &mut self
            .balances
            .entry(account)
            .or_insert_with(|| vec![Balance::default(); assets])[usize::from(asset)]
    }

    fn asset(&self, asset: AssetId) -> Result<&AssetSpec, ExchangeReject> {
        self.assets
            .get(usize::from(asset))
            .ok_or(ExchangeReject::UnknownAsset)
    }

    fn market(&self, market: MarketId) -> Result<&Market, ExchangeReject> {
        self.markets
            .get(usize::from(market))
            .ok_or(ExchangeReject::UnknownMarket)
    }

    /// Sum of every account's balance (available + reserved) of `asset`.
    pub fn total(&self, asset: AssetId) -> u128 {
        self.balances
            .values()
            .map(|b| {
                let b = b[usize::from(asset)];
                u128::from(b.available) + u128::from(b.reserved)
            })
            .sum()
    }

    /// Everything, in canonical order.
    pub fn state(&self) -> State {
        let mut balances: Vec<(AccountId, Vec<Balance>)> =
            self.balances.iter().map(|(a, b)| (*a, b.clone())).collect();
        balances.sort_unstable_by_key(|(a, _)| *a);
        let mut reservations: Vec<(OrderId, AssetId, u64)> = self
            .reservations
            .iter()
            .map(|(o, r)| (*o, r.asset, r.amount))
            .collect();
        reservations.sort_unstable_by_key(|(o, _, _)| *o);
        State {
            assets: self.assets.clone(),
            markets: self
                .markets
                .iter()
                .map(|m| MarketState {
                    spec: m.spec.clone(),
                    resting: m.book.resting_orders(),
                    recent_trades: m.recent_trades.iter().copied().collect(),
                })
                .collect(),
            balances,
            reservations,
            next_order_id: self.next_order_id,
            applied: self.applied,
            trades: self.trades,
        }
    }

    pub fn restore(state: &State) -> Self {
        let mut exchange = Exchange::new(
            state.assets.clone(),
            state.markets.iter().map(|m| m.spec.clone()).collect(),
        );
        for (market, saved) in exchange.markets.iter_mut().zip(&state.markets) {
            market.book = Book::restore(
                BookLimits {
                    min_size: saved.spec.min_size,
                },
                &saved.resting,
            );
            market.recent_trades = saved.recent_trades.iter().copied().collect();
        }
        exchange.balances = state.balances.iter().cloned().collect();
        exchange.reservations = state
            .reservations
            .iter()
            .map(|(o, asset, amount)| {
                (
                    *o,
                    Reservation {
                        asset: *asset,
                        amount: *amount,
                    },
                )
            })
            .collect();
        exchange.next_order_id = state.next_order_id;
        exchange.applied = state.applied;
        exchange.trades = state.trades;
        exchange
    }

    /// SHA-256 of the canonical state: equal hashes, equal exchanges.
    pub fn state_hash(&self) -> [u8; 32] {
        let state = self.state();
        let mut hasher = Sha256::new();
        hasher.update(state.next_order_id.to_le_bytes());
        hasher.update(state.applied.to_le_bytes());
        hasher.update(state.trades.to_le_bytes());
        for (account, balances) in &state.balances {
            hasher.update(account.to_le_bytes());
            for b in balances {
                hasher.update(b.available.to_le_bytes());
                hasher.update(b.reserved.to_le_bytes());
            }
        }
        for (order, asset, amount) in &state.reservations {
            hasher.update(order.to_le_bytes());
            hasher.update(asset.to_le_bytes());
            hasher.update(amount.to_le_bytes());
        }
        for market in &state.markets {
            hasher.update(market.spec.symbol.as_bytes());
            for o in &market.resting {
                hasher.update(o.id.to_le_bytes());
                hasher.update(o.account.to_le_bytes());
                hasher.update([o.side as u8, o.self_trade_prevention as u8]);
                hasher.update(o.price.to_le_bytes());
                hasher.update(o.remaining.to_le_bytes());
            }
            for t in &market.recent_trades {
                hasher.update(t.sequence.to_le_bytes());
                hasher.update(t.taker_order.to_le_bytes());
                hasher.update(t.maker_order.to_le_bytes());
                hasher.update(t.price.to_le_bytes());
                hasher.update(t.quantity.to_le_bytes());
            }
        }
        hasher.finalize().into()
    }
}

/// What an order must hold while it lives: quote for buys (at its limit, or its
/// `quote_max` for a market buy), base for sells.
fn reservation(spec: &MarketSpec, order: &NewOrder) -> Result<(AssetId, u64), ExchangeReject> {
    let amount = match (order.side, order.kind) {
        (Side::Buy, OrderKind::Market { quote_max }) => Some(quote_max),
        (Side::Buy, OrderKind::Limit { price, .. }) => order
            .quantity
            .checked_mul(price)
            .and_then(|v| v.checked_mul(spec.tick_size)),
        (Side::Sell, _) => order.quantity.checked_mul(spec.lot_size),
    };
    Ok((
        reserved_asset(spec, order.side),
        amount.ok_or(ExchangeReject::Overflow)?,
    ))
}

fn reserved_asset(spec: &MarketSpec, side: Side) -> AssetId {
    match side {
        Side::Buy => spec.quote,
        Side::Sell => spec.base,
    }
}

fn reservation_per_lot(spec: &MarketSpec, side: Side, price: u64) -> u64 {
    match side {
        Side::Buy => price * spec.tick_size,
        Side::Sell => spec.lot_size,
    }
}

/// The GTC order a cancel-replace puts in.
fn replacement(old: &RestingOrder, price: u64, quantity: u64) -> NewOrder {
    NewOrder {
        account: old.account,
        side: old.side,
        kind: OrderKind::Limit {
            price,
            time_in_force: TimeInForce::Gtc,
        },
        quantity,
        self_trade_prevention: old.self_trade_prevention,
    }
}
