//! `otedama-loadgen` against a real `otedama run` on the synthetic chain: over Stratum V1,
//! V2 over Noise/TCP and V2 over QUIC it holds its connections across several processes,
//! gets every share acknowledged, sees new jobs, counts the bytes on the wire, ends by
//! itself and prints the JSON line scripts read, with the pool's acknowledgement stages
//! read from its /metrics. It refuses non-loopback targets.

use std::process::Command;
use std::time::Duration;

use otedama_tests::{loadgen_summary, workspace_binary, SyntheticPool, EVERY_NONCE_A_SHARE};

const LOADGEN_JSON_KEYS: [&str; 14] = [
    "connections",
    "connect_errors",
    "reconnects",
    "protocol",
    "shares_acked",
    "shares_per_s",
    "answered_per_s",
    "pool_stages",
    "wire_bytes_per_share",
    "ack_p50_us",
    "ack_p99_us",
    "ack_p999_us",
    "broadcast_p99_ms",
    "errors",
];

#[test]
fn loadgen_drives_a_synthetic_pool_and_reports_fixed_keys() {
    let mut pool = SyntheticPool::start(
        &[
            &EVERY_NONCE_A_SHARE[..],
            &[
                "--synthetic-job-interval-ms",
                "1000",
                "--dataplane-processes",
                "2",
            ],
        ]
        .concat(),
    );
    // Give both data-plane processes time to receive their first job.
    std::thread::sleep(Duration::from_secs(2));
    for (protocol, target) in [
        ("v1", pool.v1.clone()),
        ("v2", pool.sv2.clone()),
        ("quic", pool.quic.to_string()),
    ] {
        let output = Command::new(workspace_binary("otedama-loadgen"))
            .args(["--target", &target, "--protocol", protocol])
            .args(["--authority-key", &pool.authority_key])
            .arg("--quic-ca")
            .arg(&pool.quic_certificate)
            .args(["--connections", "200", "--rate", "2000"])
            .args(["--duration", "4", "--processes", "2"])
            .args(["--pool-metrics", &format!("127.0.0.1:{}", pool.api_port)])
            .output()
            .expect("running otedama-loadgen");
        let (summary, stdout) = loadgen_summary(&output, protocol);
        let last = stdout.lines().last().expect("a summary");
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
        assert_eq!(summary["protocol"], protocol, "{stdout}");
        assert_eq!(summary["connections"], 200, "{protocol}: {stdout}");
        assert_eq!(summary["errors"], 0, "{protocol}: {stdout}");
        // A count, not a rate: every connection had shares acknowledged (no throughput is
        // asserted in a test; BENCHMARKS.md has the rates, measured against a baseline).
        let acked = summary["shares_acked"].as_u64().unwrap();
        assert!(
            acked >= 200,
            "{protocol}: only {acked} shares acknowledged over 200 connections: {stdout}"
        );
        assert!(
            summary["broadcast_p99_ms"].is_number(),
            "{protocol}: a new job reached the miners during the run: {stdout}"
        );
        // The pool's own account of the run, from its /metrics: every stage saw shares.
        for stage in ["queue", "disk", "handoff", "reply", "ack"] {
            let count = summary["pool_stages"][stage]["count"].as_u64();
            assert!(
                count.is_some_and(|n| n > 0),
                "{protocol}: stage {stage}: {stdout}"
            );
        }
        assert!(summary["answered_per_s"].as_f64() >= summary["shares_per_s"].as_f64());
        // A share costs at least its own bytes and an acknowledgement's, with headers.
        let wire = summary["wire_bytes_per_share"].as_f64().unwrap();
        assert!(wire > 60.0, "{protocol}: {wire} bytes per share: {stdout}");
    }
    pool.process.terminate();
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
