//! A fault proxy for the node's JSON-RPC port: the pool talks to the real node through
//! it, and it spoils chosen requests the way a busy or failing node and network do. Each
//! HTTP request is read whole and its JSON-RPC method looked at; a request for a method in
//! the faulted set gets, by a seeded draw:
//!
//! - `Pass`: forwarded, and the reply relayed;
//! - `Delay`: forwarded after a pause;
//! - `DropRequest`: the connection closed before the node sees anything;
//! - `CutReply`: forwarded (the node acts on it) and the reply cut off halfway, so the
//!   pool never learns what the node did;
//! - `ServiceUnavailable`: an HTTP 503 with a plain-text body, the node never asked.
//!
//! Other methods pass untouched. Only loopback; the proxy stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the proxy did to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay,
    DropRequest,
    CutReply,
    ServiceUnavailable,
}

/// How many requests got each fault, per method.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub by_fault: Mutex<std::collections::BTreeMap<(String, String), u64>>,
}

pub struct FaultProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Once set, every request passes untouched (`heal`).
    healed: Arc<AtomicBool>,
    pub counts: Arc<FaultCounts>,
    /// Requests seen, any method.
    pub requests: Arc<AtomicU64>,
}

/// The fault mix: the chance in percent of each fault for a faulted method.
#[derive(Clone, Copy, Debug)]
pub struct FaultMix {
    pub delay_percent: u32,
    pub drop_percent: u32,
    pub cut_percent: u32,
    pub unavailable_percent: u32,
    pub delay: Duration,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `node_port`. `methods` are the
    /// JSON-RPC methods to spoil; `seed` fixes the draws.
    pub fn start(node_port: u16, methods: &[&str], mix: FaultMix, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("an address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let healed = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(FaultCounts::default());
        let requests = Arc::new(AtomicU64::new(0));
        let methods: Arc<Vec<String>> = Arc::new(methods.iter().map(|m| m.to_string()).collect());
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        {
            let (stop, counts, requests) = (stop.clone(), counts.clone(), requests.clone());
            let healed = healed.clone();
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let (methods, rng) = (methods.clone(), rng.clone());
                            let (counts, requests) = (counts.clone(), requests.clone());
                            let healed = healed.clone();
                            std::thread::spawn(move || {
                                let faulted = Faulted {
                                    methods: &methods,
                                    mix,
                                    rng: &rng,
                                    healed: &healed,
                                };
                                let _ = serve(client, node_port, &faulted, &counts, &requests);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        FaultProxy {
            port,
            stop,
            healed,
            counts,
            requests,
        }
    }

    /// From now on every request passes untouched.
    pub fn heal(&self) {
        self.healed.store(true, Relaxed);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How often `fault` was applied to `method`.
    pub fn count(&self, method: &str, fault: Fault) -> u64 {
        self.counts
            .by_fault
            .lock()
            .unwrap()
            .get(&(method.to_string(), format!("{fault:?}")))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Reads one HTTP message (request or reply): its head, and its body by Content-Length.
/// `None` if the peer closed before a whole head.
fn read_message(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut head = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
        if let Some(value) = text.strip_prefix("content-length:") {
            content_length = value.trim().parse().unwrap_or(0);
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

/// Forwards one request to the node and returns its whole reply.
fn forward(node_port: u16, head: &[u8], body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut node = TcpStream::connect(("127.0.0.1", node_port))?;
    node.write_all(head)?;
    node.write_all(body)?;
    let reply = read_message(&mut BufReader::new(node))?;
    Ok(reply
        .map(|(head, body)| [head, body].concat())
        .unwrap_or_default())
}

/// What the proxy spoils and how.
struct Faulted<'a> {
    methods: &'a [String],
    mix: FaultMix,
    rng: &'a Mutex<StdRng>,
    healed: &'a AtomicBool,
}

fn serve(
    client: TcpStream,
    node_port: u16,
    faulted: &Faulted<'_>,
    counts: &FaultCounts,
    requests: &AtomicU64,
) -> std::io::Result<()> {
    let Faulted {
        methods,
        mix,
        rng,
        healed,
    } = *faulted;
    client.set_nonblocking(false)?;
    let mut writer = client.try_clone()?;
    let mut reader = BufReader::new(client);
    while let Some((head, body)) = read_message(&mut reader)? {
        requests.fetch_add(1, Relaxed);
        let method = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|request| request["method"].as_str().map(str::to_string))
            .unwrap_or_default();
        let fault = if methods.contains(&method) && !healed.load(Relaxed) {
            let draw = rng.lock().unwrap().gen_range(0..100);
            let mut bound = 0;
            let mut pick = Fault::Pass;
            for (percent, fault) in [
                (mix.delay_percent, Fault::Delay),
                (mix.drop_percent, Fault::DropRequest),
                (mix.cut_percent, Fault::CutReply),
                (mix.unavailable_percent, Fault::ServiceUnavailable),
            ] {
                bound += percent;
                if draw < bound {
                    pick = fault;
                    break;
                }
            }
            pick
        } else {
            Fault::Pass
        };
        *counts
            .by_fault
            .lock()
            .unwrap()
            .entry((method, format!("{fault:?}")))
            .or_default() += 1;
        match fault {
            Fault::Pass => writer.write_all(&forward(node_port, &head, &body)?)?,
            Fault::Delay => {
                std::thread::sleep(mix.delay);
                writer.write_all(&forward(node_port, &head, &body)?)?;
            }
            Fault::DropRequest => {
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Fault::CutReply => {
                let reply = forward(node_port, &head, &body)?;
                writer.write_all(&reply[..reply.len() / 2])?;
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Fault::ServiceUnavailable => {
                let page = "node is busy\n";
                write!(
                    writer,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )?;
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    Ok(())
}
