//! `otedama miner` with several pool slots (issue 20), against real `otedama run` pools on
//! the synthetic chain: it passes over a slot that takes the connection and then says
//! nothing and one that refuses it, mines on the first that answers, moves to the next
//! when its pool is killed, and goes back to the first slot once a pool listens there
//! again; over V2, it does not go back to a host that now holds another authority key.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use otedama_tests::{
    spawn_miner_at, wait_until, SyntheticPool, EASY_SHARE_FLAGS, SYNTHETIC_PAYOUT_ADDRESS,
};

/// A pool where nearly any nonce is a share and jobs stay put, plus `more` flags.
fn start_pool(more: &[&str]) -> SyntheticPool {
    let mut flags = EASY_SHARE_FLAGS.to_vec();
    flags.extend_from_slice(more);
    SyntheticPool::start(&flags)
}

fn accepted(pool: &SyntheticPool) -> u64 {
    pool.stats()["shares_accepted"].as_u64().unwrap_or(0)
}

/// A loopback port nothing listens on: bound, then let go.
fn refused_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// Takes every connection, holds it and never writes: a pool that hangs. Counts the
/// connections taken.
fn silent_pool() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Relaxed);
            held.push(stream);
        }
    });
    (address, taken)
}

#[test]
fn a_miner_passes_over_a_silent_and_a_refusing_slot_to_the_pool_that_answers() {
    let pool = start_pool(&[]);
    let (silent, taken) = silent_pool();
    let refused = refused_address();
    let user = format!("{SYNTHETIC_PAYOUT_ADDRESS}.slots");
    let _miner = spawn_miner_at(
        &format!("stratum+tcp://{silent}"),
        &user,
        1,
        &[
            "--url",
            &format!("stratum+tcp://{refused}"),
            "--url",
            &format!("stratum+tcp://{}", pool.v1),
            "--algo",
            "sha256d",
            "--silent-timeout-s",
            "2",
        ],
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "shares accepted by the third slot",
        || accepted(&pool) >= 5,
    )
    .unwrap();
    assert_eq!(
        taken.load(Relaxed),
        1,
        "the silent slot was tried once, first"
    );
}

#[test]
fn a_miner_moves_on_when_its_pool_dies_and_returns_when_the_first_slot_answers_again() {
    let mut first = start_pool(&[]);
    let second = start_pool(&[]);
    let first_address = first.v1.clone();
    let user = format!("{SYNTHETIC_PAYOUT_ADDRESS}.failover");
    let _miner = spawn_miner_at(
        &format!("stratum+tcp://{first_address}"),
        &user,
        1,
        &[
            "--url",
            &format!("stratum+tcp://{}", second.v1),
            "--algo",
            "sha256d",
            "--failback-interval-s",
            "1",
        ],
    )
    .unwrap();
    wait_until(Duration::from_secs(60), "shares on the first slot", || {
        accepted(&first) >= 5
    })
    .unwrap();
    assert_eq!(
        accepted(&second),
        0,
        "the backup is not used while the first answers"
    );

    first.process.kill_9();
    wait_until(Duration::from_secs(60), "shares on the second slot", || {
        accepted(&second) >= 5
    })
    .unwrap();

    // A new pool on the first slot's address: the miner goes back to it.
    let returned = start_pool(&["--stratum-listen", &first_address]);
    wait_until(
        Duration::from_secs(60),
        "shares on the first slot again",
        || accepted(&returned) >= 5,
    )
    .unwrap();
    // The second pool's count reaches its stats a second or two late (counters each
    // second, stats cached): it must come to rest, and stay there.
    let mut on_second = accepted(&second);
    wait_until(Duration::from_secs(20), "the second slot idle", || {
        std::thread::sleep(Duration::from_millis(2_500));
        let now = accepted(&second);
        let idle = now == on_second;
        on_second = now;
        idle
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        accepted(&second) <= on_second + 2,
        "the miner left the second slot (a share or two may have been in flight)"
    );
}

/// The same over Stratum V2 with Noise: each slot's URL carries its pool's authority key.
/// The first pool is killed; the miner moves to the second. A new pool on the first slot's
/// address holds another key, so the failback check (the whole Noise handshake) never takes
/// the miner back to it: the miner's log says it moved once and never went back.
#[test]
fn a_v2_miner_moves_on_and_does_not_return_to_a_host_with_another_key() {
    let mut first = start_pool(&[]);
    let second = start_pool(&[]);
    let first_address = first.sv2.clone();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("miner.log");
    let mut miner = otedama_tests::Process {
        child: std::process::Command::new(otedama_tests::otedama_binary())
            .arg("miner")
            .args([
                "--url",
                &format!("stratum2+tcp://{first_address}/{}", first.authority_key),
                "--url",
                &format!("stratum2+tcp://{}/{}", second.sv2, second.authority_key),
            ])
            .args(["--user", &format!("{SYNTHETIC_PAYOUT_ADDRESS}.v2failover")])
            .args(["--algo", "sha256d", "--threads", "1"])
            .args(["--failback-interval-s", "1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
        name: "miner".into(),
    };
    wait_until(
        Duration::from_secs(60),
        "V2 shares on the first slot",
        || accepted(&first) >= 5,
    )
    .unwrap();
    first.process.kill_9();
    wait_until(
        Duration::from_secs(60),
        "V2 shares on the second slot",
        || accepted(&second) >= 5,
    )
    .unwrap();
    let impostor = start_pool(&["--sv2-listen", &first_address]);
    assert_ne!(impostor.authority_key, first.authority_key);
    let on_second = accepted(&second);
    // Five failback checks at one a second.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        accepted(&second) > on_second,
        "the miner kept mining on the second slot"
    );
    miner.terminate();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.matches("moving to").count(), 1, "{log}");
    assert!(!log.contains("back to"), "{log}");
    assert_eq!(accepted(&impostor), 0);
}
