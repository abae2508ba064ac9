//! Faults at run time, against the real kernel: a drop flood while `serve` has half a CPU, hostile
//! HTTP clients, Ctrl-C at any moment of start-up, a census thread that dies, and a disk that
//! fills up while recording. Each checks what the tracer promises (README, Reliability) against
//! what the test can see for itself: nft counters, the kernel's own lost counter, /proc.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::{fd::FromRawFd as _, unix::fs::symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tracer_tests::{net::*, scrape::*, *};

/// Status of `GET http://{address}{path}` and how long it took; `Err` when there was no answer
/// within `timeout`.
fn timed_get(address: &str, path: &str, timeout: Duration) -> Result<(u16, Duration), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let started = Instant::now();
    let mut response = agent
        .get(&format!("http://{address}{path}"))
        .call()
        .map_err(|e| e.to_string())?;
    response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((response.status().as_u16(), started.elapsed()))
}

/// A CPU limit of half a CPU (quota 50 ms per 100 ms period) in a cgroup of its own, removed on
/// drop (its processes moved back to the root first). cgroup v2's `cpu.max` where the unified
/// hierarchy has the cpu controller; else the v1 cpu hierarchy's CFS quota (a hybrid host, where
/// the cpu controller is bound to v1).
struct HalfCpu {
    dir: PathBuf,
    root: PathBuf,
    /// Whether this guard handed the cpu controller down from the root (cgroup v2), so that
    /// drop takes it back.
    enabled_cpu: bool,
}

impl HalfCpu {
    fn new(tag: &str) -> Self {
        let name = format!("tracer-test-{}-{tag}", std::process::id());
        let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mut v2 = None;
        let mut v1 = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (point, fstype, options) = (fields[4], fields[sep + 1], fields[sep + 3]);
            if fstype == "cgroup2"
                && fs::read_to_string(format!("{point}/cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
            {
                v2 = Some(PathBuf::from(point));
            } else if fstype == "cgroup" && options.split(',').any(|o| o == "cpu") {
                v1 = Some(PathBuf::from(point));
            }
        }
        let (root, limits): (PathBuf, &[(&str, &str)]) = match (v2, v1) {
            (Some(root), _) => (root, &[("cpu.max", "50000 100000")]),
            (None, Some(root)) => (
                root,
                &[
                    ("cpu.cfs_period_us", "100000"),
                    ("cpu.cfs_quota_us", "50000"),
                ],
            ),
            (None, None) => panic!("no cgroup hierarchy with the cpu controller:\n{mounts}"),
        };
        let subtree = root.join("cgroup.subtree_control");
        // The child gets the controller only if the root hands it down.
        let enabled_cpu = fs::read_to_string(&subtree)
            .is_ok_and(|c| !c.split_whitespace().any(|c| c == "cpu"))
            && fs::write(&subtree, "+cpu").is_ok();
        let dir = root.join(name);
        let _ = fs::remove_dir(&dir);
        // The guard exists before the directory, so that a failure below still restores.
        let limit = Self {
            dir,
            root,
            enabled_cpu,
        };
        fs::create_dir(&limit.dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", limit.dir.display()));
        for (file, value) in limits {
            fs::write(limit.dir.join(file), value)
                .unwrap_or_else(|e| panic!("writing {value} to {file}: {e}"));
        }
        limit
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("moving into the cgroup");
    }

    /// Periods in which the cgroup used up its quota (`nr_throttled` of cpu.stat).
    fn throttled(&self) -> u64 {
        let stat = fs::read_to_string(self.dir.join("cpu.stat")).expect("cpu.stat");
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.parse().ok())
            .expect("nr_throttled in cpu.stat")
    }
}

impl Drop for HalfCpu {
    fn drop(&mut self) {
        let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = fs::write(self.root.join("cgroup.procs"), pid);
        }
        let _ = fs::remove_dir(&self.dir);
        if self.enabled_cpu {
            let _ = fs::write(self.root.join("cgroup.subtree_control"), "-cpu");
        }
    }
}

/// The kernel's own count of records our programs could not put in the ring buffer: the
/// per-CPU `LOST` map of the loaded `kfree_skb` program, summed, as bpftool dumps it.
fn kernel_lost() -> u64 {
    let json = |args: &[&str]| -> Value {
        let out = Command::new("bpftool")
            .args(args)
            .arg("--json")
            .output()
            .expect("bpftool");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let programs = json(&["prog", "show"]);
    let map_ids: Vec<u64> = programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| bpf_name_is("kfree_skb", n))
        })
        .flat_map(|p| p["map_ids"].as_array().cloned().unwrap_or_default())
        .filter_map(|id| id.as_u64())
        .collect();
    let lost_id = map_ids
        .iter()
        .find(|id| json(&["map", "show", "id", &id.to_string()])["name"] == "LOST")
        .unwrap_or_else(|| panic!("no LOST map among {map_ids:?}"));
    let dump = json(&["map", "dump", "id", &lost_id.to_string()]);
    let mut total = 0;
    for entry in dump.as_array().expect("a dump") {
        // With the map's BTF: {"key": 0, "values": [{"cpu": 0, "value": 12}]}; without it,
        // the values are little-endian bytes as hex strings.
        let values = entry
            .get("values")
            .or_else(|| entry.get("formatted").and_then(|f| f.get("values")))
            .and_then(Value::as_array)
            .expect("per-CPU values");
        for v in values {
            total += match &v["value"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::Array(bytes) => bytes.iter().rev().fold(0, |acc, b| {
                    let b = b.as_str().unwrap().trim_start_matches("0x");
                    (acc << 8) | u64::from_str_radix(b, 16).unwrap()
                }),
                other => panic!("a value {other}"),
            };
        }
    }
    total
}

/// Threads that flood.
const FLOOD_THREADS: usize = 2;

/// The UDP port a flood goes to, dropped by the flood namespace's `input` rule.
const FLOOD_PORT: u16 = 9;

/// Sends UDP to 127.0.0.1:[`FLOOD_PORT`] inside `ns` from `threads` threads until `running`
/// goes false or `max` passed; the input hook drops them, after `send` succeeded (a drop on
/// output, which fails the send, made a thinner flood here). Returns the threads; each gives
/// the number of packets sent.
fn flood(
    ns: &Netns,
    threads: usize,
    running: &Arc<AtomicBool>,
    max: Duration,
) -> Vec<thread::JoinHandle<u64>> {
    (0..threads)
        .map(|_| {
            let path = ns.path();
            let running = running.clone();
            thread::spawn(move || {
                in_netns(&path, move || {
                    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                    socket.connect((Ipv4Addr::LOCALHOST, FLOOD_PORT)).unwrap();
                    let deadline = Instant::now() + max;
                    let mut sent = 0u64;
                    while running.load(Ordering::Relaxed) && Instant::now() < deadline {
                        for _ in 0..256 {
                            if socket.send(b"x").is_ok() {
                                sent += 1;
                            }
                        }
                    }
                    sent
                })
            })
        })
        .collect()
}

#[test]
fn a_drop_flood_under_half_a_cpu_keeps_serve_answering_and_every_loss_counted() {
    const FLOOD: Duration = Duration::from_secs(20);
    let ns = Netns::new("flood");
    ns.nft(&format!(
        "table inet flood {{\n  chain input {{\n    type filter hook input priority 0;\n    \
         udp dport {FLOOD_PORT} counter drop comment \"flood\"\n  }}\n}}\n"
    ));
    let inode = ns.inode().to_string();
    let limit = HalfCpu::new("flood");
    // A small ring buffer, so that a flood this machine can make overflows it.
    let served = Served::start(&["--no-events", "--buffer-mb", "1"]);
    limit.add(served.run.pid());
    let address = served.address.clone();

    // Probes, as a kubelet and Prometheus would, all through the flood (the tracer is ready:
    // Served::start waited for it). One try each, failed on any answer but 200 or none within
    // the probe's 1 s. The probing thread runs at a higher priority than the flood, so that
    // the time measured is the tracer's, not the test's own wait for a CPU.
    let running = Arc::new(AtomicBool::new(true));
    let probes = {
        let (running, address) = (running.clone(), address.clone());
        thread::spawn(move || {
            // SAFETY: setpriority on this thread's own id.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10);
            }
            let mut failures = Vec::new();
            let mut scrapes = 0;
            while running.load(Ordering::Relaxed) {
                for path in ["/healthz", "/metrics"] {
                    match timed_get(&address, path, Duration::from_secs(1)) {
                        Ok((200, _)) => scrapes += usize::from(path == "/metrics"),
                        other => failures.push(format!("{path}: {other:?}")),
                    }
                }
                thread::sleep(Duration::from_millis(250));
            }
            (failures, scrapes)
        })
    };
    let started = Instant::now();
    let senders = flood(&ns, FLOOD_THREADS, &running, FLOOD);
    thread::sleep(FLOOD);
    running.store(false, Ordering::Relaxed);
    let sent: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    let flood_took = started.elapsed();
    let (failures, scrapes) = probes.join().unwrap();
    let dropped = ns.nft_counter("flood");
    let rate = dropped as f64 / flood_took.as_secs_f64();
    eprintln!(
        "flood: {sent} sent, {dropped} dropped by the rule in {flood_took:?} ({rate:.0}/s); \
         {scrapes} scrapes; the tracer throttled in {} periods",
        limit.throttled()
    );
    assert!(failures.is_empty(), "during the flood: {failures:#?}");
    assert!(scrapes > 0);

    // Once the reader caught up, the metric is the kernel's own lost counter, and every drop
    // of the namespace is counted or lost (losses may include other namespaces' drops).
    let series = [
        ("class", "rule"),
        ("family", "ipv4"),
        ("netns", inode.as_str()),
        ("k8s_namespace", ""),
        ("k8s_pod", ""),
        ("k8s_workload", ""),
    ];
    let lost_of = |s: &Scrape| {
        ["signals", "conntrack-drops", "netns"]
            .iter()
            .filter_map(|t| s.value("tracer_lost_events_total", &[("tracer", t)]))
            .sum::<f64>()
    };
    let (scrape, kernel) = wait_for("the reader to catch up", Duration::from_secs(30), || {
        let kernel = kernel_lost();
        let scrape = Scrape::of(&address);
        thread::sleep(Duration::from_millis(300));
        let again = Scrape::of(&address);
        let counted = |s: &Scrape| s.value("tracer_conntrack_drops_total", &series);
        (lost_of(&scrape) == kernel as f64
            && lost_of(&again) == lost_of(&scrape)
            && counted(&again) == counted(&scrape))
        .then_some((again, kernel))
    });
    let counted = scrape
        .value("tracer_conntrack_drops_total", &series)
        .unwrap_or(0.0);
    eprintln!("flood: {counted} drops counted, {kernel} records lost");
    // A machine fast enough for the flood loses nothing; then every drop is counted.
    if kernel == 0 {
        assert_eq!(counted, dropped as f64, "nothing lost, yet not all counted");
    } else {
        assert!(counted > 0.0 && counted <= dropped as f64);
        assert!(
            counted + kernel as f64 >= dropped as f64,
            "{counted} counted + {kernel} lost < {dropped} dropped: some went missing"
        );
    }

    // SIGTERM in the middle of another flood: serve ends within 3 s, nothing stays loaded.
    let running = Arc::new(AtomicBool::new(true));
    let senders = flood(&ns, FLOOD_THREADS, &running, Duration::from_secs(30));
    thread::sleep(Duration::from_secs(2));
    let stopping = Instant::now();
    kill(Pid::from_raw(served.run.pid() as i32), Signal::SIGTERM).unwrap();
    let out = served.run.wait();
    let stop_took = stopping.elapsed();
    running.store(false, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        stop_took < Duration::from_secs(3),
        "took {stop_took:?} to stop"
    );
    assert_eq!(out.summary()["stopped_by"], "terminate");
    assert!(out.summary()["lost"].as_u64().unwrap() >= kernel);
    assert_eq!(ours_left_behind(), Vec::<String>::new());
}

/// A TCP connection to `to` from `from` (any 127/8 address is this host's).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until it hands it over.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(SocketAddrV4::new(from, 0));
        let bound = libc::bind(fd, std::ptr::from_ref(&local).cast(), len);
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let remote = sockaddr(to);
        let connected = libc::connect(fd, std::ptr::from_ref(&remote).cast(), len);
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

/// `n` connections to `to` from `from`, each sending `first` (if not empty), opened by a few
/// threads at once: a connection whose handshake the kernel dropped (accept queue full) waits
/// a second for its retry, and these waits overlap.
fn connect_many(from: Ipv4Addr, to: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    const THREADS: usize = 20;
    thread::scope(|scope| {
        let openers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(THREADS)
                        .map(|_| {
                            let mut stream = connect_from(from, to);
                            if !first.is_empty() {
                                // A refused one may be closed already.
                                let _ = stream.write_all(first);
                            }
                            stream
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        openers
            .into_iter()
            .flat_map(|o| o.join().unwrap())
            .collect()
    })
}

/// Whether the server closed `stream` (end of file or reset), without waiting.
fn closed_by_server(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Open file descriptors of process `pid`.
fn fds_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Raises this process's open-file limit to `n` (the test holds thousands of connections).
fn allow_open_files(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(n.max(limit.rlim_cur));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= n,
        "open-file limit {} < {n}",
        limit.rlim_cur
    );
}

/// The tracer's HTTP bounds (serve/http.rs; README, Reliability).
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_PEER: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A handshake the kernel dropped because the accept queue was full is retried by the server
/// 1 s, 3 s, then 7 s after it began; until it is accepted (and closed) the client sees it
/// open. (Less than [`HEADER_TIMEOUT`]: the capped ones must not be closed meanwhile.)
const REFUSALS_SEEN_WITHIN: Duration = Duration::from_secs(8);

/// Waits until exactly `expected` of `streams` are open, the others closed by the server as it
/// accepted them; panics with the count last seen.
fn settle_open(streams: &[TcpStream], expected: usize) {
    let deadline = Instant::now() + REFUSALS_SEEN_WITHIN;
    loop {
        let open = streams.iter().filter(|s| !closed_by_server(s)).count();
        if open == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of {} connections open after {REFUSALS_SEEN_WITHIN:?}, {expected} expected",
            streams.len()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_and_half_sent_connections_are_capped_and_closed_and_a_scrape_still_gets_through() {
    allow_open_files(4096);
    // Inside a namespace of the test's, whose addresses stand for distinct clients: every
    // loopback source counts as one client (a local process can bind any 127.x.y.z).
    let ns = Netns::new("http");
    ns.ip(&["addr", "add", "198.18.0.1/16", "dev", "lo"]);
    let served = Served::start_in(&ns.path(), "0.0.0.0:0", &["--no-events"]);
    let port: u16 = served.address.rsplit(':').next().unwrap().parse().unwrap();
    let to = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 1), port));
    let address = to.to_string();
    ns.run_inside(move || hostile_clients_against(served, to, &address));
}

fn hostile_clients_against(served: Served, to: SocketAddr, address: &str) {
    let pid = served.run.pid();
    let fds_before = fds_of(pid);
    let refused = |s: &Scrape, reason| {
        s.value(
            "tracer_http_connections_refused_total",
            &[("reason", reason)],
        )
        .unwrap()
    };
    let before = Scrape::of(address);

    // 2,000 idle connections from one address, 100 that send half a request head from another.
    let opening = Instant::now();
    let idle = connect_many(Ipv4Addr::new(198, 18, 1, 1), to, 2000, b"");
    let half = connect_many(
        Ipv4Addr::new(198, 18, 1, 2),
        to,
        100,
        b"GET /metrics HTTP/1.1\r\nHost: tracer\r\n",
    );
    let opened = opening.elapsed();
    eprintln!("2,100 connections opened in {opened:?}");
    assert!(opened < HEADER_TIMEOUT / 2, "too slow to test the cap");

    // A normal scrape, from a third address, answers within a second.
    let (status, took) = timed_get(address, "/metrics", Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("the scrape failed: {e}"));
    assert_eq!(status, 200);
    eprintln!("scrape among 2,100 hostile connections took {took:?}");

    // Beyond the per-address cap, each was closed as soon as accepted.
    settle_open(&idle, MAX_PER_PEER);
    settle_open(&half, MAX_PER_PEER);
    let fds_held = fds_of(pid);
    assert!(
        fds_held <= fds_before + 2 * MAX_PER_PEER + 2,
        "{fds_held} fds open with {} connections held, {fds_before} before",
        2 * MAX_PER_PEER
    );
    let scrape = Scrape::of(address);
    assert_eq!(
        refused(&scrape, "per_peer") - refused(&before, "per_peer"),
        (2000 + 100 - 2 * MAX_PER_PEER) as f64
    );

    // Beyond the cap on all connections, from many addresses: refused too.
    let many: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|i| connect_from(Ipv4Addr::new(198, 18, 2, 1 + (i / MAX_PER_PEER) as u8), to))
        .collect();
    let over = 2 * MAX_PER_PEER;
    settle_open(&many, MAX_CONNECTIONS - over);
    assert!(fds_of(pid) <= fds_before + MAX_CONNECTIONS + 2);
    drop(many);
    // Their slots are free once the server has read their ends: until then the total cap is
    // still reached, and the loopback clients below would all be refused.
    wait_for(
        "the server to let go of the dropped connections",
        Duration::from_secs(10),
        || (fds_of(pid) <= fds_before + 2 * MAX_PER_PEER + 2).then_some(()),
    );

    // Loopback sources are one client: of one connection from each of 2 × 16 of them, 16
    // stay open.
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, to.port()));
    let local: Vec<TcpStream> = (0..2 * MAX_PER_PEER)
        .map(|i| connect_from(Ipv4Addr::new(127, 0, 3, 1 + i as u8), loopback))
        .collect();
    settle_open(&local, MAX_PER_PEER);
    drop(local);

    // After the documented timeout, the idle and the half-sent ones are closed, and the
    // descriptors given back.
    thread::sleep(HEADER_TIMEOUT.saturating_sub(opening.elapsed()) + Duration::from_secs(2));
    let left = idle
        .iter()
        .chain(half.iter())
        .filter(|s| !closed_by_server(s))
        .count();
    assert_eq!(left, 0, "connections still open after {HEADER_TIMEOUT:?}");
    let fds_after = wait_for(
        "the descriptors to be closed",
        Duration::from_secs(5),
        || {
            let n = fds_of(pid);
            (n <= fds_before + 1).then_some(n)
        },
    );
    assert!(fds_after <= fds_before + 1);
    let out = served.run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
}

/// Whether process `pid` catches `signal` (its `SigCgt` mask has it).
fn catches(pid: u32, signal: Signal) -> bool {
    let bit = 1u64 << (signal as i32 - 1);
    status_field(pid, "SigCgt:")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & bit != 0)
}

/// A small random number generator (xorshift), seeded from the clock; the seed is printed so
/// that a failing sequence can be replayed.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A run from `spawn`, frozen (SIGSTOP) as soon as it catches SIGINT, with none of our programs
/// loaded yet. Start-up takes about 15 ms from there, so the handler is watched for without
/// pausing; a run the test itself was too slow to freeze in time (descheduled on a busy
/// machine) is replaced, three times at most. A tracer that loaded before catching would fail
/// every time.
fn frozen_before_loading(spawn: &dyn Fn() -> Owned) -> Owned {
    for attempt in 1..=3 {
        let child = spawn();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !catches(child.pid(), Signal::SIGINT) {
            assert!(Instant::now() < deadline, "no SIGINT handler within 10 s");
        }
        send(child.pid(), Signal::SIGSTOP);
        let loaded = ours_loaded();
        if loaded.is_empty() {
            return child;
        }
        eprintln!("attempt {attempt}: frozen only once these were loaded: {loaded:?}");
    }
    panic!("SIGINT caught only once programs were loaded, in three runs");
}

#[test]
fn ctrl_c_at_any_moment_of_start_up_ends_the_run_cleanly() {
    const RUNS: usize = 50;
    let args = ["serve", "--listen", "127.0.0.1:0", "--no-events"];
    let spawn = || {
        tracer_command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Owned)
            .expect("starting tracer")
    };
    // Signals are caught before anything is loaded (the process frozen while bpftool looks);
    // how long start-up takes from there to "ready".
    let start_up = {
        let mut child = frozen_before_loading(&spawn);
        send(child.pid(), Signal::SIGCONT);
        let caught_at = Instant::now();
        let stderr = forward_lines(child.0.stderr.take().unwrap());
        loop {
            let line = stderr
                .recv_timeout(Duration::from_secs(60))
                .expect("tracer ready within 60 s");
            if line.starts_with("tracer: ready") {
                break caught_at.elapsed();
            }
        }
    };
    eprintln!("start-up takes {start_up:?}");

    // Two deterministic cases first. SIGINT before anything is loaded (sent while the process
    // is frozen, so it is handled before start-up goes on): exit 130, nothing traced.
    {
        let mut child = frozen_before_loading(&spawn);
        let stderr = forward_lines(child.0.stderr.take().unwrap());
        send(child.pid(), Signal::SIGINT);
        send(child.pid(), Signal::SIGCONT);
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .expect("still running 30 s after SIGINT");
        let stderr: Vec<String> = stderr.iter().collect();
        assert_eq!(status.code(), Some(130), "{}", stderr.join("\n"));
        assert!(
            stderr.iter().any(|l| l.contains("nothing was traced")),
            "{}",
            stderr.join("\n")
        );
        assert_eq!(ours_left_behind(), Vec::<String>::new());
    }
    // A second signal ends the process at once, in the handler: SIGINT and SIGTERM while
    // frozen, exit 128 + whichever the handler saw second, and none of the run's own ending
    // (its "nothing was traced").
    {
        let mut child = frozen_before_loading(&spawn);
        let stderr = forward_lines(child.0.stderr.take().unwrap());
        send(child.pid(), Signal::SIGINT);
        send(child.pid(), Signal::SIGTERM);
        send(child.pid(), Signal::SIGCONT);
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .expect("still running 30 s after two signals");
        let stderr: Vec<String> = stderr.iter().collect();
        assert!(matches!(status.code(), Some(130 | 143)), "{status}");
        assert!(
            !stderr.iter().any(|l| l.contains("nothing was traced")),
            "{}",
            stderr.join("\n")
        );
        assert_eq!(ours_left_behind(), Vec::<String>::new());
    }
    // SIGINT once ready: exit 0 with the summary.
    {
        let mut child = spawn();
        let stdout = forward_lines(child.0.stdout.take().unwrap());
        let stderr = forward_lines(child.0.stderr.take().unwrap());
        while !stderr
            .recv_timeout(Duration::from_secs(60))
            .expect("tracer ready within 60 s")
            .starts_with("tracer: ready")
        {}
        send(child.pid(), Signal::SIGINT);
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .expect("still running 30 s after SIGINT");
        let stderr: Vec<String> = stderr.iter().collect();
        assert_eq!(status.code(), Some(0), "{}", stderr.join("\n"));
        let summary = stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .find(|v| v["type"] == "summary")
            .expect("a summary line on stdout");
        assert_eq!(summary["stopped_by"], "interrupt");
        assert_eq!(ours_left_behind(), Vec::<String>::new());
    }

    let mut random = Random::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for run in 0..RUNS {
        let mut child = spawn();
        let stdout = forward_lines(child.0.stdout.take().unwrap());
        let stderr = forward_lines(child.0.stderr.take().unwrap());
        wait_for("the signal handler", Duration::from_secs(10), || {
            catches(child.pid(), Signal::SIGINT).then_some(())
        });
        let delay = Duration::from_micros(random.below(start_up.as_micros() as u64 * 11 / 10));
        thread::sleep(delay);
        send(child.pid(), Signal::SIGINT);
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("run {run}: still running 30 s after SIGINT"));
        let stderr: Vec<String> = stderr.iter().collect();
        let stdout: Vec<String> = stdout.iter().collect();
        let code = status.code();
        assert!(
            matches!(code, Some(0 | 130)),
            "run {run} (SIGINT after {delay:?}): {status}\n{}",
            stderr.join("\n")
        );
        let ready = stderr.iter().any(|l| l.starts_with("tracer: ready"));
        let summary = stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "summary");
        if ready {
            let summary = summary.unwrap_or_else(|| panic!("run {run}: ready, no summary"));
            assert_eq!(summary["stopped_by"], "interrupt", "run {run}");
        }
        if code == Some(130) {
            assert!(
                stderr.iter().any(|l| l.contains("nothing was traced")),
                "run {run}: {}",
                stderr.join("\n")
            );
        }
        assert_eq!(
            ours_left_behind(),
            Vec::<String>::new(),
            "run {run} (SIGINT after {delay:?})"
        );
        *outcomes
            .entry(format!("exit {code:?}, ready {ready}"))
            .or_default() += 1;
    }
    eprintln!("outcomes: {outcomes:?}");
}

#[test]
fn a_census_thread_that_dies_turns_healthz_503_within_one_census_period() {
    const CENSUS_EVERY: Duration = Duration::from_secs(5);
    // The test-only hook (serve/mod.rs): the census thread panics at its second census.
    let mut run = tracer_command();
    run.args(["serve", "--listen", "127.0.0.1:0", "--census-every", "5s"])
        .env("TRACER_FAULT", "census-panic");
    // The census thread starts before "ready" and panics at its second census, one period
    // later: at most a period after "ready", and after it only if start-up took less.
    let spawned = Instant::now();
    let run = TracerRun::start_command(run);
    let ready_at = Instant::now();
    let start_up = ready_at - spawned;
    let address = run
        .stderr_lines()
        .iter()
        .find_map(|l| l.strip_prefix("tracer: serving http://")?.split('/').next())
        .expect("the address")
        .to_string();
    // /healthz says "starting" until the event loop's first turn, just after "ready".
    let (first, body) = wait_for("the event loop", Duration::from_secs(2), || {
        let answer = get(&address, "/healthz");
        (!answer.1.contains("starting")).then_some(answer)
    });
    if start_up + Duration::from_secs(2) < CENSUS_EVERY {
        assert_eq!(first, 200, "/healthz {start_up:?} after start: {body}");
    }
    let (status, body) = wait_for("/healthz 503", CENSUS_EVERY * 2, || {
        let answer = get(&address, "/healthz");
        (answer.0 != 200).then_some(answer)
    });
    let took = ready_at.elapsed();
    assert_eq!(status, 503);
    assert!(body.contains("census"), "{body}");
    assert!(
        took <= CENSUS_EVERY + Duration::from_secs(1),
        "503 only {took:?} after ready (census every {CENSUS_EVERY:?})"
    );
    // The rest still works, and ends cleanly.
    assert_eq!(get(&address, "/metrics").0, 200);
    let out = run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(ours_left_behind(), Vec::<String>::new());
}

/// A tmpfs of `size` mounted on a directory of its own; unmounted and removed on drop.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn new(tag: &str, size: &str) -> Self {
        let dir = TempDir::new(tag);
        let path = dir.0.to_str().unwrap().to_string();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tracer-test",
                &path,
            ],
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Before the TempDir removes the directory; lazily, should a file still be open.
        let _ = Command::new("umount")
            .args(["-l", self.dir.0.to_str().unwrap()])
            .status();
    }
}

#[test]
fn a_full_disk_ends_the_recording_on_a_whole_line_with_the_summary_and_report_on_stderr() {
    let disk = SmallDisk::new("full-disk", "64k");
    let file = disk.path().join("incident.jsonl");
    let recording = TracerRun::start(&["record", "-o", file.to_str().unwrap()]);
    let pid = recording.pid();
    let running = || status_field(pid, "State:").is_some_and(|s| !s.starts_with('Z'));
    // Signals the target ignores, each an event of a few hundred bytes, until the disk is full
    // and the tracer ends the run by itself.
    let target = sleeper(&[Signal::SIGUSR2]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while running()
        && fs::metadata(&file).map_or(0, |m| m.len()) < 60 * 1024
        && Instant::now() < deadline
    {
        send(target.pid(), Signal::SIGUSR2);
        sent += 1;
        if sent % 100 == 0 {
            thread::sleep(Duration::from_millis(10));
        }
    }
    // Well past full now.
    for _ in 0..2000 {
        send(target.pid(), Signal::SIGUSR2);
    }
    let out = recording.wait();
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    let text = fs::read_to_string(&file).unwrap();
    assert!(
        text.ends_with('\n'),
        "the file ends mid-line: {:?}",
        &text[text.len() - 80..]
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["type"] == "signal"),
        "no event in the file"
    );
    // The summary (not in the file: no room) and the report are on stderr.
    let summary: Value = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary on stderr:\n{}", out.stderr));
    assert_eq!(summary["stopped_by"], "write-error");
    assert!(summary["events"].as_u64().unwrap() >= lines.len() as u64);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "report of {}: {} events",
            file.display(),
            lines.len()
        )),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    assert_eq!(ours_left_behind(), Vec::<String>::new());
}

#[test]
fn record_never_follows_a_symlink_nor_overwrites_a_file() {
    let dir = TempDir::new("record-link");
    let victim = dir.0.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let link = dir.0.join("link.jsonl");
    symlink(&victim, &link).unwrap();
    let dangling = dir.0.join("dangling.jsonl");
    symlink(dir.0.join("nowhere"), &dangling).unwrap();
    for path in [&link, &dangling, &victim] {
        let out = tracer(&["record", "-o", path.to_str().unwrap(), "--duration", "1s"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(
            stderr.contains("exists") && stderr.contains("-o"),
            "{}: {stderr}",
            path.display()
        );
    }
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!dir.0.join("nowhere").exists());
    assert_eq!(ours_left_behind(), Vec::<String>::new());
}
