//! The exchange's HTTP routes. Market data is public; a miner's own routes take an API key
//! (`Authorization: Bearer otd_…`) that the miner creates by signing a one-time challenge
//! with its payout address's key, as `signmessage` does. Every amount and price is a
//! decimal string in coins, never a JSON number, so nothing is lost to floats.

// Helpers here answer with the HTTP response itself on refusal; axum's `Response` is big,
// and boxing it would only add an allocation to the refusal path.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::{error, now_ms, ApiState};
use crate::dex::{status_of, DexError, DexService, OrderRequest};
use otedama_ledger::ledger::TransferKind;
use otedama_ledger::Amount;

mod keys;

use keys::{create_key, key_challenge};
pub use keys::{AnsweredChallenge, KeyChallenges, KEY_CHALLENGE_TTL_S};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/dex/markets", get(markets))
        .route("/api/v1/dex/orderbook/{market}", get(orderbook))
        .route("/api/v1/dex/trades/{market}", get(trades))
        .route("/api/v1/dex/keys/challenge", post(key_challenge))
        .route("/api/v1/dex/keys", post(create_key))
        .route("/api/v1/dex/account", get(account))
        .route("/api/v1/dex/orders", post(place_order))
        .route(
            "/api/v1/dex/orders/{id}",
            delete(cancel_order).put(replace_order),
        )
        .route("/api/v1/dex/deposits", post(deposit))
        .route("/api/v1/dex/withdrawals", post(withdraw))
}

pub fn admin_routes() -> Router<ApiState> {
    Router::new().route("/api/v1/admin/dex/credits", post(admin_credit))
}

fn dex_of(state: &ApiState) -> Result<&Arc<Mutex<DexService>>, Response> {
    state.dex.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "the exchange is off: set dex_enabled",
        )
    })
}

fn refusal(e: DexError) -> Response {
    let status = StatusCode::from_u16(status_of(&e)).unwrap_or(StatusCode::BAD_REQUEST);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "exchange request failed");
    }
    error(status, e.to_string())
}

/// The address whose API key the request carries.
fn miner_of(state: &ApiState, headers: &HeaderMap) -> Result<String, Response> {
    let dex = dex_of(state)?;
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid API key is required (POST /api/v1/dex/keys)"})),
        )
            .into_response()
    };
    let address = key
        .and_then(|key| dex.lock().expect("dex lock").authenticate(key))
        .ok_or_else(unauthorized)?;
    refuse_denied(state, &address)?;
    Ok(address)
}

/// The address whose API key authenticated the request; a handler taking it is reached
/// only with a valid key of an address not on the deny list.
struct Miner(String);

impl axum::extract::FromRequestParts<ApiState> for Miner {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ApiState,
    ) -> Result<Self, Response> {
        // The exchange's lock: its holders write its journal, so it is taken off the
        // async workers.
        let (state, headers) = (state.clone(), parts.headers.clone());
        tokio::task::spawn_blocking(move || miner_of(&state, &headers).map(Miner))
            .await
            .unwrap_or_else(|_| {
                Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the request failed",
                ))
            })
    }
}

/// An address whose payouts wait on KYC (state pending or rejected) cannot move value
/// through the exchange either: no deposit, no new order. Otherwise a held balance could
/// be sold to another address and paid out from there. Asked under the exchange's lock,
/// which a new hold also takes to cancel the address's resting orders (`freeze_orders`),
/// so an order is either refused here or cancelled there.
fn refuse_held_inside(state: &ApiState, address: &str) -> Result<(), crate::dex::DexError> {
    // Again here, under the lock a new deny list takes to cancel resting orders.
    if refuse_denied(state, address).is_err() {
        return Err(crate::dex::DexError::Held(
            "this address is on the pool's deny list".into(),
        ));
    }
    let record = state
        .payouts
        .ledger
        .lock()
        .expect("ledger lock")
        .kyc(address)
        .map_err(|e| crate::dex::DexError::Internal(e.into()))?;
    if record.is_some_and(|r| r.state.holds()) {
        return Err(crate::dex::DexError::Held(
            "this address's payouts wait on identity verification (KYC): it cannot deposit or trade until verified".into(),
        ));
    }
    Ok(())
}

/// A denied address keeps what it holds but can neither trade nor move it.
fn refuse_denied(state: &ApiState, address: &str) -> Result<(), Response> {
    let canonical = otedama_shared::address::canonical_address(address);
    // The payout policy's frozen set is the deny list alone; operator bans stop mining,
    // not the use of what was earned.
    let denied = state
        .payouts
        .settings
        .read()
        .expect("settings lock")
        .policy
        .frozen
        .contains(canonical.as_ref());
    if denied {
        return Err(error(
            StatusCode::FORBIDDEN,
            "this address is on the pool's deny list",
        ));
    }
    Ok(())
}

fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
}

/// Runs `f` on the exchange (and the ledger) off the async threads: the journal fsyncs.
async fn with_dex<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&mut DexService, &ApiState) -> T + Send + 'static,
) -> Result<T, Response> {
    let dex = dex_of(state)?.clone();
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&mut dex.lock().expect("dex lock"), &state))
        .await
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "exchange task failed"))
}

async fn markets(State(state): State<ApiState>) -> Response {
    match with_dex(&state, |dex, _| dex.markets_json()).await {
        Ok(markets) => Json(markets).into_response(),
        Err(response) => response,
    }
}

async fn orderbook(State(state): State<ApiState>, Path(market): Path<String>) -> Response {
    match with_dex(&state, move |dex, _| dex.book_json(&market)).await {
        Ok(Ok(book)) => Json(book).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}

async fn trades(State(state): State<ApiState>, Path(market): Path<String>) -> Response {
    match with_dex(&state, move |dex, _| dex.trades_json(&market)).await {
        Ok(Ok(trades)) => Json(trades).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}

async fn account(State(state): State<ApiState>, Miner(address): Miner) -> Response {
    match with_dex(&state, move |dex, _| dex.account_json(&address)).await {
        Ok(Ok(account)) => Json(account).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => response,
    }
}

/// Sends what a command did to the book and trade feed on `/ws`.
fn publish(state: &ApiState, messages: Vec<Value>) {
    for message in messages {
        state
            .pool
            .publish_event(crate::events::PoolEvent::Exchange(message));
    }
}

async fn place_order(
    State(state): State<ApiState>,
    Miner(address): Miner,
    body: axum::body::Bytes,
) -> Response {
    let request: OrderRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let placed = with_dex(&state, move |dex, state| {
        refuse_held_inside(state, &address)?;
        dex.place(&address, &request).map(|(market, events)| {
            publish(state, dex.feed_messages(market, &events));
            let order_id = events.iter().find_map(|e| match e {
                otedama_dex::Event::Accepted { order_id, .. } => Some(*order_id),
                _ => None,
            });
            json!({"order_id": order_id, "events": dex.events_json(market, &events)})
        })
    })
    .await;
    match placed {
        Ok(Ok(answer)) => (StatusCode::CREATED, Json(answer)).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}

async fn cancel_order(
    State(state): State<ApiState>,
    Miner(address): Miner,
    Path(id): Path<String>,
) -> Response {
    let Ok(order_id) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "an order id is a whole number");
    };
    let canceled = with_dex(&state, move |dex, state| {
        dex.cancel(&address, order_id).map(|(market, events)| {
            publish(state, dex.feed_messages(market, &events));
            json!({"order_id": order_id, "events": dex.events_json(market, &events)})
        })
    })
    .await;
    match canceled {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceRequest {
    price: String,
    quantity: String,
}

async fn replace_order(
    State(state): State<ApiState>,
    Miner(address): Miner,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(order_id) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "an order id is a whole number");
    };
    let request: ReplaceRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let replaced = with_dex(&state, move |dex, state| {
        refuse_held_inside(state, &address)?;
        dex.replace(&address, order_id, &request.price, &request.quantity)
            .map(|(market, events)| {
                publish(state, dex.feed_messages(market, &events));
                let new_id = events.iter().find_map(|e| match e {
                    otedama_dex::Event::Accepted { order_id, .. } => Some(*order_id),
                    _ => None,
                });
                json!({"order_id": new_id.unwrap_or(order_id), "events": dex.events_json(market, &events)})
            })
    })
    .await;
    match replaced {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    /// Coins of the pool's coin, as a decimal string.
    amount: String,
}

async fn deposit(State(state): State<ApiState>, miner: Miner, body: axum::body::Bytes) -> Response {
    transfer(state, miner, body, TransferKind::Deposit).await
}

async fn withdraw(
    State(state): State<ApiState>,
    miner: Miner,
    body: axum::body::Bytes,
) -> Response {
    transfer(state, miner, body, TransferKind::Withdrawal).await
}

/// Moves the pool's coin between the miner's ledger balance and its exchange account.
async fn transfer(
    state: ApiState,
    Miner(address): Miner,
    body: axum::body::Bytes,
    kind: TransferKind,
) -> Response {
    let request: TransferRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let amount = match Amount::parse(&request.amount).map(Amount::units) {
        Ok(0) => return error(StatusCode::BAD_REQUEST, "amount must be positive"),
        Ok(amount) => amount,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("amount: {e}")),
    };
    let moved = with_dex(&state, move |dex, state| {
        // A withdrawal goes back to the ledger balance, where the payout hold applies.
        if kind == TransferKind::Deposit {
            refuse_held_inside(state, &address)?;
        }
        let mut ledger = state.payouts.ledger.lock().expect("ledger lock");
        dex.transfer(&mut ledger, &address, amount, now_ms(), kind)
    })
    .await;
    match moved {
        Ok(Ok(transfer)) => Json(transfer).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditRequest {
    address: String,
    asset: String,
    amount: String,
}

/// An operator's deposit of another coin (market-making liquidity) into an address's
/// exchange account; audited.
async fn admin_credit(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let mut request: CreditRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    request.address = match crate::api::canonical_account(&state, &request.address) {
        Ok(canonical) => canonical,
        Err(response) => return response,
    };
    let amount = match Amount::parse(&request.amount).map(Amount::units) {
        Ok(0) => return error(StatusCode::BAD_REQUEST, "amount must be positive"),
        Ok(amount) => amount,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("amount: {e}")),
    };
    let (address, asset) = (request.address.clone(), request.asset.clone());
    let credited = with_dex(&state, move |dex, _| {
        dex.credit_external(&address, &asset, amount)
    })
    .await;
    match credited {
        Ok(Ok(())) => {
            let detail =
                json!({"address": request.address, "asset": request.asset, "amount": amount});
            crate::api::audit_from_async(&state, "admin", "dex.credit", detail.clone()).await;
            Json(detail).into_response()
        }
        Ok(Err(e)) => refusal(e),
        Err(response) => response,
    }
}
