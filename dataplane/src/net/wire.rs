//! One miner's TCP socket, whatever protocol runs on it: non-blocking sends with a
//! backlog only while the kernel refuses bytes, the idle clock, the close, and the
//! per-connection allowance of shares awaiting the disk.
//!
//! Replies are sent straight from the caller's buffer with a non-blocking `send`; only what
//! the kernel does not take waits in a backlog, drained by a task that exists only while
//! there is a backlog. So an idle connection owns a socket and no buffers.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::rt::gate::Gate;

/// Shares one connection may have awaiting durability. At the limit the connection is not
/// read until acknowledgements arrive, so a flooding miner slows itself, not its core.
pub const SHARES_AWAITING_ACK_PER_CONNECTION_MAX: usize = 256;
/// Bytes the kernel refused that a connection may queue; a miner that stops reading while
/// jobs keep coming is disconnected at this point instead of growing the pool's memory.
pub const SEND_BACKLOG_BYTES_MAX: usize = 256 * 1024;

pub struct Wire {
    stream: RefCell<TcpStream>,
    backlog: RefCell<Vec<u8>>,
    backlog_writer_running: Cell<bool>,
    closed: Cell<bool>,
    /// Closed because the miner did not read (`SEND_BACKLOG_BYTES_MAX`), for the count.
    closed_for_backlog: Cell<bool>,
    /// Unix seconds of the last read; the core's idle sweep closes silent connections.
    /// (A per-read timeout would keep a timer per idle connection; one sweep keeps none.)
    last_read_s: Cell<u64>,
    /// Set once the session is mining (V1 subscribed and authorized, V2 a channel open);
    /// until then the login deadline stands (`rt::admission`).
    pub(crate) logged_in: Cell<bool>,
    /// When the unfinished line (or frame) now buffered began, if one is.
    pub(crate) partial_line_since_s: Cell<Option<u64>>,
    /// Whether this wire has an entry in the core's partial-line deadline queue.
    pub(crate) partial_line_deadline_queued: Cell<bool>,
    /// Whether the reader waits at a gate (back-pressure): the pool is not reading, so
    /// an unfinished line is not the peer's delay.
    pub(crate) gated: Cell<bool>,
    /// When the reader last stopped waiting at a gate: for a moment after, what the miner
    /// sent meanwhile is still being read, and its silence is still the pool's.
    pub(crate) ungated_at_s: Cell<u64>,
    pub(crate) awaiting_ack: Gate,
    pub(crate) peer_ip: Option<std::net::IpAddr>,
}

impl Wire {
    pub fn new(stream: TcpStream, now_s: u64) -> Rc<Self> {
        let peer_ip = stream.peer_addr().ok().map(|peer| peer.ip());
        let _ = stream.set_nodelay(true);
        Rc::new(Wire {
            stream: RefCell::new(stream),
            backlog: RefCell::new(Vec::new()),
            backlog_writer_running: Cell::new(false),
            closed: Cell::new(false),
            closed_for_backlog: Cell::new(false),
            last_read_s: Cell::new(now_s),
            logged_in: Cell::new(false),
            partial_line_since_s: Cell::new(None),
            partial_line_deadline_queued: Cell::new(false),
            gated: Cell::new(false),
            ungated_at_s: Cell::new(0),
            awaiting_ack: Gate::new(SHARES_AWAITING_ACK_PER_CONNECTION_MAX),
            peer_ip,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Whether the pool closed this connection because the miner did not read.
    pub fn closed_for_backlog(&self) -> bool {
        self.closed_for_backlog.get()
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.borrow().peer_addr().ok()
    }

    /// Sends `bytes`: straight to the socket if nothing is waiting before them, else
    /// behind the backlog. Closes the connection on a socket error or a full backlog.
    pub fn send(self: &Rc<Self>, bytes: &[u8]) {
        if bytes.is_empty() || self.closed.get() {
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        let sent = if backlog.is_empty() {
            match send_now(self.stream.borrow().as_raw_fd(), bytes) {
                Ok(sent) => sent,
                Err(_) => {
                    drop(backlog);
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
                tracing::debug!("miner is not reading; disconnecting");
                self.closed_for_backlog.set(true);
                self.close();
                return;
            }
            backlog.extend_from_slice(&bytes[sent..]);
        }
        let start_writer = !backlog.is_empty() && !self.backlog_writer_running.get();
        // No borrow of the backlog may be held across the spawn: glommio's `spawn_local`
        // polls the new task right away, inside this call.
        drop(backlog);
        if start_writer {
            self.backlog_writer_running.set(true);
            // Into the default task queue whoever sends (the acknowledger's queue, which
            // the executor favours, is for acknowledging only).
            glommio::spawn_local_into(
                drain_backlog(self.clone()),
                glommio::TaskQueueHandle::default(),
            )
            .expect("every executor has its default task queue")
            .detach();
        }
    }

    /// Reads into the core's receive buffer, borrowing it only while the read is polled
    /// (every connection of the core shares it); `Ok(0)` at end of stream. A successful
    /// read restarts the idle clock.
    pub async fn read(&self, buffer: &RefCell<Box<[u8]>>) -> std::io::Result<usize> {
        let read = poll_fn(|cx| {
            let mut stream = self.stream.borrow_mut();
            let mut buffer = buffer.borrow_mut();
            Pin::new(&mut *stream).poll_read(cx, &mut buffer[..])
        })
        .await?;
        self.last_read_s.set(super::now_s());
        Ok(read)
    }

    /// The next read for a session, once this connection and its core are below their
    /// limits of shares awaiting the disk (back-pressure: a flooding miner slows itself);
    /// the reason to close when the stream ended or the pool closed it.
    pub async fn read_for_session(&self, core: &crate::rt::Core) -> Result<usize, &'static str> {
        self.wait_for_room(core).await;
        let read = match self.read(&core.receive_buffer).await {
            Ok(0) => return Err("peer closed"),
            Ok(read) => read,
            Err(_) => return Err("read error"),
        };
        if self.is_closed() {
            return Err("closed by the pool");
        }
        Ok(read)
    }

    /// Waits until this connection and its core have room for another share
    /// (`Core::has_room`); meanwhile the connection counts as gated, so its unfinished
    /// line's deadline does not run against the miner.
    pub async fn wait_for_room(&self, core: &crate::rt::Core) {
        if core.has_room(&self.awaiting_ack) {
            return;
        }
        self.gated.set(true);
        core.wait_for_room(&self.awaiting_ack).await;
        self.gated.set(false);
        self.ungated_at_s.set(super::now_s());
    }

    /// Waits until `gate` has room, counting as gated meanwhile (`wait_for_room`).
    pub async fn wait_at(&self, gate: &crate::rt::gate::Gate) {
        if gate.has_room() {
            return;
        }
        self.gated.set(true);
        gate.below_limit().await;
        self.gated.set(false);
        self.ungated_at_s.set(super::now_s());
    }

    /// Whether the pool holds this reader back at `now_s`: it waits at a gate, or left
    /// one less than 2 s ago and may still be reading what the miner sent meanwhile. Its
    /// silence is then the pool's, not the miner's.
    pub(crate) fn held_back(&self, now_s: u64) -> bool {
        self.gated.get() || now_s.saturating_sub(self.ungated_at_s.get()) < 2
    }

    /// Closes the connection if it has sent nothing since `cutoff_s`; whether this call
    /// closed it (one closed before, for whatever reason, is not counted again).
    pub(crate) fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        let idle = self.last_read_s.get() < cutoff_s && !self.closed.get();
        if idle {
            self.close();
        }
        idle
    }

    /// Ends the connection: the reader sees end-of-stream and unregisters it.
    pub(crate) fn close(&self) {
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
async fn drain_backlog(wire: Rc<Wire>) {
    loop {
        if wire.backlog.borrow().is_empty() || wire.closed.get() {
            break;
        }
        let written = poll_fn(|cx| {
            let mut stream = wire.stream.borrow_mut();
            let backlog = wire.backlog.borrow();
            Pin::new(&mut *stream).poll_write(cx, &backlog)
        })
        .await;
        match written {
            Ok(0) | Err(_) => {
                wire.close();
                break;
            }
            Ok(written) => {
                wire.backlog.borrow_mut().drain(..written);
            }
        }
    }
    *wire.backlog.borrow_mut() = Vec::new();
    wire.backlog_writer_running.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miner that stops reading may have exactly `SEND_BACKLOG_BYTES_MAX` bytes queued
    /// for it past what the kernel took; one byte more closes its connection.
    #[test]
    fn a_miner_that_stops_reading_is_closed_exactly_past_the_backlog_limit() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let address = listener.local_addr().unwrap();
                // The kernel completes the handshake before `accept`; this peer never reads.
                let silent_peer = std::net::TcpStream::connect(address).unwrap();
                let stream = listener.accept().await.unwrap();
                let wire = Wire::new(stream, 0);
                let chunk = vec![0u8; 64 * 1024];
                // Fill the kernel's buffers until part of a send is left over.
                for _ in 0..10_000 {
                    if !wire.backlog.borrow().is_empty() {
                        break;
                    }
                    wire.send(&chunk);
                }
                let queued = wire.backlog.borrow().len();
                assert!(queued > 0 && queued <= SEND_BACKLOG_BYTES_MAX);
                assert!(!wire.is_closed());
                wire.send(&vec![0u8; SEND_BACKLOG_BYTES_MAX - queued]);
                assert!(!wire.is_closed(), "at the limit the connection stays");
                assert_eq!(wire.backlog.borrow().len(), SEND_BACKLOG_BYTES_MAX);
                wire.send(&[0]);
                assert!(wire.is_closed(), "one byte past the limit closes it");
                drop(silent_peer);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
