//! `cargo xtask image [--tag REF]`: the release tracer as an OCI image, built offline with
//! buildah from scratch: the binary, the shared libraries `ldd` names and the dynamic loader,
//! nothing else. Written as an oci-archive that `ctr images import`, `skopeo` or `podman load`
//! take on a node.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, workspace_root};

/// The image's name when no `--tag` is given (its tag is the tracer's version); the DaemonSet
/// in deploy/ names the same.
const DEFAULT_NAME: &str = "localhost/tracer";

/// Where the binary lives in the image.
const ENTRYPOINT: &str = "/usr/local/bin/tracer";

/// The metrics port the default command listens on (the DaemonSet's too).
const METRICS_PORT: u16 = 9435;

/// buildah with its storage and state below `dir`, so that nothing outside the project is
/// touched. vfs needs no overlay mounts, and one small layer copies quickly.
struct Buildah {
    dir: PathBuf,
    /// The working container, removed on drop, also after a failed step.
    container: Option<String>,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd().args(args).output().context("running buildah")?;
        if !out.status.success() {
            bail!(
                "buildah {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            let _ = self.output(&["rm", &container]);
        }
        // The archive is the product; the storage only held the working container.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The tracer's version, as the binary itself reports it (`tracer 0.1.0`).
fn version_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no version in `{} --version`: {text}", binary.display()))
}

/// The absolute paths `ldd` names for `binary`: its libraries and the dynamic loader (the
/// vDSO has none and is left out).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/.../libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let path = line.rsplit_once(" => ").map_or(line, |(_, p)| p).trim();
            let path = path.split(" (").next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Where the image keeps the man pages (`cargo xtask man`'s), for whoever copies them out.
const MAN_DIR: &str = "/usr/share/man/man8";

/// The image's file tree: the binary and its libraries at the paths the loader looks them up
/// by (copies, not symlinks, of what the host's paths point at), the man pages, and /var/run -> /run so that
/// the runtimes' `/var/run/netns/...` paths resolve below the DaemonSet's /run mounts.
fn stage_rootfs(rootfs: &Path, binary: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(rootfs);
    let mut files = vec![(binary.to_path_buf(), PathBuf::from(ENTRYPOINT))];
    files.extend(
        shared_libraries(binary)?
            .into_iter()
            .map(|p| (p.clone(), p)),
    );
    for (from, to) in files {
        let dest = rootfs.join(to.strip_prefix("/")?);
        fs::create_dir_all(dest.parent().context("a file has a parent")?)?;
        fs::copy(&from, &dest).with_context(|| format!("copying {}", from.display()))?;
    }
    crate::man_pages(binary, &rootfs.join(Path::new(MAN_DIR).strip_prefix("/")?))?;
    fs::create_dir_all(rootfs.join("run"))?;
    fs::create_dir_all(rootfs.join("var"))?;
    std::os::unix::fs::symlink("../run", rootfs.join("var/run"))?;
    Ok(())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// OCI annotations as config labels: what the image is and which source it was built from.
fn labels(version: &str) -> Vec<String> {
    let mut labels = vec![
        "org.opencontainers.image.title=tracer".to_string(),
        "org.opencontainers.image.description=eBPF kernel tracer for Kubernetes nodes".to_string(),
        format!("org.opencontainers.image.version={version}"),
        // The workspace's license, which xtask shares with the tracer.
        format!(
            "org.opencontainers.image.licenses={}",
            env!("CARGO_PKG_LICENSE")
        ),
    ];
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
        let suffix = if dirty { "-dirty" } else { "" };
        labels.push(format!(
            "org.opencontainers.image.revision={commit}{suffix}"
        ));
    }
    // The repository's address when the checkout has one; a local path would mean nothing on
    // a node.
    if let Some(url) = git(&["remote", "get-url", "origin"]) {
        labels.push(format!("org.opencontainers.image.source={url}"));
    }
    labels
}

/// Builds the image; returns the archive's path.
pub fn build(tag: Option<&str>) -> Result<PathBuf> {
    cargo(&["build", "--release", "--package", "tracer"])?;
    let root = workspace_root();
    let binary = root.join("target/release/tracer");
    let version = version_of(&binary)?;
    let reference = tag.map_or_else(|| format!("{DEFAULT_NAME}:{version}"), str::to_string);
    let out_dir = root.join("target/image");
    let archive = out_dir.join(format!("tracer-{version}.oci.tar"));
    let _ = fs::remove_file(&archive);
    let mut buildah = Buildah {
        dir: out_dir.join(format!("buildah-{}", std::process::id())),
        container: None,
    };
    let rootfs = buildah.dir.join("rootfs");
    stage_rootfs(&rootfs, &binary)?;

    eprintln!("xtask: building {reference} with buildah (from scratch)");
    let container = buildah.output(&["from", "scratch"])?;
    buildah.container = Some(container.clone());
    let rootfs_arg = format!("{}/", rootfs.display());
    buildah.output(&["copy", "--chown", "0:0", &container, &rootfs_arg, "/"])?;
    let entrypoint = format!(r#"["{ENTRYPOINT}"]"#);
    let cmd = format!(r#"["serve", "--listen", "0.0.0.0:{METRICS_PORT}"]"#);
    let port = format!("{METRICS_PORT}/tcp");
    let mut config = vec![
        "config",
        "--entrypoint",
        &entrypoint,
        "--cmd",
        &cmd,
        "--port",
        &port,
        "--os",
        "linux",
        "--created-by",
        "cargo xtask image",
    ];
    let labels = labels(&version);
    for label in &labels {
        config.extend(["--label", label]);
    }
    config.push(&container);
    buildah.output(&config)?;
    let destination = format!("oci-archive:{}:{reference}", archive.display());
    buildah.output(&[
        "commit",
        "--format",
        "oci",
        "--disable-compression=false",
        "--quiet",
        &container,
        &destination,
    ])?;
    buildah.output(&["rm", &container])?;
    buildah.container = None;
    drop(buildah);

    let size = fs::metadata(&archive)?.len();
    println!(
        "xtask: image {reference}: {} ({:.1} MiB)",
        archive.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(archive)
}

/// `cargo xtask image [--tag REF]`.
pub fn run(args: &[String]) -> Result<()> {
    let tag = match args {
        [] => None,
        [flag, tag] if flag == "--tag" => Some(tag.as_str()),
        _ => bail!("usage: cargo xtask image [--tag REF]"),
    };
    build(tag).map(drop)
}
