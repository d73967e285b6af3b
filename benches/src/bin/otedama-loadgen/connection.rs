//! One load-generator process: a single-threaded tokio runtime holding its share of the
//! connections. Each connection subscribes, authorizes, waits for work, then submits shares
//! on its own schedule and times every acknowledgement and every new job.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use crate::report::{encode_histogram, latency_histogram, WorkerReport};
use crate::Args;
pub(crate) use otedama_shared::clock::now_us as unix_us;

/// Marker the pool's synthetic chain writes before the publish time in the coinbase, as
/// it appears in the notify line: hex-encoded inside coinb1 (`/otedama-synthetic/t=`).
const PUBLISH_TIME_MARKER_HEX: &[u8] = b"2f6f746564616d612d73796e7468657469632f743d";
/// Time allowed for one TCP connect.
const CONNECT_TIMEOUT_S: u64 = 10;
/// After the measured run, how long acknowledgements for shares already sent may take.
const DRAIN_S: u64 = 3;
/// Read buffer per connection: a mining.notify with a 12-level branch is about 1.3 KB.
const READ_BUFFER_BYTES: usize = 2048;
/// Request ids below this are the handshake; submits count up from it.
const FIRST_SUBMIT_ID: u64 = 16;
/// After the pool asks a connection to reconnect, how long it waits for the answers to
/// the shares it already sent before it closes and connects again.
pub(crate) const RECONNECT_ANSWERS_WAIT_S: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Phase {
    Ramp,
    Measure {
        started: Instant,
        started_unix_us: u64,
    },
    Drain,
    Stop,
}

/// State shared by every connection of this process (one thread, so `Cell`/`RefCell`).
pub(crate) struct Worker {
    pub(crate) args: Args,
    pub(crate) target: SocketAddr,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) ack_us: RefCell<Histogram<u64>>,
    pub(crate) broadcast_us: RefCell<Histogram<u64>>,
    /// Fallback reference when jobs carry no publish stamp: the first receipt of each job.
    pub(crate) first_receipt_us: RefCell<std::collections::HashMap<String, u64>>,
    pub(crate) stamped: Cell<bool>,
    pub(crate) unstamped: Cell<bool>,
    pub(crate) report: RefCell<WorkerReport>,
    pub(crate) ready: Cell<usize>,
    pub(crate) settled: Cell<usize>,
    pub(crate) pending_total: Cell<usize>,
    /// Acknowledged shares as `EXTRANONCE1 EXTRANONCE2` lines (`--acked-shares-out`).
    pub(crate) acked_shares: RefCell<Vec<u8>>,
    /// The transport's shared parts for V2 and QUIC runs.
    pub(crate) v2: Option<crate::v2::Transport>,
}

/// Runs this process's connections through ramp-up, `on_ready`, the measured run and the
/// drain, and returns what it measured.
pub fn run_worker(
    args: &Args,
    target: SocketAddr,
    worker_index: usize,
    on_ready: impl FnOnce(usize) -> anyhow::Result<()>,
) -> anyhow::Result<WorkerReport> {
    let mine: Vec<usize> = (worker_index..args.connections)
        .step_by(args.processes)
        .collect();
    crate::raise_open_files_limit(mine.len())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let (phase, _) = watch::channel(Phase::Ramp);
        let v2 = crate::v2::Transport::new(args, target)?;
        let worker = Rc::new(Worker {
            args: args.clone(),
            target,
            phase,
            ack_us: RefCell::new(latency_histogram()),
            broadcast_us: RefCell::new(latency_histogram()),
            first_receipt_us: RefCell::new(Default::default()),
            stamped: Cell::new(false),
            unstamped: Cell::new(false),
            report: RefCell::new(WorkerReport::default()),
            ready: Cell::new(0),
            settled: Cell::new(0),
            pending_total: Cell::new(0),
            acked_shares: RefCell::new(Vec::new()),
            v2,
        });
        worker.report.borrow_mut().connections_attempted = mine.len() as u64;
        let ramp_deadline = Instant::now() + Duration::from_secs(args.connect_timeout_s);
        let per_process_connect_rate = (args.connect_rate / args.processes as f64).max(1.0);
        let ramp_started = Instant::now();
        let mut tasks = Vec::with_capacity(mine.len());
        for (k, &global_index) in mine.iter().enumerate() {
            let due = ramp_started + Duration::from_secs_f64(k as f64 / per_process_connect_rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            if Instant::now() > ramp_deadline {
                break;
            }
            let task = match args.protocol {
                crate::Protocol::V1 => {
                    tokio::task::spawn_local(run_connection(worker.clone(), global_index))
                }
                _ => tokio::task::spawn_local(crate::v2::run_connection(
                    worker.clone(),
                    global_index,
                )),
            };
            tasks.push(task);
        }
        while worker.settled.get() < tasks.len() && Instant::now() < ramp_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        on_ready(worker.ready.get())?;
        let started = Instant::now();
        let _ = worker.phase.send(Phase::Measure {
            started,
            started_unix_us: unix_us(),
        });
        tokio::time::sleep(Duration::from_secs(args.duration)).await;
        let _ = worker.phase.send(Phase::Drain);
        let drain_deadline = Instant::now() + Duration::from_secs(DRAIN_S);
        while worker.pending_total.get() > 0 && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = worker.phase.send(Phase::Stop);
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let mut report = worker.report.borrow().clone();
        report.ack_us = encode_histogram(&worker.ack_us.borrow());
        report.broadcast_us = encode_histogram(&worker.broadcast_us.borrow());
        report.broadcast_stamped = worker.stamped.get() && !worker.unstamped.get();
        if let Some(path) = &args.acked_shares_out {
            std::fs::write(path, &*worker.acked_shares.borrow())
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        Ok(report)
    })
}

pub(crate) async fn connect(worker: &Worker, global_index: usize) -> std::io::Result<TcpStream> {
    let source = worker.args.source_ips.nth(global_index);
    let socket = TcpSocket::new_v4()?;
    // Let connect() pick the port, so each source address's ports are shared per target
    // rather than reserved at bind time.
    let enable: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &enable as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let stream = tokio::time::timeout(
        Duration::from_secs(CONNECT_TIMEOUT_S),
        socket.connect(worker.target),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// IPv4 and TCP header bytes per segment on loopback (TCP timestamps on: 20 + 20 + 12).
pub(crate) const TCP_HEADER_BYTES: u64 = 52;

/// Bytes a TCP socket has carried both ways, headers included: payload acknowledged and
/// received, plus a header per segment sent and received (pure ACKs too).
pub(crate) fn tcp_wire_bytes(fd: i32) -> Option<u64> {
    // SAFETY: a zeroed tcp_info is a valid value; getsockopt writes at most `length` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        )
    };
    (status == 0).then(|| {
        info.tcpi_bytes_acked
            + info.tcpi_bytes_received
            + (info.tcpi_segs_out as u64 + info.tcpi_segs_in as u64) * TCP_HEADER_BYTES
    })
}

/// One connection's client state.
struct Client {
    global_index: usize,
    extranonce2_size: usize,
    job: Option<(String, u32)>,
    authorized: bool,
    ready: bool,
    next_id: u64,
    extranonce2: u64,
    /// Submits awaiting their reply, in send order: (request id, sent at, extranonce2).
    pending: VecDeque<(u64, Instant, u64)>,
    /// This connection's extranonce1 (hex), from the subscribe answer.
    extranonce1: String,
    /// When the pool asked this connection to reconnect (`client.reconnect`).
    reconnect_asked: Option<Instant>,
    sent_in_measure: u64,
    settled: bool,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    method: Option<&'a str>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

type NotifyParams<'a> = (
    &'a str,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    &'a str,
    bool,
);

async fn run_connection(worker: Rc<Worker>, global_index: usize) {
    let mut client = Client {
        global_index,
        extranonce2_size: 4,
        job: None,
        authorized: false,
        ready: false,
        next_id: FIRST_SUBMIT_ID,
        extranonce2: 0,
        pending: VecDeque::new(),
        extranonce1: String::new(),
        reconnect_asked: None,
        sent_in_measure: 0,
        settled: false,
    };
    let mut phase_rx = worker.phase.subscribe();
    let mut ticker: Option<(Interval, Instant, f64)> = None;
    let mut wire_at_start = None;
    // One pass per TCP connection: a pool that asks this miner to reconnect gets a new one,
    // with the schedule carrying on.
    let ended = loop {
        let ended = run_session(
            &worker,
            &mut client,
            &mut phase_rx,
            &mut ticker,
            &mut wire_at_start,
        )
        .await;
        if ended != Ended::Reconnect {
            break ended;
        }
        worker.report.borrow_mut().reconnects += 1;
        worker
            .pending_total
            .set(worker.pending_total.get() - client.pending.len());
        client.pending.clear();
        client.job = None;
        client.authorized = false;
        client.reconnect_asked = None;
    };
    let mut report = worker.report.borrow_mut();
    match ended {
        Ended::ByPool => report.disconnects += 1,
        Ended::ConnectFailed => {}
        _ if client.ready => report.connections_held += 1,
        _ => {}
    }
    drop(report);
    worker
        .pending_total
        .set(worker.pending_total.get() - client.pending.len());
    settle(&worker, &mut client);
}

/// How one TCP connection of a miner ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The run is over.
    Stopped,
    /// The pool closed it, or a write failed.
    ByPool,
    /// The pool asked for a reconnect, and this one's answers are in (or waited for).
    Reconnect,
    ConnectFailed,
}

async fn run_session(
    worker: &Rc<Worker>,
    client: &mut Client,
    phase_rx: &mut watch::Receiver<Phase>,
    ticker: &mut Option<(Interval, Instant, f64)>,
    wire_at_start: &mut Option<u64>,
) -> Ended {
    let stream = match connect(worker, client.global_index).await {
        Ok(stream) => stream,
        Err(error) => {
            if worker.report.borrow().connect_errors == 0 {
                eprintln!("loadgen: connect failed: {error}");
            }
            worker.report.borrow_mut().connect_errors += 1;
            settle(worker, client);
            return Ended::ConnectFailed;
        }
    };
    let fd = stream.as_raw_fd();
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut out = Vec::with_capacity(256);
    let _ = writeln!(
        out,
        r#"{{"id":1,"method":"mining.subscribe","params":["otedama-loadgen/{}"]}}"#,
        env!("CARGO_PKG_VERSION")
    );
    let user = serde_json::to_string(&worker.args.user).expect("a string serializes");
    let _ = writeln!(
        out,
        r#"{{"id":2,"method":"mining.authorize","params":[{user},"x"]}}"#
    );
    if let Some(difficulty) = worker.args.suggest_difficulty {
        let _ = writeln!(
            out,
            r#"{{"id":3,"method":"mining.suggest_difficulty","params":[{difficulty:e}]}}"#
        );
    }
    if write_half.write_all(&out).await.is_err() {
        settle(worker, client);
        return Ended::ByPool;
    }
    if matches!(*phase_rx.borrow(), Phase::Measure { .. }) && wire_at_start.is_none() {
        *wire_at_start = tcp_wire_bytes(fd);
    }
    let mut line = Vec::with_capacity(256);
    let user_json = user;
    let reconnect_wait = Duration::from_secs(RECONNECT_ANSWERS_WAIT_S);
    loop {
        if let Some(asked) = client.reconnect_asked {
            if client.pending.is_empty() || asked.elapsed() >= reconnect_wait {
                add_wire_bytes(worker, wire_at_start, fd);
                return Ended::Reconnect;
            }
        }
        tokio::select! {
            read = reader.read_until(b'\n', &mut line) => {
                match read {
                    Ok(0) | Err(_) => {
                        add_wire_bytes(worker, wire_at_start, fd);
                        // Asked to reconnect, a close by the pool is the reconnect.
                        return match client.reconnect_asked {
                            Some(_) => Ended::Reconnect,
                            None => Ended::ByPool,
                        };
                    }
                    Ok(_) if line.last() != Some(&b'\n') => continue,
                    Ok(_) => {}
                }
                let received_unix_us = unix_us();
                let keep = handle_line(worker, client, &line, received_unix_us, phase_rx);
                line.clear();
                if !keep {
                    add_wire_bytes(worker, wire_at_start, fd);
                    return Ended::ByPool;
                }
            }
            _ = next_tick(ticker) => {
                let Some((_, started, period_s)) = ticker.as_ref() else { continue };
                let due = (started.elapsed().as_secs_f64() / period_s) as u64 + 1;
                let mut wanted = due.saturating_sub(client.sent_in_measure);
                out.clear();
                while wanted > 0 {
                    wanted -= 1;
                    client.sent_in_measure += 1;
                    if client.reconnect_asked.is_some() {
                        // Not sent to a pool that is handing this miner over.
                        continue;
                    }
                    if client.pending.len() >= worker.args.inflight_max {
                        worker.report.borrow_mut().throttled += 1;
                        continue;
                    }
                    // After a reconnect, only once authorized again.
                    let Some((job_id, ntime)) = client.job.as_ref().filter(|_| client.authorized) else {
                        break;
                    };
                    let id = client.next_id;
                    client.next_id += 1;
                    client.extranonce2 += 1;
                    let width = client.extranonce2_size * 2;
                    let mask = if width >= 16 { u64::MAX } else { (1u64 << (width * 4)) - 1 };
                    let extranonce2 = client.extranonce2 & mask;
                    let _ = writeln!(
                        out,
                        r#"{{"id":{id},"method":"mining.submit","params":[{user_json},"{job_id}","{extranonce2:0width$x}","{ntime:08x}","{:08x}"]}}"#,
                        client.global_index as u32,
                    );
                    client.pending.push_back((id, Instant::now(), extranonce2));
                    worker.pending_total.set(worker.pending_total.get() + 1);
                    worker.report.borrow_mut().shares_sent += 1;
                }
                if !out.is_empty() && write_half.write_all(&out).await.is_err() {
                    add_wire_bytes(worker, wire_at_start, fd);
                    return match client.reconnect_asked {
                        Some(_) => Ended::Reconnect,
                        None => Ended::ByPool,
                    };
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if client.reconnect_asked.is_some() => {}
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    return Ended::Stopped;
                }
                let phase = *phase_rx.borrow_and_update();
                match phase {
                    Phase::Measure { .. } => *wire_at_start = tcp_wire_bytes(fd),
                    // A run whose shares are all acknowledged goes from Drain to Stop at
                    // once, and a watch receiver may see only the last.
                    Phase::Drain | Phase::Stop => add_wire_bytes(worker, wire_at_start, fd),
                    _ => {}
                }
                match phase {
                    Phase::Measure { .. } => *ticker = submit_schedule(worker, client.global_index),
                    Phase::Drain => *ticker = None,
                    Phase::Stop => return Ended::Stopped,
                    _ => {}
                }
            }
        }
    }
}

/// Adds this connection's bytes on the wire since the measured run (or its reconnect)
/// began.
fn add_wire_bytes(worker: &Worker, wire_at_start: &mut Option<u64>, fd: std::os::fd::RawFd) {
    if let (Some(start), Some(end)) = (wire_at_start.take(), tcp_wire_bytes(fd)) {
        worker.report.borrow_mut().wire_bytes += end.saturating_sub(start);
    }
}

/// The submit schedule of one connection for the measured run: one share per
/// `connections / rate` seconds, the connections' first submits spread over one period.
/// `None` at rate 0. Every protocol's connections use it, so they submit alike.
pub(crate) fn submit_schedule(
    worker: &Worker,
    global_index: usize,
) -> Option<(Interval, Instant, f64)> {
    if worker.args.rate <= 0.0 {
        return None;
    }
    let period_s = worker.args.connections as f64 / worker.args.rate;
    let offset_s = period_s * ((global_index as f64 * 0.618_033_988_7) % 1.0);
    let started = Instant::now() + Duration::from_secs_f64(offset_s);
    let tick = Duration::from_secs_f64(period_s.max(0.001));
    let mut interval = tokio::time::interval_at(started.into(), tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some((interval, started, period_s))
}

pub(crate) async fn next_tick(ticker: &mut Option<(Interval, Instant, f64)>) {
    match ticker {
        Some((interval, _, _)) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Marks the connection as done with ramp-up (ready or failed), once.
fn settle(worker: &Worker, client: &mut Client) {
    settle_once(worker, &mut client.settled);
}

/// Marks a connection as done with ramp-up, once.
pub(crate) fn settle_once(worker: &Worker, settled: &mut bool) {
    if !*settled {
        *settled = true;
        worker.settled.set(worker.settled.get() + 1);
    }
}

/// Handles one line from the pool; `false` closes the connection.
fn handle_line(
    worker: &Worker,
    client: &mut Client,
    line: &[u8],
    received_unix_us: u64,
    phase_rx: &watch::Receiver<Phase>,
) -> bool {
    let Ok(message) = serde_json::from_slice::<Incoming>(line) else {
        eprintln!("loadgen: the pool sent a line that is not JSON");
        return false;
    };
    if message.method == Some("client.reconnect") {
        // To the same address (a pool handing its miners to its replacement): the answers
        // to shares already sent are awaited first (`run_session`).
        client.reconnect_asked.get_or_insert_with(Instant::now);
        return true;
    }
    if message.method == Some("mining.notify") {
        let Some(params) = message.params else {
            return false;
        };
        let Ok(notify) = serde_json::from_str::<NotifyParams>(params.get()) else {
            eprintln!("loadgen: malformed mining.notify");
            return false;
        };
        let (job_id, ntime_hex, clean) = (notify.0, notify.7, notify.8);
        let Ok(ntime) = u32::from_str_radix(ntime_hex, 16) else {
            return false;
        };
        let is_new = client.job.as_ref().is_none_or(|(id, _)| id != job_id);
        if is_new && client.ready && clean {
            record_broadcast(worker, job_id, line, received_unix_us, phase_rx);
        }
        client.job = Some((job_id.to_string(), ntime));
        if client.authorized && !client.ready {
            client.ready = true;
            worker.ready.set(worker.ready.get() + 1);
            settle(worker, client);
        }
        return true;
    }
    let Some(id) = message.id else { return true };
    let ok = message.error.is_none() && message.result.is_some_and(|r| r.get() != "false");
    match id {
        1 => {
            if let Some(size) = message
                .result
                .and_then(|r| serde_json::from_str::<(IgnoredAny, String, usize)>(r.get()).ok())
            {
                client.extranonce1 = size.1;
                client.extranonce2_size = size.2.clamp(1, 8);
            }
            true
        }
        2 => {
            if !ok {
                worker.report.borrow_mut().authorize_errors += 1;
                settle(worker, client);
                return false;
            }
            client.authorized = true;
            if client.job.is_some() && !client.ready {
                client.ready = true;
                worker.ready.set(worker.ready.get() + 1);
                settle(worker, client);
            }
            true
        }
        id if id >= FIRST_SUBMIT_ID => {
            let Some(position) = client.pending.iter().position(|(p, _, _)| *p == id) else {
                return true;
            };
            let (_, sent_at, extranonce2) =
                client.pending.remove(position).expect("position is valid");
            worker.pending_total.set(worker.pending_total.get() - 1);
            let mut report = worker.report.borrow_mut();
            if ok {
                report.shares_acked += 1;
                if worker.args.acked_shares_out.is_some() {
                    let width = client.extranonce2_size * 2;
                    let _ = writeln!(
                        worker.acked_shares.borrow_mut(),
                        "{} {extranonce2:0width$x}",
                        client.extranonce1
                    );
                }
                worker
                    .ack_us
                    .borrow_mut()
                    .saturating_record(sent_at.elapsed().as_micros().max(1) as u64);
            } else if message.error.is_some_and(|e| e.get().starts_with("[21,")) {
                report.shares_stale += 1;
            } else {
                if report.shares_rejected == 0 {
                    eprintln!(
                        "loadgen: first rejected share: {}",
                        String::from_utf8_lossy(line).trim_end()
                    );
                }
                report.shares_rejected += 1;
            }
            true
        }
        _ => true,
    }
}

/// Records how long a new job took to reach this connection.
pub(crate) fn record_broadcast(
    worker: &Worker,
    job_id: &str,
    line: &[u8],
    received_unix_us: u64,
    phase_rx: &watch::Receiver<Phase>,
) {
    let Phase::Measure {
        started_unix_us, ..
    } = *phase_rx.borrow()
    else {
        return;
    };
    match publish_stamp_us(line) {
        Some(published_us) => {
            // A job published before the run started sat in the socket while this process
            // waited for its siblings; it says nothing about the pool.
            if published_us < started_unix_us {
                return;
            }
            worker.stamped.set(true);
            worker
                .broadcast_us
                .borrow_mut()
                .saturating_record(received_unix_us.saturating_sub(published_us).max(1));
        }
        None => {
            worker.unstamped.set(true);
            let mut first = worker.first_receipt_us.borrow_mut();
            let reference = *first.entry(job_id.to_string()).or_insert(received_unix_us);
            worker
                .broadcast_us
                .borrow_mut()
                .saturating_record(received_unix_us.saturating_sub(reference).max(1));
        }
    }
}

/// The publish time the synthetic chain put in the coinbase, in Unix microseconds. It sits
/// hex-encoded inside coinb1, which is itself inside the notify line.
fn publish_stamp_us(line: &[u8]) -> Option<u64> {
    let start = find(line, PUBLISH_TIME_MARKER_HEX)? + PUBLISH_TIME_MARKER_HEX.len();
    let mut millis: u64 = 0;
    let mut rest = &line[start..];
    while rest.len() >= 2 {
        let byte = u8::from_str_radix(std::str::from_utf8(&rest[..2]).ok()?, 16).ok()?;
        if !byte.is_ascii_digit() {
            break;
        }
        millis = millis
            .checked_mul(10)?
            .checked_add(u64::from(byte - b'0'))?;
        rest = &rest[2..];
    }
    Some(millis * 1000)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_the_hex_of_the_pools_tag() {
        assert_eq!(
            PUBLISH_TIME_MARKER_HEX,
            hex::encode(b"/otedama-synthetic/t=").as_bytes()
        );
    }

    #[test]
    fn publish_stamp_is_read_from_the_coinbase_hex() {
        let coinbase = hex::encode(b"\x03abc/otedama-synthetic/t=1700000000123/\xff");
        let line = format!(r#"{{"params":["1","00","{coinbase}"]}}"#);
        assert_eq!(
            publish_stamp_us(line.as_bytes()),
            Some(1_700_000_000_123_000)
        );
        assert_eq!(publish_stamp_us(b"no stamp here"), None);
    }
}
