//! `tracer record`: every tracer at once ([`Ensemble`]) into a JSON-lines file that
//! `tracer report` turns into a timeline and findings.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    cli::RecordArgs,
    clock,
    enrich::{identity::Identities, selector::Selector},
    output::{Format, Output, RecordingCut},
    pipeline::StopWhen,
    probe::{self, target::Target},
    report,
    session::{prepare, trace_into, RunConfig},
    tracers::{
        conntrack::ConntrackOptions,
        ensemble::{every_tracer, Companion, Ensemble},
        netns::{
            census::KernelCensus,
            snapshot::{self, NamespaceReport},
        },
        signals::SignalsOptions,
        Tracer as _, TracerOptions,
    },
};

/// How often the status line is printed while recording.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// `record`'s part besides the tracers: a status line every few seconds, and a closing
/// snapshot of every network namespace, so that the report can say which ones are stuck,
/// orphaned or share an address.
struct Recording {
    started: Instant,
    last_status: Instant,
    /// A namespace held by a process in D state this long is flagged `stuck` in the closing
    /// snapshot.
    stuck_after: Duration,
    /// The run's cache, for the closing snapshot.
    identities: Identities,
    /// The run's census program (the netns tracer's), once loaded, or why there is none.
    census: Result<KernelCensus, String>,
    /// The closing snapshot, taken while the programs are still attached (the census needs
    /// its program) and written after the run's last events.
    closing: Vec<NamespaceReport>,
}

impl Companion for Recording {
    fn on_loaded(&mut self, ebpf: &mut aya::Ebpf) {
        self.census = KernelCensus::adopt(ebpf).map_err(|e| format!("{e:#}"));
    }

    fn stopping(&mut self) {
        self.closing = snapshot::take_with(&self.identities, self.stuck_after, &mut self.census);
    }

    fn after_flush(
        &mut self,
        events: &BTreeMap<&'static str, u64>,
        out: &mut Output,
        final_flush: bool,
    ) -> Result<()> {
        if self.last_status.elapsed() >= STATUS_EVERY || final_flush {
            let counts: Vec<String> = events.iter().map(|(t, n)| format!("{t} {n}")).collect();
            eprintln!(
                "tracer: recording for {:.0}s: {}",
                self.started.elapsed().as_secs_f64(),
                counts.join(", ")
            );
            self.last_status = Instant::now();
        }
        if final_flush {
            for namespace in std::mem::take(&mut self.closing) {
                out.event(&namespace)?;
            }
        }
        Ok(())
    }
}

/// The exit code of a recording cut short because its file could not be written.
pub const EXIT_CUT_SHORT: u8 = 3;

/// `tracer record`: every tracer into one file, then the report. A recording whose file
/// could not be written (a full disk) still ends with its summary and the report of what
/// the file holds, on stderr, and exit code [`EXIT_CUT_SHORT`].
pub fn run(args: RecordArgs) -> Result<ExitCode> {
    let path = args.output.unwrap_or_else(|| {
        let now = clock::rfc3339(std::time::SystemTime::now());
        let stamp: String = now[..19]
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .collect();
        format!("tracer-record-{stamp}Z.jsonl").into()
    });
    let workload = Selector {
        container: args.container,
        pod: args.pod,
        namespace: args.namespace,
        workload: args.workload,
    };
    let conntrack = ConntrackOptions {
        // A network namespace is a pod's: --container does not apply to drops.
        workload: Selector {
            container: None,
            ..workload.clone()
        },
        ..Default::default()
    };
    let signals = SignalsOptions {
        workload,
        ..Default::default()
    };
    let probe = args
        .probe
        .as_deref()
        .map(|target| Target::parse(target, None, None).context("--probe"))
        .transpose()?;
    let (mut recorder, session) = prepare(|btf, identities| {
        let probed = conntrack.workload.clone();
        let options = TracerOptions { signals, conntrack };
        let mut tracers = every_tracer(btf, identities, &options)?;
        if let Some(target) = probe {
            // It writes the drops as the conntrack-drops tracer does: it takes its place.
            let prober =
                probe::recording(btf, identities, options.conntrack.clone(), target, probed)?;
            let slot = tracers
                .iter_mut()
                .find(|t| t.name() == prober.name())
                .context("--probe: no conntrack-drops tracer to take the place of")?;
            *slot = Box::new(prober);
        }
        let recording = Recording {
            started: Instant::now(),
            last_status: Instant::now(),
            stuck_after: args.stuck_after,
            identities: identities.clone(),
            census: Err("the run's programs were not loaded".into()),
            closing: Vec::new(),
        };
        Ok(Ensemble::new(
            "record",
            "live view (the file has every field):",
            tracers,
            recording,
        ))
    })?;
    // A new file only (O_CREAT|O_EXCL, which also refuses a symlink, dangling or not): root
    // must not truncate what a planted link points to, nor an earlier recording.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            // Removing it is advice for an earlier recording, never for a device (/dev/full).
            io::ErrorKind::AlreadyExists
                if std::fs::symlink_metadata(&path)
                    .is_ok_and(|m| m.is_file() || m.file_type().is_symlink()) =>
            {
                anyhow::anyhow!(
                    "{} exists (or is a symlink): record writes a new file only; remove it or \
                     choose another -o",
                    path.display()
                )
            }
            io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} exists and is not a regular file: record writes a new file only; choose \
                 another -o",
                path.display()
            ),
            _ => anyhow::anyhow!(e).context(format!("creating the recording {}", path.display())),
        })?;
    eprintln!("tracer: recording into {}", path.display());
    let out = Output::record(file, recorder.human_header());
    let run = RunConfig {
        format: Format::Record,
        stop: StopWhen {
            duration: args.duration,
            count: None,
        },
        buffer_mb: args.buffer_mb,
    };
    match trace_into(&mut recorder, session, &run, out) {
        Ok(()) => {
            report::print(&path, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is::<RecordingCut>() => {
            eprintln!("tracer: error: {e:#}; the report of what it holds:");
            report::write(&path, false, &mut io::stderr().lock())?;
            Ok(ExitCode::from(EXIT_CUT_SHORT))
        }
        Err(e) => {
            // Ended before anything was written (Ctrl-C before ready, attaching failed): the
            // empty file is ours (O_EXCL), and left there it would refuse a rerun's -o.
            if fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                let _ = fs::remove_file(&path);
            }
            Err(e)
        }
    }
}
