//! Records of the `conntrack-drops` tracer.
//!
//! The kernel side copies raw kernel structs (tuples, statistics) and userspace decodes them
//! with offsets from BTF: that keeps the program small and every layout out of the code.

use crate::EventHeader;

/// Bytes kept of a `struct nf_conntrack_tuple` (40 on current kernels).
pub const TUPLE_BYTES: usize = 48;
/// Bytes kept of a `struct ip_conntrack_stat` (52 on current kernels).
pub const STAT_BYTES: usize = 64;

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
    /// Non-zero when `packet_ip`/`packet_l4` were read from the packet.
    pub packet_valid: u8,
    pub _pad: u32,
    /// This CPU's `struct ip_conntrack_stat` of the namespace, raw.
    pub stats: [u8; STAT_BYTES],
    /// `tuplehash[IP_CT_DIR_ORIGINAL].tuple` and `[IP_CT_DIR_REPLY].tuple`, raw.
    pub orig: [u8; TUPLE_BYTES],
    pub reply: [u8; TUPLE_BYTES],
    /// The IPv4 header and the first 4 bytes of the transport header (the ports), for drops
    /// without a conntrack entry.
    pub packet_ip: [u8; 20],
    pub packet_l4: [u8; 4],
}

/// Settings of the `conntrack-drops` programs, set once at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// `SKB_DROP_REASON_NETFILTER_DROP` on this kernel (the enum differs between versions).
    pub netfilter_drop_reason: u32,
    /// Only this network namespace (inode); 0 = all.
    pub netns_inum: u32,
    /// `sizeof(struct nf_conntrack_tuple)` and `sizeof(struct ip_conntrack_stat)`, capped at
    /// the buffers above.
    pub tuple_size: u32,
    pub stat_size: u32,
}
