//! The `/ws` feed: stats every few seconds and events (blocks, payments) as they happen,
//! to at most `WS_CLIENTS_MAX` clients, each dropped when it cannot keep up.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::*;

pub(crate) async fn websocket(
    State(state): State<ApiState>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Ok(place) = state.ws_clients.clone().try_acquire_owned() else {
        state.pool.api_refused(crate::stats::ApiRefusal::FeedFull);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the live feed has its {WS_CLIENTS_MAX} clients; try again later"),
        );
    };
    // Subscribed before the upgrade is answered: every event after the client's
    // handshake reaches it, not only those after the upgraded task first runs (CI on
    // d675a31 saw an order placed right after the handshake missing from the feed).
    let events = state.pool.subscribe_events();
    upgrade
        .max_message_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| async move {
            feed(state, socket, events).await;
            drop(place);
        })
}

/// Pool stats every few seconds, and new-block and payment events as they happen.
pub(crate) async fn feed(
    state: ApiState,
    mut socket: WebSocket,
    mut events: tokio::sync::broadcast::Receiver<crate::events::PoolEvent>,
) {
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
    event: Result<crate::events::PoolEvent, tokio::sync::broadcast::error::RecvError>,
) -> Option<Value> {
    match event {
        Ok(event) => Some(super::views::event_json(&event)),
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
            Some(json!({"type": "lagged", "missed": missed}))
        }
        Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
    }
}
