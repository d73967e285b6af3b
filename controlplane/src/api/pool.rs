//! The public routes: pool stats, `/health`, blocks, payments, and each miner's balances,
//! hash rate, payments and settings. Reads only, from snapshots and the ledger's reader:
//! none waits for the payout thread.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use otedama_kernels::Algorithm;
use otedama_shared::Protocol;

use super::*;
use otedama_chain::blocks::BlockRecord;

/// Hashes per unit of share difficulty for the coin's algorithm: 2^256 / difficulty-1 target.
pub(crate) fn hashes_per_difficulty(algorithm: Algorithm) -> f64 {
    2f64.powi(256) / algorithm.difficulty_one().to_f64()
}

pub(crate) fn hashrate(difficulty_sum: f64, window_s: u64, algorithm: Algorithm) -> f64 {
    difficulty_sum * hashes_per_difficulty(algorithm) / window_s.max(1) as f64
}

/// Every miner's activity over each of `HASHRATE_WINDOWS_S`, in that order.
pub(crate) type ActivityWindows = Arc<Vec<BTreeMap<Arc<str>, otedama_ledger::shares::Activity>>>;

/// The miners' activity, computed at most once per `STATS_CACHE_MS` whatever the request
/// rate. A computation holds the share history's lock, which the payout thread needs to
/// read shares, for scans of up to `SHARE_HISTORY_MAX` shares: a crowd of scrapers on
/// `/api/v1/miners/{address}` then costs the payout thread one such hold a second, not
/// one per request. Called off the async workers.
pub(crate) fn activity_windows(state: &ApiState) -> ActivityWindows {
    let mut cached = state.activity_cache.lock().expect("activity cache lock");
    if let Some((at, windows)) = cached.as_ref() {
        if at.elapsed() < Duration::from_millis(STATS_CACHE_MS) {
            return windows.clone();
        }
    }
    let now = now_ms();
    let windows: Vec<_> = {
        let history = state.payouts.history.lock().expect("history lock");
        HASHRATE_WINDOWS_S
            .iter()
            .map(|window_s| history.activity(now, window_s * 1000))
            .collect()
    };
    let windows = Arc::new(windows);
    *cached = Some((std::time::Instant::now(), windows.clone()));
    windows
}

/// Pool figures over each hashrate window: hashrate, miners, workers, shares.
pub(crate) fn pool_windows(state: &ApiState) -> Value {
    let activities = activity_windows(state);
    let mut windows = serde_json::Map::new();
    for (window_s, activity) in HASHRATE_WINDOWS_S.into_iter().zip(activities.iter()) {
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

pub(crate) fn stats_json(state: &ApiState) -> Value {
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
    let windows = pool_windows(state);
    let block_value = state.pool.block_value().unwrap_or_default();
    json!({
        "shares_accepted": totals.shares_accepted,
        "shares_accepted_by_protocol": totals.shares_accepted_by_protocol,
        "sv2_authority_key": state.sv2_authority_key,
        "connect": &*state.connect,
        "quic_datagrams_forwarded": totals.quic_datagrams_forwarded,
        "shares_rejected": totals.shares_rejected,
        "shares_rejected_by_code": totals.shares_rejected_by_code,
        "blocks_found": state.pool.blocks_found.load(Relaxed),
        "blocks_rejected": state.pool.blocks_rejected.load(Relaxed),
        "block_candidates": totals.block_candidates,
        "connections": totals.connections,
        "connections_by_protocol": totals.connections_by_protocol,
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
pub(crate) async fn health(State(state): State<ApiState>) -> (StatusCode, &'static str) {
    if state.pool.totals().share_log_failing_planes > 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: a share log cannot write; shares are refused\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

pub(crate) async fn stats(State(state): State<ApiState>) -> Response {
    match cached_stats(&state).await {
        Some(stats) => Json(stats).into_response(),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "stats failed"),
    }
}

/// The pool's stats, computed at most once per `STATS_CACHE_MS` whatever the number of
/// callers (the HTTP route and every live-feed client): computing them scans the share
/// history, up to a million shares, off the async workers.
pub(crate) async fn cached_stats(state: &ApiState) -> Option<Value> {
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

/// The blocks as the public sees them (`views::block_json`).
pub(crate) async fn blocks_list(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    off_the_workers(move || {
        let efforts = block_efforts(&state, &state.blocks.submitted());
        blocks_page(&state, &page, |block| {
            let mut shown = block_json(block);
            shown["effort"] = json!(efforts.get(&block.hash));
            shown
        })
    })
    .await
}

/// Each accepted block's effort: the difficulty of its round's shares (after the previous
/// accepted block's share, through its own) over the network difficulty; 1.0 is a round
/// of exactly the expected work, below is luck. Only rounds the share history still holds
/// whole have one. An effort from the ledger's round ends never changes, so it is worked
/// out once per block (`ApiState::efforts`): a crowd reloading the blocks does not hold
/// the share history's lock, which crediting needs, once per request.
fn block_efforts(
    state: &ApiState,
    blocks: &[BlockRecord],
) -> std::collections::HashMap<String, f64> {
    let mut accepted: Vec<&BlockRecord> = blocks
        .iter()
        .filter(|block| block.rejected_reason.is_none())
        .collect();
    accepted.sort_by_key(|block| block.round_end_ms());
    let mut known = state.efforts.lock().expect("efforts lock");
    let ledger = &state.payouts.ledger_reader;
    let round_end = |block: &BlockRecord| ledger.round_end(&block.hash).ok().flatten();
    let mut history = None;
    for pair in accepted.windows(2) {
        let (previous, block) = (pair[0], pair[1]);
        if known.contains_key(&block.hash) || block.network_difficulty <= 0.0 {
            continue;
        }
        // Both ends as the ledger recorded them when it credited the blocks; a block not
        // credited yet has no effort until it is.
        let (Some(after), Some(through)) = (round_end(previous), round_end(block)) else {
            continue;
        };
        let history =
            history.get_or_insert_with(|| state.payouts.history.lock().expect("history lock"));
        if let Some(difficulty) = history.difficulty_between(after, through) {
            known.insert(block.hash.clone(), difficulty / block.network_difficulty);
        }
    }
    accepted
        .iter()
        .filter_map(|block| Some((block.hash.clone(), *known.get(&block.hash)?)))
        .collect()
}

/// The blocks the pool submitted, newest first (by the end of their round), a page at a
/// time; the cursor is the hash of a page's last block. It reads the whole block store,
/// so it runs off the async workers.
pub(crate) fn blocks_page(
    state: &ApiState,
    page: &Page,
    show: impl Fn(&BlockRecord) -> Value,
) -> Response {
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

pub(crate) async fn payments_list(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    off_the_workers(move || payments_shown(&state, &page, payment_json)).await
}

/// Payout batches, newest first, a page at a time; the cursor is the batch id of a
/// page's last batch. Only the page's batches are read from the ledger.
pub(crate) fn payments_shown(
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
pub(crate) fn pool_payout_min(state: &ApiState) -> u64 {
    state
        .payouts
        .settings
        .read()
        .expect("settings lock")
        .policy
        .payout_min
}

pub(crate) async fn miner(State(state): State<ApiState>, Path(address): Path<String>) -> Response {
    off_the_workers(move || {
        let address = match canonical_account(&state, &address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
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
            let activities = activity_windows(&state);
            for (window_s, activity) in HASHRATE_WINDOWS_S.into_iter().zip(activities.iter()) {
                let mine = activity.get(address.as_str()).cloned().unwrap_or_default();
                windows.insert(
                    format!("{window_s}s"),
                    json!({"hashrate": hashrate(mine.difficulty_sum, window_s, state.algorithm), "shares": mine.shares}),
                );
                if window_s == 3600 {
                    for (name, worker) in &mine.workers {
                        workers.insert(
                            name.clone(),
                            json!({
                                "shares_1h": worker.shares,
                                "hashrate_1h": hashrate(worker.difficulty_sum, window_s, state.algorithm),
                                "last_share_ms": worker.last_share_ms,
                                "difficulty": worker.last_difficulty,
                                "protocol": worker.protocol.map(Protocol::as_str),
                            }),
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
pub(crate) fn miner_payment_json(payout: &otedama_ledger::ledger::AccountPayout) -> Value {
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
pub(crate) async fn miner_payments(
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

pub(crate) async fn miner_settings(
    State(state): State<ApiState>,
    Path(address): Path<String>,
) -> Response {
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

/// `?span=1h|24h|7d` of the hash-rate charts (`hashrate_history::CHART_SPANS`); 1h unless
/// given.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ChartSpan {
    span: Option<String>,
}

impl ChartSpan {
    /// The span's name and length, or `None` for a span not offered.
    fn seconds(&self) -> Option<(&'static str, u64)> {
        let wanted = self.span.as_deref().unwrap_or("1h");
        crate::hashrate_history::CHART_SPANS
            .into_iter()
            .find(|(name, _)| *name == wanted)
    }
}

fn unknown_span() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "span must be one of 1h, 24h and 7d",
    )
}

/// A chart's answer: the span, the sample interval and the points as `[time_s, H/s]`.
fn chart_response(
    name: &str,
    interval_s: u64,
    points: Result<Vec<(u64, f64)>, rocksdb::Error>,
) -> Response {
    match points {
        Ok(points) => Json(json!({
            "span": name,
            "sample_interval_s": interval_s,
            "points": points.iter().map(|(at_s, hashrate)| json!([at_s, hashrate])).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/hashrate?span=`: the pool's hash rate over the span, one sample per
/// `hashrate_sample_interval_s` (each the rate over the 10 minutes before it).
pub(crate) async fn pool_hashrate(
    State(state): State<ApiState>,
    axum::extract::Query(span): axum::extract::Query<ChartSpan>,
) -> Response {
    let Some((name, span_s)) = span.seconds() else {
        return unknown_span();
    };
    off_the_workers(move || {
        let now_s = otedama_shared::clock::now_s();
        let history = &state.hashrate_history;
        chart_response(
            name,
            history.pool_interval_s(),
            history.pool_series(now_s.saturating_sub(span_s), now_s + 1),
        )
    })
    .await
}

/// `GET /api/v1/miners/{address}/hashrate?span=`: the miner's hash rate over the span,
/// one sample per `HashrateHistory::miner_interval_s`.
pub(crate) async fn miner_hashrate(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    axum::extract::Query(span): axum::extract::Query<ChartSpan>,
) -> Response {
    let Some((name, span_s)) = span.seconds() else {
        return unknown_span();
    };
    off_the_workers(move || {
        let address = match canonical_account(&state, &address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
        let now_s = otedama_shared::clock::now_s();
        let history = &state.hashrate_history;
        chart_response(
            name,
            history.miner_interval_s(),
            history.miner_series(&address, now_s.saturating_sub(span_s), now_s + 1),
        )
    })
    .await
}
