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
mod serve;
mod session;
mod text;
mod tracers;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    enrich::selector::Selector,
    session::{prepare, trace},
    tracers::{
        conntrack::{self, ConntrackOptions, ConntrackTracer},
        netns::{snapshot::SnapshotOptions, NetnsTracer},
        signals::{SignalsOptions, SignalsTracer},
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
            let (mut tracer, kernel) = prepare(|_| SignalsTracer::new(&options))?;
            trace(&mut tracer, kernel, &args.run)?;
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
                host: args.host,
                net: args.net,
                conntrack_only: args.conntrack_only,
                pod: args.pod,
                namespace: args.namespace,
            };
            let (mut tracer, kernel) = prepare(|btf| ConntrackTracer::new(btf, options))?;
            trace(&mut tracer, kernel, &args.run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Netns(args) if args.watch => {
            let (mut tracer, kernel) = prepare(|_| Ok(NetnsTracer::new()))?;
            trace(&mut tracer, kernel, &args.run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Netns(args) => tracers::netns::snapshot::run(&SnapshotOptions {
            format: session::format(&args.run),
            inodes: args.inode,
            stuck_after: args.stuck_after,
        }),
        Command::Record(args) => {
            record::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            serve::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { file, json } => {
            report::print(&file, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => doctor::run(),
        Command::BenchEmptyHook { hook } => {
            session::attach_empty_hook(&hook)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ExitCode { code } => {
            println!("{}", tracers::signals::names::explain_exit_code(code));
            Ok(ExitCode::SUCCESS)
        }
    }
}
