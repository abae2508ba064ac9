//! A dropped packet's flow: from its conntrack entry's tuples, or from the headers the kernel
//! program copied out of the packet (IPv4, or IPv6 with its extension headers walked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use tracer_common::conntrack::{
    PacketHeaders, PACKET_CHAIN_TOO_LONG, PACKET_FRAGMENT, PACKET_LATER_FRAGMENT, PACKET_READ,
};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;
const DCCP: u8 = 33;
const UDPLITE: u8 = 136;

/// Protocols whose first four transport bytes are the source and destination ports.
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, TCP | UDP | SCTP | DCCP | UDPLITE)
}

pub fn is_icmp(proto: u8) -> bool {
    matches!(proto, ICMP | ICMPV6)
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        ICMP => "icmp".into(),
        TCP => "tcp".into(),
        UDP => "udp".into(),
        DCCP => "dccp".into(),
        ICMPV6 => "icmpv6".into(),
        SCTP => "sctp".into(),
        UDPLITE => "udplite".into(),
        // Where a walk of IPv6 extension headers ended (IANA's keywords).
        0 => "ipv6-hopopts".into(),
        43 => "ipv6-route".into(),
        44 => "ipv6-frag".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        59 => "ipv6-nonxt".into(),
        60 => "ipv6-opts".into(),
        p => format!("proto {p}"),
    }
}

/// An ICMP or ICMPv6 message's type and code, and the echo identifier of an echo request or
/// reply (the field conntrack tracks an ICMP flow by).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub kind: u8,
    pub code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'static str>,
}

impl Icmp {
    pub fn new(proto: u8, kind: u8, code: u8, id: Option<u16>) -> Self {
        let name = match (proto, kind) {
            (ICMP, 0) | (ICMPV6, 129) => Some("echo-reply"),
            (ICMP, 8) | (ICMPV6, 128) => Some("echo-request"),
            (ICMP, 3) | (ICMPV6, 1) => Some("destination-unreachable"),
            (ICMP, 11) | (ICMPV6, 3) => Some("time-exceeded"),
            (ICMP, 5) | (ICMPV6, 137) => Some("redirect"),
            (ICMPV6, 2) => Some("packet-too-big"),
            (ICMPV6, 4) => Some("parameter-problem"),
            (ICMPV6, 133) => Some("router-solicitation"),
            (ICMPV6, 134) => Some("router-advertisement"),
            (ICMPV6, 135) => Some("neighbor-solicitation"),
            (ICMPV6, 136) => Some("neighbor-advertisement"),
            _ => None,
        };
        let echo = matches!(name, Some("echo-reply" | "echo-request"));
        Self {
            kind,
            code,
            id: id.filter(|_| echo),
            name,
        }
    }
}

/// The TCP flags byte as names, `SYN` or `SYN,ACK`.
pub fn tcp_flags(byte: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let names: Vec<&str> = (0..8)
        .filter(|bit| byte & (1 << bit) != 0)
        .map(|bit| NAMES[bit])
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// One direction of a flow: the protocol, the addresses, and the ports for protocols that
/// have them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub proto: u8,
    pub src: (IpAddr, Option<u16>),
    pub dst: (IpAddr, Option<u16>),
}

/// `addr:port` (`[addr]:port` for IPv6), or the bare address without a port.
pub fn endpoint((addr, port): (IpAddr, Option<u16>)) -> String {
    match (addr, port) {
        (IpAddr::V4(a), Some(port)) => format!("{a}:{port}"),
        (IpAddr::V6(a), Some(port)) => format!("[{a}]:{port}"),
        (addr, None) => addr.to_string(),
    }
}

/// Why the packet's headers did not give everything its protocol has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncated {
    /// The packet ended first (a short or malformed packet).
    PacketEnd,
    /// More IPv6 extension headers than the kernel program walks.
    ExtensionHeaders,
}

impl Truncated {
    pub fn text(self) -> &'static str {
        match self {
            Truncated::PacketEnd => "the packet ends inside its headers",
            Truncated::ExtensionHeaders => "more IPv6 extension headers than are walked",
        }
    }
}

/// An address prefix (`10.0.0.0/8`, `fd00::/64`) for `--net`, or one address for `--host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Parses `ADDR/LEN`; a bare address is the prefix of that one address.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| anyhow::anyhow!("`{text}` is not an IPv4 or IPv6 address or prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| anyhow::anyhow!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, len })
    }

    /// Whether `addr` is inside; an IPv4 address is never inside an IPv6 prefix, nor back.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let mask = |bits: u32, len: u8| {
            if len == 0 {
                0
            } else {
                u128::MAX << (bits - len as u32)
            }
        };
        match (self.addr, addr) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let m = mask(32, self.len) as u32;
                u32::from(p) & m == u32::from(a) & m
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let m = mask(128, self.len);
                u128::from(p) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

/// What the packet's own headers say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Protocol and addresses (and ports where the transport header had them).
    pub tuple: Option<Tuple>,
    pub icmp: Option<Icmp>,
    /// The TCP flags byte.
    pub tcp_flags: Option<u8>,
    pub fragment: bool,
    pub truncated: Option<Truncated>,
}

impl Packet {
    pub fn decode(p: &PacketHeaders) -> Self {
        let mut packet = Packet::default();
        if p.flags & PACKET_READ == 0 {
            return packet;
        }
        let len = p.len as usize;
        // Bytes of the packet, if the packet has them.
        let ip_range = |from: usize, to: usize| -> Option<&[u8]> {
            (to <= len).then_some(())?;
            p.ip.get(from..to)
        };
        let addrs = match p.ip[0] >> 4 {
            4 => ip_range(12, 20).map(|b| {
                let a = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]).into();
                (a(0), a(4))
            }),
            6 => ip_range(8, 40).map(|b| {
                let a = |i: usize| {
                    IpAddr::from(Ipv6Addr::from(<[u8; 16]>::try_from(&b[i..i + 16]).unwrap()))
                };
                (a(0), a(16))
            }),
            // Not IP (a bridge's frame, say): nothing to tell.
            _ => return packet,
        };
        packet.fragment = p.flags & PACKET_FRAGMENT != 0;
        let Some((src, dst)) = addrs else {
            packet.truncated = Some(Truncated::PacketEnd);
            return packet;
        };
        let proto = p.l4_proto;
        let mut tuple = Tuple {
            proto,
            src: (src, None),
            dst: (dst, None),
        };
        let l4_len = if p.l4_offset == 0 {
            0
        } else {
            len.saturating_sub(p.l4_offset as usize)
        };
        // A transport byte, if the packet has it.
        let l4 = |at: usize| p.l4.get(at).copied().filter(|_| at < l4_len);
        let be16 = |at: usize| Some(u16::from_be_bytes([l4(at)?, l4(at + 1)?]));
        let needed = if has_ports(proto) {
            tuple.src.1 = be16(0);
            tuple.dst.1 = be16(2);
            if proto == TCP {
                packet.tcp_flags = l4(13);
                14
            } else {
                4
            }
        } else if is_icmp(proto) {
            if let (Some(kind), Some(code)) = (l4(0), l4(1)) {
                packet.icmp = Some(Icmp::new(proto, kind, code, be16(4)));
            }
            8
        } else {
            0
        };
        packet.truncated = if p.flags & PACKET_CHAIN_TOO_LONG != 0 {
            Some(Truncated::ExtensionHeaders)
        } else if p.flags & PACKET_LATER_FRAGMENT == 0 && l4_len < needed {
            Some(Truncated::PacketEnd)
        } else {
            None
        };
        packet.tuple = Some(tuple);
        packet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::conntrack::{PACKET_IP_BYTES, PACKET_L4_BYTES};

    /// What the kernel program would copy from `bytes` (a packet from its network header),
    /// with the transport header at `l4_offset` (0: not reached) and the walk's `flags`.
    fn headers(bytes: &[u8], l4_offset: u16, l4_proto: u8, flags: u8) -> PacketHeaders {
        let mut h = PacketHeaders {
            ip: [0; PACKET_IP_BYTES],
            l4: [0; PACKET_L4_BYTES],
            len: bytes.len() as u32,
            l4_offset,
            l4_proto,
            flags: PACKET_READ | flags,
        };
        let n = bytes.len().min(PACKET_IP_BYTES);
        h.ip[..n].copy_from_slice(&bytes[..n]);
        if l4_offset != 0 {
            let l4 = &bytes[l4_offset as usize..];
            let n = l4.len().min(PACKET_L4_BYTES);
            h.l4[..n].copy_from_slice(&l4[..n]);
        }
        h
    }

    fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0, 0, payload.len() as u8, next, 64];
        b.extend(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
        b.extend(Ipv6Addr::LOCALHOST.octets());
        b.extend(payload);
        b
    }

    #[test]
    fn prefixes() {
        let net = Prefix::parse("fd00::/64").unwrap();
        assert!(net.contains("fd00::1".parse().unwrap()));
        assert!(!net.contains("fd01::1".parse().unwrap()));
        assert!(!net.contains("10.0.0.1".parse().unwrap()));
        let v4 = Prefix::parse("10.96.0.0/12").unwrap();
        assert!(v4.contains("10.100.1.2".parse().unwrap()));
        assert!(!v4.contains("10.112.0.1".parse().unwrap()));
        assert!(Prefix::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        let host = Prefix::parse("[::1]").unwrap();
        assert!(host.contains(Ipv6Addr::LOCALHOST.into()));
        assert!(!host.contains("::2".parse().unwrap()));
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("fd00::/129").is_err());
        assert!(Prefix::parse("web-1").is_err());
    }

    #[test]
    fn ipv6_udp_after_extension_headers() {
        // Hop-by-hop (8 bytes), then UDP 40000 -> 9999.
        let mut payload = vec![UDP, 0, 1, 4, 0, 0, 0, 0];
        payload.extend([0x9c, 0x40, 0x27, 0x0f, 0, 8, 0, 0]);
        let bytes = ipv6(0, &payload);
        let p = Packet::decode(&headers(&bytes, 48, UDP, 0));
        let t = p.tuple.unwrap();
        assert_eq!(endpoint(t.src), "[fd00::1]:40000");
        assert_eq!(endpoint(t.dst), "[::1]:9999");
        assert_eq!(p.truncated, None);
        assert!(!p.fragment);
    }

    #[test]
    fn icmp_echo_and_tcp_flags() {
        let echo = ipv6(ICMPV6, &[128, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let p = Packet::decode(&headers(&echo, 40, ICMPV6, 0));
        assert_eq!(p.icmp, Some(Icmp::new(ICMPV6, 128, 0, Some(0x1234))));
        assert_eq!(p.icmp.unwrap().name, Some("echo-request"));
        assert_eq!(endpoint(p.tuple.unwrap().dst), "::1");

        // ICMP has an id only in echo messages.
        assert_eq!(Icmp::new(ICMP, 3, 1, Some(7)).id, None);

        let mut syn = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, TCP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        syn.extend([
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ]);
        let p = Packet::decode(&headers(&syn, 20, TCP, 0));
        assert_eq!(p.tcp_flags.map(tcp_flags), Some("SYN".to_string()));
        assert_eq!(endpoint(p.tuple.unwrap().dst), "10.0.0.2:80");
        assert_eq!(tcp_flags(0x14), "RST,ACK");
    }

    #[test]
    fn short_and_malformed_packets_give_what_they_have() {
        // UDP header cut after the source port.
        let short = ipv6(UDP, &[0x9c, 0x40]);
        let p = Packet::decode(&headers(&short, 40, UDP, 0));
        let t = p.tuple.unwrap();
        assert_eq!(t.src.1, Some(40000));
        assert_eq!(t.dst.1, None);
        assert_eq!(endpoint(t.dst), "::1");
        assert_eq!(p.truncated, Some(Truncated::PacketEnd));

        // A chain longer than the walk: addresses, no transport.
        let long = ipv6(60, &[60, 0, 0, 0, 0, 0, 0, 0]);
        let p = Packet::decode(&headers(&long, 0, 60, PACKET_CHAIN_TOO_LONG));
        assert_eq!(p.truncated, Some(Truncated::ExtensionHeaders));
        assert_eq!(endpoint(p.tuple.unwrap().src), "fd00::1");

        // A later fragment has no transport header, and that is not a truncation.
        let frag = ipv6(44, &[UDP, 0, 0, 8, 0, 0, 0, 1]);
        let p = Packet::decode(&headers(
            &frag,
            0,
            UDP,
            PACKET_FRAGMENT | PACKET_LATER_FRAGMENT,
        ));
        assert!(p.fragment);
        assert_eq!(p.truncated, None);
        assert_eq!(p.tuple.unwrap().proto, UDP);

        // Not IP at all: nothing to tell, and nothing called truncated.
        let p = Packet::decode(&headers(&[0x10; 30], 0, 0, 0));
        assert_eq!(p, Packet::default());

        // Shorter than an IPv6 header: nothing but the fact.
        let p = Packet::decode(&headers(&short[..20], 0, 0, 0));
        assert_eq!(p.tuple, None);
        assert_eq!(p.truncated, Some(Truncated::PacketEnd));
    }
}
