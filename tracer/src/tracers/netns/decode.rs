//! Ring-buffer records of `netns --watch` to typed events.

use std::{io, io::Write, time::Duration};

use serde::Serialize;
use tracer_common::netns::{NetnsAction, NetnsEvent};

use super::{census::KernelRefs, discover::HolderRef, orphans::Release};
use crate::{
    clock::{self, Clock},
    enrich::identity::{Container, Identity, Pod},
    output::{pod_column, Column, Count, Event, Family},
    text::kernel_str,
};

/// One kernel record, decoded.
#[derive(Clone, Debug)]
pub struct Record {
    pub action: NetnsAction,
    pub inode: u64,
    pub cookie: u64,
    /// The process concerned (none for teardown, which a kernel worker does).
    pub process: Option<(u32, String)>,
    pub ktime_ns: u64,
}

impl Record {
    /// `None` for an action this build does not know.
    pub fn decode(ev: &NetnsEvent) -> Option<Self> {
        let action = [
            NetnsAction::Create,
            NetnsAction::TeardownStart,
            NetnsAction::TeardownEnd,
            NetnsAction::ProcessExit,
        ]
        .into_iter()
        .find(|a| *a as u32 == ev.action)?;
        Some(Self {
            action,
            inode: ev.inum.into(),
            cookie: ev.cookie,
            process: (ev.task.pid != 0).then(|| (ev.task.pid, kernel_str(&ev.task.leader_comm))),
            ktime_ns: ev.header.ktime_ns,
        })
    }
}

/// One network-namespace event.
#[derive(Clone, Debug, Serialize)]
pub struct NetnsRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    /// `create`, `teardown_start`, `teardown_end` or `last_holder_exit`.
    pub action: &'static str,
    pub inode: u64,
    pub cookie: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The pod sandbox owning the namespace, and its pod; null for other namespaces.
    pub container: Option<Container>,
    pub pod: Option<Pod>,
    /// Since creation, when the creation was seen in this run.
    pub lifetime_ms: Option<u64>,
    /// `last_holder_exit`: the userspace holders that went, the last of their kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<HolderRef>,
    /// `last_holder_exit`: what holds the namespace now: the other kinds of userspace holder,
    /// `["kernel"]` when only the kernel does, `[]` when nothing does (its teardown follows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Vec<&'static str>>,
    /// `last_holder_exit`: the kernel's reference counts, where its list could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_refs: Option<KernelRefs>,
}

impl NetnsRecord {
    /// `created_ns`: when the namespace was created, if known; `owner`: the sandbox owning it.
    pub fn new(
        action: &'static str,
        record: &Record,
        created_ns: Option<u64>,
        owner: Identity,
        clock: &Clock,
    ) -> Self {
        let mut event = Self::about(
            action,
            (record.inode, record.cookie),
            record.ktime_ns,
            created_ns,
            owner,
            clock,
        );
        (event.pid, event.comm) = record.process.clone().unzip();
        event
    }

    /// A `last_holder_exit`: the last userspace holder of a namespace went.
    pub fn released(
        release: &Release,
        created_ns: Option<u64>,
        owner: Identity,
        clock: &Clock,
    ) -> Self {
        let mut event = Self::about(
            "last_holder_exit",
            (release.inode, release.cookie),
            release.ktime_ns,
            created_ns,
            owner,
            clock,
        );
        (event.pid, event.comm) = release.process.clone().unzip();
        event.released = release.released.clone();
        event.held_by = Some(release.held_by.clone());
        event.kernel_refs = release.kernel_refs;
        event
    }

    /// An event about namespace `(inode, cookie)` at `ktime_ns`, no process named.
    fn about(
        action: &'static str,
        (inode, cookie): (u64, u64),
        ktime_ns: u64,
        created_ns: Option<u64>,
        owner: Identity,
        clock: &Clock,
    ) -> Self {
        Self {
            kind: "netns",
            time: clock::rfc3339(clock.wall(ktime_ns)),
            action,
            inode,
            cookie,
            pid: None,
            comm: None,
            container: owner.container,
            pod: owner.pod,
            lifetime_ms: created_ns.map(|c| ktime_ns.saturating_sub(c) / 1_000_000),
            released: Vec::new(),
            held_by: None,
            kernel_refs: None,
        }
    }

    /// `; still held by the kernel (2 references, 1 passive)`, for a `last_holder_exit`.
    fn holding_now(&self) -> Option<String> {
        let held_by = self.held_by.as_ref()?;
        let released = self
            .released
            .iter()
            .map(HolderRef::describe)
            .collect::<Vec<_>>()
            .join(", ");
        let now = match held_by.as_slice() {
            [] => "nothing holds it now: teardown follows".into(),
            ["kernel"] => {
                let count = |v: Option<u32>| v.map_or_else(|| "?".into(), |v| v.to_string());
                let refs = self.kernel_refs.unwrap_or(KernelRefs {
                    refs: None,
                    passive: None,
                });
                format!(
                    "still held by the kernel ({} references, {} passive)",
                    count(refs.refs),
                    count(refs.passive)
                )
            }
            kinds => format!("still held by {}", kinds.join(", ")),
        };
        Some(format!("{released}; {now}"))
    }
}

/// `tracer serve`'s count of namespace lifecycle events, by the namespace's pod.
static NETNS_EVENTS_TOTAL: Family = Family {
    name: "tracer_netns_events_total",
    help: "Network namespace lifecycle events (create, teardown_start, teardown_end, \
           last_holder_exit), for the namespace's pod; teardown_start minus teardown_end is \
           the number of teardowns in progress or stuck.",
    labels: &["action"],
};

impl Event for NetnsRecord {
    const COLUMNS: &'static [Column<Self>] = &[
        Column {
            name: "time",
            default: true,
            value: |e| Some(e.time.clone()),
        },
        Column {
            name: "action",
            default: true,
            value: |e| Some(e.action.into()),
        },
        Column {
            name: "inode",
            default: true,
            value: |e| Some(e.inode.to_string()),
        },
        Column {
            name: "cookie",
            default: true,
            value: |e| Some(e.cookie.to_string()),
        },
        Column {
            name: "process",
            default: true,
            value: |e| Some(format!("{}({})", e.comm.as_ref()?, e.pid?)),
        },
        Column {
            name: "lifetime_ms",
            default: true,
            value: |e| e.lifetime_ms.map(|ms| ms.to_string()),
        },
        Column {
            name: "pod",
            default: true,
            value: |e| pod_column(e.pod.as_ref()),
        },
        // `bind_mount` rather than `bind mount`: a value of one word; `none` once nothing does.
        Column {
            name: "held_by",
            default: true,
            value: |e| {
                let kinds = e.held_by.as_ref()?;
                Some(if kinds.is_empty() {
                    "none".into()
                } else {
                    kinds.join(",").replace(' ', "_")
                })
            },
        },
    ];

    fn count(&self) -> Option<Count<'_>> {
        Some(Count {
            family: &NETNS_EVENTS_TOTAL,
            labels: vec![self.action.into()],
            pod: self.pod.as_ref(),
            netns: None,
        })
    }

    fn write_human(&self, w: &mut dyn Write) -> io::Result<()> {
        let process = match (&self.comm, self.pid) {
            (Some(comm), Some(pid)) => format!("{comm}({pid})"),
            _ => "-".into(),
        };
        let lifetime = self.lifetime_ms.map_or_else(
            || "-".into(),
            |ms| clock::short_duration(Duration::from_millis(ms)),
        );
        write!(
            w,
            "{}  {:<16} {:<11} {:<8} {:<24} {lifetime}",
            clock::time_of_day(&self.time),
            self.action,
            self.inode,
            self.cookie,
            process
        )?;
        if let Some(pod) = &self.pod {
            write!(w, "  {}", pod.label())?;
        }
        if let Some(now) = self.holding_now() {
            write!(w, "  {now}")?;
        }
        writeln!(w)
    }
}
