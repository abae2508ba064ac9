//! `tracer probe TARGET`: which pods on this node cannot reach TARGET, and why. From a thread
//! inside each selected network namespace (setns: nothing runs in the containers) a TCP
//! connect, UDP exchange or ICMP echo; meanwhile the conntrack-drops programs are attached,
//! and each failed probe is explained by the drops of its own flow (namespace inode, protocol,
//! addresses, source port or echo id), wherever on the node they happened.

mod attempt;
mod explain;
pub mod target;

#[cfg(test)]
pub use explain::samples;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    path::Path,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use aya::GlobalData;
use serde_json::{json, Map, Value};
use tracer_common::EventKind;

use self::{
    explain::{Flow, ProbeResult, SeenDrop, Status, Subject},
    target::{Kind, Target},
};
use crate::{
    enrich::{
        identity::{Identities, Pod},
        selector::Selector,
    },
    hooks::HookSpec,
    kernel::{
        btf::KernelBtf,
        netns::{self, NetnsRef},
    },
    output::{Format, Output},
    pipeline::StopWhen,
    session::{prepare, trace_into, RunConfig},
    tracers::{
        conntrack::{flow::UDP, ConntrackDrop, ConntrackOptions, ConntrackTracer},
        netns::discover,
        Tracer,
    },
};

/// Drops of the target's flows kept until the probes they belong to end; the oldest go first.
const MAX_KEPT_DROPS: usize = 65_536;

/// What the command line asked for.
pub struct ProbeOptions {
    pub target: Target,
    pub timeout: Duration,
    pub parallel: usize,
    /// Every namespace on the node, not only pods'.
    pub all_netns: bool,
    /// Only these namespaces (inodes).
    pub netns: Vec<u64>,
    /// `--pod`, `--namespace`.
    pub workload: Selector,
    pub format: Format,
    pub buffer_mb: u32,
}

/// One namespace to probe from.
struct Job {
    subject: Subject,
    /// The ways into the namespace; none for a `--netns` inode nothing in userspace holds.
    netns: Option<NetnsRef>,
    /// The cookie the namespace had when it was selected: a namespace that took its inode
    /// since is not the one selected.
    cookie: Option<u64>,
}

/// The namespaces to probe from.
fn select(options: &ProbeOptions, identities: &Identities) -> Result<Vec<Job>> {
    // Every namespace held from userspace (processes, open files, sockets, bind mounts in any
    // mount namespace): `--all-netns` probes from each.
    let found = discover::namespaces(true);
    let (pods, host_network) = {
        let cache = identities.lock();
        (cache.pod_netns(), cache.host_network_pods())
    };
    let pod_of = |inode: u64| {
        pods.iter()
            .find(|(_, i, _)| *i == inode)
            .map(|(pod, _, cookie)| (pod.clone(), *cookie))
    };
    let job = |ns: &NetnsRef| {
        let owner = pod_of(ns.inode);
        Job {
            subject: Subject {
                netns: ns.inode,
                pod: owner.as_ref().map(|(pod, _)| pod.clone()),
                host_network_pods: Vec::new(),
            },
            netns: Some(ns.clone()),
            cookie: owner.map(|(_, cookie)| cookie).or_else(|| ns.cookie().ok()),
        }
    };
    let mut jobs: Vec<Job> = if !options.netns.is_empty() {
        // A missing one is that namespace's error line, not the end of the scan.
        let jobs: Vec<Job> = options
            .netns
            .iter()
            .map(|inode| match found.get(inode) {
                Some(ns) => job(ns),
                None => Job {
                    subject: Subject {
                        netns: *inode,
                        pod: None,
                        host_network_pods: Vec::new(),
                    },
                    netns: None,
                    cookie: None,
                },
            })
            .collect();
        if jobs.iter().all(|j| j.netns.is_none()) {
            bail!(
                "no network namespace with inode {} is held from userspace (process, open \
                 file, socket or bind mount; see `tracer netns`)",
                options
                    .netns
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
        }
        jobs
    } else if options.all_netns {
        found.values().map(job).collect()
    } else {
        let mut jobs = Vec::new();
        for (pod, inode, _) in &pods {
            if !options.workload.matches_pod(Some(pod)) {
                continue;
            }
            match found.get(inode) {
                Some(ns) => jobs.push(job(ns)),
                None => log::warn!(
                    "{}: its network namespace {inode} is gone; not probed",
                    pod.label()
                ),
            }
        }
        jobs
    };
    // hostNetwork pods have no namespace of their own: the one their sandbox joined (the
    // node's) is probed once for all of them.
    let mut shared: BTreeMap<u64, Vec<Pod>> = BTreeMap::new();
    let wanted = host_network
        .into_iter()
        .filter(|(pod, _)| options.netns.is_empty() && options.workload.matches_pod(Some(pod)));
    for (pod, cgroup) in wanted {
        match sandbox_netns(&cgroup) {
            Some(inode) => shared.entry(inode).or_default().push(pod),
            None => log::warn!(
                "{} (hostNetwork): no process left in its sandbox's cgroup {}; not probed",
                pod.label(),
                cgroup.display()
            ),
        }
    }
    for (inode, pods) in shared {
        let Some(ns) = found.get(&inode) else {
            continue;
        };
        match jobs.iter_mut().find(|j| j.subject.netns == inode) {
            Some(existing) => existing.subject.host_network_pods = pods,
            None => {
                let mut host = job(ns);
                host.subject.host_network_pods = pods;
                jobs.push(host);
            }
        }
    }
    if jobs.is_empty() {
        bail!(
            "no pod network namespace on this node matches{}: check --pod/--namespace, \
             or probe other namespaces with --all-netns or --netns",
            if options.workload.is_active() {
                " the selection"
            } else {
                ""
            }
        );
    }
    Ok(jobs)
}

/// The network namespace of the first process in the cgroup at `dir`.
fn sandbox_netns(dir: &Path) -> Option<u64> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    procs
        .lines()
        .filter_map(|pid| pid.trim().parse().ok())
        .find_map(netns::net_ns_of)
}

fn not_held(inode: u64) -> String {
    format!(
        "no network namespace with inode {inode} is held from userspace (process, open file, \
         socket or bind mount; see `tracer netns`)"
    )
}

/// One probe inside `job`'s namespace (on a thread of its own, which alone enters it). Each
/// way into it found at selection is tried in turn: the process whose link was chosen may
/// have exited while the namespace lives on, held another way (the cookie tells it from a
/// namespace that took its inode).
fn probe_from(job: &Job, target: &Target, timeout: Duration) -> Result<attempt::Attempt, String> {
    let inode = job.subject.netns;
    let Some(ns) = &job.netns else {
        return Err(not_held(inode));
    };
    let netns = ns
        .open()
        .map_err(|e| format!("namespace {inode} went away before it was probed ({e:#})"))?;
    netns::in_netns(&netns, || {
        if let Some(want) = job.cookie {
            let cookie = netns::own_cookie().context("reading the namespace's cookie")?;
            if cookie != want {
                bail!(
                    "namespace {inode} is no longer the one selected (it was torn down and its \
                     inode reused)"
                );
            }
        }
        Ok(attempt::probe(target, timeout)?)
    })
    .map_err(|e| format!("{e:#}"))
}

/// Starts `parallel` workers probing `jobs`; each result goes to `results` as it comes.
/// A worker takes no new job once `stop` is set.
fn start_workers(
    jobs: Arc<Vec<Job>>,
    target: Arc<Target>,
    timeout: Duration,
    parallel: usize,
    stop: Arc<AtomicBool>,
    results: mpsc::Sender<(usize, Result<attempt::Attempt, String>)>,
) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut started = 0;
    for _ in 0..parallel.min(jobs.len()) {
        let (jobs, target, next, stop, results) = (
            jobs.clone(),
            target.clone(),
            next.clone(),
            stop.clone(),
            results.clone(),
        );
        let worker = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                if results
                    .send((i, probe_from(job, &target, timeout)))
                    .is_err()
                {
                    break;
                }
            });
        match worker {
            Ok(_) => started += 1,
            Err(e) if started > 0 => {
                log::warn!(
                    "starting probe worker {}: {e}; going on with {started}",
                    started + 1
                );
                break;
            }
            Err(e) => {
                return Err(e).context("starting a probe worker thread (see ulimit -u)");
            }
        }
    }
    Ok(())
}

/// The probe run, as the pipeline sees a tracer: the conntrack-drops tracer's programs, and
/// one line per finished probe instead of one per drop.
pub struct Prober {
    conntrack: ConntrackTracer,
    target: Arc<Target>,
    timeout: Duration,
    parallel: usize,
    jobs: Arc<Vec<Job>>,
    /// Set at the end of the run: the workers take no new job.
    stop: Arc<AtomicBool>,
    results: Option<mpsc::Receiver<(usize, Result<attempt::Attempt, String>)>>,
    /// Probes that ended, held until the ring buffer was drained once more after them: their
    /// drops are read by then.
    ended: Vec<(usize, Result<attempt::Attempt, String>)>,
    /// Recent drops with the target at one end.
    drops: VecDeque<ConntrackDrop>,
    by_status: BTreeMap<&'static str, u64>,
    unexplained: u64,
    /// The namespaces each source address was probed from: an address seen in more than one
    /// names a flow only together with its namespace.
    sources: BTreeMap<IpAddr, BTreeSet<u64>>,
    /// Records lost in the ring buffer, and drops pushed out of `drops`, during the run: a
    /// probe's drop may be among them.
    lost: u64,
    evicted: u64,
    /// In `record`: every drop is also written, as the conntrack-drops tracer writes it.
    writes_drops: bool,
}

impl Prober {
    fn new(conntrack: ConntrackTracer, jobs: Vec<Job>, options: &ProbeOptions) -> Self {
        Self {
            conntrack,
            target: Arc::new(options.target.clone()),
            timeout: options.timeout,
            parallel: options.parallel,
            jobs: Arc::new(jobs),
            stop: Arc::new(AtomicBool::new(false)),
            results: None,
            ended: Vec::new(),
            drops: VecDeque::new(),
            by_status: BTreeMap::new(),
            unexplained: 0,
            sources: BTreeMap::new(),
            lost: 0,
            evicted: 0,
            writes_drops: false,
        }
    }

    /// Keeps `drop` for the probes still to be written; the oldest goes when too many are kept.
    fn keep(&mut self, drop: ConntrackDrop) {
        if self.drops.len() == MAX_KEPT_DROPS {
            self.drops.pop_front();
            self.evicted += 1;
        }
        self.drops.push_back(drop);
    }

    /// Probes that did not end in a result line (interrupted, or the run's duration limit).
    fn not_finished(&self) -> u64 {
        (self.jobs.len() as u64).saturating_sub(self.by_status.values().sum::<u64>())
    }

    /// Whether the run cannot say that every namespace reaches the target: a probe failed,
    /// could not be made, or never ended.
    fn failed(&self) -> bool {
        let count = |s: &str| self.by_status.get(s).copied().unwrap_or(0);
        count("fail") > 0 || count("error") > 0 || self.not_finished() > 0
    }

    /// The line of probe `i`, with the drops of its flow.
    fn result(&self, i: usize, attempt: Result<attempt::Attempt, String>) -> ProbeResult {
        let job = &self.jobs[i];
        let netns = job.subject.netns;
        let flow = attempt
            .as_ref()
            .ok()
            .and_then(|a| Flow::of(&self.target, a))
            .map(|mut flow| {
                let shared = flow.src.ip().is_loopback()
                    || flow.dst.ip().is_loopback()
                    || self
                        .sources
                        .get(&flow.src.ip())
                        .is_some_and(|from| from.iter().any(|n| *n != netns));
                flow.netns = shared.then_some(netns);
                flow
            });
        let drops = flow
            .map(|flow| {
                self.drops
                    .iter()
                    .filter(|d| flow.matches(d))
                    .map(SeenDrop::of)
                    .collect()
            })
            .unwrap_or_default();
        let unseen = self.lost + self.evicted;
        ProbeResult::new(job.subject.clone(), &self.target, attempt, drops, unseen)
    }
}

impl Tracer for Prober {
    /// In `record` it is the conntrack-drops tracer, with a scan besides.
    fn name(&self) -> &'static str {
        if self.writes_drops {
            self.conntrack.name()
        } else {
            "probe"
        }
    }

    fn hooks(&self) -> Vec<HookSpec> {
        self.conntrack.hooks()
    }

    fn kinds(&self) -> &'static [EventKind] {
        self.conntrack.kinds()
    }

    fn human_header(&self) -> String {
        format!("{:<40}  {:<6}  SRC -> DST  WHY", "POD (or NETNS)", "STATUS")
    }

    fn globals(&self) -> Vec<(&'static str, GlobalData<'_>)> {
        self.conntrack.globals()
    }

    /// The programs are attached: the probes start now, so that every drop they cause is seen.
    fn use_maps(&mut self, ebpf: &mut aya::Ebpf) -> Result<()> {
        self.conntrack.use_maps(ebpf)?;
        let (sender, receiver) = mpsc::channel();
        start_workers(
            self.jobs.clone(),
            self.target.clone(),
            self.timeout,
            self.parallel,
            self.stop.clone(),
            sender,
        )?;
        self.results = Some(receiver);
        Ok(())
    }

    /// Only drops with the target at one end (before or after NAT) are named and kept, and for
    /// a UDP target those of UDP packets with its port at one end (a UDP probe is matched by
    /// its own end: a DNAT in the pod's namespace may have rewritten the address): which
    /// probe's they are is known once the probe ends.
    fn on_record(&mut self, _kind: EventKind, raw: &[u8], out: &mut Output) -> Result<u64> {
        let target = self.target.addr;
        let udp_port = matches!(self.target.kind, Kind::Udp { .. }).then_some(target.port());
        let wanted = |drop: &ConntrackDrop| {
            let udp = drop.flow.is_some_and(|f| f.proto == UDP);
            drop.endpoints().any(|(addr, port)| {
                addr == target.ip() || (udp && port.is_some() && port == udp_port)
            })
        };
        if self.writes_drops {
            let (drop, written) = self.conntrack.write_drop(raw, out)?;
            if wanted(&drop) {
                self.keep(drop);
            }
            return Ok(written);
        }
        if let Some(drop) = self.conntrack.drop_where(raw, wanted)? {
            self.keep(drop);
        }
        Ok(0)
    }

    fn identities_refreshed(&mut self) {
        self.conntrack.identities_refreshed();
    }

    fn records_lost(&mut self, lost: u64) {
        self.lost = lost;
    }

    fn flush(&mut self, out: &mut Output, final_flush: bool) -> Result<u64> {
        // Probes that ended before this tick's drain have their drops read: write them.
        let ready = std::mem::take(&mut self.ended);
        if let Some(results) = &self.results {
            for (i, attempt) in results.try_iter() {
                if let Some(src) = attempt.as_ref().ok().and_then(|a| a.src) {
                    let from = self.sources.entry(src.ip()).or_default();
                    from.insert(self.jobs[i].subject.netns);
                }
                self.ended.push((i, attempt));
            }
        }
        let mut ready = ready;
        if final_flush {
            // Interrupted or out of time: no probe starts that would not be written.
            self.stop.store(true, Ordering::Relaxed);
            ready.append(&mut self.ended);
        }
        let written = ready.len() as u64;
        for (i, attempt) in ready {
            let line = self.result(i, attempt);
            *self
                .by_status
                .entry(match line.status {
                    Status::Ok => "ok",
                    Status::Fail => "fail",
                    Status::Error => "error",
                })
                .or_default() += 1;
            if !line.explained {
                self.unexplained += 1;
            }
            out.event(&line)?;
        }
        Ok(written)
    }

    /// In `record`: the conntrack-drops tracer's summary, with the scan's as `probe`.
    fn summarize(&self, summary: &mut Map<String, Value>) {
        let count = |s: &str| self.by_status.get(s).copied().unwrap_or(0);
        let mut own = Map::new();
        own.insert("target".into(), json!(self.target.endpoint()));
        own.insert("proto".into(), json!(self.target.kind.name()));
        own.insert("namespaces".into(), json!(self.jobs.len()));
        own.insert("ok".into(), json!(count("ok")));
        own.insert("failed".into(), json!(count("fail")));
        own.insert("unexplained".into(), json!(self.unexplained));
        own.insert("errors".into(), json!(count("error")));
        own.insert("not_finished".into(), json!(self.not_finished()));
        if self.writes_drops {
            self.conntrack.summarize(summary);
            summary.insert("probe".into(), Value::Object(own));
        } else {
            summary.extend(own);
        }
    }
}

/// `tracer record --probe TARGET`: the conntrack-drops tracer of the recording (it writes every
/// drop `conntrack` wants, as that tracer does), with one scan from the namespaces of the pods
/// `workload` selects, started as the programs are attached, with `tracer probe`'s defaults
/// (4 s per probe, 16 at a time); each probe's line is written as it ends.
pub fn recording(
    btf: &KernelBtf,
    identities: &Identities,
    conntrack: ConntrackOptions,
    target: Target,
    workload: Selector,
) -> Result<Prober> {
    let options = ProbeOptions {
        target,
        timeout: Duration::from_secs(4),
        parallel: 16,
        all_netns: false,
        netns: Vec::new(),
        workload,
        format: Format::Record,
        buffer_mb: 0,
    };
    let jobs = select(&options, identities).context(
        "--probe (record probes from pods' namespaces only: `tracer probe` takes --netns and \
         --all-netns)",
    )?;
    // As `tracer probe`: the explanations name the hook (the recording's drops do too).
    let conntrack = ConntrackOptions {
        hook: true,
        ..conntrack
    };
    let conntrack = ConntrackTracer::new(btf, conntrack, identities)?;
    let mut prober = Prober::new(conntrack, jobs, &options);
    prober.writes_drops = true;
    Ok(prober)
}

/// `tracer probe`: exit 1 unless every selected namespace reached the target (a failure, an
/// error or a probe that never ended: an interrupted scan is not a clean one).
pub fn run(options: ProbeOptions) -> Result<ExitCode> {
    let (mut prober, session) = prepare(|btf, identities| {
        let jobs = select(&options, identities)?;
        // A failed probe's explanation names the hook: the stack walk is paid only for the
        // few drops a scan causes.
        let drops = ConntrackOptions {
            hook: true,
            ..Default::default()
        };
        let conntrack = ConntrackTracer::new(btf, drops, identities)?;
        Ok(Prober::new(conntrack, jobs, &options))
    })?;
    eprintln!(
        "tracer: probing {} {} from {} network namespaces, {} at a time",
        options.target.kind.name(),
        options.target.endpoint(),
        prober.jobs.len(),
        options.parallel
    );
    let out = Output::new(options.format.clone(), prober.human_header());
    let rounds = prober.jobs.len().div_ceil(options.parallel);
    let run = RunConfig {
        format: options.format,
        // The count stops the run once every probe is written. Each ends within its timeout,
        // so the duration only bounds a run whose probes could not (a thread that never
        // returned): the summary counts them as not finished.
        stop: StopWhen {
            duration: Some(
                options
                    .timeout
                    .saturating_mul(rounds.try_into().unwrap_or(u32::MAX))
                    .saturating_add(Duration::from_secs(10)),
            ),
            count: Some(prober.jobs.len() as u64),
        },
        buffer_mb: options.buffer_mb,
    };
    trace_into(&mut prober, session, &run, out)?;
    Ok(if prober.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::KernelBtf;

    fn prober(jobs: usize) -> Prober {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let identities = Identities::new();
        let conntrack =
            ConntrackTracer::new(&btf, ConntrackOptions::default(), &identities).unwrap();
        let job = |netns| Job {
            subject: Subject {
                netns,
                pod: None,
                host_network_pods: Vec::new(),
            },
            netns: Some(NetnsRef {
                inode: netns,
                ways: vec![netns::WayIn::Path("/proc/self/ns/net".into())],
            }),
            cookie: None,
        };
        let options = ProbeOptions {
            target: Target::parse("127.0.0.1:1", None, None).unwrap(),
            timeout: Duration::from_secs(1),
            parallel: 1,
            all_netns: false,
            netns: Vec::new(),
            workload: Selector::default(),
            format: Format::Json,
            buffer_mb: 8,
        };
        Prober::new(conntrack, (0..jobs as u64).map(job).collect(), &options)
    }

    #[test]
    fn only_a_finished_scan_of_ok_probes_succeeds() {
        let mut prober = prober(2);
        prober.by_status.insert("ok", 1);
        assert!(prober.failed(), "a probe that never ended is not a success");
        assert_eq!(prober.not_finished(), 1);
        prober.by_status.insert("ok", 2);
        assert!(!prober.failed());
        prober.by_status.insert("ok", 1);
        prober.by_status.insert("error", 1);
        assert!(prober.failed(), "a namespace not probed is not a success");
        prober.by_status.insert("error", 0);
        prober.by_status.insert("fail", 1);
        assert!(prober.failed());
    }
}
