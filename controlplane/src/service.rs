//! The control-plane process: starts the long-running tasks (`tasks`), the IPC server
//! for the data planes and the HTTP API, and wires them together.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};

use std::sync::Mutex;

use crate::api::{ApiState, PayoutHandles};
use crate::audit::AuditLog;
use crate::config::{ChainSource, PoolConfig};
use crate::stats::PoolState;
use crate::tasks::blocks::{
    block_scan_loop, block_status_loop, candidate_channel, discard_candidates,
    queue_link_candidates, submitter_loop, Candidates, ScanMirror, SourcedCandidate,
};
use crate::tasks::compliance::{apply_deny_list, audit_housekeeping, freeze_held_orders};
use crate::tasks::payouts::start_payouts;
use crate::tasks::templates::{best_block_poll_loop, synthetic_loop, template_loop, wait_for_node};
use otedama_chain::blocks::{Applied, BlockStore};
use otedama_chain::jobs::store::JobStore;
use otedama_chain::jobs::submit::{CandidateQueue, SUBMITTER_THREADS, SUBMIT_READ_TIMEOUT_S};

/// Runs the control plane until the process is stopped.
pub fn run(config: PoolConfig) -> anyhow::Result<()> {
    config.ensure_data_dir()?;
    config.check_before_start()?;
    if !config.nats_urls.is_empty() {
        otedama_cluster::set_security(config.nats_security())?;
    }
    let store = Arc::new(
        BlockStore::open(&config.control_db_path())
            .with_context(|| format!("opening {}", config.control_db_path().display()))?,
    );
    let (found, rejected) = store.counts();
    let state = PoolState::new(found, rejected);
    let audit = Arc::new(
        AuditLog::open(&config.data_dir.join("audit"))
            .with_context(|| format!("opening the audit log in {}", config.data_dir.display()))?,
    );
    // Cluster mode: every host's share log, copied from the stream (held until the process
    // ends).
    let mirror = match config.nats_urls.is_empty() {
        true => None,
        false => Some(
            otedama_cluster::mirror::ShareMirror::start(otedama_cluster::mirror::MirrorConfig {
                nats_urls: config.nats_urls.clone(),
                root: config.data_dir.join("share-mirror"),
            })
            .context("starting the share mirror")?,
        ),
    };
    // Cluster mode: this control plane stands for leader; its ledger follows the ledger
    // stream and writes only while it leads (both held until the process ends).
    let leader = match config.nats_urls.is_empty() {
        true => None,
        false => Some((
            otedama_cluster::leader::LeaderLease::start(
                config.nats_urls.clone(),
                config.share_stream_replicas,
                &config.data_dir.join("controlplane-identity"),
                config
                    .cluster_host
                    .clone()
                    .unwrap_or_else(|| "controlplane".into()),
            )
            .context("standing for leader")?,
            otedama_cluster::ledger::LedgerStream::start(
                config.nats_urls.clone(),
                config.share_stream_replicas,
            )?,
        )),
    };
    let leadership = leader
        .as_ref()
        .map(|(lease, _)| otedama_cluster::records::Leadership::new(lease.status()));
    // This run's name on the record streams: a follower passes over what its own process
    // sent.
    let origin = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let bans = Arc::new(crate::bans::BanStore::open(
        config.data_dir.join("bans.json"),
    )?);
    // Cluster mode: the list is the stream's, whose lists the admin API made canonical; a
    // copy rewritten here would no longer be the stream's last list.
    if config.nats_urls.is_empty() {
        bans.canonicalize(&config.coin_params().address)?;
    }
    if let Some(leadership) = &leadership {
        replicate_bans(&config, &bans, leadership, &origin)?;
    }
    // Jobs, and in cluster mode the block and job streams, come before the payout thread:
    // it may lead only once both are read to the end (`Leadership::leads`).
    let node_records = match config.chain {
        ChainSource::Node => {
            let jobs_path = config.data_dir.join("jobs");
            let jobs = Arc::new(
                JobStore::open(&jobs_path)
                    .with_context(|| format!("opening the job store {}", jobs_path.display()))?,
            );
            let job_publisher = match &leadership {
                Some(leadership) => Some(follow_records(
                    &config, &state, &store, &jobs, leadership, &origin,
                )?),
                None => None,
            };
            Some((jobs, job_publisher))
        }
        ChainSource::Synthetic => None,
    };
    let payouts = start_payouts(
        &config,
        &state,
        &store,
        &audit,
        mirror.as_ref().map(|mirror| mirror.status()),
        leader
            .as_ref()
            .zip(leadership.as_ref())
            .map(|((_, stream), leadership)| (stream.clone(), leadership.clone())),
    )?;
    if let Some((mirror, leadership)) = mirror.as_ref().zip(leadership.as_ref()) {
        crate::tasks::payouts::start_share_retention(
            &config,
            &mirror.status(),
            payouts.ledger_reader.clone(),
            store.clone(),
            state.clone(),
            leadership.clone(),
        );
    }
    let (candidate_tx, candidate_rx) = candidate_channel();
    match (config.chain, node_records) {
        (ChainSource::Node, Some((jobs, job_publisher))) => {
            // Cluster mode: the block scan reads every host's mirrored log, numbered by
            // the ledger as the payout thread numbers them.
            let scan_mirror = mirror.as_ref().map(|mirror| ScanMirror {
                status: mirror.status(),
                ledger: payouts.ledger.clone(),
            });
            let cluster = leadership.clone().zip(job_publisher);
            start_node_threads(
                &config,
                &state,
                &store,
                jobs,
                candidate_rx,
                scan_mirror,
                cluster,
            )?
        }
        (ChainSource::Node, None) => unreachable!("a node's job store is opened above"),
        (ChainSource::Synthetic, _) => {
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

    crate::tasks::backups::start(&config, &state)?;
    {
        let (audit, retention_days) = (audit.clone(), config.audit_retention_days);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || audit_housekeeping(&audit, retention_days))?;
    }
    serve(
        config,
        state,
        store,
        payouts,
        (audit, bans),
        candidate_tx,
        leadership,
    )
}

/// Cluster mode: the operator's ban list in the replicated stream (`crate::bans`): read
/// from it into this control plane's copy, changed only by the leader once it has read it
/// to the end, and sent there again by each new leader.
fn replicate_bans(
    config: &PoolConfig,
    bans: &Arc<crate::bans::BanStore>,
    leadership: &Arc<otedama_cluster::records::Leadership>,
    origin: &str,
) -> anyhow::Result<()> {
    use otedama_cluster::records::{follow, Publisher, RecordKind, RecordPublisher, BAN_LIST_KEY};
    let (urls, replicas) = (config.nats_urls.clone(), config.share_stream_replicas);
    // Read from its start at every start (it keeps one message a list subject, at most
    // `BAN_STREAM_MESSAGES_MAX`): the stream's last list is then applied here again, with
    // its sequence, whatever `bans.json` holds (a copy edited by hand, one from an older
    // release).
    let position = config.data_dir.join("bans-stream-position");
    match std::fs::remove_file(&position) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("removing {}", position.display()))
        }
    }
    let bans_in = bans.clone();
    let follower = follow(
        urls.clone(),
        replicas,
        RecordKind::Bans,
        origin.to_string(),
        position,
        Box::new(move |key, payload, sequence| {
            if key != BAN_LIST_KEY {
                tracing::error!(
                    key,
                    "a record in the ban stream under another key: passed over"
                );
                return Ok(());
            }
            match serde_json::from_slice::<otedama_shared::bans::BanList>(payload) {
                Ok(list) => bans_in.replace_operator_list(list, sequence),
                Err(error) => {
                    tracing::error!(%error, "an unreadable ban list in the ban stream: passed over");
                    Ok(())
                }
            }
        }),
    )?;
    leadership.wait_for(follower);
    let publisher = RecordPublisher::start(
        urls,
        replicas,
        RecordKind::Bans,
        Publisher {
            origin: origin.to_string(),
            lease: leadership.lease().clone(),
        },
    )?;
    let leads = leadership.clone();
    let looker = publisher.clone();
    bans.replicate_with(crate::bans::BanReplication {
        leads: Box::new(move || leads.leads()),
        publish: Box::new(move |list, after| {
            let payload = serde_json::to_vec(list).expect("ban lists serialize");
            publisher.publish_fenced(BAN_LIST_KEY, &payload, after)
        }),
        last: Box::new(move || {
            let Some((payload, sequence)) = looker.last_message(BAN_LIST_KEY)? else {
                return Ok(None);
            };
            serde_json::from_slice(&payload)
                .map(|list| Some((list, sequence)))
                .map_err(|error| format!("the ban stream's last list does not read: {error}"))
        }),
    });
    // Each term of this control plane's lead, once it has read the streams to their end:
    // its list to a stream that holds none (a cluster started from a single-host pool's
    // bans, a stream made again).
    let (bans, leadership) = (bans.clone(), leadership.clone());
    std::thread::Builder::new()
        .name("bans-seed".into())
        .spawn(move || {
            let mut seeded_term = None;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let term = leadership.lease().term();
                if seeded_term == Some(term) || !leadership.leads() {
                    continue;
                }
                match bans.seed_if_absent() {
                    Ok(sent) => {
                        if sent {
                            tracing::info!(term, "ban list sent to the cluster's empty ban stream");
                        }
                        seeded_term = Some(term);
                    }
                    Err(error @ crate::bans::BanError::TooLargeForCluster(_)) => {
                        tracing::error!(%error, "ban list not sent to the cluster's empty ban stream");
                        seeded_term = Some(term);
                    }
                    Err(error) => tracing::warn!(%error, "ban stream not checked; trying again"),
                }
            }
        })?;
    Ok(())
}

/// Cluster mode: the found blocks and built jobs of other control planes, read from their
/// streams into this one's stores, and this one's sent there before it writes them
/// (`otedama_cluster::records`). The leader may act on blocks and jobs only once both
/// are read to the end. Returns the job publisher, for the template thread.
fn follow_records(
    config: &PoolConfig,
    state: &Arc<PoolState>,
    store: &Arc<BlockStore>,
    jobs: &Arc<JobStore>,
    leadership: &Arc<otedama_cluster::records::Leadership>,
    origin: &str,
) -> anyhow::Result<otedama_cluster::records::RecordPublisher> {
    use otedama_cluster::records::{follow, Publisher, RecordKind, RecordPublisher};
    let (urls, replicas) = (config.nats_urls.clone(), config.share_stream_replicas);
    let origin = origin.to_string();
    let publisher = Publisher {
        origin: origin.clone(),
        lease: leadership.lease().clone(),
    };
    let blocks_out = RecordPublisher::start(
        urls.clone(),
        replicas,
        RecordKind::Blocks,
        publisher.clone(),
    )?;
    store.replicate_with(Box::new(move |record| {
        let payload = serde_json::to_vec(record).expect("block records serialize");
        blocks_out.publish(&record.hash, &payload)
    }));
    let (blocks_in, block_state) = (store.clone(), state.clone());
    let blocks = follow(
        urls.clone(),
        replicas,
        RecordKind::Blocks,
        origin.clone(),
        config.data_dir.join("blocks-stream-position"),
        Box::new(move |key, payload, _| apply_block_record(&blocks_in, &block_state, key, payload)),
    )?;
    leadership.wait_for(blocks);
    let jobs_in = jobs.clone();
    let job_follower = follow(
        urls.clone(),
        replicas,
        RecordKind::Jobs,
        origin.clone(),
        config.data_dir.join("jobs-stream-position"),
        Box::new(move |key, payload, _| apply_job(&jobs_in, key, payload)),
    )?;
    leadership.wait_for(job_follower);
    RecordPublisher::start(urls, replicas, RecordKind::Jobs, publisher)
}

/// Writes a block record another control plane made; a found block counts once here too.
/// A record that does not read is logged and passed over (never retried forever).
fn apply_block_record(
    store: &BlockStore,
    state: &PoolState,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let record: otedama_chain::blocks::BlockRecord = match serde_json::from_slice(payload) {
        Ok(record) => record,
        Err(error) => {
            tracing::error!(%error, block = %key, "an unreadable record in the block stream: passed over");
            return Ok(());
        }
    };
    if record.hash != key {
        tracing::error!(block = %key, hash = %record.hash, "a block record under another block's key: passed over");
        return Ok(());
    }
    let before = match store.apply_replicated(&record)? {
        Applied::Kept(kept) => {
            tracing::warn!(block = %key, status = ?kept.status, "a replicated block record would change a final status: kept as it is");
            return Ok(());
        }
        Applied::Written(before) => before,
    };
    if before.is_none() && !record.is_stale_candidate() {
        let counter = match record.rejected_reason {
            None => &state.blocks_found,
            Some(_) => &state.blocks_rejected,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Stores a job another control plane built. One that does not read is logged and
/// passed over.
fn apply_job(jobs: &JobStore, key: &str, payload: &[u8]) -> anyhow::Result<()> {
    let Ok(job_id) = key.parse::<u64>() else {
        tracing::error!(job = %key, "a job in the job stream under a key that is not a job id: passed over");
        return Ok(());
    };
    let job = match JobStore::decode(job_id, payload) {
        Ok(job) if job.job.job_id == job_id => job,
        Ok(job) => {
            tracing::error!(
                job_id,
                inside = job.job.job_id,
                "a job under another job's id in the job stream: passed over"
            );
            return Ok(());
        }
        Err(error) => {
            tracing::error!(%error, "an unreadable job in the job stream: passed over");
            return Ok(());
        }
    };
    jobs.put(&job)?;
    Ok(())
}

/// Cluster mode: whether this control plane leads, and where its jobs go before miners.
pub(crate) type NodeCluster = (
    Arc<otedama_cluster::records::Leadership>,
    otedama_cluster::records::RecordPublisher,
);

/// Template polling, long-polling and block submission against the node.
fn start_node_threads(
    config: &PoolConfig,
    state: &Arc<PoolState>,
    store: &Arc<BlockStore>,
    jobs: Arc<JobStore>,
    candidate_rx: Receiver<SourcedCandidate>,
    scan_mirror: Option<ScanMirror>,
    cluster: Option<NodeCluster>,
) -> anyhow::Result<()> {
    let rpc = config.rpc_client()?;
    let params = config.coin_params();
    wait_for_node(&rpc, params.template_rules())?;
    let leadership = cluster.as_ref().map(|(leadership, _)| leadership.clone());
    let (trigger_tx, trigger_rx) = crossbeam_channel::unbounded();
    state.wake_for_fresh_jobs(trigger_tx.clone());
    {
        let (config, rpc, state, jobs) = (config.clone(), rpc.clone(), state.clone(), jobs.clone());
        std::thread::Builder::new()
            .name("templates".into())
            .spawn(move || template_loop(config, rpc, state, jobs, trigger_rx, cluster))?;
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
            .spawn(move || queue_link_candidates(queue, candidate_rx))?;
    }
    let submit_rpc = rpc.with_read_timeout(Duration::from_secs(SUBMIT_READ_TIMEOUT_S));
    for index in 0..SUBMITTER_THREADS {
        let (rpc, state, store) = (submit_rpc.clone(), state.clone(), store.clone());
        let (jobs, queue, triggers) = (jobs.clone(), queue.clone(), trigger_tx.clone());
        let leadership = leadership.clone();
        std::thread::Builder::new()
            .name(format!("submitter-{index}"))
            .spawn(move || submitter_loop(rpc, state, store, jobs, queue, triggers, leadership))?;
    }
    {
        let (config, state, store) = (config.clone(), state.clone(), store.clone());
        let (jobs, queue, leadership) = (jobs.clone(), queue.clone(), leadership.clone());
        std::thread::Builder::new()
            .name("block-scan".into())
            .spawn(move || {
                block_scan_loop(config, state, store, jobs, queue, scan_mirror, leadership)
            })?;
    }
    {
        let (rpc, store, maturity) = (rpc.clone(), store.clone(), config.coinbase_maturity);
        std::thread::Builder::new()
            .name("block-status".into())
            .spawn(move || block_status_loop(rpc, store, maturity, leadership))?;
    }
    Ok(())
}

/// The API and the IPC server, until the process is stopped.
fn serve(
    config: PoolConfig,
    state: Arc<PoolState>,
    store: Arc<BlockStore>,
    payouts: PayoutHandles,
    (audit, bans): (Arc<AuditLog>, Arc<crate::bans::BanStore>),
    candidate_tx: Sender<SourcedCandidate>,
    leadership: Option<Arc<otedama_cluster::records::Leadership>>,
) -> anyhow::Result<()> {
    // Link sessions follow the lease itself (`ipc`), not the catch-up on the streams.
    let leading = leadership
        .as_ref()
        .map(|leadership| leadership.lease().clone());
    let admin_token_sha256 = config.admin_token_sha256()?;
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
        let dir = config.data_dir.join("dex");
        let service = match &leading {
            None => {
                let mut ledger = payouts.ledger.lock().expect("ledger lock");
                crate::dex::DexService::open(&dir, empty, &mut ledger)
            }
            // Cluster mode: a standby until the payout thread, leading, takes it over.
            Some(lease) => crate::dex::DexService::open_replicated(
                &dir,
                empty,
                crate::dex::Replication::new(
                    otedama_cluster::ledger::LedgerStream::start_for(
                        otedama_cluster::ledger::ReplicatedLog::exchange(
                            config.exchange_stream_bytes_max,
                        ),
                        config.nats_urls.clone(),
                        config.share_stream_replicas,
                    )?,
                    lease.clone(),
                    config.exchange_stream_bytes_max,
                ),
            ),
        }
        .context("opening the exchange")?;
        tracing::info!(
            markets = service.exchange().market_specs().count(),
            applied = service.exchange().applied(),
            "exchange open"
        );
        let service = Arc::new(Mutex::new(service));
        let _ = payouts.dex.set(service.clone());
        // Addresses denied or held before this start have no order left resting (in
        // cluster mode, the take-over does this).
        if leading.is_none() {
            freeze_held_orders(&service, &state, &payouts);
        }
        Some(service)
    } else {
        None
    };
    let start_count = dex
        .as_ref()
        .map_or(0, |dex| dex.lock().expect("dex lock").start_count());
    let hashrate_history = Arc::new(
        crate::hashrate_history::HashrateHistory::open(
            &config.data_dir.join("hashrate"),
            config.hashrate_sample_interval_s,
        )
        .context("opening the hash-rate history")?,
    );
    crate::tasks::hashrate::start_hashrate_sampler(
        hashrate_history.clone(),
        payouts.history.clone(),
        config.coin_params().algorithm,
    )?;
    let connect = Arc::new(connect_json(&config, sv2_authority_key.as_deref()));
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
        key_challenges: Arc::new(Mutex::new(crate::api::dex::KeyChallenges::new(start_count))),
        kyc_secret: config.kyc_webhook_secret()?.map(Arc::new),
        ws_clients: Arc::new(tokio::sync::Semaphore::new(crate::api::WS_CLIENTS_MAX)),
        stats_cache: Default::default(),
        activity_cache: Default::default(),
        leadership,
        hashrate_history,
        efforts: Default::default(),
        connect,
    };
    // The data-plane link (jobs down, block candidates up) runs on a thread and runtime of
    // its own: whatever the API's handlers do, they cannot hold up a found block or a job.
    let (link_done_tx, link_done) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let socket = config.ipc_socket();
    let link_state = state.clone();
    let nats_urls = config.nats_urls.clone();
    std::thread::Builder::new()
        .name("dataplane-link".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        // Cluster mode: data planes of other hosts over NATS too, served
                        // again whenever the cluster was out of reach.
                        if let Some(leading) = leading {
                            let (state, bans, candidates) =
                                (link_state.clone(), bans.clone(), candidate_tx.clone());
                            tokio::spawn(async move {
                                loop {
                                    let served = crate::ipc::serve_nats(
                                        &nats_urls,
                                        state.clone(),
                                        bans.clone(),
                                        candidates.clone(),
                                        leading.clone(),
                                    )
                                    .await;
                                    if let Err(error) = served {
                                        tracing::warn!(
                                            error = format!("{error:#}"),
                                            "data-plane sessions over NATS: starting again"
                                        );
                                    }
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            });
                        }
                        crate::ipc::serve(&socket, link_state, bans, candidate_tx).await
                    })
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

/// How miners connect, as the web page shows it: every listening URL (V2 with the
/// authority key its miners check), the worker name's form and the start difficulty. An
/// unspecified address (`0.0.0.0`) is shown as such; the page puts the host it was
/// loaded from in its place.
pub fn connect_json(config: &PoolConfig, sv2_authority_key: Option<&str>) -> serde_json::Value {
    let urls = |scheme: &str, addresses: &[std::net::SocketAddr], suffix: &str| {
        addresses
            .iter()
            .map(|address| format!("{scheme}://{address}{suffix}"))
            .collect::<Vec<_>>()
    };
    let key_suffix = sv2_authority_key
        .map(|key| format!("/{key}"))
        .unwrap_or_default();
    serde_json::json!({
        "stratum_v1": urls("stratum+tcp", &config.stratum_listen, ""),
        "stratum_v2": urls("stratum2+tcp", &config.sv2_listen, &key_suffix),
        "stratum_v2_quic": urls("stratum2+quic", &config.quic_listen, ""),
        "start_difficulty": config.start_difficulty,
        "worker": "PAYOUT_ADDRESS or PAYOUT_ADDRESS.RIG",
        "password": "anything",
    })
}
