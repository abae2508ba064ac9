//! Test support: run the real `tracer` binary, spawn processes the tests own, and make sure
//! everything they create is removed again, also when an assertion fails.

pub mod cri;
pub mod net;
pub mod scrape;

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;

/// The tracer under test: `TRACER_BIN` (set by `cargo xtask test`) or the release build.
pub fn tracer_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TRACER_BIN") {
        return path.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/release/tracer")
}

/// The state directories of the test's live CRI nodes' containerd, which a tracer the test
/// runs is told of (`TRACER_CONTAINERD_STATE`), as an operator names a containerd of their own.
pub static CONTAINERD_STATE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// `tracer`, told where the live CRI nodes keep their state.
pub fn tracer_command() -> Command {
    let mut command = Command::new(tracer_bin());
    let dirs = CONTAINERD_STATE.lock().unwrap_or_else(|e| e.into_inner());
    if !dirs.is_empty() {
        command.env(
            "TRACER_CONTAINERD_STATE",
            std::env::join_paths(dirs.iter()).unwrap(),
        );
    }
    command
}

/// A running `tracer`, its stdout collected line by line.
pub struct TracerRun {
    child: Option<Child>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    /// stdout lines already read by [`TracerRun::wait_for_json`].
    stdout_seen: Vec<String>,
}

/// What a finished run printed.
#[derive(Debug)]
pub struct TracerOutput {
    pub status: ExitStatus,
    /// Every stdout line that parsed as JSON, in order.
    pub objects: Vec<Value>,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl TracerOutput {
    /// Objects with `"type": kind`.
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["type"] == kind).collect()
    }

    pub fn summary(&self) -> &Value {
        self.of_type("summary")
            .pop()
            .unwrap_or_else(|| panic!("no summary in output; stderr: {}", self.stderr))
    }
}

pub fn forward_lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl TracerRun {
    /// Starts `tracer ARGS` and waits (at most 60 s) until it says it is ready.
    pub fn start(args: &[&str]) -> Self {
        let mut command = tracer_command();
        command.args(args);
        Self::start_command(command)
    }

    /// [`TracerRun::start`] with a command of the caller's (an environment of its own).
    pub fn start_command(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tracer");
        let stdout = forward_lines(child.stdout.take().expect("stdout"));
        let stderr = forward_lines(child.stderr.take().expect("stderr"));
        let mut run = Self {
            child: Some(child),
            stdout,
            stderr,
            stderr_seen: Vec::new(),
            stdout_seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match run.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let ready = line.starts_with("tracer: ready");
                    run.stderr_seen.push(line);
                    if ready {
                        return run;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "tracer exited before it was ready: {}",
                        run.stderr_seen.join("\n")
                    )
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "tracer not ready after 60 s: {}",
                    run.stderr_seen.join("\n")
                );
            }
        }
    }

    /// The first JSON line on stdout, printed already or within `timeout`, that `accept` takes;
    /// every line read stays part of the run's output.
    pub fn wait_for_json(
        &mut self,
        timeout: Duration,
        mut accept: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        let seen = self
            .stdout_seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| accept(v));
        if seen.is_some() {
            return seen;
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self
                .stdout
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    let value = serde_json::from_str(&line).ok();
                    self.stdout_seen.push(line);
                    if let Some(value) = value.filter(|v| accept(v)) {
                        return Some(value);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The stderr lines printed up to "ready".
    pub fn stderr_lines(&self) -> &[String] {
        &self.stderr_seen
    }

    /// Sends `signal` to the tracer and collects everything it printed (waits at most 60 s).
    pub fn stop_with(self, signal: Signal) -> TracerOutput {
        // Give the ring buffer reader a moment to catch up with what the test just did.
        thread::sleep(Duration::from_millis(300));
        let _ = kill(Pid::from_raw(self.pid() as i32), signal);
        self.wait()
    }

    /// Interrupts the tracer (as Ctrl-C would) and collects its output.
    pub fn stop(self) -> TracerOutput {
        self.stop_with(Signal::SIGINT)
    }

    /// Waits (at most 120 s) for the tracer to exit by itself.
    pub fn wait(mut self) -> TracerOutput {
        let mut child = self.child.take().expect("running tracer");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for tracer") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tracer did not exit within 120 s");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout: Vec<String> = self
            .stdout_seen
            .drain(..)
            .chain(self.stdout.iter())
            .collect();
        self.stderr_seen.extend(self.stderr.iter());
        TracerOutput {
            status,
            objects: stdout
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
            stdout,
            stderr: self.stderr_seen.join("\n"),
        }
    }
}

impl Drop for TracerRun {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `tracer ARGS` to completion (for commands that exit by themselves).
pub fn tracer(args: &[&str]) -> std::process::Output {
    tracer_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tracer")
}

/// A child process that is killed and reaped when dropped.
pub struct Owned(pub Child);

impl Owned {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().expect("waiting for child") {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with `ignored` signals set to SIG_IGN (inherited across exec).
pub fn spawn_ignoring(cmd: &mut Command, ignored: &[Signal]) -> Owned {
    let ignored = ignored.to_vec();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &sig in &ignored {
                nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    Owned(
        cmd.stdin(Stdio::null())
            .spawn()
            .expect("spawning test process"),
    )
}

/// A `sleep` the test owns.
pub fn sleeper(ignored: &[Signal]) -> Owned {
    spawn_ignoring(Command::new("sleep").arg("300"), ignored)
}

/// The parent of `pid`, from /proc.
pub fn parent_of(pid: u32) -> Option<u32> {
    status_field(pid, "PPid:")?.parse().ok()
}

/// A field of /proc/PID/status (`"Tgid:"`, `"NSpid:"`...), trimmed.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
}

/// The chain of parents of `pid` up to pid 1, from /proc (parent first).
pub fn ancestry_of(pid: u32) -> Vec<u32> {
    let mut chain = Vec::new();
    let mut current = pid;
    while current > 1 && chain.len() < 64 {
        let Some(parent) = parent_of(current) else {
            break;
        };
        if parent == 0 {
            break;
        }
        chain.push(parent);
        current = parent;
    }
    chain
}

fn bpftool_json(what: &str) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args([what, "show", "--json"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// Names of the BPF programs currently loaded (`bpftool prog show`).
pub fn loaded_bpf_programs() -> Vec<String> {
    bpftool_json("prog")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// Names of the programs that BPF links currently attach (`bpftool link show`).
pub fn linked_bpf_programs() -> Vec<String> {
    let names: std::collections::HashMap<u64, String> = bpftool_json("prog")
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string())))
        .collect();
    bpftool_json("link")
        .iter()
        .filter_map(|l| names.get(&l["prog_id"].as_u64()?).cloned())
        .collect()
}

/// The programs each tracer attaches.
pub const PROGRAMS_BY_TRACER: &[(&str, &[&str])] = &[
    ("signals", &["signal_generate", "mark_victim"]),
    ("conntrack-drops", &["kfree_skb"]),
    (
        "netns",
        &[
            "netns_task_newtask",
            "netns_unshare_enter",
            "netns_unshare_exit",
            "netns_cleanup_start",
            "netns_teardown_end",
            "netns_process_exit",
            "netns_census",
        ],
    ),
];

/// The programs `tracer` attaches (see [`PROGRAMS_BY_TRACER`]).
pub fn programs_of(tracer: &str) -> &'static [&'static str] {
    PROGRAMS_BY_TRACER
        .iter()
        .find(|(name, _)| *name == tracer)
        .map(|(_, programs)| *programs)
        .unwrap_or_else(|| panic!("no tracer {tracer}"))
}

/// Whether bpftool's name for a program is `program`: the kernel keeps 15 characters of a
/// name, and bpftool shows the whole one only where it finds it in the program's BTF.
pub fn bpf_name_is(program: &str, shown: &str) -> bool {
    shown == program || shown == &program[..program.len().min(15)]
}

fn is_ours(shown: &str) -> bool {
    PROGRAMS_BY_TRACER
        .iter()
        .flat_map(|(_, programs)| programs.iter())
        .any(|p| bpf_name_is(p, shown))
}

/// Our programs that are loaded now.
pub fn ours_loaded() -> Vec<String> {
    loaded_bpf_programs()
        .into_iter()
        .filter(|n| is_ours(n))
        .collect()
}

/// Ours still loaded or linked after giving the kernel a moment: it frees programs
/// asynchronously (after an RCU grace period) once their last file descriptor is closed.
pub fn ours_left_behind() -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = ours_loaded();
        left.extend(linked_bpf_programs().into_iter().filter(|n| is_ours(n)));
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a thread that entered the network namespace at `path` (a netns bind mount).
pub fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread inside the namespace")
}

/// Polls `f` until it gives a value, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until process `pid` ignores `signal` (its `SigIgn` mask has it): a container's
/// process is still the runtime's init, which does not ignore it, for a moment after the
/// runtime said it started.
pub fn wait_until_ignored(pid: u32, signal: Signal) {
    let bit = 1u64 << (signal as i32 - 1);
    wait_for(
        &format!("pid {pid} to ignore {signal}"),
        Duration::from_secs(10),
        || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
            (mask & bit != 0).then_some(())
        },
    );
}

/// Sends `signal` to `pid`, panicking on failure.
pub fn send(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).expect("sending signal");
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tracer-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
