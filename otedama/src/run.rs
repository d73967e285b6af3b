//! `otedama run`: starts the control plane and the data plane as child processes of this
//! binary, restarts whichever exits, and stops both on SIGINT or SIGTERM.
//!
//! SIGHUP upgrades in place, from whatever binary is now at this one's path: the control
//! plane is restarted (the data planes keep their miners meanwhile and link up again),
//! then each data-plane process is replaced without dropping its miners
//! (`crate::handover`): its replacement starts in the process's other share-log slot, and
//! only once that one accepts miners is the old one told to drain.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;

use otedama_controlplane::config::PoolConfig;

/// Delay before restarting a child that exited, doubled for each failure at start in a
/// row. No separate cap: the supervisor gives up after `QUICK_EXITS_IN_A_ROW_MAX` of them,
/// so the longest delay is `RESTART_DELAY_LONGEST_MS`.
const RESTART_DELAY_MIN_MS: u64 = 200;
const RESTART_DELAY_LONGEST_MS: u64 = RESTART_DELAY_MIN_MS << (QUICK_EXITS_IN_A_ROW_MAX - 1);
/// A replaced data plane still running this long after its drain should have ended
/// (`dataplane_drain_s`, plus its share shipper's and link's last waits) is killed: a
/// drain stuck on a broken disk must not hold its share-log slot, and with it every
/// later upgrade, for ever.
const DRAIN_OVERRUN_S: u64 = 120;
/// A child that exits within this long of its start failed at start.
const QUICK_EXIT_S: u64 = 10;
/// Failures at start in a row after which `otedama run` stops everything and exits
/// non-zero instead of restarting for ever: something outside the pool (a file, the node,
/// a port) needs the operator.
const QUICK_EXITS_IN_A_ROW_MAX: u32 = 5;

/// Prints a line for the operator on stdout. A closed stdout (a reader that went away) must
/// not stop the pool, so write errors are ignored; the control plane logs the same URLs.
fn announce(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

struct Role {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    started_at: Instant,
    backoff: Backoff,
}

/// The restart policy of one child, apart from processes and clocks.
#[derive(Debug)]
struct Backoff {
    delay_ms: u64,
    quick_exits_in_a_row: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay_ms: RESTART_DELAY_MIN_MS,
            quick_exits_in_a_row: 0,
        }
    }
}

impl Backoff {
    /// The delay before the next start after an exit (`quick`: within `QUICK_EXIT_S` of
    /// its start), or `None` to give up: the child failed at start
    /// `QUICK_EXITS_IN_A_ROW_MAX` times in a row.
    fn on_exit(&mut self, quick: bool) -> Option<u64> {
        if !quick {
            *self = Backoff::default();
            return Some(self.delay_ms);
        }
        self.quick_exits_in_a_row += 1;
        if self.quick_exits_in_a_row >= QUICK_EXITS_IN_A_ROW_MAX {
            return None;
        }
        self.delay_ms *= 2;
        debug_assert!(self.delay_ms <= RESTART_DELAY_LONGEST_MS);
        Some(self.delay_ms)
    }
}

pub fn run(config: PoolConfig) -> anyhow::Result<()> {
    let data_dir = config.ensure_data_dir()?.to_path_buf();
    config.check_before_start()?;
    crate::dataplane_config::check_dataplanes(&config)?;
    if !config.sv2_listen.is_empty() {
        // Made here, before the children start, so every process reads the same key.
        let key = config.sv2_authority()?.public_base58();
        for address in &config.sv2_listen {
            announce(&format!("Stratum V2: stratum2+tcp://{address}/{key}"));
        }
    }
    if !config.quic_listen.is_empty() {
        // Likewise the QUIC certificate, self-signed on first start unless configured.
        crate::dataplane_config::quic_tls(&config)?;
        let (certificate, _) = config.quic_tls_paths();
        for address in &config.quic_listen {
            announce(&format!(
                "Stratum V2 over QUIC: stratum2+quic://{address} (certificate {})",
                certificate.display()
            ));
        }
    }
    let effective = data_dir.join("effective.toml");
    write_private(&effective, &toml::to_string(&config)?)?;
    crate::signals::install_stop_handler();
    crate::signals::install_replace_handler();
    let executable = std::env::current_exe().context("finding our own executable")?;
    let new_role = |name: String, args: Vec<String>| Role {
        name,
        args,
        child: None,
        started_at: Instant::now(),
        backoff: Backoff::default(),
    };
    let mut roles = vec![new_role("controlplane".into(), vec!["controlplane".into()])];
    for index in 0..config.dataplane_processes {
        roles.push(new_role(
            format!("dataplane-{index}"),
            vec![
                "dataplane".into(),
                "--process-index".into(),
                index.to_string(),
            ],
        ));
    }
    for role in &mut roles {
        role.child = Some(spawn(&executable, role, &effective)?);
    }
    let mut outcome = Ok(());
    // Replaced data planes handing their miners over, with when they must have exited;
    // reaped, never restarted.
    let mut draining: Vec<(String, Child, Instant)> = Vec::new();
    let drain_deadline = Duration::from_secs(config.dataplane_drain_s + DRAIN_OVERRUN_S);
    while !crate::signals::stop_requested() && outcome.is_ok() {
        if crate::signals::take_replace_request() {
            let mut replaced = Vec::new();
            replace_all(&mut roles, &mut replaced, &executable, &effective);
            let must_exit_by = Instant::now() + drain_deadline;
            draining.extend(
                replaced
                    .into_iter()
                    .map(|(name, child)| (name, child, must_exit_by)),
            );
        }
        for role in &mut roles {
            if let Err(error) = supervise_role(role, &executable, &effective) {
                outcome = Err(error);
                break;
            }
        }
        draining.retain_mut(|(name, child, must_exit_by)| match child.try_wait() {
            Ok(None) if Instant::now() < *must_exit_by => true,
            Ok(None) => {
                tracing::error!(role = %name, "the replaced data plane did not finish its drain in time; killing it");
                let _ = child.kill();
                let _ = child.wait();
                false
            }
            Ok(Some(status)) => {
                tracing::info!(role = %name, %status, "the replaced data plane has drained and exited");
                false
            }
            Err(error) => {
                tracing::warn!(role = %name, %error, "cannot read a draining data plane's state");
                false
            }
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let children = roles
        .iter_mut()
        .filter_map(|role| role.child.take())
        .chain(draining.into_iter().map(|(_, child, _)| child));
    for mut child in children {
        stop_child(&mut child, Duration::from_secs(5));
    }
    outcome
}

/// SIGTERM, then SIGKILL after `wait`; reaped either way.
fn stop_child(child: &mut Child, wait: Duration) {
    crate::handover::signal(child, libc::SIGTERM);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGHUP: restarts the control plane, then replaces each data plane in turn (its
/// replacement accepting before the old one drains). A replacement that does not start
/// is stopped and the old process keeps its miners; the failure is logged for the
/// operator, and the others are still replaced.
fn replace_all(
    roles: &mut [Role],
    draining: &mut Vec<(String, Child)>,
    executable: &Path,
    config: &Path,
) {
    tracing::info!(executable = %executable.display(), "SIGHUP: upgrading in place");
    for role in roles.iter_mut() {
        if crate::signals::stop_requested() {
            return;
        }
        if role.name == "controlplane" {
            // The data planes keep serving: their link waits for the new control plane,
            // and shares stay in their logs until it reads them.
            if let Some(mut child) = role.child.take() {
                stop_child(&mut child, Duration::from_secs(30));
            }
            match spawn(executable, role, config) {
                Ok(child) => role.child = Some(child),
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "cannot start the new control plane; the supervisor tries again"
                ),
            }
            role.started_at = Instant::now();
            role.backoff = Backoff::default();
            continue;
        }
        let mut command = command_for(executable, role, config);
        let started =
            crate::handover::spawn_with_ready_pipe(&mut command).and_then(|mut starting| {
                let wait = Duration::from_secs(crate::handover::REPLACEMENT_READY_WAIT_S_MAX);
                if starting.wait_ready(wait)? {
                    return Ok(starting.child);
                }
                let _ = starting.child.kill();
                let status = starting.child.wait()?;
                anyhow::bail!(
                    "it did not accept miners within {} s ({status})",
                    wait.as_secs()
                )
            });
        match started {
            Ok(replacement) => {
                tracing::info!(role = %role.name, pid = replacement.id(), "the replacement accepts miners; the old process drains");
                if let Some(old) = role.child.replace(replacement) {
                    crate::handover::signal(&old, libc::SIGUSR2);
                    draining.push((role.name.clone(), old));
                }
                role.started_at = Instant::now();
                role.backoff = Backoff::default();
            }
            Err(error) => tracing::error!(
                role = %role.name,
                error = format!("{error:#}"),
                "the replacement did not start; the running process keeps its miners"
            ),
        }
    }
}

/// Restarts `role`'s child if it exited, with back-off; gives up (an error for the
/// operator) once it has failed at start `QUICK_EXITS_IN_A_ROW_MAX` times in a row.
fn supervise_role(role: &mut Role, executable: &Path, config: &Path) -> anyhow::Result<()> {
    let exited = match role.child.as_mut().map(Child::try_wait) {
        Some(Ok(Some(status))) => Some(status.to_string()),
        Some(Err(error)) => Some(error.to_string()),
        None => Some("not running".into()),
        Some(Ok(None)) => None,
    };
    let Some(status) = exited else {
        return Ok(());
    };
    if role.child.is_some() {
        let quick = role.started_at.elapsed() < Duration::from_secs(QUICK_EXIT_S);
        if role.backoff.on_exit(quick).is_none() {
            anyhow::bail!(
                "the {} exited within {QUICK_EXIT_S} s of its start {QUICK_EXITS_IN_A_ROW_MAX} times in a row (last: {status}); \
                 stopping instead of restarting it again: see its log above",
                role.name,
            );
        }
        tracing::error!(role = %role.name, %status, delay_ms = role.backoff.delay_ms, "child exited; restarting");
        // A child whose state could not be read may still run: stop and reap it before a
        // second copy is started (two would fight over the ports and the share log).
        if let Some(mut child) = role.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        role.started_at = Instant::now();
    }
    if role.started_at.elapsed() >= Duration::from_millis(role.backoff.delay_ms) {
        role.child = Some(spawn(executable, role, config)?);
        role.started_at = Instant::now();
    }
    Ok(())
}

fn spawn(executable: &Path, role: &Role, config: &Path) -> anyhow::Result<Child> {
    tracing::info!(role = %role.name, "starting");
    command_for(executable, role, config)
        .spawn()
        .with_context(|| format!("starting the {}", role.name))
}

/// How `role`'s process is started: supervised, and stopped with the supervisor.
fn command_for(executable: &Path, role: &Role, config: &Path) -> Command {
    let mut command = Command::new(executable);
    command
        .args(&role.args)
        .arg("--config")
        .arg(config)
        .env(crate::handover::SUPERVISED_ENV, "1");
    // SAFETY: prctl is async-signal-safe; it makes the child stop if the supervisor dies,
    // so a killed `otedama run` leaves no orphan holding the ports.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
}

/// Writes a file only the owner can read: it holds the node's RPC password.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fifth failure at start in a row gives up; the fourth still restarts, after the
    /// longest delay; an exit after a long run starts the count again.
    #[test]
    fn the_supervisor_gives_up_exactly_at_the_quick_exit_limit() {
        let mut backoff = Backoff::default();
        let mut delays = Vec::new();
        for _ in 1..QUICK_EXITS_IN_A_ROW_MAX {
            delays.push(backoff.on_exit(true).expect("restarts below the limit"));
        }
        assert_eq!(delays, [400, 800, 1600, RESTART_DELAY_LONGEST_MS]);
        assert_eq!(backoff.on_exit(true), None);

        let mut backoff = Backoff::default();
        for _ in 1..QUICK_EXITS_IN_A_ROW_MAX {
            backoff.on_exit(true).unwrap();
        }
        assert_eq!(backoff.on_exit(false), Some(RESTART_DELAY_MIN_MS));
        for _ in 1..QUICK_EXITS_IN_A_ROW_MAX {
            assert!(backoff.on_exit(true).is_some());
        }
        assert_eq!(backoff.on_exit(true), None);
    }
}
