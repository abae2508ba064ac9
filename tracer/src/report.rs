//! `tracer report FILE`: a recording (`tracer record`) turned into findings in plain words,
//! each pointing at the lines of the file that support it, and a timeline per subject.
//!
//! It reads only the file, so a recording made on one node can be read anywhere. Lines that
//! are not JSON (a truncated last line, garbage) are named and skipped.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{clock, tracers::signals::sender};

/// The readable objects of a recording, with their line numbers (from 1), and the lines that
/// could not be read.
pub struct Recording {
    pub objects: Vec<(usize, Value)>,
    pub unreadable: Vec<(usize, String)>,
}

/// Reads the recording at `path`, or standard input for `-` (`kubectl logs ds/tracer | tracer
/// report -`).
pub fn read(path: &Path) -> Result<Recording> {
    let input: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(BufReader::new(file))
    };
    let mut recording = Recording {
        objects: Vec::new(),
        unreadable: Vec::new(),
    };
    for (i, line) in input.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(&line) {
            Ok(value) if value.is_object() => recording.objects.push((i + 1, value)),
            Ok(_) => recording
                .unreadable
                .push((i + 1, "not a JSON object".into())),
            Err(e) => recording.unreadable.push((i + 1, e.to_string())),
        }
    }
    Ok(recording)
}

/// Something the recording shows, in plain words.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub text: String,
    /// Lines of the file with the events that show it.
    pub lines: Vec<usize>,
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn pod_label(pod: &Value) -> Option<String> {
    let (ns, name) = (pod.get("namespace")?.as_str()?, pod.get("name")?.as_str()?);
    Some(format!("{ns}/{name}"))
}

/// `comm(pid)`, with the pod when there is one.
fn process_label(p: &Value) -> String {
    let comm = p
        .get("process_comm")
        .and_then(Value::as_str)
        .unwrap_or_else(|| str_of(p, "comm"));
    let pid = p.get("pid").map_or("?".into(), Value::to_string);
    match p.get("pod").and_then(pod_label) {
        Some(pod) => format!("{comm}({pid}) in pod {pod}"),
        None => format!("{comm}({pid})"),
    }
}

fn ancestry(e: &Value) -> String {
    let mut chain: Vec<String> = e
        .get("ancestry")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .rev()
                .map(|p| {
                    format!(
                        "{}({})",
                        str_of(p, "comm"),
                        p.get("pid").map_or("?".into(), Value::to_string)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if e.get("ancestry_truncated") == Some(&Value::Bool(true)) {
        chain.insert(0, "...".into());
    }
    chain.join(" => ")
}

/// How a signal was sent, as the live output shows it (`sigqueue, claims SI_TIMER`); its
/// code alone for a recording that predates `how`.
fn how_sent(e: &Value) -> String {
    match e.get("how").and_then(Value::as_str) {
        Some(how) => sender::how_label(
            how,
            str_of(e, "code"),
            str_of(e, "code_from"),
            e.get("signo").and_then(Value::as_i64).unwrap_or(0) as i32,
            e.get("si_code").and_then(Value::as_i64).map(|c| c as i32),
        ),
        None => str_of(e, "code").to_string(),
    }
}

fn signal_findings(events: &[&(usize, Value)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (line, e) in events {
        if e.get("signo") != Some(&json!(9)) || str_of(e, "result") != "delivered" {
            continue;
        }
        let target = e.get("target").map(process_label).unwrap_or_default();
        let (kind, text) = match (
            e.get("kernel_reason").and_then(Value::as_str),
            e.get("sender"),
        ) {
            (Some("oom"), _) => (
                "oom_kill",
                format!(
                    "{target} was OOM-killed: memory cgroup {} hit its limit",
                    e.pointer("/oom/memcg")
                        .and_then(Value::as_str)
                        .unwrap_or("(unknown)")
                ),
            ),
            (Some(reason), _) => (
                "kernel_kill",
                format!(
                    "{target} was killed by SIGKILL from the kernel ({reason}, {})",
                    str_of(e, "code")
                ),
            ),
            (None, Some(sender)) => (
                "kill",
                format!(
                    "{target} was killed by SIGKILL from {} ({}), whose ancestry is {}",
                    process_label(sender),
                    how_sent(e),
                    ancestry(e)
                ),
            ),
            (None, None) => continue,
        };
        findings.push(Finding {
            kind,
            text,
            lines: vec![*line],
        });
    }
    findings
}

/// Drops of one class from one source address in one namespace.
#[derive(Default)]
struct DropGroup {
    lines: Vec<usize>,
    destinations: Vec<String>,
    nat_destinations: Vec<String>,
    pod: Option<String>,
    proto: String,
    /// For a full table: ` (entries N/MAX)`.
    table: String,
}

/// The address of an endpoint as the tracer writes it: `10.0.0.1:53`, `[fd00::1]:53`, or a
/// bare address (ICMP, or a packet whose ports could not be read).
fn host_of(endpoint: &str) -> &str {
    if let Some(rest) = endpoint.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(addr, _)| addr);
    }
    match endpoint.split_once(':') {
        // One colon: IPv4 and a port; more: a bare IPv6 address.
        Some((addr, port)) if !port.contains(':') => addr,
        _ => endpoint,
    }
}

fn conntrack_findings(events: &[&(usize, Value)]) -> Vec<Finding> {
    let mut groups: BTreeMap<(String, u64, String), DropGroup> = BTreeMap::new();
    for (line, e) in events {
        let class = str_of(e, "class").to_string();
        if class == "rule" {
            continue;
        }
        let src_ip = host_of(str_of(e, "src")).to_string();
        let ipv6 = src_ip.contains(':');
        let key = (
            class,
            e.get("netns").and_then(Value::as_u64).unwrap_or(0),
            src_ip,
        );
        let g = groups.entry(key).or_default();
        g.lines.push(*line);
        for (list, field) in [
            (&mut g.destinations, "dst"),
            (&mut g.nat_destinations, "nat_dst"),
        ] {
            let v = str_of(e, field).to_string();
            if v != "?" && !list.contains(&v) {
                list.push(v);
            }
        }
        g.pod = g.pod.take().or_else(|| e.get("pod").and_then(pod_label));
        g.proto = str_of(e, "proto").to_uppercase();
        if ipv6 {
            g.proto.push_str("/IPv6");
        }
        if let (Some(count), Some(max)) = (e.get("ct_count"), e.get("ct_max")) {
            g.table = format!(" (entries {count}/{max})");
        }
    }
    groups
        .into_iter()
        .map(|((class, netns, src), g)| {
            let place = match &g.pod {
                Some(pod) => format!("netns {netns} (pod {pod})"),
                None => format!("netns {netns}"),
            };
            let n = g.lines.len();
            let (kind, text) = match class.as_str() {
                "insert_failed" => {
                    let via = if g.nat_destinations.is_empty() {
                        String::new()
                    } else {
                        format!(" through DNAT to {}", g.nat_destinations.join(", "))
                    };
                    let advice = if g.destinations.iter().any(|d| d.ends_with(":53")) {
                        "; for DNS (a resolver sends its A and AAAA queries in parallel from one socket) consider single-request-reopen (glibc resolv.conf option), NodeLocal DNSCache, or DNS over TCP"
                    } else {
                        ""
                    };
                    (
                        "conntrack_insert_race",
                        format!(
                            "{n} {} packets from {src} in {place} to {} were dropped by the conntrack insert race (parallel packets of one socket{via}){advice}",
                            g.proto,
                            g.destinations.join(", ")
                        ),
                    )
                }
                "table_full" => (
                    "conntrack_table_full",
                    format!(
                        "conntrack table full in {place}: {n} packets dropped{}; raise nf_conntrack_max or find what opens so many flows",
                        g.table
                    ),
                ),
                _ => (
                    "conntrack_drop",
                    format!("{n} packets from {src} in {place} were dropped by conntrack ({class})"),
                ),
            };
            Finding {
                kind,
                text,
                lines: g.lines,
            }
        })
        .collect()
}

fn netns_findings(snapshot: &[&(usize, Value)], events: &[&(usize, Value)]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (line, ns) in snapshot {
        let flags: Vec<&Value> = ns
            .get("flags")
            .and_then(Value::as_array)
            .map(|f| f.iter().collect())
            .unwrap_or_default();
        if flags.is_empty() {
            continue;
        }
        let inode = ns.get("inode").and_then(Value::as_u64).unwrap_or(0);
        let mut lines = vec![*line];
        lines.extend(
            events
                .iter()
                .filter(|(_, e)| e.get("inode").and_then(Value::as_u64) == Some(inode))
                .map(|(l, _)| *l),
        );
        lines.sort_unstable();
        let pod = ns
            .get("pod")
            .and_then(pod_label)
            .map_or(String::new(), |p| format!(" (pod {p})"));
        let stuck: Vec<String> = ns
            .get("holders")
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .filter(|h| str_of(h, "state") == "D")
                    .map(|h| {
                        format!(
                            "{}({}) in D state, waiting in {}",
                            str_of(h, "comm"),
                            h.get("pid").map_or("?".into(), Value::to_string),
                            str_of(h, "wchan")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut text = format!("netns {inode}{pod} is alive");
        if !stuck.is_empty() {
            text.push_str(&format!(", held by {}", stuck.join(", ")));
        }
        for flag in &flags {
            text.push_str(&format!(
                "; {}: {}",
                str_of(flag, "flag"),
                str_of(flag, "explanation")
            ));
        }
        let kind = if !stuck.is_empty() {
            "netns_stuck"
        } else {
            "netns_flagged"
        };
        findings.push(Finding { kind, text, lines });
    }
    findings
}

/// One line of the timeline.
#[derive(Debug, Serialize)]
pub struct Moment {
    pub line: usize,
    pub time: String,
    pub what: String,
}

/// Who an event is about: its pod when known, else its process or namespace.
fn subject(e: &Value) -> String {
    let pod = e
        .get("pod")
        .or_else(|| e.pointer("/target/pod"))
        .and_then(pod_label);
    if let Some(pod) = pod {
        return format!("pod {pod}");
    }
    match str_of(e, "type") {
        "signal" => format!(
            "process {}",
            e.get("target").map(process_label).unwrap_or_default()
        ),
        _ => format!(
            "netns {}",
            e.get("netns")
                .or_else(|| e.get("inode"))
                .map_or("?".into(), Value::to_string)
        ),
    }
}

fn describe(e: &Value) -> String {
    match str_of(e, "type") {
        "signal" => {
            let from = match e.get("sender").filter(|s| !s.is_null()) {
                Some(sender) => process_label(sender),
                None => format!("[kernel: {}]", str_of(e, "kernel_reason")),
            };
            format!(
                "{} {} from {from}",
                str_of(e, "signal"),
                str_of(e, "result")
            )
        }
        "conntrack_drop" => {
            let nat = e
                .get("nat_dst")
                .and_then(Value::as_str)
                .map_or(String::new(), |n| format!(" (dnat {n})"));
            // What the packet was, beyond its ends: TCP flags, or the ICMP message.
            let what = match (e.get("tcp_flags").and_then(Value::as_str), e.get("icmp")) {
                (Some(flags), _) => format!(" [{flags}]"),
                (None, Some(icmp)) => format!(
                    " [{}]",
                    icmp.get("name")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("type {}", icmp["type"]), str::to_string)
                ),
                _ => String::new(),
            };
            format!(
                "{} drop: {} {} -> {}{what}{nat}",
                str_of(e, "class"),
                str_of(e, "proto"),
                str_of(e, "src"),
                str_of(e, "dst")
            )
        }
        "netns" => format!(
            "{} (pid {})",
            str_of(e, "action"),
            e.get("pid").map_or("-".into(), Value::to_string)
        ),
        other => other.to_string(),
    }
}

/// The findings and timelines of a recording.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub events: usize,
    pub findings: Vec<Finding>,
    pub timelines: BTreeMap<String, Vec<Moment>>,
    pub unreadable: Vec<Value>,
}

pub fn analyse(recording: &Recording) -> Report {
    let of_type = |t: &str| -> Vec<&(usize, Value)> {
        recording
            .objects
            .iter()
            .filter(|(_, v)| str_of(v, "type") == t)
            .collect()
    };
    let (signals, drops, netns, snapshot) = (
        of_type("signal"),
        of_type("conntrack_drop"),
        of_type("netns"),
        of_type("netns_snapshot"),
    );
    let mut findings = signal_findings(&signals);
    findings.extend(conntrack_findings(&drops));
    findings.extend(netns_findings(&snapshot, &netns));

    let mut timelines: BTreeMap<String, Vec<Moment>> = BTreeMap::new();
    for (line, e) in signals.iter().chain(&drops).chain(&netns) {
        timelines.entry(subject(e)).or_default().push(Moment {
            line: *line,
            time: str_of(e, "time").to_string(),
            what: describe(e),
        });
    }
    for moments in timelines.values_mut() {
        moments.sort_by(|a, b| a.time.cmp(&b.time));
    }
    Report {
        kind: "report",
        events: signals.len() + drops.len() + netns.len(),
        findings,
        timelines,
        unreadable: recording
            .unreadable
            .iter()
            .map(|(line, error)| json!({"line": line, "error": error}))
            .collect(),
    }
}

/// Prints the report of the recording at `path`.
pub fn print(path: &Path, json: bool) -> Result<()> {
    let report = analyse(&read(path)?);
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let source = if path == Path::new("-") {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    println!("report of {source}: {} events", report.events);
    for bad in &report.unreadable {
        println!(
            "  line {} could not be read ({}); skipped",
            bad["line"],
            str_of(bad, "error")
        );
    }
    println!("findings:");
    if report.findings.is_empty() {
        println!("  none");
    }
    for (i, f) in report.findings.iter().enumerate() {
        let lines: Vec<String> = f.lines.iter().map(usize::to_string).collect();
        println!("  {}. {}\n     (lines {})", i + 1, f.text, lines.join(", "));
    }
    println!("timeline:");
    for (subject, moments) in &report.timelines {
        println!("  {subject}:");
        for m in moments {
            println!(
                "    {}  {}  (line {})",
                clock::time_of_day(&m.time),
                m.what,
                m.line
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drops_are_described_with_their_flags_or_icmp_message() {
        let syn = json!({"type": "conntrack_drop", "class": "rule", "proto": "tcp",
                         "src": "[::1]:40000", "dst": "[::1]:80", "tcp_flags": "SYN"});
        assert_eq!(
            describe(&syn),
            "rule drop: tcp [::1]:40000 -> [::1]:80 [SYN]"
        );
        let echo = json!({"type": "conntrack_drop", "class": "rule", "proto": "icmpv6",
                          "src": "::1", "dst": "::1",
                          "icmp": {"type": 128, "code": 0, "id": 7, "name": "echo-request"}});
        assert_eq!(
            describe(&echo),
            "rule drop: icmpv6 ::1 -> ::1 [echo-request]"
        );
    }

    #[test]
    fn endpoints_of_either_family() {
        assert_eq!(host_of("10.0.0.1:53"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:53"), "fd00::1");
        assert_eq!(host_of("fd00::1"), "fd00::1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn an_ipv6_dns_insert_race_is_named() {
        let drop = |line: usize, vip: &str| {
            (
                line,
                json!({"type": "conntrack_drop", "class": "insert_failed", "netns": 7,
                       "proto": "udp", "src": "[fd77::1]:40000", "dst": format!("[{vip}]:53"),
                       "nat_dst": "[fd77::2]:53"}),
            )
        };
        let events = [drop(1, "fd96::a"), drop(2, "fd96::b")];
        let refs: Vec<&(usize, Value)> = events.iter().collect();
        let findings = conntrack_findings(&refs);
        assert_eq!(findings.len(), 1);
        let text = &findings[0].text;
        assert!(
            text.starts_with(
                "2 UDP/IPv6 packets from fd77::1 in netns 7 to [fd96::a]:53, [fd96::b]:53"
            ),
            "{text}"
        );
        assert!(text.contains("through DNAT to [fd77::2]:53"), "{text}");
        assert!(text.contains("single-request-reopen"), "{text}");
        assert_eq!(findings[0].lines, [1, 2]);
    }
}
