//! Handing a data plane's miners over to its replacement, so an upgrade drops none.
//!
//! The replacement starts first, binds the same ports (SO_REUSEPORT) in its own share-log
//! slot, and says when every core accepts (`on_accepting`). Then this process is told to
//! drain (`request_drain`, from a signal handler): each core closes its listeners at once,
//! so new connections reach only the replacement (with `net.ipv4.tcp_migrate_req = 1`,
//! which `otedama-tune` sets, connections already queued on a closed listener move to the
//! replacement's instead of being reset), then asks its miners to reconnect at a bounded
//! pace (`DrainPlan`), closes whoever is left at the end of the drain, and stops. The
//! process exits once the share log has written what the cores gave it.
//!
//! Invariant: every share acknowledged before or during the drain is in this slot's share
//! log, because acknowledgements still wait for durability, and the log is closed only
//! after the last core has stopped handing it shares.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How often a draining core asks its next miners to reconnect, and looks whether any
/// are left.
pub const DRAIN_TICK_MS: u64 = 50;

/// Connections a draining core looks at per one it may move in a tick: connections that
/// cannot be asked and have shares in flight are passed over, and this bounds the look.
pub const CANDIDATES_PER_ASK: usize = 4;

/// A miner asked to reconnect and still connected this long after is closed as soon as
/// none of its shares is in flight. Not every miner follows the request (a V1 device
/// without `client.reconnect`, a V2 one that ignores Reconnect); left to the end of the
/// drain, all of those would reconnect at the same moment instead of at the plan's pace.
pub const RECONNECT_FOLLOW_WAIT_MS: u64 = 5_000;

/// Set by `request_drain`; the drain watcher (`watch`) passes it on to every core.
static DRAIN_REQUESTED: AtomicBool = AtomicBool::new(false);

type Callback = Box<dyn FnOnce() + Send>;

/// What to call once every core accepts miners (`on_accepting`).
static ON_ACCEPTING: Mutex<Option<Callback>> = Mutex::new(None);

/// Tells this process's data plane to drain and stop. Only stores to an atomic, so a
/// signal handler may call it.
pub fn request_drain() {
    DRAIN_REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a drain was asked for.
pub fn drain_requested() -> bool {
    DRAIN_REQUESTED.load(Ordering::SeqCst)
}

/// Calls `callback` once every core of this process accepts miners: its listeners are
/// bound and the control plane's ban list has arrived. A process replacing another
/// reports readiness with it, after which the other may drain.
pub fn on_accepting(callback: impl FnOnce() + Send + 'static) {
    *ON_ACCEPTING.lock().expect("callback lock") = Some(Box::new(callback));
}

/// Counts the cores that have started accepting; the last one calls `on_accepting`'s
/// callback.
pub(super) struct Accepting {
    cores_left: AtomicUsize,
}

impl Accepting {
    pub(super) fn new(cores: usize) -> Arc<Self> {
        Arc::new(Accepting {
            cores_left: AtomicUsize::new(cores),
        })
    }

    /// One core accepts now; called once per core.
    pub(super) fn core_accepts(&self) {
        if self.cores_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let callback = ON_ACCEPTING.lock().expect("callback lock").take();
            if let Some(callback) = callback {
                callback();
            }
        }
    }
}

/// When a draining core asks its miners to reconnect, apart from clocks and sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPlan {
    /// Over this long from the start of the drain, the connections present at its start
    /// are asked at an even pace, so the replacement takes them at a bounded rate instead
    /// of all at once.
    pub spread_ms: u64,
    /// At this long from the start, whoever is still connected is closed.
    pub grace_ms: u64,
}

impl DrainPlan {
    /// The plan for `drain_s` (`dataplane_drain_s`): requests over its first half.
    pub fn new(drain_s: u64) -> Self {
        let grace_ms = drain_s.saturating_mul(1000);
        DrainPlan {
            spread_ms: grace_ms / 2,
            grace_ms,
        }
    }

    /// Connections to ask per tick of `DRAIN_TICK_MS`, for `connections_at_start`: at
    /// least one, and all of them within `spread_ms`. Connections that come later (QUIC
    /// has no listener to close) are asked at the same pace.
    pub fn asked_per_tick(&self, connections_at_start: usize) -> usize {
        let ticks = (self.spread_ms / DRAIN_TICK_MS).max(1) as usize;
        connections_at_start.div_ceil(ticks).max(1)
    }

    /// Whether the drain is over at `elapsed_ms` from its start.
    pub fn over(&self, elapsed_ms: u64) -> bool {
        elapsed_ms >= self.grace_ms
    }
}

/// Connections asked to reconnect, oldest request first, for closing those that stay
/// (`RECONNECT_FOLLOW_WAIT_MS`).
#[derive(Debug, Default)]
pub(super) struct AskedToReconnect {
    /// (when asked, ms from the drain's start; connection id), in the order asked.
    asked: std::collections::VecDeque<(u64, u64)>,
}

impl AskedToReconnect {
    pub(super) fn asked(&mut self, id: u64, at_ms: u64) {
        debug_assert!(self
            .asked
            .back()
            .is_none_or(|(last_ms, _)| *last_ms <= at_ms));
        self.asked.push_back((at_ms, id));
    }

    /// Takes out the connections asked `RECONNECT_FOLLOW_WAIT_MS` or more before `now_ms`,
    /// oldest first. Those that cannot be closed yet go back with `not_yet`.
    pub(super) fn overdue(&mut self, now_ms: u64) -> Vec<(u64, u64)> {
        let due = self
            .asked
            .iter()
            .take_while(|(at_ms, _)| now_ms.saturating_sub(*at_ms) >= RECONNECT_FOLLOW_WAIT_MS)
            .count();
        self.asked.drain(..due).collect()
    }

    /// Puts back overdue connections still busy, ahead of the rest, to be looked at again.
    pub(super) fn not_yet(&mut self, busy: Vec<(u64, u64)>) {
        for entry in busy.into_iter().rev() {
            self.asked.push_front(entry);
        }
    }
}

/// Starts the thread that passes a drain request on to every core, through `drain_core`
/// (which sends the core its command).
pub(super) fn watch(
    drain_s: u64,
    drain_core: impl Fn(DrainPlan) + Send + 'static,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("drain-watch".into())
        .spawn(move || {
            while !drain_requested() {
                std::thread::sleep(std::time::Duration::from_millis(DRAIN_TICK_MS));
            }
            let plan = DrainPlan::new(drain_s);
            tracing::info!(
                drain_s,
                spread_ms = plan.spread_ms,
                "draining: no new connections; asking miners to reconnect to the replacement"
            );
            drain_core(plan);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection present at the start is asked within the spread, at an even pace;
    /// the drain ends at the grace, not a tick before.
    #[test]
    fn a_drain_asks_everyone_within_its_spread_and_ends_at_its_grace() {
        let plan = DrainPlan::new(60);
        assert_eq!((plan.spread_ms, plan.grace_ms), (30_000, 60_000));
        let ticks = plan.spread_ms / DRAIN_TICK_MS;
        for connections in [0usize, 1, 599, 600, 601, 1_000_000] {
            let per_tick = plan.asked_per_tick(connections);
            assert!(per_tick >= 1);
            assert!(
                per_tick as u64 * ticks >= connections as u64,
                "{connections}"
            );
            // Even: no tick asks more than one share of the whole beyond its part.
            assert!(
                per_tick as u64 <= connections as u64 / ticks + 1,
                "{connections}"
            );
        }
        assert!(!plan.over(59_999));
        assert!(plan.over(60_000));
        // The shortest drain (1 s): a spread of one tick or more still asks everyone.
        let short = DrainPlan::new(1);
        assert_eq!(short.asked_per_tick(100), 10);
        assert_eq!(DrainPlan::new(0).asked_per_tick(7), 7);
    }

    /// A connection is overdue at exactly `RECONNECT_FOLLOW_WAIT_MS` after its request, not a
    /// millisecond before; busy ones put back come first again, in their order.
    #[test]
    fn asked_connections_are_overdue_at_the_wait_and_busy_ones_wait_in_order() {
        let mut asked = AskedToReconnect::default();
        asked.asked(1, 0);
        asked.asked(2, 0);
        asked.asked(3, 100);
        assert!(asked.overdue(RECONNECT_FOLLOW_WAIT_MS - 1).is_empty());
        let due = asked.overdue(RECONNECT_FOLLOW_WAIT_MS);
        assert_eq!(due, vec![(0, 1), (0, 2)]);
        asked.not_yet(due);
        asked.asked(4, RECONNECT_FOLLOW_WAIT_MS);
        assert_eq!(
            asked.overdue(RECONNECT_FOLLOW_WAIT_MS + 100),
            vec![(0, 1), (0, 2), (100, 3)]
        );
        assert_eq!(
            asked.overdue(2 * RECONNECT_FOLLOW_WAIT_MS),
            vec![(RECONNECT_FOLLOW_WAIT_MS, 4)]
        );
        assert!(asked.overdue(u64::MAX).is_empty());
    }

    #[test]
    fn the_last_core_to_accept_reports_readiness_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        on_accepting(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let accepting = Accepting::new(3);
        accepting.core_accepts();
        accepting.core_accepts();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        accepting.core_accepts();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
