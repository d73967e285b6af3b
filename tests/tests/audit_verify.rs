//! `otedama audit verify --data-dir DIR`: exit 0 on an intact chain, even while the log is
//! open for writing; after one entry is edited on disk, a non-zero exit naming that entry.

use std::process::Command;

use otedama_controlplane::audit::AuditLog;
use otedama_tests::otedama_binary;
use serde_json::json;

fn verify(data_dir: &std::path::Path) -> std::process::Output {
    Command::new(otedama_binary())
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("otedama runs")
}

#[test]
fn verify_passes_an_intact_chain_and_names_the_first_edited_entry() {
    let data_dir = tempfile::tempdir().unwrap();
    let path = data_dir.path().join("audit");
    let log = AuditLog::open(&path).unwrap();
    for i in 0..5u64 {
        log.append(1_000 + i, "admin", "fee.set", json!({ "percent": i }))
            .unwrap();
    }

    // The writer still holds the log, as a running pool does.
    let intact = verify(data_dir.path());
    let stdout = String::from_utf8_lossy(&intact.stdout);
    assert!(intact.status.success(), "{intact:?}");
    assert!(stdout.contains("audit chain intact: 5 entries"), "{stdout}");
    assert!(stdout.contains(&log.head().hash), "{stdout}");
    drop(log);

    // Edit entry 2's detail on disk, keeping its stored hash.
    {
        let db = rocksdb::DB::open_default(&path).unwrap();
        let key = 2u64.to_be_bytes();
        let mut entry: serde_json::Value =
            serde_json::from_slice(&db.get(key).unwrap().unwrap()).unwrap();
        entry["detail"] = json!({ "percent": 0.01 });
        db.put(key, serde_json::to_vec(&entry).unwrap()).unwrap();
    }
    let broken = verify(data_dir.path());
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        stderr.contains("audit chain broken at entry 2: hash does not match"),
        "{stderr}"
    );

    let missing = verify(&data_dir.path().join("nowhere"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no audit log at"));
}
