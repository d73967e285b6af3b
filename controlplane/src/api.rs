//! The HTTP API, described by the OpenAPI document it serves at `/api/v1/openapi.json`.
//!
//! Public: pool stats, blocks, payments, per-miner balances and hashrate, `/health`,
//! Prometheus `/metrics` and the `/ws` feed. Admin (`/api/v1/admin/...`): payout runs,
//! payout settings, the miner list and the audit trail, behind a bearer token of which
//! only the SHA-256 is kept.
//!
//! The request path is normalized (percent-decoding, `.` and `..`, repeated slashes)
//! before routing, and the token check is a layer on the admin routes themselves: a
//! request reaches an admin handler only through that check, whatever its path looked
//! like on the wire. No route answers with a secret, and no log line holds one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use otedama_kernels::Algorithm;
use otedama_ledger::Amount;
use otedama_shared::address::{canonical_address_for, AddressRule};
use otedama_shared::http_path::{encode_path, normalize_path};

use crate::audit::AuditLog;
use crate::bans::{BanChange, BanStore};
use crate::blocks::{BlockRecord, BlockStore};
use crate::payouts::runner::{PayoutRequest, PayoutSettings, RequestTicket};
use crate::stats::PoolState;
use otedama_ledger::ledger::Ledger;
use otedama_ledger::shares::ShareHistory;

/// Hashrate windows reported, in seconds.
pub const HASHRATE_WINDOWS_S: [u64; 3] = [60, 600, 3600];
/// How long the admin payout route waits for the payout thread: well within the
/// connection's lifetime, so the caller always hears whether its request started.
const PAYOUT_RUN_TIMEOUT_S: u64 = 90;
const _: () = assert!(PAYOUT_RUN_TIMEOUT_S + 10 <= API_CONNECTION_LIFETIME_S);
/// Seconds between stats messages on `/ws`.
const WS_STATS_INTERVAL_S: u64 = 5;
/// Live-feed (`/ws`) clients at once; past it the upgrade is refused with 503. Each one
/// is a task, a socket and a stats snapshot every `WS_STATS_INTERVAL_S`.
pub const WS_CLIENTS_MAX: usize = 256;
/// Largest message (and frame) a live-feed client may send: the feed takes nothing but a
/// close, so a client cannot make the pool buffer more than this.
pub const WS_CLIENT_MESSAGE_BYTES_MAX: usize = 4096;
/// How long one feed message may wait for a client that does not read; then it is
/// dropped and its place freed.
const WS_SEND_TIMEOUT_S: u64 = 30;
/// HTTP connections the API holds at once. Past it, new connections wait in the kernel's
/// backlog (they take no descriptor here), so whatever the API's clients do, the control
/// plane keeps descriptors for the node, RocksDB and payouts (it raises its own
/// open-files limit, at least 20,000 on a tuned host).
pub const API_CONNECTIONS_MAX: usize = 1024;
/// HTTP connections one IPv4 address or IPv6 /64 may hold; more are closed at accept, so
/// one scraper cannot take every place.
pub const API_CONNECTIONS_PER_IP_MAX: u32 = 64;
/// Seconds a client has to send a request's headers, and that an idle keep-alive
/// connection stays open waiting for the next request. Then the connection is closed:
/// a slowloris client holds a place this long at most.
pub const API_HEADER_READ_TIMEOUT_S: u64 = 10;
/// Seconds one HTTP connection may last before its upgrade (a live-feed client then counts
/// under `WS_CLIENTS_MAX`): a client trickling a body or reading a response a byte at a
/// time holds its place this long at most.
pub const API_CONNECTION_LIFETIME_S: u64 = 120;
/// Largest request body any route reads (orders, KYC callbacks and admin requests are a
/// few hundred bytes).
pub const API_BODY_BYTES_MAX: usize = 64 * 1024;
/// Items one page of a list (`/api/v1/blocks`, `/api/v1/payments` and their admin forms)
/// holds at most: `?limit=` above it is cut to it. Without `limit`, a page holds
/// `API_LIST_ITEMS_DEFAULT`. The next page is asked for with `?cursor=`, the value of the
/// `x-next-cursor` header, which a page has only when more may follow.
pub const API_LIST_ITEMS_MAX: usize = 1000;
const API_LIST_ITEMS_DEFAULT: usize = 100;
/// The response header carrying the cursor of the next page.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";
/// How long one computed stats answer (`/api/v1/stats`, the live feed) is served again.
const STATS_CACHE_MS: u64 = 1000;
/// Audit entries one request may list.
const AUDIT_ENTRIES_PER_REQUEST_MAX: usize = 1000;

/// What the payout side shares with the API.
#[derive(Clone)]
pub struct PayoutHandles {
    /// The ledger, for writes (and reads that must be consistent with a write).
    pub ledger: Arc<Mutex<Ledger>>,
    /// The same ledger for reads, without its lock (`Ledger::reader`): the payout thread
    /// holds the lock across wallet RPCs, and the API must not wait for them.
    pub ledger_reader: Arc<Ledger>,
    pub history: Arc<Mutex<ShareHistory>>,
    pub settings: Arc<RwLock<PayoutSettings>>,
    pub run_now: crossbeam_channel::Sender<PayoutRequest>,
    /// The exchange once it is open (`dex_enabled`): holds cancel the held address's
    /// resting orders there.
    pub dex: Arc<std::sync::OnceLock<crate::dex::SharedDex>>,
}

#[derive(Clone)]
pub struct ApiState {
    pub pool: Arc<PoolState>,
    /// The Stratum V2 authority public key (base58check), when V2 is served.
    pub sv2_authority_key: Option<String>,
    pub blocks: Arc<BlockStore>,
    pub payouts: PayoutHandles,
    pub audit: Arc<AuditLog>,
    pub bans: Arc<BanStore>,
    /// SHA-256 of the admin token; `None` turns the admin API off.
    pub admin_token_sha256: Option<[u8; 32]>,
    pub address_rule: AddressRule,
    pub algorithm: Algorithm,
    /// The coin's name in its signed-message magic (`Litecoin`).
    pub coin_name: &'static str,
    /// The exchange, when `dex_enabled`.
    pub dex: Option<Arc<Mutex<crate::dex::DexService>>>,
    pub key_challenges: Arc<Mutex<crate::api_dex::KeyChallenges>>,
    /// The secret shared with the KYC provider, when one is configured.
    pub kyc_secret: Option<Arc<Vec<u8>>>,
    /// Places on the live feed (`WS_CLIENTS_MAX`).
    pub ws_clients: Arc<tokio::sync::Semaphore>,
    /// The last stats computed, and when (`STATS_CACHE_MS`).
    pub stats_cache: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Value)>>>,
}

pub fn router(state: ApiState) -> Router {
    let admin = Router::new()
        .route("/api/v1/admin/payouts/run", post(admin_run_payout))
        .route(
            "/api/v1/admin/payouts/{batch_id}/cancel",
            post(admin_cancel_payout),
        )
        .route(
            "/api/v1/admin/config",
            get(admin_config).put(admin_set_config),
        )
        .route("/api/v1/admin/miners", get(admin_miners))
        .route("/api/v1/admin/blocks", get(admin_blocks))
        .route("/api/v1/admin/payments", get(admin_payments))
        .route(
            "/api/v1/admin/miners/{address}/settings",
            axum::routing::put(admin_set_miner_settings),
        )
        .route("/api/v1/admin/audit", get(admin_audit))
        .route("/api/v1/admin/bans", get(admin_bans))
        .route("/api/v1/admin/bans/add", post(admin_ban))
        .route("/api/v1/admin/bans/remove", post(admin_unban))
        .merge(crate::api_dex::admin_routes())
        .merge(crate::api_compliance::admin_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/blocks", get(blocks_list))
        .route("/api/v1/payments", get(payments_list))
        .route("/api/v1/miners/{address}", get(miner))
        .route("/api/v1/miners/{address}/settings", get(miner_settings))
        .route("/api/v1/miners/{address}/payments", get(miner_payments))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ws", get(websocket))
        .route("/", get(dashboard))
        .merge(crate::api_dex::routes())
        .merge(crate::api_compliance::routes())
        .merge(admin)
        .with_state(state)
}

/// Serves the API with its bounds: at most `API_CONNECTIONS_MAX` connections (and
/// `API_CONNECTIONS_PER_IP_MAX` per address), `API_HEADER_READ_TIMEOUT_S` to send headers
/// or the next request, bodies up to `API_BODY_BYTES_MAX`.
pub async fn serve(address: SocketAddr, state: ApiState) -> anyhow::Result<()> {
    use tower::Layer;
    let app = middleware::map_request(normalize_request_path)
        .layer(router(state).layer(axum::extract::DefaultBodyLimit::max(API_BODY_BYTES_MAX)));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the API on {address}"))?;
    tracing::info!(%address, "API listening");
    let places = Arc::new(tokio::sync::Semaphore::new(API_CONNECTIONS_MAX));
    let per_address = otedama_shared::bans::AddressCounts::new(API_CONNECTIONS_PER_IP_MAX);
    loop {
        // Waiting here, not after accepting, leaves a connection past the cap in the
        // kernel's backlog instead of in a descriptor of ours.
        let place = places.clone().acquire_owned().await?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and the like: do not spin.
                tracing::warn!(%error, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(address_place) = per_address.admit(peer.ip()) else {
            tracing::debug!(%peer, "too many API connections from one address");
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    tower::ServiceExt::oneshot(app.clone(), request.map(Body::new))
                });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(API_HEADER_READ_TIMEOUT_S));
            let connection = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            let lifetime = Duration::from_secs(API_CONNECTION_LIFETIME_S);
            match tokio::time::timeout(lifetime, connection).await {
                Ok(Err(error)) => tracing::debug!(%error, %peer, "API connection ended"),
                Err(_) => tracing::debug!(%peer, "API connection outlived its lifetime"),
                Ok(Ok(())) => {}
            }
            // Given back however the task ends (a handler's panic included).
            drop((address_place, place));
        });
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn normalize_request_path(mut request: Request) -> Result<Request, StatusCode> {
    let uri = request.uri();
    let Some(path) = normalize_path(uri.path()) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    let path = encode_path(&path);
    if path != uri.path() {
        let rebuilt = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        *request.uri_mut() = rebuilt
            .parse::<Uri>()
            .map_err(|_| StatusCode::BAD_REQUEST)?;
    }
    Ok(request)
}

/// Constant-time comparison, so the check leaks nothing about how much of a guess was right.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_admin(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.admin_token_sha256 else {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "the admin API is off: set admin_token_file"})),
        )
            .into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| <[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())));
    match presented {
        Some(digest) if same_digest(&digest, &expected) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid admin bearer token is required"})),
        )
            .into_response(),
    }
}

/// Runs a handler's body on tokio's blocking pool and answers with what it returns.
///
/// Every handler that takes the ledger, share-history or exchange lock, scans the ledger,
/// or writes to disk (the audit log, the ban list) goes through here. Those locks' holders
/// write to disk or scan up to a million shares; an async worker waiting on one would
/// stall every other request, `/health` included. The blocking pool is bounded by tokio
/// (512 threads) and the requests by `API_CONNECTIONS_MAX`.
pub(crate) async fn off_the_workers(body: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(body)
        .await
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"))
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Hashes per unit of share difficulty for the coin's algorithm: 2^256 / difficulty-1 target.
fn hashes_per_difficulty(algorithm: Algorithm) -> f64 {
    2f64.powi(256) / algorithm.difficulty_one().to_f64()
}

fn hashrate(difficulty_sum: f64, window_s: u64, algorithm: Algorithm) -> f64 {
    difficulty_sum * hashes_per_difficulty(algorithm) / window_s.max(1) as f64
}

/// Pool figures over each hashrate window: hashrate, miners, workers, shares.
fn pool_windows(state: &ApiState, now: u64) -> Value {
    let history = state.payouts.history.lock().expect("history lock");
    let mut windows = serde_json::Map::new();
    for window_s in HASHRATE_WINDOWS_S {
        let activity = history.activity(now, window_s * 1000);
        let difficulty: f64 = activity.values().map(|a| a.difficulty_sum).sum();
        windows.insert(
            format!("{window_s}s"),
            json!({
                "hashrate": hashrate(difficulty, window_s, state.algorithm),
                "miners": activity.len(),
                "workers": activity.values().map(|a| a.workers.len()).sum::<usize>(),
                "shares": activity.values().map(|a| a.shares).sum::<u64>(),
            }),
        );
    }
    Value::Object(windows)
}

fn stats_json(state: &ApiState) -> Value {
    let totals = state.pool.totals();
    let settings = state
        .payouts
        .settings
        .read()
        .expect("settings lock")
        .clone();
    let (pps_credited, pool_account) = {
        let ledger = &state.payouts.ledger_reader;
        (
            ledger.pps_credited().unwrap_or(0),
            ledger.balances(&settings.fee_account).unwrap_or_default(),
        )
    };
    let windows = pool_windows(state, now_ms());
    let block_value = state.pool.block_value().unwrap_or_default();
    json!({
        "shares_accepted": totals.shares_accepted,
        "shares_accepted_by_protocol": totals.shares_accepted_by_protocol,
        "sv2_authority_key": state.sv2_authority_key,
        "quic_datagrams_forwarded": totals.quic_datagrams_forwarded,
        "shares_rejected": totals.shares_rejected,
        "shares_rejected_by_code": totals.shares_rejected_by_code,
        "blocks_found": state.pool.blocks_found.load(Relaxed),
        "blocks_rejected": state.pool.blocks_rejected.load(Relaxed),
        "block_candidates": totals.block_candidates,
        "connections": totals.connections,
        "height": state.pool.height.load(Relaxed),
        "accepted_difficulty_sum": totals.accepted_difficulty_sum,
        "uptime_s": state.pool.started_at.elapsed().as_secs(),
        "hashrate": windows["600s"]["hashrate"],
        "windows": windows,
        "network": {
            "difficulty": block_value.network_difficulty,
            "subsidy": block_value.subsidy,
            "fees_mean": block_value.fees_mean,
        },
        "payout_scheme": format!("{:?}", settings.scheme),
        "pool_fee_ppm": settings.pool_fee_ppm,
        "payout_min": settings.policy.payout_min,
        // PPS/FPPS: what the pool has credited for shares against what its blocks brought.
        "pps": {
            "credited": pps_credited,
            "rewards_received": pool_account.total(),
            "balance": pool_account.total() as i128 - pps_credited as i128,
        },
    })
}

/// Liveness, and the fact a load balancer or an alert must act on: whether every data
/// plane's share log can write. While one cannot (a full disk), its shares are refused,
/// and this answers 503 with the reason.
async fn health(State(state): State<ApiState>) -> (StatusCode, &'static str) {
    if state.pool.totals().share_log_failing_planes > 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: a share log cannot write; shares are refused\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn stats(State(state): State<ApiState>) -> Response {
    match cached_stats(&state).await {
        Some(stats) => Json(stats).into_response(),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "stats failed"),
    }
}

/// The pool's stats, computed at most once per `STATS_CACHE_MS` whatever the number of
/// callers (the HTTP route and every live-feed client): computing them scans the share
/// history, up to a million shares, off the async workers.
async fn cached_stats(state: &ApiState) -> Option<Value> {
    let mut cached = state.stats_cache.lock().await;
    if let Some((at, stats)) = cached.as_ref() {
        if at.elapsed() < Duration::from_millis(STATS_CACHE_MS) {
            return Some(stats.clone());
        }
    }
    let computing = state.clone();
    let stats = tokio::task::spawn_blocking(move || stats_json(&computing))
        .await
        .ok()?;
    *cached = Some((std::time::Instant::now(), stats.clone()));
    Some(stats)
}

/// The blocks as the public sees them: a rejection's reason is the node's own short
/// token (BIP22: `bad-txns-inputs-missingorspent`, `inconclusive`, ...) or the pool's
/// category (`stale-prevblk`, `unsubmittable`), never an error text, which can name the
/// node's RPC URL or wallet. `/api/v1/admin/blocks` has the whole reason.
async fn blocks_list(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    blocks_page(&state, &page, |block| {
        let mut shown = json!(block);
        if let Some(reason) = &block.rejected_reason {
            shown["rejected_reason"] = json!(public_reject_reason(reason));
        }
        shown
    })
}

async fn admin_blocks(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    blocks_page(&state, &page, |block| json!(block))
}

/// One page of a list: `limit` items at most (`API_LIST_ITEMS_MAX`), after `cursor`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

impl Page {
    /// The cursor as a batch id (the last one a page of payments showed); 400 if it is
    /// not one.
    #[allow(clippy::result_large_err)] // The error is the answer itself.
    fn batch_cursor(&self) -> Result<Option<u64>, Response> {
        self.cursor
            .as_deref()
            .map(str::parse::<u64>)
            .transpose()
            .map_err(|_| error(StatusCode::BAD_REQUEST, "unknown cursor"))
    }

    fn limit(&self) -> usize {
        self.limit
            .unwrap_or(API_LIST_ITEMS_DEFAULT)
            .clamp(1, API_LIST_ITEMS_MAX)
    }
}

/// A page as a JSON array, with the next page's cursor in `NEXT_CURSOR_HEADER` when
/// the page is full (more may follow).
fn page_response(items: Vec<Value>, limit: usize, next_cursor: Option<String>) -> Response {
    let full = items.len() == limit;
    let mut response = Json(items).into_response();
    if let (true, Some(cursor)) = (full, next_cursor) {
        if let Ok(value) = axum::http::HeaderValue::from_str(&cursor) {
            response.headers_mut().insert(NEXT_CURSOR_HEADER, value);
        }
    }
    response
}

/// The blocks the pool submitted, newest first (by the end of their round), a page at a
/// time; the cursor is the hash of a page's last block.
fn blocks_page(state: &ApiState, page: &Page, show: impl Fn(&BlockRecord) -> Value) -> Response {
    let mut blocks = state.blocks.submitted();
    blocks.reverse();
    let start = match &page.cursor {
        None => 0,
        Some(hash) => match blocks.iter().position(|block| &block.hash == hash) {
            Some(place) => place + 1,
            None => return error(StatusCode::BAD_REQUEST, "unknown cursor"),
        },
    };
    let limit = page.limit();
    let shown: Vec<&BlockRecord> = blocks.iter().skip(start).take(limit).collect();
    let next = shown.last().map(|block| block.hash.clone());
    page_response(shown.into_iter().map(show).collect(), limit, next)
}

/// A rejection reason's leading token, when it is one (lower case, digits, `-`, `_`, at
/// most 64 bytes), or `rejected`.
pub(crate) fn public_reject_reason(reason: &str) -> String {
    let token = reason.split(':').next().unwrap_or_default().trim();
    let is_token = !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if is_token {
        token.to_string()
    } else {
        "rejected".to_string()
    }
}

/// A payment as the public API and the live feed show it: the node's or the wallet's
/// error text (which can name the node's URL or wallet) stays in the admin API and the
/// log; the public sees a fixed reason for the state.
pub(crate) fn payment_json(intent: &otedama_ledger::ledger::PayoutIntent) -> Value {
    use otedama_ledger::ledger::IntentState;
    let mut shown = payment_json_full(intent);
    let reason = match intent.state {
        IntentState::Open => Some("not taken by the node yet; retrying"),
        IntentState::Sent => Some("held for the operator"),
        IntentState::Failed => Some("double-spent"),
        IntentState::Cancelled => Some("cancelled by the operator"),
        IntentState::Confirmed => None,
    }
    .filter(|_| intent.last_error.is_some());
    shown["last_error"] = json!(reason);
    shown
}

/// A payment with everything the pool knows of it, for the admin API.
pub(crate) fn payment_json_full(intent: &otedama_ledger::ledger::PayoutIntent) -> Value {
    json!({
        "batch_id": intent.batch_id,
        "txid": intent.txid,
        "state": intent.state.name(),
        "created_at_ms": intent.created_at_ms,
        "sent_at_ms": intent.sent_at_ms,
        "total": intent.outputs.values().sum::<u64>(),
        "outputs": intent.outputs,
        "broadcast_attempts": intent.broadcast_attempts,
        "last_error": intent.last_error,
        "confirmations": intent.confirmations,
        "paid_by_txid": intent.paid_by_txid,
        "settled_at_ms": intent.settled_at_ms,
    })
}

async fn payments_list(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    off_the_workers(move || payments_shown(&state, &page, payment_json)).await
}

async fn admin_payments(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    off_the_workers(move || payments_shown(&state, &page, payment_json_full)).await
}

/// Payout batches, newest first, a page at a time; the cursor is the batch id of a
/// page's last batch. Only the page's batches are read from the ledger.
fn payments_shown(
    state: &ApiState,
    page: &Page,
    show: fn(&otedama_ledger::ledger::PayoutIntent) -> Value,
) -> Response {
    let before = match page.batch_cursor() {
        Ok(before) => before,
        Err(response) => return response,
    };
    let limit = page.limit();
    match state
        .payouts
        .ledger_reader
        .intents_newest_first(before, limit)
    {
        Ok(intents) => {
            let next = intents.last().map(|intent| intent.batch_id.to_string());
            page_response(intents.iter().map(show).collect(), limit, next)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The pool-wide payout threshold; a miner's own setting may only raise it.
fn pool_payout_min(state: &ApiState) -> u64 {
    state
        .payouts
        .settings
        .read()
        .expect("settings lock")
        .policy
        .payout_min
}

/// The account an address names: the address in canonical form, so every encoding of one
/// output script finds the same balances, bans, KYC record and key. The 400 answer for an
/// address the pool could never pay.
#[allow(clippy::result_large_err)] // The error is the answer itself, built once, at once.
pub(crate) fn canonical_account(state: &ApiState, address: &str) -> Result<String, Response> {
    canonical_address_for(&state.address_rule, address)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn miner(State(state): State<ApiState>, Path(address): Path<String>) -> Response {
    off_the_workers(move || {
        let address = match canonical_account(&state, &address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
        let now = now_ms();
        let (balances, payout_min, payouts) = {
            let ledger = &state.payouts.ledger_reader;
            (
                ledger.balances(&address).unwrap_or_default(),
                ledger.payout_min(&address).ok().flatten(),
                ledger
                    .payouts_of(&address, None, API_LIST_ITEMS_DEFAULT)
                    .unwrap_or_default(),
            )
        };
        let payments: Vec<Value> = payouts.iter().map(miner_payment_json).collect();
        let (mut windows, mut workers) = (serde_json::Map::new(), BTreeMap::new());
        {
            let history = state.payouts.history.lock().expect("history lock");
            for window_s in HASHRATE_WINDOWS_S {
                let activity = history.activity(now, window_s * 1000);
                let mine = activity.get(address.as_str()).cloned().unwrap_or_default();
                windows.insert(
                    format!("{window_s}s"),
                    json!({"hashrate": hashrate(mine.difficulty_sum, window_s, state.algorithm), "shares": mine.shares}),
                );
                if window_s == 3600 {
                    for (name, (shares, last_ms)) in &mine.workers {
                        workers.insert(
                            name.clone(),
                            json!({"shares_1h": shares, "last_share_ms": last_ms}),
                        );
                    }
                }
            }
        }
        let pool_min = pool_payout_min(&state);
        Json(json!({
            "address": address,
            "balance_immature": balances.immature,
            "balance_mature": balances.mature,
            "balance_paying": balances.paying,
            "paid": balances.paid,
            "payout_min": payout_min.unwrap_or(pool_min).max(pool_min),
            "hashrate": windows["600s"]["hashrate"],
            "windows": windows,
            "workers": workers,
            "payments": payments,
        }))
        .into_response()
    })
    .await
}

/// One of a miner's payments, as its page shows it.
fn miner_payment_json(payout: &otedama_ledger::ledger::AccountPayout) -> Value {
    let intent = &payout.intent;
    json!({
        "batch_id": intent.batch_id,
        "txid": intent.txid,
        "amount": payout.amount,
        "state": intent.state.name(),
        "created_at_ms": intent.created_at_ms,
        "sent_at_ms": intent.sent_at_ms,
    })
}

/// A miner's payments, newest first, a page at a time (the miner's page shows the first
/// `API_LIST_ITEMS_DEFAULT`); the cursor is the batch id of a page's last payment. Only
/// the page's payments are read, through the account's own index.
async fn miner_payments(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    off_the_workers(move || {
        let address = match canonical_account(&state, &address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
        let before = match page.batch_cursor() {
            Ok(before) => before,
            Err(response) => return response,
        };
        let limit = page.limit();
        match state
            .payouts
            .ledger_reader
            .payouts_of(&address, before, limit)
        {
            Ok(payouts) => {
                let next = payouts.last().map(|p| p.intent.batch_id.to_string());
                page_response(
                    payouts.iter().map(miner_payment_json).collect(),
                    limit,
                    next,
                )
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    })
    .await
}

async fn miner_settings(State(state): State<ApiState>, Path(address): Path<String>) -> Response {
    let address = match canonical_account(&state, &address) {
        Ok(canonical) => canonical,
        Err(response) => return response,
    };
    let own = state
        .payouts
        .ledger_reader
        .payout_min(&address)
        .ok()
        .flatten();
    let pool_min = pool_payout_min(&state);
    Json(json!({
        "address": address,
        "payout_min": own.unwrap_or(pool_min).max(pool_min),
        "payout_min_own": own,
        "payout_min_pool": pool_min,
    }))
    .into_response()
}

fn audit(state: &ApiState, action: &str, detail: Value) {
    audit_as(state, "admin", action, detail)
}

/// `audit_as` from an async handler: the append is a synced write, so it runs on the
/// blocking pool; the handler answers after it is written.
pub(crate) async fn audit_from_async(
    state: &ApiState,
    actor: &'static str,
    action: &'static str,
    detail: Value,
) {
    let state = state.clone();
    let _ = tokio::task::spawn_blocking(move || audit_as(&state, actor, action, detail)).await;
}

/// Appends to the audit log as `actor` (`admin`, `miner`, `provider`).
pub(crate) fn audit_as(state: &ApiState, actor: &str, action: &str, detail: Value) {
    if let Err(e) = state.audit.append(now_ms(), actor, action, detail) {
        tracing::error!(error = %e, action, "cannot write the audit log");
    }
}

/// Sends `request` (built around its ticket and reply channel) to the payout thread, which
/// holds the wallet, and waits for its answer. Past `PAYOUT_RUN_TIMEOUT_S` the caller hears
/// exactly what happened: 504 if the request never started (and now never will: its ticket
/// is abandoned), 202 if it started and had not finished within the wait (the payout
/// thread audits its outcome, whoever still waits for it).
async fn ask_payout_thread<T: Send + 'static>(
    state: &ApiState,
    request: impl FnOnce(RequestTicket, crossbeam_channel::Sender<Result<T, String>>) -> PayoutRequest,
) -> Result<Result<T, String>, Response> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    let ticket = RequestTicket::default();
    // However this handler ends (the client gone, the connection's lifetime over, the
    // answer in), a request that has not started by then never will: nobody would hear
    // its outcome. After a start, abandoning is a no-op.
    struct AbandonUnlessStarted(RequestTicket);
    impl Drop for AbandonUnlessStarted {
        fn drop(&mut self) {
            self.0.abandon();
        }
    }
    let _abandon_on_drop = AbandonUnlessStarted(ticket.clone());
    // Never a blocking send on an async worker: with the queue full (the payout thread
    // busy on a slow wallet), the caller hears 503 at once.
    match state
        .payouts
        .run_now
        .try_send(request(ticket.clone(), reply))
    {
        Ok(()) => {}
        Err(crossbeam_channel::TrySendError::Full(_)) => return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the payout thread has its queue full (PAYOUT_REQUESTS_QUEUED_MAX); try again later",
        )),
        Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the payout thread is not running",
            ))
        }
    }
    let outcome = tokio::task::spawn_blocking(move || {
        answer.recv_timeout(Duration::from_secs(PAYOUT_RUN_TIMEOUT_S))
    })
    .await;
    match outcome {
        Ok(Ok(answer)) => Ok(answer),
        _ if ticket.abandon() => Err(error(
            StatusCode::GATEWAY_TIMEOUT,
            "the payout thread was busy and did not start this request in time; it will not run",
        )),
        _ => Err((
            StatusCode::ACCEPTED,
            Json(json!({
                "state": "running",
                "detail": "started, not finished within the wait; its outcome goes to the audit log (payouts.ran, payouts.cancelled or payouts.cancel_refused)",
            })),
        )
            .into_response()),
    }
}

/// Cancels a pending payout batch whose transaction the node can never take (its inputs
/// are spent or gone); 409 while it can still be mined.
async fn admin_cancel_payout(State(state): State<ApiState>, Path(batch_id): Path<u64>) -> Response {
    let asked = ask_payout_thread(&state, |ticket, reply| PayoutRequest::Cancel {
        ticket,
        batch_id,
        reply,
    })
    .await;
    match asked {
        Ok(Ok(reason)) => {
            Json(json!({"batch_id": batch_id, "state": "cancelled", "reason": reason}))
                .into_response()
        }
        Ok(Err(refusal)) => error(StatusCode::CONFLICT, refusal),
        Err(response) => response,
    }
}

async fn admin_run_payout(State(state): State<ApiState>) -> Response {
    audit_from_async(&state, "admin", "payouts.run", json!({})).await;
    let asked =
        ask_payout_thread(&state, |ticket, reply| PayoutRequest::Run { ticket, reply }).await;
    match asked {
        // The payout thread audited the outcome (`payouts.ran`).
        Ok(Ok(report)) => {
            let batch = report.batch.as_ref().map(payment_json_full);
            Json(json!({
                "batch": batch,
                "completed": report.completed,
                "still_open": report.still_open,
            }))
            .into_response()
        }
        Ok(Err(message)) => error(StatusCode::BAD_GATEWAY, message),
        Err(response) => response,
    }
}

fn config_json(settings: &PayoutSettings) -> Value {
    json!({
        "payout_scheme": format!("{:?}", settings.scheme),
        "pool_fee_percent": settings.pool_fee_ppm as f64 / 10_000.0,
        "fee_account": settings.fee_account,
        "payout_interval_s": settings.payout_interval_s,
        "payout_min": settings.policy.payout_min,
    })
}

async fn admin_config(State(state): State<ApiState>) -> Response {
    Json(config_json(
        &state.payouts.settings.read().expect("settings lock"),
    ))
    .into_response()
}

/// Changes take effect at once and last until restart; the config file is the lasting record.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigChange {
    pool_fee_percent: Option<f64>,
    payout_min: Option<String>,
    payout_interval_s: Option<u64>,
    pplns_window_factor: Option<f64>,
    pplnt_presence_min: Option<f64>,
}

async fn admin_set_config(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    off_the_workers(move || {
        let change: ConfigChange = match serde_json::from_slice(&body) {
            Ok(change) => change,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        use otedama_ledger::schemes::Scheme;
        let mut settings = state
            .payouts
            .settings
            .read()
            .expect("settings lock")
            .clone();
        if let Some(percent) = change.pool_fee_percent {
            if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "pool_fee_percent must lie between 0 and 100",
                );
            }
            settings.pool_fee_ppm = (percent * 10_000.0).round() as u64;
        }
        if let Some(text) = &change.payout_min {
            match Amount::parse(text).map(Amount::units) {
                Ok(amount) => settings.policy.payout_min = amount,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("payout_min: {e}")),
            }
        }
        if let Some(interval) = change.payout_interval_s {
            if interval == 0 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "payout_interval_s must be at least 1",
                );
            }
            settings.payout_interval_s = interval;
        }
        match (
            &mut settings.scheme,
            change.pplns_window_factor,
            change.pplnt_presence_min,
        ) {
            (_, Some(f), _) if !(f.is_finite() && f > 0.0) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "pplns_window_factor must be positive",
                )
            }
            (_, _, Some(p)) if !(0.0..=1.0).contains(&p) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "pplnt_presence_min must lie between 0 and 1",
                )
            }
            (Scheme::Pplns { window_factor }, Some(f), _) => *window_factor = f,
            (Scheme::Pplnt { presence_min }, _, Some(p)) => *presence_min = p,
            _ => {}
        }
        *state.payouts.settings.write().expect("settings lock") = settings.clone();
        let detail = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        audit(&state, "config.set", detail);
        Json(config_json(&settings)).into_response()
    })
    .await
}

/// Seconds of share history that make a miner "active" in the admin list.
const ADMIN_ACTIVE_WINDOW_S: u64 = 3600;

/// Every account the ledger holds, every miner seen in the last hour and every banned
/// address, with balances, active workers and whether the address is banned.
async fn admin_miners(State(state): State<ApiState>) -> Response {
    off_the_workers(move || {
        let balances = state.payouts.ledger_reader.all_balances();
        let mut balances = match balances {
            Ok(all) => all,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let activity = state
            .payouts
            .history
            .lock()
            .expect("history lock")
            .activity(now_ms(), ADMIN_ACTIVE_WINDOW_S * 1000);
        let bans = state.bans.current();
        let listed = activity
            .keys()
            .map(|address| address.to_string())
            .chain(bans.addresses.iter().cloned());
        for address in listed {
            balances.entry(address).or_default();
        }
        Json(
            balances
                .into_iter()
                .map(|(account, b)| {
                    let workers = activity
                        .get(account.as_str())
                        .map_or(0, |a| a.workers.len());
                    json!({
                        "address": account,
                        "balance_immature": b.immature,
                        "balance_mature": b.mature,
                        "balance_paying": b.paying,
                        "paid": b.paid,
                        "workers_active": workers,
                        "banned": bans.addresses.contains(&account),
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response()
    })
    .await
}

async fn admin_bans(State(state): State<ApiState>) -> Response {
    // The ban store's lock is held across its file's fsync by a change.
    off_the_workers(move || Json(&state.bans.operator_list()).into_response()).await
}

async fn admin_ban(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    off_the_workers(move || change_bans(state, body, true)).await
}

async fn admin_unban(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    off_the_workers(move || change_bans(state, body, false)).await
}

/// Adds or removes bans. Addresses must be payable addresses of the pool's coin and
/// network, so a typo cannot ban nothing while looking like it worked.
fn change_bans(state: ApiState, body: axum::body::Bytes, ban: bool) -> Response {
    let change: BanChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut change = change;
    let mut canonical = std::collections::BTreeSet::new();
    for address in &change.addresses {
        match canonical_account(&state, address) {
            Ok(address) => canonical.insert(address),
            Err(refusal) => return refusal,
        };
    }
    change.addresses = canonical.into_iter().collect();
    match state.bans.apply(&change, ban) {
        Ok(list) => {
            let action = if ban { "bans.add" } else { "bans.remove" };
            audit(&state, action, json!(change));
            tracing::info!(
                action,
                addresses = change.addresses.len(),
                networks = change.networks.len(),
                "ban list changed"
            );
            Json(&*list).into_response()
        }
        Err(e @ crate::bans::BanError::TooMany(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MinerSettingsChange {
    payout_min: String,
}

async fn admin_set_miner_settings(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    off_the_workers(move || {
        let address = match canonical_account(&state, &address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
        let change: MinerSettingsChange = match serde_json::from_slice(&body) {
            Ok(change) => change,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let amount = match Amount::parse(&change.payout_min).map(Amount::units) {
            Ok(amount) => amount,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("payout_min: {e}")),
        };
        let pool_min = pool_payout_min(&state);
        if amount < pool_min {
            return error(
                StatusCode::BAD_REQUEST,
                format!("payout_min may not go below the pool's {pool_min}"),
            );
        }
        if let Err(e) = state
            .payouts
            .ledger
            .lock()
            .expect("ledger lock")
            .set_payout_min(&address, amount)
        {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        audit(
            &state,
            "miner.settings.set",
            json!({"address": address, "payout_min": amount}),
        );
        Json(json!({"address": address, "payout_min": amount})).into_response()
    })
    .await
}

async fn admin_audit(State(state): State<ApiState>) -> Response {
    crate::api::off_the_workers(
        move || match state.audit.recent(AUDIT_ENTRIES_PER_REQUEST_MAX) {
            Ok(entries) => Json(entries).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    )
    .await
}

async fn websocket(State(state): State<ApiState>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(place) = state.ws_clients.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the live feed has its {WS_CLIENTS_MAX} clients; try again later"),
        );
    };
    upgrade
        .max_message_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| async move {
            feed(state, socket).await;
            drop(place);
        })
}

/// Pool stats every few seconds, and new-block and payment events as they happen.
async fn feed(state: ApiState, mut socket: WebSocket) {
    let mut events = state.pool.subscribe_events();
    let mut ticker = tokio::time::interval(Duration::from_secs(WS_STATS_INTERVAL_S));
    loop {
        let message = tokio::select! {
            _ = ticker.tick() => {
                let stats = cached_stats(&state).await;
                json!({"type": "stats", "stats": stats.unwrap_or(Value::Null)})
            }
            event = events.recv() => match feed_event(event) {
                Some(message) => message,
                None => return,
            },
            // The client's close (or its connection's end) frees its place at once, not at
            // the next send.
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(WS_SEND_TIMEOUT_S),
            socket.send(Message::Text(message.to_string().into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

/// What the live feed sends for an event from the pool: the event itself, or, for a
/// client that fell more than `EVENTS_QUEUED_MAX` events behind, one `lagged` message with
/// the count it missed, so it knows to read the REST API again instead of trusting a feed
/// with a hole in it. `None` once the pool's event channel is closed.
pub(crate) fn feed_event(
    event: Result<Value, tokio::sync::broadcast::error::RecvError>,
) -> Option<Value> {
    match event {
        Ok(event) => Some(event),
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
            Some(json!({"type": "lagged", "missed": missed}))
        }
        Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
    }
}

async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from(include_str!("dashboard.html")),
    )
        .into_response()
}

async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    off_the_workers(move || {
        let text = crate::metrics::render(&state);
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::{
        public_reject_reason, Page, API_LIST_ITEMS_DEFAULT, API_LIST_ITEMS_MAX,
        AUDIT_ENTRIES_PER_REQUEST_MAX,
    };

    /// `/api/v1/admin/audit` shows the newest `AUDIT_ENTRIES_PER_REQUEST_MAX` entries: with
    /// one more in the log, exactly the oldest is left out.
    #[test]
    fn the_audit_route_shows_its_limit_of_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let audit = crate::audit::AuditLog::open(dir.path()).unwrap();
        for at_ms in 0..=AUDIT_ENTRIES_PER_REQUEST_MAX as u64 {
            audit
                .append(at_ms, "admin", "test", serde_json::json!({}))
                .unwrap();
        }
        let shown = audit.recent(AUDIT_ENTRIES_PER_REQUEST_MAX).unwrap();
        assert_eq!(shown.len(), AUDIT_ENTRIES_PER_REQUEST_MAX);
        assert_eq!(shown[0].sequence, AUDIT_ENTRIES_PER_REQUEST_MAX as u64);
        assert_eq!(shown.last().unwrap().sequence, 1);
    }

    /// A page holds `limit` items up to `API_LIST_ITEMS_MAX`; more asked gets the maximum.
    #[test]
    fn a_page_is_capped_at_its_limit() {
        let page = |limit| Page {
            limit,
            cursor: None,
        };
        assert_eq!(page(None).limit(), API_LIST_ITEMS_DEFAULT);
        assert_eq!(page(Some(API_LIST_ITEMS_MAX)).limit(), API_LIST_ITEMS_MAX);
        assert_eq!(
            page(Some(API_LIST_ITEMS_MAX + 1)).limit(),
            API_LIST_ITEMS_MAX
        );
        assert_eq!(page(Some(0)).limit(), 1);
    }

    /// Issue 16: public reasons never carry an error text (a node URL, a wallet path).
    #[test]
    fn public_reasons_are_tokens_never_error_texts() {
        for (reason, shown) in [
            (
                "bad-txns-inputs-missingorspent",
                "bad-txns-inputs-missingorspent",
            ),
            ("inconclusive", "inconclusive"),
            (
                "stale-prevblk: the pool's tip moved on before submission",
                "stale-prevblk",
            ),
            ("unsubmittable: its job is not stored", "unsubmittable"),
            (
                "node at http://127.0.0.1:9332/wallet/otedama is unreachable",
                "rejected",
            ),
            (
                "assembly-failed: /var/lib/otedama/jobs: I/O error",
                "assembly-failed",
            ),
            ("", "rejected"),
        ] {
            assert_eq!(public_reject_reason(reason), shown, "{reason}");
        }
    }
}
