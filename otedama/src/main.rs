//! `otedama`: one binary for every role. `run` supervises a control plane and a data plane
//! on one host; `dataplane` and `controlplane` run one half; `demo` runs a whole pool on a
//! Litecoin regtest node with CPU miners; `miner` is a CPU miner over Stratum V1, V2 (Noise) or V2 over QUIC.

mod dataplane_config;
mod demo;
mod miner;
mod signals;
mod supervise;

use anyhow::Context;
use clap::{Parser, Subcommand};

use otedama_controlplane::config::ConfigArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "otedama", version, about = "Otedama mining pool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane and the data plane on this host, restarting either if it dies.
    Run(ConfigArgs),
    /// Run only the data plane (Stratum front end, share validation, share log).
    Dataplane(DataplaneArgs),
    /// Run only the control plane (node RPC, jobs, block submission, API).
    Controlplane(ConfigArgs),
    /// Start a regtest litecoind, a pool and two CPU miners, and show blocks being found.
    Demo(demo::DemoArgs),
    /// Mine with the CPU over Stratum V1, Stratum V2 (Noise) or Stratum V2 over QUIC.
    Miner(miner::MinerArgs),
    /// The audit log: `otedama audit verify --data-dir DIR`.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check the configuration (file, environment and flags) without starting anything,
    /// and print it as TOML with every default filled in. Exits non-zero on a bad one.
    Config(ConfigArgs),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain from its start (or its retention checkpoint); exit 0 if every
    /// entry holds, otherwise exit 1 naming the first broken entry. Safe while the pool runs.
    Verify {
        /// The pool's data directory (the log is in its `audit/`).
        #[arg(long, env = "OTEDAMA_DATA_DIR")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(clap::Args)]
struct DataplaneArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Which of the host's `dataplane_processes` this one is (0-based); `otedama run` sets it.
    #[arg(long, default_value_t = 0)]
    process_index: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // `cargo test --release` builds this binary with the tests' crash hook; such a binary
    // kills itself on a file's say-so and must never run a pool. Say so on every start.
    if otedama_controlplane::FAULT_INJECTION_BUILT {
        tracing::warn!(
            "built with the fault-injection feature (a test build, e.g. by `cargo test --release`): do not deploy this binary; build it with `cargo build --release`"
        );
    }
    match Cli::parse().command {
        Command::Run(args) => supervise::run(args.load()?),
        Command::Dataplane(args) => {
            let config = args.config.load()?;
            config.ensure_data_dir()?;
            anyhow::ensure!(
                args.process_index < config.dataplane_processes,
                "--process-index {} is not below dataplane_processes ({})",
                args.process_index,
                config.dataplane_processes
            );
            otedama_dataplane::run(dataplane_config::dataplane_config(
                &config,
                args.process_index,
            )?)
        }
        Command::Controlplane(args) => {
            // The control plane holds the node's RPC connections, RocksDB's files, the
            // payout thread's and the API's clients: at the 1,024 most processes start
            // with, API clients alone could leave none for the node.
            match otedama_dataplane::rt::raise_open_files_limit() {
                Ok(limit) => tracing::info!(open_files_max = limit, "open-files limit"),
                Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
            }
            otedama_controlplane::service::run(args.load()?)
        }
        Command::Demo(args) => demo::run(args),
        Command::Miner(args) => miner::run(args),
        Command::Audit {
            command: AuditCommand::Verify { data_dir },
        } => {
            let path = data_dir.join("audit");
            anyhow::ensure!(path.is_dir(), "no audit log at {}", path.display());
            let log = otedama_controlplane::audit::AuditLog::open_read_only(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let from = log.checkpoint()?.map_or(0, |c| c.first_sequence);
            match log.verify()? {
                Ok(count) => {
                    let head = log.head();
                    println!(
                        "audit chain intact: {count} entries from sequence {from}; head {} (entry {})",
                        head.hash,
                        head.entries.saturating_sub(1)
                    );
                    Ok(())
                }
                Err(broken) => {
                    eprintln!(
                        "audit chain broken at entry {}: {}",
                        broken.sequence, broken.why
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Config(args) => {
            let config = args.load()?;
            config.check_before_start()?;
            dataplane_config::check_dataplanes(&config)?;
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
    }
}
