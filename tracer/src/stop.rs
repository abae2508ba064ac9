//! Ctrl-C and SIGTERM, caught from the start of a tracing run (before anything is loaded)
//! until its end: a signal only marks the run as stopping, and the run ends where it is
//! safe to (before loading, or at the event loop's next turn), detaching everything and
//! writing the summary when it got that far. A second signal ends the process at once.

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context as _, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The first stop signal received; 0 while none was.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Async-signal-safe: one atomic store, or _exit. A second signal ends the process at once,
    // for one blocked where the flag is not looked at (reading BTF, writing to a stalled
    // stdout, the report): nothing is pinned, so the kernel detaches and frees our programs
    // as their descriptors close.
    if RECEIVED
        .compare_exchange(0, signal, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Catches SIGINT and SIGTERM from now on (SA_RESTART: loading's syscalls carry on).
pub fn catch() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(note),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic or calls _exit.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("catching {signal}"))?;
    }
    Ok(())
}

/// The stop signal received so far, if any.
pub fn received() -> Option<Signal> {
    Signal::try_from(RECEIVED.load(Ordering::Relaxed)).ok()
}

/// What the run's summary says stopped it.
pub fn reason(signal: Signal) -> &'static str {
    match signal {
        Signal::SIGTERM => "terminate",
        _ => "interrupt",
    }
}

/// A run stopped by a signal before it was ready: nothing was traced, nothing stays loaded.
/// The process exits with 128 + the signal's number, as a shell reports a process the signal
/// ended.
#[derive(Debug)]
pub struct Interrupted(pub Signal);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} during start-up; nothing was traced", self.0)
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// `Err(Interrupted)` if a stop signal came.
    pub fn check() -> Result<()> {
        match received() {
            Some(signal) => Err(Interrupted(signal).into()),
            None => Ok(()),
        }
    }

    /// `e`, or the interruption that caused it: the verifier gives up (EAGAIN) on a pending
    /// signal, so a failure to load after a stop signal is the signal's doing.
    pub fn or(e: anyhow::Error) -> anyhow::Error {
        match received() {
            Some(signal) => {
                log::info!("start-up failed after {signal}: {e:#}");
                Interrupted(signal).into()
            }
            None => e,
        }
    }

    /// The exit code for `e` if it is an interruption.
    pub fn exit_code(e: &anyhow::Error) -> Option<u8> {
        e.downcast_ref::<Interrupted>()
            .map(|i| 128u8.saturating_add(i.0 as u8))
    }
}
