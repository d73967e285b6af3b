//! The per-core runtime: one pinned glommio executor per core, each with its own listeners
//! (SO_REUSEPORT), job book, duplicate filter and connections. This module is the only
//! place that knows about glommio, so the runtime can be swapped without touching the
//! protocol code.

pub mod admission;
pub mod extranonce;
pub mod gate;

use std::cell::{Cell, RefCell};

use extranonce::ExtranonceAllocator;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_channel::mpsc::{unbounded, UnboundedReceiver};
use futures_lite::StreamExt;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use otedama_shared::bans::BanList;
use otedama_shared::ipc::Upstream;
use otedama_shared::sv1::{BlockCandidate, ErrorCode};
use otedama_shared::{DuplicateFilter, Job, JobBook, ShareRecord};

use crate::counters::Counters;
use crate::net::now_s;
use crate::net::sv2::V2Link;
use crate::net::wire::Wire;
use crate::net::{quic, sv1, sv2};
use crate::DataplaneConfig;
use admission::{AddressCounts, AddressSlot, Deadline, Deadlines};
use gate::Gate;
use otedama_kernels::scrypt::SCRYPT_LANES_MAX;
use otedama_shared::ipc::Refusal;
use otedama_sharelog::writer::{
    Completed, ShareLog, ShareLogHandle, SHARES_AWAITING_DURABILITY_PER_CORE_MAX,
};

/// Registered-buffer memory per executor. We do no file I/O through glommio, and a small
/// value keeps the data plane inside the 8 MiB memlock limit of unprivileged users.
const IO_MEMORY_BYTES: usize = 1 << 20;
/// Pause after a failed accept (for example EMFILE), so the core does not spin.
const ACCEPT_RETRY_DELAY_MS: u64 = 50;
/// Block candidates and other upstream messages waiting for the IPC thread.
const UPSTREAM_QUEUE_MAX: usize = 1024;
/// The queue from every core to the IPC thread. Cores only `try_send` on it: a core never
/// waits for the link. A block candidate that finds it full is found by the control
/// plane's block scan in the share log (about 2 s later), if its share is stored; if that
/// fails too, the candidate is logged whole (`store_share`). Filling it takes
/// `UPSTREAM_QUEUE_MAX` blocks found while the link is down.
fn upstream_queue() -> (
    crossbeam_channel::Sender<Upstream>,
    crossbeam_channel::Receiver<Upstream>,
) {
    crossbeam_channel::bounded(UPSTREAM_QUEUE_MAX)
}
/// The core's one receive buffer; every connection's reads land here in turn.
pub const RECEIVE_BUFFER_BYTES: usize = 64 * 1024;
/// Scrypt shares one core holds waiting for its batch hasher: about 0.3 s of hashing at
/// 14,000 hashes/s. The read path stops taking lines and frames at this bound (as at the
/// durability bound) and goes on once the hasher has made room, so a flood of shares
/// with any nonce (scrypt runs before the target check) waits in its own socket instead of
/// in the pool's memory.
pub const SCRYPT_SHARES_QUEUED_PER_CORE_MAX: usize = 4096;
/// Connections a job broadcast serves before it lets the core's other tasks run, so that
/// sending a job to 100,000 miners does not hold up their shares.
const BROADCAST_CONNECTIONS_PER_SLICE: usize = 512;

/// What the control plane link hands each core.
pub enum CoreCommand {
    Job(Arc<Job>),
    Bans(Arc<BanList>),
}

/// Which front end a share came in through, for the per-protocol counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V1,
    /// Stratum V2 over TCP with Noise.
    V2,
    /// Stratum V2 over QUIC.
    Quic,
}

/// A connection of any front end, as the core's broadcasts and sweeps see it.
#[derive(Clone)]
pub enum Peer {
    V1(Rc<sv1::Connection>),
    /// Stratum V2 over any transport (Noise/TCP or QUIC).
    V2(Rc<dyn V2Link>),
}

impl Peer {
    fn send_job(&self, job: &Job, now_s: u64) {
        match self {
            Peer::V1(connection) => connection.send_job(job, now_s),
            Peer::V2(connection) => connection.send_job(job, now_s),
        }
    }

    fn apply_bans(&self, bans: &Arc<BanList>) -> bool {
        match self {
            Peer::V1(connection) => connection.apply_bans(bans),
            Peer::V2(connection) => connection.apply_bans(bans),
        }
    }

    fn awaiting_ack(&self) -> &Gate {
        match self {
            Peer::V1(connection) => &connection.wire.awaiting_ack,
            Peer::V2(connection) => connection.awaiting_ack(),
        }
    }

    /// Lets the session act on time passing (a silent miner's lower difficulty) and
    /// sends what it queued. A session busy elsewhere is left for the next sweep, and so
    /// is one whose silence may be the pool's own: its reader held back by a bound, or
    /// shares of it still waiting for the hasher or the disk (lowered then, the miner's
    /// shares queued in the socket at the old difficulty would be credited at the new).
    fn handle_timeout(&self, now_s: u64, jobs: &JobBook) {
        let held_back = match self {
            Peer::V1(connection) => connection.wire.held_back(now_s),
            Peer::V2(connection) => connection.held_back(),
        };
        if held_back || self.awaiting_ack().used() > 0 {
            return;
        }
        match self {
            Peer::V1(connection) => {
                let Ok(mut session) = connection.session.try_borrow_mut() else {
                    return;
                };
                if session.handle_timeout(now_s, jobs) {
                    connection.flush(&mut session);
                }
            }
            Peer::V2(connection) => {
                let queued = match connection.session().try_borrow_mut() {
                    Ok(mut session) => session.handle_timeout(now_s),
                    Err(_) => false,
                };
                if queued {
                    connection.flush();
                }
            }
        }
    }

    fn close_if_idle_since(&self, cutoff_s: u64) -> bool {
        match self {
            Peer::V1(connection) => connection.wire.close_if_idle_since(cutoff_s),
            Peer::V2(connection) => connection.close_if_idle_since(cutoff_s),
        }
    }

    /// The connection's address, to tell connections apart.
    fn identity(&self) -> *const () {
        match self {
            Peer::V1(connection) => Rc::as_ptr(connection).cast(),
            Peer::V2(connection) => Rc::as_ptr(connection).cast(),
        }
    }
}

/// A share whose acknowledgement waits for the disk, with the session that will send it.
pub enum Acknowledge {
    V1(Rc<sv1::Connection>, Box<otedama_shared::sv1::AcceptedShare>),
    V2(
        Rc<dyn V2Link>,
        Box<otedama_shared::sv2::server::AcceptedShare>,
    ),
}

/// An accepted share waiting for its batch to be durable before the miner hears `true`.
pub struct AwaitingAck {
    pub share: Acknowledge,
    pub protocol: Protocol,
    /// When the share passed validation, for the acknowledgement latency histogram.
    pub validated_at: std::time::Instant,
}

/// A scrypt share waiting for the core's batch hasher.
pub enum PowWork {
    V1(Rc<sv1::Connection>, Box<otedama_shared::sv1::PendingPow>),
    V2(Rc<dyn V2Link>, Box<otedama_shared::sv2::server::PendingPow>),
}

impl PowWork {
    fn header(&self) -> [u8; 80] {
        match self {
            PowWork::V1(_, pending) => pending.header,
            PowWork::V2(_, pending) => pending.header,
        }
    }
}

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
    /// Scrypt shares queued for the batch hasher (`SCRYPT_SHARES_QUEUED_PER_CORE_MAX`).
    pub awaiting_pow: Gate,
    pub receive_buffer: RefCell<Box<[u8]>>,
    /// Scrypt shares waiting for the batch hasher, and the hasher's waker.
    pow_queue: RefCell<Vec<PowWork>>,
    pow_waiter: RefCell<Option<std::task::Waker>>,
    next_connection_id: Cell<u64>,
    /// Extranonce1 values held by a live V1 connection or V2 channel on this core are never
    /// handed out again until given back (`release_extranonce1`), so no miner can be given
    /// another's extranonce1 however many connections or channels come and go.
    extranonces: RefCell<ExtranonceAllocator>,
    /// Randomness for Noise handshakes (ephemeral and static keys, signatures).
    pub rng: RefCell<rand::rngs::StdRng>,
    pub share_log: ShareLogHandle,
    pub upstream: crossbeam_channel::Sender<Upstream>,
    pub counters: Arc<Counters>,
    /// The newest ban list: new connections and sessions start from it.
    pub bans: RefCell<Arc<BanList>>,
    /// TCP connections per peer address, across this process's cores.
    addresses: Arc<AddressCounts>,
    /// Login and partial-line deadlines of this core's TCP connections.
    deadlines: RefCell<Deadlines>,
}

impl Core {
    /// Extranonce1 is `partition ‖ 24-bit counter`, where the partition byte is unique per
    /// process and core. Two cores never hand out the same value, and the header commits to
    /// extranonce1, so equal shares can only arrive on one core: each core checks
    /// duplicates on its own, with no shared table. (Routing by share hash would need a
    /// cross-core hop for every share; partitioning needs none.) See `ExtranonceAllocator`.
    pub fn next_extranonce1(&self) -> Vec<u8> {
        self.extranonces.borrow_mut().allocate().to_vec()
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

    pub fn register(&self, connection: Peer) -> u64 {
        let id = self.next_connection_id.get();
        self.next_connection_id.set(id + 1);
        self.connections.borrow_mut().insert(id, connection);
        id
    }

    pub fn unregister(&self, id: u64) {
        self.connections.borrow_mut().remove(&id);
    }

    /// Makes `job` current and sends it to every miner, in slices so that shares keep
    /// flowing on this core while a broadcast to many connections is under way.
    async fn publish_job(&self, job: Arc<Job>) {
        self.jobs.borrow_mut().insert(job.clone());
        self.duplicates
            .borrow_mut()
            .retire_unlisted(&self.jobs.borrow());
        let connections: Vec<Peer> = self.connections.borrow().values().cloned().collect();
        let now_s = now_s();
        let started = std::time::Instant::now();
        let mut longest_slice = Duration::ZERO;
        for slice in connections.chunks(BROADCAST_CONNECTIONS_PER_SLICE) {
            let slice_started = std::time::Instant::now();
            for connection in slice {
                connection.send_job(&job, now_s);
            }
            longest_slice = longest_slice.max(slice_started.elapsed());
            glommio::yield_if_needed().await;
        }
        // The longest slice is the longest this core went without serving shares.
        tracing::info!(
            core = self.index,
            job_id = job.job_id(),
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
        tracing::info!(
            core = self.index,
            bans = bans.len(),
            closed,
            "ban list applied"
        );
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
    /// the scrypt hasher). Checked before each line or frame, so no read, however large,
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
            .scrypt_queued_peak
            .fetch_max(self.awaiting_pow.peak() as u64, Relaxed);
    }

    /// Queues a scrypt share for the batch hasher. It also holds a place under the core's
    /// durability bound while it waits, given back just before its outcome is applied
    /// (which takes one again if the share is stored): otherwise up to
    /// `SCRYPT_SHARES_QUEUED_PER_CORE_MAX` hashed shares could land on a core already at
    /// `SHARES_AWAITING_DURABILITY_PER_CORE_MAX` and fill the share log's queue.
    pub fn queue_pow(&self, work: PowWork) {
        self.awaiting_pow.take(1);
        self.awaiting_durability.take(1);
        self.pow_queue.borrow_mut().push(work);
        if let Some(waker) = self.pow_waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Hashes queued scrypt shares, up to `SCRYPT_LANES_MAX` at a time, and finishes them.
    /// The hasher runs after the tasks already woken (the readers), so shares that arrive
    /// together are hashed together; a lone share goes through the one-lane crate, which is
    /// cheaper than a mostly empty multi-lane pass.
    async fn hash_scrypt_shares(self: Rc<Self>) {
        let mut batch: Vec<PowWork> = Vec::with_capacity(SCRYPT_LANES_MAX);
        let mut headers = Vec::with_capacity(SCRYPT_LANES_MAX);
        let mut pows = Vec::with_capacity(SCRYPT_LANES_MAX);
        loop {
            std::future::poll_fn(|cx| {
                if self.pow_queue.borrow().is_empty() {
                    *self.pow_waiter.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            futures_lite::future::yield_now().await;
            {
                let mut queue = self.pow_queue.borrow_mut();
                let take = queue.len().min(SCRYPT_LANES_MAX);
                batch.extend(queue.drain(..take));
            }
            headers.clear();
            headers.extend(batch.iter().map(PowWork::header));
            pows.clear();
            pows.resize(headers.len(), [0u8; 32]);
            if headers.len() == 1 {
                pows[0] = otedama_kernels::scrypt::scrypt_pow(&headers[0]);
            } else {
                otedama_kernels::scrypt::scrypt_pow_many(&headers, &mut pows);
            }
            let now_s = now_s();
            for (work, pow) in batch.drain(..).zip(&pows) {
                // Neither session asks to close from handle_pow.
                match work {
                    PowWork::V1(connection, pending) => {
                        let mut session = connection.session.borrow_mut();
                        let outcome = {
                            let mut duplicates = self.duplicates.borrow_mut();
                            session.handle_pow(pending, pow, now_s, &mut duplicates)
                        };
                        self.awaiting_durability.give_back(1);
                        let _ = sv1::apply_outcome(&self, &connection, &mut session, outcome);
                        connection.flush(&mut session);
                        connection.wire.awaiting_ack.give_back(1);
                        self.awaiting_pow.give_back(1);
                    }
                    PowWork::V2(connection, pending) => {
                        let outcome = {
                            let mut duplicates = self.duplicates.borrow_mut();
                            connection.session().borrow_mut().handle_pow(
                                *pending,
                                pow,
                                now_s,
                                &mut duplicates,
                            )
                        };
                        self.awaiting_durability.give_back(1);
                        let _ = sv2::apply_outcome(&self, &connection, outcome);
                        connection.flush();
                        connection.awaiting_ack().give_back(1);
                        self.awaiting_pow.give_back(1);
                    }
                }
            }
            glommio::yield_if_needed().await;
        }
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

    /// Sends an accepted share's block up at once, then appends the share to the share
    /// log. The block goes first and whatever the share log says: a valid block is worth
    /// submitting even if its share cannot be kept, and one that the link loses is found
    /// again in the share log by the control plane's block scan. On success the share
    /// counts against the connection's and the core's allowances until it is durable;
    /// `false` if it could not be stored.
    pub fn store_share(
        &self,
        awaiting_ack: &Gate,
        record: &ShareRecord,
        block: Option<BlockCandidate>,
    ) -> bool {
        let mut not_sent_up = None;
        if let Some(block) = block {
            self.counters
                .block_candidates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(refused) = self.upstream.try_send(Upstream::BlockCandidate(block)) {
                tracing::error!("upstream queue full: block candidate left to the block scan");
                not_sent_up = Some(refused.into_inner());
            }
        }
        if let Err(error) = self.share_log.append(self.index, record) {
            tracing::error!(%error, "share not stored");
            if let Some(Upstream::BlockCandidate(block)) = not_sent_up {
                // Neither the link nor the share log has it: the log line is the last copy
                // of the block, whole, for the operator to submit by hand.
                tracing::error!(
                    candidate = %serde_json::to_string(&block).unwrap_or_default(),
                    "block candidate lost to the pool: neither sent up nor stored"
                );
            }
            return false;
        }
        awaiting_ack.take(1);
        self.awaiting_durability.take(1);
        true
    }

    /// Queues the acknowledgement of a share `store_share` took.
    pub fn await_durability(&self, awaiting: AwaitingAck) {
        self.awaiting.borrow_mut().push_back(awaiting);
    }

    /// The share log made the next `done.shares` of this core's shares durable (or failed
    /// to): answer each miner, in order, and let readers go on. Each connection's replies
    /// are sent once at the end, so a batch's acknowledgements share a send (and, in V2,
    /// fold into one SubmitShares.Success per channel).
    fn complete_shares(&self, done: Completed) {
        let now_s = now_s();
        let now = std::time::Instant::now();
        let mut touched: Vec<Peer> = Vec::new();
        let mut touched_wires: std::collections::HashSet<*const ()> = Default::default();
        for _ in 0..done.shares {
            let Some(AwaitingAck {
                share,
                protocol,
                validated_at,
            }) = self.awaiting.borrow_mut().pop_front()
            else {
                tracing::error!("share log completed more shares than this core sent");
                break;
            };
            let (peer, difficulty) = match share {
                Acknowledge::V1(connection, share) => {
                    let mut session = connection.session.borrow_mut();
                    if done.result.is_ok() {
                        session.handle_share_durable(&share.request_id, now_s, &self.jobs.borrow());
                    } else {
                        session.handle_share_store_failed(&share.request_id);
                    }
                    drop(session);
                    (Peer::V1(connection), share.record.difficulty)
                }
                Acknowledge::V2(connection, share) => {
                    let mut session = connection.session().borrow_mut();
                    if done.result.is_ok() {
                        session.handle_share_durable(&share, now_s);
                    } else {
                        session.handle_share_store_failed(&share);
                    }
                    drop(session);
                    (Peer::V2(connection), share.record.difficulty)
                }
            };
            if done.result.is_ok() {
                self.counters.accepted(difficulty, protocol);
                self.counters
                    .acknowledged(now.duration_since(validated_at).as_micros() as u64);
            } else {
                self.counters.rejected(ErrorCode::Other);
            }
            peer.awaiting_ack().give_back(1);
            if touched_wires.insert(peer.identity()) {
                touched.push(peer);
            }
        }
        for peer in touched {
            match peer {
                Peer::V1(connection) => {
                    let mut session = connection.session.borrow_mut();
                    connection.flush(&mut session);
                }
                Peer::V2(connection) => connection.flush(),
            }
        }
        self.awaiting_durability.give_back(done.shares);
    }
}

/// The extranonce1 partition byte of core `core_index` of process `process_index`, where
/// this process runs `cores` executors: `process_index + processes × core_index`. That is
/// unique across the host even when processes run different numbers of cores, and an
/// error if it would not fit the one-byte space.
pub fn extranonce1_partition(
    process_index: usize,
    processes: usize,
    cores: usize,
    core_index: usize,
) -> anyhow::Result<u8> {
    anyhow::ensure!(
        process_index < processes && core_index < cores && processes * cores <= 256,
        "processes × cores must be at most 256 (extranonce1 gives each one a byte), not {processes} × {cores}"
    );
    Ok((process_index + processes * core_index) as u8)
}

/// The cores data-plane process `process_index` of `processes` pins executors to, out of
/// the host's data-plane `cores`: a share of them each, or, with more processes than
/// cores, one core each, round robin. Every core then runs as few executors as it can.
pub fn cores_for_process(cores: &[usize], process_index: usize, processes: usize) -> Vec<usize> {
    if cores.is_empty() {
        return Vec::new();
    }
    if processes >= cores.len() {
        return vec![cores[process_index % cores.len()]];
    }
    cores
        .iter()
        .enumerate()
        .filter(|(k, _)| k % processes == process_index)
        .map(|(_, &core)| core)
        .collect()
}

/// Runs the data plane with the RocksDB share log from the configuration, until it fails;
/// it never returns on its own.
pub fn run(config: DataplaneConfig) -> anyhow::Result<()> {
    let (path, sync) = (config.share_log_path.clone(), config.share_log_sync);
    run_with_share_log(config, move |cores| {
        ShareLog::open(&path, sync, cores)
            .with_context(|| format!("opening the share log at {}", path.display()))
    })
}

/// Lifts this process's soft open-files limit to its hard limit, so the number of miners
/// it can hold is what the host allows (`otedama-tune` raises the hard limit), not the
/// 1,024 most distributions start processes with. Returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the local struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Runs the data plane with the share log `open_share_log` returns for the cores'
/// completion channels. Tests use it to put a faulty or stalled sink under a real data
/// plane.
pub fn run_with_share_log(
    config: DataplaneConfig,
    open_share_log: impl FnOnce(
        Vec<futures_channel::mpsc::UnboundedSender<Completed>>,
    ) -> anyhow::Result<ShareLog>,
) -> anyhow::Result<()> {
    let cores = if config.cores.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        config.cores.clone()
    };
    match raise_open_files_limit() {
        Ok(limit) => tracing::info!(open_files_max = limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
    let partitions = (0..cores.len())
        .map(|core| {
            extranonce1_partition(config.process_index, config.processes, cores.len(), core)
        })
        .collect::<anyhow::Result<Vec<u8>>>()?;
    let (completion_senders, completion_receivers): (Vec<_>, Vec<_>) =
        cores.iter().map(|_| unbounded::<Completed>()).unzip();
    let share_log = open_share_log(completion_senders)?;
    let counters = Arc::new(Counters::default());
    let _ = counters.share_log.set(share_log.status());
    let addresses = AddressCounts::new(config.connections_per_ip_max);
    let (upstream_tx, upstream_rx) = upstream_queue();
    // QUIC: one endpoint per core and listen address, with a channel from every core to
    // every other for datagrams of migrated connections.
    let quic_shared = match (&config.quic_tls, config.quic_listen.is_empty()) {
        (_, true) => None,
        (Some(tls), false) => Some(Arc::new(quic::QuicShared::new(
            tls,
            config.connection_idle_timeout_s,
            config.quic_connections_per_core_max,
        )?)),
        (None, false) => anyhow::bail!("QUIC listeners need a certificate and key"),
    };
    let mut quic_forward_senders = Vec::new();
    let mut quic_forward_receivers: Vec<Vec<_>> = cores.iter().map(|_| Vec::new()).collect();
    for _ in &config.quic_listen {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            cores.iter().map(|_| quic::forward_queue()).unzip();
        quic_forward_senders.push(senders);
        for (core, receiver) in receivers.into_iter().enumerate() {
            quic_forward_receivers[core].push(receiver);
        }
    }
    let mut quic_forward_receivers = quic_forward_receivers.into_iter();
    let mut job_senders = Vec::new();
    let mut handles = Vec::new();
    let config = Arc::new(config);
    for ((index, cpu), completions) in cores.iter().copied().enumerate().zip(completion_receivers) {
        let (job_tx, job_rx) = unbounded();
        job_senders.push(job_tx);
        let partition = partitions[index];
        let quic = quic_shared.clone().map(|shared| {
            (
                shared,
                quic_forward_senders.clone(),
                quic_forward_receivers.next().expect("one per core"),
            )
        });
        let (config, share_log, upstream, counters, addresses) = (
            config.clone(),
            share_log.handle(),
            upstream_tx.clone(),
            counters.clone(),
            addresses.clone(),
        );
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("core-{index}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let core = Rc::new(Core {
                    index,
                    partition,
                    config: Rc::new((*config).clone()),
                    jobs: RefCell::new(JobBook::default()),
                    duplicates: RefCell::new(DuplicateFilter::default()),
                    connections: RefCell::new(HashMap::new()),
                    awaiting: RefCell::new(VecDeque::new()),
                    awaiting_durability: Gate::new(SHARES_AWAITING_DURABILITY_PER_CORE_MAX),
                    awaiting_pow: Gate::new(SCRYPT_SHARES_QUEUED_PER_CORE_MAX),
                    receive_buffer: RefCell::new(vec![0; RECEIVE_BUFFER_BYTES].into()),
                    pow_queue: RefCell::new(Vec::new()),
                    pow_waiter: RefCell::new(None),
                    next_connection_id: Cell::new(0),
                    extranonces: RefCell::new(ExtranonceAllocator::new(
                        partition,
                        rand::random::<u32>(),
                    )),
                    rng: RefCell::new(rand::SeedableRng::from_entropy()),
                    share_log,
                    upstream,
                    counters,
                    bans: RefCell::new(Arc::default()),
                    addresses,
                    deadlines: RefCell::new(Deadlines::default()),
                });
                core_main(core, job_rx, completions, quic).await
            })
            .map_err(|e| anyhow::anyhow!("starting the executor for core {cpu}: {e}"))?;
        handles.push(handle);
    }
    crate::ipc::start(
        config.ipc_socket.clone(),
        job_senders,
        upstream_rx,
        counters,
    );
    tracing::info!(
        cores = ?cores,
        stratum_listen = ?config.stratum_listen,
        sv2_listen = ?config.sv2_listen,
        quic_listen = ?config.quic_listen,
        "data plane running"
    );
    for handle in handles {
        handle
            .join()
            .map_err(|e| anyhow::anyhow!("core executor failed: {e}"))??;
    }
    share_log.close();
    Ok(())
}

/// What one core needs to serve QUIC: the shared configuration, every core's forwarding
/// sender per listen address, and this core's receiver per listen address.
type CoreQuic = (
    Arc<quic::QuicShared>,
    Vec<Vec<quic::ForwardSender>>,
    Vec<quic::ForwardReceiver>,
);

async fn core_main(
    core: Rc<Core>,
    mut commands: UnboundedReceiver<CoreCommand>,
    mut completions: UnboundedReceiver<Completed>,
    quic: Option<CoreQuic>,
) -> anyhow::Result<()> {
    let sweeper = core.clone();
    glommio::spawn_local(async move {
        // A quarter of the timeout: a silent miner is closed within 1.25 timeouts.
        let period_s = (sweeper.config.connection_idle_timeout_s / 4).max(1);
        loop {
            glommio::timer::sleep(Duration::from_secs(period_s)).await;
            sweeper.close_idle_connections();
        }
    })
    .detach();
    let enforcer = core.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            enforcer.enforce_deadlines(now_s());
            enforcer.publish_queue_peaks();
            enforcer.retarget_silent_miners(now_s()).await;
        }
    })
    .detach();
    glommio::spawn_local(core.clone().hash_scrypt_shares()).detach();
    let acknowledger = core.clone();
    glommio::spawn_local(async move {
        while let Some(done) = completions.next().await {
            acknowledger.complete_shares(done);
        }
    })
    .detach();
    let mut listeners = Vec::new();
    let front_ends = core
        .config
        .stratum_listen
        .iter()
        .map(|address| (*address, FrontEnd::V1))
        .chain(
            core.config
                .sv2_listen
                .iter()
                .map(|address| (*address, FrontEnd::V2)),
        )
        .collect::<Vec<_>>();
    for (address, front_end) in front_ends {
        let listener = TcpListener::bind(address)
            .map_err(|e| anyhow::anyhow!("binding {front_end:?} listener {address}: {e}"))?;
        listeners.push((listener, front_end));
    }
    // Miners are accepted only once the control plane's ban and deny list has arrived (it
    // comes first on every link), so no denied address can authorize in the gap after a
    // start. Until then connections wait in the listen backlog.
    let mut quic = quic;
    let mut accept_tasks = Vec::new();
    while let Some(command) = commands.next().await {
        match command {
            CoreCommand::Job(job) => core.publish_job(job).await,
            CoreCommand::Bans(bans) => {
                core.apply_bans(bans);
                for (listener, front_end) in listeners.drain(..) {
                    let core = core.clone();
                    accept_tasks.push(glommio::spawn_local(accept_loop(core, listener, front_end)));
                }
                if let Some((shared, senders, receivers)) = quic.take() {
                    for ((address, forward_to), forwarded) in core
                        .config
                        .quic_listen
                        .clone()
                        .into_iter()
                        .zip(senders)
                        .zip(receivers)
                    {
                        quic::start(&core, address, shared.clone(), forward_to, forwarded)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The protocol a TCP listener speaks.
#[derive(Clone, Copy, Debug)]
enum FrontEnd {
    V1,
    V2,
}

/// Keepalive probes (timed by the host's `tcp_keepalive_*`, which `otedama-tune` sets) find
/// miners that vanished without a FIN while the pool had nothing to send them.
fn enable_keepalive(stream: &glommio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open for the stream's lifetime and `on` outlives the call.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_KEEPALIVE");
    }
}

async fn accept_loop(core: Rc<Core>, listener: TcpListener, front_end: FrontEnd) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                enable_keepalive(&stream);
                let core = core.clone();
                match front_end {
                    FrontEnd::V1 => {
                        glommio::spawn_local(sv1::serve_connection(core, stream)).detach()
                    }
                    FrontEnd::V2 => {
                        glommio::spawn_local(sv2::serve_connection(core, stream)).detach()
                    }
                };
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
            }
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
