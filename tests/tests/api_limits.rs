//! The API's limits at their edges, against a real `otedama run` on the synthetic chain.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use otedama_controlplane::api::{
    API_BODY_BYTES_MAX, API_CONNECTIONS_MAX, API_CONNECTIONS_PER_IP_MAX, API_HEADER_READ_TIMEOUT_S,
    WS_CLIENTS_MAX, WS_CLIENT_MESSAGE_BYTES_MAX,
};
use otedama_tests::{connect_from, SyntheticPool};

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
    let metrics = pool.metrics().unwrap();
    assert_eq!(
        otedama_tests::metric_value(
            &metrics,
            r#"otedama_api_refusals_total{reason="feed_full"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
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
    // A client's message of exactly `WS_CLIENT_MESSAGE_BYTES_MAX` bytes is taken (the
    // feed goes on); one byte more ends that client's feed.
    let mut talker = clients.pop().unwrap();
    talker
        .send(tungstenite::Message::text(
            "x".repeat(WS_CLIENT_MESSAGE_BYTES_MAX),
        ))
        .unwrap();
    // Something sent a second after it (the stats come every few seconds) shows the
    // server read it and went on; what arrives before may have been on its way already.
    let sent_at = Instant::now();
    loop {
        let next = talker
            .read()
            .expect("the feed goes on after a message at the limit");
        assert!(next.is_text(), "{next:?}");
        if sent_at.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    talker
        .send(tungstenite::Message::text(
            "x".repeat(WS_CLIENT_MESSAGE_BYTES_MAX + 1),
        ))
        .unwrap();
    let ended_at = Instant::now();
    loop {
        match talker.read() {
            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
            // Stats sent before the server read the message may still arrive.
            Ok(_) => assert!(
                ended_at.elapsed() < Duration::from_secs(15),
                "the feed still runs after a message over the limit"
            ),
        }
    }
}

/// Issue 16: the API holds `API_CONNECTIONS_MAX` connections at once (from many
/// addresses, each within its own cap); the next waits in the kernel's backlog, unanswered,
/// until one leaves, and is then served.
#[test]
fn the_api_holds_its_connection_limit_and_serves_the_next_when_one_leaves() {
    otedama_dataplane::rt::raise_open_files_limit().unwrap();
    let pool = SyntheticPool::start(&[]);
    let api = format!("127.0.0.1:{}", pool.api_port);
    let per_address = API_CONNECTIONS_PER_IP_MAX as usize;
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..API_CONNECTIONS_MAX)
        .map(|index| {
            let source = Ipv4Addr::new(127, 0, 3, (index / per_address) as u8 + 1);
            let mut stream = connect_from(source, &api).unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
            stream
        })
        .collect();
    let mut next = connect_from(Ipv4Addr::new(127, 0, 4, 1), &api).unwrap();
    next.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    next.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    match next.read(&mut byte) {
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!(
            "connection {} was served: {other:?}",
            API_CONNECTIONS_MAX + 1
        ),
    }
    // The held ones are still within their header deadline, so the wait above was the
    // connection limit's doing, not a timeout's.
    assert!(started.elapsed() < Duration::from_secs(API_HEADER_READ_TIMEOUT_S));
    drop(held.pop());
    let answer = outcome(&mut next, Duration::from_secs(5)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
}

/// What the server did with a connection within `within`: `None` if it closed it (end of
/// stream or reset) without a word, else the start of what it answered. A read timeout
/// (the connection still held) fails the test.
fn outcome(stream: &mut TcpStream, within: Duration) -> Option<String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("still open after {within:?}, having sent {answer:?}")
            }
            Err(_) => break,
        }
    }
    (!answer.is_empty()).then(|| String::from_utf8_lossy(&answer[..answer.len().min(12)]).into())
}

/// Issue 16: half a request holds a place at most `API_HEADER_READ_TIMEOUT_S`; one
/// address holds at most `API_CONNECTIONS_PER_IP_MAX` connections (one more is closed at
/// once, and other addresses are served meanwhile); a body over `API_BODY_BYTES_MAX` is
/// refused with 413.
#[test]
fn slow_crowding_and_oversized_http_clients_are_bounded() {
    let pool = SyntheticPool::start(&[]);
    let api = format!("127.0.0.1:{}", pool.api_port);
    let crowd = Ipv4Addr::new(127, 0, 0, 41);
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..API_CONNECTIONS_PER_IP_MAX)
        .map(|_| {
            let mut stream = connect_from(crowd, &api).unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
            stream
        })
        .collect();
    let mut one_more = connect_from(crowd, &api).unwrap();
    let _ = one_more.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        outcome(&mut one_more, Duration::from_secs(5)),
        None,
        "one connection over the per-address cap was served"
    );
    // Another address is served while the crowd holds its places.
    let health = ureq::get(&format!("http://{api}/health")).call().unwrap();
    assert_eq!(health.status(), 200);
    // The crowd's half requests are cut at the header deadline, not before.
    let deadline = Duration::from_secs(API_HEADER_READ_TIMEOUT_S);
    for stream in &mut slow {
        let answer = outcome(stream, deadline + Duration::from_secs(5));
        assert!(
            answer.is_none()
                || answer
                    .as_deref()
                    .is_some_and(|a| a.starts_with("HTTP/1.1 408")),
            "{answer:?}"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= deadline - Duration::from_secs(1),
        "cut after {elapsed:?}"
    );
    // The address has its places back.
    let mut again = connect_from(crowd, &api).unwrap();
    again
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = outcome(&mut again, Duration::from_secs(5)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A body of exactly the limit reaches the handler (which refuses it for what it
    // says, not for its size); one byte more is refused before any handler reads it.
    let post = |body: &[u8]| match ureq::post(&format!("http://{api}/api/v1/dex/keys/challenge"))
        .send_bytes(body)
    {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(error) => panic!("{error}"),
    };
    let at_limit = post(&vec![b'x'; API_BODY_BYTES_MAX]);
    assert!(at_limit != 413 && at_limit >= 400, "{at_limit}");
    assert_eq!(post(&vec![b'x'; API_BODY_BYTES_MAX + 1]), 413);
    // Each refusal counted by its reason: exactly the one connection over the cap, a
    // header timeout for each half request of the crowd (and for any kept-alive client
    // connection left idle past the same deadline), the one body over the limit.
    let metrics = pool.metrics().unwrap();
    let refusals = |reason: &str| {
        otedama_tests::metric_value(
            &metrics,
            &format!("otedama_api_refusals_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refusals("connections_per_ip"), Some(1.0), "{metrics}");
    assert!(
        refusals("header_timeout") >= Some(API_CONNECTIONS_PER_IP_MAX as f64),
        "{metrics}"
    );
    assert_eq!(refusals("body_too_large"), Some(1.0), "{metrics}");
}
