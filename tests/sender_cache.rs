//! The kernel program sends a sender's description (executable, ancestry) only when it differs
//! from what the same slot of the same CPU sent last; userspace fills in the rest. These tests
//! pin every sender to one CPU, so that consecutive signals go through the same slot, and check
//! each signal's description against what the test made the sender be at that moment: after
//! an exec, in a process that reuses a pid, after the sender's parent died, after its
//! executable was renamed.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracer_tests::*;

/// The CPU every sender runs on.
const CPU: &str = "0";

/// A copy of /bin/sh under another name: a second executable that can send signals. (Short
/// directory tags keep each path component within what the kernel program captures.)
fn shell_copy(dir: &TempDir, name: &str) -> PathBuf {
    let copy = dir.0.join(name);
    fs::copy("/bin/sh", &copy).expect("copying /bin/sh");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// Whether `captured` (the path the kernel walked up to its filesystem's root) names `real`.
fn names(captured: &Value, real: &Path) -> bool {
    let real = fs::canonicalize(real).unwrap();
    captured
        .as_str()
        .is_some_and(|c| c.starts_with('/') && real.to_str().unwrap().ends_with(c))
}

/// The signals to `target`, in order.
fn signals_to(out: &TracerOutput, target: u32) -> Vec<Value> {
    out.of_type("signal")
        .into_iter()
        .filter(|e| e["target"]["pid"] == target && e["signal"] == "SIGUSR1")
        .cloned()
        .collect()
}

fn ancestry_pids(e: &Value) -> Vec<u64> {
    e["ancestry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["pid"].as_u64())
        .collect()
}

/// Waits for `path` to be written by a test process and returns its content as a pid.
fn pid_in(path: &Path) -> u32 {
    wait_for(
        &format!("{}", path.display()),
        Duration::from_secs(20),
        || fs::read_to_string(path).ok()?.trim().parse().ok(),
    )
}

#[test]
fn a_sender_that_execs_between_two_signals_is_described_anew() {
    let dir = TempDir::new("cx");
    let copy = shell_copy(&dir, "sender-after-exec");
    let target = sleeper(&[Signal::SIGUSR1]);
    let t = target.pid();
    let run = TracerRun::start(&["signals", "--json", "--pid", &t.to_string()]);
    // Two signals from sh (the second one from a cached slot), then the same process execs the
    // copy, which sends a third.
    let script = format!(
        "kill -USR1 {t}; kill -USR1 {t}; exec {copy} -c 'kill -USR1 {t}'",
        copy = copy.display()
    );
    let mut sender = Owned(
        Command::new("taskset")
            .args(["-c", CPU, "sh", "-c", &script])
            .spawn()
            .unwrap(),
    );
    assert!(sender.wait_timeout(Duration::from_secs(20)).is_some());
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let events = signals_to(&out, t);
    assert_eq!(events.len(), 3, "{events:#?}");
    let expected_ancestry: Vec<u64> = [std::process::id()]
        .into_iter()
        .chain(ancestry_of(std::process::id()))
        .map(u64::from)
        .collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sender"]["pid"], sender.pid(), "{e:#}");
        assert_eq!(ancestry_pids(e), expected_ancestry, "signal {i}: {e:#}");
    }
    assert!(
        names(&events[0]["sender"]["exe"], Path::new("/bin/sh")),
        "{events:#?}"
    );
    assert_eq!(events[1]["sender"]["exe"], events[0]["sender"]["exe"]);
    // The second signal came without a description and took the cached one (with the cache
    // bypassed, every record would carry its own).
    assert!(
        out.summary()["sender_descriptions_reused"]
            .as_u64()
            .unwrap()
            >= 1,
        "{}",
        out.summary()
    );
    assert!(names(&events[2]["sender"]["exe"], &copy), "{events:#?}");
    assert_eq!(events[2]["sender"]["comm"], "sender-after-ex");
}

#[test]
fn a_pid_reused_by_another_process_is_described_as_that_process() {
    let dir = TempDir::new("cp");
    let copy = shell_copy(&dir, "pid-reuser");
    let pid_file = dir.0.join("sender.pid");
    let target = sleeper(&[Signal::SIGUSR1]);
    let t = target.pid();
    let run = TracerRun::start(&["signals", "--json", "--pid", &t.to_string()]);
    let mut first = Owned(
        Command::new("taskset")
            .args(["-c", CPU, "sh", "-c", &format!("kill -USR1 {t}")])
            .spawn()
            .unwrap(),
    );
    assert!(first.wait_timeout(Duration::from_secs(20)).is_some());
    let first = first.pid();
    // The same pid for another executable under one more parent: a shell sets the next pid
    // (ns_last_pid, in the initial pid namespace) and starts the copy, which sends. Other
    // processes of the machine may take the pid first, so try a few times.
    let script = format!(
        "echo {last} > /proc/sys/kernel/ns_last_pid; \
         {copy} -c 'echo $$ > {pidf}; kill -USR1 {t}'; true",
        last = first - 1,
        copy = copy.display(),
        pidf = pid_file.display()
    );
    let mut reused = false;
    for _ in 0..50 {
        let _ = fs::remove_file(&pid_file);
        let mut parent = Owned(
            Command::new("taskset")
                .args(["-c", CPU, "sh", "-c", &script])
                .spawn()
                .unwrap(),
        );
        assert!(parent.wait_timeout(Duration::from_secs(20)).is_some());
        if pid_in(&pid_file) == first {
            reused = true;
            break;
        }
    }
    assert!(reused, "pid {first} not reused within 50 tries");
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let events = signals_to(&out, t);
    let own: Vec<u64> = [std::process::id()]
        .into_iter()
        .chain(ancestry_of(std::process::id()))
        .map(u64::from)
        .collect();
    let first_event = &events[0];
    assert_eq!(first_event["sender"]["pid"], first, "{events:#?}");
    assert!(names(&first_event["sender"]["exe"], Path::new("/bin/sh")));
    assert_eq!(ancestry_pids(first_event), own);
    // The last signal is the one from the process that got the pid back; those between came
    // from the tries that got another pid.
    let last = events.last().unwrap();
    assert_eq!(last["sender"]["pid"], first, "{events:#?}");
    assert!(names(&last["sender"]["exe"], &copy), "{last:#}");
    assert_eq!(last["sender"]["comm"], "pid-reuser");
    let ancestry = ancestry_pids(last);
    assert_eq!(ancestry.len(), own.len() + 1, "{last:#}");
    assert_eq!(ancestry[1..], own[..], "{last:#}");
    assert_eq!(last["ancestry"][0]["comm"], "sh");
}

#[test]
fn a_sender_whose_parent_dies_between_two_signals_has_its_new_parent() {
    let dir = TempDir::new("cr");
    let (sender_pid, go, parent_exit) = (
        dir.0.join("sender.pid"),
        dir.0.join("go"),
        dir.0.join("parent-exit"),
    );
    let target = sleeper(&[Signal::SIGUSR1]);
    let t = target.pid();
    let run = TracerRun::start(&["signals", "--json", "--pid", &t.to_string()]);
    // parent: starts the sender in the background, waits for the word to exit.
    // sender: one signal, waits for `go`, another signal. All bounded by a 20 s deadline.
    let wait_file = |f: &Path| {
        format!(
            "i=0; while [ ! -e {} ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done",
            f.display()
        )
    };
    let sender = format!("kill -USR1 {t}; {}; kill -USR1 {t}", wait_file(&go));
    let parent_script = format!(
        "taskset -c {CPU} sh -c '{sender}' & echo $! > {pidf}; {wait}",
        pidf = sender_pid.display(),
        wait = wait_file(&parent_exit)
    );
    let mut parent = Owned(
        Command::new("sh")
            .args(["-c", &parent_script])
            .spawn()
            .unwrap(),
    );
    let s = pid_in(&sender_pid);
    let _sender = PidGuard::new(s);
    // The first signal is out before the parent goes.
    let mut run = run;
    run.wait_for_json(Duration::from_secs(20), |e| {
        e["type"] == "signal" && e["sender"]["pid"] == s
    })
    .expect("the first signal");
    fs::write(&parent_exit, "").unwrap();
    assert!(parent.wait_timeout(Duration::from_secs(20)).is_some());
    let new_parent = wait_for("the sender's reparenting", Duration::from_secs(10), || {
        parent_of(s).filter(|&p| p != parent.pid())
    });
    let expected_after: Vec<u64> = [new_parent]
        .into_iter()
        .chain(ancestry_of(new_parent))
        .map(u64::from)
        .collect();
    fs::write(&go, "").unwrap();
    wait_for("the sender to exit", Duration::from_secs(20), || {
        (!Path::new(&format!("/proc/{s}")).exists()
            || status_field(s, "State:").is_some_and(|st| st.starts_with('Z')))
        .then_some(())
    });
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let events = signals_to(&out, t);
    assert_eq!(events.len(), 2, "{events:#?}");
    let before: Vec<u64> = [parent.pid(), std::process::id()]
        .into_iter()
        .chain(ancestry_of(std::process::id()))
        .map(u64::from)
        .collect();
    assert_eq!(ancestry_pids(&events[0]), before, "{:#}", events[0]);
    assert_eq!(ancestry_pids(&events[1]), expected_after, "{:#}", events[1]);
}

/// The last component of a captured executable path.
fn file_name(e: &Value) -> &str {
    let exe = e["sender"]["exe"].as_str().unwrap_or_default();
    exe.rsplit('/').next().unwrap_or_default()
}

#[test]
fn executable_names_of_every_length_and_renamed_ones_are_captured_as_the_kernel_names_them() {
    // A name shorter than 40 bytes is kept inside its dentry on this kernel and read with
    // plain loads; a longer one through a helper. Each path component is captured as at most
    // 31 bytes. Each sender signals, renames its own executable (a shorter name left in place
    // of a longer one), and signals again from the same slot.
    let dir = TempDir::new("cn");
    let target = sleeper(&[Signal::SIGUSR1]);
    let t = target.pid();
    let run = TracerRun::start(&["signals", "--json", "--pid", &t.to_string()]);
    let mut expected = Vec::new();
    for (len, renamed) in [
        (8, "r"),
        (31, "s"),
        (32, "t"),
        (39, "u"),
        (40, "v"),
        (50, "w"),
    ] {
        let name = format!("{len:02}{}", "x".repeat(len - 2));
        let copy = shell_copy(&dir, &name);
        let renamed = dir.0.join(renamed);
        let script = format!(
            "kill -USR1 {t}; mv {copy} {renamed}; kill -USR1 {t}",
            copy = copy.display(),
            renamed = renamed.display()
        );
        let mut sender = Owned(
            Command::new("taskset")
                .args(["-c", CPU])
                .arg(&copy)
                .args(["-c", &script])
                .spawn()
                .unwrap(),
        );
        assert!(sender.wait_timeout(Duration::from_secs(20)).is_some());
        assert!(renamed.exists(), "{} was not renamed", copy.display());
        expected.push((sender.pid(), name, renamed));
    }
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let events = signals_to(&out, t);
    for (pid, name, renamed) in &expected {
        let sent: Vec<&Value> = events
            .iter()
            .filter(|e| e["sender"]["pid"] == *pid)
            .collect();
        assert_eq!(sent.len(), 2, "{name}: {events:#?}");
        assert_eq!(
            file_name(sent[0]),
            &name[..name.len().min(31)],
            "{:#}",
            sent[0]
        );
        let renamed = renamed.file_name().unwrap().to_str().unwrap();
        assert_eq!(file_name(sent[1]), renamed, "{:#}", sent[1]);
        // The rest of the path is the directory's, unchanged.
        let dir_of = |e: &Value| {
            let exe = e["sender"]["exe"].as_str().unwrap().to_string();
            exe[..exe.rfind('/').unwrap()].to_string()
        };
        assert_eq!(dir_of(sent[0]), dir_of(sent[1]));
        assert!(
            fs::canonicalize(&dir.0)
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(&dir_of(sent[0])),
            "{:#}",
            sent[0]
        );
    }
}

/// Kills a sender the test started through a shell when dropped, unless it is gone (its pid
/// then names another process, told apart by its start time).
struct PidGuard(u32, Option<String>);

impl PidGuard {
    fn new(pid: u32) -> Self {
        Self(pid, start_time(pid))
    }
}

/// Field 22 of /proc/PID/stat: the process's start time.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(19).map(str::to_string)
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        if self.1.is_some() && start_time(self.0) == self.1 {
            // SAFETY: plain kill(2) of the process this guard was made for.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}
