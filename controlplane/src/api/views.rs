//! How the pool's records look to the public API, the admin API and the live feed
//! (`/ws`). Tasks publish facts (`PoolEvent`, ledger and block records) and never render
//! them; what a client may see of each, and what stays in the admin API and the log (a
//! node's error text can name its URL or wallet), is decided here once.

use serde_json::{json, Value};

use otedama_chain::blocks::BlockRecord;
use otedama_ledger::ledger::PayoutIntent;

use crate::events::PoolEvent;

/// A live-feed message for an event.
pub(crate) fn event_json(event: &PoolEvent) -> Value {
    match event {
        PoolEvent::BlockAccepted(block) => json!({"type": "block", "block": block_json(block)}),
        PoolEvent::Payment(intent) => json!({"type": "payment", "payment": payment_json(intent)}),
        PoolEvent::PayoutCancelled { batch_id, reason } => json!({
            "type": "payout.cancelled",
            "payout": {"batch_id": batch_id, "reason": reason},
        }),
        PoolEvent::Exchange(message) => message.clone(),
    }
}

/// A block as the public sees it: a rejection's reason is the node's own short token
/// (BIP22: `bad-txns-inputs-missingorspent`, `inconclusive`, ...) or the pool's category
/// (`stale-prevblk`, `unsubmittable`), never an error text. `/api/v1/admin/blocks` has
/// the whole reason.
pub(crate) fn block_json(block: &BlockRecord) -> Value {
    let mut shown = json!(block);
    if let Some(reason) = &block.rejected_reason {
        shown["rejected_reason"] = json!(public_reject_reason(reason));
    }
    shown
}

/// Longest reject token the public sees. BIP22 tokens are short
/// (`bad-txns-inputs-missingorspent` is 30 bytes); a longer "token" is text the node or
/// the pool made up, which stays in the admin API and the log.
pub(crate) const REJECT_TOKEN_BYTES_MAX: usize = 64;

/// A rejection reason's leading token, when it is one (lower case, digits, `-`, `_`, at
/// most `REJECT_TOKEN_BYTES_MAX` bytes), or `rejected`.
pub(crate) fn public_reject_reason(reason: &str) -> String {
    let token = reason.split(':').next().unwrap_or_default().trim();
    let is_token = !token.is_empty()
        && token.len() <= REJECT_TOKEN_BYTES_MAX
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
pub(crate) fn payment_json(intent: &PayoutIntent) -> Value {
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
pub(crate) fn payment_json_full(intent: &PayoutIntent) -> Value {
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
