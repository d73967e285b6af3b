//! Builds a job from a template: the coinbase (BIP34 height, tag, extranonce slot, payout
//! and witness commitment), split around the extranonce, and the merkle branch.

use otedama_kernels::merkle::merkle_branch_for_first_leaf;
use otedama_shared::hex32::from_display_hex;
use otedama_shared::job::{AlgorithmName, HexHash, JobTemplate};
use otedama_shared::limits::{COINBASE_SCRIPT_SIG_BYTES_MAX, EXTRANONCE1_BYTES, EXTRANONCE2_BYTES};

use crate::template::BlockTemplate;

/// Longest coinbase tag; with the height, the job id and the extranonce it stays under
/// 100 bytes.
pub const COINBASE_TAG_BYTES_MAX: usize = 64;
/// Bytes of the job id every coinbase carries (see `coinbase_parts`).
pub const COINBASE_JOB_ID_BYTES: usize = 8;

/// The longest scriptSig `coinbase_parts` writes (a height push of at most 9 bytes, the
/// tag's push, the job id's push, the extranonce's push) is within consensus's limit.
const _: () = assert!(
    9 + 1
        + COINBASE_TAG_BYTES_MAX
        + 1
        + COINBASE_JOB_ID_BYTES
        + 1
        + EXTRANONCE1_BYTES
        + EXTRANONCE2_BYTES
        <= COINBASE_SCRIPT_SIG_BYTES_MAX
);

/// A job plus what the control plane keeps to turn a winning share into a block.
#[derive(Clone, Debug)]
pub struct BuiltJob {
    pub job: JobTemplate,
    /// Serialized template transactions, in block order (the HogEx last, if any).
    pub transactions: Vec<Vec<u8>>,
    pub txids: Vec<[u8; 32]>,
    pub has_witness_commitment: bool,
    pub mweb: Option<Vec<u8>>,
    pub coinbase_value: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobBuildError {
    #[error("template field {field} is malformed: {value:?}")]
    Malformed { field: &'static str, value: String },
    #[error("coinbase tag is {0} bytes; the limit is {COINBASE_TAG_BYTES_MAX}")]
    TagTooLong(usize),
}

/// Characters of a malformed template field an error repeats: the node's text reaches
/// logs and the admin API, and a long one would flood them.
const MALFORMED_VALUE_SHOWN_CHARS_MAX: usize = 80;

fn malformed(field: &'static str, value: &str) -> JobBuildError {
    JobBuildError::Malformed {
        field,
        value: value
            .chars()
            .take(MALFORMED_VALUE_SHOWN_CHARS_MAX)
            .collect(),
    }
}

pub fn build_job(
    template: &BlockTemplate,
    job_id: u64,
    payout_script: &[u8],
    coinbase_tag: &[u8],
    clean_jobs: bool,
    algorithm: AlgorithmName,
) -> Result<BuiltJob, JobBuildError> {
    if coinbase_tag.len() > COINBASE_TAG_BYTES_MAX {
        return Err(JobBuildError::TagTooLong(coinbase_tag.len()));
    }
    let prevhash = from_display_hex(&template.previousblockhash)
        .ok_or_else(|| malformed("previousblockhash", &template.previousblockhash))?;
    let bits =
        u32::from_str_radix(&template.bits, 16).map_err(|_| malformed("bits", &template.bits))?;
    let mut transactions = Vec::with_capacity(template.transactions.len());
    let mut txids = Vec::with_capacity(template.transactions.len());
    for tx in &template.transactions {
        transactions
            .push(hex::decode(&tx.data).map_err(|_| malformed("transactions.data", &tx.data))?);
        txids.push(
            from_display_hex(&tx.txid).ok_or_else(|| malformed("transactions.txid", &tx.txid))?,
        );
    }
    let witness_commitment = match &template.default_witness_commitment {
        Some(text) => {
            Some(hex::decode(text).map_err(|_| malformed("default_witness_commitment", text))?)
        }
        None => None,
    };
    let mweb = match &template.mweb {
        Some(text) => Some(hex::decode(text).map_err(|_| malformed("mweb", text))?),
        None => None,
    };
    let (coinbase_prefix, coinbase_suffix) = coinbase_parts(
        template.height,
        coinbase_tag,
        job_id,
        template.coinbasevalue,
        payout_script,
        witness_commitment.as_deref(),
    );
    let merkle_branch = merkle_branch_for_first_leaf(&txids)
        .into_iter()
        .map(HexHash)
        .collect();
    let ntime = template.curtime.max(template.mintime.unwrap_or(0));
    Ok(BuiltJob {
        job: JobTemplate {
            job_id,
            height: template.height,
            prevhash,
            coinbase_prefix,
            coinbase_suffix,
            merkle_branch,
            version: template.version,
            bits,
            ntime,
            clean_jobs,
            algorithm,
        },
        transactions,
        txids,
        has_witness_commitment: witness_commitment.is_some(),
        mweb,
        coinbase_value: template.coinbasevalue,
    })
}

/// The coinbase without witness, split where the extranonce goes. Its scriptSig is
/// `<height> <tag> <push 8: job id> <push 8: extranonce1 ‖ extranonce2>`, a valid script
/// whose first push is the BIP34 height exactly as `CScript() << height` encodes it.
///
/// The job id makes every job's work its own: two jobs built from one template differ in
/// their coinbase, so a share found on one is worthless on the other. A data plane that
/// restarted relies on it (`otedama_dataplane::served_jobs`): the new job it is sent
/// instead of one it may have served before takes none of the shares sent on that one.
fn coinbase_parts(
    height: u64,
    tag: &[u8],
    job_id: u64,
    value: u64,
    payout_script: &[u8],
    witness_commitment: Option<&[u8]>,
) -> (Vec<u8>, Vec<u8>) {
    let height_push = bitcoin::script::Builder::new()
        .push_int(height as i64)
        .into_script()
        .into_bytes();
    let extranonce_bytes = EXTRANONCE1_BYTES + EXTRANONCE2_BYTES;
    let mut script_head = height_push;
    if !tag.is_empty() {
        script_head.push(tag.len() as u8);
        script_head.extend_from_slice(tag);
    }
    script_head.push(COINBASE_JOB_ID_BYTES as u8);
    script_head.extend_from_slice(&job_id.to_le_bytes());
    script_head.push(extranonce_bytes as u8);
    let script_len = script_head.len() + extranonce_bytes;
    debug_assert!(script_len <= COINBASE_SCRIPT_SIG_BYTES_MAX);

    let mut prefix = Vec::with_capacity(64 + script_head.len());
    prefix.extend_from_slice(&1u32.to_le_bytes()); // transaction version
    prefix.push(1); // one input
    prefix.extend_from_slice(&[0u8; 32]); // null prevout hash
    prefix.extend_from_slice(&u32::MAX.to_le_bytes()); // null prevout index
    push_compact_size(&mut prefix, script_len as u64);
    prefix.extend_from_slice(&script_head);

    let mut suffix = Vec::with_capacity(128);
    suffix.extend_from_slice(&u32::MAX.to_le_bytes()); // sequence
    let outputs = 1 + witness_commitment.is_some() as u64;
    push_compact_size(&mut suffix, outputs);
    suffix.extend_from_slice(&value.to_le_bytes());
    push_compact_size(&mut suffix, payout_script.len() as u64);
    suffix.extend_from_slice(payout_script);
    if let Some(commitment) = witness_commitment {
        suffix.extend_from_slice(&0u64.to_le_bytes());
        push_compact_size(&mut suffix, commitment.len() as u64);
        suffix.extend_from_slice(commitment);
    }
    suffix.extend_from_slice(&0u32.to_le_bytes()); // lock time
    (prefix, suffix)
}

pub(crate) fn push_compact_size(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=0xfc => out.push(value as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(value as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(value as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::consensus::deserialize;

    /// A malformed field is repeated up to `MALFORMED_VALUE_SHOWN_CHARS_MAX` characters
    /// (whole at the limit), never more.
    #[test]
    fn malformed_values_are_cut_at_their_limit() {
        let shown = |value: &str| match malformed("bits", value) {
            JobBuildError::Malformed { value, .. } => value,
            other => panic!("{other}"),
        };
        let at_limit = "é".repeat(MALFORMED_VALUE_SHOWN_CHARS_MAX);
        assert_eq!(shown(&at_limit), at_limit);
        assert_eq!(shown(&format!("{at_limit}x")), at_limit);
    }

    #[test]
    fn coinbase_parses_and_starts_with_the_bip34_height() {
        let payout = hex::decode("0014b879db553ab8c8c9183ca59e732385aeed6d9043").unwrap();
        let commitment = hex::decode(
            "6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9",
        )
        .unwrap();
        for height in [1u64, 16, 17, 127, 128, 432, 500, 65_536, 2_500_000] {
            let (prefix, suffix) = coinbase_parts(
                height,
                b"/otedama/",
                0x0102_0304_0506_0708,
                5_000_000_000,
                &payout,
                Some(&commitment),
            );
            let mut coinbase = prefix.clone();
            coinbase.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            coinbase.extend_from_slice(&suffix);
            let tx: bitcoin::Transaction = deserialize(&coinbase).unwrap();
            assert!(tx.is_coinbase());
            let script_sig = tx.input[0].script_sig.as_bytes();
            let expected = bitcoin::script::Builder::new()
                .push_int(height as i64)
                .into_script();
            assert!(
                script_sig.starts_with(expected.as_bytes()),
                "height {height}"
            );
            assert!(script_sig.ends_with(&[
                8, 8, 7, 6, 5, 4, 3, 2, 1, // the job id, little-endian
                8, 1, 2, 3, 4, 5, 6, 7, 8 // the extranonce
            ]));
            assert_eq!(tx.output[0].value.to_sat(), 5_000_000_000);
            assert_eq!(tx.output[0].script_pubkey.as_bytes(), &payout[..]);
            assert_eq!(tx.output[1].script_pubkey.as_bytes(), &commitment[..]);
        }
    }

    #[test]
    fn height_432_encodes_as_core_does() {
        // CScript() << 432 is a two-byte push: 0x02 0xb0 0x01.
        let (prefix, _) = coinbase_parts(432, b"", 7, 0, &[0x51], None);
        assert_eq!(&prefix[41..45], &[21, 0x02, 0xb0, 0x01]);
    }

    /// Two jobs built from one template differ in their coinbase, so their work differs:
    /// a share found on one is worthless on the other.
    #[test]
    fn two_jobs_of_one_template_have_different_coinbases() {
        let payout = [0x51];
        let (first, suffix_first) =
            coinbase_parts(432, b"/t/", 1_700_000_000_000, 50, &payout, None);
        let (second, suffix_second) =
            coinbase_parts(432, b"/t/", 1_700_000_000_001, 50, &payout, None);
        assert_ne!(first, second);
        assert_eq!(first.len(), second.len());
        assert_eq!(suffix_first, suffix_second);
    }
}
