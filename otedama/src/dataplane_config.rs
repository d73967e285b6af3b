//! What the data plane is started with, built from the pool's configuration: the one
//! place that knows both planes' settings, so the control-plane library needs nothing of
//! the data plane's runtime.

use anyhow::Context;

use otedama_controlplane::config::{write_new_private, PoolConfig};

/// Each data-plane process's settings, built as its start would build them: `otedama run`
/// and `otedama config` refuse a configuration that fails here.
pub fn check_dataplanes(config: &PoolConfig) -> anyhow::Result<()> {
    let slots = match upgrade_slots_fit(config) {
        true => config.share_log_slots(),
        false => config.dataplane_processes,
    };
    for slot in 0..slots {
        let config = dataplane_config(config, slot)
            .with_context(|| format!("the data plane in share-log slot {slot}'s settings"))?;
        let cores = config.cores.len().max(1);
        for core in 0..cores {
            otedama_dataplane::rt::extranonce1_partition(slot, config.processes, cores, core)
                .with_context(|| format!("the data plane in share-log slot {slot}"))?;
        }
    }
    Ok(())
}

/// The QUIC certificate chain and key, DER encoded. Without configured files, a
/// self-signed certificate for localhost and the listen addresses is made once and kept
/// in the data directory, so miners can trust it with `--quic-ca`.
pub fn quic_tls(config: &PoolConfig) -> anyhow::Result<otedama_dataplane::net::quic::QuicTls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_path, key_path) = config.quic_tls_paths();
    if config.quic_cert_file.is_none() && !cert_path.exists() {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        for address in &config.quic_listen {
            if !address.ip().is_unspecified() {
                names.push(address.ip().to_string());
            }
        }
        names.dedup();
        let generated = rcgen::generate_simple_self_signed(names)
            .context("making a self-signed QUIC certificate")?;
        write_new_private(&key_path, generated.key_pair.serialize_pem().as_bytes())?;
        write_new_private(&cert_path, generated.cert.pem().as_bytes())?;
        tracing::info!(certificate = %cert_path.display(), "created a self-signed QUIC certificate");
    }
    let certificates = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .map(|certificate| certificate.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{} holds no certificate",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the private key in {}", key_path.display()))?;
    Ok(otedama_dataplane::net::quic::QuicTls {
        certificate_chain_der: certificates,
        private_key_der: key.secret_der().to_vec(),
    })
}

/// The host's data-plane cores: `cores`, or every online core.
fn host_cores(config: &PoolConfig) -> Vec<usize> {
    if config.cores.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        config.cores.clone()
    }
}

/// Whether each process's second share-log slot fits the extranonce1 partition byte:
/// two slots per process take `2 × dataplane_processes × cores per process` of its 256
/// values. A host with more data-plane cores than that has one slot per process, and
/// upgrades it by a restart.
pub fn upgrade_slots_fit(config: &PoolConfig) -> bool {
    let host_cores = host_cores(config);
    let most_cores = (0..config.dataplane_processes)
        .map(|index| {
            otedama_dataplane::rt::cores_for_process(&host_cores, index, config.dataplane_processes)
                .len()
        })
        .max()
        .unwrap_or(1);
    config.share_log_slots() * most_cores <= 256
}

/// What a data-plane process writing share-log slot `slot` (`PoolConfig::share_log_slots`)
/// needs: it runs on the cores of process `slot % dataplane_processes`, and everything
/// that must differ between two copies of one process running at once during an upgrade
/// (share log, extranonce1 partition, cluster identity) follows the slot.
pub fn dataplane_config(
    config: &PoolConfig,
    slot: usize,
) -> anyhow::Result<otedama_dataplane::DataplaneConfig> {
    let process_index = slot % config.dataplane_processes;
    let slots_in_use = match upgrade_slots_fit(config) {
        true => config.share_log_slots(),
        false => config.dataplane_processes,
    };
    anyhow::ensure!(
        slot < slots_in_use,
        "share-log slot {slot} is not in use on this host (its data-plane cores leave room for one slot per process)"
    );
    if config.difficulty_floor_below_default() {
        tracing::warn!(
                difficulty_min = config.difficulty_floor(),
                default = otedama_shared::limits::difficulty_floor(config.coin_params().algorithm),
                "difficulty_min is below the algorithm's floor: a share may cost the pool more than the miner"
            );
    }
    let host_cores = host_cores(config);
    let sv2_authority = if config.sv2_listen.is_empty() {
        None
    } else {
        Some(config.sv2_authority()?)
    };
    let quic_tls = if config.quic_listen.is_empty() {
        None
    } else {
        Some(quic_tls(config)?)
    };
    if config.share_ack == otedama_controlplane::config::ShareAck::Replicated
        && config.share_stream_replicas < 2
    {
        tracing::warn!(
            share_stream_replicas = config.share_stream_replicas,
            "share_ack = \"replicated\" with one copy of the share stream: an acknowledged share lives on one NATS server only"
        );
    }
    let monero = if config.monero_listen.is_empty() {
        None
    } else {
        let otedama_shared::address::AddressRule::Monero(addresses) =
            otedama_chain::monero::monero_address_rule(config.network)
        else {
            unreachable!("a Monero rule")
        };
        Some(otedama_dataplane::MoneroListenConfig {
            listen: config.monero_listen.clone(),
            addresses,
            randomx_mode: match config.randomx_fast {
                true => otedama_kernels::randomx::RandomXMode::Fast,
                false => otedama_kernels::randomx::RandomXMode::Light,
            },
            start_difficulty: config
                .monero_start_difficulty
                .max(config.monero_difficulty_min),
            difficulty_min: config.monero_difficulty_min,
        })
    };
    Ok(otedama_dataplane::DataplaneConfig {
        monero,
        stratum_listen: config.stratum_listen.clone(),
        sv2_listen: config.sv2_listen.clone(),
        sv2_authority,
        sv2_certificate_validity_s: config.sv2_certificate_validity_s,
        quic_listen: config.quic_listen.clone(),
        quic_tls,
        quic_connections_per_core_max: config.quic_connections_per_core_max,
        cores: otedama_dataplane::rt::cores_for_process(
            &host_cores,
            process_index,
            config.dataplane_processes,
        ),
        process_index: slot,
        processes: slots_in_use,
        drain_s: config.dataplane_drain_s,
        difficulty_min: config.difficulty_floor(),
        start_difficulty: config.start_difficulty,
        algorithm: config.coin_params().algorithm,
        share_log_path: config.share_log_path(slot),
        share_log_sync: config.share_log_sync,
        share_log_memtable_bytes: config.share_log_memtable_mib << 20,
        share_retention_ms: config.share_retention_hours * 3_600_000,
        ipc_socket: config.ipc_socket(),
        version_rolling_mask: config.version_rolling_mask,
        connection_idle_timeout_s: config.connection_idle_timeout_s,
        // SO_REUSEPORT spreads one address's connections over the processes.
        connections_per_ip_max: config
            .connections_per_ip_max
            .div_ceil(config.dataplane_processes as u32),
        vardiff: (config.vardiff_share_interval_s > 0.0).then(|| {
            otedama_shared::vardiff::VardiffConfig {
                share_interval_target_s: config.vardiff_share_interval_s,
                difficulty_min: config.difficulty_floor(),
                ..Default::default()
            }
        }),
        payout_address_rule: Some(config.coin_params().address),
        share_shipping: (!config.nats_urls.is_empty()).then(|| otedama_cluster::ShipperConfig {
            nats_urls: config.nats_urls.clone(),
            host: config.cluster_host.clone().unwrap_or_default(),
            process: slot as u32,
            share_log: config.share_log_path(slot),
            tail_dir: config.data_dir.join(format!("shares-ship-{slot}")),
            replicas: config.share_stream_replicas,
        }),
        share_ack_replicated: !config.nats_urls.is_empty()
            && config.share_ack == otedama_controlplane::config::ShareAck::Replicated,
        host_lease: (!config.nats_urls.is_empty()).then(|| otedama_cluster::HostLeaseConfig {
            nats_urls: config.nats_urls.clone(),
            host: config.cluster_host.clone().unwrap_or_default(),
            process: slot as u32,
            identity_file: config.data_dir.join(format!("cluster-identity-{slot}")),
            replicas: config.share_stream_replicas,
            claim_wait_ms: otedama_cluster::host::HOST_CLAIM_WAIT_MS,
        }),
        cluster_slot: None,
        block_relay: None,
    })
}
