//! The newest job this data-plane process has handed its cores, kept on disk beside its
//! share log, so that after a restart it never serves again a job it may have served
//! before.
//!
//! Why: the duplicate filter that refuses a share sent twice lives in memory and starts
//! empty. A job served before a restart and served again after it (the control plane
//! still holds it as current) would take again every share miners sent on it before;
//! a miner given its former extranonce1 again (values are counted out in order, so a
//! miner that opens connections until it gets its own back can) would be credited twice
//! for that work. So a restarted process refuses the jobs of the tip it served last that
//! are not newer than the newest it served, and the control plane builds a new job of the
//! same work whenever a data plane links (`request_fresh_job` in the control plane's pool
//! state). A job's coinbase carries its id (`otedama_chain::jobs::builder`), so a share
//! found on one job is never a share of another.
//!
//! Invariant: a job reaches the cores only after the file names it (written and synced),
//! or a newer one of the same tip.

use std::path::{Path, PathBuf};

/// Blocks (previous block hashes) the file remembers the newest job of: the newest ones.
/// Jobs of older blocks can take no share that counts once miners work on a newer block,
/// but a control plane may still send one (a clock gone back, a former leader), so a few
/// are kept.
pub const SERVED_TIPS_MAX: usize = 8;

/// A job as the file knows it: its id and its previous block hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedJob {
    pub job_id: u64,
    pub prevhash: [u8; 32],
}

/// Whether a job may reach the cores.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Served (or possibly served) before this process started.
    ServedBeforeStart,
    /// Not written to the file, so not served.
    NotRecorded(String),
}

pub struct ServedJobs {
    path: PathBuf,
    /// The newest job of each block served before this process started.
    before_start: Vec<ServedJob>,
    /// The newest job of each block the file names now, the most recently written last.
    newest: Vec<ServedJob>,
}

/// The file beside a share log at `share_log_path`.
pub fn served_jobs_path(share_log_path: &Path) -> PathBuf {
    let mut name = share_log_path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(".jobs-served");
    share_log_path.with_file_name(name)
}

impl ServedJobs {
    /// Reads the file. One that is not there (a first start) refuses nothing; one that is
    /// there but unreadable is an error, since what it said is unknown.
    pub fn load(path: PathBuf) -> anyhow::Result<Self> {
        let before_start = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is unreadable: it names the newest jobs served before this start, which must not be served again",
                    path.display()
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(anyhow::anyhow!("reading {}: {error}", path.display())),
        };
        Ok(ServedJobs {
            path,
            newest: before_start.clone(),
            before_start,
        })
    }

    /// Whether job `job` may reach the cores; one newer than any of its block the file
    /// names is first written to it.
    pub fn admit(&mut self, job: ServedJob) -> Admission {
        let of_its_block = |jobs: &[ServedJob]| {
            jobs.iter()
                .find(|served| served.prevhash == job.prevhash)
                .map(|served| served.job_id)
        };
        if of_its_block(&self.before_start).is_some_and(|newest| job.job_id <= newest) {
            return Admission::ServedBeforeStart;
        }
        if of_its_block(&self.newest).is_some_and(|newest| job.job_id <= newest) {
            return Admission::Admitted;
        }
        let mut newest = self.newest.clone();
        newest.retain(|served| served.prevhash != job.prevhash);
        newest.push(job);
        let excess = newest.len().saturating_sub(SERVED_TIPS_MAX);
        newest.drain(..excess);
        match write(&self.path, &newest) {
            Ok(()) => {
                self.newest = newest;
                Admission::Admitted
            }
            Err(error) => Admission::NotRecorded(format!("{error:#}")),
        }
    }
}

/// One line a block: `JOB_ID PREVHASH_HEX`.
fn parse(text: &str) -> Option<Vec<ServedJob>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace();
            let job_id = fields.next()?.parse().ok()?;
            let mut prevhash = [0u8; 32];
            hex::decode_to_slice(fields.next()?, &mut prevhash).ok()?;
            fields
                .next()
                .is_none()
                .then_some(ServedJob { job_id, prevhash })
        })
        .collect()
}

/// Writes the file whole and syncs it (a temporary file renamed over it, then the
/// directory synced), so a crash leaves the old content or the new.
fn write(path: &Path, jobs: &[ServedJob]) -> anyhow::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("jobs-served-new");
    let mut file = std::fs::File::create(&temporary)?;
    for job in jobs {
        writeln!(file, "{} {}", job.job_id, hex::encode(job.prevhash))?;
    }
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(job_id: u64, tip: u8) -> ServedJob {
        ServedJob {
            job_id,
            prevhash: [tip; 32],
        }
    }

    /// After a restart, the jobs of the last tip up to the newest served are refused;
    /// newer ones and any job of another tip are served, and recorded before they are.
    #[test]
    fn a_restarted_process_never_serves_a_job_it_served_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = served_jobs_path(&dir.path().join("shares"));
        assert_eq!(path, dir.path().join("shares.jobs-served"));
        let mut first = ServedJobs::load(path.clone()).unwrap();
        assert_eq!(first.admit(job(10, 1)), Admission::Admitted);
        assert_eq!(first.admit(job(12, 1)), Admission::Admitted);
        // The same job again (sent on a new link) is served again in the same run.
        assert_eq!(first.admit(job(12, 1)), Admission::Admitted);
        drop(first);

        let mut second = ServedJobs::load(path.clone()).unwrap();
        assert_eq!(second.admit(job(12, 1)), Admission::ServedBeforeStart);
        assert_eq!(second.admit(job(11, 1)), Admission::ServedBeforeStart);
        assert_eq!(second.admit(job(13, 1)), Admission::Admitted);
        // Another block, even with a lower id (a clock gone back): served, and recorded,
        // beside the first block's newest.
        assert_eq!(second.admit(job(5, 2)), Admission::Admitted);
        drop(second);
        let mut third = ServedJobs::load(path.clone()).unwrap();
        assert_eq!(third.admit(job(13, 1)), Admission::ServedBeforeStart);
        assert_eq!(third.admit(job(5, 2)), Admission::ServedBeforeStart);
        assert_eq!(third.admit(job(4, 2)), Admission::ServedBeforeStart);
        assert_eq!(third.admit(job(14, 1)), Admission::Admitted);
        assert_eq!(third.admit(job(6, 2)), Admission::Admitted);
    }

    /// The file keeps the newest job of `SERVED_TIPS_MAX` blocks: the block written longest
    /// ago goes first.
    #[test]
    fn the_file_holds_its_limit_of_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shares.jobs-served");
        let mut jobs = ServedJobs::load(path.clone()).unwrap();
        for tip in 0..=SERVED_TIPS_MAX as u8 {
            assert_eq!(jobs.admit(job(100 + tip as u64, tip)), Admission::Admitted);
        }
        let mut reloaded = ServedJobs::load(path).unwrap();
        assert_eq!(reloaded.before_start.len(), SERVED_TIPS_MAX);
        // The others are remembered; the first block fell out.
        for tip in 1..=SERVED_TIPS_MAX as u8 {
            assert_eq!(
                reloaded.admit(job(100 + tip as u64, tip)),
                Admission::ServedBeforeStart,
                "block {tip}"
            );
        }
        assert_eq!(reloaded.admit(job(100, 0)), Admission::Admitted);
    }

    /// A file that says something unreadable stops the start; a missing one is a first
    /// start.
    #[test]
    fn an_unreadable_file_is_an_error_and_a_missing_one_a_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shares.jobs-served");
        assert!(ServedJobs::load(path.clone()).is_ok());
        std::fs::write(&path, "12 not-hex\n").unwrap();
        assert!(ServedJobs::load(path.clone()).is_err());
        std::fs::write(&path, format!("12 {}\n", hex::encode([1u8; 32]))).unwrap();
        let mut loaded = ServedJobs::load(path).unwrap();
        assert_eq!(loaded.admit(job(12, 1)), Admission::ServedBeforeStart);
    }

    /// A job that cannot be recorded is not served.
    #[test]
    fn a_job_not_recorded_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = ServedJobs::load(dir.path().join("missing-dir/shares.jobs-served")).unwrap();
        assert!(matches!(jobs.admit(job(1, 1)), Admission::NotRecorded(_)));
    }
}
