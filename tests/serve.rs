//! `tracer serve` against the real kernel: real signals, a real conntrack insert race and
//! firewall drops, and a real orphaned namespace, each showing up on /metrics as the series it
//! belongs to, checked against what the test did and the namespace's own conntrack counters;
//! the exposition passes `promtool check metrics`, and SIGTERM detaches everything.

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tracer_tests::{net::*, scrape::*, *};

/// The series a host process's signal adds to.
fn host_signal(signal: &'static str, result: &'static str) -> [(&'static str, &'static str); 6] {
    [
        ("signal", signal),
        ("result", result),
        ("kernel_reason", "none"),
        ("k8s_namespace", ""),
        ("k8s_pod", ""),
        ("k8s_workload", ""),
    ]
}

#[test]
fn signals_drops_and_namespace_flags_become_their_series() {
    let t = topology();
    let node = t.node.inode().to_string();
    let orphan = Netns::new("orphan");
    let orphan_ino = orphan.inode();
    let orphan_inode = orphan_ino.to_string();
    let before = t.node.conntrack_counters();
    let served = Served::start(&["--census-every", "1s", "--bpf-stats"]);
    let address = served.address.clone();

    // Signals the target ignores: each is generated (and counted) all the same.
    let target = sleeper(&[Signal::SIGUSR2]);
    let sent = 7;
    for _ in 0..sent {
        send(target.pid(), Signal::SIGUSR2);
    }
    // The reply-tuple insert race through DNAT, and packets a firewall rule drops.
    let race = race_rounds(&t.node, [VIP_A, VIP_B], 400);
    let blocked = t.node.send_blocked(20, Duration::from_secs(30)) as f64;
    // The same over IPv6: a rule of its own drops it, and it is counted in its family's series.
    t.node.nft("table ip6 blocked6 {\n  chain out {\n    type filter hook output priority 0;\n    udp dport 5353 counter drop comment \"v6\"\n  }\n}\n");
    let blocked6 = t.node.send_refused(
        &["[::1]:5353".parse().unwrap()],
        20,
        Duration::from_secs(30),
    ) as f64;
    assert_eq!(blocked6, 20.0, "the rule refused every packet");
    assert_eq!(blocked6 as u64, t.node.nft_counter("v6"));
    let kernel = t.node.conntrack_counters().since(&before);
    assert!(
        kernel.insert_failed > 0,
        "the race never happened: {kernel:?} {race:?}"
    );
    assert_eq!(blocked, 20.0, "the rule refused every packet");

    let drops_of = |class, family| {
        [
            ("class", class),
            ("family", family),
            ("netns", node.as_str()),
            ("k8s_namespace", ""),
            ("k8s_pod", ""),
            ("k8s_workload", ""),
        ]
    };
    let drops = |class| drops_of(class, "ipv4");
    // Held by its bind mount: the mount namespace holds it, no process (holder_pid empty).
    let orphaned = [
        ("flag", "orphaned"),
        ("netns", orphan_inode.as_str()),
        ("k8s_namespace", ""),
        ("k8s_pod", ""),
        ("holder", "bind mount"),
        ("holder_pid", ""),
    ];
    let settled = wait_for("the metrics to catch up", Duration::from_secs(10), || {
        let scrape = Scrape::of(&address);
        let done = scrape.value("tracer_conntrack_drops_total", &drops("rule")) == Some(blocked)
            && scrape.value("tracer_conntrack_drops_total", &drops_of("rule", "ipv6"))
                == Some(blocked6)
            && scrape.value("tracer_netns_flagged", &orphaned) == Some(1.0);
        done.then_some(scrape)
    });
    assert_eq!(
        settled.value("tracer_conntrack_drops_total", &drops("insert_failed")),
        Some(kernel.insert_failed as f64),
        "kernel: {kernel:?}\n{}",
        settled.text
    );
    assert_eq!(
        settled.value("tracer_conntrack_drops_total", &drops("insert_failed")),
        Some(race.refused as f64),
        "the client saw {race:?}"
    );
    let signals = settled
        .value("tracer_signals_total", &host_signal("SIGUSR2", "ignored"))
        .unwrap_or_default();
    // The kernel's own run count of the signal program: at least one run per signal sent.
    let program = [("program", "signal_generate")];
    let runs = settled.value("tracer_program_runs_total", &program);
    assert!(runs >= Some(sent as f64), "{}", settled.text);
    assert!(settled.value("tracer_program_run_seconds_total", &program) > Some(0.0));
    if let Err(complaint) = settled.promtool_check() {
        panic!("promtool check metrics: {complaint}\n{}", settled.text);
    }

    // A namespace that is gone leaves the flag series at the next census.
    drop(orphan);
    wait_for("the orphan's flag to go", Duration::from_secs(10), || {
        (Scrape::of(&address).series_with("tracer_netns_flagged", "netns", &orphan_inode) == 0)
            .then_some(())
    });

    let out = served.run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.summary()["stopped_by"], "terminate");
    let left = ours_left_behind();
    assert!(left.is_empty(), "left attached after SIGTERM: {left:?}");

    // The counter is the event stream counted: the stream's SIGUSR2s to host processes that
    // ignored them, of which the test's are exactly the ones it sent.
    let stream: Vec<_> = out
        .of_type("signal")
        .into_iter()
        .filter(|e| e["signal"] == "SIGUSR2" && e["result"] == "ignored")
        .filter(|e| e["target"]["pod"].is_null() && e["kernel_reason"].is_null())
        .collect();
    // Another host process's ignored SIGUSR2 may come between the scrape and the stop.
    assert!(signals <= stream.len() as f64, "{signals} {stream:#?}");
    let ours = stream
        .iter()
        .filter(|e| e["target"]["pid"] == target.pid())
        .count();
    assert_eq!(ours, sent);
    assert!(signals >= sent as f64, "{signals}");
    // The orphan was written on stdout once, when first flagged.
    let reported: Vec<_> = out
        .of_type("netns_snapshot")
        .into_iter()
        .filter(|r| r["inode"] == orphan_ino)
        .collect();
    assert_eq!(reported.len(), 1, "{reported:#?}");
    assert_eq!(reported[0]["flags"][0]["flag"], "orphaned");
}

/// The ids of the loaded programs named `netns_census` (bpftool).
fn census_program_ids() -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    let programs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    programs
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| bpf_name_is("netns_census", n))
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

#[test]
fn one_census_program_serves_every_census_and_goes_with_the_tracer() {
    assert!(
        census_program_ids().is_empty(),
        "a census program of an earlier run is still loaded"
    );
    let mut served = Served::start(&["--census-every", "1s"]);
    let (mut seen, mut looks) = (BTreeSet::new(), 0);
    // Each namespace is made once the one before was reported, so each report is a census of
    // its own; its kernel counts come from the census program's walk of the kernel's list.
    for tag in ["census-a", "census-b", "census-c"] {
        let ns = Netns::new(tag);
        let inode = ns.inode();
        let deadline = Instant::now() + Duration::from_secs(10);
        let report = loop {
            seen.extend(census_program_ids());
            looks += 1;
            let report = served.run.wait_for_json(Duration::from_millis(20), |e| {
                e["type"] == "netns_snapshot" && e["inode"] == inode
            });
            if let Some(report) = report {
                break report;
            }
            assert!(
                Instant::now() < deadline,
                "{tag} ({inode}) was never reported"
            );
        };
        assert!(
            report["kernel_refs"]["refs"].as_u64() >= Some(1),
            "{tag}: no kernel counts, the census program did not walk: {report:#}"
        );
    }
    assert_eq!(
        seen.len(),
        1,
        "one census program for the whole run, in {looks} looks: {seen:?}"
    );
    let out = served.run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    wait_for(
        "the census program to be unloaded",
        Duration::from_secs(5),
        || census_program_ids().is_empty().then_some(()),
    );
}

#[test]
fn a_port_in_use_is_one_clear_error_before_anything_is_loaded() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = tracer(&["serve", "--listen", &address]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&address) && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(ours_left_behind().is_empty());
}

#[test]
fn a_scraper_that_never_finishes_its_request_does_not_hold_up_the_exit() {
    let served = Served::start(&[]);
    let mut stuck = TcpStream::connect(&served.address).unwrap();
    // The request's headers never end.
    stuck
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: tracer\r\n")
        .unwrap();
    let stopping = Instant::now();
    let out = served.run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        stopping.elapsed()
    );
    assert!(ours_left_behind().is_empty());
}

#[test]
fn records_the_ring_buffer_could_not_take_are_counted_for_their_tracer() {
    // A 1 MiB ring buffer, its reader stopped, and a storm of signals: most are lost.
    const N: usize = 20_000;
    let served = Served::start(&["--buffer-mb", "1"]);
    let target = sleeper(&[Signal::SIGUSR2]);
    send(served.run.pid(), Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..N {
        send(target.pid(), Signal::SIGUSR2);
        assert!(Instant::now() < deadline, "storm took too long");
    }
    send(served.run.pid(), Signal::SIGCONT);
    // Once the reader has caught up, two scrapes agree (and a new series shows its count).
    let watched = |s: &Scrape| {
        (
            s.value("tracer_lost_events_total", &[("tracer", "signals")]),
            s.value("tracer_signals_total", &host_signal("SIGUSR2", "ignored")),
        )
    };
    let scrape = wait_for("the reader to catch up", Duration::from_secs(30), || {
        let first = Scrape::of(&served.address);
        std::thread::sleep(Duration::from_millis(300));
        let second = Scrape::of(&served.address);
        let (lost, signals) = watched(&second);
        (watched(&first) == (lost, signals) && signals > Some(0.0)).then_some(second)
    });
    let out = served.run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    // The metric is the kernel's per-CPU lost counter, as the summary reports it.
    let lost = scrape
        .value("tracer_lost_events_total", &[("tracer", "signals")])
        .unwrap();
    assert!(lost > 0.0, "nothing was lost: {}", scrape.text);
    assert_eq!(Some(lost), out.summary()["lost"].as_f64());
    // What was not lost arrived: the test's signals are all in the stream or lost (the storm's
    // losses may include another process's signal, never fewer).
    let ours = out
        .of_type("signal")
        .into_iter()
        .filter(|e| e["target"]["pid"] == target.pid() && e["signal"] == "SIGUSR2")
        .count();
    assert!(ours > 0 && ours < N, "{ours} of {N} arrived");
    assert!(
        ours as f64 + lost >= N as f64,
        "{ours} arrived, {lost} lost"
    );
    assert_eq!(
        scrape.value("tracer_signals_total", &host_signal("SIGUSR2", "ignored")),
        Some(ours as f64),
        "the counter counts what arrived"
    );
}

#[test]
fn prometheus_ingests_the_series_and_keeps_the_targets_labels_apart() {
    let served = Served::start(&[]);
    let target = sleeper(&[Signal::SIGUSR2]);
    for _ in 0..3 {
        send(target.pid(), Signal::SIGUSR2);
    }
    // A real Prometheus scraping the tracer, its target labelled the way Kubernetes service
    // discovery labels a tracer pod.
    let dir = TempDir::new("prometheus");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tracer\n    \
             static_configs:\n      - targets: ['{}']\n        \
             labels: {{namespace: tracer, pod: tracer-node-a}}\n",
            served.address
        ),
    )
    .unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let _prometheus = Owned(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting prometheus (Debian package prometheus)"),
    );
    let query = "/api/v1/query?query=tracer_signals_total%7Bsignal%3D%22SIGUSR2%22%7D";
    let series = wait_for(
        "Prometheus to scrape the tracer",
        Duration::from_secs(60),
        || {
            let (status, body) = std::net::TcpStream::connect(&web)
                .ok()
                .map(|_| get(&web, query))?;
            let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
            let result = answer["data"]["result"].as_array()?.clone();
            // A new series is scraped at 0 once, then at its count.
            let counted = result.iter().any(|r| r["value"][1] != "0");
            (status == 200 && counted).then_some(result)
        },
    );
    assert_eq!(series.len(), 1, "{series:#?}");
    let labels = &series[0]["metric"];
    assert_eq!(series[0]["value"][1], "3", "{series:#?}");
    assert_eq!(labels["result"], "ignored");
    assert_eq!(labels["kernel_reason"], "none");
    // The target's own labels, and ours beside them, none renamed `exported_*`.
    assert_eq!(labels["pod"], "tracer-node-a");
    assert_eq!(labels["namespace"], "tracer");
    assert!(
        labels
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("exported_")),
        "{labels}"
    );
    let out = served.run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn no_events_counts_everything_and_logs_only_the_summary() {
    let served = Served::start(&["--no-events", "--census-every", "1s"]);
    let orphan = Netns::new("quiet");
    let target = sleeper(&[Signal::SIGUSR2]);
    for _ in 0..3 {
        send(target.pid(), Signal::SIGUSR2);
    }
    let orphaned = orphan.inode().to_string();
    wait_for("the counts", Duration::from_secs(10), || {
        let scrape = Scrape::of(&served.address);
        let flagged = scrape.series_with("tracer_netns_flagged", "netns", &orphaned) == 1;
        let signals = scrape.value("tracer_signals_total", &host_signal("SIGUSR2", "ignored"));
        (flagged && signals >= Some(3.0)).then_some(())
    });
    let out = served.run.stop_with(Signal::SIGTERM);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.len(), 1, "{:#?}", out.stdout);
    assert!(out.summary()["signals"]["by_signal"]["SIGUSR2"].as_u64() >= Some(3));
}
