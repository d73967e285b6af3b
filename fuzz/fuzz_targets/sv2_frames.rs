//! The SV2 frame decoder on an arbitrary stream cut at arbitrary points: it never panics,
//! never hands out a frame over its limit, and every frame it hands out is decodable or
//! refused with an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use otedama_shared::sv2::{FrameDecoder, Message};

const PAYLOAD_BYTES_MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut).max(1);
    let mut decoder = FrameDecoder::new(PAYLOAD_BYTES_MAX);
    for piece in stream.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= PAYLOAD_BYTES_MAX);
                    let _ = Message::decode(&frame.header, frame.payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
