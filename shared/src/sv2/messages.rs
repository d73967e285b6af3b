//! The Common and Mining sub-protocol messages, with their message types and channel_msg
//! bits as the specification's message-type table gives them (the numbering the Stratum V2
//! Reference Implementation uses too). Each message is declared once, as its fields in wire
//! order; the macro below derives the struct, its encoder and its decoder from that list,
//! so the three cannot disagree.

use super::frame::FrameHeader;
use super::wire::{
    DecodeError, Field, Reader, Seq0255U256, Seq064KU32, Str0255, B032, B064K, U256,
};

/// `SetupConnection.protocol` of the Mining Protocol.
pub const PROTOCOL_MINING: u8 = 0;
/// The only protocol version there is.
pub const PROTOCOL_VERSION: u16 = 2;

macro_rules! messages {
    ($(
        $(#[$doc:meta])*
        $name:ident $(<$lt:lifetime>)? = $msg_type:literal, channel_msg: $channel:literal {
            $($(#[$field_doc:meta])* $field:ident: $ty:ty),* $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Debug, PartialEq)]
            pub struct $name $(<$lt>)? {
                $($(#[$field_doc])* pub $field: $ty),*
            }

            impl<'a> Field<'a> for $name $(<$lt>)? {
                fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
                    Ok($name {
                        $($field: {
                            reader.field = stringify!($field);
                            <$ty as Field<'a>>::read(reader)?
                        }),*
                    })
                }

                fn write(&self, out: &mut Vec<u8>) {
                    $(self.$field.write(out);)*
                }
            }
        )*

        /// A core-protocol message (extension_type 0).
        #[derive(Clone, Debug, PartialEq)]
        pub enum Message<'a> {
            $($name($name $(<$lt>)?)),*
        }

        impl<'a> Message<'a> {
            pub fn msg_type(&self) -> u8 {
                match self {
                    $(Message::$name(_) => $msg_type),*
                }
            }

            /// Whether the frame's channel_msg bit is set: the message is for one channel,
            /// whose id is its first field.
            pub fn channel_msg(&self) -> bool {
                match self {
                    $(Message::$name(_) => $channel),*
                }
            }

            pub fn name(&self) -> &'static str {
                match self {
                    $(Message::$name(_) => stringify!($name)),*
                }
            }

            fn write_payload(&self, out: &mut Vec<u8>) {
                match self {
                    $(Message::$name(message) => message.write(out)),*
                }
            }

            fn read_payload(msg_type: u8, channel_msg: bool, payload: &'a [u8]) -> Result<Self, DecodeError> {
                let mut reader = Reader::new(payload);
                let (message, expected) = match msg_type {
                    $($msg_type => (Message::$name(<$name $(<$lt>)?>::read(&mut reader)?), $channel),)*
                    _ => return Err(DecodeError::UnknownMessageType { msg_type }),
                };
                if channel_msg != expected {
                    return Err(DecodeError::ChannelBit { msg_type, found: channel_msg, expected });
                }
                reader.finish()?;
                Ok(message)
            }
        }
    };
}

messages! {
    /// Client → server, first on every connection.
    SetupConnection<'a> = 0x00, channel_msg: false {
        protocol: u8,
        min_version: u16,
        max_version: u16,
        flags: u32,
        endpoint_host: Str0255<'a>,
        endpoint_port: u16,
        vendor: Str0255<'a>,
        hardware_version: Str0255<'a>,
        firmware: Str0255<'a>,
        device_id: Str0255<'a>,
    }
    SetupConnectionSuccess = 0x01, channel_msg: false {
        used_version: u16,
        flags: u32,
    }
    SetupConnectionError<'a> = 0x02, channel_msg: false {
        flags: u32,
        error_code: Str0255<'a>,
    }
    ChannelEndpointChanged = 0x03, channel_msg: true {
        channel_id: u32,
    }
    /// Server → client: connect to `new_host:new_port` (empty and 0: the same again).
    Reconnect<'a> = 0x04, channel_msg: false {
        new_host: Str0255<'a>,
        new_port: u16,
    }
    OpenStandardMiningChannel<'a> = 0x10, channel_msg: false {
        request_id: u32,
        user_identity: Str0255<'a>,
        nominal_hash_rate: f32,
        max_target: U256,
    }
    OpenStandardMiningChannelSuccess<'a> = 0x11, channel_msg: false {
        request_id: u32,
        channel_id: u32,
        target: U256,
        extranonce_prefix: B032<'a>,
        group_channel_id: u32,
    }
    /// The error answer to either kind of OpenMiningChannel.
    OpenMiningChannelError<'a> = 0x12, channel_msg: false {
        request_id: u32,
        error_code: Str0255<'a>,
    }
    OpenExtendedMiningChannel<'a> = 0x13, channel_msg: false {
        request_id: u32,
        user_identity: Str0255<'a>,
        nominal_hash_rate: f32,
        max_target: U256,
        min_extranonce_size: u16,
    }
    OpenExtendedMiningChannelSuccess<'a> = 0x14, channel_msg: false {
        request_id: u32,
        channel_id: u32,
        target: U256,
        extranonce_size: u16,
        extranonce_prefix: B032<'a>,
        group_channel_id: u32,
    }
    /// A job for a standard channel: the pool has computed the merkle root.
    NewMiningJob = 0x15, channel_msg: true {
        channel_id: u32,
        job_id: u32,
        /// `None`: a future job, for the next SetNewPrevHash.
        min_ntime: Option<u32>,
        version: u32,
        merkle_root: U256,
    }
    UpdateChannel = 0x16, channel_msg: true {
        channel_id: u32,
        nominal_hash_rate: f32,
        maximum_target: U256,
    }
    UpdateChannelError<'a> = 0x17, channel_msg: true {
        channel_id: u32,
        error_code: Str0255<'a>,
    }
    CloseChannel<'a> = 0x18, channel_msg: true {
        channel_id: u32,
        reason_code: Str0255<'a>,
    }
    SetExtranoncePrefix<'a> = 0x19, channel_msg: true {
        channel_id: u32,
        extranonce_prefix: B032<'a>,
    }
    SubmitSharesStandard = 0x1a, channel_msg: true {
        channel_id: u32,
        sequence_number: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
    }
    SubmitSharesExtended<'a> = 0x1b, channel_msg: true {
        channel_id: u32,
        sequence_number: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
        extranonce: B032<'a>,
    }
    SubmitSharesSuccess = 0x1c, channel_msg: true {
        channel_id: u32,
        last_sequence_number: u32,
        new_submits_accepted_count: u32,
        new_shares_sum: u64,
    }
    SubmitSharesError<'a> = 0x1d, channel_msg: true {
        channel_id: u32,
        sequence_number: u32,
        error_code: Str0255<'a>,
    }
    /// A job for an extended or group channel: the miner builds the coinbase and the
    /// merkle root itself.
    NewExtendedMiningJob<'a> = 0x1f, channel_msg: true {
        channel_id: u32,
        job_id: u32,
        min_ntime: Option<u32>,
        version: u32,
        version_rolling_allowed: bool,
        merkle_path: Seq0255U256<'a>,
        coinbase_tx_prefix: B064K<'a>,
        coinbase_tx_suffix: B064K<'a>,
    }
    SetNewPrevHash = 0x20, channel_msg: true {
        channel_id: u32,
        job_id: u32,
        prev_hash: U256,
        min_ntime: u32,
        nbits: u32,
    }
    SetTarget = 0x21, channel_msg: true {
        channel_id: u32,
        maximum_target: U256,
    }
    SetGroupChannel<'a> = 0x25, channel_msg: false {
        group_channel_id: u32,
        channel_ids: Seq064KU32<'a>,
    }
}

/// What a frame turned out to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded<'a> {
    Message(Message<'a>),
    /// A message of an extension this pool does not know. The pool is the final recipient
    /// of everything it receives (it is the channel endpoint, and no proxy), so the spec
    /// has such messages discarded and ignored.
    UnknownExtension {
        extension_type: u16,
        msg_type: u8,
    },
}

impl<'a> Message<'a> {
    /// Appends the whole frame: header and payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let header_at = out.len();
        FrameHeader {
            extension_type: 0,
            channel_msg: self.channel_msg(),
            msg_type: self.msg_type(),
            msg_length: 0,
        }
        .write(out);
        let payload_at = out.len();
        self.write_payload(out);
        let length = (out.len() - payload_at) as u32;
        out[header_at + 3..header_at + 6].copy_from_slice(&length.to_le_bytes()[..3]);
    }

    /// The frame's bytes, for tests and one-off sends.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one frame's payload. Every field must be there, and nothing after them.
    pub fn decode(header: &FrameHeader, payload: &'a [u8]) -> Result<Decoded<'a>, DecodeError> {
        if header.extension_type != 0 {
            return Ok(Decoded::UnknownExtension {
                extension_type: header.extension_type,
                msg_type: header.msg_type,
            });
        }
        Message::read_payload(header.msg_type, header.channel_msg, payload).map(Decoded::Message)
    }
}
