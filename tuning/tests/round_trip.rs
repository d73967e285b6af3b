//! `apply` → `check` → `revert` through the binary, against a scratch directory that stands
//! in for `/` (`--root`): `/proc/sys`, `/etc`, IRQ affinities and a governor.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TARGET: &[&str] = &[
    "--connections",
    "100000",
    "--shares-per-second",
    "10000",
    "--dataplane-cores",
    "1",
];

fn tune(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otedama-tune"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("otedama-tune runs")
}

fn with_target<'a>(command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![command];
    args.extend_from_slice(TARGET);
    args.extend_from_slice(extra);
    args
}

fn write(root: &Path, path: &str, contents: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// A host with the recorded CI machine's sysctls, two CPUs, a NIC whose IRQ 38 is on both,
/// and a cpufreq governor on CPU 1.
fn scratch_host() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let facts: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(format!(
            "{}/tests/facts/vm-2cpu-24gib.json",
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    for (key, value) in facts["sysctl"].as_object().unwrap() {
        let value = value.as_str().unwrap().replace(' ', "\t");
        write(
            root.path(),
            &format!("proc/sys/{}", key.replace('.', "/")),
            &format!("{value}\n"),
        );
    }
    let p = root.path();
    write(
        p,
        "proc/meminfo",
        "MemTotal:       24683656 kB\nHugepagesize:       2048 kB\n",
    );
    write(p, "proc/sys/kernel/osrelease", "6.1.0-test\n");
    write(p, "sys/devices/system/cpu/online", "0-1\n");
    write(p, "sys/devices/system/node/node0/cpulist", "0-1\n");
    write(
        p,
        "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
        "powersave\n",
    );
    write(p, "sys/class/net/eth0/device/msi_irqs/38", "msix\n");
    write(p, "sys/class/net/eth0/queues/rx-0/.keep", "");
    write(p, "sys/class/net/eth0/queues/tx-0/.keep", "");
    write(
        p,
        "proc/interrupts",
        "           CPU0       CPU1\n 38:        100        200  PCI-MSIX-0000:00:03.0   1-edge      eth0-TxRx-0\n",
    );
    write(p, "proc/irq/38/smp_affinity_list", "0-1\n");
    write(
        p,
        "etc/sysctl.d/60-otedama.conf",
        "# an operator's file from before\nvm.swappiness = 10\n",
    );
    root
}

/// Every file under `root`, with its contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, root: &Path, into: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, into);
            } else {
                let contents = fs::read_to_string(&path).unwrap();
                into.insert(path.strip_prefix(root).unwrap().to_path_buf(), contents);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn apply_check_revert_round_trip() {
    let host = scratch_host();
    let root = host.path();
    let before = snapshot(root);

    let plan = tune(root, &with_target("plan", &[]));
    assert!(plan.status.success(), "{plan:?}");
    assert!(stdout(&plan).contains("net.ipv4.tcp_fin_timeout: 60 -> 15"));
    let check = tune(root, &with_target("check", &[]));
    assert_eq!(
        check.status.code(),
        Some(1),
        "an untuned host must fail the check"
    );
    assert!(stdout(&check).contains("net.ipv4.tcp_fin_timeout: 60 (planned 15)"));

    let apply = tune(root, &with_target("apply", &["--json"]));
    assert!(apply.status.success(), "{apply:?}");
    let report: serde_json::Value = serde_json::from_slice(&apply.stdout).unwrap();
    let changed: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "/etc/sysctl.d/60-otedama.conf",
        "/etc/systemd/system/otedama-dataplane@.service.d/60-otedama-tune.conf",
        "net.ipv4.tcp_fin_timeout",
        "irq/38/smp_affinity_list",
        "cpu1/scaling_governor",
    ] {
        assert!(changed.contains(&name), "{name} not in {changed:?}");
    }
    let read = |path: &str| fs::read_to_string(root.join(path)).unwrap();
    assert_eq!(read("proc/sys/net/ipv4/tcp_fin_timeout").trim(), "15");
    assert_eq!(read("proc/irq/38/smp_affinity_list").trim(), "0");
    assert_eq!(
        read("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor").trim(),
        "performance"
    );
    let persistent = read("etc/sysctl.d/60-otedama.conf");
    assert!(
        persistent.contains("net.ipv4.tcp_fin_timeout = 15"),
        "{persistent}"
    );
    let drop_in = read("etc/systemd/system/otedama-dataplane@.service.d/60-otedama-tune.conf");
    assert!(drop_in.contains("[Service]\n"), "{drop_in}");
    assert!(drop_in.contains("LimitNOFILE=104448\n"), "{drop_in}");

    // Twice is the same as once.
    let again = tune(root, &with_target("apply", &["--json"]));
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["changes"].as_array().unwrap().len(), 0, "{report}");
    let check = tune(root, &with_target("check", &["--json"]));
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
    let verdict: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(verdict["matches"], true);

    // Drift is named.
    fs::write(root.join("proc/sys/net/ipv4/tcp_fin_timeout"), "60\n").unwrap();
    let check = tune(root, &with_target("check", &[]));
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(
        stdout(&check).trim(),
        "net.ipv4.tcp_fin_timeout: 60 (planned 15)"
    );

    // Revert restores every file as it was before the first apply.
    let revert = tune(root, &["revert", "--json"]);
    assert!(revert.status.success(), "{revert:?}");
    let after = snapshot(root);
    assert_eq!(before, after, "revert left the host different");
    let revert = tune(root, &["revert"]);
    assert!(stdout(&revert).contains("nothing to revert"));
}

#[test]
fn apply_only_one_setting() {
    let host = scratch_host();
    let root = host.path();
    let apply = tune(
        root,
        &with_target("apply", &["--only", "net.ipv4.tcp_keepalive_probes"]),
    );
    assert!(apply.status.success(), "{apply:?}");
    let persistent = fs::read_to_string(root.join("etc/sysctl.d/60-otedama.conf")).unwrap();
    let keys: Vec<&str> = persistent.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(keys, ["net.ipv4.tcp_keepalive_probes = 5"]);
    assert!(!root
        .join("etc/systemd/system/otedama-dataplane@.service.d")
        .exists());
    let unknown = tune(root, &with_target("apply", &["--only", "net.no.such_key"]));
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no setting named net.no.such_key"));
}

#[test]
fn a_target_memory_cannot_hold_is_refused_with_the_reason() {
    let host = scratch_host();
    let output = tune(host.path(), &["plan", "--connections", "5000000", "--json"]);
    assert_eq!(output.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(message.contains("5000000 connections need"), "{message}");
    assert!(
        message.contains("lower --connections or add memory"),
        "{message}"
    );
    // Nothing was written.
    assert!(!host.path().join("var/lib/otedama-tune").exists());
}

#[test]
fn facts_and_plan_speak_json() {
    let host = scratch_host();
    let facts = tune(host.path(), &["facts", "--json"]);
    let facts: serde_json::Value = serde_json::from_slice(&facts.stdout).unwrap();
    assert_eq!(facts["cpus"], serde_json::json!([0, 1]));
    assert_eq!(facts["nics"][0]["irqs"][0]["name"], "eth0-TxRx-0");
    assert_eq!(facts["governors"]["1"], "powersave");
    let plan = tune(host.path(), &with_target("plan", &["--json"]));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let setting = plan["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "net.ipv4.tcp_fin_timeout")
        .unwrap();
    assert_eq!(setting["kind"], "sysctl");
    assert_eq!(setting["current"], "60");
    assert_eq!(setting["planned"], "15");
    assert!(!setting["reason"].as_str().unwrap().is_empty());
}
