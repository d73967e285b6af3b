//! The per-core runtime: one pinned glommio executor per core, each with its own listeners
//! (SO_REUSEPORT), job book, duplicate filter and connections. This module is the only
//! place that knows about glommio, so the runtime can be swapped without touching the
//! protocol code.

pub mod admission;
mod boot;
pub mod drain;
mod durability;
pub mod extranonce;
pub mod gate;
mod pow;
pub mod retention;

pub use boot::{
    cores_for_process, extranonce1_partition, raise_open_files_limit, run, run_with_share_log,
};

use std::cell::{Cell, RefCell};

use extranonce::ExtranonceAllocator;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use otedama_shared::bans::BanList;
use otedama_shared::error_code::ErrorCode;
use otedama_shared::ipc::Upstream;
use otedama_shared::pow_batch::{HashedShare, PowInput};
use otedama_shared::share::{BlockCandidate, UncreditedBlock};
use otedama_shared::work::FrontEndConfig;
use otedama_shared::{DuplicateFilter, Job, JobBook, ShareRecord};

use crate::counters::Counters;
use crate::net::now_s;
use crate::net::wire::Wire;
use crate::DataplaneConfig;
use admission::{AddressCounts, AddressSlot, Deadline, Deadlines};
use gate::Gate;
use otedama_kernels::scrypt::SCRYPT_LANES_MAX;
use otedama_shared::ipc::Refusal;
use otedama_sharelog::writer::{Completed, ShareLogHandle};

/// Registered-buffer memory per executor. We do no file I/O through glommio, and a small
/// value keeps the data plane inside the 8 MiB memlock limit of unprivileged users.
const IO_MEMORY_BYTES: usize = 1 << 20;
/// Connections closed on a core after which it gives freed memory back (`trim_memory`).
const TRIM_AFTER_CLOSED_CONNECTIONS: u64 = 1024;
/// Pause after a failed accept (for example EMFILE), so the core does not spin.
const ACCEPT_RETRY_DELAY_MS: u64 = 50;
/// Block candidates and other upstream messages waiting for the IPC thread.
const UPSTREAM_QUEUE_MAX: usize = 1024;
/// The queue from every core to the IPC thread. Cores only `try_send` on it: a core never
/// waits for the link. A block candidate that finds it full is held by its core and
/// resent (`BLOCK_CANDIDATES_HELD_MAX`), and found by the control plane's block scan in
/// the share log if its share is stored. Filling it takes `UPSTREAM_QUEUE_MAX` blocks
/// found while the link is down.
fn upstream_queue() -> (
    crossbeam_channel::Sender<Upstream>,
    crossbeam_channel::Receiver<Upstream>,
) {
    crossbeam_channel::bounded(UPSTREAM_QUEUE_MAX)
}
/// The core's one receive buffer; every connection's reads land here in turn.
pub const RECEIVE_BUFFER_BYTES: usize = 64 * 1024;
/// Shares one core holds waiting for its batch hasher (scrypt, and Stratum V1 SHA256d,
/// `pow_batch::hash_batch`): for scrypt about 0.1 s of hashing at 36,000 hashes/s, for
/// SHA256d about 8 ms. The read path stops taking lines and frames at this bound (as at the
/// durability bound) and goes on once the hasher has made room, so a flood of shares
/// with any nonce (scrypt runs before the target check) waits in its own socket instead of
/// in the pool's memory.
pub const SHARES_AWAITING_POW_PER_CORE_MAX: usize = 4096;
/// Connections a job broadcast serves before it lets the core's other tasks run, so that
/// sending a job to 100,000 miners does not hold up their shares.
const BROADCAST_CONNECTIONS_PER_SLICE: usize = 512;

/// What the control plane link hands each core.
pub enum CoreCommand {
    Job(Arc<Job>),
    /// A Monero job, with its seed prepared (`net::monero`).
    MoneroJob(
        Arc<otedama_shared::monero::stratum::MoneroJob>,
        Arc<otedama_kernels::randomx::RandomXSeed>,
    ),
    Bans(Arc<BanList>),
    /// Hand the miners over to a replacement and stop (`drain`).
    Drain(drain::DrainPlan),
}

/// Which front end a share came in through, for the per-protocol counters and the share's
/// record.
pub use otedama_shared::Protocol;

/// A miner's connection as the core sees it, whatever its protocol (V1, V2) and transport
/// (TCP, Noise, QUIC): what job broadcasts, ban sweeps, idle and silence sweeps and
/// acknowledgements need. Each front end implements it, so the core names no protocol.
pub trait Link {
    fn send_job(&self, job: &Job, now_s: u64);
    /// Sends a Monero job; only Monero connections have anything to do with one.
    fn send_monero_job(&self, _job: &Arc<otedama_shared::monero::stratum::MoneroJob>, _now_s: u64) {
    }
    /// Applies a new ban list; closes the connection if it covers the peer's network or a
    /// worker of the connection, and returns `true` if that closed it.
    fn apply_bans(&self, bans: &Arc<BanList>) -> bool;
    /// Shares of this connection in flight (hashing or awaiting the disk).
    fn awaiting_ack(&self) -> &Gate;
    /// Whether the pool holds this connection's reader back (back-pressure): its silence
    /// is then the pool's, not the miner's.
    fn held_back(&self, now_s: u64) -> bool;
    /// Lets the session act on time passing (a silent miner's lower difficulty); whether
    /// it queued anything to send. A session busy elsewhere does nothing this time.
    fn session_timeout(&self, now_s: u64, jobs: &JobBook) -> bool;
    /// Closes the connection if it has sent nothing since `cutoff_s`.
    fn close_if_idle_since(&self, cutoff_s: u64) -> bool;
    /// Sends what the session queued.
    fn flush(&self);
    /// Asks the miner to reconnect to the same address (the process is draining): V1's
    /// `client.reconnect`, V2's Reconnect. `false` where it cannot be asked (a V2
    /// connection before SetupConnection), and it is then closed once idle instead.
    fn ask_to_reconnect(&self) -> bool;
    /// Closes the connection.
    fn close(&self);
}

/// A connection of any front end.
pub type Peer = Rc<dyn Link>;

impl dyn Link {
    /// Whether closing the connection now cuts off nothing the pool owes the miner: no
    /// share of it hashing or awaiting the disk, and no request read but held back
    /// (a reader paused at a limit has lines it has not handled yet).
    fn owes_nothing(&self, now_s: u64) -> bool {
        self.awaiting_ack().used() == 0 && !self.held_back(now_s)
    }

    /// Lets the session act on time passing and sends what it queued. A session whose
    /// silence may be the pool's own is left for the next sweep: its reader held back by
    /// a bound, or shares of it still waiting for the hasher or the disk (lowered then,
    /// the miner's shares queued in the socket at the old difficulty would be credited
    /// at the new).
    fn handle_timeout(&self, now_s: u64, jobs: &JobBook) {
        if self.held_back(now_s) || self.awaiting_ack().used() > 0 {
            return;
        }
        if self.session_timeout(now_s, jobs) {
            self.flush();
        }
    }

    /// The connection's address, to tell connections apart.
    fn identity(&self) -> *const () {
        (self as *const dyn Link).cast()
    }
}

/// A share whose acknowledgement waits for the disk, with the session that will give it.
pub trait AwaitingDisk {
    /// Gives the miner its answer: accepted once `durable`, or refused because the write
    /// failed. Returns the difficulty the share is credited at (`None` for an uncredited
    /// block's record, not counted as a share) and its connection.
    fn answer(self: Box<Self>, durable: bool, now_s: u64, jobs: &JobBook) -> (Option<f64>, Peer);
}

/// An accepted share waiting for the share log, of any protocol.
pub type Acknowledge = Box<dyn AwaitingDisk>;

/// An accepted share waiting for its batch to be durable before the miner hears `true`.
pub struct AwaitingAck {
    pub share: Acknowledge,
    pub protocol: Protocol,
    /// When the share passed validation, for the acknowledgement latency histogram.
    pub validated_at: std::time::Instant,
}

/// A share waiting for the core's batch hasher, with the session that finishes it.
pub trait AwaitingPow {
    /// What the hasher computes for it.
    fn input(&self) -> PowInput<'_>;
    /// Finishes the share with what the hasher computed for `input`: the session's outcome
    /// applied (stored, refused, or a block sent up) and its replies sent. Gives back the
    /// place it held under the core's durability bound before the outcome takes one again
    /// (`Core::queue_pow`), and the connection's place once done.
    fn finish(self: Box<Self>, core: &Rc<Core>, hashed: &HashedShare, now_s: u64);
}

/// A share of any protocol waiting for the hasher.
pub type PowWork = Box<dyn AwaitingPow>;

/// Everything one core owns. Only that core's executor ever touches it.
pub struct Core {
    pub index: usize,
    /// First byte of every extranonce1 this core hands out: unique across the host's
    /// processes and cores, so a share can only ever be a duplicate of one seen here.
    pub partition: u8,
    pub config: Rc<DataplaneConfig>,
    pub jobs: RefCell<JobBook>,
    pub duplicates: RefCell<DuplicateFilter>,
    connections: RefCell<HashMap<u64, Peer>>,
    /// Accepted shares in the order they went to the share log, which is the order the
    /// writer completes them in.
    pub awaiting: RefCell<VecDeque<AwaitingAck>>,
    pub awaiting_durability: Gate,
    /// Shares queued for the batch hasher (`SHARES_AWAITING_POW_PER_CORE_MAX`).
    pub awaiting_pow: Gate,
    pub receive_buffer: RefCell<Box<[u8]>>,
    /// Scrypt shares waiting for the batch hasher, and the hasher's waker.
    pow_queue: RefCell<Vec<PowWork>>,
    pow_waiter: RefCell<Option<std::task::Waker>>,
    next_connection_id: Cell<u64>,
    /// Connections closed since this core last gave freed memory back (`trim_memory`).
    closed_since_trim: Cell<u64>,
    /// Extranonce1 values held by a live V1 connection or V2 channel on this core are never
    /// handed out again until given back (`release_extranonce1`), so no miner can be given
    /// another's extranonce1 however many connections or channels come and go.
    extranonces: RefCell<ExtranonceAllocator>,
    /// Randomness for Noise handshakes (ephemeral and static keys, signatures).
    pub rng: RefCell<rand::rngs::StdRng>,
    pub share_log: ShareLogHandle,
    pub upstream: crossbeam_channel::Sender<Upstream>,
    /// Block candidates the upstream queue refused, resent every second.
    held_candidates: RefCell<durability::HeldCandidates>,
    /// Cluster mode: the host's own submitter of block candidates
    /// (`DataplaneConfig::block_relay`).
    pub block_relay: Option<crossbeam_channel::Sender<BlockCandidate>>,
    pub counters: Arc<Counters>,
    /// The newest ban list: new connections and sessions start from it.
    pub bans: RefCell<Arc<BanList>>,
    /// TCP connections per peer address, across this process's cores.
    addresses: Arc<AddressCounts>,
    /// Login and partial-line deadlines of this core's TCP connections.
    deadlines: RefCell<Deadlines>,
    /// Set once the core drains (`drain`): no new connection is taken.
    pub draining: Cell<bool>,
    /// Monero's state, if this process serves Monero (`DataplaneConfig::monero`).
    pub monero: Option<Rc<crate::net::monero::MoneroCore>>,
}

impl Core {
    /// The terms Monero miners are held to: Monero's own start and floor, the pool's vardiff.
    pub fn monero_front_end_config(&self) -> FrontEndConfig {
        let mut terms = self.front_end_config();
        if let Some(monero) = &self.config.monero {
            terms.start_difficulty = monero.start_difficulty;
            terms.difficulty_min = monero.difficulty_min;
            if let Some(vardiff) = &mut terms.vardiff {
                vardiff.difficulty_min = monero.difficulty_min;
                vardiff.difficulty_max = vardiff.difficulty_max.max(monero.difficulty_min);
            }
        }
        terms.payout_address_rule = None;
        terms
    }

    /// Sends a Monero job to every connection, in slices as `publish_job` does.
    pub(crate) async fn broadcast_monero_job(
        &self,
        job: &Arc<otedama_shared::monero::stratum::MoneroJob>,
    ) {
        let connections: Vec<Peer> = self.connections.borrow().values().cloned().collect();
        let now_s = now_s();
        for slice in connections.chunks(BROADCAST_CONNECTIONS_PER_SLICE) {
            for connection in slice {
                connection.send_monero_job(job, now_s);
            }
            glommio::yield_if_needed().await;
        }
        tracing::info!(
            core = self.index,
            job_id = job.job_id,
            height = job.height,
            connections = connections.len(),
            "Monero job broadcast"
        );
    }

    /// The terms this core holds its miners to, V1 connections and V2 channels alike.
    /// Shares wait for the core's batch hasher (`Core::queue_pow`): scrypt, and V1 SHA256d.
    pub fn front_end_config(&self) -> FrontEndConfig {
        FrontEndConfig {
            start_difficulty: self.config.start_difficulty,
            difficulty_min: self.config.difficulty_min,
            version_rolling_mask: self.config.version_rolling_mask,
            algorithm: self.config.algorithm,
            vardiff: self.config.vardiff,
            defer_pow: true,
            network_difficulty_cap_min: otedama_shared::limits::NETWORK_DIFFICULTY_CAP_MIN,
            payout_address_rule: self.config.payout_address_rule,
            bans: self.bans.borrow().clone(),
        }
    }

    /// Extranonce1 is `partition ‖ 24-bit counter`, where the partition byte is unique per
    /// process and core (in cluster mode `slot ‖ partition ‖ 16-bit counter`, the slot
    /// unique per process across the cluster). Two cores never hand out the same value,
    /// and the header commits to extranonce1, so equal shares can only arrive on one core:
    /// each core checks duplicates on its own, with no shared table. (Routing by share hash
    /// would need a cross-core hop for every share; partitioning needs none.) `None` when
    /// every value is held. See `ExtranonceAllocator`.
    pub fn next_extranonce1(&self) -> Option<Vec<u8>> {
        self.extranonces
            .borrow_mut()
            .allocate()
            .map(|value| value.to_vec())
    }

    /// Gives back an extranonce1 `next_extranonce1` handed out, once its connection or
    /// channel is gone.
    pub fn release_extranonce1(&self, extranonce1: &[u8]) {
        self.extranonces.borrow_mut().release(extranonce1);
    }

    /// Admits a new TCP connection from `peer_ip` under the per-address cap; `None`
    /// (counted) if its address already has `connections_per_ip_max`. The slot is given
    /// back when dropped, so the caller holds it for the connection's life.
    pub fn admit(&self, peer_ip: Option<std::net::IpAddr>) -> Option<Option<AddressSlot>> {
        if !self.holds_cluster_lease() {
            self.counters.refused(Refusal::ClusterLeaseLost, 1);
            return None;
        }
        let Some(ip) = peer_ip else {
            // No address to count against (the socket is already gone): let the reader
            // find the closed stream.
            return Some(None);
        };
        match self.addresses.admit(ip) {
            Some(slot) => Some(Some(slot)),
            None => {
                self.counters.refused(Refusal::ConnectionsPerIp, 1);
                None
            }
        }
    }

    /// Starts a new connection's login deadline (`STRATUM_LOGIN_DEADLINE_S`).
    /// Admits a new TCP connection (V1 or V2): refused and counted if its network is
    /// banned or its address holds its cap of connections already; otherwise its place
    /// under the per-address cap, to hold until the connection ends, with its login
    /// deadline started.
    pub fn admit_stream(&self, wire: &Rc<Wire>, now_s: u64) -> Option<Option<AddressSlot>> {
        if wire
            .peer_ip
            .is_some_and(|ip| self.bans.borrow().bans_ip(ip))
        {
            tracing::debug!(peer_ip = ?wire.peer_ip, "connection from a banned network refused");
            self.counters.refused(Refusal::Banned, 1);
            return None;
        }
        let Some(slot) = self.admit(wire.peer_ip) else {
            tracing::debug!(peer_ip = ?wire.peer_ip, "too many connections from one address");
            return None;
        };
        self.watch_login(wire, now_s);
        Some(slot)
    }

    pub fn watch_login(&self, wire: &Rc<Wire>, now_s: u64) {
        self.deadlines.borrow_mut().push(
            Deadline::Login,
            now_s + admission::STRATUM_LOGIN_DEADLINE_S,
            Rc::downgrade(wire),
        );
    }

    /// Records, after a read, whether `wire` holds an unfinished line or frame, and starts
    /// its deadline (`STRATUM_PARTIAL_LINE_DEADLINE_S`) when one begins.
    pub fn note_partial_line(&self, wire: &Rc<Wire>, partial: bool, now_s: u64) {
        if !partial {
            wire.partial_line_since_s.set(None);
            return;
        }
        if wire.partial_line_since_s.get().is_none() {
            wire.partial_line_since_s.set(Some(now_s));
        }
        if !wire.partial_line_deadline_queued.replace(true) {
            let since_s = wire.partial_line_since_s.get().unwrap_or(now_s);
            self.deadlines.borrow_mut().push(
                Deadline::PartialLine,
                since_s + admission::STRATUM_PARTIAL_LINE_DEADLINE_S,
                Rc::downgrade(wire),
            );
        }
    }

    /// Closes the connections whose login or partial-line deadline passed.
    fn enforce_deadlines(&self, now_s: u64) {
        let due = self.deadlines.borrow_mut().take_due(now_s);
        for (kind, wire) in due {
            let Some(wire) = wire.upgrade() else {
                continue;
            };
            match kind {
                Deadline::Login => {
                    if wire.logged_in.get() || wire.is_closed() {
                        continue;
                    }
                    if wire.gated.get() {
                        // The pool holds the reader back (a stalled disk): the login is
                        // not the miner's delay. Its time starts again.
                        self.deadlines.borrow_mut().push(
                            Deadline::Login,
                            now_s + admission::STRATUM_LOGIN_DEADLINE_S,
                            Rc::downgrade(&wire),
                        );
                    } else {
                        wire.close();
                        self.counters.refused(Refusal::LoginDeadline, 1);
                    }
                }
                Deadline::PartialLine => {
                    wire.partial_line_deadline_queued.set(false);
                    let Some(since_s) = wire.partial_line_since_s.get() else {
                        continue;
                    };
                    let due_s = since_s + admission::STRATUM_PARTIAL_LINE_DEADLINE_S;
                    if wire.is_closed() {
                        continue;
                    }
                    if wire.gated.get() {
                        // The pool holds the reader back: the peer's time starts again
                        // once it is read.
                        wire.partial_line_since_s.set(Some(now_s));
                        wire.partial_line_deadline_queued.set(true);
                        self.deadlines.borrow_mut().push(
                            Deadline::PartialLine,
                            now_s + admission::STRATUM_PARTIAL_LINE_DEADLINE_S,
                            Rc::downgrade(&wire),
                        );
                    } else if due_s <= now_s {
                        wire.close();
                        self.counters.refused(Refusal::PartialLineDeadline, 1);
                    } else {
                        // A later line is unfinished now: its own deadline.
                        wire.partial_line_deadline_queued.set(true);
                        self.deadlines.borrow_mut().push(
                            Deadline::PartialLine,
                            due_s,
                            Rc::downgrade(&wire),
                        );
                    }
                }
            }
        }
    }

    /// Hands this core's miners over to the replacement process (`drain`): asks them to
    /// reconnect at the plan's pace (one that cannot be asked is closed instead once it is
    /// owed nothing, `owes_nothing`; one asked that stays `RECONNECT_FOLLOW_WAIT_MS` is
    /// closed the same way), closes whoever is left at the plan's grace, and returns once no
    /// connection is left. The listeners are closed before this is called, so
    /// reconnecting miners reach only the replacement.
    pub(super) async fn drain(self: &Rc<Self>, plan: drain::DrainPlan) {
        let started = std::time::Instant::now();
        let per_tick = plan.asked_per_tick(self.connections.borrow().len());
        let mut asked = std::collections::HashSet::new();
        let mut staying = drain::AskedToReconnect::default();
        let mut reconnects_asked = 0u64;
        let mut closed = 0u64;
        let mut closed_after_asking = 0u64;
        loop {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let overdue = staying.overdue(elapsed_ms);
            let mut busy = Vec::new();
            for (at_ms, id) in overdue {
                let peer = self.connections.borrow().get(&id).cloned();
                match peer {
                    // Gone: it followed the request.
                    None => {}
                    Some(peer) if peer.owes_nothing(now_s()) => {
                        peer.close();
                        closed_after_asking += 1;
                    }
                    Some(_) => busy.push((at_ms, id)),
                }
            }
            staying.not_yet(busy);
            // A connection that cannot be asked and is owed something is passed over this
            // tick and does not count against it, so busy ones do not hold back the rest;
            // a few times the tick's quota are looked at, so a tick stays short however
            // many are busy.
            let candidates: Vec<(u64, Peer)> = self
                .connections
                .borrow()
                .iter()
                .filter(|(id, _)| !asked.contains(*id))
                .take(per_tick.saturating_mul(drain::CANDIDATES_PER_ASK))
                .map(|(id, peer)| (*id, peer.clone()))
                .collect();
            let mut moved = 0;
            for (id, peer) in candidates {
                if moved == per_tick {
                    break;
                }
                if peer.ask_to_reconnect() {
                    reconnects_asked += 1;
                    staying.asked(id, elapsed_ms);
                } else if peer.owes_nothing(now_s()) {
                    // Closed only with nothing in flight, so no answer is cut off.
                    peer.close();
                    closed += 1;
                } else {
                    continue;
                }
                moved += 1;
                asked.insert(id);
            }
            if self.connections.borrow().is_empty() || plan.over(elapsed_ms) {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(drain::DRAIN_TICK_MS)).await;
        }
        let left: Vec<Peer> = self.connections.borrow().values().cloned().collect();
        for peer in &left {
            peer.close();
        }
        // Block candidates the upstream queue refused go up now if it has room; any it
        // still refuses are logged whole, since this core stops resending them (the
        // control plane's block scan finds them too if their share was stored).
        let mut held = self.held_candidates.borrow_mut();
        held.resend(&self.upstream);
        for candidate in held.take_all() {
            durability::log_lost_candidate(
                &candidate,
                "the data plane drained with the upstream queue full",
            );
        }
        drop(held);
        tracing::info!(
            core = self.index,
            reconnects_asked,
            closed_without_request = closed,
            closed_after_asking,
            closed_at_grace = left.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drained"
        );
    }

    pub fn register(&self, connection: Peer) -> u64 {
        let id = self.next_connection_id.get();
        self.next_connection_id.set(id + 1);
        self.connections.borrow_mut().insert(id, connection);
        id
    }

    pub fn unregister(&self, id: u64) {
        self.connections.borrow_mut().remove(&id);
        self.closed_since_trim.set(self.closed_since_trim.get() + 1);
    }

    /// Once `TRIM_AFTER_CLOSED_CONNECTIONS` connections have closed on this core (a flood
    /// that ended, a mass reconnect), gives the allocator's freed pages on this thread
    /// back to the system. mimalloc keeps them for reuse otherwise: measured, 5,000 silent
    /// connections left about 15 MB with the data plane 60 s after they closed, and about
    /// 5 MB with this (BENCHMARKS.md). Not on a timer: it walks this thread's heap, which
    /// a core should do only when there is something to give back.
    fn trim_memory(&self) {
        if self.closed_since_trim.get() >= TRIM_AFTER_CLOSED_CONNECTIONS {
            self.closed_since_trim.set(0);
            // SAFETY: mi_collect takes no pointers; it frees what this thread's heap holds
            // unused (and does nothing when mimalloc is not the global allocator).
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    }

    /// Makes `job` current and sends it to every miner, in slices so that shares keep
    /// flowing on this core while a broadcast to many connections is under way.
    async fn publish_job(self: &Rc<Self>, job: Arc<Job>) {
        // Timed from here: the SHA256d shares finished first are time without serving
        // shares too, and they hold the job back.
        let started = std::time::Instant::now();
        // A job's id is the control plane's wall clock in milliseconds when it built the
        // job (or just past the id before it), so this is how long the job took to reach
        // this core: over the Unix socket or NATS, plus the control plane's own steps.
        // Across hosts it is only as good as their clocks' agreement.
        let since_built_ms = otedama_shared::clock::now_ms().saturating_sub(job.job_id());
        let new_tip = self
            .jobs
            .borrow()
            .newest()
            .map(|newest| newest.template.prevhash)
            != Some(job.template.prevhash);
        if new_tip {
            // A new tip drops the duplicate filter's sets of the old one; a SHA256d share
            // is claimed only once hashed, so every one still waiting is finished first,
            // as it would have been had it been hashed on arrival.
            self.finish_waiting_sha256d();
        }
        let mut longest_slice = started.elapsed();
        self.jobs.borrow_mut().insert(job.clone());
        self.duplicates
            .borrow_mut()
            .retire_unlisted(&self.jobs.borrow());
        let connections: Vec<Peer> = self.connections.borrow().values().cloned().collect();
        let now_s = now_s();
        for slice in connections.chunks(BROADCAST_CONNECTIONS_PER_SLICE) {
            let slice_started = std::time::Instant::now();
            for connection in slice {
                connection.send_job(&job, now_s);
            }
            longest_slice = longest_slice.max(slice_started.elapsed());
            glommio::yield_if_needed().await;
        }
        // The longest slice (the waiting SHA256d shares finished first count as one) is the
        // longest this core went without serving shares.
        tracing::info!(
            core = self.index,
            job_id = job.job_id(),
            since_built_ms,
            connections = connections.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            longest_slice_us = longest_slice.as_micros() as u64,
            "job broadcast"
        );
    }

    /// Takes a new ban list and closes every connection it now covers, by peer network or
    /// by an authorized worker's address.
    fn apply_bans(&self, bans: Arc<BanList>) {
        *self.bans.borrow_mut() = bans.clone();
        let connections: Vec<Peer> = self.connections.borrow().values().cloned().collect();
        let mut closed = 0;
        for connection in connections {
            if connection.apply_bans(&bans) {
                closed += 1;
            }
        }
        self.counters.refused(Refusal::Banned, closed);
        tracing::info!(
            core = self.index,
            bans = bans.len(),
            closed,
            "ban list applied"
        );
    }

    /// Whether this process may take miners: always on a single host; in cluster mode
    /// while its lease on its slot holds (`otedama_cluster::host`) and its shipper has not
    /// stopped, for a log that disagrees with the stream or because its thread ended (the
    /// control plane counts only shipped shares, so a share acknowledged then would never
    /// be paid).
    pub fn holds_cluster_lease(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.config.cluster_slot.as_ref().is_none_or(|cluster| {
            cluster.lease.held()
                && !self.counters.share_shipping.get().is_some_and(|status| {
                    status.diverged.load(Relaxed) || status.ended.load(Relaxed)
                })
        })
    }

    /// Cluster mode: once the lease on this process's slot is not held, closes every
    /// connection, as `admit` refuses new ones, until it is held again. The slot may be
    /// given to another process `HOST_LEASE_TTL_MS − HOST_LEASE_HELD_MS` after the lease
    /// stops being held here, and that process would hand out these connections'
    /// extranonce1 values: one share sent to both would be credited twice. This check runs
    /// every second, well within that margin.
    fn enforce_cluster_lease(&self) {
        if self.holds_cluster_lease() {
            return;
        }
        let connections: Vec<Peer> = self.connections.borrow().values().cloned().collect();
        let closed = connections
            .iter()
            .filter(|connection| connection.close_if_idle_since(u64::MAX))
            .count();
        if closed > 0 {
            self.counters
                .refused(Refusal::ClusterLeaseLost, closed as u64);
            tracing::warn!(
                core = self.index,
                closed,
                "host lease not held, or the share log no longer shipped: connections closed"
            );
        }
    }

    /// Moves the duplicate filter's count of shares it refused when full into the counters.
    pub fn count_filter_refusals(&self, duplicates: &mut DuplicateFilter) {
        self.counters.refused(
            otedama_shared::ipc::Refusal::ShareFilterFull,
            duplicates.take_refused_full(),
        );
    }

    /// Whether a connection with `allowance` may have its next line or frame handled: it
    /// and the core are below every bound on shares in flight (awaiting the disk, awaiting
    /// the batch hasher). Checked before each line or frame, so no read, however large,
    /// takes a core past a bound by more than the one share being handled.
    pub fn has_room(&self, allowance: &Gate) -> bool {
        allowance.has_room() && self.awaiting_durability.has_room() && self.awaiting_pow.has_room()
    }

    /// Waits until `has_room(allowance)`.
    pub async fn wait_for_room(&self, allowance: &Gate) {
        while !self.has_room(allowance) {
            allowance.below_limit().await;
            self.awaiting_durability.below_limit().await;
            self.awaiting_pow.below_limit().await;
        }
    }

    /// Copies this core's queue peaks to the process's counters. Once a second, not per
    /// share: the counters are shared by every core, and an atomic read-modify-write on
    /// one cache line per share would make the cores contend for it at full load.
    fn publish_queue_peaks(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.counters;
        counters
            .durability_queued_peak
            .fetch_max(self.awaiting_durability.peak() as u64, Relaxed);
        counters
            .pow_queued_peak
            .fetch_max(self.awaiting_pow.peak() as u64, Relaxed);
    }

    /// Gives every session the time (`handle_timeout`): miners silent for
    /// `VARDIFF_SILENT_SHARE_INTERVALS` share intervals get a lower difficulty. The peers
    /// are taken out of the map first, so a send that closes one cannot meet the map
    /// borrowed.
    async fn retarget_silent_miners(&self, now_s: u64) {
        if self.config.vardiff.is_none() {
            return;
        }
        let due: Vec<Peer> = self.connections.borrow().values().cloned().collect();
        for (index, peer) in due.iter().enumerate() {
            peer.handle_timeout(now_s, &self.jobs.borrow());
            // A slice at a time, as a job broadcast goes, so that a core with many
            // connections keeps reading shares meanwhile.
            if index % 512 == 511 {
                glommio::yield_if_needed().await;
            }
        }
    }

    /// Closes every connection that has sent nothing for `connection_idle_timeout_s`.
    fn close_idle_connections(&self) {
        let cutoff_s = now_s().saturating_sub(self.config.connection_idle_timeout_s);
        let closed = self
            .connections
            .borrow()
            .values()
            .filter(|connection| connection.close_if_idle_since(cutoff_s))
            .count();
        if closed > 0 {
            self.counters.refused(Refusal::IdleTimeout, closed as u64);
            tracing::debug!(closed, "closed idle connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPC link stalled: the upstream queue holds exactly `UPSTREAM_QUEUE_MAX`
    /// messages and refuses one more at once, so no core waits on it.
    #[test]
    fn the_upstream_queue_holds_its_limit() {
        let (upstream, link) = upstream_queue();
        for _ in 0..UPSTREAM_QUEUE_MAX {
            upstream
                .try_send(Upstream::Counters(Default::default()))
                .expect("room up to the limit");
        }
        assert!(matches!(
            upstream.try_send(Upstream::Counters(Default::default())),
            Err(crossbeam_channel::TrySendError::Full(_))
        ));
        link.recv().unwrap();
        assert!(upstream
            .try_send(Upstream::Counters(Default::default()))
            .is_ok());
    }

    #[test]
    fn partitions_are_unique_across_processes_and_cores_up_to_the_limit() {
        for (processes, cores) in [(1, 1), (6, 2), (64, 4), (1, 256), (16, 16)] {
            let mut seen = std::collections::HashSet::new();
            for process in 0..processes {
                for core in 0..cores {
                    let partition = extranonce1_partition(process, processes, cores, core).unwrap();
                    assert!(
                        seen.insert(partition),
                        "{processes}×{cores}: {partition} twice"
                    );
                }
            }
            assert_eq!(seen.len(), processes * cores);
        }
        // Processes with different numbers of cores (5 cores over 2 processes: 3 and 2).
        let cores: Vec<usize> = (0..5).collect();
        let mut seen = std::collections::HashSet::new();
        for process in 0..2 {
            let mine = cores_for_process(&cores, process, 2);
            for core in 0..mine.len() {
                assert!(seen.insert(extranonce1_partition(process, 2, mine.len(), core).unwrap()));
            }
        }
        assert_eq!(seen.len(), 5);
        assert!(extranonce1_partition(0, 257, 1, 0).is_err());
        assert!(extranonce1_partition(0, 65, 4, 0).is_err());
        assert!(extranonce1_partition(2, 2, 1, 0).is_err());
    }
}

#[cfg(test)]
mod open_files_tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let raised = super::raise_open_files_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the local struct.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(raised, limit.rlim_cur);
    }
}

#[cfg(test)]
mod core_assignment_tests {
    use super::cores_for_process;

    #[test]
    fn processes_share_the_cores_without_doubling_up() {
        assert_eq!(cores_for_process(&[0, 1], 0, 1), vec![0, 1]);
        assert_eq!(cores_for_process(&[0, 1, 2, 3], 1, 2), vec![1, 3]);
        let six: Vec<Vec<usize>> = (0..6).map(|p| cores_for_process(&[0, 1], p, 6)).collect();
        assert_eq!(
            six,
            vec![vec![0], vec![1], vec![0], vec![1], vec![0], vec![1]]
        );
    }
}
