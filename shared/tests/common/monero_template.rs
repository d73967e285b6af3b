//! A Monero block template the tests and the fuzz target share: a mainnet block of version
//! 12 whose coinbase's extra ends with a nonce field of `EXTRA_NONCE_BYTES` zeros (the
//! pool's reserved room, as monerod reserves it), with three transactions besides, so the
//! tree root is not the coinbase's hash alone.
// Each includer uses part of it.
#![allow(dead_code)]

/// A mainnet block of version 12 with only its coinbase.
pub const MAINNET_BLOCK_V12_HEX: &str =
    "0c0c94debaf805beb3489c722a285c092a32e7c6893abfc7d069699c8326fc3445a749c5276b62\
     00000000029b892201ffdf882201b699d4c8b1ec020223df524af2a2ef5f870adb6e1ceb03a475\
     c39f8b9ef76aa50b46ddd2a18349402b012839bfa19b7524ec7488917714c216ca254b38ed0424\
     ca65ae828a7c006aeaf10208f5316a7f6b99cca60000";

pub const EXTRA_NONCE_BYTES: u8 = 8;

/// The template's blob and where its reserved bytes start; `salt` changes its
/// transactions (another template of the same shape).
pub fn template_blob(salt: u8) -> (Vec<u8>, usize) {
    let mut block: monero::Block =
        monero::consensus::deserialize(&hex::decode(MAINNET_BLOCK_V12_HEX).unwrap()).unwrap();
    let extra = &mut block.miner_tx.prefix.extra.0;
    extra.extend_from_slice(&[0x02, EXTRA_NONCE_BYTES]);
    extra.extend_from_slice(&[0; EXTRA_NONCE_BYTES as usize]);
    block.tx_hashes = (1..=3u8)
        .map(|i| monero::Hash::from_slice(&[i ^ salt; 32]))
        .collect();
    let blob = monero::consensus::serialize(&block);
    let mut marker = vec![0x02, EXTRA_NONCE_BYTES];
    marker.extend_from_slice(&[0; EXTRA_NONCE_BYTES as usize]);
    let at = blob
        .windows(marker.len())
        .position(|window| window == marker)
        .unwrap();
    (blob, at + 2)
}
