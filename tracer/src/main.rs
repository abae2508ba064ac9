//! `tracer`: loads the kernel programs, reads their events from the ring buffer, and prints
//! them. Data flows one way: kernel hook (tracer-ebpf) → ring buffer → `pipeline` → the
//! tracer's decoding and enrichment (`tracers::*`, `enrich`) → `output`.

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Parser as _;

use tracer::{
    cli::{self, Cli, Command},
    docs, doctor, enrich,
    enrich::selector::Selector,
    output, probe, record, report, serve, session,
    session::{prepare, trace},
    stop,
    tracers::{
        self,
        conntrack::{self, ConntrackOptions, ConntrackTracer},
        netns::{
            self,
            snapshot::{NamespaceReport, SnapshotOptions},
            NetnsTracer,
        },
        signals::{self, SignalsOptions, SignalsTracer},
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
        // The reader went away (`tracer signals | head -1`): the programs are detached by
        // then, and there is no one left to tell; end quietly, as coreutils do.
        Err(e) if output::ReaderGone::caused(&e) => ExitCode::SUCCESS,
        // Written without eprintln!, which panics when stderr is a pipe whose reader is gone
        // too (`tracer report F 2>&1 | head -1`): then the exit code is all that is left.
        Err(e) => match stop::Interrupted::exit_code(&e) {
            Some(code) => {
                let _ = writeln!(std::io::stderr(), "tracer: {e:#}");
                ExitCode::from(code)
            }
            None => {
                let _ = writeln!(std::io::stderr(), "tracer: error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    enrich::metadata::configure_containerd_state(cli.containerd_state);
    match cli.command {
        Command::Signals(args) => {
            let buffer_mb = if args.pid.is_some() {
                cli::ONE_PROCESS_BUFFER_MB
            } else {
                cli::DEFAULT_BUFFER_MB
            };
            let run = args.run.config::<signals::SignalRecord>(buffer_mb)?;
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
                    workload: args.workload,
                },
            };
            let (mut tracer, session) =
                prepare(|_, identities| SignalsTracer::new(&options, identities))?;
            trace(&mut tracer, session, &run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ConntrackDrops(args) => {
            let run = args
                .run
                .config::<conntrack::ConntrackDrop>(cli::DEFAULT_BUFFER_MB)?;
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
                workload: args.pods.selector(),
                // Asking for the column asks for what fills it.
                hook: args.hook || args.run.fields.iter().any(|f| f == "hook"),
            };
            let (mut tracer, session) =
                prepare(|btf, identities| ConntrackTracer::new(btf, options, identities))?;
            trace(&mut tracer, session, &run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Netns(args) if args.watch => {
            let run = args
                .run
                .config::<netns::NetnsRecord>(cli::DEFAULT_BUFFER_MB)?;
            let (mut tracer, session) = prepare(|_, identities| {
                Ok(NetnsTracer::new(identities).only(args.pods.selector()))
            })?;
            trace(&mut tracer, session, &run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Netns(args) => {
            let run = &args.run;
            if run.duration.is_some() || run.count.is_some() || run.buffer_mb.is_some() {
                anyhow::bail!(
                    "--duration, --count and --buffer-mb are for `netns --watch`; a snapshot \
                     ends by itself"
                );
            }
            snapshot(args)
        }
        Command::Record(args) => record::run(args),
        Command::Serve(args) => {
            serve::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe(args) => probe::run(probe::ProbeOptions {
            target: probe::target::Target::parse(
                &args.target,
                args.payload.as_deref(),
                args.expect.as_deref(),
            )?
            .with_burst(args.burst)?,
            timeout: args.timeout,
            parallel: args.parallel.into(),
            all_netns: args.all_netns,
            netns: args.netns,
            workload: args.pods.selector(),
            format: if args.json {
                output::Format::Json
            } else {
                output::Format::Human
            },
            buffer_mb: args.buffer_mb,
        }),
        Command::Report { file, json } => {
            report::print(&file, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => doctor::run(),
        Command::BenchHook {
            hook,
            header_record,
        } => {
            session::attach_bench_hook(&hook, header_record)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            docs::completions(shell)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ManPages { dir } => {
            docs::man_pages(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ExitCode { code } => {
            let meaning = tracers::signals::names::explain_exit_code(code);
            writeln!(output::answer_stdout(), "{meaning}").context("writing to standard output")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tracer netns` without `--watch`: one snapshot.
fn snapshot(args: cli::NetnsArgs) -> Result<ExitCode> {
    tracers::netns::snapshot::run(&SnapshotOptions {
        format: args
            .run
            .config::<NamespaceReport>(cli::DEFAULT_BUFFER_MB)?
            .format,
        workload: args.pods.selector(),
        inodes: args.inode,
        stuck_after: args.stuck_after,
    })
}

#[cfg(test)]
mod design_tests {
    use std::{collections::BTreeMap, fs, path::Path};

    /// The crate's top-level modules each use: `crate::m` paths and the first segments of
    /// `use crate::{...}` groups, in code outside tests.
    fn module_graph() -> BTreeMap<String, Vec<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let modules: Vec<String> = fs::read_dir(&src)
            .unwrap()
            .flatten()
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .filter(|m| m != "main" && m != "lib")
            .collect();
        let mut graph = BTreeMap::new();
        for module in &modules {
            let mut text = String::new();
            let mut dirs = vec![src.join(module)];
            if let Ok(file) = fs::read_to_string(src.join(format!("{module}.rs"))) {
                text.push_str(&file);
            }
            while let Some(dir) = dirs.pop() {
                for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else if let Ok(file) = fs::read_to_string(&path) {
                        text.push_str(&file);
                    }
                }
            }
            let code = |file: &str| file.split("#[cfg(test)]").next().unwrap_or("").to_string();
            let text = code(&text);
            let mut uses: Vec<String> = Vec::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    // The group's own top level: `a::x, b, c::{..}`.
                    Some(group) => {
                        let mut depth = 0;
                        let end = group
                            .find(|c: char| {
                                match c {
                                    '{' => depth += 1,
                                    '}' if depth == 0 => return true,
                                    '}' => depth -= 1,
                                    _ => {}
                                }
                                false
                            })
                            .unwrap_or(group.len());
                        let mut depth = 0;
                        group[..end]
                            .split(|c: char| {
                                match c {
                                    '{' => depth += 1,
                                    '}' => depth -= 1,
                                    _ => {}
                                }
                                c == ',' && depth == 0
                            })
                            .map(|item| item.trim().split("::").next().unwrap_or(""))
                            .collect()
                    }
                    None => vec![rest
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or("")],
                };
                for name in names {
                    if name != module
                        && modules.iter().any(|m| m == name)
                        && !uses.iter().any(|u| u == name)
                    {
                        uses.push(name.to_string());
                    }
                }
            }
            graph.insert(module.clone(), uses);
        }
        graph
    }

    #[test]
    fn modules_depend_on_each_other_one_way() {
        let graph = module_graph();
        assert!(graph["cli"].contains(&"session".to_string()), "{graph:?}");
        // Depth-first from each module: reaching it again is a cycle.
        for start in graph.keys() {
            let mut stack = vec![vec![start.clone()]];
            while let Some(path) = stack.pop() {
                for next in &graph[path.last().unwrap()] {
                    assert!(
                        next != start,
                        "import cycle: {} -> {next}",
                        path.join(" -> ")
                    );
                    if !path.contains(next) {
                        stack.push([path.clone(), vec![next.clone()]].concat());
                    }
                }
            }
        }
    }
}
