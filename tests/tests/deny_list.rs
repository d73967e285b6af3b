//! Deny lists end to end on a running pool: an address in an SDN CSV the test writes
//! cannot authorize (in any letter case); after the file changes, the pool re-reads it,
//! drops the newly denied miner's connection and refuses it; each import is in the audit
//! log, whose chain still verifies.

use std::time::Duration;

use bech32::Hrp;
use serde_json::json;

use otedama_controlplane::audit::AuditLog;
use otedama_tests::{wait_until, StratumTestClient, SyntheticPool};

fn regtest_address(byte: u8) -> String {
    bech32::segwit::encode_v0(Hrp::parse("bcrt").unwrap(), &[byte; 20]).unwrap()
}

/// An OFAC SDN CSV row per address, the way `sdn.csv` puts digital currency addresses
/// in its remarks.
fn sdn_csv(addresses: &[&str]) -> String {
    addresses
        .iter()
        .enumerate()
        .map(|(i, address)| {
            format!(
                "{},\"TEST ENTITY {i}\",-0- ,\"CYBER2\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,\"Digital Currency Address - XBT {address}; Digital Currency Address - LTC Lsomethingelse;\"\n",
                90_000 + i
            )
        })
        .collect()
}

fn authorize_error(pool: &SyntheticPool, worker: &str) -> serde_json::Value {
    let mut client = StratumTestClient::connect(&pool.v1).unwrap();
    client
        .request("mining.subscribe", json!(["deny-list-test"]))
        .unwrap();
    let reply = client
        .request("mining.authorize", json!([worker, "x"]))
        .unwrap();
    reply["error"].clone()
}

#[test]
fn denied_addresses_cannot_mine_and_a_reimport_takes_effect() {
    let denied = regtest_address(7);
    let later = regtest_address(9);
    let lists = tempfile::tempdir().unwrap();
    let sdn = lists.path().join("sdn.csv");
    std::fs::write(&sdn, sdn_csv(&[&denied])).unwrap();
    let pool = SyntheticPool::start(&[
        "--deny-list-file",
        sdn.to_str().unwrap(),
        "--deny-list-reload-s",
        "1",
    ]);

    // Refused at authorize with 24 (unauthorized worker), in either case of bech32, from
    // the first connection on: the data plane accepts none before it has the list.
    for worker in [format!("{denied}.rig"), denied.to_uppercase()] {
        let error = authorize_error(&pool, &worker);
        assert_eq!(error[0], 24, "{worker}: {error}");
    }
    let mut miner = StratumTestClient::connect(&pool.v1).unwrap();
    miner.start(&format!("{later}.rig")).unwrap();

    // The list grows: the pool re-reads it, drops the miner and refuses it from now on.
    std::fs::write(&sdn, sdn_csv(&[&denied, &later])).unwrap();
    let mut dropped = false;
    for _ in 0..200 {
        match miner.read_message() {
            Ok(_) => continue,
            Err(error) => {
                // A read that timed out is a miner still connected, not a dropped one.
                assert!(
                    otedama_tests::closed_by_peer(&error),
                    "the newly denied miner's socket was not closed: {error:#}"
                );
                dropped = true;
                break;
            }
        }
    }
    assert!(dropped, "the newly denied miner was not disconnected");
    wait_until(Duration::from_secs(10), "the re-read list", || {
        authorize_error(&pool, &format!("{later}.rig"))[0] == 24
    })
    .unwrap();

    // An unreadable file keeps the list in force.
    std::fs::remove_file(&sdn).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(authorize_error(&pool, &format!("{denied}.rig"))[0], 24);

    // Stop the pool but keep its data directory.
    let SyntheticPool {
        process, data_dir, ..
    } = pool;
    drop(process);
    let audit = AuditLog::open_read_only(&data_dir.path().join("audit")).unwrap();
    let imports: Vec<_> = audit
        .recent(100)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "deny_list.import")
        .collect();
    assert_eq!(imports.len(), 2, "{imports:?}");
    assert_eq!(imports[0].detail["addresses"], 2);
    assert_eq!(imports[0].detail["added"], 1);
    assert!(audit.verify().unwrap().is_ok());
}
