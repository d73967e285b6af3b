//! Byte-level tests of the Stratum V1 session: each method, each error code 20–25, and the
//! limits at their edges. Shares are mined for real with the client helpers at a difficulty
//! where almost every nonce passes.

use std::sync::Arc;

use serde_json::{json, Value};

use otedama_kernels::Algorithm;
use otedama_shared::job::AlgorithmName;
use otedama_shared::pow_batch::{hash_batch, HashedShare};
use otedama_shared::sv1::client::{request_line, submit_line, NotifiedJob};
use otedama_shared::sv1::{ErrorCode, Outcome, PendingPow, Session, SessionConfig};
use otedama_shared::work::FrontEndConfig;
use otedama_shared::{DuplicateFilter, Job, JobBook};

const NOW_S: u64 = 1_700_000_100;

#[path = "common/job_template.rs"]
mod job_template;
use job_template::template;

struct Harness {
    session: Session,
    jobs: JobBook,
    duplicates: DuplicateFilter,
}

/// The pool floor these sessions run with (the configured default).
const DIFFICULTY_FLOOR_FOR_TESTS: f64 = 1e-6;

/// The session settings every test starts from: SHA256d, extranonce1 `deadbeef`, no
/// vardiff; tests change the fields they are about.
fn config(start_difficulty: f64) -> SessionConfig {
    SessionConfig {
        extranonce1: vec![0xde, 0xad, 0xbe, 0xef],
        extranonce2_size: 4,
        front_end: FrontEndConfig::plain(
            Algorithm::Sha256d,
            start_difficulty,
            DIFFICULTY_FLOOR_FOR_TESTS,
        ),
    }
}

/// `config(start_difficulty)` with its front-end terms changed by `change`.
fn config_with(start_difficulty: f64, change: impl FnOnce(&mut FrontEndConfig)) -> SessionConfig {
    let mut config = config(start_difficulty);
    change(&mut config.front_end);
    config
}

impl Harness {
    fn new(start_difficulty: f64) -> Self {
        let mut jobs = JobBook::default();
        jobs.insert(Arc::new(Job::new(template(1, true)).unwrap()));
        Harness {
            session: Session::new(config(start_difficulty)),
            jobs,
            duplicates: DuplicateFilter::default(),
        }
    }

    fn send(&mut self, line: &[u8]) -> (Outcome, Vec<Value>) {
        self.send_at(line, NOW_S)
    }

    fn send_at(&mut self, line: &[u8], now_s: u64) -> (Outcome, Vec<Value>) {
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let outcome = self
            .session
            .handle_line(trimmed, now_s, &self.jobs, &mut self.duplicates);
        (outcome, self.drain())
    }

    fn drain(&mut self) -> Vec<Value> {
        let bytes = self.session.poll_transmit().unwrap_or_default();
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn ready(&mut self) -> NotifiedJob {
        self.send(&request_line(1, "mining.subscribe", json!(["test/1.0"])));
        let (_, out) = self.send(&request_line(
            2,
            "mining.authorize",
            json!(["addr.rig", "x"]),
        ));
        let notify = out.iter().find(|m| m["method"] == "mining.notify").unwrap();
        NotifiedJob::from_params(&notify["params"]).unwrap()
    }
}

fn error_code(message: &Value) -> Option<i64> {
    message["error"][0].as_i64()
}

/// Finds a nonce whose header meets the job's share target, as a miner would.
fn mine(job: &NotifiedJob, extranonce2: &[u8], ntime: u32, version: u32, difficulty: f64) -> u32 {
    let target = otedama_kernels::Target::from_difficulty(Algorithm::Sha256d, difficulty).unwrap();
    let mut header = job.header(&[0xde, 0xad, 0xbe, 0xef], extranonce2, ntime, version);
    for nonce in 0u32.. {
        header[76..80].copy_from_slice(&nonce.to_le_bytes());
        if target.is_met_by(&otedama_kernels::sha256d(&header)) {
            return nonce;
        }
    }
    unreachable!()
}

#[test]
fn subscribe_reply_is_byte_exact() {
    let mut h = Harness::new(1.0);
    h.session.handle_line(
        br#"{"id":1,"method":"mining.subscribe","params":[]}"#,
        NOW_S,
        &h.jobs,
        &mut h.duplicates,
    );
    let bytes = h.session.poll_transmit().unwrap();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        concat!(
            r#"{"id":1,"result":[[["mining.set_difficulty","deadbeef"],["mining.notify","deadbeef"]],"deadbeef",4],"error":null}"#,
            "\n"
        )
    );
}

#[test]
fn authorize_then_work_arrives_with_difficulty_first() {
    let mut h = Harness::new(0.5);
    h.send(&request_line(1, "mining.subscribe", json!([])));
    let (_, out) = h.send(&request_line(2, "mining.authorize", json!(["w", null])));
    assert_eq!(out[0], json!({"id": 2, "result": true, "error": null}));
    assert_eq!(
        out[1],
        json!({"id": null, "method": "mining.set_difficulty", "params": [0.5]})
    );
    assert_eq!(out[2]["method"], "mining.notify");
}

#[test]
fn valid_share_is_accepted_only_after_durability() {
    let mut h = Harness::new(0.0001);
    let job = h.ready();
    let en2 = [0, 0, 0, 1];
    let nonce = mine(&job, &en2, job.ntime, job.version, 0.0001);
    let (outcome, out) = h.send(&submit_line(
        7,
        "addr.rig",
        &job.job_id,
        &en2,
        job.ntime,
        nonce,
        None,
    ));
    assert!(out.is_empty(), "no reply before the share is durable");
    let Outcome::ShareAccepted(accepted) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(accepted.record.worker, "addr.rig");
    assert_eq!(accepted.record.extranonce2, en2);
    assert!(
        accepted.block.is_some(),
        "regtest bits: every share is a block"
    );
    h.session
        .handle_share_durable(&accepted.request_id, NOW_S, &h.jobs);
    assert_eq!(
        h.drain(),
        vec![json!({"id": 7, "result": true, "error": null})]
    );

    // The same share again, in upper-case hex, is the same decoded share: 22.
    let line = String::from_utf8(submit_line(
        8,
        "addr.rig",
        &job.job_id,
        &en2,
        job.ntime,
        nonce,
        None,
    ))
    .unwrap()
    .replace(&format!("{nonce:08x}"), &format!("{nonce:08X}"));
    let (outcome, out) = h.send(line.as_bytes());
    assert_eq!(outcome, Outcome::Rejected(ErrorCode::Duplicate));
    assert_eq!(error_code(&out[0]), Some(22));
}

#[test]
fn low_difficulty_share_gets_23() {
    let mut h = Harness::new(1e12);
    let job = h.ready();
    let (outcome, out) = h.send(&submit_line(
        3,
        "addr.rig",
        &job.job_id,
        &[0; 4],
        job.ntime,
        0,
        None,
    ));
    assert_eq!(outcome, Outcome::Rejected(ErrorCode::LowDifficulty));
    assert_eq!(error_code(&out[0]), Some(23));
}

#[test]
fn submit_before_subscribe_gets_25() {
    let mut h = Harness::new(1.0);
    let (_, out) = h.send(&submit_line(3, "w", "1", &[0; 4], 0, 0, None));
    assert_eq!(error_code(&out[0]), Some(25));
}

#[test]
fn submit_for_an_unauthorized_worker_gets_24() {
    let mut h = Harness::new(1.0);
    let job = h.ready();
    let (_, out) = h.send(&submit_line(
        3,
        "someone.else",
        &job.job_id,
        &[0; 4],
        job.ntime,
        0,
        None,
    ));
    assert_eq!(error_code(&out[0]), Some(24));
}

#[test]
fn unknown_and_stale_jobs_get_21() {
    let mut h = Harness::new(0.0001);
    let job = h.ready();
    let (_, out) = h.send(&submit_line(
        3, "addr.rig", "ff", &[0; 4], job.ntime, 0, None,
    ));
    assert_eq!(error_code(&out[0]), Some(21));
    assert_eq!(out[0]["error"][1], "job not found");

    let next = Arc::new(Job::new(template(2, true)).unwrap());
    h.jobs.insert(next.clone());
    h.session.handle_new_job(&next, NOW_S);
    h.drain();
    let nonce = mine(&job, &[0; 4], job.ntime, job.version, 0.0001);
    let (_, out) = h.send(&submit_line(
        4,
        "addr.rig",
        &job.job_id,
        &[0; 4],
        job.ntime,
        nonce,
        None,
    ));
    assert_eq!(error_code(&out[0]), Some(21));
    assert_eq!(out[0]["error"][1], "stale job");
}

#[test]
fn field_sizes_and_ntime_window_are_enforced_with_20() {
    let mut h = Harness::new(0.0001);
    let job = h.ready();
    let id = &job.job_id;
    let cases: Vec<Value> = vec![
        json!(["addr.rig", id, "000000", "6553f100", "00000000"]), // extranonce2 3 bytes
        json!(["addr.rig", id, "0000000000", "6553f100", "00000000"]), // extranonce2 5 bytes
        json!(["addr.rig", id, "0000000g", "6553f100", "00000000"]), // not hex
        json!(["addr.rig", id, "00000000", "6553f0ff", "00000000"]), // ntime before the job
        json!([
            "addr.rig",
            id,
            "00000000",
            format!("{:08x}", NOW_S + 7201),
            "00000000"
        ]),
        json!(["addr.rig", id, "00000000", "6553f100", "0000000"]), // short nonce
        json!(["addr.rig", id, "00000000", "6553f100", 0]),         // number for hex
        json!(["addr.rig", id, "00000000"]),                        // too few
        json!(["addr.rig", id, "00000000", "6553f100", "00000000", "00002000"]), // no configure
    ];
    for params in cases {
        let (outcome, out) = h.send(&request_line(9, "mining.submit", params.clone()));
        assert_eq!(outcome, Outcome::Rejected(ErrorCode::Other), "{params}");
        assert_eq!(error_code(&out[0]), Some(20), "{params}");
    }
    // ntime at both edges of the window is fine (it then fails or passes on difficulty).
    for ntime in [job.ntime as u64, NOW_S + 7200] {
        let nonce = mine(&job, &[0, 0, 0, 9], ntime as u32, job.version, 0.0001);
        let line = submit_line(10, "addr.rig", id, &[0, 0, 0, 9], ntime as u32, nonce, None);
        assert!(
            matches!(h.send(&line).0, Outcome::ShareAccepted(_)),
            "ntime {ntime}"
        );
    }
}

#[test]
fn malformed_requests_get_20_and_the_connection_stays_open() {
    let mut h = Harness::new(1.0);
    for line in [
        &br#"{"id":1,"method":"mining.fly","params":[]}"#[..],
        br#"{"id":2,"method":"mining.subscribe","params":{"a":1}}"#,
        br#"{"id":3,"method":"mining.authorize","params":[]}"#,
        br#"{"id":4,"method":"mining.authorize","params":[5,"x"]}"#,
        br#"{"id":5,"method":7}"#,
        br#"[1,2,3]"#,
        br#"{"id":6,"method":"mining.suggest_difficulty","params":["high"]}"#,
    ] {
        let (outcome, out) = h.send(line);
        assert_eq!(
            outcome,
            Outcome::Rejected(ErrorCode::Other),
            "{}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(error_code(&out[0]), Some(20));
    }
    let (outcome, _) = h.send(br#"{"id":7,"method":"mining.subscribe","params":[]}"#);
    assert_eq!(outcome, Outcome::Continue);
}

#[test]
fn non_json_closes_the_connection() {
    let mut h = Harness::new(1.0);
    assert!(matches!(h.send(b"GET / HTTP/1.1").0, Outcome::Close(_)));
}

#[test]
fn version_rolling_negotiates_the_common_mask_and_rejects_bits_outside_it() {
    let mut h = Harness::new(0.0001);
    let (_, out) = h.send(&request_line(
        1,
        "mining.configure",
        json!([["version-rolling", "minimum-difficulty"], {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2}]),
    ));
    assert_eq!(
        out[0]["result"],
        json!({"version-rolling": true, "version-rolling.mask": "1fffe000", "minimum-difficulty": false})
    );
    let job = h.ready();
    let rolled = 0x0000_6000u32;
    let version = (job.version & !0x1fff_e000) | rolled;
    let nonce = mine(&job, &[0; 4], job.ntime, version, 0.0001);
    let line = submit_line(
        5,
        "addr.rig",
        &job.job_id,
        &[0; 4],
        job.ntime,
        nonce,
        Some(rolled),
    );
    assert!(matches!(h.send(&line).0, Outcome::ShareAccepted(_)));
    // The full rolled version is accepted too: nothing outside the mask differs.
    let nonce = mine(&job, &[0, 0, 0, 1], job.ntime, version, 0.0001);
    let line = submit_line(
        6,
        "addr.rig",
        &job.job_id,
        &[0, 0, 0, 1],
        job.ntime,
        nonce,
        Some(version),
    );
    assert!(matches!(h.send(&line).0, Outcome::ShareAccepted(_)));
    // Bit 0 lies outside the mask.
    let line = submit_line(
        7,
        "addr.rig",
        &job.job_id,
        &[0; 4],
        job.ntime,
        0,
        Some(0x0000_2001),
    );
    let (_, out) = h.send(&line);
    assert_eq!(error_code(&out[0]), Some(20));
    assert_eq!(
        out[0]["error"][1],
        "version bits outside the negotiated mask"
    );
}

#[test]
fn configure_refuses_when_min_bit_count_cannot_be_met() {
    let mut h = Harness::new(1.0);
    let (_, out) = h.send(&request_line(
        1,
        "mining.configure",
        json!([["version-rolling"], {"version-rolling.mask": "00006000", "version-rolling.min-bit-count": 3}]),
    ));
    assert_eq!(out[0]["result"], json!({"version-rolling": false}));
}

#[test]
fn suggest_difficulty_applies_to_the_next_notify() {
    let mut h = Harness::new(1.0);
    h.ready();
    let (_, out) = h.send(&request_line(
        4,
        "mining.suggest_difficulty",
        json!([0.001]),
    ));
    assert_eq!(out[0]["result"], true);
    assert_eq!(
        out[1],
        json!({"id": null, "method": "mining.set_difficulty", "params": [0.001]})
    );
    assert_eq!(out[2]["method"], "mining.notify");
}

#[test]
fn suggestions_below_the_pool_floor_get_the_floor() {
    let mut h = Harness::new(1.0);
    h.ready();
    let (_, out) = h.send(&request_line(
        4,
        "mining.suggest_difficulty",
        json!([DIFFICULTY_FLOOR_FOR_TESTS / 10.0]),
    ));
    assert_eq!(out[0]["result"], true);
    assert_eq!(out[1]["params"], json!([DIFFICULTY_FLOOR_FOR_TESTS]));
    let (_, out) = h.send(&request_line(
        5,
        "mining.suggest_difficulty",
        json!([DIFFICULTY_FLOOR_FOR_TESTS]),
    ));
    assert_eq!(out[0]["result"], true);
    assert_eq!(
        out[1]["method"], "mining.notify",
        "no change, no set_difficulty"
    );
}

#[test]
fn a_miner_cannot_keep_suggesting_its_way_back_below_vardiff() {
    use otedama_shared::limits::{DIFFICULTY_CHANGE_GRACE_S, DIFFICULTY_LOWERING_INTERVAL_S};
    // Each change starts a grace during which further suggestions are ignored, so the
    // suggestions below come that far apart.
    let at = |step: u64| NOW_S + step * DIFFICULTY_CHANGE_GRACE_S;
    let mut config = config(1.0);
    config.front_end.vardiff = Some(otedama_shared::vardiff::VardiffConfig {
        share_interval_target_s: 10.0,
        retarget_interval_s: 60,
        difficulty_min: DIFFICULTY_FLOOR_FOR_TESTS,
        difficulty_max: 1e15,
    });
    let mut h = Harness::new(1.0);
    h.session = Session::new(config);
    h.ready();
    let set_difficulty = |out: &[Value]| {
        out.iter()
            .find(|m| m["method"] == "mining.set_difficulty")
            .map(|m| m["params"][0].as_f64().unwrap())
    };
    // The first lowering below the measured 1.0 is taken, to the floor.
    let (_, out) = h.send_at(
        &request_line(4, "mining.suggest_difficulty", json!([1e-12])),
        at(0),
    );
    assert_eq!(set_difficulty(&out), Some(DIFFICULTY_FLOOR_FOR_TESTS));
    // A raise is taken (and becomes what the next lowering is measured against only once
    // vardiff says so: here, the floor the miner chose stays the measured value).
    let (_, out) = h.send_at(
        &request_line(5, "mining.suggest_difficulty", json!([0.5])),
        at(1),
    );
    assert_eq!(set_difficulty(&out), Some(0.5));
    let (_, out) = h.send_at(
        &request_line(6, "mining.suggest_difficulty", json!([1e-12])),
        at(2),
    );
    assert_eq!(set_difficulty(&out), Some(DIFFICULTY_FLOOR_FOR_TESTS));
    // Vardiff then measures the miner higher: a flood of shares at the floor.
    let job = {
        let (_, out) = h.send_at(
            &request_line(7, "mining.suggest_difficulty", json!([1e-5])),
            at(3),
        );
        let notify = out.iter().find(|m| m["method"] == "mining.notify").unwrap();
        NotifiedJob::from_params(&notify["params"]).unwrap()
    };
    let mut raised = None;
    for n in 0u32..64 {
        let extranonce2 = n.to_be_bytes();
        let nonce = mine(&job, &extranonce2, job.ntime, job.version, 1e-5);
        let line = submit_line(
            10 + n as u64,
            "addr.rig",
            &job.job_id,
            &extranonce2,
            job.ntime,
            nonce,
            None,
        );
        let (outcome, _) = h.send_at(&line, at(4));
        if let Outcome::ShareAccepted(accepted) = outcome {
            let out = {
                h.session
                    .handle_share_durable(&accepted.request_id, at(4), &h.jobs);
                h.drain()
            };
            if let Some(next) = set_difficulty(&out) {
                raised = Some(next);
                break;
            }
        }
    }
    let measured = raised.expect("vardiff raised the difficulty after a burst");
    assert!(measured > 1e-5, "{measured}");
    // Inside the interval a second lowering is refused: the miner stays at what vardiff
    // measured, however often it asks.
    for id in 100..110 {
        let (_, out) = h.send_at(
            &request_line(id, "mining.suggest_difficulty", json!([1e-12])),
            at(6),
        );
        assert_eq!(out[0]["result"], true);
        assert_eq!(set_difficulty(&out), None, "no change: {out:?}");
        assert_eq!(h.session.difficulty(), measured);
    }
    // After the interval, one more lowering is taken.
    let (_, out) = h.send_at(
        &request_line(200, "mining.suggest_difficulty", json!([1e-12])),
        NOW_S + DIFFICULTY_LOWERING_INTERVAL_S + at(6) - NOW_S,
    );
    assert_eq!(set_difficulty(&out), Some(DIFFICULTY_FLOOR_FOR_TESTS));
}

#[test]
fn extranonce_subscribe_is_acknowledged() {
    let mut h = Harness::new(1.0);
    let (_, out) = h.send(&request_line(4, "mining.extranonce.subscribe", json!([])));
    assert_eq!(out[0], json!({"id": 4, "result": true, "error": null}));
}

/// One connection authorizes `WORKERS_PER_CONNECTION_MAX` workers and no more; a worker
/// it has already is authorized again at the limit, and the connection stays open.
#[test]
fn workers_per_connection_are_capped_at_their_edge() {
    let limit = otedama_shared::limits::WORKERS_PER_CONNECTION_MAX;
    let mut h = Harness::new(1.0);
    for index in 0..limit {
        let (_, out) = h.send(&request_line(
            index as u64 + 1,
            "mining.authorize",
            json!([format!("addr.rig{index}"), ""]),
        ));
        assert_eq!(out[0]["result"], true, "worker {index}");
    }
    let (outcome, out) = h.send(&request_line(
        1_000,
        "mining.authorize",
        json!(["addr.one-more", ""]),
    ));
    assert_eq!(error_code(&out[0]), Some(20));
    assert!(
        matches!(outcome, Outcome::Rejected(ErrorCode::Other)),
        "refused, not closed"
    );
    let (_, out) = h.send(&request_line(
        1_001,
        "mining.authorize",
        json!(["addr.rig0", ""]),
    ));
    assert_eq!(out[0]["result"], true, "a known worker at the limit");
}

#[test]
fn worker_name_limit_is_enforced_at_its_edge() {
    let limit = otedama_shared::limits::WORKER_NAME_BYTES_MAX;
    let mut h = Harness::new(1.0);
    let (_, out) = h.send(&request_line(
        1,
        "mining.authorize",
        json!(["w".repeat(limit), ""]),
    ));
    assert_eq!(out[0]["result"], true);
    let (_, out) = h.send(&request_line(
        2,
        "mining.authorize",
        json!(["w".repeat(limit + 1), ""]),
    ));
    assert_eq!(error_code(&out[0]), Some(24));
}

#[test]
fn vardiff_raises_a_fast_miner_and_credits_the_new_difficulty() {
    let mut h = Harness::new(0.0001);
    h.session = Session::new(config_with(0.0001, |terms| {
        terms.vardiff = Some(otedama_shared::vardiff::VardiffConfig::default())
    }));
    let job = h.ready();
    let burst = otedama_shared::vardiff::VARDIFF_BURST_SHARES_MAX;
    let mut retargeted = Vec::new();
    for i in 0..burst {
        let en2 = (i + 1).to_be_bytes();
        let nonce = mine(&job, &en2, job.ntime, job.version, 0.0001);
        let line = submit_line(
            100 + i as u64,
            "addr.rig",
            &job.job_id,
            &en2,
            job.ntime,
            nonce,
            None,
        );
        let Outcome::ShareAccepted(accepted) = h.send_at(&line, NOW_S + 2).0 else {
            panic!("share {i}")
        };
        assert_eq!(accepted.record.difficulty, 0.0001);
        h.session
            .handle_share_durable(&accepted.request_id, NOW_S + 2, &h.jobs);
        retargeted.extend(
            h.drain()
                .into_iter()
                .filter(|m| m["method"] == "mining.set_difficulty"),
        );
    }
    // Twenty shares in two seconds against a 10 s target: the step limit (x4) applies.
    assert_eq!(
        retargeted,
        vec![json!({"id": null, "method": "mining.set_difficulty", "params": [0.0004]})]
    );
    // The job went out again at the new difficulty at NOW_S + 2. During the grace a share
    // is held to, and credited at, the old one, whatever its hash reached.
    let grace_end_s = NOW_S + 2 + otedama_shared::limits::DIFFICULTY_CHANGE_GRACE_S;
    let en2 = [9, 9, 9, 9];
    let nonce = mine(&job, &en2, job.ntime, job.version, 0.0004);
    let line = submit_line(500, "addr.rig", &job.job_id, &en2, job.ntime, nonce, None);
    let Outcome::ShareAccepted(accepted) = h.send_at(&line, grace_end_s - 1).0 else {
        panic!()
    };
    assert_eq!(accepted.record.difficulty, 0.0001);
    // After it, the new difficulty: a share that meets it is credited at it, one that
    // meets only the old one is refused (23).
    let en2 = [9, 9, 9, 8];
    let nonce = mine(&job, &en2, job.ntime, job.version, 0.0004);
    let line = submit_line(501, "addr.rig", &job.job_id, &en2, job.ntime, nonce, None);
    let Outcome::ShareAccepted(accepted) = h.send_at(&line, grace_end_s).0 else {
        panic!()
    };
    assert_eq!(accepted.record.difficulty, 0.0004);
    let en2 = [9, 9, 9, 7];
    let target = |difficulty| {
        otedama_kernels::Target::from_difficulty(Algorithm::Sha256d, difficulty).unwrap()
    };
    let (old, new) = (target(0.0001), target(0.0004));
    let mut header = job.header(&[0xde, 0xad, 0xbe, 0xef], &en2, job.ntime, job.version);
    let only_old = (0u32..)
        .find(|nonce| {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let hash = otedama_kernels::sha256d(&header);
            old.is_met_by(&hash) && !new.is_met_by(&hash)
        })
        .unwrap();
    let line = submit_line(
        502,
        "addr.rig",
        &job.job_id,
        &en2,
        job.ntime,
        only_old,
        None,
    );
    let (outcome, out) = h.send_at(&line, grace_end_s);
    // On regtest such a hash is also a block: then it goes up, but is credited no more.
    assert!(
        matches!(
            outcome,
            Outcome::Rejected(ErrorCode::LowDifficulty)
                | Outcome::BlockOnly(_, ErrorCode::LowDifficulty)
        ),
        "{outcome:?}"
    );
    assert_eq!(error_code(&out[0]), Some(23));
}

/// The test template as a scrypt job.
fn scrypt_template() -> otedama_shared::job::JobTemplate {
    let mut scrypt = template(1, true);
    scrypt.algorithm = AlgorithmName::Scrypt;
    scrypt
}

/// A share on `job` (nonce 42, not mined: at the floor difficulty any nonce is a share).
fn scrypt_share_line(job: &NotifiedJob) -> Vec<u8> {
    submit_line(
        7,
        "addr.rig",
        &job.job_id,
        &[0, 0, 0, 1],
        job.ntime,
        42,
        None,
    )
}

/// What the core's batch hasher computes for one waiting share.
fn hash_one(pending: &PendingPow) -> HashedShare {
    let mut hashed = Vec::new();
    hash_batch(&[pending.input()], &mut hashed, None);
    hashed[0]
}

/// A scrypt session on `scrypt_template`, batching its hashes or not.
fn scrypt_harness(defer_pow: bool) -> Harness {
    let mut jobs = JobBook::default();
    jobs.insert(Arc::new(Job::new(scrypt_template()).unwrap()));
    Harness {
        session: Session::new(config_with(DIFFICULTY_FLOOR_FOR_TESTS, |terms| {
            terms.algorithm = Algorithm::Scrypt;
            terms.defer_pow = defer_pow;
        })),
        jobs,
        duplicates: DuplicateFilter::default(),
    }
}

/// A scrypt session that hands proof of work to the glue ends exactly where one that hashes
/// for itself does: accepted with the same record, then duplicate.
#[test]
fn batched_scrypt_shares_finish_like_hashed_ones() {
    let mut outcomes = Vec::new();
    for defer_pow in [false, true] {
        let mut h = scrypt_harness(defer_pow);
        let job = h.ready();
        let line = scrypt_share_line(&job);
        let finish = |h: &mut Harness| {
            let (outcome, _) = h.send(&line);
            match outcome {
                Outcome::NeedsPow(pending) => {
                    assert!(defer_pow, "only batching sessions defer the hash");
                    let hashed = hash_one(&pending);
                    h.session
                        .handle_pow(pending, &hashed, NOW_S, &mut h.duplicates)
                }
                // A refusal needs no hash: a duplicate is refused as it arrives.
                outcome => {
                    assert!(
                        !defer_pow || matches!(outcome, Outcome::Rejected(_)),
                        "a batching session must defer scrypt"
                    );
                    outcome
                }
            }
        };
        let first = finish(&mut h);
        let second = finish(&mut h);
        assert!(matches!(first, Outcome::ShareAccepted(_)), "{first:?}");
        assert_eq!(second, Outcome::Rejected(ErrorCode::Duplicate));
        outcomes.push(first);
    }
    assert_eq!(outcomes[0], outcomes[1]);
}

/// Issue 15 review: copies of a scrypt share sent while the first waits for its batched
/// hash are refused at once (22), and a copy still waiting when a new block retires the
/// job cannot start a fresh duplicate set and be credited a second time.
#[test]
fn a_share_waiting_for_its_scrypt_hash_cannot_be_taken_twice() {
    let mut h = scrypt_harness(true);
    let job = h.ready();
    let line = scrypt_share_line(&job);
    let (Outcome::NeedsPow(first), _) = h.send(&line) else {
        panic!("a batching session defers scrypt")
    };
    let (outcome, out) = h.send(&line);
    assert_eq!(outcome, Outcome::Rejected(ErrorCode::Duplicate));
    assert_eq!(error_code(&out[0]), Some(22));
    // A new block arrives while the first copy waits: the job and its set retire.
    let mut next = scrypt_template();
    next.job_id = 2;
    next.prevhash = [0x99; 32];
    let next = Arc::new(Job::new(next).unwrap());
    h.jobs.insert(next.clone());
    h.duplicates.retire_unlisted(&h.jobs);
    h.session.handle_new_job(&next, NOW_S);
    h.drain();
    // The first copy was sent while its job was live: its work counts, once.
    let hashed = hash_one(&first);
    let outcome = h
        .session
        .handle_pow(first, &hashed, NOW_S, &mut h.duplicates);
    assert!(matches!(outcome, Outcome::ShareAccepted(_)), "{outcome:?}");
    let (outcome, _) = h.send(&line);
    assert_eq!(
        outcome,
        Outcome::Rejected(ErrorCode::JobNotFound),
        "stale now"
    );
    assert!(
        h.duplicates.is_empty(),
        "nothing was left behind for the retired job"
    );
}

#[test]
fn a_worker_without_a_payout_address_of_the_network_is_refused_at_authorize() {
    let rule = otedama_shared::address::AddressRule::Bitcoin(
        otedama_shared::address::BitcoinAddressRule {
            network_name: "litecoin regtest",
            pubkey_hash_prefix: 111,
            script_hash_prefixes: &[58, 196],
            bech32_hrp: "rltc",
        },
    );
    let mut h = Harness::new(0.5);
    h.session = Session::new(config_with(0.5, |terms| {
        terms.payout_address_rule = Some(rule)
    }));
    h.send(&request_line(1, "mining.subscribe", json!([])));
    // Printed by litecoind -regtest getnewaddress; the checksum of the second is broken,
    // the third is a Bitcoin mainnet address.
    for (id, worker) in [
        (2, "rltc1qhpuak4f6hryvjxpu5k08xgu99mwkmyzr40vf4k.rig"),
        (3, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
        (4, "w"),
    ] {
        let (outcome, out) = h.send(&request_line(id, "mining.authorize", json!([worker, "x"])));
        assert_eq!(outcome, Outcome::Rejected(ErrorCode::UnauthorizedWorker));
        assert_eq!(error_code(&out[0]), Some(24), "{worker}");
    }
    let (_, out) = h.send(&request_line(
        5,
        "mining.authorize",
        json!(["rltc1qhpuak4f6hryvjxpu5k08xgu99mwkmyzr40vf4j.rig", "x"]),
    ));
    assert_eq!(out[0], json!({"id": 5, "result": true, "error": null}));
}

#[test]
fn a_banned_address_is_refused_at_authorize_and_a_new_ban_names_the_connection() {
    let mut bans = otedama_shared::bans::BanList::default();
    bans.addresses.insert("banned".into());
    let mut h = Harness::new(0.5);
    h.session = Session::new(config_with(0.5, |terms| {
        terms.bans = std::sync::Arc::new(bans.clone())
    }));
    h.send(&request_line(1, "mining.subscribe", json!([])));
    let (outcome, out) = h.send(&request_line(
        2,
        "mining.authorize",
        json!(["banned.rig1", "x"]),
    ));
    assert_eq!(outcome, Outcome::Rejected(ErrorCode::UnauthorizedWorker));
    assert_eq!(error_code(&out[0]), Some(24));
    let (outcome, _) = h.send(&request_line(
        3,
        "mining.authorize",
        json!(["fine.rig1", "x"]),
    ));
    assert_eq!(outcome, Outcome::Continue);
    // Unrelated bans leave the connection alone; a ban of its address names it.
    bans.addresses.insert("other".into());
    assert!(!h.session.update_bans(std::sync::Arc::new(bans.clone())));
    bans.addresses.insert("fine".into());
    assert!(h.session.update_bans(std::sync::Arc::new(bans.clone())));
    // Lifting the ban lets the address authorize again.
    bans.addresses.clear();
    h.session.update_bans(std::sync::Arc::new(bans));
    let (outcome, _) = h.send(&request_line(
        4,
        "mining.authorize",
        json!(["banned.rig2", "x"]),
    ));
    assert_eq!(outcome, Outcome::Continue);
}

/// A connection that fills its core's duplicate filter with one job's cheap shares loses
/// its own place in it: an honest share of more work is taken, the flood's cheapest share
/// is forgotten, and that share's copy, or a new one as cheap, is refused with 20.
#[test]
fn a_flood_at_the_filter_bound_forgets_its_own_cheap_shares_not_the_honest_ones() {
    use otedama_shared::duplicates::work_bits;
    let flooded_shares = 4;
    let (flooder_difficulty, honest_difficulty) = (DIFFICULTY_FLOOR_FOR_TESTS, 0.001);
    let mut h = Harness::new(flooder_difficulty);
    h.duplicates = DuplicateFilter::with_shares_max(flooded_shares);
    // Mainnet's easiest bits, so no share here is a block (a block passes the bound).
    let mut hard = template(1, true);
    hard.bits = 0x1d00_ffff;
    h.jobs = JobBook::default();
    h.jobs.insert(Arc::new(Job::new(hard).unwrap()));
    let job = h.ready();
    let flooder_extranonce1 = [0xde, 0xad, 0xbe, 0xef];
    let honest_extranonce1 = [0x0b, 0xad, 0xf0, 0x0d];
    let mut honest = Session::new(SessionConfig {
        extranonce1: honest_extranonce1.to_vec(),
        ..config(honest_difficulty)
    });
    for (id, method, params) in [
        (1, "mining.subscribe", json!([])),
        (2, "mining.authorize", json!(["addr.honest", "x"])),
    ] {
        let line = request_line(id, method, params);
        honest.handle_line(
            line.strip_suffix(b"\n").unwrap(),
            NOW_S,
            &h.jobs,
            &mut h.duplicates,
        );
    }
    honest.poll_transmit();
    // The first nonce whose header meets `difficulty` and whose work bits pass `wanted`.
    let mine_where =
        |extranonce1: &[u8], extranonce2: &[u8], difficulty: f64, wanted: &dyn Fn(u8) -> bool| {
            let target =
                otedama_kernels::Target::from_difficulty(Algorithm::Sha256d, difficulty).unwrap();
            let mut header = job.header(extranonce1, extranonce2, job.ntime, job.version);
            (0u32..)
                .find_map(|nonce| {
                    header[76..80].copy_from_slice(&nonce.to_le_bytes());
                    let hash = otedama_kernels::sha256d(&header);
                    let bits = work_bits(&hash);
                    (target.is_met_by(&hash) && wanted(bits)).then_some((nonce, bits))
                })
                .unwrap()
        };
    let submit = |id: u64, worker: &str, extranonce2: [u8; 4], nonce: u32| {
        let line = submit_line(
            id,
            worker,
            &job.job_id,
            &extranonce2,
            job.ntime,
            nonce,
            None,
        );
        line.strip_suffix(b"\n").unwrap().to_vec()
    };
    let mut flooded = Vec::new();
    for n in 0..flooded_shares as u8 {
        let extranonce2 = [0, 0, 0, n];
        let (nonce, bits) = mine_where(
            &flooder_extranonce1,
            &extranonce2,
            flooder_difficulty,
            &|_| true,
        );
        let (outcome, _) = h.send(&submit(10 + n as u64, "addr.rig", extranonce2, nonce));
        assert!(matches!(outcome, Outcome::ShareAccepted(_)), "{outcome:?}");
        flooded.push((extranonce2, nonce, bits));
    }
    assert_eq!(h.duplicates.len(), flooded_shares);
    let (cheapest_extranonce2, cheapest_nonce, cheapest_bits) =
        *flooded.iter().min_by_key(|(_, _, bits)| *bits).unwrap();

    let extranonce2 = [0, 0, 1, 0];
    let (nonce, honest_bits) = mine_where(
        &honest_extranonce1,
        &extranonce2,
        honest_difficulty,
        &|_| true,
    );
    assert!(honest_bits > flooded.iter().map(|f| f.2).max().unwrap());
    let outcome = honest.handle_line(
        &submit(20, "addr.honest", extranonce2, nonce),
        NOW_S,
        &h.jobs,
        &mut h.duplicates,
    );
    assert!(matches!(outcome, Outcome::ShareAccepted(_)), "{outcome:?}");
    assert!(
        h.duplicates.len() < flooded_shares + 1,
        "the cheapest shares were forgotten"
    );

    let (outcome, out) = h.send(&submit(
        30,
        "addr.rig",
        cheapest_extranonce2,
        cheapest_nonce,
    ));
    assert_eq!(
        outcome,
        Outcome::Rejected(ErrorCode::Other),
        "a forgotten share is not taken again"
    );
    assert_eq!(error_code(&out[0]), Some(20));
    let extranonce2 = [0, 0, 0, 9];
    let (nonce, _) = mine_where(
        &flooder_extranonce1,
        &extranonce2,
        flooder_difficulty,
        &|bits| bits == cheapest_bits,
    );
    let (outcome, out) = h.send(&submit(31, "addr.rig", extranonce2, nonce));
    assert_eq!(
        outcome,
        Outcome::Rejected(ErrorCode::Other),
        "a share as cheap is refused"
    );
    assert_eq!(error_code(&out[0]), Some(20));
    assert_eq!(h.duplicates.take_refused_full(), 2);
}

/// A miner is never held above the network's difficulty (`WorkState::network_cap`): it
/// starts just under the network's, a job on an easier network brings `set_difficulty`
/// before its notify, and a job on a harder one gives back what the pool wants for it.
#[test]
fn set_difficulty_follows_the_network_below_the_miners_difficulty() {
    let with_bits = |job_id: u64, bits: u32, clean: bool| {
        let mut job = template(job_id, clean);
        job.bits = bits;
        Arc::new(Job::new(job).unwrap())
    };
    let set_difficulty = |out: &[Value]| {
        out.iter()
            .position(|m| m["method"] == "mining.set_difficulty")
            .map(|at| (at, out[at]["params"][0].as_f64().unwrap()))
    };
    let under = |difficulty: f64, job: &Job| {
        difficulty <= job.network_difficulty && difficulty > job.network_difficulty * (1.0 - 1e-8)
    };
    // SHA256d difficulty about 16,307, then 1 (bits 0x1d00ffff), then 16,307 again.
    let hard = with_bits(1, 0x1b04_04cb, true);
    let mut h = Harness::new(1e6);
    h.jobs = JobBook::default();
    h.jobs.insert(hard.clone());
    h.send(&request_line(1, "mining.subscribe", json!([])));
    let (_, out) = h.send(&request_line(2, "mining.authorize", json!(["w", "x"])));
    let (at, difficulty) = set_difficulty(&out).expect("a difficulty before the first job");
    assert!(under(difficulty, &hard), "{difficulty}");
    assert_eq!(out[at + 1]["method"], "mining.notify");
    let easier = with_bits(2, 0x1d00_ffff, false);
    h.jobs.insert(easier.clone());
    h.session.handle_new_job(&easier, NOW_S);
    let out = h.drain();
    let (at, difficulty) = set_difficulty(&out).expect("the easier network's difficulty");
    assert!(under(difficulty, &easier), "{difficulty}");
    assert_eq!(out[at + 1]["method"], "mining.notify");
    let harder_again = with_bits(3, 0x1b04_04cb, true);
    h.jobs.insert(harder_again.clone());
    h.session.handle_new_job(&harder_again, NOW_S + 1);
    let (_, difficulty) = set_difficulty(&h.drain()).expect("back up");
    assert!(under(difficulty, &harder_again), "{difficulty}");
}

/// A hash that misses the miner's target but meets the network's (here regtest, where the
/// miner is held at difficulty 1 and one hash in two is a block) is a block: refused as
/// low difficulty and not credited, but handed up as a block with a record at difficulty
/// 0 for the share log, once; a copy is a duplicate.
#[test]
fn a_block_below_the_share_target_goes_up_uncredited() {
    let mut h = Harness::new(1.0);
    let job = h.ready();
    let network_difficulty = h.jobs.newest().unwrap().network_difficulty;
    let en2 = [0, 0, 0, 9];
    let nonce = mine(
        &job,
        &en2,
        job.ntime,
        job.version,
        network_difficulty * 1.01,
    );
    let line = submit_line(7, "addr.rig", &job.job_id, &en2, job.ntime, nonce, None);
    let (outcome, out) = h.send(&line);
    let Outcome::BlockOnly(uncredited, ErrorCode::LowDifficulty) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(uncredited.block.worker, "addr.rig");
    assert_eq!(uncredited.record.difficulty, 0.0);
    assert!(uncredited.record.is_block);
    assert_eq!(uncredited.record.header[..], uncredited.block.header[..]);
    assert_eq!(error_code(&out[0]), Some(23), "{out:?}");
    let (outcome, out) = h.send(&line);
    assert_eq!(outcome, Outcome::Rejected(ErrorCode::Duplicate));
    assert_eq!(error_code(&out[0]), Some(22), "{out:?}");
}

/// A SHA256d session at difficulty 0.001 that hands its hashes to the core's batch hasher
/// (`defer_pow`), on a job with these bits.
fn deferring_harness(bits: u32, defer_pow: bool) -> Harness {
    let mut first = template(1, true);
    first.bits = bits;
    let mut jobs = JobBook::default();
    jobs.insert(Arc::new(Job::new(first).unwrap()));
    Harness {
        session: Session::new(config_with(1e-3, |terms| terms.defer_pow = defer_pow)),
        jobs,
        duplicates: DuplicateFilter::default(),
    }
}

/// A new block: job 2 on another tip, sent to the session, the filter following it.
fn new_tip(h: &mut Harness, bits: u32) {
    let mut next = template(2, true);
    next.prevhash = [0x99; 32];
    next.bits = bits;
    let next = Arc::new(Job::new(next).unwrap());
    h.jobs.insert(next.clone());
    h.duplicates.retire_unlisted(&h.jobs);
    h.session.handle_new_job(&next, NOW_S);
    h.drain();
}

/// A share mined at difficulty 0.001 (extranonce2 ending in `extranonce2_last`) sent to a
/// deferring session: its line, and the share waiting for the hasher.
fn waiting_share(h: &mut Harness, extranonce2_last: u8) -> (Vec<u8>, Box<PendingPow>) {
    let job = h.ready();
    let en2 = [0, 0, 0, extranonce2_last];
    let nonce = mine(&job, &en2, job.ntime, job.version, 1e-3);
    let id = 10 + u64::from(extranonce2_last);
    let line = submit_line(id, "addr.rig", &job.job_id, &en2, job.ntime, nonce, None);
    let (Outcome::NeedsPow(pending), _) = h.send(&line) else {
        panic!("a deferring session hands SHA256d to the hasher")
    };
    (line, pending)
}

/// Stratum V1 SHA256d shares that wait for the batch hasher, hashed two at a time, end
/// exactly where shares the session hashes itself do: the same records, and a copy that
/// waited beside its first is a duplicate (22).
#[test]
fn deferred_sha256d_shares_finish_like_hashed_ones() {
    const BITS: u32 = 0x1d00_ffff;
    let mut results = Vec::new();
    for defer_pow in [false, true] {
        let mut h = deferring_harness(BITS, defer_pow);
        let job = h.ready();
        let lines: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                let en2 = [0, 0, 1, i % 4];
                let nonce = mine(&job, &en2, job.ntime, job.version, 1e-3);
                submit_line(
                    10 + u64::from(i),
                    "addr.rig",
                    &job.job_id,
                    &en2,
                    job.ntime,
                    nonce,
                    None,
                )
            })
            .collect();
        // The fifth is a copy of the first.
        let mut outcomes = Vec::new();
        let mut waiting = Vec::new();
        for line in &lines {
            match h.send(line).0 {
                Outcome::NeedsPow(pending) => waiting.push(pending),
                outcome => outcomes.push(outcome),
            }
        }
        assert_eq!(waiting.len(), if defer_pow { 5 } else { 0 });
        let inputs: Vec<_> = waiting.iter().map(|pending| pending.input()).collect();
        let mut hashed = Vec::new();
        hash_batch(&inputs, &mut hashed, None);
        drop(inputs);
        for (pending, hashed) in waiting.into_iter().zip(&hashed) {
            outcomes.push(
                h.session
                    .handle_pow(pending, hashed, NOW_S, &mut h.duplicates),
            );
        }
        let records: Vec<_> = outcomes
            .iter()
            .map(|outcome| match outcome {
                Outcome::ShareAccepted(accepted) => Some(accepted.record.clone()),
                other => {
                    assert_eq!(*other, Outcome::Rejected(ErrorCode::Duplicate));
                    None
                }
            })
            .collect();
        assert_eq!(records.iter().flatten().count(), 4, "{outcomes:?}");
        results.push(records);
    }
    assert_eq!(results[0], results[1]);
}

/// A share claimed once its hash is known must not be credited twice across a new tip:
/// its copy, sent while the first waited for the hasher, finds the first's set dropped by
/// the new tip. It is refused as stale (21), not credited.
#[test]
fn a_copy_waiting_across_a_new_tip_is_not_credited_again() {
    const BITS: u32 = 0x1d00_ffff;
    let mut h = deferring_harness(BITS, true);
    let (line, first) = waiting_share(&mut h, 3);
    let (Outcome::NeedsPow(copy), _) = h.send(&line) else {
        panic!("a copy is not known until its hash is")
    };
    let hashed_first = hash_one(&first);
    let hashed_copy = hash_one(&copy);
    let outcome = h
        .session
        .handle_pow(first, &hashed_first, NOW_S, &mut h.duplicates);
    assert!(matches!(outcome, Outcome::ShareAccepted(_)), "{outcome:?}");
    h.drain();
    new_tip(&mut h, BITS);
    let outcome = h
        .session
        .handle_pow(copy, &hashed_copy, NOW_S, &mut h.duplicates);
    assert_eq!(outcome, Outcome::Rejected(ErrorCode::JobNotFound));
    assert_eq!(error_code(&h.drain()[0]), Some(21));
}

/// A block that waited for the hasher while a new tip came is not credited (it may be a
/// copy), and not lost either: it goes up, recorded at difficulty 0, as a block hashed on
/// arrival would have.
#[test]
fn a_block_waiting_across_a_new_tip_goes_up_uncredited() {
    const REGTEST_BITS: u32 = 0x207f_ffff;
    let mut h = deferring_harness(REGTEST_BITS, true);
    let (_, pending) = waiting_share(&mut h, 4);
    new_tip(&mut h, REGTEST_BITS);
    let hashed = hash_one(&pending);
    let outcome = h
        .session
        .handle_pow(pending, &hashed, NOW_S, &mut h.duplicates);
    let Outcome::BlockOnly(uncredited, ErrorCode::JobNotFound) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(uncredited.record.difficulty, 0.0);
    assert_eq!(uncredited.block.header[..], hashed.header[..]);
    assert_eq!(error_code(&h.drain()[0]), Some(21));
}
