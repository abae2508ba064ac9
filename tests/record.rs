//! `tracer record` and `tracer report`: one recording of an incident reproduced by the test
//! (a kill, the conntrack insert race through DNAT, a namespace held by a process in D state
//! whose address another namespace also has), and a damaged recording.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::Command,
    time::Duration,
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tracer_tests::{
    net::{
        add_address, endpoint, race_rounds, topology, topology_of, Netns, NetnsHolder, CLIENT,
        IPV6, VIP_A, VIP_B,
    },
    *,
};

/// `tracer report FILE --json`.
fn report(file: &std::path::Path) -> Value {
    let out = tracer(&["report", file.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

/// How many lines of the recording a finding cites: those it names and those it counts
/// beyond its cap.
fn cited_lines(finding: &Value) -> u64 {
    finding["lines"].as_array().unwrap().len() as u64 + finding["more_lines"].as_u64().unwrap_or(0)
}

fn findings<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

/// The insert-race finding of the namespace `inode`.
fn race_finding(report: &Value, inode: u64) -> &Value {
    findings(report, "conntrack_insert_race")
        .into_iter()
        .find(|f| {
            f["text"]
                .as_str()
                .unwrap()
                .contains(&format!("netns {inode}"))
        })
        .unwrap_or_else(|| panic!("{report:#}"))
}

/// The objects at the given lines (from 1) of the recording.
fn lines_of(file: &std::path::Path, finding: &Value) -> Vec<Value> {
    let text = fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    finding["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| serde_json::from_str(lines[n.as_u64().unwrap() as usize - 1]).unwrap())
        .collect()
}

/// A script with a distinctive name (its comm) that SIGKILLs `target`; returns its pid after
/// it has exited.
fn kill_from_script(dir: &TempDir, target: u32) -> u32 {
    let killer = dir.0.join("killer-r3c");
    fs::write(
        &killer,
        "#!/bin/sh\necho $$ > \"$0.pid\"\nkill -KILL \"$1\"\n",
    )
    .unwrap();
    fs::set_permissions(&killer, fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new(&killer)
        .arg(target.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    fs::read_to_string(dir.0.join("killer-r3c.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn one_recording_shows_the_kill_the_insert_race_and_the_stuck_namespace() {
    let dir = TempDir::new("record");
    let file = dir.0.join("incident.jsonl");
    let t = topology();
    let node_inode = t.node.inode();

    // A namespace held by a process in D state, with an address a second namespace also has.
    let mut holder = NetnsHolder::start(env!("CARGO_BIN_EXE_netns-holder"), "vfork");
    let holder_pid = holder.parent.pid();
    let own = fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let stuck_inode = wait_for("the holder's namespace", Duration::from_secs(10), || {
        let ino = fs::metadata(format!("/proc/{holder_pid}/ns/net"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        (ino != own).then_some(ino)
    });
    add_address(holder_pid, "198.18.77.1/24");
    let twin = Netns::new("twin");
    twin.ip(&["addr", "add", "198.18.77.1/24", "dev", "lo"]);
    wait_for(
        "the holder to block in D state",
        Duration::from_secs(10),
        || status_field(holder_pid, "State:").filter(|s| s.starts_with('D')),
    );

    let before = t.node.conntrack_counters();
    let run = TracerRun::start(&[
        "record",
        "--stuck-after",
        "1s",
        "-o",
        file.to_str().unwrap(),
    ]);
    let mut target = sleeper(&[]);
    let killer = kill_from_script(&dir, target.pid());
    target
        .wait_timeout(Duration::from_secs(10))
        .expect("target killed");
    let race = race_rounds(&t.node, [VIP_A, VIP_B], 300);
    std::thread::sleep(Duration::from_millis(1200)); // the D state outlasts --stuck-after
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let kernel = t.node.conntrack_counters().since(&before);
    holder.end();

    let report = report(&file);
    assert_eq!(report["unreadable"], serde_json::json!([]));

    let kills: Vec<&Value> = findings(&report, "kill")
        .into_iter()
        .filter(|f| {
            f["text"]
                .as_str()
                .unwrap()
                .contains(&format!("({})", target.pid()))
        })
        .collect();
    assert_eq!(kills.len(), 1, "{report:#}");
    let text = kills[0]["text"].as_str().unwrap();
    assert!(text.contains(&format!("killer-r3c({killer})")), "{text}");
    assert!(
        text.contains(&format!("({})", std::process::id())),
        "the ancestry names the test: {text}"
    );
    let events = lines_of(&file, kills[0]);
    assert!(events.iter().all(|e| e["type"] == "signal"
        && e["target"]["pid"] == target.pid()
        && e["sender"]["pid"] == killer));

    assert!(
        kernel.insert_failed > 0,
        "the race never happened: {kernel:?}"
    );
    assert_eq!(race.refused, kernel.insert_failed);
    let race_finding = race_finding(&report, node_inode);
    let text = race_finding["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "{} UDP packets from {CLIENT} ",
            kernel.insert_failed
        )),
        "{text}"
    );
    assert!(text.contains(VIP_A) || text.contains(VIP_B), "{text}");
    assert_eq!(cited_lines(race_finding), kernel.insert_failed);
    assert!(lines_of(&file, race_finding)
        .iter()
        .all(|e| e["class"] == "insert_failed" && e["netns"] == node_inode));

    let stuck = findings(&report, "netns_stuck");
    let finding = stuck
        .iter()
        .find(|f| {
            f["text"]
                .as_str()
                .unwrap()
                .contains(&format!("netns {stuck_inode} "))
        })
        .unwrap_or_else(|| panic!("{report:#}"));
    let text = finding["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("({holder_pid}) in D state")),
        "{text}"
    );
    assert!(
        text.contains("ip-conflict") && text.contains(&twin.inode().to_string()),
        "{text}"
    );
}

#[test]
fn a_damaged_recording_is_still_reported_and_the_bad_lines_named() {
    let dir = TempDir::new("damaged");
    let file = dir.0.join("damaged.jsonl");
    let run = TracerRun::start(&["record", "-o", file.to_str().unwrap()]);
    let mut target = sleeper(&[]);
    send(target.pid(), Signal::SIGKILL);
    target
        .wait_timeout(Duration::from_secs(10))
        .expect("target killed");
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);

    // Garbage in the middle, and a last line cut short (as a crash would leave it).
    let text = fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(lines.len() >= 3, "{text}");
    let middle = lines.len() / 2;
    lines.insert(middle, "\u{1}garbage{".to_string());
    let last = lines.last_mut().unwrap();
    last.truncate(last.len() / 2);
    fs::write(&file, lines.join("\n")).unwrap();

    let report = report(&file);
    let bad: Vec<u64> = report["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["line"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, [middle as u64 + 1, lines.len() as u64], "{report:#}");
    assert!(
        findings(&report, "kill").iter().any(|f| f["text"]
            .as_str()
            .unwrap()
            .contains(&format!("({})", target.pid()))),
        "{report:#}"
    );
    let human = tracer(&["report", file.to_str().unwrap()]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(&format!("line {} could not be read", middle + 1)),
        "{human}"
    );
    // The same recording through a pipe (`kubectl logs ... | tracer report -`).
    let piped = tracer_command()
        .args(["report", "-", "--json"])
        .stdin(fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let piped: Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(piped, report);
}

#[test]
fn an_ipv6_insert_race_is_a_finding_that_names_its_ipv6_flows() {
    let dir = TempDir::new("record6");
    let file = dir.0.join("incident.jsonl");
    let t = topology_of(&IPV6);
    let node_inode = t.node.inode();
    let before = t.node.conntrack_counters();
    let run = TracerRun::start(&["record", "-o", file.to_str().unwrap()]);
    let race = race_rounds(&t.node, [IPV6.vip_a, IPV6.vip_b], 400);
    let out = run.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let kernel = t.node.conntrack_counters().since(&before);
    assert!(
        kernel.insert_failed > 0,
        "the race never happened: {kernel:?} {race:?}"
    );

    let report = report(&file);
    let finding = race_finding(&report, node_inode);
    let text = finding["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "{} UDP/IPv6 packets from {} ",
            kernel.insert_failed, IPV6.client
        )),
        "{text}"
    );
    assert!(
        text.contains(&endpoint(IPV6.vip_a, 53)) || text.contains(&endpoint(IPV6.vip_b, 53)),
        "{text}"
    );
    assert!(
        text.contains(&format!("through DNAT to {}", endpoint(IPV6.backend, 53))),
        "{text}"
    );
    assert!(text.contains("A and AAAA"), "{text}");
    assert_eq!(cited_lines(finding), kernel.insert_failed);
}

/// Runs `tracer ARGS` with stdout into `out`; its exit status and peak RSS in KiB (from the
/// kernel's accounting of this child alone: wait4).
#[allow(clippy::zombie_processes, reason = "wait4 reaps the child")]
fn run_measured(args: &[&str], out: &std::path::Path) -> (i32, i64) {
    let child = tracer_command()
        .args(args)
        .stdout(fs::File::create(out).unwrap())
        .spawn()
        .expect("tracer");
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(
        pid,
        child.id() as i32,
        "{}",
        std::io::Error::last_os_error()
    );
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

#[test]
fn report_reads_a_recording_of_a_gibibyte_in_bounded_memory() {
    let dir = TempDir::new("report-gib");
    let file = dir.0.join("big.jsonl");
    // Signals to 50 processes and the insert race from 10 sources, over and over: few
    // findings and subjects, many lines.
    let mut writer = std::io::BufWriter::new(fs::File::create(&file).unwrap());
    let (mut signals, mut drops) = (0u64, 0u64);
    let mut size = 0u64;
    let padding = "/usr/local/lib/some/long/path/to/an/executable/".repeat(4);
    while size < 1 << 30 {
        let i = signals + drops;
        let line = if i % 2 == 0 {
            signals += 1;
            serde_json::json!({"type": "signal", "time": format!("2026-12-01T00:00:{:02}.{:06}Z", (i / 1_000_000) % 60, i % 1_000_000),
                "signal": "SIGUSR1", "signo": 10, "result": "ignored", "code": "kill",
                "how": "kill", "code_from": "kernel", "si_code": 0, "kernel_reason": null,
                "sender": {"pid": 30, "comm": "python3", "exe": padding, "pod": null},
                "target": {"pid": 100 + signals % 50, "comm": "app", "pod": null},
                "ancestry": [{"pid": 20, "comm": "bash"}, {"pid": 1, "comm": "systemd"}],
                "ancestry_truncated": false})
        } else {
            drops += 1;
            serde_json::json!({"type": "conntrack_drop", "time": "2026-12-01T00:00:00.000000Z",
                "class": "insert_failed", "netns": 7, "proto": "udp",
                "src": format!("10.0.0.{}:40000", drops % 10), "dst": "10.96.0.10:53",
                "nat_dst": "10.244.0.5:53", "exe": padding})
        };
        let text = format!("{line}\n");
        size += text.len() as u64;
        std::io::Write::write_all(&mut writer, text.as_bytes()).unwrap();
    }
    std::io::Write::flush(&mut writer).unwrap();
    drop(writer);

    let out = dir.0.join("report.json");
    let (status, peak_kib) = run_measured(&["report", file.to_str().unwrap(), "--json"], &out);
    fs::remove_file(&file).unwrap();
    assert_eq!(status, 0);
    eprintln!("tracer report: {size} bytes, peak RSS {peak_kib} KiB");
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB reading {size} bytes"
    );
    let report: Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["events"], signals + drops);
    let races = findings(&report, "conntrack_insert_race");
    assert_eq!(races.len(), 10, "one per source");
    let cited: u64 = races.into_iter().map(cited_lines).sum();
    assert_eq!(cited, drops);
    // 50 processes and the namespace: a timeline each, their lengths counted.
    let timelines = report["timelines"].as_object().unwrap();
    assert_eq!(timelines.len(), 51);
    let moments: u64 = timelines
        .values()
        .map(|t| t["items"].as_array().unwrap().len() as u64 + t["more"].as_u64().unwrap())
        .sum();
    assert_eq!(moments, signals + drops);
}

#[test]
fn report_escapes_every_string_it_prints() {
    let dir = TempDir::new("report-escape");
    let file = dir.0.join("hostile.jsonl");
    // Not the tracer's (it escapes what the kernel gives it): a file from anywhere, with
    // terminal control sequences in every string the report prints.
    let evil = "\u{1b}]0;owned\u{7}\u{1b}[2J";
    let kill = serde_json::json!({"type": "signal", "time": format!("2026-12-01T00:00:01.000000Z{evil}"),
        "signal": format!("SIGKILL{evil}"), "signo": 9, "result": "delivered",
        "code": evil, "how": "kill", "code_from": "kernel", "si_code": 0,
        "kernel_reason": null,
        "sender": {"pid": 30, "comm": evil, "pod": null},
        "target": {"pid": 40, "comm": evil, "pod": {"namespace": evil, "name": evil}},
        "ancestry": [{"pid": 1, "comm": evil}], "ancestry_truncated": false});
    let drop = serde_json::json!({"type": "conntrack_drop", "time": "t", "class": "insert_failed",
        "netns": 7, "proto": evil, "src": evil, "dst": evil, "nat_dst": evil});
    fs::write(&file, format!("{kill}\n{drop}\n{{\"{evil}\n")).unwrap();
    let out = tracer(&["report", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached the terminal: {text:?}"
    );
    assert!(text.contains(r"\u{1b}]0;owned\u{7}"), "{text}");
    assert!(text.contains("was killed by SIGKILL"), "{text}");
}

#[test]
fn an_over_long_line_is_skipped_without_being_held_in_memory() {
    use std::io::{Read as _, Write as _};
    // A line of 256 MiB (a corrupt file, or `tracer report -` fed something else), then a
    // summary and a line that is not JSON.
    const LONG: usize = 256 << 20;
    // At most 128 MiB of address space: holding the line whole fails.
    let mut command = tracer_command();
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128 << 20,
                rlim_max: 128 << 20,
            };
            match libc::setrlimit(libc::RLIMIT_AS, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let mut child = Owned(
        command
            .args(["report", "-", "--json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..LONG / chunk.len() {
            stdin.write_all(&chunk)?;
        }
        stdin.write_all(b"\n{\"type\":\"summary\"}\nnot json\n")
    });
    let mut stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let status = child
        .wait_timeout(Duration::from_secs(60))
        .expect("report did not finish");
    let _ = writer.join().unwrap();
    let stderr = child.0.stderr.take().map(std::io::read_to_string);
    assert!(status.success(), "{status}: {stderr:?}");
    let report: Value = serde_json::from_str(&reader.join().unwrap().unwrap()).unwrap();
    let unreadable = report["unreadable"].as_array().unwrap();
    let lines: Vec<u64> = unreadable
        .iter()
        .map(|u| u["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 3], "{report:#}");
    assert!(
        unreadable[0]["error"]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{report:#}"
    );
}

#[test]
fn ctrl_c_before_ready_leaves_no_empty_recording_to_refuse_a_rerun() {
    let dir = TempDir::new("record-interrupted");
    let file = dir.0.join("interrupted.jsonl");
    let mut child = tracer_command()
        .args(["record", "-o", file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(Owned)
        .expect("starting tracer");
    let stderr = forward_lines(child.0.stderr.take().unwrap());
    // The file exists from this line on; loading has just begun.
    while !stderr
        .recv_timeout(Duration::from_secs(60))
        .expect("tracer creating the file within 60 s")
        .starts_with("tracer: recording into")
    {}
    send(child.pid(), Signal::SIGINT);
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("still running 30 s after SIGINT");
    let stderr: Vec<String> = stderr.iter().collect();
    // Stopped during loading: either before ready (130, no file) or at the event loop's first
    // turn (0, a file with its summary).
    match status.code() {
        Some(130) => assert!(!file.exists(), "an empty recording left behind"),
        Some(0) => assert!(fs::metadata(&file).unwrap().len() > 0),
        other => panic!("exit {other:?}: {}", stderr.join("\n")),
    }
    assert_eq!(ours_left_behind(), Vec::<String>::new());
}

#[test]
fn a_recording_with_a_probe_has_each_pods_line_and_the_report_names_who_cannot_reach() {
    use std::net::TcpListener;
    use tracer_tests::{cri::CriNode, net::nft_counter_in, net::nft_in};
    const PORT: u16 = 8081;

    let dir = TempDir::new("record-probe");
    let file = dir.0.join("probe.jsonl");
    let mut node = CriNode::up();
    let (web, blocked) = (
        node.run_pod("record-probe", "web", false),
        node.run_pod("record-probe", "blocked", false),
    );
    let blocked_pid = node
        .start_container(&blocked, "app", &["sleep", "3600"])
        .pid;
    node.start_container(&web, "app", &["sleep", "3600"]);
    let blocked_netns = format!("/proc/{blocked_pid}/ns/net");
    nft_in(
        &blocked_netns,
        &format!(
            "table inet probe_test {{\n chain out {{\n type filter hook output priority 0;\n \
             tcp dport {PORT} counter drop comment \"record-probe\"\n }}\n}}\n"
        ),
    );
    let listen = (node.gateway(), PORT);
    let _listener = in_netns(&node.netns_path(), move || {
        TcpListener::bind(listen).expect("listen on the node's bridge")
    });
    let target = format!("{}:{PORT}", node.gateway());

    // Probes take up to 4 s: the recording outlasts them.
    let run = TracerRun::start(&[
        "record",
        "--probe",
        &target,
        "--namespace",
        "record-probe",
        "--duration",
        "7s",
        "-o",
        file.to_str().unwrap(),
    ]);
    let out = run.wait();
    assert!(out.status.success(), "{}", out.stderr);
    let dropped = nft_counter_in(&blocked_netns, "record-probe");
    node.down();

    let recorded: Vec<Value> = fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let probes: Vec<&Value> = recorded.iter().filter(|l| l["type"] == "probe").collect();
    assert_eq!(probes.len(), 2, "{probes:#?}");
    let of = |uid: &str| {
        *probes
            .iter()
            .find(|p| p["pod"]["uid"] == uid)
            .unwrap_or_else(|| panic!("no probe line of {uid}: {probes:#?}"))
    };
    assert_eq!(of(&web.uid)["status"], "ok");
    assert_eq!(of(&blocked.uid)["status"], "fail");
    // The probe's drops are the recording's conntrack_drop lines too: every SYN the rule
    // dropped, in the blocked pod's namespace.
    let syn_drops = recorded
        .iter()
        .filter(|l| {
            l["type"] == "conntrack_drop"
                && l["pod"]["uid"] == blocked.uid.as_str()
                && l["dst"] == target.as_str()
        })
        .count() as u64;
    assert!(dropped > 0);
    assert_eq!(syn_drops, dropped);
    assert_eq!(
        of(&blocked.uid)["drops"].as_array().unwrap().len() as u64,
        dropped
    );

    let report = report(&file);
    let unreachable = findings(&report, "unreachable");
    assert_eq!(unreachable.len(), 1, "{report:#}");
    let text = unreachable[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "pod record-probe/blocked cannot reach tcp {target}: SYN dropped by rule at hook \
             output in netns "
        )),
        "{text}"
    );
    assert!(text.contains("(pod record-probe/blocked)"), "{text}");
    let cited = lines_of(&file, unreachable[0]);
    assert_eq!(cited.len(), 1);
    assert_eq!(cited[0]["type"], "probe");
    assert_eq!(cited[0]["pod"]["uid"], blocked.uid.as_str());
    assert!(findings(&report, "probe_error").is_empty(), "{report:#}");
}
