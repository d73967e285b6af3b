//! Bitcoin Knots for the Bitcoin regtest nodes, run without being installed.
//!
//! Debian carries a Bitcoin node only in its unstable suite (`bitcoin-knots`, a Bitcoin
//! Core derivative), built against a newer C library than the stable release the pool's
//! machines run. So it is fetched, not installed: the package and the library packages it
//! needs are downloaded with `apt-get download` under an apt configuration and state of
//! their own (the system's sources, lists and cache are never touched), unpacked with
//! `dpkg-deb -x` into a cache directory, and run through the unpacked C library's own
//! loader (`ld-linux-x86-64.so.2 --library-path …`). This happens once per machine, under
//! a file lock, and the result is kept like the RocksDB archive. A failure says what failed
//! and how to provide the node by hand; nothing is skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

const PACKAGE: &str = "bitcoin-knots";
const MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "unstable";
/// The keyring Debian's own `debian-archive-keyring` package installs, which signs the
/// unstable suite as it signs stable.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Where the unpacked C library keeps its loader and libraries (Debian's multiarch path).
const LIBRARY_DIR: &str = "usr/lib/x86_64-linux-gnu";
/// The environment variable naming the cache directory (default
/// `~/.cache/otedama-bitcoin-knots`); a directory holding `root/usr/bin/bitcoind` and the
/// `ready` file can be prepared by hand on a machine without network.
pub const KNOTS_DIR_ENV: &str = "OTEDAMA_KNOTS_DIR";

/// An unpacked Bitcoin Knots, ready to run.
#[derive(Clone, Debug)]
pub struct Knots {
    root: PathBuf,
}

impl Knots {
    /// A command running `program` (`bitcoind`, `bitcoin-cli`) through the unpacked C
    /// library's loader.
    pub fn command(&self, program: &str) -> Command {
        let libraries = self.root.join(LIBRARY_DIR);
        let mut command = Command::new(libraries.join("ld-linux-x86-64.so.2"));
        command
            .arg("--library-path")
            .arg(&libraries)
            .arg(self.root.join("usr/bin").join(program));
        command
    }

    /// `bitcoind -version`'s first line.
    pub fn version(&self) -> anyhow::Result<String> {
        let output = self
            .command("bitcoind")
            .arg("-version")
            .output()
            .context("running the unpacked bitcoind")?;
        if !output.status.success() {
            bail!(
                "the unpacked bitcoind does not run ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(KNOTS_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").context("HOME is not set, and neither is OTEDAMA_KNOTS_DIR")?;
    Ok(PathBuf::from(home).join(".cache/otedama-bitcoin-knots"))
}

/// The unpacked Bitcoin Knots, fetching and unpacking it first if this machine has none.
pub fn ensure_knots() -> anyhow::Result<Knots> {
    let dir = cache_dir()?;
    let knots = Knots {
        root: dir.join("root"),
    };
    // Ready: the marker, written last, and the daemon it vouches for.
    let ready = |knots: &Knots| {
        dir.join("ready").is_file() && knots.root.join("usr/bin/bitcoind").is_file()
    };
    if ready(&knots) {
        return Ok(knots);
    }
    if std::env::consts::ARCH != "x86_64" {
        bail!(
            "the Bitcoin regtest node is fetched from Debian's amd64 packages; on {} there is none to fetch",
            std::env::consts::ARCH
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Tests start nodes in parallel: one fetches, the others wait for it here.
    let lock = std::fs::File::create(dir.join(".lock"))
        .with_context(|| format!("creating {}", dir.join(".lock").display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "waiting for another process fetching Bitcoin Knots into {}",
            dir.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    if ready(&knots) {
        return Ok(knots);
    }
    eprintln!(
        "Bitcoin Knots is missing; fetching Debian {SUITE}'s {PACKAGE} and its libraries into {} (once)",
        dir.display()
    );
    fetch(&dir).with_context(|| {
        format!(
            "fetching Bitcoin Knots from {MIRROR} ({SUITE}) failed; the Bitcoin tests and demo need it. \
             Put an unpacked bitcoin-knots and its libraries in {}/root (usr/bin/bitcoind, {LIBRARY_DIR}/ld-linux-x86-64.so.2) \
             and create {}/ready, or set {KNOTS_DIR_ENV}",
            dir.display(),
            dir.display()
        )
    })?;
    let version = knots.version()?;
    let mut marker = std::fs::File::create(dir.join("ready"))
        .with_context(|| format!("creating {}", dir.join("ready").display()))?;
    writeln!(marker, "{version}")?;
    eprintln!("{version} unpacked in {}", dir.display());
    Ok(knots)
}

/// Downloads the package and the library packages it depends on (recursively: a `lib*`
/// dependency of anything fetched is fetched too; the rest, such as systemd for the
/// package's service, is not needed to run the daemon) and unpacks them into `dir/root`.
fn fetch(dir: &Path) -> anyhow::Result<()> {
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    for sub in ["state/lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(work.join(sub))?;
    }
    if !Path::new(KEYRING).is_file() {
        bail!("{KEYRING} is missing: install debian-archive-keyring");
    }
    let sources = work.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n"),
    )?;
    let options: Vec<String> = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/dev/null".into(),
        format!("Dir::State={}", work.join("state").display()),
        format!("Dir::Cache={}", work.join("cache").display()),
        "Dir::Etc::Preferences=/dev/null".into(),
        format!(
            "Dir::Etc::PreferencesParts={}",
            work.join("state").display()
        ),
        "Debug::NoLocking=1".into(),
        "APT::Architecture=amd64".into(),
        // Whatever the host's apt.conf says: signatures are checked.
        "Acquire::AllowInsecureRepositories=false".into(),
        "Acquire::AllowDowngradeToInsecureRepositories=false".into(),
        "APT::Get::AllowUnauthenticated=false".into(),
    ]
    .into_iter()
    .flat_map(|option| ["-o".to_string(), option])
    .collect();
    let apt = |program: &str, args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new(program)
            .args(&options)
            .args(args)
            .current_dir(work.join("debs"))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    // A list that cannot be fetched (no network, a proxy, a mirror down) is an error here,
    // not a warning followed by "no packages found".
    apt("apt-get", &["update", "-qq", "--error-on=any"])?;
    let mut wanted = vec![PACKAGE.to_string()];
    let mut fetched = std::collections::BTreeSet::new();
    while let Some(package) = wanted.pop() {
        if !fetched.insert(package.clone()) {
            continue;
        }
        for line in apt("apt-cache", &["depends", &package])?.lines() {
            let line = line.trim();
            let Some(name) = line
                .strip_prefix("Depends:")
                .or_else(|| line.strip_prefix("|Depends:"))
                .map(str::trim)
            else {
                continue;
            };
            if name.starts_with("lib") && !fetched.contains(name) {
                wanted.push(name.to_string());
            }
        }
    }
    let names: Vec<&str> = fetched.iter().map(String::as_str).collect();
    let mut args = vec!["download", "-qq"];
    args.extend(&names);
    apt("apt-get", &args)?;
    let unpacked = dir.join("root.partial");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked)?;
    for entry in std::fs::read_dir(work.join("debs"))? {
        let deb = entry?.path();
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .status()
            .context("running dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed", deb.display());
        }
    }
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&unpacked, &root)
        .with_context(|| format!("moving {} to {}", unpacked.display(), root.display()))?;
    // The downloads are no longer needed; left behind, they are removed by the next fetch.
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
