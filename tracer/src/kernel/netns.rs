//! Finding the node's network namespaces (through every process's /proc/PID/ns/net and every
//! nsfs bind mount: `ip netns`, container runtimes, kubelet), and doing something inside one.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use nix::sched::{setns, CloneFlags};

use super::mountinfo;

/// Processes looked at, at most, so that a runaway fork bomb cannot stall a scan.
const MAX_PROCESSES: usize = 1_000_000;

/// A file that refers to a network namespace: `/proc/PID/ns/net` or an nsfs bind mount such as
/// `/run/netns/NAME`.
#[derive(Clone, Debug)]
pub struct NetnsRef {
    pub inode: u64,
    pub path: PathBuf,
}

/// /proc/PID/ns/net.
pub fn net_ns_link(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
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

/// Network-namespace bind mounts visible in this mount namespace.
pub fn netns_mounts() -> Vec<(Vec<u8>, u64)> {
    netns_mounts_of("self").unwrap_or_default()
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
    // Only a file on nsfs is opened: opening a FIFO or a device could block or act on it.
    let nsfs = fs::metadata("/proc/self/ns/net").ok()?.dev();
    if fs::metadata(path).ok()?.dev() != nsfs {
        return None;
    }
    let file = File::open(path).ok()?;
    // SAFETY: plain ioctl on a valid fd; nsfs answers it, any other file fails it.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    (kind == libc::CLONE_NEWNET).then(|| file.metadata().ok().map(|m| m.ino()))?
}

/// Every network namespace reachable through a bind mount or a process, by inode.
pub fn discover() -> BTreeMap<u64, NetnsRef> {
    let mut found = BTreeMap::new();
    for (point, inode) in netns_mounts() {
        found.entry(inode).or_insert(NetnsRef {
            inode,
            path: super::procfd::path_of(&point),
        });
    }
    for (pid, inode) in process_namespaces() {
        found.entry(inode).or_insert(NetnsRef {
            inode,
            path: net_ns_link(pid),
        });
    }
    found
}

/// Runs `read` in a thread inside the namespace at `path` (a bind mount or /proc/PID/ns/net),
/// which must be the one with `inode`: a pid may have been reused since it was found.
pub fn in_namespace<T: Send>(
    path: &Path,
    inode: u64,
    read: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let actual = file.metadata()?.ino();
    if actual != inode {
        bail!("{} is now namespace {actual}, not {inode}", path.display());
    }
    // Only this short-lived thread changes namespace; the tracer's own threads stay put.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .spawn_scoped(s, || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {}", path.display()))?;
                read()
            })
            .with_context(|| format!("starting a thread to enter namespace {inode}"))?
            .join()
            .map_err(|_| anyhow!("reading namespace {inode}: the reader thread panicked"))?
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
    in_namespace(&netns.path, netns.inode, || {
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

    #[test]
    fn finds_own_namespace_and_reads_inside_it() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let all = discover();
        let dev = read_in(&all[&own], "/proc/thread-self/net/dev").unwrap();
        assert!(dev.contains("lo:"), "{dev}");
    }
}
