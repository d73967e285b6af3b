//! Share retention in cluster mode (issue 20) against a real NATS JetStream server: the
//! control plane's mirror cuts its copies below the floor its readers give and older than
//! the retention, the leader alone purges a log's stream of the batches that lie wholly
//! below its copy's first record, another log's batches and every log's last batch stay,
//! and a copy made after the purge starts where the stream now starts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otedama_cluster::mirror::{MirrorConfig, Retention, ShareMirror};
use otedama_cluster::{clock_subject, encode_batch, share_subject};
use otedama_sharelog::mirror::MirrorLog;
use otedama_tests::nats::NatsCluster;

const BATCHES: u64 = 40;
const RECORDS_PER_BATCH: u64 = 5;
/// Records of `a` below this are stamped in 1970, the rest now.
const A_OLD_BELOW: u64 = 150;

fn record(stamp_ms: u64) -> Vec<u8> {
    otedama_tests::nats::encoded_share(stamp_ms)
}

/// Every batch on `subject`, in stream order: its stream sequence and its records' numbers.
async fn batches(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
) -> Vec<(u64, Vec<u64>)> {
    let mut out = Vec::new();
    let mut from = 1;
    while let Ok(message) = stream.get_first_raw_message_by_subject(subject, from).await {
        let records = otedama_cluster::decode_batch(&message.payload).expect("a share batch");
        out.push((message.sequence, records.iter().map(|(n, _)| *n).collect()));
        from = message.sequence + 1;
    }
    out
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_leader_cuts_the_share_stream_only_below_what_is_credited_and_old() {
    let cluster = NatsCluster::start(1).unwrap();
    let urls = cluster.urls();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let context = runtime.block_on(async {
        let client = async_nats::connect(otedama_cluster::server_addresses(&urls).unwrap())
            .await
            .unwrap();
        async_nats::jetstream::new(client)
    });
    // Each log's stream, as its shipper makes it.
    let a_stream = runtime
        .block_on(otedama_cluster::shares::share_stream(&context, 1, "a", 0))
        .unwrap();
    let b_stream = runtime
        .block_on(otedama_cluster::shares::share_stream(&context, 1, "b", 0))
        .unwrap();
    let (a, b) = (share_subject("a", 0), share_subject("b", 0));
    let now_ms = otedama_shared::clock::now_ms();
    // Two logs' batches, with a clock message among `a`'s: `a`'s first 150 records are
    // old, `b`'s are all old.
    runtime.block_on(async {
        for batch in 0..BATCHES {
            let numbers = batch * RECORDS_PER_BATCH..(batch + 1) * RECORDS_PER_BATCH;
            let a_records: Vec<(u64, Vec<u8>)> = numbers
                .clone()
                .map(|n| (n, record(if n < A_OLD_BELOW { 1_000 + n } else { now_ms })))
                .collect();
            let b_records: Vec<(u64, Vec<u8>)> = numbers.map(|n| (n, record(2_000 + n))).collect();
            for (subject, records) in [(&a, a_records), (&b, b_records)] {
                context
                    .publish(subject.clone(), encode_batch(&records))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            if batch == 10 {
                context
                    .publish(clock_subject("a", 0), now_ms.to_le_bytes().to_vec().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    });
    let last = BATCHES * RECORDS_PER_BATCH - 1;

    let root = tempfile::tempdir().unwrap();
    let mirror = ShareMirror::start(MirrorConfig {
        nats_urls: urls.clone(),
        root: root.path().to_path_buf(),
    })
    .unwrap();
    let status = mirror.status();
    wait_for("both logs mirrored", || {
        status.logs().len() == 2 && status.messages.load(Relaxed) > 2 * BATCHES
    });
    // `a` is credited and scanned through 120; `b` not known yet (nothing of it may go).
    let a_floor = Arc::new(AtomicU64::new(120));
    let b_floor = Arc::new(AtomicU64::new(u64::MAX));
    let leads = Arc::new(AtomicBool::new(false));
    let (floors, leading) = ((a_floor.clone(), b_floor.clone()), leads.clone());
    status.set_retention(Retention {
        keep_ms: 3_600_000,
        pass_interval_ms: 100,
        purge_interval_ms: 100,
        floor: Box::new(move |name, _next| match name {
            "a.0" => Some(floors.0.load(Relaxed)),
            "b.0" => Some(floors.1.load(Relaxed)).filter(|floor| *floor != u64::MAX),
            other => panic!("no log {other}"),
        }),
        purges_stream: Box::new(move || leading.load(Relaxed)),
    });

    // A standby cuts its copy of `a` below the floor, and nothing of the stream.
    wait_for("the copy cut", || {
        status.released_records.load(Relaxed) == 120
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status.purged_batches.load(Relaxed), 0);
    let all_a = runtime.block_on(batches(&a_stream, &a));
    assert_eq!(all_a.len() as u64, BATCHES);

    // Leading, it purges `a`'s batches wholly below 120 and nothing else.
    leads.store(true, Relaxed);
    wait_for("the stream purged", || {
        status.purged_batches.load(Relaxed) == 24
    });
    let kept_a = runtime.block_on(batches(&a_stream, &a));
    assert_eq!(kept_a, all_a[24..].to_vec());
    assert_eq!(kept_a[0].1, (120..125).collect::<Vec<_>>());
    assert_eq!(
        runtime.block_on(batches(&b_stream, &b)).len() as u64,
        BATCHES
    );

    // The floor past everything: the retention keeps `a`'s recent records, and `b`, all
    // old, keeps its last record in the copy and its last batch in the stream.
    a_floor.store(u64::MAX, Relaxed);
    b_floor.store(u64::MAX - 1, Relaxed);
    wait_for("the stream purged again", || {
        status.purged_batches.load(Relaxed) == 24 + 6 + (BATCHES - 1)
    });
    let kept_a = runtime.block_on(batches(&a_stream, &a));
    assert_eq!(kept_a[0].1[0], A_OLD_BELOW);
    assert_eq!(
        kept_a.len() as u64,
        BATCHES - A_OLD_BELOW / RECORDS_PER_BATCH
    );
    let kept_b = runtime.block_on(batches(&b_stream, &b));
    assert_eq!(kept_b.len(), 1);
    assert_eq!(*kept_b[0].1.last().unwrap(), last);
    assert_eq!(
        runtime
            .block_on(a_stream.get_last_raw_message_by_subject(&clock_subject("a", 0)))
            .map(|message| message.payload.to_vec())
            .unwrap(),
        now_ms.to_le_bytes().to_vec(),
        "the clock is not a batch and stays"
    );
    drop(mirror);
    let copy = |root: &std::path::Path, name: &str| {
        MirrorLog::open(&root.join(name))
            .unwrap()
            .record_range()
            .unwrap()
    };
    assert_eq!(copy(root.path(), "a.0"), Some((A_OLD_BELOW, last)));
    assert_eq!(copy(root.path(), "b.0"), Some((last, last)));

    // A control plane that copies the stream now starts each log where the stream does.
    let fresh = tempfile::tempdir().unwrap();
    let mirror = ShareMirror::start(MirrorConfig {
        nats_urls: urls,
        root: fresh.path().to_path_buf(),
    })
    .unwrap();
    let status = mirror.status();
    let expected = (BATCHES - A_OLD_BELOW / RECORDS_PER_BATCH) + 1 + 1;
    wait_for("the fresh copies", || {
        status.logs().len() == 2 && status.messages.load(Relaxed) >= expected
    });
    drop(mirror);
    assert_eq!(copy(fresh.path(), "a.0"), Some((A_OLD_BELOW, last)));
    assert_eq!(
        copy(fresh.path(), "b.0"),
        Some((last + 1 - RECORDS_PER_BATCH, last))
    );
}
