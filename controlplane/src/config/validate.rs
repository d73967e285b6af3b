//! What a configuration must satisfy before anything starts: every bound within its
//! named limits, and the files and keys it names usable.

use super::*;

/// The smallest exchange stream accepted: room for some thousands of commands.
pub const EXCHANGE_STREAM_BYTES_MIN: u64 = 1 << 20;

impl PoolConfig {
    /// Everything the control plane reads at a start and can find wrong, checked at once:
    /// `otedama run` calls it (and checks each data plane's settings, which the `otedama`
    /// crate builds) before it starts any child, so a bad configuration stops the start
    /// with its reason instead of a child that fails and is restarted over and over.
    pub fn check_before_start(&self) -> anyhow::Result<()> {
        self.payout_script().context("checking payout_address")?;
        self.admin_token_sha256()?;
        self.kyc_webhook_secret()?;
        if self.chain == ChainSource::Node {
            self.rpc_client().context("node_rpc settings")?;
        }
        if !self.deny_list_file.is_empty() {
            otedama_compliance::deny_list::load(&self.deny_list_file, self.deny_list_ticker())
                .context("reading the deny lists")?;
        }
        self.nats_security()
            .check()
            .context("the NATS connection settings")?;
        Ok(())
    }

    pub(super) fn validate_basic(&self) -> anyhow::Result<()> {
        if !(self.pool_fee_percent.is_finite() && (0.0..=100.0).contains(&self.pool_fee_percent)) {
            bail!("pool_fee_percent must lie between 0 and 100");
        }
        Amount::parse(&self.payout_min).context("payout_min")?;
        if !(self.pplns_window_factor.is_finite() && self.pplns_window_factor > 0.0) {
            bail!("pplns_window_factor must be positive");
        }
        if !(0.0..=1.0).contains(&self.pplnt_presence_min) {
            bail!("pplnt_presence_min must lie between 0 and 1");
        }
        if let Some(backup_dir) = &self.backup_dir {
            if self.backup_interval_s < BACKUP_INTERVAL_S_MIN {
                bail!("backup_interval_s must be at least {BACKUP_INTERVAL_S_MIN}");
            }
            if !(1..=BACKUPS_KEPT_MAX).contains(&self.backups_kept) {
                bail!("backups_kept must lie between 1 and {BACKUPS_KEPT_MAX}");
            }
            let (backups, data) = (absolute(backup_dir), absolute(&self.data_dir));
            if backups.starts_with(&data) || data.starts_with(&backups) {
                bail!(
                    "backup_dir {} and data_dir {} must not hold one another (a backup would copy itself)",
                    backup_dir.display(),
                    self.data_dir.display()
                );
            }
        }
        if self.deny_list_reload_s == 0 {
            bail!("deny_list_reload_s must be at least 1");
        }
        self.kyc_rule()?;
        if self.kyc_webhook_url.is_some() != self.kyc_webhook_secret_file.is_some() {
            bail!("kyc_webhook_url and kyc_webhook_secret_file go together");
        }
        if self.dex_enabled {
            crate::dex::build_exchange(self.coin.symbol(), &self.markets())
                .context("dex_markets")?;
        }
        if self.coinbase_maturity == 0
            || self.payout_interval_s == 0
            || self.payout_confirmations == 0
        {
            bail!(
                "coinbase_maturity, payout_interval_s and payout_confirmations must be at least 1"
            );
        }
        if !self.monero_listen.is_empty() && !self.monero_uncredited_preview {
            bail!(
                "monero_listen: no control plane credits Monero shares or submits Monero blocks yet (issue 22), so its miners would mine for nothing; set monero_uncredited_preview = true to serve them anyway (tests and development)"
            );
        }
        for (name, value) in [
            ("monero_start_difficulty", self.monero_start_difficulty),
            ("monero_difficulty_min", self.monero_difficulty_min),
        ] {
            if !(value.is_finite() && value > 0.0) {
                bail!("{name} must be a positive number, not {value}");
            }
        }
        if !(self.start_difficulty.is_finite() && self.start_difficulty > 0.0) {
            bail!(
                "start_difficulty must be a positive number, not {}",
                self.start_difficulty
            );
        }
        if !(self.vardiff_share_interval_s.is_finite() && self.vardiff_share_interval_s >= 0.0) {
            bail!("vardiff_share_interval_s must be zero or a positive number of seconds");
        }
        let difficulty_floor = self.difficulty_floor();
        if !(difficulty_floor.is_finite()
            && (DIFFICULTY_MIN..=DIFFICULTY_MAX).contains(&difficulty_floor))
        {
            bail!("difficulty_min must lie between {DIFFICULTY_MIN:e} and {DIFFICULTY_MAX:e}");
        }
        if !(1..=DATAPLANE_PROCESSES_MAX).contains(&self.dataplane_processes) {
            bail!("dataplane_processes must lie between 1 and {DATAPLANE_PROCESSES_MAX}");
        }
        if !(1..=DATAPLANE_DRAIN_S_MAX).contains(&self.dataplane_drain_s) {
            bail!("dataplane_drain_s must lie between 1 and {DATAPLANE_DRAIN_S_MAX}");
        }
        {
            use crate::hashrate_history::{POOL_SAMPLE_INTERVAL_S_MAX, POOL_SAMPLE_INTERVAL_S_MIN};
            if !(POOL_SAMPLE_INTERVAL_S_MIN..=POOL_SAMPLE_INTERVAL_S_MAX)
                .contains(&self.hashrate_sample_interval_s)
            {
                bail!(
                    "hashrate_sample_interval_s must lie between {POOL_SAMPLE_INTERVAL_S_MIN} and {POOL_SAMPLE_INTERVAL_S_MAX}"
                );
            }
        }
        if self.stratum_listen.is_empty() {
            bail!("at least one stratum_listen address is needed");
        }
        if self.quic_cert_file.is_some() != self.quic_key_file.is_some() {
            bail!("quic_cert_file and quic_key_file go together");
        }
        if self.connections_per_ip_max == 0 {
            bail!("connections_per_ip_max must be at least 1");
        }
        if !(1..=SHARE_LOG_MEMTABLE_MIB_MAX).contains(&self.share_log_memtable_mib) {
            bail!("share_log_memtable_mib must lie between 1 and {SHARE_LOG_MEMTABLE_MIB_MAX}");
        }
        if !self.nats_urls.is_empty() {
            match &self.cluster_host {
                Some(host) if otedama_shared::ipc::is_cluster_host_name(host) => {}
                Some(host) => {
                    bail!(
                        "cluster_host {host:?} must be letters, digits, '-' and '_' only, at most {} bytes",
                        otedama_shared::ipc::CLUSTER_HOST_NAME_BYTES_MAX
                    )
                }
                None => bail!("nats_urls (cluster mode) needs cluster_host, this host's name"),
            }
            if !(1..=5).contains(&self.share_stream_replicas) {
                bail!("share_stream_replicas must lie between 1 and 5");
            }
            if self.exchange_stream_bytes_max < EXCHANGE_STREAM_BYTES_MIN {
                bail!("exchange_stream_bytes_max must be at least {EXCHANGE_STREAM_BYTES_MIN} (1 MiB)");
            }
            if self.share_retention_hours > SHARE_RETENTION_HOURS_MAX {
                bail!("share_retention_hours must be at most {SHARE_RETENTION_HOURS_MAX}");
            }
        } else if self.nats_security() != otedama_cluster::NatsSecurity::default() {
            bail!(
                "the nats_tls_* and nats_credentials_file settings need nats_urls (cluster mode)"
            );
        }
        if self.share_ack == ShareAck::Replicated && self.nats_urls.is_empty() {
            bail!("share_ack = \"replicated\" needs cluster mode (nats_urls): single-host mode has no share stream");
        }
        if self.quic_connections_per_core_max == 0 {
            bail!("quic_connections_per_core_max must be at least 1");
        }
        if self.sv2_certificate_validity_s < 60 {
            bail!("sv2_certificate_validity_s must be at least 60 (miners' clocks drift)");
        }
        if self.coinbase_tag.len() > otedama_chain::jobs::builder::COINBASE_TAG_BYTES_MAX {
            bail!(
                "coinbase_tag is longer than {} bytes",
                otedama_chain::jobs::builder::COINBASE_TAG_BYTES_MAX
            );
        }
        Ok(())
    }
}

/// `path` made absolute against the working directory and cleaned of `.` and `..`
/// without touching the disk (either directory may not exist yet).
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    let joined = std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let mut clean = std::path::PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}
