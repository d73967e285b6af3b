//! `otedama controlplane`: the control-plane process (node RPC, jobs, block submission,
//! payouts, the API).

use otedama_controlplane::config::ConfigArgs;

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    // The control plane holds the node's RPC connections, RocksDB's files, the payout
    // thread's and the API's clients: at the 1,024 most processes start with, API clients
    // alone could leave none for the node.
    match otedama_dataplane::rt::raise_open_files_limit() {
        Ok(limit) => tracing::info!(open_files_max = limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
    otedama_controlplane::service::run(args.load()?)
}
