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
mod text;
mod tracers;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use serde_json::{json, Map, Value};

use crate::{
    cli::{Cli, Command, RunArgs},
    enrich::selector::Selector,
    hooks::LoadOptions,
    kernel::{btf::KernelBtf, preflight},
    output::{Format, Output},
    pipeline::StopWhen,
    tracers::{
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
            let mut tracer = SignalsTracer::new(&SignalsOptions {
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
            })?;
            trace(&mut tracer, &args.run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => doctor::run(),
        Command::ExitCode { code } => {
            println!("{}", tracers::signals::names::explain_exit_code(code));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads and attaches `tracer`'s programs, streams its events until a stop condition, and
/// prints the summary. Everything is detached before this returns.
fn trace(tracer: &mut dyn Tracer, run: &RunArgs) -> Result<()> {
    preflight::require_privileges()?;
    let btf = KernelBtf::from_sys_fs()?;
    let ebpf = hooks::open(
        &btf,
        LoadOptions {
            ring_buffer_bytes: run.buffer_mb << 20,
            globals: tracer.globals(),
        },
    )?;
    let mut loaded = hooks::attach(ebpf, tracer.hooks()).require_usable()?;
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
    let format = if run.json {
        Format::Json
    } else {
        Format::Human
    };
    let mut out = Output::new(format);
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
