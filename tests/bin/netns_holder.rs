//! Holds a new network namespace for at most SECONDS, in one of two ways:
//! - `vfork`: unshares a namespace, then starts a child the way vfork() does
//!   (`CLONE_VFORK | CLONE_VM`) that sleeps instead of exec'ing, which keeps the parent in D
//!   state (killable) inside the namespace for as long as the child lives;
//! - `clone`: starts a child in a new namespace with clone(`CLONE_NEWNET`); the parent stays
//!   outside and waits for it.
//!
//! `vfork-here` is `vfork` in the namespace the holder started in.
//!
//! The child runs on a stack of its own and dies with its parent.
//!
//! Or holds an existing namespace NETNS (a path such as /run/netns/NAME) from outside it, with
//! a comm that is not UTF-8 (`hold\xffer`), for at most SECONDS:
//! - `fd`: an open file of the namespace;
//! - `socket`: a TCP socket listening on 127.0.0.1 that was made inside the namespace, after
//!   returning to its own;
//! - `thread`: a second thread that joined the namespace (setns) and waits there;
//!
//! and prints the fd's number (the thread's id) once it holds it. A line on stdin (or its end)
//! lets go (closes the fd, ends the thread): it prints `closed` and stays alive, holding
//! nothing, until killed or SECONDS passed.
//!
//! Usage: netns-holder vfork|vfork-here|clone SECONDS | netns-holder fd|socket|thread SECONDS
//! NETNS

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

fn open(path: &str) -> libc::c_int {
    let path = std::ffi::CString::new(path).unwrap_or_else(|_| fail("a NUL-free path"));
    // SAFETY: a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        fail("open");
    }
    fd
}

/// A listening TCP socket made inside `netns`, with this process back in its own namespace.
fn socket_in(netns: &str) -> libc::c_int {
    let own = open("/proc/self/ns/net");
    let target = open(netns);
    // SAFETY: plain syscalls on fds this process owns; the sockaddr is fully initialised.
    unsafe {
        if libc::setns(target, libc::CLONE_NEWNET) != 0 {
            fail("setns into the namespace");
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            fail("socket");
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&raw const addr).cast(), len) != 0 || libc::listen(fd, 1) != 0 {
            fail("bind/listen");
        }
        if libc::setns(own, libc::CLONE_NEWNET) != 0 {
            fail("setns back");
        }
        libc::close(own);
        libc::close(target);
        fd
    }
}

/// Holds a namespace from outside it (`shown` names the fd or thread holding it) until a line
/// on stdin, then lets go (`release`) and lives on until killed or `seconds` passed.
fn hold(shown: libc::c_int, release: impl FnOnce(), seconds: u32) -> ! {
    // SAFETY: plain syscalls; the name is NUL-terminated.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"hold\xffer".as_ptr());
        libc::alarm(seconds);
    }
    println!("{shown}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    release();
    println!("closed");
    loop {
        // SAFETY: plain syscall; SIGALRM (default action: end the process) ends it at the
        // latest.
        unsafe { libc::pause() };
    }
}

fn close(fd: libc::c_int) {
    // SAFETY: an fd this process owns, closed once.
    unsafe { libc::close(fd) };
}

/// A thread that joined `netns` and stays there until the returned closure ends it; its id.
fn thread_in(netns: &str) -> (libc::c_int, impl FnOnce()) {
    let target = open(netns);
    let (joined, tid) = std::sync::mpsc::channel();
    let (end, ended) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: plain syscalls on an fd this process owns, closed once.
        unsafe {
            if libc::setns(target, libc::CLONE_NEWNET) != 0 {
                fail("setns into the namespace");
            }
            libc::close(target);
            let _ = joined.send(libc::gettid());
        }
        let _ = ended.recv();
    });
    let tid = tid
        .recv()
        .unwrap_or_else(|_| fail("the thread joining the namespace"));
    (tid, move || {
        let _ = end.send(());
        let _ = thread.join();
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(120);
    let netns = args.get(3).map(String::as_str).unwrap_or("");
    let flags = match args.get(1).map(String::as_str) {
        Some("fd") => {
            let fd = open(netns);
            hold(fd, move || close(fd), seconds)
        }
        Some("socket") => {
            let fd = socket_in(netns);
            hold(fd, move || close(fd), seconds)
        }
        Some("thread") => {
            let (tid, leave) = thread_in(netns);
            hold(tid, leave, seconds)
        }
        Some("vfork") => {
            // SAFETY: plain syscall.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                fail("unshare(CLONE_NEWNET)");
            }
            libc::CLONE_VFORK | libc::CLONE_VM
        }
        // The same D state, in the namespace it started in (the node's).
        Some("vfork-here") => libc::CLONE_VFORK | libc::CLONE_VM,
        Some("clone") => libc::CLONE_NEWNET,
        _ => {
            eprintln!(
                "usage: netns-holder vfork|vfork-here|clone SECONDS | netns-holder fd|socket|thread SECONDS NETNS"
            );
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
