//! Who sent a signal, decided from where the kernel generated it, never from the `si_code`:
//! rt_sigqueueinfo(2), rt_tgsigqueueinfo(2) and pidfd_send_signal(2) let any process choose
//! any negative code (SI_TIMER, SI_MESGQ, ...), and one sending to itself any code at all.
//!
//! The kernel program records what the task in whose context the signal was generated was
//! doing ([`SendContext`]): the syscall number in the user registers the kernel saved on entry,
//! its return register, whether the siginfo lives on that task's own kernel stack, and the
//! task's flags. A signal is the task's own send when all of these hold:
//! - the task is in kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo or
//!   pidfd_send_signal, and that syscall has not returned yet (x86: `ax` is still `-ENOSYS`;
//!   a seccomp trap rolls it back to the syscall number, a syscall-exit stop has the result);
//! - the siginfo is on the task's stack (those syscalls build it there; a POSIX timer's is a
//!   slab `sigqueue`, interrupt code runs on the CPU's own stacks);
//! - the task is not exiting (an exit after such a syscall notifies the parent from the same
//!   registers);
//! - the code is one that syscall can produce for this target (kill: SI_USER, tkill/tgkill:
//!   SI_TKILL, the others: negative codes other than SI_TKILL to another process, anything to
//!   the sender's own): a ptrace stop at the syscall's entry notifies the tracer with a
//!   positive code, which none of them can send to another process.
//!
//! `SEND_SIG_NOINFO` is the kernel's SI_USER from the current task (cgroup.kill, a parent's
//! death signal): the current task is the sender, except for a kernel thread and for SIGPIPE
//! and SIGXFSZ a task raises on itself by writing (the kernel's own reasons).
//! `SEND_SIG_PRIV` is always the kernel's.

use serde::Serialize;
use tracer_common::signal::{InfoKind, SendContext, SignalEvent};

use super::names::{is_user_sent, si_code_symbol, SIGKILL, SIGPIPE, SI_TKILL, SI_USER};

const SIGXFSZ: i32 = 25;
/// `task_struct.flags`: getting out (`do_exit` has begun).
const PF_EXITING: u32 = 0x0000_0004;
/// `task_struct.flags`: a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;
/// x86 `thread_info.status`: the task is in a 32-bit syscall.
const TS_COMPAT: u32 = 0x0002;
/// x86-64: an x32 syscall number has this bit set.
const X32_SYSCALL_BIT: u64 = 0x4000_0000;
const ENOSYS: i64 = 38;

/// How a signal was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum How {
    /// kill(2) to one process.
    #[serde(rename = "kill")]
    Kill,
    /// kill(2) to a process group (`kill(0, ..)`, `kill(-pgid, ..)`): one event per member.
    #[serde(rename = "kill_pgrp")]
    KillPgrp,
    /// `kill(-1, ..)`: every process the sender may signal.
    #[serde(rename = "kill_all")]
    KillAll,
    #[serde(rename = "tkill")]
    Tkill,
    #[serde(rename = "tgkill")]
    Tgkill,
    /// rt_sigqueueinfo(2) (sigqueue(3)).
    #[serde(rename = "sigqueue")]
    Sigqueue,
    /// rt_tgsigqueueinfo(2): to one thread.
    #[serde(rename = "tgsigqueue")]
    TgSigqueue,
    /// pidfd_send_signal(2).
    #[serde(rename = "pidfd")]
    Pidfd,
    /// A write to a cgroup v2 group's `cgroup.kill`.
    #[serde(rename = "cgroup.kill")]
    CgroupKill,
    /// The kernel sent SI_USER on the current task's behalf for another reason (a parent's
    /// death signal, ...).
    #[serde(rename = "send_sig")]
    SendSig,
    /// The kernel's own signal (`kernel_reason` says why).
    #[serde(rename = "kernel")]
    Kernel,
}

impl How {
    pub fn name(self) -> &'static str {
        match self {
            How::Kill => "kill",
            How::KillPgrp => "kill_pgrp",
            How::KillAll => "kill_all",
            How::Tkill => "tkill",
            How::Tgkill => "tgkill",
            How::Sigqueue => "sigqueue",
            How::TgSigqueue => "tgsigqueue",
            How::Pidfd => "pidfd",
            How::CgroupKill => "cgroup.kill",
            How::SendSig => "send_sig",
            How::Kernel => "kernel",
        }
    }
}

/// Who chose the `si_code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeFrom {
    /// The kernel set it (kill's SI_USER, a fault's SEGV_MAPERR, ...).
    Kernel,
    /// The sender passed it in its siginfo: a claim, not a fact.
    Sender,
    /// This architecture's syscall registers are unknown to the tracer: the code was taken at
    /// face value and may be forged.
    Unverified,
}

impl CodeFrom {
    pub fn name(self) -> &'static str {
        match self {
            CodeFrom::Kernel => "kernel",
            CodeFrom::Sender => "sender",
            CodeFrom::Unverified => "unverified",
        }
    }
}

/// Who sent a signal and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub how: How,
    pub code_from: CodeFrom,
}

impl Verdict {
    /// The task in whose context the signal was generated sent it.
    pub fn by_process(self) -> bool {
        self.how != How::Kernel
    }

    const KERNEL: Verdict = Verdict {
        how: How::Kernel,
        code_from: CodeFrom::Kernel,
    };
}

/// The syscalls that matter, in one ABI's numbering.
struct Abi {
    kill: u64,
    tkill: u64,
    tgkill: u64,
    rt_sigqueueinfo: u64,
    rt_tgsigqueueinfo: u64,
    pidfd_send_signal: u64,
    /// write, pwrite64, writev, pwritev, pwritev2: how `cgroup.kill` is written.
    writes: [u64; 5],
}

/// x86-64's numbers (arch/x86/entry/syscalls/syscall_64.tbl), fixed by the ABI.
const X86_64: Abi = Abi {
    kill: 62,
    tkill: 200,
    tgkill: 234,
    rt_sigqueueinfo: 129,
    rt_tgsigqueueinfo: 297,
    pidfd_send_signal: 424,
    writes: [1, 18, 20, 296, 328],
};

/// x32 (after clearing its marker bit): the common numbers, its own for siginfo and vectors.
const X32: Abi = Abi {
    rt_sigqueueinfo: 524,
    rt_tgsigqueueinfo: 536,
    writes: [1, 18, 516, 534, 547],
    ..X86_64
};

/// 32-bit x86 (syscall_32.tbl), used by 32-bit processes and by `int $0x80`.
const IA32: Abi = Abi {
    kill: 37,
    tkill: 238,
    tgkill: 270,
    rt_sigqueueinfo: 178,
    rt_tgsigqueueinfo: 335,
    pidfd_send_signal: 424,
    writes: [4, 181, 146, 334, 379],
};

/// The syscall the task is in, as far as sending goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syscall {
    /// kill(2) with its pid argument.
    Kill(i32),
    Tkill,
    Tgkill,
    Sigqueue,
    TgSigqueue,
    Pidfd,
    Write,
    Other,
}

fn syscall_of(cx: &SendContext) -> Syscall {
    // The kernel's entry code dispatches on the low 32 bits of the register (an `int`): a
    // process may set the high ones to anything, and the syscall runs all the same.
    let low = u64::from(cx.nr as u32);
    let (abi, nr, arg0) = if cx.status & TS_COMPAT != 0 {
        (&IA32, low, cx.arg0_compat)
    } else if low != u64::from(u32::MAX) && low & X32_SYSCALL_BIT != 0 {
        (&X32, low & !X32_SYSCALL_BIT, cx.arg0)
    } else {
        (&X86_64, low, cx.arg0)
    };
    match nr {
        n if n == abi.kill => Syscall::Kill(arg0 as i32),
        n if n == abi.tkill => Syscall::Tkill,
        n if n == abi.tgkill => Syscall::Tgkill,
        n if n == abi.rt_sigqueueinfo => Syscall::Sigqueue,
        n if n == abi.rt_tgsigqueueinfo => Syscall::TgSigqueue,
        n if n == abi.pidfd_send_signal => Syscall::Pidfd,
        n if abi.writes.contains(&n) => Syscall::Write,
        _ => Syscall::Other,
    }
}

/// Whether `syscall` can generate a signal with `code` (the kernel's own checks in
/// kernel/signal.c: only a send to the sender's own process may carry a code >= 0 or SI_TKILL
/// of its choosing).
fn can_produce(syscall: Syscall, code: i32, to_own_process: bool) -> bool {
    match syscall {
        Syscall::Kill(_) => code == SI_USER,
        Syscall::Tkill | Syscall::Tgkill => code == SI_TKILL,
        Syscall::Sigqueue | Syscall::TgSigqueue => to_own_process || (code < 0 && code != SI_TKILL),
        // Without a siginfo the kernel makes SI_USER (to a process) or SI_TKILL (to a thread).
        Syscall::Pidfd => to_own_process || code <= 0,
        Syscall::Write | Syscall::Other => false,
    }
}

/// Who sent `ev`, whose `info` argument was of kind `info`.
pub fn attribute(ev: &SignalEvent, info: InfoKind) -> Verdict {
    let cx = &ev.context;
    let to_own_process = ev.sender.pid == ev.target.pid;
    match info {
        InfoKind::Priv => Verdict::KERNEL,
        InfoKind::NoInfo => {
            let raised_by_writing = to_own_process && matches!(ev.signo, SIGPIPE | SIGXFSZ);
            if cx.flags & PF_KTHREAD != 0 || raised_by_writing {
                return Verdict::KERNEL;
            }
            let how =
                if ev.signo == SIGKILL && cx.regs_known != 0 && syscall_of(cx) == Syscall::Write {
                    How::CgroupKill
                } else {
                    How::SendSig
                };
            Verdict {
                how,
                code_from: CodeFrom::Kernel,
            }
        }
        InfoKind::Siginfo if cx.regs_known == 0 => {
            let how = match ev.code {
                SI_USER => How::Kill,
                SI_TKILL => How::Tkill,
                c if is_user_sent(c) => How::Sigqueue,
                _ => How::Kernel,
            };
            Verdict {
                how,
                code_from: CodeFrom::Unverified,
            }
        }
        InfoKind::Siginfo => {
            let syscall = syscall_of(cx);
            let in_send = cx.ret == (-ENOSYS) as u64
                && cx.info_on_stack != 0
                && cx.flags & PF_EXITING == 0
                && can_produce(syscall, ev.code, to_own_process);
            if !in_send {
                return Verdict::KERNEL;
            }
            let (how, code_from) = match syscall {
                Syscall::Kill(pid) if pid > 0 => (How::Kill, CodeFrom::Kernel),
                Syscall::Kill(-1) => (How::KillAll, CodeFrom::Kernel),
                Syscall::Kill(_) => (How::KillPgrp, CodeFrom::Kernel),
                Syscall::Tkill => (How::Tkill, CodeFrom::Kernel),
                Syscall::Tgkill => (How::Tgkill, CodeFrom::Kernel),
                Syscall::Sigqueue => (How::Sigqueue, CodeFrom::Sender),
                Syscall::TgSigqueue => (How::TgSigqueue, CodeFrom::Sender),
                Syscall::Pidfd if matches!(ev.code, SI_USER | SI_TKILL) => {
                    (How::Pidfd, CodeFrom::Kernel)
                }
                Syscall::Pidfd => (How::Pidfd, CodeFrom::Sender),
                Syscall::Write | Syscall::Other => return Verdict::KERNEL,
            };
            Verdict { how, code_from }
        }
    }
}

/// The `(HOW)` of the human line and of report findings: `kill`, `sigqueue, claims SI_TIMER`,
/// or for the kernel's signals its code (`SEGV_MAPERR`).
pub fn how_label(
    how: &str,
    code: &str,
    code_from: &str,
    signo: i32,
    si_code: Option<i32>,
) -> String {
    let claimed = |what: &str| match si_code {
        Some(si_code) => format!("{what}, claims {}", si_code_symbol(signo, si_code)),
        None => what.to_string(),
    };
    match (how, code_from) {
        ("kernel", "unverified") => format!("{code}, unverified"),
        ("kernel", _) => code.to_string(),
        (how, "sender") => claimed(how),
        (how, "unverified") => claimed(&format!("{how}, unverified")),
        (how, _) => how.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal from pid 100 to pid `to`, generated while pid 100 was in syscall `nr`.
    fn event(signo: i32, code: i32, to: u32, nr: u64) -> SignalEvent {
        // SAFETY: SignalEvent is plain data; all zeroes is a valid value.
        let mut ev: SignalEvent = unsafe { std::mem::zeroed() };
        ev.signo = signo;
        ev.code = code;
        ev.sender.pid = 100;
        ev.target.pid = to;
        ev.context = SendContext {
            nr,
            ret: (-ENOSYS) as u64,
            arg0: to as u64,
            arg0_compat: 0,
            flags: 0,
            status: 0,
            info_on_stack: 1,
            regs_known: 1,
            ptracer_pid: 0,
            _pad: 0,
        };
        ev
    }

    fn verdict(ev: &SignalEvent) -> (How, CodeFrom) {
        let v = attribute(ev, InfoKind::Siginfo);
        (v.how, v.code_from)
    }

    #[test]
    fn forged_codes_name_the_sender() {
        for nr in [129, 297, 424] {
            for code in [-1, -2, -3, -4, -5, -60, -12345] {
                let (how, from) = verdict(&event(9, code, 200, nr));
                assert_ne!(how, How::Kernel, "nr {nr} code {code}");
                assert_eq!(from, CodeFrom::Sender, "nr {nr} code {code}");
            }
        }
        // To itself a process may claim a fault.
        assert_eq!(
            verdict(&event(11, 1, 100, 129)),
            (How::Sigqueue, CodeFrom::Sender)
        );
    }

    #[test]
    fn high_bits_of_the_syscall_register_hide_nothing() {
        // `syscall` with rax = 1<<32 | 62 runs kill(2): the entry code takes the low 32 bits.
        assert_eq!(verdict(&event(9, 0, 200, 1 << 32 | 62)).0, How::Kill);
        let forged = verdict(&event(9, -2, 200, 0xffff_0000_0000_0000 | 129));
        assert_eq!(forged, (How::Sigqueue, CodeFrom::Sender));
    }

    #[test]
    fn kill_variants() {
        assert_eq!(verdict(&event(15, 0, 200, 62)).0, How::Kill);
        let mut ev = event(15, 0, 200, 62);
        ev.context.arg0 = (-200i64) as u64;
        assert_eq!(verdict(&ev).0, How::KillPgrp);
        ev.context.arg0 = 0;
        assert_eq!(verdict(&ev).0, How::KillPgrp);
        ev.context.arg0 = u64::MAX;
        assert_eq!(verdict(&ev).0, How::KillAll);
        assert_eq!(verdict(&event(15, -6, 200, 234)).0, How::Tgkill);
        assert_eq!(verdict(&event(15, -6, 200, 200)).0, How::Tkill);
        // 32-bit kill(2) and an x32 rt_sigqueueinfo(2).
        let mut ev = event(15, 0, 200, 37);
        ev.context.status = TS_COMPAT;
        ev.context.arg0_compat = 200;
        assert_eq!(verdict(&ev).0, How::Kill);
        assert_eq!(
            verdict(&event(15, -2, 200, X32_SYSCALL_BIT | 524)).0,
            How::Sigqueue
        );
    }

    #[test]
    fn kernel_paths_stay_the_kernels() {
        // A POSIX timer's siginfo lives in a slab sigqueue, even when it fires while the
        // current task is in rt_sigqueueinfo.
        let mut timer = event(14, -2, 200, 129);
        timer.context.info_on_stack = 0;
        assert_eq!(verdict(&timer).0, How::Kernel);
        // A seccomp trap of kill(2) rolled the return register back to the syscall number.
        let mut seccomp = event(31, 1, 100, 62);
        seccomp.context.ret = 62;
        assert_eq!(verdict(&seccomp).0, How::Kernel);
        // A ptrace stop at the entry of rt_sigqueueinfo notifies the tracer with CLD_TRAPPED.
        assert_eq!(verdict(&event(17, 4, 300, 129)).0, How::Kernel);
        // The parent's SIGCHLD when a task exits after kill(2).
        let mut exit = event(17, 2, 300, 62);
        exit.context.flags = PF_EXITING;
        assert_eq!(verdict(&exit).0, How::Kernel);
        // A fault outside any syscall.
        assert_eq!(verdict(&event(11, 1, 100, u64::MAX)).0, How::Kernel);
        // kill(2) can only make SI_USER.
        assert_eq!(verdict(&event(11, 0x80, 100, 62)).0, How::Kernel);
    }

    #[test]
    fn no_info_is_the_current_tasks_unless_it_raised_it_on_itself() {
        let cgroup_kill = event(9, 0, 200, 1);
        assert_eq!(
            attribute(&cgroup_kill, InfoKind::NoInfo).how,
            How::CgroupKill
        );
        let pipe = event(SIGPIPE, 0, 100, 1);
        assert_eq!(attribute(&pipe, InfoKind::NoInfo).how, How::Kernel);
        let pdeath = event(15, 0, 200, 60);
        assert_eq!(attribute(&pdeath, InfoKind::NoInfo).how, How::SendSig);
        let mut kthread = event(9, 0, 200, 1);
        kthread.context.flags = PF_KTHREAD;
        assert_eq!(attribute(&kthread, InfoKind::NoInfo).how, How::Kernel);
        assert_eq!(attribute(&kthread, InfoKind::Priv).how, How::Kernel);
    }

    #[test]
    fn unknown_architecture_says_unverified() {
        let mut ev = event(9, -2, 200, 129);
        ev.context.regs_known = 0;
        assert_eq!(verdict(&ev), (How::Kernel, CodeFrom::Unverified));
        ev.code = -1;
        assert_eq!(verdict(&ev), (How::Sigqueue, CodeFrom::Unverified));
    }

    #[test]
    fn labels() {
        assert_eq!(how_label("kill", "kill", "kernel", 9, Some(0)), "kill");
        assert_eq!(
            how_label("sigqueue", "timer", "sender", 9, Some(-2)),
            "sigqueue, claims SI_TIMER"
        );
        assert_eq!(
            how_label("pidfd", "code -77", "sender", 9, Some(-77)),
            "pidfd, claims code -77"
        );
        assert_eq!(
            how_label("kernel", "SEGV_MAPERR", "kernel", 11, Some(1)),
            "SEGV_MAPERR"
        );
    }
}
