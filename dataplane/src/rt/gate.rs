//! A counter with a ceiling that tasks can wait on: the data plane's back-pressure. Readers
//! wait at the gate before reading more from a miner; acknowledgements open it again.
//! Single-threaded (one per core or per connection), so no atomics.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

pub struct Gate {
    used: Cell<usize>,
    limit: usize,
    waiters: RefCell<Vec<Waker>>,
}

impl Gate {
    pub fn new(limit: usize) -> Self {
        Gate {
            used: Cell::new(0),
            limit,
            waiters: RefCell::new(Vec::new()),
        }
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Whether fewer than `limit` units are taken.
    pub fn has_room(&self) -> bool {
        self.used.get() < self.limit
    }

    pub fn take(&self, units: usize) {
        self.used.set(self.used.get() + units);
    }

    pub fn give_back(&self, units: usize) {
        let used = self.used.get().saturating_sub(units);
        self.used.set(used);
        if used < self.limit {
            for waker in self.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// Resolves once fewer than `limit` units are taken.
    pub async fn below_limit(&self) {
        poll_fn(|cx| {
            if self.used.get() < self.limit {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
