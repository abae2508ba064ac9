//! `netns --watch`: when the last userspace holder of a namespace goes, whatever it was (the
//! last process inside exits, an open namespace file or a socket is closed, a bind mount goes
//! in any mount namespace, a thread that joined it leaves), and whether the namespace then
//! stays alive, held by the kernel.
//!
//! Why this mechanism: only process exits have a tracepoint that names the namespace; closing
//! an fd or a socket and unmounting do not (kprobes and fentry are refused here), and teardown
//! is only seen when the namespace goes, not when the kernel keeps it. So the namespaces that
//! no process is inside but userspace holds are *followed*: each of their holders is re-checked
//! by its own /proc entry (one stat, readlink or mountinfo read) once a second, and only when
//! one is gone, or after an exit or a creation inside a namespace that outlives it, is the full
//! userspace scan run (on a thread of its own, at most one a second) and the kernel's list
//! read (its reference counts). The cost stays proportional to the followed holders, and
//! full scans happen only when something changed, plus one at start and one every
//! [`FULL_SCAN_EVERY`] for namespaces that lost their last process without an exit (setns()).

use std::{
    collections::{HashMap, HashSet},
    fs,
    num::NonZeroUsize,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lru::LruCache;
use tracer_common::netns::NetnsAction;

use super::{
    census::{KernelCensus, KernelRefs, Listed},
    decode::Record,
    discover::{self, HolderRef, ThreadHolder},
};
use crate::{
    clock::Clock,
    kernel::{
        netns::{in_netns, netns_file_inode, netns_mounts_of, own_cookie, process_namespaces},
        procfd::fd_path,
    },
};

/// How long a creation or an exit waits before it is checked: an exiting process releases its
/// namespaces right after the tracepoint, a creator leaves its new namespace (setns) soon after.
const SETTLE_NS: u64 = 100_000_000;

/// How often the followed holders are re-checked.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The least time between two full scans.
const SCAN_GAP: Duration = Duration::from_secs(1);

/// How often a full scan looks for namespaces whose last process left without exiting.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(30);

/// Namespaces followed, and checks waiting, at most (the most recent are kept).
const MAX_FOLLOWED: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

/// A userspace holder as last seen, and how to tell cheaply that it still holds.
#[derive(Clone, Debug)]
enum Check {
    /// An open namespace file: /proc/PID/fd/FD still opens the namespace.
    File { pid: u32, fd: u32 },
    /// A socket: /proc/PID/fd/FD still links to the same socket (`socket:[INODE]`).
    Socket { pid: u32, fd: u32, link: Vec<u8> },
    /// A bind mount: PID is still in that mount namespace, which still has the mount.
    Mount {
        pid: u32,
        mount_ns: u64,
        raw: Vec<u8>,
    },
    /// A thread of another namespace's process: it is still inside.
    Thread(ThreadHolder),
}

impl Check {
    fn holds(&self, inode: u64) -> bool {
        match self {
            Self::File { pid, fd } => netns_file_inode(&fd_path(*pid, *fd)) == Some(inode),
            Self::Socket { pid, fd, link } => fs::read_link(fd_path(*pid, *fd))
                .is_ok_and(|l| l.as_os_str().as_bytes() == link.as_slice()),
            Self::Mount { pid, mount_ns, raw } => {
                fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == *mount_ns)
                    && netns_mounts_of(&pid.to_string())
                        .is_ok_and(|m| m.iter().any(|(r, i)| r == raw && *i == inode))
            }
            Self::Thread(thread) => fs::metadata(thread.link()).is_ok_and(|m| m.ino() == inode),
        }
    }
}

/// A userspace holder other than a process inside.
#[derive(Clone, Debug)]
struct Held {
    check: Check,
    shown: HolderRef,
}

/// What a full scan says of one namespace.
#[derive(Debug, Default)]
struct Userspace {
    /// Some process is inside.
    inside: bool,
    held: Vec<Held>,
    /// Read from inside, for the namespaces no process is in but userspace holds.
    cookie: Option<u64>,
}

/// A full userspace scan, reduced to what the watch needs (the namespace files it opened are
/// closed before it returns: the kernel's counts are read after it).
fn scan() -> HashMap<u64, Userspace> {
    let found = discover::all().found;
    found
        .into_values()
        .map(|f| {
            let mut held: Vec<Held> = f
                .files
                .iter()
                .map(|h| Held {
                    check: Check::File {
                        pid: h.pid,
                        fd: h.fd,
                    },
                    shown: h.as_ref(),
                })
                .collect();
            held.extend(f.sockets.iter().filter_map(|h| {
                let link = fs::read_link(fd_path(h.pid, h.fd)).ok()?;
                Some(Held {
                    check: Check::Socket {
                        pid: h.pid,
                        fd: h.fd,
                        link: link.as_os_str().as_bytes().to_vec(),
                    },
                    shown: h.as_ref(),
                })
            }));
            held.extend(f.mounts.iter().map(|m| Held {
                check: Check::Mount {
                    pid: m.pid,
                    mount_ns: m.mount_ns,
                    raw: m.raw.clone(),
                },
                shown: m.as_ref(),
            }));
            held.extend(f.threads.iter().map(|t| Held {
                check: Check::Thread(t.clone()),
                shown: t.as_ref(),
            }));
            let inside = !f.holders.is_empty();
            let cookie = (!inside && !held.is_empty())
                .then(|| {
                    f.ways_in()
                        .find_map(|netns| in_netns(&netns.ok()?, own_cookie).ok())
                })
                .flatten();
            (
                f.inode,
                Userspace {
                    inside,
                    held,
                    cookie,
                },
            )
        })
        .collect()
}

/// Why a namespace is to be looked at by the next full scan.
#[derive(Clone, Debug)]
enum Why {
    /// A namespace was created: does its creator stay inside?
    Created,
    /// A process exited inside (the record), and the namespace outlived it.
    Exited(Record),
    /// One of the holders of a followed namespace is gone (those last seen).
    Changed(Vec<HolderRef>),
}

#[derive(Clone, Debug)]
struct Ask {
    inode: u64,
    why: Why,
}

/// A namespace no process is inside, held from userspace.
#[derive(Clone, Debug)]
struct Followed {
    inode: u64,
    held: Vec<Held>,
    /// Its holders were all seen gone and it is going (or, without the kernel's list, may be):
    /// no more checks, its teardown tells the release.
    gone: bool,
}

impl Followed {
    fn new(inode: u64, held: Vec<Held>) -> Self {
        Self {
            inode,
            held,
            gone: false,
        }
    }
}

/// The last userspace holder of a namespace went: what a `last_holder_exit` event says.
#[derive(Clone, Debug)]
pub struct Release {
    pub inode: u64,
    pub cookie: u64,
    /// The process concerned: the one that exited, or whose fd it was.
    pub process: Option<(u32, String)>,
    pub ktime_ns: u64,
    /// The holders whose going left none of their kind (or none at all).
    pub released: Vec<HolderRef>,
    /// What still holds it: other kinds of userspace holder, `kernel`, or nothing (its
    /// teardown follows).
    pub held_by: Vec<&'static str>,
    pub kernel_refs: Option<KernelRefs>,
}

impl Release {
    fn new(inode: u64, cookie: u64, released: Vec<HolderRef>, ktime_ns: u64) -> Self {
        // Named after the process concerned when one is.
        let process = match released.as_slice() {
            [one] => one.pid.zip(one.comm.clone()),
            _ => None,
        };
        Self {
            inode,
            cookie,
            process,
            ktime_ns,
            released,
            held_by: Vec::new(),
            kernel_refs: None,
        }
    }
}

/// A full scan running on its thread, and the namespaces it was started for.
struct Running {
    handle: JoinHandle<HashMap<u64, Userspace>>,
    asked: HashSet<u64>,
    full: bool,
}

pub struct Orphans {
    /// Creations and exits waiting to settle, by cookie (the latest one per namespace).
    pending: LruCache<u64, Record>,
    /// Namespaces for the next full scan, by cookie.
    asked: LruCache<u64, Ask>,
    followed: LruCache<u64, Followed>,
    running: Option<Running>,
    last_scan: Option<Instant>,
    last_full: Option<Instant>,
    last_recheck: Instant,
    /// The run's census of the kernel's list (the netns tracer's program); none where it
    /// could not load.
    census: Option<KernelCensus>,
}

/// `process` holder of an exit record.
fn exited(record: &Record) -> Vec<HolderRef> {
    record
        .process
        .iter()
        .map(|(pid, comm)| HolderRef {
            kind: "process",
            pid: Some(*pid),
            comm: Some(comm.clone()),
            what: "exited".into(),
        })
        .collect()
}

/// The kinds of `held`, each once, in order.
fn kinds(held: &[Held]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = Vec::new();
    for h in held {
        if !kinds.contains(&h.shown.kind) {
            kinds.push(h.shown.kind);
        }
    }
    kinds
}

impl Orphans {
    pub fn new() -> Self {
        Self {
            pending: LruCache::new(MAX_FOLLOWED),
            asked: LruCache::new(MAX_FOLLOWED),
            followed: LruCache::new(MAX_FOLLOWED),
            running: None,
            last_scan: None,
            last_full: None,
            last_recheck: Instant::now(),
            census: None,
        }
    }

    /// Follows the namespaces held from userspace with no process inside now, before the first
    /// event is read: a namespace orphaned before the watch started is followed from its start.
    /// `census` is the run's census program, or why there is none (said once, here).
    pub fn start(&mut self, census: anyhow::Result<KernelCensus>) {
        self.census = census
            .inspect_err(|e| {
                log::warn!(
                    "the kernel's list of network namespaces cannot be read ({e:#}): a \
                     namespace that only the kernel holds after its last userspace holder goes \
                     is not reported"
                )
            })
            .ok();
        let found = scan();
        let listed = self.listed();
        self.last_full = Some(Instant::now());
        self.last_scan = self.last_full;
        self.follow_orphans(&found, listed.as_ref());
    }

    /// A namespace was created, or a process exited inside one.
    pub fn settle(&mut self, record: Record) {
        if record.action == NetnsAction::ProcessExit {
            // A process was inside: the holders last seen may not be the last ones. Followed
            // again, if it is still held, once the exit settled.
            self.followed.pop(&record.cookie);
        }
        self.pending.put(record.cookie, record);
    }

    /// The namespace's teardown started: nothing holds it any more. A followed one's last
    /// holders went since they were last checked.
    pub fn teardown(&mut self, record: &Record) -> Option<Release> {
        self.pending.pop(&record.cookie);
        self.asked.pop(&record.cookie);
        if let Some(running) = &mut self.running {
            running.asked.remove(&record.cookie);
        }
        let followed = self.followed.pop(&record.cookie)?;
        let released = followed.held.into_iter().map(|h| h.shown).collect();
        Some(Release::new(
            record.inode,
            record.cookie,
            released,
            record.ktime_ns,
        ))
    }

    /// Every namespace on the kernel's list now, by cookie; `None` where the list cannot be read.
    fn listed(&mut self) -> Option<HashMap<u64, Listed>> {
        match self.census.as_mut()?.walk() {
            Ok(listed) => Some(listed.into_iter().map(|l| (l.cookie, l)).collect()),
            Err(e) => {
                log::warn!("reading the kernel's list of network namespaces: {e:#}");
                None
            }
        }
    }

    /// Turns settled creations and exits, and followed holders that went, into questions for
    /// the next full scan; runs it when one is due; answers with the releases it shows.
    pub fn poll(&mut self, final_flush: bool) -> Vec<Release> {
        self.settled(final_flush);
        if final_flush || self.last_recheck.elapsed() >= RECHECK_EVERY {
            self.last_recheck = Instant::now();
            self.recheck();
        }
        let mut releases = Vec::new();
        let finished = self
            .running
            .as_ref()
            .is_some_and(|r| final_flush || r.handle.is_finished());
        if finished {
            let running = self.running.take().expect("a running scan");
            // A scan thread that panicked answers nothing: its questions are asked again.
            let found = running.handle.join().unwrap_or_default();
            releases.extend(self.answer(&found, &running.asked, running.full));
        }
        let full_due = !final_flush
            && self
                .last_full
                .is_none_or(|at| at.elapsed() >= FULL_SCAN_EVERY);
        let gap_over = self.last_scan.is_none_or(|at| at.elapsed() >= SCAN_GAP);
        if self.running.is_none()
            && (final_flush || gap_over)
            && (!self.asked.is_empty() || full_due)
        {
            let asked: HashSet<u64> = self.asked.iter().map(|(c, _)| *c).collect();
            self.last_scan = Some(Instant::now());
            if full_due {
                self.last_full = self.last_scan;
            }
            if final_flush {
                let found = scan();
                releases.extend(self.answer(&found, &asked, false));
            } else {
                self.running = Some(Running {
                    handle: std::thread::spawn(scan),
                    asked,
                    full: full_due,
                });
            }
        }
        releases
    }

    /// Settled creations and exits whose namespace is still alive with no process inside are
    /// asked about: a cheap look at every process's namespace first, then the kernel's list.
    fn settled(&mut self, final_flush: bool) {
        let now = Clock::monotonic_now_ns();
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, r)| final_flush || now.saturating_sub(r.ktime_ns) >= SETTLE_NS)
            .map(|(cookie, _)| *cookie)
            .collect();
        if ready.is_empty() {
            return;
        }
        let occupied: HashSet<u64> = process_namespaces().into_iter().map(|(_, n)| n).collect();
        let listed = self.listed();
        for cookie in ready {
            let Some(record) = self.pending.pop(&cookie) else {
                continue;
            };
            let inode = match listed.as_ref().map(|l| l.get(&cookie)) {
                // Off the list or no reference left: it is going, teardown follows.
                Some(None) => continue,
                Some(Some(l)) if l.refs.refs == Some(0) => continue,
                Some(Some(l)) => l.inode,
                None => record.inode,
            };
            if occupied.contains(&inode) {
                continue;
            }
            let why = match record.action {
                NetnsAction::ProcessExit => Why::Exited(record),
                _ => Why::Created,
            };
            self.asked.put(cookie, Ask { inode, why });
        }
    }

    /// Each followed namespace whose holders are not all where they were is asked about.
    fn recheck(&mut self) {
        let changed: Vec<(u64, Ask)> = self
            .followed
            .iter()
            .filter(|(cookie, f)| !f.gone && !self.asked.contains(cookie))
            .filter(|(_, f)| !f.held.iter().all(|h| h.check.holds(f.inode)))
            .map(|(cookie, f)| {
                let ask = Ask {
                    inode: f.inode,
                    why: Why::Changed(f.held.iter().map(|h| h.shown.clone()).collect()),
                };
                (*cookie, ask)
            })
            .collect();
        for (cookie, ask) in changed {
            self.asked.put(cookie, ask);
        }
    }

    /// Answers the questions `asked` with a full scan's findings (`found`) and the kernel's
    /// list read after it; with `full`, also follows every orphaned namespace found.
    fn answer(
        &mut self,
        found: &HashMap<u64, Userspace>,
        asked: &HashSet<u64>,
        full: bool,
    ) -> Vec<Release> {
        let listed = self.listed();
        let now = Clock::monotonic_now_ns();
        let mut releases = Vec::new();
        for cookie in asked {
            // Answered by its teardown meanwhile.
            let Some(ask) = self.asked.pop(cookie) else {
                continue;
            };
            let entry = match listed.as_ref().map(|l| l.get(cookie)) {
                // Going: teardown follows and tells a followed one's release.
                Some(None) => {
                    self.mark_gone(*cookie);
                    continue;
                }
                Some(Some(l)) if l.refs.refs == Some(0) => {
                    self.mark_gone(*cookie);
                    continue;
                }
                entry => entry.flatten(),
            };
            let inode = entry.map_or(ask.inode, |l| l.inode);
            let userspace = found
                .get(&inode)
                .filter(|u| u.cookie.is_none_or(|c| c == *cookie));
            if userspace.is_some_and(|u| u.inside) {
                self.followed.pop(cookie);
                continue;
            }
            let held = userspace.map(|u| u.held.clone()).unwrap_or_default();
            if !held.is_empty() {
                if let Why::Exited(record) = &ask.why {
                    let mut release = Release::new(inode, *cookie, exited(record), record.ktime_ns);
                    release.held_by = kinds(&held);
                    release.kernel_refs = entry.map(|l| l.refs);
                    releases.push(release);
                }
                self.followed.put(*cookie, Followed::new(inode, held));
                continue;
            }
            // Nothing in userspace, on the kernel's list with references: the kernel holds it.
            // Without the list that cannot be told from a teardown not started yet.
            let Some(listed) = entry else {
                self.mark_gone(*cookie);
                continue;
            };
            self.followed.pop(cookie);
            let (released, at) = match ask.why {
                Why::Exited(record) => (exited(&record), record.ktime_ns),
                Why::Changed(last) => (last, now),
                Why::Created => continue,
            };
            let mut release = Release::new(inode, *cookie, released, at);
            release.held_by = vec!["kernel"];
            release.kernel_refs = Some(listed.refs);
            releases.push(release);
        }
        if full {
            self.follow_orphans(found, listed.as_ref());
        }
        releases.sort_by_key(|r| r.ktime_ns);
        releases
    }

    /// Follows every namespace of `found` that no process is inside and userspace holds, and
    /// that is not followed yet.
    fn follow_orphans(
        &mut self,
        found: &HashMap<u64, Userspace>,
        listed: Option<&HashMap<u64, Listed>>,
    ) {
        for (inode, userspace) in found {
            let Some(cookie) = userspace.cookie else {
                continue;
            };
            let alive =
                listed.is_none_or(|l| l.get(&cookie).is_some_and(|l| l.refs.refs != Some(0)));
            if userspace.inside || userspace.held.is_empty() || !alive {
                continue;
            }
            if !self.followed.contains(&cookie) {
                self.followed
                    .put(cookie, Followed::new(*inode, userspace.held.clone()));
            }
        }
    }

    /// A followed namespace whose holders are gone waits for its teardown.
    fn mark_gone(&mut self, cookie: u64) {
        if let Some(followed) = self.followed.get_mut(&cookie) {
            followed.gone = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracers::samples::netns;

    fn record(action: NetnsAction, cookie: u64, at: u64) -> Record {
        Record::decode(&netns(action, cookie, at)).unwrap()
    }

    #[test]
    fn exits_wait_one_per_namespace_and_a_followed_teardown_names_its_holders() {
        let mut orphans = Orphans::new();
        let t0 = Clock::monotonic_now_ns();
        // 200,000 exits in 3 namespaces before they settle: one waits per namespace.
        for i in 0..200_000u64 {
            orphans.settle(record(NetnsAction::ProcessExit, 1 + i % 3, t0 + i));
        }
        assert_eq!(orphans.pending.len(), 3);
        assert_eq!(
            orphans.pending.peek(&1).map(|r| r.ktime_ns),
            Some(t0 + 199_998)
        );

        let held = Held {
            check: Check::File { pid: 1, fd: 3 },
            shown: HolderRef {
                kind: "file",
                pid: Some(42),
                comm: Some("cni".into()),
                what: "fd 3".into(),
            },
        };
        orphans
            .followed
            .put(9, Followed::new(4026532999, vec![held]));
        let start = record(NetnsAction::TeardownStart, 9, t0 + 5);
        let release = orphans.teardown(&start).expect("a release");
        assert_eq!((release.inode, release.cookie), (4026532999, 9));
        assert_eq!(release.process, Some((42, "cni".into())));
        assert_eq!(release.released[0].kind, "file");
        assert_eq!(release.held_by, Vec::<&str>::new());
        assert_eq!(release.ktime_ns, t0 + 5);
        // Once only; an exit inside stops following (the holders seen may not be the last).
        assert!(orphans.teardown(&start).is_none());
        orphans
            .followed
            .put(10, Followed::new(4026532999, Vec::new()));
        orphans.settle(record(NetnsAction::ProcessExit, 10, t0 + 6));
        assert!(!orphans.followed.contains(&10));
    }
}
