//! Running tracers: the kernel's BTF read and dropped, the programs loaded and attached,
//! the pipeline run until a stop condition, the summary written, everything detached.

use anyhow::{Context as _, Result};
use aya::maps::RingBuf;
use serde_json::{json, Map, Value};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

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

/// `tracer bench-hook`: a benchmark's program on `hook` until Ctrl-C or SIGTERM: an empty one,
/// or with `header_record` one writing each event's header into the ring buffer, which this
/// reads and drops (a full buffer would make every run a cheaper failed reservation).
pub fn attach_bench_hook(hook: &str, header_record: bool) -> Result<()> {
    let specs = if header_record {
        hooks::HEADER_HOOKS
    } else {
        hooks::EMPTY_HOOKS
    };
    let spec = specs
        .iter()
        .find(|s| s.purpose == hook)
        .with_context(|| format!("no benchmark program for hook `{hook}`"))?;
    preflight::require_privileges()?;
    let kernel = KernelContext::new(&KernelBtf::from_sys_fs()?, std::slice::from_ref(spec))?;
    let options = LoadOptions {
        ring_buffer_bytes: if header_record { 8 << 20 } else { 4096 },
        globals: Vec::new(),
    };
    let ebpf = hooks::open(&kernel, options)?;
    let mut loaded = hooks::attach(ebpf, std::slice::from_ref(spec), &kernel).require_usable()?;
    let ring = RingBuf::try_from(
        loaded
            .ebpf
            .take_map(hooks::EVENTS_MAP)
            .context("no EVENTS map")?,
    )?;
    let what = if header_record {
        "header-record"
    } else {
        "empty"
    };
    eprintln!("tracer: ready: {what} program on {hook}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
        let mut ring = unsafe { AsyncFd::register(ring) }?;
        let mut term = signal(SignalKind::terminate())?;
        // The programs wake the reader only when records pile up, as the tracers' do.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                guard = ring.readable_mut() => guard?.clear_ready(),
                _ = tick.tick() => {}
            }
            while ring.get_mut().next().is_some() {}
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
