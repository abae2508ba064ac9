//! `tracer report FILE`: a recording (`tracer record`) turned into findings in plain words,
//! each pointing at the lines of the file that support it, and a timeline per subject.
//!
//! It reads only the file, so a recording made on one node can be read anywhere. Lines that
//! are not JSON (a truncated last line, garbage) are named and skipped. It streams: each line is
//! folded into the findings and timelines as it is read, and what it keeps is bounded (lines
//! cited per finding, moments per timeline, timelines, unreadable lines named), so a recording
//! of any size, or an endless `kubectl logs -f`, is read in bounded memory.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{clock, text, tracers::signals::sender};

/// A pod as events name it.
#[derive(Debug, Deserialize)]
struct PodLine {
    namespace: Option<String>,
    name: Option<String>,
}

impl PodLine {
    /// `shop/web`, when the runtime named it.
    fn label(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.namespace.as_ref()?,
            self.name.as_ref()?
        ))
    }
}

/// One side of a signal.
#[derive(Debug, Deserialize)]
struct ProcessLine {
    pid: u32,
    comm: String,
    process_comm: Option<String>,
    pod: Option<PodLine>,
}

impl ProcessLine {
    /// `comm(pid)`, with the pod when there is one.
    fn label(&self) -> String {
        let comm = self.process_comm.as_deref().unwrap_or(&self.comm);
        match self.pod.as_ref().and_then(PodLine::label) {
            Some(pod) => format!("{comm}({}) in pod {pod}", self.pid),
            None => format!("{comm}({})", self.pid),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AncestorLine {
    pid: u32,
    comm: String,
}

#[derive(Debug, Deserialize)]
struct OomLine {
    memcg: Option<String>,
}

/// A `signal` event, as far as the report reads it.
#[derive(Debug, Deserialize)]
struct SignalLine {
    time: String,
    signal: String,
    signo: i32,
    result: String,
    code: String,
    /// Absent from recordings made before senders were attributed by syscall.
    how: Option<String>,
    code_from: Option<String>,
    si_code: Option<i32>,
    kernel_reason: Option<String>,
    sender: Option<ProcessLine>,
    target: ProcessLine,
    #[serde(default)]
    ancestry: Vec<AncestorLine>,
    #[serde(default)]
    ancestry_truncated: bool,
    oom: Option<OomLine>,
}

impl SignalLine {
    /// The sender's parents, pid 1 first: `systemd(1) => bash(20) => ...`.
    fn ancestry(&self) -> String {
        let mut chain: Vec<String> = self
            .ancestry
            .iter()
            .rev()
            .map(|p| format!("{}({})", p.comm, p.pid))
            .collect();
        if self.ancestry_truncated {
            chain.insert(0, "...".into());
        }
        chain.join(" => ")
    }

    /// How it was sent, as the live output shows it (`sigqueue, claims SI_TIMER`); its code
    /// alone for a recording that predates `how`.
    fn how_sent(&self) -> String {
        match &self.how {
            Some(how) => sender::how_label(
                how,
                &self.code,
                self.code_from.as_deref().unwrap_or(""),
                self.signo,
                self.si_code,
            ),
            None => self.code.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct IcmpLine {
    #[serde(rename = "type")]
    kind: u8,
    name: Option<String>,
}

/// A `conntrack_drop` event, as far as the report reads it.
#[derive(Debug, Deserialize)]
struct DropLine {
    time: String,
    class: String,
    netns: u64,
    pod: Option<PodLine>,
    proto: Option<String>,
    src: Option<String>,
    dst: Option<String>,
    nat_dst: Option<String>,
    icmp: Option<IcmpLine>,
    tcp_flags: Option<String>,
    ct_count: Option<u64>,
    ct_max: Option<u64>,
}

/// A `netns` (`--watch`) event, as far as the report reads it.
#[derive(Debug, Deserialize)]
struct NetnsLine {
    time: String,
    action: String,
    inode: u64,
    pid: Option<u32>,
    pod: Option<PodLine>,
}

#[derive(Debug, Deserialize)]
struct FlagLine {
    flag: String,
    explanation: String,
    /// What keeps the namespace alive, as the flag names it.
    #[serde(default)]
    holders: Vec<HolderRefLine>,
}

/// A holder named by a flag: its kind (`process`, `file`, `socket`, `bind mount`) and pid.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct HolderRefLine {
    pub kind: String,
    pub pid: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct HolderLine {
    pid: u32,
    comm: String,
    state: String,
    wchan: Option<String>,
}

/// A namespace of the closing snapshot (`netns_snapshot`), as far as the report reads it.
#[derive(Debug, Deserialize)]
struct SnapshotLine {
    inode: u64,
    pod: Option<PodLine>,
    #[serde(default)]
    flags: Vec<FlagLine>,
    #[serde(default)]
    holders: Vec<HolderLine>,
}

/// A `probe` line (`tracer probe --json`, `tracer record --probe`), as far as the report
/// reads it.
#[derive(Debug, Deserialize)]
struct ProbeLine {
    time: String,
    netns: u64,
    pod: Option<PodLine>,
    #[serde(default)]
    host_network_pods: Vec<PodLine>,
    status: String,
    proto: String,
    dst: String,
    explanation: String,
}

impl ProbeLine {
    /// What was probed: `pod shop/web`, the node's namespace with its hostNetwork pods, or
    /// another namespace.
    fn subject(&self) -> String {
        if let Some(pod) = self.pod.as_ref().and_then(PodLine::label) {
            return format!("pod {pod}");
        }
        let host: Vec<String> = self
            .host_network_pods
            .iter()
            .filter_map(PodLine::label)
            .collect();
        match host.is_empty() {
            true => format!("netns {}", self.netns),
            false => format!("netns {} (hostNetwork: {})", self.netns, host.join(", ")),
        }
    }
}

/// The finding a failed probe is: what could not reach the target, and why.
fn probe_finding(line: usize, e: &ProbeLine) -> Option<Finding> {
    let (kind, verb) = match e.status.as_str() {
        "fail" => ("unreachable", "cannot reach"),
        "error" => ("probe_error", "could not be probed for"),
        _ => return None,
    };
    Some(Finding {
        kind,
        text: format!(
            "{} {verb} {} {}: {}",
            e.subject(),
            e.proto,
            e.dst,
            e.explanation
        ),
        lines: vec![line],
        more_lines: 0,
        holders: Vec::new(),
    })
}

/// Every type of line the tracers write, matched exhaustively: a new event type has to be
/// handled here (the round-trip test feeds every tracer's events through it).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Signal(Box<SignalLine>),
    ConntrackDrop(Box<DropLine>),
    Netns(NetnsLine),
    NetnsSnapshot(SnapshotLine),
    Probe(Box<ProbeLine>),
    /// A tracer's end-of-run figures: not an event.
    Summary,
    /// A type this version does not know (a newer recording's): counted, not read.
    #[serde(other)]
    Unknown,
}

/// Lines longer than this are not read (a recording's longest is a few KiB).
const MAX_LINE: usize = 1 << 20;

/// What the report keeps, at most: the lines a finding cites, the moments of one timeline, the
/// timelines, the unreadable lines it names. Past these, it counts.
const MAX_CITED: usize = 100;
const MAX_MOMENTS: usize = 200;
const MAX_TIMELINES: usize = 1_000;
const MAX_UNREADABLE: usize = 100;

/// The first [`MAX_CITED`] items pushed, and how many more there were.
#[derive(Debug, Serialize)]
pub struct Capped<T> {
    pub items: Vec<T>,
    pub more: usize,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            more: 0,
        }
    }
}

impl<T> Capped<T> {
    fn push(&mut self, item: T, max: usize) {
        if self.items.len() < max {
            self.items.push(item);
        } else {
            self.more += 1;
        }
    }
}

/// Reads the recording at `path`, or standard input for `-` (`kubectl logs ds/tracer | tracer
/// report -`), line by line into `analysis`.
pub fn read(path: &Path, analysis: &mut Analysis) -> Result<()> {
    let input: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(BufReader::new(file))
    };
    read_from(input, analysis).with_context(|| format!("reading {}", path.display()))
}

/// [`read`] from any reader. A line is read into one buffer, reused; a line longer than
/// [`MAX_LINE`] is skipped without being kept whole.
pub fn read_from(mut input: impl BufRead, analysis: &mut Analysis) -> std::io::Result<()> {
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let mut too_long = false;
        loop {
            let chunk = input.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(end) => (end + 1, true),
                None => (chunk.len(), false),
            };
            if line.len() + take > MAX_LINE + 1 {
                too_long = true;
            } else {
                line.extend_from_slice(&chunk[..take]);
            }
            input.consume(take);
            if done {
                break;
            }
        }
        if line.is_empty() && !too_long {
            return Ok(());
        }
        analysis.add_text(number, &line, too_long);
    }
    Ok(())
}

/// Something the recording shows, in plain words.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub text: String,
    /// Lines of the file with the events that show it (the first ones, when there are many).
    pub lines: Vec<usize>,
    /// How many more lines show it.
    #[serde(skip_serializing_if = "is_zero")]
    pub more_lines: usize,
    /// For a namespace: what keeps it alive (kind and pid).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderRefLine>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The finding a delivered SIGKILL is.
fn signal_finding(line: usize, e: &SignalLine) -> Option<Finding> {
    if e.signo != 9 || e.result != "delivered" {
        return None;
    }
    let target = e.target.label();
    let (kind, text) = match (e.kernel_reason.as_deref(), &e.sender) {
        (Some("oom"), _) => (
            "oom_kill",
            format!(
                "{target} was OOM-killed: memory cgroup {} hit its limit",
                e.oom
                    .as_ref()
                    .and_then(|o| o.memcg.as_deref())
                    .unwrap_or("(unknown)")
            ),
        ),
        (Some(reason), _) => (
            "kernel_kill",
            format!(
                "{target} was killed by SIGKILL from the kernel ({reason}, {})",
                e.code
            ),
        ),
        (None, Some(sender)) => (
            "kill",
            format!(
                "{target} was killed by SIGKILL from {} ({}), whose ancestry is {}",
                sender.label(),
                e.how_sent(),
                e.ancestry()
            ),
        ),
        (None, None) => return None,
    };
    Some(Finding {
        kind,
        text,
        lines: vec![line],
        more_lines: 0,
        holders: Vec::new(),
    })
}

/// Drops of one class from one source address in one namespace.
#[derive(Default)]
struct DropGroup {
    lines: Capped<usize>,
    destinations: Capped<String>,
    nat_destinations: Capped<String>,
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

/// Drops grouped by class, namespace and source address.
type DropGroups = BTreeMap<(String, u64, String), DropGroup>;

/// Adds a drop to its group (firewall rules' drops are no finding).
fn add_drop(groups: &mut DropGroups, line: usize, e: &DropLine) {
    if e.class == "rule" {
        return;
    }
    let src_ip = host_of(e.src.as_deref().unwrap_or("?")).to_string();
    let ipv6 = src_ip.contains(':');
    let g = groups
        .entry((e.class.clone(), e.netns, src_ip))
        .or_default();
    g.lines.push(line, MAX_CITED);
    for (list, value) in [
        (&mut g.destinations, &e.dst),
        (&mut g.nat_destinations, &e.nat_dst),
    ] {
        if let Some(v) = value.as_ref().filter(|v| !list.items.contains(v)) {
            list.push(v.clone(), MAX_CITED);
        }
    }
    g.pod = g
        .pod
        .take()
        .or_else(|| e.pod.as_ref().and_then(PodLine::label));
    g.proto = e.proto.as_deref().unwrap_or("?").to_uppercase();
    if ipv6 {
        g.proto.push_str("/IPv6");
    }
    if let (Some(count), Some(max)) = (e.ct_count, e.ct_max) {
        g.table = format!(" (entries {count}/{max})");
    }
}

/// The findings of the drop groups.
fn conntrack_findings(groups: DropGroups) -> Vec<Finding> {
    groups
        .into_iter()
        .map(|((class, netns, src), g)| {
            let place = match &g.pod {
                Some(pod) => format!("netns {netns} (pod {pod})"),
                None => format!("netns {netns}"),
            };
            let n = g.lines.items.len() + g.lines.more;
            let list = |l: &Capped<String>| {
                let mut text = l.items.join(", ");
                if l.more > 0 {
                    text.push_str(&format!(" and {} more", l.more));
                }
                text
            };
            let (kind, text) = match class.as_str() {
                "insert_failed" => {
                    let via = if g.nat_destinations.items.is_empty() {
                        String::new()
                    } else {
                        format!(" through DNAT to {}", list(&g.nat_destinations))
                    };
                    let advice = if g.destinations.items.iter().any(|d| d.ends_with(":53")) {
                        "; for DNS (a resolver sends its A and AAAA queries in parallel from one socket) consider single-request-reopen (glibc resolv.conf option), NodeLocal DNSCache, or DNS over TCP"
                    } else {
                        ""
                    };
                    (
                        "conntrack_insert_race",
                        format!(
                            "{n} {} packets from {src} in {place} to {} were dropped by the conntrack insert race (parallel packets of one socket{via}){advice}",
                            g.proto,
                            list(&g.destinations)
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
                "unknown" => (
                    "netfilter_drop_unclassified",
                    format!("{n} packets from {src} in {place} were dropped by netfilter: by conntrack or by a rule, the tracer could not tell (no earlier conntrack figures to compare with)"),
                ),
                _ => (
                    "conntrack_drop",
                    format!("{n} packets from {src} in {place} were dropped by conntrack ({class})"),
                ),
            };
            Finding {
                kind,
                text,
                lines: g.lines.items,
                more_lines: g.lines.more,
                holders: Vec::new(),
            }
        })
        .collect()
}

/// The findings of flagged namespaces of the snapshot, with the lines of their events.
fn netns_findings(
    flagged: &[(usize, SnapshotLine)],
    events: &HashMap<u64, Capped<usize>>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (line, ns) in flagged {
        let mut lines = vec![*line];
        let mut more_lines = 0;
        if let Some(cited) = events.get(&ns.inode) {
            lines.extend(&cited.items);
            more_lines = cited.more;
        }
        lines.sort_unstable();
        let pod = ns
            .pod
            .as_ref()
            .and_then(PodLine::label)
            .map_or(String::new(), |p| format!(" (pod {p})"));
        let stuck: Vec<String> = ns
            .holders
            .iter()
            .filter(|h| h.state == "D")
            .map(|h| {
                format!(
                    "{}({}) in D state, waiting in {}",
                    h.comm,
                    h.pid,
                    h.wchan.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let mut text = format!("netns {}{pod} is alive", ns.inode);
        if !stuck.is_empty() {
            text.push_str(&format!(", held by {}", stuck.join(", ")));
        }
        for flag in &ns.flags {
            text.push_str(&format!("; {}: {}", flag.flag, flag.explanation));
        }
        let kind = if !stuck.is_empty() {
            "netns_stuck"
        } else {
            "netns_flagged"
        };
        let mut holders: Vec<HolderRefLine> = Vec::new();
        for h in ns.flags.iter().flat_map(|f| &f.holders) {
            if !holders.contains(h) {
                holders.push(h.clone());
            }
        }
        findings.push(Finding {
            kind,
            text,
            lines,
            more_lines,
            holders,
        });
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

/// An event of the timeline: who it is about (its pod when known, else its process or
/// namespace), when, and what happened.
fn moment(line: &Line) -> Option<(String, &str, String)> {
    let pod_subject = |pod: &Option<PodLine>| {
        pod.as_ref()
            .and_then(PodLine::label)
            .map(|p| format!("pod {p}"))
    };
    match line {
        Line::Signal(e) => {
            let from = match &e.sender {
                Some(sender) => sender.label(),
                None => format!("[kernel: {}]", e.kernel_reason.as_deref().unwrap_or("?")),
            };
            Some((
                pod_subject(&e.target.pod)
                    .unwrap_or_else(|| format!("process {}", e.target.label())),
                &e.time,
                format!("{} {} from {from}", e.signal, e.result),
            ))
        }
        Line::ConntrackDrop(e) => Some((
            pod_subject(&e.pod).unwrap_or_else(|| format!("netns {}", e.netns)),
            &e.time,
            describe_drop(e),
        )),
        Line::Netns(e) => Some((
            pod_subject(&e.pod).unwrap_or_else(|| format!("netns {}", e.inode)),
            &e.time,
            format!(
                "{} (pid {})",
                e.action,
                e.pid.map_or("-".into(), |p| p.to_string())
            ),
        )),
        Line::Probe(e) => Some((
            pod_subject(&e.pod).unwrap_or_else(|| format!("netns {}", e.netns)),
            &e.time,
            format!(
                "probe {} {}: {} ({})",
                e.proto,
                e.dst,
                e.status.to_uppercase(),
                e.explanation
            ),
        )),
        Line::NetnsSnapshot(_) | Line::Summary | Line::Unknown => None,
    }
}

fn describe_drop(e: &DropLine) -> String {
    let nat = e
        .nat_dst
        .as_ref()
        .map_or(String::new(), |n| format!(" (dnat {n})"));
    // What the packet was, beyond its ends: TCP flags, or the ICMP message.
    let what = match (&e.tcp_flags, &e.icmp) {
        (Some(flags), _) => format!(" [{flags}]"),
        (None, Some(icmp)) => format!(
            " [{}]",
            icmp.name
                .clone()
                .unwrap_or_else(|| format!("type {}", icmp.kind))
        ),
        _ => String::new(),
    };
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    format!(
        "{} drop: {} {} -> {}{what}{nat}",
        e.class,
        or_unknown(&e.proto),
        or_unknown(&e.src),
        or_unknown(&e.dst)
    )
}

/// The moments of one subject: the first [`MAX_MOMENTS`], and how many more.
pub type Timeline = Capped<Moment>;

/// The findings and timelines of a recording.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub events: usize,
    pub findings: Vec<Finding>,
    pub timelines: BTreeMap<String, Timeline>,
    /// Subjects beyond the [`MAX_TIMELINES`] first, whose events have no timeline.
    #[serde(skip_serializing_if = "is_zero")]
    pub timelines_left_out: usize,
    pub unreadable: Vec<Value>,
    #[serde(skip_serializing_if = "is_zero")]
    pub more_unreadable: usize,
    /// Lines of a type this version does not know (a newer tracer's).
    #[serde(skip_serializing_if = "is_zero")]
    pub unknown_lines: usize,
}

/// A recording read so far: what the report needs of it, and no more.
#[derive(Default)]
pub struct Analysis {
    events: usize,
    /// Findings made as their line is read (kills).
    findings: Vec<Finding>,
    drops: DropGroups,
    /// Lines of each namespace's lifecycle events, for a finding about it.
    netns_events: HashMap<u64, Capped<usize>>,
    /// Flagged namespaces of the closing snapshot.
    flagged: Vec<(usize, SnapshotLine)>,
    timelines: BTreeMap<String, Timeline>,
    timelines_left_out: usize,
    unreadable: Capped<(usize, String)>,
    unknown: usize,
}

impl Analysis {
    /// Line `number` of the recording, as read (`too_long`: cut, not read).
    fn add_text(&mut self, number: usize, text: &[u8], too_long: bool) {
        if too_long {
            self.unreadable.push(
                (number, format!("longer than {MAX_LINE} bytes")),
                MAX_UNREADABLE,
            );
            return;
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match serde_json::from_slice::<Line>(text) {
            Ok(line) => self.add(number, line),
            Err(e) => self
                .unreadable
                .push((number, e.to_string()), MAX_UNREADABLE),
        }
    }

    fn add(&mut self, number: usize, line: Line) {
        if let Some((subject, time, what)) = moment(&line) {
            let moment = Moment {
                line: number,
                time: time.to_string(),
                what,
            };
            if let Some(timeline) = self.timelines.get_mut(&subject) {
                timeline.push(moment, MAX_MOMENTS);
            } else if self.timelines.len() < MAX_TIMELINES {
                let mut timeline = Timeline::default();
                timeline.push(moment, MAX_MOMENTS);
                self.timelines.insert(subject, timeline);
            } else {
                self.timelines_left_out += 1;
            }
        }
        match line {
            Line::Signal(e) => {
                self.events += 1;
                self.findings.extend(signal_finding(number, &e));
            }
            Line::ConntrackDrop(e) => {
                self.events += 1;
                add_drop(&mut self.drops, number, &e);
            }
            Line::Netns(e) => {
                self.events += 1;
                self.netns_events
                    .entry(e.inode)
                    .or_default()
                    .push(number, MAX_CITED);
            }
            Line::Probe(e) => {
                self.events += 1;
                self.findings.extend(probe_finding(number, &e));
            }
            Line::NetnsSnapshot(e) if !e.flags.is_empty() => self.flagged.push((number, e)),
            Line::NetnsSnapshot(_) | Line::Summary => {}
            Line::Unknown => self.unknown += 1,
        }
    }

    pub fn report(self) -> Report {
        let mut findings = self.findings;
        findings.extend(conntrack_findings(self.drops));
        findings.extend(netns_findings(&self.flagged, &self.netns_events));
        let mut timelines = self.timelines;
        for timeline in timelines.values_mut() {
            timeline.items.sort_by(|a, b| a.time.cmp(&b.time));
        }
        Report {
            kind: "report",
            events: self.events,
            findings,
            timelines,
            timelines_left_out: self.timelines_left_out,
            unreadable: self
                .unreadable
                .items
                .iter()
                .map(|(line, error)| json!({"line": line, "error": error}))
                .collect(),
            more_unreadable: self.unreadable.more,
            unknown_lines: self.unknown,
        }
    }
}

/// Prints the report of the recording at `path`. Every string from the recording is escaped:
/// a recording can come from anywhere (`kubectl logs`), and its text must not drive the
/// terminal.
pub fn print(path: &Path, json: bool) -> Result<()> {
    write(path, json, &mut crate::output::answer_stdout())
}

/// [`print`] into `w`.
pub fn write(path: &Path, json: bool, mut w: &mut dyn std::io::Write) -> Result<()> {
    let mut analysis = Analysis::default();
    read(path, &mut analysis)?;
    let report = analysis.report();
    if json {
        writeln!(w, "{}", serde_json::to_string(&report)?)?;
        return Ok(());
    }
    let source = if path == Path::new("-") {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    write_human(&report, &source, &mut w)?;
    Ok(())
}

/// The report for a terminal. Its strings come from a file that may not be the tracer's own
/// (`tracer report -`), so each is made safe to print.
pub fn write_human(report: &Report, source: &str, out: &mut impl Write) -> std::io::Result<()> {
    let safe = text::terminal_safe;
    writeln!(out, "report of {}: {} events", safe(source), report.events)?;
    for bad in &report.unreadable {
        writeln!(
            out,
            "  line {} could not be read ({}); skipped",
            bad["line"],
            safe(bad["error"].as_str().unwrap_or("?"))
        )?;
    }
    if report.more_unreadable > 0 {
        writeln!(
            out,
            "  {} more lines could not be read",
            report.more_unreadable
        )?;
    }
    if report.unknown_lines > 0 {
        writeln!(
            out,
            "  {} lines of types this version does not know (a newer tracer's); skipped",
            report.unknown_lines
        )?;
    }
    writeln!(out, "findings:")?;
    if report.findings.is_empty() {
        writeln!(out, "  none")?;
    }
    for (i, f) in report.findings.iter().enumerate() {
        let mut lines: Vec<String> = f.lines.iter().map(usize::to_string).collect();
        if f.more_lines > 0 {
            lines.push(format!("and {} more", f.more_lines));
        }
        writeln!(
            out,
            "  {}. {}\n     (lines {})",
            i + 1,
            safe(&f.text),
            lines.join(", ")
        )?;
    }
    writeln!(out, "timeline:")?;
    for (subject, timeline) in &report.timelines {
        writeln!(out, "  {}:", safe(subject))?;
        for m in &timeline.items {
            writeln!(
                out,
                "    {}  {}  (line {})",
                safe(clock::time_of_day(&m.time)),
                safe(&m.what),
                m.line
            )?;
        }
        if timeline.more > 0 {
            writeln!(out, "    ... and {} more", timeline.more)?;
        }
    }
    if report.timelines_left_out > 0 {
        writeln!(
            out,
            "  ... and {} events of further subjects",
            report.timelines_left_out
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::{
        enrich::identity::Identities,
        kernel::btf::KernelBtf,
        output::{Format, Output},
        probe,
        tracers::{netns::snapshot, samples, TracerOptions, REGISTRY},
    };

    /// The report of a recording of `objects`, one per line from line 1, read as `tracer
    /// report` reads a file.
    fn report_of(objects: &[Value]) -> Report {
        let text: String = objects.iter().map(|o| format!("{o}\n")).collect();
        let mut analysis = Analysis::default();
        read_from(text.as_bytes(), &mut analysis).unwrap();
        analysis.report()
    }

    fn lines_of(objects: &[Value]) -> Vec<Line> {
        objects
            .iter()
            .map(|o| serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{o}: {e}")))
            .collect()
    }

    fn name(line: &Line) -> &'static str {
        match line {
            Line::Signal(_) => "signal",
            Line::ConntrackDrop(_) => "conntrack_drop",
            Line::Netns(_) => "netns",
            Line::NetnsSnapshot(_) => "netns_snapshot",
            Line::Probe(_) => "probe",
            Line::Summary => "summary",
            Line::Unknown => "unknown",
        }
    }

    #[test]
    fn every_line_the_tracers_write_is_read_back() {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let identities = Identities::new();
        let (mut out, written) = Output::in_memory(Format::Json);
        for registered in REGISTRY {
            let mut tracer =
                (registered.make)(&btf, &identities, &TracerOptions::default()).unwrap();
            for (kind, raw) in samples::one_of_each_kind() {
                if tracer.kinds().contains(&kind) {
                    tracer.on_record(kind, &raw, &mut out).unwrap();
                }
            }
            tracer.flush(&mut out, true).unwrap();
            let mut summary = serde_json::Map::new();
            summary.insert("type".into(), json!("summary"));
            tracer.summarize(&mut summary);
            out.summary(&Value::Object(summary)).unwrap();
        }
        // And record's closing snapshot of this machine's namespaces, and a probe scan's lines
        // (`record --probe`).
        for namespace in snapshot::take(std::time::Duration::from_secs(30)) {
            out.event(&namespace).unwrap();
        }
        for line in probe::samples() {
            out.event(&line).unwrap();
        }
        out.flush().unwrap();
        let objects = samples::objects(&written);
        let lines = lines_of(&objects);
        let seen: BTreeSet<&str> = lines.iter().map(name).collect();
        let every = [
            "conntrack_drop",
            "netns",
            "netns_snapshot",
            "probe",
            "signal",
            "summary",
        ];
        assert_eq!(seen, BTreeSet::from(every), "{objects:#?}");
        // Each is a finding or a moment where it should be.
        let report = report_of(&objects);
        assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
        assert_eq!(report.events, 8, "{:#?}", report.timelines);
        assert!(report.timelines.contains_key("process server(7942)"));
        assert!(report.timelines.contains_key("netns 4026532999"));
        // A probe that failed, and one that could not be made, are findings; each probe is a
        // moment of its pod.
        let probes: Vec<(&str, &str)> = report
            .findings
            .iter()
            .filter(|f| matches!(f.kind, "unreachable" | "probe_error"))
            .map(|f| (f.kind, f.text.as_str()))
            .collect();
        assert_eq!(
            probes,
            [
                (
                    "unreachable",
                    "pod shop/web-2 cannot reach tcp 10.0.0.9:80: SYN dropped by rule in netns 2"
                ),
                (
                    "probe_error",
                    "pod shop/web-3 could not be probed for tcp 10.0.0.9:80: not probed: \
                     namespace 3 went away"
                ),
            ],
            "{:#?}",
            report.findings
        );
        let ok = &report.timelines["pod shop/web-1"].items[0].what;
        assert!(
            ok.starts_with("probe tcp 10.0.0.9:80: OK (connected in "),
            "{ok}"
        );
    }

    fn kill(how: &str, code: &str, code_from: &str, si_code: Option<i32>) -> Value {
        json!({"type": "signal", "time": "2026-12-01T00:00:01.000000Z", "signal": "SIGKILL",
               "signo": 9, "result": "delivered", "code": code, "how": how,
               "code_from": code_from, "si_code": si_code, "kernel_reason": null,
               "sender": {"pid": 30, "comm": "python3", "pod": null},
               "target": {"pid": 40, "comm": "app",
                          "pod": {"namespace": "shop", "name": "web", "uid": "u"}},
               "ancestry": [{"pid": 20, "comm": "bash"}, {"pid": 1, "comm": "systemd"}],
               "ancestry_truncated": false})
    }

    #[test]
    fn kills_are_findings_with_their_sender_however_they_claim_to_be_sent() {
        let oom = json!({"type": "signal", "time": "2026-12-01T00:00:00.000000Z",
                         "signal": "SIGKILL", "signo": 9, "result": "delivered",
                         "code": "kernel (privileged)", "kernel_reason": "oom",
                         "sender": null, "target": {"pid": 50, "comm": "java"},
                         "oom": {"memcg": "/kubepods/pod1"}});
        let ignored = json!({"type": "signal", "time": "2026-12-01T00:00:02.000000Z",
                             "signal": "SIGUSR1", "signo": 10, "result": "ignored",
                             "code": "kill", "sender": {"pid": 30, "comm": "python3"},
                             "target": {"pid": 40, "comm": "app",
                                        "pod": {"namespace": "shop", "name": "web"}}});
        let forged = kill("sigqueue", "timer", "sender", Some(-2));
        let report = report_of(&[oom, forged, ignored]);
        let kinds: Vec<&str> = report.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["oom_kill", "kill"]);
        assert!(report.findings[0].text.contains("/kubepods/pod1"));
        let text = &report.findings[1].text;
        assert!(
            text.starts_with("app(40) in pod shop/web was killed by SIGKILL from python3(30) (sigqueue, claims SI_TIMER)"),
            "{text}"
        );
        assert!(text.ends_with("systemd(1) => bash(20)"), "{text}");
        assert_eq!(report.findings[1].lines, [2]);
        // The pod's timeline has both of its events, in time order.
        let web = &report.timelines["pod shop/web"];
        assert_eq!(web.items.iter().map(|m| m.line).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_stuck_namespace_is_a_finding_with_its_events() {
        let snapshot = json!({"type": "netns_snapshot", "inode": 7, "pod": null,
            "holders": [{"pid": 9, "comm": "vfork-holder", "state": "D", "wchan": "kernel_clone"}],
            "flags": [{"flag": "stuck", "explanation": "in D state for 3s"}]});
        let teardown = json!({"type": "netns", "time": "2026-12-01T00:00:00.000000Z",
                              "action": "create", "inode": 7, "pid": 9});
        let healthy = json!({"type": "netns_snapshot", "inode": 8, "flags": []});
        let report = report_of(&[teardown, snapshot, healthy]);
        assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
        let finding = &report.findings[0];
        assert_eq!(finding.kind, "netns_stuck");
        assert!(finding
            .text
            .contains("vfork-holder(9) in D state, waiting in kernel_clone"));
        assert_eq!(finding.lines, [1, 2]);
    }

    #[test]
    fn an_orphaned_namespace_finding_names_its_holders() {
        let snapshot = json!({"type": "netns_snapshot", "inode": 7, "pod": null,
            "flags": [{"flag": "orphaned",
                       "explanation": "no process is inside; held by socket fd 4 of cni(12)",
                       "holders": [{"kind": "socket", "pid": 12, "comm": "cni", "what": "fd 4"}]}]});
        let report = report_of(&[snapshot]);
        let finding = &report.findings[0];
        assert_eq!(finding.kind, "netns_flagged");
        assert!(
            finding.text.contains("socket fd 4 of cni(12)"),
            "{}",
            finding.text
        );
        assert_eq!(
            finding.holders,
            [HolderRefLine {
                kind: "socket".into(),
                pid: Some(12)
            }]
        );
    }

    #[test]
    fn unknown_and_malformed_lines_are_told_apart() {
        let report = report_of(&[
            json!({"type": "from_a_newer_tracer", "x": 1}),
            json!({"type": "signal", "time": "t"}),
            json!([1, 2]),
        ]);
        assert_eq!(report.unknown_lines, 1);
        let bad: Vec<&Value> = report.unreadable.iter().map(|u| &u["line"]).collect();
        assert_eq!(bad, [2, 3]);
        // A renamed field is named, not silently skipped.
        assert!(
            report.unreadable[0]["error"]
                .as_str()
                .unwrap()
                .contains("missing field"),
            "{:?}",
            report.unreadable
        );
    }

    #[test]
    fn what_it_keeps_is_bounded_and_the_rest_counted() {
        let drop = json!({"type": "conntrack_drop", "time": "t", "class": "insert_failed",
                          "netns": 7, "proto": "udp", "src": "10.0.0.1:40000",
                          "dst": "10.96.0.10:53"});
        let n = MAX_CITED.max(MAX_MOMENTS) + 5;
        let mut text = format!("{drop}\n").repeat(n);
        text.push_str(&"x".repeat(MAX_LINE + 10));
        text.push_str("\n{not json\n");
        let mut analysis = Analysis::default();
        read_from(text.as_bytes(), &mut analysis).unwrap();
        let report = analysis.report();
        assert_eq!(report.events, n);
        let finding = &report.findings[0];
        assert_eq!(finding.lines.len(), MAX_CITED);
        assert_eq!(finding.more_lines, n - MAX_CITED);
        assert!(finding.text.starts_with(&format!("{n} UDP packets")));
        let timeline = &report.timelines["netns 7"];
        assert_eq!(timeline.items.len(), MAX_MOMENTS);
        assert_eq!(timeline.more, n - MAX_MOMENTS);
        let unreadable: Vec<&Value> = report.unreadable.iter().map(|u| &u["line"]).collect();
        assert_eq!(unreadable, [n + 1, n + 2]);
        assert!(report.unreadable[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("longer than"));
    }

    #[test]
    fn drops_are_described_with_their_flags_or_icmp_message() {
        let lines = lines_of(&[
            json!({"type": "conntrack_drop", "time": "t", "class": "rule", "netns": 1,
                   "proto": "tcp", "src": "[::1]:40000", "dst": "[::1]:80", "tcp_flags": "SYN"}),
            json!({"type": "conntrack_drop", "time": "t", "class": "rule", "netns": 1,
                   "proto": "icmpv6", "src": "::1", "dst": "::1",
                   "icmp": {"type": 128, "code": 0, "id": 7, "name": "echo-request"}}),
        ]);
        let described: Vec<String> = lines
            .iter()
            .filter_map(|l| moment(l).map(|(_, _, what)| what))
            .collect();
        assert_eq!(
            described,
            [
                "rule drop: tcp [::1]:40000 -> [::1]:80 [SYN]",
                "rule drop: icmpv6 ::1 -> ::1 [echo-request]"
            ]
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
        let drop = |vip: &str| {
            json!({"type": "conntrack_drop", "time": "t", "class": "insert_failed", "netns": 7,
                   "proto": "udp", "src": "[fd77::1]:40000", "dst": format!("[{vip}]:53"),
                   "nat_dst": "[fd77::2]:53"})
        };
        let report = report_of(&[drop("fd96::a"), drop("fd96::b")]);
        assert_eq!(report.findings.len(), 1);
        let text = &report.findings[0].text;
        assert!(
            text.starts_with(
                "2 UDP/IPv6 packets from fd77::1 in netns 7 to [fd96::a]:53, [fd96::b]:53"
            ),
            "{text}"
        );
        assert!(text.contains("through DNAT to [fd77::2]:53"), "{text}");
        assert!(text.contains("single-request-reopen"), "{text}");
        assert_eq!(report.findings[0].lines, [1, 2]);
    }
}
