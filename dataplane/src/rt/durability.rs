//! A share's way to its acknowledgement: stored in the share log (its block sent up first),
//! counted against the connection's and the core's allowances, and acknowledged once the
//! share log reports it durable (or refused if the write failed).

use super::*;

impl Core {
    /// Sends an accepted share's block up at once, then appends the share to the share
    /// log. The block goes first and whatever the share log says: a valid block is worth
    /// submitting even if its share cannot be kept, and one that the link loses is found
    /// again in the share log by the control plane's block scan. On success the share
    /// counts against the connection's and the core's allowances until it is durable;
    /// `false` if it could not be stored.
    pub fn store_share(
        &self,
        awaiting_ack: &Gate,
        record: &ShareRecord,
        block: Option<BlockCandidate>,
    ) -> bool {
        let mut not_sent_up = None;
        if let Some(block) = block {
            self.counters
                .block_candidates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(refused) = self.upstream.try_send(Upstream::BlockCandidate(block)) {
                tracing::error!("upstream queue full: block candidate left to the block scan");
                not_sent_up = Some(refused.into_inner());
            }
        }
        if let Err(error) = self.share_log.append(self.index, record) {
            tracing::error!(%error, "share not stored");
            if let Some(Upstream::BlockCandidate(block)) = not_sent_up {
                // Neither the link nor the share log has it: the log line is the last copy
                // of the block, whole, for the operator to submit by hand.
                tracing::error!(
                    candidate = %serde_json::to_string(&block).unwrap_or_default(),
                    "block candidate lost to the pool: neither sent up nor stored"
                );
            }
            return false;
        }
        awaiting_ack.take(1);
        self.awaiting_durability.take(1);
        true
    }

    /// Queues the acknowledgement of a share `store_share` took.
    pub fn await_durability(&self, awaiting: AwaitingAck) {
        self.awaiting.borrow_mut().push_back(awaiting);
    }

    /// The share log made the next `done.shares` of this core's shares durable (or failed
    /// to): answer each miner, in order, and let readers go on. Each connection's replies
    /// are sent once at the end, so a batch's acknowledgements share a send (and, in V2,
    /// fold into one SubmitShares.Success per channel).
    pub(super) fn complete_shares(&self, done: Completed) {
        let now_s = now_s();
        let now = std::time::Instant::now();
        let mut touched: Vec<Peer> = Vec::new();
        let mut touched_wires: std::collections::HashSet<*const ()> = Default::default();
        for _ in 0..done.shares {
            let Some(AwaitingAck {
                share,
                protocol,
                validated_at,
            }) = self.awaiting.borrow_mut().pop_front()
            else {
                tracing::error!("share log completed more shares than this core sent");
                break;
            };
            let (peer, difficulty) = match share {
                Acknowledge::V1(connection, share) => {
                    let mut session = connection.session.borrow_mut();
                    if done.result.is_ok() {
                        session.handle_share_durable(&share.request_id, now_s, &self.jobs.borrow());
                    } else {
                        session.handle_share_store_failed(&share.request_id);
                    }
                    drop(session);
                    (Peer::V1(connection), share.record.difficulty)
                }
                Acknowledge::V2(connection, share) => {
                    let mut session = connection.session().borrow_mut();
                    if done.result.is_ok() {
                        session.handle_share_durable(&share, now_s);
                    } else {
                        session.handle_share_store_failed(&share);
                    }
                    drop(session);
                    (Peer::V2(connection), share.record.difficulty)
                }
            };
            if done.result.is_ok() {
                self.counters.accepted(difficulty, protocol);
                self.counters
                    .acknowledged(now.duration_since(validated_at).as_micros() as u64);
            } else {
                self.counters.rejected(ErrorCode::Other);
            }
            peer.awaiting_ack().give_back(1);
            if touched_wires.insert(peer.identity()) {
                touched.push(peer);
            }
        }
        for peer in touched {
            match peer {
                Peer::V1(connection) => {
                    let mut session = connection.session.borrow_mut();
                    connection.flush(&mut session);
                }
                Peer::V2(connection) => connection.flush(),
            }
        }
        self.awaiting_durability.give_back(done.shares);
    }
}
