//! The control planes' record streams (issue 20) against a real NATS JetStream server: a
//! fenced record (the operator's ban list) is taken only over the last one its publisher
//! made it from, so a change made to an older list never replaces a newer one.

use std::sync::Arc;

use otedama_cluster::host::{monotonic_ms, LeaseStatus};
use otedama_cluster::records::{Publisher, RecordKind, RecordPublisher, SendError, BAN_LIST_KEY};
use otedama_tests::nats::NatsCluster;

#[test]
fn a_fenced_record_is_taken_only_over_the_one_it_was_made_from() {
    let cluster = NatsCluster::start(1).unwrap();
    let lease = Arc::new(LeaseStatus::default());
    lease.began_term(1);
    lease.renewed(monotonic_ms());
    let publisher = RecordPublisher::start(
        cluster.urls(),
        1,
        RecordKind::Bans,
        Publisher {
            origin: "test".into(),
            lease,
        },
    )
    .unwrap();
    assert_eq!(publisher.last_message(BAN_LIST_KEY).unwrap(), None);
    let first = publisher.publish_fenced(BAN_LIST_KEY, b"first", 0).unwrap();
    // A second "first list" (a seed racing another): refused, atomically.
    assert_eq!(
        publisher.publish_fenced(BAN_LIST_KEY, b"other first", 0),
        Err(SendError::Stale)
    );
    let second = publisher
        .publish_fenced(BAN_LIST_KEY, b"second", first)
        .unwrap();
    assert!(second > first);
    // A change made to the first list, after the second was taken: refused.
    assert_eq!(
        publisher.publish_fenced(BAN_LIST_KEY, b"made to the first", first),
        Err(SendError::Stale)
    );
    assert_eq!(
        publisher.last_message(BAN_LIST_KEY).unwrap(),
        Some((b"second".to_vec(), second))
    );
    // One message at most.
    assert!(matches!(
        publisher.publish_fenced(
            BAN_LIST_KEY,
            &vec![0; otedama_cluster::records::RECORD_CHUNK_BYTES + 1],
            second
        ),
        Err(SendError::Failed(_))
    ));
}
