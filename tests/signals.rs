//! `tracer signals` against the real kernel: senders, ancestry, pid namespaces, filters, the
//! OOM killer and a signal storm, each checked against what the test itself created.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    process::Command,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracer_tests::*;

fn pids(values: &[Value]) -> Vec<u64> {
    values.iter().filter_map(|a| a["pid"].as_u64()).collect()
}

#[test]
fn sender_and_its_ancestry_are_captured_before_it_exits() {
    let dir = TempDir::new("ancestry");
    // shell A -> shell B -> a script with a distinctive name, which sends SIGTERM then SIGKILL.
    // A script run through its #! line gets the script's file name as comm.
    let killer = dir.0.join("killer-7f3a");
    fs::write(&killer, "#!/bin/sh\nkill -TERM \"$1\"\nkill -KILL \"$1\"\n").unwrap();
    fs::set_permissions(&killer, fs::Permissions::from_mode(0o755)).unwrap();
    let b_pid_file = dir.0.join("b.pid");
    let killer_pid_file = dir.0.join("killer.pid");

    let mut target = sleeper(&[Signal::SIGTERM]);
    let run = TracerRun::start(&["signals", "--json", "--pid", &target.pid().to_string()]);
    let script_b = format!(
        "echo $$ > {b}; {k} {t} & echo $! > {kp}; wait",
        b = b_pid_file.display(),
        k = killer.display(),
        t = target.pid(),
        kp = killer_pid_file.display()
    );
    let mut shell_a = Owned(
        Command::new("sh")
            .args(["-c", &format!("sh -c '{script_b}'; true")])
            .spawn()
            .unwrap(),
    );
    shell_a
        .wait_timeout(Duration::from_secs(20))
        .expect("the kill chain finished");
    let status = target
        .wait_timeout(Duration::from_secs(10))
        .expect("target was killed");
    assert_eq!(status.signal(), Some(9));
    let a_pid = shell_a.pid() as u64;
    let b_pid: u64 = fs::read_to_string(&b_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let killer_pid: u64 = fs::read_to_string(&killer_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Every process of the chain has exited before the tracer's output is read.
    assert!(!std::path::Path::new(&format!("/proc/{killer_pid}")).exists());
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let events = out.of_type("signal");
    let signals: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["signal"].as_str().unwrap(), e["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        signals,
        [("SIGTERM", "ignored"), ("SIGKILL", "delivered")],
        "{events:#?}"
    );
    let mut expected_ancestry = vec![b_pid, a_pid, std::process::id() as u64];
    expected_ancestry.extend(ancestry_of(std::process::id()).into_iter().map(u64::from));
    for e in &events {
        assert_eq!(e["sender"]["pid"], killer_pid, "{e:#}");
        assert_eq!(e["sender"]["comm"], "killer-7f3a", "{e:#}");
        assert_eq!(e["target"]["pid"], target.pid());
        assert_eq!(e["code"], "kill");
        let ancestry = e["ancestry"].as_array().unwrap();
        assert_eq!(pids(ancestry), expected_ancestry, "{e:#}");
        assert_eq!(ancestry.last().unwrap()["pid"], 1);
        assert_eq!(ancestry[0]["comm"], "sh");
        assert_eq!(e["ancestry_truncated"], false);
    }
    // The summary explains the 137 the target's parent would see.
    let exit_codes = out.summary()["exit_codes"].to_string();
    assert!(
        exit_codes.contains("137") && exit_codes.contains("killer-7f3a"),
        "{exit_codes}"
    );
}

/// The host pid of the process whose pid inside its namespace is `ns_pid`, among the
/// descendants of `root`.
fn find_in_pid_namespace(root: u32, ns_pid: u32) -> Option<u32> {
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            ancestry_of(pid).contains(&root)
                && status_field(pid, "NSpid:")
                    .is_some_and(|ns| ns.split_whitespace().last() == Some(&ns_pid.to_string()))
        })
}

#[test]
fn target_in_a_pid_namespace_has_both_pids() {
    // init (sh) is pid 1 in the new namespace; the sleep it starts is pid 2.
    let mut holder = Owned(
        Command::new("unshare")
            .args(["-fp", "--mount-proc", "sh", "-c", "sleep 300 & wait"])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleeper_pid = loop {
        if let Some(pid) = find_in_pid_namespace(holder.pid(), 2) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "sleep in the new pid namespace not found"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = TracerRun::start(&["signals", "--json", "--pid", &sleeper_pid.to_string()]);
    send(sleeper_pid, Signal::SIGTERM);
    holder
        .wait_timeout(Duration::from_secs(10))
        .expect("namespace ended with its sleep");
    let out = run.stop();
    let events = out.of_type("signal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["target"]["pid"], sleeper_pid);
    assert_eq!(events[0]["target"]["ns_pid"], 2);
    assert_eq!(
        events[0]["sender"]["ns_pid"],
        Value::Null,
        "the sender is in the host namespace"
    );
}

#[test]
fn pid_filter_holds_under_a_storm_to_other_processes() {
    let target = sleeper(&[Signal::SIGUSR1]);
    let other = sleeper(&[Signal::SIGUSR1]);
    let run = TracerRun::start(&["signals", "--json", "--pid", &target.pid().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..20_000 {
        send(other.pid(), Signal::SIGUSR1);
        if i % 5_000 == 0 {
            send(target.pid(), Signal::SIGUSR1);
        }
        assert!(Instant::now() < deadline);
    }
    let out = run.stop();
    let events = out.of_type("signal");
    assert_eq!(events.len(), 4, "only the 4 signals to the target");
    assert!(events.iter().all(|e| e["target"]["pid"] == target.pid()));
    assert!(events.iter().all(|e| e["result"] == "ignored"));
    assert_eq!(out.summary()["lost"], 0);
}

#[test]
fn signal_filter_and_failed_only() {
    let target = sleeper(&[Signal::SIGUSR1, Signal::SIGUSR2]);
    let pid = target.pid().to_string();
    let run = TracerRun::start(&["signals", "--json", "--pid", &pid, "--signal", "USR2"]);
    send(target.pid(), Signal::SIGUSR1);
    send(target.pid(), Signal::SIGUSR2);
    let out = run.stop();
    let names: Vec<&Value> = out.of_type("signal").iter().map(|e| &e["signal"]).collect();
    assert_eq!(names, ["SIGUSR2"]);

    drop(target);

    let mut target = sleeper(&[Signal::SIGUSR1]);
    let pid = target.pid().to_string();
    let run = TracerRun::start(&["signals", "--json", "--pid", &pid, "--failed"]);
    send(target.pid(), Signal::SIGUSR1); // ignored: not delivered
    send(target.pid(), Signal::SIGUSR2); // delivered (and fatal)
    let status = target
        .wait_timeout(Duration::from_secs(10))
        .expect("target died of SIGUSR2");
    assert_eq!(status.signal(), Some(12));
    let out = run.stop();
    let results: Vec<&Value> = out.of_type("signal").iter().map(|e| &e["result"]).collect();
    assert_eq!(results, ["ignored"]);
}

/// A memory cgroup (v1 or v2) the test creates and removes.
struct MemoryCgroup {
    dir: std::path::PathBuf,
    relative: String,
}

impl MemoryCgroup {
    fn new(limit_bytes: u64) -> Self {
        let name = format!("tracer-test-oom-{}", std::process::id());
        let (root, limit_file) =
            if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
                ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
            } else {
                ("/sys/fs/cgroup", "memory.max")
            };
        let dir = std::path::Path::new(root).join(&name);
        fs::create_dir_all(&dir).expect("creating a memory cgroup");
        let cgroup = Self {
            dir,
            relative: format!("/{name}"),
        };
        fs::write(cgroup.dir.join(limit_file), limit_bytes.to_string()).expect("setting the limit");
        let _ = fs::write(cgroup.dir.join("memory.swappiness"), "0");
        cgroup
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn oom_kill_is_reported_as_the_oom_killer_not_the_allocator() {
    let cgroup = MemoryCgroup::new(32 << 20);
    let procs = cgroup.dir.join("cgroup.procs");
    // The hog joins the cgroup, then grows until the OOM killer takes it.
    let script = format!("echo $$ > {}; exec tail /dev/zero", procs.display());
    let run = TracerRun::start(&["signals", "--json", "--signal", "KILL"]);
    let mut hog = Owned(Command::new("sh").args(["-c", &script]).spawn().unwrap());
    let status = hog
        .wait_timeout(Duration::from_secs(60))
        .expect("the OOM killer took the hog");
    assert_eq!(status.signal(), Some(9), "hog ended with {status:?}");
    let out = run.stop();
    let kills: Vec<&Value> = out
        .of_type("signal")
        .into_iter()
        .filter(|e| e["target"]["pid"] == hog.pid())
        .collect();
    assert_eq!(kills.len(), 1, "{:#?}", out.objects);
    let e = kills[0];
    assert_eq!(e["kernel_reason"], "oom", "{e:#}");
    assert_eq!(
        e["sender"],
        Value::Null,
        "the allocating task is not a sender: {e:#}"
    );
    assert_eq!(e["oom"]["memcg"], cgroup.relative.as_str(), "{e:#}");
    assert!(e["oom"]["allocating"]["pid"].is_u64());
    assert_eq!(e["result"], "delivered");
    let exit_codes = out.summary()["exit_codes"].to_string();
    assert!(exit_codes.contains("OOM killer"), "{exit_codes}");
}

#[test]
fn storm_of_100k_signals_is_counted_exactly_or_loss_is_reported() {
    const N: u64 = 100_000;
    let target = sleeper(&[Signal::SIGUSR1]);
    let run = TracerRun::start(&[
        "signals",
        "--json",
        "--pid",
        &target.pid().to_string(),
        "--buffer-mb",
        "256",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..N {
        send(target.pid(), Signal::SIGUSR1);
        assert!(Instant::now() < deadline, "storm took too long");
    }
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let events = out.of_type("signal").len() as u64;
    let lost = out.summary()["lost"].as_u64().unwrap();
    assert_eq!(events + lost, N, "events {events} + lost {lost}");
    assert_eq!(out.summary()["events"], events);
    assert!(events > 0);
}
