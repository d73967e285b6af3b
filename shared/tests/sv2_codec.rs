//! The SV2 codec against byte vectors written from the specification's field tables (one
//! hex piece per field, little-endian by hand), a seeded round-trip property test over
//! every message, and the edges of every bounded type and of the frame limit.

#[path = "common/sv2_random.rs"]
mod sv2_random;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use otedama_shared::sv2::messages::*;
use otedama_shared::sv2::wire::{Seq0255U256, Seq064KU32, Str0255, B032, B064K};
use otedama_shared::sv2::{DecodeError, Decoded, FrameDecoder, FrameError, FrameHeader};

/// Concatenates hex pieces, one per field.
fn bytes(pieces: &[&str]) -> Vec<u8> {
    hex::decode(pieces.concat()).expect("valid hex in the test")
}

fn s(text: &str) -> Str0255<'_> {
    Str0255::new(text).unwrap()
}

fn u256(byte: u8) -> [u8; 32] {
    [byte; 32]
}

/// Decodes a whole frame (header and payload) with a fresh decoder.
fn decode_frame(frame: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let header = FrameHeader::parse(frame[..6].try_into().unwrap());
    assert_eq!(header.msg_length as usize, frame.len() - 6, "frame length");
    Message::decode(&header, &frame[6..])
}

fn vectors() -> Vec<(Message<'static>, Vec<u8>)> {
    let aa = "aa".repeat(32);
    let bb = "bb".repeat(32);
    vec![
        (
            Message::SetupConnection(SetupConnection {
                protocol: 0,
                min_version: 2,
                max_version: 2,
                flags: 0x0000_0006,
                endpoint_host: s("pool.example"),
                endpoint_port: 3336,
                vendor: s("otedama"),
                hardware_version: s("cpu"),
                firmware: s("0.1"),
                device_id: s(""),
            }),
            bytes(&[
                "0000",
                "00",
                "290000", // header: ext 0, type 0x00, 47 bytes
                "00",
                "0200",
                "0200",
                "06000000",
                "0c",
                "706f6f6c2e6578616d706c65",
                "080d",
                "07",
                "6f746564616d61",
                "03",
                "637075",
                "03",
                "302e31",
                "00",
            ]),
        ),
        (
            Message::SetupConnectionSuccess(SetupConnectionSuccess {
                used_version: 2,
                flags: 1,
            }),
            bytes(&["0000", "01", "060000", "0200", "01000000"]),
        ),
        (
            Message::SetupConnectionError(SetupConnectionError {
                flags: 0,
                error_code: s("unsupported-protocol"),
            }),
            bytes(&[
                "0000",
                "02",
                "190000",
                "00000000",
                "14",
                "756e737570706f727465642d70726f746f636f6c",
            ]),
        ),
        (
            Message::ChannelEndpointChanged(ChannelEndpointChanged { channel_id: 7 }),
            bytes(&["0080", "03", "040000", "07000000"]),
        ),
        (
            Message::Reconnect(Reconnect {
                new_host: s("h"),
                new_port: 0x0d05,
            }),
            bytes(&["0000", "04", "040000", "01", "68", "050d"]),
        ),
        (
            Message::OpenStandardMiningChannel(OpenStandardMiningChannel {
                request_id: 1,
                user_identity: s("ab.c"),
                nominal_hash_rate: 1.0,
                max_target: u256(0xaa),
            }),
            bytes(&[
                "0000", "10", "2d0000", "01000000", "04", "61622e63", "0000803f", &aa,
            ]),
        ),
        (
            Message::OpenStandardMiningChannelSuccess(OpenStandardMiningChannelSuccess {
                request_id: 1,
                channel_id: 2,
                target: u256(0xbb),
                extranonce_prefix: B032::new(&[1, 2, 3, 4]).unwrap(),
                group_channel_id: 3,
            }),
            bytes(&[
                "0000", "11", "310000", "01000000", "02000000", &bb, "04", "01020304", "03000000",
            ]),
        ),
        (
            Message::OpenMiningChannelError(OpenMiningChannelError {
                request_id: 9,
                error_code: s("unknown-user"),
            }),
            bytes(&[
                "0000",
                "12",
                "110000",
                "09000000",
                "0c",
                "756e6b6e6f776e2d75736572",
            ]),
        ),
        (
            Message::OpenExtendedMiningChannel(OpenExtendedMiningChannel {
                request_id: 2,
                user_identity: s("x"),
                nominal_hash_rate: 2.0,
                max_target: u256(0xaa),
                min_extranonce_size: 8,
            }),
            bytes(&[
                "0000", "13", "2c0000", "02000000", "01", "78", "00000040", &aa, "0800",
            ]),
        ),
        (
            Message::OpenExtendedMiningChannelSuccess(OpenExtendedMiningChannelSuccess {
                request_id: 2,
                channel_id: 5,
                target: u256(0xbb),
                extranonce_size: 8,
                extranonce_prefix: B032::new(&[0xfe]).unwrap(),
                group_channel_id: 0,
            }),
            bytes(&[
                "0000", "14", "300000", "02000000", "05000000", &bb, "0800", "01", "fe", "00000000",
            ]),
        ),
        (
            Message::NewMiningJob(NewMiningJob {
                channel_id: 5,
                job_id: 6,
                min_ntime: Some(0x6500_0000),
                version: 0x2000_0000,
                merkle_root: u256(0xaa),
            }),
            bytes(&[
                "0080", "15", "310000", "05000000", "06000000", "01", "00000065", "00000020", &aa,
            ]),
        ),
        (
            Message::UpdateChannel(UpdateChannel {
                channel_id: 5,
                nominal_hash_rate: 0.5,
                maximum_target: u256(0xbb),
            }),
            bytes(&["0080", "16", "280000", "05000000", "0000003f", &bb]),
        ),
        (
            Message::UpdateChannelError(UpdateChannelError {
                channel_id: 5,
                error_code: s("e"),
            }),
            bytes(&["0080", "17", "060000", "05000000", "01", "65"]),
        ),
        (
            Message::CloseChannel(CloseChannel {
                channel_id: 5,
                reason_code: s(""),
            }),
            bytes(&["0080", "18", "050000", "05000000", "00"]),
        ),
        (
            Message::SetExtranoncePrefix(SetExtranoncePrefix {
                channel_id: 5,
                extranonce_prefix: B032::new(&[0xab, 0xcd]).unwrap(),
            }),
            bytes(&["0080", "19", "070000", "05000000", "02", "abcd"]),
        ),
        (
            Message::SubmitSharesStandard(SubmitSharesStandard {
                channel_id: 1,
                sequence_number: 2,
                job_id: 3,
                nonce: 0xdead_beef,
                ntime: 0x5f5e_1000,
                version: 0x2000_0000,
            }),
            bytes(&[
                "0080", "1a", "180000", "01000000", "02000000", "03000000", "efbeadde", "00105e5f",
                "00000020",
            ]),
        ),
        (
            Message::SubmitSharesExtended(SubmitSharesExtended {
                channel_id: 1,
                sequence_number: 2,
                job_id: 3,
                nonce: 4,
                ntime: 5,
                version: 6,
                extranonce: B032::new(&[9; 8]).unwrap(),
            }),
            bytes(&[
                "0080",
                "1b",
                "210000",
                "01000000",
                "02000000",
                "03000000",
                "04000000",
                "05000000",
                "06000000",
                "08",
                "0909090909090909",
            ]),
        ),
        (
            Message::SubmitSharesSuccess(SubmitSharesSuccess {
                channel_id: 1,
                last_sequence_number: 10,
                new_submits_accepted_count: 3,
                new_shares_sum: 0x1_0000_0000,
            }),
            bytes(&[
                "0080",
                "1c",
                "140000",
                "01000000",
                "0a000000",
                "03000000",
                "0000000001000000",
            ]),
        ),
        (
            Message::SubmitSharesError(SubmitSharesError {
                channel_id: 1,
                sequence_number: 11,
                error_code: s("stale-share"),
            }),
            bytes(&[
                "0080",
                "1d",
                "140000",
                "01000000",
                "0b000000",
                "0b",
                "7374616c652d7368617265",
            ]),
        ),
        (
            Message::NewExtendedMiningJob(NewExtendedMiningJob {
                channel_id: 1,
                job_id: 2,
                min_ntime: None,
                version: 0x2000_0000,
                version_rolling_allowed: true,
                merkle_path: Seq0255U256::from_bytes(&[0xcc; 64]).unwrap(),
                coinbase_tx_prefix: B064K::new(&[1, 2]).unwrap(),
                coinbase_tx_suffix: B064K::new(&[]).unwrap(),
            }),
            bytes(&[
                "0080",
                "1f",
                "550000",
                "01000000",
                "02000000",
                "00",
                "00000020",
                "01",
                "02",
                &"cc".repeat(64),
                "0200",
                "0102",
                "0000",
            ]),
        ),
        (
            Message::SetNewPrevHash(SetNewPrevHash {
                channel_id: 1,
                job_id: 2,
                prev_hash: u256(0xaa),
                min_ntime: 3,
                nbits: 0x1d00_ffff,
            }),
            bytes(&[
                "0080", "20", "300000", "01000000", "02000000", &aa, "03000000", "ffff001d",
            ]),
        ),
        (
            Message::SetTarget(SetTarget {
                channel_id: 1,
                maximum_target: u256(0xbb),
            }),
            bytes(&["0080", "21", "240000", "01000000", &bb]),
        ),
        (
            Message::SetGroupChannel(SetGroupChannel {
                group_channel_id: 9,
                channel_ids: Seq064KU32::from_bytes(&[1, 0, 0, 0, 2, 0, 0, 0]).unwrap(),
            }),
            bytes(&[
                "0000", "25", "0e0000", "09000000", "0200", "01000000", "02000000",
            ]),
        ),
    ]
}

#[test]
fn every_message_matches_its_byte_vector_both_ways() {
    for (message, expected) in vectors() {
        assert_eq!(
            hex::encode(message.to_frame()),
            hex::encode(&expected),
            "{} encodes as the spec lays it out",
            message.name()
        );
        assert_eq!(
            decode_frame(&expected),
            Ok(Decoded::Message(message.clone())),
            "{} decodes",
            message.name()
        );
    }
}

#[test]
fn a_bool_reads_only_its_lowest_bit() {
    let (message, mut frame) = vectors()
        .into_iter()
        .find(|(m, _)| m.name() == "NewExtendedMiningJob")
        .unwrap();
    // version_rolling_allowed sits after 4 + 4 + 1 + 4 payload bytes.
    frame[6 + 13] = 0xfe;
    let Ok(Decoded::Message(Message::NewExtendedMiningJob(job))) = decode_frame(&frame) else {
        panic!("decodes")
    };
    assert!(
        !job.version_rolling_allowed,
        "0xfe is false: only the LSB counts"
    );
    frame[6 + 13] = 0x03;
    let Ok(Decoded::Message(Message::NewExtendedMiningJob(job))) = decode_frame(&frame) else {
        panic!("decodes")
    };
    assert!(job.version_rolling_allowed);
    assert_eq!(message.name(), "NewExtendedMiningJob");
}

#[test]
fn every_truncation_and_any_trailing_byte_is_an_error_not_a_panic() {
    for (message, frame) in vectors() {
        let header = FrameHeader::parse(frame[..6].try_into().unwrap());
        let payload = &frame[6..];
        for cut in 0..payload.len() {
            assert!(
                matches!(
                    Message::decode(&header, &payload[..cut]),
                    Err(DecodeError::Truncated { .. })
                ),
                "{} cut at {cut}",
                message.name()
            );
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert_eq!(
            Message::decode(&header, &longer),
            Err(DecodeError::TrailingBytes { trailing: 1 }),
            "{}",
            message.name()
        );
    }
}

#[test]
fn bounded_types_stop_at_their_maximum() {
    let long = "x".repeat(256);
    assert!(Str0255::new(&long[..255]).is_ok());
    assert_eq!(Str0255::new(&long).unwrap_err().max, 255);
    assert!(B032::new(&[0; 32]).is_ok());
    assert!(B032::new(&[0; 33]).is_err());
    let big = vec![0u8; 65_536];
    assert!(B064K::new(&big[..65_535]).is_ok());
    assert!(B064K::new(&big).is_err());
    assert!(Seq0255U256::from_bytes(&vec![0; 32 * 255]).is_ok());
    assert!(Seq0255U256::from_bytes(&vec![0; 32 * 256]).is_err());

    // A peer that claims a longer field than the type allows is refused, not trusted.
    let header = FrameHeader {
        extension_type: 0,
        channel_msg: true,
        msg_type: 0x19,
        msg_length: 5 + 33,
    };
    let mut payload = vec![5, 0, 0, 0, 33];
    payload.extend([0u8; 33]);
    assert_eq!(
        Message::decode(&header, &payload),
        Err(DecodeError::TooLong {
            field: "extranonce_prefix",
            length: 33,
            max: 32
        })
    );
    // OPTION holds zero or one value.
    let (_, mut frame) = vectors()
        .into_iter()
        .find(|(m, _)| m.name() == "NewMiningJob")
        .unwrap();
    frame[6 + 8] = 2;
    assert!(matches!(
        decode_frame(&frame),
        Err(DecodeError::BadOption { count: 2, .. })
    ));
    // Strings are UTF-8.
    let (_, mut frame) = vectors()
        .into_iter()
        .find(|(m, _)| m.name() == "Reconnect")
        .unwrap();
    frame[7] = 0xff;
    assert!(matches!(
        decode_frame(&frame),
        Err(DecodeError::NotUtf8 { field: "new_host" })
    ));
}

#[test]
fn unknown_extensions_are_ignored_and_unknown_core_types_refused() {
    let mut frame = Vec::new();
    FrameHeader {
        extension_type: 0x4001,
        channel_msg: true,
        msg_type: 0x42,
        msg_length: 4,
    }
    .write(&mut frame);
    frame.extend([1, 0, 0, 0]);
    assert_eq!(
        decode_frame(&frame),
        Ok(Decoded::UnknownExtension {
            extension_type: 0x4001,
            msg_type: 0x42
        })
    );
    let header = FrameHeader {
        extension_type: 0,
        channel_msg: false,
        msg_type: 0x1e,
        msg_length: 0,
    };
    assert_eq!(
        Message::decode(&header, &[]),
        Err(DecodeError::UnknownMessageType { msg_type: 0x1e })
    );
    // A channel message without its channel bit is a protocol error.
    let (_, mut frame) = vectors()
        .into_iter()
        .find(|(m, _)| m.name() == "SubmitSharesStandard")
        .unwrap();
    frame[1] = 0x00;
    assert!(matches!(
        decode_frame(&frame),
        Err(DecodeError::ChannelBit {
            msg_type: 0x1a,
            found: false,
            expected: true
        })
    ));
}

#[test]
fn the_frame_decoder_cuts_any_chunking_into_the_same_frames() {
    let frames: Vec<Vec<u8>> = vectors().into_iter().map(|(_, f)| f).collect();
    let stream: Vec<u8> = frames.concat();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..50 {
        let mut decoder = FrameDecoder::new(1 << 16);
        let mut seen = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let chunk = rng.gen_range(1..=64).min(stream.len() - at);
            decoder.feed(&stream[at..at + chunk]);
            at += chunk;
            while let Some(frame) = decoder.next_frame().unwrap() {
                let mut whole = Vec::new();
                frame.header.write(&mut whole);
                whole.extend_from_slice(frame.payload);
                seen.push(whole);
            }
        }
        assert_eq!(seen, frames);
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn the_frame_decoder_refuses_a_frame_over_its_limit_from_the_header_alone() {
    // The pool's own limit (the data plane's decoders use it), the devices' (the miner's
    // and the load generator's), then a small one.
    for limit in [
        otedama_shared::limits::SV2_PAYLOAD_BYTES_MAX,
        otedama_shared::limits::SV2_DEVICE_PAYLOAD_BYTES_MAX,
        100,
    ] {
        frame_limit_holds_at(limit);
    }
    // The U24 maximum is representable and the decoder's own cap never exceeds it.
    let mut largest = FrameDecoder::new(usize::MAX);
    largest.feed(&frame_header(0xff_ffff));
    assert_eq!(largest.next_frame(), Ok(None));
}

fn frame_header(length: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    FrameHeader {
        extension_type: 0,
        channel_msg: false,
        msg_type: 0,
        msg_length: length,
    }
    .write(&mut bytes);
    bytes
}

fn frame_limit_holds_at(limit: usize) {
    let header = frame_header;
    let mut at_limit = FrameDecoder::new(limit);
    at_limit.feed(&header(limit as u32));
    assert_eq!(
        at_limit.next_frame(),
        Ok(None),
        "waits for its {limit} bytes"
    );
    at_limit.feed(&vec![0; limit]);
    assert_eq!(at_limit.next_frame().unwrap().unwrap().payload.len(), limit);

    let mut over = FrameDecoder::new(limit);
    over.feed(&header(limit as u32 + 1));
    assert_eq!(
        over.next_frame(),
        Err(FrameError::TooLarge {
            length: limit + 1,
            max: limit
        })
    );
}

#[test]
fn decode_of_encode_is_the_identity_for_random_messages() {
    let seed = std::env::var("OTEDAMA_SV2_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5732);
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..5_000 {
        let message = sv2_random::random_message(&mut rng);
        let frame = message.to_frame();
        match decode_frame(&frame) {
            Ok(Decoded::Message(decoded)) => {
                assert_eq!(decoded, message, "seed {seed} round {round}")
            }
            other => panic!("seed {seed} round {round}: {message:?} decoded as {other:?}"),
        }
    }
}
