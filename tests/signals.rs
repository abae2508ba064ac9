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
        Self::named(
            &format!("tracer-test-oom-{}", std::process::id()),
            limit_bytes,
        )
    }

    fn named(name: &str, limit_bytes: u64) -> Self {
        let (root, limit_file) =
            if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
                ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
            } else {
                ("/sys/fs/cgroup", "memory.max")
            };
        let dir = std::path::Path::new(root).join(name);
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

/// Characters that reorder or hide what a terminal shows (bidi controls, zero-width
/// characters), besides control characters.
fn reorders_or_hides(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}'..='\u{200f}')
        || matches!(c, '\u{061c}' | '\u{feff}')
}

#[test]
fn hostile_cgroup_and_process_names_reach_the_terminal_escaped() {
    // Names the owner of a delegated subtree, or any process, may choose: a screen clear, a
    // colour, a right-to-left override (`exe.jpg` shows as `gpj.exe` reversed) and an isolate.
    let id = std::process::id();
    let name = format!("tracer-test-\x1b[2J\x1b[31m\u{202e}gpj.exe\u{2066}-{id}");
    let shown_name =
        format!("tracer-test-\\u{{1b}}[2J\\u{{1b}}[31m\\u{{202e}}gpj.exe\\u{{2066}}-{id}");
    let memory = MemoryCgroup::named(&name, 32 << 20);
    // The process also joins a cgroup v2 group of that name (when memory is on cgroup v1),
    // which the tracer walks to name workloads.
    let unified =
        (memory.dir.parent() != Some(cgroup2_root().as_path())).then(|| KillGroup::named(&name));
    let dir = TempDir::new("hostile");
    let comm = "t\u{202e}\x1b[7mail";
    let shown_comm = "t\\u{202e}\\u{1b}[7mail";
    let hog_exe = dir.0.join(comm);
    let tail = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("tail"))
        .find(|path| path.exists())
        .expect("tail (coreutils) on PATH");
    std::os::unix::fs::symlink(tail, &hog_exe).unwrap();

    let human = TracerRun::start(&["signals", "--signal", "KILL", "-o", "text"]);
    let json = TracerRun::start(&["signals", "--signal", "KILL", "--json"]);
    // The hog joins the groups, then grows until the OOM killer takes it.
    let script = r#"echo $$ > "$1"; [ -z "$2" ] || echo $$ > "$2"; exec "$3" /dev/zero"#;
    let mut hog = Owned(
        Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(memory.dir.join("cgroup.procs"))
            .arg(
                unified
                    .as_ref()
                    .map_or(std::path::PathBuf::new(), |g| g.0.join("cgroup.procs")),
            )
            .arg(&hog_exe)
            .spawn()
            .unwrap(),
    );
    let status = hog
        .wait_timeout(Duration::from_secs(60))
        .expect("the OOM killer took the hog");
    assert_eq!(status.signal(), Some(9), "hog ended with {status:?}");
    let (human, json) = (human.stop(), json.stop());
    let pid = hog.pid();

    // The terminal: no character that acts on it or reorders it, anywhere in the output,
    // and the kill's lines exactly as expected.
    for line in &human.stdout {
        assert!(
            !line.chars().any(reorders_or_hides),
            "raw in output: {line:?}"
        );
    }
    let head = human
        .stdout
        .iter()
        .position(|l| l.contains(&format!("-> {shown_comm}({pid})")))
        .unwrap_or_else(|| panic!("no kill of the hog: {:#?}", human.stdout));
    assert!(
        human.stdout[head].contains("SIGKILL"),
        "{}",
        human.stdout[head]
    );
    let oom_line = format!(
        "    OOM kill: memory cgroup /{shown_name} hit its limit while {shown_comm}({pid}) was allocating"
    );
    assert!(
        human.stdout[head..].iter().take(4).any(|l| *l == oom_line),
        "expected {oom_line:?} in {:#?}",
        &human.stdout[head..]
    );

    // JSON: every line valid, and the same escaped names.
    for line in &json.stdout {
        assert!(
            !line.chars().any(reorders_or_hides),
            "raw in JSON: {line:?}"
        );
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
    let kill = json
        .of_type("signal")
        .into_iter()
        .find(|e| e["target"]["pid"] == pid)
        .unwrap_or_else(|| panic!("{:#?}", json.objects));
    assert_eq!(kill["target"]["comm"], shown_comm, "{kill:#}");
    assert_eq!(kill["oom"]["memcg"], format!("/{shown_name}"), "{kill:#}");
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

/// A siginfo as rt_sigqueueinfo(2) and its kin take it (128 bytes): signo, errno, code, ...
fn siginfo(signo: i32, code: i32) -> [i32; 32] {
    let mut info = [0; 32];
    info[0] = signo;
    info[2] = code;
    info
}

/// The syscalls that let a process choose the si_code.
#[derive(Clone, Copy, Debug)]
enum Queue {
    Sigqueue,
    TgSigqueue,
    Pidfd,
}

/// Sends `signo` with si_code `code` to thread `tid` of process `pid` the `way` given.
fn queue(way: Queue, pid: u32, tid: u32, signo: i32, code: i32) {
    let info = siginfo(signo, code);
    // SAFETY: plain syscalls with a valid siginfo buffer.
    let rc = unsafe {
        match way {
            Queue::Sigqueue => libc::syscall(libc::SYS_rt_sigqueueinfo, pid, signo, info.as_ptr()),
            Queue::TgSigqueue => {
                libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, signo, info.as_ptr())
            }
            Queue::Pidfd => {
                let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
                assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
                let rc = libc::syscall(libc::SYS_pidfd_send_signal, fd, signo, info.as_ptr(), 0);
                libc::close(fd as i32);
                rc
            }
        }
    };
    assert_eq!(
        rc,
        0,
        "{way:?} of {signo} with code {code}: {}",
        std::io::Error::last_os_error()
    );
}

fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The test process's own ancestry, as the tracer should report it for a signal it sends.
fn own_ancestry() -> Vec<u64> {
    ancestry_of(std::process::id())
        .into_iter()
        .map(u64::from)
        .collect()
}

#[test]
fn forged_codes_name_their_sender() {
    let me = std::process::id();
    let target = sleeper(&[Signal::SIGUSR1]);
    let mut victim = sleeper(&[]);
    let run = TracerRun::start(&["signals", "--json", "--sender-pid", &me.to_string()]);
    let codes = [
        (-1, "sigqueue", "SI_QUEUE"),
        (-2, "timer", "SI_TIMER"),
        (-3, "mesgq", "SI_MESGQ"),
        (-4, "asyncio", "SI_ASYNCIO"),
        (-5, "sigio", "SI_SIGIO"),
    ];
    let ways = [
        (Queue::Sigqueue, "sigqueue"),
        (Queue::TgSigqueue, "tgsigqueue"),
        (Queue::Pidfd, "pidfd"),
    ];
    for (way, _) in ways {
        for (code, ..) in codes {
            queue(way, target.pid(), target.pid(), libc::SIGUSR1, code);
        }
    }
    // A SIGKILL dressed as a timer's.
    queue(
        Queue::Sigqueue,
        victim.pid(),
        victim.pid(),
        libc::SIGKILL,
        -2,
    );
    let status = victim
        .wait_timeout(Duration::from_secs(10))
        .expect("the victim was killed");
    assert_eq!(status.signal(), Some(9));
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let ancestry = own_ancestry();
    let to_target: Vec<&Value> = out
        .of_type("signal")
        .into_iter()
        .filter(|e| e["target"]["pid"] == target.pid())
        .collect();
    let expected: Vec<(&str, i32)> = ways
        .iter()
        .flat_map(|(_, how)| codes.iter().map(move |(code, ..)| (*how, *code)))
        .collect();
    assert_eq!(to_target.len(), expected.len(), "{to_target:#?}");
    for (e, (how, code)) in to_target.iter().zip(&expected) {
        let (_, name, _) = codes.iter().find(|(c, ..)| c == code).unwrap();
        assert_eq!(e["sender"]["pid"], me, "{e:#}");
        assert_eq!(e["how"], *how, "{e:#}");
        assert_eq!(e["code"], *name, "{e:#}");
        assert_eq!(e["si_code"], *code, "{e:#}");
        assert_eq!(e["code_from"], "sender", "{e:#}");
        assert_eq!(e["kernel_reason"], Value::Null, "{e:#}");
        assert_eq!(pids(e["ancestry"].as_array().unwrap()), ancestry, "{e:#}");
    }
    let kills: Vec<&Value> = out
        .of_type("signal")
        .into_iter()
        .filter(|e| e["target"]["pid"] == victim.pid())
        .collect();
    assert_eq!(kills.len(), 1, "{kills:#?}");
    let kill = kills[0];
    assert_eq!(
        (&kill["sender"]["pid"], &kill["code"], &kill["code_from"]),
        (
            &Value::from(me),
            &Value::from("timer"),
            &Value::from("sender")
        ),
        "{kill:#}"
    );
    assert_eq!(kill["kernel_reason"], Value::Null, "{kill:#}");
    let summary = out.summary();
    assert_eq!(summary["by_sender"]["process (sigqueue)"], 6, "{summary:#}");
    assert_eq!(summary["by_sender"]["process (pidfd)"], 5, "{summary:#}");
    let exit_codes = summary["exit_codes"].to_string();
    assert!(
        exit_codes.contains("sigqueue, claims SI_TIMER"),
        "{exit_codes}"
    );

    // The report of the same events finds a kill by this process, not the kernel's.
    let dir = TempDir::new("forged");
    let file = dir.0.join("events.jsonl");
    fs::write(&file, out.stdout.join("\n")).unwrap();
    let report = tracer(&["report", file.to_str().unwrap(), "--json"]);
    assert!(report.status.success());
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let finding = findings
        .iter()
        .find(|f| {
            f["text"]
                .as_str()
                .unwrap()
                .contains(&victim.pid().to_string())
        })
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(finding["kind"], "kill", "{finding:#}");
    let text = finding["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("({me})")) && text.contains("sigqueue, claims SI_TIMER"),
        "{text}"
    );
}

/// The cgroup v2 hierarchy's mount point, from mountinfo (`/sys/fs/cgroup/unified` on a
/// hybrid host).
fn cgroup2_root() -> std::path::PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (fs.split(' ').next() == Some("cgroup2"))
                .then(|| mount.split(' ').nth(4).unwrap().into())
        })
        .expect("a cgroup2 mount")
}

/// A cgroup v2 group the test creates; dropping it kills what is left in it and removes it.
struct KillGroup(std::path::PathBuf);

impl KillGroup {
    fn new() -> Self {
        Self::named(&format!("tracer-test-kill-{}", std::process::id()))
    }

    fn named(name: &str) -> Self {
        let dir = cgroup2_root().join(name);
        fs::create_dir(&dir).expect("creating a cgroup v2 group");
        Self(dir)
    }

    fn add(&self, pid: u32) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("moving into the group");
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn cgroup_kill_names_the_writer_and_its_ancestry() {
    let group = KillGroup::new();
    let mut members: Vec<Owned> = (0..3).map(|_| sleeper(&[])).collect();
    for m in &members {
        group.add(m.pid());
    }
    let mut writer = Owned(
        Command::new("sh")
            .args([
                "-c",
                &format!(
                    "read go; echo 1 > {}",
                    group.0.join("cgroup.kill").display()
                ),
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let writer_pid = writer.pid();
    let run = TracerRun::start(&["signals", "--json", "--signal", "KILL"]);
    {
        use std::io::Write as _;
        writeln!(writer.0.stdin.take().unwrap()).unwrap();
    }
    let status = writer
        .wait_timeout(Duration::from_secs(10))
        .expect("the writer finished");
    assert!(status.success(), "{status:?}");
    for m in &mut members {
        let status = m
            .wait_timeout(Duration::from_secs(10))
            .expect("a member was killed");
        assert_eq!(status.signal(), Some(9));
    }
    let out = run.stop();
    let member_pids: Vec<u32> = members.iter().map(Owned::pid).collect();
    let kills: Vec<&Value> = out
        .of_type("signal")
        .into_iter()
        .filter(|e| member_pids.iter().any(|p| e["target"]["pid"] == *p))
        .collect();
    assert_eq!(kills.len(), 3, "{kills:#?}");
    let mut ancestry = vec![std::process::id() as u64];
    ancestry.extend(own_ancestry());
    for e in kills {
        assert_eq!(e["sender"]["pid"], writer_pid, "{e:#}");
        assert_eq!(e["how"], "cgroup.kill", "{e:#}");
        assert_eq!(e["code"], "kill", "{e:#}");
        assert_eq!(e["kernel_reason"], Value::Null, "{e:#}");
        assert!(e["sender"]["exe"].is_string(), "{e:#}");
        assert_eq!(pids(e["ancestry"].as_array().unwrap()), ancestry, "{e:#}");
    }
}

#[test]
fn process_group_kill_and_tgkill_to_a_thread() {
    use std::os::unix::process::CommandExt as _;
    let me = std::process::id();
    let leader = spawn_ignoring(
        Command::new("sleep").arg("300").process_group(0),
        &[Signal::SIGUSR1],
    );
    let pgid = leader.pid();
    let members: Vec<Owned> = (0..2)
        .map(|_| {
            spawn_ignoring(
                Command::new("sleep").arg("300").process_group(pgid as i32),
                &[Signal::SIGUSR1],
            )
        })
        .collect();
    let run = TracerRun::start(&[
        "signals",
        "--json",
        "--sender-pid",
        &me.to_string(),
        "--signal",
        "USR1,URG",
    ]);
    // SAFETY: plain kill(2) to the group the test made.
    assert_eq!(unsafe { libc::kill(-(pgid as i32), libc::SIGUSR1) }, 0);
    // A thread of this process that is not its leader; SIGURG is ignored by default.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        let _ = stop_rx.recv_timeout(Duration::from_secs(20));
    });
    let tid = tid_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_ne!(tid, me);
    // SAFETY: plain tgkill(2) to a thread of this process.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, me, tid, libc::SIGURG) };
    assert_eq!(rc, 0);
    stop_tx.send(()).unwrap();
    thread.join().unwrap();
    let out = run.stop();

    let events = out.of_type("signal");
    let mut group: Vec<u64> = events
        .iter()
        .filter(|e| e["signal"] == "SIGUSR1")
        .inspect(|e| {
            assert_eq!(e["sender"]["pid"], me, "{e:#}");
            assert_eq!(e["how"], "kill_pgrp", "{e:#}");
        })
        .map(|e| e["target"]["pid"].as_u64().unwrap())
        .collect();
    group.sort();
    let mut expected: Vec<u64> = members.iter().map(|m| m.pid() as u64).collect();
    expected.push(pgid as u64);
    expected.sort();
    assert_eq!(group, expected, "{events:#?}");
    let urg: Vec<&&Value> = events.iter().filter(|e| e["signal"] == "SIGURG").collect();
    assert_eq!(urg.len(), 1, "{events:#?}");
    assert_eq!(urg[0]["target"]["pid"], me);
    assert_eq!(urg[0]["target"]["tid"], tid);
    assert_eq!(urg[0]["how"], "tgkill");
    assert_eq!(urg[0]["code"], "tkill");
    assert_eq!(urg[0]["sender"]["tid"], gettid());
}

#[test]
fn genuine_kernel_signals_stay_the_kernels() {
    use std::io::Write as _;
    // Whether the kernel raises it in the process's own context (a timer fires in whatever
    // task the CPU runs).
    for (mode, signal, reason, own_context) in [
        ("segv", 11, "fault", true),
        ("seccomp", 31, "kernel", true),
        ("xcpu", 24, "kernel", false),
        ("alarm", 14, "kernel", false),
        ("pipe", 13, "pipe", true),
    ] {
        let mut maker = Owned(
            Command::new(env!("CARGO_BIN_EXE_signal-maker"))
                .arg(mode)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let run = TracerRun::start(&["signals", "--json", "--pid", &maker.pid().to_string()]);
        writeln!(maker.0.stdin.take().unwrap()).unwrap();
        let status = maker
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{mode}: the maker did not end"));
        assert_eq!(status.signal(), Some(signal), "{mode}: {status:?}");
        let out = run.stop();
        let events: Vec<&Value> = out
            .of_type("signal")
            .into_iter()
            .filter(|e| e["signo"] == signal)
            .collect();
        assert!(!events.is_empty(), "{mode}: {:#?}", out.objects);
        for e in events {
            assert_eq!(e["sender"], Value::Null, "{mode}: {e:#}");
            assert_eq!(e["how"], "kernel", "{mode}: {e:#}");
            assert_eq!(e["kernel_reason"], reason, "{mode}: {e:#}");
            if own_context {
                assert_eq!(e["context"]["pid"], maker.pid(), "{mode}: {e:#}");
            }
        }
    }
}

#[test]
fn a_sender_run_from_another_mount_is_not_shown_as_a_path_from_root() {
    // A tmpfs mounted anywhere (here in a mount namespace of its own, gone with it) can hold
    // `usr/bin/kubelet`: walked up to its filesystem's root, its path reads `/usr/bin/kubelet`.
    let dir = TempDir::new("other-mount");
    let target = sleeper(&[Signal::SIGUSR1]);
    let t = target.pid();
    let run = TracerRun::start(&["signals", "--json", "--pid", &t.to_string()]);
    let mount = dir.0.display();
    let script = format!(
        "mount -t tmpfs none {mount} && mkdir -p {mount}/usr/bin && \
         cp /bin/sh {mount}/usr/bin/kubelet && exec {mount}/usr/bin/kubelet -c 'kill -USR1 {t}'"
    );
    for command in [
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ][..],
        &["sh", "-c", &format!("kill -USR1 {t}")],
    ] {
        let status = Command::new(command[0])
            .args(&command[1..])
            .status()
            .unwrap();
        assert!(status.success(), "{command:?}: {status:?}");
    }
    let out = run.stop();
    let exes: Vec<&Value> = out
        .of_type("signal")
        .into_iter()
        .map(|e| &e["sender"]["exe"])
        .collect();
    let sh = fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(
        exes,
        [
            &Value::from("(another mount)/usr/bin/kubelet"),
            &Value::from(sh.to_str().unwrap()),
        ],
        "{:#?}",
        out.objects
    );
}

#[test]
fn a_signal_a_ptrace_tracer_injects_names_the_tracer() {
    // Resumed from a syscall stop with a signal, a tracee is sent that signal by the kernel,
    // with kernel privilege, as it sends its own: the tracer must not pass for the kernel.
    let mut tracee = sleeper(&[]);
    let pid = tracee.pid() as libc::pid_t;
    let run = TracerRun::start(&["signals", "--json", "--pid", &pid.to_string()]);
    let stop = || {
        let mut status = 0;
        // SAFETY: plain syscall on the test's own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        assert!(waited == pid && libc::WIFSTOPPED(status), "{status:#x}");
    };
    // SAFETY: ptrace requests on the test's own child, from this one thread.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0), 0);
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0);
        stop();
        // On to the stop at the next syscall (sleep's nanosleep restarting).
        assert_eq!(libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, 0), 0);
        stop();
        assert_eq!(libc::ptrace(libc::PTRACE_CONT, pid, 0, libc::SIGKILL), 0);
    }
    let status = tracee
        .wait_timeout(Duration::from_secs(10))
        .expect("the tracee was killed");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let out = run.stop();
    let kills: Vec<&Value> = out
        .of_type("signal")
        .into_iter()
        .filter(|e| e["signo"] == 9)
        .collect();
    assert_eq!(kills.len(), 1, "{:#?}", out.objects);
    let e = kills[0];
    assert_eq!(e["sender"], Value::Null, "{e:#}");
    assert_eq!(e["kernel_reason"], "ptrace", "{e:#}");
    assert_eq!(e["ptracer_pid"], std::process::id(), "{e:#}");
    assert_eq!(e["context"]["pid"], pid, "{e:#}");
}

/// Makes the kernel signal `owner` as the owner of a pipe (F_SETOWN), with `chosen` as its
/// F_SETSIG (0: plain SIGIO), by writing a byte to the pipe from this process.
fn notify_pipe_owner(owner: u32, chosen: i32) {
    // include/uapi/asm-generic/fcntl.h; not in the libc crate.
    const F_SETSIG: i32 = 10;
    let mut fds = [0; 2];
    // SAFETY: plain syscalls on a pipe this function owns and closes.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let [read_end, write_end] = fds;
        assert_eq!(libc::fcntl(read_end, libc::F_SETOWN, owner as i32), 0);
        assert_eq!(libc::fcntl(read_end, F_SETSIG, chosen), 0);
        let flags = libc::fcntl(read_end, libc::F_GETFL);
        assert_eq!(
            libc::fcntl(read_end, libc::F_SETFL, flags | libc::O_ASYNC),
            0
        );
        assert_eq!(libc::write(write_end, b"x".as_ptr().cast(), 1), 1);
        libc::close(read_end);
        libc::close(write_end);
    }
}

#[test]
fn a_files_owner_signalled_on_a_write_is_the_kernels_io_notification() {
    // F_SETSIG lets a process have any signal, SIGKILL too, sent to the owner it named on a
    // write it makes itself: the kernel sends it, with the writer as the context.
    for (chosen, signal) in [(9, 9), (0, 29)] {
        let mut owner = sleeper(&[]);
        let run = TracerRun::start(&["signals", "--json", "--pid", &owner.pid().to_string()]);
        notify_pipe_owner(owner.pid(), chosen);
        let status = owner
            .wait_timeout(Duration::from_secs(10))
            .expect("the owner was killed");
        assert_eq!(status.signal(), Some(signal), "{status:?}");
        let out = run.stop();
        let events = out.of_type("signal");
        assert_eq!(events.len(), 1, "{events:#?}");
        let e = events[0];
        assert_eq!(e["signo"], signal, "{e:#}");
        assert_eq!(e["sender"], Value::Null, "{e:#}");
        assert_eq!(e["how"], "kernel", "{e:#}");
        assert_eq!(e["kernel_reason"], "io", "{e:#}");
        assert_eq!(e["context"]["pid"], std::process::id(), "{e:#}");
        if signal == 9 {
            // The exit code's cause names the kernel's reason and the writer.
            let exit_codes = out.summary()["exit_codes"].to_string();
            let me = std::process::id();
            assert!(
                exit_codes.contains("SIGKILL from [I/O notification] while")
                    && (exit_codes.contains(&format!("({me}) ran"))
                        || exit_codes.contains(&format!("({me}/"))),
                "{exit_codes}"
            );
        }
    }
}

#[test]
fn odd_codes_and_targets_decode() {
    let me = std::process::id();
    // A zombie: exited, not reaped.
    let zombie = Owned(Command::new("true").spawn().unwrap());
    wait_for("a zombie", Duration::from_secs(10), || {
        let stat = fs::read_to_string(format!("/proc/{}/stat", zombie.pid())).ok()?;
        (stat.rsplit_once(") ")?.1.starts_with('Z')).then_some(())
    });
    let run = TracerRun::start(&["signals", "--json", "--pid", &zombie.pid().to_string()]);
    queue(
        Queue::Sigqueue,
        zombie.pid(),
        zombie.pid(),
        libc::SIGUSR1,
        i32::MIN,
    );
    let out = run.stop();
    let events = out.of_type("signal");
    assert_eq!(events.len(), 1, "{:#?}", out.objects);
    assert_eq!(events[0]["code"], format!("code {}", i32::MIN));
    assert_eq!(events[0]["si_code"], i32::MIN);
    assert_eq!(events[0]["sender"]["pid"], me);

    // Codes >= 0 a process may only send to itself: any value.
    let run = TracerRun::start(&[
        "signals",
        "--json",
        "--pid",
        &me.to_string(),
        "--signal",
        "URG",
    ]);
    for code in [12345, i32::MAX, 0x80] {
        queue(Queue::TgSigqueue, me, gettid(), libc::SIGURG, code);
    }
    let out = run.stop();
    let events = out.of_type("signal");
    let codes: Vec<&Value> = events.iter().map(|e| &e["code"]).collect();
    assert_eq!(
        codes,
        ["code 12345", &format!("code {}", i32::MAX), "kernel"]
    );
    for e in events {
        assert_eq!(e["sender"]["pid"], me, "{e:#}");
        assert_eq!(e["how"], "tgsigqueue", "{e:#}");
        assert_eq!(e["code_from"], "sender", "{e:#}");
    }

    // A kernel thread, which ignores every signal.
    assert_eq!(
        fs::read_to_string("/proc/2/comm").unwrap().trim(),
        "kthreadd"
    );
    let run = TracerRun::start(&["signals", "--json", "--pid", "2"]);
    send(2, Signal::SIGUSR1);
    let out = run.stop();
    let events = out.of_type("signal");
    assert_eq!(events.len(), 1, "{:#?}", out.objects);
    assert_eq!(events[0]["result"], "ignored");
    assert_eq!(events[0]["target"]["comm"], "kthreadd");
    assert_eq!(events[0]["how"], "kill");
}
