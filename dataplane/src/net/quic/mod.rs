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
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::UdpSocket;
use quinn_proto::{
    ConnectionHandle, ConnectionIdGenerator, DatagramEvent, EndpointConfig, ServerConfig,
    TransportConfig, VarInt,
};

use otedama_shared::ipc::Refusal;
use otedama_shared::limits::SV2_PAYLOAD_BYTES_MAX;
use otedama_shared::sv2::server::Session;
use otedama_shared::sv2::FrameDecoder;

use super::now_s;
use super::sv2::V2Link;
use super::wire::SHARES_AWAITING_ACK_PER_CONNECTION_MAX;
use crate::rt::gate::Gate;
use crate::rt::Core;

mod connection;
mod routing;

pub use connection::QuicConnection;
use connection::{login_deadline, timer_task};
use routing::PartitionedIds;
pub use routing::{forward_queue, partition_of, ForwardReceiver, ForwardSender, Forwarded};

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
/// Bytes of those datagrams one core may have waiting: short-header packets need no
/// address validation, so a spoofer could otherwise queue 4,096 datagrams of 64 KiB each
/// (256 MiB) on a lagging core. 2 MiB is some 1,400 full-size packets.
pub const QUIC_FORWARDED_QUEUED_BYTES_MAX: usize = 2 << 20;
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
        // A draining process takes no new miner: the client's next attempt may reach the
        // replacement.
        let draining = core.draining.get();
        // An address a Retry has proved counts against its cap from its first packet, so
        // it cannot hold more handshakes than connections; an unproved one counts once
        // its handshake proves it (`Event::Connected`), since its source may be spoofed.
        let mut proven_slot = None;
        let mut over_cap = false;
        if !banned && !full && !draining && incoming.remote_address_validated() {
            match core.admit(Some(remote.ip())) {
                Some(slot) => proven_slot = slot,
                None => over_cap = true,
            }
        }
        let mut buffer = self.send_buffer.borrow_mut();
        buffer.clear();
        if banned || full || over_cap || draining {
            tracing::debug!(%remote, banned, full, over_cap, draining, "QUIC connection refused");
            // (`Core::admit` counted an address over its cap.)
            if banned {
                core.counters.refused(Refusal::Banned, 1);
            } else if full {
                core.counters.refused(Refusal::QuicCoreFull, 1);
            }
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
            session: RefCell::new(Session::new(core.front_end_config())),
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
            .set(Some(core.register(link.peer())));
        core.counters.connected(crate::rt::Protocol::Quic);
        self.logins_pending.set(self.logins_pending.get() + 1);
        glommio::spawn_local(timer_task(connection.clone())).detach();
        glommio::spawn_local(login_deadline(connection.clone())).detach();
        connection.drive(core);
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

    /// Large datagrams meet `QUIC_FORWARDED_QUEUED_BYTES_MAX` first: exactly that many
    /// bytes are queued, and a byte more is dropped.
    #[test]
    fn the_forward_queue_holds_its_byte_bound() {
        let (sender, mut receiver) = forward_queue();
        let datagram = |bytes: usize| Forwarded {
            data: BytesMut::from(&vec![0u8; bytes][..]),
            remote: "127.0.0.1:1".parse().unwrap(),
        };
        let largest = DATAGRAM_BYTES_MAX - DATAGRAM_BYTES_MAX % 1024;
        let fitting = QUIC_FORWARDED_QUEUED_BYTES_MAX / largest;
        for _ in 0..fitting {
            assert!(sender.send(datagram(largest)));
        }
        let rest = QUIC_FORWARDED_QUEUED_BYTES_MAX - fitting * largest;
        assert!(!sender.send(datagram(rest + 1)), "one byte past the bound");
        assert!(sender.send(datagram(rest)), "up to the bound exactly");
        assert!(!sender.send(datagram(1)));
        futures_lite::future::block_on(receiver.next()).expect("a datagram");
        assert!(
            sender.send(datagram(largest)),
            "a taken datagram makes room"
        );
    }
}
