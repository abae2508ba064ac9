//! `cargo xtask <task>`: the project's own build, run and test tasks, including the setup a
//! fresh machine needs. Every task installs what is missing first, so the README's two
//! commands work on a new machine.
//!
//! - `cargo xtask setup`: install prerequisites (idempotent, quick when present).
//! - `cargo xtask run -- <tracer args>`: setup, build, run `tracer` as root.
//! - `cargo xtask test`: setup, format and lint checks, unit tests, kernel integration tests.
//! - `cargo xtask fuzz [--quick]`: setup, then every fuzz target for a bounded time.
//! - `cargo xtask image [--tag REF]`: setup, then the tracer's container image (deploy/).
//! - `cargo xtask man`: build, then the man pages from the command line's definition.

mod bench;
mod fuzz;
mod image;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <task>\n\n\
         tasks:\n  \
         setup              install what building and testing need (apt packages, nightly rust-src, bpf-linker)\n  \
         run -- ARGS        install only what building needs, build, and run `tracer ARGS`\n  \
         test [-- FILTER]   setup, cargo fmt --check, clippy -D warnings, unit and integration tests\n  \
         fuzz [--quick]     setup, then run every fuzz target (fuzz/) for 25 s each (--quick) or 5 min\n  \
         bench [--quick] [--netns] [--startup] [--kernel]  setup, then measure start-up, kernel cost, throughput and overhead against baselines (--netns: the netns snapshot only; --startup: start-up and peak RSS only; --kernel: kernel cost per event and the traced path's rates only)\n  \
         image [--tag REF]  setup, then build the release tracer's OCI image (target/image/tracer-VERSION.oci.tar)\n  \
         man                install only what building needs, build, and write the man pages to target/man/"
    );
    std::process::exit(2)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_else(|| usage());
    let rest: Vec<String> = args.skip_while(|a| a == "--").collect();
    // `run` passes its arguments to the tracer; every other task would take `--help` for one of
    // its own options and start (a whole bench run, a setup).
    if task == "--help"
        || task == "-h"
        || (task != "run" && rest.iter().any(|a| a == "--help" || a == "-h"))
    {
        usage();
    }
    match task.as_str() {
        "setup" => setup::for_testing(),
        "run" => {
            setup::for_running()?;
            cargo(&["build", "--release", "--package", "tracer"])?;
            let status = Command::new(workspace_root().join("target/release/tracer"))
                .args(&rest)
                .status()
                .context("starting tracer")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        "test" => {
            setup::for_testing()?;
            test(&rest)
        }
        "bench" => {
            setup::for_testing()?;
            let only = if rest.iter().any(|a| a == "--netns") {
                bench::Only::Netns
            } else if rest.iter().any(|a| a == "--startup") {
                bench::Only::Startup
            } else if rest.iter().any(|a| a == "--kernel") {
                bench::Only::Kernel
            } else {
                bench::Only::Everything
            };
            bench::run(rest.iter().any(|a| a == "--quick"), only)
        }
        "image" => {
            setup::for_testing()?;
            image::run(&rest)
        }
        "man" => {
            setup::for_running()?;
            cargo(&["build", "--release", "--package", "tracer"])?;
            let dir = workspace_root().join("target/man");
            man_pages(&workspace_root().join("target/release/tracer"), &dir)?;
            println!(
                "xtask: man pages in {} (man -l {}/tracer.8)",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        "fuzz" => {
            setup::for_testing()?;
            fuzz::run(rest.iter().any(|a| a == "--quick"))
        }
        _ => usage(),
    }
}

/// Writes the man pages of the built tracer `binary` into `dir` (its hidden `man-pages`
/// command: the pages come from the tracer's own command-line definition).
pub fn man_pages(binary: &Path, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    run_checked(Command::new(binary).arg("man-pages").arg(dir))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    run_checked(Command::new(env!("CARGO")).args(args))
}

/// Passed and failed test counts, summed over cargo test's `test result:` lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let count = |word: &str| {
            rest.split(';')
                .find_map(|part| part.trim().strip_suffix(word))
                .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
    }
}

/// Runs cargo test with `args`, echoing its output and counting its results.
fn cargo_test(args: &[&str], tally: &mut Tally) -> Result<()> {
    eprintln!("xtask: $ cargo {}", args.join(" "));
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .env("TRACER_BIN", workspace_root().join("target/release/tracer"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}

fn test(filter: &[String]) -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["build", "--release", "--package", "tracer"])?;
    let mut tally = Tally::default();
    // Unit tests, then the integration tests against the real kernel: those change global
    // state (attached programs, namespaces, sysctls), so they run one at a time.
    let unit = [
        "test",
        "--release",
        "--package",
        "tracer",
        "--package",
        "tracer-common",
        "--package",
        "xtask",
    ];
    let mut integration = vec!["test", "--release", "--package", "tracer-tests", "--"];
    integration.push("--test-threads=1");
    integration.extend(filter.iter().map(String::as_str));
    let mut result =
        cargo_test(&unit, &mut tally).and_then(|()| cargo_test(&integration, &mut tally));
    if result.is_ok() && filter.is_empty() {
        // The benchmark harness's own test: a short run proves it works (figures not asserted).
        eprintln!("xtask: bench --quick (the harness's test)");
        result = bench::run(true, bench::Only::Everything);
        match &result {
            Ok(()) => tally.passed += 1,
            Err(_) => tally.failed += 1,
        }
    }
    if result.is_ok() && filter.is_empty() {
        // Every parser of outside input, fuzzed for a bounded time from its kept inputs.
        eprintln!("xtask: fuzz --quick");
        result = fuzz::run(true);
        match &result {
            Ok(()) => tally.passed += 1,
            Err(_) => tally.failed += 1,
        }
    }
    // The closing line CI reads: a total over every test binary.
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    result
}
