//! Control-plane failover (issue 20), every part a real process against a real
//! three-server NATS JetStream cluster: two control planes (one leads, one stands by) and
//! a data-plane host without a control plane, mined on by `otedama miner`. The leader is
//! killed with SIGKILL; the standby leads within the lease's term, the data plane's link
//! moves to it, and the shares the data plane wrote, before and after the kill, are the
//! shares the new leader's history holds: none lost, none twice. The operator's bans,
//! changed only on the leader, are the new leader's too, and its data planes enforce them.
//! The exchange runs on both, and only the leader takes its requests, the new one too.

use std::time::{Duration, Instant};

use otedama_tests::nats::{cluster_flags, NatsCluster};
use otedama_tests::{
    assert_history_holds_each_share_once, history_shares, mine_for, share_log_records,
    spawn_synthetic_controlplane, spawn_synthetic_dataplane, wait_until, StratumTestClient,
    SYNTHETIC_PAYOUT_ADDRESS,
};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "failover-admin-token-0123456789abcdef01234567";

/// `POST path` with `body` on a control plane's admin API: the status and the answer.
fn admin_post(api_port: u16, path: &str, body: &Value) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{api_port}{path}");
    let request = ureq::post(&url).set("Authorization", &format!("Bearer {ADMIN_TOKEN}"));
    match request.send_json(body) {
        Ok(response) => (response.status(), response.into_json().unwrap()),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_json().unwrap_or(Value::Null))
        }
        Err(error) => panic!("POST {path}: {error}"),
    }
}

/// The operator's ban list a control plane holds.
fn banned_addresses(api_port: u16) -> Option<Vec<String>> {
    let url = format!("http://127.0.0.1:{api_port}/api/v1/admin/bans");
    let list: Value = ureq::get(&url)
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .ok()?
        .into_json()
        .ok()?;
    Some(
        list["addresses"]
            .as_array()?
            .iter()
            .filter_map(|address| Some(address.as_str()?.to_string()))
            .collect(),
    )
}

/// Whether the data plane at `v1` lets `user` authorize.
fn authorizes(v1: &str, user: &str) -> bool {
    let Ok(mut client) = StratumTestClient::connect(v1) else {
        return false;
    };
    let _ = client.set_read_timeout(Duration::from_secs(5));
    client.start(user).is_ok()
}

/// The status of a request for an API key challenge: only the control plane running the
/// exchange issues them.
fn key_challenge_status(api_port: u16) -> u16 {
    let url = format!("http://127.0.0.1:{api_port}/api/v1/dex/keys/challenge");
    match ureq::post(&url).send_json(json!({"address": SYNTHETIC_PAYOUT_ADDRESS})) {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(error) => panic!("POST {url}: {error}"),
    }
}

/// How long the standby may take to lead once the leader is killed: the lease's 20 s
/// term, a pass, and room for a loaded machine.
const TAKEOVER_S_MAX: u64 = 45;

#[test]
fn a_killed_leader_is_replaced_and_every_written_share_is_counted_once() {
    let cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    let flags = |name: &'static str| cluster_flags(&urls, name);
    let root = tempfile::tempdir().unwrap();
    let token_file = root.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let token_path = token_file.to_str().unwrap().to_string();
    let control_flags = |name: &'static str| {
        let mut all = flags(name);
        all.extend(["--admin-token-file", token_path.as_str()]);
        // The exchange's stream sets its bound aside on each server: 64 MiB of the test
        // servers' 1 GB.
        all.extend([
            "--dex-enabled",
            "true",
            "--exchange-stream-bytes-max",
            "67108864",
        ]);
        all
    };
    let (mut leader, leader_api) =
        spawn_synthetic_controlplane(&root.path().join("cp-a"), &control_flags("cp-a"));
    let (dataplane_dir, scratch) = (root.path().join("dp-1"), root.path().join("scratch"));
    std::fs::create_dir_all(&scratch).unwrap();
    let (_dataplane, v1) = spawn_synthetic_dataplane(&dataplane_dir, &flags("dp-1"));
    let url = format!("stratum+tcp://{v1}");
    let written = || share_log_records(&dataplane_dir.join("shares"), &scratch);

    let first = mine_for(&url, "before", 8);
    assert!(
        first > 0,
        "the data plane took shares: it had a job from the leader"
    );
    let logs = [dataplane_dir.join("shares")];
    assert_history_holds_each_share_once(
        leader_api,
        &logs,
        &scratch,
        first,
        Duration::from_secs(60),
    );
    let (_standby, standby_api) =
        spawn_synthetic_controlplane(&root.path().join("cp-b"), &control_flags("cp-b"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        history_shares(standby_api),
        Some(0),
        "a standby credits nothing (it only follows the leader's ledger)"
    );

    // Bans change on the leader only; the standby holds each change the stream took.
    let banned =
        bitcoin::Address::p2wsh(bitcoin::Script::new(), bitcoin::Network::Regtest).to_string();
    let change = json!({"addresses": [banned]});
    let (status, answer) = admin_post(standby_api, "/api/v1/admin/bans/add", &change);
    assert_eq!(status, 503, "a standby changes no ban: {answer}");
    assert_eq!(
        key_challenge_status(standby_api),
        503,
        "a standby's exchange takes no request"
    );
    assert_eq!(
        key_challenge_status(leader_api),
        200,
        "the leader runs the exchange"
    );
    let (status, answer) = admin_post(leader_api, "/api/v1/admin/bans/add", &change);
    assert_eq!(status, 200, "the leader bans: {answer}");
    wait_until(Duration::from_secs(30), "the standby holds the ban", || {
        banned_addresses(standby_api).is_some_and(|list| list.contains(&banned))
    })
    .unwrap();
    wait_until(Duration::from_secs(30), "the leader's ban enforced", || {
        !authorizes(&v1, &format!("{banned}.rig"))
    })
    .unwrap();

    leader.kill_9();
    let killed_at = Instant::now();
    let total_before = written();
    wait_until(
        Duration::from_secs(TAKEOVER_S_MAX),
        "the standby leads and has read every share",
        || history_shares(standby_api).unwrap_or(0) >= total_before,
    )
    .unwrap();
    let takeover_s = killed_at.elapsed().as_secs_f64();
    eprintln!(
        "the standby led and had counted {total_before} shares {takeover_s:.1} s after the kill"
    );

    assert_eq!(
        banned_addresses(standby_api),
        Some(vec![banned.clone()]),
        "the new leader holds the former leader's ban"
    );
    wait_until(
        Duration::from_secs(30),
        "the new leader runs the exchange",
        || key_challenge_status(standby_api) == 200,
    )
    .unwrap();

    // The data plane's link moves to the new leader; its new shares are counted too.
    let second = mine_for(&url, "after", 8);
    assert!(second > 0, "shares taken after the failover");
    assert_history_holds_each_share_once(
        standby_api,
        &logs,
        &scratch,
        first + second,
        Duration::from_secs(60),
    );

    // The new leader changes the bans, and the data plane enforces its whole list: the
    // ban it holds from the former leader too.
    let change = json!({"addresses": [SYNTHETIC_PAYOUT_ADDRESS]});
    let (status, answer) = admin_post(standby_api, "/api/v1/admin/bans/add", &change);
    assert_eq!(status, 200, "the new leader bans: {answer}");
    wait_until(
        Duration::from_secs(30),
        "the new leader's ban enforced",
        || !authorizes(&v1, &format!("{SYNTHETIC_PAYOUT_ADDRESS}.late")),
    )
    .unwrap();
    assert!(!authorizes(&v1, &format!("{banned}.rig")), "still banned");
    let unbanned = bitcoin::Address::p2wsh(
        &bitcoin::ScriptBuf::from_bytes(vec![0x51]),
        bitcoin::Network::Regtest,
    );
    assert!(
        authorizes(&v1, &format!("{unbanned}.rig")),
        "an address nobody banned still mines"
    );
}
