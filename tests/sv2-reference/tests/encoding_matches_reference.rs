//! Random messages, built field by field (by name) in both Otedama's types and the
//! Reference Implementation's, must encode to the same bytes; and the reference decoder
//! must read Otedama's bytes back to the same message. A failure prints its seed.

#[path = "../../../shared/tests/common/sv2_random.rs"]
mod sv2_random;

use rand::rngs::StdRng;
use rand::SeedableRng;

use binary_sv2::{
    Seq0255, Seq064K, Sv2Option, B032 as RefB032, B064K as RefB064K, U256 as RefU256,
};
use otedama_shared::sv2::messages::Message;

fn rs(text: &str) -> binary_sv2::Str0255<'_> {
    text.try_into().expect("at most 255 bytes")
}

fn ru256(bytes: &[u8; 32]) -> RefU256<'_> {
    bytes.into()
}

fn rb032(bytes: &[u8]) -> RefB032<'_> {
    RefB032::new(bytes).expect("at most 32 bytes")
}

fn rb064k(bytes: &[u8]) -> RefB064K<'_> {
    RefB064K::new(bytes).expect("at most 64K")
}

/// The same message as the reference crates build it, encoded by them.
fn reference_payload(message: &Message<'_>) -> Vec<u8> {
    use binary_sv2::to_bytes;
    use common_messages_sv2 as common;
    use mining_sv2 as mining;
    let encoded = match message {
        Message::SetupConnection(m) => to_bytes(common::SetupConnection {
            protocol: match m.protocol {
                0 => common::Protocol::MiningProtocol,
                1 => common::Protocol::JobDeclarationProtocol,
                _ => common::Protocol::TemplateDistributionProtocol,
            },
            min_version: m.min_version,
            max_version: m.max_version,
            flags: m.flags,
            endpoint_host: rs(m.endpoint_host.as_str()),
            endpoint_port: m.endpoint_port,
            vendor: rs(m.vendor.as_str()),
            hardware_version: rs(m.hardware_version.as_str()),
            firmware: rs(m.firmware.as_str()),
            device_id: rs(m.device_id.as_str()),
        }),
        Message::SetupConnectionSuccess(m) => to_bytes(common::SetupConnectionSuccess {
            used_version: m.used_version,
            flags: m.flags,
        }),
        Message::SetupConnectionError(m) => to_bytes(common::SetupConnectionError {
            flags: m.flags,
            error_code: rs(m.error_code.as_str()),
        }),
        Message::ChannelEndpointChanged(m) => to_bytes(common::ChannelEndpointChanged {
            channel_id: m.channel_id,
        }),
        Message::Reconnect(m) => to_bytes(common::Reconnect {
            new_host: rs(m.new_host.as_str()),
            new_port: m.new_port,
        }),
        Message::OpenStandardMiningChannel(m) => to_bytes(mining::OpenStandardMiningChannel {
            request_id: m.request_id.into(),
            user_identity: rs(m.user_identity.as_str()),
            nominal_hash_rate: m.nominal_hash_rate,
            max_target: ru256(&m.max_target),
        }),
        Message::OpenStandardMiningChannelSuccess(m) => {
            to_bytes(mining::OpenStandardMiningChannelSuccess {
                request_id: m.request_id.into(),
                channel_id: m.channel_id,
                target: ru256(&m.target),
                extranonce_prefix: rb032(m.extranonce_prefix.as_bytes()),
                group_channel_id: m.group_channel_id,
            })
        }
        Message::OpenMiningChannelError(m) => to_bytes(mining::OpenMiningChannelError {
            request_id: m.request_id,
            error_code: rs(m.error_code.as_str()),
        }),
        Message::OpenExtendedMiningChannel(m) => to_bytes(mining::OpenExtendedMiningChannel {
            request_id: m.request_id,
            user_identity: rs(m.user_identity.as_str()),
            nominal_hash_rate: m.nominal_hash_rate,
            max_target: ru256(&m.max_target),
            min_extranonce_size: m.min_extranonce_size,
        }),
        Message::OpenExtendedMiningChannelSuccess(m) => {
            to_bytes(mining::OpenExtendedMiningChannelSuccess {
                request_id: m.request_id,
                channel_id: m.channel_id,
                target: ru256(&m.target),
                extranonce_size: m.extranonce_size,
                extranonce_prefix: rb032(m.extranonce_prefix.as_bytes()),
                group_channel_id: m.group_channel_id,
            })
        }
        Message::NewMiningJob(m) => to_bytes(mining::NewMiningJob {
            channel_id: m.channel_id,
            job_id: m.job_id,
            min_ntime: Sv2Option::new(m.min_ntime),
            version: m.version,
            merkle_root: ru256(&m.merkle_root),
        }),
        Message::UpdateChannel(m) => to_bytes(mining::UpdateChannel {
            channel_id: m.channel_id,
            nominal_hash_rate: m.nominal_hash_rate,
            maximum_target: ru256(&m.maximum_target),
        }),
        Message::UpdateChannelError(m) => to_bytes(mining::UpdateChannelError {
            channel_id: m.channel_id,
            error_code: rs(m.error_code.as_str()),
        }),
        Message::CloseChannel(m) => to_bytes(mining::CloseChannel {
            channel_id: m.channel_id,
            reason_code: rs(m.reason_code.as_str()),
        }),
        Message::SetExtranoncePrefix(m) => to_bytes(mining::SetExtranoncePrefix {
            channel_id: m.channel_id,
            extranonce_prefix: rb032(m.extranonce_prefix.as_bytes()),
        }),
        Message::SubmitSharesStandard(m) => to_bytes(mining::SubmitSharesStandard {
            channel_id: m.channel_id,
            sequence_number: m.sequence_number,
            job_id: m.job_id,
            nonce: m.nonce,
            ntime: m.ntime,
            version: m.version,
        }),
        Message::SubmitSharesExtended(m) => to_bytes(mining::SubmitSharesExtended {
            channel_id: m.channel_id,
            sequence_number: m.sequence_number,
            job_id: m.job_id,
            nonce: m.nonce,
            ntime: m.ntime,
            version: m.version,
            extranonce: rb032(m.extranonce.as_bytes()),
        }),
        Message::SubmitSharesSuccess(m) => to_bytes(mining::SubmitSharesSuccess {
            channel_id: m.channel_id,
            last_sequence_number: m.last_sequence_number,
            new_submits_accepted_count: m.new_submits_accepted_count,
            new_shares_sum: m.new_shares_sum,
        }),
        Message::SubmitSharesError(m) => to_bytes(mining::SubmitSharesError {
            channel_id: m.channel_id,
            sequence_number: m.sequence_number,
            error_code: rs(m.error_code.as_str()),
        }),
        Message::NewExtendedMiningJob(m) => {
            let path: Vec<RefU256<'_>> = m
                .merkle_path
                .as_bytes()
                .chunks_exact(32)
                .map(|c| ru256(c.try_into().unwrap()))
                .collect();
            to_bytes(mining::NewExtendedMiningJob {
                channel_id: m.channel_id,
                job_id: m.job_id,
                min_ntime: Sv2Option::new(m.min_ntime),
                version: m.version,
                version_rolling_allowed: m.version_rolling_allowed,
                merkle_path: Seq0255::new(path).unwrap(),
                coinbase_tx_prefix: rb064k(m.coinbase_tx_prefix.as_bytes()),
                coinbase_tx_suffix: rb064k(m.coinbase_tx_suffix.as_bytes()),
            })
        }
        Message::SetNewPrevHash(m) => to_bytes(mining::SetNewPrevHash {
            channel_id: m.channel_id,
            job_id: m.job_id,
            prev_hash: ru256(&m.prev_hash),
            min_ntime: m.min_ntime,
            nbits: m.nbits,
        }),
        Message::SetTarget(m) => to_bytes(mining::SetTarget {
            channel_id: m.channel_id,
            maximum_target: ru256(&m.maximum_target),
        }),
        Message::SetGroupChannel(m) => to_bytes(mining::SetGroupChannel {
            group_channel_id: m.group_channel_id,
            channel_ids: Seq064K::new(m.channel_ids.iter().collect()).unwrap(),
        }),
    };
    encoded.expect("the reference crates encode it")
}

/// Decodes `payload` with the reference crates and encodes it again with them.
fn reference_round_trip(message: &Message<'_>, payload: &[u8]) -> Vec<u8> {
    use binary_sv2::{from_bytes, to_bytes};
    use common_messages_sv2 as common;
    use mining_sv2 as mining;
    let mut bytes = payload.to_vec();
    let data = bytes.as_mut_slice();
    macro_rules! again {
        ($ty:ty) => {
            to_bytes(from_bytes::<$ty>(data).expect("the reference decodes our bytes"))
        };
    }
    match message {
        Message::SetupConnection(_) => again!(common::SetupConnection),
        Message::SetupConnectionSuccess(_) => again!(common::SetupConnectionSuccess),
        Message::SetupConnectionError(_) => again!(common::SetupConnectionError),
        Message::ChannelEndpointChanged(_) => again!(common::ChannelEndpointChanged),
        Message::Reconnect(_) => again!(common::Reconnect),
        Message::OpenStandardMiningChannel(_) => again!(mining::OpenStandardMiningChannel),
        Message::OpenStandardMiningChannelSuccess(_) => {
            again!(mining::OpenStandardMiningChannelSuccess)
        }
        Message::OpenMiningChannelError(_) => again!(mining::OpenMiningChannelError),
        Message::OpenExtendedMiningChannel(_) => again!(mining::OpenExtendedMiningChannel),
        Message::OpenExtendedMiningChannelSuccess(_) => {
            again!(mining::OpenExtendedMiningChannelSuccess)
        }
        Message::NewMiningJob(_) => again!(mining::NewMiningJob),
        Message::UpdateChannel(_) => again!(mining::UpdateChannel),
        Message::UpdateChannelError(_) => again!(mining::UpdateChannelError),
        Message::CloseChannel(_) => again!(mining::CloseChannel),
        Message::SetExtranoncePrefix(_) => again!(mining::SetExtranoncePrefix),
        Message::SubmitSharesStandard(_) => again!(mining::SubmitSharesStandard),
        Message::SubmitSharesExtended(_) => again!(mining::SubmitSharesExtended),
        Message::SubmitSharesSuccess(_) => again!(mining::SubmitSharesSuccess),
        Message::SubmitSharesError(_) => again!(mining::SubmitSharesError),
        Message::NewExtendedMiningJob(_) => again!(mining::NewExtendedMiningJob),
        Message::SetNewPrevHash(_) => again!(mining::SetNewPrevHash),
        Message::SetTarget(_) => again!(mining::SetTarget),
        Message::SetGroupChannel(_) => again!(mining::SetGroupChannel),
    }
    .expect("the reference re-encodes")
}

#[test]
fn every_message_encodes_as_the_reference_does_and_decodes_there() {
    let seed = std::env::var("OTEDAMA_SV2_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0dd5);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..3_000 {
        let message = sv2_random::random_message(&mut rng);
        seen.insert(message.name());
        let frame = message.to_frame();
        let payload = &frame[6..];
        assert_eq!(
            payload,
            reference_payload(&message).as_slice(),
            "seed {seed} round {round}: {} differs from the reference encoding",
            message.name()
        );
        assert_eq!(
            payload,
            reference_round_trip(&message, payload).as_slice(),
            "seed {seed} round {round}: {} does not survive the reference decoder",
            message.name()
        );
    }
    assert_eq!(seen.len(), 23, "every message type was tried");
}
