//! Holds a new network namespace for at most SECONDS, in one of two ways:
//! - `vfork`: unshares a namespace, then starts a child the way vfork() does
//!   (`CLONE_VFORK | CLONE_VM`) that sleeps instead of exec'ing, which keeps the parent in D
//!   state (killable) inside the namespace for as long as the child lives;
//! - `clone`: starts a child in a new namespace with clone(`CLONE_NEWNET`); the parent stays
//!   outside and waits for it.
//!
//! The child runs on a stack of its own and dies with its parent.
//!
//! Usage: netns-holder vfork|clone SECONDS

use std::ffi::c_void;

const CHILD_STACK: usize = 64 * 1024;

extern "C" fn child(seconds: *mut c_void) -> libc::c_int {
    // SAFETY: plain syscalls.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::sleep(seconds as usize as u32);
        libc::_exit(0)
    }
}

fn fail(what: &str) -> ! {
    eprintln!(
        "netns-holder: {what} failed: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(120);
    let flags = match args.get(1).map(String::as_str) {
        Some("vfork") => {
            // SAFETY: plain syscall.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                fail("unshare(CLONE_NEWNET)");
            }
            libc::CLONE_VFORK | libc::CLONE_VM
        }
        Some("clone") => libc::CLONE_NEWNET,
        _ => {
            eprintln!("usage: netns-holder vfork|clone SECONDS");
            std::process::exit(2);
        }
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the child gets its own stack (it grows down from the end) and only makes
    // syscalls; with CLONE_VM the parent is suspended until the child exits.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK).cast::<c_void>();
        libc::clone(
            child,
            top,
            flags | libc::SIGCHLD,
            seconds as usize as *mut c_void,
        )
    };
    if pid < 0 {
        fail("clone");
    }
    // SAFETY: plain syscall; reaps the child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
}
