//! `conntrack-drops`: packets netfilter dropped (`kfree_skb` with reason NETFILTER_DROP),
//! with what userspace needs to tell conntrack's own drops from a firewall rule's: the
//! packet's conntrack entry and the namespace's conntrack statistics on this CPU at that
//! moment (conntrack bumps `insert_failed`/`drop` on this CPU just before it drops).

use aya_ebpf::{
    helpers::{bpf_get_stack, bpf_probe_read_kernel_buf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
    EbpfContext as _,
};
use tracer_common::{
    conntrack::{
        ConntrackConfig, NetfilterDropEvent, PacketHeaders, MAX_EXT_HEADERS, PACKET_CHAIN_TOO_LONG,
        PACKET_FRAGMENT, PACKET_IP_BYTES, PACKET_L4_BYTES, PACKET_LATER_FRAGMENT, PACKET_READ,
        STAT_BYTES, STAT_COUNTERS,
    },
    EventKind,
};

use crate::{
    percpu::this_cpu_ptr,
    pipeline::{count_lost, header, submit, EVENTS},
    task::{off, read_bytes, zero, Object, Typed},
};

/// Set by the loader.
#[unsafe(no_mangle)]
static CONNTRACK_CONFIG: ConntrackConfig = ConntrackConfig {
    netfilter_drop_reason: 0,
    netns_inum: 0,
    tuples_size: 0,
    stat_size: 0,
    stat_counters: [0; STAT_COUNTERS],
    stack: 0,
};

macro_rules! config {
    ($field:ident) => {
        // SAFETY: reading a static; volatile keeps the loader's value from being folded away.
        unsafe { core::ptr::read_volatile(&CONNTRACK_CONFIG.$field) }
    };
}

/// The packet's network namespace: from its conntrack entry, else its device, else its socket.
#[inline(always)]
fn packet_net(skb: Typed, ct: Object) -> u64 {
    // A typed read that faults gives 0, not None.
    if let Some(net) = ct.get::<u64>(off!(nf_conn_ct_net_net)).filter(|n| *n != 0) {
        return net;
    }
    let dev = skb.ptr(off!(sk_buff_dev));
    if let Some(net) = dev
        .get::<u64>(off!(net_device_nd_net_net))
        .filter(|n| *n != 0)
    {
        return net;
    }
    skb.ptr(off!(sk_buff_sk))
        .get::<u64>(off!(sock_sk_common_skc_net_net))
        .unwrap_or(0)
}

/// [`zero`] writes whole words: the fields it zeroes start 8-aligned in the record (a ring
/// buffer record is itself 8-aligned).
const _: () = {
    use core::mem::offset_of;
    let packet = offset_of!(NetfilterDropEvent, packet);
    assert!(offset_of!(NetfilterDropEvent, stats) % 8 == 0);
    assert!(offset_of!(NetfilterDropEvent, tuples) % 8 == 0);
    assert!(offset_of!(NetfilterDropEvent, stack) % 8 == 0);
    assert!((packet + offset_of!(PacketHeaders, ip)) % 8 == 0);
    assert!((packet + offset_of!(PacketHeaders, l4)) % 8 == 0);
};

/// Copies the first `len` bytes (at most N) of `src` from `off` on into `dst`, which the
/// caller zeroed: the struct's size comes from BTF, the buffer's from the record layout.
/// Whether the read succeeded. One helper call even for a typed object: word by word, plain
/// loads took the verifier 13,000 instructions, and it refuses loads that straddle a
/// tuple's small unions.
#[inline(always)]
fn read_prefix<const N: usize>(src: Object, off: u32, len: u32, dst: &mut [u8; N]) -> bool {
    let (addr, len) = (src.addr(), (len as usize).min(N));
    // SAFETY: the helper checks the address; `len` is bounded by the buffer.
    addr != 0
        && unsafe { bpf_probe_read_kernel_buf((addr + off as u64) as *const u8, &mut dst[..len]) }
            .is_ok()
}

/// The counters userspace reads, each copied to its own offset in `dst` (which the caller
/// zeroed): four plain loads cost less than the helper's copy of the whole struct.
#[inline(always)]
fn copy_counters(stat: Typed, dst: &mut [u8; STAT_BYTES]) {
    for i in 0..STAT_COUNTERS {
        // SAFETY: reading a static; volatile keeps the loader's value from being folded away.
        let off = unsafe { core::ptr::read_volatile(&CONNTRACK_CONFIG.stat_counters[i]) };
        // The bound is for the verifier: userspace's offsets are within the struct.
        if off as usize <= STAT_BYTES - 4 {
            let counter = stat.get::<u32>(off).unwrap_or(0);
            // SAFETY: within `dst`; a u32 field's offset is 4-aligned, as `stats` is.
            unsafe {
                dst.as_mut_ptr()
                    .add(off as usize)
                    .cast::<u32>()
                    .write(counter)
            };
        }
    }
}

/// IPv6 next-header values of the extension headers walked to reach the transport header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// IPv6's fixed header, where the chain starts.
const IPV6_HEADER_LEN: u32 = 40;

#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

/// The packet's network header and the start of its transport header, found from the network
/// header itself: IPv4's header length, or IPv6's extension-header chain (the kernel's
/// `transport_header` may still point at the first extension header, or at the network header
/// for a raw socket's packet). Never reads past the packet's linear data for the walk; bytes
/// copied past its end are left for userspace to ignore (it gets `len`).
#[inline(always)]
fn read_packet(skb: Typed, p: &mut PacketHeaders) {
    zero(&mut p.ip);
    zero(&mut p.l4);
    p.len = 0;
    p.l4_offset = 0;
    p.l4_proto = 0;
    p.flags = 0;
    let head = skb.get::<u64>(off!(sk_buff_head)).unwrap_or(0);
    let network = skb
        .get::<u16>(off!(sk_buff_network_header))
        .unwrap_or(u16::MAX) as u32;
    let tail = skb.get::<u32>(off!(sk_buff_tail)).unwrap_or(0);
    if head == 0 || network == u16::MAX as u32 || tail <= network {
        return;
    }
    let ip = head + network as u64;
    let len = tail - network;
    p.len = len;
    // The network header and what follows it, into `ip` and `l4` at once (see `HEADS`): one
    // helper call, where the transport header of a packet without options or extension
    // headers is found, instead of two.
    // SAFETY: `ip` and `l4` are adjacent bytes of one struct (checked at compile time).
    let heads = unsafe { &mut *(&raw mut p.ip).cast::<[u8; HEADS]>() };
    read_bytes(ip, 0, heads);
    p.flags = PACKET_READ;
    let (next, offset) = match p.ip[0] >> 4 {
        4 => {
            let frag = u16::from_be_bytes([p.ip[6], p.ip[7]]);
            if frag & 0x3fff != 0 {
                p.flags |= PACKET_FRAGMENT;
            }
            p.l4_proto = p.ip[9];
            let header_len = (p.ip[0] & 0xf) as u32 * 4;
            if frag & 0x1fff != 0 {
                p.flags |= PACKET_LATER_FRAGMENT;
                return;
            }
            if header_len < 20 {
                // Malformed: no transport header can be told apart.
                return;
            }
            (p.ip[9], header_len)
        }
        6 => match walk_ext_headers(ip, len, p) {
            Some(found) => found,
            None => return,
        },
        _ => return,
    };
    p.l4_proto = next;
    if offset >= len || offset > u16::MAX as u32 {
        return;
    }
    p.l4_offset = offset as u16;
    match offset as usize {
        // Already in place.
        PACKET_IP_BYTES => {}
        // Read with the network header: copied down from it, a word at a time.
        IPV4_HEADER_LEN => {
            let words = (&raw mut p.ip).cast::<u32>();
            for i in 0..PACKET_L4_BYTES / 4 {
                // SAFETY: words of `ip` and `l4` (4-aligned, see `HEADS`); the source is
                // bytes 20..36 of `ip`, the destination `l4`.
                unsafe {
                    words
                        .add(PACKET_IP_BYTES / 4 + i)
                        .write(words.add(IPV4_HEADER_LEN / 4 + i).read())
                };
            }
        }
        _ => read_bytes(ip, offset, &mut p.l4),
    }
}

/// IPv4's header without options: where its transport header usually starts.
const IPV4_HEADER_LEN: usize = 20;
/// `PacketHeaders::ip` and `::l4` together, read in one call.
const HEADS: usize = PACKET_IP_BYTES + PACKET_L4_BYTES;
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(PacketHeaders, l4) == offset_of!(PacketHeaders, ip) + PACKET_IP_BYTES);
    assert!(offset_of!(PacketHeaders, ip) % 4 == 0);
    assert!(IPV4_HEADER_LEN + PACKET_L4_BYTES <= PACKET_IP_BYTES);
};

/// Follows IPv6's extension headers from the fixed header to the transport header: its
/// protocol and offset, or `None` (with `l4_proto` and `flags` saying why) when the packet
/// ends first, a later fragment has none, or the chain is longer than [`MAX_EXT_HEADERS`].
#[inline(always)]
fn walk_ext_headers(ip: u64, len: u32, p: &mut PacketHeaders) -> Option<(u8, u32)> {
    let (mut next, mut offset) = (p.ip[6], IPV6_HEADER_LEN);
    for _ in 0..MAX_EXT_HEADERS {
        if !is_ext_header(next) {
            return Some((next, offset));
        }
        p.l4_proto = next;
        // Every extension header is at least 8 bytes: next header, length, then 6 more.
        if offset + 8 > len {
            return None;
        }
        let mut ext = [0u8; 4];
        read_bytes(ip, offset, &mut ext);
        let size = match next {
            NEXTHDR_FRAGMENT => {
                p.flags |= PACKET_FRAGMENT;
                if u16::from_be_bytes([ext[2], ext[3]]) & !7 != 0 {
                    p.flags |= PACKET_LATER_FRAGMENT;
                    p.l4_proto = ext[0];
                    return None;
                }
                8
            }
            NEXTHDR_AUTH => (ext[1] as u32 + 2) * 4,
            _ => (ext[1] as u32 + 1) * 8,
        };
        next = ext[0];
        offset += size;
    }
    if is_ext_header(next) {
        p.l4_proto = next;
        p.flags |= PACKET_CHAIN_TOO_LONG;
        return None;
    }
    Some((next, offset))
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    dropped(&ctx, true)
}

/// [`kfree_skb`] for kernels without `bpf_rdonly_cast` (before 6.2): slower to verify.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_nocast(ctx: BtfTracePointContext) -> i32 {
    dropped(&ctx, false)
}

/// One freed skb; `cast` (a constant of each program) says whether it is read through an
/// untrusted pointer (see `Typed::untrusted`).
#[inline(always)]
fn dropped(ctx: &BtfTracePointContext, cast: bool) -> i32 {
    let reason: u32 = ctx.arg(2);
    if reason != config!(netfilter_drop_reason) {
        return 0;
    }
    // A typed pointer: its own fields are plain loads. The conntrack entry, the namespace and
    // its statistics are plain addresses, read as objects (see `Object`); the packet's data
    // has no type, and is read through the helper.
    let skb = Typed::new(ctx.arg(0)).untrusted_if(cast, off!(sk_buff_btf_id));
    let nfct = skb.get::<u64>(off!(sk_buff_nfct)).unwrap_or(0);
    let (ct_addr, ctinfo) = (nfct & !7, nfct & 7);
    let ct = Object::at(ct_addr, off!(nf_conn_btf_id), cast);
    let net = Object::at(packet_net(skb, ct), off!(net_btf_id), cast);
    let inum = net.get::<u32>(off!(net_ns_inum)).unwrap_or(0);
    let want = config!(netns_inum);
    if want != 0 && inum != want {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<NetfilterDropEvent>(0) else {
        count_lost(EventKind::NetfilterDrop);
        return 0;
    };
    // SAFETY: the entry is reserved for us; every field userspace reads is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = header(EventKind::NetfilterDrop);
    ev.netns_inum = inum;
    ev.net_cookie = net.get::<u64>(off!(net_net_cookie)).unwrap_or(0);
    ev._pad0 = 0;
    ev.has_ct = (ct_addr != 0) as u8;
    ev.ctinfo = ctinfo as u8;
    ev._pad1 = 0;
    ev._pad = 0;
    ev.ct_status = ct.get::<u64>(off!(nf_conn_status)).unwrap_or(0);

    let stats = net.get::<u64>(off!(net_ct_stat)).unwrap_or(0);
    ev.stats_valid = 0;
    zero(&mut ev.stats);
    if let Some(this_cpu) = this_cpu_ptr(stats).filter(|_| stats != 0) {
        // Only statistics actually read are valid: zeroes would compare as counters reset.
        ev.stats_valid = match Object::at(this_cpu, off!(ip_conntrack_stat_btf_id), cast) {
            Object::Typed(stat) => {
                copy_counters(stat, &mut ev.stats);
                1
            }
            address => read_prefix(address, 0, config!(stat_size), &mut ev.stats) as u8,
        };
    }

    zero(&mut ev.tuples);
    if ct_addr != 0 {
        let orig = off!(nf_conn_tuplehash) + off!(nf_conntrack_tuple_hash_tuple);
        // Both tuples in one call: the helper costs more than the bytes between them. Tuples
        // that cannot be read stay zero, which userspace shows as no flow.
        let _ = read_prefix(ct, orig, config!(tuples_size), &mut ev.tuples);
    }

    read_packet(skb, &mut ev.packet);
    zero(&mut ev.stack);
    if config!(stack) != 0 {
        // SAFETY: the helper writes at most the buffer's size; a failure leaves it zeroed.
        let _ = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                ev.stack.as_mut_ptr().cast(),
                core::mem::size_of_val(&ev.stack) as u32,
                0,
            )
        };
    }
    submit(entry);
    0
}
