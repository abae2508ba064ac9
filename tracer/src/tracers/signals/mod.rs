//! `tracer signals`: who sent which signal to which process, and why it died.

pub mod decode;
pub mod names;
pub mod sender;
pub mod senders;

/// Its events, for the command line (their `-o line` columns).
pub use self::decode::SignalRecord;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroUsize;

use lru::LruCache;

use anyhow::{bail, Context as _, Result};
use aya::{Ebpf, GlobalData};
use serde_json::{json, Map, Value};
use tracer_common::{
    signal::{DescribedSignalEvent, OomVictimEvent, SignalEvent, SignalFilter, TARGET_CGROUPS_MAP},
    EventKind,
};

use self::{
    decode::{OomDetail, OomVictim},
    names::{explain_exit_code, KernelReason, SIGKILL},
    senders::Senders,
};
use super::{decode_record, Tracer};
use crate::{
    clock::Clock,
    enrich::{cgroup, filter::WorkloadFilter, identity::Identities, selector::Selector},
    hooks::{Attach, Candidate, HookSpec},
    output::Output,
};

pub(crate) const HOOKS: &[HookSpec] = &[
    HookSpec {
        purpose: "signal generation",
        candidates: &[
            Candidate {
                program: "signal_generate",
                attach: Attach::TpBtf("signal_generate"),
            },
            // Kernels before 6.2 lack bpf_rdonly_cast: the same capture, slower to load.
            Candidate {
                program: "signal_gen_nocast",
                attach: Attach::TpBtf("signal_generate"),
            },
            // Kernels before 5.17 lack bpf_loop: the same capture, slower still.
            Candidate {
                program: "signal_gen_noloop",
                attach: Attach::TpBtf("signal_generate"),
            },
            // Kernels before 5.15 lack bpf_task_pt_regs: senders are then not verified.
            Candidate {
                program: "signal_gen_noregs",
                attach: Attach::TpBtf("signal_generate"),
            },
        ],
        required: true,
    },
    HookSpec {
        purpose: "OOM killer victim selection",
        candidates: &[
            Candidate {
                program: "mark_victim",
                attach: Attach::TpBtf("mark_victim"),
            },
            // Kernels before 6.2 lack bpf_rdonly_cast.
            Candidate {
                program: "mark_victim_nocast",
                attach: Attach::TpBtf("mark_victim"),
            },
        ],
        required: false,
    },
];

/// How long a privileged SIGKILL waits for the OOM killer's `mark_victim` record (the kernel
/// sends the SIGKILL first, then marks the victim, microseconds apart).
const OOM_MATCH_WINDOW_NS: u64 = 200_000_000;

/// SIGKILLs remembered to explain exit codes 137 in the summary: the most recent targets, so
/// that a long `serve` keeps a bounded number.
const MAX_KILLS: NonZeroUsize = NonZeroUsize::new(1_024).unwrap();

/// What the user asked for on the command line.
#[derive(Clone, Debug, Default)]
pub struct SignalsOptions {
    pub pid: Option<u32>,
    pub sender_pid: Option<u32>,
    pub signals: Option<String>,
    pub failed_only: bool,
    /// Trace `pid` even though no such process exists yet.
    pub wait: bool,
    /// Only signals to these workloads.
    pub workload: Selector,
}

/// The process (tgid) a pid or thread id belongs to, from /proc.
fn process_of(id: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{id}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Who sent a signal, as the summary's `by_sender` counts it: static names, not a string made
/// for each signal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SentBy {
    /// The kernel, for this reason.
    Kernel(&'static str),
    /// A process, this way (`kill`, `tgkill`, ...).
    Process(&'static str),
}

pub struct SignalsTracer {
    filter: SignalFilter,
    clock: Clock,
    /// Privileged SIGKILLs held back until their `mark_victim` arrives or the window passes.
    held: VecDeque<SignalRecord>,
    /// Recent OOM victims by pid, for a SIGKILL that comes after its `mark_victim`.
    oom_victims: HashMap<u32, OomVictim>,
    memcg_root: Option<std::path::PathBuf>,
    identities: Identities,
    /// The sender descriptions the kernel program sent, per CPU and slot.
    senders: Senders,
    /// Signal records that came without a description and took the cached one (the summary's
    /// `sender_descriptions_reused`: a test can see that the cache is used).
    descriptions_reused: u64,
    workload: WorkloadFilter,
    by_signal: BTreeMap<String, u64>,
    by_result: BTreeMap<&'static str, u64>,
    by_sender: BTreeMap<SentBy, u64>,
    /// The last SIGKILL delivered to each target, to explain an exit code 137.
    kills: LruCache<u32, SignalRecord>,
}

impl SignalsTracer {
    pub fn new(options: &SignalsOptions, identities: &Identities) -> Result<Self> {
        let mut filter = SignalFilter::default();
        if let Some(pid) = options.pid {
            filter.target_pid = match process_of(pid) {
                Some(tgid) => tgid,
                None if options.wait => pid,
                None => bail!(
                    "no process with pid {pid} exists (it may have exited); \
                     use --wait to trace it once it appears"
                ),
            };
        }
        if let Some(pid) = options.sender_pid {
            filter.sender_pid = process_of(pid).unwrap_or(pid);
        }
        if let Some(list) = &options.signals {
            filter.signal_mask = names::parse_signal_mask(list).context("--signal")?;
        }
        filter.failed_only = options.failed_only as u32;
        filter.target_cgroups_only = options.workload.is_active() as u32;
        if options.workload.is_active() && !identities.lock().has_cgroup_ids() {
            bail!(
                "--container, --pod, --workload and --namespace need a cgroup v2 (unified) \
                 hierarchy, and none is mounted"
            );
        }
        options
            .workload
            .warn_if_unmatched("signals", &identities.lock());
        Ok(Self {
            filter,
            clock: Clock::new(),
            held: VecDeque::new(),
            oom_victims: HashMap::new(),
            memcg_root: cgroup::hierarchy_root(Some("memory")),
            identities: identities.clone(),
            senders: Senders::default(),
            descriptions_reused: 0,
            workload: WorkloadFilter::new(options.workload.clone()),
            by_signal: BTreeMap::new(),
            by_result: BTreeMap::new(),
            by_sender: BTreeMap::new(),
            kills: LruCache::new(MAX_KILLS),
        })
    }

    fn oom_detail(&self, victim: &OomVictim) -> OomDetail {
        OomDetail {
            memcg: self
                .memcg_root
                .as_deref()
                .and_then(|root| cgroup::path_of(root, victim.memcg_id)),
            memcg_id: victim.memcg_id,
            allocating: victim.allocating.clone(),
        }
    }

    /// Marks `record` as the OOM killer's if its target was chosen as a victim.
    fn match_oom(&mut self, record: &mut SignalRecord) -> bool {
        let Some(victim) = self.oom_victims.remove(&record.target.pid) else {
            return false;
        };
        record.kernel_reason = Some(KernelReason::Oom);
        record.oom = Some(self.oom_detail(&victim));
        true
    }

    fn emit(&mut self, record: SignalRecord, out: &mut Output) -> Result<u64> {
        // Looked up before inserting: a signal's name is a key already but for its first time.
        match self.by_signal.get_mut(&*record.signal) {
            Some(count) => *count += 1,
            None => {
                self.by_signal.insert(record.signal.to_string(), 1);
            }
        }
        *self.by_result.entry(record.result).or_default() += 1;
        let sender = match record.kernel_reason {
            Some(reason) => SentBy::Kernel(reason.describe()),
            None => SentBy::Process(record.how.name()),
        };
        *self.by_sender.entry(sender).or_default() += 1;
        out.event(&record)?;
        if record.signo == SIGKILL && record.result == "delivered" {
            self.kills.put(record.target.pid, record);
        }
        Ok(1)
    }

    fn on_signal(&mut self, raw: &[u8], out: &mut Output) -> Result<u64> {
        // A record long enough to carry a sender description carries one.
        let (ev, description) = if raw.len() >= size_of::<DescribedSignalEvent>() {
            let described = decode_record::<DescribedSignalEvent>(raw)?;
            let (cpu, slot) = (described.event.header.cpu, described.event.sender_slot);
            let description = self.senders.store(cpu, slot, &described.description)?;
            (described.event, Some(description))
        } else {
            let ev = decode_record::<SignalEvent>(raw)?;
            let description = self.senders.get(ev.header.cpu, ev.sender_slot);
            self.descriptions_reused += u64::from(description.is_some());
            if description.is_none() {
                log::warn!(
                    "signal record refers to sender slot {} of CPU {}, which sent nothing; \
                     its sender is shown without executable and ancestry",
                    ev.sender_slot,
                    ev.header.cpu
                );
            }
            (ev, description)
        };
        let mut record = SignalRecord::decode(&ev, description.as_deref(), &self.clock);
        // Now, not when the record is written: a killed process's cgroup goes away soon.
        let at_ns = record.ktime_ns;
        for process in [
            record.sender.as_mut(),
            Some(&mut record.target),
            record.context.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            process.enrich(&mut self.identities.lock(), at_ns);
        }
        if record.is_privileged_kill() && !self.match_oom(&mut record) {
            self.held.push_back(record);
            return Ok(0);
        }
        self.emit(record, out)
    }

    fn on_oom_victim(&mut self, raw: &[u8], out: &mut Output) -> Result<u64> {
        let mut victim = OomVictim::decode(&decode_record::<OomVictimEvent>(raw)?);
        victim
            .allocating
            .enrich(&mut self.identities.lock(), victim.ktime_ns);
        if let Some(i) = self
            .held
            .iter()
            .position(|r| r.target.pid == victim.victim_pid)
        {
            let mut record = self.held.remove(i).expect("index from position");
            record.kernel_reason = Some(KernelReason::Oom);
            record.oom = Some(self.oom_detail(&victim));
            return self.emit(record, out);
        }
        self.oom_victims.insert(victim.victim_pid, victim);
        Ok(0)
    }

    /// One line per target that got a SIGKILL and is gone now: the likely cause of its 137.
    fn exit_code_findings(&self) -> Vec<Value> {
        // Oldest first.
        self.kills
            .iter()
            .rev()
            .map(|(_, record)| record)
            .filter(|r| !std::path::Path::new(&format!("/proc/{}", r.target.pid)).exists())
            .map(|r| {
                let cause = match (&r.sender, &r.oom) {
                    (_, Some(oom)) => format!(
                        "the OOM killer (memory cgroup {})",
                        oom.memcg.as_deref().unwrap_or("unknown")
                    ),
                    (Some(sender), None) => format!("{} with {}", sender.label(), r.how_label()),
                    // The task the kernel generated it for: the writer of an F_SETSIG.
                    (None, None) => match &r.context {
                        Some(context) => {
                            format!("{} while {} ran", r.sender_label(), context.label())
                        }
                        None => r.sender_label(),
                    },
                };
                let target = match r.target.workload() {
                    Some(workload) => format!("{} in {workload}", r.target.label()),
                    None => r.target.label(),
                };
                Value::String(format!(
                    "{target} is gone: exit code {}; SIGKILL from {cause} at {}",
                    explain_exit_code(128 + SIGKILL),
                    r.time
                ))
            })
            .collect()
    }
}

impl Tracer for SignalsTracer {
    fn name(&self) -> &'static str {
        "signals"
    }

    fn hooks(&self) -> Vec<HookSpec> {
        HOOKS.to_vec()
    }

    fn kinds(&self) -> &'static [EventKind] {
        &[EventKind::Signal, EventKind::OomVictim]
    }

    fn human_header(&self) -> String {
        format!(
            "{:<15}  {:<10} {:<16} SENDER -> TARGET  (HOW)",
            "TIME (UTC)", "SIGNAL", "RESULT"
        )
    }

    fn globals(&self) -> Vec<(&'static str, GlobalData<'_>)> {
        vec![("SIGNAL_FILTER", (&self.filter).into())]
    }

    fn use_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.workload
            .attach(ebpf, TARGET_CGROUPS_MAP, &self.identities.lock())
    }

    fn on_record(&mut self, kind: EventKind, raw: &[u8], out: &mut Output) -> Result<u64> {
        match kind {
            EventKind::Signal => self.on_signal(raw, out),
            EventKind::OomVictim => self.on_oom_victim(raw, out),
            other => bail!("the signals tracer got a {other:?} record"),
        }
    }

    fn identities_refreshed(&mut self) {
        self.workload.sync(&self.identities.lock());
    }

    fn flush(&mut self, out: &mut Output, final_flush: bool) -> Result<u64> {
        let now = Clock::monotonic_now_ns();
        let mut written = 0;
        while let Some(first) = self.held.front() {
            if !final_flush && now.saturating_sub(first.ktime_ns) < OOM_MATCH_WINDOW_NS {
                break;
            }
            let record = self.held.pop_front().expect("front exists");
            written += self.emit(record, out)?;
        }
        self.oom_victims
            .retain(|_, v| now.saturating_sub(v.ktime_ns) < OOM_MATCH_WINDOW_NS);
        Ok(written)
    }

    fn summarize(&self, summary: &mut Map<String, Value>) {
        summary.insert("by_signal".into(), json!(self.by_signal));
        summary.insert("by_result".into(), json!(self.by_result));
        let by_sender: BTreeMap<String, u64> = self
            .by_sender
            .iter()
            .map(|(sender, count)| {
                let sender = match sender {
                    SentBy::Kernel(reason) => reason.to_string(),
                    SentBy::Process(how) => format!("process ({how})"),
                };
                (sender, *count)
            })
            .collect();
        summary.insert("by_sender".into(), json!(by_sender));
        summary.insert(
            "sender_descriptions_reused".into(),
            json!(self.descriptions_reused),
        );
        if let Some(filter) = self.workload.summary() {
            summary.insert("workload_filter".into(), filter);
        }
        // Processes in them were named after no container: say so, it may be an attempt.
        summary.insert(
            "cgroups_unlike_their_runtime_record".into(),
            json!(self.identities.lock().status().impostors),
        );
        let findings = self.exit_code_findings();
        if !findings.is_empty() {
            summary.insert("exit_codes".into(), Value::Array(findings));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::Format,
        tracers::samples::{bytes, kill, objects, oom_victim},
    };

    #[test]
    fn a_recorded_kill_decodes_into_its_event() {
        let mut tracer =
            SignalsTracer::new(&SignalsOptions::default(), &Identities::new()).unwrap();
        let (mut out, written) = Output::in_memory(Format::Json);
        let n = tracer
            .on_record(EventKind::Signal, &bytes(&kill(false)), &mut out)
            .unwrap();
        out.flush().unwrap();
        assert_eq!(n, 1);
        let events = objects(&written);
        let e = &events[0];
        assert_eq!(
            (e["type"].as_str(), e["signal"].as_str()),
            (Some("signal"), Some("SIGKILL"))
        );
        assert_eq!(e["result"], "delivered");
        assert_eq!(e["sender"]["pid"], 4242);
        assert_eq!(e["sender"]["exe"], "/usr/bin/pkill");
        assert_eq!(e["how"], "kill");
        assert_eq!(e["target"]["comm"], "server");
        assert_eq!(e["kernel_reason"], Value::Null);
        assert_eq!(e["ancestry"][0]["comm"], "systemd");
        // A short record is an error, not a panic.
        assert!(tracer
            .on_record(EventKind::Signal, &bytes(&kill(false))[..40], &mut out)
            .is_err());
    }

    #[test]
    fn a_privileged_kill_waits_for_the_oom_killers_mark() {
        let mut tracer =
            SignalsTracer::new(&SignalsOptions::default(), &Identities::new()).unwrap();
        let (mut out, written) = Output::in_memory(Format::Json);
        // Held back: the OOM killer marks its victim just after sending the SIGKILL.
        let held = tracer
            .on_record(EventKind::Signal, &bytes(&kill(true)), &mut out)
            .unwrap();
        assert_eq!(held, 0);
        let n = tracer
            .on_record(EventKind::OomVictim, &bytes(&oom_victim(7942)), &mut out)
            .unwrap();
        assert_eq!(n, 1);
        // Another privileged kill with no mark goes out as the kernel's at the final flush.
        let mut other = kill(true);
        other.event.target.pid = 8000;
        tracer
            .on_record(EventKind::Signal, &bytes(&other), &mut out)
            .unwrap();
        assert_eq!(tracer.flush(&mut out, true).unwrap(), 1);
        out.flush().unwrap();
        let events = objects(&written);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(events[0]["kernel_reason"], "oom");
        assert_eq!(events[0]["sender"], Value::Null);
        assert_eq!(events[0]["oom"]["allocating"]["comm"], "hog");
        assert_eq!(events[1]["target"]["pid"], 8000);
        assert_ne!(events[1]["kernel_reason"], "oom");
        let mut summary = Map::new();
        tracer.summarize(&mut summary);
        assert_eq!(summary["by_signal"]["SIGKILL"], 2);
    }
}
