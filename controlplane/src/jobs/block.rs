//! Assembles a full block from a winning share and the job's saved template, in the form
//! the node's submitblock decodes: header, transactions (coinbase with its witness when the
//! block commits to witnesses), and for Litecoin after MWEB activation, `0x01` followed by
//! the MWEB block.

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::Witness;

use otedama_kernels::{merkle::merkle_root, sha256d};
use otedama_shared::sv1::BlockCandidate;

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
