//! The exchange as JSON: markets, the public book (to `BOOK_LEVELS_MAX` levels), recent
//! trades, an account's balances and orders, and the feed's messages.

use super::*;

impl DexService {
    pub fn markets_json(&self) -> Value {
        Value::Array(
            self.dex
                .exchange
                .market_specs()
                .map(|spec| {
                    json!({
                        "symbol": spec.symbol,
                        "base": self.symbol_of(spec.base),
                        "quote": self.symbol_of(spec.quote),
                        "lot_size": coins_text(u128::from(spec.lot_size)),
                        "price_increment": price_coins(spec, 1),
                        "min_size": coins_text(u128::from(spec.min_size * spec.lot_size)),
                    })
                })
                .collect(),
        )
    }

    pub fn book_json(&self, symbol: &str) -> Result<Value, DexError> {
        let (market, _) = self.market(symbol)?;
        Ok(self.book_of(market))
    }

    pub(super) fn book_of(&self, market: MarketId) -> Value {
        let spec = self.spec(market);
        let levels = |side| -> Vec<Value> {
            self.dex
                .exchange
                .depth(market, side, BOOK_LEVELS_MAX)
                .into_iter()
                .map(|(price, lots)| {
                    json!([
                        price_coins(spec, price),
                        coins_text(u128::from(lots) * u128::from(spec.lot_size))
                    ])
                })
                .collect()
        };
        json!({
            "market": spec.symbol,
            "sequence": self.dex.exchange.applied(),
            "bids": levels(Side::Buy),
            "asks": levels(Side::Sell),
        })
    }

    pub fn trades_json(&self, symbol: &str) -> Result<Value, DexError> {
        let (market, spec) = self.market(symbol)?;
        Ok(Value::Array(
            self.dex
                .exchange
                .recent_trades(market)
                .map(|t| {
                    json!({
                        "sequence": t.sequence,
                        "price": price_coins(spec, t.price),
                        "quantity": coins_text(u128::from(t.quantity) * u128::from(spec.lot_size)),
                        "taker_side": t.taker_side,
                        "taker_order": t.taker_order,
                        "maker_order": t.maker_order,
                    })
                })
                .collect(),
        ))
    }

    /// The address's balances per asset and its open orders.
    pub fn account_json(&self, address: &str) -> anyhow::Result<Value> {
        let account = self.account_id(address)?;
        let mut balances = serde_json::Map::new();
        for (asset, spec) in self.dex.exchange.assets().iter().enumerate() {
            let b = account.map_or_else(Default::default, |a| {
                self.dex.exchange.balance(a, asset as AssetId)
            });
            balances.insert(
                spec.symbol.clone(),
                json!({"available": coins_text(b.available.into()), "reserved": coins_text(b.reserved.into())}),
            );
        }
        let mut orders = Vec::new();
        if let Some(account) = account {
            for (market, spec) in self.dex.exchange.market_specs().enumerate() {
                for order in self.dex.exchange.resting_orders(market as MarketId) {
                    if order.account == account {
                        orders.push(json!({
                            "id": order.id,
                            "market": spec.symbol,
                            "side": order.side,
                            "price": price_coins(spec, order.price),
                            "remaining": coins_text(u128::from(order.remaining) * u128::from(spec.lot_size)),
                        }));
                    }
                }
            }
        }
        Ok(json!({"address": address, "balances": balances, "open_orders": orders}))
    }

    /// What an order request caused, for its answer: the order's id and fills.
    pub fn events_json(&self, market: MarketId, events: &[Event]) -> Vec<Value> {
        let spec = self.spec(market);
        let lots = |n: u64| coins_text(u128::from(n) * u128::from(spec.lot_size));
        events
            .iter()
            .map(|event| match *event {
                Event::Accepted { order_id, side, quantity, .. } => {
                    json!({"type": "accepted", "order_id": order_id, "side": side, "quantity": lots(quantity)})
                }
                Event::Trade { taker_order, maker_order, taker_side, price, quantity, .. } => json!({
                    "type": "trade", "taker_order": taker_order, "maker_order": maker_order,
                    "taker_side": taker_side, "price": price_coins(spec, price), "quantity": lots(quantity),
                }),
                Event::Rested { order_id, side, price, remaining, .. } => json!({
                    "type": "rested", "order_id": order_id, "side": side,
                    "price": price_coins(spec, price), "remaining": lots(remaining),
                }),
                Event::Done { order_id, remaining, reason, .. } => json!({
                    "type": "done", "order_id": order_id, "remaining": lots(remaining), "reason": reason,
                }),
                Event::Reduced { order_id, remaining } => {
                    json!({"type": "reduced", "order_id": order_id, "remaining": lots(remaining)})
                }
            })
            .collect()
    }

    /// The feed's messages for what a command did: each trade, then the book once.
    pub fn feed_messages(&self, market: MarketId, events: &[Event]) -> Vec<Value> {
        let symbol = &self.spec(market).symbol;
        let mut messages: Vec<Value> = self
            .events_json(market, events)
            .into_iter()
            .filter(|e| e["type"] == "trade")
            .map(|trade| json!({"type": "dex.trade", "market": symbol, "trade": trade}))
            .collect();
        let book_changed = events.iter().any(|e| !matches!(e, Event::Accepted { .. }));
        if book_changed {
            messages.push(json!({"type": "dex.book", "book": self.book_of(market)}));
        }
        messages
    }
}

/// A price in ticks as quote coins per whole base coin.
pub(super) fn price_coins(spec: &MarketSpec, ticks: u64) -> String {
    let per_coin = u128::from(ticks) * u128::from(spec.tick_size) * u128::from(ASSET_SCALE)
        / u128::from(spec.lot_size);
    coins_text(per_coin)
}
