//! Monero's Stratum dialect over TCP: the glue between a socket and `MoneroSession`, and
//! each core's Monero state (its job book, its duplicate filter, one RandomX VM per seed
//! and the queue of shares waiting for their hash).
//!
//! A share's RandomX hash costs milliseconds of the core (fast mode) or tens of them
//! (light mode). Shares are claimed in the filter before they are hashed (a copy never
//! costs a hash), at most `MONERO_SHARES_WAITING_PER_SESSION_MAX` wait per session, and the
//! core's hasher takes them one at a time, yielding to the core's other tasks between
//! hashes. An accepted share goes to the share log, and the miner hears `OK` once it is
//! durable, as on every front end; a block goes up to the control plane at once.
//!
//! Monero has its own duplicate filter on each core, apart from the Bitcoin family's: the
//! two families' tips move independently, and a new tip of one must not drop the other's
//! sets.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use glommio::net::TcpStream;

use otedama_kernels::randomx::{RandomXSeed, RandomXVm};
use otedama_shared::bans::BanList;
use otedama_shared::duplicates::DuplicateFilter;
use otedama_shared::ipc::{MoneroBlockCandidate, Refusal, Upstream};
use otedama_shared::limits::EXTRANONCE1_BYTES;
use otedama_shared::monero::stratum::{
    MoneroAcceptedShare, MoneroBlock, MoneroJob, MoneroJobBook, MoneroOutcome, MoneroPendingPow,
    MoneroSession, MoneroSessionConfig,
};
use otedama_shared::sv1::ErrorCode;
use otedama_shared::{JobBook, Protocol};

use super::now_s;
use super::wire::Wire;
use crate::rt::gate::Gate;
use crate::rt::{AwaitingAck, Core, Peer};

/// Bytes of the template's reserved room the pool asks monerod for and fills per
/// connection: the connection's extranonce1 (unique among the host's live connections),
/// then the core's salt (`MoneroCore::salt`). A job whose template reserved another size
/// is refused by the link.
pub const MONERO_EXTRA_NONCE_BYTES: u8 = 8;
const _: () = assert!(EXTRANONCE1_BYTES + 4 <= MONERO_EXTRA_NONCE_BYTES as usize);
/// Seeds a core keeps a VM for: the current one and the next (RandomX's seed changes
/// every 2048 blocks, and jobs of both can be live around the switch).
pub const MONERO_VMS_PER_CORE_MAX: usize = 2;
/// Shares one core holds waiting for a RandomX hash: about a second of the core in light
/// mode (about 30 ms a hash), an eighth of one in fast mode. Monero readers stop taking
/// lines at this bound; the Bitcoin family's readers do not (their hasher's bound,
/// `SHARES_AWAITING_POW_PER_CORE_MAX`, is sized for hashes of microseconds, and a RandomX
/// flood must not hold them back).
pub const MONERO_HASHES_WAITING_PER_CORE_MAX: usize = 32;

/// One core's Monero state.
pub struct MoneroCore {
    /// Random at each start, the bytes after extranonce1 in every extra nonce this core
    /// hands out. Invariant: no connection of this run has the work of a connection of an
    /// earlier run, even with the same job and extranonce1, so a share from before a
    /// restart (whose duplicate filter is gone) is never valid again. (The Bitcoin
    /// family gets the same from never serving a job served before a start.)
    salt: [u8; MONERO_EXTRA_NONCE_BYTES as usize - EXTRANONCE1_BYTES],
    pub jobs: RefCell<MoneroJobBook>,
    pub duplicates: RefCell<DuplicateFilter>,
    vms: RefCell<Vec<RandomXVm>>,
    queue: RefCell<VecDeque<AwaitingMoneroPow>>,
    /// Shares in `queue` (`MONERO_HASHES_WAITING_PER_CORE_MAX`).
    waiting: Gate,
    waiter: RefCell<Option<std::task::Waker>>,
}

impl Default for MoneroCore {
    fn default() -> Self {
        MoneroCore {
            salt: rand::random(),
            jobs: RefCell::default(),
            duplicates: RefCell::default(),
            vms: RefCell::default(),
            queue: RefCell::default(),
            waiting: Gate::new(MONERO_HASHES_WAITING_PER_CORE_MAX),
            waiter: RefCell::default(),
        }
    }
}

/// A share waiting for the core's RandomX hasher.
struct AwaitingMoneroPow {
    connection: Rc<MoneroConnection>,
    pending: MoneroPendingPow,
}

impl MoneroCore {
    /// Takes a new job: a VM for its seed if this core has none (the seed was prepared
    /// off the cores, by the link), the filter's sets of jobs no longer held dropped, and
    /// the job sent to every Monero connection.
    pub async fn publish(core: &Rc<Core>, job: Arc<MoneroJob>, seed: Arc<RandomXSeed>) {
        let Some(monero) = core.monero.clone() else {
            return;
        };
        {
            let mut vms = monero.vms.borrow_mut();
            if !vms.iter().any(|vm| vm.key() == &job.seed_hash) {
                match seed.vm() {
                    Ok(vm) => {
                        if vms.len() >= MONERO_VMS_PER_CORE_MAX {
                            vms.remove(0);
                        }
                        vms.push(vm);
                    }
                    Err(error) => {
                        tracing::error!(%error, seed = %hex::encode(job.seed_hash), "no RandomX VM for this seed: its job is not served");
                        return;
                    }
                }
            }
        }
        monero.jobs.borrow_mut().insert(job.clone());
        monero
            .jobs
            .borrow()
            .retire_in(&mut monero.duplicates.borrow_mut());
        core.broadcast_monero_job(&job).await;
    }

    fn queue_pow(&self, core: &Core, work: AwaitingMoneroPow) {
        work.connection.wire.awaiting_ack.take(1);
        self.waiting.take(1);
        core.awaiting_durability.take(1);
        self.queue.borrow_mut().push_back(work);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Hashes one waiting share with its seed's VM and finishes it: the session's outcome
    /// applied, its replies sent, its places under the bounds given back.
    fn finish(&self, core: &Rc<Core>, work: AwaitingMoneroPow) {
        let AwaitingMoneroPow {
            connection,
            pending,
        } = work;
        if connection.session.borrow().has_lied() {
            // Closed for a false result: the rest of its claims (at most
            // `MONERO_SHARES_WAITING_PER_SESSION_MAX` - 1) are given back unhashed. A liar
            // can claim any result, so hashing them would let it spend the pool's core at
            // will; a block among them, as likely as among any three shares, is forfeited
            // for that. (The false share itself was hashed, and its block, if any, kept.)
            self.waiting.give_back(1);
            core.awaiting_durability.give_back(1);
            let mut session = connection.session.borrow_mut();
            session.abandon(pending, &mut self.duplicates.borrow_mut());
            connection.wire.awaiting_ack.give_back(1);
            return;
        }
        let hash = {
            let vms = self.vms.borrow();
            vms.iter()
                .find(|vm| vm.key() == pending.seed_hash())
                .map(|vm| vm.hash(pending.input()))
        };
        core.awaiting_durability.give_back(1);
        self.waiting.give_back(1);
        let mut session = connection.session.borrow_mut();
        let outcome = match hash {
            Some(Ok(pow)) => session.handle_pow(pending, &pow, &mut self.duplicates.borrow_mut()),
            // The seed's VM is gone (two newer seeds came while the share waited) or the
            // hash failed: the claim is given back and the share refused as stale.
            other => {
                if let Some(Err(error)) = other {
                    tracing::error!(%error, "RandomX hash failed");
                }
                session.abandon_stale(pending, &mut self.duplicates.borrow_mut());
                MoneroOutcome::Rejected(ErrorCode::JobNotFound)
            }
        };
        core.count_filter_refusals(&mut self.duplicates.borrow_mut());
        if apply_outcome(core, &connection, &mut session, outcome).is_err() {
            connection.wire.close();
        }
        connection.flush(&mut session);
        connection.wire.awaiting_ack.give_back(1);
    }

    /// Finishes every share still waiting, before the core stops (a drain): a block
    /// among them still goes up.
    pub fn finish_all(&self, core: &Rc<Core>) {
        loop {
            let next = self.queue.borrow_mut().pop_front();
            let Some(work) = next else { break };
            self.finish(core, work);
        }
    }

    /// The core's RandomX hasher: one share at a time, the core's other tasks between.
    pub async fn hash_queued_shares(core: Rc<Core>) {
        let Some(monero) = core.monero.clone() else {
            return;
        };
        loop {
            std::future::poll_fn(|cx| {
                if monero.queue.borrow().is_empty() {
                    *monero.waiter.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            futures_lite::future::yield_now().await;
            let next = monero.queue.borrow_mut().pop_front();
            if let Some(work) = next {
                monero.finish(&core, work);
            }
            glommio::yield_if_needed().await;
        }
    }
}

/// One Monero connection.
pub struct MoneroConnection {
    pub(crate) wire: Rc<Wire>,
    pub(crate) session: RefCell<MoneroSession>,
}

impl MoneroConnection {
    fn flush(&self, session: &mut MoneroSession) {
        self.wire.send(session.transmit_pending());
        session.transmitted();
    }
}

impl crate::rt::Link for MoneroConnection {
    fn send_job(&self, _job: &otedama_shared::Job, _now_s: u64) {}

    fn send_monero_job(&self, job: &Arc<MoneroJob>, now_s: u64) {
        let mut session = self.session.borrow_mut();
        session.handle_new_job(job, now_s);
        self.flush(&mut session);
    }

    fn apply_bans(&self, bans: &Arc<BanList>) -> bool {
        let mut session = self.session.borrow_mut();
        session.update_bans(bans.clone());
        let by_worker = session
            .worker()
            .is_some_and(|worker| bans.bans_worker(worker));
        drop(session);
        let banned = by_worker || self.wire.peer_ip.is_some_and(|ip| bans.bans_ip(ip));
        if !banned || self.wire.is_closed() {
            return false;
        }
        self.wire.close();
        true
    }

    fn awaiting_ack(&self) -> &Gate {
        &self.wire.awaiting_ack
    }

    fn held_back(&self, now_s: u64) -> bool {
        self.wire.held_back(now_s)
    }

    /// Monero miners keep their difficulty while silent (a share every 30 s or more is
    /// normal for them); nothing is sent on time alone.
    fn session_timeout(&self, _now_s: u64, _jobs: &JobBook) -> bool {
        false
    }

    fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        self.wire.close_if_idle_since(cutoff_s)
    }

    fn flush(&self) {
        let mut session = self.session.borrow_mut();
        MoneroConnection::flush(self, &mut session);
    }

    /// The dialect has no reconnect request: closed once idle instead.
    fn ask_to_reconnect(&self) -> bool {
        false
    }

    fn close(&self) {
        self.wire.close();
    }
}

/// A Monero share awaiting the share log.
struct AwaitingDisk {
    connection: Rc<MoneroConnection>,
    monero: Rc<MoneroCore>,
    share: Box<MoneroAcceptedShare>,
}

impl crate::rt::AwaitingDisk for AwaitingDisk {
    fn answer(self: Box<Self>, durable: bool, now_s: u64, _jobs: &JobBook) -> (Option<f64>, Peer) {
        let mut session = self.connection.session.borrow_mut();
        if durable {
            session.handle_share_durable(&self.share.request_id, now_s, &self.monero.jobs.borrow());
        } else {
            session.handle_share_store_failed(&self.share.request_id);
        }
        drop(session);
        (Some(self.share.difficulty), self.connection)
    }
}

pub async fn serve_connection(core: Rc<Core>, stream: TcpStream) {
    let Some(monero) = core.monero.clone() else {
        return;
    };
    let Some(network) = core.config.monero.as_ref().map(|m| m.addresses.network) else {
        return;
    };
    let wire = Wire::new(stream, now_s());
    let Some(_address_slot) = core.admit_stream(&wire, now_s()) else {
        return;
    };
    let Some(extranonce1) = core.next_extranonce1() else {
        core.counters.refused(Refusal::ExtranoncesExhausted, 1);
        wire.close();
        return;
    };
    let mut extra_nonce = extranonce1.clone();
    extra_nonce.extend_from_slice(&monero.salt);
    let session = MoneroSession::new(MoneroSessionConfig {
        session_id: hex::encode(&extranonce1),
        extra_nonce,
        nicehash_byte: None,
        network,
        front_end: core.monero_front_end_config(),
    });
    let connection = Rc::new(MoneroConnection {
        wire,
        session: RefCell::new(session),
    });
    let id = core.register(connection.clone());
    core.counters.connected(Protocol::Monero);
    let reason = read_loop(&core, &monero, &connection).await;
    tracing::debug!(peer = ?connection.wire.peer_addr(), reason, "Monero connection closed");
    connection.wire.close();
    if connection.wire.closed_for_backlog() {
        core.counters.refused(Refusal::SendBacklog, 1);
    }
    core.unregister(id);
    core.release_extranonce1(&extranonce1);
    core.counters.disconnected(Protocol::Monero);
}

async fn read_loop(
    core: &Rc<Core>,
    monero: &Rc<MoneroCore>,
    connection: &Rc<MoneroConnection>,
) -> &'static str {
    super::read_lines(
        core,
        &connection.wire,
        Some(&monero.waiting),
        |line| {
            let mut session = connection.session.borrow_mut();
            let outcome = {
                let jobs = monero.jobs.borrow();
                let mut duplicates = monero.duplicates.borrow_mut();
                let outcome = session.handle_line(line, now_s(), &jobs, &mut duplicates);
                core.count_filter_refusals(&mut duplicates);
                outcome
            };
            let result = apply_outcome(core, connection, &mut session, outcome);
            connection.flush(&mut session);
            result
        },
        || connection.session.borrow().is_mining(),
    )
    .await
}

/// Acts on what the session decided: count a refusal, queue a share for the hasher, or
/// store an accepted share (its block sent up first). `Err` closes the connection.
fn apply_outcome(
    core: &Rc<Core>,
    connection: &Rc<MoneroConnection>,
    session: &mut MoneroSession,
    outcome: MoneroOutcome,
) -> Result<(), &'static str> {
    let monero = core
        .monero
        .clone()
        .expect("Monero connections only with Monero state");
    match outcome {
        MoneroOutcome::Continue => {}
        MoneroOutcome::Rejected(code) => core.counters.rejected(code),
        MoneroOutcome::Close(reason) => {
            core.counters.refused(Refusal::ProtocolError, 1);
            tracing::debug!(?reason, "Monero connection closed for its lines");
            return Err("protocol error");
        }
        MoneroOutcome::NeedsPow(pending) => monero.queue_pow(
            core,
            AwaitingMoneroPow {
                connection: connection.clone(),
                pending: *pending,
            },
        ),
        MoneroOutcome::BlockOnly(block, code) => {
            core.counters.rejected(code);
            tracing::warn!(worker = %block.worker, ?code, "a Monero block from a share that cannot be credited: sent up, not credited");
            send_block_up(core, &block, false);
        }
        MoneroOutcome::ShareAccepted(share) => {
            if let Some(block) = &share.block {
                send_block_up(core, block, true);
            }
            let record = share.record(session.extra_nonce(), otedama_shared::clock::now_ms());
            let validated_at = std::time::Instant::now();
            if core.store_share(&connection.wire.awaiting_ack, &record, None) {
                core.await_durability(AwaitingAck {
                    share: Box::new(AwaitingDisk {
                        connection: connection.clone(),
                        monero,
                        share,
                    }),
                    protocol: Protocol::Monero,
                    validated_at,
                });
            } else {
                session.handle_share_store_failed(&share.request_id);
                core.counters.rejected(ErrorCode::Other);
            }
        }
    }
    Ok(())
}

/// Sends a found block to the control plane at once. Invariant: a block is never dropped
/// quietly: one the upstream queue cannot take is logged whole, for the operator to submit
/// by hand (`submit_block` with the blob).
fn send_block_up(core: &Core, block: &MoneroBlock, credited: bool) {
    core.counters
        .block_candidates
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let candidate = MoneroBlockCandidate {
        job_id: block.job_id,
        height: block.height,
        blob: block.blob.clone(),
        block_id: block.block_id,
        worker: block.worker.clone(),
        found_at_ms: otedama_shared::clock::now_ms(),
        credited,
    };
    tracing::info!(height = block.height, id = %hex::encode(block.block_id), worker = %block.worker, "Monero block found");
    if let Err(refused) = core.upstream.try_send(Upstream::MoneroBlock(candidate)) {
        tracing::error!(
            message = %String::from_utf8_lossy(&otedama_shared::ipc::encode(&refused.into_inner())),
            "upstream queue full: Monero block not sent; submit its blob by hand"
        );
    }
}
