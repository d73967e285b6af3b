//! Faults a Stratum V2 peer can cause on the Noise transport end that peer's session only:
//! against a real `otedama run` (synthetic chain), a connection that sends a frame with a
//! bad MAC, one that announces a frame over the pool's limit, and one whose certificate
//! check fails (the client pinned another key) are each closed, while a well-behaved
//! connection opened next, and one opened before them, keep being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use otedama_shared::limits::SV2_PAYLOAD_BYTES_MAX;
use otedama_shared::sv2::client::{ClientEvent, StandardClient};
use otedama_shared::sv2::messages::OpenStandardMiningChannel;
use otedama_shared::sv2::noise::{
    decode_authority_public_key, AuthorityKey, NoiseClient, NoiseTransport,
};
use otedama_shared::sv2::wire::Str0255;
use otedama_shared::sv2::{FrameHeader, Message};
use otedama_tests::{SyntheticPool, SYNTHETIC_PAYOUT_ADDRESS as PAYOUT_ADDRESS};

fn now_s() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// A TCP connection with a completed Noise handshake.
fn connect(address: &str, authority: [u8; 32]) -> (TcpStream, NoiseTransport) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut noise, request) =
        NoiseClient::start(authority, 1 << 20, &mut rand::rngs::OsRng).unwrap();
    stream.write_all(&request).unwrap();
    let mut buffer = [0u8; 1024];
    loop {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the pool closed during the handshake");
        if let Some(transport) = noise.feed(&buffer[..read], now_s()).unwrap() {
            return (stream, transport);
        }
    }
}

/// Whether the pool closed the connection (end of stream or reset) within the timeout.
fn closed_by_pool(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sets up a standard channel and waits for its first job.
fn mine_ready(stream: &mut TcpStream, transport: &mut NoiseTransport) {
    let mut client = StandardClient::new(&format!("{PAYOUT_ADDRESS}.ok"), 0.0, "127.0.0.1", 0);
    let mut buffer = [0u8; 4096];
    while client.work().is_none() {
        let mut out = Vec::new();
        transport.encrypt_frames(client.transmit_pending(), &mut out);
        client.transmitted();
        stream.write_all(&out).unwrap();
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "a well-behaved connection was closed");
        transport.feed(&buffer[..read]);
        while let Some((header, payload)) = transport.next_frame().unwrap() {
            let event = client.handle_frame(&header, payload).unwrap();
            assert!(!matches!(event, ClientEvent::ShareRejected { .. }));
        }
    }
}

#[test]
fn a_bad_mac_an_oversized_frame_or_a_wrong_key_ends_that_session_only() {
    let pool = SyntheticPool::start(&["--start-difficulty", "1e-6", "--difficulty-min", "1e-9"]);
    let sv2 = pool.sv2.clone();
    let authority = decode_authority_public_key(&pool.authority_key).unwrap();

    let (mut before, mut before_transport) = connect(&sv2, authority);
    mine_ready(&mut before, &mut before_transport);

    // A frame whose ciphertext was altered on the way.
    let (mut tampered, mut transport) = connect(&sv2, authority);
    let setup = StandardClient::new("x", 0.0, "h", 0)
        .transmit_pending()
        .to_vec();
    let mut out = Vec::new();
    transport.encrypt_frames(&setup, &mut out);
    out[30] ^= 0x01;
    tampered.write_all(&out).unwrap();
    assert!(
        closed_by_pool(&mut tampered),
        "a bad MAC must end the session"
    );

    // A header announcing a frame over the pool's limit: refused before any payload.
    let (mut oversized, mut transport) = connect(&sv2, authority);
    let mut header = Vec::new();
    FrameHeader {
        extension_type: 0,
        channel_msg: false,
        msg_type: 0,
        msg_length: (SV2_PAYLOAD_BYTES_MAX + 1) as u32,
    }
    .write(&mut header);
    header.resize(6 + SV2_PAYLOAD_BYTES_MAX + 1, 0);
    let mut out = Vec::new();
    transport.encrypt_frames(&header, &mut out);
    oversized.write_all(&out[..22]).unwrap();
    assert!(
        closed_by_pool(&mut oversized),
        "an oversized frame must end the session"
    );

    // A miner pinned to another key refuses the pool's certificate (client side).
    let mut stream = TcpStream::connect(&sv2).unwrap();
    let other = AuthorityKey::generate(&mut rand::rngs::OsRng).public_x();
    let (mut noise, request) = NoiseClient::start(other, 1 << 20, &mut rand::rngs::OsRng).unwrap();
    stream.write_all(&request).unwrap();
    let mut reply = vec![0u8; otedama_shared::sv2::noise::HANDSHAKE_REPLY_BYTES];
    stream.read_exact(&mut reply).unwrap();
    assert!(noise.feed(&reply, now_s()).is_err());

    // Everyone else is still served: a new connection, and the one from before.
    let (mut after, mut after_transport) = connect(&sv2, authority);
    mine_ready(&mut after, &mut after_transport);
    let user = format!("{PAYOUT_ADDRESS}.second");
    let open = Message::OpenStandardMiningChannel(OpenStandardMiningChannel {
        request_id: 2,
        user_identity: Str0255::new(&user).unwrap(),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
    })
    .to_frame();
    let mut out = Vec::new();
    before_transport.encrypt_frames(&open, &mut out);
    before.write_all(&out).unwrap();
    let mut buffer = [0u8; 4096];
    'reply: loop {
        let read = before.read(&mut buffer).unwrap();
        assert!(read > 0, "the earlier connection was closed");
        before_transport.feed(&buffer[..read]);
        while let Some((header, _)) = before_transport.next_frame().unwrap() {
            // OpenStandardMiningChannel.Success (0x11) answers the new open.
            if header.msg_type == 0x11 {
                break 'reply;
            }
        }
    }
}
