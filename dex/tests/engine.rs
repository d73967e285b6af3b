//! Each order type and each self-trade prevention mode, crossing and not, with balances.

use otedama_dex::book::{
    DoneReason, Event, Reject, BOOK_ORDERS_MAX, ORDERS_PER_ACCOUNT_MAX, PRICE_LEVELS_PER_SIDE_MAX,
};
use otedama_dex::exchange::{Balance, Command, Exchange, ExchangeReject};
use otedama_dex::sim::ltc_btc;
use otedama_dex::{NewOrder, OrderKind, SelfTradePrevention as Stp, Side, TimeInForce as Tif};

const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;
const LTC: u16 = 0;
const BTC: u16 = 1;
/// Minor units per lot (0.01 LTC).
const LOT: u64 = 1_000_000;

struct Harness {
    exchange: Exchange,
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        let mut h = Harness {
            exchange: ltc_btc(),
            events: Vec::new(),
        };
        h.deposit_both(1_000 * LOT);
        h
    }

    /// Deposits `amount` of each asset to ALICE and BOB.
    fn deposit_both(&mut self, amount: u64) {
        for account in [ALICE, BOB] {
            for asset in [LTC, BTC] {
                self.run(Command::Deposit {
                    account,
                    asset,
                    amount,
                })
                .unwrap();
            }
        }
    }

    fn run(&mut self, command: Command) -> Result<Vec<Event>, ExchangeReject> {
        self.events.clear();
        self.exchange.handle(&command, &mut self.events)?;
        Ok(self.events.clone())
    }

    fn order(
        &mut self,
        account: u64,
        side: Side,
        kind: OrderKind,
        quantity: u64,
        stp: Stp,
    ) -> Result<Vec<Event>, ExchangeReject> {
        self.run(Command::Place {
            market: 0,
            order: NewOrder {
                account,
                side,
                kind,
                quantity,
                self_trade_prevention: stp,
            },
        })
    }

    fn limit(
        &mut self,
        account: u64,
        side: Side,
        price: u64,
        quantity: u64,
        tif: Tif,
    ) -> Vec<Event> {
        self.order(
            account,
            side,
            OrderKind::Limit {
                price,
                time_in_force: tif,
            },
            quantity,
            Stp::CancelNewest,
        )
        .unwrap()
    }

    fn balance(&self, account: u64, asset: u16) -> Balance {
        self.exchange.balance(account, asset)
    }

    fn depth(&self, side: Side) -> Vec<(u64, u64)> {
        self.exchange.depth(0, side, 10)
    }
}

fn trades(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Trade {
                price, quantity, ..
            } => Some((*price, *quantity)),
            _ => None,
        })
        .collect()
}

fn done(events: &[Event]) -> Vec<(u64, u64, DoneReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Done {
                order_id,
                remaining,
                reason,
                ..
            } => Some((*order_id, *remaining, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn gtc_rests_when_it_does_not_cross_and_trades_at_the_makers_price_when_it_does() {
    let mut h = Harness::new();
    let rest = h.limit(ALICE, Side::Sell, 1_200, 5, Tif::Gtc);
    assert!(trades(&rest).is_empty());
    assert_eq!(h.depth(Side::Sell), [(1_200, 5)]);
    // Alice's 5 lots of LTC are reserved.
    assert_eq!(h.balance(ALICE, LTC).reserved, 5 * LOT);
    let below = h.limit(BOB, Side::Buy, 1_199, 2, Tif::Gtc);
    assert!(trades(&below).is_empty(), "1199 does not reach 1200");
    // Bob bids 1210 for 3: trades 3 at the maker's 1200, pays 3 × 1200 sats.
    let cross = h.limit(BOB, Side::Buy, 1_210, 3, Tif::Gtc);
    assert_eq!(trades(&cross), [(1_200, 3)]);
    assert_eq!(done(&cross), [(3, 0, DoneReason::Filled)]);
    assert_eq!(h.depth(Side::Sell), [(1_200, 2)]);
    assert_eq!(h.balance(BOB, LTC).available, 1_000 * LOT + 3 * LOT);
    // Bob's 1199 bid (2 lots) stays reserved; the price improvement came back.
    assert_eq!(h.balance(BOB, BTC).reserved, 2 * 1_199);
    assert_eq!(
        h.balance(BOB, BTC).available,
        1_000 * LOT - 2 * 1_199 - 3 * 1_200
    );
    assert_eq!(h.balance(ALICE, BTC).available, 1_000 * LOT + 3 * 1_200);
}

#[test]
fn price_time_priority() {
    let mut h = Harness::new();
    h.limit(ALICE, Side::Sell, 1_201, 1, Tif::Gtc); // order 1
    h.limit(ALICE, Side::Sell, 1_200, 1, Tif::Gtc); // order 2: better price
    h.limit(ALICE, Side::Sell, 1_200, 1, Tif::Gtc); // order 3: same price, later
    let events = h.limit(BOB, Side::Buy, 1_201, 3, Tif::Gtc);
    let makers: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Trade { maker_order, .. } => Some(*maker_order),
            _ => None,
        })
        .collect();
    assert_eq!(makers, [2, 3, 1]);
}

#[test]
fn ioc_takes_what_it_can_and_cancels_the_rest() {
    let mut h = Harness::new();
    h.limit(ALICE, Side::Sell, 1_200, 2, Tif::Gtc);
    let events = h.limit(BOB, Side::Buy, 1_200, 5, Tif::Ioc);
    assert_eq!(trades(&events), [(1_200, 2)]);
    assert_eq!(done(&events).last(), Some(&(2, 3, DoneReason::Unfilled)));
    assert!(h.depth(Side::Buy).is_empty(), "an IOC never rests");
    let none = h.limit(BOB, Side::Buy, 1_300, 1, Tif::Ioc);
    assert_eq!(done(&none), [(3, 1, DoneReason::Unfilled)]);
    assert_eq!(h.balance(BOB, BTC).reserved, 0);
}

#[test]
fn fok_fills_whole_or_not_at_all() {
    let mut h = Harness::new();
    h.limit(ALICE, Side::Sell, 1_200, 2, Tif::Gtc);
    h.limit(ALICE, Side::Sell, 1_205, 2, Tif::Gtc);
    let killed = h.limit(BOB, Side::Buy, 1_205, 5, Tif::Fok);
    assert!(trades(&killed).is_empty());
    assert_eq!(done(&killed), [(3, 5, DoneReason::Killed)]);
    assert_eq!(h.depth(Side::Sell), [(1_200, 2), (1_205, 2)]);
    // Within the limit there are only 2 lots at 1200: 3 at 1200 is killed too.
    let killed = h.limit(BOB, Side::Buy, 1_200, 3, Tif::Fok);
    assert!(trades(&killed).is_empty());
    let filled = h.limit(BOB, Side::Buy, 1_205, 4, Tif::Fok);
    assert_eq!(trades(&filled), [(1_200, 2), (1_205, 2)]);
    assert_eq!(h.balance(BOB, BTC).reserved, 0);
}

#[test]
fn post_only_rests_or_is_refused_whole() {
    let mut h = Harness::new();
    h.limit(ALICE, Side::Sell, 1_200, 2, Tif::Gtc);
    let refused = h.limit(BOB, Side::Buy, 1_200, 1, Tif::PostOnly);
    assert!(trades(&refused).is_empty());
    assert_eq!(done(&refused), [(2, 1, DoneReason::WouldTake)]);
    let rests = h.limit(BOB, Side::Buy, 1_199, 1, Tif::PostOnly);
    assert!(rests.iter().any(|e| matches!(e, Event::Rested { .. })));
    assert_eq!(h.depth(Side::Buy), [(1_199, 1)]);
}

#[test]
fn market_orders_sweep_and_a_market_buy_stops_at_its_budget() {
    let mut h = Harness::new();
    h.limit(ALICE, Side::Sell, 1_200, 2, Tif::Gtc);
    h.limit(ALICE, Side::Sell, 1_300, 2, Tif::Gtc);
    // 5 lots wanted, but 2 × 1200 + 1 × 1300 = 3700 is all the budget pays for.
    let events = h
        .order(
            BOB,
            Side::Buy,
            OrderKind::Market { quote_max: 3_999 },
            5,
            Stp::CancelNewest,
        )
        .unwrap();
    assert_eq!(trades(&events), [(1_200, 2), (1_300, 1)]);
    assert_eq!(done(&events).last(), Some(&(3, 2, DoneReason::Unfilled)));
    assert_eq!(h.balance(BOB, BTC).available, 1_000 * LOT - 3_700);
    assert_eq!(h.balance(BOB, BTC).reserved, 0);
    // A market sell against an empty bid side: nothing, and nothing rests.
    let events = h
        .order(
            ALICE,
            Side::Sell,
            OrderKind::Market { quote_max: 0 },
            1,
            Stp::CancelNewest,
        )
        .unwrap();
    assert!(trades(&events).is_empty());
    assert_eq!(
        h.balance(ALICE, LTC).reserved,
        LOT,
        "only the 1300 ask's last lot"
    );
}

#[test]
fn self_trade_prevention_modes() {
    for (stp, expected_trades, alice_orders_left, taker_reason) in [
        (Stp::CancelNewest, vec![], 2, DoneReason::SelfTrade),
        (Stp::CancelOldest, vec![(1_201, 1)], 1, DoneReason::Filled),
        (Stp::CancelBoth, vec![], 1, DoneReason::SelfTrade),
    ] {
        let mut h = Harness::new();
        h.limit(ALICE, Side::Sell, 1_200, 1, Tif::Gtc); // 1: Alice's own, best
        h.limit(BOB, Side::Sell, 1_201, 1, Tif::Gtc); // 2: Bob's
        h.limit(ALICE, Side::Sell, 1_202, 1, Tif::Gtc); // 3: Alice's own, worse
        let events = h
            .order(
                ALICE,
                Side::Buy,
                OrderKind::Limit {
                    price: 1_201,
                    time_in_force: Tif::Gtc,
                },
                1,
                stp,
            )
            .unwrap();
        assert_eq!(trades(&events), expected_trades, "{stp:?}");
        assert_eq!(
            h.exchange.open_orders(0, ALICE),
            alice_orders_left,
            "{stp:?}"
        );
        assert_eq!(done(&events).last().unwrap().2, taker_reason, "{stp:?}");
        // No self-trade ever happened, and reservations add up.
        assert!(events.iter().all(|e| !matches!(
            e,
            Event::Trade { maker_account, taker_account, .. } if maker_account == taker_account
        )));
    }
    // Not crossing: STP does nothing, both rest.
    let mut h = Harness::new();
    h.limit(ALICE, Side::Sell, 1_200, 1, Tif::Gtc);
    let events = h
        .order(
            ALICE,
            Side::Buy,
            OrderKind::Limit {
                price: 1_199,
                time_in_force: Tif::Gtc,
            },
            1,
            Stp::CancelBoth,
        )
        .unwrap();
    assert!(done(&events).is_empty());
    assert_eq!(h.exchange.open_orders(0, ALICE), 2);
}

#[test]
fn cancel_and_cancel_replace() {
    let mut h = Harness::new();
    h.limit(ALICE, Side::Buy, 1_100, 5, Tif::Gtc); // 1
    h.limit(BOB, Side::Buy, 1_100, 5, Tif::Gtc); // 2
                                                 // Another account's order, or an unknown one: refused, nothing changes.
    assert_eq!(
        h.run(Command::Cancel {
            market: 0,
            account: BOB,
            order_id: 1
        }),
        Err(ExchangeReject::Book(Reject::NotYourOrder))
    );
    assert_eq!(
        h.run(Command::Cancel {
            market: 0,
            account: BOB,
            order_id: 99
        }),
        Err(ExchangeReject::Book(Reject::UnknownOrder))
    );
    // Fewer lots at the same price: reduced in place, still first in line.
    let reduced = h
        .run(Command::Replace {
            market: 0,
            account: ALICE,
            order_id: 1,
            price: 1_100,
            quantity: 2,
        })
        .unwrap();
    assert_eq!(
        reduced,
        [Event::Reduced {
            order_id: 1,
            remaining: 2
        }]
    );
    assert_eq!(h.balance(ALICE, BTC).reserved, 2 * 1_100);
    // Alice is still first in line: a seller takes her lot before Bob's.
    h.run(Command::Deposit {
        account: CAROL,
        asset: LTC,
        amount: LOT,
    })
    .unwrap();
    let sweep = h.limit(CAROL, Side::Sell, 1_100, 1, Tif::Ioc);
    assert!(
        sweep
            .iter()
            .any(|e| matches!(e, Event::Trade { maker_order: 1, .. })),
        "{sweep:?}"
    );
    assert_eq!(h.balance(ALICE, BTC).reserved, 1_100);
    // A new price: a new order id, at the back of its level.
    let moved = h
        .run(Command::Replace {
            market: 0,
            account: ALICE,
            order_id: 1,
            price: 1_101,
            quantity: 2,
        })
        .unwrap();
    assert_eq!(done(&moved)[0], (1, 1, DoneReason::Replaced));
    assert!(moved
        .iter()
        .any(|e| matches!(e, Event::Rested { price: 1_101, .. })));
    assert_eq!(h.balance(ALICE, BTC).reserved, 2 * 1_101);
    let canceled = h
        .run(Command::Cancel {
            market: 0,
            account: BOB,
            order_id: 2,
        })
        .unwrap();
    assert_eq!(done(&canceled), [(2, 5, DoneReason::Canceled)]);
    assert_eq!(
        h.balance(BOB, BTC),
        Balance {
            available: 1_000 * LOT,
            reserved: 0
        }
    );
}

#[test]
fn limits_and_bad_input_are_refused_without_change() {
    let mut h = Harness::new();
    let before = h.exchange.state_hash();
    let refuse = |h: &mut Harness, kind, quantity, account| {
        h.order(account, Side::Buy, kind, quantity, Stp::CancelNewest)
            .unwrap_err()
    };
    let gtc = |price| OrderKind::Limit {
        price,
        time_in_force: Tif::Gtc,
    };
    assert_eq!(
        refuse(&mut h, gtc(1_000), 0, ALICE),
        Reject::BelowMinimumSize.into()
    );
    assert_eq!(refuse(&mut h, gtc(0), 1, ALICE), Reject::PriceZero.into());
    assert_eq!(
        refuse(&mut h, gtc(1_000), 1_000 * LOT, ALICE),
        ExchangeReject::InsufficientBalance
    );
    assert_eq!(
        refuse(&mut h, gtc(u64::MAX), 2, ALICE),
        ExchangeReject::Overflow
    );
    assert_eq!(
        h.run(Command::Place {
            market: 7,
            order: NewOrder {
                account: ALICE,
                side: Side::Buy,
                kind: gtc(1),
                quantity: 1,
                self_trade_prevention: Stp::CancelNewest
            }
        }),
        Err(ExchangeReject::UnknownMarket)
    );
    assert_eq!(
        h.run(Command::Withdraw {
            account: BOB,
            asset: LTC,
            amount: 1_000 * LOT + 1
        }),
        Err(ExchangeReject::InsufficientBalance)
    );
    assert_eq!(h.exchange.state_hash(), before);

    // ORDERS_PER_ACCOUNT_MAX resting orders fit; one more is refused; an IOC still works.
    for i in 0..u64::from(ORDERS_PER_ACCOUNT_MAX) {
        h.limit(ALICE, Side::Buy, 1 + i % 500, 1, Tif::Gtc);
    }
    assert_eq!(
        refuse(&mut h, gtc(1), 1, ALICE),
        Reject::TooManyOrders.into()
    );
    h.order(
        ALICE,
        Side::Buy,
        OrderKind::Limit {
            price: 1,
            time_in_force: Tif::Ioc,
        },
        1,
        Stp::CancelNewest,
    )
    .unwrap();
}

/// Funds `accounts` accounts from 100 on with plenty of BTC, to rest many buy orders.
fn fund_buyers(h: &mut Harness, accounts: u64) {
    for account in 100..100 + accounts {
        h.run(Command::Deposit {
            account,
            asset: BTC,
            amount: 1 << 50,
        })
        .unwrap();
    }
}

#[test]
fn the_price_level_limit_holds_at_its_edge() {
    let mut h = Harness::new();
    let per_account = u64::from(ORDERS_PER_ACCOUNT_MAX);
    let levels = PRICE_LEVELS_PER_SIDE_MAX as u64;
    fund_buyers(&mut h, levels.div_ceil(per_account));
    for price in 1..=levels {
        h.limit(
            100 + (price - 1) / per_account,
            Side::Buy,
            price,
            1,
            Tif::Gtc,
        );
    }
    let new_level = OrderKind::Limit {
        price: levels + 1,
        time_in_force: Tif::Gtc,
    };
    assert_eq!(
        h.order(ALICE, Side::Buy, new_level, 1, Stp::CancelNewest),
        Err(Reject::TooManyPriceLevels.into())
    );
    // An existing level still takes orders; the other side has its own limit.
    h.limit(ALICE, Side::Buy, levels, 1, Tif::Gtc);
    h.limit(ALICE, Side::Sell, levels + 10, 1, Tif::Gtc);
}

#[test]
fn the_book_order_limit_holds_at_its_edge() {
    let mut h = Harness::new();
    let per_account = u64::from(ORDERS_PER_ACCOUNT_MAX);
    let orders = BOOK_ORDERS_MAX as u64;
    fund_buyers(&mut h, orders.div_ceil(per_account) + 1);
    for n in 0..orders {
        h.limit(100 + n / per_account, Side::Buy, 1 + n % 1_000, 1, Tif::Gtc);
    }
    assert_eq!(h.exchange.order_count(0), BOOK_ORDERS_MAX);
    let fresh_account = 100 + orders.div_ceil(per_account);
    let gtc = OrderKind::Limit {
        price: 1,
        time_in_force: Tif::Gtc,
    };
    assert_eq!(
        h.order(fresh_account, Side::Buy, gtc, 1, Stp::CancelNewest),
        Err(Reject::BookFull.into())
    );
}

/// The market keeps its newest `RECENT_TRADES_MAX` trades: full, one more trade drops
/// exactly the oldest.
#[test]
fn recent_trades_are_kept_to_their_limit() {
    use otedama_dex::exchange::RECENT_TRADES_MAX;
    let mut h = Harness::new();
    let trades_made = RECENT_TRADES_MAX as u64 + 1;
    h.deposit_both(10_000 * LOT);
    let sequences = |h: &Harness| -> Vec<u64> {
        h.exchange
            .recent_trades(0)
            .map(|trade| trade.sequence)
            .collect()
    };
    for made in 1..=trades_made {
        h.limit(ALICE, Side::Sell, 1_200, 1, Tif::Gtc);
        let crossed = h.limit(BOB, Side::Buy, 1_200, 1, Tif::Gtc);
        assert_eq!(trades(&crossed), [(1_200, 1)]);
        if made == RECENT_TRADES_MAX as u64 {
            let kept = sequences(&h);
            assert_eq!(kept.len(), RECENT_TRADES_MAX);
            assert_eq!(kept.last(), Some(&1), "newest first, the oldest last");
        }
    }
    let kept = sequences(&h);
    assert_eq!(kept.len(), RECENT_TRADES_MAX);
    assert_eq!(kept.last(), Some(&2), "exactly the oldest went");
    assert_eq!(kept.first(), Some(&trades_made));
}
