//! `conntrack-drops`: packets netfilter dropped (`kfree_skb` with reason NETFILTER_DROP),
//! with what userspace needs to tell conntrack's own drops from a firewall rule's: the
//! packet's conntrack entry and the namespace's conntrack statistics on this CPU at that
//! moment (conntrack bumps `insert_failed`/`drop` on this CPU just before it drops).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use tracer_common::{
    conntrack::{ConntrackConfig, NetfilterDropEvent, STAT_BYTES, TUPLE_BYTES},
    EventKind,
};

use crate::{
    percpu::this_cpu_offset,
    pipeline::{count_lost, header, submit_flags, EVENTS},
    task::{off, read, read_bytes},
};

/// Set by the loader.
#[unsafe(no_mangle)]
static CONNTRACK_CONFIG: ConntrackConfig = ConntrackConfig {
    netfilter_drop_reason: 0,
    netns_inum: 0,
    tuple_size: 0,
    stat_size: 0,
};

macro_rules! config {
    ($field:ident) => {
        // SAFETY: reading a static; volatile keeps the loader's value from being folded away.
        unsafe { core::ptr::read_volatile(&CONNTRACK_CONFIG.$field) }
    };
}

/// The packet's network namespace: from its conntrack entry, else its device, else its socket.
#[inline(always)]
fn packet_net(skb: u64, ct: u64) -> u64 {
    if let Some(net) = read::<u64>(ct, off!(nf_conn_ct_net_net)) {
        return net;
    }
    let dev = read::<u64>(skb, off!(sk_buff_dev)).unwrap_or(0);
    if let Some(net) = read::<u64>(dev, off!(net_device_nd_net_net)).filter(|n| *n != 0) {
        return net;
    }
    let sk = read::<u64>(skb, off!(sk_buff_sk)).unwrap_or(0);
    read::<u64>(sk, off!(sock_sk_common_skc_net_net)).unwrap_or(0)
}

/// Copies the first `len` bytes (at most N) at `src` into `dst`, which the caller zeroed:
/// the struct's size comes from BTF, the buffer's from the record layout.
#[inline(always)]
fn read_prefix<const N: usize>(src: u64, len: u32, dst: &mut [u8; N]) {
    let len = (len as usize).min(N);
    if src != 0 {
        // SAFETY: the helper checks the address; `len` is bounded by the buffer.
        let _ = unsafe { bpf_probe_read_kernel_buf(src as *const u8, &mut dst[..len]) };
    }
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    if reason != config!(netfilter_drop_reason) {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    let nfct = read::<u64>(skb, off!(sk_buff_nfct)).unwrap_or(0);
    let ct = nfct & !7;
    let net = packet_net(skb, ct);
    let inum = read::<u32>(net, off!(net_ns_inum)).unwrap_or(0);
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
    ev.net_cookie = read::<u64>(net, off!(net_net_cookie)).unwrap_or(0);
    ev._pad0 = 0;
    ev.has_ct = (ct != 0) as u8;
    ev.ctinfo = (nfct & 7) as u8;
    ev._pad = 0;
    ev.ct_status = read::<u64>(ct, off!(nf_conn_status)).unwrap_or(0);

    let stats = read::<u64>(net, off!(net_ct_stat)).unwrap_or(0);
    ev.stats_valid = 0;
    ev.stats = [0; STAT_BYTES];
    if let Some(cpu_offset) = this_cpu_offset().filter(|_| stats != 0) {
        read_prefix(
            stats.wrapping_add(cpu_offset),
            config!(stat_size),
            &mut ev.stats,
        );
        ev.stats_valid = 1;
    }

    let (tuplehash, stride) = (off!(nf_conn_tuplehash), off!(nf_conntrack_tuple_hash_size));
    let tuple = off!(nf_conntrack_tuple_hash_tuple);
    let tuple_size = config!(tuple_size);
    ev.orig = [0; TUPLE_BYTES];
    ev.reply = [0; TUPLE_BYTES];
    if ct != 0 {
        let orig = ct + tuplehash as u64 + tuple as u64;
        read_prefix(orig, tuple_size, &mut ev.orig);
        read_prefix(orig + stride as u64, tuple_size, &mut ev.reply);
    }

    // The packet's own addresses, for drops that happen before conntrack made an entry.
    let head = read::<u64>(skb, off!(sk_buff_head)).unwrap_or(0);
    let network = read::<u16>(skb, off!(sk_buff_network_header));
    let transport = read::<u16>(skb, off!(sk_buff_transport_header));
    ev.packet_valid = 0;
    ev.packet_ip = [0; 20];
    ev.packet_l4 = [0; 4];
    if let (Some(network), Some(transport)) = (network, transport) {
        if head != 0 && network != u16::MAX && transport != u16::MAX {
            read_bytes(head, network as u32, &mut ev.packet_ip);
            read_bytes(head, transport as u32, &mut ev.packet_l4);
            ev.packet_valid = 1;
        }
    }
    entry.submit(submit_flags());
    0
}
