//! `otedama-tune` against the live host. CI runs as root: a real `apply` of one harmless key
//! (`net.ipv4.tcp_fin_timeout`), then `revert`. Without root the tool must refuse and change
//! nothing; that is checked by dropping to `nobody`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const KEY: &str = "net.ipv4.tcp_fin_timeout";
const LIVE: &str = "/proc/sys/net/ipv4/tcp_fin_timeout";
const SYSCTL_FILE: &str = "/etc/sysctl.d/60-otedama.conf";
const BACKUP: &str = "/var/lib/otedama-tune/backup.json";

/// The two tests share the live host's key and files; they take turns.
static LIVE_HOST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test changes a live kernel setting and must run as root (CI does)"
    );
    assert!(
        !Path::new(BACKUP).exists(),
        "{BACKUP} exists: otedama-tune has tuned this host, and this test's revert would undo that"
    );
}

fn tune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otedama-tune"))
        .args(args)
        .output()
        .expect("otedama-tune runs")
}

/// Puts the original value back even if an assertion fails half-way.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        if Path::new(BACKUP).exists() {
            let _ = tune(&["revert"]);
        }
        let _ = fs::write(LIVE, &self.0);
    }
}

#[test]
fn a_real_apply_and_revert_of_one_key() {
    let _turn = LIVE_HOST.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let original = fs::read_to_string(LIVE).expect("the kernel has tcp_fin_timeout");
    let _restore = Restore(original.clone());
    assert!(
        !Path::new(SYSCTL_FILE).exists(),
        "{SYSCTL_FILE} already exists; refusing to touch a tuned host"
    );
    // A known starting value, so the plan (at most 15 s) always has something to change.
    fs::write(LIVE, "60\n").unwrap();

    let apply = tune(&["apply", "--connections", "1000", "--only", KEY]);
    assert!(apply.status.success(), "{apply:?}");
    assert!(String::from_utf8_lossy(&apply.stdout).contains("net.ipv4.tcp_fin_timeout"));
    assert_eq!(fs::read_to_string(LIVE).unwrap().trim(), "15");
    let persistent = fs::read_to_string(SYSCTL_FILE).unwrap();
    assert!(
        persistent.contains("net.ipv4.tcp_fin_timeout = 15"),
        "{persistent}"
    );

    let revert = tune(&["revert"]);
    assert!(revert.status.success(), "{revert:?}");
    assert_eq!(fs::read_to_string(LIVE).unwrap().trim(), "60");
    assert!(!Path::new(SYSCTL_FILE).exists());
    assert!(!Path::new(BACKUP).exists());
}

#[test]
fn without_root_nothing_changes() {
    let _turn = LIVE_HOST.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    // `nobody` cannot reach the build directory under /root; give it a copy.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("otedama-tune");
    fs::copy(env!("CARGO_BIN_EXE_otedama-tune"), &binary).unwrap();
    let before = fs::read_to_string(LIVE).unwrap();
    for args in [&["apply", "--connections", "1000"][..], &["revert"][..]] {
        let output = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary)
            .args(args)
            .output()
            .expect("setpriv (util-linux) runs");
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("needs root") && stderr.contains("nothing was changed"),
            "{stderr}"
        );
    }
    // Reading is fine without root.
    let plan = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["plan", "--connections", "1000"])
        .output()
        .unwrap();
    assert!(plan.status.success(), "{plan:?}");
    assert_eq!(fs::read_to_string(LIVE).unwrap(), before);
    assert!(!Path::new(SYSCTL_FILE).exists());
}
