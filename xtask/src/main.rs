//! Project tasks behind the README's two commands:
//!
//! - `cargo xtask demo`: installs what the demo needs, builds Otedama and runs
//!   `otedama demo` (a pool on a Litecoin regtest node with two CPU miners).
//! - `cargo xtask test`: installs what the tests need, then runs the gates CI runs:
//!   `cargo fmt --check`, `cargo clippy -D warnings`, the build, every test (the Ansible
//!   ones with ansible-core and ansible-lint from PyPI in a virtualenv it makes), the SV2
//!   codec against the Stratum V2 Reference Implementation (`tests/sv2-reference`), and
//!   each cargo-fuzz target for `FUZZ_SECONDS_PER_TARGET` seconds.
//!
//! It depends on nothing but std, so it builds in seconds on a fresh machine before any
//! system package is present.

use std::env;
use std::path::PathBuf;
use std::process::{exit, Command};

/// Debian packages the demo needs: clang and libclang-dev build RocksDB's bindings, cmake
/// and g++ build RandomX's reference implementation (`randomx-rs`), and litecoind is the
/// node.
const DEMO_PACKAGES: &[&str] = &["clang", "libclang-dev", "cmake", "g++", "litecoind"];
/// And what the tests add: python3 runs the clean-room Stratum client test and Ansible,
/// prometheus brings `promtool` for the metrics check, chromium renders the dashboard
/// headless, systemd brings `systemd-analyze verify` for the deployed units, nats-server
/// runs the JetStream cluster of the scale-out tests, openssl makes the deployment
/// sandbox's TLS certificates, monero brings the regtest monerod of the Monero tests.
const TEST_PACKAGES: &[&str] = &[
    "python3",
    "prometheus",
    "chromium",
    "systemd",
    "nats-server",
    "openssl",
    "monero",
];
/// Ansible from PyPI, pinned, in a virtualenv beside the target directory.
const ANSIBLE_PACKAGES: &[&str] = &["ansible-core==2.19.14", "ansible-lint==26.10.1"];
fn main() {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match task.as_str() {
        "demo" => ensure_packages(&[DEMO_PACKAGES]).and_then(|()| demo(&rest)),
        "test" => ensure_packages(&[DEMO_PACKAGES, TEST_PACKAGES]).and_then(|()| test(&rest)),
        _ => Err("usage: cargo xtask demo [-- demo flags] | cargo xtask test".into()),
    };
    if let Err(message) = result {
        eprintln!("xtask: {message}");
        exit(1);
    }
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_packages(lists: &[&[&'static str]]) -> Result<(), String> {
    let missing: Vec<&str> = lists
        .iter()
        .flat_map(|list| list.iter().copied())
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !is_root {
        return Err(format!(
            "missing packages; run: sudo apt-get install -y {}",
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Builds share one target directory outside the checkout, so a fresh clone (as in CI)
/// reuses the previous build instead of compiling RocksDB again.
fn cargo() -> Command {
    let mut command = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.env("CARGO_TARGET_DIR", target_dir());
    if let Some(dir) = prebuilt_rocksdb().filter(|dir| dir.join(ROCKSDB_ARCHIVE).exists()) {
        command
            .env("ROCKSDB_LIB_DIR", dir)
            .env("ROCKSDB_STATIC", "1");
    }
    command
}

const ROCKSDB_ARCHIVE: &str = "librocksdb.a";

/// Where the RocksDB archive that `librocksdb-sys` compiled is kept, per version of it.
///
/// `cargo clippy` and `cargo build` each run `librocksdb-sys`'s build script under their
/// own fingerprint, and each compiled RocksDB's C++ from scratch: about 20 minutes apiece
/// on 2 cores. The first compile's archive is kept here and handed to every later cargo
/// run through `ROCKSDB_LIB_DIR`, so a cold `cargo xtask test` compiles RocksDB once.
fn prebuilt_rocksdb() -> Option<PathBuf> {
    let lock = std::fs::read_to_string(manifest_dir().join("../Cargo.lock")).ok()?;
    let version = lock
        .split("[[package]]")
        .find(|package| package.contains("name = \"librocksdb-sys\""))?
        .lines()
        .find_map(|line| line.strip_prefix("version = "))?
        .trim_matches('"')
        .to_string();
    Some(
        env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join(".cache/otedama-rocksdb")
            .join(version),
    )
}

/// Keeps the archive the last cargo run compiled, if none is kept yet. Debug info is
/// stripped (1.2 GB to about a tenth); a failed strip keeps the archive as it is.
fn keep_prebuilt_rocksdb() -> Result<(), String> {
    let Some(dir) = prebuilt_rocksdb() else {
        return Ok(());
    };
    if dir.join(ROCKSDB_ARCHIVE).exists() {
        return Ok(());
    }
    let build = target_dir().join("debug/build");
    let newest = std::fs::read_dir(&build)
        .map_err(|e| format!("reading {}: {e}", build.display()))?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("librocksdb-sys-")
        })
        .map(|entry| entry.path().join("out").join(ROCKSDB_ARCHIVE))
        .filter_map(|archive| Some((archive.metadata().ok()?.modified().ok()?, archive)))
        .max();
    let Some((_, archive)) = newest else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let partial = dir.join(format!("{ROCKSDB_ARCHIVE}.partial"));
    std::fs::copy(&archive, &partial).map_err(|e| format!("copying {}: {e}", archive.display()))?;
    let _ = Command::new("strip")
        .arg("--strip-debug")
        .arg(&partial)
        .status();
    std::fs::rename(&partial, dir.join(ROCKSDB_ARCHIVE))
        .map_err(|e| format!("keeping the RocksDB archive: {e}"))?;
    eprintln!("xtask: kept the RocksDB archive in {}", dir.display());
    Ok(())
}

fn run(command: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

/// Every build selects the whole workspace and all its targets. Cargo unifies dependency
/// features per selection, and another selection changes the features of RocksDB's build
/// dependencies, which recompiles RocksDB (about 20 minutes on 2 cores). With one
/// selection everywhere, RocksDB is built once for `cargo clippy` and once for `cargo
/// build`/`cargo test` (their build-script runs are not shared), and both stay cached.
const SELECTION: &[&str] = &["--workspace", "--all-targets"];

/// The xtask crate's directory, read at run time (`cargo run` sets it): a binary built
/// from another checkout sharing the target directory would carry that checkout's path.
fn manifest_dir() -> PathBuf {
    env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("xtask"))
}

fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join(".cache/otedama-target"),
    }
}

/// The free space a build of the workspace and its tests may need in the target
/// directory's file system: a cold build of every target wrote 6.5 GiB (2026-12-07),
/// and each fresh clone at a new path writes another set beside the old one.
const BUILD_FREE_BYTES_MIN: u64 = 20 << 30;

/// Makes room for the build when the disk under the target directory runs short.
///
/// The target directory lives outside the checkout and outlives it, so every fresh clone
/// at a new path adds a full set of test binaries (cargo names a workspace crate's
/// artifacts after its path). Left alone, that filled CI's disk mid-link. Incremental
/// caches go first, then the whole debug build (the RocksDB archive is kept apart, so a
/// rebuild costs minutes, not the C++ compile); if the disk is still short the task stops
/// and says how short, rather than failing later inside the linker.
fn ensure_build_room() -> Result<(), String> {
    let target = target_dir();
    let debug = target.join("debug");
    for (what, path) in [
        ("incremental caches", debug.join("incremental")),
        ("debug build", debug.clone()),
    ] {
        let free = free_bytes(&target)?;
        if free >= BUILD_FREE_BYTES_MIN || !path.exists() {
            continue;
        }
        eprintln!(
            "xtask: {} GiB free under {}, below the {} GiB a build needs: removing the {what} ({})",
            free >> 30,
            target.display(),
            BUILD_FREE_BYTES_MIN >> 30,
            path.display()
        );
        std::fs::remove_dir_all(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    let free = free_bytes(&target)?;
    if free < BUILD_FREE_BYTES_MIN {
        return Err(format!(
            "{} GiB free under {}, and a build needs {} GiB: free disk space and rerun",
            free >> 30,
            target.display(),
            BUILD_FREE_BYTES_MIN >> 30
        ));
    }
    Ok(())
}

/// Bytes available to this user on the file system holding `path` (or its nearest
/// existing ancestor, before the first build makes it), as `df` reports them.
fn free_bytes(path: &std::path::Path) -> Result<u64, String> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(std::path::Path::new("/"));
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(existing)
        .output()
        .map_err(|e| format!("cannot run df: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| format!("cannot read the free space under {}", existing.display()))
}

fn demo(rest: &[String]) -> Result<(), String> {
    ensure_build_room()?;
    run(cargo().arg("build").args(SELECTION))?;
    keep_prebuilt_rocksdb()?;
    // `cargo xtask demo -- --duration 60`: the `--` separates our flags from the demo's.
    let rest = rest.strip_prefix(&["--".to_string()]).unwrap_or(rest);
    run(Command::new(target_dir().join("debug/otedama"))
        .arg("demo")
        .args(rest))
}

fn test(rest: &[String]) -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    ensure_build_room()?;
    run(cargo()
        .arg("clippy")
        .args(SELECTION)
        .args(["--", "-D", "warnings"]))?;
    keep_prebuilt_rocksdb()?;
    // The end-to-end tests start the `otedama` binary, so it must exist before they run.
    run(cargo().arg("build").args(SELECTION))?;
    let venv = ensure_ansible()?;
    run(cargo()
        .env("OTEDAMA_ANSIBLE_VENV", &venv)
        .arg("test")
        .args(SELECTION)
        .args(rest))?;
    // The SV2 codec against the Stratum V2 Reference Implementation's crates, in a
    // workspace (and target directory) of its own so that they never touch the product.
    let manifest = manifest_dir().join("../tests/sv2-reference/Cargo.toml");
    run(cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(&manifest))?;
    // Its live test runs the reference client against the `otedama` built above.
    run(cargo()
        .env("CARGO_TARGET_DIR", sibling_target_dir("sv2-reference"))
        .env("OTEDAMA_BINARY", target_dir().join("debug/otedama"))
        .args(["test", "--manifest-path"])
        .arg(&manifest))?;
    fuzz()
}

/// Creates the Ansible virtualenv the deployment tests use, unless it is already there.
fn ensure_ansible() -> Result<PathBuf, String> {
    let venv = sibling_target_dir("ansible-venv");
    let pip = venv.join("bin/pip");
    let ready = Command::new(&pip).arg("freeze").output().is_ok_and(|o| {
        let freeze = String::from_utf8_lossy(&o.stdout).into_owned();
        ANSIBLE_PACKAGES.iter().all(|p| freeze.contains(p))
    });
    if !ready {
        eprintln!(
            "xtask: installing {} into {}",
            ANSIBLE_PACKAGES.join(" "),
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&pip)
            .args(["install", "--quiet"])
            .args(ANSIBLE_PACKAGES))?;
    }
    Ok(venv)
}

/// Seconds each fuzz target runs in `cargo xtask test`: long enough to reach every
/// decoder's error paths from an empty corpus, short enough for CI.
const FUZZ_SECONDS_PER_TARGET: u32 = 20;
const FUZZ_TARGETS: &[&str] = &[
    "sv2_message",
    "sv2_frames",
    "sv1_session",
    "sv2_server_session",
    "http_path",
    "monero_session",
];

/// Runs every cargo-fuzz target for a bounded time (installing a nightly toolchain and
/// cargo-fuzz first if they are missing).
fn fuzz() -> Result<(), String> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = manifest_dir().join("../fuzz");
    for target in FUZZ_TARGETS {
        // New inputs go to a corpus outside the checkout; the committed seeds (valid
        // sessions that reach shares) and dictionary, where a target has them, are read.
        let corpus = sibling_target_dir("fuzz").join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        let mut command = Command::new("cargo");
        command
            .current_dir(&fuzz_dir)
            .env("CARGO_TARGET_DIR", sibling_target_dir("fuzz"))
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            command.arg(&seeds);
        }
        command.arg("--");
        let dictionary = fuzz_dir.join("dict").join(format!("{target}.dict"));
        if dictionary.is_file() {
            command.arg(format!("-dict={}", dictionary.display()));
        }
        run(command.arg(format!("-max_total_time={FUZZ_SECONDS_PER_TARGET}")))?;
    }
    Ok(())
}

/// A target directory next to the main one, for a separate workspace.
fn sibling_target_dir(name: &str) -> PathBuf {
    let main = target_dir();
    let file_name = main
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "otedama-target".into());
    main.with_file_name(format!("{file_name}-{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_before_the_target_directory_exists() {
        let missing = std::env::temp_dir().join("otedama-xtask-no-such-dir/debug");
        assert!(!missing.exists());
        let free = free_bytes(&missing).expect("df reads the nearest existing ancestor");
        assert!(free > 0, "a writable temp dir has free space");
    }
}
