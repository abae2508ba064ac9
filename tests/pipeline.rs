//! The pipeline every tracer rides on, against the real kernel: load and attach, a real
//! signal arriving as an event, clean detach, and clear errors.

use std::{os::unix::fs::symlink, process::Command, time::Duration};

use nix::sys::signal::Signal;
use tracer_tests::*;

/// Every tracer's command line, and its name in [`PROGRAMS_BY_TRACER`].
const TRACERS: &[(&[&str], &str)] = &[
    (&["signals"], "signals"),
    (&["conntrack-drops"], "conntrack-drops"),
    (&["netns", "--watch"], "netns"),
];

#[test]
fn doctor_attaches_every_tracers_hooks() {
    let out = tracer(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "doctor failed: {text}");
    assert!(
        text.contains("signal generation") && text.contains("using tp_btf:signal_generate"),
        "{text}"
    );
    assert!(text.contains("using tp_btf:mark_victim"), "{text}");
    assert!(text.contains("using tp_btf:kfree_skb"), "{text}");
    // The tests' list of each tracer's programs is the registry's, as the doctor shows it.
    let mut shown: Vec<(String, Vec<String>)> = Vec::new();
    for l in text.lines() {
        if let Some(name) = l
            .strip_prefix("tracer `")
            .and_then(|r| r.strip_suffix("`:"))
        {
            shown.push((name.to_string(), Vec::new()));
        } else if let Some((_, program)) = l.split_once("(program ") {
            let (_, programs) = shown.last_mut().expect("a tracer's section");
            programs.push(program.trim_end_matches(')').to_string());
        }
    }
    let listed: Vec<(String, Vec<String>)> = PROGRAMS_BY_TRACER
        .iter()
        .map(|(name, programs)| {
            (
                name.to_string(),
                programs.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(shown, listed, "{text}");
    // This kernel has neither kprobes nor fentry/fexit: the doctor must say so and why.
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(
        text.lines()
            .any(|l| l.trim_start().starts_with("kprobe") && l.contains(" ok ")),
        kprobes,
        "{text}"
    );
    assert!(ours_left_behind().is_empty(), "doctor left programs behind");
}

#[test]
fn a_real_signal_arrives_with_the_right_pids() {
    let mut target = sleeper(&[]);
    let run = TracerRun::start(&["signals", "--json", "--pid", &target.pid().to_string()]);
    send(target.pid(), Signal::SIGUSR1);
    let status = target
        .wait_timeout(Duration::from_secs(10))
        .expect("target died of SIGUSR1");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(10)
    );
    let out = run.stop();
    assert!(out.status.success(), "tracer failed: {}", out.stderr);

    let events = out.of_type("signal");
    assert_eq!(events.len(), 1, "events: {events:#?}");
    let e = events[0];
    assert_eq!(e["signal"], "SIGUSR1");
    assert_eq!(e["signo"], 10);
    assert_eq!(e["code"], "kill");
    assert_eq!(e["result"], "delivered");
    assert_eq!(e["kernel_reason"], serde_json::Value::Null);
    assert_eq!(e["target"]["pid"], target.pid());
    assert_eq!(e["target"]["comm"], "sleep");
    assert_eq!(e["sender"]["pid"], std::process::id());
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    let summary = out.summary();
    assert_eq!(summary["events"], 1);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["stopped_by"], "interrupt");
    // Lines collected from many nodes tell their node (the host name without NODE_NAME).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(e["node"], host.trim(), "{e}");
    assert_eq!(summary["node"], host.trim());
}

#[test]
fn nothing_stays_attached_after_any_kind_of_exit() {
    assert!(
        ours_left_behind().is_empty(),
        "programs of an earlier run still loaded"
    );

    for (command, tracer) in TRACERS {
        let programs = programs_of(tracer);
        for stop in [Some(Signal::SIGINT), Some(Signal::SIGTERM), None] {
            let mut args = command.to_vec();
            args.push("--json");
            if stop.is_none() {
                args.extend(["--duration", "1s"]);
            }
            let run = TracerRun::start(&args);
            let loaded = ours_loaded();
            assert!(
                programs
                    .iter()
                    .all(|p| loaded.iter().any(|l| bpf_name_is(p, l))),
                "{command:?}: while running, bpftool shows {loaded:?}"
            );
            let out = match stop {
                Some(signal) => run.stop_with(signal),
                None => run.wait(),
            };
            assert!(out.status.success(), "{command:?} {stop:?}: {}", out.stderr);
            assert!(out.summary().is_object());
            let left = ours_left_behind();
            assert!(left.is_empty(), "{command:?} after {stop:?}: {left:?}");
        }
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_run_quietly() {
    use std::io::BufRead as _;
    let target = sleeper(&[Signal::SIGUSR2]);
    // Killed and reaped when dropped, so a failed assertion leaves nothing running.
    let mut tracer = Owned(
        tracer_command()
            .args(["signals", "--json", "--pid", &target.pid().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = forward_lines(tracer.0.stderr.take().unwrap());
    let timeout = Duration::from_secs(30);
    while !stderr
        .recv_timeout(timeout)
        .expect("a ready line")
        .starts_with("tracer: ready")
    {}
    // As `| head -1`: the first event read, then the pipe closed.
    let stdout = tracer.0.stdout.take().unwrap();
    let (first_tx, first) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = first_tx.send(line);
    });
    send(target.pid(), Signal::SIGUSR2);
    let line = first.recv_timeout(timeout).expect("a first event");
    assert!(line.contains(r#""type":"signal""#), "{line}");
    // More events, bounded, until the tracer notices the closed pipe and ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        send(target.pid(), Signal::SIGUSR2);
        if let Some(status) = tracer.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The rest of stderr: it ends with the process.
    let rest: Vec<String> = stderr.iter().collect();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(!rest.iter().any(|l| l.contains("error")), "{rest:?}");
    assert!(ours_left_behind().is_empty());
}

#[test]
fn count_stops_after_exactly_n_events() {
    let target = sleeper(&[Signal::SIGUSR2]);
    let run = TracerRun::start(&[
        "signals",
        "--json",
        "--pid",
        &target.pid().to_string(),
        "--count",
        "3",
    ]);
    for _ in 0..5 {
        send(target.pid(), Signal::SIGUSR2);
    }
    let out = run.wait();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.of_type("signal").len(), 3);
    assert_eq!(out.summary()["stopped_by"], "count");
}

#[test]
fn kernel_strings_are_escaped() {
    // The target's comm (its file name) carries an escape sequence and a newline.
    let dir = TempDir::new("escape");
    let evil = dir.0.join("ev\x1b[31mil\nx");
    symlink("/bin/sleep", &evil).unwrap();
    let mut target = Owned(Command::new(&evil).arg("300").spawn().unwrap());
    let run = TracerRun::start(&["signals", "-o", "text", "--pid", &target.pid().to_string()]);
    send(target.pid(), Signal::SIGUSR2);
    target
        .wait_timeout(Duration::from_secs(10))
        .expect("target died");
    let out = run.stop();
    let text = out.stdout.join("\n");
    assert!(
        !text.contains('\x1b'),
        "raw escape reached the terminal: {text:?}"
    );
    assert!(
        text.contains("ev\\u{1b}[31mil\\nx(") && text.contains("SIGUSR2"),
        "{text}"
    );
}

#[test]
fn bad_input_gets_one_clear_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["signals", "--pid", "999999999"],
            "no process with pid 999999999",
        ),
        (&["signals", "--signal", "FOO"], "unknown signal `FOO`"),
        (&["signals", "--buffer-mb", "3"], "power of two"),
        // Too long to add to a clock: each duration flag says so instead of panicking.
        (&["signals", "--duration", "300000000000y"], "at most"),
        (&["record", "--duration", "300000000000y"], "at most"),
        (&["netns", "--stuck-after", "300000000000y"], "at most"),
        (&["serve", "--pod-grace", "300000000000y"], "at most"),
        (&["serve", "--census-every", "300000000000y"], "at most"),
        // 0 is no process and no namespace: the kernel filters would take it for "any".
        (&["signals", "--pid", "0", "--wait"], "leave out --pid"),
        (&["signals", "--sender-pid", "0"], "leave out --sender-pid"),
        (&["conntrack-drops", "--netns", "0"], "leave out --netns"),
    ];
    for (args, expected) in cases {
        // Bounded: input taken for "any" would trace until interrupted.
        let out = Command::new("timeout")
            .args(["--signal=INT", "30"])
            .arg(tracer_bin())
            .args(*args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("timeout (coreutils)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{stderr}"
        );
    }
}

#[test]
fn without_privilege_it_says_what_to_do() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tracer_bin())
        .args(["signals", "--duration", "1s"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("run as root"), "{stderr}");
}
