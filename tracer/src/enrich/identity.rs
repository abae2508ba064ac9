//! cgroup ids and pids to the container and pod they belong to, with a cache.
//!
//! The kernel reports a task's cgroup v2 id; the cache is keyed by it, so a process that has
//! already exited (the victim of a SIGKILL is gone before userspace reads the event) is still
//! named: its cgroup was seen either at start-up or when the first unknown id triggered a new
//! walk of the hierarchy. Identities of cgroups that disappeared are kept (up to
//! [`MAX_CACHED`]; past it, those no longer on the node are forgotten).
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

use crate::{clock::Clock, kernel::netns, text::escape};

use super::{
    cgroup,
    cgroup_path::{self, PathIdentity},
    metadata::{Metadata, StateDirs},
};

/// The most cgroups remembered; past it, those no longer on the node are forgotten first.
const MAX_CACHED: usize = 65_536;

/// How long (ns of the events' monotonic clock) an identity found through /proc/PID/cgroup is
/// reused: long enough that a signal storm does not read the file per event, short enough that
/// a reused pid is soon seen anew.
const PID_TTL_NS: u64 = 1_000_000_000;

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
        format!("pod {}", self.qualified_name())
    }

    /// `namespace/name`, or `uid UID` before the pod's names are known.
    pub fn qualified_name(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            _ => format!("uid {}", self.uid),
        }
    }
}

/// Container and pod of one process; both `None` for a host process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub container: Option<Container>,
    pub pod: Option<Pod>,
}

/// How a cgroup that looks like a container's fared against its runtime's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Its path names no container.
    NotAContainer,
    /// The record of the container its path names says it is this cgroup.
    Verified,
    /// No runtime's state has a record of that container (yet).
    NoRecord,
    /// The record names another cgroup: this one only looks like the container's.
    OtherCgroup,
}

/// The container and pod in the cgroup at `cgroup` (its path from the hierarchy root), which
/// `path` was parsed from. They come from the runtime's record of the container the path
/// names, and only when that record says the container's cgroup is this one: anyone who may
/// make cgroups can give one a container's name.
fn identity_of(
    cgroup: &str,
    path: &PathIdentity,
    state: &StateDirs,
) -> (Identity, Option<Metadata>, Verdict) {
    let Some(container) = &path.container else {
        return (Identity::default(), None, Verdict::NotAContainer);
    };
    let Some((runtime, metadata)) = state.lookup(&container.id, container.runtime) else {
        log::debug!(
            "cgroup {cgroup}: no runtime state for container {}",
            container.id
        );
        return (Identity::default(), None, Verdict::NoRecord);
    };
    let cgroup = format!("/{}", cgroup.trim_matches('/'));
    // The container's own cgroup, or one below it (systemd or a nested runtime inside the
    // container made it: only what is already inside may).
    let is_own = |own: &String| {
        cgroup == *own
            || cgroup
                .strip_prefix(own.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if !metadata.cgroup_paths.iter().any(is_own) {
        log::debug!(
            "cgroup {cgroup} looks like container {}'s, whose record names {:?}: not named",
            container.id,
            metadata.cgroup_paths
        );
        return (Identity::default(), None, Verdict::OtherCgroup);
    }
    // Names are whatever the runtime was told (a container's labels, a pod's annotations):
    // escaped like a kernel string before they reach a terminal.
    let named = |name: &Option<String>| name.as_deref().map(|n| escape(n.as_bytes()));
    let pod = metadata
        .pod_uid
        .as_deref()
        .map(|uid| escape(uid.as_bytes()))
        .or_else(|| path.pod.as_ref().map(|p| p.uid.clone()))
        .map(|uid| Pod {
            namespace: named(&metadata.pod_namespace),
            name: named(&metadata.pod_name),
            uid,
            qos: path.pod.as_ref().map(|p| p.qos),
        });
    let identity = Identity {
        container: Some(Container {
            id: container.id.clone(),
            name: named(&metadata.name),
            runtime: Some(runtime.name()),
            image: named(&metadata.image),
        }),
        pod,
    };
    (identity, Some(metadata), Verdict::Verified)
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
    /// Of those, how many a runtime's record describes as that very cgroup.
    pub described: usize,
    /// Of those, how many only look like a container's: the record names another cgroup.
    pub impostors: usize,
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
        let impostors = match self.impostors {
            0 => String::new(),
            n => format!("; {n} cgroups look like containers but no runtime record matches"),
        };
        Ok(format!(
            "{} of {} containers described by their runtime, in {} pods{example}{impostors}",
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
    /// When it ended, and how long it took: a walk an event asks for waits until the last
    /// one's own length has passed, so events from ever new cgroups cannot keep the tracer
    /// walking more than half the time, and none goes unnamed for it.
    ended: Instant,
    took: Duration,
}

impl Walk {
    /// Whether a new walk could see a cgroup that existed at `at_ns` that this one did not.
    fn is_older_than(&self, at_ns: u64) -> bool {
        self.started_ns < at_ns
    }

    /// How long the next walk must wait.
    fn rest_left(&self) -> Duration {
        self.took.saturating_sub(self.ended.elapsed())
    }
}

/// How often the run's cache looks for new cgroups besides when an event needs it: workload
/// filters' maps follow new containers, and a pod sandbox must be seen while it runs for its
/// namespace's teardown, which comes after the sandbox is gone, to name the pod.
const REFRESH: Duration = Duration::from_millis(500);

/// The run's one identity cache, lent to every tracer and to `serve`'s census thread, so that
/// the hierarchy is walked and each runtime record read once for all of them.
#[derive(Clone)]
pub struct Identities {
    cache: std::sync::Arc<std::sync::Mutex<Enricher>>,
    refreshed: std::sync::Arc<std::sync::Mutex<Instant>>,
}

impl Identities {
    /// Learns every container cgroup on the node now.
    pub fn new() -> Self {
        Self {
            cache: std::sync::Arc::new(std::sync::Mutex::new(Enricher::new())),
            refreshed: std::sync::Arc::new(std::sync::Mutex::new(Instant::now())),
        }
    }

    /// The cache, for as long as the guard lives: keep it short (other threads wait).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Enricher> {
        // A panic while walking leaves a cache that is still usable.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Walks for new cgroups when [`REFRESH`] passed since the last time: the pipeline's
    /// explicit refresh step. Whether it walked.
    pub fn refresh_if_due(&self) -> bool {
        let mut refreshed = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        if refreshed.elapsed() < REFRESH {
            return false;
        }
        self.lock().refresh();
        *refreshed = Instant::now();
        true
    }
}

/// What an event made the cache walk for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Looked {
    Cgroup(u64),
    /// A network namespace's inode and cookie.
    Netns(u64, u64),
}

/// Keys remembered as walked for; past it, the oldest may make one more walk.
const MAX_LOOKED_FOR: NonZeroUsize = NonZeroUsize::new(4_096).unwrap();

/// The cache. One per run, shared through [`Identities`].
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
    /// The cgroups of sandboxes whose record names no network namespace (hostNetwork pods:
    /// they join their runtime's), while they run: their pod and cgroup directory.
    host_network: HashMap<u64, (Pod, PathBuf)>,
    /// Id of the root cgroup, where every task of a runtime that does not join the unified
    /// hierarchy on a hybrid host appears to be.
    root_id: Option<u64>,
    last_walk: Option<Walk>,
    /// Present cgroups whose path names a container that no runtime state described yet
    /// (its runtime had not written it, or its state directory was not known): looked up
    /// again at every walk.
    unresolved: HashSet<u64>,
    /// Present cgroups whose path names a container whose record names another cgroup.
    impostors: HashSet<u64>,
    /// What events made a walk for already: each makes one at most.
    looked_for: LruCache<Looked, ()>,
    /// Identities found by pid (tasks in the root cgroup), with the time of the event they
    /// were found for: the events carry the time, where reading the clock for each took a
    /// few percent of a signal storm's reader.
    by_pid: HashMap<u32, (u64, Identity)>,
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
            state: StateDirs::configured(),
            by_cgroup: HashMap::new(),
            present: HashSet::new(),
            netns: LruCache::new(MAX_SANDBOX_NETNS),
            sandboxes: HashMap::new(),
            host_network: HashMap::new(),
            last_walk: None,
            unresolved: HashSet::new(),
            impostors: HashSet::new(),
            looked_for: LruCache::new(MAX_LOOKED_FOR),
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
        let mut seen = Vec::new();
        cgroup::walk(&root, |id, path| {
            self.present.insert(id);
            seen.push((id, path.to_string()));
            ControlFlow::Continue(())
        });
        for (id, path) in &seen {
            if self.by_cgroup.contains_key(id) && !self.unresolved.contains(id) {
                continue;
            }
            let (identity, metadata, verdict) =
                identity_of(path, &cgroup_path::parse(path), &self.state);
            match verdict {
                Verdict::NoRecord => self.unresolved.insert(*id),
                _ => self.unresolved.remove(id),
            };
            if verdict == Verdict::OtherCgroup {
                self.impostors.insert(*id);
            }
            // The sandbox's namespace as its record names it; a hostNetwork sandbox names
            // none (it joins its runtime's), and is never the owner of a namespace.
            let sandbox = metadata.filter(|m| m.sandbox && identity.pod.is_some());
            if let Some(pod) = sandbox
                .as_ref()
                .filter(|m| m.netns_path.is_none())
                .and_then(|_| identity.pod.clone())
            {
                self.host_network
                    .insert(*id, (pod, root.join(path.trim_start_matches('/'))));
            }
            let netns = sandbox
                .and_then(|m| m.netns_path)
                .and_then(|p| netns_id(Path::new(&p)));
            if let Some((inode, cookie)) = netns {
                self.netns.put(inode, (cookie, identity.clone()));
                self.sandboxes.insert(*id, inode);
            }
            self.by_cgroup.insert(*id, identity);
        }
        self.name_pod_cgroups(&seen);
        let present = &self.present;
        self.sandboxes.retain(|id, _| present.contains(id));
        self.host_network.retain(|id, _| present.contains(id));
        self.unresolved.retain(|id| present.contains(id));
        self.impostors.retain(|id| present.contains(id));
        for inode in self.sandboxes.values() {
            self.netns.promote(inode);
        }
        if self.by_cgroup.len() > MAX_CACHED {
            let present = &self.present;
            self.by_cgroup.retain(|id, _| present.contains(id));
        }
    }

    /// Names a pod's own cgroup (where the kubelet puts its containers' cgroups, and a
    /// runtime may put its monitor) after the pod of a verified container directly below it
    /// whose pod has the UID the cgroup's name carries.
    fn name_pod_cgroups(&mut self, seen: &[(u64, String)]) {
        let parents: HashMap<&str, &Pod> = seen
            .iter()
            .filter_map(|(id, path)| {
                let identity = self.by_cgroup.get(id)?;
                identity.container.as_ref()?;
                Some((path.rsplit_once('/')?.0, identity.pod.as_ref()?))
            })
            .collect();
        let named: Vec<(u64, Pod)> = seen
            .iter()
            .filter(|(id, _)| {
                self.by_cgroup
                    .get(id)
                    .is_some_and(|i| i.container.is_none() && i.pod.is_none())
            })
            .filter_map(|(id, path)| {
                // Only the parents of verified containers are parsed, not every cgroup.
                let pod = parents.get(path.as_str())?;
                let own = cgroup_path::parse(path)
                    .pod
                    .filter(|own| own.uid == pod.uid)?;
                Some((
                    *id,
                    Pod {
                        qos: Some(own.qos),
                        ..(*pod).clone()
                    },
                ))
            })
            .collect();
        for (id, pod) in named {
            if let Some(identity) = self.by_cgroup.get_mut(&id) {
                identity.pod = Some(pod);
            }
        }
    }

    /// Learns the cgroups that appeared since the last walk.
    pub fn refresh(&mut self) {
        self.walk();
    }

    /// The containers (verified by their runtime's record) in the latest walk.
    fn present_containers(&self) -> Vec<&Identity> {
        self.by_cgroup
            .iter()
            .filter(|(id, identity)| self.present.contains(id) && identity.container.is_some())
            .map(|(_, identity)| identity)
            .collect()
    }

    /// What is named in the latest walk.
    pub fn status(&self) -> IdentityStatus {
        let verified = self.present_containers();
        let pods: std::collections::BTreeSet<String> = verified
            .iter()
            .filter_map(|identity| identity.pod.as_ref())
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
            containers: verified.len() + self.unresolved.len() + self.impostors.len(),
            described: verified.len(),
            impostors: self.impostors.len(),
            pods: pods.into_iter().collect(),
        }
    }

    /// The pods whose sandbox runs in a namespace of its own, with the namespace's inode and
    /// cookie, as of the latest walk.
    pub fn pod_netns(&self) -> Vec<(Pod, u64, u64)> {
        self.sandboxes
            .values()
            .filter_map(|inode| {
                let (cookie, owner) = self.netns.peek(inode)?;
                Some((owner.pod.clone()?, *inode, *cookie))
            })
            .collect()
    }

    /// The pods whose sandbox has no network namespace of its own (hostNetwork), with the
    /// sandbox's cgroup directory (its processes are in the namespace it joined), as of the
    /// latest walk.
    pub fn host_network_pods(&self) -> Vec<(Pod, PathBuf)> {
        self.host_network.values().cloned().collect()
    }

    /// Every cgroup known so far (those gone included) with its identity.
    /// Whether cgroup `id` was there at the latest walk.
    pub fn is_present(&self, id: u64) -> bool {
        self.present.contains(&id)
    }

    /// Gives a present cgroup the identity a runtime's record would (tests that need
    /// containers without a runtime).
    #[cfg(test)]
    pub fn learn_for_test(&mut self, id: u64, identity: Identity) {
        self.present.insert(id);
        self.by_cgroup.insert(id, identity);
    }

    pub fn cgroups(&self) -> impl Iterator<Item = (u64, &Identity)> {
        self.by_cgroup.iter().map(|(id, identity)| (*id, identity))
    }

    /// The pods with a container (their sandbox counts) in the latest walk: those still on
    /// the node. A pod's own cgroup is not enough: the kubelet removes it some time after the
    /// containers. `None` when the walk cannot tell (no cgroup v2 hierarchy, or the runtime
    /// keeps its containers in the v1 hierarchies only).
    pub fn present_pods(&self) -> Option<Vec<&Pod>> {
        let containers = self.present_containers();
        if containers.is_empty() {
            return None;
        }
        Some(containers.iter().filter_map(|i| i.pod.as_ref()).collect())
    }

    /// Walks again when that could find what an event at `at_ns` about `key` is about: when
    /// the last walk began before the event and no event about `key` made a walk already
    /// (the host's namespace, a container whose records are not readable here, would make
    /// every event walk; later walks of the pipeline's refresh still learn them). Says why
    /// not (for `-v`) otherwise.
    fn walk_for(&mut self, key: Looked, at_ns: u64, what: &dyn std::fmt::Display) {
        if self.looked_for.put(key, ()).is_some() {
            log::debug!("{what}: not found by the walk made for it; left to the next refresh");
            return;
        }
        match self.last_walk {
            Some(walk) if !walk.is_older_than(at_ns) => log::debug!(
                "{what}: not in the cgroup hierarchy walked after the event: gone before it \
                 was read"
            ),
            Some(walk) => {
                std::thread::sleep(walk.rest_left());
                self.walk();
            }
            None => self.walk(),
        }
    }

    /// The container and pod of the task with cgroup v2 id `cgroup_id` and process id `pid`,
    /// as of an event at `at_ns` (CLOCK_MONOTONIC).
    pub fn identify(&mut self, cgroup_id: u64, pid: u32, at_ns: u64) -> Identity {
        if !self.has_cgroup_ids() || cgroup_id == 0 || Some(cgroup_id) == self.root_id {
            // In the root of the unified hierarchy, or on a host without one: a host process,
            // or a container whose runtime uses only the v1 hierarchies; its v1 paths tell.
            return self.identify_by_pid(pid, at_ns);
        }
        if !self.by_cgroup.contains_key(&cgroup_id) || self.unresolved.contains(&cgroup_id) {
            let what = format_args!("cgroup {cgroup_id} (pid {pid})");
            self.walk_for(Looked::Cgroup(cgroup_id), at_ns, &what);
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

    fn identify_by_pid(&mut self, pid: u32, at_ns: u64) -> Identity {
        // Events from several CPUs come slightly out of order: an earlier one is as fresh.
        let fresh = |found_ns: u64| at_ns.saturating_sub(found_ns) < PID_TTL_NS;
        if let Some((found_ns, identity)) = self.by_pid.get(&pid) {
            if fresh(*found_ns) {
                return identity.clone();
            }
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return Identity::default();
        };
        let identity = match cgroup_path::best_in_proc_cgroup(&text) {
            Some((cgroup, path)) => identity_of(&cgroup, &path, &self.state).0,
            None => Identity::default(),
        };
        if self.by_pid.len() >= MAX_PIDS {
            self.by_pid.retain(|_, (found_ns, _)| fresh(*found_ns));
        }
        if self.by_pid.len() < MAX_PIDS {
            self.by_pid.insert(pid, (at_ns, identity.clone()));
        }
        identity
    }

    /// The sandbox (its container and pod) owning the network namespace with inode `inode`
    /// and cookie `cookie` at `at_ns`, looking for sandboxes started since the last walk when
    /// unknown.
    pub fn netns_owner(&mut self, inode: u64, cookie: u64, at_ns: u64) -> Option<&Identity> {
        if self.known_netns_owner(inode, cookie).is_none() {
            let what = format_args!("network namespace {inode}");
            self.walk_for(Looked::Netns(inode, cookie), at_ns, &what);
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

    fn now() -> u64 {
        Clock::monotonic_now_ns()
    }

    /// A containerd state directory in a temporary directory, removed when dropped.
    struct FakeState(PathBuf);

    impl FakeState {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("tracer-unit-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            Self(root)
        }

        fn dirs(&self) -> StateDirs {
            StateDirs {
                containerd_tasks: vec![self.0.join("tasks")],
                ..Default::default()
            }
        }

        /// Writes the bundle config of container `id` of pod shop/web (uid 0a-1), whose
        /// cgroup is `cgroup`; a sandbox joins `netns` when given.
        fn record(&self, id: &str, cgroup: &str, name: &str, netns: Option<&Path>) {
            let bundle = self.0.join(format!("tasks/k8s.io/{id}"));
            fs::create_dir_all(&bundle).unwrap();
            let kind = if netns.is_some() {
                "sandbox"
            } else {
                "container"
            };
            let namespaces = netns
                .map(|p| format!(r#"{{"type": "network", "path": "{}"}}"#, p.display()))
                .unwrap_or_default();
            fs::write(
                bundle.join("config.json"),
                format!(
                    r#"{{"annotations": {{"io.kubernetes.cri.container-type": "{kind}",
                    "io.kubernetes.cri.container-name": "{name}",
                    "io.kubernetes.cri.sandbox-name": "web", "io.kubernetes.cri.sandbox-namespace": "shop",
                    "io.kubernetes.cri.sandbox-uid": "0a-1"}},
                    "linux": {{"cgroupsPath": "{cgroup}", "namespaces": [{namespaces}]}}}}"#
                ),
            )
            .unwrap();
        }
    }

    impl Drop for FakeState {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn only_the_cgroup_the_record_names_gets_its_identity() {
        let state = FakeState::new("ident");
        let id = "c".repeat(64);
        let cgroup = format!("/kubepods/besteffort/pod0a-1/{id}");
        // Any file stands for the netns bind mount: what matters is its inode.
        let netns_file = state.0.join("netns");
        fs::write(&netns_file, "").unwrap();
        state.record(&id, &cgroup, "", Some(&netns_file));
        let (identity, metadata, verdict) =
            identity_of(&cgroup, &cgroup_path::parse(&cgroup), &state.dirs());
        assert_eq!(verdict, Verdict::Verified);
        let container = identity.container.unwrap();
        assert_eq!(container.runtime, Some("containerd"));
        assert_eq!(container.name, None, "a sandbox has no container name");
        let pod = identity.pod.unwrap();
        assert_eq!(
            (
                pod.namespace.as_deref(),
                pod.name.as_deref(),
                pod.uid.as_str(),
                pod.qos
            ),
            (Some("shop"), Some("web"), "0a-1", Some("besteffort"))
        );
        let netns = metadata.unwrap().netns_path.unwrap();
        assert_eq!(
            netns_inode(Path::new(&netns)),
            Some(fs::metadata(&netns_file).unwrap().ino())
        );

        // The same container id in a cgroup of one's own making, in any layout: nothing.
        for elsewhere in [
            format!("/evil/k8s.io/{id}"),
            format!("/evil{cgroup}"),
            format!("/kubepods/besteffort/pod0a-1/x/{id}"),
        ] {
            let parsed = cgroup_path::parse(&elsewhere);
            assert!(
                parsed.container.is_some(),
                "{elsewhere} looks like a container's"
            );
            let (identity, _, verdict) = identity_of(&elsewhere, &parsed, &state.dirs());
            assert_eq!(
                (identity, verdict),
                (Identity::default(), Verdict::OtherCgroup),
                "{elsewhere}"
            );
        }
        // A cgroup below the container's own (systemd inside it) is the container's.
        let nested = format!("{cgroup}/init.scope");
        let (identity, _, verdict) =
            identity_of(&nested, &cgroup_path::parse(&nested), &state.dirs());
        assert_eq!(verdict, Verdict::Verified);
        assert_eq!(identity.container.unwrap().id, id);
        // No record at all: nothing from the path alone.
        let other = format!("/kubepods/besteffort/pod0a-1/{}", "d".repeat(64));
        let (identity, _, verdict) =
            identity_of(&other, &cgroup_path::parse(&other), &state.dirs());
        assert_eq!(
            (identity, verdict),
            (Identity::default(), Verdict::NoRecord)
        );
    }

    #[test]
    fn pod_netns_maps_to_the_pod_on_a_real_runtime() {
        let mut node = tracer_tests::cri::CriNode::up();
        let pod = node.run_pod("shop", "web", false);
        let app = node.start_container(&pod, "app", &["/bin/sleep", "3600"]);
        let inode = |path: String| fs::metadata(path).unwrap().ino();
        // The node's containerd keeps its state where `--containerd-state` would name it.
        crate::enrich::metadata::configure_containerd_state(vec![node.containerd_state_dir()]);
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
        // Docker's record of it, with the cgroup parent it was started with.
        let state = FakeState::new("v1");
        let record = state.0.join("containers").join(&id);
        fs::create_dir_all(&record).unwrap();
        fs::write(
            record.join("config.v2.json"),
            format!(r#"{{"ID": "{id}", "Name": "/web"}}"#),
        )
        .unwrap();
        fs::write(
            record.join("hostconfig.json"),
            format!(
                r#"{{"CgroupParent": "/tracer-unit-v1-{}/docker"}}"#,
                std::process::id()
            ),
        )
        .unwrap();
        let mut enricher = Enricher::new();
        enricher.state = StateDirs {
            docker_containers: vec![state.0.join("containers")],
            ..Default::default()
        };
        let root_id = enricher.root_id.expect("a unified hierarchy");
        let container = enricher
            .identify(root_id, pid, now())
            .container
            .expect("the v1 path's container");
        assert_eq!(
            (container.id, container.name.as_deref(), container.runtime),
            (id, Some("web"), Some("docker"))
        );
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
        let top_name = format!("tracer-unit-fresh-{}", std::process::id());
        let id = |n: u64| format!("{:064x}", u64::from(std::process::id()) << 24 | n);
        let (first, late, fake) = (id(1), id(2), id(3));
        let cgroup = |rest: &str| format!("/{top_name}/{rest}");
        let top = root.join(&top_name);
        let dir = |rest: &str| top.join(rest);
        let _made = Cgroups(vec![
            dir(&first),
            dir(&late),
            dir(&format!("evil/{first}")),
            dir("evil"),
            dir(&fake),
            top.clone(),
        ]);
        let state = FakeState::new("fresh");
        state.record(&first, &cgroup(&first), "app", None);
        let mut enricher = Enricher::new();
        enricher.state = state.dirs();
        enricher.walk();
        // Whatever else runs on this machine (other tests' containers) is counted before.
        let before = enricher.status();
        // The container starts right after the walk, and its first event comes at once:
        // as a pod started just after another event made the tracer walk.
        fs::create_dir_all(dir(&first)).unwrap();
        let id_of = |rest: &str| fs::metadata(dir(rest)).unwrap().ino();
        let identity = enricher.identify(id_of(&first), 0, now());
        let container = identity.container.expect("named on its first event");
        assert_eq!(
            (container.id.as_str(), container.name.as_deref()),
            (first.as_str(), Some("app"))
        );
        assert_eq!(identity.pod.unwrap().name.as_deref(), Some("web"));

        // A container whose record is written after its first event: named on a later one.
        fs::create_dir_all(dir(&late)).unwrap();
        assert_eq!(
            enricher.identify(id_of(&late), 0, now()),
            Identity::default()
        );
        assert!(enricher.unresolved.contains(&id_of(&late)));
        state.record(&late, &cgroup(&late), "late", None);
        // The walk its first event made did not find the record: the pipeline's next refresh
        // looks again.
        enricher.refresh();
        let container = enricher.identify(id_of(&late), 0, now()).container;
        assert_eq!(container.and_then(|c| c.name).as_deref(), Some("late"));

        // A cgroup named after the first container elsewhere, or after one no runtime knows.
        fs::create_dir_all(dir(&format!("evil/{first}"))).unwrap();
        fs::create_dir_all(dir(&fake)).unwrap();
        for rest in [format!("evil/{first}"), fake.clone()] {
            assert_eq!(
                enricher.identify(id_of(&rest), 0, now()),
                Identity::default(),
                "{rest}"
            );
        }
        let status = enricher.status();
        assert_eq!(
            (
                status.impostors - before.impostors,
                status.described - before.described
            ),
            (1, 2),
            "{status:?}"
        );
        assert!(status
            .verdict()
            .unwrap()
            .contains("1 cgroups look like containers"));
    }

    #[test]
    fn the_verdict_says_what_is_named_or_what_to_do() {
        let status = IdentityStatus {
            hierarchy: Some("/sys/fs/cgroup".into()),
            state_dirs: Vec::new(),
            containers: 3,
            described: 0,
            impostors: 0,
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
        // Events about what a walk did not find do not walk again (the host's namespace, a
        // container whose records are unreadable): the pipeline's refresh looks later.
        assert_eq!(enricher.pod_of_netns(1, 1, now()), None);
        let walked = enricher.last_walk.unwrap().started_ns;
        for _ in 0..3 {
            assert_eq!(enricher.identify(u64::MAX, 1, now()), Identity::default());
            assert_eq!(enricher.pod_of_netns(1, 1, now()), None);
        }
        assert_eq!(enricher.last_walk.unwrap().started_ns, walked);
        assert_eq!(enricher.pod_of_netns(1, 1, now()), None);
    }
}
