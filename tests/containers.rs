//! Container and pod identity on a real containerd driven through the CRI API (as a kubelet
//! drives it): every expectation comes from what the runtime returned to the test.

use std::{
    fs,
    io::Write as _,
    net::UdpSocket,
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracer_tests::{
    cri::{self, Container, CriNode, Footprint, Pod},
    ours_left_behind,
    scrape::{Scrape, Served},
    send, sleeper, spawn_ignoring, tracer, wait_for, wait_until_ignored, Owned, TempDir,
    TracerOutput, TracerRun,
};

/// A container's main process that ignores SIGUSR1 and SIGUSR2 (the disposition survives exec),
/// so that the tests' signals leave it running.
const SLEEPER: &[&str] = &["/bin/sh", "-c", "trap '' USR1 USR2; exec sleep 3600"];

/// Starts a [`SLEEPER`] container, returning once its process ignores the tests' signals.
fn start_sleeper(node: &mut CriNode, pod: &Pod, name: &str) -> Container {
    let container = node.start_container(pod, name, SLEEPER);
    wait_until_ignored(container.pid, Signal::SIGUSR1);
    wait_until_ignored(container.pid, Signal::SIGUSR2);
    container
}

/// Checks one side of a signal against the container and pod the runtime created.
fn assert_identity(process: &Value, container: &Container, name: &str, pod: &Pod) {
    assert_eq!(
        process["container"]["id"],
        container.id.as_str(),
        "{process:#}"
    );
    assert_eq!(process["container"]["name"], name, "{process:#}");
    assert_eq!(process["container"]["runtime"], "containerd", "{process:#}");
    assert_eq!(process["container"]["image"], cri::IMAGE, "{process:#}");
    assert_eq!(process["pod"]["name"], pod.name.as_str(), "{process:#}");
    assert_eq!(
        process["pod"]["namespace"],
        pod.namespace.as_str(),
        "{process:#}"
    );
    assert_eq!(process["pod"]["uid"], pod.uid.as_str(), "{process:#}");
    assert_eq!(process["pod"]["qos"], "besteffort", "{process:#}");
}

#[test]
fn signal_from_the_host_names_the_killed_containers_pod() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let app = start_sleeper(&mut node, &web, "app");
    let run = TracerRun::start(&["signals", "--json", "--pid", &app.pid.to_string()]);
    let human = TracerRun::start(&["signals", "-o", "text", "--pid", &app.pid.to_string()]);
    // The app ignores SIGUSR1; SIGKILL kills it, so the tracer must name a process (and soon
    // a cgroup) that is gone.
    send(app.pid, Signal::SIGUSR1);
    send(app.pid, Signal::SIGKILL);
    let human = human.stop();
    let expected = format!(
        "    target in pod shop/web, container app (containerd {})",
        &app.id[..12]
    );
    let lines = human.stdout.iter().filter(|l| **l == expected).count();
    assert_eq!(lines, 2, "{:#?}", human.stdout);
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let events = out.of_type("signal");
    let signals: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["signal"].as_str().unwrap_or_default(),
                e["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        signals,
        [("SIGUSR1", "ignored"), ("SIGKILL", "delivered")],
        "{events:#?}"
    );
    // The summary's explanation of the app's exit code 137 names its pod.
    let exit_codes = out.summary()["exit_codes"].to_string();
    assert!(
        exit_codes.contains(&format!(
            "in pod shop/web, container app (containerd {}) is gone: exit code 137",
            &app.id[..12]
        )),
        "{exit_codes}"
    );
    for e in &events {
        assert_eq!(e["target"]["pid"], app.pid);
        assert_identity(&e["target"], &app, "app", &web);
        assert_eq!(e["sender"]["pid"], std::process::id());
        assert_eq!(e["sender"]["container"], Value::Null, "the host sent it");
        assert_eq!(e["sender"]["pod"], Value::Null);
    }
}

#[test]
fn signal_between_containers_of_two_pods_names_both() {
    let mut node = CriNode::up();
    // The sender's pod shares the node's pid namespace, so it can name the target's pid.
    let client = node.run_pod("shop", "client", true);
    let killer = start_sleeper(&mut node, &client, "killer");
    // The tracer starts before the target's pod exists: its cgroup is unknown at start-up.
    let run = TracerRun::start(&["signals", "--json", "--signal", "USR2"]);
    let db = node.run_pod("store", "db", false);
    let postgres = start_sleeper(&mut node, &db, "postgres");
    let status = node.exec(&killer, &["/bin/kill", "-USR2", &postgres.pid.to_string()]);
    assert_eq!(status, 0, "kill in the killer container");
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let events: Vec<&Value> = out
        .of_type("signal")
        .into_iter()
        .filter(|e| e["target"]["pid"] == postgres.pid)
        .collect();
    assert_eq!(events.len(), 1, "{:#?}", out.objects);
    let e = events[0];
    assert_eq!(e["sender"]["comm"], "kill", "{e:#}");
    // The path from the container's own `/` (its root mount), which the image made.
    assert_eq!(e["sender"]["exe"], "/bin/busybox", "{e:#}");
    assert_identity(&e["sender"], &killer, "killer", &client);
    assert_identity(&e["target"], &postgres, "postgres", &db);
}

/// Checks a `pod` object against the pod the runtime created.
fn assert_pod(pod: &Value, expected: &Pod) {
    assert_eq!(pod["namespace"], expected.namespace.as_str(), "{pod:#}");
    assert_eq!(pod["name"], expected.name.as_str(), "{pod:#}");
    assert_eq!(pod["uid"], expected.uid.as_str(), "{pod:#}");
}

/// Inode of the network namespace of `pid`.
fn netns_inode(pid: u32) -> u64 {
    fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

/// A port the pods' firewall rule drops.
const BLOCKED_PORT: u16 = 5353;

/// Brings up loopback in the network namespace of `pid` (a pod's: no CNI loopback plugin here)
/// and adds a rule dropping UDP to [`BLOCKED_PORT`]; both go with the pod's namespace.
fn block_port_in_netns_of(pid: u32) {
    let net = format!("--net=/proc/{pid}/ns/net");
    let status = Command::new("nsenter")
        .args([net.as_str(), "ip", "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(status.success(), "lo up in the pod's netns");
    let mut nft = Command::new("nsenter")
        .args([net.as_str(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let ruleset = format!(
        "table ip podfw {{\n  chain out {{\n    type filter hook output priority 0;\n    \
         udp dport {BLOCKED_PORT} drop\n  }}\n}}\n"
    );
    nft.stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft in the pod's netns");
}

/// Sends `count` UDP packets to 127.0.0.1:[`BLOCKED_PORT`] from inside the network namespace
/// of `pid`; returns how many the firewall refused.
fn send_blocked_in_netns_of(pid: u32, count: usize) -> usize {
    let netns = fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        (0..count)
            .filter(|_| socket.send_to(b"x", ("127.0.0.1", BLOCKED_PORT)).is_err())
            .count()
    })
    .join()
    .unwrap()
}

/// The conntrack-drops summary's entry for namespace `netns`.
fn netns_summary(out: &TracerOutput, netns: u64) -> Value {
    out.summary()["by_netns"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["netns"] == netns).cloned())
        .unwrap_or_else(|| panic!("{netns} not in {:#}", out.summary()))
}

#[test]
fn conntrack_drop_in_a_pods_netns_names_the_pod_and_pod_filter_selects_it() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let db = node.run_pod("store", "db", false);
    let web_app = start_sleeper(&mut node, &web, "app");
    let db_app = start_sleeper(&mut node, &db, "postgres");
    let (web_netns, db_netns) = (netns_inode(web_app.pid), netns_inode(db_app.pid));
    for app in [&web_app, &db_app] {
        block_port_in_netns_of(app.pid);
    }
    let all = TracerRun::start(&["conntrack-drops", "--json"]);
    let only_web = TracerRun::start(&["conntrack-drops", "--json", "--pod", "web"]);
    let only_store = TracerRun::start(&["conntrack-drops", "--json", "--namespace", "store"]);
    let web_glob = TracerRun::start(&["conntrack-drops", "--json", "--pod", "w?b*"]);
    assert_eq!(send_blocked_in_netns_of(web_app.pid, 5), 5);
    assert_eq!(send_blocked_in_netns_of(db_app.pid, 3), 3);
    let (all, only_web, only_store) = (all.stop(), only_web.stop(), only_store.stop());
    let web_glob = web_glob.stop();

    let in_netns = |out: &TracerOutput, netns: u64| -> Vec<Value> {
        out.of_type("conntrack_drop")
            .into_iter()
            .filter(|e| e["netns"] == netns)
            .cloned()
            .collect()
    };
    for out in [&all, &only_web, &only_store, &web_glob] {
        assert!(out.status.success(), "{}", out.stderr);
    }
    for (netns, pod, count) in [(web_netns, &web, 5), (db_netns, &db, 3)] {
        let drops = in_netns(&all, netns);
        assert_eq!(drops.len(), count, "{:#?}", all.objects);
        for e in &drops {
            assert_eq!(e["class"], "rule", "{e:#}");
            assert_eq!(e["dst"], format!("127.0.0.1:{BLOCKED_PORT}"), "{e:#}");
            assert_pod(&e["pod"], pod);
        }
        assert_pod(&netns_summary(&all, netns)["pod"], pod);
    }
    // The filters let through only their pod's drops; the summaries still count every drop.
    for (out, netns, count) in [
        (&only_web, web_netns, 5),
        (&only_store, db_netns, 3),
        (&web_glob, web_netns, 5),
    ] {
        let drops = out.of_type("conntrack_drop");
        assert_eq!(drops.len(), count, "{drops:#?}");
        assert!(drops.iter().all(|e| e["netns"] == netns), "{drops:#?}");
        for (netns, count) in [(web_netns, 5), (db_netns, 3)] {
            assert_eq!(
                netns_summary(out, netns)["drops"]["rule"],
                count,
                "{:#}",
                out.summary()
            );
        }
    }
}

#[test]
fn pod_sandbox_netns_is_named_in_the_snapshot_and_its_teardown() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let app = start_sleeper(&mut node, &web, "app");
    let inode = netns_inode(app.pid);
    let snapshot = tracer(&["netns", "--json", "--inode", &inode.to_string()]);
    let stdout = String::from_utf8_lossy(&snapshot.stdout);
    let reports: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["type"] == "netns_snapshot")
        .collect();
    assert_eq!(reports.len(), 1, "{stdout}");
    let report = &reports[0];
    assert_eq!(report["inode"], inode);
    assert_pod(&report["pod"], &web);
    // The namespace belongs to the sandbox, whose id is the pod sandbox id.
    assert_eq!(report["container"]["id"], web.id.as_str(), "{report:#}");
    assert_eq!(report["container"]["name"], Value::Null, "{report:#}");
    assert!(
        report["holders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["pid"] == app.pid),
        "{report:#}"
    );
    let cookie = report["cookie"].as_u64().expect("the namespace's cookie");
    // The pod filters keep the pod's namespace, and only it.
    let selected = tracer(&["netns", "--json", "--pod", "w?b", "--namespace", "shop"]);
    let selected: Vec<Value> = String::from_utf8_lossy(&selected.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(selected.len(), 1, "{selected:#?}");
    assert_eq!(selected[0]["inode"], inode);

    let mut watch = TracerRun::start(&["netns", "--watch", "--json"]);
    let selected = TracerRun::start(&["netns", "--watch", "--json", "--pod", "w*"]);
    let other = TracerRun::start(&["netns", "--watch", "--json", "--workload", "db"]);
    assert!(
        other
            .stderr_lines()
            .iter()
            .any(|l| l.contains("nothing on this node matches --workload 'db'")),
        "{:#?}",
        other.stderr_lines()
    );
    node.remove_pod(&web);
    let teardown = watch.wait_for_json(Duration::from_secs(30), |e| {
        e["type"] == "netns" && e["action"] == "teardown_end" && e["cookie"] == cookie
    });
    let (selected, other) = (selected.stop(), other.stop());
    assert!(
        selected
            .of_type("netns")
            .iter()
            .any(|e| e["action"] == "teardown_end" && e["cookie"] == cookie),
        "{:#?}",
        selected.objects
    );
    assert!(
        selected
            .of_type("netns")
            .iter()
            .all(|e| e["pod"]["name"] == "web"),
        "{:#?}",
        selected.objects
    );
    assert!(other.of_type("netns").is_empty(), "{:#?}", other.objects);
    let out = watch.stop();
    let teardown =
        teardown.unwrap_or_else(|| panic!("no teardown of {cookie}: {:#?}", out.objects));
    assert_eq!(teardown["inode"], inode, "{teardown:#}");
    assert_pod(&teardown["pod"], &web);
    let start = out
        .of_type("netns")
        .into_iter()
        .find(|e| e["action"] == "teardown_start" && e["cookie"] == cookie)
        .unwrap_or_else(|| panic!("no teardown start: {:#?}", out.objects));
    assert_pod(&start["pod"], &web);
}

#[test]
fn doctor_names_the_pods_it_can_see_and_where_their_state_is() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let _app = start_sleeper(&mut node, &web, "app");
    let out = tracer(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "doctor failed: {text}");
    let line = |what: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no `{what}` line:\n{text}"))
            .to_string()
    };
    let state = line("runtime state");
    assert!(
        state.contains(&node.containerd_tasks_dir().display().to_string()),
        "{state}"
    );
    let named = line("containers and pods");
    // The node runs the sandbox and the app: both described, in the one pod.
    assert!(named.contains(" ok "), "{named}");
    assert!(named.contains("2 of 2 containers"), "{named}");
    assert!(named.contains("e.g. pod shop/web"), "{named}");
    node.down();
}

/// A cgroup the test makes below the unified hierarchy's root, with a process of the test's
/// in it; both removed when dropped.
struct MadeCgroup {
    dirs: Vec<std::path::PathBuf>,
    process: Owned,
}

impl MadeCgroup {
    /// `path` (relative, `/`-separated) with an USR1-ignoring sleeper moved into it.
    fn with_sleeper(path: &str) -> Self {
        let root = unified_root();
        let mut dirs: Vec<std::path::PathBuf> = std::path::Path::new(path)
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .map(|a| root.join(a))
            .collect();
        fs::create_dir_all(&dirs[0]).unwrap();
        let process = spawn_ignoring(Command::new("sleep").arg("60"), &[Signal::SIGUSR1]);
        fs::write(dirs[0].join("cgroup.procs"), process.pid().to_string()).unwrap();
        dirs.dedup();
        Self { dirs, process }
    }
}

impl Drop for MadeCgroup {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        for dir in &self.dirs {
            // A killed task leaves its cgroup a moment after it is reaped (EBUSY until then); a
            // parent another copy still uses is removed by that copy.
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Where the unified (cgroup v2) hierarchy is mounted.
fn unified_root() -> std::path::PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .expect("a cgroup2 mount")
        .into()
}

#[test]
fn a_cgroup_that_only_looks_like_a_pods_gets_no_pod() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let app = start_sleeper(&mut node, &web, "app");
    let evil = format!("tracer-evil-{}", std::process::id());
    // The running container's id in a cgroup of the test's making, in containerd's layout
    // and in the kubelet's.
    let copies = [
        MadeCgroup::with_sleeper(&format!("{evil}/k8s.io/{}", app.id)),
        MadeCgroup::with_sleeper(&format!(
            "{evil}/kubepods/besteffort/pod{}/{}",
            web.uid, app.id
        )),
    ];
    // A process calling itself a containerd shim, its working directory laid out like a
    // runtime's state, whose record names a pod and the cgroup of a process of the test's.
    let fake_id = format!("{:064x}", u64::from(std::process::id()) << 8 | 0x5e);
    let fake = MadeCgroup::with_sleeper(&format!("{evil}/fake/{fake_id}"));
    let fake_state = TempDir::new("fake-shim");
    let bundle = fake_state
        .0
        .join(format!("io.containerd.runtime.v2.task/k8s.io/{fake_id}"));
    fs::create_dir_all(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        format!(
            r#"{{"annotations": {{"io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "fake", "io.kubernetes.cri.sandbox-name": "fake",
            "io.kubernetes.cri.sandbox-namespace": "evil", "io.kubernetes.cri.sandbox-uid": "0a"}},
            "linux": {{"cgroupsPath": "/{evil}/fake/{fake_id}"}}}}"#
        ),
    )
    .unwrap();
    // A process's name is its executable's file name, a link's own included.
    let shim_exe = fake_state.0.join("containerd-shim-x");
    std::os::unix::fs::symlink("/bin/sleep", &shim_exe).unwrap();
    let shim = Owned(
        Command::new(&shim_exe)
            .arg("60")
            .current_dir(&bundle)
            .spawn()
            .unwrap(),
    );
    wait_for("the fake shim's name", Duration::from_secs(5), || {
        let comm = fs::read_to_string(format!("/proc/{}/comm", shim.pid())).ok()?;
        comm.starts_with("containerd-shim").then_some(())
    });
    let targets: Vec<u32> = copies
        .iter()
        .chain([&fake])
        .map(|c| c.process.pid())
        .chain([app.pid])
        .collect();
    let run = TracerRun::start(&["signals", "--json", "--signal", "USR1"]);
    for pid in &targets {
        send(*pid, Signal::SIGUSR1);
    }
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let target_of = |pid: u32| {
        out.of_type("signal")
            .into_iter()
            .find(|e| e["target"]["pid"] == pid)
            .unwrap_or_else(|| panic!("no signal to {pid}: {:#?}", out.objects))
            .clone()
    };
    for pid in &targets[..3] {
        let target = &target_of(*pid)["target"];
        assert_eq!(target["container"], Value::Null, "{target:#}");
        assert_eq!(target["pod"], Value::Null, "{target:#}");
    }
    // The genuine container is still named, and the look-alikes are counted.
    assert_identity(&target_of(app.pid)["target"], &app, "app", &web);
    assert_eq!(
        out.summary()["cgroups_unlike_their_runtime_record"],
        2,
        "{:#}",
        out.summary()
    );
    drop(shim);
    node.down();
}

#[test]
fn a_host_network_pod_does_not_own_the_hosts_namespace() {
    let mut node = CriNode::up();
    let host_pod = node.run_host_network_pod("kube-system", "agent", false);
    let agent = start_sleeper(&mut node, &host_pod, "agent");
    // The node's own namespace, where the hostNetwork pod runs.
    let node_netns = netns_inode(agent.pid);
    assert_eq!(
        node_netns,
        fs::metadata(node.netns_path()).unwrap().ino(),
        "the hostNetwork pod runs in the node's namespace"
    );
    block_port_in_netns_of(agent.pid);
    let run = TracerRun::start(&[
        "conntrack-drops",
        "--json",
        "--netns",
        &node_netns.to_string(),
    ]);
    assert_eq!(send_blocked_in_netns_of(agent.pid, 4), 4);
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let drops = out.of_type("conntrack_drop");
    assert_eq!(drops.len(), 4, "{:#?}", out.objects);
    for drop in drops {
        assert_eq!(drop["pod"], Value::Null, "{drop:#}");
    }
    assert_eq!(netns_summary(&out, node_netns)["pod"], Value::Null);
    node.down();
}

#[test]
fn cgroup_kill_of_a_container_from_the_host_names_the_writer() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let app = start_sleeper(&mut node, &web, "app");
    let own = fs::read_to_string(format!("/proc/{}/cgroup", app.pid)).unwrap();
    let relative = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("the container's unified cgroup");
    let kill_file = unified_root()
        .join(relative.trim_start_matches('/'))
        .join("cgroup.kill");
    // A shell on the host, started (and its pid known) before it writes.
    let mut writer = Owned(
        Command::new("sh")
            .args(["-c", &format!("read go; echo 1 > {}", kill_file.display())])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let run = TracerRun::start(&[
        "signals",
        "--json",
        "--pid",
        &app.pid.to_string(),
        "--signal",
        "KILL",
    ]);
    writeln!(writer.0.stdin.take().unwrap()).unwrap();
    let status = writer.0.wait().expect("the writer finished");
    assert!(status.success(), "{status:?}");
    wait_for("the container to die", Duration::from_secs(10), || {
        (!std::path::Path::new(&format!("/proc/{}", app.pid)).exists()).then_some(())
    });
    let out = run.stop();
    let kills = out.of_type("signal");
    assert_eq!(kills.len(), 1, "{:#?}", out.objects);
    let kill = kills[0];
    assert_eq!(kill["sender"]["pid"], writer.pid(), "{kill:#}");
    assert_eq!(kill["how"], "cgroup.kill", "{kill:#}");
    assert_eq!(kill["kernel_reason"], Value::Null, "{kill:#}");
    assert_eq!(kill["sender"]["container"], Value::Null, "{kill:#}");
    assert_identity(&kill["target"], &app, "app", &web);
    node.down();
}

#[test]
fn cri_node_leaves_nothing_behind() {
    let mut node = CriNode::up();
    let pod = node.run_pod("shop", "web", false);
    let app = start_sleeper(&mut node, &pod, "app");
    assert!(std::path::Path::new(&format!("/proc/{}", app.pid)).exists());
    // One pod removed the kubelet's way, one left for the teardown to find.
    node.remove_pod(&pod);
    let other = node.run_pod("shop", "other", false);
    let other_app = start_sleeper(&mut node, &other, "app");
    let footprint = node.footprint();
    node.down();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{}", other_app.pid)).exists() {
        assert!(std::time::Instant::now() < deadline, "container still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
}

#[test]
fn cri_node_is_removed_when_a_test_fails_half_way() {
    let mut footprint = None;
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut node = CriNode::up();
        let pod = node.run_pod("shop", "web", false);
        start_sleeper(&mut node, &pod, "app");
        footprint = Some(node.footprint());
        panic!("an assertion fails with a pod running");
    }));
    assert!(failed.is_err());
    let footprint = footprint.expect("the node came up");
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
}

#[test]
fn workload_filter_follows_the_pod_across_a_container_restart() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let other = node.run_pod("shop", "other", false);
    let app = start_sleeper(&mut node, &web, "app");
    let other_app = start_sleeper(&mut node, &other, "app");
    let run = TracerRun::start(&[
        "signals",
        "--json",
        "--pod",
        "web",
        "--namespace",
        "shop",
        "--signal",
        "USR1",
    ]);
    send(app.pid, Signal::SIGUSR1);
    send(other_app.pid, Signal::SIGUSR1);
    // The container crashes and the kubelet starts it again: a new container id and cgroup.
    send(app.pid, Signal::SIGKILL);
    let restarted = start_sleeper(&mut node, &web, "app");
    assert_ne!(restarted.id, app.id);
    // The tracer looks for new cgroups twice a second.
    std::thread::sleep(Duration::from_secs(2));
    send(restarted.pid, Signal::SIGUSR1);
    send(other_app.pid, Signal::SIGUSR1);
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let events = out.of_type("signal");
    let targets: Vec<&Value> = events.iter().map(|e| &e["target"]["pid"]).collect();
    assert_eq!(targets, [app.pid, restarted.pid], "{events:#?}");
    assert_identity(&events[0]["target"], &app, "app", &web);
    assert_identity(&events[1]["target"], &restarted, "app", &web);
}

#[test]
fn cri_node_of_a_killed_test_process_is_removed_by_the_next_node() {
    const TEST: &str = "cri_node_of_a_killed_test_process_is_removed_by_the_next_node";
    // In the helper process this test starts: bring a node up, say so, and wait to be killed.
    if let Some(report) = std::env::var_os("TRACER_CRI_HELPER_REPORT") {
        let mut node = CriNode::up();
        let pod = node.run_pod("shop", "web", false);
        start_sleeper(&mut node, &pod, "app");
        std::fs::write(report, node.footprint().name()).unwrap();
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let dir = TempDir::new("cri-helper");
    let report = dir.0.join("node");
    let mut helper = Owned(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--test-threads=1"])
            .env("TRACER_CRI_HELPER_REPORT", &report)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !report.exists() {
        assert!(
            Instant::now() < deadline,
            "the helper's node did not come up"
        );
        assert!(helper.0.try_wait().unwrap().is_none(), "the helper failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: no unwinding, no Drop, everything stays.
    helper.0.kill().unwrap();
    helper.0.wait().unwrap();
    let left = Footprint::named(&std::fs::read_to_string(&report).unwrap());
    assert!(!left.leftovers().is_empty());
    // The next node removes it; once that one is down too, nothing of either is left.
    drop(CriNode::up());
    assert_eq!(left.leftovers(), Vec::<String>::new());
}

#[test]
fn record_with_a_pod_filter_keeps_only_that_pods_signals_and_drops() {
    let mut node = CriNode::up();
    let web = node.run_pod("shop", "web", false);
    let db = node.run_pod("store", "db", false);
    let web_app = start_sleeper(&mut node, &web, "app");
    let db_app = start_sleeper(&mut node, &db, "postgres");
    let web_netns = netns_inode(web_app.pid);
    for app in [&web_app, &db_app] {
        block_port_in_netns_of(app.pid);
    }
    let host = sleeper(&[Signal::SIGUSR1]);
    let dir = TempDir::new("record-pod");
    let file = dir.0.join("web.jsonl");
    let run = TracerRun::start(&["record", "--pod", "web", "-o", file.to_str().unwrap()]);
    for pid in [web_app.pid, db_app.pid, host.pid()] {
        send(pid, Signal::SIGUSR1);
    }
    assert_eq!(send_blocked_in_netns_of(web_app.pid, 4), 4);
    assert_eq!(send_blocked_in_netns_of(db_app.pid, 3), 3);
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let objects: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |t: &str| -> Vec<&Value> { objects.iter().filter(|o| o["type"] == t).collect() };
    let signals = of("signal");
    assert_eq!(signals.len(), 1, "{signals:#?}");
    assert_eq!(signals[0]["target"]["pid"], web_app.pid);
    assert_pod(&signals[0]["target"]["pod"], &web);
    let drops = of("conntrack_drop");
    assert_eq!(drops.len(), 4, "{drops:#?}");
    assert!(drops.iter().all(|d| d["netns"] == web_netns), "{drops:#?}");
}

/// The series of an ignored SIGUSR1 to one of the processes of `pod`, of `workload`.
fn usr1_ignored<'a>(pod: &'a Pod, workload: &'a str) -> [(&'static str, &'a str); 6] {
    [
        ("signal", "SIGUSR1"),
        ("result", "ignored"),
        ("kernel_reason", "none"),
        ("k8s_namespace", pod.namespace.as_str()),
        ("k8s_pod", pod.name.as_str()),
        ("k8s_workload", workload),
    ]
}

#[test]
fn serve_labels_a_pods_series_and_drops_them_after_the_pod_is_gone() {
    let mut node = CriNode::up();
    // Named as a Deployment's and a StatefulSet's pods: the series name their workloads.
    let web = node.run_pod("shop", "web-5d78c9f6b-x2x9q", false);
    let web_app = start_sleeper(&mut node, &web, "app");
    let db = node.run_pod("shop", "db-0", false);
    let db_app = start_sleeper(&mut node, &db, "app");
    let grace = Duration::from_secs(2);
    let served = Served::start(&["--census-every", "1s", "--pod-grace", "2s"]);
    let sent = 3;
    for _ in 0..sent {
        send(web_app.pid, Signal::SIGUSR1);
        send(db_app.pid, Signal::SIGUSR1);
    }
    for (pod, workload) in [(&web, "web"), (&db, "db")] {
        let value = wait_for("the pods' series", Duration::from_secs(10), || {
            Scrape::of(&served.address)
                .value("tracer_signals_total", &usr1_ignored(pod, workload))
                .filter(|v| *v >= sent as f64)
        });
        assert_eq!(value, sent as f64, "{}", pod.name);
    }

    let removed = Instant::now();
    node.remove_pod(&web);
    let scrape = wait_for(
        "the gone pod's series to go",
        Duration::from_secs(20),
        || {
            let scrape = Scrape::of(&served.address);
            (scrape.series_with("tracer_signals_total", "k8s_pod", &web.name) == 0)
                .then_some(scrape)
        },
    );
    assert!(
        removed.elapsed() >= grace,
        "dropped {:?} after the pod, before the grace period",
        removed.elapsed()
    );
    // The pod still running keeps its series, older than the grace period by now.
    assert_eq!(
        scrape.value("tracer_signals_total", &usr1_ignored(&db, "db")),
        Some(sent as f64),
        "{}",
        scrape.text
    );
    let dropped = [("reason", "pod_gone")];
    assert!(
        scrape.value("tracer_series_dropped_total", &dropped) >= Some(1.0),
        "{}",
        scrape.text
    );
    let out = served.run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(ours_left_behind().is_empty());
}

#[test]
fn pod_globs_and_workloads_select_the_pods_of_a_deployment() {
    let mut node = CriNode::up();
    // Two pods of Deployment `web`, one of DaemonSet `web-api`, one of StatefulSet `db`, named
    // as Kubernetes names them.
    let names = [
        "web-5d78c9f6b-x2x9q",
        "web-5d78c9f6b-q7wz4",
        "web-api-bq7ws",
        "db-0",
    ];
    let apps: Vec<Container> = names
        .iter()
        .map(|name| {
            let pod = node.run_pod("shop", name, false);
            start_sleeper(&mut node, &pod, "app")
        })
        .collect();
    let pid_of = |name: &str| apps[names.iter().position(|n| *n == name).unwrap()].pid;
    let run = |selector: &[&str]| {
        let mut args = vec!["signals", "--json", "--signal", "USR2"];
        args.extend(selector);
        TracerRun::start(&args)
    };
    let runs = [
        (run(&["--pod", "web-*"]), &names[..3]),
        (run(&["--workload", "web"]), &names[..2]),
        (
            run(&["--workload", "db", "--namespace", "shop"]),
            &names[3..],
        ),
        (
            run(&["--container", "ap?", "--pod", "*-q7wz4"]),
            &names[1..2],
        ),
    ];
    // A workload that does not exist yet: said on stderr, and traced once it starts.
    let mut late = run(&["--workload", "late"]);
    assert!(
        late.stderr_lines()
            .iter()
            .any(|l| l.contains("nothing on this node matches --workload 'late' yet")),
        "{:#?}",
        late.stderr_lines()
    );
    for app in &apps {
        send(app.pid, Signal::SIGUSR2);
    }
    for (run, expected) in runs {
        let out = run.stop();
        assert!(out.status.success(), "{}", out.stderr);
        let mut targets: Vec<u64> = out
            .of_type("signal")
            .iter()
            .filter_map(|e| e["target"]["pid"].as_u64())
            .collect();
        targets.sort_unstable();
        let mut want: Vec<u64> = expected.iter().map(|n| pid_of(n) as u64).collect();
        want.sort_unstable();
        assert_eq!(targets, want, "{expected:?}: {:#?}", out.objects);
    }
    let late_pod = node.run_pod("shop", "late-7c9dbf5f4-wq2lx", false);
    let late_app = start_sleeper(&mut node, &late_pod, "app");
    // The workload filter learns the new cgroup within a second or so: signal until it does.
    let deadline = Instant::now() + Duration::from_secs(15);
    let seen = loop {
        send(late_app.pid, Signal::SIGUSR2);
        let seen = late.wait_for_json(Duration::from_millis(500), |e| {
            e["type"] == "signal" && e["target"]["pid"] == late_app.pid
        });
        if seen.is_some() || Instant::now() > deadline {
            break seen;
        }
    };
    let seen = seen.expect("the late workload's signal");
    assert_eq!(seen["target"]["pod"]["name"], "late-7c9dbf5f4-wq2lx");
    let out = late.stop();
    assert!(out
        .of_type("signal")
        .iter()
        .all(|e| e["target"]["pid"] == late_app.pid));
}
