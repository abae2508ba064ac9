//! Another process's open files: what /proc/PID/fd says each one is, and borrowing one with
//! pidfd_getfd(2) to ask the kernel about it (a socket's namespace, its addresses).

use std::{
    ffi::{CString, OsStr},
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::PathBuf,
};

/// Descriptors looked at per process, at most: a bound on a process with a runaway fd table.
const MAX_FDS: usize = 1_000_000;

/// What an fd's /proc link says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// `net:[INODE]`: a network namespace file opened through /proc/PID/ns/net.
    Netns(u64),
    /// `socket:[INODE]`.
    Socket(u64),
    /// Anything else: a path (possibly of an nsfs bind mount), a pipe, an anon inode...
    Other(Vec<u8>),
}

/// `/proc/PID/fd/FD`: opening or stat'ing it reaches the open file itself.
pub fn fd_path(pid: u32, fd: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/fd/{fd}"))
}

fn classify(link: &[u8]) -> Link {
    let inode = |prefix: &[u8]| {
        link.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(b"]"))
            .and_then(|i| std::str::from_utf8(i).ok()?.parse().ok())
    };
    if let Some(inode) = inode(b"net:[") {
        Link::Netns(inode)
    } else if let Some(inode) = inode(b"socket:[") {
        Link::Socket(inode)
    } else {
        Link::Other(link.to_vec())
    }
}

/// Every open fd of `pid` with what its link says. An fd closed while the directory is read is
/// left out; an unreadable directory (EACCES, the process gone) is an error for the caller to
/// skip.
pub fn fds(pid: u32) -> io::Result<Vec<(u32, Link)>> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    // Links are read relative to the directory: no path walk through /proc per fd.
    let handle = fs::File::open(&dir)?;
    let mut out = Vec::new();
    let mut buf = [0u8; libc::PATH_MAX as usize];
    for entry in fs::read_dir(&dir)?.take(MAX_FDS) {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(fd) = name.to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(name) = CString::new(name.as_bytes()) else {
            continue;
        };
        // SAFETY: valid directory fd and C string; the kernel writes at most `buf.len()` bytes.
        let n = unsafe {
            libc::readlinkat(
                handle.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if let Ok(n) = usize::try_from(n) {
            out.push((fd, classify(&buf[..n])));
        }
    }
    Ok(out)
}

/// A pidfd: a handle on one process that cannot be confused with a later one reusing its pid.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    pub fn open(pid: u32) -> io::Result<Self> {
        // SAFETY: plain syscall; on success it returns a new fd that we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by no one else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// A duplicate, in this process, of the process's descriptor `fd` (pidfd_getfd, Linux 5.6;
    /// needs the right to ptrace it).
    pub fn get_fd(&self, fd: u32) -> io::Result<OwnedFd> {
        // SAFETY: plain syscall; on success it returns a new fd that we own.
        let dup = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                self.0.as_raw_fd(),
                fd as libc::c_int,
                0,
            )
        };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
    }

    /// Whether the process is still running: while it is, its pid names no other process.
    pub fn alive(&self) -> bool {
        // SAFETY: plain syscall; signal 0 only checks that the process exists.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

/// `path` as raw bytes, for the bytes of a mount point or a link.
pub fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_links() {
        assert_eq!(classify(b"net:[4026531840]"), Link::Netns(4026531840));
        assert_eq!(classify(b"socket:[123]"), Link::Socket(123));
        assert_eq!(classify(b"net:[x]"), Link::Other(b"net:[x]".to_vec()));
        assert_eq!(classify(b"/run/a b"), Link::Other(b"/run/a b".to_vec()));
    }

    #[test]
    fn own_fds_are_listed_and_borrowed() {
        let ns = fs::File::open("/proc/self/ns/net").unwrap();
        let own = std::process::id();
        let listed = fds(own).unwrap();
        let fd = ns.as_raw_fd() as u32;
        let inode = fs::metadata("/proc/self/ns/net").unwrap();
        assert!(
            listed.contains(&(fd, Link::Netns(std::os::unix::fs::MetadataExt::ino(&inode)))),
            "{listed:?}"
        );
        let dup = Pidfd::open(own).unwrap().get_fd(fd).unwrap();
        assert_ne!(dup.as_raw_fd(), ns.as_raw_fd());
    }
}
