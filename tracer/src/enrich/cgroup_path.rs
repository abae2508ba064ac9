//! cgroup paths to container and pod references.
//!
//! Every runtime names a container's cgroup after the container id, and the kubelet names the
//! pod's cgroup after the pod UID and QoS class, with either cgroup driver:
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | containerd (CRI) | `cri-containerd-ID.scope` | `ID` |
//! | CRI-O | `crio-ID.scope` | `crio-ID` |
//! | Docker | `docker-ID.scope` | `/docker/ID`, `ID` under kubepods |
//! | podman | `libpod-ID.scope` | `libpod-ID` |
//!
//! The pod level is `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd) or
//! `kubepods/<qos>/pod<uid>` (cgroupfs); guaranteed pods sit directly below `kubepods`.
//! Nested runtimes (Docker in Docker) give nested ids: the innermost one is the process's.

use serde::Serialize;

/// The container runtimes the tracer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// A container named by a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    /// `None` when the path does not tell (a bare id under kubepods with the cgroupfs driver):
    /// the runtime's state then does.
    pub runtime: Option<Runtime>,
}

/// A pod named by a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub uid: String,
    /// `guaranteed`, `burstable` or `besteffort`.
    pub qos: &'static str,
}

/// What a cgroup path says about the workload in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathIdentity {
    pub container: Option<ContainerRef>,
    pub pod: Option<PodRef>,
}

/// Container ids of containerd, CRI-O, Docker and podman: 64 lowercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A path component naming a container, with the runtime when the name tells it.
fn container_of(component: &str, parent: Option<&str>) -> Option<ContainerRef> {
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    const PREFIXES: &[(&str, Runtime)] = &[
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    for &(prefix, runtime) in PREFIXES {
        // `crio-conmon-ID` and `libpod-conmon-ID` hold the runtimes' monitors, which are not
        // part of the container: the id check rejects them.
        if let Some(id) = stem.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some(ContainerRef {
                id: id.to_string(),
                runtime: Some(runtime),
            });
        }
    }
    is_container_id(component).then(|| ContainerRef {
        id: component.to_string(),
        // `/docker/ID` is Docker's cgroupfs layout; a bare id elsewhere (kubepods) is any
        // CRI runtime's.
        runtime: (parent == Some("docker")).then_some(Runtime::Docker),
    })
}

/// Whether `s` looks like a pod UID (a UUID, or any kubelet-accepted id of hex and dashes).
fn is_pod_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A path component naming a pod: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_of(component: &str, previous: &[&str]) -> Option<PodRef> {
    if let Some(uid) = component.strip_prefix("pod").filter(|u| is_pod_uid(u)) {
        // cgroupfs: the QoS class is the parent directory, or nothing for guaranteed pods.
        let qos = match previous.last() {
            Some(&"besteffort") => "besteffort",
            Some(&"burstable") => "burstable",
            Some(&"kubepods") => "guaranteed",
            _ => return None,
        };
        return Some(PodRef {
            uid: uid.to_string(),
            qos,
        });
    }
    let stem = component
        .strip_suffix(".slice")?
        .strip_prefix("kubepods-")?;
    let (qos, uid) = if let Some(uid) = stem.strip_prefix("besteffort-pod") {
        ("besteffort", uid)
    } else if let Some(uid) = stem.strip_prefix("burstable-pod") {
        ("burstable", uid)
    } else {
        ("guaranteed", stem.strip_prefix("pod")?)
    };
    // systemd slice names use `-` as the hierarchy separator, so the kubelet writes the UID's
    // dashes as underscores.
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(PodRef { uid, qos })
}

/// What the cgroup path `path` (as in /proc/PID/cgroup or below a hierarchy root) says. The
/// innermost container and pod win. Unknown shapes give an empty identity.
pub fn parse(path: &str) -> PathIdentity {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut identity = PathIdentity::default();
    for (i, component) in components.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| components[p]);
        if let Some(container) = container_of(component, parent) {
            identity.container = Some(container);
        } else if let Some(pod) = pod_of(component, &components[..i]) {
            identity.pod = Some(pod);
            // A pod's containers are below it: an outer container is another workload.
            identity.container = None;
        } else if has_id_run(component) {
            log::debug!("cgroup {path}: `{component}` holds an id in an unknown shape");
        }
    }
    identity
}

/// Whether `s` holds 64 hex digits in a row: a container id in a layout this module does
/// not know (a new runtime, a new naming), worth a debug message.
fn has_id_run(s: &str) -> bool {
    s.as_bytes()
        .split(|b| !b.is_ascii_hexdigit())
        .any(|run| run.len() >= 64)
}

/// The most telling cgroup path in a /proc/PID/cgroup text: the one naming a container, else
/// a pod, preferring the unified hierarchy (`0::`), then the v1 hierarchies in file order.
/// `None` when no line names a container or a pod.
pub fn best_in_proc_cgroup(text: &str) -> Option<(String, PathIdentity)> {
    // Lines are `ID:CONTROLLERS:PATH`; the unified hierarchy's is `0::PATH`.
    let mut paths: Vec<(bool, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((!(id == "0" && controllers.is_empty()), path))
        })
        .collect();
    // Stable: the unified line first, the v1 lines after it in file order.
    paths.sort_by_key(|&(v1, _)| v1);
    let parsed: Vec<(String, PathIdentity)> = paths
        .iter()
        .map(|&(_, path)| (path.to_string(), parse(path)))
        .collect();
    let with_container = parsed.iter().position(|(_, id)| id.container.is_some());
    let with_pod = parsed.iter().position(|(_, id)| id.pod.is_some());
    with_container
        .or(with_pod)
        .and_then(|i| parsed.into_iter().nth(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c3c0c7b5e7d0a8a6a0d1e5a7b3c9d2e4f6a8b0c1d3e5f7a9b1c3d5e7f9a0b";
    const UID: &str = "0d5ec6b3-8a3c-4c2e-9f67-1b2a3c4d5e6f";

    fn container(path: &str) -> Option<(String, Option<Runtime>)> {
        parse(path).container.map(|c| (c.id, c.runtime))
    }

    fn pod(path: &str) -> Option<(String, &'static str)> {
        parse(path).pod.map(|p| (p.uid, p.qos))
    }

    #[test]
    fn containerd_systemd_and_cgroupfs() {
        let uid_ = UID.replace('-', "_");
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            container(&systemd),
            Some((ID.into(), Some(Runtime::Containerd)))
        );
        assert_eq!(pod(&systemd), Some((UID.into(), "besteffort")));

        let cgroupfs = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(container(&cgroupfs), Some((ID.into(), None)));
        assert_eq!(pod(&cgroupfs), Some((UID.into(), "burstable")));

        // Guaranteed pods have no QoS level; a kubelet --cgroup-root prefixes everything.
        let guaranteed = format!("/custom-root/kubepods/pod{UID}/{ID}");
        assert_eq!(pod(&guaranteed), Some((UID.into(), "guaranteed")));
        let guaranteed_systemd =
            format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(pod(&guaranteed_systemd), Some((UID.into(), "guaranteed")));
    }

    #[test]
    fn crio_docker_podman() {
        let uid_ = UID.replace('-', "_");
        let crio = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"
        );
        assert_eq!(container(&crio), Some((ID.into(), Some(Runtime::CriO))));
        assert_eq!(pod(&crio), Some((UID.into(), "burstable")));
        let crio_cgroupfs = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
        assert_eq!(
            container(&crio_cgroupfs),
            Some((ID.into(), Some(Runtime::CriO)))
        );
        // CRI-O's monitor is in the pod but is not the container.
        let conmon = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-conmon-{ID}.scope"
        );
        assert_eq!(container(&conmon), None);
        assert_eq!(pod(&conmon), Some((UID.into(), "burstable")));

        assert_eq!(
            container(&format!("/system.slice/docker-{ID}.scope")),
            Some((ID.into(), Some(Runtime::Docker)))
        );
        assert_eq!(
            container(&format!("/docker/{ID}")),
            Some((ID.into(), Some(Runtime::Docker)))
        );
        assert_eq!(pod(&format!("/docker/{ID}")), None);

        assert_eq!(
            container(&format!("/machine.slice/libpod-{ID}.scope/container")),
            Some((ID.into(), Some(Runtime::Podman)))
        );
        assert_eq!(
            container(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            Some((ID.into(), Some(Runtime::Podman)))
        );
        assert_eq!(
            container(&format!("/libpod_parent/libpod-{ID}")),
            Some((ID.into(), Some(Runtime::Podman)))
        );
        assert_eq!(
            container(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn nested_runtimes_give_the_innermost_container() {
        let inner = ID.replace('4', "5");
        assert_eq!(
            container(&format!("/docker/{ID}/docker/{inner}")),
            Some((inner.clone(), Some(Runtime::Docker)))
        );
        // A kind/k3d node is a Docker container holding a kubelet: the pod's container wins.
        let path = format!("/docker/{ID}/kubepods/besteffort/pod{UID}/{inner}");
        assert_eq!(container(&path), Some((inner, None)));
        assert_eq!(pod(&path), Some((UID.into(), "besteffort")));
        // The pod's own cgroup (no container below) is not the node's container.
        let pod_level = format!("/docker/{ID}/kubepods/besteffort/pod{UID}");
        assert_eq!(container(&pod_level), None);
    }

    #[test]
    fn host_and_unknown_shapes_name_nothing() {
        for path in [
            "/",
            "",
            "/init.scope",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/default/my-ctr", // ctr run without CRI: not an id
            &format!("/kubepods/besteffort/pod{UID}"), // pod level: a pod, no container
            &format!("/docker/{}", &ID[..63]), // truncated id
            &format!("/docker-{ID}.scopeX"),
            "/kubepods/besteffort/podZZZ/abc",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod.slice",
            "///",
        ] {
            assert_eq!(parse(path).container, None, "{path}");
        }
        assert_eq!(
            pod(&format!("/kubepods/besteffort/pod{UID}")).unwrap().0,
            UID
        );
        assert_eq!(pod("/not-kubepods/pod1234"), None);
        assert!(has_id_run(&format!("runtime-x-{ID}.scope")));
        assert!(!has_id_run("session-3.scope"));
    }

    #[test]
    fn proc_cgroup_prefers_a_container_line() {
        // Hybrid host where the runtime did not join the unified hierarchy: v1 lines tell.
        let v1_only = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
        );
        let (path, id) = best_in_proc_cgroup(&v1_only).unwrap();
        assert_eq!(path, format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(id.container.unwrap().id, ID);

        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            best_in_proc_cgroup(&v2)
                .unwrap()
                .1
                .container
                .unwrap()
                .runtime,
            Some(Runtime::Docker)
        );
        assert_eq!(best_in_proc_cgroup("0::/init.scope\n"), None);
        assert_eq!(best_in_proc_cgroup(""), None);
        assert_eq!(best_in_proc_cgroup("garbage\n\n::\n0:"), None);
    }
}
