//! The Stratum front end's connection bounds on a real pool (`otedama run`, synthetic
//! chain), each at its edge: the cap on connections per address, the login deadline and
//! the partial-line deadline, and each refusal counted in `/metrics` by reason. Every
//! "closed" here is an end of stream or a reset within a deadline; a read timeout fails.

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::json;

use otedama_dataplane::rt::admission::{STRATUM_LOGIN_DEADLINE_S, STRATUM_PARTIAL_LINE_DEADLINE_S};
use otedama_tests::{
    closed_by_peer, wait_until, StratumTestClient, SyntheticPool, SYNTHETIC_PAYOUT_ADDRESS,
};

const CONNECTIONS_PER_IP: usize = 4;

fn worker() -> String {
    format!("{SYNTHETIC_PAYOUT_ADDRESS}.limits")
}

/// Waits for the pool to end the connection; returns when it did. A read timeout (the
/// pool kept it open) or a message fails the test.
fn wait_for_close(client: &mut StratumTestClient, within: Duration) -> Instant {
    client.set_read_timeout(within).unwrap();
    loop {
        match client.read_message() {
            // Job notifications may still come to a logged-in miner.
            Ok(message) if message["method"].is_string() => continue,
            Ok(message) => panic!("the pool answered instead of closing: {message}"),
            Err(error) => {
                assert!(closed_by_peer(&error), "not closed by the pool: {error:#}");
                return Instant::now();
            }
        }
    }
}

/// Whether the pool has ended the stream: reads what it sent (jobs) until an end of
/// stream or an error says so, or nothing more is there yet.
fn ended(socket: &mut std::net::TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    socket.set_nonblocking(true).unwrap();
    let ended = loop {
        match std::io::Read::read(socket, &mut buffer) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    socket.set_nonblocking(false).unwrap();
    ended
}

/// The pool still answers this connection's requests.
fn assert_served(client: &mut StratumTestClient) {
    let reply = client
        .request("mining.extranonce.subscribe", json!([]))
        .unwrap();
    assert_eq!(reply["result"], json!(true));
}

#[test]
fn connections_per_address_are_capped_and_places_come_back() {
    let pool = SyntheticPool::start(&["--connections-per-ip-max", &CONNECTIONS_PER_IP.to_string()]);
    let crowded = Ipv4Addr::new(127, 0, 0, 21);
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS_PER_IP {
        let mut client = StratumTestClient::connect_from(crowded, &pool.v1).unwrap();
        client.start(&worker()).unwrap();
        held.push(client);
    }
    // One more from the same address is closed at once, before it can say anything.
    let mut refused = StratumTestClient::connect_from(crowded, &pool.v1).unwrap();
    let _ = refused.send_raw(br#"{"id":1,"method":"mining.subscribe","params":[]}"#);
    wait_for_close(&mut refused, Duration::from_secs(5));
    // Another address is not affected.
    let mut neighbour =
        StratumTestClient::connect_from(Ipv4Addr::new(127, 0, 0, 22), &pool.v1).unwrap();
    neighbour.start(&worker()).unwrap();
    // A connection that ends gives its place back.
    drop(held.pop());
    wait_until(
        Duration::from_secs(10),
        "a place for the address again",
        || {
            StratumTestClient::connect_from(crowded, &pool.v1)
                .and_then(|mut client| client.start(&worker()).map(|()| client))
                .map(|client| held.push(client))
                .is_ok()
        },
    )
    .unwrap();
    // The held connections still work.
    for client in &mut held {
        assert_served(client);
    }
    pool.wait_for_refusals("connections_per_ip", 1.0).unwrap();
}

#[test]
fn silent_and_half_logged_in_sockets_are_closed_at_the_login_deadline() {
    let pool = SyntheticPool::start(&[]);
    let deadline = Duration::from_secs(STRATUM_LOGIN_DEADLINE_S);
    // The sweep runs each second on whole seconds: a close comes between one second before
    // the deadline and two after it.
    let (earliest, latest) = (
        deadline - Duration::from_secs(1),
        deadline + Duration::from_secs(3),
    );
    let source = Ipv4Addr::new(127, 0, 0, 23);
    let connected = Instant::now();
    let mut silent = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    let mut subscribed_only = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    subscribed_only
        .request("mining.subscribe", json!(["limits"]))
        .unwrap();
    let mut miner = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    miner.start(&worker()).unwrap();
    let silent_thread = std::thread::spawn(move || wait_for_close(&mut silent, latest));
    let elapsed = wait_for_close(&mut subscribed_only, latest) - connected;
    assert!(elapsed >= earliest, "closed after {elapsed:?}");
    let elapsed = silent_thread.join().unwrap() - connected;
    assert!(elapsed >= earliest, "closed after {elapsed:?}");
    // The miner that logged in at once is still served past the deadline.
    assert_served(&mut miner);
    pool.wait_for_refusals("login_deadline", 2.0).unwrap();
}

#[test]
fn a_line_left_unfinished_is_closed_at_its_deadline_however_slowly_it_trickles() {
    let pool = SyntheticPool::start(&[]);
    let source = Ipv4Addr::new(127, 0, 0, 24);
    let mut trickler = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    trickler.start(&worker()).unwrap();
    let mut talker = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    talker.start(&worker()).unwrap();
    // Half a request, then one more byte every second: each read restarts the idle clock,
    // but not the line's deadline.
    let (mut socket, _) = {
        let (writer, reader) = trickler.into_raw();
        (writer, reader)
    };
    let started = Instant::now();
    socket.write_all(br#"{"id":9,"method":"mining."#).unwrap();
    let limit = Duration::from_secs(STRATUM_PARTIAL_LINE_DEADLINE_S + 3);
    let closed_after = loop {
        std::thread::sleep(Duration::from_secs(1));
        // The talker sends whole lines meanwhile and is answered every time.
        assert_served(&mut talker);
        if socket.write_all(b"x").is_err() {
            break started.elapsed();
        }
        // A write into a socket the pool has shut down may still succeed once; a read
        // tells for sure.
        if ended(&mut socket) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still open after {:?}",
            started.elapsed()
        );
    };
    assert!(
        closed_after >= Duration::from_secs(STRATUM_PARTIAL_LINE_DEADLINE_S - 1),
        "closed after {closed_after:?}"
    );
    pool.wait_for_refusals("partial_line_deadline", 1.0)
        .unwrap();
}

/// A line past `STRATUM_LINE_BYTES_MAX` and a line that is not JSON each end their
/// connection, counted as `oversize` and `protocol_error`; a line at the limit is read.
#[test]
fn oversize_and_malformed_lines_are_closed_and_counted() {
    use otedama_shared::limits::STRATUM_LINE_BYTES_MAX;
    let pool = SyntheticPool::start(&[]);
    let source = Ipv4Addr::new(127, 0, 0, 25);
    // At the limit exactly (newline included): a request the pool reads and answers.
    let mut at_limit = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    let request = r#"{"id":1,"method":"mining.subscribe","params":["#;
    let padding = STRATUM_LINE_BYTES_MAX - request.len() - r#""]]}"#.len() - 1;
    let line = format!(r#"{request}"{}"]}}"#, "p".repeat(padding));
    assert_eq!(line.len() + 1, STRATUM_LINE_BYTES_MAX);
    at_limit.send_raw(format!("{line}\n").as_bytes()).unwrap();
    let reply = at_limit.read_message().unwrap();
    assert_eq!(reply["id"], json!(1), "{reply}");

    let mut oversize = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    oversize
        .send_raw(&vec![b'x'; STRATUM_LINE_BYTES_MAX + 1])
        .unwrap();
    wait_for_close(&mut oversize, Duration::from_secs(5));
    pool.wait_for_refusals("oversize", 1.0).unwrap();

    let mut malformed = StratumTestClient::connect_from(source, &pool.v1).unwrap();
    malformed.send_raw(b"GET / HTTP/1.1\n").unwrap();
    wait_for_close(&mut malformed, Duration::from_secs(5));
    pool.wait_for_refusals("protocol_error", 1.0).unwrap();
    let metrics = pool.metrics().unwrap();
    assert_eq!(
        otedama_tests::metric_value(
            &metrics,
            r#"otedama_dataplane_refusals_total{reason="oversize"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}
