//! `tracer serve`: every tracer, continuously, with Prometheus metrics over HTTP and events
//! as JSON lines on stdout; what the DaemonSet in deploy/ runs.

mod http;
mod metrics;
mod programs;

use std::{
    collections::{BTreeMap, HashSet},
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use self::metrics::{pod_key, Bounds, Metrics, PodKey};
use crate::{
    cli::{RunArgs, ServeArgs},
    enrich::identity::Enricher,
    output::{Format, Output},
    session::{prepare, trace_into},
    tracers::{
        ensemble::{every_tracer, Companion, Ensemble},
        netns::snapshot,
        Tracer as _,
    },
};

/// `serve`'s part besides the tracers: every `every`, a census of the network namespaces
/// (their flags, to the metrics; namespaces newly flagged, to stdout) and of the pods still
/// running (the series of the others are dropped after the grace period).
struct Census {
    metrics: Arc<Metrics>,
    enricher: Enricher,
    every: Duration,
    stuck_after: Duration,
    last: Option<Instant>,
    /// The (namespace, flag) pairs of the previous census, so that a flag is written once.
    flagged: HashSet<(u64, &'static str)>,
}

impl Companion for Census {
    fn on_loaded(&mut self, ebpf: &aya::Ebpf) {
        self.metrics.set_programs(programs::loaded(ebpf));
    }

    fn after_flush(
        &mut self,
        _events: &BTreeMap<&'static str, u64>,
        out: &mut Output,
        final_flush: bool,
    ) -> Result<()> {
        if final_flush || self.last.is_some_and(|t| t.elapsed() < self.every) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        self.enricher.refresh();
        let reports = snapshot::take_with(&self.enricher, self.stuck_after);
        self.metrics.set_netns_flags(&reports);
        let mut flagged = HashSet::new();
        for report in &reports {
            let flags: Vec<_> = report
                .flags
                .iter()
                .map(|f| (report.inode, f.flag))
                .collect();
            if flags.iter().any(|f| !self.flagged.contains(f)) {
                out.event(report)?;
            }
            flagged.extend(flags);
        }
        self.flagged = flagged;
        let live: HashSet<PodKey> = self
            .enricher
            .present_pods()
            .map(|pod| pod_key(Some(pod)))
            .collect();
        self.metrics.forget_gone_pods(&live);
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
    let (mut ensemble, kernel) = prepare(|btf| {
        let tracers = every_tracer(btf, &Default::default(), Default::default())?;
        let kinds: Vec<_> = tracers.iter().map(|t| (t.name(), t.kinds())).collect();
        let metrics = Arc::new(Metrics::new(bounds, &kinds)?);
        shared = Some(metrics.clone());
        let census = Census {
            metrics,
            enricher: Enricher::new(),
            every: args.census_every,
            stuck_after: args.stuck_after,
            last: None,
            flagged: HashSet::new(),
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
    eprintln!("tracer: serving http://{address}/metrics and http://{address}/healthz");
    let out = Output::new(Format::Json, ensemble.human_header()).observed_by(metrics);
    let run = RunArgs {
        json: true,
        duration: args.duration,
        count: None,
        buffer_mb: args.buffer_mb,
    };
    let traced = trace_into(&mut ensemble, kernel, &run, out);
    drop(server);
    traced
}
