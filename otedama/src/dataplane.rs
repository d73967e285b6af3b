//! `otedama dataplane`: one data-plane process (Stratum front end, share validation, share
//! log) of the host's `dataplane_processes`.

use otedama_controlplane::config::ConfigArgs;

use crate::dataplane_config;

#[derive(clap::Args)]
pub struct DataplaneArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Which of the host's `dataplane_processes` this one is (0-based); `otedama run` sets it.
    #[arg(long, default_value_t = 0)]
    process_index: usize,
}

pub fn run(args: DataplaneArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    config.ensure_data_dir()?;
    if !config.nats_urls.is_empty() {
        otedama_cluster::set_security(config.nats_security())?;
    }
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
