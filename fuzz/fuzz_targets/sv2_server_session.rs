//! The Stratum V2 server session on arbitrary frames from a miner, after a valid
//! SetupConnection and one standard and one extended channel (so that shares, updates and
//! closes reach real channels). It answers, refuses or closes; it never panics.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use otedama_kernels::Algorithm;
use otedama_shared::sv2::messages::*;
use otedama_shared::sv2::server::{Context, ServerConfig, Session};
use otedama_shared::sv2::wire::Str0255;
use otedama_shared::sv2::{FrameDecoder, Message};
use otedama_shared::{DuplicateFilter, Job, JobBook};

#[path = "../../shared/tests/common/job_template.rs"]
mod job_template;

fn jobs() -> JobBook {
    let mut book = JobBook::default();
    book.insert(Arc::new(Job::new(job_template::template(1, true)).unwrap()));
    book
}

fn preamble() -> Vec<u8> {
    let mut out = Vec::new();
    Message::SetupConnection(SetupConnection {
        protocol: PROTOCOL_MINING,
        min_version: 2,
        max_version: 2,
        flags: 0,
        endpoint_host: Str0255::new("h").unwrap(),
        endpoint_port: 1,
        vendor: Str0255::new("fuzz").unwrap(),
        hardware_version: Str0255::new("").unwrap(),
        firmware: Str0255::new("").unwrap(),
        device_id: Str0255::new("").unwrap(),
    })
    .encode(&mut out);
    Message::OpenStandardMiningChannel(OpenStandardMiningChannel {
        request_id: 1,
        user_identity: Str0255::new("std").unwrap(),
        nominal_hash_rate: 1e9,
        max_target: [0xff; 32],
    })
    .encode(&mut out);
    Message::OpenExtendedMiningChannel(OpenExtendedMiningChannel {
        request_id: 2,
        user_identity: Str0255::new("ext").unwrap(),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
        min_extranonce_size: 4,
    })
    .encode(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let jobs = jobs();
    let mut duplicates = DuplicateFilter::default();
    let mut session = Session::new(ServerConfig {
        start_difficulty: 1e-10,
        difficulty_min: 1e-10,
        version_rolling_mask: 0x1fff_e000,
        algorithm: Algorithm::Sha256d,
        vardiff: Some(Default::default()),
        batch_scrypt: false,
        payout_address_rule: None,
        bans: Default::default(),
    });
    let mut next_prefix = 0u32;
    let mut allocate = || {
        next_prefix += 1;
        next_prefix.to_be_bytes().to_vec()
    };
    // The preamble must really open both channels, and they get a job, so that the
    // fuzzed frames reach shares (every nonce is one at this difficulty) and not only
    // the refusals of a session with no channel.
    let mut decoder = FrameDecoder::new(otedama_shared::limits::SV2_PAYLOAD_BYTES_MAX);
    let mut run = |bytes: &[u8], session: &mut Session| {
        decoder.feed(bytes);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let mut context = Context {
                now_s: 1_700_000_100,
                jobs: &jobs,
                duplicates: &mut duplicates,
                allocate_extranonce_prefix: &mut allocate,
            };
            let outcome = session.handle_frame(&frame.header, frame.payload, &mut context);
            if let otedama_shared::sv2::server::Outcome::ShareAccepted(share) = outcome {
                session.handle_share_durable(&share, 1_700_000_100);
            }
            session.transmitted();
        }
    };
    run(&preamble(), &mut session);
    assert_eq!(session.channel_count(), 2, "the preamble opened its channels");
    session.handle_new_job(jobs.newest().expect("a job"), 1_700_000_100);
    session.transmitted();
    run(data, &mut session);
});
