//! Replacing a running data-plane process without dropping its miners: the pieces both
//! `otedama run` (which replaces its children on SIGHUP) and a lone `otedama dataplane`
//! under systemd (which replaces itself on SIGHUP, `systemctl reload`) use.
//!
//! The order is always: start the replacement; wait until it says every core accepts
//! (`report_ready` writes a byte to the pipe named by `READY_FD_ENV`); only then tell the
//! old process to drain (`SIGUSR2`, `otedama_dataplane::rt::drain`). A replacement that
//! fails to start is stopped and the old process keeps serving, so a bad binary costs no
//! miner.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The environment variable naming the descriptor a process writes one byte to once it
/// accepts miners.
pub const READY_FD_ENV: &str = "OTEDAMA_READY_FD";
/// Set by `otedama run` for its children: the supervisor replaces them on SIGHUP, so a
/// data plane it started does not replace itself.
pub const SUPERVISED_ENV: &str = "OTEDAMA_SUPERVISED";
/// The longest a replacement may take to accept miners before it is given up: opening a
/// large share log and the first job from the control plane take seconds, not minutes.
pub const REPLACEMENT_READY_WAIT_S_MAX: u64 = 120;

/// A child started with a readiness pipe.
pub struct Starting {
    pub child: Child,
    ready: std::fs::File,
}

/// Starts `command` with a pipe whose write end it inherits under `READY_FD_ENV`.
pub fn spawn_with_ready_pipe(command: &mut Command) -> anyhow::Result<Starting> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("making the readiness pipe");
    }
    // SAFETY: both descriptors were just made and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = write.as_raw_fd();
    command.env(READY_FD_ENV, write_fd.to_string());
    // SAFETY: fcntl is async-signal-safe; it lets the child keep the write end across exec.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(write_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().context("starting the replacement")?;
    // Our copy of the write end goes, so the read end sees EOF if the child dies first.
    drop(write);
    Ok(Starting {
        child,
        ready: std::fs::File::from(read),
    })
}

impl Starting {
    /// Waits up to `wait` for the child's readiness byte: `Ok(true)` once it accepts,
    /// `Ok(false)` if it ended or closed the pipe first, the wait ran out, or this process
    /// was asked to stop.
    pub fn wait_ready(&mut self, wait: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || crate::signals::stop_requested() {
                return Ok(false);
            }
            let mut poll = libc::pollfd {
                fd: self.ready.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout_ms = left.as_millis().min(1000) as libc::c_int;
            // SAFETY: poll reads and writes the one pollfd it is given.
            let polled = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
            if polled < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error).context("waiting for the replacement");
            }
            if polled == 0 {
                continue;
            }
            let mut byte = [0u8; 1];
            return Ok(matches!(self.ready.read(&mut byte), Ok(1)));
        }
    }
}

/// Says this process accepts miners: one byte to the pipe of whoever started it as a
/// replacement (`READY_FD_ENV`), and `READY=1` with this process as the service's main
/// one to systemd (`NOTIFY_SOCKET`, `Type=notify`), so that after a replacement systemd
/// follows the new process. Errors are logged: readiness is a courtesy to the starter.
pub fn report_ready() {
    if let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|fd| fd.parse::<libc::c_int>().ok())
    {
        // SAFETY: the descriptor was inherited for this one write and is owned here.
        let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Err(error) = std::io::Write::write_all(&mut pipe, b"1") {
            tracing::warn!(%error, "cannot tell the starter this process is ready");
        }
    }
    if let Err(error) = notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id())) {
        tracing::warn!(%error, "cannot tell systemd this process is ready");
    }
}

/// Sends `state` to systemd's notification socket, if the service manager gave one.
pub fn notify_systemd(state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
    };
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

/// Sends `signal` to `child` unless it has already been reaped.
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own, not yet reaped, child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that writes the byte is ready; one that exits without it is not, and the
    /// wait says so at once rather than at the deadline.
    #[test]
    fn readiness_is_the_byte_and_an_early_exit_is_not_ready() {
        let mut ready = spawn_with_ready_pipe(
            Command::new("sh")
                .arg("-c")
                .arg(format!("printf 1 >&${READY_FD_ENV}; sleep 5")),
        )
        .unwrap();
        assert!(ready.wait_ready(Duration::from_secs(10)).unwrap());
        let _ = ready.child.kill();
        let _ = ready.child.wait();

        let mut failed = spawn_with_ready_pipe(Command::new("sh").arg("-c").arg("exit 3")).unwrap();
        let started = Instant::now();
        assert!(!failed.wait_ready(Duration::from_secs(30)).unwrap());
        assert!(started.elapsed() < Duration::from_secs(10));
        let _ = failed.child.wait();

        let mut silent = spawn_with_ready_pipe(Command::new("sleep").arg("5")).unwrap();
        assert!(!silent.wait_ready(Duration::from_millis(300)).unwrap());
        let _ = silent.child.kill();
        let _ = silent.child.wait();
    }
}
