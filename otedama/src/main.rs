//! `otedama`: one binary for every role. `run` supervises a control plane and a data plane
//! on one host; `dataplane` and `controlplane` run one half; `demo` runs a whole pool on a
//! Litecoin regtest node with CPU miners; `miner` is a CPU miner over Stratum V1, V2 (Noise) or V2 over QUIC;
//! `backup` and `restore` copy a data directory and put it back.
//! Each subcommand is one file of the same name; this one only parses and dispatches.

mod audit;
mod backup;
mod block_relay;
mod config;
mod controlplane;
mod dataplane;
mod dataplane_config;
mod demo;
mod handover;
mod miner;
mod run;
mod signals;

use clap::Parser;
use otedama_controlplane::config::ConfigArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(clap::Parser)]
#[command(name = "otedama", version, about = "Otedama mining pool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the control plane and the data plane on this host, restarting either if it dies.
    Run(ConfigArgs),
    /// Run only the data plane (Stratum front end, share validation, share log).
    Dataplane(dataplane::DataplaneArgs),
    /// Run only the control plane (node RPC, jobs, block submission, API).
    Controlplane(ConfigArgs),
    /// Start a regtest litecoind, a pool and two CPU miners, and show blocks being found.
    Demo(demo::DemoArgs),
    /// Mine with the CPU over Stratum V1, Stratum V2 (Noise) or Stratum V2 over QUIC.
    Miner(miner::MinerArgs),
    /// The audit log: `otedama audit verify --data-dir DIR`.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Back up a pool's data directory, running or not (`otedama backup --data-dir DIR
    /// --to DEST`), or check a backup (`otedama backup verify DEST`).
    Backup(backup::BackupArgs),
    /// Restore a backup into an empty data directory; payouts stay held until the node's
    /// wallet agrees with the restored ledger.
    Restore(backup::RestoreArgs),
    /// The ledger: `otedama ledger hash --data-dir DIR` prints its state hash.
    Ledger {
        #[command(subcommand)]
        command: backup::LedgerCommand,
    },
    /// Check the configuration (file, environment and flags) without starting anything,
    /// and print it as TOML with every default filled in. Exits non-zero on a bad one.
    Config(ConfigArgs),
    /// Print the nats-server `authorization` user that gives a data-plane host only what
    /// it needs on the cluster (see the README's "Permissions per role").
    NatsUser(NatsUserArgs),
}

#[derive(clap::Args)]
struct NatsUserArgs {
    /// The host's `cluster_host` name.
    #[arg(long)]
    host: String,
    /// The host's `dataplane_processes`.
    #[arg(long, default_value_t = 1)]
    processes: u32,
    /// The user the server maps the host's connections to: with `verify_and_map`, its
    /// certificate's subject (`CN=dp-a`); in operator mode leave it to the user JWT.
    #[arg(long)]
    user: String,
}

fn nats_user(args: NatsUserArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        otedama_shared::ipc::is_cluster_host_name(&args.host),
        "--host {:?} is no cluster host name (letters, digits, '-' and '_', at most {} bytes)",
        args.host,
        otedama_shared::ipc::CLUSTER_HOST_NAME_BYTES_MAX
    );
    anyhow::ensure!(
        (1..=otedama_shared::limits::DATAPLANE_PROCESSES_MAX as u32).contains(&args.processes),
        "--processes must be 1 to {}",
        otedama_shared::limits::DATAPLANE_PROCESSES_MAX
    );
    println!(
        "{}",
        otedama_cluster::permissions::nats_user(&args.user, &args.host, args.processes)
    );
    Ok(())
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
        Command::Run(args) => run::run(args.load()?),
        Command::Dataplane(args) => dataplane::run(args),
        Command::Controlplane(args) => controlplane::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Miner(args) => miner::run(args),
        Command::Audit { command } => audit::run(command),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Ledger { command } => backup::ledger(command),
        Command::Config(args) => config::run(args),
        Command::NatsUser(args) => nats_user(args),
    }
}
