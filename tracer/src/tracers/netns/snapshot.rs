//! `tracer netns`: every network namespace alive on the node right now, who holds it, what is
//! configured in it, and what looks wrong: /proc, mountinfo and rtnetlink, and the kernel's own
//! list of namespaces (`census`) for those that only the kernel holds.

use std::{
    collections::{HashMap, HashSet},
    io,
    io::Write,
    process::ExitCode,
    sync::Once,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use super::{
    census::{KernelCensus, KernelRefs, Listed},
    discover::{self, BindMount, FileHolder, Holder, SocketHolder, ThreadHolder},
    flags::{self, Configured, Flag},
    inside::{look_inside, Address, Inside, Interface},
};
use crate::{
    enrich::{
        identity::{Container, Identities, Pod},
        selector::Selector,
    },
    output::{pod_column, Column, Event, Format, Output},
};

/// Holders named on a human line before "+N more".
const HUMAN_HOLDERS: usize = 3;

/// Lines of open files, sockets and mounts shown per namespace before "+N more".
const HUMAN_HOLDER_LINES: usize = 8;

pub struct SnapshotOptions {
    pub format: Format,
    /// Only these namespaces (all when empty). Flags still compare against every namespace.
    pub inodes: Vec<u64>,
    /// A holder in D state for longer than this marks its namespace `stuck`.
    pub stuck_after: Duration,
    /// Only the namespaces of these pods (flags still compare against every namespace).
    pub workload: Selector,
}

/// One namespace of the snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct NamespaceReport {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub inode: u64,
    pub cookie: Option<u64>,
    /// The kinds of holder: `process`, `file`, `socket`, `bind mount`, or `kernel` alone.
    pub held_by: Vec<&'static str>,
    pub interfaces: Vec<Interface>,
    pub addresses: Vec<Address>,
    /// Processes inside.
    pub holders: Vec<Holder>,
    /// Open files of the namespace in processes of other namespaces.
    pub files: Vec<FileHolder>,
    /// Sockets of the namespace open in processes of other namespaces.
    pub sockets: Vec<SocketHolder>,
    /// Bind mounts of the namespace, in every mount namespace.
    pub mounts: Vec<BindMount>,
    /// Threads inside whose process is not.
    pub threads: Vec<ThreadHolder>,
    /// The pod sandbox owning the namespace, and its pod; null for other namespaces.
    pub container: Option<Container>,
    pub pod: Option<Pod>,
    pub flags: Vec<Flag>,
    /// The kernel's reference counts, from its own list; null where it could not be read.
    pub kernel_refs: Option<KernelRefs>,
    /// Why interfaces and addresses could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NamespaceReport {
    /// Looks inside the namespace; `identities` names the sandbox owning it. `found` is
    /// consumed: a namespace file the scan opened is closed on return.
    fn new(found: discover::Found, identities: &Identities) -> Self {
        let mut error = None;
        let mut inside = None;
        for netns in found.ways_in() {
            match netns.and_then(|netns| look_inside(&netns)) {
                Ok(i) => {
                    inside = Some(i);
                    break;
                }
                Err(e) => error = Some(format!("{e:#}")),
            }
        }
        let Inside {
            cookie,
            interfaces,
            addresses,
        } = inside.unwrap_or_default();
        let owner = cookie
            .and_then(|cookie| {
                identities
                    .lock()
                    .known_netns_owner(found.inode, cookie)
                    .cloned()
            })
            .unwrap_or_default();
        let (held_by, orphaned) = (found.kinds(), flags::orphaned(&found.holders, found.held()));
        Self {
            kind: "netns_snapshot",
            inode: found.inode,
            cookie,
            held_by,
            interfaces,
            addresses,
            holders: found.holders,
            files: found.files,
            sockets: found.sockets,
            mounts: found.mounts,
            threads: found.threads,
            container: owner.container,
            pod: owner.pod,
            flags: orphaned.into_iter().collect(),
            kernel_refs: None,
            error: error.filter(|_| cookie.is_none()),
        }
    }

    /// A namespace on the kernel's list that nothing in userspace holds. There is no way in
    /// (no process, file or mount), so nothing is known of what is configured inside.
    fn held_by_kernel(listed: &Listed, identities: &Identities) -> Self {
        let owner = identities
            .lock()
            .known_netns_owner(listed.inode, listed.cookie)
            .cloned()
            .unwrap_or_default();
        Self {
            kind: "netns_snapshot",
            inode: listed.inode,
            cookie: Some(listed.cookie),
            held_by: vec!["kernel"],
            interfaces: Vec::new(),
            addresses: Vec::new(),
            holders: Vec::new(),
            files: Vec::new(),
            sockets: Vec::new(),
            mounts: Vec::new(),
            threads: Vec::new(),
            container: owner.container,
            pod: owner.pod,
            flags: vec![flags::held_by_kernel(&listed.refs)],
            kernel_refs: Some(listed.refs),
            error: None,
        }
    }
}

/// `a,b` of a list, or none when it is empty.
fn list_column(items: impl Iterator<Item = String>) -> Option<String> {
    Some(items.collect::<Vec<_>>().join(",")).filter(|l| !l.is_empty())
}

impl Event for NamespaceReport {
    const COLUMNS: &'static [Column<Self>] = &[
        Column {
            name: "inode",
            default: true,
            value: |r| Some(r.inode.to_string()),
        },
        Column {
            name: "cookie",
            default: true,
            value: |r| r.cookie.map(|c| c.to_string()),
        },
        Column {
            name: "flags",
            default: true,
            // Each flag once: two holders asleep are one `stuck` (the explanations name both).
            value: |r| {
                let names: std::collections::BTreeSet<&str> =
                    r.flags.iter().map(|f| f.flag).collect();
                list_column(names.into_iter().map(str::to_string))
            },
        },
        Column {
            name: "pod",
            default: true,
            value: |r| pod_column(r.pod.as_ref()),
        },
        // `bind_mount` rather than `bind mount`: a value of one word.
        Column {
            name: "held_by",
            default: true,
            value: |r| list_column(r.held_by.iter().map(|k| k.replace(' ', "_"))),
        },
        Column {
            name: "processes",
            default: true,
            value: |r| list_column(r.holders.iter().map(|h| format!("{}({})", h.comm, h.pid))),
        },
        Column {
            name: "addresses",
            default: true,
            value: |r| {
                list_column(
                    r.addresses
                        .iter()
                        .filter(|a| a.scope != "host")
                        .map(|a| format!("{}:{}/{}", a.interface, a.address, a.prefix_len)),
                )
            },
        },
        Column {
            name: "files",
            default: true,
            value: |r| {
                list_column(
                    r.files
                        .iter()
                        .map(|f| format!("{}({}):fd{}", f.comm, f.pid, f.fd)),
                )
            },
        },
        Column {
            name: "sockets",
            default: true,
            value: |r| {
                list_column(
                    r.sockets
                        .iter()
                        .map(|s| format!("{}({}):fd{}", s.comm, s.pid, s.fd)),
                )
            },
        },
        // The mount point, then the mount namespace it is in.
        Column {
            name: "mounts",
            default: true,
            value: |r| {
                list_column(
                    r.mounts
                        .iter()
                        .map(|m| format!("{}@mnt:{}", m.path, m.mount_ns)),
                )
            },
        },
        Column {
            name: "threads",
            default: false,
            value: |r| {
                list_column(
                    r.threads
                        .iter()
                        .map(|t| format!("{}({}):tid{}", t.comm, t.pid, t.tid)),
                )
            },
        },
        Column {
            name: "stuck",
            default: false,
            value: |r| {
                list_column(r.holders.iter().filter(|h| h.state == "D").map(|h| {
                    format!(
                        "{}({})@{}",
                        h.comm,
                        h.pid,
                        h.wchan.as_deref().unwrap_or("?")
                    )
                }))
            },
        },
    ];

    fn write_human(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut holders =
            flags::holder_list(&self.holders[..self.holders.len().min(HUMAN_HOLDERS)]);
        if self.holders.len() > HUMAN_HOLDERS {
            holders.push_str(&format!(" +{} more", self.holders.len() - HUMAN_HOLDERS));
        }
        let addresses: Vec<String> = self
            .addresses
            .iter()
            .filter(|a| a.scope != "host")
            .map(|a| format!("{} {}/{}", a.interface, a.address, a.prefix_len))
            .collect();
        writeln!(
            w,
            "{:<11} {:<8} {:<10} {:<40} {}",
            self.inode,
            self.cookie.map_or_else(|| "?".into(), |c| c.to_string()),
            self.held_by
                .iter()
                .map(|k| k.split(' ').next_back().unwrap_or(k))
                .collect::<Vec<_>>()
                .join("+"),
            holders,
            if addresses.is_empty() {
                "-".into()
            } else {
                addresses.join(", ")
            }
        )?;
        if let Some(pod) = &self.pod {
            writeln!(w, "    {}", pod.label())?;
        }
        let lines = self
            .files
            .iter()
            .map(|f| format!("open as fd {} of {}({})", f.fd, f.comm, f.pid))
            .chain(
                self.sockets
                    .iter()
                    .map(|s| format!("socket fd {} of {}({}): {}", s.fd, s.comm, s.pid, s.socket)),
            )
            .chain(self.mounts.iter().map(|m| {
                format!(
                    "mounted at {} (mount ns {}, pid {})",
                    m.path, m.mount_ns, m.pid
                )
            }))
            .chain(self.threads.iter().map(|t| {
                format!(
                    "thread {} ({}) of process {} is inside",
                    t.tid, t.comm, t.pid
                )
            }));
        let shown = HUMAN_HOLDER_LINES;
        let total = self.files.len() + self.sockets.len() + self.mounts.len() + self.threads.len();
        for line in lines.take(shown) {
            writeln!(w, "    {line}")?;
        }
        if total > shown {
            writeln!(w, "    +{} more (all in --json)", total - shown)?;
        }
        for h in self.holders.iter().filter(|h| h.state == "D") {
            writeln!(
                w,
                "    {}({}) in D state{} in {}",
                h.comm,
                h.pid,
                h.blocked_ms.map_or_else(String::new, |ms| format!(
                    " for {}",
                    crate::clock::short_duration(Duration::from_millis(ms))
                )),
                h.wchan.as_deref().unwrap_or("?")
            )?;
            if let Some(stack) = &h.stack {
                writeln!(w, "      stack: {}", stack.join(" < "))?;
            }
        }
        for flag in &self.flags {
            writeln!(w, "    {}: {}", flag.flag.to_uppercase(), flag.explanation)?;
        }
        if let Some(error) = &self.error {
            writeln!(w, "    could not look inside: {error}")?;
        }
        Ok(())
    }
}

/// Every namespace, flagged (tests; the commands share one identity cache).
#[cfg(test)]
pub fn take(stuck_after: Duration) -> Vec<NamespaceReport> {
    let mut census = KernelCensus::load().map_err(|e| format!("{e:#}"));
    take_with(&Identities::new(), stuck_after, &mut census)
}

/// [`take`], naming pods with what `identities` knows (locked for each lookup only: looking
/// inside a namespace can wait long on the kernel's rtnl lock), with the run's census (or why
/// it has none). Says once, as a warning, when the kernel's list cannot be read.
pub fn take_with(
    identities: &Identities,
    stuck_after: Duration,
    census: &mut Result<KernelCensus, String>,
) -> Vec<NamespaceReport> {
    static WARNED: Once = Once::new();
    let Taken(reports, kernel_error, _) = take_all(identities, stuck_after, census);
    if let Some(e) = kernel_error {
        WARNED.call_once(|| warn_no_kernel_list(&e));
    }
    reports
}

fn warn_no_kernel_list(e: &str) {
    log::warn!(
        "the kernel's list of network namespaces could not be read ({e}); namespaces held only \
         by the kernel are not shown (`tracer doctor` shows the census hook's status)"
    );
}

/// Every namespace, why the kernel's list could not be read if it could not, and how many
/// sockets could not be looked at.
struct Taken(Vec<NamespaceReport>, Option<String>, usize);

/// Every namespace, and why the kernel's list could not be read if it could not.
///
/// The kernel's list is read before and after /proc is scanned: a namespace counts as held by
/// the kernel alone only if it is on both lists and nowhere in userspace, so that one whose
/// last process exits during the scan (and is being torn down) is not taken for one.
fn take_all(
    identities: &Identities,
    stuck_after: Duration,
    census: &mut Result<KernelCensus, String>,
) -> Taken {
    let mut walk = || -> Result<Vec<Listed>> {
        census
            .as_mut()
            .map_err(|e| anyhow!("the census program cannot be used here: {e}"))?
            .walk()
    };
    let before = walk();
    let discover::Scanned {
        found,
        uninspectable,
    } = discover::all();
    // Each namespace the scan opened (from a socket) is closed once its report is built, and
    // the kernel's list read after all are: the tracer holds none of them while it counts.
    let mut reports: Vec<NamespaceReport> = found
        .into_values()
        .map(|found| NamespaceReport::new(found, identities))
        .collect();
    let after = walk();
    let kernel_error = match (before, after) {
        (Ok(before), Ok(after)) => {
            merge_kernel_list(&mut reports, &before, &after, identities);
            None
        }
        (Err(e), _) | (_, Err(e)) => Some(format!("{e:#}")),
    };
    let configured: Vec<Configured> = reports
        .iter()
        .map(|r| Configured {
            inode: r.inode,
            addresses: &r.addresses,
            holders: &r.holders,
        })
        .collect();
    let mut conflicts = flags::ip_conflicts(&configured);
    // The node's own namespace is never torn down: a task asleep in it, such as a kernel
    // worker (they all live there), keeps nothing alive.
    let node_namespace = crate::kernel::netns::initial_net_ns();
    for report in &mut reports {
        if Some(report.inode) != node_namespace {
            report
                .flags
                .extend(flags::stuck(&report.holders, stuck_after));
        }
        report
            .flags
            .extend(conflicts.remove(&report.inode).unwrap_or_default());
    }
    Taken(reports, kernel_error, uninspectable)
}

/// Adds the kernel's counts to the namespaces found in userspace, and the namespaces that only
/// the kernel holds: on both walks (the same cookie), not in userspace, and not queued for
/// teardown (no reference left).
fn merge_kernel_list(
    reports: &mut Vec<NamespaceReport>,
    before: &[Listed],
    after: &[Listed],
    identities: &Identities,
) {
    let by_inode: HashMap<u64, &Listed> = after.iter().map(|l| (l.inode, l)).collect();
    for report in reports.iter_mut() {
        report.kernel_refs = by_inode.get(&report.inode).map(|l| l.refs);
    }
    let in_userspace: HashSet<u64> = reports.iter().map(|r| r.inode).collect();
    let listed_before: HashSet<u64> = before.iter().map(|l| l.cookie).collect();
    let kernel_only: Vec<NamespaceReport> = after
        .iter()
        .filter(|l| !in_userspace.contains(&l.inode) && listed_before.contains(&l.cookie))
        .filter(|l| l.refs.refs != Some(0))
        .map(|l| NamespaceReport::held_by_kernel(l, identities))
        .collect();
    reports.extend(kernel_only);
}

/// Prints the snapshot. Exit 1 when a shown namespace is flagged.
pub fn run(options: &SnapshotOptions) -> Result<ExitCode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tracer netns reads every process's namespace and enters each one: run it as root");
    }
    let mut census = KernelCensus::load().map_err(|e| format!("{e:#}"));
    let Taken(mut reports, kernel_error, uninspectable) =
        take_all(&Identities::new(), options.stuck_after, &mut census);
    // Detached before the snapshot is printed: nothing stays loaded while output waits.
    drop(census);
    if let Some(e) = &kernel_error {
        warn_no_kernel_list(e);
    }
    for inode in &options.inodes {
        if !reports.iter().any(|r| r.inode == *inode) {
            bail!(
                "no network namespace with inode {inode} is alive{}",
                if kernel_error.is_some() {
                    " and held from userspace (process, open file, socket or bind mount)"
                } else {
                    ""
                }
            );
        }
    }
    if !options.inodes.is_empty() {
        reports.retain(|r| options.inodes.contains(&r.inode));
    }
    reports.retain(|r| options.workload.matches_pod(r.pod.as_ref()));
    let header = format!(
        "{:<11} {:<8} {:<10} {:<40} ADDRESSES",
        "INODE", "COOKIE", "HELD BY", "PROCESSES"
    );
    let mut out = Output::new(options.format.clone(), header);
    for report in &reports {
        out.event(report)?;
    }
    let flagged = reports.iter().filter(|r| !r.flags.is_empty()).count();
    let unseen = if uninspectable > 0 {
        format!(
            "; {uninspectable} sockets could not be looked at (pidfd_getfd refused: EPERM/EACCES), \
             the namespaces they hold may be missing"
        )
    } else {
        String::new()
    };
    out.human_line(&format!(
        "{} network namespaces, {flagged} flagged{unseen}",
        reports.len()
    ))?;
    out.flush().context("writing the snapshot")?;
    Ok(if flagged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(inode: u64, cookie: u64, refs: u32) -> Listed {
        Listed {
            inode,
            cookie,
            refs: KernelRefs {
                refs: Some(refs),
                passive: Some(refs + 1),
            },
        }
    }

    #[test]
    fn only_namespaces_on_both_kernel_lists_and_alive_are_held_by_the_kernel() {
        let identities = Identities::new();
        let mut found = discover::Found::default();
        found.inode = 10;
        let mut reports = vec![NamespaceReport::new(found, &identities)];
        let (userspace, held, dying, new) = (
            listed(10, 100, 3),
            listed(11, 101, 2),
            listed(12, 102, 0),
            listed(13, 103, 1),
        );
        merge_kernel_list(
            &mut reports,
            &[userspace, held, dying],
            &[userspace, held, dying, new],
            &identities,
        );
        assert_eq!(reports[0].kernel_refs, Some(userspace.refs));
        assert_eq!(reports[0].held_by, Vec::<&str>::new());
        // 12 is being torn down, 13 appeared during the scan: neither is reported.
        assert_eq!(reports.len(), 2, "{reports:#?}");
        let kernel = &reports[1];
        assert_eq!((kernel.inode, kernel.cookie), (11, Some(101)));
        assert_eq!(kernel.held_by, ["kernel"]);
        assert_eq!(kernel.flags.len(), 1);
        let flag = &kernel.flags[0];
        assert_eq!(flag.flag, "orphaned");
        assert_eq!(flag.holders[0].kind, "kernel");
        assert_eq!(flag.holders[0].what, "2 references, 3 passive");
    }
}
