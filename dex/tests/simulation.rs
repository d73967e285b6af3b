//! Seeded simulation: after every command, each asset's total over all accounts equals
//! what was deposited minus what was withdrawn, reservations add up, no trade crosses a
//! limit price or matches an account with itself, and every order's fills plus what it
//! left unfilled equal its quantity. A failure names its seed.

use std::collections::HashMap;

use otedama_dex::book::{Event, OrderKind, Side};
use otedama_dex::exchange::Command;
use otedama_dex::sim::{ltc_btc, Rng, Workload};

/// What the simulation knows of each live order.
struct Tracked {
    side: Side,
    limit: Option<u64>,
    quantity: u64,
    filled: u64,
}

/// How often each outcome happened, so a run that exercises nothing fails.
#[derive(Default, Debug)]
struct Seen {
    trades: u64,
    reasons: HashMap<String, u64>,
    reduced: u64,
    withdrawals: u64,
}

fn simulate(seed: u64, steps: usize, seen: &mut Seen) {
    let mut exchange = ltc_btc();
    let mut workload = Workload::new(seed, 40).with_replaces(30);
    let mut rng = Rng::new(seed ^ 0xD1CE);
    let mut events = Vec::new();
    let mut deposited = [0u128; 2];
    let mut orders: HashMap<u64, Tracked> = HashMap::new();
    for step in 0..steps {
        let mut command = workload.next_command();
        // Now and then a withdrawal, sized to what may or may not be available.
        if rng.below(50) == 0 {
            let account = rng.below(40) + 1;
            let asset = rng.below(2) as u16;
            let available = exchange.balance(account, asset).available;
            command = Command::Withdraw {
                account,
                asset,
                amount: (available / 2).max(1),
            };
        }
        let (limit, side) = match command {
            Command::Place { order, .. } => (
                match order.kind {
                    OrderKind::Limit { price, .. } => Some(price),
                    OrderKind::Market { .. } => None,
                },
                Some(order.side),
            ),
            Command::Replace { price, .. } => (Some(price), None),
            _ => (None, None),
        };
        events.clear();
        if exchange.handle(&command, &mut events).is_err() {
            continue;
        }
        workload.observe(&events);
        match command {
            Command::Deposit { asset, amount, .. } => {
                deposited[usize::from(asset)] += u128::from(amount)
            }
            Command::Withdraw { asset, amount, .. } => {
                seen.withdrawals += 1;
                deposited[usize::from(asset)] -= u128::from(amount)
            }
            _ => {}
        }
        for event in &events {
            match *event {
                Event::Accepted {
                    order_id,
                    side: order_side,
                    quantity,
                    ..
                } => {
                    // A replacement keeps the old order's side; a new order brings its own.
                    let side = side.unwrap_or(order_side);
                    orders.insert(
                        order_id,
                        Tracked {
                            side,
                            limit,
                            quantity,
                            filled: 0,
                        },
                    );
                }
                Event::Trade {
                    taker_order,
                    taker_account,
                    maker_order,
                    maker_account,
                    taker_side,
                    price,
                    quantity,
                } => {
                    seen.trades += 1;
                    assert_ne!(
                        taker_account, maker_account,
                        "seed {seed} step {step}: self-trade"
                    );
                    let taker = &orders[&taker_order];
                    assert_eq!(taker.side, taker_side);
                    match (taker.side, taker.limit) {
                        (Side::Buy, Some(limit)) => assert!(
                            price <= limit,
                            "seed {seed} step {step}: bought above the limit"
                        ),
                        (Side::Sell, Some(limit)) => assert!(
                            price >= limit,
                            "seed {seed} step {step}: sold below the limit"
                        ),
                        (_, None) => {}
                    }
                    let maker = &orders[&maker_order];
                    assert_eq!(
                        maker.limit,
                        Some(price),
                        "seed {seed} step {step}: not at the maker's price"
                    );
                    for id in [taker_order, maker_order] {
                        let order = orders.get_mut(&id).unwrap();
                        order.filled += quantity;
                        assert!(
                            order.filled <= order.quantity,
                            "seed {seed} step {step}: overfilled"
                        );
                    }
                }
                Event::Reduced {
                    order_id,
                    remaining,
                } => {
                    seen.reduced += 1;
                    let order = orders.get_mut(&order_id).unwrap();
                    order.quantity = order.filled + remaining;
                }
                Event::Done {
                    order_id,
                    remaining,
                    reason,
                    ..
                } => {
                    *seen.reasons.entry(format!("{reason:?}")).or_default() += 1;
                    let order = orders.remove(&order_id).unwrap();
                    assert_eq!(
                        order.filled + remaining,
                        order.quantity,
                        "seed {seed} step {step}: order {order_id} lost lots"
                    );
                }
                Event::Rested { .. } => {}
            }
        }
        for asset in [0u16, 1] {
            assert_eq!(
                exchange.total(asset),
                deposited[usize::from(asset)],
                "seed {seed} step {step}: asset {asset} not conserved"
            );
        }
        if step % 1_000 == 0 {
            // Reserved balances are exactly what the resting orders hold: base for asks,
            // quote at their own price for bids.
            let mut held: HashMap<(u64, u16), u64> = HashMap::new();
            for order in exchange.resting_orders(0) {
                let (asset, amount) = match order.side {
                    Side::Buy => (1, order.remaining * order.price),
                    Side::Sell => (0, order.remaining * 1_000_000),
                };
                *held.entry((order.account, asset)).or_default() += amount;
            }
            for (account, balances) in exchange.state().balances {
                for asset in [0u16, 1] {
                    assert_eq!(
                        balances[usize::from(asset)].reserved,
                        held.get(&(account, asset)).copied().unwrap_or(0),
                        "seed {seed} step {step}: account {account} asset {asset} reservation"
                    );
                }
            }
        }
    }
    // Every resting order is still tracked, with lots left.
    assert_eq!(exchange.order_count(0), orders.len(), "seed {seed}");
    for resting in exchange.resting_orders(0) {
        let order = &orders[&resting.id];
        assert_eq!(
            order.filled + resting.remaining,
            order.quantity,
            "seed {seed}"
        );
    }
}

#[test]
fn seeded_workloads_keep_every_invariant() {
    let mut seen = Seen::default();
    for seed in 1..=8 {
        simulate(seed, 50_000, &mut seen);
    }
    for reason in [
        "Filled",
        "Canceled",
        "Unfilled",
        "Killed",
        "WouldTake",
        "SelfTrade",
        "Replaced",
    ] {
        assert!(
            seen.reasons.get(reason).copied().unwrap_or(0) > 0,
            "no {reason}: {seen:?}"
        );
    }
    assert!(
        seen.trades > 0 && seen.reduced > 0 && seen.withdrawals > 0,
        "{seen:?}"
    );
    println!("{seen:?}");
}
