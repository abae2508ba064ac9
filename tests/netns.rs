//! `tracer netns` against the real kernel: namespaces the test creates (with `ip netns`,
//! `unshare` and a vfork()ed holder), checked against the inodes the kernel shows for them and
//! the pids the test spawned. Every namespace is removed again, also when an assertion fails.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{
    net::{self, add_address, NetnsHolder, OutsideHolder},
    *,
};

fn inode_of(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

fn netns_of(pid: u32) -> Option<u64> {
    inode_of(Path::new(&format!("/proc/{pid}/ns/net")))
}

/// A namespace made with `ip netns add`, deleted when dropped unless the test deleted it.
struct NamedNetns {
    name: String,
    deleted: bool,
}

impl NamedNetns {
    fn new(tag: &str) -> Self {
        let name = format!("trtest-{tag}-{}", std::process::id());
        net::run("ip", &["netns", "add", &name]);
        Self {
            name,
            deleted: false,
        }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn inode(&self) -> u64 {
        inode_of(&self.path()).expect("bind mount of the namespace")
    }

    /// A `sleep` inside the namespace (`ip netns exec` execs it: the pid is the child's).
    fn enter_sleeper(&self) -> Owned {
        let child = Owned(
            Command::new("ip")
                .args(["netns", "exec", &self.name, "sleep", "300"])
                .spawn()
                .expect("ip netns exec"),
        );
        let inode = self.inode();
        wait_for("the sleeper to enter", Duration::from_secs(10), || {
            (netns_of(child.pid()) == Some(inode)).then_some(())
        });
        child
    }

    fn delete(&mut self) {
        net::run("ip", &["netns", "del", &self.name]);
        self.deleted = true;
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// `unshare -n sleep 300`: a process holding a new namespace of its own, and that namespace.
fn process_in_new_netns() -> (Owned, u64) {
    let own = netns_of(std::process::id()).unwrap();
    let child = Owned(
        Command::new("unshare")
            .args(["-n", "sleep", "300"])
            .spawn()
            .expect("unshare"),
    );
    let inode = wait_for(
        "unshare to enter its namespace",
        Duration::from_secs(10),
        || netns_of(child.pid()).filter(|&i| i != own),
    );
    (child, inode)
}

/// Adds `address` to the loopback device of `pid`'s namespace.
/// `tracer netns --json ARGS`: exit code and the snapshot's objects.
fn snapshot(args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["netns", "--json"];
    all.extend_from_slice(args);
    let out = tracer(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or_else(|| panic!("{stderr}"));
    assert!(code < 2, "tracer netns failed: {stderr}");
    let objects = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (code, objects)
}

fn report(objects: &[Value], inode: u64) -> &Value {
    objects
        .iter()
        .find(|o| o["inode"] == inode)
        .unwrap_or_else(|| panic!("namespace {inode} not in {objects:#?}"))
}

fn flag_names(report: &Value) -> Vec<&str> {
    report["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["flag"].as_str().unwrap())
        .collect()
}

fn holder_pids(report: &Value) -> Vec<u64> {
    report["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["pid"].as_u64().unwrap())
        .collect()
}

/// `tracer netns --watch --json`, ready.
fn watch() -> TracerRun {
    TracerRun::start(&["netns", "--watch", "--json"])
}

/// Waits (at most 10 s) for the `action` event of namespace `inode` (create) or `cookie`.
fn event(run: &mut TracerRun, action: &str, key: &str, value: u64) -> Value {
    run.wait_for_json(Duration::from_secs(10), |v| {
        v["type"] == "netns" && v["action"] == action && v[key] == value
    })
    .unwrap_or_else(|| panic!("no {action} event with {key} {value}"))
}

fn cookie_of(event: &Value) -> u64 {
    let cookie = event["cookie"].as_u64().expect("a cookie");
    assert_ne!(cookie, 0, "{event:#}");
    cookie
}

/// The actions of the namespace with `cookie`, in output order; each event must carry `inode`.
fn actions_of(out: &TracerOutput, cookie: u64, inode: u64) -> Vec<String> {
    out.of_type("netns")
        .into_iter()
        .filter(|e| e["cookie"] == cookie)
        .map(|e| {
            assert_eq!(e["inode"], inode, "{e:#}");
            e["action"].as_str().unwrap().to_string()
        })
        .collect()
}

fn lifetime_ms(out: &TracerOutput, cookie: u64, action: &str) -> u64 {
    let e = out
        .of_type("netns")
        .into_iter()
        .find(|e| e["cookie"] == cookie && e["action"] == action)
        .unwrap_or_else(|| panic!("no {action} for cookie {cookie}"));
    e["lifetime_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no lifetime: {e:#}"))
}

#[test]
fn lifecycle_events_carry_the_kernels_inode_and_cookie() {
    let started = Instant::now();
    let mut run = watch();
    let mut named = NamedNetns::new("life");
    let named_at = Instant::now();
    let named_inode = named.inode();
    let mut sleeper = named.enter_sleeper();
    let (mut own, own_inode) = process_in_new_netns();

    let create = event(&mut run, "create", "inode", named_inode);
    assert_eq!(create["comm"], "ip", "{create:#}");
    let named_cookie = cookie_of(&create);
    let create = event(&mut run, "create", "inode", own_inode);
    assert_eq!(create["pid"], own.pid(), "{create:#}");
    assert_eq!(create["comm"], "unshare", "{create:#}");
    let own_cookie = cookie_of(&create);
    assert_ne!(named_cookie, own_cookie);

    // The last process leaves the named namespace; its bind mount keeps it alive.
    let _ = sleeper.0.kill();
    sleeper
        .wait_timeout(Duration::from_secs(10))
        .expect("sleeper exited");
    let last = event(&mut run, "last_holder_exit", "cookie", named_cookie);
    assert_eq!(last["pid"], sleeper.pid(), "{last:#}");
    assert_eq!(last["comm"], "sleep", "{last:#}");
    assert_eq!(
        last["held_by"],
        serde_json::json!(["bind mount"]),
        "{last:#}"
    );
    assert_eq!(released(&last), [("process", Some(sleeper.pid() as u64))]);

    let _ = own.0.kill();
    own.wait_timeout(Duration::from_secs(10))
        .expect("unshare'd sleep exited");
    let deleted_after = named_at.elapsed();
    named.delete();
    event(&mut run, "teardown_end", "cookie", own_cookie);
    event(&mut run, "teardown_end", "cookie", named_cookie);
    let elapsed = started.elapsed().as_millis() as u64;
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    // The last process, then the bind mount `ip netns del` removes.
    assert_eq!(
        actions_of(&out, named_cookie, named_inode),
        [
            "create",
            "last_holder_exit",
            "last_holder_exit",
            "teardown_start",
            "teardown_end"
        ]
    );
    let unmounted = &out
        .of_type("netns")
        .into_iter()
        .filter(|e| e["cookie"] == named_cookie && e["action"] == "last_holder_exit")
        .collect::<Vec<_>>()[1];
    assert_eq!(unmounted["held_by"], serde_json::json!([]), "{unmounted:#}");
    assert_eq!(released(unmounted), [("bind mount", None)]);
    // No bind mount holds the unshare'd namespace: its last exit is not worth an event.
    assert_eq!(
        actions_of(&out, own_cookie, own_inode),
        ["create", "teardown_start", "teardown_end"]
    );
    for cookie in [named_cookie, own_cookie] {
        let (start, end) = (
            lifetime_ms(&out, cookie, "teardown_start"),
            lifetime_ms(&out, cookie, "teardown_end"),
        );
        assert!(start <= end && end <= elapsed, "{start} {end} {elapsed}");
    }
    assert!(lifetime_ms(&out, named_cookie, "teardown_end") >= deleted_after.as_millis() as u64);
}

#[test]
fn deleted_namespace_lives_on_with_its_holder() {
    let mut run = watch();
    let mut named = NamedNetns::new("held");
    let inode = named.inode();
    let mut sleeper = named.enter_sleeper();
    let cookie = cookie_of(&event(&mut run, "create", "inode", inode));
    named.delete();
    assert!(!named.path().exists());
    assert_eq!(netns_of(sleeper.pid()), Some(inode));

    let (code, objects) = snapshot(&["--inode", &inode.to_string()]);
    let ns = report(&objects, inode);
    assert_eq!(objects.len(), 1, "{objects:#?}");
    assert_eq!(ns["held_by"], serde_json::json!(["process"]), "{ns:#}");
    assert_eq!(holder_pids(ns), [sleeper.pid() as u64], "{ns:#}");
    assert_eq!(ns["holders"][0]["comm"], "sleep");
    assert_eq!(ns["mounts"], serde_json::json!([]));
    // The cookie read over a socket inside the namespace is the one the kernel program read.
    assert_eq!(ns["cookie"], cookie, "{ns:#}");
    assert_eq!(ns["pod"], Value::Null);
    assert_eq!(code, 0, "{ns:#}");

    // Deleted, but held: no teardown while the holder lives.
    let early = run.wait_for_json(Duration::from_secs(1), |v| {
        v["cookie"] == cookie
            && v["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("teardown"))
    });
    assert_eq!(early, None);

    let _ = sleeper.0.kill();
    sleeper
        .wait_timeout(Duration::from_secs(10))
        .expect("sleeper exited");
    expect_plain_life(run, cookie, inode);
    // Gone from the snapshot too; its inode may already belong to a newer namespace.
    let out = tracer(&["netns", "--json", "--inode", &inode.to_string()]);
    if out.status.code() != Some(2) {
        let now: Value = serde_json::from_slice(&out.stdout).expect("one namespace");
        assert_ne!(now["cookie"], cookie, "{now:#}");
    }
}

#[test]
fn bind_mount_alone_is_orphaned() {
    let named = NamedNetns::new("orphan");
    let (code, objects) = snapshot(&["--inode", &named.inode().to_string()]);
    let ns = report(&objects, named.inode());
    assert_eq!(ns["held_by"], serde_json::json!(["bind mount"]));
    assert_eq!(ns["mounts"][0]["path"], named.path().to_str().unwrap());
    assert_eq!(
        ns["mounts"][0]["mount_ns"],
        inode_of(Path::new("/proc/self/ns/mnt")).unwrap()
    );
    assert_eq!(flag_names(ns), ["orphaned"], "{ns:#}");
    assert_eq!(code, 1);
}

#[test]
fn same_address_in_two_namespaces_is_a_conflict() {
    let (a, a_inode) = process_in_new_netns();
    let (b, b_inode) = process_in_new_netns();
    // Benchmarking addresses (198.18.0.0/15), never routed; no traffic is sent.
    let octet = std::process::id() % 250 + 1;
    let shared = format!("198.18.{octet}.1/24");
    add_address(a.pid(), &shared);
    add_address(b.pid(), &shared);
    let selection = format!("{a_inode},{b_inode}");

    let (code, objects) = snapshot(&["--inode", &selection]);
    assert_eq!(code, 1, "{objects:#?}");
    for (this, this_holder, other, other_holder) in [
        (a_inode, a.pid(), b_inode, b.pid()),
        (b_inode, b.pid(), a_inode, a.pid()),
    ] {
        let ns = report(&objects, this);
        assert_eq!(holder_pids(ns), [this_holder as u64], "{ns:#}");
        let addresses: Vec<&Value> = ns["addresses"].as_array().unwrap().iter().collect();
        assert!(
            addresses
                .iter()
                .any(|a| a["address"] == shared.trim_end_matches("/24")),
            "{ns:#}"
        );
        let conflict = ns["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["flag"] == "ip-conflict")
            .unwrap_or_else(|| panic!("no ip-conflict on {this}: {ns:#}"));
        assert_eq!(
            conflict["namespaces"],
            serde_json::json!([other]),
            "{conflict:#}"
        );
        let explanation = conflict["explanation"].as_str().unwrap();
        assert!(
            explanation.contains(&other.to_string())
                && explanation.contains(&format!("sleep({other_holder})")),
            "{explanation}"
        );
    }

    // Moving b to another address clears the conflict: nothing else is wrong with these two.
    let pid = b.pid().to_string();
    net::run(
        "nsenter",
        &["-t", &pid, "-n", "ip", "addr", "del", &shared, "dev", "lo"],
    );
    add_address(b.pid(), &format!("198.18.{octet}.2/24"));
    let (code, objects) = snapshot(&["--inode", &selection]);
    for inode in [a_inode, b_inode] {
        assert_eq!(flag_names(report(&objects, inode)), Vec::<&str>::new());
    }
    assert_eq!(code, 0, "{objects:#?}");
}

/// Waits for the teardown of the namespace `cookie` to end, stops the tracer, and checks the
/// whole life of the namespace, as `inode`, in order.
fn expect_plain_life(run: TracerRun, cookie: u64, inode: u64) {
    expect_life(
        run,
        cookie,
        inode,
        &["create", "teardown_start", "teardown_end"],
    );
}

/// [`expect_plain_life`], with these `actions`.
fn expect_life(mut run: TracerRun, cookie: u64, inode: u64, actions: &[&str]) {
    event(&mut run, "teardown_end", "cookie", cookie);
    let out = run.stop();
    assert_eq!(actions_of(&out, cookie, inode), actions);
}

/// The namespace `pid` is in, once it differs from this test's.
fn new_netns_of(pid: u32) -> u64 {
    wait_for("a new namespace", Duration::from_secs(10), || {
        netns_of(pid).filter(|&i| Some(i) != netns_of(std::process::id()))
    })
}

#[test]
fn clone_into_a_new_namespace_is_a_creation() {
    let mut run = watch();
    let mut holder = NetnsHolder::start(env!("CARGO_BIN_EXE_netns-holder"), "clone");
    let inode = new_netns_of(holder.child);
    assert_ne!(netns_of(holder.parent.pid()), Some(inode));
    let create = event(&mut run, "create", "inode", inode);
    // The new task is the one inside.
    assert_eq!(create["pid"], holder.child, "{create:#}");
    assert_eq!(create["comm"], "netns-holder", "{create:#}");
    let cookie = cookie_of(&create);

    holder.end();
    expect_plain_life(run, cookie, inode);
}

/// Waits until `pid` has been in D state for over a second (`--stuck-after 1s`).
fn asleep_past_a_second(pid: u32) {
    wait_for(
        "the holder to block in D state",
        Duration::from_secs(10),
        || status_field(pid, "State:").filter(|s| s.starts_with('D')),
    );
    thread::sleep(Duration::from_millis(1500));
}

#[test]
fn holder_in_uninterruptible_sleep_is_stuck() {
    let mut run = watch();
    let mut holder = NetnsHolder::start(env!("CARGO_BIN_EXE_netns-holder"), "vfork");
    let parent = holder.parent.pid();
    let inode = new_netns_of(parent);
    let create = event(&mut run, "create", "inode", inode);
    assert_eq!(create["pid"], parent, "{create:#}");
    let cookie = cookie_of(&create);
    asleep_past_a_second(parent);

    let (code, objects) = snapshot(&["--inode", &inode.to_string(), "--stuck-after", "1s"]);
    let ns = report(&objects, inode);
    let mut pids = holder_pids(ns);
    pids.sort();
    let mut expected = vec![parent as u64, holder.child as u64];
    expected.sort();
    assert_eq!(pids, expected, "{ns:#}");
    let blocked = ns["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["pid"] == parent)
        .unwrap();
    assert_eq!(blocked["state"], "D", "{blocked:#}");
    let wchan = blocked["wchan"].as_str().expect("a wchan for the D holder");
    assert!(
        blocked["blocked_ms"].as_u64().unwrap() >= 1000,
        "{blocked:#}"
    );
    assert_eq!(flag_names(ns), ["stuck"], "{ns:#}");
    let explanation = ns["flags"][0]["explanation"].as_str().unwrap();
    assert!(
        explanation.contains(&format!("({parent})")) && explanation.contains(wchan),
        "{explanation}"
    );
    assert_eq!(code, 1);

    // Below the threshold, the same holder is not flagged.
    let (code, objects) = snapshot(&["--inode", &inode.to_string(), "--stuck-after", "1h"]);
    assert_eq!(flag_names(report(&objects, inode)), Vec::<&str>::new());
    assert_eq!(code, 0);

    assert_eq!(ns["cookie"], cookie, "{ns:#}");

    holder.end();
    expect_plain_life(run, cookie, inode);
}

#[test]
fn a_task_asleep_in_the_nodes_own_namespace_does_not_make_it_stuck() {
    // The node's namespace is never torn down: kernel workers, which all live there, and any
    // process asleep in it keep nothing alive.
    let mut holder = NetnsHolder::start(env!("CARGO_BIN_EXE_netns-holder"), "vfork-here");
    let parent = holder.parent.pid();
    // Kernel threads live in it; kthreadd is pid 2 (pid 1's may be unreadable).
    let node = netns_of(2).expect("kthreadd's namespace");
    assert_eq!(netns_of(parent), Some(node));
    asleep_past_a_second(parent);
    let (_, objects) = snapshot(&["--inode", &node.to_string(), "--stuck-after", "1s"]);
    let ns = report(&objects, node);
    assert!(!flag_names(ns).contains(&"stuck"), "{:#}", ns["flags"]);
    holder.end();
}

/// `netns-holder MODE` holding `netns` from outside it.
fn outside_holder(mode: &str, netns: &Path) -> OutsideHolder {
    OutsideHolder::start(env!("CARGO_BIN_EXE_netns-holder"), mode, netns)
}

/// The holders a flag names, as (kind, pid).
fn flag_holders(flag: &Value) -> Vec<(&str, Option<u64>)> {
    flag["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders: {flag:#}"))
        .iter()
        .map(|h| (h["kind"].as_str().unwrap(), h["pid"].as_u64()))
        .collect()
}

/// Checks that a deleted namespace `inode` held only by `kind` of `pid` (none for a bind mount:
/// its mount namespace holds it) is listed and orphaned.
fn held_after_delete(inode: u64, kind: &str, pid: Option<u32>) -> Value {
    let (code, objects) = snapshot(&["--inode", &inode.to_string()]);
    let ns = report(&objects, inode).clone();
    assert_eq!(ns["held_by"], serde_json::json!([kind]), "{ns:#}");
    assert_eq!(holder_pids(&ns), Vec::<u64>::new(), "{ns:#}");
    assert_eq!(flag_names(&ns), ["orphaned"], "{ns:#}");
    assert!(
        flag_holders(&ns["flags"][0]).contains(&(kind, pid.map(u64::from))),
        "{ns:#}"
    );
    assert_eq!(code, 1, "{ns:#}");
    // Entered through what holds it: its cookie could be read.
    assert!(ns["cookie"].is_u64(), "{ns:#}");
    ns
}

/// Waits for namespace `cookie` to be gone from the snapshot; its inode may already belong to a
/// newer namespace.
fn gone_from_snapshot(inode: u64, cookie: u64) {
    wait_for("the namespace to go", Duration::from_secs(15), || {
        let out = tracer(&["netns", "--json", "--inode", &inode.to_string()]);
        let now: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        now.is_none_or(|now| now["cookie"] != cookie).then_some(())
    });
}

/// The holders a `last_holder_exit` says went, as (kind, pid).
fn released(event: &Value) -> Vec<(&str, Option<u64>)> {
    event["released"]
        .as_array()
        .unwrap_or_else(|| panic!("no released holders: {event:#}"))
        .iter()
        .map(|h| (h["kind"].as_str().unwrap(), h["pid"].as_u64()))
        .collect()
}

/// A watch started while the namespace `cookie` was orphaned and held by `kind` of `pid` alone
/// (`release` lets it go): `last_holder_exit` names that holder and nothing left, then its
/// teardown follows.
fn watched_release(cookie: u64, inode: u64, kind: &str, pid: Option<u32>, release: impl FnOnce()) {
    let mut run = watch();
    release();
    let last = event(&mut run, "last_holder_exit", "cookie", cookie);
    assert_eq!(last["inode"], inode, "{last:#}");
    assert_eq!(released(&last), [(kind, pid.map(u64::from))], "{last:#}");
    assert_eq!(last["pid"].as_u64(), pid.map(u64::from), "{last:#}");
    assert_eq!(last["held_by"], serde_json::json!([]), "{last:#}");
    expect_life(
        run,
        cookie,
        inode,
        &["last_holder_exit", "teardown_start", "teardown_end"],
    );
}

#[test]
fn open_namespace_file_holds_a_deleted_namespace() {
    let mut named = NamedNetns::new("fd");
    let inode = named.inode();
    let mut holder = outside_holder("fd", &named.path());
    let pid = holder.pid();
    named.delete();
    let ns = held_after_delete(inode, "file", Some(pid));
    let file = &ns["files"][0];
    assert_eq!(file["pid"], pid, "{ns:#}");
    assert_eq!(file["fd"], holder.fd, "{ns:#}");
    // The comm is not UTF-8: still a holder, escaped.
    assert_eq!(file["comm"], "hold\\xffer", "{ns:#}");
    let cookie = ns["cookie"].as_u64().unwrap();
    // The fd is closed, its process lives on.
    watched_release(cookie, inode, "file", Some(pid), || holder.close());
    gone_from_snapshot(inode, cookie);
}

#[test]
fn socket_from_inside_holds_a_deleted_namespace() {
    let mut named = NamedNetns::new("sock");
    let inode = named.inode();
    let mut holder = outside_holder("socket", &named.path());
    let pid = holder.pid();
    assert_ne!(netns_of(pid), Some(inode));
    named.delete();
    let ns = held_after_delete(inode, "socket", Some(pid));
    let socket = &ns["sockets"][0];
    assert_eq!(
        (&socket["pid"], &socket["fd"]),
        (&pid.into(), &holder.fd.into()),
        "{ns:#}"
    );
    assert_eq!(socket["protocol"], "tcp", "{socket:#}");
    assert_eq!(socket["state"], "LISTEN", "{socket:#}");
    let local = socket["local"].as_str().unwrap();
    assert!(local.starts_with("127.0.0.1:"), "{socket:#}");
    let cookie = ns["cookie"].as_u64().unwrap();
    // The socket is closed, its process lives on.
    watched_release(cookie, inode, "socket", Some(pid), || holder.close());
    gone_from_snapshot(inode, cookie);
}

#[test]
fn thread_that_joined_holds_a_deleted_namespace() {
    let mut named = NamedNetns::new("thread");
    let inode = named.inode();
    let mut holder = outside_holder("thread", &named.path());
    let (pid, tid) = (holder.pid(), holder.fd);
    // The process is outside; only its second thread is inside.
    assert_ne!(netns_of(pid), Some(inode));
    assert_eq!(
        inode_of(Path::new(&format!("/proc/{pid}/task/{tid}/ns/net"))),
        Some(inode)
    );
    named.delete();
    let ns = held_after_delete(inode, "thread", Some(pid));
    let thread = &ns["threads"][0];
    assert_eq!(
        (&thread["pid"], &thread["tid"]),
        (&pid.into(), &tid.into()),
        "{ns:#}"
    );
    let cookie = ns["cookie"].as_u64().unwrap();
    // The thread ends, its process lives on.
    watched_release(cookie, inode, "thread", Some(pid), || holder.close());
    gone_from_snapshot(inode, cookie);
}

#[test]
fn bind_mount_in_another_mount_namespace_holds_a_deleted_namespace() {
    use std::os::unix::ffi::OsStrExt as _;
    let mut run = watch();
    let mut named = NamedNetns::new("mnt");
    let inode = named.inode();
    let cookie = cookie_of(&event(&mut run, "create", "inode", inode));
    let mut sleeper = named.enter_sleeper();
    // A mount point with a space, a newline and a byte that is not UTF-8.
    let dir = TempDir::new("netns-mnt");
    let target = dir.0.join(std::ffi::OsStr::from_bytes(b"a b\xff\nc"));
    fs::write(&target, "").unwrap();
    let holder = Owned(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" "$1" && exec sleep 120"#)
            .arg(named.path())
            .arg(&target)
            .spawn()
            .expect("unshare"),
    );
    let pid = holder.pid();
    wait_for("the bind mount", Duration::from_secs(10), || {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    let mount_ns = inode_of(Path::new(&format!("/proc/{pid}/ns/mnt"))).unwrap();
    assert_ne!(Some(mount_ns), inode_of(Path::new("/proc/self/ns/mnt")));
    named.delete();
    // The last process leaves; only the mount in the other mount namespace holds it now.
    let _ = sleeper.0.kill();
    sleeper
        .wait_timeout(Duration::from_secs(10))
        .expect("sleeper exited");
    let last = event(&mut run, "last_holder_exit", "cookie", cookie);
    assert_eq!(last["pid"], sleeper.pid(), "{last:#}");
    assert_eq!(
        last["held_by"],
        serde_json::json!(["bind mount"]),
        "{last:#}"
    );

    let ns = held_after_delete(inode, "bind mount", None);
    let shown = format!("{}/a b\\xff\\nc", dir.0.display());
    let mounts = ns["mounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["path"] == shown.as_str())
        .unwrap_or_else(|| panic!("no mount at {shown}: {ns:#}"));
    assert_eq!(mount["mount_ns"], mount_ns, "{mount:#}");
    assert_eq!(mount["pid"], pid, "{mount:#}");
    // Only that mount namespace holds it (with its copy of /run/netns): the cookie was read
    // through the raw path under the holder's root.
    assert!(mounts.iter().all(|m| m["mount_ns"] == mount_ns), "{ns:#}");
    assert_eq!(ns["cookie"], cookie, "{ns:#}");
    // Its mount namespace goes with the holder: the last userspace holder, then teardown.
    let mut holder = holder;
    let _ = holder.0.kill();
    holder
        .wait_timeout(Duration::from_secs(10))
        .expect("holder exited");
    let unmounted = run
        .wait_for_json(Duration::from_secs(10), |v| {
            v["action"] == "last_holder_exit"
                && v["cookie"] == cookie
                && v["held_by"] == serde_json::json!([])
        })
        .expect("a last_holder_exit for the bind mount");
    assert_eq!(
        released(&unmounted),
        [("bind mount", None)],
        "{unmounted:#}"
    );
    let what = unmounted["released"][0]["what"].as_str().unwrap();
    assert!(what.contains(&format!("(mount ns {mount_ns})")), "{what}");
    expect_life(
        run,
        cookie,
        inode,
        &[
            "create",
            "last_holder_exit",
            "last_holder_exit",
            "teardown_start",
            "teardown_end",
        ],
    );
    gone_from_snapshot(inode, cookie);
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie of a socket's namespace, from the kernel.
const SO_NETNS_COOKIE: libc::c_int = 71;

fn socket_netns_cookie(socket: &impl std::os::fd::AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "SO_NETNS_COOKIE: {}",
        std::io::Error::last_os_error()
    );
    cookie
}

/// A TCP socket closed with a reset (SO_LINGER 0) when dropped, so that it leaves nothing
/// behind: no FIN to retransmit, no TIME_WAIT.
struct Abortive(std::net::TcpStream);

impl Drop for Abortive {
    fn drop(&mut self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid `linger` of the size given.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
}

/// Whether the socket table of the namespace the thread is in shows a connection in
/// FIN_WAIT1 (`04`) or CLOSING (`0B`: the peer's FIN came, ours is still unacknowledged).
fn fin_wait1_inside() -> bool {
    fs::read_to_string("/proc/thread-self/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| matches!(l.split_whitespace().nth(3), Some("04" | "0B")))
}

#[test]
fn orphan_tcp_socket_alone_holds_a_deleted_namespace() {
    use std::{io::Write as _, net::TcpListener, net::TcpStream};
    let mut run = watch();
    let server = net::Netns::new("kserver");
    let mut client = net::Netns::new("kclient");
    net::veth(&client, "10.214.0.1/24", &server, "10.214.0.2/24");
    // Per-namespace: bounds how long the orphan retransmits (about 25 s from a 200 ms RTO)
    // should the reset at the end never arrive; gone with the namespace.
    net::run(
        "ip",
        &[
            "netns",
            "exec",
            &client.name,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_orphan_retries=6",
        ],
    );
    let inode = client.inode();
    // sysctl was the last process inside; the watch follows the bind mount from here on.
    let sysctl = event(&mut run, "last_holder_exit", "inode", inode);
    assert_eq!(sysctl["comm"], "sysctl", "{sysctl:#}");
    assert_eq!(
        sysctl["held_by"],
        serde_json::json!(["bind mount"]),
        "{sysctl:#}"
    );
    let listener = server.run_inside(|| TcpListener::bind("10.214.0.2:0").expect("bind"));
    let to = listener.local_addr().unwrap();
    let stream = client.run_inside(move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect")
    });
    let (accepted, _) = listener.accept().expect("accept");
    // Kept open until the end: its reset frees the orphan then.
    let accepted = Abortive(accepted);
    drop(listener);
    let cookie = socket_netns_cookie(&stream);
    // From now on the server drops everything from the client: nothing it sends is acked.
    server.nft(
        "table inet trtest_orphan {\n chain in {\n type filter hook input priority 0;\n \
         ip saddr 10.214.0.1 drop\n }\n}\n",
    );
    let mut stream = stream;
    stream.write_all(&[b'x'; 4096]).expect("write");
    drop(stream);
    wait_for("an orphan in FIN_WAIT1", Duration::from_secs(10), || {
        client.run_inside(fin_wait1_inside).then_some(())
    });
    client.delete();
    assert!(
        Command::new("ip")
            .args(["netns", "pids", &client.name])
            .output()
            .map(|o| o.stdout.is_empty())
            .unwrap_or(true),
        "a process is still inside"
    );

    let (code, objects) = snapshot(&["--inode", &inode.to_string()]);
    let ns = report(&objects, inode);
    assert_eq!(ns["cookie"], cookie, "{ns:#}");
    assert_eq!(ns["held_by"], serde_json::json!(["kernel"]), "{ns:#}");
    assert_eq!(flag_names(ns), ["orphaned"], "{ns:#}");
    let refs = ns["kernel_refs"]["refs"].as_u64().unwrap_or(0);
    assert!(refs >= 1, "{ns:#}");
    let holder = &ns["flags"][0]["holders"][0];
    assert_eq!(holder["kind"], "kernel", "{ns:#}");
    assert!(
        holder["what"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{refs} references")),
        "{ns:#}"
    );
    assert_eq!(code, 1, "{ns:#}");
    // The human view says the same.
    let out = tracer(&["netns", "-o", "text", "--inode", &inode.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&inode.to_string()) && l.contains(" kernel ")),
        "{text}"
    );
    assert!(
        text.contains(
            "ORPHANED: no process, thread, open file, socket or bind mount holds it; the kernel \
             does ("
        ),
        "{text}"
    );

    // The watch saw the last userspace holder it knew of go (the bind mount `ip netns del`
    // removed) and the namespace stay, held by the kernel.
    let kernel = serde_json::json!(["kernel"]);
    let last = run
        .wait_for_json(Duration::from_secs(10), |v| {
            v["action"] == "last_holder_exit" && v["cookie"] == cookie && v["held_by"] == kernel
        })
        .expect("a last_holder_exit held by the kernel");
    assert_eq!(last["inode"], inode, "{last:#}");
    let gone = released(&last);
    assert!(gone.contains(&("bind mount", None)), "{last:#}");
    assert!(
        gone.iter()
            .all(|(kind, _)| ["bind mount", "socket"].contains(kind)),
        "{last:#}"
    );
    assert!(
        last["kernel_refs"]["refs"].as_u64().unwrap_or(0) >= 1,
        "{last:#}"
    );

    // The server's reset ends the orphan, and with it the namespace.
    drop(accepted);
    gone_from_snapshot(inode, cookie);
    event(&mut run, "teardown_end", "cookie", cookie);
    let out = run.stop();
    let events: Vec<&Value> = out
        .of_type("netns")
        .into_iter()
        .filter(|e| e["cookie"] == cookie)
        .collect();
    let held = events.iter().position(|e| e["held_by"] == kernel).unwrap();
    let after: Vec<&str> = events[held + 1..]
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(after, ["teardown_start", "teardown_end"], "{events:#?}");
}
