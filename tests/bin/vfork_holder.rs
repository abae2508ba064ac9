//! Holds a new network namespace from uninterruptible sleep: unshares one, then starts a child
//! the way vfork() does (`CLONE_VFORK | CLONE_VM`) that sleeps instead of exec'ing, which keeps
//! the parent in D state (killable) for as long as the child lives. The child runs on a stack
//! of its own, so the parent's stack stays intact. The child dies with its parent.
//!
//! Usage: vfork-holder SECONDS

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

fn main() {
    let seconds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(120);
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the child gets its own stack (it grows down from the end) and only makes
    // syscalls; the parent is suspended until the child exits.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            eprintln!("vfork-holder: unshare(CLONE_NEWNET) failed (not root?)");
            std::process::exit(2);
        }
        let top = stack.as_mut_ptr().add(CHILD_STACK).cast::<c_void>();
        let pid = libc::clone(
            child,
            top,
            libc::CLONE_VFORK | libc::CLONE_VM | libc::SIGCHLD,
            seconds as usize as *mut c_void,
        );
        if pid < 0 {
            eprintln!("vfork-holder: clone failed");
            std::process::exit(2);
        }
    }
}
