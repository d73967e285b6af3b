//! The data plane's end of the control-plane link: a reader thread that fans jobs out to
//! every core, and a writer thread that sends block candidates at once and counters every
//! second. Both reconnect on their own if the control plane restarts.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use futures_channel::mpsc::UnboundedSender;

use otedama_shared::ipc::{self, Downstream, Upstream, IPC_LINE_BYTES_MAX};
use otedama_shared::Job;

use crate::rt::CoreCommand;

use crate::counters::Counters;

const RECONNECT_DELAY_MS: u64 = 200;
const COUNTERS_INTERVAL_MS: u64 = 1000;

/// Starts the link. Jobs go to `cores`; `upstream` carries block candidates from the cores.
pub fn start(
    socket: PathBuf,
    cores: Vec<UnboundedSender<CoreCommand>>,
    upstream: Receiver<Upstream>,
    counters: Arc<Counters>,
) {
    std::thread::Builder::new()
        .name("ipc".into())
        .spawn(move || link_loop(socket, cores, upstream, counters))
        .expect("spawning the IPC thread");
}

fn link_loop(
    socket: PathBuf,
    cores: Vec<UnboundedSender<CoreCommand>>,
    upstream: Receiver<Upstream>,
    counters: Arc<Counters>,
) {
    let mut warned = false;
    loop {
        let stream = match UnixStream::connect(&socket) {
            Ok(stream) => stream,
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, socket = %socket.display(), "waiting for the control plane");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(RECONNECT_DELAY_MS));
                continue;
            }
        };
        warned = false;
        tracing::info!(socket = %socket.display(), "connected to the control plane");
        let reader = stream.try_clone().expect("cloning a Unix socket");
        let cores_for_reader = cores.clone();
        let reader_thread = std::thread::spawn(move || read_jobs(reader, &cores_for_reader));
        write_upstream(stream, &upstream, &counters);
        let _ = reader_thread.join();
        tracing::warn!("control plane link lost; reconnecting");
    }
}

/// Reads the next message line, newline included, into `line`: at most
/// `IPC_LINE_BYTES_MAX` bytes. False at the link's end, on an error, or for a line longer
/// than that or cut short (logged): the link is then dropped.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> bool {
    line.clear();
    match reader
        .by_ref()
        .take(IPC_LINE_BYTES_MAX as u64)
        .read_until(b'\n', line)
    {
        Ok(0) | Err(_) => false,
        Ok(_) if line.last() != Some(&b'\n') => {
            tracing::error!("IPC line too long or truncated; dropping the link");
            false
        }
        Ok(_) => true,
    }
}

fn read_jobs(stream: UnixStream, cores: &[UnboundedSender<CoreCommand>]) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    // A new link starts a new list: parts of one cut short by a lost link are dropped.
    let mut ban_parts = ipc::BanListAssembler::default();
    loop {
        if !read_line(&mut reader, &mut line) {
            break;
        }
        match ipc::decode::<Downstream>(&line[..line.len() - 1]) {
            // Built once here and shared read-only: every core swaps the same immutable
            // snapshot into its job book.
            Ok(Downstream::Job(template)) => match Job::new(template) {
                Ok(job) => {
                    let job = Arc::new(job);
                    for core in cores {
                        let _ = core.unbounded_send(CoreCommand::Job(job.clone()));
                    }
                }
                Err(error) => tracing::error!(%error, "control plane sent an unusable job"),
            },
            Ok(Downstream::Bans { part, last }) => {
                match ban_parts.add(part, last) {
                    None => {}
                    Some(Ok(bans)) => {
                        let bans = Arc::new(bans);
                        for core in cores {
                            let _ = core.unbounded_send(CoreCommand::Bans(bans.clone()));
                        }
                    }
                    Some(Err(max)) => {
                        tracing::error!(max, "the control plane sent a ban list over its limit; the previous one stays")
                    }
                }
            }
            Err(error) => tracing::error!(%error, "undecodable IPC message"),
        }
    }
    let _ = reader.into_inner().shutdown(std::net::Shutdown::Both);
}

fn write_upstream(mut stream: UnixStream, upstream: &Receiver<Upstream>, counters: &Counters) {
    let mut next_counters = Instant::now();
    loop {
        let wait = next_counters.saturating_duration_since(Instant::now());
        let message = match upstream.recv_timeout(wait) {
            Ok(message) => message,
            Err(_) => {
                next_counters = Instant::now() + Duration::from_millis(COUNTERS_INTERVAL_MS);
                Upstream::Counters(counters.snapshot())
            }
        };
        if stream.write_all(&ipc::encode(&message)).is_err() {
            if let Upstream::BlockCandidate(candidate) = message {
                // The control plane's block scan finds it in the share log once the link
                // is back (unless its share could not be stored either: `store_share`).
                tracing::error!(
                    height = candidate.height,
                    "block candidate not delivered: link down"
                );
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of exactly `IPC_LINE_BYTES_MAX` bytes, newline included, is read; a line one
    /// byte longer drops the link.
    #[test]
    fn a_line_at_the_limit_is_read_and_one_byte_more_is_not() {
        let mut at_limit = vec![b'x'; IPC_LINE_BYTES_MAX - 1];
        at_limit.push(b'\n');
        let mut line = Vec::new();
        let mut reader = std::io::BufReader::new(&at_limit[..]);
        assert!(read_line(&mut reader, &mut line));
        assert_eq!(line.len(), IPC_LINE_BYTES_MAX);
        assert!(!read_line(&mut reader, &mut line), "then the end");

        let mut over = vec![b'x'; IPC_LINE_BYTES_MAX];
        over.push(b'\n');
        let mut reader = std::io::BufReader::new(&over[..]);
        assert!(!read_line(&mut reader, &mut line));
    }
}
