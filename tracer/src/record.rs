//! `tracer record`: every tracer at once, from one process and one set of loaded programs,
//! into a JSON-lines file that `tracer report` turns into a timeline and findings.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{Ebpf, GlobalData};
use serde_json::{Map, Value};
use tracer_common::EventKind;

use crate::{
    cli::{RecordArgs, RunArgs},
    clock,
    enrich::selector::Selector,
    hooks::HookSpec,
    output::Output,
    pipeline::RunStats,
    report,
    session::{prepare, trace_into},
    tracers::{
        conntrack::{ConntrackOptions, ConntrackTracer},
        netns::{snapshot, NetnsTracer},
        signals::{SignalsOptions, SignalsTracer},
        Tracer,
    },
};

/// How often the status line is printed while recording.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Several tracers run as one: their hooks and globals together, each record handed to the
/// tracer that owns its kind.
pub struct Recorder {
    tracers: Vec<Box<dyn Tracer>>,
    events: BTreeMap<&'static str, u64>,
    started: Instant,
    last_status: Instant,
    /// A namespace held by a process in D state this long is flagged `stuck` in the closing
    /// snapshot.
    stuck_after: Duration,
}

impl Recorder {
    pub fn new(tracers: Vec<Box<dyn Tracer>>, stuck_after: Duration) -> Self {
        Self {
            tracers,
            events: BTreeMap::new(),
            started: Instant::now(),
            last_status: Instant::now(),
            stuck_after,
        }
    }

    fn status(&self) -> String {
        let counts: Vec<String> = self
            .tracers
            .iter()
            .map(|t| format!("{} {}", t.name(), self.events.get(t.name()).unwrap_or(&0)))
            .collect();
        format!(
            "tracer: recording for {:.0}s: {}",
            self.started.elapsed().as_secs_f64(),
            counts.join(", ")
        )
    }

    /// Ends the recording with a snapshot of every network namespace, so that the report can
    /// say which ones are stuck, orphaned or share an address.
    fn write_snapshot(&self, out: &mut Output) -> Result<()> {
        for namespace in snapshot::take(self.stuck_after) {
            out.event(&namespace)?;
        }
        Ok(())
    }
}

impl Tracer for Recorder {
    fn name(&self) -> &'static str {
        "record"
    }

    fn hooks(&self) -> Vec<HookSpec> {
        self.tracers.iter().flat_map(|t| t.hooks()).collect()
    }

    fn kinds(&self) -> &'static [EventKind] {
        &[
            EventKind::Signal,
            EventKind::OomVictim,
            EventKind::NetfilterDrop,
            EventKind::Netns,
        ]
    }

    fn human_header(&self) -> String {
        "live view (the file has every field):".to_string()
    }

    fn globals(&self) -> Vec<(&'static str, GlobalData<'_>)> {
        self.tracers.iter().flat_map(|t| t.globals()).collect()
    }

    fn use_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.tracers.iter_mut().try_for_each(|t| t.use_maps(ebpf))
    }

    fn on_record(&mut self, kind: EventKind, raw: &[u8], out: &mut Output) -> Result<u64> {
        let Some(tracer) = self.tracers.iter_mut().find(|t| t.kinds().contains(&kind)) else {
            bail!("no tracer of this recording handles {kind:?} records");
        };
        let written = tracer.on_record(kind, raw, out)?;
        *self.events.entry(tracer.name()).or_default() += written;
        Ok(written)
    }

    fn flush(&mut self, out: &mut Output, final_flush: bool) -> Result<u64> {
        let mut written = 0;
        for tracer in &mut self.tracers {
            let n = tracer.flush(out, final_flush)?;
            *self.events.entry(tracer.name()).or_default() += n;
            written += n;
        }
        if self.last_status.elapsed() >= STATUS_EVERY || final_flush {
            eprintln!("{}", self.status());
            self.last_status = Instant::now();
        }
        if final_flush {
            self.write_snapshot(out)?;
        }
        Ok(written)
    }

    fn summarize(&self, stats: &RunStats, summary: &mut Map<String, Value>) {
        for tracer in &self.tracers {
            let mut own = Map::new();
            tracer.summarize(stats, &mut own);
            summary.insert(tracer.name().to_string(), Value::Object(own));
        }
    }
}

/// `tracer record`: every tracer into one file, then the report.
pub fn run(args: RecordArgs) -> Result<()> {
    let path = args.output.unwrap_or_else(|| {
        let now = clock::rfc3339(std::time::SystemTime::now());
        let stamp: String = now[..19]
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .collect();
        format!("tracer-record-{stamp}Z.jsonl").into()
    });
    let signals = SignalsOptions {
        workload: Selector {
            container: args.container,
            pod: args.pod.clone(),
            namespace: args.namespace.clone(),
        },
        ..Default::default()
    };
    let conntrack = ConntrackOptions {
        pod: args.pod,
        namespace: args.namespace,
        ..Default::default()
    };
    let (mut recorder, kernel) = prepare(|btf| {
        let tracers: Vec<Box<dyn Tracer>> = vec![
            Box::new(SignalsTracer::new(&signals)?),
            Box::new(ConntrackTracer::new(btf, conntrack)?),
            Box::new(NetnsTracer::new()),
        ];
        Ok(Recorder::new(tracers, args.stuck_after))
    })?;
    let file = std::fs::File::create(&path)
        .with_context(|| format!("creating the recording {}", path.display()))?;
    eprintln!("tracer: recording into {}", path.display());
    let out = Output::record(file, recorder.human_header());
    let run = RunArgs {
        json: false,
        duration: args.duration,
        count: None,
        buffer_mb: args.buffer_mb,
    };
    trace_into(&mut recorder, kernel, &run, out)?;
    report::print(&path, false)
}
