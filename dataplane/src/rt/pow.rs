//! Scrypt shares wait for the core's batch hasher (`scrypt_lanes()` at once: 16 with
//! AVX-512, 8 with AVX2),
//! bounded by `SCRYPT_SHARES_QUEUED_PER_CORE_MAX`; SHA256d shares are validated inline.

use super::*;

impl Core {
    /// Queues a scrypt share for the batch hasher. It also holds a place under the core's
    /// durability bound while it waits, given back just before its outcome is applied
    /// (which takes one again if the share is stored): otherwise up to
    /// `SCRYPT_SHARES_QUEUED_PER_CORE_MAX` hashed shares could land on a core already at
    /// `SHARES_AWAITING_DURABILITY_PER_CORE_MAX` and fill the share log's queue.
    pub fn queue_pow(&self, work: PowWork) {
        self.awaiting_pow.take(1);
        self.awaiting_durability.take(1);
        self.pow_queue.borrow_mut().push(work);
        if let Some(waker) = self.pow_waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Hashes queued scrypt shares, as many at a time as the widest kernel takes, and
    /// finishes them.
    /// The hasher runs after the tasks already woken (the readers), so shares that arrive
    /// together are hashed together; a lone share goes through the one-lane crate, which is
    /// cheaper than a mostly empty multi-lane pass.
    pub(super) async fn hash_scrypt_shares(self: Rc<Self>) {
        let mut batch: Vec<PowWork> = Vec::with_capacity(SCRYPT_LANES_MAX);
        let mut headers = Vec::with_capacity(SCRYPT_LANES_MAX);
        let mut pows = Vec::with_capacity(SCRYPT_LANES_MAX);
        let lanes = otedama_kernels::scrypt::scrypt_lanes();
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
                let take = queue.len().min(lanes);
                batch.extend(queue.drain(..take));
            }
            headers.clear();
            headers.extend(batch.iter().map(|work| work.header()));
            pows.clear();
            pows.resize(headers.len(), [0u8; 32]);
            if headers.len() == 1 {
                pows[0] = otedama_kernels::scrypt::scrypt_pow(&headers[0]);
            } else {
                otedama_kernels::scrypt::scrypt_pow_many(&headers, &mut pows);
            }
            let now_s = now_s();
            for (work, pow) in batch.drain(..).zip(&pows) {
                work.finish(&self, pow, now_s);
                self.awaiting_pow.give_back(1);
            }
            glommio::yield_if_needed().await;
        }
    }
}
