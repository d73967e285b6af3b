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
        // Replies to this host's requests come to its own prefix, which its permissions
        // may limit it to (`otedama nats-user`).
        otedama_cluster::set_dataplane_host(config.cluster_host.as_deref().unwrap_or_default())?;
    }
    anyhow::ensure!(
        args.process_index < config.dataplane_processes,
        "--process-index {} is not below dataplane_processes ({})",
        args.process_index,
        config.dataplane_processes
    );
    let mut dataplane = dataplane_config::dataplane_config(&config, args.process_index)?;
    if !config.nats_urls.is_empty() {
        dataplane.block_relay = match config.rpc_client() {
            Ok(rpc) => {
                tracing::info!(node = %rpc.url(), "cluster mode: this host submits the blocks its miners find to the node too");
                Some(crate::block_relay::start(rpc, config.nats_urls.clone())?)
            }
            Err(error) => {
                tracing::warn!(%error, "cluster mode without node RPC credentials: this host's blocks go to the node through the control plane only");
                None
            }
        };
    }
    otedama_dataplane::run(dataplane)
}
