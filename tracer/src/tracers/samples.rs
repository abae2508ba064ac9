//! Ring-buffer records as the kernel programs write them, for the tests of each tracer's
//! decode -> enrich -> output path and of the report reading those events back.

use std::net::Ipv6Addr;

use tracer_common::{
    conntrack::{NetfilterDropEvent, PacketHeaders, PACKET_IP_BYTES, PACKET_L4_BYTES, PACKET_READ},
    netns::{NetnsAction, NetnsEvent},
    signal::{DescribedSignalEvent, InfoKind, OomVictimEvent, SendContext},
    EventHeader, EventKind, COMM_LEN,
};

use crate::{clock::Clock, output::Written};

/// The bytes of a record, as the ring buffer hands them over.
pub fn bytes<T: aya::Pod>(record: &T) -> Vec<u8> {
    // SAFETY: a Pod record is plain bytes of its size.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

/// A zeroed record: the kernel programs write every field a reader looks at.
fn zeroed<T: aya::Pod>() -> T {
    // SAFETY: Pod records are plain data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

pub fn comm(name: &str) -> [u8; COMM_LEN] {
    let mut comm = [0; COMM_LEN];
    comm[..name.len()].copy_from_slice(name.as_bytes());
    comm
}

pub fn header(kind: EventKind, ktime_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        cpu: 1,
        ktime_ns,
    }
}

/// A SIGKILL from pkill(4242) to server(7942) sent with kill(2), or, with `privileged`, as
/// the kernel sends it itself (SEND_SIG_PRIV); with the sender's description (slot 5).
pub fn kill(privileged: bool) -> DescribedSignalEvent {
    let mut described: DescribedSignalEvent = zeroed();
    let (ev, description) = (&mut described.event, &mut described.description);
    ev.header = header(EventKind::Signal, Clock::monotonic_now_ns());
    ev.signo = 9;
    ev.info_kind = if privileged {
        InfoKind::Priv
    } else {
        InfoKind::Siginfo
    } as u32;
    (ev.sender.pid, ev.sender.tid) = (4242, 4242);
    ev.sender.comm = comm("pkill");
    ev.sender.leader_comm = comm("pkill");
    (ev.target.pid, ev.target.tid) = (7942, 7942);
    ev.target.comm = comm("server");
    ev.target.leader_comm = comm("server");
    ev.sender_slot = 5;
    for (row, name) in description.exe.iter_mut().zip(["pkill", "bin", "usr"]) {
        row[..name.len()].copy_from_slice(name.as_bytes());
    }
    description.valid = 1;
    description.exe_depth = 3;
    description.ancestry[0].pid = 1;
    description.ancestry[0].comm = comm("systemd");
    description.ancestry_len = 1;
    ev.context = SendContext {
        nr: 62, // kill(2) on x86_64
        ret: (-(libc::ENOSYS as i64)) as u64,
        arg0: 7942,
        arg0_compat: 0,
        flags: 0,
        status: 0,
        info_on_stack: 1,
        regs_known: 1,
        ptracer_pid: 0,
        _pad: 0,
    };
    described
}

/// The OOM killer's choice of `victim`, while hog(5000) was allocating.
pub fn oom_victim(victim: u32) -> OomVictimEvent {
    let mut ev: OomVictimEvent = zeroed();
    ev.header = header(EventKind::OomVictim, Clock::monotonic_now_ns());
    ev.victim.pid = victim;
    ev.allocating.pid = 5000;
    ev.allocating.comm = comm("hog");
    ev
}

/// `action` on namespace 4026532999 (cookie `cookie`) at `at_ns`.
pub fn netns(action: NetnsAction, cookie: u64, at_ns: u64) -> NetnsEvent {
    let mut ev: NetnsEvent = zeroed();
    ev.header = header(EventKind::Netns, at_ns);
    ev.action = action as u32;
    ev.inum = 4026532999;
    ev.cookie = cookie;
    ev
}

/// A UDP datagram [fd00::1]:40000 -> [::1]:53 that a rule dropped in namespace 4026532999:
/// no conntrack entry, the namespace's statistics unread (a namespace without conntrack).
pub fn ipv6_rule_drop() -> NetfilterDropEvent {
    let mut ev: NetfilterDropEvent = zeroed();
    ev.header = header(EventKind::NetfilterDrop, Clock::monotonic_now_ns());
    ev.netns_inum = 4026532999;
    ev.net_cookie = 77;
    // Conntrack's counters were read, and count nothing: a rule's drop.
    ev.stats_valid = 1;
    let mut ip = [0u8; PACKET_IP_BYTES];
    ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 9, 17, 64]);
    ip[8..24].copy_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
    ip[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
    let mut l4 = [0u8; PACKET_L4_BYTES];
    l4[..8].copy_from_slice(&[0x9c, 0x40, 0, 53, 0, 9, 0, 0]);
    ev.packet = PacketHeaders {
        ip,
        l4,
        len: 49,
        l4_offset: 40,
        l4_proto: 17,
        flags: PACKET_READ,
    };
    ev
}

/// One record of every kind, as a run would deliver them.
pub fn one_of_each_kind() -> Vec<(EventKind, Vec<u8>)> {
    let now = Clock::monotonic_now_ns();
    vec![
        (EventKind::Signal, bytes(&kill(false))),
        (EventKind::Signal, bytes(&kill(true))),
        (EventKind::OomVictim, bytes(&oom_victim(7942))),
        (EventKind::NetfilterDrop, bytes(&ipv6_rule_drop())),
        (
            EventKind::Netns,
            bytes(&netns(NetnsAction::Create, 77, now)),
        ),
        (
            EventKind::Netns,
            bytes(&netns(NetnsAction::TeardownStart, 77, now + 1)),
        ),
    ]
}

/// The JSON objects an in-memory output holds.
pub fn objects(written: &Written) -> Vec<serde_json::Value> {
    written
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
