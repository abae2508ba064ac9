//! Finding the network namespaces alive on the node from userspace: every process's
//! /proc/PID/ns/net, and every nsfs bind mount in /proc/self/mountinfo (`ip netns`, container
//! runtimes, kubelet). A namespace nobody holds in either way is being torn down and is not
//! visible here.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{clock::Clock, text::escape};

/// Processes looked at, at most, so that a runaway fork bomb cannot stall the snapshot.
const MAX_PROCESSES: usize = 1_000_000;

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

/// One namespace as found: its inode, who is inside, where it is mounted.
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub inode: u64,
    pub holders: Vec<Holder>,
    /// Bind mounts of the namespace, as mount points.
    pub mounts: Vec<String>,
}

impl Found {
    /// Paths through which the namespace can be entered, the most stable first.
    pub fn entry_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.mounts
            .iter()
            .map(PathBuf::from)
            .chain(self.holders.iter().map(|h| net_ns_link(h.pid)))
    }
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

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_point(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    escape(&out)
}

/// `(mount point, namespace inode)` of every network-namespace bind mount in `mountinfo`:
/// nsfs mounts whose root is `net:[INODE]`.
pub fn parse_netns_mounts(mountinfo: &str) -> Vec<(String, u64)> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("nsfs") {
            continue;
        }
        let mut fields = left.split(' ');
        let (Some(root), Some(point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        let inode = root
            .strip_prefix("net:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse().ok());
        if let Some(inode) = inode {
            let point = unescape_mount_point(point);
            if !mounts.contains(&(point.clone(), inode)) {
                mounts.push((point, inode));
            }
        }
    }
    mounts
}

/// Network-namespace bind mounts visible in this mount namespace.
pub fn netns_mounts() -> Vec<(String, u64)> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| parse_netns_mounts(&m))
        .unwrap_or_default()
}

/// `comm` and state letter from the text of /proc/PID/stat. The comm is in parentheses and
/// may itself contain them, so the last `)` ends it.
fn parse_stat(stat: &str) -> Option<(String, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = escape(stat.get(open + 1..close)?.as_bytes());
    let state = stat
        .get(close + 1..)?
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

fn read_proc(pid: u32, file: &str) -> Option<String> {
    fs::read_to_string(Path::new("/proc").join(pid.to_string()).join(file)).ok()
}

/// What /proc says about `pid`; `None` if it is gone.
pub fn holder(pid: u32) -> Option<Holder> {
    let (comm, state) = parse_stat(&read_proc(pid, "stat")?)?;
    let wchan = read_proc(pid, "wchan").filter(|w| !w.is_empty() && w != "0");
    let blocked = state == "D";
    let stack = read_proc(pid, "stack")
        .map(|s| parse_stack(&s))
        .filter(|s| blocked && !s.is_empty());
    let blocked_ms = read_proc(pid, "sched")
        .and_then(|s| parse_exec_start_ms(&s))
        .filter(|_| blocked)
        .map(|ms| (Clock::monotonic_now_ns() as f64 / 1e6 - ms).max(0.0) as u64);
    Some(Holder {
        pid,
        comm,
        state,
        wchan: wchan.map(|w| escape(w.as_bytes())),
        stack,
        blocked_ms,
    })
}

/// Every network namespace held by a process or a bind mount, by inode.
pub fn all() -> BTreeMap<u64, Found> {
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    for (pid, inode) in process_namespaces() {
        if let Some(h) = holder(pid) {
            let entry = found.entry(inode).or_default();
            entry.inode = inode;
            entry.holders.push(h);
        }
    }
    for (point, inode) in netns_mounts() {
        let entry = found.entry(inode).or_default();
        entry.inode = inode;
        entry.mounts.push(point);
    }
    found
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
            parse_netns_mounts(mountinfo),
            [
                ("/run/netns/a".to_string(), 4026532290),
                ("/var/run/with space".to_string(), 4026532300)
            ]
        );
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_stat("42 (my (odd) comm) D 1 42 42 0"),
            Some(("my (odd) comm".into(), "D".into()))
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
        let own = net_ns_of(std::process::id()).expect("own namespace");
        let all = all();
        let ns = all.get(&own).expect("own namespace listed");
        assert!(ns.holders.iter().any(|h| h.pid == std::process::id()));
    }
}
