//! Assembles a full block from a winning share and the job's saved template, in the form
//! the node's submitblock decodes: header, transactions (coinbase with its witness when the
//! block commits to witnesses), and for Litecoin after MWEB activation, `0x01` followed by
//! the MWEB block.

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::Witness;

use otedama_kernels::{merkle::merkle_root, sha256d};
use otedama_shared::share::BlockCandidate;

use super::builder::{push_compact_size, BuiltJob};

#[derive(Debug, thiserror::Error)]
pub enum BlockAssemblyError {
    #[error("the candidate's coinbase does not decode as a transaction: {0}")]
    BadCoinbase(String),
    #[error("the candidate's header is {0} bytes, not 80")]
    BadHeader(usize),
    #[error("the header's merkle root does not match the job's transactions")]
    MerkleMismatch,
}

pub fn assemble_block(
    job: &BuiltJob,
    candidate: &BlockCandidate,
) -> Result<Vec<u8>, BlockAssemblyError> {
    if candidate.header.len() != 80 {
        return Err(BlockAssemblyError::BadHeader(candidate.header.len()));
    }
    let mut leaves = Vec::with_capacity(job.txids.len() + 1);
    leaves.push(sha256d(&candidate.coinbase));
    leaves.extend_from_slice(&job.txids);
    let root = merkle_root(&leaves).expect("at least the coinbase");
    if root[..] != candidate.header[36..68] {
        return Err(BlockAssemblyError::MerkleMismatch);
    }
    let coinbase = if job.has_witness_commitment {
        let mut tx: bitcoin::Transaction = deserialize(&candidate.coinbase)
            .map_err(|e| BlockAssemblyError::BadCoinbase(e.to_string()))?;
        // BIP141: the coinbase witness is a single 32-byte reserved value, all zeros in the
        // default commitment the node computed.
        tx.input[0].witness = Witness::from_slice(&[[0u8; 32]]);
        serialize(&tx)
    } else {
        candidate.coinbase.clone()
    };
    let body_bytes: usize = job.transactions.iter().map(Vec::len).sum();
    let mut block = Vec::with_capacity(
        80 + 9 + coinbase.len() + body_bytes + job.mweb.as_ref().map_or(0, |m| m.len() + 1),
    );
    block.extend_from_slice(&candidate.header);
    push_compact_size(&mut block, leaves.len() as u64);
    block.extend_from_slice(&coinbase);
    for tx in &job.transactions {
        block.extend_from_slice(tx);
    }
    if let Some(mweb) = &job.mweb {
        block.push(1);
        block.extend_from_slice(mweb);
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::build_job;
    use crate::template::{BlockTemplate, TemplateTransaction};
    use bitcoin::hashes::Hash;
    use otedama_kernels::merkle::merkle_root_from_branch;
    use otedama_shared::job::AlgorithmName;

    /// A template shaped like litecoind's after MWEB activation: one transaction (standing
    /// in for the HogEx), a witness commitment and an `mweb` blob.
    fn template(mweb: Option<&str>) -> BlockTemplate {
        let tx = "0200000001aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0000000000ffffffff0100e1f50500000000160014bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb00000000";
        let txid = otedama_shared::hex32::display_hex(&sha256d(&hex::decode(tx).unwrap()));
        BlockTemplate {
            version: 0x2000_0000,
            previousblockhash: "11".repeat(32),
            transactions: vec![TemplateTransaction {
                data: tx.into(),
                txid,
                fee: 0,
            }],
            coinbasevalue: 5_000_000_000,
            bits: "207fffff".into(),
            height: 432,
            curtime: 1_795_331_232,
            mintime: None,
            longpollid: None,
            default_witness_commitment: Some("6a24aa21a9ed".to_string() + &"cc".repeat(32)),
            mweb: mweb.map(str::to_string),
        }
    }

    fn candidate(job: &BuiltJob) -> BlockCandidate {
        let coinbase = {
            let mut c = job.job.coinbase_prefix.clone();
            c.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            c.extend_from_slice(&job.job.coinbase_suffix);
            c
        };
        let branch: Vec<[u8; 32]> = job.job.merkle_branch.iter().map(|h| h.0).collect();
        let root = merkle_root_from_branch(&sha256d(&coinbase), &branch);
        let mut header = vec![0u8; 80];
        header[36..68].copy_from_slice(&root);
        BlockCandidate {
            job_id: 1,
            height: 432,
            header,
            coinbase,
            worker: "w".into(),
            found_at_ms: 0,
        }
    }

    #[test]
    fn mweb_block_is_header_txs_then_0x01_and_the_mweb_bytes() {
        let job = build_job(
            &template(Some("deadbeef")),
            1,
            &[0x51],
            b"",
            true,
            AlgorithmName::Scrypt,
        )
        .unwrap();
        let candidate = candidate(&job);
        let block = assemble_block(&job, &candidate).unwrap();
        assert_eq!(&block[..80], &candidate.header[..]);
        assert_eq!(block[80], 2, "coinbase plus one transaction");
        // The coinbase carries its witness: version, then the segwit marker and flag.
        assert_eq!(&block[81..87], &[1, 0, 0, 0, 0x00, 0x01]);
        let coinbase_end = block.len() - job.transactions[0].len() - "deadbeef".len() / 2 - 1;
        let coinbase: bitcoin::Transaction =
            bitcoin::consensus::deserialize(&block[81..coinbase_end]).unwrap();
        assert_eq!(coinbase.input[0].witness.to_vec(), vec![vec![0u8; 32]]);
        assert_eq!(
            coinbase.compute_txid().to_byte_array(),
            sha256d(&candidate.coinbase)
        );
        assert!(block.ends_with(&[0x01, 0xde, 0xad, 0xbe, 0xef]));
        let tx_end = block.len() - 5;
        assert_eq!(
            &block[tx_end - job.transactions[0].len()..tx_end],
            &job.transactions[0][..]
        );
    }

    /// A tag of exactly `COINBASE_TAG_BYTES_MAX` bytes makes a block whose coinbase
    /// parses and carries it; one byte more is refused before any job is made.
    #[test]
    fn the_coinbase_tag_limit_holds_at_its_edge() {
        use crate::jobs::builder::{JobBuildError, COINBASE_TAG_BYTES_MAX};
        let tag = vec![b't'; COINBASE_TAG_BYTES_MAX];
        let job = build_job(
            &template(None),
            1,
            &[0x51],
            &tag,
            true,
            AlgorithmName::Scrypt,
        )
        .unwrap();
        let candidate = candidate(&job);
        let block = assemble_block(&job, &candidate).unwrap();
        let coinbase: bitcoin::Transaction =
            bitcoin::consensus::deserialize(&candidate.coinbase).unwrap();
        let script_sig = coinbase.input[0].script_sig.as_bytes();
        assert!(script_sig.len() <= otedama_shared::limits::COINBASE_SCRIPT_SIG_BYTES_MAX);
        assert!(script_sig
            .windows(tag.len())
            .any(|window| window == &tag[..]));
        assert!(block.len() > 80);
        let longer = vec![b't'; COINBASE_TAG_BYTES_MAX + 1];
        assert!(matches!(
            build_job(&template(None), 1, &[0x51], &longer, true, AlgorithmName::Scrypt),
            Err(JobBuildError::TagTooLong(length)) if length == COINBASE_TAG_BYTES_MAX + 1
        ));
    }

    #[test]
    fn block_before_mweb_has_no_suffix() {
        let job = build_job(
            &template(None),
            1,
            &[0x51],
            b"",
            true,
            AlgorithmName::Scrypt,
        )
        .unwrap();
        let block = assemble_block(&job, &candidate(&job)).unwrap();
        assert!(block.ends_with(&job.transactions[0]));
    }

    #[test]
    fn a_header_that_commits_to_other_transactions_is_refused() {
        let job = build_job(
            &template(None),
            1,
            &[0x51],
            b"",
            true,
            AlgorithmName::Scrypt,
        )
        .unwrap();
        let mut candidate = candidate(&job);
        candidate.header[40] ^= 1;
        assert!(matches!(
            assemble_block(&job, &candidate),
            Err(BlockAssemblyError::MerkleMismatch)
        ));
        candidate.header.pop();
        assert!(matches!(
            assemble_block(&job, &candidate),
            Err(BlockAssemblyError::BadHeader(79))
        ));
    }
}
