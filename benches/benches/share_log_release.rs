//! What a retention cut (`otedama_sharelog::retention`) costs the share-log writer, in one
//! run: the cut runs on a thread of its own (`writer::cut_on_request`) while a writer
//! thread goes on writing group-commit batches of `SHARE_BATCH_MAX` records to the same
//! log (WAL on, no fsync, so the disk's sync does not hide the comparison). Reported: the
//! writer's median batch time before the cut (the baseline), its slowest batch while the
//! cut ran, and their ratio; and the cut's own time.
//!
//! The log holds `RECORDS_BENCH` records stamped one millisecond apart, flushed and
//! compacted into files as a running writer's would be; the cut releases the older half:
//! the search for the release point (a few reads by halving), then the range deletion and
//! the drop of the files wholly below it.
//!
//! Run: `cargo bench -p otedama-benches --bench share_log_release`.

use std::time::{Duration, Instant};

use otedama_shared::ShareRecord;
use otedama_sharelog::format::share_log_key;
use otedama_sharelog::retention::{record_range, release_below, release_point};
use otedama_sharelog::writer::SHARE_BATCH_MAX;
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

const RECORDS_BENCH: u64 = 2_000_000;
const RECORDS_SMOKE: u64 = 20_000;

fn record(stamp_ms: u64) -> Vec<u8> {
    ShareRecord {
        accepted_at_ms: stamp_ms,
        job_id: 1,
        height: 100,
        worker: "ltc1qexampleexampleexampleexampleexample.rig01".into(),
        difficulty: 65_536.0,
        achieved_difficulty: 70_000.0,
        is_block: false,
        header: [7; 80],
        extranonce1: vec![1; 4],
        extranonce2: vec![2; 8],
        protocol: None,
    }
    .encode()
}

fn write_batch(db: &DB, first: u64, options: &WriteOptions) -> Duration {
    let mut batch = WriteBatch::default();
    for sequence in first..first + SHARE_BATCH_MAX as u64 {
        batch.put(share_log_key(sequence), record(1_000 + sequence));
    }
    let started = Instant::now();
    db.write_opt(batch, options).expect("a batch");
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let records = if std::env::args().any(|arg| arg == "--bench") {
        RECORDS_BENCH
    } else {
        RECORDS_SMOKE
    };
    let dir = tempfile::tempdir().expect("a directory");
    let mut options = Options::default();
    options.create_if_missing(true);
    options.set_avoid_unnecessary_blocking_io(true);
    let db = DB::open(&options, dir.path()).expect("the log");
    let write = WriteOptions::default();
    let mut next = 0;
    while next < records {
        write_batch(&db, next, &write);
        next += SHARE_BATCH_MAX as u64;
    }
    db.flush().expect("a flush");
    db.compact_range(None::<&[u8]>, None::<&[u8]>);

    let db = std::sync::Arc::new(db);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let write = WriteOptions::default();
            let mut times = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let took = write_batch(&db, next, &write);
                times.push((started, took));
                next += SHARE_BATCH_MAX as u64;
            }
            times
        })
    };
    // Enough batches before the cut for a baseline.
    std::thread::sleep(Duration::from_millis(500));

    let (first, last) = record_range(&db).expect("reads").expect("records");
    let keep_from_ms = 1_000 + first + (records - first) / 2;
    let cut_started = Instant::now();
    let below = release_point(&db, u64::MAX, keep_from_ms)
        .expect("reads")
        .expect("a release point");
    let search = cut_started.elapsed();
    let started = Instant::now();
    release_below(&db, below, &write).expect("a cut");
    let cut = started.elapsed();
    let cut_ended = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let times = writer.join().expect("the writer");
    assert_eq!(
        below,
        keep_from_ms - 1_000,
        "cut at the retention's first record"
    );
    assert_eq!(
        record_range(&db).expect("reads").map(|(first, _)| first),
        Some(below)
    );

    let before: Vec<Duration> = times
        .iter()
        .filter(|(at, took)| *at + *took < cut_started)
        .map(|(_, took)| *took)
        .collect();
    let during = times
        .iter()
        .filter(|(at, took)| *at < cut_ended && *at + *took > cut_started)
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    let batch = median(before.clone());
    println!("records in the log before      {}", last - first + 1);
    println!("records released               {}", below - first);
    println!("release point (search)         {search:?}");
    println!("release (range delete, files)  {cut:?}");
    println!(
        "writer batch of {SHARE_BATCH_MAX}: median {batch:?} over {} batches before the cut, slowest {during:?} during it",
        before.len()
    );
    println!(
        "slowest during / median before {:.2}",
        during.as_secs_f64() / batch.as_secs_f64()
    );
}
