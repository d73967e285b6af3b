//! The Ansible deployment: `--syntax-check`, `ansible-lint`, and `site.yml` run for real,
//! twice, inside a container `ansible/tests/sandbox.sh` makes (an overlay of this machine's
//! `/` in its own mount namespace). The second run must change nothing, and the installed
//! systemd units must pass `systemd-analyze verify`.
//!
//! Ansible comes from PyPI into a virtualenv that `cargo xtask test` creates
//! (`OTEDAMA_ANSIBLE_VENV`). The sandbox needs root, as CI has.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use otedama_tests::workspace_binary;

fn ansible_dir() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../ansible")
}

fn venv() -> PathBuf {
    let venv = std::env::var_os("OTEDAMA_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/otedama-target-ansible-venv")
        });
    assert!(
        venv.join("bin/ansible-playbook").is_file() && venv.join("bin/ansible-lint").is_file(),
        "no ansible-playbook and ansible-lint in {}: `cargo xtask test` installs them \
         (or set OTEDAMA_ANSIBLE_VENV to a virtualenv that has ansible-core and ansible-lint)",
        venv.display()
    );
    venv
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("command starts");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `changed=N` from the PLAY RECAP line of the single host.
fn recap(log: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with("sandbox") && l.contains("changed="))
        .unwrap_or_else(|| panic!("no PLAY RECAP in:\n{log}"));
    let value = line
        .split_whitespace()
        .find_map(|part| part.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field}= in {line}"));
    value.parse().unwrap()
}

#[test]
fn syntax_check_and_lint() {
    let venv = venv();
    run(Command::new(venv.join("bin/ansible-playbook"))
        .current_dir(ansible_dir())
        .args(["-i", "inventory/example.yml", "site.yml", "--syntax-check"]));
    let lint = run(Command::new(venv.join("bin/ansible-lint"))
        .current_dir(ansible_dir())
        .env("PATH", venv.join("bin"))
        .env("NO_COLOR", "1"));
    let said = String::from_utf8_lossy(&lint.stderr);
    assert!(said.contains("Passed"), "{said}");
}

#[test]
fn the_playbook_deploys_and_a_second_run_changes_nothing() {
    let venv = venv();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the deployment sandbox needs root for its mount namespace and overlay (CI runs as root)"
    );
    let binaries = workspace_binary("otedama").parent().unwrap().to_path_buf();
    workspace_binary("otedama-tune");
    let out = tempfile::tempdir().unwrap();
    run(Command::new(ansible_dir().join("tests/sandbox.sh"))
        .arg(&venv)
        .arg(&binaries)
        .arg(out.path()));
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap();

    let first = read("run1.log");
    assert_eq!(recap(&first, "failed"), 0, "{first}");
    assert!(
        recap(&first, "changed") > 0,
        "the first run changed nothing:\n{first}"
    );
    // otedama-tune ran and applied the plan (against the sandbox's stand-in for /proc/sys).
    assert!(
        first.contains("TASK [otedama_tune : Apply the plan]"),
        "{first}"
    );
    let second = read("run2.log");
    assert_eq!(recap(&second, "failed"), 0, "{second}");
    assert_eq!(
        recap(&second, "changed"),
        0,
        "the second run changed something:\n{second}"
    );

    let verify = read("verify.log");
    // Unknown keys are only warnings to systemd-analyze (exit 0); any output at all fails.
    assert_eq!(
        verify.trim(),
        "verify: ok",
        "systemd-analyze verify said something"
    );
    let checks = read("checks.log");
    for expected in [
        "uid=",
        "(otedama)",
        "/etc/otedama/otedama.toml root:otedama 640",
        "/var/lib/otedama otedama:otedama 750",
        "/usr/local/bin/otedama root:root 755",
        "present: /srv/tune-root/etc/systemd/system/otedama-dataplane@.service.d/60-otedama-tune.conf",
        "present: /srv/tune-root/etc/sysctl.d/60-otedama.conf",
        "tune check: ok",
        "config: ok",
        "/etc/nats-server.conf root:nats 640",
        "/etc/nats/tls/server.key root:nats 640",
        "/etc/otedama/nats/client.key root:otedama 640",
        "nats config: ok",
        "nats_urls = [\"tls://sandbox:4222\"]",
        "cluster_host = \"sandbox\"",
        "share_retention_hours = 24",
        "/var/backups/otedama otedama:otedama 750",
        "backup_dir = \"/var/backups/otedama\"",
        "backup_interval_s = 3600",
        "backups_kept = 7",
        "ReadWritePaths=/var/lib/otedama /var/backups/otedama",
        // The monitoring role: Prometheus with the repository's rules, scraping the
        // control plane; Grafana's provisioning and the dashboard.
        "prometheus config: ok",
        "rules: as in the repository",
        "- \"sandbox:8080\"",
        "/etc/prometheus/otedama.rules.yml root:root 644",
        "/etc/grafana/provisioning/datasources/otedama.yml root:root 644",
        "/etc/grafana/provisioning/dashboards/otedama.yml root:root 644",
        "/var/lib/grafana/dashboards/otedama/otedama.json root:root 644",
        "present: /etc/systemd/system/nats-server.service.d/60-otedama.conf",
    ] {
        assert!(
            checks.contains(expected),
            "{expected:?} missing from:\n{checks}"
        );
    }
    // Every unit and drop-in the role installs is there.
    assert!(!checks.contains("missing: "), "{checks}");
}
