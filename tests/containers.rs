//! Container and pod identity on a real containerd driven through the CRI API (as a kubelet
//! drives it): every expectation comes from what the runtime returned to the test.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracer_tests::{
    cri::{self, Container, CriNode, Footprint, Pod},
    send, Owned, TempDir, TracerRun,
};

/// A container's main process that ignores SIGUSR1 and SIGUSR2 (the disposition survives exec),
/// so that the tests' signals leave it running.
const SLEEPER: &[&str] = &["/bin/sh", "-c", "trap '' USR1 USR2; exec sleep 3600"];

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
    let app = node.start_container(&web, "app", SLEEPER);
    let run = TracerRun::start(&["signals", "--json", "--pid", &app.pid.to_string()]);
    let human = TracerRun::start(&["signals", "--pid", &app.pid.to_string()]);
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
    let killer = node.start_container(&client, "killer", SLEEPER);
    // The tracer starts before the target's pod exists: its cgroup is unknown at start-up.
    let run = TracerRun::start(&["signals", "--json", "--signal", "USR2"]);
    let db = node.run_pod("store", "db", false);
    let postgres = node.start_container(&db, "postgres", SLEEPER);
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
    assert_identity(&e["sender"], &killer, "killer", &client);
    assert_identity(&e["target"], &postgres, "postgres", &db);
}

#[test]
fn cri_node_leaves_nothing_behind() {
    let mut node = CriNode::up();
    let pod = node.run_pod("shop", "web", false);
    let app = node.start_container(&pod, "app", SLEEPER);
    assert!(std::path::Path::new(&format!("/proc/{}", app.pid)).exists());
    // One pod removed the kubelet's way, one left for the teardown to find.
    node.remove_pod(&pod);
    let other = node.run_pod("shop", "other", false);
    let other_app = node.start_container(&other, "app", SLEEPER);
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
        node.start_container(&pod, "app", SLEEPER);
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
    let app = node.start_container(&web, "app", SLEEPER);
    let other_app = node.start_container(&other, "app", SLEEPER);
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
    let restarted = node.start_container(&web, "app", SLEEPER);
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
        node.start_container(&pod, "app", SLEEPER);
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
