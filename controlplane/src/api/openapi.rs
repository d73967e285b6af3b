//! The OpenAPI 3.1 document the API serves at `/api/v1/openapi.json`. Pool amounts are
//! integers in the coin's smallest unit (satoshis, litoshis); the exchange's amounts and
//! prices are decimal strings in coins.

use serde_json::{json, Value};

fn get(summary: &str, parameters: Value) -> Value {
    json!({"get": {"summary": summary, "parameters": parameters, "responses": {"200": {"description": "OK", "content": {"application/json": {}}}}}})
}

fn page_parameters() -> Value {
    json!([
        {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}, "description": "Items in the page (default 100, at most 1000)."},
        {"name": "cursor", "in": "query", "required": false, "schema": {"type": "string"}, "description": "The x-next-cursor header of the page before."}
    ])
}

fn address_parameter() -> Value {
    json!([{"name": "address", "in": "path", "required": true, "schema": {"type": "string"}, "description": "A payout address of the pool's coin and network."}])
}

fn market_parameter() -> Value {
    json!([{"name": "market", "in": "path", "required": true, "schema": {"type": "string"}, "description": "A market symbol, BASE-QUOTE (LTC-BTC)."}])
}

pub fn document() -> Value {
    let miner = |summary: &str| json!({"summary": summary, "security": [{"minerKey": []}], "responses": {"200": {"description": "OK"}, "401": {"description": "Missing or unknown API key"}, "403": {"description": "Address on the deny list"}, "404": {"description": "The exchange is off, or no such market or order"}}});
    let admin = |summary: &str| json!({"summary": summary, "security": [{"admin": []}], "responses": {"200": {"description": "OK"}, "401": {"description": "Missing or wrong bearer token"}, "403": {"description": "The admin API is off"}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Otedama pool API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "The token in admin_token_file; the server keeps only its SHA-256."},
                "minerKey": {"type": "http", "scheme": "bearer", "description": "A miner's exchange API key (otd_ and 64 hex digits). To get one: POST /api/v1/dex/keys/challenge {address} returns a one-time message (valid 10 minutes); sign it with the payout address's key as `signmessage ADDRESS MESSAGE` does (Litecoin Core, or any BIP137 wallet for P2PKH, P2SH-P2WPKH and P2WPKH addresses), then POST /api/v1/dex/keys {address, message, signature}. The signature recovers a public key whose address must be the payout address. A new key replaces the address's previous one; the server keeps only its SHA-256."},
                "providerSignature": {"type": "apiKey", "in": "header", "name": "X-Otedama-Signature", "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 over \"<t>.<raw body>\"> with the secret in kyc_webhook_secret_file; t within 300 s of the pool's clock. The pool signs its webhook posts the same way."}
            },
            "schemas": {
                "Miner": {"type": "object", "required": ["address", "balance_immature", "balance_mature", "paid", "workers", "hashrate"], "properties": {
                    "address": {"type": "string"},
                    "balance_immature": {"type": "integer", "description": "Credited from blocks that are not mature yet."},
                    "balance_mature": {"type": "integer", "description": "Payable."},
                    "balance_paying": {"type": "integer", "description": "In a payout batch the node has not been seen to hold yet."},
                    "paid": {"type": "integer"},
                    "payout_min": {"type": "integer"},
                    "hashrate": {"type": "number", "description": "Hashes per second over the last 10 minutes."},
                    "windows": {"type": "object"},
                    "workers": {"type": "object"},
                    "payments": {"type": "array"}
                }},
                "Block": {"type": "object", "properties": {"hash": {"type": "string"}, "height": {"type": "integer"}, "worker": {"type": "string", "description": "The finder, ADDRESS.RIG"}, "header": {"type": "string", "description": "The 80-byte header of the share that found the block, hex"}, "reward": {"type": "integer"}, "status": {"enum": ["pending", "confirmed", "orphaned"]}, "confirmations": {"type": "integer"}, "rejected_reason": {"type": ["string", "null"]}}},
                "Payment": {"type": "object", "properties": {"batch_id": {"type": "integer"}, "txid": {"type": "string"}, "state": {"enum": ["pending", "sent", "confirmed", "failed", "cancelled"]}, "total": {"type": "integer"}, "outputs": {"type": "object", "additionalProperties": {"type": "integer"}}, "confirmations": {"type": "integer"}, "paid_by_txid": {"type": ["string", "null"], "description": "The replacement that paid every output, when not txid (a fee bump)"}, "last_error": {"type": ["string", "null"], "description": "A fixed reason for the state; the whole text is in /api/v1/admin/payments"}}}
            }
        },
        "paths": {
            "/health": get("Liveness; 503 while a share log cannot write", json!([])),
            "/metrics": get("Prometheus metrics (text format 0.0.4)", json!([])),
            "/ws": get("WebSocket feed: {type: stats} every 5 s; {type: block}, {type: payment}, {type: dex.trade} and {type: dex.book} as they happen", json!([])),
            "/api/v1/stats": get("Pool statistics: hashrate over 1 min, 10 min and 1 h, miners, workers, shares, blocks, the network, and the PPS balance", json!([])),
            "/api/v1/blocks": get("Blocks the pool submitted, newest first, with status pending, confirmed or orphaned. Pages: ?limit= (default 100, at most 1000) and ?cursor= from the x-next-cursor header", page_parameters()),
            "/api/v1/payments": get("Payout batches, newest first, each with its txid. Pages: ?limit= (default 100, at most 1000) and ?cursor= from the x-next-cursor header", page_parameters()),
            "/api/v1/miners/{address}": get("One miner: balances, hashrate, workers, payments", address_parameter()),
            "/api/v1/miners/{address}/settings": get("One miner's payout threshold", address_parameter()),
            "/api/v1/miners/{address}/payments": get("One miner's payments, newest first (limit, cursor; x-next-cursor names the next page)", address_parameter()),
            "/api/v1/openapi.json": get("This document", json!([])),
            "/api/v1/admin/payouts/run": {"post": admin("Run a payout now; returns the batch it paid. 503: the payout queue is full; 504: not started within the wait, and it will not run; 202: started, not finished within the wait (its outcome is audited as payouts.ran)")},
            "/api/v1/admin/payouts/{batch_id}/cancel": {"post": admin("Cancel a pending batch whose transaction the node can never take (its inputs are spent or gone): its amounts go back to the balances, once; 409 while it can still be mined; audited")},
            "/api/v1/admin/config": {"get": admin("Payout settings"), "put": admin("Change pool_fee_percent, payout_min, payout_interval_s, pplns_window_factor or pplnt_presence_min until restart")},
            "/api/v1/admin/miners": {"get": admin("Every account and every miner active in the last hour: balances, active workers, banned")},
            "/api/v1/admin/bans": {"get": admin("The ban list: payout addresses and IP networks")},
            "/api/v1/admin/bans/add": {"post": admin("Ban {addresses: [...], networks: [\"10.0.0.0/8\", \"2001:db8::1\"]}: refused at authorize or accept; connections they cover are closed")},
            "/api/v1/admin/bans/remove": {"post": admin("Lift bans, same body as bans/add")},
            "/api/v1/admin/miners/{address}/settings": {"put": admin("Set a miner's payout_min (not below the pool's)")},
            "/api/v1/admin/audit": {"get": admin("The audit trail, newest first")},
            "/api/v1/admin/blocks": {"get": admin("The blocks submitted, with the node's whole rejection text (the public list shows only its reason token)")},
            "/api/v1/admin/payments": {"get": admin("The payout batches, with the node's or the wallet's whole error text (the public list shows a fixed reason)")},
            "/api/v1/admin/kyc": {"get": admin("KYC records of every address, and `pending`: each address a payout waits on, with the mature balance held")},
            "/api/v1/admin/kyc/{address}": {"put": admin("Set an address's KYC state {state: verified|rejected|pending, reference}; audited")},
            "/api/v1/admin/exports/payments": {"get": admin("Every payment to ?address=, as ?format=json (default) or csv: batch, txid, amount, state, times")},
            "/api/v1/admin/exports/audit": {"get": admin("The audit entries of [?from_ms, ?to_ms) with their hashes, as ?format=json (default) or csv")},
            "/api/v1/admin/dex/credits": {"post": admin("Credit another coin (operator liquidity) to an address's exchange account {address, asset, amount}; audited")},
            "/api/v1/kyc/callback": {"post": {"summary": "The KYC provider's verdict {id, address, state: verified|rejected, reference}; each id is applied once", "security": [{"providerSignature": []}], "responses": {"200": {"description": "Recorded and audited"}, "401": {"description": "Missing, stale or wrong signature"}, "404": {"description": "No provider configured"}, "409": {"description": "This callback id was applied already"}}}},
            "/api/v1/dex/markets": get("Markets: symbol, base, quote, lot_size, price_increment, min_size", json!([])),
            "/api/v1/dex/orderbook/{market}": get("Aggregated book, best first: bids and asks as [price, quantity] in coins, up to 50 levels", market_parameter()),
            "/api/v1/dex/trades/{market}": get("The market's latest trades, newest first", market_parameter()),
            "/api/v1/dex/keys/challenge": {"post": {"summary": "A one-time message to sign {address}", "responses": {"200": {"description": "{address, message, expires_at_ms}"}, "400": {"description": "Not a payout address of this pool"}}}},
            "/api/v1/dex/keys": {"post": {"summary": "Create an API key {address, message, signature}", "responses": {"200": {"description": "{address, api_key}"}, "401": {"description": "Bad signature, or not an open challenge"}, "403": {"description": "Address on the deny list"}}}},
            "/api/v1/dex/account": {"get": miner("Balances per asset (available, reserved) and open orders")},
            "/api/v1/dex/orders": {"post": miner("Place {market, side: buy|sell, type: limit|market, price, quantity, time_in_force: gtc|ioc|fok|post_only, quote_max (market buy), self_trade_prevention: cancel_newest|cancel_oldest|cancel_both}. Price in quote coins per base coin on the price increment; quantity in base coins on the lot size. 201 with the order id and its events; 400 for bad input; 404 for an unknown market; 422 when the exchange refuses (balance, limits, post-only, FOK)")},
            "/api/v1/dex/orders/{id}": {"delete": miner("Cancel one of your open orders; 404 for an order that is not yours or not open"), "put": miner("Cancel-replace {price, quantity}: the same price and less quantity keeps the order's id and place in the queue; anything else replaces it with a new GTC order (a new id) at the back")},
            "/api/v1/dex/deposits": {"post": miner("Move {amount} of the pool's coin from your mature pool balance into the exchange")},
            "/api/v1/dex/withdrawals": {"post": miner("Move {amount} of the pool's coin from the exchange back to your mature pool balance, where payouts (and KYC holds) apply")}
        }
    })
}
