//! Starting and restarting cleanly (issue 15, point 7): a bad configuration stops
//! `otedama run` before any child starts, and restarting the control plane again and
//! again leaves nothing hanging in the node.

use std::time::{Duration, Instant};

use otedama_chain::rpc::{RpcAuth, RpcClient};
use otedama_tests::{wait_until, PoolSetup, RegtestPair};

#[test]
fn a_short_admin_token_stops_otedama_run_before_it_starts_anything() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let mut pool = PoolSetup::new(&nodes, &root.path().join("pool"), 0.001);
    let token_file = root.path().join("admin-token");
    std::fs::write(&token_file, "a".repeat(30))?;
    pool.extra_args = vec![
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ];
    let log = root.path().join("run.log");
    pool.log_file = Some(log.clone());
    let mut run = pool.spawn("run")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "otedama run is still running with a bad admin token"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log)?;
    assert!(!status.success(), "exit status {status}; log:\n{text}");
    assert!(text.contains("shorter than 32 characters"), "{text}");
    // Nothing was started: neither half ever opened its store.
    let data_dir = root.path().join("pool");
    assert!(!data_dir.join("shares").exists(), "a data plane started");
    assert!(!data_dir.join("ledger").exists(), "a control plane started");
    Ok(())
}

#[test]
fn twenty_control_plane_restarts_leave_the_node_answering_at_once() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let pool = PoolSetup::new(&nodes, &root.path().join("pool"), 0.001);
    let node = RpcClient::with_timeout(
        &nodes.miner.rpc_url(),
        RpcAuth::UserPassword {
            user: nodes.miner.rpc_user().into(),
            password: nodes.miner.rpc_password().into(),
        },
        Duration::from_secs(1),
    );
    for restart in 0..20 {
        let mut control = pool.spawn("controlplane")?;
        wait_until(
            Duration::from_secs(60),
            "the control plane's first job",
            || pool.stats().is_ok_and(|s| s["height"].as_u64() > Some(0)),
        )?;
        // Long enough for any watch on the node to be under way.
        std::thread::sleep(Duration::from_millis(500));
        control.kill_9();
        let asked = Instant::now();
        node.get_block_count().map_err(|error| {
            anyhow::anyhow!(
                "after {} restarts the node did not answer within 1 s: {error}",
                restart + 1
            )
        })?;
        assert!(asked.elapsed() < Duration::from_secs(1));
    }
    Ok(())
}
