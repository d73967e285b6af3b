//! The control-plane process: template polling, job publishing, block submission, the IPC
//! server and the HTTP API, wired together.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use otedama_kernels::sha256d;
use otedama_shared::hex32::display_hex;
use otedama_shared::job::AlgorithmName;
use otedama_shared::sv1::BlockCandidate;

use std::sync::{Mutex, RwLock};

use crate::api::{ApiState, PayoutHandles};
use crate::audit::AuditLog;
use crate::blocks::{BlockRecord, BlockStore, STALE_CANDIDATE_REASON_PREFIX};
use crate::chain::rpc::{RpcClient, RpcError};
use crate::chain::synthetic;
use crate::chain::template::BlockTemplate;
use crate::chain::wallet::NodeWallet;
use crate::config::{ChainSource, PoolConfig};
use crate::jobs::scan::{BlockScan, BLOCK_SCAN_BACKFILL_SHARES};
use crate::jobs::store::JobStore;
use crate::jobs::submit::{
    chain_place_when_answered, submit_until_settled, CandidateQueue, CandidateSource, ChainPlace,
    Pushed, SUBMITTER_THREADS, SUBMIT_READ_TIMEOUT_S,
};
use crate::jobs::{assemble_block, build_job, BuiltJob};
use crate::payouts::runner::{fault_file_hook, share_log_tails, PayoutRunner, PayoutSettings};
use crate::stats::{BlockValue, PoolState};
use otedama_ledger::ledger::Ledger;
use otedama_ledger::lifecycle::{classify, BlockStatus};
use otedama_ledger::payments::PayoutPolicy;
use otedama_ledger::schemes::Scheme;
use otedama_ledger::shares::ShareHistory;
use otedama_ledger::Amount;
use otedama_sharelog::tail::ShareLogTail;

/// Shortest gap between two template fetches, so that a burst of triggers (blocks found
/// back to back on regtest) cannot become a busy loop.
const TEMPLATE_FETCH_INTERVAL_MIN_MS: u64 = 100;
/// After a failed `getblocktemplate` (the node busy, a mempool race, a timeout), the next
/// try comes this soon instead of at the next refresh: until it works, miners hash on
/// work that may be stale, and no new block may come to trigger a fetch.
const TEMPLATE_RETRY_AFTER_FAILURE_MS: u64 = 1000;
/// Milliseconds between two reads of the share logs by the block scan.
const BLOCK_SCAN_INTERVAL_MS: u64 = 500;
/// How often the node's best block is polled for a change (a new block, ours or not).
const BEST_BLOCK_POLL_MS: u64 = 100;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits until the node answers RPC and can produce a template, explaining what is wrong
/// while it cannot.
fn wait_for_node(rpc: &RpcClient, rules: &[&str]) -> anyhow::Result<()> {
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

struct TemplateKey {
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
const FEE_HISTORY_BLOCKS_MAX: usize = 144;

/// The fees of the newest template at each recent height.
#[derive(Default)]
struct FeeHistory {
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

/// Builds and publishes jobs from templates. Fetches on a trigger (a new best block or an
/// accepted block) and every `template_refresh_s`.
fn template_loop(
    config: PoolConfig,
    rpc: RpcClient,
    state: Arc<PoolState>,
    jobs: Arc<JobStore>,
    triggers: Receiver<()>,
) {
    let params = config.coin_params();
    let payout_script = config.payout_script().expect("validated at start");
    let algorithm = algorithm_name(&config);
    // Ids continue after the stored ones, so one id never names two jobs.
    let stored_newest = jobs.newest_job_id().unwrap_or_else(|error| {
        tracing::error!(%error, "cannot read the newest stored job id");
        None
    });
    let mut next_job_id = now_ms().max(stored_newest.map_or(0, |id| id + 1));
    let mut last: Option<TemplateKey> = None;
    let mut fees = FeeHistory::default();
    let refresh = Duration::from_secs(config.template_refresh_s.max(1));
    let mut failed = false;
    loop {
        let fetched_at = Instant::now();
        let failed_before = std::mem::take(&mut failed);
        match rpc
            .get_block_template(params.template_rules())
            .map(BlockTemplate::parse)
        {
            Ok(Ok(template)) => {
                fees.record(template.height, template.fees());
                state.set_block_value(BlockValue {
                    subsidy: template.coinbasevalue.saturating_sub(template.fees()),
                    fees_mean: fees.mean(),
                    network_difficulty: network_difficulty(&template.bits, params.algorithm),
                });
                let key = TemplateKey::of(&template);
                let clean = last.as_ref().is_none_or(|l| l.prevhash != key.prevhash);
                let changed = clean
                    || last
                        .as_ref()
                        .is_some_and(|l| l.txids != key.txids || l.has_mweb != key.has_mweb);
                if changed {
                    match build_job(
                        &template,
                        next_job_id,
                        &payout_script,
                        config.coinbase_tag.as_bytes(),
                        clean,
                        algorithm,
                    ) {
                        // On disk before any miner can find a block on it; a job that
                        // cannot be stored is not published (the next fetch tries again).
                        Ok(job) => match jobs.put(&job) {
                            Ok(()) => {
                                tracing::info!(
                                    job_id = next_job_id,
                                    height = template.height,
                                    clean,
                                    txs = template.transactions.len(),
                                    mweb = key.has_mweb,
                                    "new job"
                                );
                                next_job_id += 1;
                                state.publish_job(Arc::new(job));
                                last = Some(key);
                            }
                            Err(error) => {
                                tracing::error!(%error, "cannot store the new job, so it is not sent to miners: a block found on it could not be rebuilt after a restart")
                            }
                        },
                        Err(error) => {
                            tracing::error!(%error, "cannot build a job from the template")
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
fn best_block_poll_loop(rpc: RpcClient, triggers: Sender<()>) {
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

/// A job by id: the ones this process built are in memory, older ones on disk. `Err`
/// when the disk could not say, which is not the same as "no such job".
fn find_job(
    state: &PoolState,
    jobs: &JobStore,
    job_id: u64,
) -> Result<Option<Arc<BuiltJob>>, crate::jobs::store::JobStoreError> {
    match state.job(job_id) {
        Some(job) => Ok(Some(job)),
        None => Ok(jobs.get(job_id)?.map(Arc::new)),
    }
}

/// Reads the share logs for block shares the live path missed (see `jobs::scan`).
fn block_scan_loop(
    config: PoolConfig,
    state: Arc<PoolState>,
    store: Arc<BlockStore>,
    jobs: Arc<JobStore>,
    queue: Arc<Candidates>,
) {
    let processes = config.dataplane_processes as u32;
    let tail = |process: u32, cursor: Option<u64>| {
        ShareLogTail::new(
            process,
            config.share_log_path(process as usize),
            config.data_dir.join(format!("block-scan-{process}")),
            cursor,
            BLOCK_SCAN_BACKFILL_SHARES,
        )
    };
    let mut scan = BlockScan::new(&store, tail, processes);
    let job = |job_id: u64| find_job(&state, &jobs, job_id);
    loop {
        scan.step(&store, &queue, &job);
        std::thread::sleep(Duration::from_millis(BLOCK_SCAN_INTERVAL_MS));
    }
}

/// Block candidates on their way from the data planes' links to the submitters' queue.
/// The forwarding thread only hashes a header and pushes it, so this stays near empty; a
/// link that finds it full drops the candidate (logged), which the block scan finds again
/// in the share log. A link never waits on it.
pub const CANDIDATES_IN_TRANSIT_MAX: usize = 4096;

fn candidate_channel() -> (Sender<BlockCandidate>, Receiver<BlockCandidate>) {
    crossbeam_channel::bounded(CANDIDATES_IN_TRANSIT_MAX)
}

/// The block candidates waiting for a submitter, with where each came from.
type Candidates = CandidateQueue<(BlockCandidate, CandidateSource)>;

/// Moves candidates from the data planes' links into the submitters' queue.
fn queue_live_candidates(queue: Arc<Candidates>, candidates: Receiver<BlockCandidate>) {
    for candidate in candidates {
        let Ok(header) = <[u8; 80]>::try_from(candidate.header.as_slice()) else {
            tracing::warn!(
                job_id = candidate.job_id,
                "block candidate without an 80-byte header"
            );
            continue;
        };
        let hash = sha256d(&header);
        let height = candidate.height;
        if let Pushed::QueuedDropping(dropped) =
            queue.push(hash, height, (candidate, CandidateSource::Live))
        {
            tracing::warn!(dropped = %display_hex(&dropped), "block candidate queue full: dropped the lowest (the block scan finds it again)");
        }
    }
}

/// One of `SUBMITTER_THREADS`: takes the best candidate, settles it with the node and
/// records the outcome.
fn submitter_loop(
    rpc: RpcClient,
    state: Arc<PoolState>,
    store: Arc<BlockStore>,
    jobs: Arc<JobStore>,
    queue: Arc<Candidates>,
    triggers: Sender<()>,
) {
    loop {
        let (hash, (candidate, source)) = queue.pop();
        match find_job(&state, &jobs, candidate.job_id) {
            Ok(Some(job)) => {
                settle_candidate(&rpc, &state, &store, &job, &candidate, source, &triggers)
            }
            // Not recorded either way: the block scan hands it over again, and says so if
            // the job is gone for good.
            Ok(None) => tracing::warn!(
                job_id = candidate.job_id,
                "block candidate for a job neither kept nor stored"
            ),
            Err(error) => tracing::error!(
                %error,
                job_id = candidate.job_id,
                "cannot read the job of a block candidate"
            ),
        }
        queue.done(&hash);
    }
}

/// Submits one candidate unless it is recorded already or can no longer win, and records
/// what the node said.
fn settle_candidate(
    rpc: &RpcClient,
    state: &PoolState,
    store: &BlockStore,
    job: &BuiltJob,
    candidate: &BlockCandidate,
    source: CandidateSource,
    triggers: &Sender<()>,
) {
    let Ok(header) = <[u8; 80]>::try_from(candidate.header.as_slice()) else {
        return;
    };
    let hash = display_hex(&sha256d(&header));
    if store.contains(&hash).unwrap_or(false) {
        return;
    }
    let prevhash: [u8; 32] = header[4..36].try_into().expect("32 bytes");
    let can_still_win = || state.tip_prevhash().is_none_or(|tip| tip == prevhash);
    let stale =
        format!("{STALE_CANDIDATE_REASON_PREFIX}: the pool's tip moved on before submission");
    let reason = match (can_still_win(), source) {
        // Never submitted, and it cannot win: no round trip.
        (false, CandidateSource::Live) => Some(stale),
        // A process before this one may have submitted it: ask the node first.
        (false, CandidateSource::Recovered) => match chain_place_when_answered(rpc, &hash) {
            Ok(ChainPlace::Active) => None,
            Ok(_) => Some(stale),
            // Left unrecorded: the block scan hands it over again later.
            Err(error) => {
                tracing::error!(%hash, %error, "the node does not say whether it has a recovered block; asking again later");
                return;
            }
        },
        (true, _) => match assemble_block(job, candidate) {
            Ok(block) => submit_until_settled(rpc, &hex::encode(&block), &hash, &can_still_win),
            Err(error) => Some(format!("assembly-failed: {error}")),
        },
    };
    let is_stale = reason
        .as_deref()
        .is_some_and(|r| r.starts_with(STALE_CANDIDATE_REASON_PREFIX));
    let record = BlockRecord {
        hash: hash.clone(),
        height: candidate.height,
        worker: candidate.worker.clone(),
        job_id: candidate.job_id,
        submitted_at_ms: now_ms(),
        rejected_reason: reason.clone(),
        reward: job.coinbase_value,
        status: BlockStatus::Pending,
        confirmations: 0,
        network_difficulty: otedama_kernels::Target::from_compact(job.job.bits)
            .map_or(0.0, |t| t.to_difficulty(job.job.algorithm.into())),
        header: hex::encode(&candidate.header),
        found_at_ms: candidate.found_at_ms,
    };
    let first_time = store.record(&record, !is_stale).unwrap_or_else(|error| {
        tracing::error!(%error, %hash, "cannot record block outcome");
        true
    });
    match (&reason, first_time) {
        (None, true) => {
            state
                .blocks_found
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%hash, height = candidate.height, worker = %candidate.worker, "block accepted by the node");
            state.publish_event(serde_json::json!({"type": "block", "block": record}));
            let _ = triggers.send(());
        }
        (Some(_), true) if is_stale => {
            tracing::debug!(%hash, height = candidate.height, "stale block candidate")
        }
        (Some(reason), true) => {
            state
                .blocks_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%hash, height = candidate.height, reason = %reason, "block rejected by the node");
        }
        (_, false) => tracing::info!(%hash, "block already recorded"),
    }
}

/// Seconds between checks of found blocks' confirmations.
const BLOCK_STATUS_CHECK_INTERVAL_S: u64 = 10;

/// Follows every accepted, not yet final block on the node: pending → confirmed once it
/// has `coinbase_maturity` confirmations, or orphaned once it leaves the best chain.
fn block_status_loop(rpc: RpcClient, store: Arc<BlockStore>, coinbase_maturity: u64) {
    loop {
        for block in store.pending() {
            let confirmations = match rpc.call("getblockheader", serde_json::json!([block.hash])) {
                Ok(header) => header["confirmations"].as_i64().unwrap_or(0),
                Err(error) => {
                    tracing::warn!(%error, hash = %block.hash, "cannot check a found block");
                    continue;
                }
            };
            let status = classify(confirmations, coinbase_maturity);
            if status != block.status || confirmations != block.confirmations {
                if status != block.status {
                    tracing::info!(hash = %block.hash, height = block.height, ?status, confirmations, "block status changed");
                }
                if let Err(error) = store.update_status(&block.hash, status, confirmations) {
                    tracing::error!(%error, hash = %block.hash, "cannot record block status");
                }
            }
        }
        std::thread::sleep(Duration::from_secs(BLOCK_STATUS_CHECK_INTERVAL_S));
    }
}

fn algorithm_name(config: &PoolConfig) -> AlgorithmName {
    match config.coin_params().algorithm {
        otedama_kernels::Algorithm::Scrypt => AlgorithmName::Scrypt,
        otedama_kernels::Algorithm::Sha256d => AlgorithmName::Sha256d,
    }
}

/// Publishes a synthetic block every `synthetic_job_interval_ms` (load tests only).
fn synthetic_loop(config: PoolConfig, state: Arc<PoolState>) {
    let payout_script = config.payout_script().expect("validated at start");
    let algorithm = algorithm_name(&config);
    let interval = Duration::from_millis(config.synthetic_job_interval_ms.max(1));
    let mut job_id = now_ms();
    for sequence in 0.. {
        let now = now_ms();
        let template = synthetic::template(sequence, now);
        let tag = synthetic::coinbase_tag(now);
        match build_job(
            &template,
            job_id,
            &payout_script,
            tag.as_bytes(),
            true,
            algorithm,
        ) {
            Ok(job) => {
                tracing::debug!(job_id, height = template.height, "new synthetic job");
                state.publish_job(Arc::new(job));
                job_id += 1;
            }
            Err(error) => tracing::error!(%error, "cannot build a synthetic job"),
        }
        std::thread::sleep(interval);
    }
}

/// With a synthetic chain there is no node to take blocks: count and log them.
fn discard_candidates(state: Arc<PoolState>, candidates: Receiver<BlockCandidate>) {
    for candidate in candidates {
        state
            .blocks_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(height = candidate.height, worker = %candidate.worker, "synthetic chain: block candidate not submitted");
    }
}

/// Runs the control plane until the process is stopped.
pub fn run(config: PoolConfig) -> anyhow::Result<()> {
    config.ensure_data_dir()?;
    config.check_before_start()?;
    let store = Arc::new(
        BlockStore::open(&config.control_db_path())
            .with_context(|| format!("opening {}", config.control_db_path().display()))?,
    );
    let (found, rejected) = store.counts();
    let state = PoolState::new(found, rejected);
    let (candidate_tx, candidate_rx) = candidate_channel();
    match config.chain {
        ChainSource::Node => start_node_threads(&config, &state, &store, candidate_rx)?,
        ChainSource::Synthetic => {
            tracing::warn!("synthetic chain: jobs are made up and no block is ever submitted");
            let (config, state_for_jobs) = (config.clone(), state.clone());
            std::thread::Builder::new()
                .name("synthetic".into())
                .spawn(move || synthetic_loop(config, state_for_jobs))?;
            let state = state.clone();
            std::thread::Builder::new()
                .name("submitter".into())
                .spawn(move || discard_candidates(state, candidate_rx))?;
        }
    }
    let audit = Arc::new(
        AuditLog::open(&config.data_dir.join("audit"))
            .with_context(|| format!("opening the audit log in {}", config.data_dir.display()))?,
    );
    let payouts = start_payouts(&config, &state, &store, &audit)?;
    {
        let (audit, retention_days) = (audit.clone(), config.audit_retention_days);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || audit_housekeeping(&audit, retention_days))?;
    }
    serve(config, state, store, payouts, audit, candidate_tx)
}

/// Cancels the resting orders of every address that may not move value now: denied, or
/// with payouts waiting on KYC. Run when the exchange opens.
fn freeze_held_orders(dex: &crate::dex::SharedDex, state: &PoolState, payouts: &PayoutHandles) {
    let mut held: Vec<String> = payouts
        .settings
        .read()
        .expect("settings lock")
        .policy
        .frozen
        .iter()
        .cloned()
        .collect();
    match payouts.ledger.lock().expect("ledger lock").kyc_records() {
        Ok(records) => held.extend(
            records
                .into_iter()
                .filter(|(_, record)| record.state.holds())
                .map(|(address, _)| address),
        ),
        Err(error) => tracing::error!(%error, "cannot read KYC records"),
    }
    let mut dex = dex.lock().expect("dex lock");
    for address in held {
        crate::dex::freeze_orders(&mut dex, state, &address);
    }
}

/// Puts a deny list in force: the data planes refuse its addresses at authorize (and
/// drop their connections), payouts hold their balances, and the audit log records the
/// import and every denied address that holds a balance. Returns whether the data planes
/// enforce it too: `false` when it and the operator's bans exceed `BANS_MAX` together, in
/// which case the balances are frozen (and audited as such) but authorize still goes by
/// the previous list.
fn apply_deny_list(
    list: &otedama_compliance::deny_list::DenyList,
    bans: &crate::bans::BanStore,
    payouts: &PayoutHandles,
    audit: &AuditLog,
    previous: Option<&otedama_compliance::deny_list::DenyList>,
    state: &PoolState,
) -> anyhow::Result<bool> {
    // The exchange's lock first, held across the freeze and the cancels: no order of a
    // newly denied address matches in between.
    let mut dex = payouts.dex.get().map(|dex| dex.lock().expect("dex lock"));
    // Frozen first: whatever else fails below, no denied address is paid or trades.
    payouts
        .settings
        .write()
        .expect("settings lock")
        .policy
        .frozen = list.addresses.clone();
    if let Some(dex) = dex.as_deref_mut() {
        let newly: Vec<&String> = match previous {
            Some(previous) => list.addresses.difference(&previous.addresses).collect(),
            None => list.addresses.iter().collect(),
        };
        for address in newly {
            crate::dex::freeze_orders(dex, state, address);
        }
    }
    drop(dex);
    // The data planes refuse the addresses at authorize only if the deny list and the
    // operator's bans fit BANS_MAX together; the balances are frozen either way.
    let enforced = match bans.set_denied(list.addresses.clone()) {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "the deny list's balances are frozen, but with the operator's bans it is too long for the data planes: they still refuse by the previous list; remove operator bans");
            false
        }
    };
    let added = previous.map_or(list.addresses.len(), |p| {
        list.addresses.difference(&p.addresses).count()
    });
    let removed = previous.map_or(0, |p| p.addresses.difference(&list.addresses).count());
    let files: serde_json::Map<String, serde_json::Value> = list
        .per_file
        .iter()
        .map(|(path, count)| (path.display().to_string(), (*count).into()))
        .collect();
    tracing::info!(
        addresses = list.addresses.len(),
        added,
        removed,
        "deny list in force"
    );
    audit.append(
        now_ms(),
        "system",
        "deny_list.import",
        serde_json::json!({"addresses": list.addresses.len(), "added": added, "removed": removed, "files": files, "enforced_at_authorize": enforced}),
    )?;
    let balances = payouts.ledger.lock().expect("ledger lock").all_balances()?;
    for (address, balance) in balances {
        let newly = previous.is_none_or(|p| !p.addresses.contains(&address));
        if newly && list.addresses.contains(&address) {
            tracing::warn!(%address, mature = balance.mature, immature = balance.immature, "denied address holds a balance; it is frozen");
            audit.append(
                now_ms(),
                "system",
                "deny_list.hit",
                serde_json::json!({"address": address, "mature": balance.mature, "immature": balance.immature, "frozen": true}),
            )?;
        }
    }
    Ok(enforced)
}

/// Seconds between exports of the audit chain's head (a log line; `/metrics` has it always)
/// and retention passes.
const AUDIT_HOUSEKEEPING_INTERVAL_S: u64 = 300;

/// Publishes the audit chain's head so it can be anchored outside the host, and prunes
/// entries older than the retention at a checkpoint.
fn audit_housekeeping(audit: &AuditLog, retention_days: u64) {
    loop {
        let head = audit.head();
        tracing::info!(entries = head.entries, head = %head.hash, "audit chain head");
        if retention_days > 0 {
            let cutoff_ms = now_ms().saturating_sub(retention_days * 86_400_000);
            match audit.first_at_or_after(cutoff_ms) {
                Ok(Some(first_kept)) => match audit.prune_before(first_kept, now_ms()) {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(
                        pruned,
                        first_kept,
                        "audit entries past retention pruned at a checkpoint"
                    ),
                    Err(error) => tracing::error!(%error, "audit retention failed"),
                },
                // Everything is older than the cutoff: keep the newest entry, so the head
                // stays provable from the log itself.
                Ok(None) if head.entries > 0 => {
                    if let Err(error) = audit.prune_before(head.entries - 1, now_ms()) {
                        tracing::error!(%error, "audit retention failed");
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::error!(%error, "audit retention failed"),
            }
        }
        std::thread::sleep(Duration::from_secs(AUDIT_HOUSEKEEPING_INTERVAL_S));
    }
}

/// The ledger and the payout thread.
fn start_payouts(
    config: &PoolConfig,
    state: &Arc<PoolState>,
    store: &Arc<BlockStore>,
    audit: &Arc<AuditLog>,
) -> anyhow::Result<PayoutHandles> {
    let params = config.coin_params();
    let fee_account = if config.pool_fee_address.is_empty() {
        config.payout_address.clone()
    } else {
        otedama_shared::address::script_for_address(&params.address, &config.pool_fee_address)
            .context("checking pool_fee_address")?;
        config.pool_fee_address.clone()
    };
    let settings = PayoutSettings {
        scheme: config.scheme(),
        pool_fee_ppm: config.pool_fee_ppm(),
        fee_account,
        payout_interval_s: config.payout_interval_s,
        payout_confirmations: config.payout_confirmations,
        policy: PayoutPolicy {
            payout_min: Amount::parse(&config.payout_min)?.units(),
            address_rule: params.address,
            // The pool's own wallet receives the rewards; paying it would move coins in a circle.
            never_pay: vec![config.payout_address.clone()],
            frozen: Default::default(),
            kyc: config.kyc_rule()?,
        },
    };
    let ledger = Ledger::open(&config.ledger_path())
        .with_context(|| format!("opening the ledger {}", config.ledger_path().display()))?;
    let logs: Vec<_> = (0..config.dataplane_processes)
        .map(|index| config.share_log_path(index))
        .collect();
    let per_share = matches!(settings.scheme, Scheme::Pps | Scheme::Fpps);
    let tails = share_log_tails(&ledger, &logs, &config.data_dir, per_share)?;
    let wallet: Option<Box<dyn otedama_ledger::payments::Wallet + Send>> = match config.chain {
        ChainSource::Node => Some(Box::new(NodeWallet::new(config.wallet_rpc_client()?))),
        ChainSource::Synthetic => None,
    };
    let (run_now, requests) = crossbeam_channel::bounded(PAYOUT_REQUESTS_QUEUED_MAX);
    let handles = PayoutHandles {
        ledger_reader: ledger.reader(),
        ledger: Arc::new(Mutex::new(ledger)),
        history: Arc::new(Mutex::new(ShareHistory::default())),
        settings: Arc::new(RwLock::new(settings)),
        run_now,
        dex: Default::default(),
    };
    let runner = PayoutRunner {
        ledger: handles.ledger.clone(),
        history: handles.history.clone(),
        settings: handles.settings.clone(),
        blocks: store.clone(),
        pool: state.clone(),
        audit: audit.clone(),
        tails,
        wallet,
        fault: fault_file_hook(std::env::var_os("OTEDAMA_FAULT_FILE").map(Into::into)),
        kyc_notices: start_kyc_webhook(config)?,
        dex: handles.dex.clone(),
        next_follow_ms: 0,
        cut_waits: Default::default(),
        block_share_wait_ms: crate::payouts::runner::BLOCK_SHARE_WAIT_MS,
    };
    std::thread::Builder::new()
        .name("payouts".into())
        .spawn(move || runner.run(requests))?;
    Ok(handles)
}

/// KYC notices waiting for the webhook at most; past that, new ones are dropped (and
/// logged): the admin API's pending list still has every hold.
const KYC_NOTICES_QUEUED_MAX: usize = 10_000;
/// The queue between the payout thread (which sends with `try_send`, never waiting) and
/// the webhook thread.
fn kyc_notice_queue() -> (Sender<serde_json::Value>, Receiver<serde_json::Value>) {
    crossbeam_channel::bounded(KYC_NOTICES_QUEUED_MAX)
}
/// Attempts per KYC notice, with doubling pauses from one second.
const KYC_WEBHOOK_ATTEMPTS_MAX: u32 = 6;

/// The thread that posts new KYC holds to the provider, signed with the shared secret.
fn start_kyc_webhook(config: &PoolConfig) -> anyhow::Result<Option<Sender<serde_json::Value>>> {
    let (Some(url), Some(secret)) = (config.kyc_webhook_url.clone(), config.kyc_webhook_secret()?)
    else {
        return Ok(None);
    };
    let (notices, queue) = kyc_notice_queue();
    std::thread::Builder::new()
        .name("kyc-webhook".into())
        .spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build();
            for notice in queue {
                let body = notice.to_string();
                let post = || {
                    // Signed at each attempt: the provider refuses an old timestamp.
                    let signature = otedama_compliance::kyc::sign(&secret, now_ms() / 1000, body.as_bytes());
                    agent
                        .post(&url)
                        .set("content-type", "application/json")
                        .set(otedama_compliance::kyc::SIGNATURE_HEADER, &signature)
                        .send_string(&body)
                        .map(drop)
                        .map_err(|error| error.to_string())
                };
                if !deliver_kyc_notice(post, std::thread::sleep) {
                    tracing::error!(notice = %body, "KYC webhook gave up; the hold is in GET /api/v1/admin/kyc");
                }
            }
        })?;
    Ok(Some(notices))
}

/// Posts one notice with `post`, up to `KYC_WEBHOOK_ATTEMPTS_MAX` times, pausing 1 s, 2 s,
/// 4 s … between attempts (none after the last: the next notice goes at once). Whether the
/// provider took it.
fn deliver_kyc_notice(
    mut post: impl FnMut() -> Result<(), String>,
    mut pause: impl FnMut(Duration),
) -> bool {
    for attempt in 0..KYC_WEBHOOK_ATTEMPTS_MAX {
        match post() {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(%error, attempt, "KYC webhook failed");
                if attempt + 1 < KYC_WEBHOOK_ATTEMPTS_MAX {
                    pause(Duration::from_secs(1 << attempt));
                }
            }
        }
    }
    false
}

/// Payout runs the admin API may have waiting at once; one more hears 503 at once.
pub const PAYOUT_REQUESTS_QUEUED_MAX: usize = 8;

/// Template polling, long-polling and block submission against the node.
fn start_node_threads(
    config: &PoolConfig,
    state: &Arc<PoolState>,
    store: &Arc<BlockStore>,
    candidate_rx: Receiver<BlockCandidate>,
) -> anyhow::Result<()> {
    let rpc = config.rpc_client()?;
    let params = config.coin_params();
    let jobs_path = config.data_dir.join("jobs");
    let jobs = Arc::new(
        JobStore::open(&jobs_path)
            .with_context(|| format!("opening the job store {}", jobs_path.display()))?,
    );
    wait_for_node(&rpc, params.template_rules())?;
    let (trigger_tx, trigger_rx) = crossbeam_channel::unbounded();
    {
        let (config, rpc, state, jobs) = (config.clone(), rpc.clone(), state.clone(), jobs.clone());
        std::thread::Builder::new()
            .name("templates".into())
            .spawn(move || template_loop(config, rpc, state, jobs, trigger_rx))?;
    }
    {
        let (rpc, triggers) = (rpc.clone(), trigger_tx.clone());
        std::thread::Builder::new()
            .name("best-block".into())
            .spawn(move || best_block_poll_loop(rpc, triggers))?;
    }
    let queue: Arc<Candidates> = Arc::new(CandidateQueue::default());
    {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name("candidates".into())
            .spawn(move || queue_live_candidates(queue, candidate_rx))?;
    }
    let submit_rpc = rpc.with_read_timeout(Duration::from_secs(SUBMIT_READ_TIMEOUT_S));
    for index in 0..SUBMITTER_THREADS {
        let (rpc, state, store) = (submit_rpc.clone(), state.clone(), store.clone());
        let (jobs, queue, triggers) = (jobs.clone(), queue.clone(), trigger_tx.clone());
        std::thread::Builder::new()
            .name(format!("submitter-{index}"))
            .spawn(move || submitter_loop(rpc, state, store, jobs, queue, triggers))?;
    }
    {
        let (config, state, store) = (config.clone(), state.clone(), store.clone());
        let (jobs, queue) = (jobs.clone(), queue.clone());
        std::thread::Builder::new()
            .name("block-scan".into())
            .spawn(move || block_scan_loop(config, state, store, jobs, queue))?;
    }
    {
        let (rpc, store, maturity) = (rpc.clone(), store.clone(), config.coinbase_maturity);
        std::thread::Builder::new()
            .name("block-status".into())
            .spawn(move || block_status_loop(rpc, store, maturity))?;
    }
    Ok(())
}

/// The API and the IPC server, until the process is stopped.
fn serve(
    config: PoolConfig,
    state: Arc<PoolState>,
    store: Arc<BlockStore>,
    payouts: PayoutHandles,
    audit: Arc<AuditLog>,
    candidate_tx: Sender<BlockCandidate>,
) -> anyhow::Result<()> {
    let admin_token_sha256 = config.admin_token_sha256()?;
    let bans = Arc::new(crate::bans::BanStore::open(
        config.data_dir.join("bans.json"),
    )?);
    bans.canonicalize(&config.coin_params().address)?;
    if !config.deny_list_file.is_empty() {
        let ticker = config.deny_list_ticker();
        // A deny list that cannot be read at start stops the start: running without the
        // screening the operator asked for is worse than not running.
        let rule = config.coin_params().address;
        let first = otedama_compliance::deny_list::load(&config.deny_list_file, ticker)
            .context("reading the deny lists")?
            .canonical_for(&rule);
        if !apply_deny_list(&first, &bans, &payouts, &audit, None, &state)? {
            anyhow::bail!(
                "the deny list and the operator's bans exceed BANS_MAX ({}) together; remove operator bans",
                otedama_shared::bans::BANS_MAX
            );
        }
        let (paths, reload_s) = (config.deny_list_file.clone(), config.deny_list_reload_s);
        let (bans, payouts, audit) = (bans.clone(), payouts.clone(), audit.clone());
        let state = state.clone();
        std::thread::Builder::new()
            .name("deny-list".into())
            .spawn(move || {
                let mut current = first;
                loop {
                    std::thread::sleep(Duration::from_secs(reload_s));
                    let loaded = otedama_compliance::deny_list::load(&paths, ticker)
                        .map(|list| list.canonical_for(&rule));
                    match loaded {
                        Ok(list) if list == current => {}
                        Ok(list) => {
                            match apply_deny_list(
                                &list,
                                &bans,
                                &payouts,
                                &audit,
                                Some(&current),
                                &state,
                            ) {
                                // Frozen either way; whether authorize follows is logged
                                // and audited there.
                                Ok(_) => current = list,
                                Err(error) => tracing::error!(%error, "deny list not fully applied"),
                            }
                        }
                        // Never let the list lapse because a file was briefly unreadable.
                        Err(error) => tracing::error!(%error, "deny list re-read failed; the previous one stays"),
                    }
                }
            })?;
    }
    // Miners pin this key in their stratum2+tcp URL; the data plane signs with its secret.
    let sv2_authority_key = if config.sv2_listen.is_empty() {
        None
    } else {
        let key = config.sv2_authority()?.public_base58();
        for address in &config.sv2_listen {
            tracing::info!(
                url = %format!("stratum2+tcp://{address}/{key}"),
                "Stratum V2 listening; authority public key {key}"
            );
        }
        Some(key)
    };
    let dex = if config.dex_enabled {
        let empty = crate::dex::build_exchange(config.coin.symbol(), &config.markets())?;
        let mut ledger = payouts.ledger.lock().expect("ledger lock");
        let service =
            crate::dex::DexService::open(&config.data_dir.join("dex"), empty, &mut ledger)
                .context("opening the exchange")?;
        tracing::info!(
            markets = service.exchange().market_specs().count(),
            applied = service.exchange().applied(),
            "exchange open"
        );
        drop(ledger);
        let service = Arc::new(Mutex::new(service));
        let _ = payouts.dex.set(service.clone());
        // Addresses denied or held before this start have no order left resting.
        freeze_held_orders(&service, &state, &payouts);
        Some(service)
    } else {
        None
    };
    let start_count = dex
        .as_ref()
        .map_or(0, |dex| dex.lock().expect("dex lock").start_count());
    let api_state = ApiState {
        pool: state.clone(),
        sv2_authority_key,
        blocks: store,
        payouts,
        audit,
        bans: bans.clone(),
        admin_token_sha256,
        address_rule: config.coin_params().address,
        algorithm: config.coin_params().algorithm,
        coin_name: config.coin.name(),
        dex,
        key_challenges: Arc::new(Mutex::new(crate::api_dex::KeyChallenges::new(start_count))),
        kyc_secret: config.kyc_webhook_secret()?.map(Arc::new),
        ws_clients: Arc::new(tokio::sync::Semaphore::new(crate::api::WS_CLIENTS_MAX)),
        stats_cache: Default::default(),
    };
    // The data-plane link (jobs down, block candidates up) runs on a thread and runtime of
    // its own: whatever the API's handlers do, they cannot hold up a found block or a job.
    let (link_done_tx, link_done) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let socket = config.ipc_socket();
    let link_state = state.clone();
    std::thread::Builder::new()
        .name("dataplane-link".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    runtime.block_on(crate::ipc::serve(&socket, link_state, bans, candidate_tx))
                });
            let _ = link_done_tx.send(result);
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let api = crate::api::serve(config.api_listen, api_state);
        tokio::select! {
            result = api => result,
            result = link_done => result.unwrap_or_else(|_| Err(anyhow::anyhow!("the data-plane link thread ended"))),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notice the provider never takes is posted exactly `KYC_WEBHOOK_ATTEMPTS_MAX`
    /// times, with doubling pauses and none after the last; one taken at the last attempt
    /// counts as delivered.
    #[test]
    fn a_kyc_notice_is_posted_at_most_its_attempts() {
        let mut posts = 0;
        let mut pauses = Vec::new();
        let delivered = deliver_kyc_notice(
            || {
                posts += 1;
                Err("refused".into())
            },
            |pause| pauses.push(pause.as_secs()),
        );
        assert!(!delivered);
        assert_eq!(posts, KYC_WEBHOOK_ATTEMPTS_MAX);
        assert_eq!(pauses, [1, 2, 4, 8, 16]);
        let mut posts = 0;
        let delivered = deliver_kyc_notice(
            || {
                posts += 1;
                if posts == KYC_WEBHOOK_ATTEMPTS_MAX {
                    Ok(())
                } else {
                    Err("refused".into())
                }
            },
            |_| {},
        );
        assert!(delivered);
    }

    /// Candidates in transit stop at `CANDIDATES_IN_TRANSIT_MAX`; one more is refused at
    /// once (the link drops it for the block scan) rather than queued without bound.
    #[test]
    fn candidates_in_transit_hold_their_limit() {
        let (links, forwarder) = candidate_channel();
        let candidate = || BlockCandidate {
            job_id: 1,
            height: 1,
            header: vec![0; 80],
            coinbase: Vec::new(),
            worker: "w".into(),
            found_at_ms: 0,
        };
        for _ in 0..CANDIDATES_IN_TRANSIT_MAX {
            links.try_send(candidate()).expect("room up to the limit");
        }
        assert!(matches!(
            links.try_send(candidate()),
            Err(crossbeam_channel::TrySendError::Full(_))
        ));
        forwarder.recv().unwrap();
        links.try_send(candidate()).expect("room again");
    }

    /// The webhook queue holds exactly `KYC_NOTICES_QUEUED_MAX` notices while the provider
    /// is slow; the payout thread's `try_send` of one more fails at once (the hold stays in
    /// the admin API's pending list) instead of blocking payouts or growing memory.
    #[test]
    fn the_kyc_notice_queue_holds_its_limit() {
        let (notices, queue) = kyc_notice_queue();
        for n in 0..KYC_NOTICES_QUEUED_MAX {
            notices
                .try_send(serde_json::json!(n))
                .expect("room up to the limit");
        }
        assert!(matches!(
            notices.try_send(serde_json::json!("one more")),
            Err(crossbeam_channel::TrySendError::Full(_))
        ));
        assert_eq!(queue.recv().unwrap(), serde_json::json!(0));
        notices
            .try_send(serde_json::json!("after one left"))
            .expect("room again");
    }

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
