//! The floor under a job broadcast (issue 19): how long one core takes to `write` the same
//! line once to each of N idle loopback TCP sockets, with raw syscalls and nothing else.
//! The pool's own time for N connections on one core (its log line `job broadcast …
//! elapsed_ms`), divided by this, says how far the pool's broadcast is from the cost of the
//! writes it must make (BENCHMARKS.md).
//!
//! The other ends of the sockets live in a child process (this binary again, with
//! `--hold`): one process may hold 20,000 files on the machines this runs on, and both ends
//! of 10,000 connections would not fit in one. With `--receivers idle` the child connects
//! and then only sleeps, so a write costs only itself. With `--receivers reading` it waits
//! on all its sockets with epoll and reads what comes, as a miner (or `otedama-loadgen`)
//! does: on loopback every write then also wakes that reader, on the writer's core, which
//! over a network happens on the miner's host instead.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Connections one run holds at most: both ends count against one process's open files
/// only through the child, so this is what one process may hold, with room to spare.
const CONNECTIONS_MAX: usize = 19_000;
/// Rounds at most: each leaves its line unread in every receiver, within the socket's
/// receive buffer.
const ROUNDS_MAX: usize = 50;

#[derive(Parser)]
#[command(about = "Times one core writing a line once to each of N loopback sockets")]
struct Args {
    /// Sockets to write to (at most 19,000).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Bytes of the line written to each socket: the pool's notify line for the job (1,225
    /// for the synthetic chain's jobs).
    #[arg(long, default_value_t = 1225)]
    line_bytes: usize,
    /// Rounds: each writes the line once to every socket (at most 50).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The core the writing thread is pinned to.
    #[arg(long)]
    core: Option<usize>,
    /// What the other ends do: `idle` (connected, never read) or `reading` (epoll and
    /// read, like a miner).
    #[arg(long, value_enum, default_value_t = Receivers::Idle)]
    receivers: Receivers,
    /// The core the receiving process is pinned to (the load generator's core).
    #[arg(long)]
    receivers_core: Option<usize>,
    /// Start round `r` at this Unix time plus `r` times --round-interval-ms (waiting for
    /// it), so several baseline processes write their rounds at the same time, as the
    /// pool's processes broadcast a job at the same time. Default: each round 100 ms after
    /// the one before.
    #[arg(long)]
    rounds_at_unix_ms: Option<u64>,
    #[arg(long, default_value_t = 2_000)]
    round_interval_ms: u64,
    /// Child mode: connect this many sockets to --address and hold them until stdin closes.
    #[arg(long, hide = true)]
    hold: bool,
    #[arg(long, hide = true)]
    address: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Receivers {
    Idle,
    Reading,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.hold {
        if let Some(core) = args.receivers_core {
            pin_to_core(core)?;
        }
        return hold(
            args.address.context("--hold needs --address")?,
            args.connections,
            args.receivers,
        );
    }
    if args.connections == 0 || args.connections > CONNECTIONS_MAX {
        bail!("--connections must be 1 to {CONNECTIONS_MAX}");
    }
    if args.rounds == 0 || args.rounds > ROUNDS_MAX {
        bail!("--rounds must be 1 to {ROUNDS_MAX}");
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child
        .args(["--hold", "--address", &address.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .args([
            "--receivers",
            &format!("{:?}", args.receivers).to_lowercase(),
        ]);
    if let Some(core) = args.receivers_core {
        child.args(["--receivers-core", &core.to_string()]);
    }
    // Pinned after the child starts, which would otherwise inherit the core.
    let mut child = child
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(core) = args.core {
        pin_to_core(core)?;
    }
    let mut sockets = Vec::with_capacity(args.connections);
    while sockets.len() < args.connections {
        let (socket, _) = listener.accept()?;
        socket.set_nonblocking(true)?;
        sockets.push(socket);
    }
    // The child says when every one of its ends is connected.
    let mut ready = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut ready)?;
    let line: Vec<u8> = (0..args.line_bytes)
        .map(|i| {
            if i + 1 == args.line_bytes {
                b'\n'
            } else {
                b'x'
            }
        })
        .collect();
    let mut elapsed = Vec::with_capacity(args.rounds);
    let mut would_block = 0u64;
    // Rounds that began late (the sockets were still connecting at their time), which
    // then do not overlap the other processes' as planned.
    let mut late_rounds = 0u32;
    for round in 0..args.rounds {
        if let Some(first_ms) = args.rounds_at_unix_ms {
            let at = Duration::from_millis(first_ms + round as u64 * args.round_interval_ms);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            match at.checked_sub(now) {
                Some(wait) => std::thread::sleep(wait),
                None => late_rounds += 1,
            }
        }
        let started = Instant::now();
        for socket in &sockets {
            would_block += write_all(socket.as_raw_fd(), &line)?;
        }
        elapsed.push(started.elapsed());
        if args.rounds_at_unix_ms.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let rounds_ms: Vec<String> = elapsed
        .iter()
        .map(|round| format!("{:.3}", round.as_secs_f64() * 1e3))
        .collect();
    // This side closes first, so the closed connections wait out TIME_WAIT on the
    // listener's port and not on the child's ephemeral ports (one of which could be a port
    // a pool started next wants to bind).
    drop(sockets);
    drop(child.stdin.take());
    let _ = child.wait();
    let mut elapsed_sorted = elapsed.clone();
    elapsed_sorted.sort();
    let median = elapsed_sorted[elapsed.len() / 2];
    let per_socket_us = median.as_secs_f64() * 1e6 / args.connections as f64;
    println!(
        "{{\"receivers\":\"{:?}\",\"connections\":{},\"line_bytes\":{},\"rounds\":{},\"rounds_ms\":[{}],\"min_ms\":{:.3},\"median_ms\":{:.3},\"max_ms\":{:.3},\"median_us_per_socket\":{:.3},\"would_block\":{},\"late_rounds\":{}}}",
        args.receivers,
        args.connections,
        args.line_bytes,
        args.rounds,
        rounds_ms.join(","),
        elapsed_sorted[0].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        elapsed_sorted[elapsed.len() - 1].as_secs_f64() * 1e3,
        per_socket_us,
        would_block,
        late_rounds
    );
    Ok(())
}

/// Writes `line` to a non-blocking socket with `write(2)`, waiting out a full buffer (which
/// idle receivers with room never cause); returns how many times it had to wait.
fn write_all(fd: i32, line: &[u8]) -> anyhow::Result<u64> {
    let mut written = 0;
    let mut waits = 0;
    while written < line.len() {
        let rest = &line[written..];
        // SAFETY: the pointer and length describe `rest`, alive for the call.
        let result = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if result >= 0 {
            written += result as usize;
            continue;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            return Err(error.into());
        }
        waits += 1;
        std::thread::yield_now();
    }
    Ok(waits)
}

fn pin_to_core(core: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it, and the
    // call reads it for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "pinning to core {core}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The child: connects `connections` sockets, says so on stdout, and holds them until its
/// stdin closes: idle, or reading whatever arrives.
fn hold(address: SocketAddr, connections: usize, receivers: Receivers) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        held.push(TcpStream::connect(address)?);
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = (receivers == Receivers::Reading).then(|| {
        let done = done.clone();
        let fds: Vec<i32> = held.iter().map(|socket| socket.as_raw_fd()).collect();
        for socket in &held {
            let _ = socket.set_nonblocking(true);
        }
        std::thread::spawn(move || read_until_done(&fds, &done))
    });
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    drop(held);
    Ok(())
}

/// Waits on every socket with one epoll set (edge-triggered) and reads each ready one dry.
fn read_until_done(fds: &[i32], done: &std::sync::atomic::AtomicBool) {
    // SAFETY: plain epoll calls on descriptors this process owns; `events` and `buffer`
    // outlive every call that writes into them.
    unsafe {
        let epoll = libc::epoll_create1(0);
        if epoll < 0 {
            return;
        }
        for &fd in fds {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buffer = [0u8; 16 * 1024];
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let ready = libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 100);
            for event in events.iter().take(ready.max(0) as usize) {
                let fd = event.u64 as i32;
                while libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) > 0 {}
            }
        }
        libc::close(epoll);
    }
}
