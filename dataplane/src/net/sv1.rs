//! Stratum V1 over TCP: the glue between a socket and the `Session` state machine.
//!
//! Reads land in the core's one receive buffer and are cut into lines in place; only a line
//! split across reads is copied, into a buffer freed when it completes. Replies go out
//! through the connection's `Wire` straight from the session's outbox.
//!
//! Accepted shares go to the share log and the reader moves on; the core acknowledges them
//! when the writer reports their batch durable (see `rt::Core::complete_shares`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use glommio::net::TcpStream;

use otedama_shared::bans::BanList;
use otedama_shared::ipc::Refusal;
use otedama_shared::limits::EXTRANONCE2_BYTES;
use otedama_shared::pow_batch::{HashedShare, PowInput};
use otedama_shared::sv1::{AcceptedShare, ErrorCode, Outcome, PendingPow, Session, SessionConfig};
use otedama_shared::{Job, JobBook};

use super::now_s;
use super::wire::Wire;
use crate::rt::gate::Gate;
use crate::rt::{AwaitingAck, Core, Peer, Protocol};

/// One connection's state that the core (job broadcast, acknowledgements) can reach.
pub struct Connection {
    pub(crate) wire: Rc<Wire>,
    pub(crate) session: RefCell<Session>,
}

impl Connection {
    pub fn send_job(&self, job: &Job, now_s: u64) {
        let mut session = self.session.borrow_mut();
        session.handle_new_job(job, now_s);
        self.flush(&mut session);
    }

    /// Sends what the session queued.
    pub(crate) fn flush(&self, session: &mut Session) {
        self.wire.send(session.transmit_pending());
        session.transmitted();
    }

    /// Applies a new ban list; closes the connection if it covers the peer's network or a
    /// worker this connection authorized, and returns `true` if that closed it (a
    /// connection closed already is not closed, nor counted, twice).
    pub(crate) fn apply_bans(&self, bans: &Arc<BanList>) -> bool {
        let by_worker = self.session.borrow_mut().update_bans(bans.clone());
        let banned = by_worker || self.wire.peer_ip.is_some_and(|ip| bans.bans_ip(ip));
        if !banned || self.wire.is_closed() {
            return false;
        }
        self.wire.close();
        true
    }
}

/// Named by its full path, not imported: `Connection`'s own `send_job` and `flush` stay
/// the ones this module calls.
impl crate::rt::Link for Connection {
    fn send_job(&self, job: &Job, now_s: u64) {
        Connection::send_job(self, job, now_s);
    }

    fn apply_bans(&self, bans: &Arc<BanList>) -> bool {
        Connection::apply_bans(self, bans)
    }

    fn awaiting_ack(&self) -> &Gate {
        &self.wire.awaiting_ack
    }

    fn held_back(&self, now_s: u64) -> bool {
        self.wire.held_back(now_s)
    }

    fn session_timeout(&self, now_s: u64, jobs: &JobBook) -> bool {
        self.session
            .try_borrow_mut()
            .is_ok_and(|mut session| session.handle_timeout(now_s, jobs))
    }

    fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        self.wire.close_if_idle_since(cutoff_s)
    }

    fn flush(&self) {
        let mut session = self.session.borrow_mut();
        Connection::flush(self, &mut session);
    }

    fn ask_to_reconnect(&self) -> bool {
        let mut session = self.session.borrow_mut();
        session.request_reconnect();
        Connection::flush(self, &mut session);
        true
    }

    fn close(&self) {
        self.wire.close();
    }
}

/// A V1 share awaiting the share log.
struct AwaitingDisk {
    connection: Rc<Connection>,
    share: Box<AcceptedShare>,
}

impl crate::rt::AwaitingDisk for AwaitingDisk {
    fn answer(self: Box<Self>, durable: bool, now_s: u64, jobs: &JobBook) -> (Option<f64>, Peer) {
        let mut session = self.connection.session.borrow_mut();
        if durable {
            session.handle_share_durable(&self.share.request_id, now_s, jobs);
        } else {
            session.handle_share_store_failed(&self.share.request_id);
        }
        drop(session);
        (Some(self.share.record.difficulty), self.connection)
    }
}

/// A V1 share awaiting the core's hasher.
struct AwaitingPow {
    connection: Rc<Connection>,
    pending: Box<PendingPow>,
}

impl crate::rt::AwaitingPow for AwaitingPow {
    fn input(&self) -> PowInput<'_> {
        self.pending.input()
    }

    fn finish(self: Box<Self>, core: &Rc<Core>, hashed: &HashedShare, now_s: u64) {
        let AwaitingPow {
            connection,
            pending,
        } = *self;
        let mut session = connection.session.borrow_mut();
        let outcome = {
            let mut duplicates = core.duplicates.borrow_mut();
            session.handle_pow(pending, hashed, now_s, &mut duplicates)
        };
        core.awaiting_durability.give_back(1);
        // A session never asks to close from `handle_pow`.
        let _ = apply_outcome(core, &connection, &mut session, outcome);
        Connection::flush(&connection, &mut session);
        connection.wire.awaiting_ack.give_back(1);
    }
}

pub async fn serve_connection(core: Rc<Core>, stream: TcpStream) {
    let wire = Wire::new(stream, now_s());
    // Held until the connection ends: its place under the per-address cap.
    let Some(_address_slot) = core.admit_stream(&wire, now_s()) else {
        return;
    };
    // Given back when the connection ends, below.
    let Some(extranonce1) = core.next_extranonce1() else {
        core.counters.refused(Refusal::ExtranoncesExhausted, 1);
        wire.close();
        return;
    };
    let session = Session::new(SessionConfig {
        extranonce1,
        extranonce2_size: EXTRANONCE2_BYTES,
        front_end: core.front_end_config(),
    });
    let connection = Rc::new(Connection {
        wire,
        session: RefCell::new(session),
    });
    let id = core.register(connection.clone());
    core.counters.connected(Protocol::V1);
    let reason = read_loop(&core, &connection).await;
    tracing::debug!(peer = ?connection.wire.peer_addr(), reason, "connection closed");
    connection.wire.close();
    if connection.wire.closed_for_backlog() {
        core.counters.refused(Refusal::SendBacklog, 1);
    }
    core.unregister(id);
    core.release_extranonce1(connection.session.borrow().extranonce1());
    core.counters.disconnected(Protocol::V1);
}

async fn read_loop(core: &Rc<Core>, connection: &Rc<Connection>) -> &'static str {
    super::read_lines(
        core,
        &connection.wire,
        None,
        |line| handle_line(core, connection, line),
        || connection.session.borrow().is_mining(),
    )
    .await
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
        let outcome = session.handle_line(line, now_s(), &jobs, &mut duplicates);
        core.count_filter_refusals(&mut duplicates);
        outcome
    };
    let result = apply_outcome(core, connection, &mut session, outcome);
    connection.flush(&mut session);
    result
}

/// Acts on what the session decided: count a rejection, store an accepted share (and send
/// its block at once), or queue a share for the core's batch hasher.
pub(crate) fn apply_outcome(
    core: &Rc<Core>,
    connection: &Rc<Connection>,
    session: &mut Session,
    outcome: Outcome,
) -> Result<(), &'static str> {
    match outcome {
        Outcome::Continue => {}
        Outcome::Rejected(code) => core.counters.rejected(code),
        Outcome::Close(_) => {
            core.counters.refused(Refusal::ProtocolError, 1);
            return Err("not JSON");
        }
        Outcome::BlockOnly(uncredited, code) => {
            core.counters.rejected(code);
            tracing::warn!(worker = %uncredited.block.worker, ?code, "a block from a share that cannot be credited (below its share target, or a new tip while it waited): sent up and recorded, not credited");
            core.store_uncredited_block(connection.clone(), *uncredited, Protocol::V1);
        }
        Outcome::NeedsPow(pending) => {
            // Counts against the miner's allowance like a share awaiting the disk, so a
            // flood of shares stops the reader too.
            connection.wire.awaiting_ack.take(1);
            core.queue_pow(Box::new(AwaitingPow {
                connection: connection.clone(),
                pending,
            }));
        }
        Outcome::ShareAccepted(mut accepted) => {
            let block = accepted.block.take();
            // Stamped before the append: the writer may take the share at once.
            let validated_at = std::time::Instant::now();
            if core.store_share(&connection.wire.awaiting_ack, &accepted.record, block) {
                core.await_durability(AwaitingAck {
                    share: Box::new(AwaitingDisk {
                        connection: connection.clone(),
                        share: accepted,
                    }),
                    protocol: Protocol::V1,
                    validated_at,
                });
            } else {
                session.handle_share_store_failed(&accepted.request_id);
                core.counters.rejected(ErrorCode::Other);
            }
        }
    }
    Ok(())
}
