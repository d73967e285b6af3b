//! A counter with a ceiling that tasks can wait on: the data plane's back-pressure. Readers
//! wait at the gate before reading more from a miner; acknowledgements open it again.
//! Single-threaded (one per core or per connection), so no atomics.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

pub struct Gate {
    used: Cell<usize>,
    /// The most ever taken at once: at most `limit` plus what one step takes past a
    /// `has_room` check (one share), which is what the bound promises.
    peak: Cell<usize>,
    limit: usize,
    waiters: RefCell<Vec<Waker>>,
}

impl Gate {
    pub fn new(limit: usize) -> Self {
        Gate {
            used: Cell::new(0),
            peak: Cell::new(0),
            limit,
            waiters: RefCell::new(Vec::new()),
        }
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn peak(&self) -> usize {
        self.peak.get()
    }

    /// Whether a unit may be taken now: fewer than `limit` are taken and nobody waits.
    /// While readers wait for the low-water mark, newcomers wait behind them, so a flood
    /// cannot keep the gate between the mark and the limit while the waiters starve.
    pub fn has_room(&self) -> bool {
        self.used.get() < self.limit && self.waiters.borrow().is_empty()
    }

    pub fn take(&self, units: usize) {
        let used = self.used.get() + units;
        self.used.set(used);
        self.peak.set(self.peak.get().max(used));
    }

    /// Gives units back. Waiters are woken only once the gate has drained to its low-water
    /// mark (a quarter below the limit), all at once: woken at every unit, thousands of
    /// parked readers would each be polled for every share the hasher or the disk
    /// finishes, and a flood would turn into wake-ups. Nothing is lost by waiting: while
    /// anyone waits `has_room` is false for all, nothing more is taken, and the gate
    /// drains that far.
    ///
    /// Invariant: completions never exceed what was taken (every unit given back was
    /// taken first); asserted in test builds, and saturating in a release build, so a bug
    /// there can only make the gate stricter, never let more in.
    pub fn give_back(&self, units: usize) {
        debug_assert!(
            units <= self.used.get(),
            "{units} given back with {} taken",
            self.used.get()
        );
        let used = self.used.get().saturating_sub(units);
        self.used.set(used);
        if used <= self.low_water() {
            for waker in self.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    fn low_water(&self) -> usize {
        self.limit - self.limit.div_ceil(4)
    }

    /// Resolves once a unit may be taken (`has_room`).
    pub async fn below_limit(&self) {
        poll_fn(|cx| {
            if self.has_room() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn waiters_wake_once_the_gate_drains_to_its_low_water_mark() {
        let gate = Gate::new(8);
        gate.take(8);
        assert!(!gate.has_room());
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut waiting = std::pin::pin!(gate.below_limit());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        // Below the limit, but above the low-water mark (6): not yet woken, and a newcomer
        // waits behind the waiter.
        gate.give_back(1);
        assert!(!gate.has_room());
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        gate.give_back(1);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        // A limit of one wakes as soon as it is free.
        let single = Gate::new(1);
        single.take(1);
        let mut waiting = std::pin::pin!(single.below_limit());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        single.give_back(1);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
    }
}
