//! The data plane's end of the control-plane link: a reader thread that fans jobs out to
//! every core, and a writer thread that sends block candidates at once and counters every
//! second. Both reconnect on their own if the control plane restarts.
//!
//! The link has no acknowledgement, so a candidate written just before the control plane
//! died may never have been read. The writer keeps the candidates it sent recently and
//! sends them again on every new link; the control plane records a block once by its
//! hash, so a candidate that arrives twice is submitted once.

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
use crate::served_jobs::{Admission, ServedJob, ServedJobs};

const RECONNECT_DELAY_MS: u64 = 200;
const COUNTERS_INTERVAL_MS: u64 = 1000;
/// Block candidates the writer keeps to send again on the next link: more than a block
/// race ever produces while a control plane restarts, a few hundred bytes each.
pub const CANDIDATES_RESENT_MAX: usize = 64;
/// How long a sent candidate is kept for resending. A control plane down for longer
/// finds the block in the share log (if its share is stored), and a block this old has
/// most likely lost its race anyway.
pub const CANDIDATE_RESEND_WINDOW_S: u64 = 600;

/// Candidates sent (or being sent) on recent links, oldest first, each with when it was
/// first taken from the queue and whether any write of it went through.
#[derive(Default)]
pub struct RecentCandidates {
    sent: std::collections::VecDeque<(Instant, bool, otedama_shared::share::BlockCandidate)>,
}

impl RecentCandidates {
    /// Keeps a candidate about to be written. At `CANDIDATES_RESENT_MAX` the oldest goes;
    /// one never written at all is logged whole, for the operator to submit by hand.
    pub fn keep(&mut self, candidate: otedama_shared::share::BlockCandidate, now: Instant) {
        if self.sent.len() >= CANDIDATES_RESENT_MAX {
            if let Some((_, written, dropped)) = self.sent.pop_front() {
                log_if_never_written(written, &dropped);
            }
        }
        self.sent.push_back((now, false, candidate));
    }

    fn mark_newest_written(&mut self) {
        if let Some(newest) = self.sent.back_mut() {
            newest.1 = true;
        }
    }

    /// Writes every kept candidate younger than `CANDIDATE_RESEND_WINDOW_S` to a new link,
    /// oldest first, and forgets the older ones. False if the link failed.
    pub fn resend(&mut self, link: &mut impl Write, now: Instant) -> bool {
        let window = Duration::from_secs(CANDIDATE_RESEND_WINDOW_S);
        self.sent.retain(|(taken_at, written, candidate)| {
            let kept = now.saturating_duration_since(*taken_at) < window;
            if !kept {
                log_if_never_written(*written, candidate);
            }
            kept
        });
        for (_, written, candidate) in self.sent.iter_mut() {
            let line = ipc::encode(&Upstream::BlockCandidateResent(candidate.clone()));
            if link.write_all(&line).is_err() {
                return false;
            }
            *written = true;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// A candidate no longer kept that no link ever took is logged whole, the last copy the
/// pool has of it (the block scan finds it too if its share was stored).
fn log_if_never_written(written: bool, candidate: &otedama_shared::share::BlockCandidate) {
    if !written {
        tracing::error!(
            candidate = %serde_json::to_string(candidate).unwrap_or_default(),
            "block candidate never delivered and no longer kept; submit it by hand"
        );
    }
}

/// How the data plane reaches its control plane.
#[derive(Clone, Debug)]
pub enum LinkTransport {
    /// The control plane's Unix socket on this host.
    Socket(PathBuf),
    /// Cluster mode: a session over NATS (`otedama_cluster::link`) with whichever
    /// control plane answers, as `HOST.PROCESS`.
    Nats {
        nats_urls: Vec<String>,
        host: String,
        process: u32,
    },
}

impl LinkTransport {
    fn connect(&self) -> anyhow::Result<UnixStream> {
        match self {
            LinkTransport::Socket(socket) => Ok(UnixStream::connect(socket)?),
            LinkTransport::Nats {
                nats_urls,
                host,
                process,
            } => otedama_cluster::link::open_session(nats_urls, host, *process),
        }
    }

    fn describe(&self) -> String {
        match self {
            LinkTransport::Socket(socket) => socket.display().to_string(),
            LinkTransport::Nats { nats_urls, .. } => format!("NATS {}", nats_urls.join(",")),
        }
    }
}

/// Where the link puts this process's share-log floor from the control plane
/// (`Downstream::ShareLogFloors`, read by `rt::retention`).
#[derive(Clone)]
pub struct ShareLogFloor {
    pub process: u32,
    pub floor: Arc<std::sync::atomic::AtomicU64>,
}

/// Monero jobs the seed preparer holds, in order, while it prepares a seed; past this a
/// job is dropped (logged), and a newer one follows.
pub const MONERO_JOBS_PREPARING_MAX: usize = 16;

/// RandomX seeds prepared for the cores' VMs, on their own thread (`start_seed_preparer`)
/// so neither a core nor the link waits for one (light mode about a second, fast mode a
/// minute or more): the newest `MONERO_VMS_PER_CORE_MAX`, each shared by every core's VM.
pub struct MoneroSeeds {
    /// `None` when this process serves no Monero listeners.
    mode: Option<otedama_kernels::randomx::RandomXMode>,
    held: Vec<Arc<otedama_kernels::randomx::RandomXSeed>>,
}

impl MoneroSeeds {
    pub fn new(mode: Option<otedama_kernels::randomx::RandomXMode>) -> Self {
        MoneroSeeds {
            mode,
            held: Vec::new(),
        }
    }

    /// The prepared seed `key`, prepared now if it is new (light mode: about a second;
    /// fast mode: a minute or more).
    fn prepared(
        &mut self,
        key: &[u8; 32],
    ) -> Result<Arc<otedama_kernels::randomx::RandomXSeed>, String> {
        let Some(mode) = self.mode else {
            return Err("this data plane has no Monero listeners".into());
        };
        if let Some(held) = self.held.iter().find(|seed| seed.key() == key) {
            return Ok(held.clone());
        }
        let started = Instant::now();
        let seed = otedama_kernels::randomx::RandomXSeed::prepare(key, mode)
            .map_err(|error| error.to_string())?;
        tracing::info!(
            seed = %hex::encode(key),
            mode = ?seed.mode(),
            large_pages = seed.large_pages(),
            memory_bytes = seed.memory_bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "RandomX seed prepared"
        );
        if seed.mode() != mode {
            tracing::warn!(wanted = ?mode, had = ?seed.mode(), "RandomX seed prepared in another mode than asked (not enough memory for the dataset)");
        }
        if self.held.len() >= crate::net::monero::MONERO_VMS_PER_CORE_MAX {
            self.held.remove(0);
        }
        let seed = Arc::new(seed);
        self.held.push(seed.clone());
        Ok(seed)
    }
}

/// The way into the seed preparer: jobs in the order they came, at most
/// `MONERO_JOBS_PREPARING_MAX`, the oldest dropped for a new one (the newest job is the
/// one worth serving: a new tip's).
#[derive(Clone)]
pub struct SeedPreparer {
    jobs: crossbeam_channel::Sender<otedama_shared::monero::stratum::MoneroJob>,
    oldest: crossbeam_channel::Receiver<otedama_shared::monero::stratum::MoneroJob>,
    /// Cleared when the preparer's thread ends (it never should; a panic would).
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Clears `SeedPreparer::alive` when the preparer's thread ends, however it ends.
struct Alive(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl SeedPreparer {
    fn send(&self, mut job: otedama_shared::monero::stratum::MoneroJob) {
        if !self.alive.load(std::sync::atomic::Ordering::Acquire) {
            tracing::error!(
                job_id = job.job_id,
                "the RandomX seed thread is gone: no Monero job is served any more"
            );
            return;
        }
        loop {
            match self.jobs.try_send(job) {
                Ok(()) => return,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    if let Ok(dropped) = self.oldest.try_recv() {
                        tracing::warn!(
                            job_id = dropped.job_id,
                            "Monero jobs arrive faster than their seeds are prepared: the oldest waiting is dropped"
                        );
                    }
                    job = back;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(back)) => {
                    tracing::error!(
                        job_id = back.job_id,
                        "the RandomX seed thread is gone: no Monero job is served any more"
                    );
                    return;
                }
            }
        }
    }
}

/// Starts the thread that prepares each Monero job's seed and then hands the job to every
/// core, in the order the jobs came; `None` without Monero listeners.
fn start_seed_preparer(
    mut seeds: MoneroSeeds,
    cores: Vec<UnboundedSender<CoreCommand>>,
) -> Option<SeedPreparer> {
    seeds.mode?;
    let (jobs, preparing) = crossbeam_channel::bounded::<otedama_shared::monero::stratum::MoneroJob>(
        MONERO_JOBS_PREPARING_MAX,
    );
    let oldest = preparing.clone();
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let guard = Alive(alive.clone());
    std::thread::Builder::new()
        .name("randomx-seeds".into())
        .spawn(move || {
            let _alive = guard;
            for job in preparing {
                match seeds.prepared(&job.seed_hash) {
                    Ok(seed) => {
                        let job = Arc::new(job);
                        for core in &cores {
                            let _ = core
                                .unbounded_send(CoreCommand::MoneroJob(job.clone(), seed.clone()));
                        }
                    }
                    Err(error) => tracing::error!(
                        job_id = job.job_id,
                        %error,
                        "cannot prepare this Monero job's RandomX seed: the job is not served"
                    ),
                }
            }
        })
        .expect("spawning the RandomX seed thread");
    Some(SeedPreparer {
        jobs,
        oldest,
        alive,
    })
}

/// Starts the link. Jobs go to `cores` once `served` has recorded them; `upstream`
/// carries block candidates from the cores.
pub fn start(
    transport: LinkTransport,
    cores: Vec<UnboundedSender<CoreCommand>>,
    upstream: Receiver<Upstream>,
    counters: Arc<Counters>,
    served: ServedJobs,
    floor: ShareLogFloor,
    seeds: MoneroSeeds,
) {
    let served = Arc::new(std::sync::Mutex::new(served));
    let seeds = start_seed_preparer(seeds, cores.clone());
    std::thread::Builder::new()
        .name("ipc".into())
        .spawn(move || link_loop(transport, cores, upstream, counters, served, floor, seeds))
        .expect("spawning the IPC thread");
}

fn link_loop(
    transport: LinkTransport,
    cores: Vec<UnboundedSender<CoreCommand>>,
    upstream: Receiver<Upstream>,
    counters: Arc<Counters>,
    served: Arc<std::sync::Mutex<ServedJobs>>,
    floor: ShareLogFloor,
    seeds: Option<SeedPreparer>,
) {
    let mut warned = false;
    let mut recent = RecentCandidates::default();
    loop {
        let stream = match transport.connect() {
            Ok(stream) => stream,
            Err(error) => {
                if !warned {
                    tracing::warn!(error = format!("{error:#}"), link = %transport.describe(), "waiting for the control plane");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(RECONNECT_DELAY_MS));
                continue;
            }
        };
        warned = false;
        tracing::info!(link = %transport.describe(), "connected to the control plane");
        // A new link's control plane may be another (restarted, restored): nothing is cut
        // until it says how far.
        floor.floor.store(0, std::sync::atomic::Ordering::Release);
        let reader = stream.try_clone().expect("cloning a Unix socket");
        let (cores_for_reader, served, link_floor, seeds) =
            (cores.clone(), served.clone(), floor.clone(), seeds.clone());
        let reader_thread = std::thread::spawn(move || {
            read_jobs(reader, &cores_for_reader, &served, &link_floor, &seeds)
        });
        write_upstream(stream, &upstream, &counters, &mut recent);
        let _ = reader_thread.join();
        // No control plane says how far now: nothing is cut until the next one does. (The
        // reader is joined, so no floor of the lost link lands after this.)
        floor.floor.store(0, std::sync::atomic::Ordering::Release);
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

fn read_jobs(
    stream: UnixStream,
    cores: &[UnboundedSender<CoreCommand>],
    served: &std::sync::Mutex<ServedJobs>,
    floor: &ShareLogFloor,
    monero_jobs: &Option<SeedPreparer>,
) {
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
                    let admission = served.lock().expect("served jobs").admit(ServedJob {
                        job_id: job.job_id(),
                        prevhash: job.template.prevhash,
                    });
                    match admission {
                        Admission::Admitted => {
                            let job = Arc::new(job);
                            for core in cores {
                                let _ = core.unbounded_send(CoreCommand::Job(job.clone()));
                            }
                        }
                        Admission::ServedBeforeStart => tracing::info!(
                            job_id = job.job_id(),
                            "a job served before this process started is not served again (a newer one is on its way)"
                        ),
                        Admission::NotRecorded(error) => tracing::error!(
                            job_id = job.job_id(),
                            %error,
                            "cannot record the newest job served, so it is not served"
                        ),
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
            Ok(Downstream::ShareLogFloors { floors }) => {
                // The control plane's latest word, even if lower than before (a lower floor
                // only cuts less), and none if it names no floor for this process.
                let below = floors
                    .iter()
                    .find(|(process, _)| *process == floor.process)
                    .map_or(0, |(_, below)| *below);
                floor
                    .floor
                    .store(below, std::sync::atomic::Ordering::Release);
            }
            // Not kept in `served`: a Monero job's work differs from any earlier run's
            // by the cores' salt (`MoneroCore`), and its tips would push the Bitcoin
            // family's out of that short list.
            Ok(Downstream::MoneroJob(template)) => {
                let job_id = template.job_id;
                match (monero_job(template), monero_jobs) {
                    (Ok(job), Some(preparer)) => preparer.send(job),
                    (Ok(_), None) => tracing::error!(
                        job_id,
                        "control plane sent a Monero job, and this data plane has no Monero listeners"
                    ),
                    (Err(error), _) => {
                        tracing::error!(job_id, %error, "control plane sent an unusable Monero job")
                    }
                }
            }
            Err(error) => tracing::error!(%error, "undecodable IPC message"),
        }
    }
    let _ = reader.into_inner().shutdown(std::net::Shutdown::Both);
}

/// A Monero template as the cores' job. Refused unless its reserved room is the size
/// every connection's extra nonce is.
fn monero_job(
    template: otedama_shared::ipc::MoneroJobTemplate,
) -> Result<otedama_shared::monero::stratum::MoneroJob, String> {
    use crate::net::monero::MONERO_EXTRA_NONCE_BYTES;
    if template.reserve_size != MONERO_EXTRA_NONCE_BYTES {
        return Err(format!(
            "{} bytes reserved, not {MONERO_EXTRA_NONCE_BYTES}",
            template.reserve_size
        ));
    }
    template.into_job()
}

fn write_upstream(
    mut stream: UnixStream,
    upstream: &Receiver<Upstream>,
    counters: &Counters,
    recent: &mut RecentCandidates,
) {
    if !recent.is_empty() {
        tracing::info!(
            candidates = recent.len(),
            "sending recent block candidates again on the new link"
        );
    }
    if pump_upstream(&mut stream, upstream, counters, recent).is_err() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Sends the recent candidates again, then whatever the cores queue and the counters
/// every second, until a write fails.
fn pump_upstream(
    link: &mut impl Write,
    upstream: &Receiver<Upstream>,
    counters: &Counters,
    recent: &mut RecentCandidates,
) -> Result<(), ()> {
    if !recent.resend(link, Instant::now()) {
        return Err(());
    }
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
        let line = ipc::encode(&message);
        let is_candidate = matches!(message, Upstream::BlockCandidate(_));
        let is_monero_block = matches!(message, Upstream::MoneroBlock(_));
        if let Upstream::BlockCandidate(candidate) = message {
            recent.keep(candidate, Instant::now());
        }
        if link.write_all(&line).is_err() {
            if is_candidate {
                tracing::error!(
                    "block candidate not delivered: link down; sent again on the next link"
                );
            }
            // Not kept for the next link (no control plane submits Monero blocks yet):
            // logged whole, never dropped quietly.
            if is_monero_block {
                tracing::error!(
                    block = %String::from_utf8_lossy(&line),
                    "Monero block not delivered: link down; submit its blob by hand"
                );
            }
            return Err(());
        }
        if is_candidate {
            recent.mark_newest_written();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::candidate;

    /// At `MONERO_JOBS_PREPARING_MAX` waiting, a new job pushes out the oldest (the newest
    /// is the one worth serving); once the preparer's thread is gone nothing is queued.
    #[test]
    fn the_seed_preparer_keeps_the_newest_jobs() {
        use otedama_shared::fuzz_harness::monero_fixture_job;
        let (jobs, queued) = crossbeam_channel::bounded(MONERO_JOBS_PREPARING_MAX);
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let preparer = SeedPreparer {
            jobs,
            oldest: queued.clone(),
            alive: alive.clone(),
        };
        let sent = MONERO_JOBS_PREPARING_MAX as u64 + 2;
        for job_id in 1..=sent {
            preparer.send(monero_fixture_job(job_id));
        }
        let kept: Vec<u64> = queued.try_iter().map(|job| job.job_id).collect();
        assert_eq!(kept, (3..=sent).collect::<Vec<_>>());
        drop(Alive(alive));
        preparer.send(monero_fixture_job(sent + 1));
        assert!(queued.is_empty());
    }

    /// A link that takes `writes_left` writes, then fails as a dead socket does.
    struct Link {
        written: Vec<u8>,
        writes_left: usize,
    }

    impl Write for Link {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if self.writes_left == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.writes_left -= 1;
            self.written.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The heights of the candidates written, each with whether it went as a resend.
    fn heights_in(link: &Link) -> Vec<(u64, bool)> {
        link.written
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| match ipc::decode::<Upstream>(line) {
                Ok(Upstream::BlockCandidate(candidate)) => Some((candidate.height, false)),
                Ok(Upstream::BlockCandidateResent(candidate)) => Some((candidate.height, true)),
                _ => None,
            })
            .collect()
    }

    /// A candidate whose write failed, and one written just before the link died (which
    /// the control plane may never have read), both go first on the next link.
    #[test]
    fn candidates_lost_with_a_link_go_again_on_the_next() {
        let (cores, queue) = crossbeam_channel::bounded(4);
        let counters = Counters::default();
        let mut recent = RecentCandidates::default();
        cores.send(Upstream::BlockCandidate(candidate(1))).unwrap();
        cores.send(Upstream::BlockCandidate(candidate(2))).unwrap();
        let mut dying = Link {
            written: Vec::new(),
            writes_left: 1,
        };
        assert!(pump_upstream(&mut dying, &queue, &counters, &mut recent).is_err());
        assert_eq!(
            heights_in(&dying),
            vec![(1, false)],
            "the second write failed"
        );
        let mut next = Link {
            written: Vec::new(),
            writes_left: 2,
        };
        assert!(pump_upstream(&mut next, &queue, &counters, &mut recent).is_err());
        // As resends: the control plane asks the node before it calls one stale.
        assert_eq!(heights_in(&next), vec![(1, true), (2, true)]);
        // Past the window, they are not sent again.
        let later = Instant::now() + Duration::from_secs(CANDIDATE_RESEND_WINDOW_S);
        let mut late = Link {
            written: Vec::new(),
            writes_left: 10,
        };
        assert!(recent.resend(&mut late, later));
        assert!(heights_in(&late).is_empty());
        assert!(recent.is_empty());
    }

    /// A data plane takes its own process's share-log floor from the control plane's
    /// message, follows a lower one, and has none once a message does not name it.
    #[test]
    fn the_share_log_floor_is_this_process_s_from_the_control_plane() {
        let dir = tempfile::tempdir().unwrap();
        let served = std::sync::Mutex::new(ServedJobs::load(dir.path().join("served")).unwrap());
        let floor = ShareLogFloor {
            process: 1,
            floor: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let floors = |pairs: &[(u32, u64)]| {
            ipc::encode(&Downstream::ShareLogFloors {
                floors: pairs.to_vec(),
            })
        };
        // Each link sends its messages and ends; the floor is read after the last.
        let after = |messages: &[Vec<u8>]| {
            let (mut control_plane, data_plane) = UnixStream::pair().unwrap();
            for message in messages {
                control_plane.write_all(message).unwrap();
            }
            drop(control_plane);
            read_jobs(data_plane, &[], &served, &floor, &None);
            floor.floor.load(std::sync::atomic::Ordering::Acquire)
        };
        assert_eq!(after(&[floors(&[(0, 5), (1, 9)])]), 9);
        assert_eq!(after(&[floors(&[(1, 12)]), floors(&[(1, 4), (0, 30)])]), 4);
        assert_eq!(after(&[floors(&[(1, 12)]), floors(&[(0, 30)])]), 0);
        assert_eq!(after(&[floors(&[(1, 12)])]), 12);
    }

    /// `CANDIDATES_RESENT_MAX` are kept; one more lets exactly the oldest go.
    #[test]
    fn recent_candidates_hold_their_limit() {
        let mut recent = RecentCandidates::default();
        let now = Instant::now();
        for height in 0..=CANDIDATES_RESENT_MAX as u64 {
            recent.keep(candidate(height), now);
        }
        assert_eq!(recent.len(), CANDIDATES_RESENT_MAX);
        let mut link = Link {
            written: Vec::new(),
            writes_left: usize::MAX,
        };
        assert!(recent.resend(&mut link, now));
        let heights = heights_in(&link);
        assert_eq!(heights.first(), Some(&(1, true)));
        assert_eq!(heights.len(), CANDIDATES_RESENT_MAX);
    }

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
