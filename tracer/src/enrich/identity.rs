//! cgroup ids and pids to the container and pod they belong to, with a cache.
//!
//! The kernel reports a task's cgroup v2 id; the cache is keyed by it, so a process that has
//! already exited (the victim of a SIGKILL is gone before userspace reads the event) is still
//! named: its cgroup was seen either at start-up or when the first unknown id triggered a new
//! walk of the hierarchy. Identities of cgroups that disappeared are kept for the whole run.
//!
//! An unknown id is looked for by a new walk unless the last walk began after the event: a
//! cgroup that existed when the event happened and that such a walk did not see is gone, and
//! any other rule (a minimum interval between walks) leaves the first events of a container
//! started just after a walk unnamed. A container whose runtime state was not found yet is
//! looked up again at every walk while its cgroup exists.

use std::num::NonZeroUsize;
use std::{
    collections::{HashMap, HashSet},
    fs,
    ops::ControlFlow,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lru::LruCache;

use serde::Serialize;

use crate::{clock::Clock, kernel::netns};

use super::{
    cgroup,
    cgroup_path::{self, PathIdentity},
    metadata::{Metadata, StateDirs},
};

/// The most cgroups remembered; past it, those no longer on the node are forgotten first.
const MAX_CACHED: usize = 65_536;

/// How long an identity found through /proc/PID/cgroup is reused: long enough that a signal
/// storm does not read the file per event, short enough that a reused pid is soon seen anew.
const PID_TTL: Duration = Duration::from_secs(1);

/// Pids remembered at most; past it, the expired ones are forgotten.
const MAX_PIDS: usize = 4_096;

/// Pod sandboxes' network namespaces remembered (the most recently seen): a namespace is
/// named after its sandbox until this many newer sandboxes came, which bounds the memory of
/// a tracer that serves for months.
const MAX_SANDBOX_NETNS: NonZeroUsize = NonZeroUsize::new(4_096).unwrap();

/// The container a process runs in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    /// The container's name in its pod (or Docker name); null for a pod's sandbox.
    pub name: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `podman`; null when neither the cgroup path nor any
    /// runtime's state tells.
    pub runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The Kubernetes pod a process runs in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: String,
    /// `guaranteed`, `burstable`, `besteffort`, from the kubelet's cgroup layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<&'static str>,
}

impl Pod {
    /// `pod shop/web`, or `pod uid U` when the runtime did not name it.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(namespace), Some(name)) => format!("pod {namespace}/{name}"),
            _ => format!("pod uid {}", self.uid),
        }
    }
}

/// Container and pod of one process; both `None` for a host process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub container: Option<Container>,
    pub pod: Option<Pod>,
}

/// Combines what the cgroup path says with what the runtime's state says.
fn identity_of(path: &PathIdentity, state: &StateDirs) -> (Identity, Option<Metadata>) {
    let found = path
        .container
        .as_ref()
        .and_then(|c| state.lookup(&c.id, c.runtime));
    if let (Some(c), None) = (&path.container, &found) {
        log::debug!("container {}: no runtime state found", c.id);
    }
    let metadata = found.as_ref().map(|(_, m)| m);
    let container = path.container.as_ref().map(|c| Container {
        id: c.id.clone(),
        name: metadata.and_then(|m| m.name.clone()),
        runtime: found
            .as_ref()
            .map(|(r, _)| *r)
            .or(c.runtime)
            .map(|r| r.name()),
        image: metadata.and_then(|m| m.image.clone()),
    });
    let uid = path
        .pod
        .as_ref()
        .map(|p| p.uid.clone())
        .or_else(|| metadata.and_then(|m| m.pod_uid.clone()));
    let pod = uid.map(|uid| Pod {
        namespace: metadata.and_then(|m| m.pod_namespace.clone()),
        name: metadata.and_then(|m| m.pod_name.clone()),
        uid,
        qos: path.pod.as_ref().map(|p| p.qos),
    });
    (Identity { container, pod }, found.map(|(_, m)| m))
}

/// What the cache can name on this node: for `tracer doctor` and `serve`'s readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityStatus {
    /// The unified hierarchy walked, if any.
    pub hierarchy: Option<PathBuf>,
    /// The runtimes' state directories that exist here.
    pub state_dirs: Vec<PathBuf>,
    /// Present cgroups whose path names a container.
    pub containers: usize,
    /// Of those, how many a runtime's state describes.
    pub described: usize,
    /// The pods named (`namespace/name`), sorted.
    pub pods: Vec<String>,
}

impl IdentityStatus {
    /// `Ok` with what is named (`12 containers in 5 pods, e.g. pod shop/web`), or `Err` with
    /// why containers cannot be named and what to do.
    pub fn verdict(&self) -> Result<String, String> {
        let Some(hierarchy) = &self.hierarchy else {
            return Ok(
                "no cgroup v2 hierarchy: containers named by their processes' v1 paths".into(),
            );
        };
        if self.containers == 0 {
            return Ok(format!(
                "no container cgroups below {} yet",
                hierarchy.display()
            ));
        }
        if self.described == 0 {
            let dirs: Vec<String> = self
                .state_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            return Err(format!(
                "{} container cgroups, and no runtime's state describes any (state directories \
                 here: {}); mount the runtime's state directory (containerd: \
                 /run/containerd/io.containerd.runtime.v2.task) where the tracer can read it",
                self.containers,
                if dirs.is_empty() {
                    "none".to_string()
                } else {
                    dirs.join(", ")
                }
            ));
        }
        let example = self
            .pods
            .first()
            .map(|p| format!(", e.g. pod {p}"))
            .unwrap_or_default();
        Ok(format!(
            "{} of {} containers described by their runtime, in {} pods{example}",
            self.described,
            self.containers,
            self.pods.len()
        ))
    }
}

/// The inode of the network namespace at `path` (a bind mount or /proc/PID/ns/net).
fn netns_inode(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

/// The network namespace of the first process in cgroup `dir`.
fn netns_of_cgroup(dir: &Path) -> Option<PathBuf> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let pid = procs.lines().next()?.trim();
    Some(Path::new("/proc").join(pid).join("ns/net"))
}

/// Inode and cookie of the network namespace at `path`.
fn netns_id(path: &Path) -> Option<(u64, u64)> {
    let inode = netns_inode(path)?;
    Some((inode, netns::cookie_of(path, inode).ok()?))
}

/// The latest walk of the hierarchy.
#[derive(Clone, Copy, Debug)]
struct Walk {
    /// When it began, on the kernel's clock (CLOCK_MONOTONIC), comparable with event times.
    started_ns: u64,
    /// When it ended, and how long it took: walks are at least their own length apart, so
    /// events from ever new cgroups cannot keep the tracer walking more than half the time.
    ended: Instant,
    took: Duration,
}

impl Walk {
    /// Whether a new walk could see a cgroup that existed at `at_ns` that this one did not.
    fn is_older_than(&self, at_ns: u64) -> bool {
        self.started_ns < at_ns
    }

    fn rested(&self) -> bool {
        self.ended.elapsed() >= self.took
    }
}

/// The cache. One per tracer run.
pub struct Enricher {
    /// The unified (cgroup v2) hierarchy, where the kernel's cgroup ids live.
    root: Option<PathBuf>,
    state: StateDirs,
    by_cgroup: HashMap<u64, Identity>,
    /// Ids seen in the latest walk, to know which cached entries are gone.
    present: HashSet<u64>,
    /// Pod sandboxes' network namespaces (inode) to their cookie and the sandbox's identity.
    /// Kept for the whole run, so that a namespace torn down after its sandbox is still named;
    /// the cookie tells a later namespace that reuses the inode apart.
    netns: LruCache<u64, (u64, Identity)>,
    /// The sandboxes' cgroups (ids) to their namespaces (inodes), while they run: their
    /// entries in `netns` are kept recent, so only gone sandboxes' fall out.
    sandboxes: HashMap<u64, u64>,
    /// Id of the root cgroup, where every task of a runtime that does not join the unified
    /// hierarchy on a hybrid host appears to be.
    root_id: Option<u64>,
    last_walk: Option<Walk>,
    /// Present cgroups whose path names a container that no runtime state described yet
    /// (its runtime had not written it, or its state directory was not known): looked up
    /// again at every walk.
    unresolved: HashSet<u64>,
    /// Identities found by pid (tasks in the root cgroup), with when they were found.
    by_pid: HashMap<u32, (Instant, Identity)>,
}

impl Enricher {
    /// Learns every container cgroup on the node now.
    pub fn new() -> Self {
        let root = cgroup::hierarchy_root(None);
        let mut enricher = Self {
            root_id: root
                .as_deref()
                .and_then(|r| fs::metadata(r).ok())
                .map(|m| m.ino()),
            root,
            state: StateDirs::discover(),
            by_cgroup: HashMap::new(),
            present: HashSet::new(),
            netns: LruCache::new(MAX_SANDBOX_NETNS),
            sandboxes: HashMap::new(),
            last_walk: None,
            unresolved: HashSet::new(),
            by_pid: HashMap::new(),
        };
        enricher.walk();
        enricher
    }

    /// Walks the unified hierarchy and resolves every cgroup not seen before.
    fn walk(&mut self) {
        let started_ns = Clock::monotonic_now_ns();
        let started = Instant::now();
        self.walk_hierarchy();
        self.last_walk = Some(Walk {
            started_ns,
            ended: Instant::now(),
            took: started.elapsed(),
        });
    }

    fn walk_hierarchy(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        self.present.clear();
        let mut new = Vec::new();
        cgroup::walk(&root, |id, path| {
            self.present.insert(id);
            if !self.by_cgroup.contains_key(&id) || self.unresolved.contains(&id) {
                new.push((id, path.to_string(), cgroup_path::parse(path)));
            }
            ControlFlow::Continue(())
        });
        // Looking for runtimes' state directories reads every process's name: only when a
        // new container's state is not where the known ones are (a runtime started since).
        let unknown_state = |path: &PathIdentity, state: &StateDirs| {
            path.container
                .as_ref()
                .is_some_and(|c| state.lookup(&c.id, c.runtime).is_none())
        };
        if new
            .iter()
            .any(|(_, _, path)| unknown_state(path, &self.state))
        {
            self.state = StateDirs::discover();
        }
        for (id, path, parsed) in new {
            let (identity, metadata) = identity_of(&parsed, &self.state);
            if parsed.container.is_some() && metadata.is_none() {
                log::debug!("cgroup {id} ({path}): no runtime state yet, looked up again later");
                self.unresolved.insert(id);
            } else {
                self.unresolved.remove(&id);
            }
            if let (Some(_), Some(m)) = (&identity.pod, metadata.filter(|m| m.sandbox)) {
                let dir = root.join(path.trim_start_matches('/'));
                let netns = m
                    .netns_path
                    .as_deref()
                    .and_then(|p| netns_id(Path::new(p)))
                    .or_else(|| netns_id(&netns_of_cgroup(&dir)?));
                if let Some((inode, cookie)) = netns {
                    self.netns.put(inode, (cookie, identity.clone()));
                    self.sandboxes.insert(id, inode);
                }
            }
            self.by_cgroup.insert(id, identity);
        }
        self.name_pods_by_uid();
        let present = &self.present;
        self.sandboxes.retain(|id, _| present.contains(id));
        self.unresolved.retain(|id| present.contains(id));
        for inode in self.sandboxes.values() {
            self.netns.promote(inode);
        }
        if self.by_cgroup.len() > MAX_CACHED {
            let present = &self.present;
            self.by_cgroup.retain(|id, _| present.contains(id));
        }
    }

    /// Learns the cgroups that appeared since the last walk.
    pub fn refresh(&mut self) {
        self.walk();
    }

    /// What is named in the latest walk.
    pub fn status(&self) -> IdentityStatus {
        let containers: Vec<(&u64, &Identity)> = self
            .by_cgroup
            .iter()
            .filter(|(id, identity)| self.present.contains(id) && identity.container.is_some())
            .collect();
        let pods: std::collections::BTreeSet<String> = containers
            .iter()
            .filter_map(|(_, identity)| identity.pod.as_ref())
            .filter_map(|pod| {
                Some(format!(
                    "{}/{}",
                    pod.namespace.as_ref()?,
                    pod.name.as_ref()?
                ))
            })
            .collect();
        IdentityStatus {
            hierarchy: self.root.clone(),
            state_dirs: self.state.existing(),
            containers: containers.len(),
            described: containers
                .iter()
                .filter(|(id, _)| !self.unresolved.contains(id))
                .count(),
            pods: pods.into_iter().collect(),
        }
    }

    /// Every cgroup known so far (those gone included) with its identity.
    pub fn cgroups(&self) -> impl Iterator<Item = (u64, &Identity)> {
        self.by_cgroup.iter().map(|(id, identity)| (*id, identity))
    }

    /// The pods with a container (their sandbox counts) in the latest walk: those still on
    /// the node. A pod's own cgroup is not enough: the kubelet removes it some time after the
    /// containers. `None` when the walk cannot tell (no cgroup v2 hierarchy, or the runtime
    /// keeps its containers in the v1 hierarchies only).
    pub fn present_pods(&self) -> Option<Vec<&Pod>> {
        let containers: Vec<&Identity> = self
            .by_cgroup
            .iter()
            .filter(|(id, identity)| self.present.contains(id) && identity.container.is_some())
            .map(|(_, identity)| identity)
            .collect();
        if containers.is_empty() {
            return None;
        }
        Some(containers.iter().filter_map(|i| i.pod.as_ref()).collect())
    }

    /// Names the pods that only a UID identifies (the pod's own cgroup, a runtime's monitor
    /// in it) after another cgroup of the same pod whose container state named it.
    fn name_pods_by_uid(&mut self) {
        let names: HashMap<String, (Option<String>, Option<String>)> = self
            .by_cgroup
            .values()
            .filter_map(|identity| identity.pod.as_ref())
            .filter(|pod| pod.name.is_some())
            .map(|pod| (pod.uid.clone(), (pod.namespace.clone(), pod.name.clone())))
            .collect();
        for pod in self.by_cgroup.values_mut().filter_map(|i| i.pod.as_mut()) {
            if let (None, Some((namespace, name))) = (&pod.name, names.get(&pod.uid)) {
                pod.namespace.clone_from(namespace);
                pod.name.clone_from(name);
            }
        }
    }

    /// Walks again when that could find what an event at `at_ns` is about: when the last walk
    /// began before the event, and it rested since. Says why not (for `-v`) otherwise.
    fn walk_for(&mut self, at_ns: u64, what: &dyn std::fmt::Display) {
        match self.last_walk {
            Some(walk) if !walk.is_older_than(at_ns) => log::debug!(
                "{what}: not in the cgroup hierarchy walked after the event: gone before it \
                 was read"
            ),
            Some(walk) if !walk.rested() => log::debug!(
                "{what}: not known, and the last walk ({:?}) ended too recently to walk again",
                walk.took
            ),
            _ => self.walk(),
        }
    }

    /// The container and pod of the task with cgroup v2 id `cgroup_id` and process id `pid`,
    /// as of an event at `at_ns` (CLOCK_MONOTONIC).
    pub fn identify(&mut self, cgroup_id: u64, pid: u32, at_ns: u64) -> Identity {
        if !self.has_cgroup_ids() || cgroup_id == 0 || Some(cgroup_id) == self.root_id {
            // In the root of the unified hierarchy, or on a host without one: a host process,
            // or a container whose runtime uses only the v1 hierarchies; its v1 paths tell.
            return self.identify_by_pid(pid);
        }
        if !self.by_cgroup.contains_key(&cgroup_id) || self.unresolved.contains(&cgroup_id) {
            self.walk_for(at_ns, &format_args!("cgroup {cgroup_id} (pid {pid})"));
        }
        match self.by_cgroup.get(&cgroup_id) {
            Some(identity) => identity.clone(),
            None => Identity::default(),
        }
    }

    /// Whether the kernel's cgroup ids can be resolved here (a cgroup v2 hierarchy is
    /// mounted): what the workload filters need.
    pub fn has_cgroup_ids(&self) -> bool {
        self.root.is_some()
    }

    fn identify_by_pid(&mut self, pid: u32) -> Identity {
        if let Some((found, identity)) = self.by_pid.get(&pid) {
            if found.elapsed() < PID_TTL {
                return identity.clone();
            }
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return Identity::default();
        };
        let identity = match cgroup_path::best_in_proc_cgroup(&text) {
            Some((_, path)) => identity_of(&path, &self.state).0,
            None => Identity::default(),
        };
        if self.by_pid.len() >= MAX_PIDS {
            self.by_pid
                .retain(|_, (found, _)| found.elapsed() < PID_TTL);
        }
        if self.by_pid.len() < MAX_PIDS {
            self.by_pid.insert(pid, (Instant::now(), identity.clone()));
        }
        identity
    }

    /// The sandbox (its container and pod) owning the network namespace with inode `inode`
    /// and cookie `cookie` at `at_ns`, looking for sandboxes started since the last walk when
    /// unknown.
    pub fn netns_owner(&mut self, inode: u64, cookie: u64, at_ns: u64) -> Option<&Identity> {
        if self.known_netns_owner(inode, cookie).is_none() {
            self.walk_for(at_ns, &format_args!("network namespace {inode}"));
        }
        self.known_netns_owner(inode, cookie)
    }

    /// As [`Self::netns_owner`], from what is known already: for summaries, which cannot walk.
    pub fn known_netns_owner(&self, inode: u64, cookie: u64) -> Option<&Identity> {
        self.netns
            .peek(&inode)
            .filter(|(known, _)| *known == cookie)
            .map(|(_, owner)| owner)
    }

    /// The pod whose sandbox owns the network namespace with inode `inode` and cookie
    /// `cookie`: for the tracers that report network namespaces rather than processes.
    pub fn pod_of_netns(&mut self, inode: u64, cookie: u64, at_ns: u64) -> Option<Pod> {
        self.netns_owner(inode, cookie, at_ns)?.pod.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::cgroup_path::{ContainerRef, PodRef, Runtime};

    fn now() -> u64 {
        Clock::monotonic_now_ns()
    }

    #[test]
    fn path_and_state_combine() {
        let root = std::env::temp_dir().join(format!("tracer-unit-ident-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let id = "c".repeat(64);
        let bundle = root.join(format!("tasks/k8s.io/{id}"));
        fs::create_dir_all(&bundle).unwrap();
        // Any file stands for the netns bind mount: what matters is its inode.
        let netns_file = root.join("netns");
        fs::write(&netns_file, "").unwrap();
        fs::write(
            bundle.join("config.json"),
            format!(
                r#"{{"annotations": {{"io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-name": "web", "io.kubernetes.cri.sandbox-namespace": "shop"}},
                "linux": {{"namespaces": [{{"type": "network", "path": "{}"}}]}}}}"#,
                netns_file.display()
            ),
        )
        .unwrap();
        let state = StateDirs {
            containerd_tasks: vec![root.join("tasks")],
            ..Default::default()
        };
        let path = PathIdentity {
            container: Some(ContainerRef {
                id: id.clone(),
                runtime: None,
            }),
            pod: Some(PodRef {
                uid: "u-1".into(),
                qos: "besteffort",
            }),
        };
        let (identity, metadata) = identity_of(&path, &state);
        let container = identity.container.unwrap();
        assert_eq!(container.runtime, Some("containerd"));
        assert_eq!(container.name, None, "a sandbox has no container name");
        let pod = identity.pod.unwrap();
        assert_eq!(
            (
                pod.namespace.as_deref(),
                pod.name.as_deref(),
                pod.uid.as_str()
            ),
            (Some("shop"), Some("web"), "u-1")
        );
        let netns = metadata.unwrap().netns_path.unwrap();
        assert_eq!(
            netns_inode(Path::new(&netns)),
            Some(fs::metadata(&netns_file).unwrap().ino())
        );

        // No state: the path's facts only, nothing invented.
        let bare = PathIdentity {
            container: Some(ContainerRef {
                id: "d".repeat(64),
                runtime: Some(Runtime::CriO),
            }),
            pod: None,
        };
        let (identity, _) = identity_of(&bare, &state);
        assert_eq!(identity.container.unwrap().runtime, Some("cri-o"));
        assert_eq!(identity.pod, None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pod_netns_maps_to_the_pod_on_a_real_runtime() {
        let mut node = tracer_tests::cri::CriNode::up();
        let pod = node.run_pod("shop", "web", false);
        let app = node.start_container(&pod, "app", &["/bin/sleep", "3600"]);
        let inode = |path: String| fs::metadata(path).unwrap().ino();
        let mut enricher = Enricher::new();
        // The app joined its pod's netns, which the sandbox owns.
        let (app_inode, app_cookie) =
            netns_id(Path::new(&format!("/proc/{}/ns/net", app.pid))).unwrap();
        let found = enricher
            .pod_of_netns(app_inode, app_cookie, now())
            .expect("the pod of the app's netns");
        assert_eq!(
            (found.namespace.as_deref(), found.name.as_deref(), found.uid),
            (Some("shop"), Some("web"), pod.uid.clone())
        );
        // Not the host's, nor a namespace that would reuse the inode (another cookie).
        let (own_inode, own_cookie) = netns_id(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(enricher.pod_of_netns(own_inode, own_cookie, now()), None);
        assert_eq!(
            enricher.pod_of_netns(app_inode, app_cookie + 1, now()),
            None
        );
        // Its identity by cgroup id: what the kernel reports for the app's tasks.
        let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", app.pid)).unwrap();
        let relative = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let root = cgroup::hierarchy_root(None).unwrap();
        let id = inode(
            root.join(relative.trim_start_matches('/'))
                .display()
                .to_string(),
        );
        let identity = enricher.identify(id, app.pid, now());
        let container = identity.container.expect("the app's container");
        assert_eq!(
            (container.id, container.name.as_deref(), container.runtime),
            (app.id.clone(), Some("app"), Some("containerd"))
        );
        // The pod's own cgroup (the app's parent) has no container state: named after its
        // containers.
        let pod_dir = root.join(relative.trim_start_matches('/')).join("..");
        let pod_level = enricher.identify(inode(pod_dir.display().to_string()), 0, now());
        assert_eq!(pod_level.container, None);
        let pod_of_cgroup = pod_level.pod.expect("the pod's cgroup");
        assert_eq!(
            (pod_of_cgroup.name.as_deref(), pod_of_cgroup.uid.as_str()),
            (Some("web"), pod.uid.as_str())
        );
    }

    /// A process in a v1 cgroup named like Docker's, its unified cgroup left at the root: as
    /// a runtime that does not join the unified hierarchy leaves it on a hybrid host.
    struct V1Container {
        child: std::process::Child,
        /// The cgroups made, deepest first.
        dirs: Vec<PathBuf>,
    }

    impl Drop for V1Container {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for dir in &self.dirs {
                // A killed task leaves its cgroup a moment after it is reaped.
                for _ in 0..50 {
                    if fs::remove_dir(dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    #[test]
    fn container_known_only_to_v1_hierarchies_is_found_by_pid() {
        let Some(pids_root) = cgroup::hierarchy_root(Some("pids")) else {
            return; // a cgroup v2-only host has no v1 paths to fall back to
        };
        let id = format!("{:064x}", u64::from(std::process::id()) << 20 | 0xabc);
        let top = pids_root.join(format!("tracer-unit-v1-{}", std::process::id()));
        let dir = top.join("docker").join(&id);
        fs::create_dir_all(&dir).unwrap();
        let guard = V1Container {
            child: std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
            dirs: vec![dir.clone(), top.join("docker"), top],
        };
        let pid = guard.child.id();
        fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let mut enricher = Enricher::new();
        let root_id = enricher.root_id.expect("a unified hierarchy");
        let container = enricher
            .identify(root_id, pid, now())
            .container
            .expect("the v1 path's container");
        assert_eq!((container.id, container.runtime), (id, Some("docker")));
    }

    /// Removes the directories (cgroups) it holds, deepest first.
    struct Cgroups(Vec<PathBuf>);

    impl Drop for Cgroups {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = fs::remove_dir(dir);
            }
        }
    }

    #[test]
    fn a_cgroup_made_just_after_a_walk_is_named_at_once() {
        let root = cgroup::hierarchy_root(None).expect("a unified hierarchy");
        let top = root.join(format!("tracer-unit-fresh-{}", std::process::id()));
        let id = format!("{:064x}", u64::from(std::process::id()) << 24 | 0xf4e54);
        let dir = top.join(&id);
        let _made = Cgroups(vec![dir.clone(), top.clone()]);
        let mut enricher = Enricher::new();
        // The container starts right after the walk, and its first event comes at once:
        // as a pod started just after another event made the tracer walk.
        fs::create_dir_all(&dir).unwrap();
        let cgroup_id = fs::metadata(&dir).unwrap().ino();
        let container = enricher
            .identify(cgroup_id, 0, now())
            .container
            .expect("the new container's cgroup, named on its first event");
        assert_eq!(container.id, id);
        // Its runtime's state, written after that first look, names it on a later event.
        assert!(enricher.unresolved.contains(&cgroup_id));
        let status = enricher.status();
        assert!(status.containers > status.described, "{status:?}");
    }

    #[test]
    fn the_verdict_says_what_is_named_or_what_to_do() {
        let status = IdentityStatus {
            hierarchy: Some("/sys/fs/cgroup".into()),
            state_dirs: Vec::new(),
            containers: 3,
            described: 0,
            pods: Vec::new(),
        };
        let complaint = status.verdict().unwrap_err();
        assert!(complaint.contains("3 container cgroups"), "{complaint}");
        assert!(
            complaint.contains("state directories here: none"),
            "{complaint}"
        );
        let named = IdentityStatus {
            described: 2,
            pods: vec!["shop/web".into()],
            ..status.clone()
        };
        assert_eq!(
            named.verdict().unwrap(),
            "2 of 3 containers described by their runtime, in 1 pods, e.g. pod shop/web"
        );
        let empty = IdentityStatus {
            containers: 0,
            ..status
        };
        assert!(empty.verdict().unwrap().starts_with("no container cgroups"));
    }

    #[test]
    fn host_process_has_no_identity() {
        let mut enricher = Enricher::new();
        let own = fs::metadata(
            cgroup::hierarchy_root(None).unwrap().join(
                fs::read_to_string("/proc/self/cgroup")
                    .unwrap()
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap()
                    .trim_start_matches('/'),
            ),
        )
        .unwrap()
        .ino();
        assert_eq!(
            enricher.identify(own, std::process::id(), now()),
            Identity::default()
        );
        assert_eq!(enricher.identify(u64::MAX, 1, now()), Identity::default());
        assert_eq!(enricher.pod_of_netns(1, 1, now()), None);
    }
}
