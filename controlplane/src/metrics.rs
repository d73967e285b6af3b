//! `/metrics` in the Prometheus text exposition format (version 0.0.4): every family has
//! its HELP and TYPE lines, counters end in `_total`, and the RPC latency histogram has
//! cumulative buckets, `+Inf`, `_sum` and `_count`, as `promtool check metrics` requires.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::api::ApiState;
use otedama_shared::ipc::{LatencyTotals, ACK_LATENCY_BUCKETS_S, ACK_STAGES, ACK_STAGE_BUCKETS_S};

use otedama_chain::rpc::{RPC_LATENCY_BUCKETS_S, RPC_STATS};
use otedama_ledger::ledger::IntentState;

struct Families(String);

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.0, "{name}{labels} {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// One histogram's samples from `totals`, counted per bucket of `bounds_s` (not
    /// cumulative; slower ones only in the count); `labels` go before `le`.
    fn histogram(&mut self, name: &str, labels: &str, bounds_s: &[f64], totals: &LatencyTotals) {
        let with_le = |le: &str| match labels {
            "" => format!("le=\"{le}\""),
            _ => format!("{labels},le=\"{le}\""),
        };
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (index, bound) in bounds_s.iter().enumerate() {
            cumulative += totals.buckets.get(index).copied().unwrap_or(0);
            self.sample(&bucket, &with_le(&bound.to_string()), cumulative);
        }
        self.sample(&bucket, &with_le("+Inf"), totals.count);
        self.sample(&format!("{name}_sum"), labels, totals.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, totals.count);
    }
}

pub fn render(state: &ApiState) -> String {
    let totals = state.pool.totals();
    let mut out = Families(String::new());
    out.family(
        "otedama_shares_total",
        "counter",
        "Shares by result: accepted (stored durably, then acknowledged) or rejected, by Stratum error code.",
    );
    out.sample(
        "otedama_shares_total",
        "result=\"accepted\",code=\"\"",
        totals.shares_accepted,
    );
    for code in 20..=25 {
        let count = totals
            .shares_rejected_by_code
            .get(&code)
            .copied()
            .unwrap_or(0);
        out.sample(
            "otedama_shares_total",
            &format!("result=\"rejected\",code=\"{code}\""),
            count,
        );
    }
    out.single(
        "otedama_share_log_failing",
        "gauge",
        "Data planes whose share log cannot write (a full disk, an I/O error); their shares are refused.",
        totals.share_log_failing_planes,
    );
    out.single(
        "otedama_share_log_failed_batches_total",
        "counter",
        "Share-log batches whose write failed; their shares were refused, never acknowledged.",
        totals.share_log_failed_batches,
    );
    out.single(
        "otedama_share_log_released_records_total",
        "counter",
        "Share-log records cut by retention: credited, scanned for blocks and older than share_retention_hours (the connected data planes' counts since their start).",
        totals.share_log_released_records,
    );
    if let Some(leadership) = &state.leadership {
        out.single(
            "otedama_cluster_leading",
            "gauge",
            "Cluster mode: 1 while this control plane leads (holds the lease and has read the block and job streams to their end), 0 while it stands by.",
            u64::from(leadership.observed_leading()),
        );
    }
    out.single(
        "otedama_share_shipping_planes",
        "gauge",
        "Cluster mode: data planes that ship their share log to the cluster's stream.",
        totals.share_shipping_planes,
    );
    out.single(
        "otedama_share_shipping_disconnected",
        "gauge",
        "Cluster mode: shipping data planes not connected to the cluster now (their shares wait in their local logs).",
        totals.share_shipping_disconnected_planes,
    );
    out.single(
        "otedama_share_shipping_diverged",
        "gauge",
        "Cluster mode: data planes whose shipping stopped because their log does not hold the stream's last record of it; an operator must look.",
        totals.share_shipping_diverged_planes,
    );
    out.single(
        "otedama_share_shipping_failed_sessions_total",
        "counter",
        "Cluster mode: shipping sessions that failed and started again (a server gone, a lost acknowledgement).",
        totals.share_shipping_failed_sessions,
    );
    out.single(
        "otedama_dataplane_pow_queued_peak",
        "gauge",
        "The most shares one core held for its batch hasher at once since start (scrypt, and Stratum V1 SHA256d); bounded by SHARES_AWAITING_POW_PER_CORE_MAX (4096). At the bound, readers wait.",
        totals.pow_queued_peak,
    );
    out.single(
        "otedama_dataplane_durability_queued_peak",
        "gauge",
        "The most shares one core held waiting for the share log at once since start (shares count from when they queue for the batch hasher); bounded by SHARES_AWAITING_DURABILITY_PER_CORE_MAX (16384).",
        totals.durability_queued_peak,
    );
    out.family(
        "otedama_dataplane_refusals_total",
        "counter",
        "Shares and connections the data plane refused for a bound of its own, by reason.",
    );
    for reason in otedama_shared::ipc::Refusal::ALL {
        let count = totals.refusals.get(reason.name()).copied().unwrap_or(0);
        out.sample(
            "otedama_dataplane_refusals_total",
            &format!("reason=\"{}\"", reason.name()),
            count,
        );
    }
    out.family(
        "otedama_api_refusals_total",
        "counter",
        "Connections and requests the HTTP API refused for a bound of its own, by reason.",
    );
    for (reason, count) in state.pool.api_refusals() {
        out.sample(
            "otedama_api_refusals_total",
            &format!("reason=\"{}\"", reason.name()),
            count,
        );
    }
    out.single(
        "otedama_accepted_difficulty_total",
        "counter",
        "Sum of the difficulty of accepted shares.",
        totals.accepted_difficulty_sum,
    );
    // The same as hashes, for the coin's algorithm: its rate is the pool's hash rate.
    out.single(
        "otedama_accepted_hashes_total",
        "counter",
        "Hashes the accepted shares stand for on average (difficulty times hashes per difficulty one).",
        totals.accepted_difficulty_sum
            * crate::api::pool::hashes_per_difficulty(state.algorithm),
    );
    out.single(
        "otedama_job_age_seconds",
        "gauge",
        "Seconds since the newest job was built (since the start, before the first).",
        state.pool.job_age_s(),
    );
    out.family(
        "otedama_blocks_total",
        "counter",
        "Blocks submitted, by the node's answer.",
    );
    out.sample(
        "otedama_blocks_total",
        "result=\"accepted\"",
        state.pool.blocks_found.load(Relaxed),
    );
    out.sample(
        "otedama_blocks_total",
        "result=\"rejected\"",
        state.pool.blocks_rejected.load(Relaxed),
    );
    let mut by_status =
        std::collections::BTreeMap::from([("pending", 0), ("confirmed", 0), ("orphaned", 0)]);
    for block in state
        .blocks
        .all()
        .iter()
        .filter(|b| b.rejected_reason.is_none())
    {
        let status = match block.status {
            otedama_ledger::lifecycle::BlockStatus::Pending => "pending",
            otedama_ledger::lifecycle::BlockStatus::Confirmed => "confirmed",
            otedama_ledger::lifecycle::BlockStatus::Orphaned => "orphaned",
        };
        *by_status.entry(status).or_default() += 1;
    }
    out.family(
        "otedama_found_blocks",
        "gauge",
        "Blocks the node accepted, by where they stand now.",
    );
    for (status, count) in by_status {
        out.sample(
            "otedama_found_blocks",
            &format!("status=\"{status}\""),
            count,
        );
    }
    out.family(
        "otedama_share_ack_latency_seconds",
        "histogram",
        "From a share passing validation to its acknowledgement being sent (the share log's durability wait).",
    );
    out.histogram(
        "otedama_share_ack_latency_seconds",
        "",
        &ACK_LATENCY_BUCKETS_S,
        &totals.ack_latency,
    );
    out.family(
        "otedama_share_ack_stage_seconds",
        "histogram",
        "The acknowledgement's stages: queue (validated until the share log's writer takes the batch), disk (the batch's write and fsync), handoff (durable, or with share_ack = replicated in the stream, until the core handles it), reply (until the miners' replies are written), replicate (share_ack = replicated only: durable until the replicated share stream has the batch).",
    );
    for (stage, stage_totals) in ACK_STAGES.iter().zip(&totals.ack_stages) {
        out.histogram(
            "otedama_share_ack_stage_seconds",
            &format!("stage=\"{stage}\""),
            &ACK_STAGE_BUCKETS_S,
            stage_totals,
        );
    }
    out.single(
        "otedama_connections",
        "gauge",
        "Open miner connections.",
        totals.connections,
    );
    out.family(
        "otedama_protocol_connections",
        "gauge",
        "Open miner connections by front end: Stratum V1, V2 over TCP (Noise), V2 over QUIC, Monero's Stratum.",
    );
    let by_protocol = &totals.connections_by_protocol;
    for (protocol, count) in [
        ("v1", by_protocol.v1),
        ("v2", by_protocol.v2),
        ("quic", by_protocol.quic),
        ("monero", by_protocol.monero),
    ] {
        out.sample(
            "otedama_protocol_connections",
            &format!("protocol=\"{protocol}\""),
            count,
        );
    }
    out.single(
        "otedama_chain_height",
        "gauge",
        "Height of the node's best block.",
        state.pool.height.load(Relaxed),
    );

    out.single(
        "otedama_node_rpc_requests_total",
        "counter",
        "Node RPC calls made.",
        RPC_STATS.requests.load(Relaxed),
    );
    out.single(
        "otedama_node_rpc_errors_total",
        "counter",
        "Node RPC calls that did not reach the node or were refused its credentials.",
        RPC_STATS.errors.load(Relaxed),
    );
    out.family(
        "otedama_node_rpc_latency_seconds",
        "histogram",
        "Node RPC round-trip time.",
    );
    for (bound, count) in RPC_LATENCY_BUCKETS_S.iter().zip(&RPC_STATS.latency_buckets) {
        out.sample(
            "otedama_node_rpc_latency_seconds_bucket",
            &format!("le=\"{bound}\""),
            count.load(Relaxed),
        );
    }
    let requests = RPC_STATS.requests.load(Relaxed);
    out.sample(
        "otedama_node_rpc_latency_seconds_bucket",
        "le=\"+Inf\"",
        requests,
    );
    out.sample(
        "otedama_node_rpc_latency_seconds_sum",
        "",
        RPC_STATS.latency_sum_us.load(Relaxed) as f64 / 1e6,
    );
    out.sample("otedama_node_rpc_latency_seconds_count", "", requests);

    // Kept by the ledger with every intent's write: no scan of the batches.
    let totals = state
        .payouts
        .ledger_reader
        .intent_totals()
        .unwrap_or_default();
    let tally = |kind: IntentState| totals.get(&kind).copied().unwrap_or_default();
    // Batches the node took: sent, confirmed, or sent and later double-spent (failed). A
    // counter never goes down, so a failed batch stays counted and is also counted apart.
    let taken = [
        IntentState::Sent,
        IntentState::Confirmed,
        IntentState::Failed,
    ]
    .map(tally);
    out.single(
        "otedama_payout_queue_batches",
        "gauge",
        "Payout batches written but not yet seen by the node (retried with back-off).",
        tally(IntentState::Open).batches,
    );
    out.single(
        "otedama_payout_queue_amount",
        "gauge",
        "Smallest units in those batches.",
        tally(IntentState::Open).amount,
    );
    out.single(
        "otedama_payout_batches_total",
        "counter",
        "Payout batches the node took (sent, confirmed, or later double-spent).",
        taken.iter().map(|t| t.batches).sum::<u64>(),
    );
    out.single(
        "otedama_paid_total",
        "counter",
        "Smallest units sent to miners in batches the node took, including batches later double-spent.",
        taken.iter().map(|t| t.amount).sum::<u64>(),
    );
    out.single(
        "otedama_payout_failed_amount_total",
        "counter",
        "Smallest units of batches double-spent after the node took them; back in the miners' balances.",
        tally(IntentState::Failed).amount,
    );
    out.single(
        "otedama_payouts_held_after_restore",
        "gauge",
        "Wallet payments since the restored backup that the ledger does not know; while above 0 no payout is sent.",
        state
            .pool
            .payouts_held_after_restore
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let backups = &state.pool.backups;
    out.single(
        "otedama_backup_interval_seconds",
        "gauge",
        "Seconds between scheduled backups of the data directory; 0 when none are scheduled.",
        backups.interval_s.load(Relaxed),
    );
    out.single(
        "otedama_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the newest complete scheduled backup in backup_dir; 0 if there is none.",
        backups.last_success_unix_s.load(Relaxed),
    );
    out.single(
        "otedama_backup_last_duration_seconds",
        "gauge",
        "How long the last scheduled backup took.",
        backups.last_duration_ms.load(Relaxed) as f64 / 1000.0,
    );
    out.single(
        "otedama_backup_last_bytes",
        "gauge",
        "Bytes the last scheduled backup wrote.",
        backups.last_bytes.load(Relaxed),
    );
    out.single(
        "otedama_backups_taken_total",
        "counter",
        "Scheduled backups completed since this control plane started.",
        backups.taken.load(Relaxed),
    );
    out.single(
        "otedama_backup_failures_total",
        "counter",
        "Scheduled backups that failed since this control plane started (each one's directory removed).",
        backups.failures.load(Relaxed),
    );
    if let Some(intact) = state.audit.verified_intact() {
        out.single(
            "otedama_audit_chain_intact",
            "gauge",
            "1 if every audit entry's hash link held at the last verification (every 300 s), 0 if one is broken.",
            u8::from(intact),
        );
    }
    let head = state.audit.head();
    out.family(
        "otedama_audit_chain_entries",
        "gauge",
        "Audit entries ever appended; the label is the newest entry's SHA-256, the chain head to anchor outside the host.",
    );
    out.sample(
        "otedama_audit_chain_entries",
        &format!("head=\"{}\"", head.hash),
        head.entries,
    );
    if let Some(dex) = &state.dex {
        let (holdings, applied) = {
            let dex = dex.lock().expect("dex lock");
            (dex.totals(), dex.exchange().applied())
        };
        out.single(
            "otedama_exchange_commands_total",
            "counter",
            "Commands the exchange journaled and applied.",
            applied,
        );
        out.family(
            "otedama_exchange_holdings",
            "gauge",
            "Everything the exchange's accounts hold (available and reserved), per asset, in minor units. For the pool's coin it equals the ledger's @exchange account.",
        );
        for (asset, total) in holdings {
            out.sample(
                "otedama_exchange_holdings",
                &format!("asset=\"{asset}\""),
                total,
            );
        }
    }
    out.0
}
