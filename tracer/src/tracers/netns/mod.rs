//! `tracer netns`: network namespaces, and the ones that outlive their pod. Without `--watch`
//! a snapshot (`snapshot`); with it, the namespaces' lifecycle from kernel programs.

pub mod census;
pub mod decode;
pub mod discover;
mod flags;
mod inside;
mod orphans;
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

use self::{
    decode::Record,
    orphans::{Orphans, Release},
};
use super::{decode_record, Tracer};
use crate::{
    clock::Clock,
    enrich::{
        identity::{Identities, Identity},
        selector::Selector,
    },
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
    /// The namespaces' userspace holders, followed until the last one goes.
    orphans: Orphans,
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
    match symbols::all_function_ranges(["cleanup_net", "net_passive_dec"]) {
        Ok([(start, end), (dec_start, dec_end)]) => {
            (config.cleanup_net, config.cleanup_net_end) = (start, end);
            (config.passive_dec, config.passive_dec_end) = (dec_start, dec_end);
        }
        Err(e) => log::warn!("{e:#}; teardown will not be reported"),
    }
    let init_net = crate::kernel::netns::net_ns_link(crate::kernel::netns::KTHREADD);
    match crate::kernel::netns::initial_net_ns()
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
            orphans: Orphans::new(),
            by_action: BTreeMap::new(),
            identities: identities.clone(),
            workload: Selector::default(),
        }
    }

    /// Writes `action` about `record`'s namespace, named after the sandbox owning it.
    fn emit(&mut self, action: &'static str, record: &Record, out: &mut Output) -> Result<u64> {
        let created = self.created.peek(&record.cookie).copied();
        let owner = self.owner(record.inode, record.cookie, record.ktime_ns);
        let event = NetnsRecord::new(action, record, created, owner, &self.clock);
        self.write(event, out)
    }

    /// Writes a `last_holder_exit`.
    fn emit_release(&mut self, release: &Release, out: &mut Output) -> Result<u64> {
        let created = self.created.peek(&release.cookie).copied();
        let owner = self.owner(release.inode, release.cookie, release.ktime_ns);
        let event = NetnsRecord::released(release, created, owner, &self.clock);
        self.write(event, out)
    }

    /// The sandbox owning a namespace.
    fn owner(&self, inode: u64, cookie: u64, ktime_ns: u64) -> Identity {
        self.identities
            .lock()
            .netns_owner(inode, cookie, ktime_ns)
            .cloned()
            .unwrap_or_default()
    }

    fn write(&mut self, event: NetnsRecord, out: &mut Output) -> Result<u64> {
        *self.by_action.entry(event.action).or_default() += 1;
        if !self.workload.matches_pod(event.pod.as_ref()) {
            return Ok(0);
        }
        out.event(&event)?;
        Ok(1)
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

    /// The programs are attached, no event is read yet: the namespaces orphaned before the run
    /// are followed from here on, with the census this object attached (the run is "ready"
    /// after this).
    fn use_maps(&mut self, ebpf: &mut aya::Ebpf) -> Result<()> {
        self.orphans.start(census::KernelCensus::adopt(ebpf));
        Ok(())
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
                // Its creator may leave it (`ip netns add`) to a bind mount or an fd.
                self.orphans.settle(record);
                Ok(written)
            }
            // A batch may list a namespace twice if it was queued while the list was walked.
            NetnsAction::TeardownStart if self.tearing_down.put(record.cookie, ()).is_some() => {
                Ok(0)
            }
            NetnsAction::TeardownStart => {
                // Nothing holds it any more: a followed namespace's last holder went first.
                let mut written = 0;
                if let Some(release) = self.orphans.teardown(&record) {
                    written += self.emit_release(&release, out)?;
                }
                Ok(written + self.emit("teardown_start", &record, out)?)
            }
            NetnsAction::TeardownEnd => {
                let written = self.emit("teardown_end", &record, out)?;
                self.tearing_down.pop(&record.cookie);
                self.created.pop(&record.cookie);
                Ok(written)
            }
            NetnsAction::ProcessExit => {
                // The latest exit replaces an earlier one of the same namespace.
                self.orphans.settle(record);
                Ok(0)
            }
        }
    }

    fn flush(&mut self, out: &mut Output, final_flush: bool) -> Result<u64> {
        let mut written = 0;
        for release in self.orphans.poll(final_flush) {
            written += self.emit_release(&release, out)?;
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
    use super::{census::KernelRefs, discover::HolderRef, *};
    use crate::{
        output::{Event as _, Format},
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
    fn pending_state_stays_bounded_when_ends_are_lost() {
        let mut tracer = NetnsTracer::new(&Identities::new());
        let (mut out, _) = Output::in_memory(Format::Json);
        let t0 = Clock::monotonic_now_ns();
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

    #[test]
    fn a_release_says_what_went_and_what_holds_the_namespace_now() {
        let clock = Clock::new();
        let release = Release {
            inode: 4026532999,
            cookie: 9,
            process: None,
            ktime_ns: Clock::monotonic_now_ns(),
            released: vec![HolderRef {
                kind: "bind mount",
                pid: None,
                comm: None,
                what: "/run/netns/x (mount ns 4026531841)".into(),
            }],
            held_by: vec!["kernel"],
            kernel_refs: Some(KernelRefs {
                refs: Some(2),
                passive: Some(3),
            }),
        };
        let event = NetnsRecord::released(&release, None, Identity::default(), &clock);
        let mut human = Vec::new();
        event.write_human(&mut human).unwrap();
        let human = String::from_utf8(human).unwrap();
        assert!(
            human.contains("last_holder_exit 4026532999")
                && human.ends_with(
                    "  bind mount /run/netns/x (mount ns 4026531841); still held by the kernel \
                     (2 references, 3 passive)\n"
                ),
            "{human}"
        );
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["held_by"], json!(["kernel"]));
        assert_eq!(json["kernel_refs"]["refs"], 2);
        assert_eq!(json["released"][0]["kind"], "bind mount");
        // Other events carry none of it.
        let create = Record::decode(&netns(NetnsAction::Create, 9, 1)).unwrap();
        let json = serde_json::to_value(NetnsRecord::new(
            "create",
            &create,
            None,
            Identity::default(),
            &clock,
        ))
        .unwrap();
        assert!(
            json.get("held_by").is_none() && json.get("released").is_none(),
            "{json}"
        );
    }
}
