//! SV2 framing: a six-byte header (`extension_type` U16 whose top bit is `channel_msg`,
//! `msg_type` U8, `msg_length` U24, all little-endian) and then `msg_length` payload bytes.
//! `FrameDecoder` cuts a byte stream into frames without copying a payload out of its
//! buffer, and refuses a frame longer than its limit as soon as the header says so.

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 6;
/// The most a U24 length can say.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 0xff_ffff;
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX == (1 << 24) - 1);
/// The `extension_type` bit that marks a channel message.
pub const CHANNEL_MSG_BIT: u16 = 0x8000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Without the channel_msg bit; 0 for the core protocol.
    pub extension_type: u16,
    pub channel_msg: bool,
    pub msg_type: u8,
    pub msg_length: u32,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; FRAME_HEADER_BYTES]) -> Self {
        let extension = u16::from_le_bytes([bytes[0], bytes[1]]);
        FrameHeader {
            extension_type: extension & !CHANNEL_MSG_BIT,
            channel_msg: extension & CHANNEL_MSG_BIT != 0,
            msg_type: bytes[2],
            msg_length: u32::from_le_bytes([bytes[3], bytes[4], bytes[5], 0]),
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        let mut extension = self.extension_type & !CHANNEL_MSG_BIT;
        if self.channel_msg {
            extension |= CHANNEL_MSG_BIT;
        }
        out.extend_from_slice(&extension.to_le_bytes());
        out.push(self.msg_type);
        out.extend_from_slice(&self.msg_length.to_le_bytes()[..3]);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {length} bytes; at most {max} accepted")]
    TooLarge { length: usize, max: usize },
}

/// One frame, borrowing its payload from the decoder.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

/// Cuts received bytes into frames. Frames that arrived together are handed out from the
/// buffer in place; the buffer is compacted once per `feed`, not once per frame.
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// First byte not yet handed out as part of a frame.
    start: usize,
    payload_bytes_max: usize,
}

impl FrameDecoder {
    /// `payload_bytes_max` bounds what one peer can make this decoder hold; at most
    /// `FRAME_PAYLOAD_BYTES_MAX`.
    pub fn new(payload_bytes_max: usize) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            start: 0,
            payload_bytes_max: payload_bytes_max.min(FRAME_PAYLOAD_BYTES_MAX),
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// The next whole frame, if one has arrived. After an error the stream cannot be
    /// resynchronized; the caller ends the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let pending = &self.buffer[self.start..];
        let Some(header_bytes) = pending.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let header = FrameHeader::parse(header_bytes);
        let length = header.msg_length as usize;
        if length > self.payload_bytes_max {
            return Err(FrameError::TooLarge {
                length,
                max: self.payload_bytes_max,
            });
        }
        let end = FRAME_HEADER_BYTES + length;
        if pending.len() < end {
            return Ok(None);
        }
        let payload_start = self.start + FRAME_HEADER_BYTES;
        self.start += end;
        Ok(Some(Frame {
            header,
            payload: &self.buffer[payload_start..self.start],
        }))
    }
}
