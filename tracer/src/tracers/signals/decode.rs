//! Ring-buffer records of the `signals` tracer to typed events.

use std::{borrow::Cow, cell::RefCell, io, io::Write, rc::Rc, time::Duration};

use serde::{Serialize, Serializer};
use tracer_common::{
    signal::{InfoKind, OomVictimEvent, SignalEvent},
    TaskInfo,
};

use super::{
    names::{
        code_name, reason_from_code, result_name, signal_name, KernelReason, SIGIO, SIGPIPE, SIGURG,
    },
    sender::{self, CodeFrom, How},
    senders::Description,
};
use crate::{
    clock::{self, Clock},
    enrich::identity::{Container, Enricher, Pod},
    output::{memo, memo::Memo, pod_column, Column, Count, Event, Family},
    text::kernel_str,
};

/// One side of a signal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    /// The thread's name.
    pub comm: String,
    /// The process's name (its main thread's comm), when it differs from `comm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_comm: Option<String>,
    /// Pid inside the process's own pid namespace, when it differs from `pid`.
    pub ns_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<Rc<str>>,
    /// cgroup v2 id of the thread's cgroup.
    pub cgroup_id: u64,
    /// The container the process runs in; null for a host process.
    pub container: Option<Container>,
    /// The Kubernetes pod the process runs in; null outside pods.
    pub pod: Option<Pod>,
}

impl Process {
    pub fn from_task(task: &TaskInfo) -> Self {
        let comm = kernel_str(&task.comm);
        let process_comm = kernel_str(&task.leader_comm);
        Self {
            pid: task.pid,
            tid: task.tid,
            process_comm: (process_comm != comm).then_some(process_comm),
            comm,
            ns_pid: (task.ns_pid != task.pid && task.ns_pid != 0).then_some(task.ns_pid),
            ns_tid: (task.ns_tid != task.tid && task.ns_tid != 0 && task.tid != task.pid)
                .then_some(task.ns_tid),
            exe: None,
            cgroup_id: task.cgroup_id,
            container: None,
            pod: None,
        }
    }

    /// `comm(pid)`, `comm(pid/tid)`, with `ns pid N` when it differs.
    /// Fills in the container and pod from the kernel's cgroup id (or the pid), as of an
    /// event at `at_ns`.
    pub fn enrich(&mut self, enricher: &mut Enricher, at_ns: u64) {
        let identity = enricher.identify(self.cgroup_id, self.pid, at_ns);
        self.container = identity.container;
        self.pod = identity.pod;
    }

    /// `pod shop/web, container app (containerd 4f1c3c0c7b5e)`; `None` for a host process.
    pub fn workload(&self) -> Option<String> {
        let pod = self.pod.as_ref().map(Pod::label);
        let container = self.container.as_ref().map(|c| {
            let short_id = &c.id[..c.id.len().min(12)];
            let name = c.name.as_deref().unwrap_or(if self.pod.is_some() {
                "(sandbox)"
            } else {
                "(unnamed)"
            });
            match c.runtime {
                Some(runtime) => format!("container {name} ({runtime} {short_id})"),
                None => format!("container {name} ({short_id})"),
            }
        });
        match (pod, container) {
            (Some(pod), Some(container)) => Some(format!("{pod}, {container}")),
            (pod, container) => pod.or(container),
        }
    }

    /// `comm(pid)`: the `-o line` form.
    pub fn short(&self) -> String {
        format!(
            "{}({})",
            self.process_comm.as_deref().unwrap_or(&self.comm),
            self.pid
        )
    }

    /// The container's name, else its short id: the `-o line` form.
    pub fn container_column(&self) -> Option<String> {
        self.container.as_ref().map(|c| {
            c.name
                .clone()
                .unwrap_or_else(|| c.id[..c.id.len().min(12)].into())
        })
    }

    pub fn label(&self) -> String {
        let mut ids = self.pid.to_string();
        if self.tid != self.pid {
            ids.push_str(&format!("/{}", self.tid));
        }
        if let Some(ns_pid) = self.ns_pid {
            ids.push_str(&format!(", ns pid {ns_pid}"));
        }
        format!(
            "{}({ids})",
            self.process_comm.as_deref().unwrap_or(&self.comm)
        )
    }
}

/// One process of the sender's ancestry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: Rc<str>,
    /// How long the process had been running when the signal was sent.
    pub running_ms: u64,
}

/// The OOM killer's view of a kill.
#[derive(Clone, Debug, Serialize)]
pub struct OomDetail {
    /// The victim's memory cgroup (path on the memory hierarchy), when found.
    pub memcg: Option<String>,
    pub memcg_id: u64,
    /// The task that was allocating memory when the OOM killer ran. It did not send the
    /// signal; it only triggered the kill.
    pub allocating: Process,
}

thread_local! {
    /// The JSON of the processes and ancestries of the last few records (see
    /// `output::memo`): a storm repeats them in every record.
    static PROCESSES: RefCell<Memo<Process>> = const { RefCell::new(Memo::new()) };
    static ANCESTRIES: RefCell<Memo<Vec<Ancestor>>> = const { RefCell::new(Memo::new()) };
}

fn memo_process<S: Serializer>(process: &Process, serializer: S) -> Result<S::Ok, S::Error> {
    memo::through(&PROCESSES, process, serializer)
}

fn memo_sender<S: Serializer>(sender: &Option<Process>, serializer: S) -> Result<S::Ok, S::Error> {
    match sender {
        Some(process) => memo_process(process, serializer),
        None => serializer.serialize_none(),
    }
}

fn memo_ancestry<S: Serializer>(
    ancestry: &Vec<Ancestor>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    memo::through(&ANCESTRIES, ancestry, serializer)
}

/// One signal.
#[derive(Clone, Debug, Serialize)]
pub struct SignalRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub signal: Cow<'static, str>,
    pub signo: i32,
    /// How it was sent: `kill`, `kill_pgrp`, `tgkill`, `sigqueue`, `pidfd`, `cgroup.kill`, ...,
    /// or `kernel`; decided from where the kernel generated it (see `sender`).
    pub how: How,
    /// The `si_code` by name (`kill`, `tkill`, `timer`, `SEGV_MAPERR`, `code -77`, ...).
    pub code: Cow<'static, str>,
    /// The raw `si_code`; null when the kernel passed no siginfo.
    pub si_code: Option<i32>,
    /// Who chose the code: `kernel`, `sender` (a claim), `unverified`.
    pub code_from: CodeFrom,
    pub result: &'static str,
    /// Sent to the whole process (rather than one thread).
    pub group: bool,
    /// Why the kernel sent it; null when a process sent it, whatever code it claims.
    pub kernel_reason: Option<KernelReason>,
    /// The sending process; null when the kernel sent the signal.
    #[serde(serialize_with = "memo_sender")]
    pub sender: Option<Process>,
    #[serde(serialize_with = "memo_process")]
    pub target: Process,
    /// For kernel-sent signals, the task that was running when the kernel sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Process>,
    /// The sender's parents, parent first, ending at pid 1.
    #[serde(serialize_with = "memo_ancestry")]
    pub ancestry: Vec<Ancestor>,
    pub ancestry_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom: Option<OomDetail>,
    /// With `kernel_reason: "ptrace"`: the pid of the process that ptrace-attached to the
    /// target, which may have injected the signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptracer_pid: Option<u32>,
    pub cpu: u32,
    #[serde(skip)]
    pub ktime_ns: u64,
}

impl SignalRecord {
    /// `description` is the sender's (see `senders`); `None` reads as no executable and no
    /// ancestry.
    pub fn decode(ev: &SignalEvent, description: Option<&Description>, clock: &Clock) -> Self {
        let info_kind = match ev.info_kind {
            0 => InfoKind::Siginfo,
            1 => InfoKind::NoInfo,
            _ => InfoKind::Priv,
        };
        let verdict = sender::attribute(ev, info_kind);
        let kernel_reason = match info_kind {
            _ if verdict.by_process() => None,
            InfoKind::Siginfo => Some(reason_from_code(
                ev.signo,
                ev.code,
                ev.sender.pid == ev.target.pid,
            )),
            InfoKind::NoInfo if ev.signo == SIGPIPE => Some(KernelReason::Pipe),
            // A traced thread's own: its tracer may have chosen it at a syscall stop, whatever
            // the signal.
            InfoKind::Priv if ev.context.ptracer_pid != 0 && ev.sender.tid == ev.target.tid => {
                Some(KernelReason::Ptrace)
            }
            // To a file's owner (F_SETOWN) without F_SETSIG, or for a socket's urgent data.
            InfoKind::Priv if matches!(ev.signo, SIGIO | SIGURG) => Some(KernelReason::Io),
            // The OOM killer is recognised later, when its mark_victim record is matched.
            InfoKind::NoInfo | InfoKind::Priv => Some(KernelReason::Kernel),
        };
        let (code, si_code) = match info_kind {
            InfoKind::Siginfo => (code_name(ev.signo, ev.code), Some(ev.code)),
            // What the target's siginfo says: SI_USER from the sender.
            InfoKind::NoInfo if verdict.by_process() => (code_name(ev.signo, 0), None),
            InfoKind::NoInfo => ("kernel (no info)".into(), None),
            InfoKind::Priv => ("kernel (privileged)".into(), None),
        };
        let mut current = Process::from_task(&ev.sender);
        current.exe = description.and_then(|d| d.exe.clone());
        let ancestry = description
            .map(|d| {
                d.ancestry
                    .iter()
                    .map(|a| Ancestor {
                        pid: a.pid,
                        comm: a.comm.clone(),
                        running_ms: ev.header.ktime_ns.saturating_sub(a.start_ns) / 1_000_000,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (sender, context, ancestry) = if kernel_reason.is_none() {
            (Some(current), None, ancestry)
        } else {
            (None, Some(current), Vec::new())
        };
        Self {
            kind: "signal",
            time: clock::rfc3339(clock.wall(ev.header.ktime_ns)),
            signal: signal_name(ev.signo),
            signo: ev.signo,
            how: verdict.how,
            code,
            si_code,
            code_from: verdict.code_from,
            result: result_name(ev.result),
            group: ev.group != 0,
            kernel_reason,
            ancestry_truncated: sender.is_some()
                && description.is_some_and(|d| d.ancestry_truncated),
            sender,
            target: Process::from_task(&ev.target),
            context,
            ancestry,
            oom: None,
            ptracer_pid: (kernel_reason == Some(KernelReason::Ptrace))
                .then_some(ev.context.ptracer_pid),
            cpu: ev.header.cpu,
            ktime_ns: ev.header.ktime_ns,
        }
    }

    /// Whether this could be the OOM killer's SIGKILL (sent with kernel privilege).
    pub fn is_privileged_kill(&self) -> bool {
        self.signo == super::names::SIGKILL && self.code == "kernel (privileged)"
    }

    /// `kill`, `sigqueue, claims SI_TIMER`, `SEGV_MAPERR`: the human line's `(HOW)`.
    pub fn how_label(&self) -> String {
        sender::how_label(
            self.how.name(),
            &self.code,
            self.code_from.name(),
            self.signo,
            self.si_code,
        )
    }

    /// The sender's ancestry and the sender on one line, pid 1 first:
    /// `systemd(1)>sshd(880)>bash(1200)>kill(1300)`; `...>` first when truncated.
    fn ancestry_column(&self) -> Option<String> {
        let sender = self.sender.as_ref()?;
        let mut chain: Vec<String> = self
            .ancestry
            .iter()
            .rev()
            .map(|a| format!("{}({})", a.comm, a.pid))
            .collect();
        if self.ancestry_truncated {
            chain.insert(0, "...".into());
        }
        chain.push(sender.short());
        Some(chain.join(">"))
    }

    /// Who sent it, for the human line.
    pub fn sender_label(&self) -> String {
        match (&self.sender, self.kernel_reason) {
            (Some(sender), _) => sender.label(),
            (None, Some(KernelReason::Ptrace)) => format!(
                "[{} {}]",
                KernelReason::Ptrace.describe(),
                self.ptracer_pid.unwrap_or(0)
            ),
            (None, Some(reason)) => format!("[{}]", reason.describe()),
            (None, None) => "[unknown]".into(),
        }
    }
}

/// `tracer serve`'s count of signals, by the target's pod.
static SIGNALS_TOTAL: Family = Family {
    name: "tracer_signals_total",
    help: "Signals generated, by signal, delivery result and kernel reason (none: sent by a \
           process with kill(2) and the like), for the target's pod.",
    labels: &["signal", "result", "kernel_reason"],
};

impl Event for SignalRecord {
    const COLUMNS: &'static [Column<Self>] = &[
        Column {
            name: "time",
            default: true,
            value: |e| Some(e.time.clone()),
        },
        Column {
            name: "signal",
            default: true,
            value: |e| Some(e.signal.to_string()),
        },
        Column {
            name: "result",
            default: true,
            value: |e| Some(e.result.into()),
        },
        Column {
            name: "target",
            default: true,
            value: |e| Some(e.target.short()),
        },
        Column {
            name: "target_pod",
            default: true,
            value: |e| pod_column(e.target.pod.as_ref()),
        },
        Column {
            name: "target_container",
            default: true,
            value: |e| e.target.container_column(),
        },
        Column {
            name: "sender",
            default: true,
            value: |e| e.sender.as_ref().map(Process::short),
        },
        Column {
            name: "sender_pod",
            default: true,
            value: |e| pod_column(e.sender.as_ref().and_then(|s| s.pod.as_ref())),
        },
        Column {
            name: "reason",
            default: true,
            value: |e| e.kernel_reason.map(|r| r.name().into()),
        },
        Column {
            name: "how",
            default: true,
            value: |e| Some(e.how.name().into()),
        },
        Column {
            name: "sender_exe",
            default: true,
            value: |e| {
                e.sender
                    .as_ref()
                    .and_then(|s| s.exe.as_deref().map(str::to_owned))
            },
        },
        Column {
            name: "ancestry",
            default: true,
            value: SignalRecord::ancestry_column,
        },
        Column {
            name: "target_pid",
            default: false,
            value: |e| Some(e.target.pid.to_string()),
        },
        Column {
            name: "sender_pid",
            default: false,
            value: |e| e.sender.as_ref().map(|s| s.pid.to_string()),
        },
        Column {
            name: "sender_container",
            default: false,
            value: |e| e.sender.as_ref().and_then(Process::container_column),
        },
        Column {
            name: "code",
            default: false,
            value: |e| Some(e.code.to_string()),
        },
        Column {
            name: "oom_memcg",
            default: false,
            value: |e| e.oom.as_ref().and_then(|o| o.memcg.clone()),
        },
        Column {
            name: "cpu",
            default: false,
            value: |e| Some(e.cpu.to_string()),
        },
    ];

    fn count(&self) -> Option<Count<'_>> {
        let reason = self.kernel_reason.map_or("none", KernelReason::name);
        Some(Count {
            family: &SIGNALS_TOTAL,
            labels: vec![self.signal.to_string(), self.result.into(), reason.into()],
            pod: self.target.pod.as_ref(),
            netns: None,
        })
    }

    fn write_human(&self, w: &mut dyn Write) -> io::Result<()> {
        let time = clock::time_of_day(&self.time);
        writeln!(
            w,
            "{time}  {:<10} {:<16} {} -> {}  ({})",
            self.signal,
            self.result,
            self.sender_label(),
            self.target.label(),
            self.how_label()
        )?;
        if let Some(workload) = self.target.workload() {
            writeln!(w, "    target in {workload}")?;
        }
        if let Some(sender) = &self.sender {
            if let Some(workload) = sender.workload() {
                writeln!(w, "    sender in {workload}")?;
            }
            if let Some(exe) = &sender.exe {
                writeln!(w, "    sender exe: {exe}")?;
            }
        }
        if !self.ancestry.is_empty() {
            let mut chain: Vec<String> = self
                .ancestry
                .iter()
                .rev()
                .map(|a| {
                    format!(
                        "{}({}, up {})",
                        a.comm,
                        a.pid,
                        clock::short_duration(Duration::from_millis(a.running_ms))
                    )
                })
                .collect();
            if self.ancestry_truncated {
                chain.insert(0, "...".into());
            }
            if let Some(sender) = &self.sender {
                chain.push(sender.label());
            }
            writeln!(w, "    ancestry: {}", chain.join(" => "))?;
        }
        if let Some(oom) = &self.oom {
            writeln!(
                w,
                "    OOM kill: memory cgroup {} hit its limit while {} was allocating",
                oom.memcg.as_deref().unwrap_or("(unknown)"),
                oom.allocating.label()
            )?;
        } else if let Some(context) = &self.context {
            writeln!(
                w,
                "    sent by the kernel while {} was running",
                context.label()
            )?;
        }
        Ok(())
    }
}

/// The OOM killer's choice, waiting to be matched with its SIGKILL.
#[derive(Clone, Debug)]
pub struct OomVictim {
    pub victim_pid: u32,
    pub memcg_id: u64,
    pub allocating: Process,
    pub ktime_ns: u64,
}

impl OomVictim {
    pub fn decode(ev: &OomVictimEvent) -> Self {
        Self {
            victim_pid: ev.victim.pid,
            memcg_id: ev.memcg_id,
            allocating: Process::from_task(&ev.allocating),
            ktime_ns: ev.header.ktime_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_claiming_a_timer_counts_as_its_senders() {
        // SAFETY: SignalEvent is plain data; all zeroes is a valid value.
        let mut ev: SignalEvent = unsafe { std::mem::zeroed() };
        ev.signo = 9;
        ev.code = -2;
        ev.info_kind = InfoKind::Siginfo as u32;
        ev.sender.pid = 100;
        ev.target.pid = 200;
        // In rt_sigqueueinfo (x86-64), the siginfo on its stack, the syscall not returned.
        ev.context.nr = 129;
        ev.context.ret = -38i64 as u64;
        ev.context.info_on_stack = 1;
        ev.context.regs_known = 1;
        let record = SignalRecord::decode(&ev, None, &Clock::new());
        assert_eq!(record.kernel_reason, None);
        assert_eq!(record.sender.as_ref().map(|s| s.pid), Some(100));
        assert_eq!(record.how_label(), "sigqueue, claims SI_TIMER");
        let count = record.count().unwrap();
        assert_eq!(count.labels, ["SIGKILL", "delivered", "none"]);
    }

    #[test]
    fn workload_lines() {
        // SAFETY: TaskInfo is plain data; all zeroes is a valid (empty) value.
        let mut p = Process::from_task(&unsafe { std::mem::zeroed::<TaskInfo>() });
        assert_eq!(p.workload(), None);
        p.container = Some(Container {
            id: "4f1c3c0c7b5e7d0a8a6a".into(),
            name: Some("app".into()),
            runtime: Some("containerd"),
            image: None,
        });
        assert_eq!(
            p.workload().as_deref(),
            Some("container app (containerd 4f1c3c0c7b5e)")
        );
        p.pod = Some(Pod {
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: "u1".into(),
            qos: Some("besteffort"),
        });
        assert_eq!(
            p.workload().as_deref(),
            Some("pod shop/web, container app (containerd 4f1c3c0c7b5e)")
        );
        p.container = None;
        p.pod.as_mut().unwrap().name = None;
        assert_eq!(p.workload().as_deref(), Some("pod uid u1"));
    }
}
