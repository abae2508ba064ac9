//! Installs what building and testing need on a fresh Debian machine, and nothing that is
//! already there.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use crate::run_checked;

/// The LLVM bpf-linker is built against (Debian's LLVM 22).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages: LLVM for bpf-linker, and the tools the integration tests drive.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "nftables",
    "iptables",
    "conntrack",
    "procps",
    "util-linux",
    "bpftrace",
    // A CRI node for the container identity tests (tests/support/cri.rs), and protoc for the
    // CRI client's generated code.
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "protobuf-compiler",
    // The container image (cargo xtask image), and promtool to check the metrics' exposition.
    "buildah",
    "prometheus",
];

/// The manifest validator (tests/deploy.rs), pinned, in a virtualenv below target/ so that
/// nothing outside the project changes: Kubernetes' own schemas (strict: unknown fields are
/// errors), and the prometheus-operator models for the ServiceMonitor, a custom resource.
const VALIDATOR_VENV: &str = "target/validator";
const VALIDATOR_PACKAGES: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "cloudcoil-models-prometheus-operator==0.80.1.0",
];

pub fn all() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    validator()?;
    tracefs();
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup (the eBPF programs build with rustup's nightly toolchain)")?;
    if !String::from_utf8_lossy(&has_nightly.stdout).contains("nightly") {
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("listing nightly components")?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against {LLVM_PREFIX} (about a minute)");
    run_checked(
        Command::new(env!("CARGO"))
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

fn validator() -> Result<()> {
    let venv = crate::workspace_root().join(VALIDATOR_VENV);
    let python = venv.join("bin/python");
    // The pins are the marker: a venv without one of them (new pins, a broken install) is
    // brought up to date, one that has them all is left alone.
    // pip spells names its own way (`cloudcoil.models.prometheus_operator`): compare them
    // normalized, as PEP 503 does.
    let normalize = |s: &str| s.to_lowercase().replace(['.', '_'], "-");
    let installed = Command::new(&python)
        .args(["-m", "pip", "freeze"])
        .output()
        .map(|o| normalize(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    if VALIDATOR_PACKAGES
        .iter()
        .all(|p| installed.lines().any(|l| l == normalize(p)))
    {
        return Ok(());
    }
    eprintln!("xtask: installing the manifest validator into {VALIDATOR_VENV}");
    run_checked(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run_checked(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(VALIDATOR_PACKAGES),
    )
}

/// Classic tracepoints and the tests need tracefs; mounting can fail in a container, in which
/// case the tracer itself says what to do.
fn tracefs() {
    if !std::path::Path::new("/sys/kernel/tracing/events").is_dir()
        && !succeeds(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
    {
        eprintln!("xtask: warning: could not mount tracefs at /sys/kernel/tracing");
    }
}
