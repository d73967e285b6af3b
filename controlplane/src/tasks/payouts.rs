//! Starts the payout thread (`payouts::runner`) with its ledger, share-log tails, wallet
//! and the queue the admin API asks it through.

use std::sync::Arc;

use anyhow::Context;

use std::sync::{Mutex, RwLock};

use crate::api::PayoutHandles;
use crate::audit::AuditLog;
use crate::config::{ChainSource, PoolConfig};
use crate::payouts::runner::{
    fault_file_hook, share_log_tails, ClusterRole, MirroredLogs, PayoutRunner, PayoutSettings,
};
use crate::stats::PoolState;
use crate::tasks::compliance::start_kyc_webhook;
use otedama_chain::blocks::BlockStore;
use otedama_chain::wallet::NodeWallet;
use otedama_ledger::ledger::Ledger;
use otedama_ledger::payments::PayoutPolicy;
use otedama_ledger::schemes::Scheme;
use otedama_ledger::shares::ShareHistory;
use otedama_ledger::Amount;

/// Cluster mode: cuts the share mirror's copies and, while this control plane leads, the
/// share stream, below what its payouts and its block scan still need and older than
/// `share_retention_hours` (`otedama_cluster::mirror::Retention`, `retention_floor`). The
/// floors are read from the ledger's replica, the block store and, while leading, where
/// the payout thread's tails have read to (a leader whose passes fail keeps what it has
/// not read, however far the mirror gets); never written.
pub(crate) fn start_share_retention(
    config: &PoolConfig,
    mirror: &otedama_cluster::mirror::MirrorStatus,
    ledger: Arc<Ledger>,
    store: Arc<BlockStore>,
    pool: Arc<PoolState>,
    leadership: Arc<otedama_cluster::records::Leadership>,
) {
    let per_share = matches!(config.scheme(), Scheme::Pps | Scheme::Fpps);
    let floor = move |name: &str, next: u64| {
        let read = || -> anyhow::Result<Option<u64>> {
            let Some(id) = ledger.known_log_id(name)? else {
                return Ok(None);
            };
            let read_to = pool
                .share_log_read_positions
                .lock()
                .expect("read positions")
                .get(&id)
                .map_or(next, |read_to| next.min(*read_to));
            Ok(crate::payouts::runner::retention_floor(
                per_share,
                ledger.share_cursor(id)?,
                read_to,
                store.scan_cursor(id)?,
            ))
        };
        read().unwrap_or_else(|error| {
            tracing::warn!(log = name, %error, "cannot read how far a share log was read; it is kept");
            None
        })
    };
    mirror.set_retention(otedama_cluster::mirror::Retention {
        // The ledger stream, like the share stream, is synced to disk every two minutes: a
        // floor read from it is kept a while before it counts.
        keep_ms: (config.share_retention_hours * 3_600_000)
            .max(otedama_sharelog::retention::SHARE_LOG_KEEP_MIN_MS),
        pass_interval_ms: otedama_cluster::mirror::SHARE_RETENTION_PASS_INTERVAL_MS,
        purge_interval_ms: otedama_cluster::mirror::SHARE_STREAM_PURGE_INTERVAL_MS,
        floor: Box::new(floor),
        purges_stream: Box::new(move || leadership.leads()),
    });
}

/// The ledger and the payout thread.
pub(crate) fn start_payouts(
    config: &PoolConfig,
    state: &Arc<PoolState>,
    store: &Arc<BlockStore>,
    audit: &Arc<AuditLog>,
    mirror: Option<Arc<otedama_cluster::mirror::MirrorStatus>>,
    cluster: Option<(
        otedama_cluster::ledger::LedgerStream,
        Arc<otedama_cluster::records::Leadership>,
    )>,
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
    let mut ledger = Ledger::open(&config.ledger_path())
        .with_context(|| format!("opening the ledger {}", config.ledger_path().display()))?;
    // Cluster mode: every write goes to the ledger stream first, and only while leading.
    if let Some((stream, leading)) = &cluster {
        // Its history is not in the stream: a standby would get only what changes after.
        if ledger.has_entries() && ledger.replica_position()? == 0 {
            anyhow::bail!(
                "this ledger has history that is not in the cluster's ledger stream (it was a single host's): \
                 start the cluster's control planes on new ledgers"
            );
        }
        ledger.set_replicator(Some(Box::new(otedama_cluster::ledger::StreamReplicator {
            stream: stream.clone(),
            leading: leading.lease().clone(),
        })));
    }
    let per_share = matches!(settings.scheme, Scheme::Pps | Scheme::Fpps);
    let replay = match &mirror {
        None => crate::backup::ReplayStart::read(&config.data_dir)?,
        Some(_) => None,
    };
    // In cluster mode every data plane, this host's too, ships its log to the stream, and
    // only the mirror's copies are read: a local log read as well would count its shares
    // twice.
    let tails = match &mirror {
        Some(_) => {
            refuse_local_cursors(&ledger)?;
            Vec::new()
        }
        None => {
            // Every slot, written or not yet: a log that does not exist reads as empty.
            let logs: Vec<_> = (0..config.share_log_slots())
                .map(|slot| config.share_log_path(slot))
                .collect();
            share_log_tails(
                &ledger,
                &logs,
                config.dataplane_processes,
                &config.data_dir,
                per_share,
                replay.as_ref(),
            )?
        }
    };
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
    if crate::backup::RestoreHold::read(&config.data_dir)?.is_some() {
        // Shown from the start, not only from the first payout run.
        state
            .payouts_held_after_restore
            .store(1, std::sync::atomic::Ordering::Relaxed);
    }
    let runner = PayoutRunner {
        ledger: handles.ledger.clone(),
        history: handles.history.clone(),
        settings: handles.settings.clone(),
        blocks: store.clone(),
        pool: state.clone(),
        audit: audit.clone(),
        tails,
        mirrored: mirror.map(|status| MirroredLogs::new(status, config.data_dir.clone())),
        cluster: cluster.map(|(stream, leading)| ClusterRole {
            stream,
            leading,
            was_leading: false,
        }),
        wallet,
        fault: fault_file_hook(std::env::var_os("OTEDAMA_FAULT_FILE").map(Into::into)),
        kyc_notices: start_kyc_webhook(config)?,
        dex: handles.dex.clone(),
        next_follow_ms: 0,
        cut_waits: Default::default(),
        block_share_wait_ms: crate::payouts::BLOCK_SHARE_WAIT_MS,
        next_floors_ms: 0,
        restore_hold_dir: Some(config.data_dir.clone()),
        replay,
    };
    std::thread::Builder::new()
        .name("payouts".into())
        .spawn(move || runner.run(requests))?;
    Ok(handles)
}

/// Cluster mode reads shares under the mirrored logs' ids (`Ledger::log_id`), not the
/// local processes' numbers: a ledger whose per-share credits stand at a local log's
/// cursor would credit that log's shares again from the stream. Such a ledger is refused
/// rather than paid twice from.
fn refuse_local_cursors(ledger: &Ledger) -> anyhow::Result<()> {
    for process in 0..256u32 {
        if let Some(cursor) = ledger.share_cursor(process)? {
            anyhow::bail!(
                "this ledger credited shares per share from the local share log of data-plane process {process} (through {cursor}); \
                 cluster mode reads every log from the stream and would credit them again: start the cluster's control plane on a new ledger"
            );
        }
    }
    Ok(())
}

/// Payout runs the admin API may have waiting at once; one more hears 503 at once.
pub const PAYOUT_REQUESTS_QUEUED_MAX: usize = 8;
