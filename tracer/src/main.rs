//! `tracer`: loads the kernel programs, reads their events from the ring buffer, and prints
//! them. Data flows one way: kernel hook (tracer-ebpf) → ring buffer → `pipeline` → the
//! tracer's decoding and enrichment (`tracers::*`, `enrich`) → `output`.

mod cli;
mod clock;
mod doctor;
mod enrich;
mod hooks;
mod kernel;
mod output;
mod pipeline;
mod record;
mod report;
mod text;
mod tracers;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use serde_json::{json, Map, Value};
use tokio::signal::unix::{signal, SignalKind};
use tracer_common::offsets::KernelOffsets;

use crate::{
    cli::{Cli, Command, RecordArgs, RunArgs},
    enrich::selector::Selector,
    hooks::{KernelContext, LoadOptions},
    kernel::{btf::KernelBtf, offsets, preflight},
    output::{Format, Output},
    pipeline::StopWhen,
    record::Recorder,
    tracers::{
        conntrack::{self, ConntrackOptions, ConntrackTracer},
        netns::{snapshot::SnapshotOptions, NetnsTracer},
        signals::{SignalsOptions, SignalsTracer},
        Tracer,
    },
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Signals(args) => {
            let options = SignalsOptions {
                pid: args.pid,
                sender_pid: args.sender_pid,
                signals: args.signal,
                failed_only: args.failed,
                wait: args.wait,
                workload: Selector {
                    container: args.container,
                    pod: args.pod,
                    namespace: args.namespace,
                },
            };
            let (mut tracer, offsets) = from_kernel_btf(|_| SignalsTracer::new(&options))?;
            trace(&mut tracer, offsets, &args.run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ConntrackDrops(args) => {
            let proto = args
                .proto
                .as_deref()
                .map(conntrack::parse_proto)
                .transpose()?;
            let options = ConntrackOptions {
                netns: args.netns,
                proto,
                port: args.port,
                conntrack_only: args.conntrack_only,
                pod: args.pod,
                namespace: args.namespace,
            };
            let (mut tracer, offsets) = from_kernel_btf(|btf| ConntrackTracer::new(btf, options))?;
            trace(&mut tracer, offsets, &args.run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Netns(args) if args.watch => {
            let (mut tracer, offsets) = from_kernel_btf(|_| Ok(NetnsTracer::new()))?;
            trace(&mut tracer, offsets, &args.run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Netns(args) => tracers::netns::snapshot::run(&SnapshotOptions {
            format: format(&args.run),
            inodes: args.inode,
            stuck_after: args.stuck_after,
        }),
        Command::Record(args) => {
            record(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { file, json } => {
            report::print(&file, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => doctor::run(),
        Command::BenchEmptyHook { hook } => {
            attach_empty_hook(&hook)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ExitCode { code } => {
            println!("{}", tracers::signals::names::explain_exit_code(code));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn format(run: &RunArgs) -> Format {
    if run.json {
        Format::Json
    } else {
        Format::Human
    }
}

/// `tracer record`: every tracer into one file, then the report.
fn record(args: RecordArgs) -> Result<()> {
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
    let (mut recorder, offsets) = from_kernel_btf(|btf| {
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
    trace_into(&mut recorder, offsets, &run, out)?;
    report::print(&path, false)
}

/// Reads the kernel's BTF for the programs' offsets and for whatever `f` needs (a tracer's
/// layouts), then drops it before anything is loaded (see `KernelContext`).
fn from_kernel_btf<T>(f: impl FnOnce(&KernelBtf) -> Result<T>) -> Result<(T, KernelOffsets)> {
    preflight::require_privileges()?;
    let btf = KernelBtf::from_sys_fs()?;
    Ok((f(&btf)?, offsets::resolve(&btf)?))
}

/// `tracer bench-empty-hook`: an empty program on `hook` until Ctrl-C or SIGTERM.
fn attach_empty_hook(hook: &str) -> Result<()> {
    let spec = hooks::EMPTY_HOOKS
        .iter()
        .find(|s| s.purpose == hook)
        .with_context(|| format!("no empty program for hook `{hook}`"))?;
    let ((), offsets) = from_kernel_btf(|_| Ok(()))?;
    let kernel = KernelContext::new(offsets)?;
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
fn trace(tracer: &mut dyn Tracer, offsets: KernelOffsets, run: &RunArgs) -> Result<()> {
    let out = Output::new(format(run), tracer.human_header());
    trace_into(tracer, offsets, run, out)
}

/// [`trace`] into a given output.
fn trace_into(
    tracer: &mut dyn Tracer,
    offsets: KernelOffsets,
    run: &RunArgs,
    mut out: Output,
) -> Result<()> {
    let kernel = KernelContext::new(offsets)?;
    let ebpf = hooks::open(
        &kernel,
        LoadOptions {
            ring_buffer_bytes: run.buffer_mb << 20,
            globals: tracer.globals(),
        },
    )?;
    let mut loaded = hooks::attach(ebpf, &tracer.hooks(), &kernel).require_usable()?;
    tracer.use_maps(&mut loaded.ebpf)?;
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
    let stop = StopWhen {
        duration: run.duration,
        count: run.count,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stats = runtime.block_on(pipeline::run(loaded, tracer, &mut out, stop))?;

    let mut summary = Map::new();
    summary.insert("type".into(), json!("summary"));
    summary.insert("tracer".into(), json!(tracer.name()));
    summary.insert("duration_s".into(), json!(stats.elapsed.as_secs_f64()));
    summary.insert("stopped_by".into(), json!(stats.stopped_by));
    summary.insert("events".into(), json!(stats.events));
    summary.insert("lost".into(), json!(stats.lost_total()));
    tracer.summarize(&stats, &mut summary);
    out.summary(&Value::Object(summary))
        .context("writing the summary")?;
    if stats.lost_total() > 0 {
        eprintln!(
            "tracer: warning: {} events were lost (ring buffer full); narrow the filters or raise --buffer-mb",
            stats.lost_total()
        );
    }
    Ok(())
}
