//! A Bitcoin Core-compatible JSON-RPC client (Litecoin Core speaks the same dialect).
//! Blocking on purpose: each caller is a dedicated control-plane thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

/// How the node expects us to authenticate.
#[derive(Clone, Debug)]
pub enum RpcAuth {
    UserPassword {
        user: String,
        password: String,
    },
    /// The `.cookie` file the node writes at start; re-read on every call because the node
    /// rewrites it on restart.
    Cookie(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(
        "node at {url} is unreachable for RPC ({detail}): is it running, and is the URL right?"
    )]
    Unreachable { url: String, detail: String },
    #[error("node at {url} refused our RPC credentials (HTTP 401): check node_rpc_user/node_rpc_password or node_rpc_cookie")]
    Unauthorized { url: String },
    #[error("cannot read the node's RPC cookie {path}: {detail}")]
    Cookie { path: String, detail: String },
    #[error("RPC {method} failed with code {code}: {message}")]
    Node {
        method: String,
        code: i64,
        message: String,
    },
    #[error("RPC {method} returned a malformed reply: {detail}")]
    Malformed { method: String, detail: String },
}

impl RpcError {
    /// The node's error code, if the node answered with one.
    pub fn node_code(&self) -> Option<i64> {
        match self {
            RpcError::Node { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct RpcClient {
    url: String,
    auth: RpcAuth,
    agent: ureq::Agent,
}

/// Upper bounds, in seconds, of the node RPC latency histogram's buckets.
pub const RPC_LATENCY_BUCKETS_S: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Every node RPC this process made: counts, errors and a latency histogram, for
/// `/metrics`.
pub struct RpcStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Cumulative counts per bucket of `RPC_LATENCY_BUCKETS_S`.
    pub latency_buckets: [AtomicU64; RPC_LATENCY_BUCKETS_S.len()],
    pub latency_sum_us: AtomicU64,
}

pub static RPC_STATS: RpcStats = RpcStats {
    requests: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    latency_buckets: [const { AtomicU64::new(0) }; RPC_LATENCY_BUCKETS_S.len()],
    latency_sum_us: AtomicU64::new(0),
};

impl RpcStats {
    fn record(&self, elapsed: Duration, failed: bool) {
        self.requests.fetch_add(1, Relaxed);
        if failed {
            self.errors.fetch_add(1, Relaxed);
        }
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in RPC_LATENCY_BUCKETS_S.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                count.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Seconds an RPC may take.
const RPC_TIMEOUT_S: u64 = 30;

impl RpcClient {
    pub fn new(url: &str, auth: RpcAuth) -> Self {
        Self::with_timeout(url, auth, Duration::from_secs(RPC_TIMEOUT_S))
    }

    pub fn with_timeout(url: &str, auth: RpcAuth, timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(timeout)
            .timeout_write(Duration::from_secs(RPC_TIMEOUT_S))
            .build();
        RpcClient {
            url: url.to_string(),
            auth,
            agent,
        }
    }

    /// The same endpoint and credentials with another read timeout.
    pub fn with_read_timeout(&self, timeout: Duration) -> Self {
        Self::with_timeout(&self.url, self.auth.clone(), timeout)
    }

    /// The same node and credentials at `path` under its URL (`/wallet/NAME`).
    pub fn for_path(&self, path: &str) -> Self {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        RpcClient {
            url,
            auth: self.auth.clone(),
            agent: self.agent.clone(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn authorization(&self) -> Result<String, RpcError> {
        let credentials = match &self.auth {
            RpcAuth::UserPassword { user, password } => format!("{user}:{password}"),
            RpcAuth::Cookie(path) => std::fs::read_to_string(path)
                .map_err(|e| RpcError::Cookie {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?
                .trim()
                .to_string(),
        };
        Ok(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    }

    /// Calls `method` and returns its `result`.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let started = std::time::Instant::now();
        let result = self.call_unmeasured(method, params);
        // A node's refusal is an answer, not a failure of the link; only transport and
        // credential errors count as errors.
        let failed = matches!(
            result,
            Err(RpcError::Unreachable { .. } | RpcError::Unauthorized { .. })
        );
        RPC_STATS.record(started.elapsed(), failed);
        result
    }

    fn call_unmeasured(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let body = json!({"jsonrpc": "1.0", "id": "otedama", "method": method, "params": params});
        let response = self
            .agent
            .post(&self.url)
            .set("Authorization", &self.authorization()?)
            .send_json(body);
        json_rpc_result(response, &self.url, method, None)
    }

    /// getblocktemplate with the rules this coin needs.
    pub fn get_block_template(&self, rules: &[&str]) -> Result<Value, RpcError> {
        let request =
            json!({"rules": rules, "capabilities": ["coinbasetxn", "workid", "coinbase/append"]});
        self.call("getblocktemplate", json!([request]))
    }

    /// submitblock: `None` when the node accepted the block, or its reason otherwise.
    pub fn submit_block(&self, block_hex: &str) -> Result<Option<String>, RpcError> {
        match self.call("submitblock", json!([block_hex]))? {
            Value::Null => Ok(None),
            Value::String(reason) => Ok(Some(reason)),
            other => Ok(Some(other.to_string())),
        }
    }

    pub fn get_block_count(&self) -> Result<u64, RpcError> {
        let value = self.call("getblockcount", json!([]))?;
        value.as_u64().ok_or_else(|| RpcError::Malformed {
            method: "getblockcount".into(),
            detail: value.to_string(),
        })
    }

    pub fn get_blockchain_info(&self) -> Result<Value, RpcError> {
        self.call("getblockchaininfo", json!([]))
    }
}

/// A JSON-RPC reply turned into its `result`, the same for every node this crate speaks
/// to (Bitcoin Core's dialect, monerod's): 401 is bad credentials, a transport failure an
/// unreachable node, and any other HTTP status carries the node's error in its body (Bitcoin
/// Core answers errors with 500, or 404 for unknown methods). With `reply_bytes_max` the
/// reply is read to that many bytes at most.
pub(crate) fn json_rpc_result(
    response: Result<ureq::Response, ureq::Error>,
    url: &str,
    method: &str,
    reply_bytes_max: Option<u64>,
) -> Result<Value, RpcError> {
    let reply = json_reply(response, url, method, reply_bytes_max)?;
    if let Some(error) = reply.get("error").filter(|e| !e.is_null()) {
        return Err(RpcError::Node {
            method: method.into(),
            code: error["code"].as_i64().unwrap_or(0),
            message: error["message"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(reply.get("result").cloned().unwrap_or(Value::Null))
}

/// A reply's whole JSON body, with `json_rpc_result`'s handling of the transport and the
/// HTTP status: for monerod's endpoints outside JSON-RPC (`/get_transactions`), whose
/// body is the result itself.
pub(crate) fn json_reply(
    response: Result<ureq::Response, ureq::Error>,
    url: &str,
    method: &str,
    reply_bytes_max: Option<u64>,
) -> Result<Value, RpcError> {
    let response = match response {
        Ok(response) => response,
        Err(ureq::Error::Status(401, _)) => return Err(RpcError::Unauthorized { url: url.into() }),
        Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(transport)) => {
            return Err(RpcError::Unreachable {
                url: url.into(),
                detail: transport.to_string(),
            })
        }
    };
    let malformed = |detail: String| RpcError::Malformed {
        method: method.into(),
        detail,
    };
    match reply_bytes_max {
        Some(max) => serde_json::from_reader(std::io::Read::take(response.into_reader(), max))
            .map_err(|e| malformed(e.to_string())),
        None => response.into_json().map_err(|e| malformed(e.to_string())),
    }
}
