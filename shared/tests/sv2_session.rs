//! Byte-level tests of the Stratum V2 server session: SetupConnection, standard and
//! extended channels, jobs, targets, and every share error code, with shares mined for
//! real at a difficulty where almost every nonce passes. The last test submits one share
//! over V1 and V2 and checks both sessions record the same thing.

use std::sync::Arc;

use bitcoin::hashes::{sha256d, Hash};
use otedama_kernels::{Algorithm, Target};
use otedama_shared::job::JobTemplate;
use otedama_shared::sv2::messages::*;
use otedama_shared::sv2::server::{
    error_code, Context, Outcome, Session, CHANNELS_PER_CONNECTION_MAX,
    CHANNEL_OPENS_PER_CONNECTION_MAX, SETUP_FLAG_REQUIRES_STANDARD_JOBS,
    SETUP_FLAG_REQUIRES_WORK_SELECTION,
};
use otedama_shared::sv2::wire::{Str0255, B032};
use otedama_shared::sv2::{Decoded, FrameDecoder, FrameHeader, Message};
use otedama_shared::vardiff::VardiffConfig;
use otedama_shared::work::FrontEndConfig;
use otedama_shared::{DuplicateFilter, Job, JobBook, Protocol, ShareRecord};

const NOW_S: u64 = 1_700_000_100;
const EASY: f64 = 1e-6;

#[path = "common/job_template.rs"]
mod job_template;
use job_template::template;

fn config(start_difficulty: f64) -> FrontEndConfig {
    FrontEndConfig::plain(Algorithm::Sha256d, start_difficulty, 1e-9)
}

/// A frame the session sent, kept as bytes and decoded on demand.
struct Sent(FrameHeader, Vec<u8>);

impl Sent {
    fn message(&self) -> Message<'_> {
        match Message::decode(&self.0, &self.1).unwrap() {
            Decoded::Message(message) => message,
            other => panic!("{other:?}"),
        }
    }
}

struct Harness {
    session: Session,
    jobs: JobBook,
    duplicates: DuplicateFilter,
    next_prefix: u32,
}

impl Harness {
    fn new(config: FrontEndConfig) -> Self {
        let mut jobs = JobBook::default();
        jobs.insert(Arc::new(Job::new(template(1, true)).unwrap()));
        Harness {
            session: Session::new(config),
            jobs,
            duplicates: DuplicateFilter::default(),
            next_prefix: 0xab00_0001,
        }
    }

    fn send(&mut self, message: Message<'_>) -> (Outcome, Vec<Sent>) {
        self.send_at(message, NOW_S)
    }

    fn send_at(&mut self, message: Message<'_>, now_s: u64) -> (Outcome, Vec<Sent>) {
        let frame = message.to_frame();
        let header = FrameHeader::parse(frame[..6].try_into().unwrap());
        let next_prefix = &mut self.next_prefix;
        let mut allocate = || {
            *next_prefix += 1;
            Some(next_prefix.to_be_bytes().to_vec())
        };
        let mut context = Context {
            now_s,
            jobs: &self.jobs,
            duplicates: &mut self.duplicates,
            allocate_extranonce_prefix: &mut allocate,
        };
        let outcome = self
            .session
            .handle_frame(&header, &frame[6..], &mut context);
        (outcome, self.drain())
    }

    fn drain(&mut self) -> Vec<Sent> {
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.feed(self.session.transmit_pending());
        self.session.transmitted();
        let mut out = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            out.push(Sent(frame.header, frame.payload.to_vec()));
        }
        out
    }

    fn setup(&mut self) {
        let (outcome, out) = self.send(setup_connection(0));
        assert_eq!(outcome, Outcome::Continue);
        assert!(matches!(
            out[0].message(),
            Message::SetupConnectionSuccess(_)
        ));
    }

    fn new_block(&mut self, job_id: u64) -> Vec<Sent> {
        let job = Arc::new(Job::new(template(job_id, true)).unwrap());
        self.jobs.insert(job.clone());
        self.duplicates.retire_unlisted(&self.jobs);
        self.session.handle_new_job(&job, NOW_S);
        self.drain()
    }
}

fn setup_connection(flags: u32) -> Message<'static> {
    Message::SetupConnection(SetupConnection {
        protocol: PROTOCOL_MINING,
        min_version: 2,
        max_version: 2,
        flags,
        endpoint_host: Str0255::new("127.0.0.1").unwrap(),
        endpoint_port: 3336,
        vendor: Str0255::new("test").unwrap(),
        hardware_version: Str0255::new("").unwrap(),
        firmware: Str0255::new("").unwrap(),
        device_id: Str0255::new("").unwrap(),
    })
}

fn open_standard(request_id: u32, user: &str, max_target: [u8; 32]) -> Message<'_> {
    Message::OpenStandardMiningChannel(OpenStandardMiningChannel {
        request_id,
        user_identity: Str0255::new(user).unwrap(),
        nominal_hash_rate: 0.0,
        max_target,
    })
}

fn open_extended(request_id: u32, min_extranonce_size: u16) -> Message<'static> {
    Message::OpenExtendedMiningChannel(OpenExtendedMiningChannel {
        request_id,
        user_identity: Str0255::new("proxy").unwrap(),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
        min_extranonce_size,
    })
}

fn submit_standard(
    channel_id: u32,
    sequence_number: u32,
    job_id: u32,
    nonce: u32,
    version: u32,
) -> Message<'static> {
    Message::SubmitSharesStandard(SubmitSharesStandard {
        channel_id,
        sequence_number,
        job_id,
        nonce,
        ntime: 1_700_000_000,
        version,
    })
}

/// A standard channel as a header-only miner sees it.
struct StandardChannel {
    channel_id: u32,
    extranonce: Vec<u8>,
    job_id: u32,
    merkle_root: [u8; 32],
}

fn open_standard_channel(h: &mut Harness) -> StandardChannel {
    let (outcome, out) = h.send(open_standard(10, "addr.rig", [0xff; 32]));
    assert_eq!(outcome, Outcome::Continue);
    let Message::OpenStandardMiningChannelSuccess(success) = out[0].message() else {
        panic!("{:?}", out[0].message())
    };
    assert_eq!(success.request_id, 10);
    let Message::NewMiningJob(job) = out[1].message() else {
        panic!()
    };
    assert_eq!(
        job.min_ntime, None,
        "the first job waits for SetNewPrevHash"
    );
    let Message::SetNewPrevHash(prev) = out[2].message() else {
        panic!()
    };
    assert_eq!(
        (prev.job_id, prev.prev_hash, prev.nbits),
        (job.job_id, [0x11; 32], 0x207fffff)
    );
    StandardChannel {
        channel_id: success.channel_id,
        extranonce: success.extranonce_prefix.as_bytes().to_vec(),
        job_id: job.job_id,
        merkle_root: job.merkle_root,
    }
}

/// The merkle root computed the textbook way, with the `bitcoin` crate's hashes.
fn reference_merkle_root(template: &JobTemplate, extranonce: &[u8]) -> [u8; 32] {
    let mut coinbase = template.coinbase_prefix.clone();
    coinbase.extend_from_slice(extranonce);
    coinbase.extend_from_slice(&template.coinbase_suffix);
    let mut root = sha256d::Hash::hash(&coinbase).to_byte_array();
    for sibling in &template.merkle_branch {
        let mut pair = root.to_vec();
        pair.extend_from_slice(&sibling.0);
        root = sha256d::Hash::hash(&pair).to_byte_array();
    }
    root
}

fn header(merkle_root: &[u8; 32], version: u32, nonce: u32) -> [u8; 80] {
    let mut header = [0u8; 80];
    header[0..4].copy_from_slice(&version.to_le_bytes());
    header[4..36].copy_from_slice(&[0x11; 32]);
    header[36..68].copy_from_slice(merkle_root);
    header[68..72].copy_from_slice(&1_700_000_000u32.to_le_bytes());
    header[72..76].copy_from_slice(&0x207fffffu32.to_le_bytes());
    header[76..80].copy_from_slice(&nonce.to_le_bytes());
    header
}

/// A nonce whose header meets (or, with `meets` false, misses) the difficulty.
fn mine(merkle_root: &[u8; 32], version: u32, difficulty: f64, meets: bool) -> u32 {
    let target = Target::from_difficulty(Algorithm::Sha256d, difficulty).unwrap();
    (0u32..)
        .find(|nonce| {
            let hash = otedama_kernels::sha256d(&header(merkle_root, version, *nonce));
            target.is_met_by(&hash) == meets
        })
        .unwrap()
}

#[test]
fn setup_connection_refusals_use_the_spec_codes() {
    let mut h = Harness::new(config(EASY));
    let (outcome, _) = h.send(open_standard(1, "a", [0xff; 32]));
    assert_eq!(outcome, Outcome::Close("message before SetupConnection"));

    let mut h = Harness::new(config(EASY));
    let mut setup = setup_connection(0);
    if let Message::SetupConnection(s) = &mut setup {
        s.protocol = 2;
    }
    let (outcome, out) = h.send(setup);
    assert_eq!(outcome, Outcome::Rejected(error_code::UNSUPPORTED_PROTOCOL));
    assert!(
        matches!(out[0].message(), Message::SetupConnectionError(e) if e.error_code.as_str() == "unsupported-protocol")
    );

    let mut setup = setup_connection(0);
    if let Message::SetupConnection(s) = &mut setup {
        (s.min_version, s.max_version) = (3, 4);
    }
    let (outcome, _) = h.send(setup);
    assert_eq!(
        outcome,
        Outcome::Rejected(error_code::PROTOCOL_VERSION_MISMATCH)
    );

    let (outcome, out) = h.send(setup_connection(SETUP_FLAG_REQUIRES_WORK_SELECTION));
    assert_eq!(
        outcome,
        Outcome::Rejected(error_code::UNSUPPORTED_FEATURE_FLAGS)
    );
    let Message::SetupConnectionError(error) = out[0].message() else {
        panic!()
    };
    assert_eq!(error.flags, SETUP_FLAG_REQUIRES_WORK_SELECTION);

    h.setup();
    let (outcome, _) = h.send(setup_connection(0));
    assert_eq!(outcome, Outcome::Close("SetupConnection sent twice"));
}

#[test]
fn standard_channel_gets_a_pool_computed_merkle_root_and_shares_cost_one_header_hash() {
    let mut h = Harness::new(config(EASY));
    h.setup();
    let channel = open_standard_channel(&mut h);
    assert_eq!(channel.extranonce.len(), 8);
    assert_eq!(channel.extranonce[4..], [0, 0, 0, 0]);
    assert_eq!(
        channel.merkle_root,
        reference_merkle_root(&template(1, true), &channel.extranonce)
    );
    let nonce = mine(&channel.merkle_root, 0x2000_0000, EASY, true);
    let (outcome, out) = h.send(submit_standard(
        channel.channel_id,
        5,
        channel.job_id,
        nonce,
        0x2000_0000,
    ));
    assert!(
        out.is_empty(),
        "no acknowledgement before the share is durable"
    );
    let Outcome::ShareAccepted(accepted) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        accepted.record.header,
        header(&channel.merkle_root, 0x2000_0000, nonce)
    );
    assert_eq!(accepted.record.worker, "addr.rig");
    assert_eq!(accepted.record.extranonce1, channel.extranonce[..4]);
    assert_eq!(accepted.record.extranonce2, [0, 0, 0, 0]);
    let block = accepted
        .block
        .as_ref()
        .expect("regtest bits: every share is a block");
    let mut expected_coinbase = template(1, true).coinbase_prefix;
    expected_coinbase.extend_from_slice(&channel.extranonce);
    expected_coinbase.extend_from_slice(&template(1, true).coinbase_suffix);
    assert_eq!(block.coinbase, expected_coinbase);

    // Two acknowledgements in a row fold into one SubmitShares.Success.
    let nonce2 = mine_from(&channel.merkle_root, nonce + 1);
    let (Outcome::ShareAccepted(second), _) = h.send(submit_standard(
        channel.channel_id,
        6,
        channel.job_id,
        nonce2,
        0x2000_0000,
    )) else {
        panic!()
    };
    h.session.handle_share_durable(&accepted, NOW_S);
    h.session.handle_share_durable(&second, NOW_S);
    let out = h.drain();
    assert_eq!(out.len(), 1);
    let Message::SubmitSharesSuccess(success) = out[0].message() else {
        panic!()
    };
    assert_eq!(
        (
            success.channel_id,
            success.last_sequence_number,
            success.new_submits_accepted_count
        ),
        (channel.channel_id, 6, 2)
    );
}

/// The next nonce after `start` that meets `EASY`, or `start` itself.
fn mine_from(merkle_root: &[u8; 32], start: u32) -> u32 {
    let target = Target::from_difficulty(Algorithm::Sha256d, EASY).unwrap();
    (start..)
        .find(|nonce| {
            target.is_met_by(&otedama_kernels::sha256d(&header(
                merkle_root,
                0x2000_0000,
                *nonce,
            )))
        })
        .unwrap()
}

fn error_of(out: &[Sent]) -> String {
    match out[0].message() {
        Message::SubmitSharesError(error) => error.error_code.as_str().to_string(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_share_error_code_as_the_reference_implementation_spells_it() {
    let mut h = Harness::new(config(EASY));
    h.setup();
    let channel = open_standard_channel(&mut h);
    let nonce = mine(&channel.merkle_root, 0x2000_0000, EASY, true);
    let id = channel.channel_id;

    let (_, out) = h.send(submit_standard(
        id + 100,
        1,
        channel.job_id,
        nonce,
        0x2000_0000,
    ));
    assert_eq!(error_of(&out), "invalid-channel-id");

    let (_, out) = h.send(submit_standard(
        id,
        2,
        channel.job_id + 7,
        nonce,
        0x2000_0000,
    ));
    assert_eq!(error_of(&out), "invalid-job-id");

    // Bits outside the BIP320 mask.
    let (_, out) = h.send(submit_standard(id, 3, channel.job_id, nonce, 0x2000_0001));
    assert_eq!(error_of(&out), "version-rolling-not-allowed");

    let (Outcome::ShareAccepted(_), _) =
        h.send(submit_standard(id, 4, channel.job_id, nonce, 0x2000_0000))
    else {
        panic!()
    };
    let (outcome, out) = h.send(submit_standard(id, 5, channel.job_id, nonce, 0x2000_0000));
    assert_eq!(outcome, Outcome::Rejected("duplicate-share"));
    let Message::SubmitSharesError(error) = out[0].message() else {
        panic!()
    };
    assert_eq!((error.channel_id, error.sequence_number), (id, 5));

    // Rolled bits inside the mask are fine (a new header, so no duplicate).
    let rolled = 0x2000_2000;
    let rolled_nonce = {
        let target = Target::from_difficulty(Algorithm::Sha256d, EASY).unwrap();
        (0u32..)
            .find(|n| {
                target.is_met_by(&otedama_kernels::sha256d(&header(
                    &channel.merkle_root,
                    rolled,
                    *n,
                )))
            })
            .unwrap()
    };
    let (outcome, _) = h.send(submit_standard(id, 6, channel.job_id, rolled_nonce, rolled));
    assert!(matches!(outcome, Outcome::ShareAccepted(_)), "{outcome:?}");

    // A new block: the old job's shares are stale.
    let out = h.new_block(2);
    assert!(matches!(out[0].message(), Message::NewExtendedMiningJob(j) if j.min_ntime.is_none()));
    assert!(matches!(out[1].message(), Message::SetNewPrevHash(p) if p.job_id == 2));
    let (_, out) = h.send(submit_standard(id, 7, channel.job_id, nonce, 0x2000_0000));
    assert_eq!(error_of(&out), "stale-share");

    // Too little work for the channel's target.
    let mut h = Harness::new(config(1e6));
    h.setup();
    let channel = open_standard_channel(&mut h);
    let weak = mine(&channel.merkle_root, 0x2000_0000, 1e6, false);
    let (_, out) = h.send(submit_standard(
        channel.channel_id,
        1,
        channel.job_id,
        weak,
        0x2000_0000,
    ));
    assert_eq!(error_of(&out), "difficulty-too-low");
}

#[test]
fn extended_channel_rolls_its_own_extranonce_after_the_pool_prefix() {
    let mut h = Harness::new(config(EASY));
    h.setup();
    let (outcome, out) = h.send(open_extended(3, 5));
    assert_eq!(
        outcome,
        Outcome::Rejected(error_code::MIN_EXTRANONCE_SIZE_TOO_LARGE)
    );
    assert!(
        matches!(out[0].message(), Message::OpenMiningChannelError(e) if e.error_code.as_str() == "min-extranonce-size-too-large")
    );

    let (_, out) = h.send(open_extended(4, 4));
    let Message::OpenExtendedMiningChannelSuccess(success) = out[0].message() else {
        panic!()
    };
    assert_eq!(
        (
            success.extranonce_size,
            success.extranonce_prefix.as_bytes().len()
        ),
        (4, 4)
    );
    let channel_id = success.channel_id;
    let prefix = success.extranonce_prefix.as_bytes().to_vec();
    let Message::NewExtendedMiningJob(job) = out[1].message() else {
        panic!()
    };
    assert!(job.version_rolling_allowed);
    assert_eq!(
        job.coinbase_tx_prefix.as_bytes(),
        template(1, true).coinbase_prefix
    );
    assert_eq!(
        job.coinbase_tx_suffix.as_bytes(),
        template(1, true).coinbase_suffix
    );
    assert_eq!(job.merkle_path.len(), 2);
    let job_id = job.job_id;
    assert!(matches!(out[2].message(), Message::SetNewPrevHash(_)));

    let extranonce = [9, 8, 7, 6];
    let mut full = prefix.clone();
    full.extend_from_slice(&extranonce);
    let root = reference_merkle_root(&template(1, true), &full);
    let nonce = mine(&root, 0x2000_0000, EASY, true);
    let submit = |sequence_number, extranonce: &'static [u8]| {
        Message::SubmitSharesExtended(SubmitSharesExtended {
            channel_id,
            sequence_number,
            job_id,
            nonce,
            ntime: 1_700_000_000,
            version: 0x2000_0000,
            extranonce: B032::new(extranonce).unwrap(),
        })
    };
    let (_, out) = h.send(submit(1, &[9, 8, 7]));
    assert_eq!(error_of(&out), "bad-extranonce-size");
    let (outcome, _) = h.send(submit(2, &[9, 8, 7, 6]));
    let Outcome::ShareAccepted(accepted) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(accepted.record.header, header(&root, 0x2000_0000, nonce));
    assert_eq!(
        accepted.block.unwrap().coinbase[..],
        {
            let mut coinbase = template(1, true).coinbase_prefix;
            coinbase.extend_from_slice(&full);
            coinbase.extend_from_slice(&template(1, true).coinbase_suffix);
            coinbase
        }[..]
    );

    // A standard share on an extended channel names the wrong kind of channel.
    let (_, out) = h.send(submit_standard(channel_id, 3, job_id, nonce, 0x2000_0000));
    assert_eq!(error_of(&out), "invalid-channel-id");

    // A job on the same block is active at once.
    let job = Arc::new(Job::new(template(2, false)).unwrap());
    h.jobs.insert(job.clone());
    h.session.handle_new_job(&job, NOW_S);
    let out = h.drain();
    assert_eq!(out.len(), 1);
    assert!(
        matches!(out[0].message(), Message::NewExtendedMiningJob(j) if j.min_ntime == Some(1_700_000_000))
    );
}

/// Whether the frames are one job for the group, with its SetNewPrevHash.
fn is_group_job(out: &[Sent], group_id: u32) -> bool {
    out.len() == 2
        && matches!(out[0].message(), Message::NewExtendedMiningJob(j) if j.channel_id == group_id)
        && matches!(out[1].message(), Message::SetNewPrevHash(p) if p.channel_id == group_id)
}

#[test]
fn standard_channels_share_one_group_job_unless_the_client_needs_standard_jobs() {
    // A proxy (no REQUIRES_STANDARD_JOBS): its standard channels form one group, and a new
    // block is one NewExtendedMiningJob for all of them.
    let mut h = Harness::new(config(EASY));
    h.setup();
    let mut channels = Vec::new();
    let mut group_id = None;
    for request_id in 0..3 {
        let (_, out) = h.send(open_standard(request_id, "w", [0xff; 32]));
        let Message::OpenStandardMiningChannelSuccess(success) = out[0].message() else {
            panic!()
        };
        assert_ne!(success.group_channel_id, 0);
        assert_eq!(
            *group_id.get_or_insert(success.group_channel_id),
            success.group_channel_id
        );
        assert_ne!(success.channel_id, success.group_channel_id);
        channels.push((
            success.channel_id,
            success.extranonce_prefix.as_bytes().to_vec(),
        ));
    }
    let group_id = group_id.unwrap();
    let out = h.new_block(2);
    assert!(is_group_job(&out, group_id), "{} frames", out.len());
    // Each channel mines the root its prefix gives, and the pool checks it against its own.
    let template = template(2, true);
    for (sequence, (channel_id, prefix)) in channels.iter().enumerate() {
        let root = reference_merkle_root(&template, prefix);
        let nonce = mine(&root, 0x2000_0000, EASY, true);
        let (outcome, _) = h.send(submit_standard(
            *channel_id,
            sequence as u32,
            2,
            nonce,
            0x2000_0000,
        ));
        assert!(matches!(outcome, Outcome::ShareAccepted(_)), "{outcome:?}");
    }

    // A header-only device: each channel gets its own NewMiningJob.
    let mut h = Harness::new(config(EASY));
    let (outcome, _) = h.send(setup_connection(SETUP_FLAG_REQUIRES_STANDARD_JOBS));
    assert_eq!(outcome, Outcome::Continue);
    for request_id in 0..2 {
        let (_, out) = h.send(open_standard(request_id, "w", [0xff; 32]));
        let Message::OpenStandardMiningChannelSuccess(success) = out[0].message() else {
            panic!()
        };
        assert_eq!(success.group_channel_id, 0);
    }
    let out = h.new_block(2);
    let jobs = out
        .iter()
        .filter(|sent| matches!(sent.message(), Message::NewMiningJob(_)))
        .count();
    assert_eq!(jobs, 2);
}

#[test]
fn channels_per_connection_stop_at_the_limit() {
    let mut h = Harness::new(config(EASY));
    h.setup();
    for request in 0..CHANNELS_PER_CONNECTION_MAX as u32 {
        let (outcome, _) = h.send(open_standard(request, "w", [0xff; 32]));
        assert_eq!(outcome, Outcome::Continue);
    }
    let (outcome, _) = h.send(open_standard(999, "w", [0xff; 32]));
    assert_eq!(outcome, Outcome::Rejected("channel-capacity-exhausted"));
    assert_eq!(h.session.channel_count(), CHANNELS_PER_CONNECTION_MAX);
}

/// Issue 15, point 6: closed channels give their extranonce prefix back (so the core can
/// reuse it without ever handing out a held one), and the opens one connection may make
/// over its life stop at `CHANNEL_OPENS_PER_CONNECTION_MAX`.
#[test]
fn closed_channels_release_their_prefix_and_lifetime_opens_stop_at_the_limit() {
    let mut h = Harness::new(config(EASY));
    h.setup();
    let mut held = std::collections::HashSet::new();
    for request in 0..CHANNEL_OPENS_PER_CONNECTION_MAX as u32 {
        let (outcome, out) = h.send(open_standard(request, "w", [0xff; 32]));
        assert_eq!(outcome, Outcome::Continue, "open {request}");
        let Message::OpenStandardMiningChannelSuccess(success) = out[0].message() else {
            panic!()
        };
        let prefix: Vec<u8> = h.session.extranonce_prefixes().next().unwrap().to_vec();
        assert!(held.insert(prefix.clone()), "prefix handed out twice");
        let (outcome, _) = h.send(Message::CloseChannel(CloseChannel {
            channel_id: success.channel_id,
            reason_code: Str0255::new("done").unwrap(),
        }));
        assert_eq!(outcome, Outcome::Continue);
        assert_eq!(h.session.poll_released_extranonce_prefix(), Some(prefix));
        assert_eq!(h.session.poll_released_extranonce_prefix(), None);
        assert_eq!(h.session.channel_count(), 0);
    }
    let (outcome, _) = h.send(open_standard(99_999, "w", [0xff; 32]));
    assert_eq!(outcome, Outcome::Rejected("channel-capacity-exhausted"));
}

#[test]
fn max_target_raises_the_floor_and_vardiff_moves_the_target() {
    let mut vardiff = config(EASY);
    vardiff.vardiff = Some(VardiffConfig {
        difficulty_min: 1e-9,
        ..VardiffConfig::default()
    });
    let mut h = Harness::new(vardiff);
    h.setup();
    // The miner takes nothing easier than difficulty 1e-5.
    let max_target = Target::from_difficulty(Algorithm::Sha256d, 1e-5)
        .unwrap()
        .to_le_bytes();
    let (_, out) = h.send(open_standard(1, "w", max_target));
    let Message::OpenStandardMiningChannelSuccess(success) = out[0].message() else {
        panic!()
    };
    assert!(Target::from_le_bytes(&success.target) <= Target::from_le_bytes(&max_target));
    let channel_id = success.channel_id;
    let Message::NewMiningJob(job) = out[1].message() else {
        panic!()
    };
    let (job_id, root) = (job.job_id, job.merkle_root);
    // A burst of shares one second after the first: vardiff raises the target's difficulty.
    let mut nonce = 0;
    let mut accepted = Vec::new();
    for sequence_number in 0..25 {
        nonce = {
            let target = Target::from_le_bytes(&success.target);
            (nonce..)
                .find(|n| {
                    target.is_met_by(&otedama_kernels::sha256d(&header(&root, 0x2000_0000, *n)))
                })
                .unwrap()
        };
        let (outcome, _) = h.send(submit_standard(
            channel_id,
            sequence_number,
            job_id,
            nonce,
            0x2000_0000,
        ));
        let Outcome::ShareAccepted(share) = outcome else {
            panic!("{outcome:?}")
        };
        accepted.push(share);
        nonce += 1;
    }
    for (i, share) in accepted.iter().enumerate() {
        h.session
            .handle_share_durable(share, NOW_S + (i as u64 > 0) as u64 * 2);
    }
    let out = h.drain();
    let set_target = out
        .iter()
        .find_map(|sent| match sent.message() {
            Message::SetTarget(set) => Some(set.maximum_target),
            _ => None,
        })
        .expect("vardiff sent SetTarget");
    assert!(Target::from_le_bytes(&set_target) < Target::from_le_bytes(&success.target));
}

/// Issue 15, point 1, as the reference implementation's device played it: raise the
/// channel's difficulty with UpdateChannel and keep mining at the old target. During the
/// grace such shares are taken at the old difficulty; afterwards they are refused, and a
/// share that happens to meet the new target is still credited at the difficulty it was
/// required to meet, never more.
#[test]
fn update_channel_cannot_buy_credit_above_the_work() {
    use otedama_shared::limits::DIFFICULTY_CHANGE_GRACE_S;
    let low = 1e-7;
    let mut h = Harness::new(config(low));
    h.setup();
    let channel = open_standard_channel(&mut h);
    let raised = Target::from_difficulty(Algorithm::Sha256d, low * 100.0)
        .unwrap()
        .to_le_bytes();
    let (outcome, out) = h.send(Message::UpdateChannel(UpdateChannel {
        channel_id: channel.channel_id,
        nominal_hash_rate: 0.0,
        maximum_target: raised,
    }));
    assert_eq!(outcome, Outcome::Continue);
    assert!(matches!(out[0].message(), Message::SetTarget(_)));
    let root = &channel.merkle_root;
    let submit = |h: &mut Harness, sequence_number: u32, nonce: u32, now_s: u64| {
        h.send_at(
            submit_standard(
                channel.channel_id,
                sequence_number,
                channel.job_id,
                nonce,
                0x2000_0000,
            ),
            now_s,
        )
        .0
    };
    // In flight: meets the old target only, taken at the old difficulty.
    // A nonce from `start` on whose hash meets the old target and misses the raised one.
    let low_target = Target::from_difficulty(Algorithm::Sha256d, low).unwrap();
    let only_low_from = |start: u32| {
        (start..)
            .find(|n| {
                let hash = otedama_kernels::sha256d(&header(root, 0x2000_0000, *n));
                low_target.is_met_by(&hash) && !Target::from_le_bytes(&raised).is_met_by(&hash)
            })
            .unwrap()
    };
    let only_low = only_low_from(0);
    let Outcome::ShareAccepted(share) = submit(&mut h, 1, only_low, NOW_S) else {
        panic!()
    };
    assert_eq!(share.record.difficulty, low);
    // One that beats the new target inside the grace is still credited at the old one.
    let high = mine(root, 0x2000_0000, low * 100.0, true);
    let Outcome::ShareAccepted(share) = submit(&mut h, 2, high, NOW_S) else {
        panic!()
    };
    assert_eq!(share.record.difficulty, low);
    // After the grace: the old target is refused, the new one credited at the new one.
    let after_s = NOW_S + DIFFICULTY_CHANGE_GRACE_S;
    let another_low = only_low_from(only_low + 1);
    // On regtest such a hash is also a block: then it goes up, but is credited no more.
    let outcome = submit(&mut h, 3, another_low, after_s);
    assert!(
        matches!(
            outcome,
            Outcome::Rejected(error_code::DIFFICULTY_TOO_LOW)
                | Outcome::BlockOnly(_, error_code::DIFFICULTY_TOO_LOW)
        ),
        "{outcome:?}"
    );
    let another_high = (high + 1..)
        .find(|n| {
            let hash = otedama_kernels::sha256d(&header(root, 0x2000_0000, *n));
            Target::from_le_bytes(&raised).is_met_by(&hash)
        })
        .unwrap();
    let Outcome::ShareAccepted(share) = submit(&mut h, 4, another_high, after_s) else {
        panic!()
    };
    assert_eq!(share.record.difficulty, low * 100.0);
}

#[test]
fn one_share_over_v1_and_v2_is_recorded_and_credited_identically() {
    use otedama_shared::sv1;
    let mut h = Harness::new(config(1e-4));
    h.setup();
    let (_, out) = h.send(open_extended(1, 4));
    let Message::OpenExtendedMiningChannelSuccess(success) = out[0].message() else {
        panic!()
    };
    let (channel_id, prefix) = (
        success.channel_id,
        success.extranonce_prefix.as_bytes().to_vec(),
    );
    let Message::NewExtendedMiningJob(job) = out[1].message() else {
        panic!()
    };
    let job_id = job.job_id;
    let extranonce = [1, 2, 3, 4];
    let mut full = prefix.clone();
    full.extend_from_slice(&extranonce);
    let root = reference_merkle_root(&template(1, true), &full);
    let nonce = mine(&root, 0x2000_0000, 1e-4, true);
    let (Outcome::ShareAccepted(v2), _) =
        h.send(Message::SubmitSharesExtended(SubmitSharesExtended {
            channel_id,
            sequence_number: 1,
            job_id,
            nonce,
            ntime: 1_700_000_000,
            version: 0x2000_0000,
            extranonce: B032::new(&extranonce).unwrap(),
        }))
    else {
        panic!()
    };

    let mut v1 = sv1::Session::new(sv1::SessionConfig {
        extranonce1: prefix,
        extranonce2_size: 4,
        front_end: config(1e-4),
    });
    let mut duplicates = DuplicateFilter::default();
    for line in [
        r#"{"id":1,"method":"mining.subscribe","params":[]}"#.to_string(),
        r#"{"id":2,"method":"mining.authorize","params":["proxy","x"]}"#.to_string(),
        format!(
            r#"{{"id":3,"method":"mining.submit","params":["proxy","1","01020304","{:08x}","{:08x}"]}}"#,
            1_700_000_000u32, nonce
        ),
    ] {
        let outcome = v1.handle_line(line.as_bytes(), NOW_S, &h.jobs, &mut duplicates);
        if let sv1::Outcome::ShareAccepted(v1_share) = outcome {
            // The same share, told apart only by the front end it came through.
            assert_eq!(v1_share.record.protocol, Some(Protocol::V1));
            assert_eq!(v2.record.protocol, Some(Protocol::V2));
            let any_front_end = |record: &ShareRecord| ShareRecord {
                protocol: None,
                ..record.clone()
            };
            assert_eq!(any_front_end(&v1_share.record), any_front_end(&v2.record));
            assert_eq!(v1_share.block, v2.block);
            return;
        }
    }
    panic!("V1 did not accept the share V2 accepted");
}

/// Issue 17: a channel that sends no share for `VARDIFF_SILENT_SHARE_INTERVALS` target
/// intervals gets a target one step easier (SetTarget, which covers the jobs it holds),
/// not a second before; the session says when to look again.
#[test]
fn a_silent_channel_gets_an_easier_target() {
    use otedama_shared::vardiff::{VARDIFF_SILENT_SHARE_INTERVALS, VARDIFF_STEP_FACTOR_MAX};
    let mut h = Harness::new(FrontEndConfig {
        vardiff: Some(VardiffConfig {
            share_interval_target_s: 10.0,
            difficulty_min: 1e-9,
            ..VardiffConfig::default()
        }),
        ..config(0.5)
    });
    h.setup();
    let channel = open_standard_channel(&mut h);
    let silent_at = h.session.poll_timeout().expect("a channel is watched");
    assert_eq!(silent_at, NOW_S + VARDIFF_SILENT_SHARE_INTERVALS * 10);
    assert!(!h.session.handle_timeout(silent_at - 1));
    assert!(h.drain().is_empty());
    assert!(h.session.handle_timeout(silent_at));
    let out = h.drain();
    let Message::SetTarget(set) = out[0].message() else {
        panic!("{:?}", out[0].message())
    };
    assert_eq!(set.channel_id, channel.channel_id);
    let easier =
        otedama_shared::work::share_target(Algorithm::Sha256d, 0.5 / VARDIFF_STEP_FACTOR_MAX);
    assert_eq!(set.maximum_target, easier.to_le_bytes());
}

/// `DIFFICULTY_MAX` at its edge, for opening a channel and for updating one: a maximum
/// target whose difficulty is the limit is taken, a harder one is refused with
/// `max-target-out-of-range` (targets this hard are about 2^174 apart, far below f64's
/// resolution, so "one more" is the next representable difficulty up).
#[test]
fn a_max_target_at_the_difficulty_limit_is_taken_and_a_harder_one_refused() {
    use otedama_shared::limits::DIFFICULTY_MAX;
    let at = |difficulty: f64| {
        Target::from_difficulty(Algorithm::Sha256d, difficulty)
            .unwrap()
            .to_le_bytes()
    };
    let edge = at(DIFFICULTY_MAX);
    assert!(Target::from_le_bytes(&edge).to_difficulty(Algorithm::Sha256d) <= DIFFICULTY_MAX);
    let over = at(DIFFICULTY_MAX * (1.0 + 1e-9));

    let mut h = Harness::new(config(1.0));
    h.setup();
    let (outcome, out) = h.send(open_standard(1, "addr.rig", over));
    assert_eq!(outcome, Outcome::Rejected("max-target-out-of-range"));
    assert!(matches!(
        out[0].message(),
        Message::OpenMiningChannelError(_)
    ));
    let (outcome, out) = h.send(open_standard(2, "addr.rig", edge));
    assert_eq!(outcome, Outcome::Continue);
    let Message::OpenStandardMiningChannelSuccess(success) = out[0].message() else {
        panic!("{:?}", out[0].message())
    };
    let channel_id = success.channel_id;

    let update = |maximum_target| {
        Message::UpdateChannel(UpdateChannel {
            channel_id,
            nominal_hash_rate: 0.0,
            maximum_target,
        })
    };
    let (outcome, _) = h.send(update(over));
    assert_eq!(outcome, Outcome::Rejected("max-target-out-of-range"));
    // The channel already mines at the limit: taken, with nothing to change.
    let (outcome, out) = h.send(update(edge));
    assert_eq!(outcome, Outcome::Continue);
    assert!(
        !out.iter()
            .any(|sent| matches!(sent.message(), Message::UpdateChannelError(_))),
        "the update at the limit was refused"
    );
}

/// A scrypt share hashed in a batch whose channel closes meanwhile is not credited, but
/// when it is a block the block still goes up, with the closed channel's coinbase and
/// worker (`Outcome::BlockOnly`); a share that is not a block is only refused.
#[test]
fn a_block_found_as_its_channel_closes_still_goes_up() {
    let scrypt_template = JobTemplate {
        algorithm: otedama_shared::job::AlgorithmName::Scrypt,
        ..template(1, true)
    };
    let block_target = Target::from_compact(scrypt_template.bits).unwrap();
    for (sequence_number, wants_block) in [(1u32, true), (2, false)] {
        let mut h = Harness::new(FrontEndConfig {
            algorithm: Algorithm::Scrypt,
            defer_pow: true,
            ..config(EASY)
        });
        h.jobs = JobBook::default();
        h.jobs
            .insert(Arc::new(Job::new(scrypt_template.clone()).unwrap()));
        h.setup();
        let channel = open_standard_channel(&mut h);
        let version = scrypt_template.version;
        let (nonce, pow) = (0u32..)
            .map(|nonce| {
                let pow = otedama_kernels::scrypt::scrypt_pow(&header(
                    &channel.merkle_root,
                    version,
                    nonce,
                ));
                (nonce, pow)
            })
            .find(|(_, pow)| block_target.is_met_by(pow) == wants_block)
            .unwrap();
        let (outcome, _) = h.send(submit_standard(
            channel.channel_id,
            sequence_number,
            channel.job_id,
            nonce,
            version,
        ));
        let Outcome::NeedsPow(pending) = outcome else {
            panic!("{outcome:?}")
        };
        let (closed, _) = h.send(Message::CloseChannel(CloseChannel {
            channel_id: channel.channel_id,
            reason_code: Str0255::new("bye").unwrap(),
        }));
        assert_eq!(closed, Outcome::Continue);
        let outcome = h
            .session
            .handle_pow(*pending, &pow, NOW_S, &mut h.duplicates);
        let refusal = h.drain();
        assert!(
            matches!(refusal[0].message(), Message::SubmitSharesError(ref e) if e.error_code.as_str() == error_code::INVALID_CHANNEL_ID),
            "the miner hears the share was not taken"
        );
        if !wants_block {
            assert_eq!(outcome, Outcome::Rejected(error_code::INVALID_CHANNEL_ID));
            continue;
        }
        let Outcome::BlockOnly(uncredited, code) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(code, error_code::INVALID_CHANNEL_ID);
        assert_eq!(uncredited.record.difficulty, 0.0);
        let block = uncredited.block;
        let mut coinbase = scrypt_template.coinbase_prefix.clone();
        coinbase.extend_from_slice(&channel.extranonce);
        coinbase.extend_from_slice(&scrypt_template.coinbase_suffix);
        assert_eq!(block.coinbase, coinbase);
        assert_eq!(
            block.header,
            header(&channel.merkle_root, version, nonce).to_vec()
        );
        assert_eq!(block.worker, "addr.rig");
        assert_eq!(block.height, scrypt_template.height);
    }
}

/// A channel is never held above the network's difficulty (`WorkState::network_cap`):
/// opened at a far higher start, its first target is just easier than the network target;
/// when a job on an easier network comes, SetTarget moves it there before the job.
/// Otherwise the miner would not send the blocks whose hashes fall between.
#[test]
fn a_channel_target_never_goes_above_the_network_target() {
    let with_bits = |job_id: u64, bits: u32| {
        let mut job = template(job_id, true);
        job.bits = bits;
        Arc::new(Job::new(job).unwrap())
    };
    // SHA256d difficulty about 16,307, then 1 (bits 0x1d00ffff).
    let first = with_bits(1, 0x1b04_04cb);
    let mut h = Harness::new(config(1e9));
    h.jobs = JobBook::default();
    h.jobs.insert(first.clone());
    h.setup();
    let (_, out) = h.send(open_standard(10, "addr.rig", [0xff; 32]));
    let Message::OpenStandardMiningChannelSuccess(success) = out[0].message() else {
        panic!("{:?}", out[0].message())
    };
    let just_easier = |target: &[u8; 32], job: &Job| {
        let target = Target::from_le_bytes(target);
        let ratio = target.to_difficulty(Algorithm::Sha256d) / job.network_difficulty;
        target >= job.network_target && ratio > 1.0 - 1e-8
    };
    assert!(just_easier(&success.target, &first));
    assert!(out[1..]
        .iter()
        .all(|sent| !matches!(sent.message(), Message::SetTarget(_))));
    let easier = with_bits(2, 0x1d00_ffff);
    h.jobs.insert(easier.clone());
    h.session.handle_new_job(&easier, NOW_S);
    let out = h.drain();
    let Message::SetTarget(set) = out[0].message() else {
        panic!("{:?}", out[0].message())
    };
    assert!(just_easier(&set.maximum_target, &easier));
    // The channel is in a group: its job goes to the group.
    assert!(matches!(out[1].message(), Message::NewExtendedMiningJob(_)));
}

/// A draining pool asks a set-up connection to reconnect to the same place, once; a
/// connection that has not set up yet is not asked (it has not said it mines). The shared
/// client reads the request as one.
#[test]
fn reconnect_is_asked_once_and_only_after_setup() {
    use otedama_shared::sv2::client::{ClientEvent, StandardClient};
    let mut h = Harness::new(config(1.0));
    assert!(!h.session.request_reconnect(), "not before SetupConnection");
    assert!(h.drain().is_empty());
    h.setup();
    open_standard_channel(&mut h);
    assert!(h.session.request_reconnect());
    assert!(!h.session.request_reconnect(), "asked once");
    let out = h.drain();
    assert_eq!(out.len(), 1);
    let Message::Reconnect(reconnect) = out[0].message() else {
        panic!("{:?}", out[0].message())
    };
    assert_eq!((reconnect.new_host.as_str(), reconnect.new_port), ("", 0));
    let mut client = StandardClient::new("addr.rig", 1.0, "127.0.0.1", 3336);
    assert_eq!(
        client.handle_frame(&out[0].0, &out[0].1),
        Ok(ClientEvent::Reconnect {
            new_host: String::new(),
            new_port: 0
        })
    );
}
