//! `--quic-initial-flood`: what an attacker with spoofed source addresses can send a QUIC
//! pool. Each datagram is a real client Initial (a fresh connection ID and TLS ClientHello,
//! made by quinn-proto) from one of the source addresses, and no handshake is ever
//! continued; the pool's answers are read and thrown away. The pool should answer with a
//! stateless Retry once its pending logins pass their threshold, and hold no state for
//! these.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Args;

pub fn run(args: &Args, target: SocketAddr) -> anyhow::Result<()> {
    let config = otedama_client::quic_client_config(args.quic_ca.as_deref())?;
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let sockets: Vec<UdpSocket> = (0..args.source_ips.count())
        .map(|index| {
            let ip = args.source_ips.nth(index);
            let socket = UdpSocket::bind((ip, 0)).with_context(|| format!("binding {ip}"))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect::<anyhow::Result<_>>()?;
    let rate = args.connect_rate.max(1.0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut sent: u64 = 0;
    let mut answers: u64 = 0;
    let mut datagram = Vec::new();
    let mut answer = [0u8; 2048];
    while Instant::now() < deadline {
        let now = Instant::now();
        let (handle, mut connection) = endpoint
            .connect(now, config.clone(), target, "localhost")
            .context("making an Initial")?;
        datagram.clear();
        if let Some(transmit) = connection.poll_transmit(now, 1, &mut datagram) {
            let socket = &sockets[sent as usize % sockets.len()];
            // A full send buffer drops the datagram, as the network would.
            let _ = socket.send_to(&datagram[..transmit.size], target);
            sent += 1;
        }
        // Forget the connection at once: the attacker keeps no state either.
        drop(connection);
        let _ = endpoint.handle_event(handle, quinn_proto::EndpointEvent::drained());
        for socket in &sockets {
            while socket.recv_from(&mut answer).is_ok() {
                answers += 1;
            }
        }
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "quic_initials_sent": sent,
            "quic_answers_received": answers,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
