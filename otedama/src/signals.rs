//! Signals, as flags the long-running commands poll: SIGINT and SIGTERM ask to stop (so
//! children and nodes stop cleanly), SIGHUP asks to replace the data plane without
//! dropping miners (`crate::handover`), and SIGUSR2 tells a data plane to drain.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static REPLACE: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn request_replace(_signal: libc::c_int) {
    REPLACE.store(true, Ordering::SeqCst);
}

extern "C" fn request_drain(_signal: libc::c_int) {
    otedama_dataplane::rt::drain::request_drain();
}

fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    let handler = handler as *const () as libc::sighandler_t;
    // SAFETY: every handler here only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(signal, handler);
    }
}

pub fn install_stop_handler() {
    install(libc::SIGINT, request_stop);
    install(libc::SIGTERM, request_stop);
}

/// SIGHUP: replace the data plane (`take_replace_request`).
pub fn install_replace_handler() {
    install(libc::SIGHUP, request_replace);
}

/// SIGHUP is left to the supervisor (`otedama run` replaces its children itself).
pub fn ignore_replace_requests() {
    // SAFETY: setting a signal's disposition to ignore.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// SIGUSR2: drain this data plane and exit (`otedama_dataplane::rt::drain`).
pub fn install_drain_handler() {
    install(libc::SIGUSR2, request_drain);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Whether a replacement was asked for since the last call.
pub fn take_replace_request() -> bool {
    REPLACE.swap(false, Ordering::SeqCst)
}
