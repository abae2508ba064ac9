//! The problems a snapshot points out, each with a one-line explanation.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;

use super::{
    census::KernelRefs,
    discover::{Holder, HolderRef},
    inside::Address,
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Flag {
    /// `orphaned`, `stuck` or `ip-conflict`.
    pub flag: &'static str,
    pub explanation: String,
    /// Other namespaces involved (for `ip-conflict`: those with the same address).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<u64>,
    /// What keeps the namespace alive (for `orphaned`: every holder; for `stuck`: the blocked
    /// process).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderRef>,
}

/// `comm(pid), comm(pid)`, or `no process`.
pub fn holder_list(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "no process".into();
    }
    holders
        .iter()
        .map(|h| format!("{}({})", h.comm, h.pid))
        .collect::<Vec<_>>()
        .join(", ")
}

/// No process inside, yet something holds it: an open file, a socket or a bind mount (`held`).
/// Holders whose container the runtime no longer knows are not told apart: a container without
/// runtime state looks the same as one whose runtime keeps its state where the enricher does
/// not look.
pub fn orphaned(holders: &[Holder], held: Vec<HolderRef>) -> Option<Flag> {
    (holders.is_empty() && !held.is_empty()).then(|| Flag {
        flag: "orphaned",
        explanation: format!(
            "no process is inside; held by {}",
            held.iter()
                .map(HolderRef::describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        namespaces: Vec::new(),
        holders: held,
    })
}

/// Nothing in userspace holds the namespace, yet the kernel's list has it with references:
/// only the kernel keeps it (typically an orphan TCP socket still retransmitting to a peer
/// that no longer answers). The counts are the kernel's own (`refs` null: unknown layout).
pub fn held_by_kernel(refs: &KernelRefs) -> Flag {
    let count = |v: Option<u32>| v.map_or_else(|| "?".into(), |v| v.to_string());
    let what = format!(
        "{} references, {} passive",
        count(refs.refs),
        count(refs.passive)
    );
    Flag {
        flag: "orphaned",
        explanation: format!(
            "no process, thread, open file, socket or bind mount holds it; the kernel does \
             ({what}): an orphan TCP socket towards a peer that no longer answers, for example \
             (its sockets cannot be listed: no way into the namespace is left)"
        ),
        namespaces: Vec::new(),
        holders: vec![HolderRef {
            kind: "kernel",
            pid: None,
            comm: None,
            what,
        }],
    }
}

/// A holder in uninterruptible sleep for longer than `after`: the namespace cannot go away
/// until it wakes up.
pub fn stuck(holders: &[Holder], after: Duration) -> Vec<Flag> {
    holders
        .iter()
        .filter(|h| h.state == "D")
        .filter_map(|h| {
            let blocked = Duration::from_millis(h.blocked_ms?);
            (blocked >= after).then(|| Flag {
                flag: "stuck",
                explanation: format!(
                    "{}({}) has been in uninterruptible sleep (D) for {} in {}; the namespace \
                     lives until it wakes",
                    h.comm,
                    h.pid,
                    crate::clock::short_duration(blocked),
                    h.wchan.as_deref().unwrap_or("an unknown kernel function")
                ),
                namespaces: Vec::new(),
                holders: vec![HolderRef::process(h)],
            })
        })
        .collect()
}

/// One namespace's part in the address comparison.
pub struct Configured<'a> {
    pub inode: u64,
    pub addresses: &'a [Address],
    pub holders: &'a [Holder],
}

/// The same routable address configured in two or more live namespaces, by inode.
pub fn ip_conflicts(namespaces: &[Configured<'_>]) -> BTreeMap<u64, Vec<Flag>> {
    let mut by_address: BTreeMap<IpAddr, BTreeSet<usize>> = BTreeMap::new();
    for (i, ns) in namespaces.iter().enumerate() {
        for address in ns.addresses.iter().filter(|a| a.is_routable()) {
            by_address.entry(address.address).or_default().insert(i);
        }
    }
    let mut flags: BTreeMap<u64, Vec<Flag>> = BTreeMap::new();
    for (address, owners) in by_address.iter().filter(|(_, o)| o.len() > 1) {
        for &i in owners {
            let others: Vec<&Configured> = owners
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| &namespaces[j])
                .collect();
            let described: Vec<String> = others
                .iter()
                .map(|o| format!("netns {} (held by {})", o.inode, holder_list(o.holders)))
                .collect();
            flags.entry(namespaces[i].inode).or_default().push(Flag {
                flag: "ip-conflict",
                explanation: format!("{address} is also configured in {}", described.join(", ")),
                namespaces: others.iter().map(|o| o.inode).collect(),
                holders: Vec::new(),
            });
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32, state: &str, blocked_ms: Option<u64>) -> Holder {
        Holder {
            pid,
            comm: "sleep".into(),
            state: state.into(),
            wchan: Some("kernel_clone".into()),
            stack: None,
            blocked_ms,
        }
    }

    fn address(ip: &str, scope: &'static str) -> Address {
        Address {
            interface: "eth0".into(),
            address: ip.parse().unwrap(),
            prefix_len: 24,
            scope,
        }
    }

    #[test]
    fn conflicts_name_the_other_namespaces() {
        let (a, b, c) = (
            [address("10.0.0.1", "global"), address("127.0.0.1", "host")],
            [address("10.0.0.1", "global"), address("127.0.0.1", "host")],
            [address("10.0.0.2", "global"), address("fe80::1", "link")],
        );
        let holders = [holder(7, "S", None)];
        let namespaces = [
            Configured {
                inode: 1,
                addresses: &a,
                holders: &holders,
            },
            Configured {
                inode: 2,
                addresses: &b,
                holders: &[],
            },
            Configured {
                inode: 3,
                addresses: &c,
                holders: &[],
            },
        ];
        let flags = ip_conflicts(&namespaces);
        assert_eq!(flags.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(flags[&1][0].namespaces, [2]);
        assert_eq!(flags[&2][0].namespaces, [1]);
        assert!(
            flags[&2][0].explanation.contains("sleep(7)"),
            "{:?}",
            flags[&2]
        );
    }

    #[test]
    fn stuck_needs_d_state_for_long_enough() {
        let after = Duration::from_secs(10);
        let holders = [
            holder(1, "D", Some(20_000)),
            holder(2, "D", Some(5_000)),
            holder(3, "S", Some(60_000)),
        ];
        let flags = stuck(&holders, after);
        assert_eq!(flags.len(), 1);
        assert!(
            flags[0].explanation.contains("sleep(1)")
                && flags[0].explanation.contains("kernel_clone")
        );
    }

    #[test]
    fn orphaned_means_held_without_processes() {
        let file = HolderRef {
            kind: "file",
            pid: Some(9),
            comm: Some("cni".into()),
            what: "fd 3".into(),
        };
        let flag = orphaned(&[], vec![file.clone()]).unwrap();
        assert_eq!(
            flag.explanation,
            "no process is inside; held by file fd 3 of cni(9)"
        );
        assert_eq!(flag.holders, std::slice::from_ref(&file));
        assert!(orphaned(&[holder(1, "S", None)], vec![file]).is_none());
        assert!(orphaned(&[], Vec::new()).is_none());
    }
}
