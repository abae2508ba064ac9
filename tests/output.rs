//! The output formats, as an operator meets them: `-o line` in a pipe (one line per event,
//! the same keys in the same order), `--fields`, the text view on a terminal (a real pty from
//! `script`), and clear errors for unknown formats and fields.

use std::{
    os::unix::fs::symlink,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tracer_tests::*;

/// `key=value` pairs of a `-o line` line, in order; quoted values are JSON strings.
fn pairs(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line;
    // A key or a value is a JSON string when quoted, else a word that ends at `end`.
    let word = |text: &str, end: char| -> (String, usize) {
        if text.starts_with('"') {
            let mut stream = serde_json::Deserializer::from_str(text).into_iter::<String>();
            let word = stream.next().expect("a quoted word").expect("valid JSON");
            (word, stream.byte_offset())
        } else {
            let len = text.find(end).unwrap_or(text.len());
            (text[..len].to_string(), len)
        }
    };
    while !rest.is_empty() {
        let (key, len) = word(rest, '=');
        let after = rest[len..]
            .strip_prefix('=')
            .unwrap_or_else(|| panic!("no `=` after {key:?} in {line:?}"));
        let (value, len) = word(after, ' ');
        let after = &after[len..];
        pairs.push((key, value));
        rest = after.trim_start_matches(' ');
    }
    pairs
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map_or_else(|| panic!("no {key} in {pairs:?}"), |(_, v)| v.as_str())
}

/// A shell that sends USR1 then USR2 to `pid` and exits; returns its pid.
fn send_from_shell(pid: u32) -> u32 {
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -USR1 {pid}; kill -USR2 {pid}"))
        .spawn()
        .expect("sh");
    let shell_pid = shell.id();
    assert!(shell.wait().unwrap().success());
    shell_pid
}

#[test]
fn a_pipe_gets_one_line_per_event_with_the_ancestry_on_it() {
    // The target's name carries a space, a quote and a newline: its value is quoted, the
    // event stays on one line.
    let dir = TempDir::new("line");
    let odd = dir.0.join("my \"t\"\narget");
    symlink("/bin/sleep", &odd).unwrap();
    let mut target = spawn_ignoring(
        Command::new(&odd).arg("300"),
        &[Signal::SIGUSR1, Signal::SIGUSR2],
    );
    let pid = target.pid().to_string();
    wait_until_ignored(target.pid(), Signal::SIGUSR2);
    // No -o: stdout is a pipe, so `line`.
    let default = TracerRun::start(&["signals", "--pid", &pid]);
    let chosen = TracerRun::start(&[
        "signals",
        "--pid",
        &pid,
        "--fields",
        "target_pid,signal,sender_pid",
    ]);
    let shell = send_from_shell(target.pid());
    assert!(target.wait_timeout(Duration::from_millis(200)).is_none());

    let out = default.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<Vec<(String, String)>> = out.stdout.iter().map(|l| pairs(l)).collect();
    assert_eq!(
        lines.len(),
        3,
        "two events and the summary: {:#?}",
        out.stdout
    );
    let keys = |p: &[(String, String)]| p.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&lines[0]), keys(&lines[1]), "{:#?}", out.stdout);
    for (event, signal) in lines[..2].iter().zip(["SIGUSR1", "SIGUSR2"]) {
        assert_eq!(value(event, "signal"), signal);
        assert_eq!(value(event, "result"), "ignored");
        assert_eq!(value(event, "target"), format!("my \"t\"\\narget({pid})"));
        assert_eq!(value(event, "sender"), format!("sh({shell})"));
        assert_eq!(value(event, "reason"), "-");
        // The shell's ancestry, pid 1 first, ends with the test process and the shell.
        let ancestry = value(event, "ancestry");
        let first = ancestry.split('>').next().unwrap();
        assert!(first.ends_with("(1)") || first == "...", "{ancestry}");
        let tail = format!("({})>sh({shell})", std::process::id());
        assert!(ancestry.ends_with(&tail), "{ancestry} should end {tail}");
    }
    assert_eq!(value(&lines[2], "type"), "summary");
    assert_eq!(value(&lines[2], "events"), "2");
    // A summary key with a space in it is quoted as a value is, so the line still splits.
    assert_eq!(value(&lines[2], "by_sender.process (kill)"), "2");

    let out = chosen.stop();
    let expected: Vec<String> = ["SIGUSR1", "SIGUSR2"]
        .iter()
        .map(|s| format!("target_pid={pid} signal={s} sender_pid={shell}"))
        .collect();
    assert_eq!(out.stdout[..2], expected, "{:#?}", out.stdout);
}

#[test]
fn a_terminal_gets_the_text_view() {
    let target = sleeper(&[Signal::SIGUSR1, Signal::SIGUSR2]);
    wait_until_ignored(target.pid(), Signal::SIGUSR2);
    // `script` runs the tracer on a pseudo-terminal and copies what it printed.
    let command = format!(
        "{} signals --pid {} --count 2 --duration 30s",
        tracer_bin().display(),
        target.pid()
    );
    let mut script = Owned(
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script (util-linux)"),
    );
    let lines = forward_lines(script.0.stdout.take().unwrap());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|l: &String| l.starts_with("tracer: ready")) {
        assert!(Instant::now() < deadline, "not ready: {seen:#?}");
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            seen.push(line);
        }
    }
    let shell = send_from_shell(target.pid());
    let status = script.wait_timeout(Duration::from_secs(60));
    seen.extend(lines.iter());
    assert!(status.is_some_and(|s| s.success()), "{seen:#?}");
    let text: Vec<&str> = seen.iter().map(|l| l.trim_end_matches('\r')).collect();
    assert!(!text.iter().any(|l| l.contains("signal=")), "{text:#?}");
    let event = text
        .iter()
        .position(|l| l.contains("SIGUSR1") && l.contains(&format!("sh({shell})")))
        .unwrap_or_else(|| panic!("no text line for SIGUSR1: {text:#?}"));
    // The text view gives the ancestry a line of its own.
    assert!(
        text[event..]
            .iter()
            .any(|l| l.starts_with("    ancestry: ")),
        "{text:#?}"
    );
}

#[test]
fn unknown_formats_and_fields_list_the_valid_ones() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["signals", "-o", "yaml"], &["text", "line", "json"]),
        (
            &["signals", "--fields", "time,pid"],
            &["unknown field `pid`", "target_pid", "ancestry"],
        ),
        (
            &["conntrack-drops", "--fields", "port"],
            &["unknown field `port`", "nat_dst"],
        ),
        (
            &["netns", "--watch", "--fields", "flags"],
            &["unknown field `flags`", "lifetime_ms"],
        ),
        (&["netns", "--fields", "action"], &["held_by"]),
        (&["signals", "-o", "json", "--fields", "time"], &["-o line"]),
        (
            &["signals", "-o", "line", "--json"],
            &["cannot be used with"],
        ),
        // Accepted by a snapshot's parser, which never used them.
        (&["netns", "--count", "1"], &["netns --watch"]),
        // An existing path that is not a file: no advice to remove a device.
        (&["record", "-o", "/dev/full"], &["not a regular file"]),
    ];
    for (args, expected) in cases {
        let out = tracer(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for e in *expected {
            assert!(stderr.contains(e), "{args:?}: no {e:?} in {stderr}");
        }
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Runs `tracer ARGS` with stdout, and stderr too if `stderr_too`, into a pipe whose reader
/// is already gone (`| head -1` once it has its line); returns the exit code and stderr.
fn with_reader_gone(args: &[&str], stderr_too: bool) -> (Option<i32>, String) {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let stderr = if stderr_too {
        Stdio::from(write_end.try_clone().unwrap())
    } else {
        Stdio::piped()
    };
    let out = tracer_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(stderr)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn answers_to_a_gone_reader_or_a_full_disk_end_with_an_exit_code_not_a_panic() {
    let dir = TempDir::new("answers");
    let recording = dir.0.join("recording.jsonl");
    std::fs::write(&recording, "not json\n").unwrap();
    let recording = recording.to_str().unwrap();
    // A gone reader of the answer ends the command quietly, as it ends the tracers.
    for args in [&["report", recording][..], &["exit-code", "137"]] {
        assert_eq!(
            with_reader_gone(args, false),
            (Some(0), String::new()),
            "{args:?}"
        );
    }
    // An error with nowhere to be told: the exit code says it.
    assert_eq!(
        with_reader_gone(&["report", "/nonexistent/recording"], true).0,
        Some(2)
    );
    let full = tracer_command()
        .args(["exit-code", "137"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("writing to standard output"), "{stderr}");
}
