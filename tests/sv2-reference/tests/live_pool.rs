//! The Stratum V2 Reference Implementation's crates as an independent client of a running
//! `otedama run`: `noise_sv2`/`codec_sv2` complete the Noise handshake against the authority
//! key the pool printed (parsed with `key-utils`), `common_messages_sv2`/`mining_sv2` speak
//! the protocol, and `channels_sv2`'s client channels track the jobs and check each share
//! before it is sent (their own merkle roots and header hashes, with the `bitcoin` crate).
//! The pool must accept what the reference client considers a valid share on a standard
//! channel (which, the client taking extended jobs, gets new blocks through its group
//! channel) and an extended channel, and reject stale, duplicate and low-difficulty shares
//! with the reference implementation's error codes.
//!
//! The pool runs on its synthetic chain (SHA256d, a new block every few seconds), so the
//! test needs no node. `cargo xtask test` sets `OTEDAMA_BINARY` to the `otedama` it built.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use binary_sv2::{from_bytes, GetSize, Serialize, B032, U256};
use channels_sv2::client::extended::ExtendedChannel;
use channels_sv2::client::share_accounting::{ShareValidationError, ShareValidationResult};
use channels_sv2::client::standard::StandardChannel;
use channels_sv2::extranonce_manager::ExtranoncePrefix;
use codec_sv2::{
    Decoded, Decrypted, Handshake, InitiatorSent, NoiseDecoder, NoiseEncoder,
    TransportDecryptState, TransportEncryptState,
};
use common_messages_sv2::{Protocol, SetupConnection};
use framing_sv2::framing::MessageFrame;
use key_utils::Secp256k1PublicKey;
use mining_sv2::*;
use noise_sv2::Initiator;

/// Difficulty the pool gives every channel: about 4,300 SHA256d hashes a share, so most
/// nonces miss the target (for the low-difficulty case) and a valid one is quick to find.
const DIFFICULTY: &str = "1e-6";
/// Milliseconds between the synthetic chain's blocks: jobs go stale this often.
const BLOCK_INTERVAL_MS: &str = "3000";
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The easiest target there is: the client takes whatever the pool assigns.
static ANY_TARGET: [u8; 32] = [0xff; 32];

struct Pool {
    child: Child,
    sv2_address: String,
    authority: [u8; 32],
    _data_dir: tempdir::TempDir,
}

mod tempdir {
    /// A directory removed on drop (the test needs nothing more than this).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SIGTERM so that `otedama run` stops its children too.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn otedama_binary() -> PathBuf {
    let path = std::env::var_os("OTEDAMA_BINARY")
        .map(PathBuf::from)
        .expect(
        "OTEDAMA_BINARY must name the otedama binary (cargo xtask test builds it and sets this)",
    );
    assert!(
        path.exists(),
        "OTEDAMA_BINARY={} does not exist",
        path.display()
    );
    path
}

fn start_pool() -> Pool {
    let data_dir = std::env::temp_dir().join(format!("otedama-sv2-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let sv2_address = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(otedama_binary())
        .args([
            "run",
            "--chain",
            "synthetic",
            "--coin",
            "bitcoin",
            "--network",
            "regtest",
        ])
        .args([
            "--payout-address",
            "bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt",
        ])
        .args(["--stratum-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--sv2-listen", &sv2_address])
        .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--start-difficulty", DIFFICULTY, "--difficulty-min", "1e-9"])
        .args([
            "--vardiff-share-interval-s",
            "0",
            "--share-log-sync",
            "false",
        ])
        .args(["--synthetic-job-interval-ms", BLOCK_INTERVAL_MS])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting otedama run");
    // `otedama run` prints the URL with the authority key before it starts the planes.
    // The rest of its stdout is drained on a thread, so it never writes into a closed pipe.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    let key = line
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or_else(|| panic!("no authority key in {line:?}"));
    let authority: Secp256k1PublicKey = key.to_string().try_into().expect("a base58check SV2 key");
    let pool = Pool {
        child,
        sv2_address,
        authority: authority.into_bytes(),
        _data_dir: tempdir::TempDir(data_dir),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(&pool.sv2_address).is_err() {
        assert!(
            Instant::now() < deadline,
            "the pool never listened on {}",
            pool.sv2_address
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    pool
}

/// The reference crates' Noise client over one TCP connection.
struct ReferenceClient {
    stream: TcpStream,
    encoder: NoiseEncoder,
    decoder: NoiseDecoder,
    encrypt: TransportEncryptState,
    decrypt: Option<TransportDecryptState>,
}

impl ReferenceClient {
    fn connect(address: &str, authority: [u8; 32]) -> Self {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let initiator = Initiator::from_raw_k(authority).unwrap();
        let (first, sent) = Handshake::initiator(initiator).step_0().unwrap();
        let mut encoder = NoiseEncoder::new();
        let mut decoder = NoiseDecoder::new();
        stream
            .write_all(encoder.encode_handshake(first).as_ref())
            .unwrap();
        let reply = loop {
            match decoder.next_handshake_frame::<InitiatorSent>().unwrap() {
                Decoded::Frame(reply) => break reply,
                Decoded::Incomplete(_) => stream.read_exact(decoder.writable()).unwrap(),
            }
        };
        let sent: Handshake<InitiatorSent> = sent;
        let transport = sent
            .step_2(reply.payload().try_into().unwrap())
            .expect("the pool's certificate verifies against the printed authority key");
        let (encrypt, decrypt) = transport.split();
        ReferenceClient {
            stream,
            encoder,
            decoder,
            encrypt,
            decrypt: Some(decrypt),
        }
    }

    fn send<T: Serialize + GetSize>(&mut self, message: T, msg_type: u8, channel_msg: bool) {
        let frame = MessageFrame::from_message(message, msg_type, 0, channel_msg).unwrap();
        let bytes = self
            .encoder
            .encode_transport(frame, &mut self.encrypt)
            .unwrap();
        self.stream.write_all(bytes.as_ref()).unwrap();
    }

    /// The next frame: its message type and payload.
    fn receive(&mut self) -> (u8, Vec<u8>) {
        let mut state = self.decrypt.take().unwrap();
        loop {
            match self.decoder.next_transport_frame(state).unwrap() {
                Decrypted::Frame(mut frame, next) => {
                    self.decrypt = Some(next);
                    return (frame.header().msg_type(), frame.payload().to_vec());
                }
                Decrypted::Incomplete(_, next) => {
                    state = next;
                    let writable = self.decoder.writable();
                    if !writable.is_empty() {
                        self.stream.read_exact(writable).unwrap();
                    }
                }
            }
        }
    }

    fn setup(&mut self) {
        self.send(
            SetupConnection {
                protocol: Protocol::MiningProtocol,
                min_version: 2,
                max_version: 2,
                flags: 0,
                endpoint_host: "127.0.0.1".try_into().unwrap(),
                endpoint_port: 0,
                vendor: "stratum-reference".try_into().unwrap(),
                hardware_version: "".try_into().unwrap(),
                firmware: "".try_into().unwrap(),
                device_id: "".try_into().unwrap(),
            },
            common_messages_sv2::MESSAGE_TYPE_SETUP_CONNECTION,
            false,
        );
        let (msg_type, _) = self.receive();
        assert_eq!(
            msg_type,
            common_messages_sv2::MESSAGE_TYPE_SETUP_CONNECTION_SUCCESS
        );
    }
}

/// What a share submission came back as.
#[derive(Debug, PartialEq)]
enum Reply {
    Accepted,
    Rejected(String),
}

/// Client-side state of either kind of channel, as `channels_sv2` keeps it.
enum Channel {
    Standard(StandardChannel),
    Extended(ExtendedChannel),
}

impl Channel {
    /// Feeds job and target messages to the channel; returns other messages.
    fn absorb(&mut self, msg_type: u8, mut payload: Vec<u8>) -> Option<Reply> {
        match (msg_type, self) {
            (MESSAGE_TYPE_NEW_MINING_JOB, Channel::Standard(channel)) => {
                let job: NewMiningJob = from_bytes(&mut payload).unwrap();
                channel.on_new_mining_job(job.into_owned()).unwrap();
            }
            (MESSAGE_TYPE_NEW_EXTENDED_MINING_JOB, Channel::Extended(channel)) => {
                let job: NewExtendedMiningJob = from_bytes(&mut payload).unwrap();
                channel
                    .on_new_extended_mining_job(job.into_owned())
                    .unwrap();
            }
            // The pool sends a proxy's standard channels their jobs through their group:
            // the reference channel derives its merkle root from its extranonce prefix.
            (MESSAGE_TYPE_NEW_EXTENDED_MINING_JOB, Channel::Standard(channel)) => {
                let job: NewExtendedMiningJob = from_bytes(&mut payload).unwrap();
                channel.on_new_group_channel_job(job.into_owned()).unwrap();
            }
            (MESSAGE_TYPE_MINING_SET_NEW_PREV_HASH, channel) => {
                let prev: SetNewPrevHash = from_bytes(&mut payload).unwrap();
                match channel {
                    Channel::Standard(c) => c.on_set_new_prev_hash(prev.into_owned()).unwrap(),
                    Channel::Extended(c) => c.on_set_new_prev_hash(prev.into_owned()).unwrap(),
                }
            }
            (MESSAGE_TYPE_SUBMIT_SHARES_SUCCESS, _) => return Some(Reply::Accepted),
            (MESSAGE_TYPE_SUBMIT_SHARES_ERROR, _) => {
                let error: SubmitSharesError = from_bytes(&mut payload).unwrap();
                return Some(Reply::Rejected(error.error_code.as_utf8_or_hex()));
            }
            (other, _) => panic!("unexpected message type {other:#x}"),
        }
        None
    }
}

/// A share as the reference channel built and checked it.
#[derive(Clone, Debug)]
struct Share {
    job_id: u32,
    nonce: u32,
    ntime: u32,
    version: u32,
    extranonce: Vec<u8>,
}

struct Miner {
    client: ReferenceClient,
    channel: Channel,
    channel_id: u32,
    sequence_number: u32,
    /// Where the next nonce search starts, so that no search repeats an earlier one.
    next_nonce: u32,
}

impl Miner {
    fn open_standard(pool: &Pool) -> Self {
        let mut client = ReferenceClient::connect(&pool.sv2_address, pool.authority);
        client.setup();
        client.send(
            OpenStandardMiningChannel {
                request_id: 1,
                user_identity: "bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt.std"
                    .try_into()
                    .unwrap(),
                nominal_hash_rate: 0.0,
                max_target: U256::from(&ANY_TARGET),
            },
            MESSAGE_TYPE_OPEN_STANDARD_MINING_CHANNEL,
            false,
        );
        let (msg_type, mut payload) = client.receive();
        assert_eq!(msg_type, MESSAGE_TYPE_OPEN_STANDARD_MINING_CHANNEL_SUCCESS);
        let success: OpenStandardMiningChannelSuccess = from_bytes(&mut payload).unwrap();
        let channel = StandardChannel::new(
            success.channel_id,
            "std".into(),
            ExtranoncePrefix::from_wire(success.extranonce_prefix.as_bytes().to_vec()).unwrap(),
            bitcoin::Target::from_le_bytes(success.target.to_array()),
            0.0,
            None,
        )
        .unwrap();
        Miner {
            client,
            channel_id: success.channel_id,
            channel: Channel::Standard(channel),
            sequence_number: 0,
            next_nonce: 0,
        }
    }

    fn open_extended(pool: &Pool) -> Self {
        let mut client = ReferenceClient::connect(&pool.sv2_address, pool.authority);
        client.setup();
        client.send(
            OpenExtendedMiningChannel {
                request_id: 2,
                user_identity: "bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt.ext"
                    .try_into()
                    .unwrap(),
                nominal_hash_rate: 0.0,
                max_target: U256::from(&ANY_TARGET),
                min_extranonce_size: 4,
            },
            MESSAGE_TYPE_OPEN_EXTENDED_MINING_CHANNEL,
            false,
        );
        let (msg_type, mut payload) = client.receive();
        assert_eq!(msg_type, MESSAGE_TYPE_OPEN_EXTENDED_MINING_CHANNEL_SUCCESS);
        let success: OpenExtendedMiningChannelSuccess = from_bytes(&mut payload).unwrap();
        assert!(success.extranonce_size >= 4);
        let channel = ExtendedChannel::new(
            success.channel_id,
            "ext".into(),
            ExtranoncePrefix::from_wire(success.extranonce_prefix.as_bytes().to_vec()).unwrap(),
            bitcoin::Target::from_le_bytes(success.target.to_array()),
            0.0,
            true,
            success.extranonce_size,
            None,
        )
        .unwrap();
        Miner {
            client,
            channel_id: success.channel_id,
            channel: Channel::Extended(channel),
            sequence_number: 0,
            next_nonce: 0,
        }
    }

    /// Reads until the channel has an active job on a known block.
    fn wait_for_job(&mut self) {
        loop {
            let ready = match &self.channel {
                Channel::Standard(c) => c.get_active_job().is_some() && c.get_chain_tip().is_some(),
                Channel::Extended(c) => c.get_active_job().is_some() && c.get_chain_tip().is_some(),
            };
            if ready {
                return;
            }
            let (msg_type, payload) = self.client.receive();
            assert!(self.channel.absorb(msg_type, payload).is_none());
        }
    }

    /// Reads until a new block (SetNewPrevHash) has arrived.
    fn wait_for_new_block(&mut self) {
        let tip = |channel: &Channel| match channel {
            Channel::Standard(c) => c.get_chain_tip().map(|t| t.prev_hash().to_array()),
            Channel::Extended(c) => c.get_chain_tip().map(|t| t.prev_hash().to_array()),
        };
        let before = tip(&self.channel);
        while tip(&self.channel) == before {
            let (msg_type, payload) = self.client.receive();
            assert!(self.channel.absorb(msg_type, payload).is_none());
        }
    }

    /// Asks the reference channel to judge nonces on the active job until it finds one
    /// whose verdict is `want_valid`.
    fn find_share(&mut self, want_valid: bool, extranonce_seed: u8) -> Share {
        loop {
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            let candidate = match &mut self.channel {
                Channel::Standard(channel) => {
                    let job = &channel.get_active_job().unwrap().job_message;
                    let ntime = job.min_ntime.clone().into_inner().unwrap();
                    let share = SubmitSharesStandard {
                        channel_id: self.channel_id,
                        sequence_number: 0,
                        job_id: job.job_id,
                        nonce,
                        ntime,
                        version: job.version,
                    };
                    let verdict = channel.validate_share(share.clone());
                    (
                        verdict,
                        Share {
                            job_id: share.job_id,
                            nonce,
                            ntime,
                            version: share.version,
                            extranonce: Vec::new(),
                        },
                    )
                }
                Channel::Extended(channel) => {
                    let job = &channel.get_active_job().unwrap().job_message;
                    let ntime = job.min_ntime.clone().into_inner().unwrap();
                    let extranonce = vec![extranonce_seed, 1, 2, 3];
                    let share = SubmitSharesExtended {
                        channel_id: self.channel_id,
                        sequence_number: 0,
                        job_id: job.job_id,
                        nonce,
                        ntime,
                        version: job.version,
                        extranonce: B032::new(&extranonce).unwrap(),
                    };
                    let verdict = channel.validate_share(share.clone().into_owned());
                    (
                        verdict,
                        Share {
                            job_id: share.job_id,
                            nonce,
                            ntime,
                            version: share.version,
                            extranonce,
                        },
                    )
                }
            };
            match candidate {
                (
                    Ok(ShareValidationResult::Valid(_) | ShareValidationResult::BlockFound(_)),
                    share,
                ) if want_valid => return share,
                (Err(ShareValidationError::DoesNotMeetTarget(_)), share) if !want_valid => {
                    return share
                }
                (Ok(_) | Err(ShareValidationError::DoesNotMeetTarget(_)), _) => {}
                (Err(other), _) => panic!("the reference channel refused the work: {other:?}"),
            }
        }
    }

    /// Submits a share and reads to its reply (absorbing jobs that arrive meanwhile).
    fn submit(&mut self, share: &Share) -> Reply {
        self.sequence_number += 1;
        match &self.channel {
            Channel::Standard(_) => self.client.send(
                SubmitSharesStandard {
                    channel_id: self.channel_id,
                    sequence_number: self.sequence_number,
                    job_id: share.job_id,
                    nonce: share.nonce,
                    ntime: share.ntime,
                    version: share.version,
                },
                MESSAGE_TYPE_SUBMIT_SHARES_STANDARD,
                true,
            ),
            Channel::Extended(_) => self.client.send(
                SubmitSharesExtended {
                    channel_id: self.channel_id,
                    sequence_number: self.sequence_number,
                    job_id: share.job_id,
                    nonce: share.nonce,
                    ntime: share.ntime,
                    version: share.version,
                    extranonce: B032::new(&share.extranonce).unwrap(),
                },
                MESSAGE_TYPE_SUBMIT_SHARES_EXTENDED,
                true,
            ),
        }
        loop {
            let (msg_type, payload) = self.client.receive();
            if let Some(reply) = self.channel.absorb(msg_type, payload) {
                return reply;
            }
        }
    }

    /// A valid share, accepted, then the same share again: "duplicate-share". A block
    /// arriving in between makes the round stale, so it is retried on the new job.
    fn accepted_then_duplicate(&mut self) {
        for round in 0..5u8 {
            self.wait_for_job();
            let share = self.find_share(true, round);
            match self.submit(&share) {
                Reply::Accepted => {}
                Reply::Rejected(code) if code == "stale-share" => continue,
                other => panic!("a share the reference channel validated was refused: {other:?}"),
            }
            match self.submit(&share) {
                Reply::Rejected(code) if code == "duplicate-share" => return,
                Reply::Rejected(code) if code == "stale-share" => continue,
                other => panic!("a repeated share must be a duplicate: {other:?}"),
            }
        }
        panic!("every round went stale");
    }
}

#[test]
fn reference_client_mines_on_standard_and_extended_channels() {
    let pool = start_pool();

    let mut standard = Miner::open_standard(&pool);
    standard.accepted_then_duplicate();

    // Too little work for the channel's target.
    standard.wait_for_job();
    let weak = standard.find_share(false, 0);
    let reply = standard.submit(&weak);
    assert!(
        reply == Reply::Rejected("difficulty-too-low".into())
            || reply == Reply::Rejected("stale-share".into()),
        "{reply:?}"
    );

    // A valid share held until the next block is stale.
    standard.wait_for_job();
    let held = standard.find_share(true, 0);
    standard.wait_for_new_block();
    assert_eq!(
        standard.submit(&held),
        Reply::Rejected("stale-share".into())
    );

    // A job id the pool never sent.
    let mut unknown = held.clone();
    unknown.job_id = unknown.job_id.wrapping_add(1_000_000);
    assert_eq!(
        standard.submit(&unknown),
        Reply::Rejected("invalid-job-id".into())
    );

    let mut extended = Miner::open_extended(&pool);
    extended.accepted_then_duplicate();
    // The miner's extranonce must be exactly the size the pool gave. A new block between
    // finding the share and submitting it makes it stale first; then try on the new job.
    let mut reply = Reply::Rejected("stale-share".into());
    for attempt in 0..5 {
        extended.wait_for_job();
        let mut short = extended.find_share(true, 9 + attempt);
        short.extranonce.pop();
        reply = extended.submit(&short);
        if reply != Reply::Rejected("stale-share".into()) {
            break;
        }
    }
    assert_eq!(reply, Reply::Rejected("bad-extranonce-size".into()));
}
