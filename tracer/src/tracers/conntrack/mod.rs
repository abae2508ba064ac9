//! `tracer conntrack-drops`: packets netfilter's connection tracking drops, classified, with
//! the kernel's own counters beside the tracer's.
//!
//! The kernel program reports every packet freed with reason NETFILTER_DROP together with this
//! CPU's conntrack statistics of its namespace. Conntrack bumps `insert_failed` (a lost insert
//! race) or `drop` (for instance a full table) on the same CPU right before the packet is
//! freed, while a firewall rule's drop moves neither: comparing each record with the previous
//! one of the same namespace and CPU classifies the packet.

pub mod decode;
pub mod flow;
mod hook;
mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroUsize;

use lru::LruCache;

use anyhow::{bail, Context as _, Result};
use aya::GlobalData;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tracer_common::{
    conntrack::{ConntrackConfig, NetfilterDropEvent, STAT_BYTES, TUPLES_BYTES},
    EventKind,
};

/// Its events, for the command line (their `-o line` columns) and `probe`.
pub use self::decode::{ConntrackDrop, DropClass};
pub use self::flow::{Prefix, Tuple};
use self::{
    decode::TupleLayout,
    hook::HookCallers,
    stats::{CtStats, StatLayout},
};
use super::{decode_record, Tracer};
use crate::{
    clock::Clock,
    enrich::{identity::Identities, selector::Selector},
    hooks::{Attach, Candidate, HookSpec},
    kernel::{btf::KernelBtf, netns::NetnsRef},
    output::Output,
    tracers::netns::discover,
};

pub(crate) const HOOKS: &[HookSpec] = &[HookSpec {
    purpose: "netfilter packet drops",
    candidates: &[
        Candidate {
            program: "kfree_skb",
            attach: Attach::TpBtf("kfree_skb"),
        },
        // Kernels before 6.2 lack bpf_rdonly_cast: the same record, slower to load.
        Candidate {
            program: "kfree_skb_nocast",
            attach: Attach::TpBtf("kfree_skb"),
        },
    ],
    required: true,
}];

/// What the kernel program is given for this kernel (the drop reason to match, the sizes of
/// the structs it copies) and the options (`netns`, `hook`), with the layouts userspace
/// decodes those copies with.
pub(crate) fn kernel_config(
    btf: &KernelBtf,
    netns: Option<u32>,
    hook: bool,
) -> Result<(ConntrackConfig, TupleLayout, StatLayout)> {
    let netfilter_drop_reason = btf
        .enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP")
        .context("this kernel does not report netfilter drop reasons (needs Linux 5.17 or later)")?
        as u32;
    let tuple_layout = TupleLayout::resolve(btf)?;
    let stat_layout = StatLayout::resolve(btf)?;
    if tuple_layout.span() > TUPLES_BYTES || stat_layout.size as usize > STAT_BYTES {
        bail!("this kernel's conntrack structs are larger than tracer expects; please report it");
    }
    let config = ConntrackConfig {
        netfilter_drop_reason,
        netns_inum: netns.unwrap_or(0),
        tuples_size: tuple_layout.span() as u32,
        stat_size: stat_layout.size,
        stat_counters: stat_layout.counters(),
        stack: hook.into(),
    };
    Ok((config, tuple_layout, stat_layout))
}

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// (namespace, CPU) pairs whose last statistics are kept. The least recently used go first:
/// namespaces that are gone, long before a live one's (whose next drop would be compared
/// with zero). Bounds the memory of a long `serve`.
const MAX_LAST_STATS: NonZeroUsize = NonZeroUsize::new(65_536).unwrap();

/// Namespaces whose drops the summary lists, and whose entry counts are cached.
const MAX_TALLIED: NonZeroUsize = NonZeroUsize::new(4_096).unwrap();

/// The least time between two discoveries of the node's namespaces for a drop in one not yet
/// known: a discovery looks at every process's fds, and a full table drops many packets.
const REDISCOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the user asked for on the command line.
#[derive(Clone, Debug, Default)]
pub struct ConntrackOptions {
    pub netns: Option<u32>,
    /// `tcp`, `udp`, ... (IP protocol number).
    pub proto: Option<u8>,
    /// A port of either end, before or after NAT.
    pub port: Option<u16>,
    /// An address (`--host`) and a prefix (`--net`) one end must be in, before or after NAT.
    pub host: Option<Prefix>,
    pub net: Option<Prefix>,
    /// Leave out packets a firewall rule dropped (they are still counted in the summary).
    pub conntrack_only: bool,
    /// Only drops in the network namespaces of these pods (`--pod`, `--workload`,
    /// `--namespace`).
    pub workload: Selector,
    /// Name each drop's netfilter hook (`--hook`): the kernel program copies the drop's stack.
    pub hook: bool,
}

/// Parses `--proto`.
pub fn parse_proto(text: &str) -> Result<u8> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(flow::TCP),
        "udp" => Ok(flow::UDP),
        "icmp" => Ok(flow::ICMP),
        "icmpv6" | "ipv6-icmp" => Ok(flow::ICMPV6),
        "sctp" => Ok(flow::SCTP),
        other => other.parse().map_err(|_| {
            anyhow::anyhow!(
                "unknown protocol `{text}`: use tcp, udp, icmp, icmpv6, sctp or a number"
            )
        }),
    }
}

/// A namespace's figures at start-up.
#[derive(Debug)]
struct Start {
    /// Which namespace they are of: another may take its inode during the run.
    cookie: u64,
    per_cpu: BTreeMap<u32, CtStats>,
}

/// Drops seen in one namespace.
#[derive(Debug, Default, Serialize)]
struct NetnsTally {
    cookie: u64,
    drops: BTreeMap<&'static str, u64>,
}

pub struct ConntrackTracer {
    config: ConntrackConfig,
    options: ConntrackOptions,
    clock: Clock,
    /// Names the netfilter hook of a drop from its kernel stack.
    hooks: HookCallers,
    tuple_layout: TupleLayout,
    stat_layout: StatLayout,
    cpus: Vec<u32>,
    /// The figures of every namespace found at start-up, by inode.
    at_start: HashMap<u64, Start>,
    /// The largest cookie among them. Cookies only grow: a namespace with a cookie up to it
    /// existed at start-up, and without figures of its own (only the kernel held it, or it
    /// could not be entered) its first drops have nothing to compare with.
    newest_at_start: u64,
    /// The statistics of the last record per (namespace cookie, CPU).
    last: LruCache<(u64, u32), CtStats>,
    /// Namespaces (cookies) whose figures `last` evicted: their next drop on a CPU without
    /// figures has no baseline. At most [`MAX_LAST_STATS`]; beyond, the smallest go, and every
    /// cookie up to `evicted_up_to` counts as evicted (cookies only grow, so a namespace made
    /// later is still told apart).
    evicted: BTreeSet<u64>,
    evicted_up_to: u64,
    tally: LruCache<u32, NetnsTally>,
    by_class: BTreeMap<&'static str, u64>,
    warned_no_stats: bool,
    /// Namespaces by inode, rediscovered when a drop names an unknown one (at most every
    /// [`REDISCOVER_EVERY`]: since `discovered`).
    namespaces: BTreeMap<u64, NetnsRef>,
    discovered: std::time::Instant,
    /// Recently read entry counts by namespace inode.
    entries: LruCache<u64, (std::time::Instant, u64)>,
    /// Network namespaces to the pod whose sandbox owns them.
    identities: Identities,
    /// `--pod` and `--namespace`.
    workload: Selector,
}

/// Fields the program reads that a kernel may lack (nf_conntrack as a module keeps its types
/// in /sys/kernel/btf/nf_conntrack).
const REQUIRED_FIELDS: &[(&str, &str)] = &[
    ("sk_buff", "_nfct"),
    ("nf_conn", "tuplehash"),
    ("nf_conn", "ct_net"),
    ("net", "ct.stat"),
    ("net", "net_cookie"),
    ("bpf_array", "pptrs"),
];

impl ConntrackTracer {
    pub fn new(
        btf: &KernelBtf,
        options: ConntrackOptions,
        identities: &Identities,
    ) -> Result<Self> {
        for (s, f) in REQUIRED_FIELDS {
            btf.field_offset(s, f).with_context(|| {
                format!("conntrack-drops needs `{s}.{f}` in the kernel's BTF (is nf_conntrack loaded and built with BTF?)")
            })?;
        }
        let (config, tuple_layout, stat_layout) = kernel_config(btf, options.netns, options.hook)?;
        let workload = options.workload.clone();
        workload.warn_if_unmatched("conntrack-drops", &identities.lock());
        let cpus = stats::possible_cpus()?;
        // Every namespace held from userspace by a process, an open file or a bind mount in any
        // mount namespace (sockets are left out: looking at every one would cost start-up the
        // most). One existing now but not found (held by sockets or the kernel alone) has its
        // first drops classed unknown (see `newest_at_start`), never compared with zero.
        let namespaces = discover::namespaces(false);
        let at_start: HashMap<u64, Start> = namespaces
            .values()
            .filter(|n| options.netns.is_none_or(|want| n.inode == want as u64))
            .filter_map(|n| {
                let (cookie, per_cpu) = stats::read_netns_with_cookie(n, &cpus).ok()?;
                Some((n.inode, Start { cookie, per_cpu }))
            })
            .collect();
        let newest_at_start = at_start.values().map(|s| s.cookie).max().unwrap_or(0);
        let hooks = if options.hook {
            HookCallers::from_kallsyms()
        } else {
            HookCallers::default()
        };
        Ok(Self {
            config,
            options,
            clock: Clock::new(),
            hooks,
            tuple_layout,
            stat_layout,
            cpus,
            at_start,
            newest_at_start,
            last: LruCache::new(MAX_LAST_STATS),
            evicted: BTreeSet::new(),
            evicted_up_to: 0,
            tally: LruCache::new(MAX_TALLIED),
            by_class: BTreeMap::new(),
            warned_no_stats: false,
            namespaces,
            discovered: std::time::Instant::now(),
            entries: LruCache::new(MAX_TALLIED),
            identities: identities.clone(),
            workload,
        })
    }

    /// The statistics this namespace and CPU had before this record: from its previous record,
    /// else from start-up, else zero (a namespace made after start-up starts at zero); `None`
    /// when its previous figures were evicted, or when it existed at start-up without figures.
    fn baseline(&mut self, ev: &NetfilterDropEvent) -> Option<CtStats> {
        let key = (ev.net_cookie, ev.header.cpu);
        if let Some(last) = self.last.get(&key) {
            return Some(*last);
        }
        if ev.net_cookie <= self.evicted_up_to || self.evicted.contains(&ev.net_cookie) {
            return None;
        }
        match self.at_start.get(&(ev.netns_inum as u64)) {
            Some(start) if start.cookie == ev.net_cookie => Some(
                start
                    .per_cpu
                    .get(&ev.header.cpu)
                    .copied()
                    .unwrap_or_default(),
            ),
            _ if ev.net_cookie <= self.newest_at_start => None,
            _ => Some(CtStats::default()),
        }
    }

    /// Keeps `now` as the figures of this namespace and CPU, noting a namespace whose figures
    /// the cache evicted to make room.
    fn remember(&mut self, ev: &NetfilterDropEvent, now: CtStats) {
        let key = (ev.net_cookie, ev.header.cpu);
        match self.last.push(key, now) {
            Some((evicted, _)) if evicted != key => {
                self.evicted.insert(evicted.0);
                if self.evicted.len() > MAX_LAST_STATS.get() {
                    if let Some(smallest) = self.evicted.pop_first() {
                        self.evicted_up_to = self.evicted_up_to.max(smallest);
                    }
                }
            }
            _ => {}
        }
    }

    fn classify(&mut self, ev: &NetfilterDropEvent) -> DropClass {
        if ev.stats_valid == 0 {
            if !self.warned_no_stats {
                log::warn!("conntrack statistics unreadable: such drops are classed unknown");
                self.warned_no_stats = true;
            }
            return DropClass::Unknown;
        }
        let before = self.baseline(ev);
        let now = self.stat_layout.decode(&ev.stats);
        self.remember(ev, now);
        let Some(before) = before else {
            return DropClass::Unknown;
        };
        let grew = now.since(&before);
        match (grew.insert_failed > 0, grew.drop > 0, ev.has_ct != 0) {
            (true, _, _) => DropClass::InsertFailed,
            (false, false, _) => DropClass::Rule,
            // Conntrack dropped the packet before giving it an entry: the entry could not be
            // allocated, which is a full table (or, rarely, the allocation itself failing).
            (false, true, false) => DropClass::TableFull,
            (false, true, true) => DropClass::ConntrackOther,
        }
    }

    /// Entries in the packet's namespace (read from inside it, at most every 100 ms per
    /// namespace) and the global limit.
    fn table_state(&mut self, inode: u64) -> (Option<u64>, Option<u64>) {
        let max = std::fs::read_to_string(CONNTRACK_MAX)
            .ok()
            .and_then(|m| m.trim().parse::<u64>().ok());
        if let Some((at, count)) = self.entries.get(&inode) {
            if at.elapsed() < std::time::Duration::from_millis(100) {
                return (Some(*count), max);
            }
        }
        if !self.namespaces.contains_key(&inode) && self.discovered.elapsed() >= REDISCOVER_EVERY {
            self.namespaces = discover::namespaces(false);
            self.discovered = std::time::Instant::now();
        }
        let count = self
            .namespaces
            .get(&inode)
            .and_then(|n| stats::entries(n).ok());
        if let Some(count) = count {
            self.entries.put(inode, (std::time::Instant::now(), count));
        }
        (count, max)
    }

    fn wanted(&self, drop: &ConntrackDrop) -> bool {
        let o = &self.options;
        let end_in = |prefix: &Prefix| drop.endpoints().any(|(addr, _)| prefix.contains(addr));
        !(o.conntrack_only && drop.class == DropClass::Rule)
            && o.proto
                .is_none_or(|p| drop.flow.is_some_and(|f| f.proto == p))
            && o.port
                .is_none_or(|p| drop.endpoints().any(|(_, port)| port == Some(p)))
            && o.host.as_ref().is_none_or(end_in)
            && o.net.as_ref().is_none_or(end_in)
            && self.workload.matches_pod(drop.pod.as_ref())
    }

    /// One record as a classified, named drop, counted in the summary, and written when the
    /// filters want it: the drop, and how many events were written (0 or 1). What `on_record`
    /// does, for a command that also looks at the drop (`record --probe`).
    pub fn write_drop(&mut self, raw: &[u8], out: &mut Output) -> Result<(ConntrackDrop, u64)> {
        let drop = self.drop_of(raw)?;
        if !self.wanted(&drop) {
            return Ok((drop, 0));
        }
        out.event(&drop)?;
        Ok((drop, 1))
    }

    /// One record as a classified, named drop, counted in the summary: what `on_record`
    /// writes.
    pub fn drop_of(&mut self, raw: &[u8]) -> Result<ConntrackDrop> {
        self.drop_where(raw, |_| true)
            .map(|drop| drop.expect("every drop is kept"))
    }

    /// As [`Self::drop_of`], for the drops `keep` wants (it sees the decoded flow only): the
    /// others are neither named nor counted. What `tracer probe` matches with its probes.
    pub fn drop_where(
        &mut self,
        raw: &[u8],
        keep: impl FnOnce(&ConntrackDrop) -> bool,
    ) -> Result<Option<ConntrackDrop>> {
        let ev: NetfilterDropEvent = decode_record(raw)?;
        let class = self.classify(&ev);
        let mut drop = ConntrackDrop::decode(&ev, class, &self.tuple_layout, &self.clock);
        drop.hook = self.hooks.hook(&ev.stack);
        if !keep(&drop) {
            return Ok(None);
        }
        drop.pod = self.identities.lock().pod_of_netns(
            ev.netns_inum.into(),
            ev.net_cookie,
            ev.header.ktime_ns,
        );
        if class == DropClass::TableFull {
            (drop.ct_count, drop.ct_max) = self.table_state(ev.netns_inum as u64);
        }
        let tally = self
            .tally
            .get_or_insert_mut(ev.netns_inum, NetnsTally::default);
        tally.cookie = ev.net_cookie;
        *tally.drops.entry(class.name()).or_default() += 1;
        *self.by_class.entry(class.name()).or_default() += 1;
        Ok(Some(drop))
    }

    /// Per namespace: the tracer's drops beside the kernel's own counter growth over the run.
    fn per_netns(&self) -> Vec<Value> {
        let now = discover::namespaces(false);
        let mut inodes: Vec<u64> = self.tally.iter().map(|(i, _)| *i as u64).collect();
        inodes.extend(self.at_start.keys().copied());
        inodes.sort_unstable();
        inodes.dedup();
        inodes
            .into_iter()
            .filter_map(|inode| {
                let kernel = now
                    .get(&inode)
                    .and_then(|n| stats::read_netns(n, &self.cpus).ok())
                    .map(|end| {
                        let start = self
                            .at_start
                            .get(&inode)
                            .map(|s| stats::total(&s.per_cpu))
                            .unwrap_or_default();
                        stats::total(&end).since(&start)
                    });
                let tally = self.tally.peek(&(inode as u32));
                if tally.is_none() && kernel.is_none_or(|k| k.is_zero()) {
                    return None;
                }
                // A namespace without drops is only in the summary: its cookie is read now.
                let cookie = tally
                    .map(|t| t.cookie)
                    .or_else(|| now.get(&inode)?.cookie().ok());
                let pod = cookie.and_then(|cookie| {
                    self.identities
                        .lock()
                        .known_netns_owner(inode, cookie)?
                        .pod
                        .clone()
                });
                Some(json!({
                    "netns": inode,
                    "pod": pod,
                    "drops": tally.map(|t| &t.drops),
                    "kernel_counters": kernel,
                }))
            })
            .collect()
    }
}

impl Tracer for ConntrackTracer {
    fn name(&self) -> &'static str {
        "conntrack-drops"
    }

    fn hooks(&self) -> Vec<HookSpec> {
        HOOKS.to_vec()
    }

    fn kinds(&self) -> &'static [EventKind] {
        &[EventKind::NetfilterDrop]
    }

    fn human_header(&self) -> String {
        format!(
            "{:<15}  {:<15} {:<10} {:<5} SRC -> DST (NAT)",
            "TIME (UTC)", "CLASS", "NETNS", "PROTO"
        )
    }

    fn globals(&self) -> Vec<(&'static str, GlobalData<'_>)> {
        vec![("CONNTRACK_CONFIG", (&self.config).into())]
    }

    fn on_record(&mut self, kind: EventKind, raw: &[u8], out: &mut Output) -> Result<u64> {
        if kind != EventKind::NetfilterDrop {
            bail!("the conntrack-drops tracer got a {kind:?} record");
        }
        self.write_drop(raw, out).map(|(_, written)| written)
    }

    fn summarize(&self, summary: &mut Map<String, Value>) {
        summary.insert("by_class".into(), json!(self.by_class));
        summary.insert("by_netns".into(), Value::Array(self.per_netns()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::Format,
        tracers::samples::{bytes, ipv6_rule_drop, objects},
    };

    #[test]
    fn a_drop_not_kept_is_neither_named_nor_counted() {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let mut tracer =
            ConntrackTracer::new(&btf, ConntrackOptions::default(), &Identities::new()).unwrap();
        let raw = bytes(&ipv6_rule_drop());
        let mut seen = None;
        let kept = tracer
            .drop_where(&raw, |drop| {
                seen = drop.flow;
                false
            })
            .unwrap();
        assert!(kept.is_none());
        assert!(seen.is_some(), "the filter sees the decoded flow");
        assert!(tracer.by_class.is_empty() && tracer.tally.is_empty());
        let kept = tracer.drop_where(&raw, |_| true).unwrap().unwrap();
        assert_eq!(kept.flow, seen);
        assert_eq!(tracer.by_class.get("rule"), Some(&1));
    }

    #[test]
    fn a_recorded_ipv6_rule_drop_decodes_into_its_flow() {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let mut tracer =
            ConntrackTracer::new(&btf, ConntrackOptions::default(), &Identities::new()).unwrap();
        let raw = bytes(&ipv6_rule_drop());
        let (mut out, written) = Output::in_memory(Format::Json);
        assert_eq!(
            tracer
                .on_record(EventKind::NetfilterDrop, &raw, &mut out)
                .unwrap(),
            1
        );
        out.flush().unwrap();
        let e = &objects(&written)[0];
        assert_eq!(e["class"], "rule", "{e:#}");
        assert_eq!(e["proto"], "udp", "{e:#}");
        assert_eq!(e["src"], "[fd00::1]:40000", "{e:#}");
        assert_eq!(e["dst"], "[::1]:53", "{e:#}");
        assert_eq!(e["netns"], 4026532999u64, "{e:#}");
        assert!(tracer
            .on_record(EventKind::NetfilterDrop, &raw[..64], &mut out)
            .is_err());
    }

    /// A drop record of namespace `cookie` on CPU 0 whose conntrack counters say
    /// `insert_failed` and `drop` (as the kernel's per-CPU struct holds them).
    fn drop_with_counters(btf: &KernelBtf, cookie: u64, insert_failed: u32) -> Vec<u8> {
        let mut ev = ipv6_rule_drop();
        ev.net_cookie = cookie;
        ev.header.cpu = 0;
        ev.stats_valid = 1;
        for field in ["insert_failed", "drop"] {
            let at = btf.field_offset("ip_conntrack_stat", field).unwrap() as usize;
            ev.stats[at..at + 4].copy_from_slice(&insert_failed.to_ne_bytes());
        }
        bytes(&ev)
    }

    #[test]
    fn first_drops_compare_with_the_namespaces_own_start_up_figures_or_are_unknown() {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let mut tracer =
            ConntrackTracer::new(&btf, ConntrackOptions::default(), &Identities::new()).unwrap();
        // At start-up only namespace 100 was found, with 5 insert failures on CPU 0; every
        // record below has 5 too, and the inode of namespace 100.
        let five = CtStats {
            insert_failed: 5,
            drop: 5,
            ..CtStats::default()
        };
        let inode = ipv6_rule_drop().netns_inum as u64;
        tracer.at_start = HashMap::from([(
            inode,
            Start {
                cookie: 100,
                per_cpu: BTreeMap::from([(0, five)]),
            },
        )]);
        tracer.newest_at_start = 100;
        let (mut out, written) = Output::in_memory(Format::Json);
        // 100: its own figures; 60: existed at start-up (an older cookie), none of its own,
        // then compared with its first drop; 101: made since, from zero.
        for cookie in [100, 60, 60, 101] {
            let raw = drop_with_counters(&btf, cookie, 5);
            tracer
                .on_record(EventKind::NetfilterDrop, &raw, &mut out)
                .unwrap();
        }
        out.flush().unwrap();
        let got: Vec<String> = objects(&written)
            .iter()
            .map(|e| e["class"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, ["rule", "unknown", "rule", "insert_failed"]);
    }

    #[test]
    fn a_namespace_whose_figures_were_evicted_has_unknown_drops_not_misclassified_ones() {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let mut tracer =
            ConntrackTracer::new(&btf, ConntrackOptions::default(), &Identities::new()).unwrap();
        tracer.last = LruCache::new(NonZeroUsize::new(2).unwrap());
        let (mut out, written) = Output::in_memory(Format::Json);
        // Namespaces made after start-up (cookies beyond any at start), whose counters stay
        // at 5 insert failures: after each one's first drop, every drop is a rule's.
        let first = u64::MAX - 10;
        let classes = |tracer: &mut ConntrackTracer, out: &mut Output, cookies: &[u64]| {
            for &cookie in cookies {
                tracer
                    .on_record(
                        EventKind::NetfilterDrop,
                        &drop_with_counters(&btf, cookie, 5),
                        out,
                    )
                    .unwrap();
            }
        };
        classes(&mut tracer, &mut out, &[first, first + 1, first, first + 1]);
        // A third namespace evicts the first one's figures.
        classes(&mut tracer, &mut out, &[first + 2, first]);
        out.flush().unwrap();
        let got: Vec<String> = objects(&written)
            .iter()
            .map(|e| e["class"].as_str().unwrap().to_string())
            .collect();
        // First drops count from zero (a namespace made during the run): 5 insert failures.
        assert_eq!(
            got,
            [
                "insert_failed",
                "insert_failed",
                "rule",
                "rule",
                "insert_failed",
                "unknown"
            ]
        );
    }
}
