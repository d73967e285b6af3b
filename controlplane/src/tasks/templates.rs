//! Work from the node: waits for it at start, fetches block templates when its best
//! block changes (polled) or on the refresh interval, builds and publishes the jobs, and
//! keeps the fee history FPPS prices from. The synthetic chain's job loop for load tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use otedama_shared::job::AlgorithmName;
use otedama_shared::limits::NETWORK_DIFFICULTY_CAP_MIN;

use crate::api::now_ms;
use crate::config::PoolConfig;
use crate::stats::{BlockValue, PoolState};
use otedama_chain::jobs::build_job;
use otedama_chain::jobs::store::JobStore;
use otedama_chain::rpc::{RpcClient, RpcError};
use otedama_chain::synthetic;
use otedama_chain::template::BlockTemplate;

/// Shortest gap between two template fetches, so that a burst of triggers (blocks found
/// back to back on regtest) cannot become a busy loop.
pub(crate) const TEMPLATE_FETCH_INTERVAL_MIN_MS: u64 = 100;
/// After a failed `getblocktemplate` (the node busy, a mempool race, a timeout), the next
/// try comes this soon instead of at the next refresh: until it works, miners hash on
/// work that may be stale, and no new block may come to trigger a fetch.
pub(crate) const TEMPLATE_RETRY_AFTER_FAILURE_MS: u64 = 1000;
/// How often the node's best block is polled for a change (a new block, ours or not).
pub(crate) const BEST_BLOCK_POLL_MS: u64 = 100;

/// Waits until the node answers RPC and can produce a template, explaining what is wrong
/// while it cannot.
pub(crate) fn wait_for_node(rpc: &RpcClient, rules: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let error = match rpc.get_block_template(rules) {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        let hint = match error.node_code() {
            Some(-9) => "the node has no peers (getblocktemplate needs one, even on regtest)",
            Some(-10) => {
                "the node is still in initial block download (regtest: mine one block first)"
            }
            Some(-8) => "the node refused our template rules",
            _ => "",
        };
        if matches!(error, RpcError::Unauthorized { .. }) || Instant::now() > deadline {
            return Err(anyhow::anyhow!("{error} {hint}"));
        }
        tracing::warn!(%error, hint, "waiting for the node");
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub(crate) struct TemplateKey {
    prevhash: String,
    txids: Vec<String>,
    has_mweb: bool,
}

impl TemplateKey {
    fn of(template: &BlockTemplate) -> Self {
        TemplateKey {
            prevhash: template.previousblockhash.clone(),
            txids: template
                .transactions
                .iter()
                .map(|t| t.txid.clone())
                .collect(),
            has_mweb: template.mweb.is_some(),
        }
    }
}

/// Blocks whose fees FPPS averages over.
pub(crate) const FEE_HISTORY_BLOCKS_MAX: usize = 144;

/// The fees of the newest template at each recent height.
#[derive(Default)]
pub(crate) struct FeeHistory {
    by_height: std::collections::BTreeMap<u64, u64>,
}

impl FeeHistory {
    fn record(&mut self, height: u64, fees: u64) {
        self.by_height.insert(height, fees);
        while self.by_height.len() > FEE_HISTORY_BLOCKS_MAX {
            self.by_height.pop_first();
        }
    }

    fn mean(&self) -> u64 {
        let count = self.by_height.len().max(1) as u64;
        self.by_height.values().sum::<u64>() / count
    }
}

/// The network difficulty for compact `bits` (hex), on the pool's share-difficulty scale.
pub fn network_difficulty(bits_hex: &str, algorithm: otedama_kernels::Algorithm) -> f64 {
    u32::from_str_radix(bits_hex, 16)
        .ok()
        .and_then(|bits| otedama_kernels::Target::from_compact(bits).ok())
        .map_or(0.0, |target| target.to_difficulty(algorithm))
}

/// Builds jobs, stores them (and in cluster mode sends them to the job stream), and
/// publishes them: a job no other control plane could rebuild a block from is never sent
/// to miners.
struct JobMaker<'a> {
    config: &'a PoolConfig,
    payout_script: Vec<u8>,
    algorithm: AlgorithmName,
    jobs: &'a JobStore,
    state: &'a PoolState,
    cluster: Option<&'a crate::service::NodeCluster>,
    next_job_id: u64,
}

impl JobMaker<'_> {
    /// Builds, stores and publishes a job of `template`; the error says why it was not
    /// published.
    fn make(&mut self, template: &BlockTemplate, clean: bool) -> Result<(), String> {
        // Ids follow the wall clock (ms) as well as the store: in cluster mode a new
        // leader must never reuse a former leader's ids (data planes hold jobs by id, and
        // a block share names its job by id), and it takes over a lease term (20 s) after
        // the former one's last job, whose record it has read (its clock may be behind the
        // former leader's).
        let stored_next = self
            .jobs
            .newest_job_id()
            .ok()
            .flatten()
            .map_or(0, |id| id.saturating_add(1));
        self.next_job_id = self.next_job_id.max(now_ms()).max(stored_next);
        let job = build_job(
            template,
            self.next_job_id,
            &self.payout_script,
            self.config.coinbase_tag.as_bytes(),
            clean,
            self.algorithm,
        )
        .map_err(|error| format!("cannot build a job from the template: {error}"))?;
        // On disk (and in the job stream) before any miner can find a block on it.
        self.jobs.put(&job).map_err(|error| {
            format!("cannot store the new job, so it is not sent to miners: {error}")
        })?;
        if let Some((_, publisher)) = self.cluster {
            publisher
                .publish(&job.job.job_id.to_string(), &JobStore::encode(&job))
                .map_err(|error| {
                    format!("the new job is not in the job stream, so it is not sent to miners: {error}")
                })?;
        }
        tracing::info!(
            job_id = self.next_job_id,
            height = template.height,
            clean,
            txs = template.transactions.len(),
            mweb = template.mweb.is_some(),
            "new job"
        );
        self.next_job_id += 1;
        self.state.publish_job(Arc::new(job));
        Ok(())
    }
}

/// Builds and publishes jobs from templates. Fetches on a trigger (a new best block or an
/// accepted block) and every `template_refresh_s`; a data plane that links gets a new job
/// of the newest template at once, without a fetch (`PoolState::request_fresh_job`). In
/// cluster mode only the leader builds jobs, and each goes to the job stream before any
/// miner has it (a standby must be able to rebuild a block found on it).
pub(crate) fn template_loop(
    config: PoolConfig,
    rpc: RpcClient,
    state: Arc<PoolState>,
    jobs: Arc<JobStore>,
    triggers: Receiver<()>,
    cluster: Option<crate::service::NodeCluster>,
) {
    let params = config.coin_params();
    // Ids continue after the stored ones, so one id never names two jobs.
    let stored_newest = jobs.newest_job_id().unwrap_or_else(|error| {
        tracing::error!(%error, "cannot read the newest stored job id");
        None
    });
    let mut maker = JobMaker {
        config: &config,
        payout_script: config.payout_script().expect("validated at start"),
        algorithm: algorithm_name(&config),
        jobs: &jobs,
        state: &state,
        cluster: cluster.as_ref(),
        next_job_id: now_ms().max(stored_newest.map_or(0, |id| id.saturating_add(1))),
    };
    let mut last: Option<TemplateKey> = None;
    // The template of the newest job: a fresh job is built from it.
    let mut newest_template: Option<BlockTemplate> = None;
    let mut fees = FeeHistory::default();
    let refresh = Duration::from_secs(config.template_refresh_s.max(1));
    let mut failed = false;
    let mut floor_above_network = false;
    loop {
        // A standby builds nothing (and does not load the node): it looks every second
        // whether it leads, so it builds work at once when it takes over (the tip may have
        // moved during the lease's lapse), and its first job is clean.
        if cluster
            .as_ref()
            .is_some_and(|(leadership, _)| !leadership.leads())
        {
            last = None;
            newest_template = None;
            let _ = triggers.recv_timeout(Duration::from_millis(TEMPLATE_RETRY_AFTER_FAILURE_MS));
            while triggers.try_recv().is_ok() {}
            continue;
        }
        // A data plane linked: a new job of the newest template, now, whatever the node
        // does (with no template yet, the first one's job is new to every link).
        if state.take_fresh_job_request() {
            if let Some(template) = &newest_template {
                if let Err(error) = maker.make(template, false) {
                    tracing::error!(%error, "no new job for a data plane that linked; trying again");
                    state.keep_fresh_job_request();
                    failed = true;
                }
            }
        }
        let fetched_at = Instant::now();
        let failed_before = std::mem::take(&mut failed);
        match rpc
            .get_block_template(params.template_rules())
            .map(BlockTemplate::parse)
        {
            Ok(Ok(template)) => {
                fees.record(template.height, template.fees());
                let network_difficulty = network_difficulty(&template.bits, params.algorithm);
                state.set_block_value(BlockValue {
                    subsidy: template.coinbasevalue.saturating_sub(template.fees()),
                    fees_mean: fees.mean(),
                    network_difficulty,
                });
                // Miners are held to at most the network's difficulty, except by the
                // floor (`WorkState::network_cap`): one above it loses the blocks between.
                let floor = config.difficulty_floor();
                let above =
                    network_difficulty >= NETWORK_DIFFICULTY_CAP_MIN && floor > network_difficulty;
                if above && !floor_above_network {
                    tracing::warn!(
                        network_difficulty,
                        difficulty_min = floor,
                        "the pool's difficulty floor is above the network's: miners will not send the blocks whose hashes fall between; lower difficulty_min"
                    );
                }
                floor_above_network = above;
                let key = TemplateKey::of(&template);
                let clean = last.as_ref().is_none_or(|l| l.prevhash != key.prevhash);
                let changed = clean
                    || last
                        .as_ref()
                        .is_some_and(|l| l.txids != key.txids || l.has_mweb != key.has_mweb);
                if changed {
                    // A job not published is tried again at the next fetch.
                    match maker.make(&template, clean) {
                        Ok(()) => {
                            last = Some(key);
                            newest_template = Some(template);
                        }
                        Err(error) => {
                            failed = true;
                            tracing::error!(%error, "no new job from the template")
                        }
                    }
                }
            }
            Ok(Err(error)) => {
                failed = true;
                tracing::error!(%error, "node sent a template we cannot read")
            }
            Err(error) => {
                failed = true;
                // Once per outage, not once a second.
                if failed_before {
                    tracing::debug!(%error, "getblocktemplate failed again");
                } else {
                    tracing::warn!(%error, "getblocktemplate failed; trying again every second");
                }
            }
        }
        let floor = Duration::from_millis(TEMPLATE_FETCH_INTERVAL_MIN_MS)
            .saturating_sub(fetched_at.elapsed());
        std::thread::sleep(floor);
        let wait = if failed {
            Duration::from_millis(TEMPLATE_RETRY_AFTER_FAILURE_MS)
        } else {
            refresh
        };
        let _ = triggers.recv_timeout(wait);
        while triggers.try_recv().is_ok() {}
    }
}

/// Watches the node's best block with `getbestblockhash` every `BEST_BLOCK_POLL_MS` and
/// triggers a template fetch when it changes, as ckpool's block poll does. Not a
/// `getblocktemplate` long-poll: the node keeps serving a long-poll on one of its few RPC
/// threads after the client is gone, until a block or transaction ends it, so every
/// killed or restarted control plane would take a node thread with it. A poll holds none.
pub(crate) fn best_block_poll_loop(rpc: RpcClient, triggers: Sender<()>) {
    let mut last: Option<Value> = None;
    loop {
        match rpc.call("getbestblockhash", serde_json::json!([])) {
            Ok(best) if last.as_ref() != Some(&best) => {
                if last.is_some() {
                    let _ = triggers.send(());
                }
                last = Some(best);
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "getbestblockhash failed"),
        }
        std::thread::sleep(Duration::from_millis(BEST_BLOCK_POLL_MS));
    }
}

pub(crate) fn algorithm_name(config: &PoolConfig) -> AlgorithmName {
    match config.coin_params().algorithm {
        otedama_kernels::Algorithm::Scrypt => AlgorithmName::Scrypt,
        otedama_kernels::Algorithm::Sha256d => AlgorithmName::Sha256d,
    }
}

/// Publishes a synthetic block every `synthetic_job_interval_ms` (load tests only), and
/// a new job of the same block whenever one is asked for (`PoolState::request_fresh_job`).
pub(crate) fn synthetic_loop(config: PoolConfig, state: Arc<PoolState>) {
    let payout_script = config.payout_script().expect("validated at start");
    let algorithm = algorithm_name(&config);
    let interval = Duration::from_millis(config.synthetic_job_interval_ms.max(1));
    let (waker, woken) = crossbeam_channel::bounded(1);
    state.wake_for_fresh_jobs(waker);
    let mut job_id = now_ms();
    let mut sequence = 0u64;
    let mut next_block = Instant::now() + interval;
    let mut new_block = true;
    loop {
        let now = now_ms();
        // As the node's jobs: never below the wall clock (see `template_loop`).
        job_id = job_id.max(now);
        let template = synthetic::template(sequence, now);
        let tag = synthetic::coinbase_tag(now);
        match build_job(
            &template,
            job_id,
            &payout_script,
            tag.as_bytes(),
            new_block,
            algorithm,
        ) {
            Ok(job) => {
                tracing::debug!(job_id, height = template.height, "new synthetic job");
                state.publish_job(Arc::new(job));
                job_id += 1;
            }
            Err(error) => tracing::error!(%error, "cannot build a synthetic job"),
        }
        // Until the next block is due, only a request for a new job wakes the loop.
        new_block = loop {
            let _ = woken.recv_timeout(next_block.saturating_duration_since(Instant::now()));
            if Instant::now() >= next_block {
                state.take_fresh_job_request();
                sequence += 1;
                next_block = Instant::now() + interval;
                break true;
            }
            if state.take_fresh_job_request() {
                break false;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FPPS averages the fees of the newest `FEE_HISTORY_BLOCKS_MAX` heights: one more
    /// height drops exactly the oldest, and a new template at a kept height replaces it.
    #[test]
    fn the_fee_history_holds_its_limit() {
        let mut history = FeeHistory::default();
        let heights = FEE_HISTORY_BLOCKS_MAX as u64;
        for height in 1..=heights {
            history.record(height, 1_000);
        }
        assert_eq!(history.mean(), 1_000);
        history.record(heights, 1_000 + heights);
        assert_eq!(history.by_height.len(), FEE_HISTORY_BLOCKS_MAX);
        assert_eq!(history.mean(), 1_001);
        history.record(heights + 1, 1_000);
        assert_eq!(history.by_height.len(), FEE_HISTORY_BLOCKS_MAX);
        assert_eq!(history.by_height.first_key_value(), Some((&2, &1_000)));
    }
}
