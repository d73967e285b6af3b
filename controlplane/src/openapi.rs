//! The OpenAPI 3.1 document the API serves at `/api/v1/openapi.json`. Amounts are integers
//! in the coin's smallest unit (satoshis, litoshis) everywhere.

use serde_json::{json, Value};

fn get(summary: &str, parameters: Value) -> Value {
    json!({"get": {"summary": summary, "parameters": parameters, "responses": {"200": {"description": "OK", "content": {"application/json": {}}}}}})
}

fn address_parameter() -> Value {
    json!([{"name": "address", "in": "path", "required": true, "schema": {"type": "string"}, "description": "A payout address of the pool's coin and network."}])
}

pub fn document() -> Value {
    let admin = |summary: &str| json!({"summary": summary, "security": [{"admin": []}], "responses": {"200": {"description": "OK"}, "401": {"description": "Missing or wrong bearer token"}, "403": {"description": "The admin API is off"}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Otedama pool API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer", "description": "The token in admin_token_file; the server keeps only its SHA-256."}},
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
                "Payment": {"type": "object", "properties": {"batch_id": {"type": "integer"}, "txid": {"type": "string"}, "state": {"enum": ["pending", "sent"]}, "total": {"type": "integer"}, "outputs": {"type": "object", "additionalProperties": {"type": "integer"}}}}
            }
        },
        "paths": {
            "/health": get("Liveness", json!([])),
            "/metrics": get("Prometheus metrics (text format 0.0.4)", json!([])),
            "/ws": get("WebSocket feed: {type: stats} every 5 s, {type: block} and {type: payment} as they happen", json!([])),
            "/api/v1/stats": get("Pool statistics: hashrate over 1 min, 10 min and 1 h, miners, workers, shares, blocks, the network, and the PPS balance", json!([])),
            "/api/v1/blocks": get("Blocks the pool submitted, with status pending, confirmed or orphaned", json!([])),
            "/api/v1/payments": get("Payout batches, newest first, each with its txid", json!([])),
            "/api/v1/miners/{address}": get("One miner: balances, hashrate, workers, payments", address_parameter()),
            "/api/v1/miners/{address}/settings": get("One miner's payout threshold", address_parameter()),
            "/api/v1/openapi.json": get("This document", json!([])),
            "/api/v1/admin/payouts/run": {"post": admin("Run a payout now; returns the batch it paid")},
            "/api/v1/admin/config": {"get": admin("Payout settings"), "put": admin("Change pool_fee_percent, payout_min, payout_interval_s, pplns_window_factor or pplnt_presence_min until restart")},
            "/api/v1/admin/miners": {"get": admin("Every account and every miner active in the last hour: balances, active workers, banned")},
            "/api/v1/admin/bans": {"get": admin("The ban list: payout addresses and IP networks")},
            "/api/v1/admin/bans/add": {"post": admin("Ban {addresses: [...], networks: [\"10.0.0.0/8\", \"2001:db8::1\"]}: refused at authorize or accept; connections they cover are closed")},
            "/api/v1/admin/bans/remove": {"post": admin("Lift bans, same body as bans/add")},
            "/api/v1/admin/miners/{address}/settings": {"put": admin("Set a miner's payout_min (not below the pool's)")},
            "/api/v1/admin/audit": {"get": admin("The audit trail, newest first")}
        }
    })
}
