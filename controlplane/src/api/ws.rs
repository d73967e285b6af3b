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
    socket: WebSocket,
    events: tokio::sync::broadcast::Receiver<crate::events::PoolEvent>,
) {
    let pace = FeedPace {
        stats_interval: Duration::from_secs(WS_STATS_INTERVAL_S),
        send_timeout: Duration::from_secs(WS_SEND_TIMEOUT_S),
    };
    run_feed(socket, events, pace, || cached_stats(&state)).await
}

/// How often the feed sends stats, and how long one message may wait for its client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FeedPace {
    pub(crate) stats_interval: Duration,
    pub(crate) send_timeout: Duration,
}

/// The feed's loop: a stats message every `pace.stats_interval` and each event, until the
/// client closes, the pool's events end, or one message waits more than
/// `pace.send_timeout` for a client that does not read (then its place is freed).
pub(crate) async fn run_feed<Stats>(
    mut socket: WebSocket,
    mut events: tokio::sync::broadcast::Receiver<crate::events::PoolEvent>,
    pace: FeedPace,
    stats: impl Fn() -> Stats,
) where
    Stats: std::future::Future<Output = Option<Value>>,
{
    let mut ticker = tokio::time::interval(pace.stats_interval);
    loop {
        let message = tokio::select! {
            _ = ticker.tick() => {
                json!({"type": "stats", "stats": stats().await.unwrap_or(Value::Null)})
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
            pace.send_timeout,
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

#[cfg(test)]
mod tests {
    use super::{run_feed, FeedPace};
    use axum::extract::ws::WebSocketUpgrade;
    use serde_json::Value;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    /// A live feed on a real socket whose stats are 64 KiB of text every 5 ms, with
    /// `send_timeout`; the moment each feed ends comes out of the returned channel.
    fn feed_server(send_timeout: Duration) -> (u16, std::sync::mpsc::Receiver<Instant>) {
        let (ended_tx, ended_rx) = std::sync::mpsc::channel();
        // Kept by the route: the feed's events never end while the server runs.
        let (events, _) = tokio::sync::broadcast::channel(16);
        let route = move |upgrade: WebSocketUpgrade| {
            let events = tokio::sync::broadcast::Sender::subscribe(&events);
            let ended = ended_tx.clone();
            async move {
                upgrade.on_upgrade(move |socket| async move {
                    let pace = FeedPace {
                        stats_interval: Duration::from_millis(5),
                        send_timeout,
                    };
                    let stats = Value::String("x".repeat(64 * 1024));
                    run_feed(socket, events, pace, || {
                        let stats = stats.clone();
                        async move { Some(stats) }
                    })
                    .await;
                    let _ = ended.send(Instant::now());
                })
            }
        };
        let app = axum::Router::new().route("/ws", axum::routing::get(route));
        let bounds = crate::api::ConnectionBounds::NAMED;
        (crate::api::serve_on_loopback(app, bounds, |_| {}), ended_rx)
    }

    /// Opens a live-feed connection: the WebSocket handshake, answered 101.
    fn open_feed(port: u16) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                  sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
            )
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stream
    }

    /// `WS_SEND_TIMEOUT_S` (scaled down): a client that stops reading is dropped once a
    /// message has waited the send timeout for it, and not sooner; a client that reads
    /// along is kept, whatever the feed's rate.
    #[test]
    fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
        let send_timeout = Duration::from_millis(1000);
        let (port, ended) = feed_server(send_timeout);
        let mut reader = open_feed(port);
        let reading = std::thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 16];
            let mut read = 0;
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                match reader.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            (reader, read)
        });
        let _stalled = open_feed(port);
        let opened = Instant::now();
        let ended_at = ended
            .recv_timeout(Duration::from_secs(30))
            .expect("the client that stopped reading was dropped");
        assert!(
            ended_at.duration_since(opened) >= send_timeout,
            "dropped before a message could wait its send timeout"
        );
        let (reader, read) = reading.join().unwrap();
        assert!(read > 1 << 20, "the reading client got {read} bytes");
        assert!(
            ended.recv_timeout(Duration::from_millis(300)).is_err(),
            "the reading client was dropped"
        );
        drop(reader);
    }
}
