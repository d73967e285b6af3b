//! What a retention cut costs the share-log writer (`otedama_sharelog::retention`), against
//! the writer's own work in the same run: one group-commit batch of `SHARE_BATCH_MAX`
//! records written to the same log (WAL on, no fsync, so the disk's sync does not hide the
//! comparison). The cut runs on the writer thread between two batches, so its time is how
//! long one batch's acknowledgements wait at most, once a minute.
//!
//! The log holds `RECORDS` records stamped one millisecond apart, flushed to files as a
//! running writer's would be; the cut releases the older half: first the search for the
//! release point (a few reads by halving), then the range deletion and the drop of the
//! files wholly below it.
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
const BATCHES_TIMED: usize = 50;

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

    // The baseline: one batch as the writer writes it, appended to the same log.
    let batch_times: Vec<Duration> = (0..BATCHES_TIMED)
        .map(|_| {
            let took = write_batch(&db, next, &write);
            next += SHARE_BATCH_MAX as u64;
            took
        })
        .collect();
    let batch = median(batch_times);

    let (first, last) = record_range(&db).expect("reads").expect("records");
    let keep_from_ms = 1_000 + first + (last - first) / 2;
    let started = Instant::now();
    let below = release_point(&db, u64::MAX, keep_from_ms)
        .expect("reads")
        .expect("a release point");
    let search = started.elapsed();
    let started = Instant::now();
    release_below(&db, below, &write).expect("a cut");
    let cut = started.elapsed();
    assert_eq!(
        below,
        keep_from_ms - 1_000,
        "cut at the retention's first record"
    );
    assert_eq!(record_range(&db).expect("reads"), Some((below, last)));

    let total = search + cut;
    println!("records in the log             {}", last - first + 1);
    println!("records released               {}", below - first);
    println!("one batch of {SHARE_BATCH_MAX} (median of {BATCHES_TIMED})  {batch:?}");
    println!("release point (search)         {search:?}");
    println!("release (range delete, files)  {cut:?}");
    println!(
        "cut / one batch                {:.2}",
        total.as_secs_f64() / batch.as_secs_f64()
    );
}
