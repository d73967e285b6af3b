//! The core's batch hasher: shares waiting for their proof of work (scrypt of either
//! protocol, Stratum V1 SHA256d) are hashed together by `pow_batch::hash_batch`, scrypt
//! `scrypt_lanes()` at once (16 with AVX-512, 8 with AVX2), SHA256d in pairs. Bounded by
//! `SHARES_AWAITING_POW_PER_CORE_MAX`.

use otedama_shared::pow_batch::{hash_batch, HashedShare, PowInput};

use super::*;

/// Shares the hasher takes in one pass before the core's other tasks may run: the widest
/// scrypt kernel's lanes, about 0.45 ms of scrypt on this machine kind (BENCHMARKS.md), or
/// 8 SHA256d pairs, about 25 µs.
pub const POW_SHARES_PER_PASS_MAX: usize = SCRYPT_LANES_MAX;

impl Core {
    /// Queues a share for the batch hasher. It also holds a place under the core's
    /// durability bound while it waits, given back just before its outcome is applied
    /// (which takes one again if the share is stored): otherwise up to
    /// `SHARES_AWAITING_POW_PER_CORE_MAX` hashed shares could land on a core already at
    /// `SHARES_AWAITING_DURABILITY_PER_CORE_MAX` and fill the share log's queue.
    pub fn queue_pow(&self, work: PowWork) {
        self.awaiting_pow.take(1);
        self.awaiting_durability.take(1);
        self.pow_queue.borrow_mut().push(work);
        if let Some(waker) = self.pow_waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Hashes and finishes, at once, every queued share that is claimed in the duplicate
    /// filter only once hashed (Stratum V1 SHA256d), leaving the others (scrypt, claimed
    /// on arrival) queued. Called before a new tip drops the filter's sets, so no share
    /// waits across one: its copy credited before the tip could not be told from it after
    /// (`DuplicateFilter::tip_generation`, whose refusal then never fires here). At most
    /// `SHARES_AWAITING_POW_PER_CORE_MAX` shares, once a block: about 7 ms of hashing, plus
    /// each share's claim, record, append to the share log and reply (not measured apart;
    /// the job broadcast's log line counts it in its `longest_slice_us`).
    pub(super) fn finish_waiting_sha256d(self: &Rc<Self>) {
        let waiting: Vec<PowWork> = {
            let mut queue = self.pow_queue.borrow_mut();
            let (sha256d, rest): (Vec<PowWork>, Vec<PowWork>) = queue
                .drain(..)
                .partition(|work| matches!(work.input(), PowInput::Sha256d { .. }));
            *queue = rest;
            sha256d
        };
        let mut hashed = Vec::with_capacity(POW_SHARES_PER_PASS_MAX);
        let mut batch = Vec::with_capacity(POW_SHARES_PER_PASS_MAX);
        let mut waiting = waiting.into_iter().peekable();
        while waiting.peek().is_some() {
            batch.extend(waiting.by_ref().take(POW_SHARES_PER_PASS_MAX));
            self.finish_batch(&mut batch, &mut hashed);
        }
    }

    /// Hashes one batch and finishes its shares, leaving `batch` empty for the next.
    fn finish_batch(self: &Rc<Self>, batch: &mut Vec<PowWork>, hashed: &mut Vec<HashedShare>) {
        let inputs: Vec<_> = batch.iter().map(|work| work.input()).collect();
        hash_batch(&inputs, hashed, Some(&self.duplicates.borrow()));
        drop(inputs);
        let now_s = now_s();
        for (work, hashed) in batch.drain(..).zip(hashed.iter()) {
            work.finish(self, hashed, now_s);
            self.awaiting_pow.give_back(1);
        }
        self.count_filter_refusals(&mut self.duplicates.borrow_mut());
    }

    /// Hashes queued shares, up to `POW_SHARES_PER_PASS_MAX` a pass, and finishes them.
    /// The hasher runs after the tasks already woken (the readers), so shares that arrive
    /// together are hashed together.
    pub(super) async fn hash_queued_shares(self: Rc<Self>) {
        let mut hashed: Vec<HashedShare> = Vec::with_capacity(POW_SHARES_PER_PASS_MAX);
        let mut batch: Vec<PowWork> = Vec::with_capacity(POW_SHARES_PER_PASS_MAX);
        loop {
            std::future::poll_fn(|cx| {
                if self.pow_queue.borrow().is_empty() {
                    *self.pow_waiter.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            futures_lite::future::yield_now().await;
            {
                let mut queue = self.pow_queue.borrow_mut();
                let take = queue.len().min(POW_SHARES_PER_PASS_MAX);
                batch.extend(queue.drain(..take));
            }
            self.finish_batch(&mut batch, &mut hashed);
            glommio::yield_if_needed().await;
        }
    }
}
