//! The pool's configuration: a TOML file, overridden by environment variables, overridden
//! by command-line flags. Every key has a flag of the same name with dashes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use otedama_ledger::Amount;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use otedama_shared::limits::{DATAPLANE_PROCESSES_MAX, DIFFICULTY_MAX, DIFFICULTY_MIN};

use otedama_chain::coin::{Coin, CoinParams, Network};
use otedama_chain::rpc::{RpcAuth, RpcClient};
use otedama_shared::address::script_for_address;
use otedama_shared::sv2::noise::AuthorityKey;

mod flags;
mod secrets;
mod validate;

pub use flags::ConfigArgs;
pub use secrets::write_new_private;

/// The data directory's mode when `otedama` creates it.
pub const DATA_DIR_MODE: u32 = 0o750;

/// The largest share-log memtable, in MiB: the share log's own (`MEMTABLE_BYTES`).
pub const SHARE_LOG_MEMTABLE_MIB_MAX: usize = otedama_sharelog::writer::MEMTABLE_BYTES >> 20;

/// `share_retention_hours` unless set: two days, time to look into a miner's complaint
/// about yesterday's shares.
pub const SHARE_RETENTION_HOURS_DEFAULT: u64 = 48;
/// The longest `share_retention_hours`: a year.
pub const SHARE_RETENTION_HOURS_MAX: u64 = 24 * 366;

/// `backup_interval_s` unless set: a backup a day.
pub const BACKUP_INTERVAL_S_DEFAULT: u64 = 86_400;
/// The shortest `backup_interval_s`: a backup copies every store, so not more often.
pub const BACKUP_INTERVAL_S_MIN: u64 = 10;
/// `backups_kept` unless set: a week of daily backups.
pub const BACKUPS_KEPT_DEFAULT: u32 = 7;
/// The most `backups_kept`.
pub const BACKUPS_KEPT_MAX: u32 = 1_000;

/// `dataplane_drain_s` unless set: a minute for a replaced data plane's miners to move.
pub const DATAPLANE_DRAIN_S_DEFAULT: u64 = 60;
/// The longest `dataplane_drain_s`: an hour. Both copies of a process run that long.
pub const DATAPLANE_DRAIN_S_MAX: u64 = 3_600;

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
    /// Monero Stratum listen addresses, served by the data plane (`net::monero`); none by
    /// default. Their jobs come from the control plane's Monero templates.
    pub monero_listen: Vec<SocketAddr>,
    /// The difficulty Monero miners start at, in hashes.
    pub monero_start_difficulty: f64,
    /// The lowest difficulty a Monero miner may be given, in hashes (default
    /// `MONERO_DIFFICULTY_FLOOR`: below it a share costs the pool more than the miner).
    pub monero_difficulty_min: f64,
    /// Prepare RandomX seeds in fast mode (about 2.3 GiB a seed, hugepages where the host
    /// has them) instead of light mode (256 MiB, several times slower hashes).
    pub randomx_fast: bool,
    /// Serve `monero_listen` although no control plane credits Monero shares or submits
    /// Monero blocks yet (issue 22): for tests and development only. Without it a
    /// `monero_listen` is refused, since its miners would mine for nothing.
    pub monero_uncredited_preview: bool,
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
    /// MiB in each of the share log's two memtables, 1 to `SHARE_LOG_MEMTABLE_MIB_MAX`
    /// (64, what `otedama-tune` plans hugepages for). Less saves memory on a small host;
    /// RocksDB also sizes its WAL preallocation from it.
    pub share_log_memtable_mib: usize,
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
    /// NATS servers of the cluster (`nats://HOST:PORT`, several for failover). Empty is
    /// single-host mode, which needs no NATS. Given, each data-plane process ships its
    /// share log to a replicated JetStream stream of its own (`OTEDAMA_SHARES_HOST_PROCESS`)
    /// (`otedama_cluster::shares`).
    pub nats_urls: Vec<String>,
    /// This host's name in the cluster (letters, digits, `-`, `_`), unique among the
    /// data-plane hosts: its processes ship shares on `otedama.shares.HOST.PROCESS`.
    /// Needed with `nats_urls`.
    pub cluster_host: Option<String>,
    /// Copies the share stream keeps, 1 to 5: 3 on a three-server cluster, so one server
    /// may fail without losing a shipped share or stopping the shipping.
    pub share_stream_replicas: usize,
    /// Bytes the exchange's stream holds at most on each NATS server (cluster mode with
    /// `dex_enabled`); it must fit the servers' JetStream `max_file_store`. Once full, the
    /// exchange takes no more commands.
    pub exchange_stream_bytes_max: u64,
    /// When a miner hears `true` for a share in cluster mode: once the host's share log has
    /// it (`local`, the default), or only once the replicated share stream has it too
    /// (`replicated`: a quorum of the NATS servers holds the batch). `replicated` survives
    /// the loss of the whole host, disk and all, at the cost of the stream's round trip on
    /// every acknowledgement (BENCHMARKS.md); while the stream has no quorum, acknowledgements
    /// wait (the miners' firmware moves on to its next pool slot).
    pub share_ack: ShareAck,
    /// Hours a share stays in the share logs at least (and in cluster mode in the share
    /// stream and the control planes' copies). A share goes after that only once nobody
    /// needs it: credited, with the share history a restart reads again kept behind it,
    /// and scanned for blocks (single-host mode: `Downstream::ShareLogFloors`; cluster
    /// mode: `otedama_cluster::mirror::Retention`, and each data-plane host's log once
    /// the stream has it). So this bounds how much of the past is kept, never what is
    /// paid. 0 keeps only what is needed. Size the NATS servers with `otedama-tune nats`.
    pub share_retention_hours: u64,
    /// PEM CA certificates that sign the NATS servers' certificates: given, every
    /// connection to the cluster uses TLS and checks the server against them.
    pub nats_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for NATS servers that verify clients.
    pub nats_tls_cert_file: Option<PathBuf>,
    pub nats_tls_key_file: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed, as `nsc` writes them).
    pub nats_credentials_file: Option<PathBuf>,
    /// Data-plane processes on this host. They share the Stratum ports through SO_REUSEPORT
    /// and each takes its own slice of the extranonce1 space and its own share log. More
    /// than one is needed where a per-process open-files limit caps the connections one
    /// process can hold; it is also how a data plane restarts without closing the port.
    pub dataplane_processes: usize,
    /// Seconds a data plane being replaced (`otedama run` or the unit on SIGHUP) takes
    /// to hand its miners over: it stops accepting at once, asks its miners to reconnect
    /// (`client.reconnect`; V2 miners are closed, since V2 has no such message in use)
    /// spread over the first half, closes whoever is left at the end, and exits once its
    /// share log is flushed. The new process accepts meanwhile (1 to 3600).
    pub dataplane_drain_s: u64,
    /// Seconds between the pool's hash-rate samples for the web page's charts (10 to
    /// 3600); each miner is sampled 10 times less often. Kept a week in `hashrate/`.
    pub hashrate_sample_interval_s: u64,
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
    /// Scheduled backups (`tasks::backups`): each `backup_interval_s` the control plane
    /// backs up the data directory into a new `otedama-UNIXTIME` directory here (outside
    /// the data directory), keeping the newest `backups_kept`. None: no scheduled backups
    /// (`otedama backup` still takes one by hand).
    pub backup_dir: Option<PathBuf>,
    pub backup_interval_s: u64,
    pub backups_kept: u32,
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

/// What a share's acknowledgement waits for (`PoolConfig::share_ack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShareAck {
    /// The host's share log (fsynced with `share_log_sync`).
    #[default]
    Local,
    /// The share log and then the replicated share stream (cluster mode only).
    Replicated,
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
            monero_listen: Vec::new(),
            monero_start_difficulty: 10_000.0,
            monero_difficulty_min: otedama_shared::monero::stratum::MONERO_DIFFICULTY_FLOOR,
            randomx_fast: false,
            monero_uncredited_preview: false,
            start_difficulty: 1.0,
            data_dir: PathBuf::from("otedama-data"),
            api_listen: "127.0.0.1:8080".parse().expect("literal address"),
            coinbase_tag: "/otedama/".into(),
            cores: Vec::new(),
            share_log_sync: true,
            share_log_memtable_mib: SHARE_LOG_MEMTABLE_MIB_MAX,
            nats_urls: Vec::new(),
            cluster_host: None,
            share_stream_replicas: 3,
            exchange_stream_bytes_max: otedama_cluster::ledger::EXCHANGE_STREAM_BYTES_MAX_DEFAULT,
            share_retention_hours: SHARE_RETENTION_HOURS_DEFAULT,
            share_ack: ShareAck::Local,
            nats_tls_ca_file: None,
            nats_tls_cert_file: None,
            nats_tls_key_file: None,
            nats_credentials_file: None,
            version_rolling_mask: 0x1fff_e000,
            connection_idle_timeout_s: 900,
            connections_per_ip_max: 4096,
            template_refresh_s: 30,
            vardiff_share_interval_s: 10.0,
            difficulty_min: None,
            dataplane_processes: 1,
            dataplane_drain_s: DATAPLANE_DRAIN_S_DEFAULT,
            hashrate_sample_interval_s: crate::hashrate_history::POOL_SAMPLE_INTERVAL_S_DEFAULT,
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
            backup_dir: None,
            backup_interval_s: BACKUP_INTERVAL_S_DEFAULT,
            backups_kept: BACKUPS_KEPT_DEFAULT,
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

    /// The OFAC ticker of the pool's coin, as the SDN list names it.
    pub fn deny_list_ticker(&self) -> &'static str {
        match self.coin {
            Coin::Litecoin => "LTC",
            Coin::Bitcoin => "XBT",
        }
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

    /// How this process's connections to the NATS cluster are secured.
    pub fn nats_security(&self) -> otedama_cluster::NatsSecurity {
        otedama_cluster::NatsSecurity {
            tls_ca_file: self.nats_tls_ca_file.clone(),
            tls_cert_file: self.nats_tls_cert_file.clone(),
            tls_key_file: self.nats_tls_key_file.clone(),
            credentials_file: self.nats_credentials_file.clone(),
        }
    }

    pub fn ipc_socket(&self) -> PathBuf {
        self.data_dir.join("ipc.sock")
    }

    /// Share-log slots of this host: data-plane process `i` writes slot `i`, or while an
    /// earlier copy of it still drains (an upgrade), slot `i + dataplane_processes`. Each
    /// slot is a log of its own with its own extranonce1 partition, so the two copies never
    /// share a writer or hand out the same extranonce1.
    pub fn share_log_slots(&self) -> usize {
        2 * self.dataplane_processes
    }

    /// The lock file a data-plane process holds while it writes share-log slot `slot`.
    pub fn share_log_slot_lock(&self, slot: usize) -> PathBuf {
        self.data_dir.join(format!("dataplane-slot-{slot}.lock"))
    }

    /// Each share-log slot (`share_log_slots`) has a log of its own: RocksDB allows one
    /// writer.
    pub fn share_log_path(&self, process_index: usize) -> PathBuf {
        match process_index {
            0 => self.data_dir.join("shares"),
            index => self.data_dir.join(format!("shares-{index}")),
        }
    }

    pub fn control_db_path(&self) -> PathBuf {
        self.data_dir.join("control")
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

    /// A Monero listener is refused unless its preview is asked for (nothing credits its
    /// shares yet), and a Monero difficulty must be a positive number.
    #[test]
    fn a_monero_listener_needs_its_preview() {
        let refused = Flags::parse_from(["otedama", "--monero-listen", "127.0.0.1:1"]);
        let error = refused.config.load().unwrap_err();
        assert!(
            format!("{error:#}").contains("monero_uncredited_preview"),
            "{error:#}"
        );
        let taken = Flags::parse_from([
            "otedama",
            "--monero-listen",
            "127.0.0.1:1",
            "--monero-uncredited-preview",
            "true",
            "--randomx-fast",
            "true",
            "--monero-start-difficulty",
            "500",
        ]);
        let config = taken.config.load().unwrap();
        assert_eq!(config.monero_listen.len(), 1);
        assert!(config.randomx_fast);
        assert_eq!(config.monero_start_difficulty, 500.0);
        let zero = Flags::parse_from(["otedama", "--monero-difficulty-min", "0"]);
        assert!(zero.config.load().is_err());
    }

    /// `share_ack` reads from the file and the flag, and `replicated` needs cluster mode.
    #[test]
    fn a_replicated_acknowledgement_needs_cluster_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("otedama.toml");
        std::fs::write(&file, "share_ack = \"replicated\"\n").unwrap();
        let path = file.to_str().unwrap();
        let alone = Flags::parse_from(["otedama", "--config", path]);
        let error = alone.config.load().unwrap_err();
        assert!(
            format!("{error:#}").contains("needs cluster mode"),
            "{error:#}"
        );
        let clustered = Flags::parse_from([
            "otedama",
            "--config",
            path,
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--cluster-host",
            "dp-a",
        ]);
        assert_eq!(
            clustered.config.load().unwrap().share_ack,
            ShareAck::Replicated
        );
        let flagged = Flags::parse_from(["otedama", "--config", path, "--share-ack", "local"]);
        assert_eq!(flagged.config.load().unwrap().share_ack, ShareAck::Local);
    }

    /// The NATS connection settings come from flags (and the file), need cluster mode, and
    /// a client certificate needs its key; the files named must be readable at start.
    #[test]
    fn nats_tls_settings_need_cluster_mode_and_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let ca = ca.to_str().unwrap();
        let alone = Flags::parse_from(["otedama", "--nats-tls-ca-file", ca]);
        let error = alone.config.load().unwrap_err();
        assert!(format!("{error:#}").contains("need nats_urls"), "{error:#}");
        let cluster = [
            "otedama",
            "--nats-url",
            "tls://127.0.0.1:4222",
            "--cluster-host",
            "dp-a",
            "--nats-tls-ca-file",
            ca,
        ];
        let config = Flags::parse_from(cluster).config.load().unwrap();
        assert_eq!(
            config.nats_security().tls_ca_file.as_deref(),
            Some(std::path::Path::new(ca))
        );
        config.nats_security().check().unwrap();
        let mut half = cluster.to_vec();
        half.extend(["--nats-tls-cert-file", ca]);
        let config = Flags::parse_from(half).config.load().unwrap();
        let error = config.nats_security().check().unwrap_err();
        assert!(format!("{error:#}").contains("go together"), "{error:#}");
        let mut missing = cluster.to_vec();
        missing.extend(["--nats-credentials-file", "/nonexistent/pool.creds"]);
        let config = Flags::parse_from(missing).config.load().unwrap();
        assert!(config.nats_security().check().is_err());
    }

    /// The share retention: two days unless set, from the file, a flag or the
    /// environment, and at most a year.
    #[test]
    fn share_retention_is_two_days_unless_set_and_at_most_a_year() {
        let cluster = [
            "otedama",
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--cluster-host",
            "cp-a",
        ];
        let config = Flags::parse_from(cluster).config.load().unwrap();
        assert_eq!(config.share_retention_hours, 48);
        let mut set = cluster.to_vec();
        set.extend(["--share-retention-hours", "0"]);
        let config = Flags::parse_from(set).config.load().unwrap();
        assert_eq!(config.share_retention_hours, 0);
        let mut too_long = cluster.to_vec();
        too_long.extend(["--share-retention-hours", "8785"]);
        let error = Flags::parse_from(too_long).config.load().unwrap_err();
        assert!(format!("{error:#}").contains("at most 8784"), "{error:#}");
    }

    /// The exchange runs in either mode: in cluster mode its writes go through the
    /// exchange stream and only the leader takes commands (`dex::replication`).
    #[test]
    fn the_exchange_runs_in_single_host_and_cluster_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("otedama.toml");
        std::fs::write(&file, "dex_enabled = true\n").unwrap();
        let path = file.to_str().unwrap();
        let alone = Flags::parse_from(["otedama", "--config", path]);
        assert!(alone.config.load().unwrap().dex_enabled);
        let clustered = Flags::parse_from([
            "otedama",
            "--config",
            path,
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--cluster-host",
            "cp-a",
        ]);
        assert!(clustered.config.load().unwrap().dex_enabled);
    }

    /// A replaced data plane's drain, at its edges; and the share-log slots, two per
    /// process, each with a path and a lock of its own.
    #[test]
    fn the_drain_is_bounded_and_each_process_has_two_slots() {
        let load = |args: &[&str]| {
            let mut all = vec!["otedama", "--data-dir", "/var/lib/otedama"];
            all.extend_from_slice(args);
            Flags::parse_from(all).config.load()
        };
        let most = DATAPLANE_DRAIN_S_MAX.to_string();
        assert_eq!(
            load(&["--dataplane-drain-s", "1"])
                .unwrap()
                .dataplane_drain_s,
            1
        );
        assert_eq!(
            load(&["--dataplane-drain-s", &most])
                .unwrap()
                .dataplane_drain_s,
            DATAPLANE_DRAIN_S_MAX
        );
        for beyond in ["0".to_string(), (DATAPLANE_DRAIN_S_MAX + 1).to_string()] {
            let error = load(&["--dataplane-drain-s", &beyond]).unwrap_err();
            assert!(
                format!("{error:#}").contains("dataplane_drain_s"),
                "{error:#}"
            );
        }
        let config = load(&["--dataplane-processes", "3"]).unwrap();
        assert_eq!(config.share_log_slots(), 6);
        let paths: std::collections::BTreeSet<_> =
            (0..6).map(|slot| config.share_log_path(slot)).collect();
        let locks: std::collections::BTreeSet<_> = (0..6)
            .map(|slot| config.share_log_slot_lock(slot))
            .collect();
        assert_eq!((paths.len(), locks.len()), (6, 6));
    }

    /// Scheduled backups' limits, at their edges, and a backup directory that would copy
    /// itself.
    #[test]
    fn scheduled_backups_are_bounded_and_kept_out_of_the_data_dir() {
        let load = |args: &[&str]| {
            let mut all = vec!["otedama", "--data-dir", "/var/lib/otedama"];
            all.extend_from_slice(args);
            Flags::parse_from(all).config.load()
        };
        let min = BACKUP_INTERVAL_S_MIN.to_string();
        let below = (BACKUP_INTERVAL_S_MIN - 1).to_string();
        let most = BACKUPS_KEPT_MAX.to_string();
        let beyond = (BACKUPS_KEPT_MAX + 1).to_string();
        let dir = ["--backup-dir", "/backup/otedama"];
        let config = load(
            &[
                &dir[..],
                &["--backup-interval-s", &min, "--backups-kept", &most],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(config.backup_interval_s, BACKUP_INTERVAL_S_MIN);
        assert_eq!(config.backups_kept, BACKUPS_KEPT_MAX);
        for (args, why) in [
            (
                vec!["--backup-interval-s", below.as_str()],
                "backup_interval_s",
            ),
            (vec!["--backups-kept", "0"], "backups_kept"),
            (vec!["--backups-kept", beyond.as_str()], "backups_kept"),
        ] {
            let error = load(&[&dir[..], &args].concat()).unwrap_err();
            assert!(format!("{error:#}").contains(why), "{error:#}");
        }
        for inside in [
            "/var/lib/otedama/backups",
            "/var/lib/otedama/./x/..",
            "/var/lib",
            "/",
        ] {
            let error = load(&["--backup-dir", inside]).unwrap_err();
            assert!(
                format!("{error:#}").contains("hold one another"),
                "{inside}: {error:#}"
            );
        }
        // Without a backup directory nothing is scheduled, whatever the interval.
        assert!(load(&["--backup-interval-s", "1"])
            .unwrap()
            .backup_dir
            .is_none());
        assert!(load(&["--backup-dir", "/var/lib/otedama-backups"]).is_ok());
    }

    /// The exchange stream's bound has a floor, at its edge.
    #[test]
    fn the_exchange_stream_bound_has_a_floor() {
        let bound = |bytes: u64| {
            let bytes = bytes.to_string();
            Flags::parse_from([
                "otedama",
                "--nats-url",
                "nats://127.0.0.1:4222",
                "--cluster-host",
                "cp-a",
                "--exchange-stream-bytes-max",
                bytes.as_str(),
            ])
            .config
            .load()
        };
        let floor = validate::EXCHANGE_STREAM_BYTES_MIN;
        assert_eq!(bound(floor).unwrap().exchange_stream_bytes_max, floor);
        let error = bound(floor - 1).unwrap_err();
        assert!(
            format!("{error:#}").contains("exchange_stream_bytes_max"),
            "{error:#}"
        );
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
