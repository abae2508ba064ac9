//! Makes the kernel itself signal this process, one way per run, after a line on stdin (so the
//! test knows the pid before the signal): `segv` (a fault), `seccomp` (a RET_KILL_PROCESS
//! filter on getppid), `xcpu` (RLIMIT_CPU), `alarm` (alarm(2)), `pipe` (a write to a pipe
//! with no reader). Each ends the process by that signal; if it does not within 10 s of CPU or
//! wall time, the process exits 3.
//!
//! Usage: signal-maker segv|seccomp|xcpu|alarm|pipe

use std::{
    io::BufRead as _,
    time::{Duration, Instant},
};

fn fail(what: &str) -> ! {
    eprintln!(
        "signal-maker: {what} failed: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(2);
}

/// Kills the process with SIGSYS on getppid(2).
fn seccomp_on_getppid() {
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    // seccomp_data.nr == getppid ? kill : allow.
    let filter = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_getppid as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_KILL_PROCESS,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl(2) calls with a valid filter program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail("PR_SET_NO_NEW_PRIVS");
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        ) != 0
        {
            fail("PR_SET_SECCOMP");
        }
        libc::getppid();
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let mut go = String::new();
    if std::io::stdin().lock().read_line(&mut go).is_err() {
        fail("reading stdin");
    }
    let started = Instant::now();
    let limit = Duration::from_secs(10);
    // SAFETY: plain syscalls; the `segv` store goes to an address that is never mapped.
    unsafe {
        // No core dump of the signals that would write one.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        match mode.as_str() {
            "segv" => std::ptr::write_volatile(8 as *mut u8, 1),
            "seccomp" => seccomp_on_getppid(),
            "xcpu" => {
                let cpu = libc::rlimit {
                    rlim_cur: 1,
                    rlim_max: 5,
                };
                if libc::setrlimit(libc::RLIMIT_CPU, &cpu) != 0 {
                    fail("setrlimit");
                }
                let mut spin = 0u64;
                while started.elapsed() < limit {
                    spin = std::hint::black_box(spin.wrapping_add(1));
                }
            }
            "alarm" => {
                libc::alarm(1);
                while started.elapsed() < limit {
                    libc::usleep(10_000);
                }
            }
            "pipe" => {
                // Rust's runtime ignores SIGPIPE; the default action ends the process.
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let mut fds = [0; 2];
                if libc::pipe(fds.as_mut_ptr()) != 0 {
                    fail("pipe");
                }
                libc::close(fds[0]);
                libc::write(fds[1], b"x".as_ptr() as *const libc::c_void, 1);
            }
            _ => {
                eprintln!("usage: signal-maker segv|seccomp|xcpu|alarm|pipe");
                std::process::exit(2);
            }
        }
    }
    std::process::exit(3);
}
