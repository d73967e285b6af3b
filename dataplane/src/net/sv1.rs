//! Stratum V1 over TCP: the glue between a socket and the `Session` state machine.
//!
//! Reads land in the core's one receive buffer and are cut into lines in place; only a line
//! split across reads is copied, into a buffer freed when it completes. Replies are sent
//! straight from the session's outbox with a non-blocking `send`; only what the kernel does
//! not take waits in a per-connection backlog, drained by a task that exists only while
//! there is a backlog. So an idle connection owns a session and a socket, and no buffers.
//!
//! Accepted shares go to the share log and the reader moves on; the core acknowledges them
//! when the writer reports their batch durable (see `rt::Core::complete_shares`).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use otedama_shared::bans::BanList;
use otedama_shared::ipc::Upstream;
use otedama_shared::limits::{EXTRANONCE2_BYTES, STRATUM_LINE_BYTES_MAX};
use otedama_shared::sv1::{ErrorCode, LineFramer, Outcome, Session, SessionConfig};
use otedama_shared::Job;

use crate::rt::gate::Gate;
use crate::rt::{AwaitingAck, Core};

/// Shares one connection may have awaiting durability. At the limit the connection is not
/// read until acknowledgements arrive, so a flooding miner slows itself, not its core.
pub const SHARES_AWAITING_ACK_PER_CONNECTION_MAX: usize = 256;
/// Bytes the kernel refused that a connection may queue; a miner that stops reading while
/// jobs keep coming is disconnected at this point instead of growing the pool's memory.
pub const SEND_BACKLOG_BYTES_MAX: usize = 256 * 1024;

/// One connection's state that the core (job broadcast, acknowledgements) can reach.
pub struct Connection {
    stream: RefCell<TcpStream>,
    pub(crate) session: RefCell<Session>,
    backlog: RefCell<Vec<u8>>,
    backlog_writer_running: Cell<bool>,
    closed: Cell<bool>,
    /// Unix seconds of the last read; the core's idle sweep closes silent connections.
    /// (A per-read timeout would keep a timer per idle connection; one sweep keeps none.)
    last_read_s: Cell<u64>,
    pub(crate) awaiting_ack: Gate,
    peer_ip: Option<std::net::IpAddr>,
}

impl Connection {
    pub fn send_job(self: &Rc<Self>, job: &Job, now_s: u64) {
        let mut session = self.session.borrow_mut();
        session.handle_new_job(job, now_s);
        self.flush(&mut session);
    }

    /// Sends what the session queued: straight to the socket if nothing is waiting before
    /// it, else behind the backlog.
    pub(crate) fn flush(self: &Rc<Self>, session: &mut Session) {
        let bytes = session.transmit_pending();
        if bytes.is_empty() || self.closed.get() {
            session.transmitted();
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        let sent = if backlog.is_empty() {
            match send_now(self.stream.borrow().as_raw_fd(), bytes) {
                Ok(sent) => sent,
                Err(_) => {
                    drop(backlog);
                    session.transmitted();
                    self.close();
                    return;
                }
            }
        } else {
            0
        };
        if sent < bytes.len() {
            if backlog.len() + bytes.len() - sent > SEND_BACKLOG_BYTES_MAX {
                drop(backlog);
                session.transmitted();
                tracing::debug!("miner is not reading; disconnecting");
                self.close();
                return;
            }
            backlog.extend_from_slice(&bytes[sent..]);
        }
        session.transmitted();
        let start_writer = !backlog.is_empty() && !self.backlog_writer_running.get();
        // No borrow of the backlog may be held across the spawn: glommio's `spawn_local`
        // polls the new task right away, inside this call.
        drop(backlog);
        if start_writer {
            self.backlog_writer_running.set(true);
            glommio::spawn_local(drain_backlog(self.clone())).detach();
        }
    }

    /// Applies a new ban list; closes the connection, and returns `true`, if it covers the
    /// peer's network or a worker this connection authorized.
    pub(crate) fn apply_bans(&self, bans: &Arc<BanList>) -> bool {
        let by_worker = self.session.borrow_mut().update_bans(bans.clone());
        let banned = by_worker || self.peer_ip.is_some_and(|ip| bans.bans_ip(ip));
        if banned {
            self.close();
        }
        banned
    }

    /// Closes the connection if it has sent nothing since `cutoff_s`.
    pub(crate) fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        let idle = self.last_read_s.get() < cutoff_s;
        if idle {
            self.close();
        }
        idle
    }

    /// Ends the connection: the reader sees end-of-stream and unregisters it.
    fn close(&self) {
        if !self.closed.replace(true) {
            // SAFETY: shutdown(2) on a socket this connection owns.
            unsafe { libc::shutdown(self.stream.borrow().as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// A non-blocking send of as much as the kernel takes now; `Ok(0)` when its buffer is full.
fn send_now(fd: i32, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: send(2) reads `bytes.len()` bytes from a live slice.
    let sent = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent >= 0 {
        return Ok(sent as usize);
    }
    let error = std::io::Error::last_os_error();
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
        _ => Err(error),
    }
}

/// Writes the backlog as the socket becomes writable, then ends (and frees the backlog).
async fn drain_backlog(connection: Rc<Connection>) {
    loop {
        if connection.backlog.borrow().is_empty() || connection.closed.get() {
            break;
        }
        let written = poll_fn(|cx| {
            let mut stream = connection.stream.borrow_mut();
            let backlog = connection.backlog.borrow();
            Pin::new(&mut *stream).poll_write(cx, &backlog)
        })
        .await;
        match written {
            Ok(0) | Err(_) => {
                connection.close();
                break;
            }
            Ok(written) => {
                connection.backlog.borrow_mut().drain(..written);
            }
        }
    }
    *connection.backlog.borrow_mut() = Vec::new();
    connection.backlog_writer_running.set(false);
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn serve_connection(core: Rc<Core>, stream: TcpStream) {
    let peer_ip = stream.peer_addr().ok().map(|peer| peer.ip());
    let bans = core.bans.borrow().clone();
    if peer_ip.is_some_and(|ip| bans.bans_ip(ip)) {
        tracing::debug!(?peer_ip, "connection from a banned network refused");
        return;
    }
    let _ = stream.set_nodelay(true);
    let session = Session::new(SessionConfig {
        extranonce1: core.next_extranonce1(),
        extranonce2_size: EXTRANONCE2_BYTES,
        start_difficulty: core.config.start_difficulty,
        difficulty_min: core.config.difficulty_min,
        version_rolling_mask: core.config.version_rolling_mask,
        algorithm: core.config.algorithm,
        vardiff: core.config.vardiff,
        batch_scrypt: true,
        payout_address_rule: core.config.payout_address_rule,
        bans,
    });
    let connection = Rc::new(Connection {
        stream: RefCell::new(stream),
        session: RefCell::new(session),
        backlog: RefCell::new(Vec::new()),
        backlog_writer_running: Cell::new(false),
        closed: Cell::new(false),
        last_read_s: Cell::new(now_s()),
        awaiting_ack: Gate::new(SHARES_AWAITING_ACK_PER_CONNECTION_MAX),
        peer_ip,
    });
    let id = core.register(connection.clone());
    core.counters.connections.fetch_add(1, Relaxed);
    let reason = read_loop(&core, &connection).await;
    tracing::debug!(peer = ?connection.stream.borrow().peer_addr().ok(), reason, "connection closed");
    connection.close();
    core.unregister(id);
    core.counters.connections.fetch_sub(1, Relaxed);
}

async fn read_loop(core: &Rc<Core>, connection: &Rc<Connection>) -> &'static str {
    let mut framer = LineFramer::new(STRATUM_LINE_BYTES_MAX);
    loop {
        // Back-pressure: read no more while this miner or this core has too many shares
        // waiting for the disk.
        connection.awaiting_ack.below_limit().await;
        core.awaiting_durability.below_limit().await;
        let read = poll_fn(|cx| {
            let mut stream = connection.stream.borrow_mut();
            let mut scratch = core.receive_buffer.borrow_mut();
            Pin::new(&mut *stream).poll_read(cx, &mut scratch[..])
        })
        .await;
        let read = match read {
            Ok(0) => return "peer closed",
            Ok(read) => read,
            Err(_) => return "read error",
        };
        connection.last_read_s.set(now_s());
        if connection.closed.get() {
            return "closed by the pool";
        }
        let scratch = core.receive_buffer.borrow();
        let mut close_reason = None;
        let fed = framer.feed(&scratch[..read], |line| {
            match handle_line(core, connection, line) {
                Ok(()) => ControlFlow::Continue(()),
                Err(reason) => {
                    close_reason = Some(reason);
                    ControlFlow::Break(())
                }
            }
        });
        match (fed, close_reason) {
            (Err(_), _) => return "line too long",
            (Ok(_), Some(reason)) => return reason,
            (Ok(_), None) => {}
        }
    }
}

/// Runs one line through the session; accepted shares go to the share log.
fn handle_line(
    core: &Rc<Core>,
    connection: &Rc<Connection>,
    line: &[u8],
) -> Result<(), &'static str> {
    let mut session = connection.session.borrow_mut();
    let outcome = {
        let jobs = core.jobs.borrow();
        let mut duplicates = core.duplicates.borrow_mut();
        session.handle_line(line, now_s(), &jobs, &mut duplicates)
    };
    let result = apply_outcome(core, connection, &mut session, outcome);
    connection.flush(&mut session);
    result
}

/// Acts on what the session decided: count a rejection, store an accepted share (and send
/// its block at once), or queue a scrypt share for the core's batch hasher.
pub(crate) fn apply_outcome(
    core: &Rc<Core>,
    connection: &Rc<Connection>,
    session: &mut Session,
    outcome: Outcome,
) -> Result<(), &'static str> {
    match outcome {
        Outcome::Continue => {}
        Outcome::Rejected(code) => core.counters.rejected(code),
        Outcome::Close(_) => return Err("not JSON"),
        Outcome::NeedsPow(pending) => {
            // Counts against the miner's allowance like a share awaiting the disk, so a
            // flood of scrypt shares stops the reader too.
            connection.awaiting_ack.take(1);
            core.queue_pow(connection.clone(), pending);
        }
        Outcome::ShareAccepted(mut accepted) => {
            match core.share_log.append(core.index, &accepted.record) {
                Ok(()) => {
                    // A block goes to the control plane now, not after the share's fsync: the
                    // block is valid whether or not the share log keeps the share.
                    if let Some(block) = accepted.block.take() {
                        core.counters.block_candidates.fetch_add(1, Relaxed);
                        if core
                            .upstream
                            .try_send(Upstream::BlockCandidate(block))
                            .is_err()
                        {
                            tracing::error!("upstream queue full: block candidate dropped");
                        }
                    }
                    connection.awaiting_ack.take(1);
                    core.awaiting_durability.take(1);
                    core.awaiting.borrow_mut().push_back(AwaitingAck {
                        connection: connection.clone(),
                        share: accepted,
                        validated_at: std::time::Instant::now(),
                    });
                }
                Err(error) => {
                    tracing::error!(%error, "share not stored");
                    session.handle_share_store_failed(&accepted.request_id);
                    core.counters.rejected(ErrorCode::Other);
                }
            }
        }
    }
    Ok(())
}
