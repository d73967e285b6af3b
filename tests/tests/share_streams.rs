//! A share stream per data-plane log (issue 20), against a real NATS JetStream server:
//! the control plane's mirror reads each log from its own stream; a log whose stream
//! cannot be read holds back only itself (the others go on, and its clock is never moved
//! on as a silent log's is); and the one stream of the layout before (`OTEDAMA_SHARES`)
//! stops both the mirror and the shipper's stream, rather than have rounds cut short of
//! the shares in it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use otedama_cluster::mirror::{MirrorConfig, ShareMirror, MIRROR_LOG_SILENT_MS};
use otedama_cluster::shares::{share_stream, LEGACY_SHARE_STREAM};
use otedama_cluster::{encode_batch, share_stream_name, share_subject};
use otedama_sharelog::mirror::MirrorLog;
use otedama_tests::nats::NatsCluster;

/// A share batch of records numbered `numbers`, as a shipper sends it.
fn batch(numbers: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    numbers
        .map(|n| (n, otedama_tests::nats::encoded_share(1_000 + n)))
        .collect()
}

fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn jetstream(urls: &[String]) -> (tokio::runtime::Runtime, async_nats::jetstream::Context) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let context = runtime.block_on(async {
        let client = async_nats::connect(otedama_cluster::server_addresses(urls).unwrap())
            .await
            .unwrap();
        async_nats::jetstream::new(client)
    });
    (runtime, context)
}

#[test]
fn a_log_whose_stream_cannot_be_read_holds_back_only_itself() {
    let cluster = NatsCluster::start(1).unwrap();
    let urls = cluster.urls();
    let (runtime, context) = jetstream(&urls);
    runtime.block_on(async {
        for host in ["a", "b"] {
            share_stream(&context, 1, host, 0).await.unwrap();
            context
                .publish(share_subject(host, 0), encode_batch(&batch(0..5)))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // A stream made by a shipper that has shipped nothing: not a log yet.
        share_stream(&context, 1, "c", 0).await.unwrap();
    });
    assert_eq!(
        share_stream_name("a", 0),
        "OTEDAMA_SHARES_a_0",
        "one stream per log"
    );

    let root = tempfile::tempdir().unwrap();
    let mirror = ShareMirror::start(MirrorConfig {
        nats_urls: urls.clone(),
        root: root.path().to_path_buf(),
    })
    .unwrap();
    let status = mirror.status();
    wait_for("both logs mirrored", 30, || {
        status.logs().len() == 2 && status.messages.load(Relaxed) == 2
    });
    let names: Vec<String> = status.logs().into_iter().map(|log| log.name).collect();
    assert_eq!(names, ["a.0", "b.0"], "c has shipped nothing");

    // `b`'s stream goes; `a` carries on.
    runtime
        .block_on(context.delete_stream(share_stream_name("b", 0)))
        .unwrap();
    runtime.block_on(async {
        context
            .publish(share_subject("a", 0), encode_batch(&batch(5..10)))
            .await
            .unwrap()
            .await
            .unwrap();
    });
    wait_for("a's next batch", 30, || status.messages.load(Relaxed) == 3);

    // Both logs silent past `MIRROR_LOG_SILENT_MS`, and neither host holds a slot (there
    // is no host bucket): `a`, read to its end, stops holding rounds back (its clock
    // moves to now); `b`, whose stream cannot be read, never does.
    std::thread::sleep(Duration::from_millis(MIRROR_LOG_SILENT_MS + 5_000));
    drop(mirror);
    let now_ms = otedama_shared::clock::now_ms();
    let clock = |name: &str| {
        MirrorLog::open(&root.path().join(name))
            .unwrap()
            .clock_ms()
            .unwrap()
    };
    assert!(
        clock("a.0") + 60_000 > now_ms,
        "a silent log read to its end whose host is gone holds nothing back"
    );
    assert!(
        clock("b.0") < 1_000_000,
        "a log whose stream cannot be read holds rounds back: clock {}",
        clock("b.0")
    );
    let copy_a = MirrorLog::open(&root.path().join("a.0")).unwrap();
    assert_eq!(copy_a.record_range().unwrap(), Some((0, 9)));
}

#[test]
fn the_stream_of_the_layout_before_stops_the_mirror_and_the_shipper() {
    let cluster = NatsCluster::start(1).unwrap();
    let urls = cluster.urls();
    let (runtime, context) = jetstream(&urls);
    runtime.block_on(async {
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: LEGACY_SHARE_STREAM.to_string(),
                subjects: vec!["otedama.shares.>".into(), "otedama.clocks.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        context
            .publish(share_subject("a", 0), encode_batch(&batch(0..5)))
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let error = runtime
        .block_on(share_stream(&context, 1, "a", 0))
        .expect_err("no log's stream beside the old one");
    assert!(
        format!("{error:#}").contains(LEGACY_SHARE_STREAM),
        "{error:#}"
    );

    let root = tempfile::tempdir().unwrap();
    let mirror = ShareMirror::start(MirrorConfig {
        nats_urls: urls,
        root: root.path().to_path_buf(),
    })
    .unwrap();
    let status = mirror.status();
    wait_for("a failed session", 30, || {
        status.failed_sessions.load(Relaxed) >= 2
    });
    assert!(!status.discovered());
    assert!(status.logs().is_empty());
    assert_eq!(status.messages.load(Relaxed), 0);
}
