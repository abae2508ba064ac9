//! `tracer probe` against the real kernel, from namespaces the tests make (and a CRI node's
//! pods) to servers inside them: each outcome checked against what the test arranged and what
//! the kernel counted (nft rule counters), each failure's explanation against where the drop
//! was made.

use std::{net::TcpListener, process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::{net::*, tracer, tracer_bin, TracerOutput, TracerRun};

/// The server's address, on its namespace's loopback; each client reaches it over a veth.
const SERVER: &str = "10.201.0.1";
const PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

/// A server namespace and three clients: `ok` routes to the server and back; `blocked` also,
/// but drops the server's TCP port on its way out (an nft rule with a counter); `lost` has an
/// address the server has no route back to.
struct Site {
    server: Netns,
    ok: Netns,
    blocked: Netns,
    lost: Netns,
    _listener: TcpListener,
}

/// A veth pair from `client` (with `client_addr`) to `server` (with `server_addr` when given),
/// and the client's route to [`SERVER`] over it.
fn link(n: u32, client: &Netns, client_addr: &str, server: &Netns, server_addr: Option<&str>) {
    let (c_if, s_if) = (format!("pc{n}"), format!("ps{n}"));
    run(
        "ip",
        &[
            "link",
            "add",
            &c_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &s_if,
            "netns",
            &server.name,
        ],
    );
    client.ip(&["addr", "add", client_addr, "dev", &c_if]);
    if let Some(addr) = server_addr {
        server.ip(&["addr", "add", addr, "dev", &s_if]);
    }
    client.ip(&["link", "set", &c_if, "up"]);
    server.ip(&["link", "set", &s_if, "up"]);
    client.ip(&["route", "add", &format!("{SERVER}/32"), "dev", &c_if]);
}

fn site() -> Site {
    let server = Netns::new("psrv");
    let (ok, blocked, lost) = (Netns::new("pok"), Netns::new("pblk"), Netns::new("plost"));
    server.ip(&["addr", "add", &format!("{SERVER}/32"), "dev", "lo"]);
    link(1, &ok, "10.201.1.2/24", &server, Some("10.201.1.1/24"));
    link(2, &blocked, "10.201.2.2/24", &server, Some("10.201.2.1/24"));
    // No address on the server's end: nothing routes 10.201.3.0/24 back.
    link(3, &lost, "10.201.3.2/24", &server, None);
    blocked.nft(&format!(
        "table inet probe_test {{\n chain out {{\n type filter hook output priority 0;\n \
         tcp dport {PORT} counter drop comment \"probe-block\"\n }}\n}}\n"
    ));
    let listener = server.run_inside(|| TcpListener::bind((SERVER, PORT)).expect("listen"));
    Site {
        server,
        ok,
        blocked,
        lost,
        _listener: listener,
    }
}

fn inodes(namespaces: &[&Netns]) -> String {
    let inodes: Vec<String> = namespaces.iter().map(|n| n.inode().to_string()).collect();
    inodes.join(",")
}

/// `tracer probe ARGS --json` to its end (killed, and the test failed, after 120 s).
fn probe(args: &[&str]) -> TracerOutput {
    let mut all = vec!["probe", "--json"];
    all.extend_from_slice(args);
    TracerRun::start(&all).wait()
}

fn line_of<'a>(out: &'a TracerOutput, ns: &Netns) -> &'a Value {
    let inode = ns.inode();
    let lines: Vec<&Value> = out
        .of_type("probe")
        .into_iter()
        .filter(|p| p["netns"] == inode)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{inode}: {:#?}\n{}",
        out.objects,
        out.stderr
    );
    lines[0]
}

#[test]
fn tcp_probe_tells_ok_a_rule_drop_in_the_clients_namespace_and_no_reply() {
    let s = site();
    let target = format!("{SERVER}:{PORT}");
    let out = probe(&[
        &target,
        "--timeout",
        "2s",
        "--netns",
        &inodes(&[&s.ok, &s.blocked, &s.lost]),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);

    let ok = line_of(&out, &s.ok);
    assert_eq!(ok["status"], "ok", "{ok:#}");
    assert!(ok["connect_ms"].as_f64().unwrap() < 2000.0, "{ok:#}");
    assert!(
        ok["src"].as_str().unwrap().starts_with("10.201.1.2:"),
        "{ok:#}"
    );

    let blocked = line_of(&out, &s.blocked);
    let counted = s.blocked.nft_counter("probe-block");
    let drops = blocked["drops"].as_array().unwrap();
    assert_eq!(blocked["status"], "fail", "{blocked:#}");
    assert_eq!(blocked["explained"], true, "{blocked:#}");
    // Every SYN the rule dropped (the first and its retransmissions) is the probe's.
    assert_eq!(drops.len() as u64, counted, "{blocked:#}");
    for drop in drops {
        assert_eq!(drop["class"], "rule", "{blocked:#}");
        assert_eq!(drop["netns"], s.blocked.inode(), "{blocked:#}");
        assert_eq!(drop["packet"], "SYN", "{blocked:#}");
        // The rule's chain is on the output hook.
        assert_eq!(drop["hook"], "output", "{blocked:#}");
    }
    let why = blocked["explanation"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "SYN dropped by rule at hook output in netns {}",
            s.blocked.inode()
        )),
        "{why}"
    );

    let lost = line_of(&out, &s.lost);
    assert_eq!(lost["status"], "fail", "{lost:#}");
    assert_eq!(lost["explained"], false, "{lost:#}");
    assert_eq!(lost["drops"], Value::Array(vec![]), "{lost:#}");
    assert!(
        lost["explanation"]
            .as_str()
            .unwrap()
            .starts_with("no reply, and netfilter dropped none of its packets"),
        "{lost:#}"
    );

    let summary = out.summary();
    assert_eq!(
        (&summary["ok"], &summary["failed"], &summary["unexplained"]),
        (&1.into(), &2.into(), &1.into()),
        "{summary:#}"
    );
}

#[test]
fn udp_probe_with_expected_reply_and_icmp_probe() {
    let s = site();
    let _echo = EchoServer::start(
        &s.server,
        &format!("{SERVER}:{UDP_PORT}"),
        Duration::from_secs(60),
    );
    let udp = format!("udp://{SERVER}:{UDP_PORT}");
    let ok = inodes(&[&s.ok]);

    let echoed = probe(&[
        &udp,
        "--payload",
        "ping",
        "--expect",
        "ping",
        "--netns",
        &ok,
    ]);
    assert!(
        echoed.status.success(),
        "{:#?} {}",
        echoed.objects,
        echoed.stderr
    );
    assert_eq!(line_of(&echoed, &s.ok)["status"], "ok");

    let other = probe(&[
        &udp,
        "--payload",
        "ping",
        "--expect",
        "pong",
        "--netns",
        &ok,
    ]);
    assert_eq!(other.status.code(), Some(1), "{}", other.stderr);
    let line = line_of(&other, &s.ok);
    assert_eq!(line["outcome"]["result"], "wrong_reply", "{line:#}");
    assert_eq!(line["outcome"]["reply"], "ping", "{line:#}");

    let icmp = format!("icmp://{SERVER}");
    let out = probe(&[
        &icmp,
        "--timeout",
        "2s",
        "--netns",
        &inodes(&[&s.ok, &s.blocked, &s.lost]),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    // The rule drops TCP only: ICMP passes.
    assert_eq!(line_of(&out, &s.ok)["status"], "ok");
    assert_eq!(line_of(&out, &s.blocked)["status"], "ok");
    let lost = line_of(&out, &s.lost);
    assert_eq!(
        (&lost["status"], &lost["explained"]),
        (&"fail".into(), &false.into()),
        "{lost:#}"
    );
}

#[test]
fn two_hundred_namespaces_at_sixteen_at_a_time_end_within_twice_the_timeout() {
    const COUNT: usize = 200;
    const DROPPING: usize = 16;
    let namespaces: Vec<Netns> = (0..COUNT).map(|i| Netns::new(&format!("p{i}"))).collect();
    // Sixteen time out (their rule drops the echo reply on its way in): run one after the
    // other they alone would take sixteen timeouts.
    for ns in &namespaces[..DROPPING] {
        ns.nft(
            "table ip probe_test {\n chain in {\n type filter hook input priority 0;\n \
             icmp type echo-reply drop\n }\n}\n",
        );
    }
    let all: Vec<&Netns> = namespaces.iter().collect();
    let timeout = Duration::from_secs(3);
    let out = probe(&[
        "icmp://127.0.0.1",
        "--timeout",
        "3s",
        "--parallel",
        "16",
        "--netns",
        &inodes(&all),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.of_type("probe").len(), COUNT);
    // The run's own duration, from the programs' attachment: start-up (BTF, loading) is not
    // the probes'.
    let took = Duration::from_secs_f64(out.summary()["duration_s"].as_f64().unwrap());
    assert!(took < 2 * timeout, "took {took:?}");
    eprintln!("{COUNT} namespaces, {DROPPING} timing out, in {took:?}");
    for (i, ns) in namespaces.iter().enumerate() {
        let line = line_of(&out, ns);
        if i < DROPPING {
            assert_eq!(line["drops"][0]["class"], "rule", "{line:#}");
            assert_eq!(line["drops"][0]["netns"], ns.inode(), "{line:#}");
            assert_eq!(line["drops"][0]["packet"], "echo-reply", "{line:#}");
            assert_eq!(line["drops"][0]["hook"], "input", "{line:#}");
            assert_eq!(line["outcome"]["result"], "timeout", "{line:#}");
        } else {
            assert_eq!(line["status"], "ok", "{line:#}");
        }
    }
    assert_eq!(out.summary()["failed"], DROPPING as u64);
}

#[test]
fn bad_input_is_refused_with_what_to_write() {
    for (args, says) in [
        (vec!["10.201.0.1"], "no port"),
        (vec!["ftp://10.201.0.1:21"], "unknown scheme"),
        (vec!["icmp://10.201.0.1:7"], "without a port"),
        (vec!["127.0.0.1:80", "--timeout", "0"], "longer than zero"),
        (vec!["127.0.0.1:80", "--parallel", "0"], "1..=1024"),
        (
            vec!["127.0.0.1:80", "--payload", "x"],
            "udp:// targets only",
        ),
        (
            vec!["127.0.0.1:80", "--netns", "1"],
            "no network namespace with inode 1",
        ),
    ] {
        let mut all = vec!["probe"];
        all.extend(args.iter().copied());
        let out = tracer(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Nothing is probed without a target.
    let out = Command::new(tracer_bin()).arg("probe").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<TARGET>"));
}

#[test]
fn a_namespace_gone_before_its_turn_is_reported_and_the_scan_goes_on() {
    let s = site();
    let doomed = Netns::new("pgone");
    let doomed_inode = doomed.inode();
    // One at a time: the lost client's timeout leaves the time to remove the next one.
    let target = format!("{SERVER}:{PORT}");
    let list = format!("{},{doomed_inode},{}", s.lost.inode(), s.ok.inode());
    let run = TracerRun::start(&[
        "probe",
        "--json",
        &target,
        "--timeout",
        "3s",
        "--parallel",
        "1",
        "--netns",
        &list,
    ]);
    drop(doomed);
    let out = run.wait();
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let gone: Vec<&Value> = out
        .of_type("probe")
        .into_iter()
        .filter(|p| p["netns"] == doomed_inode)
        .collect();
    assert_eq!(gone.len(), 1, "{:#?}", out.objects);
    assert_eq!(gone[0]["status"], "error", "{:#}", gone[0]);
    assert!(
        gone[0]["explanation"]
            .as_str()
            .unwrap()
            .contains("went away before it was probed"),
        "{:#}",
        gone[0]
    );
    assert_eq!(line_of(&out, &s.ok)["status"], "ok");
    assert_eq!(out.summary()["errors"], 1);
}

#[test]
fn all_netns_probes_from_a_namespace_that_only_an_open_file_holds() {
    let mut s = site();
    let inode = s.ok.inode();
    let holder = OutsideHolder::start(
        env!("CARGO_BIN_EXE_netns-holder"),
        "fd",
        s.ok.path().as_ref(),
    );
    let fd = holder.fd;
    s.ok.delete();
    let target = format!("{SERVER}:{PORT}");
    let out = probe(&[&target, "--timeout", "2s", "--all-netns"]);
    drop(holder);
    let lines: Vec<&Value> = out
        .of_type("probe")
        .into_iter()
        .filter(|p| p["netns"] == inode)
        .collect();
    assert_eq!(lines.len(), 1, "{:#?}\n{}", out.objects, out.stderr);
    // Entered through fd {fd} of the holder: its route and veth to the server are there.
    assert_eq!(lines[0]["status"], "ok", "fd {fd}: {:#}", lines[0]);
}

#[test]
fn a_netns_inode_nobody_holds_is_an_error_line_and_fails_the_run() {
    let s = site();
    let target = format!("{SERVER}:{PORT}");
    // Inode 1 is never a network namespace's.
    let list = format!("{},1", s.ok.inode());
    let out = probe(&[&target, "--timeout", "2s", "--netns", &list]);
    assert_eq!(line_of(&out, &s.ok)["status"], "ok", "{}", out.stderr);
    let missing: Vec<&Value> = out
        .of_type("probe")
        .into_iter()
        .filter(|p| p["netns"] == 1)
        .collect();
    assert_eq!(missing.len(), 1, "{:#?}", out.objects);
    assert_eq!(missing[0]["status"], "error", "{:#}", missing[0]);
    assert!(
        missing[0]["explanation"]
            .as_str()
            .unwrap()
            .contains("no network namespace with inode 1"),
        "{:#}",
        missing[0]
    );
    assert_eq!(out.summary()["errors"], 1);
    // An error is not a pass: the namespace was not probed.
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
}

#[test]
fn every_pod_of_a_cri_node_is_probed_and_named_hostnetwork_pods_once_as_the_node() {
    use std::os::unix::fs::MetadataExt as _;
    use tracer_tests::cri::CriNode;

    let mut node = CriNode::up();
    let pods = [
        node.run_pod("probe-test", "web", false),
        node.run_pod("probe-test", "blocked", false),
        node.run_pod("probe-test", "lost", false),
    ];
    let agent = node.run_host_network_pod("probe-test", "agent", false);
    let elsewhere = node.run_pod("other", "db", false);
    let mut pids = Vec::new();
    for pod in pods.iter().chain([&agent, &elsewhere]) {
        pids.push(node.start_container(pod, "app", &["sleep", "3600"]).pid);
    }
    let gateway = node.gateway().to_string();
    let netns_of = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino()
    };
    let netns_path = |pid: u32| format!("/proc/{pid}/ns/net");
    nft_in(
        &netns_path(pids[1]),
        &format!(
            "table inet probe_test {{\n chain out {{\n type filter hook output priority 0;\n \
             tcp dport {PORT} counter drop comment \"probe-block\"\n }}\n}}\n"
        ),
    );
    // The lost pod's packets to the gateway leave from an address the node has no route to.
    let lost_netns = netns_path(pids[2]);
    run_in(
        &lost_netns,
        "ip",
        &["addr", "add", "10.214.0.7/32", "dev", "eth0"],
    );
    run_in(
        &lost_netns,
        "ip",
        &[
            "route",
            "replace",
            &gateway,
            "dev",
            "eth0",
            "src",
            "10.214.0.7",
        ],
    );
    let listen = (node.gateway(), PORT);
    let _listener = tracer_tests::in_netns(&node.netns_path(), move || {
        TcpListener::bind(listen).expect("listen on the node's bridge")
    });

    let out = probe(&[
        &format!("{gateway}:{PORT}"),
        "--timeout",
        "2s",
        "--namespace",
        "probe-test",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let lines = out.of_type("probe");
    assert_eq!(lines.len(), 4, "{:#?}\n{}", out.objects, out.stderr);
    let of_pod = |pod: &tracer_tests::cri::Pod| {
        *lines
            .iter()
            .find(|l| l["pod"]["uid"] == pod.uid.as_str())
            .unwrap_or_else(|| panic!("no line for {}: {:#?}", pod.name, lines))
    };
    let (web, blocked, lost) = (of_pod(&pods[0]), of_pod(&pods[1]), of_pod(&pods[2]));
    assert_eq!(web["status"], "ok", "{web:#}");
    assert_eq!(web["netns"], netns_of(pids[0]), "{web:#}");
    assert_eq!(blocked["netns"], netns_of(pids[1]), "{blocked:#}");
    assert_eq!(blocked["status"], "fail", "{blocked:#}");
    let drops = blocked["drops"].as_array().unwrap();
    assert_eq!(
        drops.len() as u64,
        nft_counter_in(&netns_path(pids[1]), "probe-block")
    );
    for drop in drops {
        assert_eq!(drop["class"], "rule", "{blocked:#}");
        assert_eq!(drop["netns"], netns_of(pids[1]), "{blocked:#}");
        assert_eq!(drop["pod"]["uid"], pods[1].uid.as_str(), "{blocked:#}");
    }
    assert!(
        blocked["explanation"]
            .as_str()
            .unwrap()
            .contains("(pod probe-test/blocked)"),
        "{blocked:#}"
    );
    assert_eq!(lost["status"], "fail", "{lost:#}");
    assert!(
        lost["src"].as_str().unwrap().starts_with("10.214.0.7:"),
        "{lost:#}"
    );
    assert_eq!(lost["explained"], false, "{lost:#}");
    // The hostNetwork pod has no namespace of its own: the node's is probed once for it.
    let host = lines
        .iter()
        .find(|l| l["pod"].is_null())
        .unwrap_or_else(|| panic!("no hostNetwork line: {lines:#?}"));
    assert_eq!(host["netns"], netns_of(pids[3]), "{host:#}");
    assert_eq!(
        host["netns"],
        std::fs::metadata(node.netns_path()).unwrap().ino()
    );
    assert_eq!(
        host["host_network_pods"][0]["uid"],
        agent.uid.as_str(),
        "{host:#}"
    );
    assert_eq!(host["status"], "ok", "{host:#}");
    assert!(
        !lines
            .iter()
            .any(|l| l["pod"]["uid"] == elsewhere.uid.as_str()),
        "--namespace leaves other pods out: {lines:#?}"
    );
    node.down();
}

/// `tracer ARGS` in network and mount namespaces of its own, whose only way out is a veth
/// pair inside it (what goes to 10.255.0.2 is sent to a hardware address nobody has), with `resolv_conf` as its
/// /etc/resolv.conf and `hosts: files dns` as its /etc/nsswitch.conf: whatever the resolver
/// sends never leaves the machine. Its exit status, stderr and how long it took (killed, and
/// the test failed, after 60 s).
fn tracer_cut_off(
    resolv_conf: &str,
    args: &[&str],
) -> (std::process::ExitStatus, String, Duration) {
    use std::io::Read as _;
    let dir = tracer_tests::TempDir::new("probe-resolve");
    let (resolv, nsswitch) = (dir.0.join("resolv.conf"), dir.0.join("nsswitch.conf"));
    std::fs::write(&resolv, resolv_conf).unwrap();
    std::fs::write(&nsswitch, "hosts: files dns\n").unwrap();
    let script = "set -e
ip link set lo up
ip link add swallow type veth peer name swallowed
ip addr add 10.255.0.1/24 dev swallow
ip link set swallow up
ip link set swallowed up
ip neigh add 10.255.0.2 lladdr 02:00:00:00:00:02 dev swallow nud permanent
mount --bind \"$1\" /etc/resolv.conf
mount --bind \"$2\" /etc/nsswitch.conf
shift 2
exec \"$@\"";
    let started = std::time::Instant::now();
    let mut child = tracer_tests::Owned(
        Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&resolv)
            .arg(&nsswitch)
            .arg(tracer_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("unshare"),
    );
    let status = child
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("tracer {args:?} still running after 60 s"));
    let took = started.elapsed();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr, took)
}

#[test]
fn an_unresolvable_target_is_bad_input_and_a_silent_resolver_is_given_up_on() {
    // A resolver that would answer nothing for a minute (30 s per try, two tries).
    let silent = "nameserver 10.255.0.2\noptions timeout:30 attempts:2\n";
    // .invalid never resolves (RFC 6761): refused at once, nothing asked of a nameserver.
    let (status, stderr, took) = tracer_cut_off(silent, &["probe", "nonexistent.invalid:80"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`nonexistent.invalid` is under .invalid, which never resolves"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Another name goes to the nameserver, which never answers: given up on after 10 s.
    let (status, stderr, took) =
        tracer_cut_off(silent, &["probe", "udp://probe-target.example:53"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("resolving `probe-target.example` took longer than 10s"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(20),
        "took {took:?}"
    );
}

/// No-op rules in `hook`'s chain after NAT, before conntrack confirms: they widen the window
/// in which two packets of one flow meet unconfirmed (as `node_ruleset`'s do).
fn slow_chain(hook: &str, rules: u32) -> String {
    let mut chain = format!(" chain slow_{hook} {{\n type filter hook {hook} priority 200;\n");
    for i in 0..rules {
        chain.push_str(&format!(" meta mark 0x{:x} counter\n", 0x1000 + i));
    }
    chain.push_str(" }\n");
    chain
}

#[test]
fn a_udp_burst_that_loses_the_conntrack_insert_race_is_explained_as_such() {
    const PODS: u32 = 16;
    // The address the pods' resolver sends to: each pod's own NAT sends it to VIP_A or VIP_B.
    const DNS: &str = "10.96.5.5";
    // The conntrack tests' node: VIP_A and VIP_B DNAT to one backend (locally sent packets),
    // and no-op postrouting rules before confirmation.
    let t = topology();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &t.node.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    );
    // The same DNAT for what the pods send through it.
    t.node.nft(&format!(
        "table ip forwarded {{\n chain pre {{\n type nat hook prerouting priority -100;\n \
         ip daddr {{ {VIP_A}, {VIP_B} }} udp dport 53 dnat to {BACKEND}:53\n }}\n}}\n"
    ));
    t.backend()
        .ip(&["route", "add", "10.78.0.0/16", "via", CLIENT]);
    // Pods behind the node, each with a resolver NAT of its own: DNS goes to VIP_A and VIP_B
    // in turn. Two datagrams of one socket that meet unconfirmed in the pod's conntrack are
    // NATed to one VIP each (the kernel resolves that clash: same original tuple); in the
    // node both VIPs lead to one backend, so the two entries' reply tuples collide, which
    // the kernel cannot resolve: one datagram is dropped, `insert_failed` in the node.
    let pods: Vec<Netns> = (0..PODS)
        .map(|i| Netns::new(&format!("prace{i}")))
        .collect();
    for (i, pod) in pods.iter().enumerate() {
        let (p_if, n_if) = (format!("rc{i}"), format!("rs{i}"));
        run(
            "ip",
            &[
                "link",
                "add",
                &p_if,
                "netns",
                &pod.name,
                "type",
                "veth",
                "peer",
                "name",
                &n_if,
                "netns",
                &t.node.name,
            ],
        );
        pod.ip(&["addr", "add", &format!("10.78.{i}.2/24"), "dev", &p_if]);
        t.node
            .ip(&["addr", "add", &format!("10.78.{i}.1/24"), "dev", &n_if]);
        pod.ip(&["link", "set", &p_if, "up"]);
        t.node.ip(&["link", "set", &n_if, "up"]);
        pod.ip(&[
            "route",
            "add",
            "10.96.0.0/16",
            "via",
            &format!("10.78.{i}.1"),
        ]);
        pod.nft(&format!(
            "table ip resolver {{\n chain out {{\n type nat hook output priority -100;\n \
             ip daddr {DNS} udp dport 53 dnat to numgen inc mod 2 map {{ 0 : {VIP_A}, 1 : {VIP_B} }}\n \
             }}\n{}}}\n",
            slow_chain("postrouting", 1000)
        ));
    }
    let all: Vec<&Netns> = pods.iter().collect();
    let target = format!("udp://{DNS}:53");
    let node = t.node.inode();
    // Two threads released together meet in conntrack only now and then on a loaded
    // machine: a bounded number of scans, until one pod's burst lost the race.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut runs = 0;
    let mut clashes = 0;
    let raced = loop {
        runs += 1;
        let before = t.node.conntrack_counters();
        let pods_before: Vec<ConntrackCounters> =
            pods.iter().map(|p| p.conntrack_counters()).collect();
        let out = probe(&[
            &target,
            "--burst",
            "2",
            "--timeout",
            "1s",
            "--netns",
            &inodes(&all),
        ]);
        let kernel = t.node.conntrack_counters().since(&before);
        let lines = out.of_type("probe");
        assert_eq!(
            lines.len(),
            PODS as usize,
            "{:#?}\n{}",
            out.objects,
            out.stderr
        );
        // The node's own count of lost races is the tracer's, probe by probe.
        let explained: u64 = lines
            .iter()
            .flat_map(|l| l["drops"].as_array().unwrap())
            .filter(|d| d["class"] == "insert_failed" && d["netns"] == node)
            .count() as u64;
        assert_eq!(explained, kernel.insert_failed, "{kernel:?} {lines:#?}");
        assert_eq!(kernel.drop, kernel.insert_failed, "{kernel:?}");
        for (pod, before) in pods.iter().zip(&pods_before) {
            let line = line_of(&out, pod);
            let own = pod.conntrack_counters().since(before);
            clashes += own.clash_resolve;
            assert_eq!(own.insert_failed, 0, "the pod resolves its clash: {own:?}");
            if line["drops"].as_array().unwrap().is_empty() {
                assert_eq!(line["status"], "ok", "{line:#}");
                continue;
            }
            // Its two datagrams met in its own conntrack, each went to a VIP of its own,
            // and the node dropped one of them.
            assert!(own.clash_resolve > 0, "{own:?} {line:#}");
            assert_eq!(line["status"], "fail", "{line:#}");
            assert_eq!(line["explained"], true, "{line:#}");
            assert_eq!(line["outcome"]["result"], "missing_replies", "{line:#}");
            assert_eq!(
                (&line["outcome"]["replies"], &line["outcome"]["sent"]),
                (&1.into(), &2.into()),
                "{line:#}"
            );
            for drop in line["drops"].as_array().unwrap() {
                assert_eq!(drop["class"], "insert_failed", "{line:#}");
                assert_eq!(drop["netns"], node, "{line:#}");
                assert_eq!(drop["packet"], "udp packet", "{line:#}");
                // Conntrack confirms a forwarded packet's entry on the postrouting hook.
                assert_eq!(drop["hook"], "postrouting", "{line:#}");
            }
            let why = line["explanation"].as_str().unwrap();
            assert_eq!(
                why,
                format!(
                    "udp packet dropped: conntrack insert race lost at hook postrouting in \
                     netns {node}"
                ),
                "{line:#}"
            );
        }
        if kernel.insert_failed > 0 {
            break kernel;
        }
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
        assert!(
            runs < 60 && std::time::Instant::now() < deadline,
            "no burst of {PODS} pods lost the race in {runs} scans ({clashes} clashes \
             resolved in the pods)"
        );
    };
    eprintln!("insert race lost in scan {runs}: {raced:?}");
}
