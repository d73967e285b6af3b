//! The miner's side of Stratum V1, as cpuminer does it: parse `mining.notify`, assemble the
//! header from the words it carries, and format `mining.submit`. Used by `otedama miner`
//! and the load generator. It assembles headers on its own, from the notify fields, rather
//! than through the server's `Job`, so the two sides check each other.

use serde_json::{json, Value};

use otedama_kernels::{merkle_root_from_branch, sha256d};

use crate::hex32::{decode_exact, decode_u32_be};

/// Work as announced by `mining.notify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifiedJob {
    pub job_id: String,
    /// Previous block hash in internal byte order.
    pub prevhash: [u8; 32],
    pub coinbase_prefix: Vec<u8>,
    pub coinbase_suffix: Vec<u8>,
    pub merkle_branch: Vec<[u8; 32]>,
    pub version: u32,
    pub bits: u32,
    pub ntime: u32,
    pub clean_jobs: bool,
}

impl NotifiedJob {
    /// Parses the params array of `mining.notify`.
    pub fn from_params(params: &Value) -> Option<Self> {
        let p = params.as_array()?;
        if p.len() < 9 {
            return None;
        }
        let branch = p[4]
            .as_array()?
            .iter()
            .map(|h| h.as_str().and_then(decode_exact::<32>))
            .collect::<Option<Vec<_>>>()?;
        Some(NotifiedJob {
            job_id: p[0].as_str()?.to_string(),
            prevhash: super::prevhash_from_stratum(p[1].as_str()?)?,
            coinbase_prefix: hex::decode(p[2].as_str()?).ok()?,
            coinbase_suffix: hex::decode(p[3].as_str()?).ok()?,
            merkle_branch: branch,
            version: decode_u32_be(p[5].as_str()?)?,
            bits: decode_u32_be(p[6].as_str()?)?,
            ntime: decode_u32_be(p[7].as_str()?)?,
            clean_jobs: p[8].as_bool()?,
        })
    }

    /// The 80-byte header for these extranonces, with the nonce left at zero.
    pub fn header(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        version: u32,
    ) -> [u8; 80] {
        let mut coinbase = self.coinbase_prefix.clone();
        coinbase.extend_from_slice(extranonce1);
        coinbase.extend_from_slice(extranonce2);
        coinbase.extend_from_slice(&self.coinbase_suffix);
        let root = merkle_root_from_branch(&sha256d(&coinbase), &self.merkle_branch);
        let mut header = [0u8; 80];
        header[0..4].copy_from_slice(&version.to_le_bytes());
        header[4..36].copy_from_slice(&self.prevhash);
        header[36..68].copy_from_slice(&root);
        header[68..72].copy_from_slice(&ntime.to_le_bytes());
        header[72..76].copy_from_slice(&self.bits.to_le_bytes());
        header
    }
}

/// A `mining.submit` request line.
pub fn submit_line(
    id: u64,
    worker: &str,
    job_id: &str,
    extranonce2: &[u8],
    ntime: u32,
    nonce: u32,
    version_bits: Option<u32>,
) -> Vec<u8> {
    let mut params = vec![
        json!(worker),
        json!(job_id),
        json!(hex::encode(extranonce2)),
        json!(format!("{ntime:08x}")),
        json!(format!("{nonce:08x}")),
    ];
    if let Some(bits) = version_bits {
        params.push(json!(format!("{bits:08x}")));
    }
    super::line(&json!({"id": id, "method": "mining.submit", "params": params}))
}

/// A request line for any other method.
pub fn request_line(id: u64, method: &str, params: Value) -> Vec<u8> {
    super::line(&json!({"id": id, "method": method, "params": params}))
}
