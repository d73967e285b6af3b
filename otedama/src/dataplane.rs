//! `otedama dataplane`: one data-plane process (Stratum front end, share validation, share
//! log) of the host's `dataplane_processes`.
//!
//! Process `i` writes share-log slot `i`, or slot `i + dataplane_processes` when another
//! copy of it holds slot `i` (an upgrade under way): the slot's lock file decides, so two
//! copies never write one log or hand out one extranonce1. SIGUSR2 drains the process (it
//! hands its miners over and exits); SIGHUP, unless `otedama run` supervises it, starts a
//! replacement from the same executable path and drains once that one accepts miners.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use otedama_controlplane::config::{ConfigArgs, PoolConfig};

use crate::{dataplane_config, handover};

#[derive(clap::Args)]
pub struct DataplaneArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Which of the host's `dataplane_processes` this one is (0-based); `otedama run` sets it.
    #[arg(long, default_value_t = 0)]
    process_index: usize,
}

pub fn run(args: DataplaneArgs) -> anyhow::Result<()> {
    // Read before anything else: after an upgrade the path holds the new binary, which is
    // what a replacement must run.
    let executable = std::env::current_exe().context("finding our own executable")?;
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
    let (slot, _slot_lock) = claim_slot(&config, args.process_index)?;
    tracing::info!(
        process_index = args.process_index,
        slot,
        share_log = %config.share_log_path(slot).display(),
        "share-log slot claimed"
    );
    crate::signals::install_drain_handler();
    if std::env::var_os(handover::SUPERVISED_ENV).is_some() {
        crate::signals::ignore_replace_requests();
    } else {
        crate::signals::install_replace_handler();
        start_replacer(executable)?;
    }
    otedama_dataplane::rt::drain::on_accepting(handover::report_ready);
    let mut dataplane = dataplane_config::dataplane_config(&config, slot)?;
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

/// Takes the first free of process `process_index`'s share-log slots (two, or one where
/// the second does not fit, `dataplane_config::upgrade_slots_fit`), holding its lock
/// file (`flock`, released by the kernel however the process ends) for as long as the
/// returned file lives. The file records how its holder cuts the extranonce1 space
/// (`dataplane_processes` and the slots in use): a copy that would cut it differently
/// from the running ones could hand out their values, so it is refused (such a change
/// needs a restart of every data plane, not a replacement). The look at the running
/// copies and the claim happen under one lock of the data directory's
/// (`dataplane-slots.lock`), so copies starting together see each other.
fn claim_slot(config: &PoolConfig, process_index: usize) -> anyhow::Result<(usize, std::fs::File)> {
    use std::io::{Seek, Write};
    let claim_path = config.data_dir.join("dataplane-slots.lock");
    let claim = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&claim_path)
        .with_context(|| format!("opening {}", claim_path.display()))?;
    // SAFETY: flock on a descriptor this function owns; released when `claim` is dropped
    // at the end of this function. Held for a directory listing and a few small writes.
    if unsafe { libc::flock(claim.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", claim_path.display()));
    }
    let processes = config.dataplane_processes;
    let slots_in_use = match crate::dataplane_config::upgrade_slots_fit(config) {
        true => config.share_log_slots(),
        false => processes,
    };
    let layout = format!("{processes} {slots_in_use}");
    for (slot, running_with) in held_slots(config)? {
        anyhow::ensure!(
            running_with == layout,
            "the data plane in share-log slot {slot} runs with dataplane_processes and slots {running_with}, \
             this one with {layout}: changing dataplane_processes or the data-plane cores needs every \
             data plane stopped first (a restart), not a replacement"
        );
    }
    let slots: Vec<usize> = (process_index..slots_in_use).step_by(processes).collect();
    for &slot in &slots {
        let path = config.share_log_slot_lock(slot);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{layout}")?;
            return Ok((slot, file));
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
    }
    anyhow::bail!(
        "data-plane process {process_index} already runs in every share-log slot it has ({slots:?}): \
         an earlier replacement is still draining, or this host's cores leave room for one slot \
         per process (then upgrade by a restart)"
    )
}

/// The share-log slots a running data plane holds, with the extranonce1 layout each runs
/// with (`dataplane_processes` and slots in use, as its lock file records it). Called
/// under the claim lock: no slot file is being claimed or written meanwhile, so probing
/// one with a shared lock cannot fail another's claim.
fn held_slots(config: &PoolConfig) -> anyhow::Result<Vec<(usize, String)>> {
    let mut held = Vec::new();
    let entries = std::fs::read_dir(&config.data_dir)
        .with_context(|| format!("listing {}", config.data_dir.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let Some(slot) = name
            .to_str()
            .and_then(|name| name.strip_prefix("dataplane-slot-"))
            .and_then(|rest| rest.strip_suffix(".lock"))
            .and_then(|slot| slot.parse::<usize>().ok())
        else {
            continue;
        };
        let path = config.share_log_slot_lock(slot);
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns; a shared lock taken here is
        // released when `file` is dropped.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&path) {
            held.push((slot, text.trim().to_string()));
        }
    }
    Ok(held)
}

/// Unsupervised (systemd): on SIGHUP, starts a copy of this process from `executable`
/// with the same arguments, and drains once it accepts miners; if it does not, stops it
/// and keeps serving.
fn start_replacer(executable: PathBuf) -> anyhow::Result<()> {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    std::thread::Builder::new()
        .name("replacer".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            if !crate::signals::take_replace_request() {
                continue;
            }
            tracing::info!(executable = %executable.display(), "SIGHUP: starting a replacement");
            match replace_with(&executable, &args) {
                Ok(pid) => {
                    tracing::info!(
                        replacement_pid = pid,
                        "the replacement accepts miners; draining"
                    );
                    otedama_dataplane::rt::drain::request_drain();
                    return;
                }
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "the replacement did not start; this process keeps serving"
                    )
                }
            }
        })
        .context("starting the replacer")?;
    Ok(())
}

/// Starts the replacement and waits until it accepts miners; returns its pid. It is not
/// this process's to reap: it outlives this one (systemd follows it from its `MAINPID=`).
fn replace_with(executable: &std::path::Path, args: &[std::ffi::OsString]) -> anyhow::Result<u32> {
    let mut command = std::process::Command::new(executable);
    command.args(args);
    let mut starting = handover::spawn_with_ready_pipe(&mut command)?;
    let wait = Duration::from_secs(handover::REPLACEMENT_READY_WAIT_S_MAX);
    if starting.wait_ready(wait)? {
        return Ok(starting.child.id());
    }
    let _ = starting.child.kill();
    let status = starting.child.wait()?;
    anyhow::bail!(
        "the replacement did not accept miners within {} s ({status})",
        wait.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process's first copy takes slot `i`, a second (an upgrade's replacement) slot
    /// `i + N`, a third is refused; once the first exits its slot is free again.
    #[test]
    fn each_process_has_two_slots_and_no_third_copy() {
        let dir = tempfile::tempdir().unwrap();
        let config = PoolConfig {
            data_dir: dir.path().to_path_buf(),
            dataplane_processes: 3,
            ..PoolConfig::default()
        };
        let (first, first_lock) = claim_slot(&config, 1).unwrap();
        let (second, _second_lock) = claim_slot(&config, 1).unwrap();
        assert_eq!((first, second), (1, 4));
        let error = claim_slot(&config, 1).unwrap_err();
        assert!(
            format!("{error:#}").contains("already runs in every"),
            "{error:#}"
        );
        // Other processes' slots are their own.
        assert_eq!(claim_slot(&config, 0).unwrap().0, 0);
        drop(first_lock);
        assert_eq!(claim_slot(&config, 1).unwrap().0, 1);
        // A copy started with another dataplane_processes is refused while these run.
        let changed = PoolConfig {
            dataplane_processes: 2,
            ..config.clone()
        };
        let error = claim_slot(&changed, 0).unwrap_err();
        assert!(
            format!("{error:#}").contains("needs every data plane stopped"),
            "{error:#}"
        );
    }
}
