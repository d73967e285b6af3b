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
/// Bytes a connection's receive buffer keeps allocated between reads: a miner's ordinary
/// traffic fits, and what a burst grew it to (up to one 64 KiB read) is given back once
/// it is drained, instead of being held for the connection's life.
pub const RECEIVE_BUFFER_KEPT_BYTES_MAX: usize = 4096;

/// Gives back what a burst left allocated in a drained `buffer`, when what comes next
/// (`incoming` bytes) fits in the kept size; a steady stream of large reads keeps its
/// allocation and is not reallocated on every read.
pub fn release_burst(buffer: &mut Vec<u8>, incoming: usize) {
    if buffer.capacity() > RECEIVE_BUFFER_KEPT_BYTES_MAX
        && buffer.len() + incoming <= RECEIVE_BUFFER_KEPT_BYTES_MAX
    {
        buffer.shrink_to(RECEIVE_BUFFER_KEPT_BYTES_MAX);
    }
}

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
        release_burst(&mut self.buffer, bytes.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// After a 64 KiB burst is decoded, the next small read leaves the decoder holding at
    /// most `RECEIVE_BUFFER_KEPT_BYTES_MAX`; a steady stream of large reads is not
    /// reallocated down.
    #[test]
    fn a_burst_is_given_back_once_decoded() {
        let frame = |payload: usize| {
            let mut bytes = vec![0u8, 0, 0x20];
            bytes.extend_from_slice(&(payload as u32).to_le_bytes()[..3]);
            bytes.resize(FRAME_HEADER_BYTES + payload, 7);
            bytes
        };
        let mut decoder = FrameDecoder::new(FRAME_PAYLOAD_BYTES_MAX);
        let burst: Vec<u8> = (0..64).flat_map(|_| frame(1018)).collect();
        assert_eq!(burst.len(), 64 * 1024);
        decoder.feed(&burst);
        let mut frames = 0;
        while decoder.next_frame().unwrap().is_some() {
            frames += 1;
        }
        assert_eq!(frames, 64);
        assert!(decoder.buffer.capacity() >= 64 * 1024);
        // The next read is as large again: the allocation stays.
        decoder.feed(&burst);
        assert!(decoder.buffer.capacity() >= 64 * 1024);
        while decoder.next_frame().unwrap().is_some() {}
        // A miner's ordinary frame: the burst's memory goes back.
        decoder.feed(&frame(100));
        assert!(decoder.buffer.capacity() <= RECEIVE_BUFFER_KEPT_BYTES_MAX);
        assert!(decoder.next_frame().unwrap().is_some());
    }
}
