//! Installs what building and testing need on a fresh Debian machine, and nothing that is
//! already there.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use crate::run_checked;

/// The LLVM bpf-linker is built against (Debian's LLVM 22).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages building and running need: LLVM for bpf-linker.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages only the tests, the benchmarks and the image need: the tools the
/// integration tests drive. Never installed by `cargo xtask run`: on a real node, installing
/// containerd could replace the node's runtime.
const TEST_PACKAGES: &[&str] = &[
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

/// One thing a setup installs or prepares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    AptPackages(&'static [&'static str]),
    NightlyRustSrc,
    BpfLinker,
    Tracefs,
    CargoFuzz,
    Validator,
}

/// What building and running the tracer need (`cargo xtask run`, `cargo xtask man`).
const FOR_RUNNING: &[Step] = &[
    Step::AptPackages(BUILD_PACKAGES),
    Step::NightlyRustSrc,
    Step::BpfLinker,
    Step::Tracefs,
];

/// What the tests, the benchmarks and the image need besides.
const FOR_TESTING: &[Step] = &[
    Step::AptPackages(TEST_PACKAGES),
    Step::CargoFuzz,
    Step::Validator,
];

fn take(steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            Step::AptPackages(packages) => apt_packages(packages)?,
            Step::NightlyRustSrc => nightly_rust_src()?,
            Step::BpfLinker => bpf_linker()?,
            Step::Tracefs => tracefs(),
            Step::CargoFuzz => cargo_fuzz()?,
            Step::Validator => validator()?,
        }
    }
    Ok(())
}

pub fn for_running() -> Result<()> {
    take(FOR_RUNNING)
}

pub fn for_testing() -> Result<()> {
    take(FOR_RUNNING)?;
    take(FOR_TESTING)
}

/// cargo-fuzz, for the fuzz targets (`cargo xtask fuzz`).
fn cargo_fuzz() -> Result<()> {
    if succeeds(Command::new(env!("CARGO")).args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (about a minute)");
    run_checked(Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--locked"]))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the `packages` that are missing, without starting a service: a policy-rc.d that
/// refuses every start is in place during the install, and the services the new packages
/// enabled are disabled again (containerd and prometheus have theirs; the tests start their
/// own instances).
fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
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
    let policy = std::path::Path::new(POLICY_RC_D);
    let ours = !policy.exists();
    if ours {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask: no service starts while it installs.\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
    }
    let installed = run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed?;
    if succeeds(Command::new("systemctl").arg("--version")) {
        for unit in missing.iter().filter_map(|p| service_of(p)) {
            let _ = run_checked(Command::new("systemctl").args(["disable", unit]));
        }
    }
    Ok(())
}

/// Debian's way to keep maintainer scripts from starting services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The service a test package enables when installed.
fn service_of(package: &str) -> Option<&'static str> {
    match package {
        "containerd" => Some("containerd.service"),
        "prometheus" => Some("prometheus.service"),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn apt(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .flat_map(|s| match s {
                Step::AptPackages(packages) => packages.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn running_installs_only_what_building_needs() {
        let running = apt(FOR_RUNNING);
        assert_eq!(running, BUILD_PACKAGES);
        // Nothing a node has its own of (a container runtime, a Prometheus), and no validator.
        for package in [
            "containerd",
            "runc",
            "containernetworking-plugins",
            "buildah",
            "prometheus",
        ] {
            assert!(!running.contains(&package), "{package}");
            assert!(apt(FOR_TESTING).contains(&package), "{package}");
        }
        assert!(!FOR_RUNNING.contains(&Step::Validator));
        // Every package that enables a service is a test package, and is disabled again.
        for package in running {
            assert_eq!(service_of(package), None, "{package}");
        }
    }
}
