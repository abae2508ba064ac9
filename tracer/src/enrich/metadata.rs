//! Container id → container and pod names, from the runtimes' own state on disk, so that no
//! API server (and no CRI call per event) is needed:
//!
//! - containerd: the OCI bundle of the running task,
//!   `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`, whose annotations the
//!   CRI plugin fills (`io.kubernetes.cri.*`);
//! - CRI-O (and podman, which shares its storage): `<runroot>/overlay-containers/<id>/userdata/
//!   config.json`, annotations `io.kubernetes.pod.*`, `io.kubernetes.cri-o.*`;
//! - Docker: `/var/lib/docker/containers/<id>/config.v2.json`, its labels, or the dockershim
//!   name `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`.
//!
//! Each record also says which cgroup the runtime made for the container (the OCI config's
//! `linux.cgroupsPath`, Docker's cgroup parent): a cgroup is given the record's identity only
//! when it is that cgroup, since anyone who may make cgroups can name one after a container.
//! Where the state lives comes from the runtimes' fixed defaults, containerd's own
//! configuration file and `--containerd-state`, never from what a process calls itself.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use super::cgroup_path::Runtime;

/// Bigger files are not a runtime's container config: they are not read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// containerd's configuration, whose top-level `state` moves its state directory.
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The task directory below a containerd state directory.
const CONTAINERD_TASKS: &str = "io.containerd.runtime.v2.task";

/// containerd state directories named on the command line (`--containerd-state`), set once
/// at start-up.
static CONFIGURED_CONTAINERD_STATE: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Adds containerd state directories to the defaults, for the whole run (the first call wins).
pub fn configure_containerd_state(dirs: Vec<PathBuf>) {
    let _ = CONFIGURED_CONTAINERD_STATE.set(dirs);
}

/// What a runtime's state says about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub name: Option<String>,
    pub image: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    /// The pod's sandbox (pause) container rather than one of its containers.
    pub sandbox: bool,
    /// The network namespace the container joins, as a path (`/var/run/netns/cni-…`); `None`
    /// when it joins its runtime's (a hostNetwork pod).
    pub netns_path: Option<String>,
    /// The cgroup paths (from the hierarchy root) the runtime's record names for the
    /// container: a cgroup elsewhere is not this container, whatever its path looks like.
    pub cgroup_paths: Vec<String>,
}

/// A systemd slice name to its path: `kubepods-besteffort.slice` is
/// `/kubepods.slice/kubepods-besteffort.slice` (each `-` a level); `-.slice` is the root.
fn slice_path(slice: &str) -> Option<String> {
    let stem = slice.strip_suffix(".slice")?;
    if stem.is_empty() || stem == "-" {
        return Some(String::new());
    }
    let mut path = String::new();
    for (i, _) in stem.match_indices('-').chain([(stem.len(), "")]) {
        path.push_str(&format!("/{}.slice", &stem[..i]));
    }
    Some(path)
}

/// An OCI `linux.cgroupsPath` as a path from the hierarchy root: runc's systemd form
/// `slice:prefix:name` (`<slice path>/<prefix>-<name>.scope`), or a cgroupfs path.
fn oci_cgroup_path(spec: &str) -> Option<String> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [slice, prefix, name] => {
            let parent = slice_path(if slice.is_empty() { "-.slice" } else { slice })?;
            Some(if prefix.is_empty() {
                format!("{parent}/{name}")
            } else {
                format!("{parent}/{prefix}-{name}.scope")
            })
        }
        [path] if !path.is_empty() => Some(format!("/{}", path.trim_matches('/'))),
        _ => None,
    }
}

/// Where Docker puts container `id` below `parent` (its `--cgroup-parent`, else the default),
/// with either cgroup driver: `/docker/ID`, or `/system.slice/docker-ID.scope`.
fn docker_cgroup_paths(id: &str, parent: Option<&str>) -> Vec<String> {
    let cgroupfs = parent.filter(|p| p.starts_with('/')).unwrap_or("/docker");
    let systemd = parent
        .filter(|p| p.ends_with(".slice"))
        .unwrap_or("system.slice");
    let mut paths = vec![format!("{}/{id}", cgroupfs.trim_end_matches('/'))];
    paths.extend(slice_path(systemd).map(|s| format!("{s}/docker-{id}.scope")));
    paths
}

fn string_at(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The first of `keys` present in `map`.
fn first_of(map: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| {
        map.get(*k)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    })
}

/// Reads an OCI runtime spec (config.json) as containerd's CRI plugin or CRI-O wrote it.
pub fn from_oci_config(json: &[u8]) -> Result<Metadata, serde_json::Error> {
    let spec: Value = serde_json::from_slice(json)?;
    let empty = Map::new();
    let annotations = spec
        .get("annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    // CRI-O also keeps the kubelet's labels as one JSON string: a fallback for older versions
    // that do not copy them into annotations of their own.
    let labels: Map<String, Value> = annotations
        .get("io.kubernetes.cri-o.Labels")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let pod_field = |containerd: &str, kubelet: &str| {
        first_of(annotations, &[containerd, kubelet]).or_else(|| first_of(&labels, &[kubelet]))
    };
    let container_type = first_of(
        annotations,
        &[
            "io.kubernetes.cri.container-type",
            "io.kubernetes.cri-o.ContainerType",
        ],
    );
    let netns_path = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))
        })
        .and_then(|ns| string_at(ns, "path"));
    let cgroup_paths = spec
        .pointer("/linux/cgroupsPath")
        .and_then(Value::as_str)
        .and_then(oci_cgroup_path)
        .into_iter()
        .collect();
    Ok(Metadata {
        name: first_of(
            annotations,
            &[
                "io.kubernetes.cri.container-name",
                "io.kubernetes.container.name",
            ],
        )
        .or_else(|| first_of(&labels, &["io.kubernetes.container.name"])),
        image: first_of(
            annotations,
            &[
                "io.kubernetes.cri.image-name",
                "io.kubernetes.cri-o.ImageName",
            ],
        ),
        pod_name: pod_field("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
        pod_namespace: pod_field(
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ),
        pod_uid: pod_field("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"),
        sandbox: container_type.as_deref() == Some("sandbox"),
        netns_path,
        cgroup_paths,
    })
}

/// Reads Docker's config.v2.json: kubelet labels when present, else the dockershim name
/// `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`, else the plain container name.
/// `cgroup_parent` is the container's `--cgroup-parent` (from its hostconfig.json).
pub fn from_docker_config(
    json: &[u8],
    cgroup_parent: Option<&str>,
) -> Result<Metadata, serde_json::Error> {
    let config: Value = serde_json::from_slice(json)?;
    let empty = Map::new();
    let labels = config
        .pointer("/Config/Labels")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let docker_name = string_at(&config, "Name").map(|n| n.trim_start_matches('/').to_string());
    let shim = docker_name.as_deref().and_then(parse_dockershim_name);
    let label = |key: &str| first_of(labels, &[key]);
    let sandbox = label("io.kubernetes.docker.type").as_deref() == Some("podsandbox")
        || shim.as_ref().is_some_and(|s| s.container == "POD");
    let name = if sandbox {
        None
    } else {
        label("io.kubernetes.container.name")
            .or_else(|| shim.as_ref().map(|s| s.container.clone()))
            .or_else(|| docker_name.clone())
    };
    Ok(Metadata {
        name,
        image: config
            .pointer("/Config/Image")
            .and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string)),
        pod_name: label("io.kubernetes.pod.name").or_else(|| shim.as_ref().map(|s| s.pod.clone())),
        pod_namespace: label("io.kubernetes.pod.namespace")
            .or_else(|| shim.as_ref().map(|s| s.namespace.clone())),
        pod_uid: label("io.kubernetes.pod.uid").or_else(|| shim.as_ref().map(|s| s.uid.clone())),
        sandbox,
        // Docker's network sandbox; `default` is the host's (--network host).
        netns_path: config
            .pointer("/NetworkSettings/SandboxKey")
            .and_then(Value::as_str)
            .filter(|key| !key.is_empty() && !key.ends_with("/default"))
            .map(str::to_string),
        cgroup_paths: string_at(&config, "ID")
            .map(|id| docker_cgroup_paths(&id, cgroup_parent))
            .unwrap_or_default(),
    })
}

/// `HostConfig.CgroupParent` of Docker's hostconfig.json, when set.
fn docker_cgroup_parent(json: &[u8]) -> Option<String> {
    let config: Value = serde_json::from_slice(json).ok()?;
    string_at(&config, "CgroupParent")
}

/// The parts of a dockershim container name.
#[derive(Debug, PartialEq, Eq)]
struct DockershimName {
    container: String,
    pod: String,
    namespace: String,
    uid: String,
}

/// `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`. Kubernetes names contain no `_`, so
/// the split is unambiguous.
fn parse_dockershim_name(name: &str) -> Option<DockershimName> {
    let parts: Vec<&str> = name.split('_').collect();
    match parts.as_slice() {
        ["k8s", container, pod, namespace, uid, attempt]
            if attempt.parse::<u32>().is_ok()
                && [container, pod, namespace, uid]
                    .iter()
                    .all(|p| !p.is_empty()) =>
        {
            Some(DockershimName {
                container: container.to_string(),
                pod: pod.to_string(),
                namespace: namespace.to_string(),
                uid: uid.to_string(),
            })
        }
        _ => None,
    }
}

/// Reads at most [`MAX_CONFIG_BYTES`] of `path`.
fn read_limited(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_CONFIG_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// containerd's state directory as its configuration file sets it (a top-level `state = "…"`,
/// before the first table), if it does.
fn containerd_state_from_config(toml: &str) -> Option<PathBuf> {
    toml.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "state").then(|| value.trim().trim_matches('"').into())
        })
}

/// Where the runtimes keep their state on this node.
#[derive(Clone, Debug, Default)]
pub struct StateDirs {
    /// containerd's `<state>/io.containerd.runtime.v2.task` directories.
    pub containerd_tasks: Vec<PathBuf>,
    /// CRI-O's and podman's storage run roots (`/run/containers/storage`).
    pub storage_run_roots: Vec<PathBuf>,
    /// Docker's `containers` directories.
    pub docker_containers: Vec<PathBuf>,
}

impl StateDirs {
    /// The runtimes' default locations, the state directory containerd's configuration file
    /// names, and those given with `--containerd-state` (k3s, a containerd of one's own).
    pub fn configured() -> Self {
        let mut containerd: Vec<PathBuf> =
            vec!["/run/containerd".into(), "/run/k3s/containerd".into()];
        containerd.extend(
            fs::read_to_string(CONTAINERD_CONFIG)
                .ok()
                .and_then(|toml| containerd_state_from_config(&toml)),
        );
        containerd.extend(
            CONFIGURED_CONTAINERD_STATE
                .get()
                .into_iter()
                .flatten()
                .cloned(),
        );
        let mut containerd_tasks: Vec<PathBuf> = Vec::new();
        for tasks in containerd.iter().map(|state| state.join(CONTAINERD_TASKS)) {
            if !containerd_tasks.contains(&tasks) {
                containerd_tasks.push(tasks);
            }
        }
        Self {
            containerd_tasks,
            storage_run_roots: vec!["/run/containers/storage".into()],
            docker_containers: vec!["/var/lib/docker/containers".into()],
        }
    }

    /// The state directories that exist on this node.
    pub fn existing(&self) -> Vec<PathBuf> {
        self.containerd_tasks
            .iter()
            .chain(&self.storage_run_roots)
            .chain(&self.docker_containers)
            .filter(|d| d.is_dir())
            .cloned()
            .collect()
    }

    /// The metadata of container `id`, from the first runtime whose state has it (`runtime`'s
    /// first when the cgroup path told it). Unreadable or malformed files are skipped with a
    /// debug message.
    pub fn lookup(&self, id: &str, runtime: Option<Runtime>) -> Option<(Runtime, Metadata)> {
        let mut order = vec![
            Runtime::Containerd,
            Runtime::CriO,
            Runtime::Docker,
            Runtime::Podman,
        ];
        if let Some(hint) = runtime {
            order.retain(|r| *r != hint);
            order.insert(0, hint);
        }
        order
            .into_iter()
            .find_map(|r| self.lookup_in(r, id).map(|m| (r, m)))
    }

    fn lookup_in(&self, runtime: Runtime, id: &str) -> Option<Metadata> {
        let candidates: Vec<PathBuf> = match runtime {
            Runtime::Containerd => self
                .containerd_tasks
                .iter()
                .filter_map(|tasks| fs::read_dir(tasks).ok())
                .flat_map(|namespaces| namespaces.flatten())
                .map(|ns| ns.path().join(id).join("config.json"))
                .collect(),
            // CRI-O and podman share containers/storage; the cgroup path tells them apart.
            Runtime::CriO | Runtime::Podman => self
                .storage_run_roots
                .iter()
                .map(|root| {
                    root.join("overlay-containers")
                        .join(id)
                        .join("userdata/config.json")
                })
                .collect(),
            Runtime::Docker => self
                .docker_containers
                .iter()
                .map(|root| root.join(id).join("config.v2.json"))
                .collect(),
        };
        candidates.iter().find_map(|path| {
            let bytes = read_limited(path)?;
            let read = match runtime {
                Runtime::Docker => {
                    let parent = path
                        .parent()
                        .and_then(|dir| read_limited(&dir.join("hostconfig.json")))
                        .and_then(|json| docker_cgroup_parent(&json));
                    from_docker_config(&bytes, parent.as_deref())
                }
                _ => from_oci_config(&bytes),
            };
            read.map_err(|e| log::debug!("{}: not a container config: {e}", path.display()))
                .ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a config.json containerd 1.6's CRI plugin writes for a pod's container
    /// (trimmed to what is read, plus neighbours that must be ignored).
    const CONTAINERD_CONTAINER: &str = r#"{
      "ociVersion": "1.0.2-dev",
      "process": {"args": ["/bin/sleep", "3600"], "cwd": "/"},
      "root": {"path": "rootfs"},
      "annotations": {
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.image-name": "registry.example/shop/web:1.2",
        "io.kubernetes.cri.sandbox-id": "5b0c...",
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "shop",
        "io.kubernetes.cri.sandbox-uid": "0d5ec6b3-8a3c-4c2e-9f67-1b2a3c4d5e6f"
      },
      "linux": {"namespaces": [
        {"type": "pid"},
        {"type": "network", "path": "/proc/4242/ns/net"}
      ]}
    }"#;

    const CONTAINERD_SANDBOX: &str = r#"{
      "annotations": {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "5b0c",
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "shop",
        "io.kubernetes.cri.sandbox-uid": "0d5ec6b3-8a3c-4c2e-9f67-1b2a3c4d5e6f"
      },
      "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-1234"}]}
    }"#;

    /// CRI-O's userdata/config.json annotations for a container.
    const CRIO_CONTAINER: &str = r#"{
      "annotations": {
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ContainerName": "k8s_app_web_shop_0d5ec6b3_0",
        "io.kubernetes.cri-o.ImageName": "registry.example/shop/web:1.2",
        "io.kubernetes.container.name": "app",
        "io.kubernetes.pod.name": "web",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": "0d5ec6b3"
      }
    }"#;

    /// An older CRI-O sandbox whose kubelet labels are only in the Labels string.
    const CRIO_SANDBOX_LABELS_ONLY: &str = r#"{
      "annotations": {
        "io.kubernetes.cri-o.ContainerType": "sandbox",
        "io.kubernetes.cri-o.Labels": "{\"io.kubernetes.pod.name\":\"web\",\"io.kubernetes.pod.namespace\":\"shop\",\"io.kubernetes.pod.uid\":\"0d5ec6b3\"}"
      }
    }"#;

    #[test]
    fn containerd_cri_annotations() {
        let m = from_oci_config(CONTAINERD_CONTAINER.as_bytes()).unwrap();
        assert_eq!(m.name.as_deref(), Some("app"));
        assert_eq!(m.image.as_deref(), Some("registry.example/shop/web:1.2"));
        assert_eq!(m.pod_name.as_deref(), Some("web"));
        assert_eq!(m.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(
            m.pod_uid.as_deref(),
            Some("0d5ec6b3-8a3c-4c2e-9f67-1b2a3c4d5e6f")
        );
        assert!(!m.sandbox);
        assert_eq!(m.netns_path.as_deref(), Some("/proc/4242/ns/net"));

        let s = from_oci_config(CONTAINERD_SANDBOX.as_bytes()).unwrap();
        assert!(s.sandbox);
        assert_eq!(s.name, None);
        assert_eq!(s.pod_name.as_deref(), Some("web"));
        assert_eq!(s.netns_path.as_deref(), Some("/var/run/netns/cni-1234"));
    }

    #[test]
    fn crio_annotations_and_labels() {
        let m = from_oci_config(CRIO_CONTAINER.as_bytes()).unwrap();
        assert_eq!(
            (
                m.name.as_deref(),
                m.pod_name.as_deref(),
                m.pod_namespace.as_deref()
            ),
            (Some("app"), Some("web"), Some("shop"))
        );
        assert_eq!(m.image.as_deref(), Some("registry.example/shop/web:1.2"));
        let s = from_oci_config(CRIO_SANDBOX_LABELS_ONLY.as_bytes()).unwrap();
        assert!(s.sandbox);
        assert_eq!(s.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(s.pod_uid.as_deref(), Some("0d5ec6b3"));
    }

    #[test]
    fn docker_labels_dockershim_names_and_plain_containers() {
        let labelled = r#"{"Name": "/k8s_app_web_shop_0d5ec6b3_0",
          "Config": {"Image": "web:1.2", "Labels": {
            "io.kubernetes.container.name": "app", "io.kubernetes.pod.name": "web",
            "io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.uid": "0d5ec6b3",
            "io.kubernetes.docker.type": "container"}}}"#;
        let m = from_docker_config(labelled.as_bytes(), None).unwrap();
        assert_eq!(m.name.as_deref(), Some("app"));
        assert_eq!(m.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(m.image.as_deref(), Some("web:1.2"));

        // Old dockershim: labels missing, the name alone carries the pod.
        let named_only =
            r#"{"Name": "/k8s_POD_web_shop_0d5ec6b3_3", "Config": {"Image": "pause:3.9"}}"#;
        let s = from_docker_config(named_only.as_bytes(), None).unwrap();
        assert!(s.sandbox);
        assert_eq!(s.name, None);
        assert_eq!(
            (
                s.pod_name.as_deref(),
                s.pod_namespace.as_deref(),
                s.pod_uid.as_deref()
            ),
            (Some("web"), Some("shop"), Some("0d5ec6b3"))
        );

        let plain = r#"{"Name": "/nginx_test", "Config": {"Image": "nginx", "Labels": null}}"#;
        let p = from_docker_config(plain.as_bytes(), None).unwrap();
        assert_eq!(p.name.as_deref(), Some("nginx_test"));
        assert_eq!(p.pod_name, None);
    }

    #[test]
    fn dockershim_name_shapes() {
        assert!(parse_dockershim_name("k8s_app_web_shop_uid_0").is_some());
        for bad in [
            "k8s_app_web_shop_uid_x",
            "k8s_app_web_shop_uid",
            "k8s__web_shop_uid_0",
            "app_web_shop_uid_0_1",
            "",
        ] {
            assert_eq!(parse_dockershim_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_records_cgroup_paths_in_each_drivers_form() {
        let uid = "0d5ec6b3_8a3c";
        assert_eq!(
            oci_cgroup_path(&format!(
                "kubepods-besteffort-pod{uid}.slice:cri-containerd:abc"
            ))
            .as_deref(),
            Some(
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-abc.scope"
                )
                .as_str()
            )
        );
        assert_eq!(
            oci_cgroup_path("/kubepods/besteffort/pod1/abc").as_deref(),
            Some("/kubepods/besteffort/pod1/abc")
        );
        assert_eq!(
            oci_cgroup_path("k8s.io/abc").as_deref(),
            Some("/k8s.io/abc")
        );
        assert_eq!(
            oci_cgroup_path(":runc:abc").as_deref(),
            Some("/runc-abc.scope")
        );
        for odd in ["", "a:b", "a:b:c:d", "notaslice:p:n"] {
            assert_eq!(oci_cgroup_path(odd), None, "{odd}");
        }
        assert_eq!(
            docker_cgroup_paths("abc", None),
            ["/docker/abc", "/system.slice/docker-abc.scope"]
        );
        assert_eq!(
            docker_cgroup_paths("abc", Some("/custom/")),
            ["/custom/abc", "/system.slice/docker-abc.scope"]
        );
        let with_path = CONTAINERD_CONTAINER.replace(
            r#""linux": {"#,
            r#""linux": {"cgroupsPath": "/kubepods/besteffort/pod1/abc", "#,
        );
        assert_eq!(
            from_oci_config(with_path.as_bytes()).unwrap().cgroup_paths,
            ["/kubepods/besteffort/pod1/abc"]
        );
        let docker =
            r#"{"ID": "abc", "NetworkSettings": {"SandboxKey": "/var/run/docker/netns/default"}}"#;
        let m = from_docker_config(docker.as_bytes(), Some("/kubepods/pod1")).unwrap();
        assert_eq!(m.cgroup_paths[0], "/kubepods/pod1/abc");
        assert_eq!(
            m.netns_path, None,
            "--network host joins the host's namespace"
        );
    }

    #[test]
    fn containerd_state_from_its_configuration() {
        let toml = "version = 2\nroot = \"/var/lib/c\"\nstate = \"/run/k0s/containerd\"\n[plugins]\nstate = \"/no\"\n";
        assert_eq!(
            containerd_state_from_config(toml),
            Some(PathBuf::from("/run/k0s/containerd"))
        );
        assert_eq!(
            containerd_state_from_config("[plugins]\nstate = \"/no\"\n"),
            None
        );
    }

    #[test]
    fn malformed_configs_are_errors_not_panics() {
        let truncated = &CONTAINERD_CONTAINER[..CONTAINERD_CONTAINER.len() / 2];
        assert!(from_oci_config(truncated.as_bytes()).is_err());
        assert!(from_docker_config(b"{\"Name\": ", None).is_err());
        assert!(from_oci_config(b"\xff\xfe").is_err());
        // Valid JSON of the wrong shape: nothing known, nothing invented.
        for odd in [
            "[]",
            "null",
            "42",
            r#"{"annotations": "x"}"#,
            r#"{"annotations": {"io.kubernetes.cri.container-name": 7}}"#,
        ] {
            assert_eq!(
                from_oci_config(odd.as_bytes()).unwrap(),
                Metadata::default(),
                "{odd}"
            );
        }
        assert_eq!(
            from_docker_config(br#"{"Config": [], "Name": 3}"#, None).unwrap(),
            Metadata::default()
        );
    }

    #[test]
    fn lookup_reads_each_runtimes_layout_and_skips_bad_files() {
        let root = std::env::temp_dir().join(format!("tracer-unit-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let id = "a".repeat(64);
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        let dirs = StateDirs {
            containerd_tasks: vec![root.join("containerd/io.containerd.runtime.v2.task")],
            storage_run_roots: vec![root.join("storage")],
            docker_containers: vec![root.join("docker/containers")],
        };
        assert_eq!(dirs.lookup(&id, None), None);

        write(
            &format!("storage/overlay-containers/{id}/userdata/config.json"),
            CRIO_CONTAINER,
        );
        let (runtime, m) = dirs.lookup(&id, Some(Runtime::CriO)).unwrap();
        assert_eq!((runtime, m.name.as_deref()), (Runtime::CriO, Some("app")));

        // A truncated containerd bundle config is skipped; the next runtime's state answers.
        write(
            &format!("containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"),
            &CONTAINERD_CONTAINER[..100],
        );
        assert_eq!(dirs.lookup(&id, None).unwrap().0, Runtime::CriO);
        write(
            &format!("containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"),
            CONTAINERD_CONTAINER,
        );
        assert_eq!(dirs.lookup(&id, None).unwrap().0, Runtime::Containerd);

        let docker_id = "b".repeat(64);
        write(
            &format!("docker/containers/{docker_id}/config.v2.json"),
            r#"{"Name": "/k8s_app_web_shop_u_0"}"#,
        );
        let (runtime, m) = dirs.lookup(&docker_id, Some(Runtime::Docker)).unwrap();
        assert_eq!(
            (runtime, m.pod_name.as_deref()),
            (Runtime::Docker, Some("web"))
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
