//! A Kubernetes node's container runtime for tests: a private containerd (its own socket,
//! root, state and cgroup parent) driven through the CRI API the way a kubelet drives it, with
//! a CNI bridge inside a network namespace of its own and a busybox image built locally.
//!
//! [`CriNode::up`] brings it up; dropping the node (or [`CriNode::down`]) removes everything
//! it made: pods, processes, mounts, cgroups, the network namespace with its bridge and
//! rules, files. Nothing touches a containerd of the machine or the host's network; the only
//! files outside the node's directory are those containerd 1.6 and libcni always write
//! (below [`HOST_DIRS`]), and the node removes them too.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use nix::{sys::signal::Signal, unistd::Pid};
use sha2::{Digest as _, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Owned;

/// Every node's name starts so, followed by the pid of the process that made it.
const NAME_PREFIX: &str = "tracer-cri-";

/// The image every pod and container runs (its sandbox image too): busybox, built here.
pub const IMAGE: &str = "localhost/tracer-test/busybox:1";

/// The CNI network's subnet: private, and only inside the node's own network namespace.
const SUBNET: &str = "10.213.0.0/24";

/// The CNI bridge; it lives in the node's own netns, so one name serves every node.
const BRIDGE: &str = "tracer-cri0";

/// Directories containerd 1.6 and libcni create outside their configured roots (shim sockets,
/// runc state on cleanup paths, the CNI result cache), children first. The node removes those
/// that did not exist before it came up, once they are empty.
const HOST_DIRS: &[&str] = &[
    "/run/containerd/s",
    "/run/containerd/fifo",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc",
    "/run/containerd",
    "/var/lib/cni/results",
    "/var/lib/cni",
];

/// The file in a node's directory that lists the host directories it made, so that the next
/// node can remove them when this one's process was killed.
const MADE_HOST_DIRS: &str = "made-host-dirs";

/// How long one CRI call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod the node runs.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The pod shares the node's pid namespace (`hostPID`).
    pub host_pid: bool,
    /// The pod shares the node's network namespace (`hostNetwork`): here the node's own
    /// namespace, which containerd runs in, not the machine's.
    pub host_network: bool,
}

/// A running container.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    /// Its first process, as the runtime reports it (host pid namespace).
    pub pid: u32,
    /// Its log (the CRI format: time, stream, tag, line).
    pub log: PathBuf,
}

pub struct CriNode {
    footprint: Footprint,
    containerd: Option<Owned>,
    runtime: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
    pods: Vec<Pod>,
    /// Containers created so far by (pod id, name): the next one is a restart, with the next
    /// attempt number, as the kubelet numbers them.
    attempts: HashMap<(String, String), u32>,
}

/// What a node puts on the machine, found by name, so that all of it can be removed (and
/// checked to be gone) whatever state the node was left in.
#[derive(Clone, Debug)]
pub struct Footprint {
    /// Everything on disk lives here.
    dir: PathBuf,
    /// The netns's, the CNI network's and the top cgroup's name.
    name: String,
    /// Those of [`HOST_DIRS`] that did not exist before the node came up.
    made_host_dirs: Vec<&'static str>,
    /// Ids of the tasks (sandboxes, containers) seen in the node's state.
    tasks: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// An OCI digest.
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The kubelet's namespace choices: the node's pid namespace for `hostPID` pods, else one per
/// container (pods do not share a process namespace by default); the node's network
/// namespace for `hostNetwork` pods, else the pod's own.
fn namespaces(pod: &Pod) -> NamespaceOption {
    NamespaceOption {
        pid: if pod.host_pid {
            NamespaceMode::Node
        } else {
            NamespaceMode::Container
        } as i32,
        network: if pod.host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        } as i32,
        ..Default::default()
    }
}

/// A fresh pod UID from the kernel's generator.
fn new_uid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a random uuid")
        .trim()
        .to_string()
}

/// The cgroup hierarchies' mount points (v1 controllers and the unified one).
fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mount_point = left.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Writes the busybox image as an OCI image layout archive.
fn build_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "sleep", "kill", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let layer_path = dir.join("layer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer_path)
        .arg("."))
    .expect("packing the layer");
    let layer = fs::read(&layer_path).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config.as_bytes()), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(&layer), "size": layer.len()}],
    })
    .to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha256(manifest.as_bytes()), "size": manifest.len(),
                       "platform": {"architecture": arch, "os": "linux"},
                       "annotations": {"io.containerd.image.name": IMAGE,
                                       "org.opencontainers.image.ref.name": "1"}}],
    })
    .to_string();
    let layout = dir.join("image");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for blob in [&layer[..], config.as_bytes(), manifest.as_bytes()] {
        let digest = sha256(blob);
        fs::write(blobs.join(digest.trim_start_matches("sha256:")), blob).unwrap();
    }
    fs::write(layout.join("index.json"), index).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"]))
    .expect("packing the image");
    archive
}

impl CriNode {
    /// Starts containerd with the CRI plugin and imports the test image. Panics (after
    /// cleaning up) when it cannot.
    pub fn up() -> Self {
        // Unique per node, so that tests running in parallel threads get a node each.
        static NODES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A test process killed outright (no unwinding) leaves its node behind.
        for stale in Footprint::stale() {
            stale.remove();
        }
        let made_host_dirs = HOST_DIRS
            .iter()
            .copied()
            .filter(|d| !Path::new(d).exists())
            .collect();
        let mut node = Self {
            footprint: Footprint {
                made_host_dirs,
                ..Footprint::named(&format!("{NAME_PREFIX}{}-{n}", std::process::id()))
            },
            containerd: None,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            client: None,
            pods: Vec::new(),
            attempts: HashMap::new(),
        };
        // Whatever a previous process with the same pid left (unlikely) goes first.
        node.footprint.remove();
        if let Err(e) = node.start() {
            node.down();
            panic!("bringing the CRI node up: {e}");
        }
        crate::CONTAINERD_STATE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node.containerd_state_dir());
        node
    }

    /// What the node put on the machine so far: for [`Footprint::leftovers`] once it is down.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            tasks: self.footprint.current_tasks(),
            ..self.footprint.clone()
        }
    }

    fn socket(&self) -> PathBuf {
        self.footprint.socket()
    }

    /// containerd's task directory (its bundles, with their `config.json`): what a node has
    /// at /run/containerd/io.containerd.runtime.v2.task.
    pub fn containerd_tasks_dir(&self) -> PathBuf {
        self.containerd_state_dir()
            .join("io.containerd.runtime.v2.task")
    }

    /// containerd's `state` directory: what `--containerd-state` names.
    pub fn containerd_state_dir(&self) -> PathBuf {
        self.footprint.dir.join("state")
    }

    /// The node's own network namespace (its bind mount): where `hostNetwork` pods run.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.footprint.name())
    }

    /// The pods' gateway: the IPv4 address the CNI bridge plugin gave the bridge, read from
    /// the node's namespace (there once a pod has been set up).
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        let out = Command::new("ip")
            .args([
                "-n",
                self.footprint.name(),
                "-j",
                "-4",
                "addr",
                "show",
                "dev",
                BRIDGE,
            ])
            .output()
            .expect("ip addr show");
        let links: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ip -j addr show dev {BRIDGE}: {e}"));
        links[0]["addr_info"][0]["local"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no IPv4 address on {BRIDGE} (no pod set up yet?): {links}"))
    }

    /// The cgroup every pod of this node goes below, as a kubelet's `--cgroup-root`.
    fn cgroup_root(&self) -> String {
        format!("/{}", self.footprint.name)
    }

    fn start(&mut self) -> Result<(), String> {
        let Footprint {
            dir,
            name,
            made_host_dirs,
            ..
        } = self.footprint.clone();
        fs::create_dir_all(dir.join("cni")).map_err(|e| e.to_string())?;
        fs::write(dir.join(MADE_HOST_DIRS), made_host_dirs.join("\n"))
            .map_err(|e| e.to_string())?;
        run(Command::new("ip").args(["netns", "add", &name]))?;
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        let bridge = BRIDGE;
        let cni = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": name,
            "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "subnet": SUBNET,
                         "dataDir": dir.join("ipam")},
            }],
        });
        fs::write(dir.join("cni/10-tracer-test.conflist"), cni.to_string())
            .map_err(|e| e.to_string())?;
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # The kubelet gives sandboxes oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which
  # a test machine (a container, a CI sandbox) may not grant.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
"#
        );
        fs::write(dir.join("config.toml"), config).map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.join("containerd.log")).map_err(|e| e.to_string())?;
        // nsenter switches the network namespace only (`ip netns exec` would remount /sys and
        // hide the cgroup hierarchies), so the CNI bridge is made inside the node's netns.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .arg("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting containerd: {e}"))?;
        self.containerd = Some(Owned(child));
        let archive = build_image(&dir);
        let socket = self.socket();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(format!("containerd did not start: {}", self.log_tail()));
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.import_image(&archive)?;
        let channel = self
            .runtime
            .block_on(
                Endpoint::try_from("http://[::]:0")
                    .map_err(|e| e.to_string())?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .map_err(|e| format!("connecting to the CRI socket: {e}"))?;
        self.client = Some(RuntimeServiceClient::new(channel));
        Ok(())
    }

    /// Imports an OCI image archive into the node's image store (`ctr images import`, as an
    /// image is loaded on a node without a registry); returns ctr's report.
    pub fn import_image(&self, archive: &Path) -> Result<String, String> {
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(archive))
    }

    /// The last lines of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.footprint.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs one CRI call on the node's runtime, with a timeout.
    fn try_call<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnOnce(
            &mut RuntimeServiceClient<Channel>,
        ) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, String> {
        let client = self.client.as_mut().ok_or("the node is down")?;
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f(client)).await });
        match result {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("CRI {what}: {status}")),
            Err(_) => Err(format!("CRI {what}: no answer in {CALL_TIMEOUT:?}")),
        }
    }

    /// [`Self::try_call`], panicking with containerd's last words on failure.
    fn call<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnOnce(
            &mut RuntimeServiceClient<Channel>,
        ) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> T {
        self.try_call(what, f)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()))
    }

    /// Runs a pod sandbox as the kubelet would (cgroupfs driver, best-effort QoS), on the CNI
    /// bridge. With `host_pid` its containers see the node's processes.
    pub fn run_pod(&mut self, namespace: &str, name: &str, host_pid: bool) -> Pod {
        self.start_pod(namespace, name, host_pid, false)
    }

    /// Runs a pod in the node's network namespace (`hostNetwork`), as node agents run.
    pub fn run_host_network_pod(&mut self, namespace: &str, name: &str, host_pid: bool) -> Pod {
        self.start_pod(namespace, name, host_pid, true)
    }

    fn start_pod(
        &mut self,
        namespace: &str,
        name: &str,
        host_pid: bool,
        host_network: bool,
    ) -> Pod {
        let mut pod = Pod {
            id: String::new(),
            uid: new_uid(),
            name: name.into(),
            namespace: namespace.into(),
            host_pid,
            host_network,
        };
        let config = self.sandbox_config(&pod);
        let response = self.call("RunPodSandbox", async |c| {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                ..Default::default()
            })
            .await
        });
        pod.id = response.pod_sandbox_id;
        self.pods.push(pod.clone());
        pod
    }

    fn sandbox_config(&self, pod: &Pod) -> PodSandboxConfig {
        let Pod {
            name,
            namespace,
            uid,
            ..
        } = pod;
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: namespace.clone(),
                attempt: 0,
            }),
            // A hostNetwork pod keeps the node's name, as the kubelet leaves it.
            hostname: if pod.host_network {
                String::new()
            } else {
                name.clone()
            },
            log_directory: self.log_directory(pod).display().to_string(),
            labels: HashMap::from([
                ("io.kubernetes.pod.name".into(), name.into()),
                ("io.kubernetes.pod.namespace".into(), namespace.into()),
                ("io.kubernetes.pod.uid".into(), uid.into()),
            ]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/kubepods/besteffort/pod{uid}", self.cgroup_root()),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(pod)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn log_directory(&self, pod: &Pod) -> PathBuf {
        self.footprint.dir.join("logs").join(&pod.uid)
    }

    /// Creates and starts container `name` running `command` in `pod` (a restart when the pod
    /// already had a container of that name); returns its id and pid as the runtime reports
    /// them.
    pub fn start_container(&mut self, pod: &Pod, name: &str, command: &[&str]) -> Container {
        self.start_container_with(
            pod,
            name,
            ContainerConfig {
                image: Some(ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
    }

    /// [`Self::start_container`] with the caller's image, command, mounts and security
    /// context; the node fills in what the kubelet would: the name and attempt, the log path
    /// and the pod's namespaces.
    pub fn start_container_with(
        &mut self,
        pod: &Pod,
        name: &str,
        mut config: ContainerConfig,
    ) -> Container {
        let attempts = self
            .attempts
            .entry((pod.id.clone(), name.to_string()))
            .or_default();
        let attempt = *attempts;
        *attempts += 1;
        let sandbox_config = self.sandbox_config(pod);
        config.metadata = Some(ContainerMetadata {
            name: name.into(),
            attempt,
        });
        config.log_path = format!("{name}-{attempt}.log");
        let log = self.log_directory(pod).join(&config.log_path);
        let linux = config.linux.get_or_insert_default();
        linux
            .security_context
            .get_or_insert_default()
            .namespace_options = Some(namespaces(pod));
        let pod_id = pod.id.clone();
        let id = self
            .call("CreateContainer", async |c| {
                c.create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id,
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                })
                .await
            })
            .container_id;
        let container_id = id.clone();
        self.call("StartContainer", async |c| {
            c.start_container(StartContainerRequest { container_id })
                .await
        });
        let container_id = id.clone();
        let status = self.call("ContainerStatus", async |c| {
            c.container_status(ContainerStatusRequest {
                container_id,
                verbose: true,
            })
            .await
        });
        // The verbose status's "info" is containerd's JSON, with the task's pid.
        let info: serde_json::Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let pid = info["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid in the container status: {info}"));
        Container {
            id,
            pid: pid as u32,
            log,
        }
    }

    /// The exit code of `container` once it has exited, waiting at most `timeout`; `None`
    /// when it still runs then.
    pub fn wait_exit(&mut self, container: &Container, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let container_id = container.id.clone();
            let status = self.call("ContainerStatus", async |c| {
                c.container_status(ContainerStatusRequest {
                    container_id,
                    verbose: false,
                })
                .await
            });
            let status = status.status.unwrap_or_default();
            if status.state == ContainerState::ContainerExited as i32 {
                return Some(status.exit_code);
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Runs `cmd` in the container (CRI ExecSync); returns its exit code.
    pub fn exec(&mut self, container: &Container, cmd: &[&str]) -> i32 {
        let container_id = container.id.clone();
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        self.call("ExecSync", async |c| {
            c.exec_sync(ExecSyncRequest {
                container_id,
                cmd,
                timeout: 30,
            })
            .await
        })
        .exit_code
    }

    /// Stops and removes a pod and its containers, as the kubelet does when a pod is deleted.
    pub fn remove_pod(&mut self, pod: &Pod) {
        if let Err(e) = self.stop_and_remove(&pod.id) {
            panic!("{e}\n{}", self.log_tail());
        }
        self.pods.retain(|p| p.id != pod.id);
    }

    /// Stops a container as the kubelet does before it stops the pod: SIGTERM, then SIGKILL
    /// after `grace` (StopPodSandbox alone kills at once).
    pub fn stop_container(&mut self, container: &Container, grace: Duration) {
        let container_id = container.id.clone();
        self.call("StopContainer", async |c| {
            c.stop_container(StopContainerRequest {
                container_id,
                timeout: grace.as_secs() as i64,
            })
            .await
        });
    }

    fn stop_and_remove(&mut self, pod_id: &str) -> Result<(), String> {
        let pod_sandbox_id = pod_id.to_string();
        self.try_call("StopPodSandbox", async |c| {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id })
                .await
        })?;
        let pod_sandbox_id = pod_id.to_string();
        self.try_call("RemovePodSandbox", async |c| {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id })
                .await
        })?;
        Ok(())
    }

    /// Removes everything the node made. Safe to call more than once and after a failure at
    /// any point: each step looks for what is there rather than trusting what was recorded.
    pub fn down(&mut self) {
        let state = self.containerd_state_dir();
        crate::CONTAINERD_STATE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| *d != state);
        for pod in std::mem::take(&mut self.pods) {
            // The polite way first (it also runs the CNI DEL); the footprint catches the rest.
            let _ = self.stop_and_remove(&pod.id);
        }
        self.client = None;
        if let Some(mut containerd) = self.containerd.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(containerd.pid() as i32), Signal::SIGTERM);
            if containerd.wait_timeout(Duration::from_secs(10)).is_none() {
                drop(containerd); // SIGKILL and reap
            }
        }
        self.footprint.remove();
    }
}

impl Footprint {
    /// The footprint of the node called `name`, as its directory records it.
    pub fn named(name: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        let written = fs::read_to_string(dir.join(MADE_HOST_DIRS)).unwrap_or_default();
        let mut footprint = Self {
            made_host_dirs: HOST_DIRS
                .iter()
                .copied()
                .filter(|d| written.lines().any(|l| l == *d))
                .collect(),
            dir,
            name: name.to_string(),
            tasks: Vec::new(),
        };
        footprint.tasks = footprint.current_tasks();
        footprint
    }

    /// Ids of the tasks in the node's state now.
    fn current_tasks(&self) -> Vec<String> {
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task/k8s.io");
        fs::read_dir(tasks)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's name: its directory's, netns's and top cgroup's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nodes whose process is gone, found by their directories, netns and cgroups.
    fn stale() -> Vec<Self> {
        let mut places: Vec<PathBuf> = vec![std::env::temp_dir(), "/run/netns".into()];
        places.extend(cgroup_roots());
        let mut names: Vec<String> = places
            .iter()
            .filter_map(|place| fs::read_dir(place).ok())
            .flat_map(|entries| entries.flatten())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| {
                let pid = name
                    .strip_prefix(NAME_PREFIX)
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok());
                pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            })
            .collect();
        names.sort();
        names.dedup();
        names.iter().map(|name| Self::named(name)).collect()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The node's containerd and shims (its directory is in their command lines) and every
    /// process in its cgroups.
    fn processes(&self) -> Vec<i32> {
        let dir = self.dir.display().to_string();
        let mut pids: Vec<i32> = cgroup_roots()
            .iter()
            .flat_map(|root| procs_below(&root.join(&self.name)))
            .collect();
        if let Ok(entries) = fs::read_dir("/proc") {
            pids.extend(entries.flatten().filter_map(|entry| {
                let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
                let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&dir)
                    .then_some(pid)
            }));
        }
        pids
    }

    /// Mount points below the node's directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut points: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points
    }

    /// The node's top cgroup in each hierarchy, where it exists.
    fn cgroups(&self) -> Vec<PathBuf> {
        cgroup_roots()
            .into_iter()
            .map(|root| root.join(&self.name))
            .filter(|top| top.exists())
            .collect()
    }

    fn remove(&self) {
        // Processes first (bounded): mounts and cgroups in use cannot go.
        for _ in 0..50 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(100));
        }
        for point in self.mounts() {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for top in self.cgroups() {
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs, 0);
            // Children before parents.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                for _ in 0..20 {
                    if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        // With the netns go the bridge, the veths' host ends and any rule the plugins added.
        let _ = run(Command::new("ip").args(["netns", "delete", &self.name]));
        for file in self.host_files() {
            let _ = fs::remove_file(file);
        }
        let _ = fs::remove_dir_all(&self.dir);
        for dir in &self.made_host_dirs {
            let _ = fs::remove_dir(dir);
        }
    }

    /// What containerd and libcni keep outside the node's directory for each task, which
    /// they remove themselves unless the node was killed: the shim's socket
    /// (`/run/containerd/s/<sha256 of ADDRESS/NAMESPACE/ID>`, containerd 1.6) and the CNI
    /// result cache (`/var/lib/cni/results/<network>-<ID>-<ifname>`).
    fn host_files(&self) -> Vec<PathBuf> {
        let socket = self.socket().display().to_string();
        let mut tasks = self.current_tasks();
        tasks.extend(self.tasks.iter().cloned());
        tasks
            .iter()
            .flat_map(|id| {
                let hash = sha256_hex(format!("{socket}/k8s.io/{id}"));
                let results = Path::new("/var/lib/cni/results");
                [
                    Path::new("/run/containerd/s").join(hash),
                    results.join(format!("{}-{id}-eth0", self.name)),
                    results.join(format!("cni-loopback-{id}-lo")),
                ]
            })
            .collect()
    }

    /// What is still on the machine: empty once the node is down.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .made_host_dirs
            .iter()
            .chain([&self.dir.to_str().unwrap_or_default()])
            .filter(|d| Path::new(d).exists())
            .map(|d| format!("directory {d}"))
            .collect();
        found.extend(
            self.host_files()
                .into_iter()
                .filter(|f| f.exists())
                .map(|f| format!("file {}", f.display())),
        );
        found.extend(self.mounts().into_iter().map(|p| format!("mount {p}")));
        found.extend(
            self.cgroups()
                .into_iter()
                .map(|c| format!("cgroup {}", c.display())),
        );
        if Path::new("/run/netns").join(&self.name).exists() {
            found.push(format!("netns {}", self.name));
        }
        found.extend(self.processes().into_iter().map(|p| format!("process {p}")));
        found
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        self.down();
    }
}

/// Every cgroup directory at and below `dir` (bounded depth).
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 16 || !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out, depth + 1);
            }
        }
    }
}

/// The pids in the cgroups at and below `dir`.
fn procs_below(dir: &Path) -> Vec<i32> {
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs, 0);
    dirs.iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}
