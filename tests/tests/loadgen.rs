//! `otedama-loadgen` against a real `otedama run` on the synthetic chain: it holds its
//! connections across several processes, gets every share acknowledged, sees new jobs,
//! ends by itself and prints the JSON line scripts read. It refuses non-loopback targets.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use otedama_tests::{free_port, otedama_binary, wait_until, workspace_binary, Process};

const LOADGEN_JSON_KEYS: [&str; 8] = [
    "connections",
    "shares_acked",
    "shares_per_s",
    "ack_p50_us",
    "ack_p99_us",
    "ack_p999_us",
    "broadcast_p99_ms",
    "errors",
];

#[test]
fn loadgen_drives_a_synthetic_pool_and_reports_fixed_keys() {
    let data_dir = tempfile::tempdir().unwrap();
    let (stratum_port, api_port) = (free_port(), free_port());
    let pool = Command::new(otedama_binary())
        .args([
            "run",
            "--chain",
            "synthetic",
            "--coin",
            "bitcoin",
            "--network",
            "regtest",
        ])
        .args([
            "--payout-address",
            "bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt",
        ])
        .args(["--stratum-listen", &format!("127.0.0.1:{stratum_port}")])
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--difficulty-min", "1e-10", "--start-difficulty", "1e-10"])
        .args([
            "--vardiff-share-interval-s",
            "0",
            "--share-log-sync",
            "false",
        ])
        .args([
            "--synthetic-job-interval-ms",
            "1000",
            "--dataplane-processes",
            "2",
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting otedama run");
    let mut pool = Process {
        child: pool,
        name: "run".into(),
    };
    let address = format!("127.0.0.1:{stratum_port}");
    wait_until(Duration::from_secs(60), "the pool to listen", || {
        std::net::TcpStream::connect(&address).is_ok()
    })
    .unwrap();
    // Give both data-plane processes time to receive their first job.
    std::thread::sleep(Duration::from_secs(2));
    let output = Command::new(workspace_binary("otedama-loadgen"))
        .args([
            "--target",
            &address,
            "--connections",
            "200",
            "--rate",
            "2000",
        ])
        .args(["--duration", "4", "--processes", "2"])
        .output()
        .expect("running otedama-loadgen");
    pool.terminate();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a summary");
    let summary: Value = serde_json::from_str(last).expect("the last line is JSON");
    let mut keys: Vec<&str> = summary
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = LOADGEN_JSON_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{last}");
    assert_eq!(summary["connections"], 200, "{stdout}");
    assert_eq!(summary["errors"], 0, "{stdout}");
    let acked = summary["shares_acked"].as_u64().unwrap();
    assert!(acked > 1000, "only {acked} shares acknowledged: {stdout}");
    assert!(
        summary["broadcast_p99_ms"].is_number(),
        "a new job reached the miners during the run: {stdout}"
    );
}

#[test]
fn loadgen_refuses_a_target_off_this_host() {
    let output = Command::new(workspace_binary("otedama-loadgen"))
        .args([
            "--target",
            "192.0.2.1:3333",
            "--connections",
            "1",
            "--duration",
            "1",
        ])
        .output()
        .expect("running otedama-loadgen");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
