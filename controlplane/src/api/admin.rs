//! The admin routes (behind the bearer token, see `require_admin`): payout runs and
//! cancels through the payout thread, payout settings, miners, bans, and the audit trail.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use otedama_ledger::Amount;

use super::*;
use crate::bans::BanChange;
use crate::payouts::runner::{PayoutRequest, PayoutSettings, RequestTicket};

pub(crate) async fn admin_blocks(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    off_the_workers(move || blocks_page(&state, &page, |block| json!(block))).await
}

pub(crate) async fn admin_payments(
    State(state): State<ApiState>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    off_the_workers(move || payments_shown(&state, &page, payment_json_full)).await
}

/// Sends `request` (built around its ticket and reply channel) to the payout thread, which
/// holds the wallet, and waits for its answer. Past `PAYOUT_RUN_TIMEOUT_S` the caller hears
/// exactly what happened: 504 if the request never started (and now never will: its ticket
/// is abandoned), 202 if it started and had not finished within the wait (the payout
/// thread audits its outcome, whoever still waits for it).
pub(crate) async fn ask_payout_thread<T: Send + 'static>(
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
pub(crate) async fn admin_cancel_payout(
    State(state): State<ApiState>,
    Path(batch_id): Path<u64>,
) -> Response {
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

pub(crate) async fn admin_run_payout(State(state): State<ApiState>) -> Response {
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

pub(crate) fn config_json(settings: &PayoutSettings) -> Value {
    json!({
        "payout_scheme": format!("{:?}", settings.scheme),
        "pool_fee_percent": settings.pool_fee_ppm as f64 / 10_000.0,
        "fee_account": settings.fee_account,
        "payout_interval_s": settings.payout_interval_s,
        "payout_min": settings.policy.payout_min,
    })
}

pub(crate) async fn admin_config(State(state): State<ApiState>) -> Response {
    Json(config_json(
        &state.payouts.settings.read().expect("settings lock"),
    ))
    .into_response()
}

/// Changes take effect at once and last until restart; the config file is the lasting record.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigChange {
    pool_fee_percent: Option<f64>,
    payout_min: Option<String>,
    payout_interval_s: Option<u64>,
    pplns_window_factor: Option<f64>,
    pplnt_presence_min: Option<f64>,
}

pub(crate) async fn admin_set_config(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Response {
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
pub(crate) const ADMIN_ACTIVE_WINDOW_S: u64 = 3600;
/// Where `ADMIN_ACTIVE_WINDOW_S` is among the hashrate windows (`activity_windows`).
const ADMIN_ACTIVE_WINDOW_INDEX: usize = 2;
const _: () = assert!(HASHRATE_WINDOWS_S[ADMIN_ACTIVE_WINDOW_INDEX] == ADMIN_ACTIVE_WINDOW_S);

/// Every account the ledger holds, every miner seen in the last hour and every banned
/// address, with balances, active workers and whether the address is banned.
pub(crate) async fn admin_miners(State(state): State<ApiState>) -> Response {
    off_the_workers(move || {
        let balances = state.payouts.ledger_reader.all_balances();
        let mut balances = match balances {
            Ok(all) => all,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let windows = activity_windows(&state);
        let activity = &windows[ADMIN_ACTIVE_WINDOW_INDEX];
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

pub(crate) async fn admin_bans(State(state): State<ApiState>) -> Response {
    // The ban store's lock is held across its file's fsync by a change.
    off_the_workers(move || Json(&state.bans.operator_list()).into_response()).await
}

pub(crate) async fn admin_ban(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    off_the_workers(move || change_bans(state, body, true)).await
}

pub(crate) async fn admin_unban(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Response {
    off_the_workers(move || change_bans(state, body, false)).await
}

/// Adds or removes bans. Addresses must be payable addresses of the pool's coin and
/// network, so a typo cannot ban nothing while looking like it worked.
pub(crate) fn change_bans(state: ApiState, body: axum::body::Bytes, ban: bool) -> Response {
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
    let action = if ban { "bans.add" } else { "bans.remove" };
    let changed = |state: &ApiState| {
        audit(state, action, json!(change));
        tracing::info!(
            action,
            addresses = change.addresses.len(),
            networks = change.networks.len(),
            "ban list changed"
        );
    };
    match state.bans.apply(&change, ban) {
        Ok(list) => {
            changed(&state);
            Json(&*list).into_response()
        }
        // Made: the stream has it, and this control plane applies it soon.
        Err(e @ crate::bans::BanError::NotYetApplied) => {
            changed(&state);
            error(StatusCode::ACCEPTED, e.to_string())
        }
        Err(
            e @ (crate::bans::BanError::TooMany(_) | crate::bans::BanError::TooLargeForCluster(_)),
        ) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(
            e @ (crate::bans::BanError::NotLeading
            | crate::bans::BanError::NotReplicated(_)
            | crate::bans::BanError::EarlierNotApplied),
        ) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MinerSettingsChange {
    payout_min: String,
}

pub(crate) async fn admin_set_miner_settings(
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

pub(crate) async fn admin_audit(State(state): State<ApiState>) -> Response {
    crate::api::off_the_workers(
        move || match state.audit.recent(AUDIT_ENTRIES_PER_REQUEST_MAX) {
            Ok(entries) => Json(entries).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    )
    .await
}
