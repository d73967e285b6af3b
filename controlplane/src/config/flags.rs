//! The layers of the configuration: the TOML file, then `OTEDAMA_*` environment
//! variables, then flags (clap reads both of the last two), into one `PoolConfig`.

use super::*;

/// Flags shared by `run`, `dataplane` and `controlplane`. Each overrides the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "OTEDAMA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Coin to mine.
    #[arg(long, env = "OTEDAMA_COIN", value_enum)]
    pub coin: Option<Coin>,
    /// Chain network; addresses and RPC ports follow it.
    #[arg(long, env = "OTEDAMA_NETWORK", value_enum)]
    pub network: Option<Network>,
    /// Node JSON-RPC URL (default: the coin's port on 127.0.0.1).
    #[arg(long, env = "OTEDAMA_NODE_RPC_URL")]
    pub node_rpc_url: Option<String>,
    /// Node RPC user (with --node-rpc-password).
    #[arg(long, env = "OTEDAMA_NODE_RPC_USER")]
    pub node_rpc_user: Option<String>,
    /// Node RPC password.
    #[arg(long, env = "OTEDAMA_NODE_RPC_PASSWORD")]
    pub node_rpc_password: Option<String>,
    /// The node's .cookie file, instead of a user and password.
    #[arg(long, env = "OTEDAMA_NODE_RPC_COOKIE")]
    pub node_rpc_cookie: Option<PathBuf>,
    /// The node wallet that receives rewards and funds payouts (multi-wallet nodes).
    #[arg(long, env = "OTEDAMA_NODE_WALLET")]
    pub node_wallet: Option<String>,
    /// Address that block rewards are paid to.
    #[arg(long, env = "OTEDAMA_PAYOUT_ADDRESS")]
    pub payout_address: Option<String>,
    /// Stratum V1 listen address; repeat the flag for several.
    #[arg(long, env = "OTEDAMA_STRATUM_LISTEN", value_delimiter = ',')]
    pub stratum_listen: Vec<SocketAddr>,
    /// Stratum V2 (Noise over TCP) listen address; repeat the flag for several.
    #[arg(long, env = "OTEDAMA_SV2_LISTEN", value_delimiter = ',')]
    pub sv2_listen: Vec<SocketAddr>,
    /// File with the pool authority's secret key (created if missing).
    #[arg(long, env = "OTEDAMA_SV2_AUTHORITY_KEY_FILE")]
    pub sv2_authority_key_file: Option<PathBuf>,
    /// Seconds each V2 Noise certificate is valid.
    #[arg(long, env = "OTEDAMA_SV2_CERTIFICATE_VALIDITY_S")]
    pub sv2_certificate_validity_s: Option<u32>,
    /// Stratum V2 over QUIC listen address (UDP); repeat the flag for several.
    #[arg(long, env = "OTEDAMA_QUIC_LISTEN", value_delimiter = ',')]
    pub quic_listen: Vec<SocketAddr>,
    /// PEM certificate chain for QUIC (default: a self-signed one in the data directory).
    #[arg(long, env = "OTEDAMA_QUIC_CERT_FILE")]
    pub quic_cert_file: Option<PathBuf>,
    /// PEM private key for --quic-cert-file.
    #[arg(long, env = "OTEDAMA_QUIC_KEY_FILE")]
    pub quic_key_file: Option<PathBuf>,
    /// QUIC connections one data-plane core holds at most.
    #[arg(long, env = "OTEDAMA_QUIC_CONNECTIONS_PER_CORE_MAX")]
    pub quic_connections_per_core_max: Option<usize>,
    /// Monero Stratum listen address; repeat the flag for several.
    #[arg(long, env = "OTEDAMA_MONERO_LISTEN", value_delimiter = ',')]
    pub monero_listen: Vec<SocketAddr>,
    /// The difficulty Monero miners start at, in hashes.
    #[arg(long, env = "OTEDAMA_MONERO_START_DIFFICULTY")]
    pub monero_start_difficulty: Option<f64>,
    /// The lowest difficulty a Monero miner may be given, in hashes.
    #[arg(long, env = "OTEDAMA_MONERO_DIFFICULTY_MIN")]
    pub monero_difficulty_min: Option<f64>,
    /// Prepare RandomX seeds in fast mode (true/false).
    #[arg(long, env = "OTEDAMA_RANDOMX_FAST")]
    pub randomx_fast: Option<bool>,
    /// Serve --monero-listen although nothing credits Monero shares yet (true/false; tests
    /// and development only).
    #[arg(long, env = "OTEDAMA_MONERO_UNCREDITED_PREVIEW")]
    pub monero_uncredited_preview: Option<bool>,
    /// Difficulty new connections start at; fractions such as 0.001 are fine.
    #[arg(long, env = "OTEDAMA_START_DIFFICULTY")]
    pub start_difficulty: Option<f64>,
    /// Directory for the share log, block records and the IPC socket.
    #[arg(long, env = "OTEDAMA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API and /metrics listen address.
    #[arg(long, env = "OTEDAMA_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Text placed in every coinbase (at most 64 bytes).
    #[arg(long, env = "OTEDAMA_COINBASE_TAG")]
    pub coinbase_tag: Option<String>,
    /// Cores for the data plane, comma separated (default: all).
    #[arg(long, env = "OTEDAMA_CORES", value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// fsync the share log before each acknowledgement (true/false).
    #[arg(long, env = "OTEDAMA_SHARE_LOG_SYNC")]
    pub share_log_sync: Option<bool>,
    /// MiB per share-log memtable, 1 to 64 (default 64): less memory on a small host.
    #[arg(long, env = "OTEDAMA_SHARE_LOG_MEMTABLE_MIB")]
    pub share_log_memtable_mib: Option<usize>,
    /// Seconds of silence after which a miner is disconnected.
    #[arg(long, env = "OTEDAMA_CONNECTION_IDLE_TIMEOUT_S")]
    pub connection_idle_timeout_s: Option<u64>,
    /// Stratum TCP connections one IPv4 address or IPv6 /64 may hold.
    #[arg(long, env = "OTEDAMA_CONNECTIONS_PER_IP_MAX")]
    pub connections_per_ip_max: Option<u32>,
    /// Seconds between template refreshes when no new block arrives.
    #[arg(long, env = "OTEDAMA_TEMPLATE_REFRESH_S")]
    pub template_refresh_s: Option<u64>,
    /// Target seconds per share for variable difficulty; 0 turns it off.
    #[arg(long, env = "OTEDAMA_VARDIFF_SHARE_INTERVAL_S")]
    pub vardiff_share_interval_s: Option<f64>,
    /// Lowest difficulty a miner may be given.
    #[arg(long, env = "OTEDAMA_DIFFICULTY_MIN")]
    pub difficulty_min: Option<f64>,
    /// Data-plane processes sharing the Stratum ports (SO_REUSEPORT).
    #[arg(long, env = "OTEDAMA_DATAPLANE_PROCESSES")]
    pub dataplane_processes: Option<usize>,
    /// Seconds a replaced data plane takes to hand its miners over (default 60).
    #[arg(long, env = "OTEDAMA_DATAPLANE_DRAIN_S")]
    pub dataplane_drain_s: Option<u64>,
    /// Seconds between the pool's hash-rate samples for the charts (default 60).
    #[arg(long, env = "OTEDAMA_HASHRATE_SAMPLE_INTERVAL_S")]
    pub hashrate_sample_interval_s: Option<u64>,
    /// Job source: the node, or synthetic jobs for load tests.
    #[arg(long, env = "OTEDAMA_CHAIN")]
    pub chain: Option<ChainSource>,
    /// Milliseconds between synthetic blocks.
    #[arg(long, env = "OTEDAMA_SYNTHETIC_JOB_INTERVAL_MS")]
    pub synthetic_job_interval_ms: Option<u64>,
    /// Payout scheme.
    #[arg(long, env = "OTEDAMA_PAYOUT_SCHEME")]
    pub payout_scheme: Option<PayoutScheme>,
    /// Pool fee in percent.
    #[arg(long, env = "OTEDAMA_POOL_FEE_PERCENT")]
    pub pool_fee_percent: Option<f64>,
    /// Address the pool fee is paid to (default: the payout address).
    #[arg(long, env = "OTEDAMA_POOL_FEE_ADDRESS")]
    pub pool_fee_address: Option<String>,
    /// Confirmations before a block's reward is payable.
    #[arg(long, env = "OTEDAMA_COINBASE_MATURITY")]
    pub coinbase_maturity: Option<u64>,
    /// Seconds between payout runs.
    #[arg(long, env = "OTEDAMA_PAYOUT_INTERVAL_S")]
    pub payout_interval_s: Option<u64>,
    /// Confirmations after which a payout transaction is final (6).
    #[arg(long, env = "OTEDAMA_PAYOUT_CONFIRMATIONS")]
    pub payout_confirmations: Option<u64>,
    /// Smallest balance paid out, in coins (for example 0.01).
    #[arg(long, env = "OTEDAMA_PAYOUT_MIN")]
    pub payout_min: Option<String>,
    /// PPLNS window as a multiple of the network difficulty.
    #[arg(long, env = "OTEDAMA_PPLNS_WINDOW_FACTOR")]
    pub pplns_window_factor: Option<f64>,
    /// PPLNT presence below which shares are scaled.
    #[arg(long, env = "OTEDAMA_PPLNT_PRESENCE_MIN")]
    pub pplnt_presence_min: Option<f64>,
    /// File with the admin API token (plain text; only its hash is kept).
    #[arg(long, env = "OTEDAMA_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Days of audit entries kept (0: all).
    #[arg(long, env = "OTEDAMA_AUDIT_RETENTION_DAYS")]
    pub audit_retention_days: Option<u64>,
    /// Take scheduled backups of the data directory into this directory (outside it).
    #[arg(long, env = "OTEDAMA_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Seconds between scheduled backups (default 86400, at least 10).
    #[arg(long, env = "OTEDAMA_BACKUP_INTERVAL_S")]
    pub backup_interval_s: Option<u64>,
    /// Scheduled backups kept, newest first (default 7); older ones are deleted.
    #[arg(long, env = "OTEDAMA_BACKUPS_KEPT")]
    pub backups_kept: Option<u32>,
    /// A deny list (OFAC SDN XML or CSV, or one address per line); repeatable.
    #[arg(long = "deny-list-file")]
    pub deny_list_file: Vec<PathBuf>,
    /// NATS server of the cluster (nats://HOST:PORT); repeat for several. Turns on cluster
    /// mode: each data-plane process ships its share log to JetStream.
    #[arg(long = "nats-url", env = "OTEDAMA_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// This host's name in the cluster (letters, digits, '-', '_'), needed with --nats-url.
    #[arg(long, env = "OTEDAMA_CLUSTER_HOST")]
    pub cluster_host: Option<String>,
    /// PEM CA certificates of the NATS servers: connect over TLS and check them.
    #[arg(long, env = "OTEDAMA_NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients (with --nats-tls-key-file).
    #[arg(long, env = "OTEDAMA_NATS_TLS_CERT_FILE")]
    pub nats_tls_cert_file: Option<PathBuf>,
    /// The client certificate's PEM key.
    #[arg(long, env = "OTEDAMA_NATS_TLS_KEY_FILE")]
    pub nats_tls_key_file: Option<PathBuf>,
    /// A NATS credentials file (.creds: user JWT and NKey seed).
    #[arg(long, env = "OTEDAMA_NATS_CREDENTIALS_FILE")]
    pub nats_credentials_file: Option<PathBuf>,
    /// Copies the share stream keeps, 1 to 5 (default 3).
    #[arg(long, env = "OTEDAMA_SHARE_STREAM_REPLICAS")]
    pub share_stream_replicas: Option<usize>,
    /// Bytes the exchange's stream holds at most on each NATS server (default 1 GiB).
    #[arg(long, env = "OTEDAMA_EXCHANGE_STREAM_BYTES_MAX")]
    pub exchange_stream_bytes_max: Option<u64>,
    /// Hours a share stays in the share logs (and the share stream) at least (default
    /// 48); it goes only once credited and scanned for blocks.
    #[arg(long, env = "OTEDAMA_SHARE_RETENTION_HOURS")]
    pub share_retention_hours: Option<u64>,
    /// When a miner hears `true`: once the share log has the share (local, the default) or
    /// once the replicated share stream has it too (replicated; needs --nats-url).
    #[arg(long, env = "OTEDAMA_SHARE_ACK")]
    pub share_ack: Option<ShareAck>,
    /// Seconds between re-reads of the deny lists.
    #[arg(long, env = "OTEDAMA_DENY_LIST_RELOAD_S")]
    pub deny_list_reload_s: Option<u64>,
    /// Run the exchange (true/false); markets come from the config file.
    #[arg(long, env = "OTEDAMA_DEX_ENABLED")]
    pub dex_enabled: Option<bool>,
    /// A KYC threshold, COIN=AMOUNT in coins (LTC=25); repeatable.
    #[arg(long = "kyc-threshold", value_parser = parse_threshold)]
    pub kyc_threshold: Vec<(String, String)>,
    /// Days the KYC threshold counts payouts over.
    #[arg(long, env = "OTEDAMA_KYC_PERIOD_DAYS")]
    pub kyc_period_days: Option<u64>,
    /// URL each new KYC hold is posted to.
    #[arg(long, env = "OTEDAMA_KYC_WEBHOOK_URL")]
    pub kyc_webhook_url: Option<String>,
    /// File with the secret shared with the KYC provider.
    #[arg(long, env = "OTEDAMA_KYC_WEBHOOK_SECRET_FILE")]
    pub kyc_webhook_secret_file: Option<PathBuf>,
}

fn parse_threshold(text: &str) -> Result<(String, String), String> {
    let (coin, amount) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not COIN=AMOUNT"))?;
    Ok((coin.trim().to_ascii_uppercase(), amount.trim().to_string()))
}

impl ConfigArgs {
    pub fn load(&self) -> anyhow::Result<PoolConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => PoolConfig::default(),
        };
        macro_rules! take {
            ($($field:ident),*) => {$(
                if let Some(value) = &self.$field { config.$field = value.clone().into(); }
            )*};
        }
        take!(
            monero_start_difficulty,
            monero_difficulty_min,
            randomx_fast,
            monero_uncredited_preview,
            coin,
            network,
            payout_address,
            start_difficulty,
            data_dir,
            api_listen
        );
        take!(
            coinbase_tag,
            share_log_sync,
            share_log_memtable_mib,
            connection_idle_timeout_s,
            template_refresh_s
        );
        take!(
            vardiff_share_interval_s,
            difficulty_min,
            dataplane_processes,
            dataplane_drain_s,
            hashrate_sample_interval_s
        );
        take!(chain, synthetic_job_interval_ms);
        take!(
            payout_scheme,
            pool_fee_percent,
            pool_fee_address,
            coinbase_maturity,
            payout_interval_s,
            payout_confirmations,
            payout_min
        );
        take!(
            pplns_window_factor,
            pplnt_presence_min,
            audit_retention_days,
            deny_list_reload_s
        );
        take!(backup_dir, backup_interval_s, backups_kept);
        if !self.deny_list_file.is_empty() {
            config.deny_list_file = self.deny_list_file.clone();
        }
        if !self.nats_url.is_empty() {
            config.nats_urls = self.nats_url.clone();
        }
        if let Some(host) = &self.cluster_host {
            config.cluster_host = Some(host.clone());
        }
        take!(
            share_stream_replicas,
            exchange_stream_bytes_max,
            share_retention_hours,
            share_ack,
            nats_tls_ca_file,
            nats_tls_cert_file,
            nats_tls_key_file,
            nats_credentials_file
        );
        take!(dex_enabled, kyc_period_days);
        if !self.kyc_threshold.is_empty() {
            config.kyc_threshold = self.kyc_threshold.iter().cloned().collect();
        }
        if let Some(url) = &self.kyc_webhook_url {
            config.kyc_webhook_url = Some(url.clone());
        }
        if let Some(path) = &self.kyc_webhook_secret_file {
            config.kyc_webhook_secret_file = Some(path.clone());
        }
        take!(
            sv2_certificate_validity_s,
            quic_connections_per_core_max,
            connections_per_ip_max
        );
        for (flag, field) in [
            (&self.quic_cert_file, &mut config.quic_cert_file),
            (&self.quic_key_file, &mut config.quic_key_file),
        ] {
            if let Some(path) = flag {
                *field = Some(path.clone());
            }
        }
        if !self.quic_listen.is_empty() {
            config.quic_listen = self.quic_listen.clone();
        }
        if let Some(path) = &self.sv2_authority_key_file {
            config.sv2_authority_key_file = Some(path.clone());
        }
        if !self.sv2_listen.is_empty() {
            config.sv2_listen = self.sv2_listen.clone();
        }
        if !self.monero_listen.is_empty() {
            config.monero_listen = self.monero_listen.clone();
        }
        if let Some(path) = &self.admin_token_file {
            config.admin_token_file = Some(path.clone());
        }
        take!(
            node_rpc_url,
            node_rpc_user,
            node_rpc_password,
            node_rpc_cookie,
            node_wallet
        );
        if !self.stratum_listen.is_empty() {
            config.stratum_listen = self.stratum_listen.clone();
        }
        if !self.cores.is_empty() {
            config.cores = self.cores.clone();
        }
        config.validate_basic()?;
        Ok(config)
    }
}
