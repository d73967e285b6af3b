//! The pool's configuration: a TOML file, overridden by environment variables, overridden
//! by command-line flags. Every key has a flag of the same name with dashes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use otedama_ledger::Amount;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use otedama_shared::limits::{DATAPLANE_PROCESSES_MAX, DIFFICULTY_MAX, DIFFICULTY_MIN};

use crate::chain::coin::{Coin, CoinParams, Network};
use crate::chain::rpc::{RpcAuth, RpcClient};
use otedama_shared::address::script_for_address;
use otedama_shared::sv2::noise::AuthorityKey;

/// The data directory's mode when `otedama` creates it.
pub const DATA_DIR_MODE: u32 = 0o750;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub coin: Coin,
    pub network: Network,
    /// Defaults to the coin's RPC port on 127.0.0.1 for the chosen network.
    pub node_rpc_url: Option<String>,
    pub node_rpc_user: Option<String>,
    pub node_rpc_password: Option<String>,
    pub node_rpc_cookie: Option<PathBuf>,
    /// The node wallet that receives block rewards and funds payouts; needed when the node
    /// has more than one wallet loaded.
    pub node_wallet: Option<String>,
    /// Where block rewards go; checked against the coin and network at start.
    pub payout_address: String,
    pub stratum_listen: Vec<SocketAddr>,
    /// Stratum V2 (Noise over TCP) listen addresses; none by default.
    pub sv2_listen: Vec<SocketAddr>,
    /// The pool authority's secret key (64 hex digits) for Stratum V2; created, readable by
    /// the owner only, on first start. Default: `sv2-authority.key` in `data_dir`.
    pub sv2_authority_key_file: Option<PathBuf>,
    /// Seconds each V2 connection's Noise certificate is valid from its handshake.
    pub sv2_certificate_validity_s: u32,
    /// Stratum V2 over QUIC listen addresses (UDP); none by default.
    pub quic_listen: Vec<SocketAddr>,
    /// PEM certificate chain for QUIC's TLS 1.3. Without it (and `quic_key_file`), a
    /// self-signed pair is made in `data_dir` (`quic-cert.pem`, `quic-key.pem`) on first start.
    pub quic_cert_file: Option<PathBuf>,
    /// PEM private key for `quic_cert_file`.
    pub quic_key_file: Option<PathBuf>,
    /// QUIC connections one data-plane core holds at most; more are refused. (TCP miners
    /// are bounded by the open-files limit; QUIC ones by this.)
    pub quic_connections_per_core_max: usize,
    pub start_difficulty: f64,
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub coinbase_tag: String,
    /// CPU cores the data plane pins one executor to each; empty means all. With several
    /// data-plane processes, each takes its share of these (one each, round robin, when
    /// there are more processes than cores).
    pub cores: Vec<usize>,
    /// fsync the share log's WAL before acknowledging a share. Off, an acknowledged share
    /// survives a process crash but not a power loss; on, it survives both.
    pub share_log_sync: bool,
    pub version_rolling_mask: u32,
    pub connection_idle_timeout_s: u64,
    /// Stratum TCP connections (V1 and V2) the host holds from one IPv4 address or IPv6
    /// /64; more are refused at accept. Farms behind one NAT address need room, so the
    /// default is generous; it bounds what one address can hold, with the login deadline
    /// bounding how long it holds sockets that never log in.
    pub connections_per_ip_max: u32,
    /// Seconds between template refreshes when no new block arrives (new transactions).
    pub template_refresh_s: u64,
    /// Seconds per share that variable difficulty aims for on each connection; 0 turns it
    /// off and keeps every miner at its start (or suggested) difficulty.
    pub vardiff_share_interval_s: f64,
    /// Lowest difficulty a miner may be given, by suggestion, vardiff or `start_difficulty`.
    /// Every share costs the pool one validation whatever its difficulty, so this floor is
    /// what bounds the validation work a miner can ask of it. Unset, it is the coin
    /// algorithm's `limits::difficulty_floor` (a share there costs the miner 16 times what
    /// it costs the pool); see `difficulty_floor`. Load tests set it near `DIFFICULTY_MIN`,
    /// where every hash is a valid share.
    pub difficulty_min: Option<f64>,
    /// Data-plane processes on this host. They share the Stratum ports through SO_REUSEPORT
    /// and each takes its own slice of the extranonce1 space and its own share log. More
    /// than one is needed where a per-process open-files limit caps the connections one
    /// process can hold; it is also how a data plane restarts without closing the port.
    pub dataplane_processes: usize,
    /// Where jobs come from: the node (`node`), or, for load tests only, a generator that
    /// needs no node (`synthetic`) and never submits a block.
    pub chain: ChainSource,
    /// With `chain = "synthetic"`: milliseconds between new blocks (clean jobs).
    pub synthetic_job_interval_ms: u64,
    /// How found blocks become miners' balances (see `payouts::schemes`).
    pub payout_scheme: PayoutScheme,
    /// The pool's fee, in percent of each reward (PPS/FPPS: of each share's value).
    pub pool_fee_percent: f64,
    /// Where the pool fee goes; empty means the payout address.
    pub pool_fee_address: String,
    /// Confirmations before a found block's reward is mature (payable).
    pub coinbase_maturity: u64,
    /// Seconds between payout runs.
    pub payout_interval_s: u64,
    /// Confirmations after which a payout transaction is final; until then it is followed,
    /// sent again if it leaves the mempool, and undone if it is double-spent.
    pub payout_confirmations: u64,
    /// Smallest mature balance paid out, in coins (`0.01`); miners may set a higher one.
    pub payout_min: String,
    /// PPLNS: the window, as a multiple of the network difficulty.
    pub pplns_window_factor: f64,
    /// PPLNT: below this fraction of the round, a miner's shares are scaled by its presence.
    pub pplnt_presence_min: f64,
    /// A file holding the admin API token in plain text; the server keeps only its hash.
    pub admin_token_file: Option<PathBuf>,
    /// Days of audit entries kept; older ones are pruned at a checkpoint that keeps the
    /// chain verifiable. 0 keeps everything.
    pub audit_retention_days: u64,
    /// Deny lists: OFAC SDN XML or CSV (the pool coin's "Digital Currency Address"
    /// entries), or plain files of one address per line. Denied addresses cannot
    /// authorize, and their balances are held, not paid.
    pub deny_list_file: Vec<PathBuf>,
    /// Seconds between re-reads of the deny lists.
    pub deny_list_reload_s: u64,
    /// The exchange, where miners convert their balances: off unless set.
    pub dex_enabled: bool,
    /// The exchange's markets; each trades the pool's coin. Empty: `LTC-BTC` (or `BTC-LTC`
    /// on a Bitcoin pool) with 0.01-coin lots, 1-satoshi ticks per lot, 1 lot minimum.
    pub dex_markets: Vec<crate::dex::MarketConfig>,
    /// KYC thresholds in coins, by coin ticker (`LTC = "25"`): an address paid more than
    /// this within `kyc_period_days` is paid only once verified. None: no holds.
    pub kyc_threshold: std::collections::BTreeMap<String, String>,
    /// The rolling period the KYC threshold counts payouts over.
    pub kyc_period_days: u64,
    /// Where each new hold is posted (JSON, signed with the webhook secret), for an
    /// external KYC provider. Its answer comes to `POST /api/v1/kyc/callback`.
    pub kyc_webhook_url: Option<String>,
    /// A file with the secret shared with the KYC provider (HMAC-SHA256, both ways).
    pub kyc_webhook_secret_file: Option<PathBuf>,
}

/// The shortest KYC webhook secret accepted.
pub const KYC_WEBHOOK_SECRET_BYTES_MIN: usize = 32;
/// Shortest admin token accepted: 32 characters of a random token are well past guessing.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 32;

/// The payout schemes, as config and flags name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PayoutScheme {
    Pplns,
    Pps,
    Fpps,
    Prop,
    Solo,
    Pplnt,
}

/// The source of block templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChainSource {
    /// getblocktemplate from the configured node; found blocks go to submitblock.
    Node,
    /// Made-up templates with a realistic merkle branch (12 levels), a new one every
    /// `synthetic_job_interval_ms`; blocks are logged, never submitted. Load tests only.
    Synthetic,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            coin: Coin::Litecoin,
            network: Network::Regtest,
            node_rpc_url: None,
            node_rpc_user: None,
            node_rpc_password: None,
            node_rpc_cookie: None,
            node_wallet: None,
            payout_address: String::new(),
            stratum_listen: vec!["0.0.0.0:3333".parse().expect("literal address")],
            sv2_listen: Vec::new(),
            sv2_authority_key_file: None,
            sv2_certificate_validity_s: 3600,
            quic_listen: Vec::new(),
            quic_cert_file: None,
            quic_key_file: None,
            quic_connections_per_core_max: 200_000,
            start_difficulty: 1.0,
            data_dir: PathBuf::from("otedama-data"),
            api_listen: "127.0.0.1:8080".parse().expect("literal address"),
            coinbase_tag: "/otedama/".into(),
            cores: Vec::new(),
            share_log_sync: true,
            version_rolling_mask: 0x1fff_e000,
            connection_idle_timeout_s: 900,
            connections_per_ip_max: 4096,
            template_refresh_s: 30,
            vardiff_share_interval_s: 10.0,
            difficulty_min: None,
            dataplane_processes: 1,
            chain: ChainSource::Node,
            synthetic_job_interval_ms: 10_000,
            payout_scheme: PayoutScheme::Pplns,
            pool_fee_percent: 1.0,
            pool_fee_address: String::new(),
            coinbase_maturity: 100,
            payout_interval_s: 3600,
            payout_confirmations: 6,
            payout_min: "0.01".into(),
            pplns_window_factor: 2.0,
            pplnt_presence_min: 0.5,
            admin_token_file: None,
            audit_retention_days: 0,
            deny_list_file: Vec::new(),
            deny_list_reload_s: 3600,
            dex_enabled: false,
            dex_markets: Vec::new(),
            kyc_threshold: Default::default(),
            kyc_period_days: 30,
            kyc_webhook_url: None,
            kyc_webhook_secret_file: None,
        }
    }
}

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
    /// A deny list (OFAC SDN XML or CSV, or one address per line); repeatable.
    #[arg(long = "deny-list-file")]
    pub deny_list_file: Vec<PathBuf>,
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
            connection_idle_timeout_s,
            template_refresh_s
        );
        take!(
            vardiff_share_interval_s,
            difficulty_min,
            dataplane_processes
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
        if !self.deny_list_file.is_empty() {
            config.deny_list_file = self.deny_list_file.clone();
        }
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

impl PoolConfig {
    /// The KYC rule for the pool's coin, if a threshold is set.
    pub fn kyc_rule(&self) -> anyhow::Result<Option<otedama_compliance::kyc::KycRule>> {
        let ours = self.coin.symbol();
        if let Some(other) = self.kyc_threshold.keys().find(|coin| *coin != ours) {
            bail!("kyc_threshold names {other}, but this pool pays only {ours}");
        }
        if self.kyc_period_days == 0 {
            bail!("kyc_period_days must be at least 1");
        }
        let Some(text) = self.kyc_threshold.get(ours) else {
            return Ok(None);
        };
        Ok(Some(otedama_compliance::kyc::KycRule {
            threshold: Amount::parse(text).context("kyc_threshold")?.units(),
            period_ms: self.kyc_period_days * 86_400_000,
        }))
    }

    /// The SHA-256 of the admin token, when an admin token file is configured: the server
    /// keeps nothing else of it.
    pub fn admin_token_sha256(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading admin_token_file {}", path.display()))?;
        let token = token.trim();
        if token.len() < ADMIN_TOKEN_BYTES_MIN {
            bail!(
                "the admin token in {} is shorter than {ADMIN_TOKEN_BYTES_MIN} characters",
                path.display()
            );
        }
        Ok(Some(sha2::Sha256::digest(token.as_bytes()).into()))
    }

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
        Ok(())
    }

    /// The OFAC ticker of the pool's coin, as the SDN list names it.
    pub fn deny_list_ticker(&self) -> &'static str {
        match self.coin {
            Coin::Litecoin => "LTC",
            Coin::Bitcoin => "XBT",
        }
    }

    /// The shared KYC secret, when a webhook is configured.
    pub fn kyc_webhook_secret(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = &self.kyc_webhook_secret_file else {
            return Ok(None);
        };
        let secret = std::fs::read_to_string(path)
            .with_context(|| format!("reading kyc_webhook_secret_file {}", path.display()))?;
        let secret = secret.trim();
        if secret.len() < KYC_WEBHOOK_SECRET_BYTES_MIN {
            bail!(
                "the KYC webhook secret in {} is shorter than {KYC_WEBHOOK_SECRET_BYTES_MIN} characters",
                path.display()
            );
        }
        Ok(Some(secret.as_bytes().to_vec()))
    }

    /// The exchange's markets: the configured ones, or the default one.
    pub fn markets(&self) -> Vec<crate::dex::MarketConfig> {
        if !self.dex_markets.is_empty() {
            return self.dex_markets.clone();
        }
        let other = match self.coin {
            Coin::Litecoin => "BTC",
            Coin::Bitcoin => "LTC",
        };
        vec![crate::dex::MarketConfig {
            symbol: format!("{}-{other}", self.coin.symbol()),
            lot_size: "0.01".into(),
            tick_size: "0.00000001".into(),
            min_size: 1,
        }]
    }

    fn validate_basic(&self) -> anyhow::Result<()> {
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
        if self.stratum_listen.is_empty() {
            bail!("at least one stratum_listen address is needed");
        }
        if self.quic_cert_file.is_some() != self.quic_key_file.is_some() {
            bail!("quic_cert_file and quic_key_file go together");
        }
        if self.connections_per_ip_max == 0 {
            bail!("connections_per_ip_max must be at least 1");
        }
        if self.quic_connections_per_core_max == 0 {
            bail!("quic_connections_per_core_max must be at least 1");
        }
        if self.sv2_certificate_validity_s < 60 {
            bail!("sv2_certificate_validity_s must be at least 60 (miners' clocks drift)");
        }
        if self.coinbase_tag.len() > crate::jobs::builder::COINBASE_TAG_BYTES_MAX {
            bail!(
                "coinbase_tag is longer than {} bytes",
                crate::jobs::builder::COINBASE_TAG_BYTES_MAX
            );
        }
        Ok(())
    }

    /// The lowest difficulty a miner may be given: `difficulty_min` if the operator set
    /// one, else the algorithm's default floor (`limits::difficulty_floor`).
    pub fn difficulty_floor(&self) -> f64 {
        self.difficulty_min.unwrap_or_else(|| {
            otedama_shared::limits::difficulty_floor(self.coin_params().algorithm)
        })
    }

    /// Whether the operator set a floor below the algorithm's default, where a share can
    /// cost the pool more than the miner: fine for load tests, worth a warning otherwise.
    pub fn difficulty_floor_below_default(&self) -> bool {
        self.difficulty_floor()
            < otedama_shared::limits::difficulty_floor(self.coin_params().algorithm)
    }

    pub fn coin_params(&self) -> CoinParams {
        CoinParams::new(self.coin, self.network)
    }

    /// The payout script, or an error naming the address and the expected network.
    pub fn payout_script(&self) -> anyhow::Result<Vec<u8>> {
        if self.payout_address.is_empty() {
            bail!("payout_address is required (--payout-address ADDR)");
        }
        Ok(script_for_address(
            &self.coin_params().address,
            &self.payout_address,
        )?)
    }

    pub fn rpc_url(&self) -> String {
        if let Some(url) = &self.node_rpc_url {
            return url.clone();
        }
        let port = match (self.coin, self.network) {
            (Coin::Litecoin, Network::Mainnet) => 9332,
            (Coin::Litecoin, Network::Testnet) => 19332,
            (Coin::Litecoin, Network::Regtest) => 19443,
            (Coin::Bitcoin, Network::Mainnet) => 8332,
            (Coin::Bitcoin, Network::Testnet) => 18332,
            (Coin::Bitcoin, Network::Regtest) => 18443,
        };
        format!("http://127.0.0.1:{port}")
    }

    pub fn rpc_client(&self) -> anyhow::Result<RpcClient> {
        let auth = match (&self.node_rpc_cookie, &self.node_rpc_user, &self.node_rpc_password) {
            (Some(cookie), _, _) => RpcAuth::Cookie(cookie.clone()),
            (None, Some(user), Some(password)) => RpcAuth::UserPassword { user: user.clone(), password: password.clone() },
            _ => bail!("node RPC credentials are missing: give --node-rpc-user and --node-rpc-password, or --node-rpc-cookie"),
        };
        Ok(RpcClient::new(&self.rpc_url(), auth))
    }

    /// The RPC client for wallet calls: the node's `/wallet/NAME` endpoint when a wallet
    /// is named.
    pub fn wallet_rpc_client(&self) -> anyhow::Result<RpcClient> {
        let rpc = self.rpc_client()?;
        Ok(match &self.node_wallet {
            Some(name) => rpc.for_path(&format!("/wallet/{name}")),
            None => rpc,
        })
    }

    /// The ledger's RocksDB.
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join("ledger")
    }

    pub fn ipc_socket(&self) -> PathBuf {
        self.data_dir.join("ipc.sock")
    }

    /// Each data-plane process has a share log of its own: RocksDB allows one writer.
    pub fn share_log_path(&self, process_index: usize) -> PathBuf {
        match process_index {
            0 => self.data_dir.join("shares"),
            index => self.data_dir.join(format!("shares-{index}")),
        }
    }

    pub fn control_db_path(&self) -> PathBuf {
        self.data_dir.join("control")
    }

    /// Creates the data directory (and any parent missing) readable by the pool's user and
    /// group only (0750, as the Ansible role makes it): it holds the ledger, the share logs
    /// and the authority key.
    pub fn ensure_data_dir(&self) -> anyhow::Result<&Path> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let existed = self.data_dir.is_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(&self.data_dir)
            .with_context(|| format!("creating data directory {}", self.data_dir.display()))?;
        if !existed {
            // Exactly the mode, whatever the umask took away or would have let through.
            std::fs::set_permissions(
                &self.data_dir,
                std::fs::Permissions::from_mode(DATA_DIR_MODE),
            )
            .with_context(|| format!("setting the mode of {}", self.data_dir.display()))?;
        }
        Ok(&self.data_dir)
    }

    pub fn sv2_authority_key_path(&self) -> PathBuf {
        self.sv2_authority_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sv2-authority.key"))
    }

    /// The Stratum V2 authority key: read from its file, or made and written there (mode
    /// 0600, created exclusively, so two processes starting together agree on one key).
    pub fn sv2_authority(&self) -> anyhow::Result<AuthorityKey> {
        let path = self.sv2_authority_key_path();
        let read = |path: &Path| -> anyhow::Result<AuthorityKey> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let secret: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .with_context(|| format!("{} must hold 64 hex digits", path.display()))?;
            AuthorityKey::from_secret(secret)
                .with_context(|| format!("{} is not a valid secp256k1 key", path.display()))
        };
        if path.exists() {
            return read(&path);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let key = AuthorityKey::generate(&mut rand::rngs::OsRng);
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(format!("{}\n", hex::encode(key.secret_bytes())).as_bytes())?;
                file.sync_all()?;
                tracing::info!(path = %path.display(), "created the Stratum V2 authority key");
                Ok(key)
            }
            // Another process made it first: use theirs.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
            Err(error) => Err(error).with_context(|| format!("creating {}", path.display())),
        }
    }

    /// Where the QUIC certificate and key are: the configured pair, or the self-signed one
    /// kept in the data directory.
    pub fn quic_tls_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.quic_cert_file, &self.quic_key_file) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => (
                self.data_dir.join("quic-cert.pem"),
                self.data_dir.join("quic-key.pem"),
            ),
        }
    }

    /// The pool fee in parts per million, as the payout code takes it.
    pub fn pool_fee_ppm(&self) -> u64 {
        (self.pool_fee_percent * 10_000.0).round() as u64
    }

    /// The scheme with its parameters.
    pub fn scheme(&self) -> otedama_ledger::schemes::Scheme {
        use otedama_ledger::schemes::Scheme;
        match self.payout_scheme {
            PayoutScheme::Pplns => Scheme::Pplns {
                window_factor: self.pplns_window_factor,
            },
            PayoutScheme::Pps => Scheme::Pps,
            PayoutScheme::Fpps => Scheme::Fpps,
            PayoutScheme::Prop => Scheme::Prop,
            PayoutScheme::Solo => Scheme::Solo,
            PayoutScheme::Pplnt => Scheme::Pplnt {
                presence_min: self.pplnt_presence_min,
            },
        }
    }
}

/// Writes a new file readable by its owner only; an existing file is an error, so two
/// processes starting together cannot overwrite each other's key.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        config: ConfigArgs,
    }

    #[test]
    fn the_data_dir_is_created_for_the_pool_alone() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let config = PoolConfig {
            data_dir: root.path().join("var").join("otedama"),
            ..PoolConfig::default()
        };
        config.ensure_data_dir().unwrap();
        let mode = std::fs::metadata(&config.data_dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, DATA_DIR_MODE);
    }

    #[test]
    fn every_flag_overrides_the_default() {
        let flags = Flags::parse_from([
            "otedama",
            "--vardiff-share-interval-s",
            "2.5",
            "--node-rpc-url",
            "http://127.0.0.1:1",
            "--start-difficulty",
            "0.001",
            "--stratum-listen",
            "127.0.0.1:1,127.0.0.1:2",
            "--share-log-sync",
            "false",
            "--difficulty-min",
            "1e-10",
            "--dataplane-processes",
            "3",
            "--chain",
            "synthetic",
            "--synthetic-job-interval-ms",
            "500",
        ]);
        let config = flags.config.load().unwrap();
        assert_eq!(config.vardiff_share_interval_s, 2.5);
        assert_eq!(config.node_rpc_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(config.start_difficulty, 0.001);
        assert_eq!(config.stratum_listen.len(), 2);
        assert!(!config.share_log_sync);
        assert_eq!(config.difficulty_floor(), 1e-10);
        assert_eq!(config.dataplane_processes, 3);
        assert_eq!(config.chain, ChainSource::Synthetic);
        assert_eq!(config.synthetic_job_interval_ms, 500);
    }

    #[test]
    fn exchange_markets_and_kyc_thresholds_come_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("otedama.toml");
        std::fs::write(
            &file,
            "dex_enabled = true\nkyc_threshold = { LTC = \"25\" }\n\
             [[dex_markets]]\nsymbol = \"LTC-BTC\"\nlot_size = \"0.1\"\n\
             tick_size = \"0.00000010\"\nmin_size = 2\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let config = Flags::parse_from(["otedama", "--config", path])
            .config
            .load()
            .unwrap();
        assert!(config.dex_enabled);
        assert_eq!(config.markets()[0].min_size, 2);
        let rule = config.kyc_rule().unwrap().unwrap();
        assert_eq!(rule.threshold, 25 * 100_000_000);
        assert_eq!(rule.period_ms, 30 * 86_400_000);
        let flags = Flags::parse_from([
            "otedama",
            "--config",
            path,
            "--kyc-threshold",
            "ltc=0.5",
            "--kyc-period-days",
            "7",
        ]);
        let rule = flags.config.load().unwrap().kyc_rule().unwrap().unwrap();
        assert_eq!(rule.threshold, 50_000_000);
        assert_eq!(rule.period_ms, 7 * 86_400_000);
        for refused in [
            vec!["--kyc-threshold", "BTC=1"],
            vec!["--kyc-threshold", "LTC=-1"],
            vec!["--kyc-period-days", "0"],
            vec!["--kyc-webhook-url", "http://127.0.0.1:1/"],
        ] {
            let args = ["otedama", "--config", path]
                .into_iter()
                .chain(refused.clone());
            assert!(
                Flags::parse_from(args).config.load().is_err(),
                "{refused:?}"
            );
        }
        std::fs::write(
            &file,
            "dex_enabled = true\n[[dex_markets]]\nsymbol = \"BTC-DOGE\"\n\
             lot_size = \"1\"\ntick_size = \"1\"\nmin_size = 1\n",
        )
        .unwrap();
        let refused = Flags::parse_from(["otedama", "--config", path])
            .config
            .load();
        assert!(refused.is_err(), "a market without the pool's coin");
    }

    #[test]
    fn payout_flags_use_the_names_scripts_rely_on() {
        let flags = Flags::parse_from([
            "otedama",
            "--payout-scheme",
            "solo",
            "--pool-fee-percent",
            "1.5",
            "--coinbase-maturity",
            "10",
            "--payout-interval-s",
            "60",
            "--payout-min",
            "0.001",
            "--admin-token-file",
            "/tmp/token",
        ]);
        let config = flags.config.load().unwrap();
        assert_eq!(config.payout_scheme, PayoutScheme::Solo);
        assert_eq!(config.pool_fee_ppm(), 15_000);
        assert_eq!(config.coinbase_maturity, 10);
        assert_eq!(config.payout_interval_s, 60);
        assert_eq!(Amount::parse(&config.payout_min).unwrap().units(), 100_000);
        assert_eq!(config.admin_token_file, Some(PathBuf::from("/tmp/token")));
        let bad_fee = Flags::parse_from(["otedama", "--pool-fee-percent", "100.5"]);
        assert!(bad_fee.config.load().is_err());
    }

    #[test]
    fn limits_are_enforced_at_their_edges() {
        let at = |processes: &str, difficulty: &str| {
            Flags::parse_from([
                "otedama",
                "--dataplane-processes",
                processes,
                "--difficulty-min",
                difficulty,
            ])
            .config
            .load()
        };
        let max = DATAPLANE_PROCESSES_MAX.to_string();
        let over = (DATAPLANE_PROCESSES_MAX + 1).to_string();
        let min = format!("{DIFFICULTY_MIN:e}");
        assert!(at(&max, &min).is_ok());
        assert!(at(&over, "1").is_err());
        assert!(at("0", "1").is_err());
        assert!(at("1", &format!("{:e}", DIFFICULTY_MIN / 2.0)).is_err());
        assert!(at("1", &format!("{DIFFICULTY_MAX:e}")).is_ok());
        assert!(at("1", &format!("{:e}", DIFFICULTY_MAX * 2.0)).is_err());
    }
}
