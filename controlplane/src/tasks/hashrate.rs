//! Samples the pool's and each miner's hash rate into the hash-rate history
//! (`crate::hashrate_history`) on its fixed times, and drops samples older than a week.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use otedama_kernels::Algorithm;
use otedama_ledger::shares::ShareHistory;

use crate::hashrate_history::{
    sample_due, HashrateHistory, PoolSample, HASHRATE_HISTORY_KEEP_S, SAMPLE_WINDOW_S,
};

/// How often the sampler looks whether a sample is due: a fraction of the shortest
/// sample interval.
const SAMPLER_TICK_MS: u64 = 2_000;

pub(crate) fn start_hashrate_sampler(
    history: Arc<HashrateHistory>,
    shares: Arc<Mutex<ShareHistory>>,
    algorithm: Algorithm,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("hashrate-sampler".into())
        .spawn(move || {
            let (mut pool_last, mut miners_last) = (None, None);
            loop {
                std::thread::sleep(Duration::from_millis(SAMPLER_TICK_MS));
                let now_s = otedama_shared::clock::now_s();
                let pool_due = sample_due(pool_last, now_s, history.pool_interval_s());
                let miners_due = sample_due(miners_last, now_s, history.miner_interval_s());
                if pool_due.is_none() && miners_due.is_none() {
                    continue;
                }
                // Each sample is measured up to its own time, not to now: every host and
                // restart gives one sample time the same window.
                let activity_at = |at_s: u64| {
                    shares
                        .lock()
                        .expect("history lock")
                        .activity(at_s * 1000, SAMPLE_WINDOW_S * 1000)
                };
                let rate = |difficulty_sum| {
                    crate::api::pool::hashrate(difficulty_sum, SAMPLE_WINDOW_S, algorithm)
                };
                let mut written = Ok(());
                let pool_activity = pool_due.map(|at_s| (at_s, activity_at(at_s)));
                if let Some((at_s, activity)) = &pool_activity {
                    let difficulty: f64 = activity.values().map(|a| a.difficulty_sum).sum();
                    written = history.record_pool(
                        *at_s,
                        PoolSample {
                            hashrate: rate(difficulty),
                            miners: activity.len() as u32,
                            workers: activity.values().map(|a| a.workers.len() as u32).sum(),
                        },
                    );
                }
                if let (Some(at_s), Ok(())) = (miners_due, &written) {
                    // The pool's activity when both fall on one time (every miner sample).
                    let activity = match pool_activity {
                        Some((pool_at_s, activity)) if pool_at_s == at_s => activity,
                        _ => activity_at(at_s),
                    };
                    let miners = activity
                        .iter()
                        .map(|(address, a)| (&**address, rate(a.difficulty_sum)))
                        .collect();
                    written = history.record_miners(at_s, miners).and_then(|()| {
                        history.forget_before(at_s.saturating_sub(HASHRATE_HISTORY_KEEP_S))
                    });
                }
                match written {
                    Ok(()) => {
                        pool_last = pool_due.or(pool_last);
                        miners_last = miners_due.or(miners_last);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot store a hash-rate sample; trying again")
                    }
                }
            }
        })?;
    Ok(())
}
