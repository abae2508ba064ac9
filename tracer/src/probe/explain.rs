//! A probe's drops (the conntrack-drops tracer's events whose flow is the probe's) and its
//! outcome, into one explained line.

use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{
    attempt::{Attempt, Outcome},
    target::{Kind, Target},
};
use crate::{
    clock,
    enrich::identity::Pod,
    output::{Column, Event},
    tracers::conntrack::{ConntrackDrop, DropClass, Tuple},
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Drops this long after a probe ended are still its own: a packet already on its way (a
/// queued retransmission, a reply in flight) is dropped after the socket gave up.
const LATE_DROP_NS: u64 = 200_000_000;

/// A probe's flow, as the kernel saw its packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// ICMP: the echo id (conntrack's key where other protocols have ports).
    pub echo_id: Option<u16>,
    /// When the probe ran (CLOCK_MONOTONIC, the drop records' clock): another probe's
    /// packets of the same addresses are outside it.
    pub window: (u64, u64),
    /// The namespace every drop must be in, when the flow's addresses are not unique on the
    /// node (loopback, or another namespace probed with the same source address).
    pub netns: Option<u64>,
}

impl Flow {
    pub fn of(target: &Target, attempt: &Attempt) -> Option<Self> {
        let proto = match (&target.kind, target.addr.ip()) {
            (Kind::Tcp, _) => TCP,
            (Kind::Udp { .. }, _) => UDP,
            (Kind::Icmp, IpAddr::V4(_)) => ICMP,
            (Kind::Icmp, IpAddr::V6(_)) => ICMPV6,
        };
        Some(Self {
            proto,
            src: attempt.src?,
            dst: target.addr,
            echo_id: attempt.echo_id,
            window: attempt.window,
            netns: None,
        })
    }

    /// Whether `drop` is a packet of this flow, either way, during the probe: its conntrack
    /// entry's original or reply tuple (or, without an entry, the packet's own) is the probe's.
    /// For UDP the probe's own end alone names it: its socket holds that address and port for
    /// the whole probe, wherever the destination was rewritten on the way (a DNAT in the
    /// pod's own namespace shows another destination to the namespaces after it). A TCP
    /// connect may share its local port with other connections, and an echo id is anyone's.
    pub fn matches(&self, drop: &ConntrackDrop) -> bool {
        let (start, end) = self.window;
        if drop.ktime_ns < start || drop.ktime_ns > end.saturating_add(LATE_DROP_NS) {
            return false;
        }
        if self
            .netns
            .is_some_and(|netns| netns != u64::from(drop.netns))
        {
            return false;
        }
        let end = |(ip, port): (IpAddr, Option<u16>), of: SocketAddr| {
            ip == of.ip() && (self.echo_id.is_some() || port == Some(of.port()))
        };
        // The entry's reply tuple too: where NAT rewrote the probe's flow, a namespace
        // that saw it after the rewrite has it there.
        let own_end_names_it = self.proto == UDP;
        let same_flow = drop.flow.into_iter().chain(drop.reply).any(|t: Tuple| {
            t.proto == self.proto
                && ((end(t.src, self.src) && (own_end_names_it || end(t.dst, self.dst)))
                    || (end(t.dst, self.src) && (own_end_names_it || end(t.src, self.dst))))
        });
        same_flow
            && self
                .echo_id
                .is_none_or(|id| drop.icmp.is_some_and(|icmp| icmp.id == Some(id)))
    }
}

/// What was probed: a pod's namespace, another namespace, or the node's own for its
/// hostNetwork pods.
#[derive(Clone, Debug, Serialize)]
pub struct Subject {
    /// Inode of the namespace probed from.
    pub netns: u64,
    /// The pod whose sandbox owns the namespace.
    pub pod: Option<Pod>,
    /// For the node's namespace: the hostNetwork pods that share it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_network_pods: Vec<Pod>,
}

impl Subject {
    fn label(&self) -> String {
        if let Some(pod) = &self.pod {
            return pod.qualified_name();
        }
        if !self.host_network_pods.is_empty() {
            let pods: Vec<String> = self
                .host_network_pods
                .iter()
                .map(Pod::qualified_name)
                .collect();
            return format!("host (hostNetwork: {})", pods.join(", "));
        }
        format!("netns {}", self.netns)
    }
}

/// How a probe went, for the summary and the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Fail,
    /// It could not be probed (its namespace went away, a socket could not be opened).
    Error,
}

impl Status {
    /// As the human and `-o line` views show it.
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Fail => "FAIL",
            Status::Error => "ERROR",
        }
    }
}

/// One drop of the probe's flow, where it happened.
#[derive(Clone, Debug, Serialize)]
pub struct SeenDrop {
    pub class: DropClass,
    pub netns: u32,
    pub pod: Option<Pod>,
    /// `SYN`, `echo-request`, ...: which of the probe's packets.
    pub packet: String,
    /// The netfilter hook that dropped it, when the tracer could tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_max: Option<u64>,
}

impl SeenDrop {
    pub fn of(drop: &ConntrackDrop) -> Self {
        let packet = drop
            .tcp_flags
            .clone()
            // The packet's own ICMP type: the entry's is its original direction's.
            .or_else(|| {
                drop.packet_icmp
                    .or(drop.icmp)
                    .and_then(|i| i.name)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("{} packet", drop.proto.as_deref().unwrap_or("?")));
        Self {
            class: drop.class,
            netns: drop.netns,
            pod: drop.pod.clone(),
            packet,
            hook: drop.hook,
            ct_count: drop.ct_count,
            ct_max: drop.ct_max,
        }
    }

    fn text(&self) -> String {
        let mut place = match self.hook {
            Some(hook) => format!("at hook {hook} in netns {}", self.netns),
            None => format!("in netns {}", self.netns),
        };
        if let Some(pod) = &self.pod {
            place.push_str(&format!(" ({})", pod.label()));
        }
        let packet = &self.packet;
        match self.class {
            DropClass::Rule => format!("{packet} dropped by rule {place}"),
            DropClass::InsertFailed => {
                format!("{packet} dropped: conntrack insert race lost {place}")
            }
            DropClass::TableFull => {
                let table = match (self.ct_count, self.ct_max) {
                    (Some(count), Some(max)) => format!(", {count}/{max} entries"),
                    _ => String::new(),
                };
                format!("{packet} dropped: conntrack table full {place}{table}")
            }
            DropClass::ConntrackOther => format!("{packet} dropped by conntrack {place}"),
            // Conntrack's counters could not be compared: a rule's drop or conntrack's.
            DropClass::Unknown => format!("{packet} dropped by a rule or conntrack {place}"),
        }
    }
}

/// One probe's line.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the line was made: as the probe ended (RFC 3339, UTC).
    pub time: String,
    #[serde(flatten)]
    pub subject: Subject,
    pub status: Status,
    pub proto: &'static str,
    pub src: Option<String>,
    pub dst: String,
    /// Time to connect (TCP) or to the reply (UDP, ICMP) of a successful probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    /// What the socket saw; null when it could not be probed.
    pub outcome: Option<Outcome>,
    /// The probe's packets netfilter dropped on this node, in order.
    pub drops: Vec<SeenDrop>,
    /// Why it failed, when the kernel told: a drop, an error, an answer.
    pub explained: bool,
    pub explanation: String,
}

/// `ENETUNREACH (Network is unreachable)`.
fn errno_text(errno: i32) -> String {
    let errno = nix::errno::Errno::from_raw(errno);
    format!("{errno:?} ({})", errno.desc())
}

impl ProbeResult {
    pub fn new(
        subject: Subject,
        target: &Target,
        attempt: Result<Attempt, String>,
        drops: Vec<SeenDrop>,
        unseen: u64,
    ) -> Self {
        let attempt = match attempt {
            Ok(attempt) => attempt,
            Err(error) => {
                return Self {
                    kind: "probe",
                    time: clock::rfc3339(SystemTime::now()),
                    subject,
                    status: Status::Error,
                    proto: target.kind.name(),
                    src: None,
                    dst: target.endpoint(),
                    connect_ms: None,
                    outcome: None,
                    drops,
                    explained: true,
                    explanation: format!("not probed: {error}"),
                }
            }
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (status, explained, explanation) = match (&attempt.outcome, drops.first()) {
            (Outcome::Ok, _) => {
                let verb = match target.kind {
                    Kind::Tcp => "connected",
                    _ => "reply",
                };
                (
                    Status::Ok,
                    true,
                    format!("{verb} in {:.2} ms", ms(attempt.elapsed)),
                )
            }
            (_, Some(first)) => {
                let mut text = first.text();
                if drops.len() > 1 {
                    text.push_str(&format!(" ({} drops)", drops.len()));
                }
                (Status::Fail, true, text)
            }
            (Outcome::Refused, None) => (
                Status::Fail,
                true,
                match target.kind {
                    Kind::Tcp => "refused: the target reset the connection (nothing listens)",
                    _ => "refused: port unreachable (nothing listens)",
                }
                .to_string(),
            ),
            (Outcome::WrongReply { reply }, None) => (
                Status::Fail,
                true,
                format!("unexpected reply {:?}", reply.escape_debug().to_string()),
            ),
            (Outcome::Unreachable { icmp_type, code }, None) => (
                Status::Fail,
                true,
                format!("ICMP error type {icmp_type} code {code} in answer"),
            ),
            (Outcome::Errno { errno, .. }, None) if *errno == libc::ENETUNREACH => (
                Status::Fail,
                true,
                format!("no route: {}", errno_text(*errno)),
            ),
            (Outcome::Errno { errno, .. }, None) => (Status::Fail, true, errno_text(*errno)),
            (outcome @ (Outcome::Timeout | Outcome::MissingReplies { .. }), None) => {
                let missing = match outcome {
                    Outcome::MissingReplies { replies, sent } => {
                        format!("{replies} of {sent} replies")
                    }
                    _ => "no reply".to_string(),
                };
                let text = if unseen > 0 {
                    format!(
                        "{missing}, no drop seen ({unseen} records lost): raise --buffer-mb, \
                         or probe fewer namespaces at a time"
                    )
                } else {
                    format!(
                        "{missing}, and netfilter dropped none of its packets on this node: \
                         look beyond the node"
                    )
                };
                (Status::Fail, false, text)
            }
        };
        Self {
            kind: "probe",
            time: clock::rfc3339(SystemTime::now()),
            subject,
            status,
            proto: target.kind.name(),
            src: attempt.src.map(|s| match target.kind {
                Kind::Icmp => s.ip().to_string(),
                _ => s.to_string(),
            }),
            dst: target.endpoint(),
            connect_ms: (status == Status::Ok).then(|| ms(attempt.elapsed)),
            outcome: Some(attempt.outcome),
            drops,
            explained,
            explanation,
        }
    }
}

impl Event for ProbeResult {
    const COLUMNS: &'static [Column<Self>] = &[
        Column {
            name: "subject",
            default: true,
            value: |r| Some(r.subject.label()),
        },
        Column {
            name: "status",
            default: true,
            value: |r| Some(r.status.word().into()),
        },
        Column {
            name: "proto",
            default: true,
            value: |r| Some(r.proto.into()),
        },
        Column {
            name: "src",
            default: true,
            value: |r| r.src.clone(),
        },
        Column {
            name: "dst",
            default: true,
            value: |r| Some(r.dst.clone()),
        },
        Column {
            name: "connect_ms",
            default: true,
            value: |r| r.connect_ms.map(|ms| format!("{ms:.3}")),
        },
        Column {
            name: "drops",
            default: true,
            value: |r| Some(r.drops.len().to_string()),
        },
        Column {
            name: "explained",
            default: false,
            value: |r| Some(r.explained.to_string()),
        },
        Column {
            name: "explanation",
            default: true,
            value: |r| Some(r.explanation.clone()),
        },
    ];

    fn write_human(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{:<40}  {:<6}  {} -> {}  {}",
            self.subject.label(),
            self.status.word(),
            self.src.as_deref().unwrap_or("-"),
            self.dst,
            self.explanation
        )
    }
}

/// A line of each kind a scan writes (ok; failed with a drop; not probed), for other
/// modules' tests (the report reads them back).
#[cfg(test)]
pub fn samples() -> Vec<ProbeResult> {
    let target = Target::parse("10.0.0.9:80", None, None).unwrap();
    let subject = |netns| Subject {
        netns,
        pod: Some(Pod {
            namespace: Some("shop".into()),
            name: Some(format!("web-{netns}")),
            uid: format!("uid-{netns}"),
            qos: None,
        }),
        host_network_pods: Vec::new(),
    };
    let attempt = |outcome| Attempt {
        src: Some("10.0.3.7:40000".parse().unwrap()),
        echo_id: None,
        outcome,
        elapsed: Duration::from_millis(3),
        window: (1, 2),
    };
    let drop = SeenDrop {
        class: DropClass::Rule,
        netns: 2,
        pod: None,
        packet: "SYN".into(),
        hook: None,
        ct_count: None,
        ct_max: None,
    };
    vec![
        ProbeResult::new(subject(1), &target, Ok(attempt(Outcome::Ok)), vec![], 0),
        ProbeResult::new(
            subject(2),
            &target,
            Ok(attempt(Outcome::Timeout)),
            vec![drop],
            0,
        ),
        ProbeResult::new(
            subject(3),
            &target,
            Err("namespace 3 went away".into()),
            vec![],
            0,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::identity::Identities,
        kernel::btf::KernelBtf,
        tracers::{
            conntrack::{flow::Icmp, ConntrackOptions, ConntrackTracer},
            samples::{bytes, ipv6_rule_drop},
        },
    };

    #[test]
    fn a_drop_is_the_probes_by_its_flow_either_way() {
        let btf = KernelBtf::from_sys_fs().expect("the kernel's BTF");
        let mut tracer =
            ConntrackTracer::new(&btf, ConntrackOptions::default(), &Identities::new()).unwrap();
        // udp [fd00::1]:40000 -> [::1]:53.
        let drop = tracer.drop_of(&bytes(&ipv6_rule_drop())).unwrap();
        let at = drop.ktime_ns;
        let flow = |src: &str, dst: &str| Flow {
            proto: UDP,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            echo_id: None,
            window: (at - 1_000, at + 1_000),
            netns: None,
        };
        assert!(flow("[fd00::1]:40000", "[::1]:53").matches(&drop));
        assert!(flow("[::1]:53", "[fd00::1]:40000").matches(&drop));
        assert!(!flow("[fd00::1]:40001", "[::1]:53").matches(&drop));
        assert!(!flow("[fd00::2]:40000", "[::1]:53").matches(&drop));
        let tcp = Flow {
            proto: TCP,
            ..flow("[fd00::1]:40000", "[::1]:53")
        };
        assert!(!tcp.matches(&drop));
        // A UDP probe's socket alone has its end: a drop of it on its way to another
        // destination (NATed in the probe's own namespace) is its own. Not so for TCP, whose
        // connect may share its local port with other connections.
        assert!(flow("[fd00::1]:40000", "[fd00::53]:53").matches(&drop));
        let mut tcp_drop = drop.clone();
        for t in tcp_drop.flow.iter_mut() {
            t.proto = TCP;
        }
        let tcp_flow = |src: &str, dst: &str| Flow {
            proto: TCP,
            ..flow(src, dst)
        };
        assert!(tcp_flow("[fd00::1]:40000", "[::1]:53").matches(&tcp_drop));
        assert!(!tcp_flow("[fd00::1]:40000", "[fd00::53]:53").matches(&tcp_drop));
        // Another probe's packets of the same addresses: before, or well after, this one.
        let probe = flow("[fd00::1]:40000", "[::1]:53");
        let later = Flow {
            window: (at + 1, at + 2),
            ..probe
        };
        assert!(!later.matches(&drop), "a drop before the probe started");
        let earlier = Flow {
            window: (at - 2 * LATE_DROP_NS, at - LATE_DROP_NS - 1),
            ..probe
        };
        assert!(!earlier.matches(&drop), "a drop long after the probe ended");
        let just_ended = Flow {
            window: (at - 2_000, at - 1_000),
            ..probe
        };
        assert!(
            just_ended.matches(&drop),
            "a packet in flight when it ended"
        );
        // Seen after DNAT: the entry's reply tuple, backend -> probe, is the probe's flow.
        let backend = tcp_flow("[fd00::1]:40000", "[fd00::9]:5353");
        assert!(!backend.matches(&tcp_drop));
        let mut natted = tcp_drop.clone();
        natted.reply = Some(Tuple {
            proto: TCP,
            src: ("fd00::9".parse().unwrap(), Some(5353)),
            dst: ("fd00::1".parse().unwrap(), Some(40000)),
        });
        assert!(backend.matches(&natted));
        // Loopback: the same addresses in every namespace; only the probed one's drops.
        let here = Flow {
            netns: Some(u64::from(drop.netns)),
            ..probe
        };
        assert!(here.matches(&drop));
        let elsewhere = Flow {
            netns: Some(u64::from(drop.netns) + 1),
            ..probe
        };
        assert!(!elsewhere.matches(&drop));
        // An echo reply dropped: its entry's original tuple is the echo request's.
        let mut reply = drop.clone();
        reply.icmp = Some(Icmp::new(ICMPV6, 128, 0, Some(7)));
        reply.packet_icmp = Some(Icmp::new(ICMPV6, 129, 0, Some(7)));
        assert_eq!(SeenDrop::of(&reply).packet, "echo-reply");
        reply.packet_icmp = None;
        assert_eq!(SeenDrop::of(&reply).packet, "echo-request");
        let seen = SeenDrop::of(&drop);
        assert_eq!(
            seen.text(),
            "udp packet dropped by rule in netns 4026532999"
        );
        let race = SeenDrop {
            class: DropClass::InsertFailed,
            ..seen.clone()
        };
        assert_eq!(
            race.text(),
            "udp packet dropped: conntrack insert race lost in netns 4026532999"
        );
        let full = SeenDrop {
            class: DropClass::TableFull,
            ct_count: Some(64),
            ct_max: Some(64),
            ..seen
        };
        assert_eq!(
            full.text(),
            "udp packet dropped: conntrack table full in netns 4026532999, 64/64 entries"
        );
    }

    #[test]
    fn a_timeout_without_drops_is_unexplained_and_a_drop_explains() {
        let target = Target::parse("10.0.0.9:80", None, None).unwrap();
        let attempt = Attempt {
            src: Some("10.0.3.7:40000".parse().unwrap()),
            echo_id: None,
            outcome: Outcome::Timeout,
            elapsed: Duration::from_secs(4),
            window: (1, 2),
        };
        let subject = Subject {
            netns: 4026532402,
            pod: None,
            host_network_pods: Vec::new(),
        };
        let lost = ProbeResult::new(subject.clone(), &target, Ok(attempt.clone()), vec![], 0);
        assert_eq!((lost.status, lost.explained), (Status::Fail, false));
        assert!(lost
            .explanation
            .starts_with("no reply, and netfilter dropped none of its packets"));
        let unseen = ProbeResult::new(subject.clone(), &target, Ok(attempt.clone()), vec![], 3);
        assert_eq!((unseen.status, unseen.explained), (Status::Fail, false));
        assert!(
            unseen
                .explanation
                .starts_with("no reply, no drop seen (3 records lost)"),
            "{}",
            unseen.explanation
        );
        let drop = SeenDrop {
            class: DropClass::Rule,
            netns: 4026532402,
            pod: None,
            packet: "SYN".into(),
            hook: Some("output"),
            ct_count: None,
            ct_max: None,
        };
        let dropped = ProbeResult::new(subject, &target, Ok(attempt), vec![drop.clone(), drop], 0);
        assert!(dropped.explained);
        assert_eq!(
            dropped.explanation,
            "SYN dropped by rule at hook output in netns 4026532402 (2 drops)"
        );
    }
}
