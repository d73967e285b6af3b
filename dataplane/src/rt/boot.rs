//! Starting the data plane: the open-files limit, the share log, one pinned executor per
//! core with its extranonce1 partition, listeners (SO_REUSEPORT), the QUIC endpoints and
//! the IPC thread, and each core's accept loops and timers.

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

use otedama_shared::{DuplicateFilter, JobBook};

use crate::counters::Counters;
use crate::net::now_s;
use crate::net::{quic, sv1, sv2};
use crate::DataplaneConfig;
use admission::{AddressCounts, Deadlines};
use gate::Gate;
use otedama_sharelog::writer::{Completed, ShareLog, SHARES_AWAITING_DURABILITY_PER_CORE_MAX};

use super::*;

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

/// This process's share shipper's progress (cluster mode), for its counters. One data
/// plane runs per process.
static SHIPPER_STATUS: std::sync::OnceLock<Arc<otedama_cluster::ShipperStatus>> =
    std::sync::OnceLock::new();

/// Runs the data plane with the RocksDB share log from the configuration, until it fails;
/// it never returns on its own.
pub fn run(mut config: DataplaneConfig) -> anyhow::Result<()> {
    // Claimed before the share log opens: a process that cannot hold a slot takes no miner.
    let host_lease = match config.host_lease.clone() {
        Some(lease) => {
            let lease = otedama_cluster::HostLease::claim(lease).context("claiming a host slot")?;
            config.cluster_slot = Some(crate::ClusterSlot {
                slot: lease.slot(),
                lease: lease.status(),
            });
            end_when_the_slot_is_given_up(lease.status())?;
            Some(lease)
        }
        None => None,
    };
    let (path, sync) = (config.share_log_path.clone(), config.share_log_sync);
    let memtable_bytes = config.share_log_memtable_bytes;
    let shipping = config.share_shipping.clone();
    if config.share_ack_replicated && shipping.is_none() {
        anyhow::bail!("share_ack = \"replicated\" needs a share shipper (cluster mode)");
    }
    let mut shipper = None;
    let mut log_status = None;
    let result = run_with_share_log(config, |cores| {
        let log = ShareLog::open_with_memtable(&path, sync, cores, memtable_bytes)
            .with_context(|| format!("opening the share log at {}", path.display()))?;
        log_status = Some(log.status());
        if let Some(shipping) = shipping {
            // Started once the log exists, which the shipper follows as a secondary.
            let started = otedama_cluster::ShareShipper::start(shipping)
                .context("starting the share shipper")?;
            let _ = SHIPPER_STATUS.set(started.status());
            shipper = Some(started);
        }
        Ok(log)
    });
    // After a drain this slot may not run again for long (until the next upgrade): what
    // its log holds goes to the stream now, within a bound, not at its next start.
    if let (Some(shipper), Some(log), true) =
        (&shipper, &log_status, super::drain::drain_requested())
    {
        ship_the_rest(&shipper.status(), log);
    }
    // Stops after its batch under way; the next start ships the rest.
    drop(shipper);
    drop(host_lease);
    result
}

/// The longest a drained data plane waits for the link to take what the cores queued for
/// the control plane (block candidates, counters) before it exits.
const UPSTREAM_FLUSH_WAIT_S_MAX: u64 = 10;

/// The longest a drained data plane waits for its share shipper to have the log's last
/// records in the stream before it exits anyway (the slot's next start ships the rest).
pub const DRAIN_SHIP_WAIT_S_MAX: u64 = 60;

/// Waits until the shipper has shipped every record the log wrote, or
/// `DRAIN_SHIP_WAIT_S_MAX`, or the shipper ended.
fn ship_the_rest(
    shipper: &otedama_cluster::ShipperStatus,
    log: &otedama_sharelog::writer::ShareLogStatus,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let written = log.next_sequence.load(Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(DRAIN_SHIP_WAIT_S_MAX);
    while shipper.shipped_through.load(Relaxed) < written
        && !shipper.ended.load(Relaxed)
        && !shipper.diverged.load(Relaxed)
        && std::time::Instant::now() < deadline
    {
        shipper.wake();
        std::thread::sleep(Duration::from_millis(100));
    }
    let shipped = shipper.shipped_through.load(Relaxed);
    if shipped < written {
        tracing::error!(
            shipped_through = shipped,
            written,
            "drained with records not yet in the share stream: the slot's next start ships them"
        );
    } else {
        tracing::info!(
            shipped_through = shipped,
            "every record of the drained log is in the share stream"
        );
    }
}

/// The exit status of a data plane whose host slot another process took
/// (`EX_TEMPFAIL`): its supervisor (`otedama run`, systemd) starts it again, and that start
/// claims a free slot.
pub const EXIT_SLOT_GIVEN_UP: i32 = 75;

/// Cluster mode: ends the process once its lease keeper gives its slot up to another
/// process (`otedama_cluster::host::HOST_SLOT_TAKEN_GIVE_UP_MS`). By then its cores have
/// closed every connection and refused new ones for that long (`holds_cluster_lease`), so
/// no share is in flight; and every share acknowledged is already in the share log, which
/// the next start ships. Ending is the only way out: the cores' extranonce1 values begin
/// with the slot, so the process cannot take another while it runs.
fn end_when_the_slot_is_given_up(status: Arc<otedama_cluster::LeaseStatus>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("slot-watch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if status.given_up() {
                tracing::error!(
                    exit_status = EXIT_SLOT_GIVEN_UP,
                    "this process's host slot is held by another process: ending, so that the next start claims a free one"
                );
                std::process::exit(EXIT_SLOT_GIVEN_UP);
            }
        })
        .context("starting the slot watch")?;
    Ok(())
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
    // Read before any core runs: a restart must not serve the jobs served before it.
    let served = crate::served_jobs::ServedJobs::load(crate::served_jobs::served_jobs_path(
        &config.share_log_path,
    ))?;
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
    // Single-host mode: where the control plane says this log may be cut (the link sets it).
    let share_log_floor = Arc::new(std::sync::atomic::AtomicU64::new(0));
    super::retention::start(
        share_log.releaser(),
        share_log_floor.clone(),
        config.share_retention_ms,
        SHIPPER_STATUS.get().cloned(),
    )
    .context("starting the share retention")?;
    let counters = Arc::new(Counters::default());
    let _ = counters.share_log.set(share_log.status());
    if let Some(status) = SHIPPER_STATUS.get() {
        let _ = counters.share_shipping.set(status.clone());
    }
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
    let accepting = super::drain::Accepting::new(cores.len());
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
        let (config, share_log, upstream, counters, addresses, accepting) = (
            config.clone(),
            share_log.handle(),
            upstream_tx.clone(),
            counters.clone(),
            addresses.clone(),
            accepting.clone(),
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
                    awaiting_pow: Gate::new(SHARES_AWAITING_POW_PER_CORE_MAX),
                    receive_buffer: RefCell::new(vec![0; RECEIVE_BUFFER_BYTES].into()),
                    pow_queue: RefCell::new(Vec::new()),
                    pow_waiter: RefCell::new(None),
                    next_connection_id: Cell::new(0),
                    closed_since_trim: Cell::new(0),
                    extranonces: RefCell::new(ExtranonceAllocator::new(
                        &match &config.cluster_slot {
                            Some(cluster) => vec![cluster.slot, partition],
                            None => vec![partition],
                        },
                        rand::random::<u32>(),
                    )),
                    rng: RefCell::new(rand::SeedableRng::from_entropy()),
                    share_log,
                    upstream,
                    held_candidates: RefCell::default(),
                    block_relay: config.block_relay.clone(),
                    counters,
                    bans: RefCell::new(Arc::default()),
                    addresses,
                    deadlines: RefCell::new(Deadlines::default()),
                    draining: Cell::new(false),
                    monero: config
                        .monero
                        .as_ref()
                        .map(|_| Rc::new(crate::net::monero::MoneroCore::default())),
                });
                core_main(core, job_rx, completions, quic, accepting).await
            })
            .map_err(|e| anyhow::anyhow!("starting the executor for core {cpu}: {e}"))?;
        handles.push(handle);
    }
    // Cluster mode: the link goes over NATS to whichever control plane answers, so a host
    // needs no control plane of its own.
    let transport = match &config.host_lease {
        Some(lease) => crate::ipc::LinkTransport::Nats {
            nats_urls: lease.nats_urls.clone(),
            host: lease.host.clone(),
            process: lease.process,
        },
        None => crate::ipc::LinkTransport::Socket(config.ipc_socket.clone()),
    };
    let drain_senders = job_senders.clone();
    super::drain::watch(config.drain_s, move |plan| {
        for sender in &drain_senders {
            let _ = sender.unbounded_send(CoreCommand::Drain(plan));
        }
    })
    .context("starting the drain watch")?;
    crate::ipc::start(
        transport,
        job_senders,
        upstream_rx,
        counters,
        served,
        crate::ipc::ShareLogFloor {
            process: config.process_index as u32,
            floor: share_log_floor,
        },
        crate::ipc::MoneroSeeds::new(config.monero.as_ref().map(|monero| monero.randomx_mode)),
    );
    tracing::info!(
        cores = ?cores,
        stratum_listen = ?config.stratum_listen,
        sv2_listen = ?config.sv2_listen,
        quic_listen = ?config.quic_listen,
        "data plane running"
    );
    // The cores end only after a drain (or on failure); the log is closed after the last
    // of them, so every share they handed it is written before the process exits.
    for handle in handles {
        handle
            .join()
            .map_err(|e| anyhow::anyhow!("core executor failed: {e}"))??;
    }
    share_log.close();
    // Block candidates still queued for the control plane go before the process does
    // (the link thread takes them while it is connected).
    let deadline = std::time::Instant::now() + Duration::from_secs(UPSTREAM_FLUSH_WAIT_S_MAX);
    while !upstream_tx.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !upstream_tx.is_empty() {
        tracing::error!(
            queued = upstream_tx.len(),
            "exiting with messages for the control plane still queued: block candidates among them are in the share log, where the control plane's block scan finds them"
        );
    }
    tracing::info!("drained: every share handed to the share log is written; exiting");
    Ok(())
}

/// What one core needs to serve QUIC: the shared configuration, every core's forwarding
/// sender per listen address, and this core's receiver per listen address.
pub(super) type CoreQuic = (
    Arc<quic::QuicShared>,
    Vec<Vec<quic::ForwardSender>>,
    Vec<quic::ForwardReceiver>,
);

/// The latency the acknowledger's task queue asks of the executor: how long a durable
/// batch may wait for its core to switch to it.
const ACKNOWLEDGE_LATENCY_US: u64 = 500;
/// The acknowledger's share of the core against the default queue's 1,000: it runs
/// seldom and briefly, so when it has work it goes first.
const ACKNOWLEDGE_QUEUE_SHARES: usize = 10_000;

pub(super) async fn core_main(
    core: Rc<Core>,
    mut commands: UnboundedReceiver<CoreCommand>,
    mut completions: UnboundedReceiver<Completed>,
    quic: Option<CoreQuic>,
    accepting: Arc<super::drain::Accepting>,
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
            enforcer.enforce_cluster_lease();
            enforcer.enforce_deadlines(now_s());
            enforcer.publish_queue_peaks();
            enforcer.retarget_silent_miners(now_s()).await;
            enforcer.trim_memory();
            enforcer
                .duplicates
                .borrow_mut()
                .advance_growths(otedama_shared::duplicates::GROWTH_SLOTS_MOVED_PER_TICK);
            enforcer.resend_held_candidates();
        }
    })
    .detach();
    glommio::spawn_local(core.clone().hash_queued_shares()).detach();
    if core.monero.is_some() {
        glommio::spawn_local(crate::net::monero::MoneroCore::hash_queued_shares(
            core.clone(),
        ))
        .detach();
    }
    let acknowledger = core.clone();
    // Acknowledgements run in their own task queue, latency-sensitive: behind a thousand
    // connection tasks in the default queue, a durable batch waited tens of milliseconds
    // for its turn (the `handoff` stage). Marked so, the executor switches to it within
    // `ACKNOWLEDGE_LATENCY_US` of a completion arriving.
    let acknowledge_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(ACKNOWLEDGE_QUEUE_SHARES),
        glommio::Latency::Matters(Duration::from_micros(ACKNOWLEDGE_LATENCY_US)),
        "acknowledge",
    );
    glommio::spawn_local_into(
        async move {
            while let Some(mut done) = completions.next().await {
                let replicated_at = acknowledger.await_replication(&mut done).await;
                acknowledger.complete_shares(done, replicated_at);
            }
        },
        acknowledge_queue,
    )
    .map_err(|e| anyhow::anyhow!("starting the acknowledger: {e}"))?
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
        .chain(
            core.config
                .monero
                .iter()
                .flat_map(|monero| monero.listen.iter())
                .map(|address| (*address, FrontEnd::Monero)),
        )
        .collect::<Vec<_>>();
    // Each listener's descriptor, to shut it down when the core drains.
    let mut listener_fds = Vec::new();
    for (address, front_end) in front_ends {
        let (listener, fd) = bind_listener(address)
            .map_err(|e| anyhow::anyhow!("binding {front_end:?} listener {address}: {e}"))?;
        listeners.push((listener, front_end));
        listener_fds.push(fd);
    }
    // Miners are accepted only once the control plane's ban and deny list has arrived (it
    // comes first on every link), so no denied address can authorize in the gap after a
    // start. Until then connections wait in the listen backlog.
    let mut quic = quic;
    let mut accept_tasks = Vec::new();
    let mut drained: Option<futures_channel::oneshot::Receiver<()>> = None;
    let mut accepting_reported = false;
    loop {
        let next = match drained.as_mut() {
            None => commands.next().await,
            // Draining: jobs still come (the miners not yet moved mine them) until the
            // drain ends.
            Some(done) => {
                let command = async { commands.next().await.map(Some) };
                let ended = async {
                    let _ = done.await;
                    None
                };
                match futures_lite::future::or(command, ended).await {
                    Some(command) => command,
                    None => break,
                }
            }
        };
        let Some(command) = next else { break };
        match command {
            CoreCommand::Job(job) => core.publish_job(job).await,
            CoreCommand::MoneroJob(job, seed) => {
                crate::net::monero::MoneroCore::publish(&core, job, seed).await
            }
            CoreCommand::Bans(bans) => {
                core.apply_bans(bans);
                if drained.is_some() {
                    continue;
                }
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
                if !accepting_reported {
                    accepting_reported = true;
                    accepting.core_accepts();
                }
            }
            CoreCommand::Drain(plan) => {
                if drained.is_some() {
                    continue;
                }
                // A shut-down listener leaves the SO_REUSEPORT group at once: from here the
                // kernel gives new connections to the replacement's listeners only, and
                // (with `net.ipv4.tcp_migrate_req`) moves those queued on this one there
                // too. Its accept task ends on the error that follows; a connection the
                // task had already taken is served and asked to move like the others.
                // (Cancelling the task instead could drop one the kernel had just handed
                // over, a miner's connection closed without a word.)
                core.draining.set(true);
                for &fd in &listener_fds {
                    // SAFETY: shutdown(2) on a listening socket this core owns; its
                    // descriptor stays open until the accept task drops the listener.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
                listeners.clear();
                let (done_tx, done_rx) = futures_channel::oneshot::channel();
                drained = Some(done_rx);
                let draining = core.clone();
                glommio::spawn_local(async move {
                    draining.drain(plan).await;
                    let _ = done_tx.send(());
                })
                .detach();
            }
        }
    }
    if let Some(monero) = &core.monero {
        monero.finish_all(&core);
    }
    Ok(())
}

/// The accept queue each listener asks for: 65,535, what `otedama-tune` plans at most for
/// `somaxconn` (`ACCEPT_QUEUE_MAX`), so up to that the kernel's `net.core.somaxconn` alone
/// sets it. `otedama-tune` sizes that for every miner reconnecting within a few seconds after
/// a restart; a fixed smaller value here would quietly undo it (connections past a full
/// queue are dropped and retried by the miner a second or more later). It bounds queued
/// connections, not memory set aside.
const LISTEN_BACKLOG: i32 = 65_535;

/// A TCP listener on `address` sharing its port with the host's other cores and data
/// planes (SO_REUSEPORT), with its descriptor.
fn bind_listener(
    address: std::net::SocketAddr,
) -> std::io::Result<(TcpListener, std::os::fd::RawFd)> {
    use std::os::fd::IntoRawFd;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let fd = socket.into_raw_fd();
    // SAFETY: a bound, listening socket whose descriptor only this listener owns from
    // here (the copy of its number is only ever passed to shutdown(2)).
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok((listener, fd))
}

/// The protocol a TCP listener speaks.
#[derive(Clone, Copy, Debug)]
pub(super) enum FrontEnd {
    V1,
    V2,
    Monero,
}

/// Keepalive probes (timed by the host's `tcp_keepalive_*`, which `otedama-tune` sets) find
/// miners that vanished without a FIN while the pool had nothing to send them.
pub(super) fn enable_keepalive(stream: &glommio::net::TcpStream) {
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

pub(super) async fn accept_loop(core: Rc<Core>, listener: TcpListener, front_end: FrontEnd) {
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
                    FrontEnd::Monero => {
                        glommio::spawn_local(crate::net::monero::serve_connection(core, stream))
                            .detach()
                    }
                };
            }
            // The core drains: its listener was shut down (`core_main`).
            Err(_) if core.draining.get() => return,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
            }
        }
    }
}
