//! An independent Stratum V1 client (Python, written from the protocol alone, sharing no
//! code with Otedama) mines a real scrypt share through the pool, the node accepts the
//! block it makes, and each bad input gets the right error code.

use std::process::Command;
use std::time::Duration;

use otedama_tests::{wait_until, PoolSetup, RegtestPair};

#[test]
fn clean_room_client_finds_a_block_and_gets_the_right_codes() -> anyhow::Result<()> {
    let script = format!(
        "{}/clean_room/stratum_client.py",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
    );
    let root = tempfile::tempdir()?;
    let nodes = RegtestPair::start(root.path(), 101)?;
    let pool = PoolSetup::new(&nodes, &root.path().join("pool"), 0.001);
    let _run = pool.spawn("run")?;
    pool.wait_ready(Duration::from_secs(60))?;
    let height_before = nodes.miner.block_count()?;

    let worker = format!("{}.cleanroom", pool.payout_address);
    let output = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &pool.stratum_port.to_string(), &worker])
        .output()
        .map_err(|e| {
            anyhow::anyhow!("python3 is needed for this test (apt-get install -y python3): {e}")
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "clean-room client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    wait_until(
        Duration::from_secs(20),
        "the clean-room block to be accepted",
        || {
            pool.stats()
                .is_ok_and(|s| s["blocks_found"].as_u64() == Some(1))
        },
    )?;
    assert_eq!(nodes.miner.block_count()?, height_before + 1);
    let stats = pool.stats()?;
    assert_eq!(stats["blocks_rejected"].as_u64(), Some(0), "{stats}");
    Ok(())
}
