//! Network namespace files: finding them (/proc/PID/ns/net, nsfs bind mounts), opening one
//! safely, and doing something inside it. Which namespaces the node has, and every way into
//! each, is `tracers::netns::discover`'s.

use std::{
    fs::{self, File},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use nix::{
    fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag},
    sched::{setns, CloneFlags},
    sys::{
        stat::{fstat, Mode},
        statfs::{fstatfs, NSFS_MAGIC},
    },
};

use super::mountinfo;

/// Processes looked at, at most, so that a runaway fork bomb cannot stall a scan.
const MAX_PROCESSES: usize = 1_000_000;

/// A network namespace and the ways to open it again later, the most stable first: none
/// holds it meanwhile (no fd is kept), so keeping one does not keep the namespace alive.
#[derive(Clone, Debug)]
pub struct NetnsRef {
    pub inode: u64,
    pub ways: Vec<WayIn>,
}

/// One way to open a namespace.
#[derive(Clone, Debug)]
pub enum WayIn {
    /// A path that opens it from here: a bind mount in this mount namespace,
    /// /proc/PID/ns/net (or /proc/PID/task/TID/ns/net of a thread inside), or /proc/PID/fd/N
    /// of a process holding it open.
    Path(PathBuf),
    /// A bind mount in the mount namespace of `pid`, resolved inside that process's root.
    InRoot { pid: u32, point: PathBuf },
    /// Socket `fd` of process `pid`, made in the namespace: borrowed (pidfd_getfd) and asked
    /// for its namespace (SIOCGSKNS).
    Socket { pid: u32, fd: u32 },
}

impl WayIn {
    /// The namespace opened this way, if it is still the one with `inode`.
    pub fn open(&self, inode: u64) -> Result<File> {
        match self {
            WayIn::Path(path) => open_netns(path, inode),
            WayIn::InRoot { pid, point } => open_netns_in_root(*pid, point, inode),
            WayIn::Socket { pid, fd } => {
                let socket = super::procfd::Pidfd::open(*pid)
                    .and_then(|p| p.get_fd(*fd))
                    .with_context(|| format!("borrowing socket fd {fd} of process {pid}"))?;
                let (actual, netns) = super::sockets::socket_netns(socket.as_fd())
                    .with_context(|| format!("SIOCGSKNS on fd {fd} of process {pid}"))?;
                if actual != inode {
                    bail!("fd {fd} of process {pid} is now of namespace {actual}, not {inode}");
                }
                Ok(netns)
            }
        }
    }
}

impl NetnsRef {
    /// The namespace opened the first way that still works (the error of the last one when
    /// none does: it is gone, or only the kernel holds it).
    pub fn open(&self) -> Result<File> {
        let mut last = None;
        for way in &self.ways {
            match way.open(self.inode) {
                Ok(file) => return Ok(file),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            anyhow!(
                "network namespace {} has no way in (nothing in userspace holds it)",
                self.inode
            )
        }))
    }

    /// Its cookie.
    pub fn cookie(&self) -> Result<u64> {
        in_netns(&self.open()?, own_cookie)
    }
}

/// /proc/PID/ns/net.
pub fn net_ns_link(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// kthreadd's pid: kernel threads always live in the initial network namespace (the node's).
pub const KTHREADD: u32 = 2;

/// The inode of the initial network namespace, the node's own (pid 1's may not be readable:
/// some init processes refuse it even to root).
pub fn initial_net_ns() -> Option<u64> {
    net_ns_of(KTHREADD)
}

/// The inode of the network namespace of `pid`; `None` once it has exited (or is a zombie).
pub fn net_ns_of(pid: u32) -> Option<u64> {
    fs::metadata(net_ns_link(pid)).ok().map(|m| m.ino())
}

/// Every process id in /proc.
fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .take(MAX_PROCESSES)
}

/// `(pid, namespace inode)` of every process.
pub fn process_namespaces() -> Vec<(u32, u64)> {
    pids()
        .filter_map(|pid| Some((pid, net_ns_of(pid)?)))
        .collect()
}

/// `(mount point, namespace inode)` of every network-namespace bind mount in `mountinfo`:
/// nsfs mounts whose root is `net:[INODE]`. Mount points are raw bytes (octal escapes undone):
/// they are paths to open, escaped only when printed.
pub fn parse_netns_mounts(mountinfo: &[u8]) -> Vec<(Vec<u8>, u64)> {
    let mut mounts = Vec::new();
    for mount in mountinfo::parse(mountinfo) {
        if mount.fstype != "nsfs" {
            continue;
        }
        let inode = mount
            .root
            .strip_prefix("net:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse().ok());
        if let Some(inode) = inode {
            let point = mount.mount_point;
            if !mounts.contains(&(point.clone(), inode)) {
                mounts.push((point, inode));
            }
        }
    }
    mounts
}

/// Network-namespace bind mounts in the mount namespace of `pid` (`self` for ours); an error
/// when that process is gone or its mountinfo unreadable.
pub fn netns_mounts_of(pid: &str) -> std::io::Result<Vec<(Vec<u8>, u64)>> {
    Ok(parse_netns_mounts(&fs::read(format!(
        "/proc/{pid}/mountinfo"
    ))?))
}

/// `NS_GET_NSTYPE` (Linux 4.11): the `CLONE_NEW*` type of a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// If `path` opens a network namespace file (through a bind mount or a /proc fd link), its
/// inode.
pub fn netns_file_inode(path: &Path) -> Option<u64> {
    let file = reopen(&open_nsfs(path).ok()?).ok()?;
    // SAFETY: plain ioctl on a valid fd; nsfs answers it, any other file fails it.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    (kind == libc::CLONE_NEWNET).then(|| file.metadata().ok().map(|m| m.ino()))?
}

/// `path` opened with O_PATH, if it is a file on nsfs. O_PATH never opens the file itself: a
/// /proc/PID/fd link whose fd was closed and reused for a FIFO or a device since it was listed
/// neither blocks nor acts on the device. /proc's magic links (ns/net, fd/N) are followed: they
/// are how the namespace file is reached.
fn open_nsfs(path: &Path) -> Result<OwnedFd> {
    let fd = open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {}", path.display()))?;
    require_nsfs(fd, path)
}

fn require_nsfs(fd: OwnedFd, path: &Path) -> Result<OwnedFd> {
    if fstatfs(&fd)?.filesystem_type() != NSFS_MAGIC {
        bail!("{} is no longer a namespace file", path.display());
    }
    Ok(fd)
}

/// An O_PATH fd of a namespace file opened for reading, through /proc/self/fd: setns and ioctls
/// need a real open file. The fd is checked to be on nsfs first, so this open has no side
/// effect.
fn reopen(fd: &OwnedFd) -> Result<File> {
    File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).context("reopening a namespace file")
}

/// `fd`, reopened for setns, if it is the namespace with `inode`.
fn checked(fd: OwnedFd, path: &Path, inode: u64) -> Result<File> {
    let actual = fstat(&fd)?.st_ino;
    if actual != inode {
        bail!("{} is now namespace {actual}, not {inode}", path.display());
    }
    reopen(&fd)
}

/// The namespace file at `path` (a bind mount, /proc/PID/ns/net, /proc/PID/fd/N), opened, if it
/// is still the namespace with `inode`.
pub fn open_netns(path: &Path, inode: u64) -> Result<File> {
    checked(open_nsfs(path)?, path, inode)
}

/// The namespace file bind-mounted at `mount_point` in the mount namespace of `pid`, opened, if
/// it is still the namespace with `inode`. The path is resolved inside that process's root and
/// no symlink is followed: a symlink planted at an old mount point cannot lead elsewhere.
pub fn open_netns_in_root(pid: u32, mount_point: &Path, inode: u64) -> Result<File> {
    let shown = Path::new(&format!("/proc/{pid}/root"))
        .join(mount_point.strip_prefix("/").unwrap_or(mount_point));
    let root = open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening the root of process {pid}"))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(&root, mount_point, how)
        .with_context(|| format!("opening {} (openat2, Linux 5.6+)", shown.display()))?;
    checked(require_nsfs(fd, &shown)?, &shown, inode)
}

/// Runs `read` in a thread inside the namespace at `path` (a bind mount or /proc/PID/ns/net),
/// which must be the one with `inode`: a pid may have been reused since it was found.
pub fn in_namespace<T: Send>(
    path: &Path,
    inode: u64,
    read: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    in_netns(&open_netns(path, inode)?, read)
}

/// Runs `read` in a thread inside the namespace `netns` (an open namespace file).
pub fn in_netns<T: Send>(netns: &File, read: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    // Only this short-lived thread changes namespace; the tracer's own threads stay put.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .spawn_scoped(s, || {
                setns(netns, CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
                read()
            })
            .context("starting a thread to enter a namespace")?
            .join()
            .map_err(|_| anyhow!("reading a namespace: the reader thread panicked"))?
    })
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie of the socket's network namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace of socket `fd`.
pub fn socket_netns_cookie(fd: RawFd) -> Option<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd; the option value is a u64 and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// The cookie of the calling thread's network namespace.
pub fn own_cookie() -> Result<u64> {
    let socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket_netns_cookie(socket.as_raw_fd()).context("SO_NETNS_COOKIE (Linux 5.14+)")
}

/// The cookie of the namespace at `path`, which must be the one with `inode`.
pub fn cookie_of(path: &Path, inode: u64) -> Result<u64> {
    in_namespace(path, inode, own_cookie)
}

/// Reads `path` as seen from inside `netns`: `/proc/thread-self/net/...` shows that
/// namespace's network files, `/proc/sys/net/...` its sysctls.
pub fn read_in(netns: &NetnsRef, path: &'static str) -> Result<String> {
    in_netns(&netns.open()?, || {
        fs::read_to_string(path).with_context(|| format!("reading {path}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_net_nsfs_mounts_only() {
        let mountinfo = "\
22 28 0:4 / /proc rw,nosuid - proc proc rw
612 29 0:4 net:[4026532290] /run/netns/a rw shared:5 - nsfs nsfs rw
613 29 0:4 net:[4026532290] /run/netns/a rw shared:5 - nsfs nsfs rw
614 29 0:4 mnt:[4026532291] /run/mnt-ns rw - nsfs nsfs rw
615 29 0:4 net:[4026532300] /var/run/with\\040space rw - nsfs nsfs rw";
        assert_eq!(
            parse_netns_mounts(mountinfo.as_bytes()),
            [
                (b"/run/netns/a".to_vec(), 4026532290),
                (b"/var/run/with space".to_vec(), 4026532300)
            ]
        );
    }

    /// A /proc fd link that names a FIFO (an fd closed and reused since the scan listed it)
    /// is never opened for real: an open would block until a writer comes.
    #[test]
    fn fifo_behind_an_fd_link_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("tracer-fifo-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        // O_RDWR|O_NONBLOCK: held open here without a peer; reopening it O_RDONLY would block.
        let held = open(&fifo, OFlag::O_RDWR | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
        let link = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let (tx, rx) = std::sync::mpsc::channel();
        let checker = std::thread::spawn(move || {
            let by_fd = netns_file_inode(&link);
            let by_path = open_netns(&link, own).is_err();
            tx.send((by_fd, by_path)).unwrap();
        });
        let outcome = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            outcome.expect("the check returned within 5 s"),
            (None, true)
        );
        checker.join().unwrap();
    }

    /// A symlink planted at a mount point in another root is not followed, even to a real
    /// namespace file.
    #[test]
    fn symlink_in_a_root_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("tracer-link-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("netns");
        std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let through_link = open_netns_in_root(std::process::id(), &link, own);
        let direct = open_netns_in_root(std::process::id(), Path::new("/proc/self/ns/net"), own);
        fs::remove_dir_all(&dir).unwrap();
        assert!(through_link.is_err(), "followed a symlink");
        // /proc/self/ns/net is a magic link: refused too. A plain path to nsfs works.
        assert!(direct.is_err(), "followed a magic link");
        assert!(open_netns(Path::new("/proc/self/ns/net"), own).is_ok());
    }

    #[test]
    fn reads_inside_a_namespace_the_first_way_that_works() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let netns = NetnsRef {
            inode: own,
            ways: vec![
                WayIn::Path("/nonexistent/netns".into()),
                WayIn::Path(net_ns_link(std::process::id())),
            ],
        };
        let dev = read_in(&netns, "/proc/thread-self/net/dev").unwrap();
        assert!(dev.contains("lo:"), "{dev}");
        let lost = NetnsRef {
            ways: vec![WayIn::Path(net_ns_link(std::process::id()))],
            inode: own + 1,
        };
        assert!(lost.open().is_err(), "another namespace taken for it");
    }
}
