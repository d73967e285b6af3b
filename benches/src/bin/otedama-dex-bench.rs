//! The exchange's matching engine on one core, with the benchmark's mix: 70 % limit
//! orders (GTC, with some IOC, FOK and post-only), 20 % cancels, 10 % market orders, from
//! 1,000 accounts around a drifting mid (`otedama_dex::sim::Workload`).
//!
//! The stream is recorded first (the workload needs the exchange's events to cancel
//! orders that really rest), then replayed on fresh exchanges, so every figure below is
//! the same commands in the same order:
//!
//! - throughput without per-command timing, engine only (journal off);
//! - latency per command (a clock read around each), engine only, and beside it the same
//!   measurement of a fixed piece of arithmetic that takes as long as the engine's median
//!   command: what the machine alone does to the tail (interrupts, the hypervisor);
//! - throughput with the RocksDB journal on: one write per command, no fsync (a process
//!   crash loses nothing the OS has; a power loss may), and in groups of 1,000 with fsync
//!   (events held until their group is durable).
//!
//! `cargo run --release -p otedama-benches --bin otedama-dex-bench -- --commands 2000000`

use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;

use otedama_dex::exchange::{Command, Exchange};
use otedama_dex::journal::{Dex, Journal};
use otedama_dex::sim::{ltc_btc, Workload};

#[derive(Parser)]
#[command(
    name = "otedama-dex-bench",
    about = "Matching engine throughput and latency"
)]
struct Args {
    /// Commands in the measured stream (after the accounts are funded).
    #[arg(long, default_value_t = 2_000_000)]
    commands: usize,
    /// Accounts trading.
    #[arg(long, default_value_t = 1_000)]
    accounts: u64,
    /// Commands journaled in the journal-on runs (they are slower; fewer keep it short).
    #[arg(long, default_value_t = 500_000)]
    journaled: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn fresh(funding: &[Command]) -> Exchange {
    let mut exchange = ltc_btc();
    let mut events = Vec::new();
    for command in funding {
        exchange.handle(command, &mut events).expect("funding");
    }
    exchange
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut workload = Workload::new(args.seed, args.accounts);
    let mut recorder = ltc_btc();
    let funding = workload.record(&mut recorder, args.accounts as usize * 2);
    let stream = workload.record(&mut recorder, args.commands);
    let mix = |f: fn(&Command) -> bool| {
        stream.iter().filter(|c| f(c)).count() as f64 / stream.len() as f64 * 100.0
    };
    println!(
        "stream: {} commands: {:.1} % limit, {:.1} % cancel, {:.1} % market; {} orders resting at the end",
        stream.len(),
        mix(|c| matches!(c, Command::Place { order, .. } if matches!(order.kind, otedama_dex::OrderKind::Limit { .. }))),
        mix(|c| matches!(c, Command::Cancel { .. })),
        mix(|c| matches!(c, Command::Place { order, .. } if matches!(order.kind, otedama_dex::OrderKind::Market { .. }))),
        recorder.order_count(0)
    );

    // Throughput: three passes, the best kept (the first warms caches and the allocator),
    // each after a pass of the baseline, so a machine that changes speed mid-run shows.
    let mut events = Vec::with_capacity(64);
    let mut best_rate = 0.0f64;
    let mut best_baseline = 0.0f64;
    for pass in 1..=3 {
        let baseline = baseline_ops_per_s(stream.len());
        best_baseline = best_baseline.max(baseline);
        println!("pass {pass}: baseline {baseline:.0} hash-map operations/s");
        let mut exchange = fresh(&funding);
        let started = Instant::now();
        for command in &stream {
            events.clear();
            exchange.apply(command, &mut events);
        }
        let elapsed = started.elapsed();
        let rate = stream.len() as f64 / elapsed.as_secs_f64();
        assert_eq!(
            exchange.state_hash(),
            recorder.state_hash(),
            "the replay diverged"
        );
        println!(
            "pass {pass}: {rate:.0} commands/s ({:.1} ns each), journal off, apply only",
            elapsed.as_nanos() as f64 / stream.len() as f64
        );
        best_rate = best_rate.max(rate);
    }
    // The same with the check every command gets before the journal.
    let mut exchange = fresh(&funding);
    let started = Instant::now();
    for command in &stream {
        events.clear();
        exchange
            .handle(command, &mut events)
            .expect("recorded commands apply");
    }
    let checked_rate = stream.len() as f64 / started.elapsed().as_secs_f64();
    println!("check + apply: {checked_rate:.0} commands/s, journal off");

    // Latency: a clock read on each side of every command.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut clock = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut exchange = fresh(&funding);
    for command in &stream {
        events.clear();
        let started = Instant::now();
        exchange
            .handle(command, &mut events)
            .expect("recorded commands apply");
        histogram.record(started.elapsed().as_nanos().max(1) as u64)?;
        let started = Instant::now();
        clock.record(started.elapsed().as_nanos().max(1) as u64)?;
    }
    println!(
        "latency per command (check + apply, ns): p50 {} p99 {} p99.9 {} p99.99 {} max {}; an empty clock read: p50 {} p99.99 {}",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.value_at_quantile(0.9999),
        histogram.max(),
        clock.value_at_quantile(0.5),
        clock.value_at_quantile(0.9999),
    );
    let control = fixed_work_latency(histogram.value_at_quantile(0.5), stream.len())?;
    println!(
        "control, fixed arithmetic timed the same way ({} times): p50 {} p99 {} p99.9 {} p99.99 {} max {}",
        stream.len(),
        control.value_at_quantile(0.5),
        control.value_at_quantile(0.99),
        control.value_at_quantile(0.999),
        control.value_at_quantile(0.9999),
        control.max(),
    );

    // Journal on.
    let journaled = &stream[..args.journaled.min(stream.len())];
    let dir = tempfile_dir()?;
    {
        let mut dex = Dex::open(&dir.join("each"), false, ltc_btc())?;
        for command in &funding {
            dex.submit(command, &mut events)?.expect("funding");
        }
        let started = Instant::now();
        for command in journaled {
            events.clear();
            dex.submit(command, &mut events)?
                .expect("recorded commands apply");
        }
        let rate = journaled.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "journal on, one write per command, no fsync: {rate:.0} commands/s ({} commands)",
            journaled.len()
        );
    }
    {
        let mut journal = Journal::open(&dir.join("group"), true)?;
        let mut exchange = fresh(&funding);
        let started = Instant::now();
        // Group commit: each command is checked and applied in memory, its events held
        // back until the group's write returns (a failed write means restart from the
        // journal, which never saw them).
        let mut held = Vec::with_capacity(64 * 1_000);
        for group in journaled.chunks(1_000) {
            held.clear();
            for command in group {
                exchange
                    .handle(command, &mut held)
                    .expect("recorded commands apply");
            }
            journal.append_all(group)?;
            std::hint::black_box(&held);
        }
        let rate = journaled.len() as f64 / started.elapsed().as_secs_f64();
        println!("journal on, groups of 1,000 with fsync: {rate:.0} commands/s");
    }
    std::fs::remove_dir_all(&dir)?;

    println!(
        "goal 5,000,000 commands/s: {:.2} of it (best pass); check + apply {:.2}",
        best_rate / 5_000_000.0,
        checked_rate / 5_000_000.0
    );
    println!(
        "engine commands per baseline operation (best against best): {:.3}",
        best_rate / best_baseline
    );
    Ok(())
}

/// A dependent chain of `steps` multiply-xorshift rounds: work with no memory access and
/// no branch to mispredict, so its time varies only with what the machine does around it.
fn arithmetic(steps: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..steps {
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
    }
    x
}

/// Times `count` runs of arithmetic sized to take `target_ns` each, as the engine's
/// commands are timed.
fn fixed_work_latency(target_ns: u64, count: usize) -> anyhow::Result<Histogram<u64>> {
    const CALIBRATION_STEPS: u64 = 1_000_000;
    let started = Instant::now();
    std::hint::black_box(arithmetic(CALIBRATION_STEPS, 7));
    let ns_per_step = started.elapsed().as_nanos() as f64 / CALIBRATION_STEPS as f64;
    let steps = (target_ns as f64 / ns_per_step).max(1.0) as u64;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut sum = 0u64;
    for i in 0..count as u64 {
        let started = Instant::now();
        sum = sum.wrapping_add(arithmetic(std::hint::black_box(steps), i));
        histogram.record(started.elapsed().as_nanos().max(1) as u64)?;
    }
    std::hint::black_box(sum);
    Ok(histogram)
}

/// The baseline: a std `HashMap` holding about as many live entries as the book (25,000),
/// one insert, one lookup and one remove per step, keys in a scrambled order. It is memory-
/// and hash-bound like the engine, so engine ÷ baseline stays put when the machine's speed
/// does not.
fn baseline_ops_per_s(steps: usize) -> f64 {
    use std::collections::HashMap;
    const LIVE: u64 = 25_000;
    let mut map: HashMap<u64, u64> = HashMap::new();
    let scramble = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    let started = Instant::now();
    let mut sum = 0u64;
    for i in 0..steps as u64 {
        map.insert(scramble(i), i);
        sum = sum.wrapping_add(*map.get(&scramble(i / 2)).unwrap_or(&0));
        if i >= LIVE {
            map.remove(&scramble(i - LIVE));
        }
    }
    std::hint::black_box(sum);
    (steps * 3) as f64 / started.elapsed().as_secs_f64()
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("otedama-dex-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
