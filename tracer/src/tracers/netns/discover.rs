//! Finding the network namespaces alive on the node from userspace: every process's
//! /proc/PID/ns/net, and every nsfs bind mount in /proc/self/mountinfo (`ip netns`, container
//! runtimes, kubelet). A namespace nobody holds in either way is being torn down and is not
//! visible here.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    clock::Clock,
    kernel::netns::{net_ns_link, netns_mounts, process_namespaces},
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
        let own = crate::kernel::netns::net_ns_of(std::process::id()).expect("own namespace");
        let all = all();
        let ns = all.get(&own).expect("own namespace listed");
        assert!(ns.holders.iter().any(|h| h.pid == std::process::id()));
    }
}
