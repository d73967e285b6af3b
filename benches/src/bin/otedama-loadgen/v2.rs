//! The load generator's Stratum V2 connections: a standard channel each (header-only, as
//! most V2 devices), over Noise/TCP or over QUIC, submitting at the same schedule as the
//! V1 connections so that one benchmark compares the three with the same miners and the
//! same share rate. The protocol logic is the shared `sv2::client::StandardClient`.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Interval;

use otedama_shared::limits::SV2_DEVICE_PAYLOAD_BYTES_MAX;
use otedama_shared::sv2::client::{ClientEvent, StandardClient};
use otedama_shared::sv2::noise::{decode_authority_public_key, NoiseClient, NoiseTransport};
use otedama_shared::sv2::FrameDecoder;

use crate::connection::{
    next_tick, record_broadcast, settle_once, submit_schedule, tcp_wire_bytes, unix_us, Phase,
    Worker, RECONNECT_ANSWERS_WAIT_S,
};
use crate::{Args, Protocol};

/// IPv4 and UDP header bytes per datagram.
pub(crate) const UDP_HEADER_BYTES: u64 = 28;
/// QUIC client sockets per process: each is its own 4-tuple toward the pool, so the
/// kernel spreads connections over the pool's cores as it does TCP ones.
const QUIC_SOCKETS_PER_PROCESS_MAX: usize = 64;
const READ_BUFFER_BYTES: usize = 4096;

/// Client sockets for one process's share of `connections`: one per connection up to
/// `QUIC_SOCKETS_PER_PROCESS_MAX`, at least one.
fn quic_sockets(connections: usize, processes: usize) -> usize {
    connections
        .div_ceil(processes.max(1))
        .clamp(1, QUIC_SOCKETS_PER_PROCESS_MAX)
}
const HANDSHAKE_TIMEOUT_S: u64 = 10;

/// What every V2 connection of the process shares.
pub(crate) enum Transport {
    Noise { authority: [u8; 32] },
    Quic { endpoints: Vec<quinn::Endpoint> },
}

impl Transport {
    /// `None` for a V1 run. Must run inside the process's tokio runtime (QUIC endpoints
    /// start their drivers on it).
    pub(crate) fn new(args: &Args, _target: SocketAddr) -> anyhow::Result<Option<Self>> {
        match args.protocol {
            Protocol::V1 => Ok(None),
            Protocol::V2 => {
                let key = args
                    .authority_key
                    .as_deref()
                    .context("--protocol v2 needs --authority-key (the pool prints it at start)")?;
                let authority = decode_authority_public_key(key)
                    .context("--authority-key is not a base58check SV2 authority key")?;
                Ok(Some(Transport::Noise { authority }))
            }
            Protocol::Quic => {
                let config = otedama_client::quic_client_config(args.quic_ca.as_deref())?;
                let sockets = quic_sockets(args.connections, args.processes);
                let endpoints = (0..sockets)
                    .map(|index| {
                        let local =
                            SocketAddr::V4(SocketAddrV4::new(args.source_ips.nth(index), 0));
                        let mut endpoint = quinn::Endpoint::client(local)?;
                        endpoint.set_default_client_config(config.clone());
                        anyhow::Ok(endpoint)
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok(Some(Transport::Quic { endpoints }))
            }
        }
    }
}

enum Reader {
    Tcp(OwnedReadHalf),
    Quic(quinn::RecvStream),
}

impl Reader {
    /// Reads what is there; `Ok(0)` at the end of the stream.
    async fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::Tcp(read) => read.read(buffer).await,
            Reader::Quic(receive) => Ok(receive.read(buffer).await?.unwrap_or(0)),
        }
    }
}

enum Writer {
    Tcp(OwnedWriteHalf),
    Quic(quinn::SendStream),
}

impl Writer {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Tcp(write) => write.write_all(bytes).await,
            Writer::Quic(send) => send.write_all(bytes).await.map_err(std::io::Error::other),
        }
    }
}

/// Turns received bytes into frames and frames into bytes to send.
enum Codec {
    Noise(Box<NoiseTransport>),
    Plain(FrameDecoder),
}

/// Where the connection's bytes-on-the-wire count comes from.
enum WireMeter {
    Tcp(i32),
    Quic(quinn::Connection),
}

impl WireMeter {
    fn bytes(&self) -> Option<u64> {
        match self {
            WireMeter::Tcp(fd) => tcp_wire_bytes(*fd),
            WireMeter::Quic(connection) => {
                let udp = connection.stats();
                Some(
                    udp.udp_tx.bytes
                        + udp.udp_rx.bytes
                        + (udp.udp_tx.datagrams + udp.udp_rx.datagrams) * UDP_HEADER_BYTES,
                )
            }
        }
    }
}

struct Link {
    reader: Reader,
    writer: Writer,
    codec: Codec,
    meter: WireMeter,
    /// Keeps the QUIC connection open for the run (dropping it closes it).
    _quic: Option<quinn::Connection>,
}

async fn open_link(worker: &Worker, global_index: usize) -> anyhow::Result<Link> {
    match worker.v2.as_ref().expect("a V2 run has a transport") {
        Transport::Noise { authority } => {
            let stream = crate::connection::connect(worker, global_index).await?;
            let fd = stream.as_raw_fd();
            let (mut read, mut write) = stream.into_split();
            let (mut noise, request) = NoiseClient::start(
                *authority,
                SV2_DEVICE_PAYLOAD_BYTES_MAX,
                &mut rand::rngs::OsRng,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            write.write_all(&request).await?;
            let mut buffer = [0u8; 512];
            let transport = tokio::time::timeout(Duration::from_secs(HANDSHAKE_TIMEOUT_S), async {
                loop {
                    let length = read.read(&mut buffer).await?;
                    anyhow::ensure!(length > 0, "the pool closed during the handshake");
                    if let Some(transport) = noise
                        .feed(&buffer[..length], (unix_us() / 1_000_000) as u32)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                    {
                        return anyhow::Ok(transport);
                    }
                }
            })
            .await
            .context("Noise handshake timed out")??;
            Ok(Link {
                reader: Reader::Tcp(read),
                writer: Writer::Tcp(write),
                codec: Codec::Noise(Box::new(transport)),
                meter: WireMeter::Tcp(fd),
                _quic: None,
            })
        }
        Transport::Quic { endpoints } => {
            let endpoint = &endpoints[global_index % endpoints.len()];
            let connecting = endpoint.connect(worker.target, "localhost")?;
            let connection =
                tokio::time::timeout(Duration::from_secs(HANDSHAKE_TIMEOUT_S), connecting)
                    .await
                    .context("QUIC handshake timed out")??;
            let (send, receive) = connection.open_bi().await?;
            Ok(Link {
                reader: Reader::Quic(receive),
                writer: Writer::Quic(send),
                codec: Codec::Plain(FrameDecoder::new(SV2_DEVICE_PAYLOAD_BYTES_MAX)),
                meter: WireMeter::Quic(connection.clone()),
                _quic: Some(connection),
            })
        }
    }
}

/// Tries a reconnect's new connection a few times before giving up: over QUIC, whose
/// datagrams the kernel spreads over every socket on the port, the first attempt may
/// reach the draining process, which refuses it.
const REOPEN_ATTEMPTS_MAX: usize = 5;
const REOPEN_PAUSE_MS: u64 = 200;

async fn reopen_link(worker: &Worker, global_index: usize) -> anyhow::Result<Link> {
    let mut attempt = 1;
    loop {
        match open_link(worker, global_index).await {
            Ok(link) => return Ok(link),
            Err(error) if attempt == REOPEN_ATTEMPTS_MAX => return Err(error),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(REOPEN_PAUSE_MS)).await;
            }
        }
    }
}

/// One V2 connection: open a standard channel, wait for work, then submit on schedule.
/// Asked to reconnect (Reconnect, from a pool handing its miners to a replacement), it
/// stops submitting, waits for the answers to what it sent (`RECONNECT_ANSWERS_WAIT_S` at
/// most), connects to the same address again and opens a new channel.
pub(crate) async fn run_connection(worker: Rc<Worker>, global_index: usize) {
    let mut settled = false;
    let mut link = match open_link(&worker, global_index).await {
        Ok(link) => link,
        Err(error) => {
            if worker.report.borrow().connect_errors == 0 {
                eprintln!("loadgen: connect failed: {error:#}");
            }
            worker.report.borrow_mut().connect_errors += 1;
            settle_once(&worker, &mut settled);
            return;
        }
    };
    let user = worker.args.user.clone();
    let mut client = StandardClient::new(&user, 0.0, "127.0.0.1", worker.target.port());
    let mut ready = false;
    let mut pending: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut nonce: u32 = 0;
    let mut sent_in_measure = 0u64;
    let mut wire_at_start = None;
    let mut prev_hash: Option<[u8; 32]> = None;
    let mut phase_rx = worker.phase.subscribe();
    let mut ticker: Option<(Interval, Instant, f64)> = None;
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut out = Vec::new();
    let mut reconnect_asked: Option<Instant> = None;
    // The pool closed the connection after asking for a reconnect: the reconnect itself.
    let mut closed_after_asking = false;
    let reconnect_wait = Duration::from_secs(RECONNECT_ANSWERS_WAIT_S);
    let closed_by_peer = 'connection: loop {
        if let Some(asked) = reconnect_asked {
            if closed_after_asking || pending.is_empty() || asked.elapsed() >= reconnect_wait {
                if let (Some(start), Some(end)) = (wire_at_start, link.meter.bytes()) {
                    worker.report.borrow_mut().wire_bytes += end.saturating_sub(start);
                }
                // Unanswered ones are given up, as a miner would on a reconnect.
                worker
                    .pending_total
                    .set(worker.pending_total.get() - pending.len());
                pending.clear();
                link = match reopen_link(&worker, global_index).await {
                    Ok(link) => link,
                    Err(error) => {
                        if worker.report.borrow().connect_errors == 0 {
                            eprintln!("loadgen: reconnect failed: {error:#}");
                        }
                        worker.report.borrow_mut().connect_errors += 1;
                        break 'connection true;
                    }
                };
                wire_at_start = wire_at_start.and(link.meter.bytes());
                client = StandardClient::new(&user, 0.0, "127.0.0.1", worker.target.port());
                // The new connection's first job is not a broadcast to time.
                prev_hash = None;
                reconnect_asked = None;
                closed_after_asking = false;
                worker.report.borrow_mut().reconnects += 1;
            }
        }
        // Whatever the client queued (SetupConnection, the channel open, shares) goes out.
        if !client.transmit_pending().is_empty() {
            out.clear();
            match &mut link.codec {
                Codec::Noise(transport) => {
                    transport.encrypt_frames(client.transmit_pending(), &mut out)
                }
                Codec::Plain(_) => out.extend_from_slice(client.transmit_pending()),
            }
            client.transmitted();
            if link.writer.write_all(&out).await.is_err() {
                if reconnect_asked.is_some() {
                    closed_after_asking = true;
                    continue;
                }
                break true;
            }
        }
        tokio::select! {
            read = link.reader.read(&mut buffer) => {
                let length = match read {
                    Ok(0) | Err(_) if reconnect_asked.is_some() => {
                        closed_after_asking = true;
                        continue;
                    }
                    Ok(0) | Err(_) => break true,
                    Ok(length) => length,
                };
                let received_unix_us = unix_us();
                let mut frames = Vec::new();
                let decoded = match &mut link.codec {
                    Codec::Noise(transport) => {
                        transport.feed(&buffer[..length]);
                        loop {
                            match transport.next_frame() {
                                Ok(Some((header, payload))) => frames.push((header, payload.to_vec())),
                                Ok(None) => break true,
                                Err(_) => break false,
                            }
                        }
                    }
                    Codec::Plain(decoder) => {
                        decoder.feed(&buffer[..length]);
                        loop {
                            match decoder.next_frame() {
                                Ok(Some(frame)) => frames.push((frame.header, frame.payload.to_vec())),
                                Ok(None) => break true,
                                Err(_) => break false,
                            }
                        }
                    }
                };
                if !decoded {
                    eprintln!("loadgen: undecodable data from the pool");
                    break true;
                }
                for (header, payload) in frames {
                    let event = match client.handle_frame(&header, &payload) {
                        Ok(event) => event,
                        Err(error) => {
                            if worker.report.borrow().authorize_errors == 0 {
                                eprintln!("loadgen: {error}");
                            }
                            worker.report.borrow_mut().authorize_errors += 1;
                            settle_once(&worker, &mut settled);
                            break 'connection true;
                        }
                    };
                    match event {
                        ClientEvent::SharesAccepted { count, last_sequence_number } => {
                            let mut acknowledged = 0;
                            while acknowledged < count {
                                let Some(&(sequence, sent_at)) = pending.front() else { break };
                                if sequence.wrapping_sub(last_sequence_number) as i32 > 0 {
                                    break;
                                }
                                pending.pop_front();
                                acknowledged += 1;
                                worker.pending_total.set(worker.pending_total.get() - 1);
                                worker.report.borrow_mut().shares_acked += 1;
                                worker
                                    .ack_us
                                    .borrow_mut()
                                    .saturating_record(sent_at.elapsed().as_micros().max(1) as u64);
                            }
                        }
                        ClientEvent::ShareRejected { sequence_number, code } => {
                            if let Some(position) = pending.iter().position(|(s, _)| *s == sequence_number) {
                                pending.remove(position);
                                worker.pending_total.set(worker.pending_total.get() - 1);
                            }
                            let mut report = worker.report.borrow_mut();
                            if code == "stale-share" {
                                report.shares_stale += 1;
                            } else {
                                if report.shares_rejected == 0 {
                                    eprintln!("loadgen: first rejected share: {code}");
                                }
                                report.shares_rejected += 1;
                            }
                        }
                        ClientEvent::Reconnect { .. } => {
                            // To the same address whatever it names: the run measures one pool.
                            reconnect_asked.get_or_insert_with(Instant::now);
                        }
                        ClientEvent::NewWork => {
                            let Some(work) = client.work() else { continue };
                            let block: [u8; 32] = work.header[4..36].try_into().expect("32 bytes");
                            if ready && prev_hash.is_some_and(|previous| previous != block) {
                                record_broadcast(
                                    &worker,
                                    &work.job_id.to_string(),
                                    b"",
                                    received_unix_us,
                                    &phase_rx,
                                );
                            }
                            prev_hash = Some(block);
                            if !ready {
                                ready = true;
                                worker.ready.set(worker.ready.get() + 1);
                                settle_once(&worker, &mut settled);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ = next_tick(&mut ticker) => {
                let Some((_, started, period_s)) = ticker.as_ref() else { continue };
                let due = (started.elapsed().as_secs_f64() / period_s) as u64 + 1;
                let mut wanted = due.saturating_sub(sent_in_measure);
                while wanted > 0 {
                    wanted -= 1;
                    sent_in_measure += 1;
                    if reconnect_asked.is_some() {
                        // Not sent to a pool that is handing this miner over.
                        continue;
                    }
                    if pending.len() >= worker.args.inflight_max {
                        worker.report.borrow_mut().throttled += 1;
                        continue;
                    }
                    let Some(work) = client.work() else { break };
                    let version = u32::from_le_bytes(work.header[0..4].try_into().expect("4"));
                    let ntime = u32::from_le_bytes(work.header[68..72].try_into().expect("4"));
                    let sequence = client.submit(&work, nonce, ntime, version);
                    nonce = nonce.wrapping_add(1);
                    pending.push_back((sequence, Instant::now()));
                    worker.pending_total.set(worker.pending_total.get() + 1);
                    worker.report.borrow_mut().shares_sent += 1;
                }
            }
            // Looks again whether the answers are in or the wait is over.
            _ = tokio::time::sleep(Duration::from_millis(100)), if reconnect_asked.is_some() => {}
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    break false;
                }
                let phase = *phase_rx.borrow_and_update();
                match phase {
                    Phase::Measure { .. } => {
                        wire_at_start = link.meter.bytes();
                        ticker = submit_schedule(&worker, global_index);
                    }
                    // A run whose shares are all acknowledged goes from Drain to Stop at
                    // once, and a watch receiver may see only the last.
                    Phase::Drain | Phase::Stop => {
                        ticker = None;
                        if let (Some(start), Some(end)) = (wire_at_start.take(), link.meter.bytes()) {
                            worker.report.borrow_mut().wire_bytes += end.saturating_sub(start);
                        }
                        if phase == Phase::Stop {
                            break false;
                        }
                    }
                    Phase::Ramp => {}
                }
            }
        }
    };
    let mut report = worker.report.borrow_mut();
    if closed_by_peer {
        report.disconnects += 1;
    } else if ready {
        report.connections_held += 1;
    }
    drop(report);
    worker
        .pending_total
        .set(worker.pending_total.get() - pending.len());
    settle_once(&worker, &mut settled);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_sockets_stop_at_their_limit() {
        let max = QUIC_SOCKETS_PER_PROCESS_MAX;
        assert_eq!(quic_sockets(0, 1), 1);
        assert_eq!(quic_sockets(max, 1), max);
        assert_eq!(quic_sockets(max + 1, 1), max);
        assert_eq!(quic_sockets(2 * max, 2), max);
        assert_eq!(quic_sockets(2 * max + 1, 2), max);
        assert_eq!(quic_sockets(10, 4), 3);
    }
}
