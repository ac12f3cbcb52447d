//! Ctrl-C (SIGINT), SIGTERM and SIGHUP ask the tool to stop and report: they set one process-wide
//! flag ([`stop_flag`]) that every subcommand watches, and never kill the tool half-way.
//!
//! The handler must be in place before the tool does anything a signal could cut short (create
//! and remove a temporary file, attach to a target): before it, the default action ends the tool
//! silently and can leave files behind. So the `pymemtrace` binary blocks these signals in an ELF
//! constructor, before Rust's runtime and `main` run ([`block_stop_signals`]); `main` installs the
//! handler first thing and only then unblocks them ([`install_stop_handler`]). A signal that
//! arrives in between stays pending and is handled like any later one. Only one that arrives
//! while the program is still being loaded, before any of its code has run, ends it the default
//! way (it has touched nothing yet).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// The signals that ask the tool to stop and report (those the `ctrlc` crate handles).
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The flag the stop signals set, shared by every part of the tool that waits or loops.
pub fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the stop signals in the calling thread. Called from the binary's ELF constructor, so
/// it allocates nothing and uses no part of Rust's runtime.
pub fn block_stop_signals() {
    let set = stop_signal_set();
    // SAFETY: changes this thread's signal mask only.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Installs the handler that sets [`stop_flag`], then unblocks the stop signals in the calling
/// thread (threads it starts afterwards inherit that): one that arrived meanwhile is handled now.
pub fn install_stop_handler() -> Result<()> {
    let flag = stop_flag();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .map_err(|err| Error::internal(format!("cannot install the Ctrl-C handler: {err}")))?;
    let set = stop_signal_set();
    // SAFETY: changes this thread's signal mask only.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}
