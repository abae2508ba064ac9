//! `tracer serve`'s metrics: counters the event stream adds to, the census's namespace flags,
//! lost records, and the programs' run time; with a bound on the number of series.
//!
//! Memory stays bounded on a node that runs pods for months: a series is created only while
//! fewer than `max_series` exist (events beyond are counted in
//! `tracer_events_uncounted_total`), and the series of a pod or a network namespace that is
//! gone are removed once it has been gone for the grace period, so that their last
//! increments are still scraped (counted in `tracer_series_dropped_total`).
//!
//! A new series is shown at 0 until it has been scraped once, and only then at its count, so
//! that `increase()` and `rate()` see a pod's first event (an only OOM kill) too.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use prometheus::{
    CounterVec, Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tracer_common::EventKind;

use super::programs;
use crate::{
    enrich::{identity::Pod, selector},
    output::{Count, Family, Observer},
    tracers::netns::snapshot::NamespaceReport,
};

/// The `k8s_namespace` and `k8s_pod` label values of a pod; both empty outside pods. A pod the
/// runtime did not name is its UID.
pub type PodKey = [String; 2];

pub fn pod_key(pod: Option<&Pod>) -> PodKey {
    match pod {
        Some(pod) => [
            pod.namespace.clone().unwrap_or_default(),
            pod.name.clone().unwrap_or_else(|| pod.uid.clone()),
        ],
        None => Default::default(),
    }
}

/// The `k8s_workload` label value of a pod name: the Deployment, StatefulSet, DaemonSet, Job
/// or CronJob its name says it belongs to (the likeliest reading, see
/// [`selector::workloads_of`]); empty outside pods and for names no workload generates.
fn workload_label(pod: &str) -> String {
    selector::workloads_of(pod)
        .first()
        .map_or_else(String::new, |w| (*w).to_string())
}

/// What a series belongs to: it goes when its owner has been gone for the grace period.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Owner {
    /// Host processes and the like: never gone.
    Node,
    Pod(PodKey),
    /// A network namespace no pod is known to own.
    Netns(u64),
}

/// What a census found alive.
#[derive(Debug, Default)]
pub struct Alive {
    /// `None` when this node's pods cannot be told apart from gone ones (no cgroup v2
    /// hierarchy holding the containers): their series are then kept.
    pub pods: Option<HashSet<PodKey>>,
    pub netns: HashSet<u64>,
}

impl Alive {
    fn has(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Node => true,
            Owner::Pod(pod) => self.pods.as_ref().is_none_or(|pods| pods.contains(pod)),
            Owner::Netns(inode) => self.netns.contains(inode),
        }
    }
}

/// Limits on what the metrics keep.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_series: usize,
    pub pod_grace: Duration,
}

pub struct Metrics {
    book: Mutex<Book>,
    started: Instant,
    /// When the pipeline last ticked, in milliseconds since `started`; 0 before it runs.
    last_tick_ms: AtomicU64,
    /// The latest census's verdict on naming containers; `None` before the first.
    identity: Mutex<Option<Result<String, String>>>,
    /// The census thread ended (it panicked): flags and series expiry froze.
    census_ended: AtomicBool,
    /// HTTP connections open, and refused (see `http`'s bounds), by reason.
    http_open: IntGauge,
    http_refused: IntCounterVec,
}

type SeriesKey = (&'static str, Vec<String>);

struct Book {
    registry: Registry,
    bounds: Bounds,
    /// The event families, registered when their first event comes.
    families: HashMap<&'static str, IntCounterVec>,
    /// Every event series: (family, label values with namespace and pod last) to its owner.
    series: HashMap<SeriesKey, Owner>,
    /// New series' increments, shown from the scrape after the one that showed them at 0.
    pending: HashMap<SeriesKey, u64>,
    /// Owners of series that the latest census did not find, since when.
    gone_since: HashMap<Owner, Instant>,
    dropped: IntCounterVec,
    uncounted: IntCounter,
    lost: IntCounterVec,
    /// Per event kind: the tracer it belongs to, and the lost count already added.
    lost_seen: Vec<(&'static str, u64)>,
    netns_flagged: IntGaugeVec,
    program_runs: IntCounterVec,
    program_run_seconds: CounterVec,
    /// Per program id: run count and run time already added.
    programs_seen: HashMap<u32, (u64, u64)>,
    /// Our programs by kernel id, with their names; known once they are loaded.
    programs: HashMap<u32, String>,
}

impl Metrics {
    /// `kinds_by_tracer`: each tracer's name and the record kinds whose losses it owns.
    pub fn new(bounds: Bounds, kinds_by_tracer: &[(&'static str, &[EventKind])]) -> Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok(vec)
        };
        let dropped = counter(
            "tracer_series_dropped_total",
            "Series removed because their pod (reason pod_gone) or network namespace (reason \
             netns_gone) was gone for longer than --pod-grace.",
            &["reason"],
        )?;
        let uncounted = IntCounter::new(
            "tracer_events_uncounted_total",
            "Events not counted in any series: theirs would have exceeded --max-series.",
        )?;
        registry.register(Box::new(uncounted.clone()))?;
        let lost = counter(
            "tracer_lost_events_total",
            "Records the kernel programs could not hand over (ring buffer full), by tracer.",
            &["tracer"],
        )?;
        let program_runs = counter(
            "tracer_program_runs_total",
            "Runs of each kernel program, while the kernel's BPF statistics are on \
             (sysctl kernel.bpf_stats_enabled=1, or serve --bpf-stats).",
            &["program"],
        )?;
        let program_run_seconds = CounterVec::new(
            Opts::new(
                "tracer_program_run_seconds_total",
                "Time spent in each kernel program while the kernel's BPF statistics are on.",
            ),
            &["program"],
        )?;
        registry.register(Box::new(program_run_seconds.clone()))?;
        let netns_flagged = IntGaugeVec::new(
            Opts::new(
                "tracer_netns_flagged",
                "Network namespaces flagged by the latest census: orphaned (no process \
                 inside, held by an open file, a socket or a bind mount), stuck (a process \
                 inside in D state), ip_conflict (an address also in another namespace). \
                 holder and holder_pid: the first holder the flag names (kind and process). \
                 1 per flagged namespace.",
            ),
            &[
                "flag",
                "netns",
                "k8s_namespace",
                "k8s_pod",
                "holder",
                "holder_pid",
            ],
        )?;
        registry.register(Box::new(netns_flagged.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new("tracer_build_info", "The tracer's version; always 1."),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let http_open = IntGauge::new(
            "tracer_http_connections_open",
            "Connections to this HTTP server open now.",
        )?;
        registry.register(Box::new(http_open.clone()))?;
        let http_refused = counter(
            "tracer_http_connections_refused_total",
            "Connections closed as soon as accepted: too many open (reason total) or too many \
             from one address (reason per_peer).",
            &["reason"],
        )?;
        for reason in ["total", "per_peer"] {
            http_refused.with_label_values(&[reason]);
        }

        let mut lost_seen = vec![("", 0); tracer_common::EVENT_KINDS as usize];
        for (tracer, kinds) in kinds_by_tracer {
            lost.with_label_values(&[*tracer]);
            for kind in *kinds {
                lost_seen[*kind as usize].0 = tracer;
            }
        }
        for reason in ["pod_gone", "netns_gone"] {
            dropped.with_label_values(&[reason]);
        }
        Ok(Self {
            book: Mutex::new(Book {
                registry,
                bounds,
                families: HashMap::new(),
                series: HashMap::new(),
                pending: HashMap::new(),
                gone_since: HashMap::new(),
                dropped,
                uncounted,
                lost,
                lost_seen,
                netns_flagged,
                program_runs,
                program_run_seconds,
                programs_seen: HashMap::new(),
                programs: HashMap::new(),
            }),
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            identity: Mutex::new(None),
            census_ended: AtomicBool::new(false),
            http_open,
            http_refused,
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves counters that are still valid numbers.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the census found about naming containers.
    pub fn set_identity(&self, verdict: Result<String, String>) {
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
    }

    /// The latest census's verdict on naming containers; `None` before the first census.
    pub fn identity(&self) -> Option<Result<String, String>> {
        self.identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The HTTP connections open now.
    pub fn set_http_open(&self, open: usize) {
        self.http_open.set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// One HTTP connection refused, for `reason`.
    pub fn http_refused(&self, reason: &str) {
        self.http_refused.with_label_values(&[reason]).inc();
    }

    /// The census thread ended.
    pub fn set_census_ended(&self) {
        self.census_ended.store(true, Ordering::Relaxed);
    }

    /// Whether the census thread ended.
    pub fn census_ended(&self) -> bool {
        self.census_ended.load(Ordering::Relaxed)
    }

    /// How long ago the pipeline last ticked; `None` before it started.
    pub fn since_tick(&self) -> Option<Duration> {
        let ms = self.last_tick_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| {
            self.started
                .elapsed()
                .saturating_sub(Duration::from_millis(ms))
        })
    }

    /// The text exposition of every metric, with the programs' run figures read now. New
    /// series shown at 0 by this call show their count from the next.
    pub fn render(&self) -> Result<String> {
        // Listing the node's programs takes a syscall or more each: not under the lock the
        // event loop takes for every event.
        let ours = self.book().programs.clone();
        let runs = programs::runs(&ours);
        let mut book = self.book();
        book.add_program_runs(runs);
        let mut text = Vec::new();
        TextEncoder::new().encode(&book.registry.gather(), &mut text)?;
        book.release_pending();
        Ok(String::from_utf8(text)?)
    }

    /// Our programs, once loaded (see [`programs::loaded`]).
    pub fn set_programs(&self, programs: HashMap<u32, String>) {
        self.book().programs = programs;
    }

    /// Sets the namespace flags to those of a census (a snapshot of every namespace).
    pub fn set_netns_flags(&self, reports: &[NamespaceReport]) {
        let book = self.book();
        book.netns_flagged.reset();
        for report in reports {
            let [namespace, pod] = pod_key(report.pod.as_ref());
            let netns = report.inode.to_string();
            for flag in &report.flags {
                let holder = flag.holders.first();
                let kind = holder.map_or("", |h| h.kind);
                let pid = holder
                    .and_then(|h| h.pid)
                    .map_or_else(String::new, |p| p.to_string());
                let flag = flag.flag.replace('-', "_");
                book.netns_flagged
                    .with_label_values(&[flag.as_str(), &netns, &namespace, &pod, kind, &pid])
                    .set(1);
            }
        }
    }

    /// Removes the series of owners not `alive` for longer than the grace period.
    pub fn forget_gone(&self, alive: &Alive) {
        self.book().forget_gone(alive, Instant::now());
    }
}

impl Book {
    fn add(&mut self, count: Count<'_>) {
        let pod = pod_key(count.pod);
        let owner = match (count.pod, count.netns) {
            (Some(_), _) => Owner::Pod(pod.clone()),
            (None, Some(inode)) => Owner::Netns(inode),
            (None, None) => Owner::Node,
        };
        let mut labels = count.labels;
        let workload = workload_label(&pod[1]);
        labels.extend(pod);
        labels.push(workload);
        let key = (count.family.name, labels);
        if let Some(pending) = self.pending.get_mut(&key) {
            *pending += 1;
            return;
        }
        let new = !self.series.contains_key(&key);
        if new && self.series.len() >= self.bounds.max_series {
            self.uncounted.inc();
            return;
        }
        let Some(family) = self.family(count.family) else {
            return;
        };
        let values: Vec<&str> = key.1.iter().map(String::as_str).collect();
        let counter = family.with_label_values(&values);
        if new {
            self.series.insert(key.clone(), owner);
            self.pending.insert(key, 1);
        } else {
            counter.inc();
        }
    }

    /// Adds the increments of the series the last scrape showed at 0.
    fn release_pending(&mut self) {
        for ((family, labels), n) in self.pending.drain() {
            let values: Vec<&str> = labels.iter().map(String::as_str).collect();
            if let Some(vec) = self.families.get(family) {
                vec.with_label_values(&values).inc_by(n);
            }
        }
    }

    fn family(&mut self, family: &'static Family) -> Option<&IntCounterVec> {
        if !self.families.contains_key(family.name) {
            let mut labels = family.labels.to_vec();
            labels.extend(["k8s_namespace", "k8s_pod", "k8s_workload"]);
            let registered = IntCounterVec::new(Opts::new(family.name, family.help), &labels)
                .and_then(|vec| self.registry.register(Box::new(vec.clone())).map(|()| vec));
            match registered {
                Ok(vec) => {
                    self.families.insert(family.name, vec);
                }
                Err(e) => {
                    log::warn!("metric {}: {e}", family.name);
                    return None;
                }
            }
        }
        self.families.get(family.name)
    }

    fn forget_gone(&mut self, alive: &Alive, now: Instant) {
        let owners: HashSet<&Owner> = self.series.values().collect();
        self.gone_since
            .retain(|owner, _| owners.contains(owner) && !alive.has(owner));
        for owner in owners.into_iter().filter(|owner| !alive.has(owner)) {
            self.gone_since.entry(owner.clone()).or_insert(now);
        }
        let grace = self.bounds.pod_grace;
        let expired: HashSet<Owner> = self
            .gone_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(owner, _)| owner.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        let (families, dropped, pending) = (&self.families, &self.dropped, &mut self.pending);
        self.series.retain(|key, owner| {
            if !expired.contains(owner) {
                return true;
            }
            let values: Vec<&str> = key.1.iter().map(String::as_str).collect();
            if let Some(vec) = families.get(key.0) {
                let _ = vec.remove_label_values(&values);
            }
            pending.remove(key);
            let reason = match owner {
                Owner::Netns(_) => "netns_gone",
                Owner::Pod(_) | Owner::Node => "pod_gone",
            };
            dropped.with_label_values(&[reason]).inc();
            false
        });
        self.gone_since.retain(|owner, _| !expired.contains(owner));
    }

    /// Adds what the kernel counted for our programs since the last read.
    fn add_program_runs(&mut self, runs: Vec<programs::ProgramRuns>) {
        for program in runs {
            let (runs, ns) = self.programs_seen.entry(program.id).or_default();
            self.program_runs
                .with_label_values(&[program.name.as_str()])
                .inc_by(program.runs.saturating_sub(*runs));
            self.program_run_seconds
                .with_label_values(&[program.name.as_str()])
                .inc_by(program.run_ns.saturating_sub(*ns) as f64 / 1e9);
            (*runs, *ns) = (program.runs, program.run_ns);
        }
    }
}

impl Observer for Metrics {
    fn count(&self, count: Count<'_>) {
        self.book().add(count);
    }

    fn tick(&self, lost: &[u64]) {
        let ms = self.started.elapsed().as_millis().max(1);
        self.last_tick_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut book = self.book();
        let book = &mut *book;
        for ((tracer, seen), now) in book.lost_seen.iter_mut().zip(lost) {
            if *now > *seen && !tracer.is_empty() {
                book.lost.with_label_values(&[*tracer]).inc_by(*now - *seen);
                *seen = *now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_FAMILY: Family = Family {
        name: "tracer_test_total",
        help: "test",
        labels: &["what"],
    };

    fn pod(name: &str) -> Pod {
        Pod {
            namespace: Some("shop".into()),
            name: Some(name.into()),
            uid: format!("uid-{name}"),
            qos: None,
        }
    }

    fn metrics(max_series: usize) -> Metrics {
        let bounds = Bounds {
            max_series,
            pod_grace: Duration::from_secs(60),
        };
        Metrics::new(bounds, &[("signals", &[EventKind::Signal])]).unwrap()
    }

    fn count<'a>(what: &str, pod: Option<&'a Pod>, netns: Option<u64>) -> Count<'a> {
        Count {
            family: &TEST_FAMILY,
            labels: vec![what.into()],
            pod,
            netns,
        }
    }

    fn line_value(text: &str, prefix: &str) -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    const WEB_A: &str =
        r#"tracer_test_total{k8s_namespace="shop",k8s_pod="web",k8s_workload="",what="a"}"#;

    #[test]
    fn the_workload_label_is_the_likeliest_owner() {
        let m = metrics(10);
        let web = pod("web-5d78c9f6b-x2x9q");
        m.count(count("a", Some(&web), None));
        let text = m.render().unwrap();
        assert!(
            text.contains(r#"k8s_pod="web-5d78c9f6b-x2x9q",k8s_workload="web","#),
            "{text}"
        );
    }

    #[test]
    fn a_new_series_is_scraped_at_zero_once_then_at_its_count() {
        let m = metrics(10);
        let web = pod("web");
        m.count(count("a", Some(&web), None));
        m.count(count("a", Some(&web), None));
        assert_eq!(line_value(&m.render().unwrap(), WEB_A), Some(0));
        m.count(count("a", Some(&web), None));
        assert_eq!(line_value(&m.render().unwrap(), WEB_A), Some(3));
    }

    #[test]
    fn events_beyond_the_series_limit_are_counted_as_uncounted() {
        let m = metrics(2);
        let (web, db) = (pod("web"), pod("db"));
        m.count(count("a", Some(&web), None));
        m.count(count("a", Some(&db), None));
        m.count(count("b", Some(&db), None));
        m.count(count("c", None, None));
        m.count(count("c", None, None));
        m.render().unwrap();
        let text = m.render().unwrap();
        assert_eq!(line_value(&text, WEB_A), Some(1));
        assert!(!text.contains(r#"what="b""#) && !text.contains(r#"what="c""#));
        assert_eq!(line_value(&text, "tracer_events_uncounted_total"), Some(3));
    }

    #[test]
    fn series_of_a_gone_pod_or_namespace_go_after_the_grace_period() {
        let m = metrics(100);
        let (web, db) = (pod("web"), pod("db"));
        m.count(count("a", Some(&web), Some(7)));
        m.count(count("a", Some(&db), None));
        m.count(count("netns 8", None, Some(8)));
        m.count(count("netns 9", None, Some(9)));
        m.count(count("node", None, None));
        m.render().unwrap();
        let alive = Alive {
            pods: Some([pod_key(Some(&db))].into()),
            netns: [9].into(),
        };
        let start = Instant::now();
        m.book().forget_gone(&alive, start);
        m.book()
            .forget_gone(&alive, start + Duration::from_secs(59));
        assert!(m.render().unwrap().contains(r#"k8s_pod="web""#));
        m.book()
            .forget_gone(&alive, start + Duration::from_secs(61));
        let text = m.render().unwrap();
        let shown: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tracer_test_total"))
            .collect();
        // web is gone (with its namespace 7); db stays; of the namespaces without a pod, 8 is
        // gone and 9 stays; the node's series stays.
        assert_eq!(shown.len(), 3, "{text}");
        for kept in [r#"k8s_pod="db""#, r#"what="netns 9""#, r#"what="node""#] {
            assert!(shown.iter().any(|l| l.contains(kept)), "{kept}: {text}");
        }
        assert_eq!(
            line_value(&text, r#"tracer_series_dropped_total{reason="pod_gone"}"#),
            Some(1)
        );
        assert_eq!(
            line_value(&text, r#"tracer_series_dropped_total{reason="netns_gone"}"#),
            Some(1)
        );
        // A pod that comes back starts its series again.
        m.count(count("a", Some(&web), None));
        assert!(m.render().unwrap().contains(r#"k8s_pod="web""#));
    }

    #[test]
    fn pods_are_kept_when_the_census_cannot_tell_which_are_alive() {
        let m = metrics(10);
        let web = pod("web");
        m.count(count("a", Some(&web), None));
        let unknown = Alive::default();
        let start = Instant::now();
        m.book().forget_gone(&unknown, start);
        m.book()
            .forget_gone(&unknown, start + Duration::from_secs(3600));
        assert!(m.render().unwrap().contains(r#"k8s_pod="web""#));
    }

    #[test]
    fn lost_records_are_added_once_per_tracer() {
        let m = metrics(10);
        let mut lost = vec![0; tracer_common::EVENT_KINDS as usize];
        lost[EventKind::Signal as usize] = 5;
        m.tick(&lost);
        m.tick(&lost);
        lost[EventKind::Signal as usize] = 7;
        m.tick(&lost);
        let text = m.render().unwrap();
        assert_eq!(
            line_value(&text, r#"tracer_lost_events_total{tracer="signals"}"#),
            Some(7)
        );
        assert!(m.since_tick().is_some());
    }
}
