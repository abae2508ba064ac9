//! Ring-buffer records of the `conntrack-drops` tracer to typed events.

use std::{
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tracer_common::conntrack::NetfilterDropEvent;

use crate::{
    clock::{self, Clock},
    enrich::identity::Pod,
    kernel::btf::KernelBtf,
    output::{Count, Event, Family},
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
}

impl DropClass {
    pub fn name(self) -> &'static str {
        match self {
            DropClass::InsertFailed => "insert_failed",
            DropClass::TableFull => "table_full",
            DropClass::ConntrackOther => "conntrack_other",
            DropClass::Rule => "rule",
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
    pub size: u32,
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
            size: btf.struct_size("nf_conntrack_tuple")?,
        })
    }

    fn decode(&self, raw: &[u8]) -> Option<Tuple> {
        let u16_ne = |o: usize| raw.get(o..o + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let port = |o: usize| raw.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let addr = |o: usize, family: u16| -> Option<IpAddr> {
            let b = raw.get(o..o + 16)?;
            match family {
                AF_INET => Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()),
                AF_INET6 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).into()),
                _ => None,
            }
        };
        let family = u16_ne(self.l3num)?;
        Some(Tuple {
            proto: *raw.get(self.protonum)?,
            src: (addr(self.src_u3, family)?, port(self.src_port)?),
            dst: (addr(self.dst_u3, family)?, port(self.dst_port)?),
        })
    }
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tuple {
    proto: u8,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
}

/// The packet's IPv4 header and ports, for drops without a conntrack entry.
fn packet_tuple(ev: &NetfilterDropEvent) -> Option<Tuple> {
    let ip = &ev.packet_ip;
    if ev.packet_valid == 0 || ip[0] >> 4 != 4 {
        return None;
    }
    let proto = ip[9];
    let ports = matches!(proto, 6 | 17 | 132);
    let port = |i: usize| {
        if ports {
            u16::from_be_bytes([ev.packet_l4[i], ev.packet_l4[i + 1]])
        } else {
            0
        }
    };
    Some(Tuple {
        proto,
        src: (
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]).into(),
            port(0),
        ),
        dst: (
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]).into(),
            port(2),
        ),
    })
}

fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        p => format!("proto {p}"),
    }
}

fn endpoint((addr, port): (IpAddr, u16)) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
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
    /// Original direction, before NAT: `ip:port`.
    pub src: Option<String>,
    pub dst: Option<String>,
    /// Where destination NAT was sending it (the backend behind a Service VIP).
    pub nat_dst: Option<String>,
    /// The source address after source NAT, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_src: Option<String>,
    pub cpu: u32,
    /// For `table_full`: conntrack entries in the namespace and the limit (filled in by the
    /// tracer, which reads them from the namespace's sysctls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_max: Option<u64>,
    #[serde(skip)]
    pub proto_number: Option<u8>,
    #[serde(skip)]
    pub ports: Vec<u16>,
}

impl ConntrackDrop {
    pub fn decode(
        ev: &NetfilterDropEvent,
        class: DropClass,
        layout: &TupleLayout,
        clock: &Clock,
    ) -> Self {
        let (orig, reply) = if ev.has_ct != 0 {
            (layout.decode(&ev.orig), layout.decode(&ev.reply))
        } else {
            (packet_tuple(ev), None)
        };
        // The reply comes from the real destination and goes to the real source: where they
        // differ from the original direction, NAT rewrote them (or will, once confirmed).
        let nat_dst = match (orig, reply) {
            (Some(o), Some(r)) if r.src != o.dst => Some(endpoint(r.src)),
            _ => None,
        };
        let nat_src = match (orig, reply) {
            (Some(o), Some(r)) if r.dst != o.src => Some(endpoint(r.dst)),
            _ => None,
        };
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
            nat_dst,
            nat_src,
            cpu: ev.header.cpu,
            ct_count: None,
            ct_max: None,
            proto_number: orig.map(|t| t.proto),
            ports: orig.map(|t| vec![t.src.1, t.dst.1]).unwrap_or_default(),
        }
    }
}

/// `tracer serve`'s count of netfilter drops, by the namespace's pod.
static DROPS_TOTAL: Family = Family {
    name: "tracer_conntrack_drops_total",
    help: "Packets netfilter dropped, by class (insert_failed, table_full, conntrack_other, \
           rule) and network namespace (inode), for the namespace's pod.",
    labels: &["class", "netns"],
};

impl Event for ConntrackDrop {
    fn count(&self) -> Option<Count<'_>> {
        Some(Count {
            family: &DROPS_TOTAL,
            labels: vec![self.class.name().into(), self.netns.to_string()],
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
