//! `cargo xtask bench [--quick]`: start-up, kernel cost per event, throughput without loss, cost
//! to the traced path, userspace CPU and `serve`'s memory over namespace churn, each beside a baseline measured in the same run
//! (bpftrace on the same tracepoint, an empty program on the same hook, or no tracer at all).
//! Prints a table and writes the figures as JSON to target/bench/bench.json.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read},
    net::UdpSocket,
    os::unix::{io::AsRawFd as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::workspace_root;

/// How much work each measurement does.
#[derive(Clone, Copy)]
struct Scale {
    startup_runs: usize,
    storm: u64,
    flood: u64,
    rates: &'static [u64],
    window: Duration,
    /// Network namespaces made and dropped under `serve`.
    churn: usize,
    /// The busy node a netns snapshot scans: namespaces, processes, fds per process.
    census: (usize, usize, usize),
}

const FULL: Scale = Scale {
    startup_runs: 5,
    storm: 200_000,
    flood: 200_000,
    rates: &[50_000, 100_000, 200_000, 400_000, 550_000, 800_000],
    window: Duration::from_secs(2),
    churn: 2_000,
    census: (500, 2_000, 100),
};

const QUICK: Scale = Scale {
    startup_runs: 1,
    storm: 5_000,
    flood: 5_000,
    rates: &[20_000],
    window: Duration::from_millis(300),
    churn: 20,
    census: (10, 50, 100),
};

/// One line of the results table.
struct Row {
    measure: String,
    ours: f64,
    baseline_name: String,
    baseline: f64,
    unit: &'static str,
    goal: &'static str,
}

impl Row {
    fn new(
        measure: &str,
        ours: f64,
        baseline: (&str, f64),
        unit: &'static str,
        goal: &'static str,
    ) -> Self {
        Self {
            measure: measure.to_string(),
            ours,
            baseline_name: baseline.0.to_string(),
            baseline: baseline.1,
            unit,
            goal,
        }
    }

    fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            f64::NAN
        } else {
            self.ours / self.baseline
        }
    }
}

fn tracer_bin() -> PathBuf {
    workspace_root().join("target/release/tracer")
}

/// A running tracer (ours, bpftrace, or the empty program), stopped on drop.
struct Attacher {
    child: Child,
    startup: Duration,
    output: Option<thread::JoinHandle<String>>,
}

impl Attacher {
    /// Starts `cmd` and waits (at most 60 s) for a line containing `ready` on stderr (ours) or
    /// stdout (bpftrace). Everything else the process prints is read as it comes; with
    /// `keep_last`, stdout's last line (a run's summary) is kept. Only that one: a reader that
    /// kept a storm's million lines in one growing string took CPU from the tracer on the two
    /// cores they share (the lossless rows lost signals at 400k/s that a pipe into `tail -1`
    /// took whole at 650k/s).
    fn start(mut cmd: Command, ready_on_stdout: bool, keep_last: bool) -> Result<Self> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let watch = move |stream: Box<dyn Read + Send>, signals_ready: bool, keep: bool| {
            let tx = ready_tx.clone();
            thread::spawn(move || {
                let (mut reader, mut line, mut last) =
                    (BufReader::new(stream), Vec::new(), Vec::new());
                while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    if signals_ready && line.windows(5).any(|w| w == b"ready") {
                        let _ = tx.send(());
                    }
                    if keep {
                        std::mem::swap(&mut last, &mut line);
                    }
                    line.clear();
                }
                String::from_utf8_lossy(&last).into_owned()
            })
        };
        let out = watch(Box::new(stdout), ready_on_stdout, keep_last);
        watch(Box::new(stderr), !ready_on_stdout, false);
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            bail!("{cmd:?} did not become ready within 60 s");
        }
        let startup = started.elapsed();
        Ok(Self {
            child,
            startup,
            output: Some(out),
        })
    }

    /// Interrupts it and returns the last line it printed on stdout (if kept).
    fn stop(mut self) -> String {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }

    /// Peak resident set size (VmHWM), KiB, once it has run a moment past "ready": ours maps
    /// its ring buffer (most of its memory) just after saying it, which a reading at the line
    /// itself can miss (`record` read 9 MiB at "ready", 42 MiB a second later).
    fn settled_peak_kib(&self) -> u64 {
        thread::sleep(Duration::from_millis(300));
        status_kib(self.child.id(), "VmHWM:").unwrap_or(0)
    }

    /// CPU time (user + system) used so far, seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at "state".
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz
    }
}

impl Drop for Attacher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Where our runs keep their cache of kernel BTF facts: the bench's own, so that a cold start
/// can be measured without touching the one in /run.
fn btf_cache_dir() -> PathBuf {
    workspace_root().join("target/bench/btf-cache")
}

fn ours(args: &[&str]) -> Command {
    let mut cmd = Command::new(tracer_bin());
    cmd.env("TRACER_BTF_CACHE", btf_cache_dir()).args(args);
    cmd
}

fn bpftrace(script: &str) -> Command {
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-e", script]);
    cmd
}

/// A process that ignores SIGUSR1: the target of signal storms.
fn signal_target() -> Result<Child> {
    let mut cmd = Command::new("sleep");
    cmd.arg("600").stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGUSR1, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.spawn().context("starting the signal target")
}

/// Sends `n` SIGUSR1 as fast as possible; returns signals per second.
fn storm(pid: u32, n: u64) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Forks a child that dies with us (PDEATHSIG), runs `child` and exits with 0 if it returns.
///
/// # Safety
/// `child` runs in a copy of a process with threads: it may make only async-signal-safe calls.
unsafe fn fork_child(child: impl FnOnce()) -> Result<libc::pid_t> {
    // SAFETY: plain syscall.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the caller's promise covers the child; the parent only reads the result.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above. A parent that died before PDEATHSIG was set would never send it:
        // the child then ends at once instead of outliving the bench.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        child();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    Ok(pid)
}

/// Sends `n` SIGUSR1, each from a new process: a sender the tracer sees for the first time,
/// right after a fork (as a `kill` or `pkill` run from a shell is). A spawner forks them one
/// after the other; with SIGCHLD ignored their exits generate no signal, so the runs counted
/// are the `n` kills and the spawner's own SIGCHLD.
fn new_sender_storm(pid: u32, n: u64) -> Result<()> {
    // SAFETY: the spawner and its children make only async-signal-safe calls; a failed fork
    // ends the spawner with 1, which is reported below.
    let spawner = unsafe {
        fork_child(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            for _ in 0..n {
                match libc::fork() {
                    -1 => libc::_exit(1),
                    0 => {
                        libc::kill(pid as i32, libc::SIGUSR1);
                        libc::_exit(0);
                    }
                    // Returns once the child is reaped (ECHILD, with SIGCHLD ignored).
                    _ => libc::waitpid(-1, std::ptr::null_mut(), 0),
                };
            }
        })
    }?;
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(spawner, &mut status, 0) } < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("waiting for the new-sender storm's spawner: {err}");
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("the new-sender storm's spawner failed (status {status:#x})");
    }
    Ok(())
}

/// Sends `n` SIGUSR1 with rt_sigqueueinfo(2) claiming SI_TIMER: the path on which the tracer
/// reads the sender's syscall registers to name it.
fn forged_storm(pid: u32, n: u64) {
    // A siginfo (128 bytes): signo, errno, code = SI_TIMER.
    let mut info = [0i32; 32];
    info[0] = libc::SIGUSR1;
    info[2] = -2;
    for _ in 0..n {
        // SAFETY: rt_sigqueueinfo(2) with a valid siginfo buffer.
        unsafe { libc::syscall(libc::SYS_rt_sigqueueinfo, pid, libc::SIGUSR1, info.as_ptr()) };
    }
}

/// Sends SIGUSR1 at `rate` per second for `window`; returns how many were sent.
fn paced(pid: u32, rate: u64, window: Duration) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < window {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
            sent += 1;
        }
        thread::yield_now();
    }
    sent
}

/// kube-proxy-like DNAT ([`BenchNet::new`]'s namespace): traffic to 10.96.0.10:53 is
/// translated to 127.0.0.2:53 and dropped by a rule; traffic to 10.96.0.11:53 goes to
/// 127.0.0.3:53, where a socket reads it; traffic to 127.0.0.4:9 finds no socket (dropped, but
/// not by netfilter).
const DNAT_RULESET: &str = "table ip bench {
  chain nat {
    type nat hook output priority -100;
    ip daddr 10.96.0.10 udp dport 53 dnat to 127.0.0.2:53
    ip daddr 10.96.0.11 udp dport 53 dnat to 127.0.0.3:53
  }
  chain filter {
    type filter hook output priority 0;
    ip daddr 127.0.0.2 udp dport 53 drop
  }
}
";

/// A firewall rule and nothing else: UDP to port 9999 dropped over IPv4 and IPv6 alike, with no
/// conntrack in the namespace, so both drops are described from the packet's own headers.
const RULE_RULESET: &str = "table inet bench {
  chain filter {
    type filter hook output priority 0;
    udp dport 9999 drop
  }
}
";

/// A network namespace with `ruleset`.
struct BenchNet {
    name: String,
}

impl BenchNet {
    fn new(tag: &str, ruleset: &str) -> Result<Self> {
        let name = format!("trbench-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        crate::run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let net = Self { name };
        crate::run_checked(Command::new("ip").args(["-n", &net.name, "link", "set", "lo", "up"]))?;
        crate::run_checked(Command::new("ip").args([
            "-n",
            &net.name,
            "route",
            "add",
            "10.96.0.0/16",
            "dev",
            "lo",
        ]))?;
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &net.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            &mut nft.stdin.take().context("nft stdin")?,
            ruleset.as_bytes(),
        )?;
        if !nft.wait()?.success() {
            bail!("nft rejected the bench ruleset");
        }
        Ok(net)
    }

    /// Sends UDP to `to` from inside the namespace, for `window` or `limit` packets; returns
    /// packets per second attempted.
    fn flood(&self, to: (&'static str, u16), limit: u64, window: Duration) -> Result<f64> {
        let path = format!("/run/netns/{}", self.name);
        let file = fs::File::open(&path)?;
        thread::spawn(move || -> Result<f64> {
            // SAFETY: setns on a valid namespace fd, affecting only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let sink = UdpSocket::bind("127.0.0.3:53")?;
            sink.set_nonblocking(true)?;
            let socket = UdpSocket::bind(if to.0.contains(':') {
                "[::1]:0"
            } else {
                "127.0.0.1:0"
            })?;
            let started = Instant::now();
            let mut sent = 0u64;
            let mut buf = [0u8; 64];
            while sent < limit && started.elapsed() < window {
                let _ = socket.send_to(b"bench", to);
                sent += 1;
                while sink.recv_from(&mut buf).is_ok() {}
            }
            Ok(sent as f64 / started.elapsed().as_secs_f64())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))?
    }
}

/// Work for [`kernel_ns_per_event`]: `limit` packets to `to` inside `net`.
fn flood_work<'a>(
    net: &'a BenchNet,
    to: (&'static str, u16),
    limit: u64,
) -> impl Fn() -> Result<()> + 'a {
    move || net.flood(to, limit, Duration::from_secs(30)).map(|_| ())
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Destinations inside [`BenchNet`].
const DROPPED: (&str, u16) = ("10.96.0.10", 53);
const PASSING: (&str, u16) = ("10.96.0.11", 53);
const NO_SOCKET: (&str, u16) = ("127.0.0.4", 9);
/// Destinations inside the [`RULE_RULESET`] namespace.
const RULE_DROPPED_V4: (&str, u16) = ("127.0.0.1", 9999);
const RULE_DROPPED_V6: (&str, u16) = ("::1", 9999);

/// `kernel.bpf_stats_enabled` on for the run, restored after.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<Self> {
        const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let old = fs::read_to_string(PATH).context("reading bpf_stats_enabled")?;
        fs::write(PATH, "1").context("enabling bpf_stats")?;
        Ok(Self(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// `(id, run_time_ns, run_cnt)` of every loaded program.
fn program_stats() -> Result<Vec<(u64, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()?;
    let progs: Value = serde_json::from_slice(&out.stdout)?;
    Ok(progs
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let n = |k: &str| p[k].as_u64().unwrap_or(0);
                    (n("id"), n("run_time_ns"), n("run_cnt"))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Ids of the BPF programs process `pid` holds open (from its fds' fdinfo), so that other
/// tracers running on the machine are never measured by mistake.
fn programs_of(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// Nanoseconds per run of the busiest program that `attach` loads while `work` runs.
fn kernel_ns_per_event(
    attach: Command,
    ready_on_stdout: bool,
    work: &dyn Fn() -> Result<()>,
) -> Result<f64> {
    let attacher = Attacher::start(attach, ready_on_stdout, false)?;
    let own = programs_of(attacher.child.id());
    work()?;
    let busiest = program_stats()?
        .into_iter()
        .filter(|(id, ..)| own.contains(id))
        .max_by_key(|(_, _, cnt)| *cnt);
    attacher.stop();
    match busiest {
        Some((_, ns, cnt)) if cnt > 0 => Ok(ns as f64 / cnt as f64),
        _ => bail!("no program ran"),
    }
}

/// A row of `tracer`'s nanoseconds per event while `work` runs, against the empty program
/// on `hook` under the same work.
fn against_empty(
    measure: &str,
    tracer: Command,
    hook: &str,
    work: &dyn Fn() -> Result<()>,
    goal: &'static str,
) -> Result<Row> {
    let ns = kernel_ns_per_event(tracer, false, work)?;
    let empty = kernel_ns_per_event(ours(&["bench-hook", hook]), false, work)?;
    Ok(Row::new(measure, ns, ("empty program", empty), "ns", goal))
}

/// `SKB_DROP_REASON_NETFILTER_DROP` on this kernel, for the bpftrace baseline's filter.
fn netfilter_drop_reason() -> Result<u64> {
    let out = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "c",
        ])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("SKB_DROP_REASON_NETFILTER_DROP = "))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .context("SKB_DROP_REASON_NETFILTER_DROP not in kernel BTF")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Which measures a run takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Only {
    Everything,
    /// The netns snapshot's.
    Netns,
    /// Start-up time and peak RSS.
    Startup,
    /// Kernel cost per event and the cost to the traced path.
    Kernel,
}

/// Every measure, or only some.
pub fn run(quick: bool, only: Only) -> Result<()> {
    let scale = if quick { QUICK } else { FULL };
    crate::run_checked(Command::new(env!("CARGO")).args([
        "build",
        "--release",
        "--package",
        "tracer",
    ]))?;
    let mut rows = Vec::new();
    if only == Only::Netns {
        netns_census(scale.census, &mut rows)?;
        return report(&rows, quick);
    }
    let mut target = signal_target()?;
    let pid = target.id();
    let result = measure(scale, pid, only, &mut rows);
    let _ = target.kill();
    let _ = target.wait();
    result?;
    report(&rows, quick)
}

fn measure(scale: Scale, pid: u32, only: Only, rows: &mut Vec<Row>) -> Result<()> {
    let reason = netfilter_drop_reason()?;
    const READY: &str = "BEGIN { printf(\"ready\\n\"); }";
    let sig_probe = format!(
        "tracepoint:signal:signal_generate /args->pid == {pid}/ {{ printf(\"%s %d -> %d sig %d result %d\\n\", comm, pid, args->pid, args->sig, args->result); }}"
    );
    let skb_probe = format!(
        "tracepoint:skb:kfree_skb /args->reason == {reason}/ {{ printf(\"%p proto %d\\n\", args->skbaddr, args->protocol); }}"
    );
    let netns_probe = "tracepoint:task:task_newtask /args->clone_flags & 0x40000000/ { printf(\"%d %s\\n\", args->pid, args->comm); }";
    let sig_script = format!("{sig_probe} {READY}");
    let skb_script = format!("{skb_probe} {READY}");
    let all_script = format!("{sig_probe} {skb_probe} {netns_probe} {READY}");
    let pid_s = pid.to_string();

    if only != Only::Kernel {
        startup_rows(scale, (&sig_script, &skb_script, &all_script), &pid_s, rows)?;
    }
    if only == Only::Startup {
        return Ok(());
    }

    // 2. Kernel cost per event.
    let stats = BpfStats::enable()?;
    let signal_work = || -> Result<()> {
        storm(pid, scale.storm);
        Ok(())
    };
    let net = BenchNet::new("dnat", DNAT_RULESET)?;
    let rule_net = BenchNet::new("rule", RULE_RULESET)?;
    let drop_work = flood_work(&net, DROPPED, scale.flood);
    let other_drops = flood_work(&net, NO_SOCKET, scale.flood);
    // A filter that rejects what the storm sends: the cost a busy node pays while the tracer
    // watches for something else.
    let elsewhere = std::process::id().to_string();
    let sig_ours = kernel_ns_per_event(
        ours(&["signals", "--pid", &pid_s, "--json"]),
        false,
        &signal_work,
    )?;
    let sig_empty = kernel_ns_per_event(
        ours(&["bench-hook", "signal_generate"]),
        false,
        &signal_work,
    )?;
    let sig_bt = kernel_ns_per_event(bpftrace(&sig_script), true, &signal_work)?;
    let skb_ours = kernel_ns_per_event(ours(&["conntrack-drops", "--json"]), false, &drop_work)?;
    let skb_empty = kernel_ns_per_event(ours(&["bench-hook", "kfree_skb"]), false, &drop_work)?;
    let skb_bt = kernel_ns_per_event(bpftrace(&skb_script), true, &drop_work)?;
    // The floor under any report on the hook: a record holding only the event's header.
    let header_only = |hook: &str, work: &dyn Fn() -> Result<()>| {
        kernel_ns_per_event(ours(&["bench-hook", hook, "--header-record"]), false, work)
    };
    let sig_header = header_only("signal_generate", &signal_work)?;
    let skb_header = header_only("kfree_skb", &drop_work)?;
    for (hook, ours_ns, empty, header, bt) in [
        ("signal_generate", sig_ours, sig_empty, sig_header, sig_bt),
        ("kfree_skb", skb_ours, skb_empty, skb_header, skb_bt),
    ] {
        rows.push(Row::new(
            &format!("kernel ns/event, {hook}"),
            ours_ns,
            ("empty program", empty),
            "ns",
            "<= 3",
        ));
        rows.push(Row::new(
            &format!("kernel ns/event, {hook}, a record of the event's header only"),
            header,
            ("empty program", empty),
            "ns",
            "",
        ));
        rows.push(Row::new(
            &format!("kernel ns/event, {hook}"),
            ours_ns,
            ("bpftrace", bt),
            "ns",
            "",
        ));
    }

    let sig_skipped = kernel_ns_per_event(
        ours(&["signals", "--pid", &elsewhere, "--json"]),
        false,
        &signal_work,
    )?;
    // A sender seen for the first time, just forked: the second goal for a signal.
    rows.push(against_empty(
        "kernel ns/event, signal_generate, every sender a new process",
        ours(&["signals", "--pid", &pid_s, "--json"]),
        "signal_generate",
        &|| new_sender_storm(pid, scale.storm / 100),
        "<= 10",
    )?);
    rows.push(Row::new(
        "kernel ns/event, signal_generate, filtered out by --pid",
        sig_skipped,
        ("empty program", sig_empty),
        "ns",
        "<= 3",
    ));
    // The sender attribution runs only for a signal that passed the filters: a forged code
    // filtered out must cost what the empty program costs.
    let forged_work = || -> Result<()> {
        forged_storm(pid, scale.storm);
        Ok(())
    };
    rows.push(against_empty(
        "kernel ns/event, signal_generate, rt_sigqueueinfo claiming SI_TIMER, filtered out by --pid",
        ours(&["signals", "--pid", &elsewhere, "--json"]),
        "signal_generate",
        &forged_work,
        "<= 3",
    )?);
    rows.push(against_empty(
        "kernel ns/event, kfree_skb, drops not by netfilter",
        ours(&["conntrack-drops", "--json"]),
        "kfree_skb",
        &other_drops,
        "<= 3",
    )?);
    // A rule's drop without conntrack, IPv6 beside IPv4: the flow comes from the packet's own
    // headers, IPv6's after a walk of its extension headers.
    let conntrack_drops = || ours(&["conntrack-drops", "--json"]);
    let rule_v4 = kernel_ns_per_event(
        conntrack_drops(),
        false,
        &flood_work(&rule_net, RULE_DROPPED_V4, scale.flood),
    )?;
    let rule_v6 = kernel_ns_per_event(
        conntrack_drops(),
        false,
        &flood_work(&rule_net, RULE_DROPPED_V6, scale.flood),
    )?;
    rows.push(Row::new(
        "kernel ns/event, kfree_skb, IPv6 rule drop",
        rule_v6,
        ("IPv4 rule drop", rule_v4),
        "ns",
        "<= 1.10",
    ));

    // Off again for what follows: the statistics time every run of every program (two clock
    // reads), which the traced rates would pay and a tracer in the field does not.
    drop(stats);

    if only != Only::Kernel {
        throughput_rows(scale, pid, rows)?;
    }

    // 4. Cost to the traced path.
    let bare = storm(pid, scale.storm);
    let traced = {
        let a = Attacher::start(ours(&["signals", "--pid", &pid_s, "--json"]), false, false)?;
        let r = storm(pid, scale.storm);
        a.stop();
        r
    };
    rows.push(Row::new(
        "kill(2) rate, signals tracer attached",
        traced,
        ("no tracer", bare),
        "/s",
        ">= 0.6",
    ));
    let window = scale.window;
    let bare = net.flood(PASSING, u64::MAX, window)?;
    let traced = {
        let a = Attacher::start(ours(&["conntrack-drops", "--json"]), false, false)?;
        let r = net.flood(PASSING, u64::MAX, window)?;
        a.stop();
        r
    };
    rows.push(Row::new(
        "UDP through DNAT, conntrack-drops attached",
        traced,
        ("no tracer", bare),
        "pkt/s",
        ">= 0.97",
    ));

    if only == Only::Kernel {
        return Ok(());
    }

    // 5. Memory of a long-running serve.
    serve_memory(scale.churn, rows)?;

    // 6. A netns snapshot of a busy node.
    netns_census(scale.census, rows)
}

/// 3 and 5. Throughput without loss, and userspace CPU.
fn throughput_rows(scale: Scale, pid: u32, rows: &mut Vec<Row>) -> Result<()> {
    let pid_s = pid.to_string();
    let mut best = 0.0;
    // Events the reader handled per second of its own CPU time, at the busiest rate: what one
    // core decodes, enriches and writes.
    let mut per_core = (0.0, 0, 0.0);
    for &rate in scale.rates {
        let tracer = Attacher::start(ours(&["signals", "--pid", &pid_s, "--json"]), false, true)?;
        let cpu_before = tracer.cpu_seconds();
        let started = Instant::now();
        let sent = paced(pid, rate, scale.window);
        let achieved = sent as f64 / started.elapsed().as_secs_f64();
        thread::sleep(Duration::from_millis(300));
        let cpu = tracer.cpu_seconds() - cpu_before;
        let elapsed = started.elapsed().as_secs_f64();
        let out = tracer.stop();
        let summary: Value = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .context("no summary")?;
        let (events, lost) = (
            summary["events"].as_u64().unwrap_or(0),
            summary["lost"].as_u64().unwrap_or(0),
        );
        if events + lost != sent {
            bail!("signals at {rate}/s: sent {sent}, reported {events} + lost {lost}");
        }
        if lost == 0 {
            best = achieved;
        }
        let events_per_s = events as f64 / elapsed;
        if cpu > 0.0 && events_per_s >= per_core.2 {
            per_core = (events as f64 / cpu, rate, events_per_s);
        }
        rows.push(Row::new(
            &format!(
                "userspace CPU per 10k events/s (asked {}k/s, sent {:.0}k/s, lost {lost})",
                rate / 1000,
                achieved / 1000.0
            ),
            100.0 * cpu / elapsed / (events_per_s / 10_000.0),
            ("-", 0.0),
            "% of a core",
            "",
        ));
    }
    rows.push(Row::new(
        &format!(
            "events/s on one core: decoded, enriched, written as JSON (events / the tracer's CPU seconds, at {}k/s asked)",
            per_core.1 / 1000
        ),
        per_core.0,
        ("-", 0.0),
        "/s",
        ">= 600,000",
    ));
    rows.push(Row::new(
        "signals/s with no loss",
        best,
        ("-", 0.0),
        "/s",
        ">= 550,000",
    ));
    Ok(())
}

/// 1. Start-up time and peak RSS, ours beside bpftrace's with the same probes.
fn startup_rows(
    scale: Scale,
    (sig_script, skb_script, all_script): (&str, &str, &str),
    pid_s: &str,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let recording = workspace_root().join("target/bench/record.jsonl");
    fs::create_dir_all(recording.parent().context("bench dir")?)?;
    let recording = recording.to_string_lossy().into_owned();
    // Cold: no cache of BTF facts (removed before each run); warm: the cache the run before
    // wrote, as every start after the first finds it.
    let startup = |cmd: &dyn Fn() -> Command, on_stdout: bool, cold: bool| -> Result<(f64, f64)> {
        let mut times = Vec::new();
        let mut rss = Vec::new();
        if !cold {
            Attacher::start(cmd(), on_stdout, false)?.stop();
        }
        for _ in 0..scale.startup_runs {
            // `record` writes a new file only.
            let _ = fs::remove_file(&recording);
            if cold {
                let _ = fs::remove_dir_all(btf_cache_dir());
            }
            let a = Attacher::start(cmd(), on_stdout, false)?;
            times.push(a.startup.as_secs_f64() * 1000.0);
            rss.push(a.settled_peak_kib() as f64 / 1024.0);
            a.stop();
        }
        Ok((median(times), median(rss)))
    };
    for (name, args, script, pair) in [
        (
            "signals --pid",
            vec!["signals", "--pid", pid_s],
            sig_script,
            true,
        ),
        (
            "conntrack-drops",
            vec!["conntrack-drops"],
            skb_script,
            false,
        ),
        (
            "record",
            vec!["record", "-o", recording.as_str()],
            all_script,
            false,
        ),
    ] {
        let (bt_ms, bt_mib) = startup(&|| bpftrace(script), true, false)?;
        let (warm_ms, warm_mib) = startup(&|| ours(&args), false, false)?;
        let (cold_ms, cold_mib) = if pair {
            startup(&|| ours(&args), false, true)?
        } else {
            (warm_ms, warm_mib)
        };
        let mut row = |measure: String, ours: f64, baseline: f64, unit, goal| {
            rows.push(Row::new(&measure, ours, ("bpftrace", baseline), unit, goal))
        };
        if pair {
            row(
                format!("start-up, {name}, cold (no BTF cache)"),
                cold_ms,
                bt_ms,
                "ms",
                "<= 0.25",
            );
            row(
                format!("start-up, {name}, warm (BTF cache)"),
                warm_ms,
                bt_ms,
                "ms",
                "<= 0.10",
            );
            row(
                format!("peak RSS, {name}, cold"),
                cold_mib,
                bt_mib,
                "MiB",
                "<= 0.20",
            );
            row(
                format!("peak RSS, {name}, warm"),
                warm_mib,
                bt_mib,
                "MiB",
                "<= 0.20",
            );
        } else {
            row(
                format!("start-up, {name} (BTF cache)"),
                warm_ms,
                bt_ms,
                "ms",
                "<= 0.25",
            );
            row(
                format!("peak RSS, {name}"),
                warm_mib,
                bt_mib,
                "MiB",
                "<= 0.20",
            );
        }
    }
    Ok(())
}

/// Forked processes that each hold open fds, some in network namespaces of their own: the
/// node a `tracer netns` snapshot has to scan. Killed (and reaped) on drop.
struct BusyNode(Vec<libc::pid_t>);

impl BusyNode {
    /// `processes` processes with `fds` open fds each (a third `/dev/null`, the rest both ends
    /// of Unix socket pairs: sockets cost the scan most); the first `namespaces` of them in a
    /// network namespace of their own.
    fn new(processes: usize, fds: usize, namespaces: usize) -> Result<Self> {
        let mut node = Self(Vec::with_capacity(processes));
        for i in 0..processes {
            // SAFETY: the child makes only async-signal-safe syscalls (the path is a static C
            // string) and never returns; it dies with us or when killed on drop.
            let pid = unsafe {
                fork_child(|| {
                    if i < namespaces && libc::unshare(libc::CLONE_NEWNET) != 0 {
                        libc::_exit(1);
                    }
                    let mut open = 0;
                    while open < fds / 3 {
                        libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                        open += 1;
                    }
                    let mut pair = [0; 2];
                    while open + 2 <= fds {
                        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr());
                        open += 2;
                    }
                    loop {
                        libc::pause();
                    }
                })
            }?;
            node.0.push(pid);
        }
        Ok(node)
    }
}

impl Drop for BusyNode {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: plain syscalls on our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// CPU seconds (user + system) used by our reaped children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Wall and CPU time of `tracer netns --json` on a node with `census.0` namespaces and
/// `census.1` processes holding `census.2` fds each (medians of three). The CPU time says what
/// the scan costs when the machine is shared.
fn netns_census(census: (usize, usize, usize), rows: &mut Vec<Row>) -> Result<()> {
    let (namespaces, processes, fds) = census;
    let _node = BusyNode::new(processes, fds, namespaces)?;
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (started, cpu_before) = (Instant::now(), children_cpu());
        let out = ours(&["netns", "--json"])
            .stderr(Stdio::null())
            .output()
            .context("tracer netns")?;
        wall.push(started.elapsed().as_secs_f64());
        cpu.push(children_cpu() - cpu_before);
        let listed = out
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        if listed < namespaces {
            bail!("tracer netns listed {listed} namespaces, expected at least {namespaces}");
        }
    }
    let node = format!("{namespaces} namespaces, {processes} processes x {fds} fds");
    rows.push(Row::new(
        &format!("netns snapshot, wall time: {node}"),
        median(wall) * 1000.0,
        ("-", 0.0),
        "ms",
        "< 1000",
    ));
    rows.push(Row::new(
        &format!("netns snapshot, CPU time (user + sys): {node}"),
        median(cpu) * 1000.0,
        ("-", 0.0),
        "ms",
        "-",
    ));
    // conntrack-drops reads the figures of every namespace the same scan finds before it is
    // ready: its start-up on this node.
    let mut startup = Vec::new();
    for _ in 0..3 {
        let a = Attacher::start(ours(&["conntrack-drops", "--json"]), false, false)?;
        startup.push(a.startup.as_secs_f64());
        a.stop();
    }
    rows.push(Row::new(
        &format!("start-up, `conntrack-drops`: {node}"),
        median(startup) * 1000.0,
        ("-", 0.0),
        "ms",
        "-",
    ));
    Ok(())
}

/// Makes and drops `n` network namespaces, each with a firewall rule that drops three UDP
/// packets: what a node's pod churn leaves in a long `serve` (creation, teardown and drop
/// records for namespaces that are gone).
fn namespace_churn(n: usize) -> Result<()> {
    let rules = workspace_root().join("target/bench/churn.nft");
    fs::write(
        &rules,
        "table ip churn {\n  chain out {\n    type filter hook output priority 0;\n    udp dport 9 drop\n  }\n}\n",
    )?;
    let script = format!(
        "ip link set lo up && nft -f {} && for i in 1 2 3; do echo x > /dev/udp/127.0.0.9/9; done",
        rules.display()
    );
    for _ in 0..n {
        // The sends fail (EPERM: dropped), which is the point.
        Command::new("unshare")
            .args(["--net", "bash", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("unshare --net")?;
    }
    Ok(())
}

/// Resident memory of `serve` before and after [`namespace_churn`]: what its per-namespace
/// state costs (it is capped: see the LRU caches of the tracers).
fn serve_memory(churn: usize, rows: &mut Vec<Row>) -> Result<()> {
    let a = Attacher::start(
        // A short grace, so that the gone namespaces' metric series are removed before the
        // second reading, which then shows what the tracers keep.
        ours(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--census-every",
            "1s",
            "--pod-grace",
            "1s",
        ]),
        false,
        false,
    )?;
    let settle = Duration::from_secs(2);
    thread::sleep(settle);
    let before = status_kib(a.child.id(), "VmRSS:").context("serve's RSS")? as f64;
    namespace_churn(churn)?;
    // Teardown runs in a kernel worker, and the census once a second.
    thread::sleep(settle * 2);
    let after = status_kib(a.child.id(), "VmRSS:").context("serve's RSS")? as f64;
    a.stop();
    rows.push(Row::new(
        &format!("serve RSS after {churn} namespaces with drops came and went"),
        after / 1024.0,
        ("serve at start", before / 1024.0),
        "MiB",
        "-",
    ));
    rows.push(Row::new(
        "serve RSS growth per 1000 namespaces",
        (after - before).max(0.0) / churn as f64 * 1000.0,
        ("-", 0.0),
        "KiB",
        "-",
    ));
    Ok(())
}

fn machine() -> Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "kernel": kernel.trim(),
        "cpu": cpu,
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
    })
}

fn report(rows: &[Row], quick: bool) -> Result<()> {
    println!("| measure | tracer | baseline | baseline value | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let baseline = if r.baseline_name == "-" {
            "-".to_string()
        } else {
            format!("{:.1} {}", r.baseline, r.unit)
        };
        let ratio = if r.baseline_name == "-" {
            "-".to_string()
        } else {
            format!("{:.2}", r.ratio())
        };
        println!(
            "| {} | {:.1} {} | {} | {} | {} | {} |",
            r.measure, r.ours, r.unit, r.baseline_name, baseline, ratio, r.goal
        );
    }
    let figures: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"measure": r.measure, "tracer": r.ours, "unit": r.unit, "baseline": r.baseline_name,
                   "baseline_value": r.baseline, "ratio": r.ratio(), "goal": r.goal})
        })
        .collect();
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(if quick {
        "bench-quick.json"
    } else {
        "bench.json"
    });
    fs::write(
        &path,
        serde_json::to_string_pretty(
            &json!({"machine": machine(), "quick": quick, "results": figures}),
        )?,
    )?;
    println!("figures written to {}", path.display());
    Ok(())
}
