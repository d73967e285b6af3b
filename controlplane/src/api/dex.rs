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
use rand::RngCore;
use serde_json::{json, Value};

use crate::api::{error, now_ms, ApiState};
use crate::dex::{status_of, DexError, DexService, OrderRequest};
use otedama_ledger::ledger::TransferKind;
use otedama_ledger::Amount;

/// Seconds a key challenge may be answered in.
pub const KEY_CHALLENGE_TTL_S: u64 = 600;

/// Issues and checks the one-time challenges a miner signs to get an exchange API key.
///
/// Nothing is stored per challenge: each carries its address, serial and expiry under a MAC
/// with a secret of this process, so asking for challenges (a public route) costs the pool
/// no memory and cannot crowd out anyone else's (a global table of open challenges could be
/// filled by one client). A challenge is single use because the key store keeps, per
/// address, the serial of the last challenge answered, and takes only a newer one
/// (`DexService::create_key`). A restart makes open challenges invalid (a new secret);
/// they are asked for again.
///
/// A serial is the exchange's start count (kept in its store, one more at each start) over
/// a count of challenges issued since: it grows across restarts whatever the wall clock
/// does, so a clock set wrong for a while can never leave an address unable to get a key.
pub struct KeyChallenges {
    secret: [u8; 32],
    /// The serial the next challenge gets.
    next_serial: u128,
}

impl Default for KeyChallenges {
    /// Challenges of a pool without the exchange (nobody can answer them).
    fn default() -> Self {
        Self::new(0)
    }
}

/// A challenge that checked out: the serial the key store compares.
#[derive(Debug, PartialEq, Eq)]
pub struct AnsweredChallenge {
    pub serial: u128,
}

impl KeyChallenges {
    /// Challenges for this start of the exchange, its `start_count`-th
    /// (`DexService::start_count`).
    pub fn new(start_count: u64) -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        KeyChallenges {
            secret,
            next_serial: (u128::from(start_count) << 64) + 1,
        }
    }

    fn mac(&self, address: &str, serial: u128, expires_at_ms: u64) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret)
            .expect("HMAC takes any key length");
        mac.update(format!("{address}\n{serial}\n{expires_at_ms}").as_bytes());
        mac
    }

    fn message(address: &str, serial: u128, expires_at_ms: u64, tag: &str) -> String {
        format!(
            "Otedama API key\naddress: {address}\nserial: {serial}\nexpires: {expires_at_ms}\ncheck: {tag}"
        )
    }

    /// A new challenge for `address` and its expiry.
    pub fn issue(&mut self, address: &str, now_ms: u64) -> (String, u64) {
        let serial = self.next_serial;
        // 2^64 challenges in one start: never, at any rate a client can ask.
        self.next_serial += 1;
        let expires_at_ms = now_ms + KEY_CHALLENGE_TTL_S * 1000;
        use hmac::Mac;
        let tag = hex::encode(
            self.mac(address, serial, expires_at_ms)
                .finalize()
                .into_bytes(),
        );
        (
            Self::message(address, serial, expires_at_ms, &tag),
            expires_at_ms,
        )
    }

    /// The challenge `message` if this process issued it for `address` and it is
    /// unexpired. Whether it was answered before is the key store's to say.
    pub fn check(&self, address: &str, message: &str, now_ms: u64) -> Option<AnsweredChallenge> {
        let mut lines = message.split('\n');
        if lines.next()? != "Otedama API key" {
            return None;
        }
        let mut field = |name: &str| lines.next()?.strip_prefix(name).map(str::to_string);
        let claimed_address = field("address: ")?;
        let serial: u128 = field("serial: ")?.parse().ok()?;
        let expires_at_ms: u64 = field("expires: ")?.parse().ok()?;
        let tag = field("check: ")?;
        // The message must be exactly what `issue` wrote (no extra lines, no other
        // spelling of a number or of the tag); the MAC is compared in constant time.
        use hmac::Mac;
        let genuine = claimed_address == address
            && message == Self::message(address, serial, expires_at_ms, &tag)
            && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && hex::decode(&tag).is_ok_and(|tag| {
                self.mac(address, serial, expires_at_ms)
                    .verify_slice(&tag)
                    .is_ok()
            });
        (genuine && expires_at_ms > now_ms).then_some(AnsweredChallenge { serial })
    }
}

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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeRequest {
    address: String,
}

async fn key_challenge(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    if let Err(response) = dex_of(&state) {
        return response;
    }
    let mut request: ChallengeRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    request.address = match crate::api::canonical_account(&state, &request.address) {
        Ok(canonical) => canonical,
        Err(response) => return response,
    };
    let (message, expires_at_ms) = state
        .key_challenges
        .lock()
        .expect("challenges lock")
        .issue(&request.address, now_ms());
    Json(json!({
        "address": request.address,
        "message": message,
        "expires_at_ms": expires_at_ms,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    address: String,
    message: String,
    /// Base64 compact signature, as `signmessage` prints it.
    signature: String,
}

async fn create_key(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    if let Err(response) = dex_of(&state) {
        return response;
    }
    let mut request: KeyRequest = match body_json(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    request.address = match crate::api::canonical_account(&state, &request.address) {
        Ok(canonical) => canonical,
        Err(response) => return response,
    };
    if let Err(response) = refuse_denied(&state, &request.address) {
        return response;
    }
    let verified = otedama_chain::signed_message::verify(
        &state.address_rule,
        &otedama_chain::signed_message::message_magic(state.coin_name),
        &request.address,
        &request.message,
        &request.signature,
    );
    if let Err(e) = verified {
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    // The challenge is spent only by a valid signature: a wrong guess cannot burn it.
    let Some(challenge) = state.key_challenges.lock().expect("challenges lock").check(
        &request.address,
        &request.message,
        now_ms(),
    ) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "the message is not an open challenge for this address (POST /api/v1/dex/keys/challenge)",
        );
    };
    let address = request.address.clone();
    let created = with_dex(&state, move |dex, _| {
        dex.create_key(&address, challenge.serial, now_ms())
    })
    .await;
    match created {
        Ok(Ok(None)) => error(
            StatusCode::UNAUTHORIZED,
            "this challenge, or a newer one for this address, was answered already: ask for a new one",
        ),
        Ok(Ok(Some(key))) => {
            crate::api::audit_from_async(
                &state,
                "miner",
                "dex.key.created",
                json!({"address": request.address}),
            )
            .await;
            Json(json!({"address": request.address, "api_key": key})).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_checks_only_for_its_address_unaltered_and_before_it_expires() {
        let mut challenges = KeyChallenges::default();
        let (message, expiry) = challenges.issue("addr", 1_000);
        assert!(challenges.check("addr", "another message", 1_001).is_none());
        assert!(challenges.check("other", &message, 1_001).is_none());
        let altered = message.replace("expires: ", "expires: 9");
        assert!(challenges.check("addr", &altered, 1_001).is_none());
        assert!(challenges
            .check("addr", &format!("{message}\n"), 1_001)
            .is_none());
        let (_, tag) = message.rsplit_once("check: ").unwrap();
        let upper = message.replace(tag, &tag.to_uppercase());
        assert!(challenges.check("addr", &upper, 1_001).is_none());
        let retargeted = message.replace("address: addr", "address: other");
        assert!(challenges.check("other", &retargeted, 1_001).is_none());
        assert!(
            challenges.check("addr", &message, expiry).is_none(),
            "expired at its edge"
        );
        assert!(challenges.check("addr", &message, expiry - 1).is_some());
        // Another process (or this one after a restart) has another secret.
        assert!(KeyChallenges::default()
            .check("addr", &message, 1_001)
            .is_none());
    }

    /// Issue 16: asking for challenges costs nothing kept, so no number of them can crowd
    /// out the owner's; serials only grow, which is what makes a challenge single use.
    #[test]
    fn challenges_keep_no_state_per_request_and_their_serials_grow() {
        let mut challenges = KeyChallenges::default();
        let (owners, _) = challenges.issue("addr", 1_000);
        let mut last = challenges.check("addr", &owners, 1_001).unwrap().serial;
        // Issue 15, point 8: a challenge asked for in the owner's name leaves the owner's
        // own as it was.
        let (anyones, _) = challenges.issue("addr", 1_000);
        assert_ne!(owners, anyones);
        for i in 0..100_000u64 {
            let (message, _) = challenges.issue(&(i % 7).to_string(), 1_000);
            let serial = challenges
                .check(&(i % 7).to_string(), &message, 1_001)
                .unwrap()
                .serial;
            assert!(serial > last);
            last = serial;
        }
        assert!(challenges.check("addr", &owners, 1_001).is_some());
        assert_eq!(std::mem::size_of_val(&challenges), 48);
        // The next start's serials are above every one of this start's.
        let mut restarted = KeyChallenges::new(1);
        let (message, _) = restarted.issue("addr", 1_000);
        assert!(restarted.check("addr", &message, 1_001).unwrap().serial > last);
    }
}
