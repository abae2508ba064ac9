//! The vocabulary of signals: names, `si_code` classes, delivery results, exit codes.

use std::borrow::Cow;

use anyhow::{bail, Result};

/// Standard signal names on Linux (x86, arm, riscv numbering), index = number.
const NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];
const SIGRTMIN: i32 = 32;
const SIGRTMAX: i32 = 64;

pub const SIGKILL: i32 = 9;
pub const SIGPIPE: i32 = 13;
pub const SIGCHLD: i32 = 17;
pub const SIGURG: i32 = 23;
pub const SIGIO: i32 = 29;
const SIGSYS: i32 = 31;

/// `SIGKILL`, `SIGRTMIN+3`, or `signal 99` for a number outside the known range.
pub fn signal_name(signo: i32) -> Cow<'static, str> {
    match signo {
        1..=31 => NAMES[signo as usize].into(),
        SIGRTMIN => "SIGRTMIN".into(),
        33..=SIGRTMAX => format!("SIGRTMIN+{}", signo - SIGRTMIN).into(),
        _ => format!("signal {signo}").into(),
    }
}

/// Parses `KILL`, `SIGKILL`, `sigkill`, `9` or `RTMIN+2`.
pub fn parse_signal(text: &str) -> Result<i32> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=SIGRTMAX).contains(&n) {
            return Ok(n);
        }
        bail!("signal number {n} is out of range 1..={SIGRTMAX}");
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(n) = (1..=31).find(|&n| &NAMES[n][3..] == bare) {
        return Ok(n as i32);
    }
    if bare == "RTMIN" {
        return Ok(SIGRTMIN);
    }
    if let Some(k) = bare
        .strip_prefix("RTMIN+")
        .and_then(|k| k.parse::<i32>().ok())
    {
        if (0..=SIGRTMAX - SIGRTMIN).contains(&k) {
            return Ok(SIGRTMIN + k);
        }
    }
    let valid: Vec<&str> = NAMES[1..].iter().map(|n| &n[3..]).collect();
    bail!(
        "unknown signal `{text}`; valid names (with or without SIG): {}, RTMIN, RTMIN+N (0..=32), or numbers 1..=64",
        valid.join(" ")
    )
}

/// Parses a comma-separated list into the kernel filter's bit mask (bit n-1 = signal n).
pub fn parse_signal_mask(list: &str) -> Result<u64> {
    let mut mask = 0u64;
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        mask |= 1u64 << (parse_signal(part)? - 1);
    }
    if mask == 0 {
        bail!("--signal needs at least one signal, e.g. --signal KILL,TERM");
    }
    Ok(mask)
}

/// The tracepoint's delivery result (`enum trace_signal_result`).
pub fn result_name(result: i32) -> &'static str {
    match result {
        0 => "delivered",
        1 => "ignored",
        2 => "already_pending",
        3 => "overflow",
        4 => "lost_info",
        _ => "unknown",
    }
}

/// Why the kernel sent a signal, for signals that are not kill(2)/tkill(2)/sigqueue(2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelReason {
    /// The OOM killer chose the target.
    Oom,
    /// A hardware fault or trap of the target itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP).
    Fault,
    /// A write to a pipe or socket with no reader (SIGPIPE).
    Pipe,
    /// A child changed state (SIGCHLD).
    Child,
    /// A POSIX timer or itimer expired.
    Timer,
    /// I/O readiness or a message queue: a file's owner (F_SETOWN, with the signal F_SETSIG
    /// chose or SIGIO/SIGURG), mq_notify, AIO.
    Io,
    /// Sent with kernel privilege to a ptraced task by itself: the kernel's own, or one its
    /// tracer injected at a syscall stop (PTRACE_CONT with a signal), which looks the same.
    Ptrace,
    /// Sent with kernel privilege for another reason (tty job control, exit/exec of a thread
    /// group, rlimits, seccomp, ...).
    Kernel,
}

impl KernelReason {
    /// The name in JSON output and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            KernelReason::Oom => "oom",
            KernelReason::Fault => "fault",
            KernelReason::Pipe => "pipe",
            KernelReason::Child => "child",
            KernelReason::Timer => "timer",
            KernelReason::Io => "io",
            KernelReason::Ptrace => "ptrace",
            KernelReason::Kernel => "kernel",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            KernelReason::Oom => "OOM killer",
            KernelReason::Fault => "fault",
            KernelReason::Pipe => "broken pipe",
            KernelReason::Child => "child state change",
            KernelReason::Timer => "timer",
            KernelReason::Io => "I/O notification",
            KernelReason::Ptrace => "kernel, or the ptrace tracer",
            KernelReason::Kernel => "kernel",
        }
    }
}

pub const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;
const SI_QUEUE: i32 = -1;
const SI_TIMER: i32 = -2;
const SI_MESGQ: i32 = -3;
const SI_ASYNCIO: i32 = -4;
const SI_SIGIO: i32 = -5;
pub const SI_TKILL: i32 = -6;
const SI_DETHREAD: i32 = -7;
const SI_ASYNCNL: i32 = -60;
/// `POLL_IN` to `POLL_HUP`: the codes of a signal sent to a file's owner (fs/fcntl.c).
const POLL_IN: i32 = 1;
const POLL_HUP: i32 = 6;

/// The codes any signal may carry: value, name in `code`, the C name.
const SI_CODES: [(i32, &str, &str); 10] = [
    (SI_USER, "kill", "SI_USER"),
    (SI_KERNEL, "kernel", "SI_KERNEL"),
    (SI_QUEUE, "sigqueue", "SI_QUEUE"),
    (SI_TIMER, "timer", "SI_TIMER"),
    (SI_MESGQ, "mesgq", "SI_MESGQ"),
    (SI_ASYNCIO, "asyncio", "SI_ASYNCIO"),
    (SI_SIGIO, "sigio", "SI_SIGIO"),
    (SI_TKILL, "tkill", "SI_TKILL"),
    (SI_DETHREAD, "dethread", "SI_DETHREAD"),
    (SI_ASYNCNL, "asyncnl", "SI_ASYNCNL"),
];

/// How the signal was sent, from `si_code`: `kill`, `tkill`, `sigqueue`, `kernel`, the
/// signal-specific codes (`SEGV_MAPERR`, `CLD_EXITED`, ...), or `code N`.
pub fn code_name(signo: i32, code: i32) -> Cow<'static, str> {
    match SI_CODES.iter().find(|(value, ..)| *value == code) {
        Some((_, name, _)) => (*name).into(),
        None if code > 0 => fault_code_name(signo, code),
        None => format!("code {code}").into(),
    }
}

/// The C name of a code: `SI_TIMER`, `SEGV_MAPERR`, or `code N`.
pub fn si_code_symbol(signo: i32, code: i32) -> String {
    match SI_CODES.iter().find(|(value, ..)| *value == code) {
        Some((_, _, symbol)) => symbol.to_string(),
        None => code_name(signo, code).into_owned(),
    }
}

fn fault_code_name(signo: i32, code: i32) -> Cow<'static, str> {
    let table: &[&str] = match signo {
        4 => &[
            "ILL_ILLOPC",
            "ILL_ILLOPN",
            "ILL_ILLADR",
            "ILL_ILLTRP",
            "ILL_PRVOPC",
            "ILL_PRVREG",
            "ILL_COPROC",
            "ILL_BADSTK",
        ],
        5 => &[
            "TRAP_BRKPT",
            "TRAP_TRACE",
            "TRAP_BRANCH",
            "TRAP_HWBKPT",
            "TRAP_UNK",
            "TRAP_PERF",
        ],
        7 => &[
            "BUS_ADRALN",
            "BUS_ADRERR",
            "BUS_OBJERR",
            "BUS_MCEERR_AR",
            "BUS_MCEERR_AO",
        ],
        8 => &[
            "FPE_INTDIV",
            "FPE_INTOVF",
            "FPE_FLTDIV",
            "FPE_FLTOVF",
            "FPE_FLTUND",
            "FPE_FLTRES",
            "FPE_FLTINV",
            "FPE_FLTSUB",
        ],
        11 => &[
            "SEGV_MAPERR",
            "SEGV_ACCERR",
            "SEGV_BNDERR",
            "SEGV_PKUERR",
            "SEGV_ACCADI",
            "SEGV_ADIDERR",
            "SEGV_ADIPERR",
            "SEGV_MTEAERR",
            "SEGV_MTESERR",
            "SEGV_CPERR",
        ],
        SIGCHLD => &[
            "CLD_EXITED",
            "CLD_KILLED",
            "CLD_DUMPED",
            "CLD_TRAPPED",
            "CLD_STOPPED",
            "CLD_CONTINUED",
        ],
        29 => &[
            "POLL_IN", "POLL_OUT", "POLL_MSG", "POLL_ERR", "POLL_PRI", "POLL_HUP",
        ],
        31 => &["SYS_SECCOMP", "SYS_USER_DISPATCH"],
        _ => &[],
    };
    match table.get(code as usize - 1) {
        Some(name) => (*name).into(),
        None => format!("code {code}").into(),
    }
}

/// Whether a siginfo code says a user process sent the signal with kill(2), tkill(2),
/// tgkill(2) or sigqueue(2): then the current task really is the sender.
pub fn is_user_sent(code: i32) -> bool {
    matches!(code, SI_USER | SI_TKILL | SI_QUEUE)
}

/// The kernel's reason for a signal with a real siginfo that is not user-sent, generated while
/// the target's own process ran (`to_own_process`) or another.
pub fn reason_from_code(signo: i32, code: i32, to_own_process: bool) -> KernelReason {
    match (signo, code) {
        (_, SI_TIMER) => KernelReason::Timer,
        (_, SI_MESGQ | SI_ASYNCIO | SI_SIGIO | SI_ASYNCNL) => KernelReason::Io,
        (SIGCHLD, c) if c > 0 => KernelReason::Child,
        // A fault is raised on the task that made it.
        (4 | 5 | 7 | 8 | 11, c) if c > 0 && to_own_process => KernelReason::Fault,
        // SIGSYS's codes (seccomp, syscall user dispatch) share the numbers of POLL_*.
        (SIGSYS, _) => KernelReason::Kernel,
        // Any other signal with a POLL_* code went to a file's owner (F_SETOWN), as its
        // F_SETSIG chose: SIGKILL too, on a write by whoever can write to the file.
        (SIGIO, c) if c > 0 => KernelReason::Io,
        (_, POLL_IN..=POLL_HUP) => KernelReason::Io,
        _ => KernelReason::Kernel,
    }
}

/// What a shell or container runtime's exit code means: `137` → killed by SIGKILL.
pub fn explain_exit_code(code: i32) -> String {
    match code {
        0 => "0: success".to_string(),
        126 => "126: command found but not executable".to_string(),
        127 => "127: command not found".to_string(),
        129..=192 => format!(
            "{code}: killed by {} ({code} = 128 + {})",
            signal_name(code - 128),
            code - 128
        ),
        _ => format!("{code}: the program's own exit status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for n in 1..=64 {
            assert_eq!(
                parse_signal(&signal_name(n)).unwrap(),
                n,
                "{}",
                signal_name(n)
            );
        }
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal(" 10 ").unwrap(), 10);
        assert_eq!(signal_name(34), "SIGRTMIN+2");
    }

    #[test]
    fn bad_signal_lists_valid_names() {
        let err = parse_signal("FOO").unwrap_err().to_string();
        assert!(
            err.contains("unknown signal `FOO`") && err.contains("KILL"),
            "{err}"
        );
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal_mask(",").is_err());
    }

    #[test]
    fn mask_has_one_bit_per_signal() {
        assert_eq!(
            parse_signal_mask("KILL,TERM").unwrap(),
            (1 << 8) | (1 << 14)
        );
        assert_eq!(parse_signal_mask("64").unwrap(), 1 << 63);
    }

    #[test]
    fn codes_and_reasons() {
        assert_eq!(code_name(9, 0), "kill");
        assert_eq!(code_name(11, 1), "SEGV_MAPERR");
        assert_eq!(code_name(17, 2), "CLD_KILLED");
        assert_eq!(code_name(10, -6), "tkill");
        assert_eq!(code_name(10, 99), "code 99");
        assert_eq!(code_name(10, -99), "code -99");
        assert_eq!(code_name(10, i32::MIN), format!("code {}", i32::MIN));
        assert_eq!(code_name(11, i32::MAX), format!("code {}", i32::MAX));
        assert_eq!(si_code_symbol(9, -2), "SI_TIMER");
        assert_eq!(si_code_symbol(11, 2), "SEGV_ACCERR");
        assert!(is_user_sent(0) && is_user_sent(-6) && !is_user_sent(0x80));
        assert_eq!(reason_from_code(11, 1, true), KernelReason::Fault);
        assert_eq!(reason_from_code(17, 1, false), KernelReason::Child);
        assert_eq!(reason_from_code(14, -2, false), KernelReason::Timer);
        assert_eq!(reason_from_code(9, 0x80, false), KernelReason::Kernel);
        // F_SETSIG's choice, with the reason F_SETOWN's signals carry.
        assert_eq!(reason_from_code(9, 1, false), KernelReason::Io);
        assert_eq!(reason_from_code(11, 1, false), KernelReason::Io);
        assert_eq!(reason_from_code(29, 1, true), KernelReason::Io);
        assert_eq!(reason_from_code(31, 1, true), KernelReason::Kernel);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            explain_exit_code(137),
            "137: killed by SIGKILL (137 = 128 + 9)"
        );
        assert_eq!(
            explain_exit_code(143),
            "143: killed by SIGTERM (143 = 128 + 15)"
        );
        assert_eq!(explain_exit_code(1), "1: the program's own exit status");
    }
}
