//! Random SV2 messages for property tests, shared by `shared/tests/sv2_codec.rs` and the
//! reference-implementation test in `tests/sv2-reference` (both include this file with
//! `#[path]`). Every field takes random values within its type's bounds; the protocol of
//! SetupConnection stays one the specification defines (0..=2), which the reference
//! crates require.

use rand::rngs::StdRng;
use rand::Rng;

use otedama_shared::sv2::messages::*;
use otedama_shared::sv2::wire::{Seq0255U256, Seq064KU32, Str0255, B032, B064K};

/// Random bytes of a random length up to `max`, leaked: the test's messages borrow them
/// for its whole run.
fn random_bytes(rng: &mut StdRng, max: usize) -> &'static [u8] {
    let length = rng.gen_range(0..=max);
    let bytes: Box<[u8]> = (0..length).map(|_| rng.gen()).collect();
    Box::leak(bytes)
}

fn random_str(rng: &mut StdRng) -> Str0255<'static> {
    let length = rng.gen_range(0..=255);
    let text: String = (0..length)
        .map(|_| rng.gen_range(b' '..=b'~') as char)
        .collect();
    Str0255::new(Box::leak(text.into_boxed_str())).unwrap()
}

pub fn random_message(rng: &mut StdRng) -> Message<'static> {
    let u256 = |rng: &mut StdRng| -> [u8; 32] { rng.gen() };
    let option = |rng: &mut StdRng| -> Option<u32> { rng.gen::<bool>().then(|| rng.gen()) };
    match rng.gen_range(0..23) {
        0 => Message::SetupConnection(SetupConnection {
            protocol: rng.gen_range(0..=2),
            min_version: rng.gen(),
            max_version: rng.gen(),
            flags: rng.gen(),
            endpoint_host: random_str(rng),
            endpoint_port: rng.gen(),
            vendor: random_str(rng),
            hardware_version: random_str(rng),
            firmware: random_str(rng),
            device_id: random_str(rng),
        }),
        1 => Message::SetupConnectionSuccess(SetupConnectionSuccess {
            used_version: rng.gen(),
            flags: rng.gen(),
        }),
        2 => Message::SetupConnectionError(SetupConnectionError {
            flags: rng.gen(),
            error_code: random_str(rng),
        }),
        3 => Message::ChannelEndpointChanged(ChannelEndpointChanged {
            channel_id: rng.gen(),
        }),
        4 => Message::Reconnect(Reconnect {
            new_host: random_str(rng),
            new_port: rng.gen(),
        }),
        5 => Message::OpenStandardMiningChannel(OpenStandardMiningChannel {
            request_id: rng.gen(),
            user_identity: random_str(rng),
            nominal_hash_rate: rng.gen(),
            max_target: u256(rng),
        }),
        6 => Message::OpenStandardMiningChannelSuccess(OpenStandardMiningChannelSuccess {
            request_id: rng.gen(),
            channel_id: rng.gen(),
            target: u256(rng),
            extranonce_prefix: B032::new(random_bytes(rng, 32)).unwrap(),
            group_channel_id: rng.gen(),
        }),
        7 => Message::OpenMiningChannelError(OpenMiningChannelError {
            request_id: rng.gen(),
            error_code: random_str(rng),
        }),
        8 => Message::OpenExtendedMiningChannel(OpenExtendedMiningChannel {
            request_id: rng.gen(),
            user_identity: random_str(rng),
            nominal_hash_rate: rng.gen(),
            max_target: u256(rng),
            min_extranonce_size: rng.gen(),
        }),
        9 => Message::OpenExtendedMiningChannelSuccess(OpenExtendedMiningChannelSuccess {
            request_id: rng.gen(),
            channel_id: rng.gen(),
            target: u256(rng),
            extranonce_size: rng.gen(),
            extranonce_prefix: B032::new(random_bytes(rng, 32)).unwrap(),
            group_channel_id: rng.gen(),
        }),
        10 => Message::NewMiningJob(NewMiningJob {
            channel_id: rng.gen(),
            job_id: rng.gen(),
            min_ntime: option(rng),
            version: rng.gen(),
            merkle_root: u256(rng),
        }),
        11 => Message::UpdateChannel(UpdateChannel {
            channel_id: rng.gen(),
            nominal_hash_rate: rng.gen(),
            maximum_target: u256(rng),
        }),
        12 => Message::UpdateChannelError(UpdateChannelError {
            channel_id: rng.gen(),
            error_code: random_str(rng),
        }),
        13 => Message::CloseChannel(CloseChannel {
            channel_id: rng.gen(),
            reason_code: random_str(rng),
        }),
        14 => Message::SetExtranoncePrefix(SetExtranoncePrefix {
            channel_id: rng.gen(),
            extranonce_prefix: B032::new(random_bytes(rng, 32)).unwrap(),
        }),
        15 => Message::SubmitSharesStandard(SubmitSharesStandard {
            channel_id: rng.gen(),
            sequence_number: rng.gen(),
            job_id: rng.gen(),
            nonce: rng.gen(),
            ntime: rng.gen(),
            version: rng.gen(),
        }),
        16 => Message::SubmitSharesExtended(SubmitSharesExtended {
            channel_id: rng.gen(),
            sequence_number: rng.gen(),
            job_id: rng.gen(),
            nonce: rng.gen(),
            ntime: rng.gen(),
            version: rng.gen(),
            extranonce: B032::new(random_bytes(rng, 32)).unwrap(),
        }),
        17 => Message::SubmitSharesSuccess(SubmitSharesSuccess {
            channel_id: rng.gen(),
            last_sequence_number: rng.gen(),
            new_submits_accepted_count: rng.gen(),
            new_shares_sum: rng.gen(),
        }),
        18 => Message::SubmitSharesError(SubmitSharesError {
            channel_id: rng.gen(),
            sequence_number: rng.gen(),
            error_code: random_str(rng),
        }),
        19 => {
            let branches = rng.gen_range(0..=255usize);
            let path: Box<[u8]> = (0..branches * 32).map(|_| rng.gen()).collect();
            Message::NewExtendedMiningJob(NewExtendedMiningJob {
                channel_id: rng.gen(),
                job_id: rng.gen(),
                min_ntime: option(rng),
                version: rng.gen(),
                version_rolling_allowed: rng.gen(),
                merkle_path: Seq0255U256::from_bytes(Box::leak(path)).unwrap(),
                coinbase_tx_prefix: B064K::new(random_bytes(rng, 2000)).unwrap(),
                coinbase_tx_suffix: B064K::new(random_bytes(rng, 2000)).unwrap(),
            })
        }
        20 => Message::SetNewPrevHash(SetNewPrevHash {
            channel_id: rng.gen(),
            job_id: rng.gen(),
            prev_hash: u256(rng),
            min_ntime: rng.gen(),
            nbits: rng.gen(),
        }),
        21 => Message::SetTarget(SetTarget {
            channel_id: rng.gen(),
            maximum_target: u256(rng),
        }),
        _ => {
            let ids = rng.gen_range(0..=300usize);
            let bytes: Box<[u8]> = (0..ids * 4).map(|_| rng.gen()).collect();
            Message::SetGroupChannel(SetGroupChannel {
                group_channel_id: rng.gen(),
                channel_ids: Seq064KU32::from_bytes(Box::leak(bytes)).unwrap(),
            })
        }
    }
}
