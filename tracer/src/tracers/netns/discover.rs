//! Finding the network namespaces alive on the node from userspace, and what holds each one:
//! processes inside (/proc/PID/ns/net), open namespace files and sockets in processes of other
//! namespaces (/proc/PID/fd), nsfs bind mounts in every mount namespace (`ip netns`,
//! container runtimes, kubelet, systemd units with private mounts), and threads that joined a
//! namespace their process is not in (/proc/PID/task/TID/ns/net).
//!
//! A socket's namespace is asked of the kernel with `SIOCGSKNS` on a copy of the fd borrowed
//! with pidfd_getfd: exact for every socket family, and no kernel program is needed for a
//! snapshot. The cost is a few syscalls per socket; other fds cost one readlink.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
    sync::{Mutex, PoisonError},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    clock::Clock,
    kernel::{
        netns::{
            net_ns_link, net_ns_of, netns_file_inode, netns_mounts_of, process_namespaces,
            socket_netns_cookie, NetnsRef, WayIn,
        },
        procfd::{fd_path, fds, path_of, Link, Pidfd},
        sockets::{
            describe, namespace_socket_inodes, socket_netns, SocketInfo, SOCKET_TABLE_TIERS,
        },
    },
    text::escape,
};

/// A process inside a namespace.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    /// Scheduler state letter from /proc/PID/stat (`R`, `S`, `D`, `Z`, ...).
    pub state: String,
    /// The kernel function a sleeping process waits in (/proc/PID/wchan), when known.
    pub wchan: Option<String>,
    /// For a process in uninterruptible sleep (`D`): its kernel stack, innermost first, when
    /// this kernel shows it (/proc/PID/stack, root only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<Vec<String>>,
    /// For a `D` process: how long since it last ran, i.e. how long it has been blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_ms: Option<u64>,
}

/// A process holding an open file of the namespace (opened from /proc/PID/ns/net or a bind
/// mount, as CNI plugins and network agents do), while living in another one.
#[derive(Clone, Debug, Serialize)]
pub struct FileHolder {
    pub pid: u32,
    pub comm: String,
    pub fd: u32,
}

/// A socket created in the namespace and open in a process that lives in another one.
#[derive(Clone, Debug, Serialize)]
pub struct SocketHolder {
    pub pid: u32,
    pub comm: String,
    pub fd: u32,
    #[serde(flatten)]
    pub socket: SocketInfo,
}

/// A thread that joined the namespace (setns) while its process stays in another one: a CNI
/// plugin mid-setup, or a runtime thread left behind in a namespace it never left.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadHolder {
    pub pid: u32,
    pub tid: u32,
    /// The thread's own name (/proc/PID/task/TID/comm), escaped.
    pub comm: String,
}

impl ThreadHolder {
    pub fn as_ref(&self) -> HolderRef {
        HolderRef {
            kind: "thread",
            pid: Some(self.pid),
            comm: Some(self.comm.clone()),
            what: format!("tid {}", self.tid),
        }
    }

    /// /proc/PID/task/TID/ns/net.
    pub fn link(&self) -> std::path::PathBuf {
        format!("/proc/{}/task/{}/ns/net", self.pid, self.tid).into()
    }
}

/// A bind mount of the namespace file, in any mount namespace.
#[derive(Clone, Debug, Serialize)]
pub struct BindMount {
    /// The mount point, escaped for printing.
    pub path: String,
    /// The mount namespace it is in, and a process living there (another than the tracer,
    /// where there is one).
    pub mount_ns: u64,
    pub pid: u32,
    /// The mount point's bytes, to open.
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// Whether it is in the tracer's own mount namespace (reachable by its path).
    #[serde(skip)]
    pub own: bool,
}

impl BindMount {
    /// How to open the namespace file it mounts: by its own path, or resolved inside the root
    /// of a process of its mount namespace.
    pub fn way(&self) -> WayIn {
        let point = path_of(&self.raw);
        if self.own {
            WayIn::Path(point)
        } else {
            WayIn::InRoot {
                pid: self.pid,
                point,
            }
        }
    }

    /// The namespace file it mounts, opened if it is still namespace `inode`.
    pub fn open(&self, inode: u64) -> anyhow::Result<File> {
        self.way().open(inode)
    }
}

/// A holder as a flag names it: its kind, the process behind it, and what it is.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HolderRef {
    /// `process`, `file`, `socket`, `bind mount`, `thread` or `kernel`.
    pub kind: &'static str,
    /// The process holding it (for a bind mount: a process of its mount namespace).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `fd 3`, `fd 5 (tcp 10.0.0.1:80 -> 10.0.0.2:4242 ESTABLISHED)`, a mount point...
    pub what: String,
}

impl HolderRef {
    pub fn process(h: &Holder) -> Self {
        Self {
            kind: "process",
            pid: Some(h.pid),
            comm: Some(h.comm.clone()),
            what: format!("state {}", h.state),
        }
    }

    /// `file fd 3 of cni(42)`, `bind mount /run/netns/x (mount ns 4026531841)`.
    pub fn describe(&self) -> String {
        let who = match (&self.comm, self.pid) {
            (Some(comm), Some(pid)) => format!(" of {comm}({pid})"),
            _ => String::new(),
        };
        format!("{} {}{who}", self.kind, self.what)
    }
}

impl FileHolder {
    pub fn as_ref(&self) -> HolderRef {
        HolderRef {
            kind: "file",
            pid: Some(self.pid),
            comm: Some(self.comm.clone()),
            what: format!("fd {}", self.fd),
        }
    }
}

impl SocketHolder {
    pub fn as_ref(&self) -> HolderRef {
        HolderRef {
            kind: "socket",
            pid: Some(self.pid),
            comm: Some(self.comm.clone()),
            what: format!("fd {} ({})", self.fd, self.socket),
        }
    }
}

impl BindMount {
    pub fn as_ref(&self) -> HolderRef {
        HolderRef {
            kind: "bind mount",
            // The mount namespace holds it, not the process it was reached through.
            pid: None,
            comm: None,
            what: format!("{} (mount ns {})", self.path, self.mount_ns),
        }
    }
}

/// One namespace as found: its inode and everything in userspace that holds it.
#[derive(Debug, Default)]
pub struct Found {
    pub inode: u64,
    /// Processes inside.
    pub holders: Vec<Holder>,
    pub files: Vec<FileHolder>,
    pub sockets: Vec<SocketHolder>,
    pub mounts: Vec<BindMount>,
    /// Threads inside whose process is not.
    pub threads: Vec<ThreadHolder>,
    /// The namespace opened from one of its sockets: a way in when nothing else is left.
    via_socket: Option<File>,
}

impl Found {
    /// Every way into it that can be taken again later, the most stable first: a bind mount
    /// here, a process inside, an open file, a thread inside, a bind mount elsewhere, a socket.
    pub fn netns_ref(&self) -> NetnsRef {
        let (own, other): (Vec<_>, Vec<_>) = self.mounts.iter().partition(|m| m.own);
        let ways = own
            .into_iter()
            .map(BindMount::way)
            .chain(self.holders.iter().map(|h| WayIn::Path(net_ns_link(h.pid))))
            .chain(self.files.iter().map(|f| WayIn::Path(fd_path(f.pid, f.fd))))
            .chain(self.threads.iter().map(|t| WayIn::Path(t.link())))
            .chain(other.into_iter().map(BindMount::way))
            .chain(self.sockets.iter().map(|s| WayIn::Socket {
                pid: s.pid,
                fd: s.fd,
            }))
            .collect();
        NetnsRef {
            inode: self.inode,
            ways,
        }
    }

    /// The namespace opened, each way it can be, the most stable first (lazily: the caller
    /// stops at the first that works), and last through the socket the scan opened it from.
    /// Each is checked to still be this namespace.
    pub fn ways_in(&self) -> impl Iterator<Item = anyhow::Result<File>> + '_ {
        let netns = self.netns_ref();
        (0..netns.ways.len())
            .map(move |i| netns.ways[i].open(netns.inode))
            .chain(
                self.via_socket
                    .iter()
                    .map(|f| f.try_clone().context("duplicating a namespace fd")),
            )
    }

    /// Its holders other than processes inside.
    pub fn held(&self) -> Vec<HolderRef> {
        self.files
            .iter()
            .map(FileHolder::as_ref)
            .chain(self.sockets.iter().map(SocketHolder::as_ref))
            .chain(self.mounts.iter().map(BindMount::as_ref))
            .chain(self.threads.iter().map(ThreadHolder::as_ref))
            .collect()
    }

    /// The kinds of holder it has: `process`, `file`, `socket`, `bind mount`, `thread`.
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            ("process", self.holders.is_empty()),
            ("file", self.files.is_empty()),
            ("socket", self.sockets.is_empty()),
            ("bind mount", self.mounts.is_empty()),
            ("thread", self.threads.is_empty()),
        ]
        .into_iter()
        .filter(|(_, none)| !none)
        .map(|(kind, _)| kind)
        .collect()
    }

    fn at(found: &mut BTreeMap<u64, Found>, inode: u64) -> &mut Found {
        let entry = found.entry(inode).or_default();
        entry.inode = inode;
        entry
    }
}

/// `comm` and state letter from /proc/PID/stat. The comm is in parentheses and may itself
/// contain them (or any byte but NUL), so the last `)` ends it.
fn parse_stat(stat: &[u8]) -> Option<(String, String)> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = escape(stat.get(open + 1..close)?);
    let state = std::str::from_utf8(stat.get(close + 1..)?)
        .ok()?
        .split_whitespace()
        .next()?
        .to_string();
    Some((comm, state))
}

/// `se.exec_start` of /proc/PID/sched: when the task last started running, in ms of the
/// scheduler clock (which counts like CLOCK_MONOTONIC).
fn parse_exec_start_ms(sched: &str) -> Option<f64> {
    sched
        .lines()
        .find_map(|l| l.strip_prefix("se.exec_start"))
        .and_then(|v| v.trim_start_matches([' ', ':']).trim().parse().ok())
}

/// Function names of /proc/PID/stack lines (`[<0>] do_wait+0x5c/0x90`).
fn parse_stack(stack: &str) -> Vec<String> {
    stack
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| escape(f.as_bytes()))
        .collect()
}

fn read_proc(pid: u32, file: &str) -> Option<Vec<u8>> {
    fs::read(Path::new("/proc").join(pid.to_string()).join(file)).ok()
}

fn read_proc_text(pid: u32, file: &str) -> Option<String> {
    String::from_utf8(read_proc(pid, file)?).ok()
}

/// What /proc says about `pid`; `None` if it is gone.
pub fn holder(pid: u32) -> Option<Holder> {
    let (comm, state) = parse_stat(&read_proc(pid, "stat")?)?;
    let wchan = read_proc(pid, "wchan").filter(|w| !w.is_empty() && w != b"0");
    // Only a blocked holder's stack and time asleep are shown: not read for the others.
    let blocked = state == "D";
    let stack = blocked
        .then(|| read_proc_text(pid, "stack"))
        .flatten()
        .map(|s| parse_stack(&s))
        .filter(|s| !s.is_empty());
    let blocked_ms = blocked
        .then(|| read_proc_text(pid, "sched"))
        .flatten()
        .and_then(|s| parse_exec_start_ms(&s))
        .map(|ms| (Clock::monotonic_now_ns() as f64 / 1e6 - ms).max(0.0) as u64);
    Some(Holder {
        pid,
        comm,
        state,
        wchan: wchan.map(|w| escape(&w)),
        stack,
        blocked_ms,
    })
}

/// The escaped comm of `pid` (`?` once it is gone).
fn comm_of(pid: u32) -> String {
    read_proc(pid, "comm").map_or_else(
        || "?".into(),
        |c| escape(c.strip_suffix(b"\n").unwrap_or(&c)),
    )
}

/// The inode of the namespace file /proc/PID/ns/KIND.
fn ns_inode(pid: u32, kind: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

/// Every process with its network and mount namespaces.
struct Process {
    pid: u32,
    net: u64,
    mnt: Option<u64>,
}

/// Bind mounts of network namespaces in every mount namespace some process lives in: one
/// mountinfo read per mount namespace (from the first of its processes that can still be read).
fn bind_mounts(processes: &[Process], found: &mut BTreeMap<u64, Found>) -> HashSet<Vec<u8>> {
    let own_pid = std::process::id();
    let own = ns_inode(own_pid, "mnt");
    let mut by_ns: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for p in processes {
        if let Some(mnt) = p.mnt {
            by_ns.entry(mnt).or_default().push(p.pid);
        }
    }
    let mut points = HashSet::new();
    for (mnt, pids) in by_ns {
        let Some((pid, mounts)) = (if Some(mnt) == own {
            // Ours is read as this process sees it (its paths are opened from here), and named
            // after another process living there when there is one.
            let named = pids.into_iter().find(|&p| p != own_pid).unwrap_or(own_pid);
            netns_mounts_of("self").ok().map(|m| (named, m))
        } else {
            // A mount namespace whose processes all left while it was read is skipped.
            pids.into_iter()
                .find_map(|pid| Some((pid, netns_mounts_of(&pid.to_string()).ok()?)))
        }) else {
            continue;
        };
        for (raw, inode) in mounts {
            points.insert(raw.clone());
            Found::at(found, inode).mounts.push(BindMount {
                path: escape(&raw),
                mount_ns: mnt,
                pid,
                raw,
                own: Some(mnt) == own,
            });
        }
    }
    points
}

/// One scanning thread's findings and what it learnt on the way.
#[derive(Default)]
struct Scan {
    found: BTreeMap<u64, Found>,
    /// Namespace inodes by cookie: `SO_NETNS_COOKIE` on a socket is one cheap getsockopt,
    /// `SIOCGSKNS` opens a file; it is asked once per namespace.
    inodes: HashMap<u64, u64>,
    /// Sockets that could not be borrowed (EPERM, EACCES): what they hold is unknown.
    uninspectable: usize,
}

impl Scan {
    /// The inode of socket `fd`'s namespace, and the namespace opened if that was needed.
    fn socket_ns(&mut self, fd: BorrowedFd<'_>) -> Option<(u64, Option<File>)> {
        let cookie = socket_netns_cookie(fd.as_raw_fd());
        if let Some(inode) = cookie.and_then(|c| self.inodes.get(&c)) {
            return Some((*inode, None));
        }
        let (inode, netns) = socket_netns(fd).ok()?;
        if let Some(cookie) = cookie {
            self.inodes.insert(cookie, inode);
        }
        Some((inode, Some(netns)))
    }

    /// The fds of `process` that hold a network namespace other than its own: open namespace
    /// files and sockets. `mount_points` are the paths of nsfs bind mounts: an fd opened
    /// through one shows that path (or `/` once it is unmounted) instead of `net:[INODE]`.
    /// `tables` are the socket inodes each namespace lists: a socket its own namespace lists is
    /// not borrowed (pidfd_getfd sets the socket's net_cls/net_prio cgroup v1 tags to the
    /// tracer's); none: sockets are not looked at.
    fn fd_holders(
        &mut self,
        process: &Process,
        mount_points: &HashSet<Vec<u8>>,
        tables: Option<&SocketTables>,
    ) {
        let pid = process.pid;
        // The pidfd comes first: if the process is still alive after its fds were listed, the
        // list was its own and not that of a process reusing its pid.
        let pidfd = Pidfd::open(pid);
        // Unreadable (EACCES, gone): skipped; the namespaces it holds may be found another way.
        let Ok(fds) = fds(pid) else { return };
        let Some(pidfd) = pidfd.ok().filter(Pidfd::alive) else {
            return;
        };
        let mut comm = None;
        for (fd, link) in fds {
            let inode = match link {
                Link::Netns(inode) => Some(inode),
                Link::Other(path) if path == b"/" || mount_points.contains(&path) => {
                    netns_file_inode(&fd_path(pid, fd))
                }
                Link::Other(_) => None,
                Link::Socket(socket) => {
                    match tables {
                        None => continue,
                        Some(tables) if tables.lists(process.net, socket) => continue,
                        Some(_) => {}
                    }
                    let socket = match pidfd.get_fd(fd) {
                        Ok(socket) => socket,
                        Err(e) => {
                            // Not ours to borrow (a process of another user namespace, an LSM)
                            // is counted; closed since it was listed is not.
                            if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                                self.uninspectable += 1;
                            }
                            continue;
                        }
                    };
                    let Some((inode, netns)) = self.socket_ns(socket.as_fd()) else {
                        continue;
                    };
                    if inode == process.net {
                        continue;
                    }
                    let entry = Found::at(&mut self.found, inode);
                    entry.sockets.push(SocketHolder {
                        pid,
                        comm: comm.get_or_insert_with(|| comm_of(pid)).clone(),
                        fd,
                        socket: describe(socket.as_fd()),
                    });
                    if entry.via_socket.is_none() {
                        entry.via_socket =
                            netns.or_else(|| socket_netns(socket.as_fd()).ok().map(|(_, f)| f));
                    }
                    continue;
                }
            };
            if let Some(inode) = inode.filter(|&i| i != process.net) {
                Found::at(&mut self.found, inode).files.push(FileHolder {
                    pid,
                    comm: comm.get_or_insert_with(|| comm_of(pid)).clone(),
                    fd,
                });
            }
        }
    }

    /// The threads of `process` in another namespace than its own (the leader's).
    fn threads(&mut self, process: &Process) {
        let pid = process.pid;
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        for task in tasks.flatten().take(MAX_TASKS) {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let thread = ThreadHolder {
                pid,
                tid,
                comm: String::new(),
            };
            let Some(net) = fs::metadata(thread.link()).ok().map(|m| m.ino()) else {
                continue;
            };
            if tid == pid || net == process.net {
                continue;
            }
            let comm = read_proc(pid, &format!("task/{tid}/comm")).map_or_else(
                || "?".into(),
                |c| escape(c.strip_suffix(b"\n").unwrap_or(&c)),
            );
            Found::at(&mut self.found, net)
                .threads
                .push(ThreadHolder { comm, ..thread });
        }
    }

    /// Processes inside their namespaces, and what their fds hold.
    fn processes(
        &mut self,
        processes: &[Process],
        mount_points: &HashSet<Vec<u8>>,
        tables: Option<&SocketTables>,
    ) {
        let own = std::process::id();
        for process in processes {
            if let Some(h) = holder(process.pid) {
                Found::at(&mut self.found, process.net).holders.push(h);
            }
            // Our own fds and threads are the scans': the namespaces they opened and entered.
            if process.pid != own {
                self.threads(process);
                self.fd_holders(process, mount_points, tables);
            }
        }
    }
}

/// Threads of one process looked at, at most.
const MAX_TASKS: usize = 100_000;

/// Threads that scan processes at most: the scan is syscalls, one per fd at least.
const MAX_THREADS: usize = 4;

fn processes() -> Vec<Process> {
    process_namespaces()
        .into_iter()
        .map(|(pid, net)| Process {
            pid,
            net,
            mnt: ns_inode(pid, "mnt"),
        })
        .collect()
}

/// The socket inodes each namespace lists, read when a socket fd must be placed, one tier of
/// tables after the other (TCP's, the costly one, only when the others do not list it),
/// through the first of the namespace's processes that stays in it while they are read.
struct SocketTables {
    namespaces: HashMap<u64, Mutex<Listing>>,
}

/// One namespace's tables as far as read.
#[derive(Default)]
struct Listing {
    /// Processes inside, to read them through.
    pids: Vec<u32>,
    inodes: HashSet<u64>,
    /// Tiers of [`SOCKET_TABLE_TIERS`] read.
    tiers_read: usize,
}

impl SocketTables {
    fn new(processes: &[Process]) -> Self {
        let mut namespaces: HashMap<u64, Mutex<Listing>> = HashMap::new();
        for p in processes {
            namespaces
                .entry(p.net)
                .or_default()
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .pids
                .push(p.pid);
        }
        Self { namespaces }
    }

    /// Whether namespace `net`'s tables list `socket`.
    fn lists(&self, net: u64, socket: u64) -> bool {
        let Some(listing) = self.namespaces.get(&net) else {
            return false;
        };
        let mut listing = listing.lock().unwrap_or_else(PoisonError::into_inner);
        while !listing.inodes.contains(&socket) {
            let Some(tier) = SOCKET_TABLE_TIERS.get(listing.tiers_read) else {
                return false;
            };
            listing.tiers_read += 1;
            let through = listing.pids.iter().find_map(|&pid| {
                let inodes = namespace_socket_inodes(pid, tier);
                (net_ns_of(pid) == Some(net)).then_some(inodes)
            });
            listing.inodes.extend(through.unwrap_or_default());
        }
        true
    }
}

/// What the scan found, and how many sockets it could not look at.
pub struct Scanned {
    pub found: BTreeMap<u64, Found>,
    /// Sockets not borrowed (EPERM, EACCES): the namespaces they hold may be missing.
    pub uninspectable: usize,
}

/// Every network namespace held from userspace, by inode: by a process inside, an open file,
/// a socket or a bind mount in any mount namespace. Processes, fds and mount namespaces that
/// vanish while they are read are skipped.
pub fn all() -> Scanned {
    scan(true)
}

/// [`all`], with sockets or without (they cost the scan most: every namespace's socket tables
/// are read, and each socket of another namespace borrowed).
fn scan(sockets: bool) -> Scanned {
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    let processes = processes();
    let mount_points = bind_mounts(&processes, &mut found);
    let tables = sockets.then(|| SocketTables::new(&processes));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS);
    let chunk = processes.len().div_ceil(threads).max(1);
    let scans: Vec<Scan> = std::thread::scope(|s| {
        let workers: Vec<_> = processes
            .chunks(chunk)
            .map(|part| {
                let (mount_points, tables) = (&mount_points, tables.as_ref());
                s.spawn(move || {
                    let mut scan = Scan::default();
                    scan.processes(part, mount_points, tables);
                    scan
                })
            })
            .collect();
        // A worker that panicked loses its part of the scan, not the snapshot.
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    let uninspectable = scans.iter().map(|s| s.uninspectable).sum();
    // In pid order: the chunks are consecutive.
    for scan in scans {
        for (inode, part) in scan.found {
            let entry = Found::at(&mut found, inode);
            entry.holders.extend(part.holders);
            entry.files.extend(part.files);
            entry.sockets.extend(part.sockets);
            entry.mounts.extend(part.mounts);
            entry.threads.extend(part.threads);
            if entry.via_socket.is_none() {
                entry.via_socket = part.via_socket;
            }
        }
    }
    Scanned {
        found,
        uninspectable,
    }
}

/// Every network namespace held from userspace, with every way into it (see [`all`]); the
/// namespaces the scan opened are closed again. What `conntrack-drops` and `probe` enter.
/// Without `sockets`, a namespace that only sockets hold is missed, for a scan that costs
/// little more than listing every process's fds.
pub fn namespaces(sockets: bool) -> BTreeMap<u64, NetnsRef> {
    scan(sockets)
        .found
        .into_iter()
        .map(|(inode, found)| (inode, found.netns_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_stat(b"42 (my (odd) comm) D 1 42 42 0"),
            Some(("my (odd) comm".into(), "D".into()))
        );
        // A comm that is not UTF-8 is escaped, not a reason to drop the process.
        assert_eq!(
            parse_stat(b"43 (bad\xff\ncomm) S 1"),
            Some(("bad\\xff\\ncomm".into(), "S".into()))
        );
        let sched = "sleep (1, #threads: 1)\n---\nse.exec_start   :   1225877.400704\n";
        assert_eq!(parse_exec_start_ms(sched), Some(1225877.400704));
        assert_eq!(
            parse_stack("[<0>] kernel_clone+0x1/0x2\n[<0>] __x64_sys_vfork+0x3/0x4\n"),
            ["kernel_clone+0x1/0x2", "__x64_sys_vfork+0x3/0x4"]
        );
    }

    #[test]
    fn own_namespace_is_found_with_this_process() {
        let own = crate::kernel::netns::net_ns_of(std::process::id()).expect("own namespace");
        let all = all().found;
        let ns = all.get(&own).expect("own namespace listed");
        assert!(ns.holders.iter().any(|h| h.pid == std::process::id()));
    }
}
