//! Stratum V2 over TCP: the Noise handshake and transport (`NoiseServer`), then frames
//! into the sans-IO `sv2::server::Session`. Reads land in the core's receive buffer;
//! replies are encrypted into one buffer per flush and sent through the connection's
//! `Wire`, so a batch of acknowledgements costs one send.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use glommio::net::TcpStream;

use otedama_shared::bans::BanList;
use otedama_shared::error_code::ErrorCode;
use otedama_shared::ipc::Refusal;
use otedama_shared::limits::SV2_PAYLOAD_BYTES_MAX;
use otedama_shared::pow_batch::{HashedShare, PowInput};
use otedama_shared::sv2::noise::NoiseServer;
use otedama_shared::sv2::server::{
    error_code, AcceptedShare, Context, Outcome, PendingPow, Session,
};
use otedama_shared::sv2::FrameHeader;
use otedama_shared::{Job, JobBook};

use super::now_s;
use super::wire::Wire;
use crate::rt::gate::Gate;
use crate::rt::{AwaitingAck, Core, Peer, Protocol};

/// A Stratum V2 connection as the core sees it, whatever carries its frames.
pub trait V2Link {
    fn session(&self) -> &RefCell<Session>;
    /// Sends what the session queued.
    fn flush(&self);
    /// Shares of this connection awaiting durability.
    fn awaiting_ack(&self) -> &Gate;
    fn protocol(&self) -> Protocol;
    fn peer_ip(&self) -> Option<IpAddr>;
    fn close(&self);
    /// Whether the connection is closed (or closing) already.
    fn is_closed(&self) -> bool;
    /// Closes the connection if it has sent nothing since `cutoff_s`.
    fn close_if_idle_since(&self, cutoff_s: u64) -> bool;
    /// Whether the pool holds the reader back (back-pressure): its silence is then the
    /// pool's, not the miner's.
    fn held_back(&self, _now_s: u64) -> bool {
        false
    }

    /// This connection as the core holds it.
    fn peer(self: Rc<Self>) -> Peer;

    fn send_job(&self, job: &Job, now_s: u64) {
        self.session().borrow_mut().handle_new_job(job, now_s);
        self.flush();
    }

    /// Applies a new ban list; closes the connection if it covers the peer's network or
    /// a worker on one of its channels, and returns `true` if that closed it (a
    /// connection closed already is not closed, nor counted, twice).
    fn apply_bans(&self, bans: &Arc<BanList>) -> bool {
        let by_worker = self.session().borrow_mut().update_bans(bans.clone());
        let banned = by_worker || self.peer_ip().is_some_and(|ip| bans.bans_ip(ip));
        if !banned || self.is_closed() {
            return false;
        }
        self.close();
        true
    }
}

/// Every V2 connection, whatever its transport, is a `Link` through what `V2Link` gives.
/// Named by its full path, not imported, so calls here mean `V2Link`'s methods.
impl<T: V2Link> crate::rt::Link for T {
    fn send_job(&self, job: &Job, now_s: u64) {
        V2Link::send_job(self, job, now_s);
    }

    fn apply_bans(&self, bans: &Arc<BanList>) -> bool {
        V2Link::apply_bans(self, bans)
    }

    fn awaiting_ack(&self) -> &Gate {
        V2Link::awaiting_ack(self)
    }

    fn held_back(&self, now_s: u64) -> bool {
        V2Link::held_back(self, now_s)
    }

    fn session_timeout(&self, now_s: u64, _jobs: &JobBook) -> bool {
        self.session()
            .try_borrow_mut()
            .is_ok_and(|mut session| session.handle_timeout(now_s))
    }

    fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        V2Link::close_if_idle_since(self, cutoff_s)
    }

    fn flush(&self) {
        V2Link::flush(self);
    }

    /// Sends Reconnect (to the same host and port) once the connection is set up; `false`
    /// before that, or while its session is borrowed elsewhere this moment (then the drain
    /// treats it as one it cannot ask: closed once owed nothing).
    fn ask_to_reconnect(&self) -> bool {
        let Ok(mut session) = self.session().try_borrow_mut() else {
            return false;
        };
        let asked = session.request_reconnect();
        drop(session);
        if asked {
            V2Link::flush(self);
        }
        asked
    }

    fn close(&self) {
        V2Link::close(self);
    }
}

/// A V2 share awaiting the share log.
struct AwaitingDisk {
    link: Rc<dyn V2Link>,
    share: Box<AcceptedShare>,
}

impl crate::rt::AwaitingDisk for AwaitingDisk {
    fn answer(self: Box<Self>, durable: bool, now_s: u64, _jobs: &JobBook) -> (Option<f64>, Peer) {
        let mut session = self.link.session().borrow_mut();
        if durable {
            session.handle_share_durable(&self.share, now_s);
        } else {
            session.handle_share_store_failed(&self.share);
        }
        drop(session);
        (Some(self.share.record.difficulty), self.link.peer())
    }
}

/// A V2 scrypt share awaiting the core's hasher.
struct AwaitingPow {
    link: Rc<dyn V2Link>,
    pending: Box<PendingPow>,
}

impl crate::rt::AwaitingPow for AwaitingPow {
    fn input(&self) -> PowInput<'_> {
        self.pending.input()
    }

    fn finish(self: Box<Self>, core: &Rc<Core>, hashed: &HashedShare, now_s: u64) {
        let AwaitingPow { link, pending } = *self;
        let outcome = {
            let mut duplicates = core.duplicates.borrow_mut();
            link.session()
                .borrow_mut()
                .handle_pow(*pending, &hashed.pow, now_s, &mut duplicates)
        };
        core.awaiting_durability.give_back(1);
        // A session never asks to close from `handle_pow`.
        let _ = apply_outcome(core, &link, outcome);
        link.flush();
        link.awaiting_ack().give_back(1);
    }
}

/// Stratum V2 over TCP with Noise.
pub struct Connection {
    wire: Rc<Wire>,
    session: RefCell<Session>,
    noise: RefCell<NoiseServer>,
}

impl V2Link for Connection {
    fn session(&self) -> &RefCell<Session> {
        &self.session
    }

    fn awaiting_ack(&self) -> &Gate {
        &self.wire.awaiting_ack
    }

    fn protocol(&self) -> Protocol {
        Protocol::V2
    }

    fn peer_ip(&self) -> Option<IpAddr> {
        self.wire.peer_ip
    }

    fn close(&self) {
        self.wire.close();
    }

    fn is_closed(&self) -> bool {
        self.wire.is_closed()
    }

    fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        self.wire.close_if_idle_since(cutoff_s)
    }

    fn held_back(&self, now_s: u64) -> bool {
        self.wire.held_back(now_s)
    }

    fn peer(self: Rc<Self>) -> Peer {
        self
    }

    /// Encrypts and sends what the session queued. Nothing goes out before the handshake
    /// is done (the session cannot have queued anything before SetupConnection).
    fn flush(&self) {
        let mut session = self.session.borrow_mut();
        let plaintext = session.transmit_pending();
        if plaintext.is_empty() {
            return;
        }
        let mut noise = self.noise.borrow_mut();
        let Some(transport) = noise.transport() else {
            session.transmitted();
            return;
        };
        let mut ciphertext = Vec::with_capacity(plaintext.len() + 64);
        transport.encrypt_frames(plaintext, &mut ciphertext);
        session.transmitted();
        drop(noise);
        drop(session);
        self.wire.send(&ciphertext);
    }
}

pub async fn serve_connection(core: Rc<Core>, stream: TcpStream) {
    let wire = Wire::new(stream, now_s());
    // Held until the connection ends: its place under the per-address cap.
    let Some(_address_slot) = core.admit_stream(&wire, now_s()) else {
        return;
    };
    let Some(authority) = core.config.sv2_authority.as_ref() else {
        tracing::error!("an SV2 listener without an authority key");
        return;
    };
    let noise = NoiseServer::new(
        authority,
        core.config.sv2_certificate_validity_s,
        SV2_PAYLOAD_BYTES_MAX,
        &mut *core.rng.borrow_mut(),
    );
    let connection = Rc::new(Connection {
        wire,
        session: RefCell::new(Session::new(core.front_end_config())),
        noise: RefCell::new(noise),
    });
    let link: Rc<dyn V2Link> = connection.clone();
    let id = core.register(connection.clone());
    core.counters.connected(Protocol::V2);
    let reason = read_loop(&core, &connection, &link).await;
    tracing::debug!(peer = ?connection.wire.peer_addr(), reason, "SV2 connection closed");
    connection.wire.close();
    if connection.wire.closed_for_backlog() {
        core.counters.refused(Refusal::SendBacklog, 1);
    }
    core.unregister(id);
    release_extranonce_prefixes(&core, &mut connection.session.borrow_mut());
    core.counters.disconnected(Protocol::V2);
}

async fn read_loop(
    core: &Rc<Core>,
    connection: &Rc<Connection>,
    link: &Rc<dyn V2Link>,
) -> &'static str {
    let mut handshake_reply = Vec::new();
    let mut paused = false;
    loop {
        let now_s = if paused {
            // Frames read and not yet handled wait in the Noise transport: go on with
            // them once there is room, before reading more.
            connection.wire.wait_for_room(core).await;
            if connection.wire.is_closed() {
                return "closed by the pool";
            }
            now_s()
        } else {
            let read = match connection.wire.read_for_session(core).await {
                Ok(read) => read,
                Err(reason) => return reason,
            };
            let now_s = now_s();
            {
                let received = core.receive_buffer.borrow();
                let mut noise = connection.noise.borrow_mut();
                let fed = noise.feed(
                    &received[..read],
                    now_s as u32,
                    &mut *core.rng.borrow_mut(),
                    &mut handshake_reply,
                );
                if fed.is_err() {
                    core.counters.refused(Refusal::ProtocolError, 1);
                    return "noise handshake failed";
                }
            }
            if !handshake_reply.is_empty() {
                connection.wire.send(&handshake_reply);
                handshake_reply = Vec::new();
            }
            now_s
        };
        paused = match handle_frames(core, connection, link, now_s) {
            Ok(paused) => paused,
            Err(reason) => {
                connection.flush();
                return reason;
            }
        };
        connection.flush();
        // After a read or a resume alike: the deadlines follow what is left unhandled
        // and whether a channel is open now.
        let wire = &connection.wire;
        let partial = connection
            .noise
            .borrow_mut()
            .transport()
            .is_some_and(|transport| transport.has_partial_frame());
        core.note_partial_line(wire, partial, now_s);
        if !wire.logged_in.get() && connection.session.borrow().channel_count() > 0 {
            wire.logged_in.set(true);
        }
    }
}

/// Runs every whole frame received so far through the session, while the connection and
/// its core have room for another share in flight (`Core::has_room`); `Ok(true)` if it
/// stopped at a bound with frames left for later.
fn handle_frames(
    core: &Rc<Core>,
    connection: &Connection,
    link: &Rc<dyn V2Link>,
    now_s: u64,
) -> Result<bool, &'static str> {
    let mut noise = connection.noise.borrow_mut();
    let Some(transport) = noise.transport() else {
        return Ok(false);
    };
    loop {
        if !core.has_room(&connection.wire.awaiting_ack) {
            return Ok(transport.has_partial_frame());
        }
        let (header, payload) = match transport.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(false),
            Err(error) => {
                tracing::debug!(%error, "SV2 transport error");
                let refusal = match error {
                    otedama_shared::sv2::noise::NoiseError::TooLarge { .. } => Refusal::Oversize,
                    _ => Refusal::ProtocolError,
                };
                core.counters.refused(refusal, 1);
                return Err("noise transport error");
            }
        };
        handle_frame(core, link, &header, payload, now_s)?;
    }
}

/// Gives back every extranonce prefix a session's channels hold or have released: its
/// connection is gone.
pub(crate) fn release_extranonce_prefixes(core: &Core, session: &mut Session) {
    while let Some(prefix) = session.poll_released_extranonce_prefix() {
        core.release_extranonce1(&prefix);
    }
    for prefix in session.extranonce_prefixes() {
        core.release_extranonce1(prefix);
    }
}

/// Runs one frame through a connection's session and acts on the outcome.
pub(crate) fn handle_frame(
    core: &Rc<Core>,
    link: &Rc<dyn V2Link>,
    header: &FrameHeader,
    payload: &[u8],
    now_s: u64,
) -> Result<(), &'static str> {
    {
        let outcome = {
            let jobs = core.jobs.borrow();
            let mut duplicates = core.duplicates.borrow_mut();
            let mut allocate = || {
                let prefix = core.next_extranonce1();
                if prefix.is_none() {
                    core.counters.refused(Refusal::ExtranoncesExhausted, 1);
                }
                prefix
            };
            let mut context = Context {
                now_s,
                jobs: &jobs,
                duplicates: &mut duplicates,
                allocate_extranonce_prefix: &mut allocate,
            };
            let mut session = link.session().borrow_mut();
            let outcome = session.handle_frame(header, payload, &mut context);
            core.count_filter_refusals(context.duplicates);
            while let Some(prefix) = session.poll_released_extranonce_prefix() {
                core.release_extranonce1(&prefix);
            }
            outcome
        };
        apply_outcome(core, link, outcome)
    }
}

/// The Stratum V1 code family a V2 rejection is counted under, so the rejection metrics
/// cover both protocols with one label set.
fn counted_as(code: &str) -> ErrorCode {
    match code {
        error_code::DIFFICULTY_TOO_LOW => ErrorCode::LowDifficulty,
        error_code::DUPLICATE_SHARE => ErrorCode::Duplicate,
        error_code::STALE_SHARE | error_code::INVALID_JOB_ID => ErrorCode::JobNotFound,
        error_code::UNKNOWN_USER | error_code::INVALID_USER_IDENTITY => {
            ErrorCode::UnauthorizedWorker
        }
        _ => ErrorCode::Other,
    }
}

pub(crate) fn apply_outcome(
    core: &Rc<Core>,
    connection: &Rc<dyn V2Link>,
    outcome: Outcome,
) -> Result<(), &'static str> {
    match outcome {
        Outcome::Continue => {}
        Outcome::Rejected(code) => core.counters.rejected(counted_as(code)),
        Outcome::Close(reason) => {
            core.counters.refused(Refusal::ProtocolError, 1);
            return Err(reason);
        }
        Outcome::NeedsPow(pending) => {
            connection.awaiting_ack().take(1);
            core.queue_pow(Box::new(AwaitingPow {
                link: connection.clone(),
                pending,
            }));
        }
        Outcome::BlockOnly(uncredited, code) => {
            core.counters.rejected(counted_as(code));
            tracing::warn!(worker = %uncredited.block.worker, refused_with = code, "a block from a share that cannot be credited (its channel closed, or it missed the share target): sent up and recorded, not credited");
            let protocol = connection.protocol();
            core.store_uncredited_block(connection.clone().peer(), *uncredited, protocol);
        }
        Outcome::ShareAccepted(mut accepted) => {
            let block = accepted.block.take();
            // The session cannot tell TCP from QUIC; the record says which it was.
            accepted.record.protocol = Some(connection.protocol());
            // Stamped before the append: the writer may take the share at once.
            let validated_at = std::time::Instant::now();
            if core.store_share(connection.awaiting_ack(), &accepted.record, block) {
                core.await_durability(AwaitingAck {
                    share: Box::new(AwaitingDisk {
                        link: connection.clone(),
                        share: accepted,
                    }),
                    protocol: connection.protocol(),
                    validated_at,
                });
            } else {
                connection
                    .session()
                    .borrow_mut()
                    .handle_share_store_failed(&accepted);
                core.counters.rejected(ErrorCode::Other);
            }
        }
    }
    Ok(())
}
