//! A Stratum V2 mining device, sans-IO: SetupConnection, one standard channel, the jobs
//! and targets the pool sends, and share submission. The CPU miner and the load generator
//! run it over Noise/TCP or QUIC; the transport is theirs.
//!
//! A standard channel is header-only mining: the pool sends the merkle root, so the
//! device hashes 80-byte headers and rolls nonce, ntime and (within BIP320's bits) the
//! version.

use otedama_kernels::Target;

use super::frame::FrameHeader;
use super::messages::*;
use super::wire::Str0255;
use super::{Decoded, Message};

/// Jobs the client keeps on the current block while waiting for a SetNewPrevHash.
const FUTURE_JOBS_MAX: usize = 8;

/// Work to hash: the header with nonce 0, and what a share of it is submitted with.
#[derive(Clone, Debug, PartialEq)]
pub struct MiningWork {
    pub header: [u8; 80],
    pub channel_id: u32,
    pub job_id: u32,
    pub target: Target,
    /// Changes whenever the work does, so hashing threads know to start over.
    pub generation: u64,
}

/// What a frame from the pool meant.
#[derive(Debug, PartialEq)]
pub enum ClientEvent {
    Nothing,
    /// The channel is open.
    ChannelOpened {
        channel_id: u32,
    },
    /// New work (a job, a new block, or a new target).
    NewWork,
    /// The pool acknowledged `count` shares, the last of them `last_sequence_number`
    /// (acknowledgements come in order, but rejections may overtake them).
    SharesAccepted {
        count: u32,
        last_sequence_number: u32,
    },
    /// The pool refused a share with this code.
    ShareRejected {
        sequence_number: u32,
        code: String,
    },
    /// The pool asks for a new connection (Reconnect): to `new_host:new_port`, where an
    /// empty host or a port of 0 means the one connected to now. A client goes once its
    /// shares in flight are answered, and opens its channel anew there.
    Reconnect {
        new_host: String,
        new_port: u16,
    },
}

/// Why the pool's side of the conversation cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("the pool refused SetupConnection: {0}")]
    SetupRefused(String),
    #[error("the pool refused the channel: {0}")]
    ChannelRefused(String),
    #[error("the pool sent a malformed message")]
    Malformed,
}

#[derive(Clone, Copy, Debug)]
struct JobOnOffer {
    job_id: u32,
    version: u32,
    merkle_root: [u8; 32],
}

#[derive(Debug)]
pub struct StandardClient {
    user: String,
    nominal_hash_rate: f32,
    channel_id: Option<u32>,
    target: Target,
    /// Jobs announced for the next block (min_ntime absent) or the current one.
    jobs: Vec<JobOnOffer>,
    /// prev_hash, nbits, min_ntime of the current block.
    block: Option<([u8; 32], u32, u32)>,
    active: Option<(JobOnOffer, u32)>,
    generation: u64,
    next_sequence_number: u32,
    outbox: Vec<u8>,
}

impl StandardClient {
    /// Queues SetupConnection; the channel opens when the pool answers.
    pub fn new(
        user: &str,
        nominal_hash_rate: f32,
        endpoint_host: &str,
        endpoint_port: u16,
    ) -> Self {
        let mut client = StandardClient {
            user: user.to_string(),
            nominal_hash_rate,
            channel_id: None,
            target: Target::MAX,
            jobs: Vec::new(),
            block: None,
            active: None,
            generation: 0,
            next_sequence_number: 0,
            outbox: Vec::new(),
        };
        Message::SetupConnection(SetupConnection {
            protocol: PROTOCOL_MINING,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            // Header-only device that rolls version bits.
            flags: super::server::SETUP_FLAG_REQUIRES_STANDARD_JOBS
                | super::server::SETUP_FLAG_REQUIRES_VERSION_ROLLING,
            endpoint_host: Str0255::new(endpoint_host).unwrap_or_default(),
            endpoint_port,
            vendor: Str0255::new("otedama").expect("short"),
            hardware_version: Str0255::new("cpu").expect("short"),
            firmware: Str0255::new(env!("CARGO_PKG_VERSION")).expect("short"),
            device_id: Str0255::new("").expect("empty"),
        })
        .encode(&mut client.outbox);
        client
    }

    /// Plaintext frames to send; follow with `transmitted`.
    pub fn transmit_pending(&self) -> &[u8] {
        &self.outbox
    }

    pub fn transmitted(&mut self) {
        self.outbox.clear();
    }

    /// The work to hash now, if any.
    pub fn work(&self) -> Option<MiningWork> {
        let (job, min_ntime) = self.active?;
        let (prev_hash, nbits, _) = self.block?;
        let mut header = [0u8; 80];
        header[0..4].copy_from_slice(&job.version.to_le_bytes());
        header[4..36].copy_from_slice(&prev_hash);
        header[36..68].copy_from_slice(&job.merkle_root);
        header[68..72].copy_from_slice(&min_ntime.to_le_bytes());
        header[72..76].copy_from_slice(&nbits.to_le_bytes());
        Some(MiningWork {
            header,
            channel_id: self.channel_id?,
            job_id: job.job_id,
            target: self.target,
            generation: self.generation,
        })
    }

    /// Queues a share; returns its sequence number.
    pub fn submit(&mut self, work: &MiningWork, nonce: u32, ntime: u32, version: u32) -> u32 {
        let sequence_number = self.next_sequence_number;
        self.next_sequence_number = self.next_sequence_number.wrapping_add(1);
        Message::SubmitSharesStandard(SubmitSharesStandard {
            channel_id: work.channel_id,
            sequence_number,
            job_id: work.job_id,
            nonce,
            ntime,
            version,
        })
        .encode(&mut self.outbox);
        sequence_number
    }

    /// Handles one frame from the pool.
    pub fn handle_frame(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<ClientEvent, ClientError> {
        let message = match Message::decode(header, payload) {
            Ok(Decoded::Message(message)) => message,
            Ok(Decoded::UnknownExtension { .. }) => return Ok(ClientEvent::Nothing),
            Err(_) => return Err(ClientError::Malformed),
        };
        Ok(match message {
            Message::SetupConnectionSuccess(_) => {
                let max_target = [0xff; 32];
                Message::OpenStandardMiningChannel(OpenStandardMiningChannel {
                    request_id: 1,
                    user_identity: Str0255::new(&self.user)
                        .map_err(|_| ClientError::ChannelRefused("user name too long".into()))?,
                    nominal_hash_rate: self.nominal_hash_rate,
                    max_target,
                })
                .encode(&mut self.outbox);
                ClientEvent::Nothing
            }
            Message::SetupConnectionError(error) => {
                return Err(ClientError::SetupRefused(error.error_code.as_str().into()))
            }
            Message::OpenMiningChannelError(error) => {
                return Err(ClientError::ChannelRefused(
                    error.error_code.as_str().into(),
                ))
            }
            Message::OpenStandardMiningChannelSuccess(success) => {
                self.channel_id = Some(success.channel_id);
                self.target = Target::from_le_bytes(&success.target);
                ClientEvent::ChannelOpened {
                    channel_id: success.channel_id,
                }
            }
            Message::NewMiningJob(job) => {
                let offer = JobOnOffer {
                    job_id: job.job_id,
                    version: job.version,
                    merkle_root: job.merkle_root,
                };
                match job.min_ntime {
                    Some(min_ntime) => {
                        self.active = Some((offer, min_ntime));
                        self.generation += 1;
                        ClientEvent::NewWork
                    }
                    None => {
                        if self.jobs.len() >= FUTURE_JOBS_MAX {
                            self.jobs.remove(0);
                        }
                        self.jobs.push(offer);
                        ClientEvent::Nothing
                    }
                }
            }
            Message::SetNewPrevHash(prev) => {
                self.block = Some((prev.prev_hash, prev.nbits, prev.min_ntime));
                let offer = self.jobs.iter().find(|j| j.job_id == prev.job_id).copied();
                self.jobs.clear();
                self.active = offer.map(|offer| (offer, prev.min_ntime));
                self.generation += 1;
                ClientEvent::NewWork
            }
            Message::SetTarget(set) => {
                self.target = Target::from_le_bytes(&set.maximum_target);
                self.generation += 1;
                ClientEvent::NewWork
            }
            Message::SubmitSharesSuccess(success) => ClientEvent::SharesAccepted {
                count: success.new_submits_accepted_count,
                last_sequence_number: success.last_sequence_number,
            },
            Message::SubmitSharesError(error) => ClientEvent::ShareRejected {
                sequence_number: error.sequence_number,
                code: error.error_code.as_str().into(),
            },
            Message::Reconnect(reconnect) => ClientEvent::Reconnect {
                new_host: reconnect.new_host.as_str().into(),
                new_port: reconnect.new_port,
            },
            _ => ClientEvent::Nothing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::FrameDecoder;
    use super::*;

    fn deliver(client: &mut StandardClient, message: Message) -> ClientEvent {
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        let mut decoder = FrameDecoder::new(1 << 16);
        decoder.feed(&bytes);
        let frame = decoder.next_frame().unwrap().expect("one whole frame");
        client.handle_frame(&frame.header, frame.payload).unwrap()
    }

    fn future_job(job_id: u32) -> Message<'static> {
        Message::NewMiningJob(NewMiningJob {
            channel_id: 1,
            job_id,
            min_ntime: None,
            version: 0x2000_0000,
            merkle_root: [job_id as u8; 32],
        })
    }

    fn new_block(job_id: u32) -> Message<'static> {
        Message::SetNewPrevHash(SetNewPrevHash {
            channel_id: 1,
            job_id,
            prev_hash: [7; 32],
            min_ntime: 1_700_000_000,
            nbits: 0x207f_ffff,
        })
    }

    /// A pool that sends future jobs without ever a new block cannot grow the device's
    /// memory: it keeps the newest FUTURE_JOBS_MAX, and a block naming one it dropped
    /// leaves it with no work rather than the wrong work.
    #[test]
    fn future_jobs_keep_the_newest_future_jobs_max() {
        let mut client = StandardClient::new("miner", 1.0, "pool", 3336);
        for job_id in 1..=FUTURE_JOBS_MAX as u32 {
            assert_eq!(
                deliver(&mut client, future_job(job_id)),
                ClientEvent::Nothing
            );
        }
        assert_eq!(client.jobs.len(), FUTURE_JOBS_MAX);
        assert_eq!(client.jobs[0].job_id, 1, "at the limit nothing is dropped");

        deliver(&mut client, future_job(FUTURE_JOBS_MAX as u32 + 1));
        assert_eq!(client.jobs.len(), FUTURE_JOBS_MAX);
        assert_eq!(client.jobs[0].job_id, 2, "one more drops the oldest");
        assert_eq!(
            client.jobs.last().unwrap().job_id,
            FUTURE_JOBS_MAX as u32 + 1
        );

        assert_eq!(deliver(&mut client, new_block(1)), ClientEvent::NewWork);
        assert!(client.active.is_none(), "the dropped job is not mined");
        assert!(
            client.jobs.is_empty(),
            "a new block retires every future job"
        );

        for job_id in 10..10 + FUTURE_JOBS_MAX as u32 + 1 {
            deliver(&mut client, future_job(job_id));
        }
        deliver(&mut client, new_block(11));
        assert_eq!(client.active.map(|(job, _)| job.job_id), Some(11));
    }
}
