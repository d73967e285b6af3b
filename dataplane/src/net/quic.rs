//! Stratum V2 over QUIC, on the per-core design: every core binds the QUIC port with
//! SO_REUSEPORT and drives its own `quinn_proto::Endpoint` from that UDP socket, so a
//! connection lives, like a TCP one, on the core the kernel gave its first packet to. The
//! mining protocol runs on one bidirectional stream per connection, as plaintext SV2 frames
//! (QUIC's TLS 1.3 replaces Noise here) into the same `sv2::server::Session` as over TCP.
//!
//! Connection migration: a client that changes address sends from a new 4-tuple, which the
//! kernel may hash to another core. Our connection IDs carry the owning core's extranonce
//! partition byte, masked with a keyed hash so that an observer cannot read or correlate it
//! (the QUIC-LB idea), and a core that receives a short-header packet for another core's
//! connection forwards the datagram to it. Only migrated connections pay that hop. Across
//! data-plane processes there is no forwarding: with several processes, a migrated
//! connection whose new path lands on another process times out and reconnects.
//!
//! 0-RTT: the server accepts early data on resumed sessions. Tickets are single-use entries
//! in one session cache all cores share (rustls allows early data only with such stateful
//! tickets, which is what stops a replay at the TLS layer). A replay that got through
//! could earn nothing anyway: a replayed share is the same header, which the duplicate
//! filter refuses, and SetupConnection and channel opens are harmless to repeat.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_lite::StreamExt;
use glommio::net::UdpSocket;
use quinn_proto::{
    ConnectionHandle, ConnectionId, ConnectionIdGenerator, DatagramEvent, Dir, EndpointConfig,
    Event, ReadError, ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt,
};
use sha2::{Digest, Sha256};

use otedama_shared::limits::SV2_PAYLOAD_BYTES_MAX;
use otedama_shared::sv2::server::Session;
use otedama_shared::sv2::FrameDecoder;

use super::now_s;
use super::sv2::{handle_frame, server_config, V2Link};
use super::wire::{SEND_BACKLOG_BYTES_MAX, SHARES_AWAITING_ACK_PER_CONNECTION_MAX};
use crate::rt::gate::Gate;
use crate::rt::{Core, Peer, Protocol};

/// Bytes in our connection IDs: one masked partition byte and seven random ones.
const CONNECTION_ID_BYTES: usize = 8;
/// Largest UDP datagram read: the receive buffer holds any datagram the network can
/// carry, so none is cut short (a cut one would fail its packet protection anyway).
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// The largest UDP payload without jumbograms: IPv6's payload length field (65,535) less
/// the 8-byte UDP header (IPv4's is smaller still, 65,507).
const UDP_PAYLOAD_BYTES_LARGEST: usize = 65_535 - 8;
const _: () = assert!(DATAGRAM_BYTES_MAX >= UDP_PAYLOAD_BYTES_LARGEST);
/// TLS sessions the QUIC listeners remember for resumption (and 0-RTT), across all cores
/// of a process; the oldest are forgotten first. A few hundred bytes each.
pub const QUIC_RESUMABLE_SESSIONS_MAX: usize = 65_536;
/// Bytes a QUIC miner may send ahead of what the pool has taken into its frame decoder
/// (the stream's and the connection's flow-control window), and the most the decoder
/// holds. While the core or the connection is at a bound on shares in flight, frames wait
/// in the decoder and the rest of the stream in quinn, within this window: a client that
/// streams shares faster than the pool can hash them is held back by QUIC's own flow
/// control, as a TCP miner is by its socket.
pub const QUIC_RECEIVE_WINDOW_BYTES: u32 = 64 * 1024;
/// Bidirectional streams a QUIC miner may open: its SV2 session is one ordered stream, as
/// on TCP. A second stream would be a second session sharing the connection's limits and
/// state, so the client never gets the credit to open one (and none unidirectional).
pub const QUIC_STREAMS_PER_CONNECTION_MAX: u32 = 1;
/// QUIC connections one core's endpoint may have that have not logged in (handshake,
/// SetupConnection and a first channel). Past it, a new connection from an address that
/// has not proved it receives our packets gets a stateless Retry (RFC 9000 §8.1) instead
/// of a connection: spoofed Initials then cost a packet each, not a session.
pub const QUIC_LOGINS_PENDING_BEFORE_RETRY: usize = 256;
/// Datagrams one core may have waiting for another core (connections that migrated to an
/// address the kernel hashes elsewhere). Past it they are dropped; QUIC resends.
pub const QUIC_FORWARDED_QUEUED_MAX: usize = 4096;
pub use otedama_shared::sv2::QUIC_ALPN;

/// TLS material for the QUIC listeners, DER encoded.
#[derive(Clone)]
pub struct QuicTls {
    pub certificate_chain_der: Vec<Vec<u8>>,
    pub private_key_der: Vec<u8>,
}

impl std::fmt::Debug for QuicTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTls")
            .field("certificates", &self.certificate_chain_der.len())
            .finish_non_exhaustive()
    }
}

/// What every core's QUIC endpoints share: one TLS server configuration (so a session
/// ticket from one core resumes on another), the stateless-reset key and the key that
/// masks the partition byte in connection IDs.
pub struct QuicShared {
    server_config: Arc<ServerConfig>,
    reset_key: Arc<ring::hmac::Key>,
    connection_id_key: [u8; 32],
    pub connections_per_core_max: usize,
}

impl QuicShared {
    pub fn new(
        tls: &QuicTls,
        idle_timeout_s: u64,
        connections_per_core_max: usize,
    ) -> anyhow::Result<Self> {
        use quinn_proto::crypto::rustls::QuicServerConfig;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificates = tls
            .certificate_chain_der
            .iter()
            .map(|der| rustls::pki_types::CertificateDer::from(der.clone()))
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::try_from(tls.private_key_der.clone())
            .map_err(|e| anyhow::anyhow!("the QUIC private key: {e}"))?;
        let mut tls_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(certificates, key)?;
        tls_config.alpn_protocols = vec![QUIC_ALPN.to_vec()];
        // QUIC allows only 0 or u32::MAX here; u32::MAX turns 0-RTT on.
        tls_config.max_early_data_size = u32::MAX;
        tls_config.session_storage = resumable_sessions();
        let crypto = QuicServerConfig::try_from(tls_config)?;
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(QUIC_STREAMS_PER_CONNECTION_MAX))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(QUIC_RECEIVE_WINDOW_BYTES))
            .receive_window(VarInt::from_u32(QUIC_RECEIVE_WINDOW_BYTES))
            .max_idle_timeout(Some(
                VarInt::from_u64(idle_timeout_s.saturating_mul(1000))?.into(),
            ))
            .enable_segmentation_offload(false)
            .mtu_discovery_config(None);
        let mut server_config = ServerConfig::with_crypto(Arc::new(crypto));
        server_config
            .transport_config(Arc::new(transport))
            .migration(true);
        let mut reset_secret = [0u8; 32];
        let mut connection_id_key = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut reset_secret);
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut connection_id_key);
        Ok(QuicShared {
            server_config: Arc::new(server_config),
            reset_key: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_secret)),
            connection_id_key,
            connections_per_core_max,
        })
    }
}

/// The mask over a connection ID's first byte: a keyed hash of the other seven.
fn partition_mask(key: &[u8; 32], rest: &[u8]) -> u8 {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(rest);
    hasher.finalize()[0]
}

/// The partition byte a connection ID of ours carries.
pub fn partition_of(key: &[u8; 32], connection_id: &[u8]) -> Option<u8> {
    (connection_id.len() == CONNECTION_ID_BYTES)
        .then(|| connection_id[0] ^ partition_mask(key, &connection_id[1..]))
}

struct PartitionedIds {
    partition: u8,
    key: [u8; 32],
}

impl ConnectionIdGenerator for PartitionedIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CONNECTION_ID_BYTES];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[1..]);
        bytes[0] = self.partition ^ partition_mask(&self.key, &bytes[1..]);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CONNECTION_ID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A datagram one core received for a connection another core owns.
pub struct Forwarded {
    data: BytesMut,
    remote: SocketAddr,
}

/// The sending end of a core's queue of forwarded datagrams, bounded at
/// `QUIC_FORWARDED_QUEUED_MAX` by a count the receiving end gives back.
#[derive(Clone)]
pub struct ForwardSender {
    sender: UnboundedSender<Forwarded>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// The receiving end (see `ForwardSender`).
pub struct ForwardReceiver {
    receiver: UnboundedReceiver<Forwarded>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// A bounded queue of forwarded datagrams to one core.
pub fn forward_queue() -> (ForwardSender, ForwardReceiver) {
    let (sender, receiver) = futures_channel::mpsc::unbounded();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (
        ForwardSender {
            sender,
            queued: queued.clone(),
        },
        ForwardReceiver { receiver, queued },
    )
}

impl ForwardSender {
    /// Queues the datagram, or drops it (`false`) at the bound or if the core stopped.
    fn send(&self, forwarded: Forwarded) -> bool {
        if self.queued.fetch_add(1, Relaxed) >= QUIC_FORWARDED_QUEUED_MAX {
            self.queued.fetch_sub(1, Relaxed);
            return false;
        }
        if self.sender.unbounded_send(forwarded).is_err() {
            self.queued.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }
}

impl ForwardReceiver {
    async fn next(&mut self) -> Option<Forwarded> {
        let forwarded = self.receiver.next().await?;
        self.queued.fetch_sub(1, Relaxed);
        Some(forwarded)
    }
}

/// One core's endpoint on one QUIC listen address.
pub struct QuicFrontEnd {
    endpoint: RefCell<quinn_proto::Endpoint>,
    /// A non-blocking handle on the socket for sends: a send that would block drops the
    /// datagram, which QUIC's loss recovery retransmits.
    sender: std::net::UdpSocket,
    connections: RefCell<HashMap<ConnectionHandle, Rc<QuicConnection>>>,
    /// The other cores of this process, by core index, for migrated connections.
    forward_to: Vec<ForwardSender>,
    /// Connections accepted here that have not logged in yet
    /// (`QUIC_LOGINS_PENDING_BEFORE_RETRY`).
    logins_pending: Cell<usize>,
    shared: Arc<QuicShared>,
    send_buffer: RefCell<Vec<u8>>,
}

impl QuicFrontEnd {
    fn send(&self, transmit: &quinn_proto::Transmit, bytes: &[u8]) {
        if let Err(error) = self
            .sender
            .send_to(&bytes[..transmit.size], transmit.destination)
        {
            if error.kind() != std::io::ErrorKind::WouldBlock {
                tracing::debug!(%error, "QUIC send failed");
            }
        }
    }

    /// Which of this process's cores owns a short-header packet, if not this one.
    fn owner_core(&self, core: &Core, datagram: &[u8]) -> Option<usize> {
        let short_header = datagram.first().is_some_and(|b| b & 0x80 == 0);
        if !short_header || datagram.len() < 1 + CONNECTION_ID_BYTES {
            return None;
        }
        let partition = partition_of(
            &self.shared.connection_id_key,
            &datagram[1..1 + CONNECTION_ID_BYTES],
        )? as usize;
        let (process, processes) = (core.config.process_index, core.config.processes);
        // partition = process_index + processes × core_index (see rt::extranonce1_partition)
        let offset = partition.checked_sub(process)?;
        if offset % processes != 0 {
            return None;
        }
        let owner = offset / processes;
        (owner != core.index && owner < self.forward_to.len()).then_some(owner)
    }

    fn receive(self: &Rc<Self>, core: &Rc<Core>, data: &[u8], remote: SocketAddr) {
        if let Some(owner) = self.owner_core(core, data) {
            let forwarded = Forwarded {
                data: BytesMut::from(data),
                remote,
            };
            if !self.forward_to[owner].send(forwarded) {
                tracing::debug!(owner, "QUIC forward dropped (queue full or core stopped)");
            }
            core.counters.quic_datagrams_forwarded.fetch_add(1, Relaxed);
            return;
        }
        self.handle_datagram(core, BytesMut::from(data), remote);
    }

    fn handle_datagram(self: &Rc<Self>, core: &Rc<Core>, data: BytesMut, remote: SocketAddr) {
        let now = Instant::now();
        let event = {
            let mut buffer = self.send_buffer.borrow_mut();
            buffer.clear();
            let event =
                self.endpoint
                    .borrow_mut()
                    .handle(now, remote, None, None, data, &mut buffer);
            if let Some(DatagramEvent::Response(transmit)) = &event {
                self.send(transmit, &buffer);
                return;
            }
            event
        };
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                let connection = self.connections.borrow().get(&handle).cloned();
                if let Some(connection) = connection {
                    connection.quic.borrow_mut().handle_event(event);
                    connection.drive(core);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.accept(core, incoming, now),
            Some(DatagramEvent::Response(_)) | None => {}
        }
    }

    fn accept(self: &Rc<Self>, core: &Rc<Core>, incoming: quinn_proto::Incoming, now: Instant) {
        let remote = incoming.remote_address();
        let banned = core.bans.borrow().bans_ip(remote.ip());
        let full = self.connections.borrow().len() >= self.shared.connections_per_core_max;
        // An address a Retry has proved counts against its cap from its first packet, so
        // it cannot hold more handshakes than connections; an unproved one counts once
        // its handshake proves it (`Event::Connected`), since its source may be spoofed.
        let mut proven_slot = None;
        let mut over_cap = false;
        if !banned && !full && incoming.remote_address_validated() {
            match core.admit(Some(remote.ip())) {
                Some(slot) => proven_slot = slot,
                None => over_cap = true,
            }
        }
        let mut buffer = self.send_buffer.borrow_mut();
        buffer.clear();
        if banned || full || over_cap {
            tracing::debug!(%remote, banned, full, over_cap, "QUIC connection refused");
            let transmit = self.endpoint.borrow_mut().refuse(incoming, &mut buffer);
            self.send(&transmit, &buffer);
            return;
        }
        if self.logins_pending.get() >= QUIC_LOGINS_PENDING_BEFORE_RETRY
            && !incoming.remote_address_validated()
        {
            match self.endpoint.borrow_mut().retry(incoming, &mut buffer) {
                Ok(transmit) => self.send(&transmit, &buffer),
                // Only an Initial that already answered a Retry cannot get one, and that
                // one is validated; drop it all the same rather than trust it.
                Err(error) => self.endpoint.borrow_mut().ignore(error.into_incoming()),
            }
            core.counters
                .refused(otedama_shared::ipc::Refusal::QuicRetry, 1);
            return;
        }
        let accepted = self
            .endpoint
            .borrow_mut()
            .accept(incoming, now, &mut buffer, None);
        let (handle, quic) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(transmit) = error.response {
                    self.send(&transmit, &buffer);
                }
                return;
            }
        };
        drop(buffer);
        let connection = Rc::new(QuicConnection {
            front: self.clone(),
            handle,
            quic: RefCell::new(quic),
            session: RefCell::new(Session::new(server_config(core))),
            stream: Cell::new(None),
            decoder: RefCell::new(FrameDecoder::new(SV2_PAYLOAD_BYTES_MAX)),
            pending_send: RefCell::new(Vec::new()),
            awaiting_ack: Gate::new(SHARES_AWAITING_ACK_PER_CONNECTION_MAX),
            last_read_s: Cell::new(now_s()),
            peer_ip: Cell::new(remote.ip()),
            registration: Cell::new(None),
            drained: Cell::new(false),
            timer_waker: RefCell::new(None),
            timer_notified: Cell::new(false),
            resume_scheduled: Cell::new(false),
            logged_in: Cell::new(false),
            address_proven: Cell::new(proven_slot.is_some()),
            address_slot: RefCell::new(proven_slot),
            core: Rc::downgrade(core),
        });
        self.connections
            .borrow_mut()
            .insert(handle, connection.clone());
        let link: Rc<dyn V2Link> = connection.clone();
        connection
            .registration
            .set(Some(core.register(Peer::V2(link))));
        core.counters.connections.fetch_add(1, Relaxed);
        self.logins_pending.set(self.logins_pending.get() + 1);
        glommio::spawn_local(timer_task(connection.clone())).detach();
        glommio::spawn_local(login_deadline(connection.clone())).detach();
        connection.drive(core);
    }
}

/// One QUIC connection and its SV2 session.
pub struct QuicConnection {
    front: Rc<QuicFrontEnd>,
    handle: ConnectionHandle,
    quic: RefCell<quinn_proto::Connection>,
    session: RefCell<Session>,
    /// The bidirectional stream the mining protocol runs on.
    stream: Cell<Option<StreamId>>,
    decoder: RefCell<FrameDecoder>,
    /// Frames the stream's flow control did not take yet.
    pending_send: RefCell<Vec<u8>>,
    awaiting_ack: Gate,
    last_read_s: Cell<u64>,
    peer_ip: Cell<IpAddr>,
    registration: Cell<Option<u64>>,
    drained: Cell<bool>,
    timer_waker: RefCell<Option<Waker>>,
    timer_notified: Cell<bool>,
    /// Whether a task waits to go on with frames held at a bound (`read_frames`).
    resume_scheduled: Cell<bool>,
    /// Set once the session has a channel; until then it counts in `logins_pending`.
    logged_in: Cell<bool>,
    /// The connection's place under the per-address cap, taken once its handshake has
    /// proved the address (`Event::Connected`) and given back when it drains. Not at the
    /// first Initial: its source address may be spoofed, and counting it would let anyone
    /// use up another address's places.
    address_slot: RefCell<Option<crate::rt::admission::AddressSlot>>,
    /// Whether the peer's address is proved and counted. Until then nothing it sent is
    /// read: 0-RTT data would otherwise let a client mine on connections that never finish
    /// their handshake and so never count against the cap.
    address_proven: Cell<bool>,
    core: std::rc::Weak<Core>,
}

impl QuicConnection {
    /// After input (a datagram, a timeout): take the application's events, run received
    /// frames through the session, then send.
    fn drive(self: &Rc<Self>, core: &Rc<Core>) {
        let mut readable = false;
        loop {
            let event = self.quic.borrow_mut().poll();
            match event {
                None => break,
                Some(Event::Stream(StreamEvent::Opened { dir: Dir::Bi })) => {
                    let accepted = self.quic.borrow_mut().streams().accept(Dir::Bi);
                    if self.stream.get().is_none() {
                        self.stream.set(accepted);
                    }
                    readable = true;
                }
                Some(Event::Stream(StreamEvent::Readable { .. })) => readable = true,
                Some(Event::ConnectionLost { reason }) => {
                    tracing::debug!(%reason, "QUIC connection lost");
                }
                // The handshake is done: the peer receives at its address. It now counts
                // against that address's cap (`connections_per_ip_max`, shared with TCP).
                Some(Event::Connected) if !self.address_proven.get() => {
                    match core.admit(Some(self.peer_ip.get())) {
                        Some(slot) => {
                            *self.address_slot.borrow_mut() = slot;
                            self.address_proven.set(true);
                            // 0-RTT data held until now is read at once.
                            readable = true;
                        }
                        None => {
                            tracing::debug!(peer = %self.peer_ip.get(), "too many connections from one address");
                            self.close_with("too many connections from one address");
                        }
                    }
                }
                Some(_) => {}
            }
        }
        // A connection closed above (over its address's cap) is not served.
        if readable && !self.quic.borrow().is_closed() {
            if let Err(reason) = self.read_frames(core) {
                tracing::debug!(reason, "closing QUIC connection");
                self.close_with(reason);
            }
        }
        self.flush();
    }

    /// Reads what the stream holds, up to `QUIC_RECEIVE_WINDOW_BYTES` held in the decoder,
    /// and runs whole frames through the session while the connection and the core have
    /// room for another share in flight (`Core::has_room`). At a bound the frames left
    /// wait in the decoder (and the stream in quinn, under flow control) until a task
    /// that waits for room goes on with them.
    fn read_frames(self: &Rc<Self>, core: &Rc<Core>) -> Result<(), &'static str> {
        let Some(id) = self.stream.get() else {
            return Ok(());
        };
        if !self.address_proven.get() {
            return Ok(());
        }
        let link: Rc<dyn V2Link> = self.clone();
        // Read, then handle, until quinn has nothing more or a bound stops us: a read cut
        // short by the decoder's window must be followed by another once frames are
        // handled, since a client whose window is used up sends nothing that would wake
        // us again.
        loop {
            let (drained, finished) = self.read_stream(id)?;
            let now_s = now_s();
            let mut decoder = self.decoder.borrow_mut();
            loop {
                if !core.has_room(&self.awaiting_ack) {
                    drop(decoder);
                    self.resume_when_room(core);
                    return Ok(());
                }
                let frame = match decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(_) => return Err("frame too large"),
                };
                handle_frame(core, &link, &frame.header, frame.payload, now_s)?;
                self.note_login();
            }
            if finished {
                return Err("the miner ended the stream");
            }
            if drained {
                return Ok(());
            }
        }
    }

    /// Moves what the stream holds into the decoder, up to `QUIC_RECEIVE_WINDOW_BYTES`
    /// held; returns whether quinn has nothing more now, and whether the stream ended.
    fn read_stream(&self, id: StreamId) -> Result<(bool, bool), &'static str> {
        let mut quic = self.quic.borrow_mut();
        let mut stream = quic.recv_stream(id);
        let mut chunks = stream.read(true).map_err(|_| "stream closed")?;
        let mut decoder = self.decoder.borrow_mut();
        let (mut drained, mut finished) = (false, false);
        loop {
            let room = (QUIC_RECEIVE_WINDOW_BYTES as usize).saturating_sub(decoder.buffered());
            if room == 0 {
                break;
            }
            match chunks.next(room) {
                Ok(Some(chunk)) => {
                    decoder.feed(&chunk.bytes);
                    self.last_read_s.set(now_s());
                }
                Ok(None) | Err(ReadError::Reset(_)) => {
                    (drained, finished) = (true, true);
                    break;
                }
                Err(ReadError::Blocked) => {
                    drained = true;
                    break;
                }
            }
        }
        // Whether a flow-control update must go out; `flush` transmits anyway.
        let _ = chunks.finalize();
        Ok((drained, finished))
    }

    /// Counts the connection out of `logins_pending` once its session has a channel.
    fn note_login(&self) {
        if !self.logged_in.get() && self.session.borrow().channel_count() > 0 {
            self.logged_in.set(true);
            let pending = &self.front.logins_pending;
            pending.set(pending.get().saturating_sub(1));
        }
    }

    /// Goes on with held frames (and the stream behind them) once there is room.
    fn resume_when_room(self: &Rc<Self>, core: &Rc<Core>) {
        if self.resume_scheduled.replace(true) {
            return;
        }
        let (connection, core) = (self.clone(), core.clone());
        glommio::spawn_local(async move {
            core.wait_for_room(&connection.awaiting_ack).await;
            connection.resume_scheduled.set(false);
            if connection.drained.get() {
                return;
            }
            if let Err(reason) = connection.read_frames(&core) {
                tracing::debug!(reason, "closing QUIC connection");
                connection.close_with(reason);
            }
            connection.flush();
        })
        .detach();
    }

    fn close_with(&self, reason: &'static str) {
        self.quic.borrow_mut().close(
            Instant::now(),
            VarInt::from_u32(0),
            bytes::Bytes::from_static(reason.as_bytes()),
        );
    }

    /// Moves queued frames into the stream, then packets onto the wire, then endpoint
    /// bookkeeping; unregisters the connection once QUIC has drained it.
    fn send_and_account(&self) {
        if let Some(id) = self.stream.get() {
            let mut pending = self.pending_send.borrow_mut();
            if !pending.is_empty() {
                match self.quic.borrow_mut().send_stream(id).write(&pending) {
                    Ok(written) => {
                        pending.drain(..written);
                    }
                    Err(quinn_proto::WriteError::Blocked) => {}
                    Err(_) => pending.clear(),
                }
            }
            if pending.len() > SEND_BACKLOG_BYTES_MAX {
                pending.clear();
                drop(pending);
                tracing::debug!("QUIC miner is not reading; disconnecting");
                self.close_with("not reading");
            }
        }
        let now = Instant::now();
        let front = &self.front;
        {
            let mut buffer = front.send_buffer.borrow_mut();
            loop {
                buffer.clear();
                let transmit = self.quic.borrow_mut().poll_transmit(now, 1, &mut buffer);
                match transmit {
                    Some(transmit) => front.send(&transmit, &buffer),
                    None => break,
                }
            }
        }
        loop {
            let event = self.quic.borrow_mut().poll_endpoint_events();
            let Some(event) = event else { break };
            let reply = front.endpoint.borrow_mut().handle_event(self.handle, event);
            if let Some(reply) = reply {
                self.quic.borrow_mut().handle_event(reply);
            }
        }
        if self.quic.borrow().is_drained() && !self.drained.replace(true) {
            front.connections.borrow_mut().remove(&self.handle);
            self.address_slot.borrow_mut().take();
            if !self.logged_in.replace(true) {
                front
                    .logins_pending
                    .set(front.logins_pending.get().saturating_sub(1));
            }
            if let (Some(core), Some(id)) = (self.core.upgrade(), self.registration.take()) {
                core.unregister(id);
                super::sv2::release_extranonce_prefixes(&core, &mut self.session.borrow_mut());
                core.counters.connections.fetch_sub(1, Relaxed);
            }
        }
        self.timer_notified.set(true);
        if let Some(waker) = self.timer_waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl V2Link for QuicConnection {
    fn session(&self) -> &RefCell<Session> {
        &self.session
    }

    fn flush(&self) {
        {
            let mut session = self.session.borrow_mut();
            let frames = session.transmit_pending();
            if !frames.is_empty() {
                self.pending_send.borrow_mut().extend_from_slice(frames);
            }
            session.transmitted();
        }
        self.send_and_account();
    }

    fn awaiting_ack(&self) -> &Gate {
        &self.awaiting_ack
    }

    fn protocol(&self) -> Protocol {
        Protocol::Quic
    }

    fn peer_ip(&self) -> Option<IpAddr> {
        Some(self.peer_ip.get())
    }

    fn close(&self) {
        self.close_with("closed by the pool");
        self.send_and_account();
    }

    fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        let idle = self.last_read_s.get() < cutoff_s;
        if idle {
            self.close();
        }
        idle
    }

    /// Frames wait in the decoder until the core has room (`resume_when_room`).
    fn held_back(&self) -> bool {
        self.resume_scheduled.get()
    }
}

/// Sleeps until the connection's next QUIC deadline (loss detection, acks, idle), or
/// until `drive` changed it, and handles it; ends once the connection has drained.
async fn timer_task(connection: Rc<QuicConnection>) {
    while !connection.drained.get() {
        let deadline = connection.quic.borrow_mut().poll_timeout();
        let notified = std::future::poll_fn(|cx| {
            if connection.timer_notified.replace(false) {
                Poll::Ready(())
            } else {
                *connection.timer_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        match deadline {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                futures_lite::future::or(notified, glommio::timer::sleep(wait)).await;
                if Instant::now() >= deadline {
                    connection.quic.borrow_mut().handle_timeout(Instant::now());
                    if let Some(core) = connection.core.upgrade() {
                        connection.drive(&core);
                    }
                }
            }
            None => notified.await,
        }
    }
}

/// Closes a connection that has not logged in (handshake, SetupConnection, a channel)
/// within `STRATUM_LOGIN_DEADLINE_S`, as the TCP front ends do.
async fn login_deadline(connection: Rc<QuicConnection>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(
            crate::rt::admission::STRATUM_LOGIN_DEADLINE_S,
        ))
        .await;
        if connection.logged_in.get() || connection.drained.get() {
            return;
        }
        // The pool holds this connection's frames back (its core at a bound): the login
        // is not the miner's delay, so its time starts again, as over TCP.
        if !connection.resume_scheduled.get() {
            break;
        }
    }
    connection.close_with("login deadline");
    connection.flush();
    if let Some(core) = connection.core.upgrade() {
        core.counters
            .refused(otedama_shared::ipc::Refusal::LoginDeadline, 1);
    }
}

/// Binds `address` on this core and serves QUIC there until the process ends.
pub fn start(
    core: &Rc<Core>,
    address: SocketAddr,
    shared: Arc<QuicShared>,
    forward_to: Vec<ForwardSender>,
    mut forwarded: ForwardReceiver,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(address)
        .map_err(|e| anyhow::anyhow!("binding QUIC listener {address}: {e}"))?;
    // SAFETY: dup(2) of a socket this core owns; the std socket closes its own descriptor.
    let sender = unsafe {
        use std::os::fd::{AsRawFd, FromRawFd};
        let fd = libc::dup(socket.as_raw_fd());
        anyhow::ensure!(fd >= 0, "dup of the QUIC socket failed");
        std::net::UdpSocket::from_raw_fd(fd)
    };
    sender.set_nonblocking(true)?;
    let mut endpoint_config = EndpointConfig::new(shared.reset_key.clone());
    let (partition, key) = (core.partition, shared.connection_id_key);
    endpoint_config.cid_generator(move || -> Box<dyn ConnectionIdGenerator> {
        Box::new(PartitionedIds { partition, key })
    });
    let endpoint = quinn_proto::Endpoint::new(
        Arc::new(endpoint_config),
        Some(shared.server_config.clone()),
        false,
        None,
    );
    let front = Rc::new(QuicFrontEnd {
        endpoint: RefCell::new(endpoint),
        sender,
        connections: RefCell::new(HashMap::new()),
        forward_to,
        logins_pending: Cell::new(0),
        shared,
        send_buffer: RefCell::new(Vec::with_capacity(1500)),
    });
    let receiver = (core.clone(), front.clone());
    glommio::spawn_local(async move {
        let (core, front) = receiver;
        let mut buffer = vec![0u8; DATAGRAM_BYTES_MAX];
        loop {
            match socket.recv_from(&mut buffer).await {
                Ok((length, remote)) => front.receive(&core, &buffer[..length], remote),
                Err(error) => {
                    tracing::warn!(%error, "QUIC receive failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
    .detach();
    let core = core.clone();
    glommio::spawn_local(async move {
        while let Some(datagram) = forwarded.next().await {
            front.handle_datagram(&core, datagram.data, datagram.remote);
        }
    })
    .detach();
    Ok(())
}

/// The listeners' memory of TLS sessions for resumption, bounded by
/// `QUIC_RESUMABLE_SESSIONS_MAX`: a client that resumes from many addresses, or many clients,
/// push out the oldest instead of growing it.
fn resumable_sessions() -> Arc<dyn rustls::server::StoresServerSessions> {
    rustls::server::ServerSessionMemoryCache::new(QUIC_RESUMABLE_SESSIONS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// One session more than `QUIC_RESUMABLE_SESSIONS_MAX` forgets exactly one: the
    /// oldest. Every other stays resumable.
    #[test]
    fn resumable_sessions_hold_their_limit() {
        let sessions = resumable_sessions();
        let key = |n: usize| (n as u64).to_le_bytes().to_vec();
        for n in 0..=QUIC_RESUMABLE_SESSIONS_MAX {
            assert!(sessions.put(key(n), vec![1; 100]));
        }
        let kept = (0..=QUIC_RESUMABLE_SESSIONS_MAX)
            .filter(|&n| sessions.get(&key(n)).is_some())
            .count();
        assert_eq!(kept, QUIC_RESUMABLE_SESSIONS_MAX);
        assert!(sessions.get(&key(0)).is_none(), "the oldest goes first");
        assert!(sessions.get(&key(QUIC_RESUMABLE_SESSIONS_MAX)).is_some());
    }

    #[test]
    fn connection_ids_carry_the_partition_only_to_the_key_holder() {
        let key = [7u8; 32];
        let mut ids = PartitionedIds { partition: 42, key };
        let (mut first_bytes, mut wrong_key_reads) = (HashSet::new(), HashSet::new());
        for _ in 0..200 {
            let id = ids.generate_cid();
            assert_eq!(partition_of(&key, &id), Some(42));
            // Without the key, the first byte and what it decodes to look random.
            first_bytes.insert(id[0]);
            wrong_key_reads.insert(partition_of(&[8u8; 32], &id));
        }
        assert!(
            first_bytes.len() > 100,
            "{} distinct first bytes",
            first_bytes.len()
        );
        assert!(wrong_key_reads.len() > 100);
        assert_eq!(partition_of(&key, &[1, 2, 3]), None);
    }

    /// The cross-core queue takes `QUIC_FORWARDED_QUEUED_MAX` datagrams and drops the next;
    /// each one the receiving core takes makes room for one more.
    #[test]
    fn the_forward_queue_holds_its_bound_and_no_more() {
        let (sender, mut receiver) = forward_queue();
        let datagram = || Forwarded {
            data: BytesMut::from(&b"x"[..]),
            remote: "127.0.0.1:1".parse().unwrap(),
        };
        for _ in 0..QUIC_FORWARDED_QUEUED_MAX {
            assert!(sender.send(datagram()));
        }
        assert!(!sender.send(datagram()), "one past the bound is dropped");
        futures_lite::future::block_on(receiver.next()).expect("a datagram");
        assert!(sender.send(datagram()), "a taken datagram makes room");
        assert!(!sender.send(datagram()));
    }
}
