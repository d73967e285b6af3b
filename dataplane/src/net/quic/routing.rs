//! Which core owns a QUIC connection: connection IDs that carry the owning core's
//! partition byte under a keyed mask (readable only with the key, so an observer cannot
//! correlate a migrated connection), and the bounded queues that forward a datagram that
//! reached the wrong core to the right one.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_lite::StreamExt;
use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use sha2::{Digest, Sha256};

use super::*;

/// The mask over a connection ID's first byte: a keyed hash of the other seven.
pub(super) fn partition_mask(key: &[u8; 32], rest: &[u8]) -> u8 {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(rest);
    hasher.finalize()[0]
}

/// The partition byte a connection ID of ours carries.
pub fn partition_of(key: &[u8; 32], connection_id: &[u8]) -> Option<u8> {
    (connection_id.len() == CONNECTION_ID_BYTES)
        .then(|| connection_id[0] ^ partition_mask(key, &connection_id[1..]))
}

pub(super) struct PartitionedIds {
    pub(super) partition: u8,
    pub(super) key: [u8; 32],
}

impl ConnectionIdGenerator for PartitionedIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CONNECTION_ID_BYTES];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[1..]);
        bytes[0] = self.partition ^ partition_mask(&self.key, &bytes[1..]);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CONNECTION_ID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A datagram one core received for a connection another core owns.
pub struct Forwarded {
    pub(super) data: BytesMut,
    pub(super) remote: SocketAddr,
}

/// The sending end of a core's queue of forwarded datagrams, bounded at
/// `QUIC_FORWARDED_QUEUED_MAX` datagrams and `QUIC_FORWARDED_QUEUED_BYTES_MAX` bytes by
/// counts the receiving end gives back.
#[derive(Clone)]
pub struct ForwardSender {
    sender: UnboundedSender<Forwarded>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// The receiving end (see `ForwardSender`).
pub struct ForwardReceiver {
    receiver: UnboundedReceiver<Forwarded>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// A bounded queue of forwarded datagrams to one core.
pub fn forward_queue() -> (ForwardSender, ForwardReceiver) {
    let (sender, receiver) = futures_channel::mpsc::unbounded();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let queued_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (
        ForwardSender {
            sender,
            queued: queued.clone(),
            queued_bytes: queued_bytes.clone(),
        },
        ForwardReceiver {
            receiver,
            queued,
            queued_bytes,
        },
    )
}

impl ForwardSender {
    /// Queues the datagram, or drops it (`false`) at the bound or if the core stopped.
    pub(super) fn send(&self, forwarded: Forwarded) -> bool {
        let bytes = forwarded.data.len();
        let give_back = || {
            self.queued.fetch_sub(1, Relaxed);
            self.queued_bytes.fetch_sub(bytes, Relaxed);
        };
        let queued = self.queued.fetch_add(1, Relaxed);
        let queued_bytes = self.queued_bytes.fetch_add(bytes, Relaxed);
        if queued >= QUIC_FORWARDED_QUEUED_MAX
            || queued_bytes + bytes > QUIC_FORWARDED_QUEUED_BYTES_MAX
        {
            give_back();
            return false;
        }
        if self.sender.unbounded_send(forwarded).is_err() {
            give_back();
            return false;
        }
        true
    }
}

impl ForwardReceiver {
    pub(super) async fn next(&mut self) -> Option<Forwarded> {
        let forwarded = self.receiver.next().await?;
        self.queued.fetch_sub(1, Relaxed);
        self.queued_bytes.fetch_sub(forwarded.data.len(), Relaxed);
        Some(forwarded)
    }
}
