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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use otedama_kernels::Algorithm;
use otedama_shared::address::{canonical_address_for, AddressRule};
use otedama_shared::http_path::{encode_path, normalize_path};

use crate::audit::AuditLog;
use crate::bans::BanStore;
use crate::payouts::runner::{PayoutRequest, PayoutSettings};
use crate::stats::{ApiRefusal, PoolState};
use otedama_chain::blocks::BlockStore;
use otedama_ledger::ledger::Ledger;
use otedama_ledger::shares::ShareHistory;
pub(crate) use otedama_shared::clock::now_ms;

pub mod admin;
pub mod compliance;
pub mod dex;
pub mod openapi;
pub mod pool;
pub mod views;
pub mod ws;

use admin::*;
use pool::*;
use views::*;
use ws::*;

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
    pub key_challenges: Arc<Mutex<crate::api::dex::KeyChallenges>>,
    /// The secret shared with the KYC provider, when one is configured.
    pub kyc_secret: Option<Arc<Vec<u8>>>,
    /// Places on the live feed (`WS_CLIENTS_MAX`).
    pub ws_clients: Arc<tokio::sync::Semaphore>,
    /// The last stats computed, and when (`STATS_CACHE_MS`).
    pub stats_cache: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Value)>>>,
    /// The miners' activity last computed, and when (`activity_windows`).
    pub activity_cache: Arc<Mutex<Option<(std::time::Instant, ActivityWindows)>>>,
    /// Cluster mode: whether this control plane leads (`otedama_cluster_leading`).
    pub leadership: Option<Arc<otedama_cluster::records::Leadership>>,
    /// The pool's and each miner's hash rate over time, for the charts.
    pub hashrate_history: Arc<crate::hashrate_history::HashrateHistory>,
    /// Each block's effort once worked out (`pool::block_efforts`), by hash.
    pub efforts: Arc<Mutex<std::collections::HashMap<String, f64>>>,
    /// How miners connect: every listening URL and the start difficulty
    /// (`connect_json`), shown on the web page.
    pub connect: Arc<Value>,
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
        .merge(crate::api::dex::admin_routes())
        .merge(crate::api::compliance::admin_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/blocks", get(blocks_list))
        .route("/api/v1/payments", get(payments_list))
        .route("/api/v1/miners/{address}", get(miner))
        .route("/api/v1/miners/{address}/settings", get(miner_settings))
        .route("/api/v1/miners/{address}/payments", get(miner_payments))
        .route("/api/v1/miners/{address}/hashrate", get(miner_hashrate))
        .route("/api/v1/hashrate", get(pool_hashrate))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ws", get(websocket))
        .route("/", get(dashboard))
        // A miner's own page, to bookmark: the same page, opened on the miner's view.
        .route("/miner/{address}", get(dashboard))
        .merge(crate::api::dex::routes())
        .merge(crate::api::compliance::routes())
        .merge(admin)
        .with_state(state)
}

/// How the API's connections are bounded. Production uses `ConnectionBounds::NAMED`, the
/// named limits; a test passes short ones to reach each edge in a second.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionBounds {
    connections_max: usize,
    per_address_max: u32,
    header_read_timeout: Duration,
    lifetime: Duration,
}

impl ConnectionBounds {
    pub(crate) const NAMED: ConnectionBounds = ConnectionBounds {
        connections_max: API_CONNECTIONS_MAX,
        per_address_max: API_CONNECTIONS_PER_IP_MAX,
        header_read_timeout: Duration::from_secs(API_HEADER_READ_TIMEOUT_S),
        lifetime: Duration::from_secs(API_CONNECTION_LIFETIME_S),
    };
}

/// Serves the API with its bounds: at most `API_CONNECTIONS_MAX` connections (and
/// `API_CONNECTIONS_PER_IP_MAX` per address), `API_HEADER_READ_TIMEOUT_S` to send headers
/// or the next request, `API_CONNECTION_LIFETIME_S` for a whole connection, bodies up to
/// `API_BODY_BYTES_MAX`.
pub async fn serve(address: SocketAddr, state: ApiState) -> anyhow::Result<()> {
    use tower::Layer;
    let pool = state.pool.clone();
    let counted = pool.clone();
    let app = middleware::map_request(normalize_request_path).layer(
        router(state)
            .layer(axum::extract::DefaultBodyLimit::max(API_BODY_BYTES_MAX))
            .layer(middleware::map_response(move |response: Response| {
                let counted = counted.clone();
                async move {
                    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        counted.api_refused(ApiRefusal::BodyTooLarge);
                    }
                    response
                }
            })),
    );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the API on {address}"))?;
    tracing::info!(%address, "API listening");
    serve_connections(listener, app, ConnectionBounds::NAMED, move |refusal| {
        pool.api_refused(refusal)
    })
    .await
}

/// Accepts and serves connections within `bounds`, telling `refused` of each one cut or
/// closed at a bound.
pub(crate) async fn serve_connections<App>(
    listener: tokio::net::TcpListener,
    app: App,
    bounds: ConnectionBounds,
    refused: impl Fn(ApiRefusal) + Clone + Send + Sync + 'static,
) -> anyhow::Result<()>
where
    App: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    App::Future: Send,
{
    let places = Arc::new(tokio::sync::Semaphore::new(bounds.connections_max));
    let per_address = otedama_shared::bans::AddressCounts::new(bounds.per_address_max);
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
            refused(ApiRefusal::ConnectionsPerIp);
            continue;
        };
        let app = app.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    tower::ServiceExt::oneshot(app.clone(), request.map(Body::new))
                });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout);
            let connection = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            match tokio::time::timeout(bounds.lifetime, connection).await {
                Ok(Err(error)) => {
                    if error.is_timeout() {
                        refused(ApiRefusal::HeaderTimeout);
                    }
                    tracing::debug!(%error, %peer, "API connection ended")
                }
                Err(_) => {
                    refused(ApiRefusal::ConnectionLifetime);
                    tracing::debug!(%peer, "API connection outlived its lifetime")
                }
                Ok(Ok(())) => {}
            }
            // Given back however the task ends (a handler's panic included).
            drop((address_place, place));
        });
    }
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

/// The account an address names: the address in canonical form, so every encoding of one
/// output script finds the same balances, bans, KYC record and key. The 400 answer for an
/// address the pool could never pay.
#[allow(clippy::result_large_err)] // The error is the answer itself, built once, at once.
pub(crate) fn canonical_account(state: &ApiState, address: &str) -> Result<String, Response> {
    canonical_address_for(&state.address_rule, address)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
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

/// The page's only script and style are its own, inline; it talks to this origin only
/// (its API and `/ws`), loads nothing from elsewhere and may not be framed.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
        ],
        Body::from(include_str!("dashboard.html")),
    )
        .into_response()
}

async fn openapi() -> Response {
    Json(openapi::document()).into_response()
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

/// Serves `app` within `bounds` on a loopback port, from a runtime thread of its own: for
/// tests of the accept loop and of routes over real sockets. Returns the port.
#[cfg(test)]
pub(crate) fn serve_on_loopback(
    app: Router,
    bounds: ConnectionBounds,
    refused: impl Fn(ApiRefusal) + Clone + Send + Sync + 'static,
) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            let _ = serve_connections(listener, app, bounds, refused).await;
        })
    });
    port
}

#[cfg(test)]
mod tests {
    use super::{
        public_reject_reason, serve_on_loopback, ConnectionBounds, Page, API_LIST_ITEMS_DEFAULT,
        API_LIST_ITEMS_MAX, AUDIT_ENTRIES_PER_REQUEST_MAX, REJECT_TOKEN_BYTES_MAX,
    };
    use crate::stats::ApiRefusal;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// The accept loop on a real socket with short bounds, and the refusals it counted.
    fn bounded_server(bounds: ConnectionBounds) -> (u16, Arc<Mutex<Vec<ApiRefusal>>>) {
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let counted = refusals.clone();
        let app = axum::Router::new().route(
            "/echo",
            axum::routing::post(|body: String| async move { body }),
        );
        let refused = move |refusal| counted.lock().unwrap().push(refusal);
        (serve_on_loopback(app, bounds, refused), refusals)
    }

    /// The refusals counted once there are `count` (the server counts a cut connection
    /// just after closing it), or as they are after 2 s.
    fn refusals_when(refusals: &Mutex<Vec<ApiRefusal>>, count: usize) -> Vec<ApiRefusal> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while refusals.lock().unwrap().len() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        refusals.lock().unwrap().clone()
    }

    /// Whether the server closed the connection (end of stream or reset) within `within`;
    /// `false` if it was still open then.
    fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        stream.set_read_timeout(Some(within)).unwrap();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }

    /// `API_CONNECTION_LIFETIME_S` at its edge (scaled down): a client trickling a body is
    /// still served just before its connection's lifetime and cut just after, counted as
    /// `connection_lifetime`; a whole request in time is answered.
    #[test]
    fn a_connection_is_cut_at_its_lifetime_and_not_before() {
        let lifetime = Duration::from_millis(1500);
        let (port, refusals) = bounded_server(ConnectionBounds {
            lifetime,
            header_read_timeout: Duration::from_secs(30),
            ..ConnectionBounds::NAMED
        });
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let opened = Instant::now();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
            .unwrap();
        // A byte every 100 ms: never idle, never done.
        while opened.elapsed() < lifetime - Duration::from_millis(300) {
            stream.write_all(b"a").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !closed_within(&mut stream, Duration::from_millis(100)),
            "cut before its lifetime"
        );
        assert!(refusals.lock().unwrap().is_empty());
        assert!(
            closed_within(&mut stream, lifetime + Duration::from_secs(3)),
            "not cut at its lifetime"
        );
        assert!(opened.elapsed() >= lifetime);
        assert_eq!(
            refusals_when(&refusals, 1),
            [ApiRefusal::ConnectionLifetime]
        );

        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hi"), "{answer}");
    }

    /// `API_HEADER_READ_TIMEOUT_S` and `API_CONNECTIONS_PER_IP_MAX` at their edges (scaled
    /// down): a silent client is closed at the header deadline, counted; an address at its
    /// cap has its next connection closed at accept, counted, and gets a place again once
    /// one of its own leaves.
    #[test]
    fn a_silent_client_is_closed_at_the_header_deadline_and_an_address_at_its_cap() {
        let header_read_timeout = Duration::from_millis(1000);
        let (port, refusals) = bounded_server(ConnectionBounds {
            header_read_timeout,
            per_address_max: 2,
            ..ConnectionBounds::NAMED
        });
        let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let opened = Instant::now();
        let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(
            closed_within(&mut third, Duration::from_millis(500)),
            "over the cap"
        );
        assert!(!closed_within(&mut first, Duration::from_millis(300)));
        assert!(closed_within(&mut first, Duration::from_secs(3)));
        assert!(opened.elapsed() >= header_read_timeout);
        assert!(closed_within(&mut second, Duration::from_secs(1)));
        assert_eq!(
            refusals_when(&refusals, 3),
            [
                ApiRefusal::ConnectionsPerIp,
                ApiRefusal::HeaderTimeout,
                ApiRefusal::HeaderTimeout
            ]
        );
        // Both places are free again: a whole request is answered.
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

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
        // At the edge: a token of `REJECT_TOKEN_BYTES_MAX` bytes is shown, one more is not.
        let longest = "a".repeat(REJECT_TOKEN_BYTES_MAX);
        assert_eq!(public_reject_reason(&format!("{longest}: detail")), longest);
        let longer = "a".repeat(REJECT_TOKEN_BYTES_MAX + 1);
        assert_eq!(public_reject_reason(&longer), "rejected");
    }
}
