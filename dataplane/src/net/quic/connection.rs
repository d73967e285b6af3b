//! One QUIC miner: its quinn-proto connection and the one bidirectional stream that carries
//! its SV2 session, driven by datagrams and timers on the owning core, with the read path
//! held back by the same share gates as TCP and a deadline to log in.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, Dir, Event, ReadError, StreamEvent, StreamId, VarInt};

use otedama_shared::ipc::Refusal;
use otedama_shared::sv2::server::Session;
use otedama_shared::sv2::FrameDecoder;

use crate::net::now_s;
use crate::net::sv2::{handle_frame, V2Link};
use crate::net::wire::SEND_BACKLOG_BYTES_MAX;
use crate::rt::gate::Gate;
use crate::rt::{Core, Peer, Protocol};

use super::*;

/// One QUIC connection and its SV2 session.
pub struct QuicConnection {
    pub(super) front: Rc<QuicFrontEnd>,
    pub(super) handle: ConnectionHandle,
    pub(super) quic: RefCell<quinn_proto::Connection>,
    pub(super) session: RefCell<Session>,
    /// The bidirectional stream the mining protocol runs on.
    pub(super) stream: Cell<Option<StreamId>>,
    pub(super) decoder: RefCell<FrameDecoder>,
    /// Frames the stream's flow control did not take yet.
    pub(super) pending_send: RefCell<Vec<u8>>,
    pub(super) awaiting_ack: Gate,
    pub(super) last_read_s: Cell<u64>,
    pub(super) peer_ip: Cell<IpAddr>,
    pub(super) registration: Cell<Option<u64>>,
    pub(super) drained: Cell<bool>,
    pub(super) timer_waker: RefCell<Option<Waker>>,
    pub(super) timer_notified: Cell<bool>,
    /// Whether a task waits to go on with frames held at a bound (`read_frames`).
    pub(super) resume_scheduled: Cell<bool>,
    /// Set once the session has a channel; until then it counts in `logins_pending`.
    pub(super) logged_in: Cell<bool>,
    /// The connection's place under the per-address cap, taken once its handshake has
    /// proved the address (`Event::Connected`) and given back when it drains. Not at the
    /// first Initial: its source address may be spoofed, and counting it would let anyone
    /// use up another address's places.
    pub(super) address_slot: RefCell<Option<crate::rt::admission::AddressSlot>>,
    /// Whether the peer's address is proved and counted. Until then nothing it sent is
    /// read: 0-RTT data would otherwise let a client mine on connections that never finish
    /// their handshake and so never count against the cap.
    pub(super) address_proven: Cell<bool>,
    pub(super) core: std::rc::Weak<Core>,
}

impl QuicConnection {
    /// After input (a datagram, a timeout): take the application's events, run received
    /// frames through the session, then send.
    pub(super) fn drive(self: &Rc<Self>, core: &Rc<Core>) {
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
                    Err(_) => {
                        core.counters.refused(Refusal::Oversize, 1);
                        return Err("frame too large");
                    }
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
                if let Some(core) = self.core.upgrade() {
                    core.counters.refused(Refusal::SendBacklog, 1);
                }
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
                crate::net::sv2::release_extranonce_prefixes(&core, &mut self.session.borrow_mut());
                core.counters.disconnected(crate::rt::Protocol::Quic);
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

    fn is_closed(&self) -> bool {
        self.quic.borrow().is_closed()
    }

    fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        let idle = self.last_read_s.get() < cutoff_s;
        if idle {
            self.close();
        }
        idle
    }

    /// Frames wait in the decoder until the core has room (`resume_when_room`).
    fn peer(self: Rc<Self>) -> Peer {
        self
    }

    fn held_back(&self, _now_s: u64) -> bool {
        self.resume_scheduled.get()
    }
}

/// Sleeps until the connection's next QUIC deadline (loss detection, acks, idle), or
/// until `drive` changed it, and handles it; ends once the connection has drained.
pub(super) async fn timer_task(connection: Rc<QuicConnection>) {
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
pub(super) async fn login_deadline(connection: Rc<QuicConnection>) {
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
