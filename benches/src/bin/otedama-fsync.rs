//! The disk's own bound for a share's durability: the latency of appending a small record
//! to a file and making it durable (`fdatasync`), as a write-ahead log does once per
//! group commit. Run it on the file system of the pool's data directory, in the same
//! session as the load, to judge the pool's `disk` stage (and its whole acknowledgement)
//! against what the disk itself takes.
//!
//! `otedama-fsync --dir /var/lib/otedama --count 2000`

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(
    name = "otedama-fsync",
    version,
    about = "Append-and-fdatasync latency of a directory's file system"
)]
struct Args {
    /// Where to write the probe's file (removed at the end).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Appends, each followed by fdatasync.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Bytes per append (a group commit of a few shares is a few KB).
    #[arg(long, default_value_t = 4096)]
    bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let path = args
        .dir
        .join(format!("otedama-fsync-probe.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let record = vec![0x5a_u8; args.bytes];
    let mut latency_us = Histogram::<u64>::new(3).expect("3 significant figures");
    let outcome = (|| -> anyhow::Result<()> {
        for _ in 0..args.count {
            let started = Instant::now();
            file.write_all(&record)?;
            file.sync_data()?;
            latency_us.record(started.elapsed().as_micros() as u64)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    outcome?;
    let q = |quantile: f64| latency_us.value_at_quantile(quantile);
    println!(
        "fdatasync after a {} B append, {} times in {}: p50 {} us  p99 {} us  p99.9 {} us  max {} us",
        args.bytes,
        args.count,
        args.dir.display(),
        q(0.5),
        q(0.99),
        q(0.999),
        latency_us.max()
    );
    println!(
        "{}",
        serde_json::json!({
            "fsync_p50_us": q(0.5),
            "fsync_p99_us": q(0.99),
            "fsync_p999_us": q(0.999),
            "fsync_max_us": latency_us.max(),
            "count": args.count,
        })
    );
    Ok(())
}
