//! `tracer netns`: every network namespace alive on the node right now, who holds it, what is
//! configured in it, and what looks wrong. No kernel programs: /proc, mountinfo and rtnetlink.

use std::{io, io::Write, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    discover::{self, Holder},
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
    /// `process`, `bind mount` or `both`.
    pub held_by: &'static str,
    pub interfaces: Vec<Interface>,
    pub addresses: Vec<Address>,
    pub holders: Vec<Holder>,
    pub mounts: Vec<String>,
    /// The pod sandbox owning the namespace, and its pod; null for other namespaces.
    pub container: Option<Container>,
    pub pod: Option<Pod>,
    pub flags: Vec<Flag>,
    /// Why interfaces and addresses could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NamespaceReport {
    /// Looks inside the namespace; `identities` names the sandbox owning it.
    fn new(found: discover::Found, identities: &Identities) -> Self {
        let mut error = None;
        let mut inside = None;
        for path in found.entry_paths() {
            match look_inside(&path, found.inode) {
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
        Self {
            kind: "netns_snapshot",
            inode: found.inode,
            cookie,
            held_by: match (found.holders.is_empty(), found.mounts.is_empty()) {
                (false, false) => "both",
                (false, true) => "process",
                _ => "bind mount",
            },
            interfaces,
            addresses,
            holders: found.holders,
            mounts: found.mounts,
            container: owner.container,
            pod: owner.pod,
            flags: Vec::new(),
            error: error.filter(|_| cookie.is_none()),
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
            value: |r| list_column(r.flags.iter().map(|f| f.flag.to_string())),
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
            value: |r| Some(r.held_by.replace(' ', "_")),
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
            name: "mounts",
            default: true,
            value: |r| list_column(r.mounts.iter().cloned()),
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
            self.held_by,
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
        for mount in &self.mounts {
            writeln!(w, "    mounted at {mount}")?;
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

/// Every namespace, flagged.
pub fn take(stuck_after: Duration) -> Vec<NamespaceReport> {
    take_with(&Identities::new(), stuck_after)
}

/// [`take`], naming pods with what `identities` knows (locked for each lookup only: looking
/// inside a namespace can wait long on the kernel's rtnl lock).
pub fn take_with(identities: &Identities, stuck_after: Duration) -> Vec<NamespaceReport> {
    let mut reports: Vec<NamespaceReport> = discover::all()
        .into_values()
        .map(|found| NamespaceReport::new(found, identities))
        .collect();
    let configured: Vec<Configured> = reports
        .iter()
        .map(|r| Configured {
            inode: r.inode,
            addresses: &r.addresses,
            holders: &r.holders,
        })
        .collect();
    let mut conflicts = flags::ip_conflicts(&configured);
    for report in &mut reports {
        report
            .flags
            .extend(flags::orphaned(&report.holders, &report.mounts));
        report
            .flags
            .extend(flags::stuck(&report.holders, stuck_after));
        report
            .flags
            .extend(conflicts.remove(&report.inode).unwrap_or_default());
    }
    reports
}

/// Prints the snapshot. Exit 1 when a shown namespace is flagged.
pub fn run(options: &SnapshotOptions) -> Result<ExitCode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tracer netns reads every process's namespace and enters each one: run it as root");
    }
    let mut reports = take(options.stuck_after);
    for inode in &options.inodes {
        if !reports.iter().any(|r| r.inode == *inode) {
            bail!("no network namespace with inode {inode} is held by a process or a bind mount");
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
    out.human_line(&format!(
        "{} network namespaces, {flagged} flagged",
        reports.len()
    ))?;
    out.flush().context("writing the snapshot")?;
    Ok(if flagged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
