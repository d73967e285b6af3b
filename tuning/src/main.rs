//! `otedama-tune`: reads the host facts that decide how many miners a pool host can hold
//! (cores, memory, file and socket limits). Planning and applying settings come next; for
//! now the tool only reads, and it never changes the host.

use std::path::Path;

use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "otedama-tune",
    version,
    about = "Host facts and tuning for Otedama"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the host facts that bound connection counts, as JSON.
    Facts,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(Path::new(path))
        .ok()
        .map(|s| s.trim().to_string())
}

fn memory_total_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Facts => {
            let facts = json!({
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "memory_total_kib": memory_total_kib(),
                "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
                "fs.nr_open": read_trimmed("/proc/sys/fs/nr_open"),
                "fs.file-max": read_trimmed("/proc/sys/fs/file-max"),
                "net.core.somaxconn": read_trimmed("/proc/sys/net/core/somaxconn"),
                "net.ipv4.ip_local_port_range": read_trimmed("/proc/sys/net/ipv4/ip_local_port_range"),
                "kernel.io_uring_disabled": read_trimmed("/proc/sys/kernel/io_uring_disabled"),
            });
            println!("{}", serde_json::to_string_pretty(&facts)?);
        }
    }
    Ok(())
}
