//! Network namespaces, nft rules and conntrack counters for tests: everything made here is
//! removed when its guard drops, also when an assertion fails.

use std::{
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use crate::{send, wait_for, Owned};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    /// Deleted by the test (`ip netns del`): only its processes are left to end on drop.
    deleted: bool,
}

impl Netns {
    /// `tag` keeps names apart; the test process id keeps parallel runs apart.
    pub fn new(tag: &str) -> Self {
        let name = format!("trt-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Self {
            name,
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns del`: the namespace lives on while anything else holds it.
    pub fn delete(&mut self) {
        run("ip", &["netns", "del", &self.name]);
        self.deleted = true;
    }

    /// Inode of the namespace, as the kernel reports it.
    pub fn inode(&self) -> u64 {
        fs::metadata(self.path()).expect("netns bind mount").ino()
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Loads an nft ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        nft_in(&self.path(), ruleset);
    }

    /// Runs `f` on a thread inside the namespace: sockets it creates belong to the namespace.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        crate::in_netns(&self.path(), f)
    }

    /// Sends `count` UDP packets from inside to [`VIP_A`]:[`BLOCKED_PORT`], which
    /// [`node_ruleset`] drops, for at most `within`; returns how many the kernel refused.
    pub fn send_blocked(&self, count: u64, within: Duration) -> u64 {
        let vip: IpAddr = VIP_A.parse().unwrap();
        self.send_refused(&[(vip, BLOCKED_PORT).into()], count, within)
    }

    /// Sends `count` UDP packets from inside, to each of `targets` in turn (IPv4 and IPv6 alike,
    /// one socket per target), for at most `within`; returns how many the kernel refused
    /// (sendto fails with EPERM when netfilter drops the packet on its way out).
    pub fn send_refused(&self, targets: &[SocketAddr], count: u64, within: Duration) -> u64 {
        send_refused_in(&self.path(), targets, count, within)
    }

    /// Packets the nft rule with `comment "NAME"` counted (its `counter`), read from the
    /// kernel's ruleset inside the namespace.
    pub fn nft_counter(&self, name: &str) -> u64 {
        nft_counter_in(&self.path(), name)
    }

    /// The namespace's conntrack counters summed over CPUs, read by the kernel's own
    /// `/proc/net/stat/nf_conntrack` inside it (through thread-self: `/proc/net` follows the
    /// process, not the thread that entered the namespace).
    pub fn conntrack_counters(&self) -> ConntrackCounters {
        conntrack_counters_in(&self.path())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep it alive: end them first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// [`Netns::send_refused`] from inside the network namespace at `path` (a bind mount, or
/// /proc/PID/fd/N of a process holding it).
pub fn send_refused_in(path: &str, targets: &[SocketAddr], count: u64, within: Duration) -> u64 {
    let targets = targets.to_vec();
    crate::in_netns(path, move || {
        let sockets: Vec<(UdpSocket, SocketAddr)> = targets
            .into_iter()
            .map(|to| {
                let any: SocketAddr = match to {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                (UdpSocket::bind(any).unwrap(), to)
            })
            .collect();
        let deadline = Instant::now() + within;
        (0..count)
            .take_while(|_| Instant::now() < deadline)
            .filter(|i| {
                let (socket, to) = &sockets[*i as usize % sockets.len()];
                socket.send_to(b"x", to).is_err()
            })
            .count() as u64
    })
}

/// [`Netns::conntrack_counters`] of the network namespace at `path`.
pub fn conntrack_counters_in(path: &str) -> ConntrackCounters {
    crate::in_netns(path, || {
        let text =
            fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack").expect("conntrack stats");
        ConntrackCounters::parse(&text)
    })
}

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `nsenter --net=PATH PROGRAM ARGS`: runs a command inside the network namespace at `path`
/// (a bind mount or `/proc/PID/ns/net`).
pub fn run_in(path: &str, program: &str, args: &[&str]) {
    let net = format!("--net={path}");
    let mut all = vec![net.as_str(), program];
    all.extend_from_slice(args);
    run("nsenter", &all);
}

/// Loads an nft ruleset inside the network namespace at `path`.
pub fn nft_in(path: &str, ruleset: &str) {
    let mut child = Command::new("nsenter")
        .args([&format!("--net={path}"), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft rejected:\n{ruleset}");
}

/// Packets the nft rule with `comment "NAME"` counted (its `counter`), read from the
/// kernel's ruleset inside the network namespace at `path`.
pub fn nft_counter_in(path: &str, name: &str) -> u64 {
    let out = Command::new("nsenter")
        .args([&format!("--net={path}"), "nft", "list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    let text = String::from_utf8_lossy(&out.stdout);
    let tag = format!("comment \"{name}\"");
    let line = text
        .lines()
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no rule {tag} in:\n{text}"));
    let mut words = line.split_whitespace();
    words
        .find(|w| *w == "packets")
        .and_then(|_| words.next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in `{line}`"))
}

/// A veth pair between two namespaces, with an address on each end.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) {
    let (a_if, b_if) = (
        format!("v{}a", std::process::id() % 100_000),
        format!("v{}b", std::process::id() % 100_000),
    );
    run(
        "ip",
        &[
            "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
            &b.name,
        ],
    );
    // IPv6 addresses usable at once, without duplicate address detection's wait.
    let nodad = |addr: &str| if addr.contains(':') { "nodad" } else { "" };
    for (ns, addr, dev) in [(a, a_addr, &a_if), (b, b_addr, &b_if)] {
        let mut args = vec!["addr", "add", addr, "dev", dev, nodad(addr)];
        args.retain(|a| !a.is_empty());
        ns.ip(&args);
    }
    a.ip(&["link", "set", &a_if, "up"]);
    b.ip(&["link", "set", &b_if, "up"]);
}

/// Conntrack counters of one namespace, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackCounters {
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    pub clash_resolve: u64,
}

impl ConntrackCounters {
    fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let mut sum = Self::default();
        for line in lines {
            let v: Vec<u64> = line
                .split_whitespace()
                .map(|x| u64::from_str_radix(x, 16).unwrap())
                .collect();
            sum.insert_failed += v[col("insert_failed")];
            sum.drop += v[col("drop")];
            sum.early_drop += v[col("early_drop")];
            sum.clash_resolve += v[col("clashres")];
        }
        sum
    }

    pub fn since(&self, before: &Self) -> Self {
        Self {
            insert_failed: self.insert_failed - before.insert_failed,
            drop: self.drop - before.drop,
            early_drop: self.early_drop - before.early_drop,
            clash_resolve: self.clash_resolve - before.clash_resolve,
        }
    }
}

pub const CLIENT: &str = "10.77.0.1";
pub const BACKEND: &str = "10.77.0.2";
pub const VIP_A: &str = "10.96.0.10";
pub const VIP_B: &str = "10.96.0.11";
/// A port a firewall rule drops.
pub const BLOCKED_PORT: u16 = 5353;

/// The addresses of a [`topology_of`], IPv4 or IPv6.
pub struct Addressing {
    /// The nft family of the node's tables, which is also its address keyword.
    pub nft_family: &'static str,
    pub client: &'static str,
    pub backend: &'static str,
    pub vip_a: &'static str,
    pub vip_b: &'static str,
    pub prefix_len: u8,
    pub vip_net: &'static str,
    /// No-op rules between NAT and conntrack's confirmation that widen the insert race
    /// window: IPv6 needs more for as many races (see KERNEL-NOTES.md).
    pub slow_rules: u32,
}

pub const IPV4: Addressing = Addressing {
    nft_family: "ip",
    client: CLIENT,
    backend: BACKEND,
    vip_a: VIP_A,
    vip_b: VIP_B,
    prefix_len: 24,
    vip_net: "10.96.0.0/16",
    slow_rules: 300,
};

pub const IPV6: Addressing = Addressing {
    nft_family: "ip6",
    client: "fd77::1",
    backend: "fd77::2",
    vip_a: "fd96::a",
    vip_b: "fd96::b",
    prefix_len: 64,
    vip_net: "fd96::/64",
    slow_rules: 3000,
};

/// `addr:port`, `[addr]:port` for IPv6: how the tracer and sockets write an endpoint.
pub fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// kube-proxy-like DNAT in the "node" namespace: two Service VIPs with the same endpoint, a
/// firewall DROP of [`BLOCKED_PORT`], and no-op rules between NAT and conntrack's confirmation
/// that widen the insert race window.
pub fn node_ruleset(a: &Addressing) -> String {
    let mut slow = String::new();
    for i in 0..a.slow_rules {
        slow.push_str(&format!("    meta mark 0x{:x} counter\n", 0x1000 + i));
    }
    let (family, backend) = (a.nft_family, endpoint(a.backend, 53));
    format!(
        "table {family} kubeproxy {{
  chain output {{
    type nat hook output priority -100;
    {family} daddr {} udp dport 53 dnat to {backend}
    {family} daddr {} udp dport 53 dnat to {backend}
  }}
  chain filter {{
    type filter hook output priority 0;
    udp dport {BLOCKED_PORT} drop
  }}
  chain slow {{
    type filter hook postrouting priority 200;
{slow}  }}
}}
",
        a.vip_a, a.vip_b
    )
}

/// The client's view of a run.
#[derive(Debug, Default)]
pub struct ClientTally {
    pub sent: u64,
    /// sendto(2) failures: the kernel refused the packet on its way out (NF_DROP → EPERM).
    pub refused: u64,
    pub replies: u64,
}

/// Each round, one fresh UDP socket sends to `targets` from one thread each, released at the
/// same instant; then collects replies for a moment. Runs `rounds` rounds, and more batches
/// of as many (at most ten in all, within 60 s) until the two packets did race in conntrack
/// at least once: on a loaded machine the two threads may seldom run at the same instant.
pub fn race_rounds(node: &Netns, targets: [&'static str; 2], rounds: u32) -> ClientTally {
    let mut tally = ClientTally::default();
    let before = node.conntrack_counters();
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..rounds * 10 {
        if round > 0 && round % rounds == 0 {
            let raced = node.conntrack_counters().since(&before);
            if raced.insert_failed + raced.clash_resolve > 0 {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        let any = if targets[0].contains(':') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let socket = Arc::new(node.run_inside(move || UdpSocket::bind(any).unwrap()));
        socket
            .set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let senders: Vec<_> = targets
            .into_iter()
            .map(|vip| {
                let (socket, barrier) = (socket.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    socket.send_to(b"query", (vip, 53)).is_ok()
                })
            })
            .collect();
        for sender in senders {
            tally.sent += 1;
            if !sender.join().unwrap() {
                tally.refused += 1;
            }
        }
        let mut buf = [0u8; 64];
        while socket.recv_from(&mut buf).is_ok() {
            tally.replies += 1;
        }
    }
    tally
}

/// A "node" namespace with kube-proxy-like DNAT ([`node_ruleset`]) and a "backend"
/// namespace with a UDP echo server on port 53.
pub struct Topology {
    pub node: Netns,
    _backend: Netns,
    _echo: EchoServer,
}

impl Topology {
    /// The backend's namespace (to route other clients' replies back through the node).
    pub fn backend(&self) -> &Netns {
        &self._backend
    }
}

pub fn topology() -> Topology {
    topology_of(&IPV4)
}

/// [`topology`] with the addresses `a`.
pub fn topology_of(a: &Addressing) -> Topology {
    let node = Netns::new("node");
    let backend = Netns::new("backend");
    let len = a.prefix_len;
    veth(
        &node,
        &format!("{}/{len}", a.client),
        &backend,
        &format!("{}/{len}", a.backend),
    );
    node.ip(&["route", "add", a.vip_net, "via", a.backend]);
    node.nft(&node_ruleset(a));
    let echo = EchoServer::start(&backend, &endpoint(a.backend, 53), Duration::from_secs(120));
    Topology {
        node,
        _backend: backend,
        _echo: echo,
    }
}

/// A sysctl set for the duration of a test. Restored on drop, and by a watchdog process if the
/// test process dies without unwinding (killed, aborted).
pub struct SysctlGuard {
    path: String,
    old: String,
    watchdog: std::process::Child,
}

impl SysctlGuard {
    pub fn set(path: &str, value: &str) -> Self {
        let old = fs::read_to_string(path)
            .expect("reading sysctl")
            .trim()
            .to_string();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; echo {old} > {path}",
            pid = std::process::id()
        );
        let watchdog = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("sysctl watchdog");
        fs::write(path, value).expect("writing sysctl");
        Self {
            path: path.to_string(),
            old,
            watchdog,
        }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.old);
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// A UDP echo server on `addr` inside `ns`, until the guard drops (bounded by `max`).
pub struct EchoServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: &str, max: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let socket = {
            let addr = addr.to_string();
            ns.run_inside(move || std::net::UdpSocket::bind(addr).expect("echo bind"))
        };
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + max;
            let mut buf = [0u8; 512];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds `address` to the loopback device of the namespace `pid` is in.
pub fn add_address(pid: u32, address: &str) {
    let pid = pid.to_string();
    run(
        "nsenter",
        &["-t", &pid, "-n", "ip", "addr", "add", address, "dev", "lo"],
    );
}

/// `netns-holder MODE` (tests/bin/netns_holder.rs): the holder process and its child, both killed when dropped (the
/// child dies with its parent).
pub struct NetnsHolder {
    pub parent: Owned,
    pub child: u32,
}

impl NetnsHolder {
    /// `binary` is the test package's `netns-holder` (`env!("CARGO_BIN_EXE_netns-holder")`).
    pub fn start(binary: &str, mode: &str) -> Self {
        let parent = Owned(
            Command::new(binary)
                .args([mode, "120"])
                .spawn()
                .expect("netns-holder"),
        );
        let children = format!("/proc/{0}/task/{0}/children", parent.pid());
        let child = wait_for("the holder's child", Duration::from_secs(10), || {
            fs::read_to_string(&children)
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        Self { parent, child }
    }

    /// Kills the child; the parent returns (from vfork, or from waiting) and exits.
    pub fn end(&mut self) {
        send(self.child, nix::sys::signal::Signal::SIGKILL);
        self.parent
            .wait_timeout(Duration::from_secs(10))
            .expect("the holder exits after its child");
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `netns-holder MODE 120 NETNS` (`binary`, as for [`NetnsHolder::start`]) holding the
/// namespace at `netns` from outside it (`fd`: an open file; `socket`: a socket made inside;
/// `thread`: a second thread that joined it), and the fd (or the thread's id) it holds it with.
/// Killed when dropped.
pub struct OutsideHolder {
    pub process: Owned,
    pub fd: u32,
    lines: std::sync::mpsc::Receiver<String>,
}

impl OutsideHolder {
    pub fn start(binary: &str, mode: &str, netns: &std::path::Path) -> Self {
        // Its stdin stays open: a line on it, or its end, lets go.
        let mut process = Owned(
            Command::new(binary)
                .args([mode, "120"])
                .arg(netns)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("netns-holder"),
        );
        let lines = crate::forward_lines(process.0.stdout.take().unwrap());
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("netns-holder prints its fd");
        let fd = line.trim().parse().expect("an fd number");
        Self { process, fd, lines }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Lets go of the namespace (closes the fd, ends the thread); the process lives on.
    pub fn close(&mut self) {
        let mut stdin = self.process.0.stdin.take().expect("the holder's stdin");
        stdin.write_all(b"close\n").expect("telling the holder");
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("netns-holder says it let go");
        assert_eq!(line, "closed");
        assert_eq!(
            self.process.0.try_wait().unwrap(),
            None,
            "the holder exited"
        );
    }
}

/// A raw socket (`socket(family, SOCK_RAW, protocol)`): for packets a UDP socket cannot send,
/// ICMP echo requests with a chosen id and hand-made (also malformed) IPv6 packets. Closed on
/// drop.
pub struct RawSocket(OwnedFd);

impl RawSocket {
    /// `protocol` is `IPPROTO_ICMP`, `IPPROTO_ICMPV6`, or `IPPROTO_RAW` (IPv6: the packet
    /// starts with its own IPv6 header).
    pub fn new(family: libc::c_int, protocol: libc::c_int) -> Self {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, protocol) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nothing else owns.
        Self(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Sends `packet` to `to`; `false` when the kernel refused it (netfilter dropped it).
    pub fn send_to(&self, packet: &[u8], to: IpAddr) -> bool {
        // SAFETY: zeroed sockaddr structs are valid; each is filled in before use, and the
        // storage outlives the call.
        let sent = unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let len = match to {
                IpAddr::V4(a) => {
                    let sin = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in);
                    sin.sin_family = libc::AF_INET as libc::sa_family_t;
                    sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                    std::mem::size_of::<libc::sockaddr_in>()
                }
                IpAddr::V6(a) => {
                    let sin6 = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6);
                    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sin6.sin6_addr.s6_addr = a.octets();
                    std::mem::size_of::<libc::sockaddr_in6>()
                }
            };
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&storage as *const libc::sockaddr_storage).cast(),
                len as libc::socklen_t,
            )
        };
        sent >= 0
    }
}

/// An ICMP (`ipv6` false) or ICMPv6 echo request with `id` and `seq`, for a raw socket. The
/// IPv4 checksum is left 0: the packets are dropped on their way out, before anything checks
/// it; the kernel fills in ICMPv6's.
pub fn echo_request(ipv6: bool, id: u16, seq: u16) -> Vec<u8> {
    let kind = if ipv6 { 128 } else { 8 };
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend(id.to_be_bytes());
    packet.extend(seq.to_be_bytes());
    packet.extend(b"tracer");
    packet
}

/// An IPv6 packet from `src` to `dst`: the fixed header with `next` header, then `payload`
/// (for a raw `IPPROTO_RAW` socket, which sends it as it is).
pub fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend((payload.len() as u16).to_be_bytes());
    packet.extend([next, 64]);
    packet.extend(src.octets());
    packet.extend(dst.octets());
    packet.extend(payload);
    packet
}

/// Sets a sticky IPv6 extension header (`IPV6_HOPOPTS` or `IPV6_DSTOPTS`) on `socket`: one
/// 8-byte header of padding, which every packet the socket sends then carries.
pub fn set_ipv6_ext_header(socket: &UdpSocket, option: libc::c_int) {
    // Next header (the kernel fills it in), length 0 (8 bytes), PadN with 4 bytes of padding.
    let header: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
    // SAFETY: setsockopt with a buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            option,
            header.as_ptr().cast(),
            header.len() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}
