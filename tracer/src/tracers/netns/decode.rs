//! Ring-buffer records of `netns --watch` to typed events.

use std::{io, io::Write, time::Duration};

use serde::Serialize;
use tracer_common::netns::{NetnsAction, NetnsEvent};

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
        let (pid, comm) = record.process.clone().unzip();
        Self {
            kind: "netns",
            time: clock::rfc3339(clock.wall(record.ktime_ns)),
            action,
            inode: record.inode,
            cookie: record.cookie,
            pid,
            comm,
            container: owner.container,
            pod: owner.pod,
            lifetime_ms: created_ns.map(|c| record.ktime_ns.saturating_sub(c) / 1_000_000),
        }
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
        match &self.pod {
            Some(pod) => writeln!(w, "  {}", pod.label()),
            None => writeln!(w),
        }
    }
}
