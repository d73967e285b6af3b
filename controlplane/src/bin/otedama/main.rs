//! `otedama`: one binary for every role. `run` supervises a control plane and a data plane
//! on one host; `dataplane` and `controlplane` run one half; `demo` runs a whole pool on a
//! Litecoin regtest node with CPU miners; `miner` is a Stratum V1 CPU miner.

mod demo;
mod miner;
mod signals;
mod supervise;

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
    Dataplane(ConfigArgs),
    /// Run only the control plane (node RPC, jobs, block submission, API).
    Controlplane(ConfigArgs),
    /// Start a regtest litecoind, a pool and two CPU miners, and show blocks being found.
    Demo(demo::DemoArgs),
    /// Mine over Stratum V1 with the CPU.
    Miner(miner::MinerArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => supervise::run(args.load()?),
        Command::Dataplane(args) => {
            let config = args.load()?;
            config.ensure_data_dir()?;
            otedama_dataplane::run(config.dataplane_config())
        }
        Command::Controlplane(args) => otedama_controlplane::service::run(args.load()?),
        Command::Demo(args) => demo::run(args),
        Command::Miner(args) => miner::run(args),
    }
}
