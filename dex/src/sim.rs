//! A seeded workload for tests and benchmarks: many accounts trading one market around a
//! drifting mid price, with the mix the benchmark asks for (70 % limit orders, 20 %
//! cancels, 10 % market orders). It watches the events to cancel orders that really rest,
//! so the same seed always yields the same command stream.

use std::collections::HashMap;

use crate::book::{
    AccountId, Event, NewOrder, OrderId, OrderKind, SelfTradePrevention, Side, TimeInForce,
};
use crate::exchange::{AssetSpec, Command, Exchange, MarketId, MarketSpec};

/// SplitMix64: small, fast, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// LTC (base) and BTC (quote), 1e8 minor units each; one market, LTC/BTC, with a lot of
/// 0.01 LTC and a tick of 1 satoshi per lot.
pub fn ltc_btc() -> Exchange {
    Exchange::new(
        vec![
            AssetSpec {
                symbol: "LTC".into(),
                scale: 100_000_000,
            },
            AssetSpec {
                symbol: "BTC".into(),
                scale: 100_000_000,
            },
        ],
        vec![MarketSpec {
            symbol: "LTC-BTC".into(),
            base: 0,
            quote: 1,
            lot_size: 1_000_000,
            tick_size: 1,
            min_size: 1,
        }],
    )
}

pub struct Workload {
    rng: Rng,
    accounts: u64,
    market: MarketId,
    mid: u64,
    /// Orders known to rest, for cancels, with each one's place in `open`.
    open: Vec<(OrderId, AccountId)>,
    open_index: HashMap<OrderId, usize>,
    /// Resting orders' prices, for replaces at the same price.
    prices: HashMap<OrderId, u64>,
    funded: u64,
    /// Of the cancels, this percentage become cancel-replaces instead.
    replace_percent: u64,
}

/// What each account starts with, in minor units: enough that balances rarely bind.
pub const FUNDING_PER_ACCOUNT: u64 = 1_000_000 * 100_000_000;

impl Workload {
    pub fn new(seed: u64, accounts: u64) -> Self {
        Workload {
            rng: Rng::new(seed),
            accounts,
            market: 0,
            mid: 1_200,
            open: Vec::new(),
            open_index: HashMap::new(),
            prices: HashMap::new(),
            funded: 0,
            replace_percent: 0,
        }
    }

    /// Turns `percent` of the cancels into cancel-replaces (same price and fewer lots,
    /// or a new price).
    pub fn with_replaces(mut self, percent: u64) -> Self {
        self.replace_percent = percent;
        self
    }

    /// The next command. The first `2 × accounts` fund the accounts.
    pub fn next_command(&mut self) -> Command {
        if self.funded < self.accounts * 2 {
            let account = self.funded / 2 + 1;
            let asset = (self.funded % 2) as u16;
            self.funded += 1;
            return Command::Deposit {
                account,
                asset,
                amount: FUNDING_PER_ACCOUNT,
            };
        }
        let account = self.rng.below(self.accounts) + 1;
        let side = if self.rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        let roll = self.rng.below(100);
        if roll.is_multiple_of(16) {
            // The mid drifts, so levels come and go.
            self.mid = (self.mid + self.rng.below(3)).saturating_sub(1).max(100);
        }
        let stp = match self.rng.below(3) {
            0 => SelfTradePrevention::CancelNewest,
            1 => SelfTradePrevention::CancelOldest,
            _ => SelfTradePrevention::CancelBoth,
        };
        let quantity = 1 + self.rng.below(20);
        if roll < 20 && !self.open.is_empty() {
            let pick = self.rng.below(self.open.len() as u64) as usize;
            let (order_id, owner) = self.open[pick];
            if self.rng.below(100) < self.replace_percent {
                let price = match self.rng.below(2) {
                    0 => self.mid - 10 + self.rng.below(21),
                    _ => self.exchange_price_hint(order_id),
                };
                return Command::Replace {
                    market: self.market,
                    account: owner,
                    order_id,
                    price,
                    quantity: 1 + self.rng.below(3),
                };
            }
            return Command::Cancel {
                market: self.market,
                account: owner,
                order_id,
            };
        }
        if roll < 30 {
            return Command::Place {
                market: self.market,
                order: NewOrder {
                    account,
                    side,
                    kind: OrderKind::Market {
                        quote_max: quantity * (self.mid + 50),
                    },
                    quantity,
                    self_trade_prevention: stp,
                },
            };
        }
        // Limit orders: mostly resting a few ticks off the mid, some crossing it.
        let offset = self.rng.below(40);
        let price = match side {
            Side::Buy => self.mid + 5 - offset.min(self.mid - 1),
            Side::Sell => self.mid - 5 + offset,
        };
        let time_in_force = match self.rng.below(20) {
            0 => TimeInForce::Ioc,
            1 => TimeInForce::Fok,
            2 => TimeInForce::PostOnly,
            _ => TimeInForce::Gtc,
        };
        Command::Place {
            market: self.market,
            order: NewOrder {
                account,
                side,
                kind: OrderKind::Limit {
                    price,
                    time_in_force,
                },
                quantity,
                self_trade_prevention: stp,
            },
        }
    }

    fn exchange_price_hint(&self, order_id: OrderId) -> u64 {
        self.prices.get(&order_id).copied().unwrap_or(self.mid)
    }

    /// Learns which orders rest and which are gone.
    pub fn observe(&mut self, events: &[Event]) {
        for event in events {
            match *event {
                Event::Rested {
                    order_id,
                    account,
                    price,
                    ..
                } => {
                    self.open_index.insert(order_id, self.open.len());
                    self.open.push((order_id, account));
                    self.prices.insert(order_id, price);
                }
                Event::Done { order_id, .. } => {
                    self.prices.remove(&order_id);
                    if let Some(at) = self.open_index.remove(&order_id) {
                        self.open.swap_remove(at);
                        if let Some((moved, _)) = self.open.get(at) {
                            self.open_index.insert(*moved, at);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs `count` commands through `exchange`, feeding its events back, and returns
    /// them: a recorded stream that replays to the same state on a fresh exchange.
    pub fn record(&mut self, exchange: &mut Exchange, count: usize) -> Vec<Command> {
        let mut commands = Vec::with_capacity(count);
        let mut events = Vec::new();
        while commands.len() < count {
            let command = self.next_command();
            events.clear();
            if exchange.handle(&command, &mut events).is_ok() {
                self.observe(&events);
                commands.push(command);
            }
        }
        commands
    }
}
