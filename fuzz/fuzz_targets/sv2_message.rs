//! Every SV2 message decoder: the first three bytes pick the message (extension type and
//! channel bit, message type), the rest is its payload. Decoding never panics, and what
//! decodes re-encodes to a frame that decodes to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use otedama_shared::sv2::{Decoded, FrameHeader, Message};

fuzz_target!(|data: &[u8]| {
    let Some((selector, payload)) = data.split_first_chunk::<3>() else {
        return;
    };
    let header = FrameHeader {
        extension_type: u16::from(selector[0] & 0x01),
        channel_msg: selector[1] & 0x80 != 0,
        msg_type: selector[2],
        msg_length: payload.len() as u32,
    };
    if let Ok(Decoded::Message(message)) = Message::decode(&header, payload) {
        let frame = message.to_frame();
        let again = FrameHeader::parse(frame[..6].try_into().unwrap());
        match Message::decode(&again, &frame[6..]) {
            // Floats compare by value; a NaN hash rate is equal only to its own bytes.
            Ok(Decoded::Message(decoded)) => assert_eq!(decoded.to_frame(), frame),
            other => panic!("{message:?} re-encoded to something that decodes as {other:?}"),
        }
    }
});
