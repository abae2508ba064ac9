//! `cargo xtask fuzz [--quick]`: runs every fuzz target of fuzz/ (cargo-fuzz, nightly) for a
//! bounded time, starting from its kept regression inputs (fuzz/regressions/TARGET), which
//! every run replays first. A crash fails the task; libFuzzer leaves the input below
//! target/fuzz/artifacts/TARGET/ (keep it in fuzz/regressions/TARGET/ once fixed).

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{run_checked, workspace_root};

/// Seconds per target: `--quick` (in `cargo xtask test`), else a longer search.
const QUICK_SECONDS: u32 = 25;
const LONG_SECONDS: u32 = 300;

/// The targets, as cargo-fuzz lists them from fuzz/Cargo.toml.
fn targets() -> Result<Vec<String>> {
    let out = nightly_cargo()
        .args(["fuzz", "list", "--fuzz-dir", "fuzz"])
        .current_dir(workspace_root())
        .output()
        .context("cargo fuzz list")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo fuzz list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// cargo of the nightly toolchain (libFuzzer's sanitizer flags need it).
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    cmd
}

pub fn run(quick: bool) -> Result<()> {
    let seconds = if quick { QUICK_SECONDS } else { LONG_SECONDS };
    let root = workspace_root();
    for target in targets()? {
        let corpus = root.join("target/fuzz/corpus").join(&target);
        let artifacts = root.join("target/fuzz/artifacts").join(&target);
        let regressions = root.join("fuzz/regressions").join(&target);
        for dir in [&corpus, &artifacts, &regressions] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // The first directory takes what the run finds; the kept inputs are only read.
        run_checked(
            nightly_cargo()
                .args(["fuzz", "run", "--fuzz-dir", "fuzz", &target])
                .arg(&corpus)
                .arg(&regressions)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .arg("-rss_limit_mb=2048")
                // One input may take 10 s at most (libFuzzer's default is 1200): a decoder
                // that hangs is a finding, not a stalled run.
                .arg("-timeout=10")
                .arg("-print_final_stats=1"),
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed: the input is in {}",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}
