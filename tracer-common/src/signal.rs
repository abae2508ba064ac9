//! Records of the `signals` tracer.

use crate::{EventHeader, TaskInfo, COMM_LEN};

/// Ancestors captured per signal, parent first. When the chain is longer, `ancestry_truncated`
/// is set.
pub const ANCESTRY_MAX: usize = 20;
/// Path components of the sender's executable captured per signal, file name first.
pub const EXE_DEPTH: usize = 8;
/// Bytes kept of each executable path component.
pub const EXE_NAME_LEN: usize = 32;

/// What the tracepoint's `info` argument was. The kernel passes two small integers instead of a
/// pointer for signals it sends itself.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoKind {
    /// A real `struct kernel_siginfo *`: `code`, `si_pid` and `si_uid` are filled in.
    Siginfo = 0,
    /// `SEND_SIG_NOINFO` (0): sent as if by kill(2) from the current task.
    NoInfo = 1,
    /// `SEND_SIG_PRIV` (1): sent by the kernel (OOM killer, SIGKILL on exec/exit, ...).
    Priv = 2,
}

/// One process of the sender's ancestry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ancestor {
    /// tgid in the initial pid namespace.
    pub pid: u32,
    pub _pad: u32,
    /// Start time of the process (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// The thread group leader's comm.
    pub comm: [u8; COMM_LEN],
}

/// What the task in whose context a signal was generated was doing: userspace decides from
/// these kernel facts (none of which the sender chooses) whether a process sent the signal.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SendContext {
    /// The syscall number in the task's user registers (`orig_ax` on x86: -1 outside a
    /// syscall, an exception's error code during one).
    pub nr: u64,
    /// The syscall return register (x86: `-ENOSYS` until the syscall returns).
    pub ret: u64,
    /// The first syscall argument, for the 64-bit and the 32-bit ABI.
    pub arg0: u64,
    pub arg0_compat: u64,
    /// `task_struct.flags` (`PF_EXITING`, `PF_KTHREAD`).
    pub flags: u32,
    /// `thread_info.status` (x86 `TS_COMPAT`: a 32-bit syscall).
    pub status: u32,
    /// Non-zero: `info` points into the task's own kernel stack (a syscall's local siginfo),
    /// not a slab `sigqueue` (timers) nor an interrupt stack.
    pub info_on_stack: u32,
    /// Non-zero: the registers were read (the loader knows this architecture's `pt_regs`).
    pub regs_known: u32,
    /// The process ptrace-attached to the task (`parent` while `ptrace` is set), 0 if none: a
    /// tracer can have the kernel send the task a signal of its choosing, as the kernel's own.
    pub ptracer_pid: u32,
    pub _pad: u32,
}

/// One `signal_generate` event. The sender's description (executable and ancestry) is not in
/// it: see [`SenderDescription`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalEvent {
    pub header: EventHeader,
    pub signo: i32,
    /// `si_code`, meaningful only for [`InfoKind::Siginfo`].
    pub code: i32,
    /// The tracepoint's delivery result (`enum trace_signal_result`).
    pub result: i32,
    /// Non-zero when sent to the whole thread group.
    pub group: i32,
    /// An [`InfoKind`] value.
    pub info_kind: u32,
    /// `si_pid` / `si_uid` from the siginfo (kill-like codes only).
    pub si_pid: u32,
    pub si_uid: u32,
    /// The slot, among this CPU's [`SENDER_SLOTS`], holding the description of the task in
    /// whose context the signal was generated.
    pub sender_slot: u32,
    /// The task in whose context the signal was generated (the sender for kill(2)).
    pub sender: TaskInfo,
    pub target: TaskInfo,
    pub context: SendContext,
}

/// What is captured about the task in whose context a signal was generated, besides its
/// [`crate::TaskInfo`]: its executable path and its process ancestry. The kernel program
/// captures it for every signal, but sends it only when it differs from what the same slot of
/// the same CPU last sent (a [`DescribedSignalEvent`]); a plain [`SignalEvent`] means "the
/// slot's description, unchanged". Each CPU has its own slots and a program never runs twice
/// at once on one CPU, so a slot's content and the records that carried it stay in step.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct SenderDescription {
    /// Non-zero once the content was sent; zero if its last sending failed (ring buffer full).
    pub valid: u32,
    pub exe_depth: u16,
    pub exe_truncated: u16,
    pub ancestry_len: u16,
    pub ancestry_truncated: u16,
    /// Non-zero when the exe path's walk ended at the root of a mount that is not the task's
    /// `/`: the path is then inside that mount's filesystem, not from the process's root (a
    /// tmpfs mounted anywhere, a bind mount, a memfd, a file outside a chroot).
    pub exe_other_mount: u16,
    pub _pad: u16,
    /// The sender's executable, one path component a row, the file name first.
    pub exe: [[u8; EXE_NAME_LEN]; EXE_DEPTH],
    /// The sender's parents, parent first.
    pub ancestry: [Ancestor; ANCESTRY_MAX],
}

/// A [`SignalEvent`] whose sender's description changed (or was never sent) on this CPU: the
/// new content of its slot follows.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DescribedSignalEvent {
    pub event: SignalEvent,
    pub description: SenderDescription,
}

/// Sender-description slots per CPU (a power of two). A sender's slot is picked from its pid;
/// two senders sharing a slot only cost re-sending, never a wrong description, because the
/// slot is compared with a fresh capture at every signal.
pub const SENDER_SLOTS: u32 = 128;

/// The slot of process `pid` among [`SENDER_SLOTS`].
#[inline(always)]
pub fn sender_slot(pid: u32) -> u32 {
    // Fibonacci hashing: consecutive pids spread over the slots.
    pid.wrapping_mul(0x9E37_79B9) >> (32 - SENDER_SLOTS.trailing_zeros())
}

/// One `oom:mark_victim` event: the OOM killer chose `victim`; its SIGKILL follows.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictimEvent {
    pub header: EventHeader,
    pub victim: TaskInfo,
    /// The task that was allocating when the OOM killer ran (not a sender).
    pub allocating: TaskInfo,
    /// Id of the victim's memory cgroup (kernfs node id on its hierarchy), 0 if unknown.
    pub memcg_id: u64,
}

/// In-kernel filter of the `signals` tracer, set once at load time. Zero means "any".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalFilter {
    /// Target process (tgid).
    pub target_pid: u32,
    /// Sender process (tgid).
    pub sender_pid: u32,
    /// Bit `n - 1` set: signal `n` passes (1..=64).
    pub signal_mask: u64,
    /// Non-zero: only signals whose result is not "delivered".
    pub failed_only: u32,
    /// Non-zero: only signals to tasks whose cgroup v2 id is in [`TARGET_CGROUPS_MAP`]
    /// (`--container`, `--pod`, `--namespace`; userspace keeps the map current).
    pub target_cgroups_only: u32,
}

/// Name of the hash map (cgroup v2 id → 1) of the cgroups the workload filters select.
pub const TARGET_CGROUPS_MAP: &str = "TARGET_CGROUPS";
/// Cgroups the workload filters can select at once.
pub const TARGET_CGROUPS_MAX: u32 = 16_384;
