//! The data plane's guarantees under faults and load, checked by counts, never by times:
//! a failed share-log write is never acknowledged, a stalled writer slows the readers
//! instead of filling memory, a flooding miner does not starve its neighbours, and a
//! duplicate is caught whichever connection owns the work.
//!
//! Each test runs a real data plane in-process (one pinned core, real sockets on loopback)
//! fed by a real IPC socket. Only the share-log sink is swapped, and only where a test
//! needs a fault that RocksDB cannot be made to produce on demand.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use otedama_dataplane::net::wire::SHARES_AWAITING_ACK_PER_CONNECTION_MAX;
use otedama_dataplane::DataplaneConfig;
use otedama_shared::ipc::{self, Downstream};
use otedama_shared::job::{AlgorithmName, HexHash, JobTemplate};
use otedama_sharelog::writer::{BatchSink, PendingShare, ShareLog, ShareLogHandle, StoreError};
use otedama_tests::{free_port, wait_until, StratumTestClient};

/// Every hash meets this difficulty, so tests submit shares without mining.
const DIFFICULTY_ANY_HASH: f64 = 1e-10;

fn now_s() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

fn template() -> JobTemplate {
    JobTemplate {
        job_id: 7,
        height: 900_000,
        prevhash: [9; 32],
        coinbase_prefix: vec![0x11; 60],
        coinbase_suffix: vec![0x22; 80],
        merkle_branch: (0..12).map(|i| HexHash([i as u8; 32])).collect(),
        version: 0x2000_0000,
        // Bitcoin's difficulty 1: no test share is a block.
        bits: 0x1d00_ffff,
        ntime: now_s(),
        clean_jobs: true,
        algorithm: AlgorithmName::Sha256d,
    }
}

/// Serves one job to every data plane that connects, as the control plane would.
fn serve_jobs(socket: PathBuf) {
    let listener = UnixListener::bind(&socket).expect("binding the IPC socket");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                // As the control plane does: the ban list first (the data plane accepts
                // miners only once it has one), then the job.
                for message in ipc::ban_messages(&Default::default()) {
                    let _ = stream.write_all(&ipc::encode(&message));
                }
                let _ = stream.write_all(&ipc::encode(&Downstream::Job(template())));
                // Hold the link open, discarding counters.
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut stream, &mut sink);
            });
        }
    });
}

/// Idle timeout of the test data planes: long enough that no test's miner goes quiet for it
/// by accident, short enough for the idle test to watch a sweep.
const IDLE_TIMEOUT_S: u64 = 4;

/// Starts a one-core data plane whose share log `open` builds; returns its Stratum address.
fn start_dataplane(
    open: impl FnOnce(
            Vec<futures_channel::mpsc::UnboundedSender<otedama_sharelog::writer::Completed>>,
            PathBuf,
        ) -> anyhow::Result<ShareLog>
        + Send
        + 'static,
) -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    let ipc_socket = dir.join("ipc.sock");
    serve_jobs(ipc_socket.clone());
    let port = free_port();
    let share_log_path = dir.join("shares");
    let config = DataplaneConfig {
        monero: None,
        stratum_listen: vec![format!("127.0.0.1:{port}").parse().unwrap()],
        sv2_listen: Vec::new(),
        sv2_authority: None,
        sv2_certificate_validity_s: 3600,
        quic_listen: Vec::new(),
        quic_tls: None,
        quic_connections_per_core_max: 1,
        cores: vec![0],
        process_index: 0,
        drain_s: 60,
        processes: 1,
        start_difficulty: DIFFICULTY_ANY_HASH,
        difficulty_min: DIFFICULTY_ANY_HASH,
        algorithm: otedama_kernels::Algorithm::Sha256d,
        share_log_path: share_log_path.clone(),
        share_log_sync: false,
        share_log_memtable_bytes: otedama_sharelog::writer::MEMTABLE_BYTES,
        share_retention_ms: 48 * 3_600_000,
        ipc_socket,
        version_rolling_mask: 0x1fff_e000,
        connection_idle_timeout_s: IDLE_TIMEOUT_S,
        connections_per_ip_max: 1024,
        vardiff: None,
        payout_address_rule: None,
        share_shipping: None,
        share_ack_replicated: false,
        host_lease: None,
        cluster_slot: None,
        block_relay: None,
    };
    std::thread::spawn(move || {
        let result =
            otedama_dataplane::rt::run_with_share_log(config, |cores| open(cores, share_log_path));
        eprintln!("data plane stopped: {result:?}");
    });
    let address = format!("127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "the data plane to listen", || {
        TcpStream::connect(&address).is_ok()
    })
    .unwrap();
    address
}

fn real_share_log() -> impl FnOnce(
    Vec<futures_channel::mpsc::UnboundedSender<otedama_sharelog::writer::Completed>>,
    PathBuf,
) -> anyhow::Result<ShareLog> {
    |cores, path| Ok(ShareLog::open(&path, false, cores)?)
}

/// A started client taken apart for raw pipelining: its socket, a reader positioned after
/// the handshake, and the job fields a submit needs.
struct RawClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    job_id: String,
    ntime: u32,
    extranonce2_size: usize,
}

impl RawClient {
    fn start(address: &str) -> Self {
        let mut client = StratumTestClient::connect(address).unwrap();
        client.start("w").unwrap();
        let job = client.job.clone().expect("a job");
        let extranonce2_size = client.extranonce2_size;
        let (writer, reader) = client.into_raw();
        RawClient {
            writer,
            reader,
            job_id: job.job_id,
            ntime: job.ntime,
            extranonce2_size,
        }
    }

    /// A `mining.submit` line; distinct `counter`s give distinct shares.
    fn submit(&self, id: u64, counter: u32) -> Vec<u8> {
        otedama_shared::sv1::client::submit_line(
            id,
            "w",
            &self.job_id,
            &counter.to_be_bytes()[4 - self.extranonce2_size.min(4)..],
            self.ntime,
            0,
            None,
        )
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .expect("reading from the pool");
        assert!(read > 0, "the pool closed the connection");
        serde_json::from_str(&line).expect("the pool sends JSON lines")
    }

    /// Sends one share and waits for its reply.
    fn submit_and_wait(&mut self, id: u64, counter: u32) -> Value {
        self.writer.write_all(&self.submit(id, counter)).unwrap();
        loop {
            let message = self.read();
            if message["id"] == json!(id) {
                return message;
            }
        }
    }
}

#[test]
fn a_failed_share_log_write_is_never_acknowledged() {
    struct FailingSink;
    impl BatchSink for FailingSink {
        fn write(&mut self, _: &[PendingShare], _: u64, _: u64) -> Result<(), StoreError> {
            Err(StoreError::Write("injected fault".into()))
        }
    }
    let address = start_dataplane(|cores, _| Ok(ShareLog::with_sink(FailingSink, 0, cores)));
    let mut client = RawClient::start(&address);
    for counter in 0..20 {
        let reply = client.submit_and_wait(100 + counter as u64, counter);
        assert_eq!(
            reply["result"],
            Value::Null,
            "no `true` for a lost share: {reply}"
        );
        assert_eq!(reply["error"][0], json!(20), "{reply}");
    }
}

/// A sink that holds every batch until released, counting the shares it has been given.
struct StalledSink {
    released: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
}

impl BatchSink for StalledSink {
    fn write(&mut self, batch: &[PendingShare], _: u64, _: u64) -> Result<(), StoreError> {
        self.received.fetch_add(batch.len(), SeqCst);
        while !self.released.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

#[test]
fn a_stalled_writer_slows_readers_instead_of_queueing_without_bound() {
    let released = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let handle_slot = Arc::new(Mutex::new(None::<ShareLogHandle>));
    let sink = StalledSink {
        released: released.clone(),
        received: received.clone(),
    };
    let slot = handle_slot.clone();
    let address = start_dataplane(move |cores, _| {
        let log = ShareLog::with_sink(sink, 0, cores);
        *slot.lock().unwrap() = Some(log.handle());
        Ok(log)
    });
    let mut client = RawClient::start(&address);
    let shares: u32 = 20_000;
    let flood: Vec<u8> = (0..shares)
        .flat_map(|i| client.submit(1000 + i as u64, i))
        .collect();
    let mut writer = client.writer.try_clone().unwrap();
    // Blocks once the pool stops reading: that is the back-pressure under test.
    let flood_thread = std::thread::spawn(move || writer.write_all(&flood));
    let handle = handle_slot
        .lock()
        .unwrap()
        .clone()
        .expect("share log opened");
    let taken = || handle.queued() + received.load(SeqCst);
    // Each line is checked against the bound before it is handled, so however much one
    // read brought, the connection comes to have exactly its allowance in flight (the
    // flood being far larger), and stays there: not one more.
    let bound = SHARES_AWAITING_ACK_PER_CONNECTION_MAX;
    wait_until(
        Duration::from_secs(60),
        "the connection to reach its allowance",
        || taken() >= bound,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        taken(),
        bound,
        "shares taken in while the writer was stalled, against the bound"
    );
    released.store(true, SeqCst);
    let mut acked = 0;
    while acked < shares {
        let message = client.read();
        if message["id"].as_u64().is_some_and(|id| id >= 1000) {
            assert_eq!(message["result"], json!(true), "{message}");
            acked += 1;
        }
    }
    flood_thread.join().unwrap().unwrap();
}

#[test]
fn a_flooding_miner_does_not_starve_its_neighbour() {
    let address = start_dataplane(real_share_log());
    let mut flooder = RawClient::start(&address);
    let mut polite = RawClient::start(&address);
    let shares: u32 = 100_000;
    let flood: Vec<u8> = (0..shares)
        .flat_map(|i| flooder.submit(1000 + i as u64, i))
        .collect();
    let mut flood_writer = flooder.writer.try_clone().unwrap();
    let flood_thread = std::thread::spawn(move || flood_writer.write_all(&flood));
    // Wait until the flood is being served; then the polite miner does 200 round trips on
    // the same core while it goes on.
    let mut flood_acked = 0u32;
    while flood_acked == 0 {
        if flooder.read()["result"] == json!(true) {
            flood_acked += 1;
        }
    }
    for counter in 0..200u32 {
        let reply = polite.submit_and_wait(10 + counter as u64, counter);
        assert_eq!(reply["result"], json!(true), "{reply}");
    }
    let mut flood_after_polite = 0u32;
    while flood_acked + flood_after_polite < shares {
        if flooder.read()["result"] == json!(true) {
            flood_after_polite += 1;
        }
    }
    assert!(
        flood_after_polite > 0,
        "the whole flood was served before the polite miner's 200 shares"
    );
    flood_thread.join().unwrap().unwrap();
}

#[test]
fn duplicates_are_caught_on_the_owning_connection_and_equal_fields_elsewhere_are_new_work() {
    let address = start_dataplane(real_share_log());
    let mut first = RawClient::start(&address);
    let mut second = RawClient::start(&address);
    let reply = first.submit_and_wait(10, 5);
    assert_eq!(reply["result"], json!(true), "{reply}");
    let again = first.submit_and_wait(11, 5);
    assert_eq!(again["error"][0], json!(22), "{again}");
    // The same fields under the other connection's extranonce1 make another header: new
    // work, and the partitioned extranonce1 space is what makes that true across cores
    // and processes (see `rt::extranonce1_partition`).
    let other = second.submit_and_wait(10, 5);
    assert_eq!(other["result"], json!(true), "{other}");
}

#[test]
fn a_silent_miner_is_closed_after_the_idle_timeout_and_a_talking_one_is_not() {
    let address = start_dataplane(real_share_log());
    let mut silent = RawClient::start(&address);
    let mut talking = RawClient::start(&address);
    silent
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(IDLE_TIMEOUT_S * 5)))
        .unwrap();
    // The talking miner sends a share every second, well inside the timeout, for twice
    // the timeout; the silent one sends nothing.
    let rounds = IDLE_TIMEOUT_S * 2;
    for round in 0..rounds {
        let reply = talking.submit_and_wait(100 + round, round as u32);
        assert_eq!(reply["result"], json!(true), "{reply}");
        std::thread::sleep(Duration::from_secs(1));
    }
    // By now (2 × timeout) the silent miner's socket has been shut: reading hits its end
    // (sweeps run every timeout / 4, so the close comes by 1.25 × timeout).
    // Only the end of the stream (or a reset) counts: a read that times out means the
    // socket is still open.
    let mut line = String::new();
    match silent.reader.read_line(&mut line) {
        Ok(0) => {}
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) => {}
        other => panic!("the silent miner is still open: {other:?}, got {line:?}"),
    }
    let reply = talking.submit_and_wait(999, 999);
    assert_eq!(
        reply["result"],
        json!(true),
        "the talking miner was closed: {reply}"
    );
}
