//! The payout thread: reads accepted shares from the data planes' logs, credits found
//! blocks (or, under PPS/FPPS, shares) into the ledger, follows blocks to maturity or
//! orphanhood, and runs payouts on schedule or when the admin API asks.
//!
//! Every step is idempotent and keyed by what it acts on (a block hash, a log position, a
//! batch id), so the thread can die anywhere and pick up where the ledger says it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::api::now_ms;
use crate::events::PoolEvent;
use crate::stats::PoolState;
use otedama_chain::blocks::BlockStore;
use otedama_ledger::ledger::Ledger;
use otedama_ledger::payments::{self, PayoutPolicy, PayoutStep, RunReport, Wallet};
use otedama_ledger::schemes::Scheme;
use otedama_ledger::shares::{ShareHistory, SHARE_HISTORY_MAX};
use otedama_sharelog::tail::ShareLogTail;

/// How often sent payouts are looked up on the node, to follow them to their
/// confirmations (a lookup is one or two wallet RPCs per payout not yet final).
pub const PAYOUT_FOLLOW_INTERVAL_MS: u64 = 10_000;
/// Pause between passes of the payout thread.
const PASS_INTERVAL_MS: u64 = 500;

/// The payout parameters an operator may change at run time through the admin API.
#[derive(Clone, Debug)]
pub struct PayoutSettings {
    pub scheme: Scheme,
    pub pool_fee_ppm: u64,
    /// Account credited with the pool's fee (and, under PPS/FPPS, the blocks' rewards).
    pub fee_account: String,
    pub payout_interval_s: u64,
    /// Confirmations after which a payout is final (`payout_confirmations`).
    pub payout_confirmations: u64,
    pub policy: PayoutPolicy,
}

/// A request to the payout thread (the one that holds the wallet), answered on `reply`.
pub enum PayoutRequest {
    /// A payout run now.
    Run {
        ticket: RequestTicket,
        reply: Sender<Result<RunReport, String>>,
    },
    /// Cancel pending batch `batch_id` (`payments::cancel_pending`); the reason, or why not.
    Cancel {
        ticket: RequestTicket,
        batch_id: u64,
        reply: Sender<Result<String, String>>,
    },
}

/// Decides a request's fate exactly once: the payout thread starts it, or the asker, tired
/// of waiting, abandons it. Never both, so an admin who was told "it will not run" can
/// trust that it did not (a request that sat in a busy queue past the API's deadline used
/// to run later, after its caller had heard 504 and perhaps asked again).
#[derive(Clone, Default)]
pub struct RequestTicket(Arc<std::sync::atomic::AtomicU8>);

impl RequestTicket {
    const WAITING: u8 = 0;
    const STARTED: u8 = 1;
    const ABANDONED: u8 = 2;

    fn settle(&self, to: u8) -> bool {
        self.0
            .compare_exchange(
                Self::WAITING,
                to,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_ok()
    }

    /// The payout thread's claim: true if the request is still wanted, and from now on the
    /// asker can no longer abandon it.
    pub fn start(&self) -> bool {
        self.settle(Self::STARTED)
    }

    /// The asker's withdrawal: true if the request had not started and now never will.
    pub fn abandon(&self) -> bool {
        self.settle(Self::ABANDONED)
    }
}

/// Where the crash tests may stop the process (see `fault_file`).
pub type FaultHook = Box<dyn FnMut(PayoutStep) -> bool + Send>;

pub struct PayoutRunner {
    pub ledger: Arc<Mutex<Ledger>>,
    pub history: Arc<Mutex<ShareHistory>>,
    pub settings: Arc<RwLock<PayoutSettings>>,
    pub blocks: Arc<BlockStore>,
    pub pool: Arc<PoolState>,
    /// Every batch written and every batch the node took is recorded here.
    pub audit: Arc<crate::audit::AuditLog>,
    pub tails: Vec<ShareLogTail>,
    /// Cluster mode: the logs the share mirror copies, tailed as they are found.
    pub mirrored: Option<MirroredLogs>,
    /// Cluster mode: the ledger stream this runner's ledger follows, and whether this
    /// control plane leads (only the leader credits and pays).
    pub cluster: Option<ClusterRole>,
    pub wallet: Option<Box<dyn Wallet + Send>>,
    pub fault: FaultHook,
    /// New KYC holds, for the provider's webhook.
    pub kyc_notices: Option<Sender<serde_json::Value>>,
    /// When sent payouts are next looked up on the node (`follow_sent`).
    pub next_follow_ms: u64,
    /// Blocks whose round cannot be cut yet, and since when (for the lag warning).
    pub cut_waits: BTreeMap<String, u64>,
    /// `BLOCK_SHARE_WAIT_MS`, unless a test says otherwise.
    pub block_share_wait_ms: u64,
    /// When the local share logs' floors are next worked out (`publish_share_log_floors`).
    pub next_floors_ms: u64,
    /// The exchange once open: a KYC hold cancels the address's resting orders there.
    pub dex: Arc<std::sync::OnceLock<crate::dex::SharedDex>>,
    /// The data directory, where a restore leaves its hold on payouts
    /// (`backup::RESTORE_HOLD_FILE`); `None` in tests that never restore.
    pub restore_hold_dir: Option<PathBuf>,
    /// After a point-in-time restore, until every tail has read its log past the replayed
    /// records (`backup::REPLAY_START_FILE`, removed then): no retention floor is published
    /// meanwhile, so nothing the replay still needs is cut.
    pub replay: Option<crate::backup::ReplayStart>,
}

/// After a restore, payouts wait until the node's wallet shows no payment since the
/// backup that the restored ledger does not know: such a payment paid for shares the
/// restored ledger credits again from the share logs, so paying now could pay them twice.
/// Once none is left (the operator restored a later backup, or removed the hold file
/// after accounting for them), the hold goes and the lift is audited.
fn check_restore_hold(
    data_dir: &std::path::Path,
    ledger: &Mutex<Ledger>,
    wallet: &mut dyn Wallet,
    pool: &PoolState,
    audit: &crate::audit::AuditLog,
    now_ms: u64,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(hold) = crate::backup::RestoreHold::read(data_dir)? else {
        pool.payouts_held_after_restore.store(0, Relaxed);
        return Ok(());
    };
    // Held until shown otherwise: a wallet that cannot list its payments yet (the node
    // syncing, the wallet rescanning) keeps the hold and the alert.
    pool.payouts_held_after_restore.fetch_max(1, Relaxed);
    // From the backup's time, or from the restored ledger's newest payout if that is
    // earlier: a clock that ran fast when the backup was taken must not hide a payment.
    let newest_payout_s = ledger
        .lock()
        .expect("ledger lock")
        .intents_newest_first(None, 1)?
        .first()
        .map(|intent| intent.created_at_ms / 1000);
    let since = newest_payout_s.map_or(hold.compare_from_unix_s(), |newest| {
        hold.compare_from_unix_s()
            .min(newest.saturating_sub(crate::backup::RESTORE_HOLD_MARGIN_S))
    });
    let sends = wallet.sends_since(since)?;
    let unknown = crate::backup::unknown_sends(&ledger.lock().expect("ledger lock"), &sends)?;
    pool.payouts_held_after_restore
        .store(unknown.len().max(1) as u64, Relaxed);
    if !unknown.is_empty() {
        anyhow::bail!(
            "payouts held after a restore: the wallet made {} payment(s) since the backup that the restored ledger does not know ({}); \
             restore a backup taken after them (removing {} pays their shares again)",
            unknown.len(),
            unknown.join(", "),
            data_dir.join(crate::backup::RESTORE_HOLD_FILE).display()
        );
    }
    audit.append(
        now_ms,
        "payouts",
        "payouts_resumed_after_restore",
        serde_json::json!({
            "backup_created_at_unix_s": hold.backup_created_at_unix_s,
            "wallet_payments_compared": sends.len(),
        }),
    )?;
    std::fs::remove_file(data_dir.join(crate::backup::RESTORE_HOLD_FILE))?;
    pool.payouts_held_after_restore.store(0, Relaxed);
    tracing::info!(
        compared = sends.len(),
        "payouts resume after the restore: every wallet payment since the backup is in the ledger"
    );
    Ok(())
}

/// Tails for every share log of the host's `processes` data-plane processes (each
/// process's slots, `PoolConfig::share_log_slots`), starting where the ledger's PPS cursors
/// say (per share schemes) or with enough history to cut the next round.
///
/// Each log reads its process's whole part of the history, not half of it per slot: one
/// process's two slots wrote one after the other (an upgrade moves its miners from one to
/// the other), so its newest shares are all among the newest of the slot that wrote them,
/// and reading each slot that far leaves no hole in time between them.
pub fn share_log_tails(
    ledger: &Ledger,
    logs: &[PathBuf],
    processes: usize,
    secondary_root: &std::path::Path,
    per_share: bool,
    replay: Option<&crate::backup::ReplayStart>,
) -> anyhow::Result<Vec<ShareLogTail>> {
    let backfill = SHARE_HISTORY_MAX / processes.max(1);
    logs.iter()
        .enumerate()
        .map(|(index, primary)| {
            let process = index as u32;
            Ok(ShareLogTail::new(
                process,
                primary.clone(),
                secondary_root.join(format!("share-tail-{index}")),
                match (per_share, replay.and_then(|r| r.logs.get(&process))) {
                    // After a point-in-time restore: from the first replayed share, with
                    // the history before it, however far from the log's end.
                    (false, Some(replayed)) => Some(replayed.first.saturating_sub(backfill as u64)),
                    _ => tail_start(ledger, process, per_share, backfill)?,
                },
                backfill,
            ))
        })
        .collect()
}

/// Where a tail of log `process` starts: per-share schemes read the history's backfill
/// before the ledger's cursor too (the runner credits only from the cursor on: a block
/// found before a restart needs its share record to cut its round); others read the
/// newest `backfill` shares.
fn tail_start(
    ledger: &Ledger,
    process: u32,
    per_share: bool,
    backfill: usize,
) -> anyhow::Result<Option<u64>> {
    Ok(if per_share {
        Some(
            ledger
                .share_cursor(process)?
                .unwrap_or(0)
                .saturating_sub(backfill as u64),
        )
    } else {
        None
    })
}

/// The lowest sequence of a share log that this control plane would read again after a
/// restart, below which the log's records may go (`otedama_cluster::mirror::Retention`):
/// - the payout tail's start (`tail_start`) with the largest backfill any restart gives,
///   the whole share history: from the crediting cursor under per-share schemes, so
///   every share below it is credited, or from the log's end (`next`, its next sequence)
///   under the others, whose rounds are cut from the history;
/// - the block scan's cursor, which never passes a block share whose block has no record
///   (`otedama_chain::jobs::scan`).
///
/// `None` while either is unknown (a per-share scheme that has credited nothing from this
/// log, a scan that has not yet saved its cursor): nothing of the log may go.
pub fn retention_floor(
    per_share: bool,
    credit_cursor: Option<u64>,
    next: u64,
    scan_cursor: Option<u64>,
) -> Option<u64> {
    let read_from = match per_share {
        true => credit_cursor?.min(next),
        false => next,
    };
    Some(
        read_from
            .saturating_sub(SHARE_HISTORY_MAX as u64)
            .min(scan_cursor?),
    )
}

/// Cluster mode: this control plane's part (`otedama_cluster::leader`, `::ledger`).
pub struct ClusterRole {
    pub stream: otedama_cluster::ledger::LedgerStream,
    /// Whether this control plane leads: its lease, and the block and job records read
    /// to the end since it began.
    pub leading: Arc<otedama_cluster::records::Leadership>,
    /// Whether it led at the last pass: on taking over, what the former leader left open
    /// is settled before anything new is built.
    pub was_leading: bool,
}

/// Cluster mode: the logs the share mirror (`otedama_cluster::mirror`) copies, which the
/// payout thread follows as it finds them, each under its ledger id (`Ledger::log_id`).
pub struct MirroredLogs {
    pub status: Arc<otedama_cluster::mirror::MirrorStatus>,
    /// Where the tails' secondary instances live.
    pub tail_root: PathBuf,
    followed: std::collections::BTreeSet<String>,
    /// Whether every log of the stream's first listing is followed: read before the
    /// logs are, since the mirror adds a listing's logs before it says it has listed.
    pub listed: bool,
}

impl MirroredLogs {
    pub fn new(status: Arc<otedama_cluster::mirror::MirrorStatus>, tail_root: PathBuf) -> Self {
        MirroredLogs {
            status,
            tail_root,
            followed: Default::default(),
            listed: false,
        }
    }
}

impl PayoutRunner {
    /// Appends to the audit log as `actor`. A failed append is logged, never fatal: the
    /// payout it records has happened (or not) whatever the audit log can take.
    fn audit(&self, at_ms: u64, actor: &str, action: &str, detail: serde_json::Value) {
        if let Err(error) = self.audit.append(at_ms, actor, action, detail) {
            tracing::error!(%error, action, "cannot write the audit log");
        }
    }

    /// What the thread does first after a start: whatever a crash left open is settled
    /// before anything new is built.
    pub fn start(&mut self, now_ms: u64) {
        let Some(wallet) = self.wallet.as_mut() else {
            return;
        };
        let mut report = RunReport::default();
        if let Err(error) = payments::reconcile(&self.ledger, wallet.as_mut(), now_ms, &mut report)
        {
            tracing::error!(%error, "reconciling open payouts at start failed; retrying on the next run");
        } else if !report.completed.is_empty() || !report.still_open.is_empty() {
            tracing::info!(completed = ?report.completed, still_open = ?report.still_open, "open payouts reconciled at start");
        }
        payments::release_stale_locks(&self.ledger, wallet.as_mut());
        self.announce(&report);
    }

    pub fn run(mut self, requests: Receiver<PayoutRequest>) {
        // In cluster mode the leader does this when it takes over (`follow_cluster`).
        if self.cluster.is_none() {
            self.start(now_ms());
        }
        let mut next_run_ms = now_ms() + self.interval_ms();
        loop {
            let now = now_ms();
            if let Err(error) = self.pass(now) {
                tracing::error!(%error, "payout pass failed; retrying");
            }
            let scheduled = now >= next_run_ms;
            let request = match requests.recv_timeout(Duration::from_millis(PASS_INTERVAL_MS)) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // A request its asker abandoned is dropped unanswered: nobody waits for it.
            let run_reply = match request {
                Some(PayoutRequest::Cancel {
                    ticket,
                    batch_id,
                    reply,
                }) if ticket.start() => {
                    let _ = reply.send(self.cancel(batch_id, now_ms()));
                    None
                }
                Some(PayoutRequest::Run { ticket, reply }) if ticket.start() => Some(reply),
                Some(_) | None => None,
            };
            if scheduled || run_reply.is_some() {
                if scheduled {
                    next_run_ms = now_ms() + self.interval_ms();
                }
                let result = self.pay(now_ms()).map_err(|e| e.to_string());
                if let Err(error) = &result {
                    tracing::error!(%error, "payout run failed");
                }
                if let Some(reply) = run_reply {
                    // The outcome of a run an admin asked for is audited here, not by the
                    // asker: it may have stopped waiting (202) or gone.
                    let detail = match &result {
                        Ok(report) => serde_json::json!({
                            "batch": report.batch.as_ref().map(|b| b.batch_id),
                            "completed": report.completed,
                            "still_open": report.still_open,
                        }),
                        Err(error) => serde_json::json!({"error": error}),
                    };
                    self.audit(now_ms(), "admin", "payouts.ran", detail);
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Cancels a pending batch the node can never take, and says so on the audit log and
    /// the live feed.
    fn cancel(&mut self, batch_id: u64, now_ms: u64) -> Result<String, String> {
        let Some(wallet) = self.wallet.as_mut() else {
            return Err("no wallet: payouts need chain = \"node\"".into());
        };
        let reason = match payments::cancel_pending(&self.ledger, wallet.as_mut(), batch_id, now_ms)
        {
            Ok(reason) => reason,
            Err(refusal) => {
                let refusal = refusal.to_string();
                let detail = serde_json::json!({"batch_id": batch_id, "refused": refusal});
                self.audit(now_ms, "admin", "payouts.cancel_refused", detail);
                return Err(refusal);
            }
        };
        let detail = serde_json::json!({"batch_id": batch_id, "reason": reason});
        self.audit(now_ms, "admin", "payouts.cancelled", detail);
        self.pool.publish_event(PoolEvent::PayoutCancelled {
            batch_id,
            reason: reason.clone(),
        });
        Ok(reason)
    }

    fn interval_ms(&self) -> u64 {
        self.settings
            .read()
            .expect("settings lock")
            .payout_interval_s
            .max(1)
            * 1000
    }

    /// Single-host mode: tells the data planes below which sequence each local share log
    /// may be cut (`retention_floor`, `Downstream::ShareLogFloors`). Cluster mode cuts the
    /// mirror's copies and the stream instead (`tasks::payouts::start_share_retention`),
    /// and each data-plane host cuts its own log below what it has shipped.
    fn publish_share_log_floors(&mut self, per_share: bool) -> anyhow::Result<()> {
        if self.mirrored.is_some() || self.replay.is_some() {
            return Ok(());
        }
        let mut floors = std::collections::BTreeMap::new();
        let ledger = self.ledger.lock().expect("ledger lock");
        for tail in &self.tails {
            let Some(next) = tail.next_sequence() else {
                continue;
            };
            let floor = retention_floor(
                per_share,
                ledger.share_cursor(tail.process)?,
                next,
                self.blocks.scan_cursor(tail.process)?,
            );
            if let Some(floor) = floor {
                floors.insert(tail.process, floor);
            }
        }
        drop(ledger);
        self.pool.share_log_floors.send_if_modified(|known| {
            let changed = **known != floors;
            if changed {
                *known = Arc::new(floors);
            }
            changed
        });
        Ok(())
    }

    /// Cluster mode: a tail for every log the mirror found since the last pass, started
    /// as a local log's tail starts.
    fn follow_mirrored_logs(&mut self, per_share: bool) -> anyhow::Result<()> {
        let Some(mirrored) = self.mirrored.as_mut() else {
            return Ok(());
        };
        let listed = mirrored.status.discovered();
        for log in mirrored.status.logs() {
            if mirrored.followed.contains(&log.name) {
                continue;
            }
            let mut ledger = self.ledger.lock().expect("ledger lock");
            let id = ledger.log_id(&log.name)?;
            let backfill = SHARE_HISTORY_MAX / (self.tails.len() + 1);
            let start = tail_start(&ledger, id, per_share, backfill)?;
            drop(ledger);
            tracing::info!(log = %log.name, id, ?start, "following a mirrored share log");
            self.tails.push(
                ShareLogTail::new(
                    id,
                    log.path.clone(),
                    mirrored.tail_root.join(format!("share-tail-{}", log.name)),
                    start,
                    backfill,
                )
                .without_writer_check(),
            );
            mirrored.followed.insert(log.name);
        }
        mirrored.listed = listed;
        Ok(())
    }

    /// Cluster mode: applies the ledger stream's new writes, then says whether this
    /// control plane leads; on taking over, settles what the former leader left open.
    /// Outside cluster mode it always leads.
    fn follow_cluster(&mut self, now_ms: u64) -> anyhow::Result<bool> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Ok(true);
        };
        otedama_cluster::ledger::catch_up_shared(&cluster.stream, &self.ledger)?;
        let leads = cluster.leading.leads();
        let took_over = leads && !cluster.was_leading;
        if took_over {
            tracing::warn!("this control plane leads: settling what the former leader left open");
            // Fenced first: nothing the former leader still had on its way can land in the
            // ledger after what is settled below was read. Until the fence is in, the next
            // pass tries again (the take-over is not done).
            self.ledger.lock().expect("ledger lock").fence()?;
        }
        if let Some(dex) = self.dex.get().cloned() {
            let mut dex = dex.lock().expect("dex lock");
            // A lease lost and held again between two passes is a new term that no edge
            // here shows: the exchange is taken over in every term, fencing the ledger
            // again unless it was just fenced above.
            match crate::dex::follow_leadership(&mut dex, &self.ledger, leads, took_over) {
                Ok(true) => self.freeze_held_orders(&mut dex),
                Ok(false) => {}
                // The exchange answers 503 until it can follow or take over again; credits
                // and payouts go on without it.
                Err(error) => tracing::error!(
                    error = %format!("{error:#}"),
                    "the exchange cannot read or fence its stream; it takes no command until it can"
                ),
            }
        }
        if took_over {
            self.start(now_ms);
        }
        self.cluster.as_mut().expect("cluster mode").was_leading = leads;
        Ok(leads)
    }

    /// On taking over the exchange: what held addresses have resting is taken off the
    /// books, as at a start (the former leader may have died before it did).
    fn freeze_held_orders(&self, dex: &mut crate::dex::DexService) {
        for address in crate::tasks::compliance::held_addresses(&self.settings, &self.ledger) {
            crate::dex::freeze_orders(dex, &self.pool, &address);
        }
    }

    /// Reads new shares, credits what can be credited and settles blocks that changed.
    /// In cluster mode a standby only follows the leader's ledger.
    pub fn pass(&mut self, now_ms: u64) -> anyhow::Result<()> {
        if !self.follow_cluster(now_ms)? {
            // A standby reads no log: its copies are kept from their ends back.
            self.pool
                .share_log_read_positions
                .lock()
                .expect("read positions")
                .clear();
            return Ok(());
        }
        let settings = self.settings.read().expect("settings lock").clone();
        let per_share = matches!(settings.scheme, Scheme::Pps | Scheme::Fpps);
        self.follow_mirrored_logs(per_share)?;
        let block_value = self.pool.block_value();
        // Per-share schemes need the current block's value; until a template has given it,
        // shares wait in the log. Other schemes only keep the history.
        match (per_share, block_value) {
            (false, _) => self.read_shares(&settings, None)?,
            (true, Some(value)) => self.read_shares(&settings, Some(value))?,
            (true, None) => {}
        }
        {
            let mut positions = self
                .pool
                .share_log_read_positions
                .lock()
                .expect("read positions");
            for tail in &self.tails {
                if let Some(next) = tail.next_sequence() {
                    positions.insert(tail.process, next);
                }
            }
        }
        self.credit_blocks(&settings, now_ms)?;
        self.finish_replay()?;
        if now_ms >= self.next_floors_ms {
            self.next_floors_ms = now_ms + otedama_shared::ipc::SHARE_LOG_FLOORS_INTERVAL_MS;
            self.publish_share_log_floors(per_share)?;
        }
        if now_ms >= self.next_follow_ms {
            self.next_follow_ms = now_ms + PAYOUT_FOLLOW_INTERVAL_MS;
            if let Some(wallet) = self.wallet.as_mut() {
                payments::follow_sent(
                    &self.ledger,
                    wallet.as_mut(),
                    &settings.policy.address_rule,
                    settings.payout_confirmations,
                    now_ms,
                )?;
            }
        }
        Ok(())
    }

    /// Ends a point-in-time restore's replay once every tail has read its log past the
    /// replayed records and the pass has credited what it read.
    fn finish_replay(&mut self) -> anyhow::Result<()> {
        let Some(replay) = &self.replay else {
            return Ok(());
        };
        let done = replay.logs.iter().all(|(process, log)| {
            self.tails
                .iter()
                .find(|tail| tail.process == *process)
                .is_none_or(|tail| tail.next_sequence().is_some_and(|next| next > log.last))
        });
        if done {
            if let Some(dir) = &self.restore_hold_dir {
                match std::fs::remove_file(dir.join(crate::backup::REPLAY_START_FILE)) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error.into())
                    }
                    _ => {}
                }
            }
            tracing::info!("the share logs replayed after the restore are read and credited");
            self.replay = None;
        }
        Ok(())
    }

    /// One payout run.
    pub fn pay(&mut self, now_ms: u64) -> anyhow::Result<RunReport> {
        if !self.follow_cluster(now_ms)? {
            anyhow::bail!("this control plane is a standby: the leader pays");
        }
        let Some(wallet) = self.wallet.as_mut() else {
            anyhow::bail!("no wallet: payouts need chain = \"node\"");
        };
        if let Some(data_dir) = &self.restore_hold_dir {
            check_restore_hold(
                data_dir,
                &self.ledger,
                wallet.as_mut(),
                &self.pool,
                &self.audit,
                now_ms,
            )?;
        }
        let settings = self.settings.clone();
        let policy = move || settings.read().expect("settings lock").policy.clone();
        let report = payments::run(
            &self.ledger,
            wallet.as_mut(),
            &policy,
            now_ms,
            &mut self.fault,
        )?;
        self.announce(&report);
        self.hold_for_kyc(&report.kyc_held, now_ms);
        Ok(report)
    }

    /// Marks each newly held address pending, audits it and tells the KYC provider. An
    /// address already pending or rejected is left as it is.
    fn hold_for_kyc(&self, held: &BTreeMap<String, u64>, now_ms: u64) {
        for (address, amount) in held {
            // The exchange's lock first (its lock order: the exchange, then the ledger),
            // held across the hold and the cancel: no order of the address matches
            // between the two, and none is placed after the cancel (placing checks the
            // hold under the same lock).
            let mut dex = self.dex.get().map(|dex| dex.lock().expect("dex lock"));
            let mut ledger = self.ledger.lock().expect("ledger lock");
            match ledger.kyc(address) {
                Ok(None) => {}
                Ok(Some(_)) => continue,
                Err(error) => {
                    tracing::error!(%error, %address, "cannot read the KYC record");
                    continue;
                }
            }
            let record = otedama_compliance::kyc::KycRecord {
                state: otedama_compliance::kyc::KycState::Pending,
                updated_at_ms: now_ms,
                source: "payouts".into(),
                reference: None,
            };
            if let Err(error) = ledger.set_kyc(address, &record) {
                tracing::error!(%error, %address, "cannot record the KYC hold");
                continue;
            }
            drop(ledger);
            if let Some(dex) = dex.as_mut() {
                crate::dex::freeze_orders(dex, &self.pool, address);
            }
            drop(dex);
            tracing::info!(%address, held = amount, "payout held until the address is verified (KYC)");
            let detail = serde_json::json!({"address": address, "from": null, "to": "pending", "source": "payouts", "held": amount});
            self.audit(now_ms, "system", "kyc.state", detail);
            if let Some(notices) = &self.kyc_notices {
                let notice = serde_json::json!({
                    "event": "kyc.required",
                    "address": address,
                    "held": otedama_ledger::amount::coins_text(u128::from(*amount)),
                    "at_ms": now_ms,
                });
                if notices.try_send(notice).is_err() {
                    tracing::warn!(%address, "KYC webhook queue full; the hold is in the admin API's pending list");
                }
            }
        }
    }

    /// Audits and publishes (on `/ws`) each batch a run wrote or saw reach the node.
    fn announce(&self, report: &RunReport) {
        let written = report.batch.as_ref().map(|b| b.batch_id);
        let announced: std::collections::BTreeSet<u64> = written
            .into_iter()
            .chain(report.completed.iter().copied())
            .collect();
        let intents: Vec<_> = {
            let ledger = self.ledger.lock().expect("ledger lock");
            announced
                .iter()
                .filter_map(|id| ledger.intent(*id).ok().flatten())
                .collect()
        };
        for intent in intents {
            let action = if Some(intent.batch_id) == written {
                "payouts.batch_written"
            } else {
                "payouts.batch_sent"
            };
            let detail = serde_json::json!({
                "batch_id": intent.batch_id,
                "txid": intent.txid,
                "total": intent.outputs.values().sum::<u64>(),
                "outputs": intent.outputs.len(),
                "state": intent.state.name(),
            });
            self.audit(now_ms(), "system", action, detail);
            self.pool.publish_event(PoolEvent::Payment(intent));
        }
    }
}

/// Without the `fault-injection` feature (every build but the tests'), no hook: a file
/// named by `OTEDAMA_FAULT_FILE` cannot make a production pool kill itself.
#[cfg(not(feature = "fault-injection"))]
pub fn fault_file_hook(path: Option<PathBuf>) -> FaultHook {
    if path.is_some() {
        tracing::warn!("OTEDAMA_FAULT_FILE is ignored: this build has no fault injection");
    }
    Box::new(|_| false)
}

/// The crash-test hook: when the file named by `OTEDAMA_FAULT_FILE` exists and holds
/// `payout:funded`, `payout:intent-written` or `payout:broadcast`, the process sends itself SIGKILL at that
/// step, after removing the file so that the restarted process runs clean. It is a real
/// `kill -9`, timed to the step, which a signal from outside could not be. Built only
/// with the `fault-injection` feature, which the end-to-end tests turn on.
#[cfg(feature = "fault-injection")]
pub fn fault_file_hook(path: Option<PathBuf>) -> FaultHook {
    Box::new(move |step| {
        let Some(path) = &path else { return false };
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let wanted = match step {
            PayoutStep::Funded => "payout:funded",
            PayoutStep::IntentWritten => "payout:intent-written",
            PayoutStep::Broadcast => "payout:broadcast",
        };
        if text.trim() == wanted {
            let _ = std::fs::remove_file(path);
            tracing::error!(?step, "fault injection: kill -9");
            // SAFETY: kill(2) on this process; SIGKILL cannot be caught, so nothing after
            // it runs (abort is only the fallback should the signal somehow not land).
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::process::abort();
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payouts::simulation::regtest_address;
    use crate::payouts::BLOCK_SHARE_WAIT_MS;
    use crate::stats::BlockValue;
    use otedama_chain::blocks::BlockRecord;
    use otedama_chain::coin::{Coin, CoinParams, Network};
    use otedama_ledger::ledger::BlockState;
    use otedama_ledger::lifecycle::BlockStatus;
    use otedama_ledger::schemes::per_share_credit;
    use otedama_ledger::shares::{HistoryShare, ShareKey};
    use otedama_shared::hex32::display_hex;
    use otedama_shared::ShareRecord;

    const SHARES: u64 = 10;

    /// A share log's records may go only below where a restart would read it again:
    /// the crediting cursor (per-share) or the log's end (rounds), less the whole share
    /// history, and the block scan's cursor; nothing while either is unknown.
    /// After a point-in-time restore, a round scheme's tail starts from the first replayed
    /// share less the history, however far from the log's end; otherwise from the end.
    #[test]
    fn a_replay_starts_the_tails_at_the_replayed_shares() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        let logs = [dir.path().join("shares"), dir.path().join("shares-1")];
        let replay = crate::backup::ReplayStart {
            logs: BTreeMap::from([(
                1,
                crate::backup::ReplayLog {
                    first: 5_000_000,
                    last: 9_000_000,
                },
            )]),
        };
        let tails = share_log_tails(&ledger, &logs, 2, dir.path(), false, Some(&replay)).unwrap();
        let backfill = (SHARE_HISTORY_MAX / 2) as u64;
        assert_eq!(tails[0].next_sequence(), None);
        assert_eq!(tails[1].next_sequence(), Some(5_000_000 - backfill));
        let plain = share_log_tails(&ledger, &logs, 2, dir.path(), false, None).unwrap();
        assert_eq!(plain[1].next_sequence(), None);
    }

    #[test]
    fn a_log_is_released_only_below_what_its_readers_would_read_again() {
        let history = SHARE_HISTORY_MAX as u64;
        let next = 5 * history;
        // Per-share: the crediting cursor decides, never past the log's end.
        assert_eq!(
            retention_floor(true, Some(3 * history), next, Some(next)),
            Some(2 * history)
        );
        assert_eq!(
            retention_floor(true, Some(9 * history), next, Some(next)),
            Some(4 * history)
        );
        assert_eq!(retention_floor(true, None, next, Some(next)), None);
        // Rounds: the log's end decides.
        assert_eq!(
            retention_floor(false, None, next, Some(next)),
            Some(4 * history)
        );
        // The block scan's cursor holds it back, and a scan not saved yet holds all.
        assert_eq!(
            retention_floor(false, None, next, Some(history + 7)),
            Some(history + 7)
        );
        assert_eq!(retention_floor(false, None, next, None), None);
        // Within the history nothing goes.
        assert_eq!(
            retention_floor(false, None, history - 1, Some(history)),
            Some(0)
        );
    }

    fn share(worker: &str) -> ShareRecord {
        ShareRecord {
            accepted_at_ms: 1_700_000_000_000,
            job_id: 1,
            height: 200,
            worker: worker.into(),
            difficulty: 0.5,
            achieved_difficulty: 0.7,
            is_block: false,
            header: [0; 80],
            extranonce1: vec![1, 2, 3, 4],
            extranonce2: vec![0; 4],
            protocol: None,
        }
    }

    /// A runner over a real share log written by the data plane's writer, a real ledger
    /// and block store, under PPS.
    fn pps_runner(dir: &std::path::Path, miner: &str) -> PayoutRunner {
        pps_runner_with(dir, miner, &[])
    }

    /// `pps_runner`, with `extra` records after the miner's shares.
    fn pps_runner_with(dir: &std::path::Path, miner: &str, extra: &[ShareRecord]) -> PayoutRunner {
        let log_path = dir.join("shares");
        let (completions, _ignored) = futures_channel::mpsc::unbounded();
        let log =
            otedama_sharelog::writer::ShareLog::open(&log_path, false, vec![completions]).unwrap();
        for _ in 0..SHARES {
            log.handle().append(0, &share(miner)).unwrap();
        }
        for record in extra {
            log.handle().append(0, record).unwrap();
        }
        log.close();
        let ledger = Ledger::open(&dir.join("ledger")).unwrap();
        let tails = share_log_tails(&ledger, &[log_path], 1, dir, true, None).unwrap();
        let pool = PoolState::new(0, 0);
        pool.set_block_value(BlockValue {
            subsidy: 50_0000_0000,
            fees_mean: 0,
            network_difficulty: 1.0,
        });
        PayoutRunner {
            ledger: Arc::new(Mutex::new(ledger)),
            history: Arc::new(Mutex::new(ShareHistory::default())),
            settings: Arc::new(RwLock::new(PayoutSettings {
                scheme: Scheme::Pps,
                pool_fee_ppm: 10_000,
                fee_account: "fee".into(),
                payout_interval_s: 3600,
                payout_confirmations: 6,
                policy: PayoutPolicy {
                    payout_min: 1,
                    address_rule: CoinParams::new(Coin::Litecoin, Network::Regtest).address,
                    never_pay: vec!["fee".into()],
                    frozen: Default::default(),
                    kyc: None,
                },
            })),
            blocks: Arc::new(BlockStore::open(&dir.join("blocks")).unwrap()),
            pool,
            audit: Arc::new(crate::audit::AuditLog::open(&dir.join("audit")).unwrap()),
            tails,
            mirrored: None,
            cluster: None,
            wallet: None,
            fault: Box::new(|_| false),
            kyc_notices: None,
            next_follow_ms: 0,
            cut_waits: BTreeMap::new(),
            block_share_wait_ms: BLOCK_SHARE_WAIT_MS,
            next_floors_ms: 0,
            restore_hold_dir: None,
            replay: None,
            dex: Default::default(),
        }
    }

    /// A Monero record in the share log (a data plane with `monero_listen`) is credited by
    /// no Bitcoin-family control plane, nor counted in its rounds or its block scan: its
    /// difficulty is in RandomX hashes, not this coin's units. Its worker here is a valid
    /// address of this coin, so only the record's protocol keeps it out.
    #[test]
    fn monero_records_are_not_credited_as_this_coins_shares() {
        let dir = tempfile::tempdir().unwrap();
        let (miner, other) = (regtest_address(1), regtest_address(2));
        let mut monero = share(&other);
        monero.protocol = Some(otedama_shared::Protocol::Monero);
        monero.difficulty = 1e12;
        monero.is_block = true;
        let mut runner = pps_runner_with(dir.path(), &miner, &[monero.clone(), monero]);
        runner.pass(0).unwrap();
        let ledger = runner.ledger.lock().unwrap();
        assert!(ledger.balances(&miner).unwrap().total() > 0);
        assert_eq!(ledger.balances(&other).unwrap().total(), 0);
        drop(ledger);
        assert_eq!(runner.history.lock().unwrap().len(), SHARES as usize);
        assert!(
            runner.blocks.all().is_empty(),
            "no block row from a Monero record"
        );
    }

    /// A request is started or abandoned, never both; the payout thread drops an
    /// abandoned one unanswered and answers the next.
    #[test]
    fn an_abandoned_request_never_runs_and_a_started_one_cannot_be_abandoned() {
        let started = RequestTicket::default();
        assert!(started.start());
        assert!(!started.abandon());
        assert!(!started.start());
        let abandoned = RequestTicket::default();
        assert!(abandoned.abandon());
        assert!(!abandoned.start());

        let dir = tempfile::tempdir().unwrap();
        let runner = pps_runner(dir.path(), &regtest_address(1));
        let (requests, queue) = crossbeam_channel::bounded(4);
        let (abandoned_reply, abandoned_answer) = crossbeam_channel::bounded(1);
        let (live_reply, live_answer) = crossbeam_channel::bounded(1);
        requests
            .send(PayoutRequest::Run {
                ticket: abandoned,
                reply: abandoned_reply,
            })
            .unwrap();
        let live = RequestTicket::default();
        requests
            .send(PayoutRequest::Run {
                ticket: live.clone(),
                reply: live_reply,
            })
            .unwrap();
        let thread = std::thread::spawn(move || runner.run(queue));
        // The live run is answered (no wallet here, so with that error) ...
        let answer = live_answer.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(answer.unwrap_err().contains("no wallet"));
        assert!(!live.abandon(), "a request the thread answered was started");
        // ... and the abandoned one was dropped without running.
        assert!(matches!(
            abandoned_answer.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
        drop(requests);
        thread.join().unwrap();
    }

    /// Single-host mode: the payout thread tells the data planes each log's floor
    /// (`retention_floor` of its crediting cursor, end and block-scan cursor), none before
    /// the block scan has saved its cursor, and again only once the interval has passed.
    #[test]
    fn the_share_log_floors_follow_the_credits_and_the_block_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut runner = pps_runner(dir.path(), &regtest_address(1));
        let floors = runner.pool.share_log_floors.subscribe();
        runner.pass(0).unwrap();
        assert!(floors.borrow().is_empty(), "no block-scan cursor yet");
        runner.blocks.set_scan_cursor(0, 7).unwrap();
        runner.pass(1).unwrap();
        assert!(floors.borrow().is_empty(), "before the interval");
        runner
            .pass(otedama_shared::ipc::SHARE_LOG_FLOORS_INTERVAL_MS)
            .unwrap();
        let expected = retention_floor(true, Some(SHARES), SHARES, Some(7)).unwrap();
        assert_eq!(
            **floors.borrow(),
            BTreeMap::from([(0u32, expected)]),
            "credited through {SHARES}, scanned through 7"
        );
    }

    /// Issue 15, point 4: a failed credit commit must not move the share cursor past the
    /// shares it was crediting.
    #[test]
    fn a_failed_pps_commit_credits_the_same_shares_on_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let miner = regtest_address(1);
        let mut runner = pps_runner(dir.path(), &miner);
        runner.ledger.lock().unwrap().fail_next_commits(1);
        assert!(runner.pass(0).is_err());
        assert_eq!(
            runner
                .ledger
                .lock()
                .unwrap()
                .balances(&miner)
                .unwrap()
                .mature,
            0
        );
        runner.pass(0).unwrap();
        let each = per_share_credit(50_0000_0000, 10_000, 0.5, 1.0);
        assert!(each > 0);
        let ledger = runner.ledger.lock().unwrap();
        assert_eq!(ledger.balances(&miner).unwrap().mature, each * SHARES);
        assert_eq!(ledger.share_cursor(0).unwrap(), Some(SHARES));
        drop(ledger);
        drop(runner);
        // A restart, with ten more shares in the log: only the new ones are credited.
        let mut again = pps_runner(dir.path(), &miner);
        again.pass(0).unwrap();
        let ledger = again.ledger.lock().unwrap();
        assert_eq!(ledger.balances(&miner).unwrap().mature, each * SHARES * 2);
    }

    fn history_share(at_ms: u64, sequence: u64, miner: &str) -> HistoryShare {
        HistoryShare {
            accepted_at_ms: at_ms,
            process: 0,
            sequence,
            address: miner.into(),
            worker: format!("{miner}.rig").into(),
            difficulty: 1.0,
            protocol: None,
        }
    }

    fn block_record(hash: &str, finder: &str, found_at_ms: u64) -> BlockRecord {
        BlockRecord {
            hash: hash.into(),
            height: 300,
            worker: format!("{finder}.rig"),
            job_id: 1,
            submitted_at_ms: found_at_ms,
            rejected_reason: None,
            reward: 1_000_000,
            status: BlockStatus::Pending,
            confirmations: 0,
            network_difficulty: 1.0,
            header: String::new(),
            found_at_ms,
        }
    }

    fn block_credits_of(ledger: &Ledger, hash: &str) -> BTreeMap<String, u64> {
        let mut credits = BTreeMap::new();
        for entry in ledger.entries().unwrap() {
            if entry.kind == otedama_ledger::ledger::EntryKind::BlockCredit
                && entry.reference == hash
            {
                *credits.entry(entry.account).or_insert(0) += entry.amount;
            }
        }
        credits
    }

    /// Issue 15, point 3: a block share read but not yet recorded (its block still being
    /// submitted) holds every later round back; and a block placed before a round already
    /// paid (its share older than the history) is paid over that same round, never over
    /// shares a second round already paid.
    #[test]
    fn a_late_block_neither_splits_a_paid_round_nor_pays_its_shares_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (regtest_address(1), regtest_address(2));
        let mut runner = pps_runner(dir.path(), &a);
        runner.tails.clear();
        runner.settings.write().unwrap().scheme = Scheme::Prop;
        runner.block_share_wait_ms = 0;
        let key = |at_ms, sequence| ShareKey {
            accepted_at_ms: at_ms,
            process: 0,
            sequence,
        };
        {
            let mut history = runner.history.lock().unwrap();
            history.insert(vec![
                history_share(10, 0, &a),
                history_share(20, 1, &b),
                history_share(30, 2, &a),
                history_share(40, 3, &b),
                history_share(50, 4, &b),
            ]);
            history.note_block_share("b1".into(), key(30, 2));
            history.note_block_share("b2".into(), key(50, 4));
        }
        // B2 is recorded first; B1's share is read but its block is still being submitted.
        runner
            .blocks
            .record(&block_record("b2", &b, 50), true)
            .unwrap();
        runner.pass(0).unwrap();
        let state = |runner: &PayoutRunner, hash: &str| {
            runner.ledger.lock().unwrap().block_state(hash).unwrap()
        };
        assert_eq!(
            state(&runner, "b2"),
            None,
            "held behind the unrecorded block share"
        );
        runner
            .blocks
            .record(&block_record("b1", &a, 30), true)
            .unwrap();
        runner.pass(0).unwrap();
        let ledger = runner.ledger.lock().unwrap();
        // B1: a's 2 shares of 3 (1 % fee); B2: b's 2 of 2.
        let first = block_credits_of(&ledger, "b1");
        assert_eq!((first[&a], first[&b]), (660_000, 330_000), "{first:?}");
        let second = block_credits_of(&ledger, "b2");
        assert_eq!((second.get(&a), second[&b]), (None, 990_000), "{second:?}");
        drop(ledger);

        // B3 is paid first; then B0, whose share the history no longer holds, is placed by
        // its found time inside B3's round and paid over that round, not over part of it.
        {
            let mut history = runner.history.lock().unwrap();
            history.insert(vec![
                history_share(60, 5, &a),
                history_share(70, 6, &b),
                history_share(80, 7, &b),
            ]);
            history.note_block_share("b3".into(), key(80, 7));
        }
        runner
            .blocks
            .record(&block_record("b3", &b, 80), true)
            .unwrap();
        runner.pass(0).unwrap();
        runner
            .blocks
            .record(&block_record("b0", &a, 60), true)
            .unwrap();
        runner.pass(0).unwrap();
        let ledger = runner.ledger.lock().unwrap();
        assert_eq!(
            ledger.block_state("b0").unwrap(),
            Some(BlockState::Immature)
        );
        assert_eq!(
            block_credits_of(&ledger, "b0"),
            block_credits_of(&ledger, "b3")
        );
    }

    /// A switch between a per-share and a block scheme never pays a share twice: shares
    /// PPS credited are in no block's round, and shares a block paid are not credited per
    /// share after a switch back.
    #[test]
    fn switching_between_per_share_and_block_schemes_never_pays_a_share_twice() {
        use otedama_sharelog::writer::ShareLog;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (regtest_address(1), regtest_address(2));
        let mut runner = pps_runner(dir.path(), &a);
        let each = per_share_credit(50_0000_0000, 10_000, 0.5, 1.0);
        let (completions, mut durable) = futures_channel::mpsc::unbounded();
        let log = ShareLog::open(&dir.path().join("shares"), false, vec![completions]).unwrap();
        let mut append = |records: Vec<ShareRecord>| {
            let count = records.len();
            for record in &records {
                log.handle().append(0, record).unwrap();
            }
            let mut stored = 0;
            while stored < count {
                match durable.try_recv() {
                    Ok(done) => stored += done.shares,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                }
            }
        };
        let pass_until = |runner: &mut PayoutRunner, what: &str, done: &dyn Fn(&Ledger) -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                runner.pass(0).unwrap();
                if done(&runner.ledger.lock().unwrap()) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "never: {what}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        let mature = |ledger: &Ledger, who: &str| ledger.balances(who).unwrap().mature;
        pass_until(&mut runner, "PPS credits a's shares", &|l| {
            mature(l, &a) == each * SHARES
        });

        // PROP: b mines and finds a block; a's shares were paid and are not in its round.
        runner.settings.write().unwrap().scheme = Scheme::Prop;
        let mut found = share(&b);
        found.is_block = true;
        found.header = [7; 80];
        append((0..5).map(|_| share(&b)).chain([found.clone()]).collect());
        let hash = display_hex(&otedama_kernels::sha256d(&found.header));
        runner
            .blocks
            .record(&block_record(&hash, &b, 0), true)
            .unwrap();
        pass_until(&mut runner, "the block credited", &|l| {
            l.block_state(&hash).unwrap().is_some()
        });
        let credits = block_credits_of(&runner.ledger.lock().unwrap(), &hash);
        assert_eq!(credits.get(&a), None, "{credits:?}");
        assert_eq!(credits[&b], 990_000, "{credits:?}");

        // PPS again: the block paid b's shares; only later shares are credited.
        runner.settings.write().unwrap().scheme = Scheme::Pps;
        let credited = runner.ledger.lock().unwrap().pps_credited().unwrap();
        append((0..3).map(|_| share(&a)).collect());
        pass_until(&mut runner, "a's new shares", &|l| {
            mature(l, &a) == each * (SHARES + 3)
        });
        let ledger = runner.ledger.lock().unwrap();
        assert_eq!(ledger.pps_credited().unwrap(), credited + each * 3);
        assert_eq!(mature(&ledger, &b), 0, "b's shares were paid by the block");
        drop(ledger);
        log.close();
    }

    /// A pool that paid blocks before round cuts were stored, restarted under PPS: every
    /// share up to its last paid block's time was paid by that block and is not credited
    /// per share as well.
    #[test]
    fn a_switch_to_pps_credits_no_share_a_block_paid_before_cuts_were_stored() {
        let dir = tempfile::tempdir().unwrap();
        let a = regtest_address(1);
        let mut runner = pps_runner(dir.path(), &a);
        let paid_at_ms = now_ms();
        runner
            .blocks
            .record(&block_record("legacy", &a, paid_at_ms), true)
            .unwrap();
        runner
            .ledger
            .lock()
            .unwrap()
            .credit_block("legacy", &BTreeMap::from([(a.clone(), 1_000_000u64)]))
            .unwrap();
        runner.pass(0).unwrap();
        let ledger = runner.ledger.lock().unwrap();
        let balances = ledger.balances(&a).unwrap();
        assert_eq!((balances.mature, balances.immature), (0, 1_000_000));
        assert_eq!(ledger.pps_credited().unwrap(), 0);
        assert_eq!(ledger.share_cursor(0).unwrap(), Some(SHARES));
    }
}
