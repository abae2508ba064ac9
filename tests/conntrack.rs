//! `tracer conntrack-drops` against the real kernel: the insert race through DNAT, a full
//! table, and firewall drops, in namespaces the tests create, each checked against the
//! namespace's own conntrack counters and what the client saw.

use std::{net::UdpSocket, time::Duration};

use serde_json::Value;
use tracer_tests::{net::*, TracerRun};

fn drops_in<'a>(events: &'a [&'a Value], netns: u64, class: &str) -> Vec<&'a Value> {
    events
        .iter()
        .copied()
        .filter(|e| e["netns"] == netns && e["class"] == class)
        .collect()
}

fn summary_netns(summary: &Value, netns: u64) -> Value {
    summary["by_netns"]
        .as_array()
        .and_then(|all| all.iter().find(|n| n["netns"] == netns).cloned())
        .unwrap_or_else(|| panic!("netns {netns} not in summary: {summary:#}"))
}

#[test]
fn insert_race_through_dnat_is_counted_exactly_and_rule_drops_are_kept_apart() {
    let t = topology();
    let inode = t.node.inode();
    let before = t.node.conntrack_counters();
    let run = TracerRun::start(&["conntrack-drops", "--json"]);

    // One socket to two VIPs that DNAT to the same endpoint: the two entries' reply tuples
    // collide, which the kernel cannot resolve.
    let race = race_rounds(&t.node, [VIP_A, VIP_B], 400);
    // Packets a firewall rule drops, in the same run.
    let blocked = t.node.send_blocked(20, Duration::from_secs(30));

    let out = run.stop();
    let kernel = t.node.conntrack_counters().since(&before);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        kernel.insert_failed > 0,
        "the race never happened: {kernel:?} {race:?}"
    );

    let events = out.of_type("conntrack_drop");
    let insert_failed = drops_in(&events, inode, "insert_failed");
    assert_eq!(
        insert_failed.len() as u64,
        kernel.insert_failed,
        "kernel: {kernel:?}"
    );
    assert_eq!(race.refused, kernel.insert_failed, "client: {race:?}");
    assert_eq!(
        race.sent - race.replies,
        race.refused,
        "every refused packet is a missing reply"
    );
    for e in &insert_failed {
        assert_eq!(e["proto"], "udp");
        let src = e["src"].as_str().unwrap();
        assert!(src.starts_with(&format!("{CLIENT}:")), "{e}");
        assert!(
            [format!("{VIP_A}:53"), format!("{VIP_B}:53")]
                .contains(&e["dst"].as_str().unwrap().to_string()),
            "{e}"
        );
        assert_eq!(e["nat_dst"], format!("{BACKEND}:53"), "{e}");
    }

    let rule = drops_in(&events, inode, "rule");
    assert_eq!(
        blocked, 20,
        "the firewall rule refused every blocked packet"
    );
    assert_eq!(rule.len(), 20, "rule drops: {rule:#?}");
    assert!(rule
        .iter()
        .all(|e| e["dst"] == format!("{VIP_A}:{BLOCKED_PORT}")));
    assert!(drops_in(&events, inode, "table_full").is_empty());
    assert!(drops_in(&events, inode, "conntrack_other").is_empty());

    let summary = out.summary();
    assert_eq!(summary["lost"], 0);
    let node = summary_netns(summary, inode);
    assert_eq!(
        node["kernel_counters"]["insert_failed"],
        kernel.insert_failed
    );
    assert_eq!(node["kernel_counters"]["drop"], kernel.drop);
    assert_eq!(node["drops"]["insert_failed"], kernel.insert_failed);
    assert_eq!(node["drops"]["rule"], 20);
}

#[test]
fn same_tuple_clash_is_resolved_not_dropped() {
    // The glibc A/AAAA case: one socket, one VIP, two packets at once. Linux 6.x resolves the
    // clash; the packets survive and only `clash_resolve` rises.
    let t = topology();
    let inode = t.node.inode();
    let before = t.node.conntrack_counters();
    let run = TracerRun::start(&["conntrack-drops", "--json", "--netns", &inode.to_string()]);
    let race = race_rounds(&t.node, [VIP_A, VIP_A], 300);
    let out = run.stop();
    let kernel = t.node.conntrack_counters().since(&before);

    assert_eq!(kernel.insert_failed, 0, "{kernel:?}");
    assert!(
        kernel.clash_resolve > 0,
        "the race never happened: {kernel:?}"
    );
    assert_eq!(race.refused, 0);
    assert!(
        out.of_type("conntrack_drop").is_empty(),
        "{:#?}",
        out.objects
    );
    let node = summary_netns(out.summary(), inode);
    assert_eq!(
        node["kernel_counters"]["clash_resolve"],
        kernel.clash_resolve
    );
    assert_eq!(node["kernel_counters"]["insert_failed"], 0);
}

#[test]
fn full_table_drops_are_counted_with_count_and_max() {
    // nf_conntrack_max is global; each namespace's own entry count is compared with it.
    let ns = Netns::new("table");
    // Any conntrack rule makes conntrack track this namespace.
    ns.nft("table ip t {\n  chain out {\n    type filter hook output priority 0;\n    ct state new counter\n  }\n}\n");
    let host_entries: u64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Low enough to fill quickly, above what the host namespace holds so it is not disturbed.
    let max = host_entries + 64;
    let before = ns.conntrack_counters();
    let run = TracerRun::start(&[
        "conntrack-drops",
        "--json",
        "--netns",
        &ns.inode().to_string(),
    ]);
    let limit = SysctlGuard::set("/proc/sys/net/netfilter/nf_conntrack_max", &max.to_string());
    let refused = ns.run_inside(move || {
        // Each new socket is a new flow (a new source port): the table fills at `max`.
        (0..max + 40)
            .filter(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.send_to(b"x", "127.0.0.1:9").is_err()
            })
            .count() as u64
    });
    // The tracer reads the limit when it reports a drop: keep it until the tracer is done.
    let out = run.stop();
    drop(limit);
    let kernel = ns.conntrack_counters().since(&before);

    assert!(kernel.drop > 0, "{kernel:?}");
    assert_eq!(
        refused, kernel.drop,
        "client saw as many refusals as the kernel counted"
    );
    let full = drops_in(&out.of_type("conntrack_drop"), ns.inode(), "table_full")
        .into_iter()
        .cloned()
        .collect::<Vec<Value>>();
    assert_eq!(full.len() as u64, kernel.drop);
    for e in &full {
        assert_eq!(e["ct_max"], max, "{e}");
        assert_eq!(e["ct_count"], max, "{e}");
        assert_eq!(
            e["src"].as_str().map(|s| s.starts_with("127.0.0.1:")),
            Some(true)
        );
        assert_eq!(e["dst"], "127.0.0.1:9");
    }
    let node = summary_netns(out.summary(), ns.inode());
    assert_eq!(node["kernel_counters"]["drop"], kernel.drop);
    assert_eq!(node["drops"]["table_full"], kernel.drop);
}

#[test]
fn a_flood_of_drops_is_reported_in_full_or_the_shortfall_is_counted() {
    let t = topology();
    let inode = t.node.inode();
    let run = TracerRun::start(&["conntrack-drops", "--json", "--netns", &inode.to_string()]);
    let refused = t.node.send_blocked(50_000, Duration::from_secs(30));
    let out = run.stop();
    let reported = drops_in(&out.of_type("conntrack_drop"), inode, "rule").len() as u64;
    let lost = out.summary()["lost"].as_u64().unwrap();
    assert!(refused > 10_000, "flood too small: {refused}");
    assert_eq!(
        reported + lost,
        refused,
        "reported {reported} + lost {lost}"
    );
}
