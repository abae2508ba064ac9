//! Ring-buffer records of the `conntrack-drops` tracer to typed events.

use std::{
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tracer_common::conntrack::NetfilterDropEvent;

use super::flow::{
    endpoint, has_ports, is_icmp, proto_name, tcp_flags, Icmp, Packet, Truncated, Tuple, TCP,
};
use crate::{
    clock::{self, Clock},
    enrich::identity::Pod,
    kernel::btf::KernelBtf,
    output::{pod_column, Column, Count, Event, Family},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Why netfilter dropped the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropClass {
    /// Lost the conntrack insert race and the clash could not be resolved (`insert_failed`).
    InsertFailed,
    /// No conntrack entry could be allocated: the table reached `nf_conntrack_max`.
    TableFull,
    /// Another conntrack drop (`drop` rose without `insert_failed`, table not full).
    ConntrackOther,
    /// A firewall rule dropped it; conntrack counted nothing.
    Rule,
    /// Conntrack's counters before the drop are not known (its namespace's last figures were
    /// evicted from the bounded cache, or the kernel's could not be read): either kind.
    Unknown,
}

impl DropClass {
    pub fn name(self) -> &'static str {
        match self {
            DropClass::InsertFailed => "insert_failed",
            DropClass::TableFull => "table_full",
            DropClass::ConntrackOther => "conntrack_other",
            DropClass::Rule => "rule",
            DropClass::Unknown => "unknown",
        }
    }
}

/// Where the fields of `struct nf_conntrack_tuple` are on this kernel.
#[derive(Clone, Copy, Debug)]
pub struct TupleLayout {
    src_u3: usize,
    src_port: usize,
    l3num: usize,
    dst_u3: usize,
    dst_port: usize,
    protonum: usize,
    size: usize,
    /// Where the reply tuple starts, from the original's: `sizeof(struct
    /// nf_conntrack_tuple_hash)`, the stride of `nf_conn.tuplehash[]`.
    reply: usize,
}

impl TupleLayout {
    pub fn resolve(btf: &KernelBtf) -> Result<Self> {
        let field = |f: &str| -> Result<usize> {
            btf.field_offset("nf_conntrack_tuple", f)
                .map(|o| o as usize)
                .with_context(|| format!("resolving `nf_conntrack_tuple.{f}`"))
        };
        Ok(Self {
            src_u3: field("src.u3")?,
            src_port: field("src.u.all")?,
            l3num: field("src.l3num")?,
            dst_u3: field("dst.u3")?,
            dst_port: field("dst.u.all")?,
            protonum: field("dst.protonum")?,
            size: btf.struct_size("nf_conntrack_tuple")? as usize,
            reply: btf.struct_size("nf_conntrack_tuple_hash")? as usize,
        })
    }

    /// The bytes from the original tuple's start to the reply tuple's end.
    pub fn span(&self) -> usize {
        self.reply + self.size
    }

    /// One direction of the entry, and for ICMP its type, code and echo id (conntrack keeps
    /// the id where other protocols have the source port, type and code at the destination's).
    fn decode(&self, raw: &[u8]) -> Option<(Tuple, Option<Icmp>)> {
        let u16_ne = |o: usize| raw.get(o..o + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let be16 = |o: usize| raw.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let addr = |o: usize, family: u16| -> Option<IpAddr> {
            let b = raw.get(o..o + 16)?;
            match family {
                AF_INET => Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()),
                AF_INET6 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).into()),
                _ => None,
            }
        };
        let family = u16_ne(self.l3num)?;
        let proto = *raw.get(self.protonum)?;
        let ports = has_ports(proto);
        let port = |o: usize| be16(o).filter(|_| ports);
        let icmp = if is_icmp(proto) {
            let (kind, code) = (*raw.get(self.dst_port)?, *raw.get(self.dst_port + 1)?);
            Some(Icmp::new(proto, kind, code, be16(self.src_port)))
        } else {
            None
        };
        let tuple = Tuple {
            proto,
            src: (addr(self.src_u3, family)?, port(self.src_port)),
            dst: (addr(self.dst_u3, family)?, port(self.dst_port)),
        };
        Some((tuple, icmp))
    }
}

/// One dropped packet.
#[derive(Clone, Debug, Serialize)]
pub struct ConntrackDrop {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub class: DropClass,
    /// Inode of the network namespace the packet was dropped in.
    pub netns: u32,
    /// The namespace's never-reused cookie.
    pub netns_cookie: u64,
    /// The pod whose sandbox owns the namespace; null for the host's and other namespaces.
    pub pod: Option<Pod>,
    pub proto: Option<String>,
    /// Original direction, before NAT: `ip:port`, `[ipv6]:port`, or the bare address for
    /// protocols without ports (ICMP) and packets whose ports could not be read.
    pub src: Option<String>,
    pub dst: Option<String>,
    /// Where destination NAT was sending it (the backend behind a Service VIP).
    pub nat_dst: Option<String>,
    /// The source address after source NAT, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_src: Option<String>,
    /// ICMP and ICMPv6: type, code and echo id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    /// TCP: the dropped segment's flags (`SYN`, `RST,ACK`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// The packet is a fragment (a later one has no ports).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    /// The packet's headers ended, or its IPv6 extension headers went on, before everything
    /// above could be read: what could be read is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
    pub cpu: u32,
    /// The netfilter hook that dropped it (`prerouting`, `input`, `forward`, `output`,
    /// `postrouting`), from the function on its kernel stack that ran the hook; absent when
    /// that function is not one the tracer knows (filled in by the tracer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<&'static str>,
    /// For `table_full`: conntrack entries in the namespace and the limit (filled in by the
    /// tracer, which reads them from the namespace's sysctls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_max: Option<u64>,
    /// The original tuple, for filters.
    #[serde(skip)]
    pub flow: Option<Tuple>,
    /// Where NAT sent it, for filters.
    #[serde(skip)]
    pub nat: Vec<(IpAddr, Option<u16>)>,
    /// The entry's reply tuple (after NAT), for filters.
    #[serde(skip)]
    pub reply: Option<Tuple>,
    /// When the kernel dropped it (CLOCK_MONOTONIC), to tell which probe's it can be.
    #[serde(skip)]
    pub ktime_ns: u64,
    /// ICMP type and code of the dropped packet itself (`icmp` is the entry's original
    /// direction: an echo reply's entry says echo request).
    #[serde(skip)]
    pub packet_icmp: Option<Icmp>,
}

impl ConntrackDrop {
    pub fn decode(
        ev: &NetfilterDropEvent,
        class: DropClass,
        layout: &TupleLayout,
        clock: &Clock,
    ) -> Self {
        let packet = Packet::decode(&ev.packet);
        let entry = (ev.has_ct != 0)
            .then(|| layout.decode(&ev.tuples))
            .flatten();
        let reply = entry
            .and(ev.tuples.get(layout.reply..))
            .and_then(|raw| layout.decode(raw))
            .map(|(t, _)| t);
        let (orig, icmp) = match entry {
            Some((tuple, icmp)) => (Some(tuple), icmp),
            None => (packet.tuple, packet.icmp),
        };
        // The reply comes from the real destination and goes to the real source: where they
        // differ from the original direction, NAT rewrote them (or will, once confirmed).
        let nat_dst = match (orig, reply) {
            (Some(o), Some(r)) if r.src != o.dst => Some(r.src),
            _ => None,
        };
        let nat_src = match (orig, reply) {
            (Some(o), Some(r)) if r.dst != o.src => Some(r.dst),
            _ => None,
        };
        // The flags are the packet's own: an entry keeps none.
        let is_tcp = |t: Option<Tuple>| t.is_some_and(|t| t.proto == TCP);
        let tcp_flags = packet
            .tcp_flags
            .filter(|_| is_tcp(orig) && is_tcp(packet.tuple))
            .map(tcp_flags);
        Self {
            kind: "conntrack_drop",
            time: clock::rfc3339(clock.wall(ev.header.ktime_ns)),
            class,
            netns: ev.netns_inum,
            netns_cookie: ev.net_cookie,
            pod: None,
            proto: orig.map(|t| proto_name(t.proto)),
            src: orig.map(|t| endpoint(t.src)),
            dst: orig.map(|t| endpoint(t.dst)),
            nat_dst: nat_dst.map(endpoint),
            nat_src: nat_src.map(endpoint),
            icmp,
            tcp_flags,
            fragment: packet.fragment,
            // An entry has the whole flow, whatever the packet's headers lacked.
            truncated: packet.truncated.filter(|_| entry.is_none()),
            cpu: ev.header.cpu,
            hook: None,
            ct_count: None,
            ct_max: None,
            flow: orig,
            nat: nat_dst.into_iter().chain(nat_src).collect(),
            ktime_ns: ev.header.ktime_ns,
            packet_icmp: packet.icmp,
            reply,
        }
    }

    /// `ipv4`, `ipv6`, or empty when the packet's flow is unknown.
    pub fn family(&self) -> &'static str {
        match self.flow.map(|t| t.src.0) {
            Some(IpAddr::V4(_)) => "ipv4",
            Some(IpAddr::V6(_)) => "ipv6",
            None => "",
        }
    }

    /// Addresses and ports of both ends, before and after NAT.
    pub fn endpoints(&self) -> impl Iterator<Item = (IpAddr, Option<u16>)> + '_ {
        self.flow
            .iter()
            .flat_map(|t| [t.src, t.dst])
            .chain(self.nat.iter().copied())
    }
}

/// `tracer serve`'s count of netfilter drops, by the namespace's pod.
static DROPS_TOTAL: Family = Family {
    name: "tracer_conntrack_drops_total",
    help: "Packets netfilter dropped, by class (insert_failed, table_full, conntrack_other, \
           rule), IP family (ipv4, ipv6; empty when the packet's header was unreadable) and \
           network namespace (inode), for the namespace's pod.",
    labels: &["class", "family", "netns"],
};

impl Event for ConntrackDrop {
    const COLUMNS: &'static [Column<Self>] = &[
        Column {
            name: "time",
            default: true,
            value: |e| Some(e.time.clone()),
        },
        Column {
            name: "class",
            default: true,
            value: |e| Some(e.class.name().into()),
        },
        Column {
            name: "netns",
            default: true,
            value: |e| Some(e.netns.to_string()),
        },
        Column {
            name: "pod",
            default: true,
            value: |e| pod_column(e.pod.as_ref()),
        },
        Column {
            name: "proto",
            default: true,
            value: |e| e.proto.clone(),
        },
        Column {
            name: "src",
            default: true,
            value: |e| e.src.clone(),
        },
        Column {
            name: "dst",
            default: true,
            value: |e| e.dst.clone(),
        },
        Column {
            name: "nat_dst",
            default: true,
            value: |e| e.nat_dst.clone(),
        },
        Column {
            name: "nat_src",
            default: true,
            value: |e| e.nat_src.clone(),
        },
        Column {
            name: "tcp_flags",
            default: true,
            value: |e| e.tcp_flags.clone(),
        },
        // `TYPE/CODE`, and `/ID` for echoes.
        Column {
            name: "icmp",
            default: true,
            value: |e| {
                e.icmp.as_ref().map(|i| match i.id {
                    Some(id) => format!("{}/{}/{id}", i.kind, i.code),
                    None => format!("{}/{}", i.kind, i.code),
                })
            },
        },
        // `COUNT/MAX` of the namespace's conntrack table, for table_full.
        Column {
            name: "table",
            default: true,
            value: |e| e.ct_count.zip(e.ct_max).map(|(c, m)| format!("{c}/{m}")),
        },
        Column {
            name: "family",
            default: false,
            value: |e| Some(e.family().into()),
        },
        Column {
            name: "netns_cookie",
            default: false,
            value: |e| Some(e.netns_cookie.to_string()),
        },
        Column {
            name: "fragment",
            default: false,
            value: |e| Some(e.fragment.to_string()),
        },
        Column {
            name: "cpu",
            default: false,
            value: |e| Some(e.cpu.to_string()),
        },
        Column {
            name: "hook",
            default: false,
            value: |e| e.hook.map(str::to_string),
        },
    ];

    fn count(&self) -> Option<Count<'_>> {
        Some(Count {
            family: &DROPS_TOTAL,
            labels: vec![
                self.class.name().into(),
                self.family().into(),
                self.netns.to_string(),
            ],
            pod: self.pod.as_ref(),
            netns: Some(self.netns.into()),
        })
    }

    fn write_human(&self, w: &mut dyn Write) -> io::Result<()> {
        let dash = "-".to_string();
        write!(
            w,
            "{}  {:<15} {:<10} {:<5} {} -> {}",
            clock::time_of_day(&self.time),
            self.class.name(),
            self.netns,
            self.proto.as_deref().unwrap_or("?"),
            self.src.as_ref().unwrap_or(&dash),
            self.dst.as_ref().unwrap_or(&dash),
        )?;
        if let Some(nat_dst) = &self.nat_dst {
            write!(w, " (dnat {nat_dst})")?;
        }
        if let Some(nat_src) = &self.nat_src {
            write!(w, " (snat {nat_src})")?;
        }
        if let Some(icmp) = &self.icmp {
            write!(w, "  {}", icmp.name.unwrap_or("type"))?;
            write!(w, " {}/{}", icmp.kind, icmp.code)?;
            if let Some(id) = icmp.id {
                write!(w, " id {id}")?;
            }
        }
        if let Some(flags) = &self.tcp_flags {
            write!(w, "  [{flags}]")?;
        }
        if self.fragment {
            write!(w, "  fragment")?;
        }
        if let Some(hook) = self.hook {
            write!(w, "  at {hook}")?;
        }
        if let Some(truncated) = self.truncated {
            write!(w, "  (truncated: {})", truncated.text())?;
        }
        if let (Some(count), Some(max)) = (self.ct_count, self.ct_max) {
            write!(w, "  table {count}/{max}")?;
        }
        write!(w, "  cpu {}", self.cpu)?;
        match &self.pod {
            Some(pod) => writeln!(w, "  {}", pod.label()),
            None => writeln!(w),
        }
    }
}
