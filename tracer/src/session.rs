//! Running tracers: the kernel's BTF read and dropped, the programs loaded and attached,
//! the pipeline run until a stop condition, the summary written, everything detached.

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    enrich::identity::Identities,
    hooks::{self, KernelContext, LoadOptions},
    kernel::{btf::KernelBtf, preflight},
    output::{Format, Output, RecordingCut},
    pipeline::{self, StopWhen},
    stop::{self, Interrupted},
    tracers::Tracer,
};

/// How a run goes, whichever command asked for it (the command line's options turned into
/// plain values once, so that nothing past `cli` sees the parser).
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub format: Format,
    pub stop: StopWhen,
    /// Size of the ring buffer, in MiB.
    pub buffer_mb: u32,
}

/// One run's shared context, built once: what loading needs from the kernel, and the
/// identity cache every tracer (and `serve`'s census) borrows.
pub struct Session {
    kernel: KernelContext,
    identities: Identities,
}

/// Reads the kernel's BTF for what `make` needs (a tracer's layouts) and for what loading
/// needs, then drops it before anything is loaded; `make` gets the run's identity cache.
/// Ctrl-C and SIGTERM are caught from here on (see [`stop`]).
pub fn prepare<T: Tracer>(
    make: impl FnOnce(&KernelBtf, &Identities) -> Result<T>,
) -> Result<(T, Session)> {
    stop::catch()?;
    let prepared = (|| {
        preflight::require_privileges()?;
        let btf = KernelBtf::from_sys_fs()?;
        let identities = Identities::new();
        let tracer = make(&btf, &identities)?;
        let kernel = KernelContext::new(&btf, &tracer.hooks())?;
        Ok((tracer, Session { kernel, identities }))
    })();
    prepared.map_err(Interrupted::or)
}

/// `tracer bench-empty-hook`: an empty program on `hook` until Ctrl-C or SIGTERM.
pub fn attach_empty_hook(hook: &str) -> Result<()> {
    let spec = hooks::EMPTY_HOOKS
        .iter()
        .find(|s| s.purpose == hook)
        .with_context(|| format!("no empty program for hook `{hook}`"))?;
    preflight::require_privileges()?;
    let kernel = KernelContext::new(&KernelBtf::from_sys_fs()?, std::slice::from_ref(spec))?;
    let options = LoadOptions {
        ring_buffer_bytes: 4096,
        globals: Vec::new(),
    };
    let ebpf = hooks::open(&kernel, options)?;
    let _loaded = hooks::attach(ebpf, std::slice::from_ref(spec), &kernel).require_usable()?;
    eprintln!("tracer: ready: empty program on {hook}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}

/// Loads and attaches `tracer`'s programs, streams its events until a stop condition, and
/// prints the summary. Everything is detached before this returns.
pub fn trace(tracer: &mut dyn Tracer, session: Session, run: &RunConfig) -> Result<()> {
    let out = Output::new(run.format.clone(), tracer.human_header());
    trace_into(tracer, session, run, out)
}

/// [`trace`] into a given output.
pub fn trace_into(
    tracer: &mut dyn Tracer,
    session: Session,
    run: &RunConfig,
    mut out: Output,
) -> Result<()> {
    // A signal before loading ends the run here; one during loading, once loaded (the event
    // loop stops at its first turn, with a summary), or as the cause of a failure to load.
    Interrupted::check()?;
    let loaded = (|| {
        let ebpf = hooks::open(
            &session.kernel,
            LoadOptions {
                ring_buffer_bytes: run.buffer_mb << 20,
                globals: tracer.globals(),
            },
        )?;
        let mut loaded = hooks::attach(ebpf, &tracer.hooks(), &session.kernel).require_usable()?;
        tracer.use_maps(&mut loaded.ebpf)?;
        anyhow::Ok(loaded)
    })()
    .map_err(Interrupted::or)?;
    let used: Vec<String> = loaded
        .outcomes
        .iter()
        .filter_map(|o| o.used.map(|a| a.to_string()))
        .collect();
    eprintln!(
        "tracer: ready: tracing {} via {}; Ctrl-C to stop",
        tracer.name(),
        used.join(", ")
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stats = runtime.block_on(pipeline::run(
        loaded,
        tracer,
        &session.identities,
        &mut out,
        run.stop,
    ))?;

    let mut summary = Map::new();
    summary.insert("type".into(), json!("summary"));
    summary.insert("tracer".into(), json!(tracer.name()));
    summary.insert("duration_s".into(), json!(stats.elapsed.as_secs_f64()));
    summary.insert("stopped_by".into(), json!(stats.stopped_by));
    summary.insert("events".into(), json!(stats.events));
    summary.insert("lost".into(), json!(stats.lost_total()));
    tracer.summarize(&mut summary);
    out.summary(&Value::Object(summary))
        .context("writing the summary")?;
    if stats.lost_total() > 0 {
        eprintln!(
            "tracer: warning: {} events were lost (ring buffer full); narrow the filters or raise --buffer-mb",
            stats.lost_total()
        );
    }
    match out.failed() {
        Some(e) => Err(RecordingCut(e.to_string()).into()),
        None => Ok(()),
    }
}
