//! Records of the `conntrack-drops` tracer.
//!
//! The kernel side copies raw kernel structs (tuples, statistics) and userspace decodes them
//! with offsets from BTF: that keeps the program small and every layout out of the code.

use crate::EventHeader;

/// Bytes kept of `nf_conn.tuplehash` from the original direction's tuple through the reply
/// direction's (96 on current kernels: a 40-byte tuple, then the reply's whole
/// `struct nf_conntrack_tuple_hash` of 56).
pub const TUPLES_BYTES: usize = 112;
/// Bytes kept of a `struct ip_conntrack_stat` (52 on current kernels).
pub const STAT_BYTES: usize = 64;
/// The statistics counters userspace reads (see `ConntrackConfig::stat_counters`).
pub const STAT_COUNTERS: usize = 4;

/// One packet freed with reason `SKB_DROP_REASON_NETFILTER_DROP`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetfilterDropEvent {
    pub header: EventHeader,
    /// Inode number of the packet's network namespace (`net->ns.inum`).
    pub netns_inum: u32,
    pub _pad0: u32,
    /// `net->net_cookie`: never reused, unlike the inode number.
    pub net_cookie: u64,
    /// `nf_conn->status` bits; 0 without a conntrack entry.
    pub ct_status: u64,
    /// Non-zero when the packet carried a conntrack entry (`skb->_nfct`).
    pub has_ct: u8,
    /// `enum ip_conntrack_info` (`skb->_nfct & 7`).
    pub ctinfo: u8,
    /// Non-zero when `stats` holds this CPU's conntrack statistics of the namespace.
    pub stats_valid: u8,
    pub _pad1: u8,
    pub _pad: u32,
    /// This CPU's `struct ip_conntrack_stat` of the namespace, raw.
    pub stats: [u8; STAT_BYTES],
    /// `tuplehash[IP_CT_DIR_ORIGINAL].tuple` through `tuplehash[IP_CT_DIR_REPLY].tuple`, raw,
    /// in one copy: the original tuple at 0, the reply's a `struct nf_conntrack_tuple_hash`
    /// later.
    pub tuples: [u8; TUPLES_BYTES],
    /// The packet's own headers: its flow when it has no conntrack entry, and what an entry
    /// does not keep (TCP flags, fragments).
    pub packet: PacketHeaders,
    /// Kernel return addresses of the dropping call chain, innermost first (`bpf_get_stack`);
    /// 0 past its end. The function that called `nf_hook_slow` names the netfilter hook.
    pub stack: [u64; STACK_FRAMES],
}

/// Frames kept of a drop's kernel stack: the tracepoint's own frames, the freeing function,
/// `nf_hook_slow` and its caller, with room to spare.
pub const STACK_FRAMES: usize = 12;

/// Bytes kept of the network header: the IPv4 header without options, or IPv6's fixed header.
pub const PACKET_IP_BYTES: usize = 40;
/// Bytes kept of the transport header: ports, ICMP type/code/echo id, TCP flags (byte 13).
pub const PACKET_L4_BYTES: usize = 16;
/// IPv6 extension headers walked before giving up on reaching the transport header.
pub const MAX_EXT_HEADERS: usize = 8;

/// `PacketHeaders::flags`: the network header was read.
pub const PACKET_READ: u8 = 1;
/// A fragment (IPv4 MF or offset, or an IPv6 fragment header).
pub const PACKET_FRAGMENT: u8 = 2;
/// The IPv6 extension-header chain was longer than [`MAX_EXT_HEADERS`].
pub const PACKET_CHAIN_TOO_LONG: u8 = 4;
/// A fragment other than the first: it has no transport header.
pub const PACKET_LATER_FRAGMENT: u8 = 8;

/// A dropped packet's headers as the kernel program found them. Bytes past `len` were not
/// part of the packet: userspace ignores them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketHeaders {
    /// From the network header on.
    pub ip: [u8; PACKET_IP_BYTES],
    /// From the transport header on (at `l4_offset`).
    pub l4: [u8; PACKET_L4_BYTES],
    /// Bytes of the packet's linear data from the network header on.
    pub len: u32,
    /// Where the transport header starts, from the network header; 0 when it was not reached
    /// (a later fragment, a chain too long, a packet too short).
    pub l4_offset: u16,
    /// The IPv4 protocol, or the IPv6 next header where the walk ended.
    pub l4_proto: u8,
    /// `PACKET_*`.
    pub flags: u8,
}

/// Settings of the `conntrack-drops` programs, set once at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// `SKB_DROP_REASON_NETFILTER_DROP` on this kernel (the enum differs between versions).
    pub netfilter_drop_reason: u32,
    /// Only this network namespace (inode); 0 = all.
    pub netns_inum: u32,
    /// The bytes of `tuples` (up to the reply tuple's end) and `sizeof(struct
    /// ip_conntrack_stat)`, capped at the buffers above.
    pub tuples_size: u32,
    pub stat_size: u32,
    /// Offsets in `struct ip_conntrack_stat` of the counters userspace reads (`insert_failed`,
    /// `drop`, `early_drop`, `clash_resolve`): where the statistics are a typed object, the
    /// program copies only these, to the same offsets of `stats`.
    pub stat_counters: [u32; STAT_COUNTERS],
    /// Non-zero: each drop carries its kernel stack, which names the netfilter hook (a stack
    /// walk per drop, a few times what the rest costs: asked for, not by default).
    pub stack: u32,
}
