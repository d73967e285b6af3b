//! Compliance routes: KYC holds and their verification (by an operator, or by the
//! provider's signed callback), and the exports a tax office or regulator asks for: one
//! address's payments, and the audit log of a period, as CSV or JSON.

// Helpers here answer with the HTTP response itself on refusal; axum's `Response` is big,
// and boxing it would only add an allocation to the refusal path.
#![allow(clippy::result_large_err)]

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::{audit_as, canonical_account, error, now_ms, ApiState};
use otedama_compliance::kyc::{KycRecord, KycState};

/// Audit entries one export holds at most; a longer period is exported in parts.
pub const AUDIT_EXPORT_ENTRIES_MAX: usize = 1_000_000;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/kyc/callback", post(provider_callback))
}

pub fn admin_routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/admin/kyc", get(kyc_list))
        .route("/api/v1/admin/kyc/{address}", put(kyc_set))
        .route("/api/v1/admin/exports/payments", get(export_payments))
        .route("/api/v1/admin/exports/audit", get(export_audit))
}

/// Records a KYC state change and audits it with what it replaced.
fn change_kyc(
    state: &ApiState,
    actor: &str,
    address: &str,
    record: KycRecord,
) -> Result<Value, Response> {
    // The exchange first (its lock order), held across the change and the cancel.
    let mut dex = state.dex.as_ref().map(|dex| dex.lock().expect("dex lock"));
    let mut ledger = state.payouts.ledger.lock().expect("ledger lock");
    let previous = ledger
        .kyc(address)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    ledger
        .set_kyc(address, &record)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    drop(ledger);
    freeze_if_held(state, dex.as_deref_mut(), address, &record);
    drop(dex);
    Ok(kyc_changed(state, actor, address, previous, &record))
}

/// A state that holds the address's value takes its resting orders off the exchange.
fn freeze_if_held(
    state: &ApiState,
    dex: Option<&mut crate::dex::DexService>,
    address: &str,
    record: &KycRecord,
) {
    if let (true, Some(dex)) = (record.state.holds(), dex) {
        crate::dex::freeze_orders(dex, &state.pool, address);
    }
}

/// Audits and logs a KYC state change; its audit detail.
fn kyc_changed(
    state: &ApiState,
    actor: &str,
    address: &str,
    previous: Option<KycRecord>,
    record: &KycRecord,
) -> Value {
    let detail = json!({
        "address": address,
        "from": previous.map(|p| p.state),
        "to": record.state,
        "source": record.source,
        "reference": record.reference,
    });
    audit_as(state, actor, "kyc.state", detail.clone());
    tracing::info!(%address, to = ?record.state, source = %record.source, "KYC state changed");
    detail
}

/// Every address with a KYC record; `pending` lists those a payout waits on, with the
/// mature balance held.
async fn kyc_list(State(state): State<ApiState>) -> Response {
    crate::api::off_the_workers(move || {
        let ledger = &state.payouts.ledger_reader;
        let records = match ledger.kyc_records() {
            Ok(records) => records,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let mut pending = Vec::new();
        for (address, record) in &records {
            if record.state != KycState::Verified {
                let held = ledger.balances(address).map(|b| b.mature).unwrap_or(0);
                pending.push(json!({
                    "address": address,
                    "state": record.state,
                    "held": held,
                    "since_ms": record.updated_at_ms,
                }));
            }
        }
        Json(json!({"records": records, "pending": pending})).into_response()
    })
    .await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KycChange {
    state: KycState,
    #[serde(default)]
    reference: Option<String>,
}

async fn kyc_set(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    crate::api::off_the_workers(move || {
        let address = match canonical_account(&state, &address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
        let change: KycChange = match serde_json::from_slice(&body) {
            Ok(change) => change,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let record = KycRecord {
            state: change.state,
            updated_at_ms: now_ms(),
            source: "admin".into(),
            reference: change.reference,
        };
        match change_kyc(&state, "admin", &address, record) {
            Ok(detail) => Json(detail).into_response(),
            Err(response) => response,
        }
    })
    .await
}

/// The provider's verdict, signed with the shared secret over the raw body.
async fn provider_callback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    crate::api::off_the_workers(move || {
        let Some(secret) = state.kyc_secret.clone() else {
            return error(
                StatusCode::NOT_FOUND,
                "no KYC provider is configured: set kyc_webhook_url and kyc_webhook_secret_file",
            );
        };
        let signature = headers
            .get(otedama_compliance::kyc::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let mut callback = match otedama_compliance::kyc::verify_callback(
            &secret,
            signature,
            &body,
            now_ms() / 1000,
        ) {
            Ok(callback) => callback,
            Err(e @ otedama_compliance::kyc::CallbackError::BadBody(_)) => {
                return error(StatusCode::BAD_REQUEST, e.to_string())
            }
            Err(e @ otedama_compliance::kyc::CallbackError::TooLarge) => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            Err(e) => {
                tracing::warn!(error = %e, "KYC callback refused");
                return error(StatusCode::UNAUTHORIZED, e.to_string());
            }
        };
        callback.address = match canonical_account(&state, &callback.address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
        let record = KycRecord {
            state: callback.state,
            updated_at_ms: now_ms(),
            source: "provider".into(),
            reference: callback.reference,
        };
        let mut dex = state.dex.as_ref().map(|dex| dex.lock().expect("dex lock"));
        let mut ledger = state.payouts.ledger.lock().expect("ledger lock");
        let previous = match ledger.kyc(&callback.address) {
            Ok(previous) => previous,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        match ledger.apply_kyc_callback(&callback.id, &callback.address, &record) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(id = %callback.id, "KYC callback replayed; refused");
                return error(
                    StatusCode::CONFLICT,
                    format!("callback {} was applied already", callback.id),
                );
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
        drop(ledger);
        freeze_if_held(&state, dex.as_deref_mut(), &callback.address, &record);
        drop(dex);
        Json(kyc_changed(
            &state,
            "provider",
            &callback.address,
            previous,
            &record,
        ))
        .into_response()
    })
    .await
}

#[derive(serde::Deserialize)]
struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
    address: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
}

enum Format {
    Csv,
    Json,
}

fn format_of(query: &ExportQuery) -> Result<Format, Response> {
    match query.format.as_deref() {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("format must be csv or json, not {other:?}"),
        )),
    }
}

/// One CSV field: quoted, with inner quotes doubled, whenever it holds a comma, a quote or
/// a line break (RFC 4180); and a leading `=`, `+`, `-` or `@` is escaped with a `'` so a
/// spreadsheet never runs it as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_response(filename: &str, header_row: &[&str], rows: Vec<Vec<String>>) -> Response {
    let mut text = header_row.join(",");
    text.push_str("\r\n");
    for row in rows {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        text.push_str(&fields.join(","));
        text.push_str("\r\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        text,
    )
        .into_response()
}

/// Every payment to one address: batch, transaction, amount, when, and whether the node
/// has it.
async fn export_payments(
    State(state): State<ApiState>,
    Query(query): Query<ExportQuery>,
) -> Response {
    crate::api::off_the_workers(move || {
        let format = match format_of(&query) {
            Ok(format) => format,
            Err(response) => return response,
        };
        let Some(address) = query.address.clone() else {
            return error(StatusCode::BAD_REQUEST, "address is required");
        };
        let address = match canonical_account(&state, &address) {
            Ok(canonical) => canonical,
            Err(response) => return response,
        };
        // Every payout of this address (its own index), oldest first.
        let payouts = match state
            .payouts
            .ledger_reader
            .payouts_of(&address, None, usize::MAX)
        {
            Ok(payouts) => payouts,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let payments: Vec<Value> = payouts
            .iter()
            .rev()
            .map(|otedama_ledger::ledger::AccountPayout { amount, intent }| {
                let amount = *amount;
                json!({
                    "batch_id": intent.batch_id,
                    "txid": intent.txid,
                    "amount": otedama_ledger::amount::coins_text(u128::from(amount)),
                    "amount_units": amount,
                    "state": intent.state.name(),
                    "created_at_ms": intent.created_at_ms,
                    "sent_at_ms": intent.sent_at_ms,
                })
            })
            .collect();
        audit_as(
            &state,
            "admin",
            "export.payments",
            json!({"address": address, "rows": payments.len()}),
        );
        match format {
            Format::Json => Json(json!({"address": address, "payments": payments})).into_response(),
            Format::Csv => {
                let columns = [
                    "batch_id",
                    "txid",
                    "amount",
                    "amount_units",
                    "state",
                    "created_at_ms",
                    "sent_at_ms",
                ];
                let rows = payments
                    .iter()
                    .map(|p| columns.iter().map(|c| plain(&p[*c])).collect())
                    .collect();
                csv_response(&format!("payments-{address}.csv"), &columns, rows)
            }
        }
    })
    .await
}

/// A JSON value as CSV text: strings bare, null empty, anything else as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A period with more audit entries than one export may hold.
#[derive(Debug, PartialEq)]
struct TooManyEntries {
    /// An end for the same start that fits (the time of the first entry left out), if
    /// the period can be cut on a millisecond at all.
    shorter_to_ms: Option<u64>,
}

/// Every audit entry of `[from_ms, to_ms)` if there are at most `limit`; never a silent
/// prefix: a recipient checking the chain over the export would take a cut for the end.
fn audit_export_window(
    audit: &crate::audit::AuditLog,
    from_ms: u64,
    to_ms: u64,
    limit: usize,
) -> Result<Result<Vec<crate::audit::AuditEntry>, TooManyEntries>, crate::audit::AuditError> {
    let mut entries = audit.between(from_ms, to_ms, limit + 1)?;
    if entries.len() <= limit {
        return Ok(Ok(entries));
    }
    // Entries are in time order, so every entry before the first left out that shares
    // its millisecond is left out by the shorter period as well: it holds at most `limit`.
    let first_left_out_ms = entries.swap_remove(limit).at_ms;
    Ok(Err(TooManyEntries {
        shorter_to_ms: (first_left_out_ms > from_ms).then_some(first_left_out_ms),
    }))
}

/// The audit entries of `[from_ms, to_ms)`, each with its hash and its link to the one
/// before, so the recipient can check the chain over the exported part.
async fn export_audit(State(state): State<ApiState>, Query(query): Query<ExportQuery>) -> Response {
    let format = match format_of(&query) {
        Ok(format) => format,
        Err(response) => return response,
    };
    let from_ms = query.from_ms.unwrap_or(0);
    let to_ms = query.to_ms.unwrap_or(u64::MAX);
    if from_ms >= to_ms {
        return error(StatusCode::BAD_REQUEST, "from_ms must be before to_ms");
    }
    let audit = state.audit.clone();
    let entries = tokio::task::spawn_blocking(move || {
        audit_export_window(&audit, from_ms, to_ms, AUDIT_EXPORT_ENTRIES_MAX)
    })
    .await;
    let entries = match entries {
        Ok(Ok(Ok(entries))) => entries,
        Ok(Ok(Err(TooManyEntries { shorter_to_ms }))) => {
            let hint = shorter_to_ms.map_or(String::new(), |to_ms| {
                format!("; [from_ms, {to_ms}) fits, continue from from_ms={to_ms}")
            });
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the period holds more than {AUDIT_EXPORT_ENTRIES_MAX} entries \
                     (AUDIT_EXPORT_ENTRIES_MAX): export it in parts{hint}"
                ),
            );
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "export task failed"),
    };
    crate::api::audit_from_async(
        &state,
        "admin",
        "export.audit",
        json!({"from_ms": from_ms, "to_ms": query.to_ms, "rows": entries.len()}),
    )
    .await;
    match format {
        Format::Json => Json(json!({"from_ms": from_ms, "to_ms": query.to_ms, "entries": entries}))
            .into_response(),
        Format::Csv => {
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        e.sequence.to_string(),
                        e.at_ms.to_string(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.detail.to_string(),
                        e.previous_hash.clone(),
                        e.hash.clone(),
                    ]
                })
                .collect();
            csv_response(
                &format!(
                    "audit-{from_ms}-{}.csv",
                    query.to_ms.map_or("now".into(), |t| t.to_string())
                ),
                &[
                    "sequence",
                    "at_ms",
                    "actor",
                    "action",
                    "detail",
                    "previous_hash",
                    "hash",
                ],
                rows,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{audit_export_window, csv_field, TooManyEntries};
    use serde_json::json;

    /// At exactly the limit the whole period is exported; one entry more is refused with
    /// an end that fits, never cut short in silence.
    #[test]
    fn an_audit_export_is_whole_at_its_limit_and_refused_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let audit = crate::audit::AuditLog::open(dir.path()).unwrap();
        const LIMIT: usize = 4;
        for at_ms in [10, 20, 30, 40] {
            audit.append(at_ms, "admin", "test", json!({})).unwrap();
        }
        let whole = audit_export_window(&audit, 0, u64::MAX, LIMIT)
            .unwrap()
            .unwrap();
        assert_eq!(whole.len(), LIMIT);
        // Two entries in the same millisecond straddle the cut: the shorter period ends
        // before both.
        audit.append(40, "admin", "test", json!({})).unwrap();
        assert_eq!(
            audit_export_window(&audit, 0, u64::MAX, LIMIT).unwrap(),
            Err(TooManyEntries {
                shorter_to_ms: Some(40)
            })
        );
        let part = audit_export_window(&audit, 0, 40, LIMIT).unwrap().unwrap();
        assert_eq!(part.len(), 3);
        let rest = audit_export_window(&audit, 40, u64::MAX, LIMIT)
            .unwrap()
            .unwrap();
        assert_eq!(rest.len(), 2);
        // A period that cannot be cut on a millisecond says so.
        for _ in 0..=LIMIT {
            audit.append(50, "admin", "test", json!({})).unwrap();
        }
        assert_eq!(
            audit_export_window(&audit, 50, u64::MAX, LIMIT).unwrap(),
            Err(TooManyEntries {
                shorter_to_ms: None
            })
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-1,2"), "\"'-1,2\"");
    }
}
