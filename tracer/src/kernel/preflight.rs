//! Checks that turn "operation not permitted" deep inside a load into one line that says what
//! to do.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// Where tracefs lives on current kernels.
pub const TRACEFS: &str = "/sys/kernel/tracing";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability bits of this process, from /proc/self/status.
fn effective_caps() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("/proc/self/status has no CapEff line")?;
    u64::from_str_radix(hex.trim(), 16).context("parsing CapEff")
}

/// Fails unless this process may load and attach tracing programs.
pub fn require_privileges() -> Result<()> {
    let caps = effective_caps()?;
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "not enough privilege to load eBPF programs: run as root (sudo tracer ...), or grant \
         CAP_BPF and CAP_PERFMON (setcap cap_bpf,cap_perfmon+ep $(command -v tracer))"
    )
}

/// Classic tracepoints are attached through tracefs; mounts it when it is not mounted yet.
pub fn ensure_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        return Ok(());
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "tracefs is not mounted and mounting it failed; run: mount -t tracefs nodev {TRACEFS}"
        )
    })?;
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Lets older kernels (before memcg accounting of BPF memory) allocate our maps.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; map creation may fail on old kernels");
    }
}
