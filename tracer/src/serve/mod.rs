//! `tracer serve`: every tracer, continuously, with Prometheus metrics over HTTP and events
//! as JSON lines on stdout; what the DaemonSet in deploy/ runs.

mod http;
mod metrics;
mod programs;

use std::{
    collections::{BTreeMap, HashSet},
    net::TcpListener,
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use self::metrics::{pod_key, Alive, Bounds, Metrics};
use crate::{
    cli::ServeArgs,
    enrich::identity::Identities,
    output::{Format, Output},
    pipeline::StopWhen,
    session::{prepare, trace_into, RunConfig},
    tracers::{
        ensemble::{every_tracer, Companion, Ensemble},
        netns::{
            census::KernelCensus,
            snapshot::{self, NamespaceReport},
        },
        Tracer as _, TracerOptions,
    },
};

/// The test-only fault hook: `TRACER_FAULT=census-panic` makes the census thread panic at its
/// second census (the first one made the tracer ready), so that a test can see /healthz turn 503. (The tests run the release binary,
/// so the hook is in it; all it can do is make the tracer report itself unhealthy.)
const FAULT_ENV: &str = "TRACER_FAULT";

/// Marks the census ended in the metrics when its thread ends, by a panic included: /healthz
/// then answers 503, so that a liveness probe restarts a tracer whose flags froze.
struct CensusRunning(Arc<Metrics>);

impl Drop for CensusRunning {
    fn drop(&mut self) {
        self.0.set_census_ended();
    }
}

/// Every `every`, on a thread of its own: a census of the network namespaces (their flags,
/// to the metrics) and of what is alive (the series of pods and namespaces gone are dropped
/// after the grace period). Its own thread because a namespace's rtnetlink dump can wait on
/// the kernel's rtnl lock for long, in just the incidents it is there to see, and the event
/// loop (and /healthz) must not wait with it. Sends the flagged namespaces to the pipeline.
/// The first census waits for `census`: the kernel's list, read by the run's own census
/// program once the programs are loaded (one program for the whole run, walked again each
/// time), or why it cannot be.
fn start_census(
    identities: Identities,
    metrics: Arc<Metrics>,
    every: Duration,
    stuck_after: Duration,
    census: Receiver<Result<KernelCensus, String>>,
) -> Result<(SyncSender<()>, Receiver<Vec<NamespaceReport>>)> {
    let (stop, stopped) = mpsc::sync_channel::<()>(1);
    let (found, flagged) = mpsc::sync_channel(1);
    let inject_panic = std::env::var(FAULT_ENV).is_ok_and(|v| v == "census-panic");
    thread::Builder::new()
        .name("census".into())
        .spawn(move || {
            let _running = CensusRunning(metrics.clone());
            let mut census = census
                .recv()
                .unwrap_or_else(|_| Err("the run's programs were not loaded".into()));
            let mut first = true;
            loop {
                if inject_panic && !first {
                    panic!("{FAULT_ENV}=census-panic");
                }
                first = false;
                // The pipeline's refresh step keeps the cache current: a walk here would hold
                // the event loop's lookups for its length.
                let (verdict, pods) = {
                    let cache = identities.lock();
                    let pods = cache
                        .present_pods()
                        .map(|pods| pods.into_iter().map(|p| pod_key(Some(p))).collect());
                    (cache.status().verdict(), pods)
                };
                metrics.set_identity(verdict);
                let reports = snapshot::take_with(&identities, stuck_after, &mut census);
                metrics.set_netns_flags(&reports);
                let alive = Alive {
                    pods,
                    netns: reports.iter().map(|r| r.inode).collect(),
                };
                metrics.forget_gone(&alive);
                let reports: Vec<_> = reports
                    .into_iter()
                    .filter(|r| !r.flags.is_empty())
                    .collect();
                // The pipeline takes them at its next flush; a census it has not taken yet
                // is replaced by this one.
                let _ = found.try_send(reports);
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .context("starting the census thread")?;
    Ok((stop, flagged))
}

/// `serve`'s part in the pipeline: names our programs to the metrics once loaded, and writes
/// each newly flagged namespace the census found.
struct Census {
    metrics: Arc<Metrics>,
    flagged: Receiver<Vec<NamespaceReport>>,
    /// Hands the census thread the census program once it is loaded.
    census: Option<SyncSender<Result<KernelCensus, String>>>,
    /// Stops the census thread when dropped (the thread is not waited for: it may be stuck
    /// in the kernel, and the process is ending).
    _stop: SyncSender<()>,
    /// The (namespace, flag) pairs of the previous census, so that a flag is written once.
    written: HashSet<(u64, &'static str)>,
}

impl Companion for Census {
    fn on_loaded(&mut self, ebpf: &mut aya::Ebpf) {
        self.metrics.set_programs(programs::loaded(ebpf));
        if let Some(census) = self.census.take() {
            let _ = census.send(KernelCensus::adopt(ebpf).map_err(|e| format!("{e:#}")));
        }
    }

    fn after_flush(
        &mut self,
        _events: &BTreeMap<&'static str, u64>,
        out: &mut Output,
        _final_flush: bool,
    ) -> Result<()> {
        let Ok(reports) = self.flagged.try_recv() else {
            return Ok(());
        };
        let mut now = HashSet::new();
        for report in &reports {
            let flags: Vec<_> = report
                .flags
                .iter()
                .map(|f| (report.inode, f.flag))
                .collect();
            if flags.iter().any(|f| !self.written.contains(f)) {
                out.event(report)?;
            }
            now.extend(flags);
        }
        self.written = now;
        Ok(())
    }
}

/// `tracer serve`.
pub fn run(args: ServeArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen).with_context(|| {
        format!(
            "listening on {}: is another tracer serving there? choose a port with --listen",
            args.listen
        )
    })?;
    let address = listener.local_addr()?;
    let bounds = Bounds {
        max_series: args.max_series,
        pod_grace: args.pod_grace,
    };
    let mut shared = None;
    let (mut ensemble, session) = prepare(|btf, identities| {
        let tracers = every_tracer(btf, identities, &TracerOptions::default())?;
        let kinds: Vec<_> = tracers.iter().map(|t| (t.name(), t.kinds())).collect();
        let metrics = Arc::new(Metrics::new(bounds, &kinds)?);
        let (loaded, census) = mpsc::sync_channel(1);
        let (stop, flagged) = start_census(
            identities.clone(),
            metrics.clone(),
            args.census_every,
            args.stuck_after,
            census,
        )?;
        shared = Some(metrics.clone());
        let census = Census {
            metrics: metrics.clone(),
            flagged,
            census: Some(loaded),
            _stop: stop,
            written: HashSet::new(),
        };
        Ok(Ensemble::new("serve", "", tracers, census))
    })?;
    let metrics = shared.context("the metrics were not set up")?;
    // Held for the run: the kernel keeps statistics on while any such fd is open.
    let _bpf_stats = args
        .bpf_stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .transpose()
        .context("turning the kernel's BPF statistics on (--bpf-stats)")?;
    let server = http::Server::start(listener, metrics.clone())?;
    eprintln!(
        "tracer: serving http://{address}/metrics, http://{address}/healthz and \
         http://{address}/readyz"
    );
    let out =
        Output::new(Format::Json, ensemble.human_header()).observed_by(metrics, args.no_events);
    let run = RunConfig {
        format: Format::Json,
        stop: StopWhen {
            duration: args.duration,
            count: None,
        },
        buffer_mb: args.buffer_mb,
    };
    let traced = trace_into(&mut ensemble, session, &run, out);
    drop(server);
    traced
}
