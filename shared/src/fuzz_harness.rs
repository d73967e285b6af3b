//! What each fuzz target does with one input, as plain functions: the cargo-fuzz targets
//! (`fuzz/fuzz_targets`) call them, and `cargo test` replays every committed input through
//! them (`fuzz/seeds/<target>` and the crash inputs kept in `fuzz/regressions/<target>`),
//! so a fixed crash stays fixed on stable Rust without the fuzzer. Each function panics
//! only where the code under test broke a promise.

use std::sync::Arc;

use otedama_kernels::Algorithm;

use crate::sv1::{Session, SessionConfig};
use crate::sv2::messages::*;
use crate::sv2::server::{Context, Session as ServerSession};
use crate::sv2::wire::Str0255;
use crate::sv2::{Decoded, FrameDecoder, FrameHeader, Message};
use crate::work::FrontEndConfig;
use crate::{DuplicateFilter, Job, JobBook};

#[path = "../tests/common/job_template.rs"]
mod job_template;
#[path = "../tests/common/monero_template.rs"]
pub(crate) mod monero_template;

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name cargo-fuzz knows it by.
pub const TARGETS: &[(&str, Target)] = &[
    ("sv2_message", sv2_message),
    ("sv2_frames", sv2_frames),
    ("sv1_session", sv1_session),
    ("sv2_server_session", sv2_server_session),
    ("http_path", http_path),
    ("monero_session", monero_session),
];

fn jobs() -> JobBook {
    let mut book = JobBook::default();
    book.insert(Arc::new(
        Job::new(job_template::template(1, true)).expect("the fixture is a valid job"),
    ));
    book
}

/// Every SV2 message decoder: the first three bytes pick the message (extension type and
/// channel bit, message type), the rest is its payload. Decoding never panics, and what
/// decodes re-encodes to a frame that decodes to the same message.
pub fn sv2_message(data: &[u8]) {
    let Some((selector, payload)) = data.split_first_chunk::<3>() else {
        return;
    };
    let header = FrameHeader {
        extension_type: u16::from(selector[0] & 0x01),
        channel_msg: selector[1] & 0x80 != 0,
        msg_type: selector[2],
        msg_length: payload.len() as u32,
    };
    if let Ok(Decoded::Message(message)) = Message::decode(&header, payload) {
        let frame = message.to_frame();
        let again = FrameHeader::parse(frame[..6].try_into().expect("a frame has a header"));
        match Message::decode(&again, &frame[6..]) {
            // Floats compare by value; a NaN hash rate is equal only to its own bytes.
            Ok(Decoded::Message(decoded)) => assert_eq!(decoded.to_frame(), frame),
            other => panic!("{message:?} re-encoded to something that decodes as {other:?}"),
        }
    }
}

/// The SV2 frame decoder on an arbitrary stream cut at arbitrary points (the first byte
/// is the cut): it never panics, never hands out a frame over its limit, and every frame
/// it hands out is decodable or refused with an error.
pub fn sv2_frames(data: &[u8]) {
    const PAYLOAD_BYTES_MAX: usize = 4096;
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut).max(1);
    let mut decoder = FrameDecoder::new(PAYLOAD_BYTES_MAX);
    for piece in stream.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= PAYLOAD_BYTES_MAX);
                    let _ = Message::decode(&frame.header, frame.payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The Stratum V1 session on arbitrary lines from a miner: subscribe, authorize, submit or
/// garbage, in any order. It answers or refuses; it never panics. The difficulty is below
/// 2^-32, where every nonce is a share, so submissions reach acceptance, duplicates,
/// acknowledgement and vardiff (seeds in `fuzz/seeds/sv1_session`).
pub fn sv1_session(data: &[u8]) {
    let jobs = jobs();
    let mut duplicates = DuplicateFilter::default();
    let mut session = Session::new(SessionConfig {
        extranonce1: vec![0xde, 0xad, 0xbe, 0xef],
        extranonce2_size: 4,
        front_end: FrontEndConfig {
            vardiff: Some(crate::vardiff::VardiffConfig {
                difficulty_min: 1e-10,
                ..Default::default()
            }),
            ..FrontEndConfig::plain(Algorithm::Sha256d, 1e-10, 1e-10)
        },
    });
    for (index, line) in data.split(|b| *b == b'\n').enumerate() {
        // Time moves on a second a line, so vardiff's windows turn over.
        let now_s = 1_700_000_000 + index as u64;
        let outcome = session.handle_line(line, now_s, &jobs, &mut duplicates);
        if let crate::sv1::Outcome::ShareAccepted(share) = outcome {
            session.handle_share_durable(&share.request_id, now_s, &jobs);
        }
        let _ = session.poll_transmit();
    }
}

/// A valid Monero job on the fixture template (8 reserved bytes), for tests of the glue.
pub fn monero_fixture_job(job_id: u64) -> crate::monero::stratum::MoneroJob {
    let (blob, reserved_offset) = monero_template::template_blob(0);
    crate::monero::stratum::MoneroJob::new(
        job_id,
        100,
        [1; 32],
        [2; 32],
        2,
        blob,
        reserved_offset,
        monero_template::EXTRA_NONCE_BYTES,
    )
    .expect("the fixture is a valid template")
}

/// The Monero Stratum session on arbitrary lines from a miner: login, getjob, submit,
/// keepalived or garbage, in any order. It answers, refuses or closes; it never panics.
/// A share that waits for its hash is finished with the hash it claims (the pool's check
/// of the claim is a RandomX hash, which the fuzzer cannot reach; a wrong claim closes)
/// or with a hash of all ones when the line's first byte is odd, so acceptance,
/// duplicates, blocks and refusals after the hash are all reached (seeds in
/// `fuzz/seeds/monero_session`).
pub fn monero_session(data: &[u8]) {
    use crate::monero::stratum::*;
    let (blob, reserved_offset) = monero_template::template_blob(0);
    let mut jobs = MoneroJobBook::default();
    jobs.insert(Arc::new(
        MoneroJob::new(
            1,
            100,
            [1; 32],
            [2; 32],
            // Difficulty 2: about half the hashes are blocks.
            2,
            blob,
            reserved_offset,
            monero_template::EXTRA_NONCE_BYTES,
        )
        .expect("the fixture is a valid template"),
    ));
    let mut duplicates = DuplicateFilter::default();
    let mut session = MoneroSession::new(MoneroSessionConfig {
        session_id: "s".into(),
        extra_nonce: vec![7; usize::from(monero_template::EXTRA_NONCE_BYTES)],
        // Nicehash mode for inputs of even length.
        nicehash_byte: data.len().is_multiple_of(2).then_some(0x5a),
        network: monero::Network::Mainnet,
        front_end: FrontEndConfig {
            vardiff: Some(crate::vardiff::VardiffConfig::default()),
            ..FrontEndConfig::plain(Algorithm::Sha256d, 1.0, 1.0)
        },
    });
    for (index, line) in data.split(|b| *b == b'\n').enumerate() {
        let now_s = 1_700_000_000 + index as u64;
        let mut outcome = session.handle_line(line, now_s, &jobs, &mut duplicates);
        if let MoneroOutcome::NeedsPow(pending) = outcome {
            let pow = if line.first().is_some_and(|byte| byte % 2 == 1) {
                [0xff; 32]
            } else {
                pending.claimed_result()
            };
            outcome = session.handle_pow(*pending, &pow, &mut duplicates);
        }
        match outcome {
            MoneroOutcome::ShareAccepted(share) => {
                session.handle_share_durable(&share.request_id, now_s, &jobs)
            }
            MoneroOutcome::Close(_) => return,
            _ => {}
        }
        let _ = session.poll_transmit();
    }
}

fn text(s: &str) -> Str0255<'_> {
    Str0255::new(s).expect("a short string")
}

/// A valid SetupConnection and one standard and one extended channel.
fn sv2_preamble() -> Vec<u8> {
    let mut out = Vec::new();
    Message::SetupConnection(SetupConnection {
        protocol: PROTOCOL_MINING,
        min_version: 2,
        max_version: 2,
        flags: 0,
        endpoint_host: text("h"),
        endpoint_port: 1,
        vendor: text("fuzz"),
        hardware_version: text(""),
        firmware: text(""),
        device_id: text(""),
    })
    .encode(&mut out);
    Message::OpenStandardMiningChannel(OpenStandardMiningChannel {
        request_id: 1,
        user_identity: text("std"),
        nominal_hash_rate: 1e9,
        max_target: [0xff; 32],
    })
    .encode(&mut out);
    Message::OpenExtendedMiningChannel(OpenExtendedMiningChannel {
        request_id: 2,
        user_identity: text("ext"),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
        min_extranonce_size: 4,
    })
    .encode(&mut out);
    out
}

/// The Stratum V2 server session on arbitrary frames from a miner, after a valid
/// SetupConnection and one standard and one extended channel (so that shares, updates and
/// closes reach real channels). It answers, refuses or closes; it never panics.
pub fn sv2_server_session(data: &[u8]) {
    let jobs = jobs();
    let mut duplicates = DuplicateFilter::default();
    let mut session = ServerSession::new(FrontEndConfig {
        vardiff: Some(Default::default()),
        ..FrontEndConfig::plain(Algorithm::Sha256d, 1e-10, 1e-10)
    });
    let mut next_prefix = 0u32;
    let mut allocate = || {
        next_prefix += 1;
        Some(next_prefix.to_be_bytes().to_vec())
    };
    // The preamble must really open both channels, and they get a job, so that the
    // fuzzed frames reach shares (every nonce is one at this difficulty) and not only
    // the refusals of a session with no channel.
    let mut decoder = FrameDecoder::new(crate::limits::SV2_PAYLOAD_BYTES_MAX);
    let mut run = |bytes: &[u8], session: &mut ServerSession| {
        decoder.feed(bytes);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let mut context = Context {
                now_s: 1_700_000_100,
                jobs: &jobs,
                duplicates: &mut duplicates,
                allocate_extranonce_prefix: &mut allocate,
            };
            let outcome = session.handle_frame(&frame.header, frame.payload, &mut context);
            if let crate::sv2::server::Outcome::ShareAccepted(share) = outcome {
                session.handle_share_durable(&share, 1_700_000_100);
            }
            session.transmitted();
        }
    };
    run(&sv2_preamble(), &mut session);
    assert_eq!(
        session.channel_count(),
        2,
        "the preamble opened its channels"
    );
    session.handle_new_job(jobs.newest().expect("a job"), 1_700_000_100);
    session.transmitted();
    run(data, &mut session);
}

/// The API's path normalization on an arbitrary request target (the path before the first
/// `?`, as a server splits it): it never panics, and what it returns keeps every promise
/// of `check_normalized` (no `.`, `..` or empty segment survives, so no spelling of an
/// admin path can route around the admin check, and it is stable once written back).
pub fn http_path(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let path = target.split('?').next().unwrap_or_default();
    if let Some(normalized) = crate::http_path::normalize_path(path) {
        if let Err(broken) = crate::http_path::check_normalized(&normalized) {
            panic!("{path:?} normalized to {broken}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::TARGETS;

    /// The checkout's `fuzz/`, found when the test runs (cargo sets the variable for it),
    /// not where the binary was built: a build cache shared by two checkouts may hand
    /// this one a binary another compiled.
    fn fuzz_dir() -> PathBuf {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        manifest_dir.join("../fuzz")
    }

    /// Every committed input of every target (its seeds, and the crash inputs kept as
    /// regressions) goes through the target again: a crash fixed once stays fixed.
    #[test]
    fn every_committed_fuzz_input_replays_without_a_crash() {
        let mut replayed = 0;
        for (target, run) in TARGETS {
            for kind in ["seeds", "regressions"] {
                let dir = fuzz_dir().join(kind).join(target);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    if path.extension().is_some_and(|e| e == "md") {
                        continue;
                    }
                    let input = std::fs::read(&path).expect("a readable input");
                    let outcome = std::panic::catch_unwind(|| run(&input));
                    assert!(outcome.is_ok(), "{} crashes {target}", path.display());
                    replayed += 1;
                }
            }
        }
        assert!(
            replayed > 0,
            "no committed input was found under {}",
            fuzz_dir().display()
        );
    }

    /// Each target here has a cargo-fuzz binary, and each binary a target here.
    #[test]
    fn every_fuzz_target_has_a_harness() {
        let mut binaries: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .expect("the fuzz targets")
            .map(|entry| {
                let path = entry.expect("an entry").path();
                path.file_stem()
                    .expect("a name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        binaries.sort();
        let mut harnessed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
        harnessed.sort();
        assert_eq!(binaries, harnessed);
    }
}
