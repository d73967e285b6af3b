//! Stratum V1: JSON-RPC lines over TCP, as cpuminer, cgminer and ASIC firmware speak it.
//!
//! `LineFramer` cuts a byte stream into lines under a named length limit; `Session` is the
//! server-side state machine for one connection; `client` holds the pieces a miner needs.

pub mod client;
mod configure;
mod framer;
pub mod request;
mod session;
mod submit;

pub use crate::error_code::ErrorCode;
pub use framer::{LineFramer, LineStep, LineTooLong};
pub use session::{AcceptedShare, CloseReason, Outcome, PendingPow, Session, SessionConfig};

use serde_json::{json, Value};

use crate::job::JobTemplate;

/// Stratum's prevhash: the internal-order hash with each 4-byte word byte-swapped, because
/// cpuminer-style miners load it as eight little-endian words.
pub fn prevhash_to_stratum(prevhash: &[u8; 32]) -> String {
    let mut swapped = *prevhash;
    for word in swapped.chunks_exact_mut(4) {
        word.reverse();
    }
    hex::encode(swapped)
}

/// Inverse of `prevhash_to_stratum`.
pub fn prevhash_from_stratum(text: &str) -> Option<[u8; 32]> {
    let mut bytes = crate::hex32::decode_exact::<32>(text)?;
    for word in bytes.chunks_exact_mut(4) {
        word.reverse();
    }
    Some(bytes)
}

/// Job ids go out as lowercase hex without leading zeros.
pub fn job_id_to_stratum(job_id: u64) -> String {
    format!("{job_id:x}")
}

/// Parses a job id in either letter case; `None` for anything that is not 1–16 hex digits.
pub fn job_id_from_stratum(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// The `mining.notify` line for a job, newline included.
pub fn notify_line(job: &JobTemplate, clean_jobs: bool) -> Vec<u8> {
    let branch: Vec<String> = job.merkle_branch.iter().map(|h| hex::encode(h.0)).collect();
    let message = json!({
        "id": null,
        "method": "mining.notify",
        "params": [
            job_id_to_stratum(job.job_id),
            prevhash_to_stratum(&job.prevhash),
            hex::encode(&job.coinbase_prefix),
            hex::encode(&job.coinbase_suffix),
            branch,
            format!("{:08x}", job.version),
            format!("{:08x}", job.bits),
            format!("{:08x}", job.ntime),
            clean_jobs,
        ],
    });
    line(&message)
}

/// The `mining.set_difficulty` line.
pub fn set_difficulty_line(difficulty: f64) -> Vec<u8> {
    line(&json!({"id": null, "method": "mining.set_difficulty", "params": [difficulty]}))
}

pub(crate) fn line(message: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(message).expect("JSON values always serialize");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prevhash_word_swap_round_trips() {
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = i as u8;
        }
        let text = prevhash_to_stratum(&hash);
        assert!(text.starts_with("03020100070605040b0a0908"));
        assert_eq!(prevhash_from_stratum(&text), Some(hash));
    }

    #[test]
    fn job_ids_parse_strictly() {
        assert_eq!(job_id_from_stratum("1aF"), Some(0x1af));
        assert_eq!(job_id_from_stratum("+1a"), None);
        assert_eq!(job_id_from_stratum(""), None);
        assert_eq!(job_id_from_stratum("10000000000000000"), None);
    }

    #[test]
    fn notify_line_matches_byte_vector() {
        let job = crate::job::tests::template(0x2a, true);
        let text = String::from_utf8(notify_line(&job, true)).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"id":null,"method":"mining.notify","params":["2a","#,
                r#""0707070707070707070707070707070707070707070707070707070707070707","#,
                r#""01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff1302c800","#,
                r#""ffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000","#,
                r#"["0101010101010101010101010101010101010101010101010101010101010101"],"#,
                r#""20000000","207fffff","6553f100",true]}"#,
                "\n"
            )
        );
    }
}
