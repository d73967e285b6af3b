//! Pool roles as cluster "hosts" on one regtest node: each control plane and data plane
//! with its own data directory, ports and log file, all in one NATS cluster; and what the
//! failover tests read back from a control plane.

// Each test binary that includes this uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use otedama_tests::{PoolSetup, RegtestPair};

use crate::payout_scenario::{self, START_DIFFICULTY};

/// A pool role on the regtest node in the cluster as `name`, in its own data directory
/// under `root`, logging to `root/NAME.log`, with the payout scenario's flags.
pub fn role_setup(nodes: &RegtestPair, root: &Path, name: &str, urls: &[String]) -> PoolSetup {
    let mut setup = PoolSetup::new(nodes, &root.join(name), START_DIFFICULTY);
    setup.extra_args = payout_scenario::payout_flags("pplns", &root.join("admin-token"))
        .into_iter()
        .chain(["--cluster-host".to_string(), name.to_string()])
        .chain(
            urls.iter()
                .flat_map(|url| ["--nats-url".to_string(), url.clone()]),
        )
        .collect();
    setup.log_file = Some(root.join(format!("{name}.log")));
    setup
}

/// The accepted blocks a control plane lists, by hash, with their rewards.
pub fn accepted(pool: &PoolSetup) -> BTreeMap<String, u64> {
    pool.accepted_blocks()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["hash"].as_str().unwrap().to_string(),
                b["reward"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What the ledger of `pool` says `address` has: (immature, mature).
pub fn balance(pool: &PoolSetup, address: &str) -> Option<(u64, u64)> {
    let page: Value = pool.get_json(&format!("/api/v1/miners/{address}")).ok()?;
    Some((
        page["balance_immature"].as_u64()?,
        page["balance_mature"].as_u64()?,
    ))
}
