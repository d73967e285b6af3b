//! The API's limits at their edges, against a real `otedama run` on the synthetic chain.

use std::net::TcpStream;
use std::time::Duration;

use otedama_controlplane::api::WS_CLIENTS_MAX;
use otedama_tests::SyntheticPool;

type Feed = tungstenite::WebSocket<TcpStream>;

/// A live-feed client, or the HTTP status its upgrade was refused with.
fn open_feed(port: u16) -> Result<Feed, u16> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    match tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), stream) {
        Ok((feed, _)) => Ok(feed),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("the feed's upgrade failed otherwise: {error}"),
    }
}

/// Issue 16: the live feed takes `WS_CLIENTS_MAX` clients at once; one more is refused
/// with 503 (and no task, no stats snapshot); once one leaves, its place is taken again.
#[test]
fn the_live_feed_takes_its_limit_of_clients_and_refuses_one_more() {
    let pool = SyntheticPool::start(&[]);
    let mut clients: Vec<Feed> = (0..WS_CLIENTS_MAX)
        .map(|index| {
            open_feed(pool.api_port)
                .unwrap_or_else(|status| panic!("client {index} was refused: {status}"))
        })
        .collect();
    match open_feed(pool.api_port) {
        Err(status) => assert_eq!(status, 503),
        Ok(_) => panic!("client {} was let in", WS_CLIENTS_MAX + 1),
    }
    // One leaves; its place is free again once the server has seen it go.
    let mut leaving = clients.pop().unwrap();
    leaving.close(None).unwrap();
    let _ = leaving.flush();
    drop(leaving);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(status) = open_feed(pool.api_port) {
        assert!(
            std::time::Instant::now() < deadline,
            "a freed place was not taken back: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
