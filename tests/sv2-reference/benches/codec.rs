//! Otedama's SV2 codec against the Reference Implementation's on the pool's hot path:
//! decoding the shares miners submit, and encoding the replies and the jobs the pool
//! sends. Prints nanoseconds per message for both and their ratio, measured in one run.
//!
//! `cargo bench --manifest-path tests/sv2-reference/Cargo.toml`

use std::hint::black_box;
use std::time::Instant;

use otedama_shared::sv2::messages as ours;
use otedama_shared::sv2::{Decoded, FrameHeader, Message};

const ITERATIONS: u32 = 5_000_000;
const REPEATS: u32 = 5;

/// Best of `REPEATS` runs of `ITERATIONS` calls, in ns per call.
fn best_ns(mut step: impl FnMut()) -> f64 {
    (0..REPEATS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ITERATIONS {
                step();
            }
            started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(what: &str, otedama: f64, reference: f64) {
    println!(
        "{what:<44} otedama {otedama:>6.1} ns   reference {reference:>6.1} ns   reference/otedama {:.2}x",
        reference / otedama
    );
}

fn main() {
    let submit = Message::SubmitSharesStandard(ours::SubmitSharesStandard {
        channel_id: 7,
        sequence_number: 1234,
        job_id: 99,
        nonce: 0xdead_beef,
        ntime: 1_700_000_000,
        version: 0x2000_0000,
    });
    let frame = submit.to_frame();
    let header_bytes: [u8; 6] = frame[..6].try_into().unwrap();
    let payload = frame[6..].to_vec();

    let ours_decode = best_ns(|| {
        let header = FrameHeader::parse(black_box(&header_bytes));
        match Message::decode(&header, black_box(&payload)) {
            Ok(Decoded::Message(Message::SubmitSharesStandard(m))) => {
                black_box(m.nonce);
            }
            _ => unreachable!(),
        }
    });
    let mut reference_payload = payload.clone();
    let reference_decode = best_ns(|| {
        let header = framing_sv2::header::Header::from_bytes(black_box(&header_bytes)).unwrap();
        black_box(header.msg_type());
        let m: mining_sv2::SubmitSharesStandard =
            binary_sv2::from_bytes(black_box(reference_payload.as_mut_slice())).unwrap();
        black_box(m.nonce);
    });
    report(
        "decode SubmitSharesStandard (header + body)",
        ours_decode,
        reference_decode,
    );

    let success = Message::SubmitSharesSuccess(ours::SubmitSharesSuccess {
        channel_id: 7,
        last_sequence_number: 1234,
        new_submits_accepted_count: 1,
        new_shares_sum: 4096,
    });
    let mut out = Vec::with_capacity(64);
    let ours_encode = best_ns(|| {
        out.clear();
        black_box(&success).encode(&mut out);
        black_box(out.len());
    });
    let mut dst = [0u8; 64];
    let reference_encode = best_ns(|| {
        let m = mining_sv2::SubmitSharesSuccess {
            channel_id: 7,
            last_sequence_number: black_box(1234),
            new_submits_accepted_count: 1,
            new_shares_sum: 4096,
        };
        let written = binary_sv2::to_writer(m, &mut dst[6..]).unwrap();
        dst[..6].copy_from_slice(&[0x00, 0x80, 0x1c, written as u8, 0, 0]);
        black_box(written);
    });
    report(
        "encode SubmitShares.Success (frame)",
        ours_encode,
        reference_encode,
    );

    let root = [0x5a; 32];
    let job = Message::NewMiningJob(ours::NewMiningJob {
        channel_id: 7,
        job_id: 100,
        min_ntime: Some(1_700_000_000),
        version: 0x2000_0000,
        merkle_root: root,
    });
    let ours_job = best_ns(|| {
        out.clear();
        black_box(&job).encode(&mut out);
        black_box(out.len());
    });
    let reference_job = best_ns(|| {
        let m = mining_sv2::NewMiningJob {
            channel_id: 7,
            job_id: black_box(100),
            min_ntime: binary_sv2::Sv2Option::new(Some(1_700_000_000)),
            version: 0x2000_0000,
            merkle_root: (&root).into(),
        };
        let written = binary_sv2::to_writer(m, &mut dst[6..]).unwrap();
        dst[..6].copy_from_slice(&[0x00, 0x80, 0x15, written as u8, 0, 0]);
        black_box(written);
    });
    report("encode NewMiningJob (frame)", ours_job, reference_job);
}
