//! One market's order book and matching: price-time priority over integer prices (ticks)
//! and quantities (lots). Sans-IO and deterministic: the same commands in the same order
//! give the same events and the same state, which the journal's replay depends on.
//!
//! Accounts here are small dense numbers, not the ids the rest of the pool uses: the
//! exchange numbers its accounts and maps them back in the events it returns, so the book
//! can count each account's orders in a plain array.
//!
//! Layout, for a hot path that allocates nothing once warm: orders live in a slab and are
//! linked into a FIFO per price level; levels live in a slab too and are found through a
//! `BTreeMap` per side; an order id finds its slot through a hash map with a cheap hasher
//! (ids are sequential, not attacker-chosen).
//!
//! One file, past the usual length: the slabs, links and index are one data structure whose
//! invariants every operation must keep together.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

pub type AccountId = u64;
pub type OrderId = u64;

/// Resting orders one account may hold in one market.
pub const ORDERS_PER_ACCOUNT_MAX: u32 = 1_000;
/// Distinct prices with resting orders, per side.
pub const PRICE_LEVELS_PER_SIDE_MAX: usize = 100_000;
/// Resting orders in one book.
pub const BOOK_ORDERS_MAX: usize = 4_000_000;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// How long a limit order lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeInForce {
    /// Good till canceled: the remainder rests.
    Gtc,
    /// Immediate or cancel: the remainder is canceled.
    Ioc,
    /// Fill or kill: all at once, or nothing.
    Fok,
    /// Rests only; if any of it would trade on arrival, it is refused whole.
    PostOnly,
}

/// What happens when an order would trade with another order of the same account. The
/// arriving (taker) order's choice applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfTradePrevention {
    /// Cancel the arriving order's remainder.
    #[default]
    CancelNewest,
    /// Cancel the resting order and keep matching.
    CancelOldest,
    /// Cancel both.
    CancelBoth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderKind {
    Limit {
        price: u64,
        time_in_force: TimeInForce,
    },
    /// Takes whatever the book has; the remainder is canceled. A market buy stops before
    /// its cost would pass `quote_max` (price × lots), which is what its reservation holds.
    Market { quote_max: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub account: AccountId,
    pub side: Side,
    pub kind: OrderKind,
    /// Lots.
    pub quantity: u64,
    pub self_trade_prevention: SelfTradePrevention,
}

/// Why an order left the book, or never rested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoneReason {
    Filled,
    Canceled,
    /// IOC or market remainder.
    Unfilled,
    /// FOK that could not fill whole; nothing traded.
    Killed,
    /// Post-only that would have traded; nothing traded.
    WouldTake,
    SelfTrade,
    /// Cancel-replace took it out to put a new order in.
    Replaced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The order entered matching with this id.
    Accepted {
        order_id: OrderId,
        account: AccountId,
        side: Side,
        quantity: u64,
    },
    Trade {
        taker_order: OrderId,
        taker_account: AccountId,
        maker_order: OrderId,
        maker_account: AccountId,
        taker_side: Side,
        /// The maker's price, in ticks.
        price: u64,
        quantity: u64,
    },
    /// The rest of the order rests on the book at its price.
    Rested {
        order_id: OrderId,
        account: AccountId,
        side: Side,
        price: u64,
        remaining: u64,
    },
    /// The order is finished; `remaining` lots never traded. `price` is its limit (0 for a
    /// market order): with `side` and `remaining`, what its reservation still holds.
    Done {
        order_id: OrderId,
        account: AccountId,
        side: Side,
        price: u64,
        remaining: u64,
        reason: DoneReason,
    },
    /// A resting order's quantity went down in place, keeping its time priority.
    Reduced { order_id: OrderId, remaining: u64 },
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    #[error("quantity must be at least the market's minimum size")]
    BelowMinimumSize,
    #[error("price must be positive")]
    PriceZero,
    #[error("too many open orders for this account (ORDERS_PER_ACCOUNT_MAX)")]
    TooManyOrders,
    #[error("too many price levels on this side (PRICE_LEVELS_PER_SIDE_MAX)")]
    TooManyPriceLevels,
    #[error("the book is full (BOOK_ORDERS_MAX)")]
    BookFull,
    #[error("no such open order")]
    UnknownOrder,
    #[error("the order belongs to another account")]
    NotYourOrder,
}

/// A market's sizes: `min_size` in lots. Prices in the book are ticks; what a tick and a
/// lot are worth is the exchange's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookLimits {
    pub min_size: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Order {
    id: OrderId,
    account: AccountId,
    side: Side,
    price: u64,
    remaining: u64,
    stp: SelfTradePrevention,
    level: u32,
    prev: u32,
    next: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Level {
    price: u64,
    head: u32,
    tail: u32,
    total: u64,
}

/// Sequential ids hash to themselves, mixed once so the table's buckets spread.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

pub struct Book {
    limits: BookLimits,
    orders: Vec<Order>,
    free_orders: Vec<u32>,
    levels: Vec<Level>,
    free_levels: Vec<u32>,
    bids: BTreeMap<u64, u32>,
    asks: BTreeMap<u64, u32>,
    by_id: IdMap<u32>,
    /// Resting orders per account; accounts are small dense numbers (the exchange's).
    open_per_account: Vec<u32>,
}

/// The order book's content, for views and snapshots: levels best first, orders in time
/// priority within each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingOrder {
    pub id: OrderId,
    pub account: AccountId,
    pub side: Side,
    pub price: u64,
    pub remaining: u64,
    pub self_trade_prevention: SelfTradePrevention,
}

impl Book {
    pub fn new(limits: BookLimits) -> Self {
        Book {
            limits,
            orders: Vec::new(),
            free_orders: Vec::new(),
            levels: Vec::new(),
            free_levels: Vec::new(),
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            by_id: IdMap::default(),
            open_per_account: Vec::new(),
        }
    }

    /// Checks a new order without changing anything: what `place` would refuse.
    pub fn check_place(&self, order: &NewOrder) -> Result<(), Reject> {
        self.check_room(order, 0)
    }

    /// Checks the order a cancel-replace would put in place of `old` (which leaves first,
    /// so its slot on the book counts as free).
    pub fn check_replace(&self, old: OrderId, order: &NewOrder) -> Result<(), Reject> {
        let slot = self.owned_slot(order.account, old)?;
        let old = &self.orders[slot as usize];
        // The old order's level goes away with it if it was the level's only order.
        let level = &self.levels[old.level as usize];
        let level_freed = usize::from(level.head == level.tail && old.side == order.side);
        self.check_room(order, 1).or_else(|reject| match reject {
            Reject::TooManyPriceLevels if level_freed == 1 => Ok(()),
            other => Err(other),
        })
    }

    fn check_room(&self, order: &NewOrder, freed: u32) -> Result<(), Reject> {
        if order.quantity < self.limits.min_size.max(1) {
            return Err(Reject::BelowMinimumSize);
        }
        if let OrderKind::Limit {
            price,
            time_in_force,
        } = order.kind
        {
            if price == 0 {
                return Err(Reject::PriceZero);
            }
            // Only orders that may rest need room on the book.
            if matches!(time_in_force, TimeInForce::Gtc | TimeInForce::PostOnly) {
                if self.open_orders(order.account) - freed >= ORDERS_PER_ACCOUNT_MAX {
                    return Err(Reject::TooManyOrders);
                }
                if self.by_id.len() - freed as usize >= BOOK_ORDERS_MAX {
                    return Err(Reject::BookFull);
                }
                let side = self.side(order.side);
                // The level lookup only matters at the limit, so it comes second.
                if side.len() >= PRICE_LEVELS_PER_SIDE_MAX && !side.contains_key(&price) {
                    return Err(Reject::TooManyPriceLevels);
                }
            }
        }
        Ok(())
    }

    /// Matches `order` (which `check_place` accepted) under `order_id`, then rests what is
    /// left if its kind allows.
    pub fn place(&mut self, order_id: OrderId, order: &NewOrder, events: &mut Vec<Event>) {
        debug_assert_eq!(self.check_place(order), Ok(()));
        events.push(Event::Accepted {
            order_id,
            account: order.account,
            side: order.side,
            quantity: order.quantity,
        });
        let taker_price = match order.kind {
            OrderKind::Limit { price, .. } => price,
            OrderKind::Market { .. } => 0,
        };
        let taker_done = |events: &mut Vec<Event>, remaining, reason| {
            events.push(Event::Done {
                order_id,
                account: order.account,
                side: order.side,
                price: taker_price,
                remaining,
                reason,
            })
        };
        let (limit, quote_max) = match order.kind {
            OrderKind::Limit {
                price,
                time_in_force,
            } => {
                match time_in_force {
                    TimeInForce::PostOnly if self.crosses(order.side, price) => {
                        return taker_done(events, order.quantity, DoneReason::WouldTake);
                    }
                    TimeInForce::Fok if self.fillable(order, price) < order.quantity => {
                        return taker_done(events, order.quantity, DoneReason::Killed);
                    }
                    _ => {}
                }
                (Some(price), u64::MAX)
            }
            OrderKind::Market { quote_max } => (None, quote_max),
        };
        let (remaining, stopped) = self.match_against(order_id, order, limit, quote_max, events);
        if remaining == 0 {
            return taker_done(events, 0, DoneReason::Filled);
        }
        if let Some(reason) = stopped {
            return taker_done(events, remaining, reason);
        }
        match order.kind {
            OrderKind::Limit {
                price,
                time_in_force: TimeInForce::Gtc | TimeInForce::PostOnly,
            } => {
                self.rest(order_id, order, price, remaining);
                events.push(Event::Rested {
                    order_id,
                    account: order.account,
                    side: order.side,
                    price,
                    remaining,
                });
            }
            _ => taker_done(events, remaining, DoneReason::Unfilled),
        }
    }

    /// Cancels a resting order of `account`.
    pub fn cancel(
        &mut self,
        account: AccountId,
        order_id: OrderId,
        events: &mut Vec<Event>,
    ) -> Result<(), Reject> {
        let slot = self.owned_slot(account, order_id)?;
        self.remove(slot, DoneReason::Canceled, events);
        Ok(())
    }

    /// Where a resting order of `account` is, with its price and remaining lots.
    pub fn resting(&self, account: AccountId, order_id: OrderId) -> Result<RestingOrder, Reject> {
        let slot = self.owned_slot(account, order_id)?;
        Ok(self.resting_at(slot))
    }

    /// Lowers a resting order's quantity in place; it keeps its time priority.
    pub fn reduce(&mut self, order_id: OrderId, remaining: u64, events: &mut Vec<Event>) {
        let slot = self.by_id[&order_id];
        let order = &mut self.orders[slot as usize];
        assert!(
            remaining > 0 && remaining < order.remaining,
            "reduce must lower"
        );
        let cut = order.remaining - remaining;
        order.remaining = remaining;
        self.levels[order.level as usize].total -= cut;
        events.push(Event::Reduced {
            order_id,
            remaining,
        });
    }

    /// Takes a resting order out for cancel-replace.
    pub fn take_out_for_replace(&mut self, order_id: OrderId, events: &mut Vec<Event>) {
        let slot = self.by_id[&order_id];
        self.remove(slot, DoneReason::Replaced, events);
    }

    pub fn best_bid(&self) -> Option<u64> {
        self.bids.last_key_value().map(|(p, _)| *p)
    }

    pub fn best_ask(&self) -> Option<u64> {
        self.asks.first_key_value().map(|(p, _)| *p)
    }

    pub fn open_orders(&self, account: AccountId) -> u32 {
        self.open_per_account
            .get(account as usize)
            .copied()
            .unwrap_or(0)
    }

    pub fn order_count(&self) -> usize {
        self.by_id.len()
    }

    /// Aggregated depth: `(price, total lots)` per level, best first, at most `levels_max`.
    pub fn depth(&self, side: Side, levels_max: usize) -> Vec<(u64, u64)> {
        let level = |slot: &u32| {
            let level = &self.levels[*slot as usize];
            (level.price, level.total)
        };
        match side {
            Side::Buy => self
                .bids
                .values()
                .rev()
                .take(levels_max)
                .map(level)
                .collect(),
            Side::Sell => self.asks.values().take(levels_max).map(level).collect(),
        }
    }

    /// Every resting order: bids best first, then asks best first, each level in time
    /// priority. This is the book's whole state, for snapshots and the state hash.
    pub fn resting_orders(&self) -> Vec<RestingOrder> {
        let mut out = Vec::with_capacity(self.by_id.len());
        for slot in self.bids.values().rev().chain(self.asks.values()) {
            let mut at = self.levels[*slot as usize].head;
            while at != NIL {
                out.push(self.resting_at(at));
                at = self.orders[at as usize].next;
            }
        }
        out
    }

    /// Rebuilds a book from `resting_orders` output.
    pub fn restore(limits: BookLimits, resting: &[RestingOrder]) -> Self {
        let mut book = Book::new(limits);
        for order in resting {
            let new = NewOrder {
                account: order.account,
                side: order.side,
                kind: OrderKind::Limit {
                    price: order.price,
                    time_in_force: TimeInForce::Gtc,
                },
                quantity: order.remaining,
                self_trade_prevention: order.self_trade_prevention,
            };
            book.rest(order.id, &new, order.price, order.remaining);
        }
        book
    }

    fn resting_at(&self, slot: u32) -> RestingOrder {
        let order = &self.orders[slot as usize];
        RestingOrder {
            id: order.id,
            account: order.account,
            side: order.side,
            price: order.price,
            remaining: order.remaining,
            self_trade_prevention: order.stp,
        }
    }

    fn owned_slot(&self, account: AccountId, order_id: OrderId) -> Result<u32, Reject> {
        let slot = *self.by_id.get(&order_id).ok_or(Reject::UnknownOrder)?;
        if self.orders[slot as usize].account != account {
            return Err(Reject::NotYourOrder);
        }
        Ok(slot)
    }

    fn side(&self, side: Side) -> &BTreeMap<u64, u32> {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    /// The best opposite level an order of `side` at `limit` (None: any price) may take.
    fn best_opposite(&self, side: Side, limit: Option<u64>) -> Option<u32> {
        let (price, slot) = match side {
            Side::Buy => self.asks.first_key_value()?,
            Side::Sell => self.bids.last_key_value()?,
        };
        let within = match (side, limit) {
            (_, None) => true,
            (Side::Buy, Some(limit)) => *price <= limit,
            (Side::Sell, Some(limit)) => *price >= limit,
        };
        within.then_some(*slot)
    }

    fn crosses(&self, side: Side, price: u64) -> bool {
        self.best_opposite(side, Some(price)).is_some()
    }

    /// Lots a FOK order would get, counting self-trade prevention as matching would.
    fn fillable(&self, order: &NewOrder, limit: u64) -> u64 {
        let levels: Box<dyn Iterator<Item = (&u64, &u32)>> = match order.side {
            Side::Buy => Box::new(self.asks.range(..=limit)),
            Side::Sell => Box::new(self.bids.range(limit..).rev()),
        };
        let mut fillable = 0u64;
        for (_, slot) in levels {
            let mut at = self.levels[*slot as usize].head;
            while at != NIL {
                let maker = &self.orders[at as usize];
                if maker.account == order.account {
                    if order.self_trade_prevention != SelfTradePrevention::CancelOldest {
                        return fillable;
                    }
                } else {
                    fillable = fillable.saturating_add(maker.remaining);
                    if fillable >= order.quantity {
                        return fillable;
                    }
                }
                at = maker.next;
            }
        }
        fillable
    }

    /// Trades `order` against the opposite side. Returns the lots left and, if matching
    /// had to stop for a reason other than running out of book, that reason.
    fn match_against(
        &mut self,
        order_id: OrderId,
        order: &NewOrder,
        limit: Option<u64>,
        mut quote_left: u64,
        events: &mut Vec<Event>,
    ) -> (u64, Option<DoneReason>) {
        let mut remaining = order.quantity;
        while remaining > 0 {
            let Some(level_slot) = self.best_opposite(order.side, limit) else {
                break;
            };
            let level = self.levels[level_slot as usize];
            // A market buy takes only what its reservation can pay for.
            let mut take_max = remaining;
            if order.side == Side::Buy && quote_left != u64::MAX {
                take_max = take_max.min(quote_left / level.price);
                if take_max == 0 {
                    return (remaining, Some(DoneReason::Unfilled));
                }
            }
            let maker_slot = level.head;
            let maker = self.orders[maker_slot as usize];
            if maker.account == order.account {
                match order.self_trade_prevention {
                    SelfTradePrevention::CancelNewest => {
                        return (remaining, Some(DoneReason::SelfTrade));
                    }
                    SelfTradePrevention::CancelOldest | SelfTradePrevention::CancelBoth => {
                        self.remove(maker_slot, DoneReason::SelfTrade, events);
                        if order.self_trade_prevention == SelfTradePrevention::CancelBoth {
                            return (remaining, Some(DoneReason::SelfTrade));
                        }
                        continue;
                    }
                }
            }
            let quantity = take_max.min(maker.remaining);
            remaining -= quantity;
            if quote_left != u64::MAX {
                quote_left -= quantity * level.price;
            }
            events.push(Event::Trade {
                taker_order: order_id,
                taker_account: order.account,
                maker_order: maker.id,
                maker_account: maker.account,
                taker_side: order.side,
                price: level.price,
                quantity,
            });
            if quantity == maker.remaining {
                self.remove_filled(maker_slot, quantity, events);
            } else {
                self.orders[maker_slot as usize].remaining -= quantity;
                self.levels[level_slot as usize].total -= quantity;
            }
        }
        (remaining, None)
    }

    /// Takes a resting order off the book and reports it done with what it had left.
    fn remove(&mut self, slot: u32, reason: DoneReason, events: &mut Vec<Event>) {
        let order = self.orders[slot as usize];
        self.unlink(slot);
        events.push(Event::Done {
            order_id: order.id,
            account: order.account,
            side: order.side,
            price: order.price,
            remaining: order.remaining,
            reason,
        });
    }

    /// A maker whose last `quantity` lots just traded.
    fn remove_filled(&mut self, slot: u32, quantity: u64, events: &mut Vec<Event>) {
        let order = self.orders[slot as usize];
        debug_assert_eq!(order.remaining, quantity);
        self.unlink(slot);
        events.push(Event::Done {
            order_id: order.id,
            account: order.account,
            side: order.side,
            price: order.price,
            remaining: 0,
            reason: DoneReason::Filled,
        });
    }

    /// Puts an order at the back of its price level, making the level if it is new.
    fn rest(&mut self, order_id: OrderId, order: &NewOrder, price: u64, remaining: u64) {
        let side = match order.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let level_slot = *side.entry(price).or_insert_with(|| {
            let level = Level {
                price,
                head: NIL,
                tail: NIL,
                total: 0,
            };
            match self.free_levels.pop() {
                Some(slot) => {
                    self.levels[slot as usize] = level;
                    slot
                }
                None => {
                    self.levels.push(level);
                    (self.levels.len() - 1) as u32
                }
            }
        });
        let level = &mut self.levels[level_slot as usize];
        let node = Order {
            id: order_id,
            account: order.account,
            side: order.side,
            price,
            remaining,
            stp: order.self_trade_prevention,
            level: level_slot,
            prev: level.tail,
            next: NIL,
        };
        let slot = match self.free_orders.pop() {
            Some(slot) => {
                self.orders[slot as usize] = node;
                slot
            }
            None => {
                self.orders.push(node);
                (self.orders.len() - 1) as u32
            }
        };
        if level.tail == NIL {
            level.head = slot;
        } else {
            self.orders[level.tail as usize].next = slot;
        }
        level.tail = slot;
        level.total += remaining;
        self.by_id.insert(order_id, slot);
        let account = order.account as usize;
        if self.open_per_account.len() <= account {
            self.open_per_account.resize(account + 1, 0);
        }
        self.open_per_account[account] += 1;
    }

    /// Takes an order off the book, dropping its level if it was the last.
    fn unlink(&mut self, slot: u32) {
        let Order {
            id,
            account,
            side,
            price,
            remaining,
            level: level_slot,
            prev,
            next,
            ..
        } = self.orders[slot as usize];
        if prev == NIL {
            self.levels[level_slot as usize].head = next;
        } else {
            self.orders[prev as usize].next = next;
        }
        if next == NIL {
            self.levels[level_slot as usize].tail = prev;
        } else {
            self.orders[next as usize].prev = prev;
        }
        let level = &mut self.levels[level_slot as usize];
        level.total -= remaining;
        if level.head == NIL {
            match side {
                Side::Buy => self.bids.remove(&price),
                Side::Sell => self.asks.remove(&price),
            };
            self.free_levels.push(level_slot);
        }
        self.by_id.remove(&id);
        self.free_orders.push(slot);
        self.open_per_account[account as usize] -= 1;
    }
}
