//! `systemctl reload` of a data-plane unit, without systemd: the control plane and the data
//! plane run as two processes, as the units start them, and the data plane is given a
//! notification socket the way systemd gives one to a `Type=notify` unit. The unit's
//! `ExecReload` is `kill -HUP $MAINPID`, so the test sends SIGHUP to whichever process last
//! said `MAINPID=`. Each time the replacement must say `READY=1` with its own pid (systemd
//! then follows it as the unit's main process), the process it replaced must exit, and the
//! miners of `otedama-loadgen` must see no connection refused and no error. One more miner
//! ignores `client.reconnect`: it must be closed `RECONNECT_FOLLOW_WAIT_MS` after the
//! request, not left to the end of the drain.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use otedama_dataplane::rt::drain::RECONNECT_FOLLOW_WAIT_MS;
use otedama_tests::{
    assert_every_miner_handed_over, dataplane_listen_flags, loadgen_summary,
    spawn_synthetic_controlplane, synthetic_role_command, wait_until, workspace_binary,
    EVERY_NONCE_A_SHARE, SYNTHETIC_PAYOUT_ADDRESS,
};

const MINERS: usize = 100;
/// Long against the follow wait, so a close at the wait is told from one at the end.
const DRAIN_S: u64 = 20;

/// A V1 miner that subscribes and authorizes, then submits nothing and ignores
/// `client.reconnect`. Its thread returns when it heard the request and when the pool
/// closed the connection.
fn stubborn_miner(address: &str) -> JoinHandle<(Option<Instant>, Instant)> {
    let mut stream = TcpStream::connect(address).expect("the stubborn miner connects");
    let requests = format!(
        "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}}\n\
         {{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"{SYNTHETIC_PAYOUT_ADDRESS}.stubborn\",\"x\"]}}\n"
    );
    stream.write_all(requests.as_bytes()).unwrap();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut asked = None;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return (asked, Instant::now()),
                Ok(_) if line.contains("client.reconnect") => {
                    asked.get_or_insert_with(Instant::now);
                }
                Ok(_) => {}
            }
        }
    })
}

/// What a data plane told the notification socket: its `MAINPID` once it said `READY=1`.
fn next_ready(socket: &UnixDatagram, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 512];
    while Instant::now() < deadline {
        let Ok(length) = socket.recv(&mut buffer) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buffer[..length]).to_string();
        let lines: Vec<&str> = text.lines().collect();
        if !lines.contains(&"READY=1") {
            continue;
        }
        return lines
            .iter()
            .find_map(|line| line.strip_prefix("MAINPID="))
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("READY=1 without MAINPID: {text:?}"));
    }
    panic!("no READY=1 within {within:?}");
}

fn alive(pid: u32) -> bool {
    // A replaced process that has exited but not been reaped is a zombie: gone for this.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a data plane this test started (or its replacement).
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

/// Stops the data plane that is the unit's main process now, whichever it is, however the
/// test ends.
struct MainProcess(u32);

impl Drop for MainProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the data plane this test started or its replacement.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_reload_hands_the_unit_to_the_replacement_and_keeps_every_miner() {
    let dir = tempfile::tempdir().unwrap();
    let drain_s = DRAIN_S.to_string();
    let flags: Vec<&str> = [
        &EVERY_NONCE_A_SHARE[..],
        &[
            "--synthetic-job-interval-ms",
            "2000",
            "--dataplane-drain-s",
            &drain_s,
        ],
    ]
    .concat();
    let (mut control, _api_port) = spawn_synthetic_controlplane(dir.path(), &flags);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (v1, listen) = dataplane_listen_flags();
    let mut first = synthetic_role_command("dataplane", dir.path(), &flags, &listen)
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .expect("starting the data plane");
    let first_pid = first.id();
    let mut main = MainProcess(first_pid);
    // The first data plane is this test's child: reaped as soon as it ends.
    let first_exit = std::thread::spawn(move || first.wait());
    assert_eq!(
        next_ready(&notify, Duration::from_secs(90)),
        first_pid,
        "the data plane says it is the unit's main process"
    );
    let loadgen = std::process::Command::new(workspace_binary("otedama-loadgen"))
        .args(["--target", &v1, "--protocol", "v1"])
        .args(["--connections", &MINERS.to_string(), "--rate", "1000"])
        .args(["--duration", "60", "--connect-rate", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting otedama-loadgen");
    std::thread::sleep(Duration::from_secs(5));
    let stubborn = stubborn_miner(&v1);
    std::thread::sleep(Duration::from_secs(1));
    let mut first_reload_at = None;
    for reload in 1..=2 {
        let old = main.0;
        first_reload_at.get_or_insert_with(Instant::now);
        signal(old, libc::SIGHUP);
        let new = next_ready(&notify, Duration::from_secs(90));
        assert_ne!(new, old, "reload {reload}: the replacement reports itself");
        // Only the pid changes hands: the old process is left to drain, not stopped.
        main.0 = new;
        // The old process drains (its miners leave within half of DRAIN_S) and exits.
        wait_until(
            Duration::from_secs(60),
            "the replaced data plane to exit",
            || !alive(old),
        )
        .unwrap();
        assert!(alive(new), "reload {reload}: the replacement runs");
        std::thread::sleep(Duration::from_secs(3));
    }
    let (asked, closed) = stubborn.join().unwrap();
    let asked = asked.expect("the stubborn miner was asked to reconnect");
    let reload_at = first_reload_at.unwrap();
    let follow_wait = Duration::from_millis(RECONNECT_FOLLOW_WAIT_MS);
    // Closed once the follow wait after the request had passed (a little less as the
    // miner saw it: the request took time to arrive), and well before the drain's end.
    assert!(
        closed.duration_since(asked) >= follow_wait - Duration::from_millis(500),
        "closed {:?} after the request",
        closed.duration_since(asked)
    );
    assert!(
        closed.duration_since(reload_at) < Duration::from_secs(DRAIN_S - 3),
        "closed {:?} after the reload: left to the end of the drain",
        closed.duration_since(reload_at)
    );
    let status = first_exit.join().unwrap().unwrap();
    assert!(
        status.success(),
        "the replaced data plane exits cleanly: {status}"
    );
    let output = loadgen.wait_with_output().expect("otedama-loadgen ends");
    let (summary, stdout) = loadgen_summary(&output, "V1");
    assert_every_miner_handed_over(&summary, &stdout, "V1", MINERS, 2);
    drop(main);
    control.terminate();
}
