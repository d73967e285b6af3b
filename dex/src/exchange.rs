//! The exchange: every market's book plus the accounts' balances, as one deterministic
//! state machine. A command is first checked (`check`, no change), then, once the journal
//! holds it, applied (`apply`, which cannot fail). Placing an order reserves what it could
//! spend; each fill moves both sides' balances in the same step that records the trade;
//! an order's end releases what its reservation has left. The sum of every account's
//! balances per asset changes only by deposits and withdrawals.
//!
//! One file, past the usual length, so that every balance move sits next to the check
//! that allows it: the conservation above is read off this file alone.

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

struct Market {
    spec: MarketSpec,
    book: Book,
    recent_trades: VecDeque<TradeRecord>,
}

pub struct Exchange {
    assets: Vec<AssetSpec>,
    markets: Vec<Market>,
    /// Where each account's balances start in `balances`, in units of `assets.len()`.
    accounts: IdMap<u32>,
    /// Account ids in order of first appearance, to list balances.
    account_ids: Vec<AccountId>,
    balances: Vec<Balance>,
    next_order_id: OrderId,
    /// Commands applied so far; the journal's sequence.
    applied: u64,
    trades: u64,
}

/// Everything an exchange holds, in a canonical order: what a snapshot stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub assets: Vec<AssetSpec>,
    pub markets: Vec<MarketState>,
    /// `(account, balances per asset)`, by account.
    pub balances: Vec<(AccountId, Vec<Balance>)>,
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
            accounts: IdMap::default(),
            account_ids: Vec::new(),
            balances: Vec::new(),
            next_order_id: 1,
            applied: 0,
            trades: 0,
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

    /// Aggregated depth, `(price in ticks, lots)` per level, best first.
    pub fn depth(&self, market: MarketId, side: Side, levels_max: usize) -> Vec<(u64, u64)> {
        self.markets
            .get(usize::from(market))
            .map_or_else(Vec::new, |m| m.book.depth(side, levels_max))
    }

    /// Every resting order of the market, bids then asks, each best first and in time
    /// priority.
    pub fn resting_orders(&self, market: MarketId) -> Vec<RestingOrder> {
        self.markets
            .get(usize::from(market))
            .map_or_else(Vec::new, |m| {
                m.book
                    .resting_orders()
                    .into_iter()
                    .map(|o| RestingOrder {
                        account: self.account_ids[o.account as usize],
                        ..o
                    })
                    .collect()
            })
    }

    /// A resting order, if `account` owns it.
    pub fn resting_order(
        &self,
        market: MarketId,
        account: AccountId,
        order_id: OrderId,
    ) -> Result<RestingOrder, ExchangeReject> {
        let order = self
            .market(market)?
            .book
            .resting(self.book_account(account), order_id)?;
        Ok(RestingOrder { account, ..order })
    }

    pub fn open_orders(&self, market: MarketId, account: AccountId) -> u32 {
        self.markets
            .get(usize::from(market))
            .map_or(0, |m| m.book.open_orders(self.book_account(account)))
    }

    pub fn order_count(&self, market: MarketId) -> usize {
        self.markets
            .get(usize::from(market))
            .map_or(0, |m| m.book.order_count())
    }

    /// The market's latest trades, newest first.
    pub fn recent_trades(&self, market: MarketId) -> impl Iterator<Item = &TradeRecord> {
        self.markets
            .get(usize::from(market))
            .into_iter()
            .flat_map(|m| m.recent_trades.iter().rev())
    }

    pub fn balance(&self, account: AccountId, asset: AssetId) -> Balance {
        match self.accounts.get(&account) {
            Some(&index) => self.balances[self.at(index, asset)],
            None => Balance::default(),
        }
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
                self.check_transfer(asset, amount)?;
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
                self.check_transfer(asset, amount)?;
                if self.balance(account, asset).available < amount {
                    return Err(ExchangeReject::InsufficientBalance);
                }
                Ok(())
            }
            Command::Place { market, order } => {
                let m = self.market(market)?;
                // One account lookup serves the book's check and the balance's.
                let index = self.accounts.get(&order.account).copied();
                m.book.check_place(&NewOrder {
                    account: index.map_or(u64::MAX, u64::from),
                    ..order
                })?;
                let (asset, amount) = reservation(&m.spec, &order)?;
                let available = index.map_or(0, |i| self.balances[self.at(i, asset)].available);
                if available < amount {
                    return Err(ExchangeReject::InsufficientBalance);
                }
                Ok(())
            }
            Command::Cancel {
                market,
                account,
                order_id,
            } => {
                self.market(market)?
                    .book
                    .resting(self.book_account(account), order_id)?;
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
                let old = m.book.resting(self.book_account(account), order_id)?;
                if price == old.price && quantity < old.remaining && quantity > 0 {
                    return Ok(());
                }
                let new = replacement(&old, price, quantity);
                m.book.check_replace(order_id, &new)?;
                let (asset, amount) = reservation(&m.spec, &new)?;
                // The old order's reservation comes back before the new one is taken.
                let freed = old.remaining * per_lot(&m.spec, old.side, old.price);
                if self.balance(account, asset).available + freed < amount {
                    return Err(ExchangeReject::InsufficientBalance);
                }
                Ok(())
            }
        }
    }

    /// Applies a command `check` accepted; what it caused goes to `events` (all of one
    /// market, the command's).
    pub fn apply(&mut self, command: &Command, events: &mut Vec<Event>) {
        debug_assert_eq!(self.check(command), Ok(()));
        self.applied += 1;
        match *command {
            Command::Deposit {
                account,
                asset,
                amount,
            } => {
                let index = self.account_index(account);
                let at = self.at(index, asset);
                self.balances[at].available += amount;
            }
            Command::Withdraw {
                account,
                asset,
                amount,
            } => {
                let index = self.account_index(account);
                let at = self.at(index, asset);
                self.balances[at].available -= amount;
            }
            Command::Place { market, mut order } => {
                let order_id = self.take_order_id();
                order.account = u64::from(self.account_index(order.account));
                self.place(market, order_id, &order, events);
            }
            Command::Cancel {
                market,
                account,
                order_id,
            } => {
                let start = events.len();
                let index = u64::from(self.account_index(account));
                self.markets[usize::from(market)]
                    .book
                    .cancel(index, order_id, events)
                    .expect("checked before apply");
                self.settle(market, None, start, events);
            }
            Command::Replace {
                market,
                account,
                order_id,
                price,
                quantity,
            } => {
                let index = self.account_index(account);
                let m = &mut self.markets[usize::from(market)];
                let old = m.book.resting(u64::from(index), order_id).expect("checked");
                if price == old.price && quantity < old.remaining {
                    m.book.reduce(order_id, quantity, events);
                    // What the cut lots held comes back.
                    let cut = (old.remaining - quantity) * per_lot(&m.spec, old.side, price);
                    let asset = reserved_asset(&m.spec, old.side);
                    self.release(index, asset, cut);
                } else {
                    let start = events.len();
                    m.book.take_out_for_replace(order_id, events);
                    self.settle(market, None, start, events);
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
        events: &mut Vec<Event>,
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
        events: &mut Vec<Event>,
    ) {
        let m = &mut self.markets[usize::from(market)];
        let (asset, amount) = reservation(&m.spec, order).expect("checked before apply");
        let mut for_book = *order;
        if let OrderKind::Market { quote_max } = &mut for_book.kind {
            // The book counts in ticks × lots.
            *quote_max /= m.spec.tick_size;
        }
        let start = events.len();
        m.book.place(order_id, &for_book, events);
        let at = self.at(order.account as u32, asset);
        let balance = &mut self.balances[at];
        balance.available -= amount;
        balance.reserved += amount;
        let taker = Taker {
            order_id,
            reserved: amount,
            spent: 0,
        };
        self.settle(market, Some(taker), start, events);
    }

    /// Moves balances for what the book did. A resting order's reservation is always its
    /// remaining lots at its own price (makers trade at their price), so only the arriving
    /// order's is tracked, in `taker`.
    /// The book's events from `start` on name accounts by number; settling works on the
    /// numbers, then each event gets the account ids back.
    fn settle(
        &mut self,
        market: MarketId,
        mut taker: Option<Taker>,
        start: usize,
        events: &mut [Event],
    ) {
        let spec = &self.markets[usize::from(market)].spec;
        let (base, quote, lot_size, tick_size) =
            (spec.base, spec.quote, spec.lot_size, spec.tick_size);
        for event in &mut events[start..] {
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
                    let (taker_pays, taker_gets, pay, get) = match taker_side {
                        Side::Buy => (quote, base, quote_amount, base_amount),
                        Side::Sell => (base, quote, base_amount, quote_amount),
                    };
                    let (taker_index, maker_index) = (taker_account as u32, maker_account as u32);
                    // The maker pays what the taker gets, from its reservation.
                    let at = self.at(taker_index, taker_pays);
                    self.balances[at].reserved -= pay;
                    let at = self.at(taker_index, taker_gets);
                    self.balances[at].available += get;
                    let at = self.at(maker_index, taker_gets);
                    self.balances[at].reserved -= get;
                    let at = self.at(maker_index, taker_pays);
                    self.balances[at].available += pay;
                    if let Some(taker) = taker.as_mut() {
                        taker.spent += pay;
                    }
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
                    order_id,
                    account,
                    side,
                    price,
                    remaining,
                    ..
                } => {
                    let spec = &self.markets[usize::from(market)].spec;
                    let asset = reserved_asset(spec, side);
                    let left = match taker {
                        Some(t) if t.order_id == order_id => t.reserved - t.spent,
                        _ => remaining * per_lot(spec, side, price),
                    };
                    self.release(account as u32, asset, left);
                }
                Event::Rested {
                    order_id,
                    account,
                    side,
                    price,
                    remaining,
                } => {
                    // The arriving order keeps what its rest needs; a buy that traded below
                    // its limit gets the difference back.
                    if let Some(t) = taker.filter(|t| t.order_id == order_id) {
                        let spec = &self.markets[usize::from(market)].spec;
                        let keep = remaining * per_lot(spec, side, price);
                        let asset = reserved_asset(spec, side);
                        self.release(account as u32, asset, t.reserved - t.spent - keep);
                    }
                }
                Event::Accepted { .. } | Event::Reduced { .. } => {}
            }
            self.name_accounts(event);
        }
    }

    /// Puts account ids in place of the book's account numbers.
    fn name_accounts(&self, event: &mut Event) {
        let id = |number: &mut AccountId| *number = self.account_ids[*number as usize];
        match event {
            Event::Trade {
                taker_account,
                maker_account,
                ..
            } => {
                id(taker_account);
                id(maker_account);
            }
            Event::Accepted { account, .. }
            | Event::Rested { account, .. }
            | Event::Done { account, .. } => id(account),
            Event::Reduced { .. } => {}
        }
    }

    /// The book's number for `account`, or one that owns nothing if it has none yet.
    fn book_account(&self, account: AccountId) -> AccountId {
        self.accounts
            .get(&account)
            .map_or(u64::MAX, |&index| u64::from(index))
    }

    fn release(&mut self, index: u32, asset: AssetId, amount: u64) {
        let at = self.at(index, asset);
        let balance = &mut self.balances[at];
        balance.reserved -= amount;
        balance.available += amount;
    }

    /// The account's slot, made on first use.
    fn account_index(&mut self, account: AccountId) -> u32 {
        let assets = self.assets.len();
        let next = self.account_ids.len() as u32;
        let index = *self.accounts.entry(account).or_insert(next);
        if index == next {
            self.account_ids.push(account);
            self.balances
                .extend(std::iter::repeat_n(Balance::default(), assets));
        }
        index
    }

    fn at(&self, index: u32, asset: AssetId) -> usize {
        index as usize * self.assets.len() + usize::from(asset)
    }

    /// A deposit or withdrawal names a known asset and a positive amount.
    fn check_transfer(&self, asset: AssetId, amount: u64) -> Result<(), ExchangeReject> {
        if usize::from(asset) >= self.assets.len() {
            return Err(ExchangeReject::UnknownAsset);
        }
        if amount == 0 {
            return Err(ExchangeReject::AmountZero);
        }
        Ok(())
    }

    fn market(&self, market: MarketId) -> Result<&Market, ExchangeReject> {
        self.markets
            .get(usize::from(market))
            .ok_or(ExchangeReject::UnknownMarket)
    }

    /// Sum of every account's balance (available + reserved) of `asset`.
    pub fn total(&self, asset: AssetId) -> u128 {
        self.balances
            .iter()
            .skip(usize::from(asset))
            .step_by(self.assets.len())
            .map(|b| u128::from(b.available) + u128::from(b.reserved))
            .sum()
    }

    /// Everything, in canonical order.
    pub fn state(&self) -> State {
        let assets = self.assets.len();
        let mut balances: Vec<(AccountId, Vec<Balance>)> = self
            .account_ids
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, self.balances[i * assets..(i + 1) * assets].to_vec()))
            .collect();
        balances.sort_unstable_by_key(|(a, _)| *a);
        State {
            assets: self.assets.clone(),
            markets: self
                .markets
                .iter()
                .enumerate()
                .map(|(i, m)| MarketState {
                    spec: m.spec.clone(),
                    resting: self.resting_orders(i as MarketId),
                    recent_trades: m.recent_trades.iter().copied().collect(),
                })
                .collect(),
            balances,
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
        for (account, balances) in &state.balances {
            let index = exchange.account_index(*account);
            for (asset, balance) in balances.iter().enumerate() {
                let at = exchange.at(index, asset as AssetId);
                exchange.balances[at] = *balance;
            }
        }
        for (market, saved) in exchange.markets.iter_mut().zip(&state.markets) {
            let numbered: Vec<RestingOrder> = saved
                .resting
                .iter()
                .map(|o| RestingOrder {
                    account: u64::from(exchange.accounts[&o.account]),
                    ..o.clone()
                })
                .collect();
            market.book = Book::restore(
                BookLimits {
                    min_size: saved.spec.min_size,
                },
                &numbered,
            );
            market.recent_trades = saved.recent_trades.iter().copied().collect();
        }
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

/// The arriving order's reservation while it matches.
#[derive(Clone, Copy)]
struct Taker {
    order_id: OrderId,
    reserved: u64,
    spent: u64,
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

fn per_lot(spec: &MarketSpec, side: Side, price: u64) -> u64 {
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
