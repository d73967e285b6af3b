//! Compliance at work: deny lists put in force (data planes, payouts, the exchange, the
//! audit log), KYC notices posted to the provider, and the audit log's housekeeping.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::api::now_ms;
use crate::api::PayoutHandles;
use crate::audit::AuditLog;
use crate::config::PoolConfig;
use crate::stats::PoolState;

/// Cancels the resting orders of every address that may not move value now: denied, or
/// with payouts waiting on KYC. Run when the exchange opens.
pub(crate) fn freeze_held_orders(
    dex: &crate::dex::SharedDex,
    state: &PoolState,
    payouts: &PayoutHandles,
) {
    let held = held_addresses(&payouts.settings, &payouts.ledger);
    let mut dex = dex.lock().expect("dex lock");
    for address in held {
        crate::dex::freeze_orders(&mut dex, state, &address);
    }
}

/// The addresses whose value is held: frozen by the deny list, or waiting on KYC.
pub(crate) fn held_addresses(
    settings: &std::sync::RwLock<crate::payouts::runner::PayoutSettings>,
    ledger: &std::sync::Mutex<otedama_ledger::ledger::Ledger>,
) -> Vec<String> {
    let mut held: Vec<String> = settings
        .read()
        .expect("settings lock")
        .policy
        .frozen
        .iter()
        .cloned()
        .collect();
    match ledger.lock().expect("ledger lock").kyc_records() {
        Ok(records) => held.extend(
            records
                .into_iter()
                .filter(|(_, record)| record.state.holds())
                .map(|(address, _)| address),
        ),
        Err(error) => tracing::error!(%error, "cannot read KYC records"),
    }
    held
}

/// Puts a deny list in force: the data planes refuse its addresses at authorize (and
/// drop their connections), payouts hold their balances, and the audit log records the
/// import and every denied address that holds a balance. Returns whether the data planes
/// enforce it too: `false` when it and the operator's bans exceed `BANS_MAX` together, in
/// which case the balances are frozen (and audited as such) but authorize still goes by
/// the previous list.
pub(crate) fn apply_deny_list(
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
pub(crate) const AUDIT_HOUSEKEEPING_INTERVAL_S: u64 = 300;

/// Publishes the audit chain's head so it can be anchored outside the host, and prunes
/// entries older than the retention at a checkpoint.
pub(crate) fn audit_housekeeping(audit: &AuditLog, retention_days: u64) {
    loop {
        let head = audit.head();
        tracing::info!(entries = head.entries, head = %head.hash, "audit chain head");
        // Every entry's link checked again, for `otedama_audit_chain_intact` and its alert.
        match audit.verify() {
            Ok(Ok(_)) => audit.record_verification(true),
            Ok(Err(broken)) => {
                tracing::error!(sequence = broken.sequence, why = %broken.why, "the audit chain is broken");
                audit.record_verification(false);
            }
            Err(error) => tracing::error!(%error, "cannot verify the audit chain"),
        }
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

/// KYC notices waiting for the webhook at most; past that, new ones are dropped (and
/// logged): the admin API's pending list still has every hold.
pub(crate) const KYC_NOTICES_QUEUED_MAX: usize = 10_000;
/// The queue between the payout thread (which sends with `try_send`, never waiting) and
/// the webhook thread.
pub(crate) fn kyc_notice_queue() -> (Sender<serde_json::Value>, Receiver<serde_json::Value>) {
    crossbeam_channel::bounded(KYC_NOTICES_QUEUED_MAX)
}
/// Attempts per KYC notice, with doubling pauses from one second.
pub(crate) const KYC_WEBHOOK_ATTEMPTS_MAX: u32 = 6;

/// The thread that posts new KYC holds to the provider, signed with the shared secret.
pub(crate) fn start_kyc_webhook(
    config: &PoolConfig,
) -> anyhow::Result<Option<Sender<serde_json::Value>>> {
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
pub(crate) fn deliver_kyc_notice(
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
}
