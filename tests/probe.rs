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
    }
    let why = blocked["explanation"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "SYN dropped by rule in netns {}",
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
