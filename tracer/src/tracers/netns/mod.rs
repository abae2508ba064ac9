//! `tracer netns`: network namespaces, and the ones that outlive their pod. Without `--watch`
//! a snapshot (`snapshot`); with it, the namespaces' lifecycle from kernel programs.

pub mod census;
pub mod decode;
pub mod discover;
mod flags;
mod inside;
pub mod snapshot;

/// Its events, for the command line (their `-o line` columns).
pub use self::decode::NetnsRecord;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use lru::LruCache;

use anyhow::{Context as _, Result};
use aya::GlobalData;
use serde_json::{json, Map, Value};
use tracer_common::{
    netns::{CensusConfig, NetnsAction, NetnsConfig, NetnsEvent},
    EventKind,
};

use self::decode::Record;
use super::{decode_record, Tracer};
use crate::{
    clock::Clock,
    enrich::{identity::Identities, selector::Selector},
    hooks::{Attach, Candidate, HookSpec},
    kernel::{preflight, symbols},
    output::Output,
};

const HOOKS: &[HookSpec] = &[
    HookSpec {
        purpose: "netns create (clone)",
        candidates: &[Candidate {
            program: "netns_task_newtask",
            attach: Attach::TpBtf("task_newtask"),
        }],
        required: true,
    },
    HookSpec {
        purpose: "netns create (unshare entry)",
        candidates: &[Candidate {
            program: "netns_unshare_enter",
            attach: Attach::TracePoint("syscalls", "sys_enter_unshare"),
        }],
        required: true,
    },
    HookSpec {
        purpose: "netns create (unshare exit)",
        candidates: &[Candidate {
            program: "netns_unshare_exit",
            attach: Attach::TracePoint("syscalls", "sys_exit_unshare"),
        }],
        required: true,
    },
    HookSpec {
        purpose: "netns teardown start",
        candidates: &[Candidate {
            program: "netns_cleanup_start",
            attach: Attach::TpBtf("workqueue_execute_start"),
        }],
        required: true,
    },
    HookSpec {
        purpose: "netns teardown end",
        candidates: &[Candidate {
            program: "netns_teardown_end",
            attach: Attach::TpBtf("kfree"),
        }],
        required: true,
    },
    HookSpec {
        purpose: "exit inside a netns",
        candidates: &[Candidate {
            program: "netns_process_exit",
            attach: Attach::TpBtf("sched_process_exit"),
        }],
        required: false,
    },
    census::HOOK,
];

/// How long an exit waits before /proc is asked whether anyone is still inside: the exiting
/// process releases its namespaces right after the tracepoint.
const EXIT_SETTLE_NS: u64 = 100_000_000;

/// Creation times remembered, for the lifetime at teardown: the most recent namespaces, so
/// that those whose teardown is never seen do not pile up in a long `serve`.
const MAX_CREATED: NonZeroUsize = NonZeroUsize::new(65_536).unwrap();

pub struct NetnsTracer {
    config: NetnsConfig,
    /// The census program walks when this process renames a thread: a run's snapshots
    /// (`serve`, `record`) use it through [`census::KernelCensus::adopt`].
    census: CensusConfig,
    clock: Clock,
    /// Creation time of the namespaces created during the run, by cookie.
    created: LruCache<u64, u64>,
    /// Cookies whose teardown started and has not ended (the most recent ones: an end lost
    /// with the ring buffer's lost events must not keep its start forever).
    tearing_down: LruCache<u64, ()>,
    /// The last exit inside each non-initial namespace, waiting to be checked: only a
    /// namespace's last exit can be its last holder's, so a flood of exits holds one record per
    /// namespace (and at most [`MAX_CREATED`]).
    pending_exits: LruCache<u64, Record>,
    by_action: BTreeMap<&'static str, u64>,
    /// Namespaces to the pod sandbox owning them.
    identities: Identities,
    /// Only the events of these pods' namespaces are written (all are counted).
    workload: Selector,
}

/// What the programs need from this kernel beyond BTF. Missing pieces only lose detail (the
/// hooks that need them then fail to attach or stay silent), so they are logged, not fatal.
fn kernel_config() -> NetnsConfig {
    let mut config = NetnsConfig::default();
    match symbols::function_range("cleanup_net")
        .and_then(|c| Ok((c, symbols::function_range("net_passive_dec")?)))
    {
        Ok(((start, end), (dec_start, dec_end))) => {
            (config.cleanup_net, config.cleanup_net_end) = (start, end);
            (config.passive_dec, config.passive_dec_end) = (dec_start, dec_end);
        }
        Err(e) => log::warn!("{e:#}; teardown will not be reported"),
    }
    // Kernel threads always live in the initial namespace; kthreadd is pid 2.
    let init_net = crate::kernel::netns::net_ns_link(2);
    match crate::kernel::netns::net_ns_of(2)
        .context("kthreadd's namespace")
        .and_then(|inode| crate::kernel::netns::cookie_of(&init_net, inode))
    {
        Ok(cookie) => config.init_net_cookie = cookie,
        Err(e) => log::warn!("cookie of the initial network namespace: {e:#}"),
    }
    let offsets = preflight::ensure_tracefs().and_then(|()| {
        Ok((
            symbols::tracepoint_field_offset("syscalls", "sys_enter_unshare", "unshare_flags")?,
            symbols::tracepoint_field_offset("syscalls", "sys_exit_unshare", "ret")?,
        ))
    });
    match offsets {
        Ok((flags, ret)) => {
            config.unshare_flags_offset = flags;
            config.unshare_ret_offset = ret;
        }
        Err(e) => log::debug!("{e:#}; the unshare hooks will not attach"),
    }
    config
}

impl NetnsTracer {
    /// Writes only the events of the namespaces of pods `workload` selects (`--pod`,
    /// `--workload`, `--namespace`); says so when none matches now.
    pub fn only(mut self, workload: Selector) -> Self {
        workload.warn_if_unmatched("netns", &self.identities.lock());
        self.workload = workload;
        self
    }

    pub fn new(identities: &Identities) -> Self {
        Self {
            config: kernel_config(),
            census: census::config(),
            clock: Clock::new(),
            created: LruCache::new(MAX_CREATED),
            tearing_down: LruCache::new(MAX_CREATED),
            pending_exits: LruCache::new(MAX_CREATED),
            by_action: BTreeMap::new(),
            identities: identities.clone(),
            workload: Selector::default(),
        }
    }

    /// Writes `action` about `record`'s namespace, named after the sandbox owning it.
    fn emit(&mut self, action: &'static str, record: &Record, out: &mut Output) -> Result<u64> {
        let created = self.created.peek(&record.cookie).copied();
        let owner = self
            .identities
            .lock()
            .netns_owner(record.inode, record.cookie, record.ktime_ns)
            .cloned()
            .unwrap_or_default();
        let event = NetnsRecord::new(action, record, created, owner, &self.clock);
        *self.by_action.entry(action).or_default() += 1;
        if !self.workload.matches_pod(event.pod.as_ref()) {
            return Ok(0);
        }
        out.event(&event)?;
        Ok(1)
    }

    /// The pending exits after which no process is inside while a bind mount, in any mount
    /// namespace, still holds the namespace (the same one: its cookie is checked). One /proc
    /// scan for all of them; fds are not looked at (too costly for every exit).
    fn last_holder_exits(&mut self, final_flush: bool) -> Vec<Record> {
        let now = Clock::monotonic_now_ns();
        let settled: Vec<u64> = self
            .pending_exits
            .iter()
            .filter(|(_, r)| final_flush || now.saturating_sub(r.ktime_ns) >= EXIT_SETTLE_NS)
            .map(|(cookie, _)| *cookie)
            .collect();
        let mut ready: Vec<Record> = settled
            .iter()
            .filter_map(|cookie| self.pending_exits.pop(cookie))
            .collect();
        ready.sort_by_key(|r| r.ktime_ns);
        if ready.is_empty() {
            return Vec::new();
        }
        let (occupied, mounted) = discover::occupied_and_mounted();
        ready
            .into_iter()
            .filter(|r| !occupied.contains(&r.inode))
            .filter(|r| {
                mounted.get(&r.inode).is_some_and(|found| {
                    found.mounts.iter().any(|m| {
                        m.open(r.inode)
                            .and_then(|netns| {
                                crate::kernel::netns::in_netns(
                                    &netns,
                                    crate::kernel::netns::own_cookie,
                                )
                            })
                            .ok()
                            == Some(r.cookie)
                    })
                })
            })
            .collect()
    }
}

impl Tracer for NetnsTracer {
    fn human_header(&self) -> String {
        format!(
            "{:<15}  {:<16} {:<11} {:<8} {:<24} LIFETIME",
            "TIME (UTC)", "ACTION", "INODE", "COOKIE", "PROCESS"
        )
    }

    fn name(&self) -> &'static str {
        "netns"
    }

    fn hooks(&self) -> Vec<HookSpec> {
        HOOKS.to_vec()
    }

    fn kinds(&self) -> &'static [EventKind] {
        &[EventKind::Netns]
    }

    fn globals(&self) -> Vec<(&'static str, GlobalData<'_>)> {
        vec![
            ("NETNS_CONFIG", (&self.config).into()),
            ("NETNS_CENSUS_CONFIG", (&self.census).into()),
        ]
    }

    fn on_record(&mut self, kind: EventKind, raw: &[u8], out: &mut Output) -> Result<u64> {
        if kind != EventKind::Netns {
            return Ok(0);
        }
        let Some(record) = Record::decode(&decode_record::<NetnsEvent>(raw)?) else {
            return Ok(0);
        };
        match record.action {
            NetnsAction::Create => {
                // Before the namespace's creation is recorded: a create has no lifetime.
                let written = self.emit("create", &record, out)?;
                self.created.put(record.cookie, record.ktime_ns);
                Ok(written)
            }
            // A batch may list a namespace twice if it was queued while the list was walked.
            NetnsAction::TeardownStart if self.tearing_down.put(record.cookie, ()).is_some() => {
                Ok(0)
            }
            NetnsAction::TeardownStart => self.emit("teardown_start", &record, out),
            NetnsAction::TeardownEnd => {
                let written = self.emit("teardown_end", &record, out)?;
                self.tearing_down.pop(&record.cookie);
                self.created.pop(&record.cookie);
                Ok(written)
            }
            NetnsAction::ProcessExit => {
                // The latest exit replaces an earlier one of the same namespace.
                self.pending_exits.put(record.cookie, record);
                Ok(0)
            }
        }
    }

    fn flush(&mut self, out: &mut Output, final_flush: bool) -> Result<u64> {
        let mut written = 0;
        for record in self.last_holder_exits(final_flush) {
            written += self.emit("last_holder_exit", &record, out)?;
        }
        Ok(written)
    }

    fn summarize(&self, summary: &mut Map<String, Value>) {
        summary.insert("by_action".into(), json!(self.by_action));
        summary.insert(
            "teardown_unfinished".into(),
            json!(self.tearing_down.iter().map(|(c, _)| c).collect::<Vec<_>>()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::Format,
        tracers::samples::{bytes, netns, objects},
    };

    #[test]
    fn recorded_lifecycle_records_decode_into_events_with_a_lifetime() {
        let mut tracer = NetnsTracer::new(&Identities::new());
        let (mut out, written) = Output::in_memory(Format::Json);
        let t0 = Clock::monotonic_now_ns();
        let mut n = 0;
        for (action, at) in [
            (NetnsAction::Create, t0),
            (NetnsAction::TeardownStart, t0 + 2_000_000_000),
            // Listed twice in one cleanup batch: reported once.
            (NetnsAction::TeardownStart, t0 + 2_000_000_001),
            (NetnsAction::TeardownEnd, t0 + 2_500_000_000),
        ] {
            n += tracer
                .on_record(EventKind::Netns, &bytes(&netns(action, 77, at)), &mut out)
                .unwrap();
        }
        out.flush().unwrap();
        assert_eq!(n, 3);
        let events = objects(&written);
        let actions: Vec<&str> = events
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["create", "teardown_start", "teardown_end"]);
        assert_eq!(events[2]["lifetime_ms"], 2500, "{:#}", events[2]);
        assert_eq!(events[0]["inode"], 4026532999u64, "{:#}", events[0]);
        let create = bytes(&netns(NetnsAction::Create, 1, t0));
        assert!(tracer
            .on_record(EventKind::Netns, &create[..8], &mut out)
            .is_err());
    }

    #[test]
    fn pending_state_stays_bounded_when_ends_are_lost_and_exits_flood() {
        let mut tracer = NetnsTracer::new(&Identities::new());
        let (mut out, _) = Output::in_memory(Format::Json);
        let t0 = Clock::monotonic_now_ns();
        // 200,000 exits in 3 namespaces between two flushes: one waits per namespace.
        for i in 0..200_000u64 {
            let exit = netns(NetnsAction::ProcessExit, 1 + i % 3, t0 + i);
            tracer
                .on_record(EventKind::Netns, &bytes(&exit), &mut out)
                .unwrap();
        }
        assert_eq!(tracer.pending_exits.len(), 3);
        assert_eq!(
            tracer.pending_exits.peek(&1).map(|r| r.ktime_ns),
            Some(t0 + 199_998)
        );
        // Teardowns whose end was lost: the most recent are kept, no more.
        let starts = MAX_CREATED.get() as u64 + 1_000;
        for cookie in 0..starts {
            let start = netns(NetnsAction::TeardownStart, cookie, t0);
            tracer
                .on_record(EventKind::Netns, &bytes(&start), &mut out)
                .unwrap();
        }
        assert_eq!(tracer.tearing_down.len(), MAX_CREATED.get());
        assert!(tracer.tearing_down.contains(&(starts - 1)));
    }
}
