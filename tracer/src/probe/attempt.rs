//! One probe, from a thread already inside the namespace to probe: a TCP connect, a UDP
//! exchange or an ICMP echo, with the flow's own end (the source the kernel chose) kept to
//! match the drops it causes.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU16, Ordering},
        PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::target::{Kind, Target};
use crate::{clock::Clock, kernel::sockets};

/// How a probe ended, as the socket saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Outcome {
    /// Connected, or the expected reply came.
    Ok,
    /// The other end answered that nothing listens (TCP RST, ICMP port unreachable).
    Refused,
    /// A UDP reply other than `--expect`.
    WrongReply { reply: String },
    /// An ICMP error answered the echo request.
    Unreachable { icmp_type: u8, code: u8 },
    /// The kernel refused at once: no route, a local firewall's EPERM, ...
    Errno { errno: i32, error: String },
    /// Nothing came back within the timeout.
    Timeout,
    /// A UDP burst: replies to some of its datagrams only, within the timeout.
    MissingReplies { replies: u16, sent: u16 },
}

/// What one probe did.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The probe's own end, once the kernel chose it (its flow's source).
    pub src: Option<SocketAddr>,
    /// The echo id of an ICMP probe (conntrack tracks the flow by it).
    pub echo_id: Option<u16>,
    pub outcome: Outcome,
    /// From the first packet to the outcome.
    pub elapsed: Duration,
    /// CLOCK_MONOTONIC (the kernel's event clock) before the first packet and after the
    /// outcome.
    pub window: (u64, u64),
}

/// Runs `target`'s probe in the calling thread's namespace, for at most `timeout`.
pub fn probe(target: &Target, timeout: Duration) -> io::Result<Attempt> {
    let start = Clock::monotonic_now_ns();
    let mut attempt = match &target.kind {
        Kind::Tcp => tcp(target.addr, timeout),
        Kind::Udp {
            payload,
            expect,
            burst,
        } => udp(target.addr, payload, expect.as_deref(), *burst, timeout),
        Kind::Icmp => icmp(target.addr.ip(), timeout),
    }?;
    attempt.window = (start, Clock::monotonic_now_ns());
    Ok(attempt)
}

fn errno_outcome(e: &io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Outcome::Refused,
        Some(errno) => Outcome::Errno {
            errno,
            error: e.to_string(),
        },
        None => Outcome::Errno {
            errno: 0,
            error: e.to_string(),
        },
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn socket(family: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned here.
    let fd = cvt(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` was just opened and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn family(addr: &SocketAddr) -> libc::c_int {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// `addr` as a `sockaddr` for the kernel.
fn raw_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The socket's own address (`getsockname`), once the kernel chose one.
fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: `fd` is open for the duration of this call (its OwnedFd is the caller's).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    sockets::address(fd, libc::getsockname)?
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| !a.ip().is_unspecified())
}

fn connect(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = raw_addr(addr);
    // SAFETY: valid fd; the address and its length match.
    cvt(unsafe { libc::connect(fd, (&raw const storage).cast(), len) }).map(drop)
}

/// Waits until `fd` has `events` or `deadline` passes; whether it has them.
fn wait(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn tcp(to: SocketAddr, timeout: Duration) -> io::Result<Attempt> {
    let fd = socket(family(&to), libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    let started = Instant::now();
    let mut attempt = Attempt {
        src: None,
        echo_id: None,
        outcome: Outcome::Timeout,
        elapsed: Duration::ZERO,
        window: (0, 0),
    };
    match connect(fd.as_raw_fd(), &to) {
        Ok(()) => attempt.outcome = Outcome::Ok,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            // The kernel chose the source when it sent the SYN.
            attempt.src = local_addr(fd.as_raw_fd());
            if wait(fd.as_raw_fd(), libc::POLLOUT, started + timeout)? {
                let mut error: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: valid fd; the option is an int and `len` says so.
                cvt(unsafe {
                    libc::getsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&raw mut error).cast(),
                        &mut len,
                    )
                })?;
                attempt.outcome = if error == 0 {
                    Outcome::Ok
                } else {
                    errno_outcome(&io::Error::from_raw_os_error(error))
                };
            }
        }
        Err(e) => attempt.outcome = errno_outcome(&e),
    }
    attempt.src = attempt.src.or_else(|| local_addr(fd.as_raw_fd()));
    attempt.elapsed = started.elapsed();
    Ok(attempt)
}

/// Sends `payload` `copies` times from `socket`, each from a thread of its own released at the
/// same instant, as a resolver sends its A and AAAA queries: packets of one flow that meet in
/// conntrack before either is confirmed (the insert race). The first error, if any.
fn send_burst(socket: &UdpSocket, payload: &[u8], copies: u16) -> io::Result<()> {
    if copies == 1 {
        return socket.send(payload).map(drop);
    }
    // Held until every sender waits on it; a thread that could not be started leaves the
    // others to send (a barrier would wait for it forever).
    let gate = RwLock::new(());
    let closed = gate.write().unwrap_or_else(PoisonError::into_inner);
    std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut failed = None;
        for _ in 0..copies {
            let sender = std::thread::Builder::new()
                .name("probe-send".into())
                .spawn_scoped(scope, || {
                    drop(gate.read());
                    socket.send(payload).map(drop)
                });
            match sender {
                Ok(sender) => senders.push(sender),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(closed);
        let sent = senders.into_iter().try_for_each(|s| {
            s.join()
                .unwrap_or_else(|_| Err(io::Error::other("a sender panicked")))
        });
        match failed {
            Some(e) => Err(e),
            None => sent,
        }
    })
}

fn udp(
    to: SocketAddr,
    payload: &[u8],
    expect: Option<&[u8]>,
    copies: u16,
    timeout: Duration,
) -> io::Result<Attempt> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    // Readable is not a promise of a datagram (one with a bad checksum is dropped at recv):
    // a blocking recv would wait past the timeout.
    socket.set_nonblocking(true)?;
    let started = Instant::now();
    let done = |socket: &UdpSocket, outcome| Attempt {
        src: socket
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified()),
        echo_id: None,
        outcome,
        elapsed: started.elapsed(),
        window: (0, 0),
    };
    if let Err(e) = socket.connect(to) {
        return Ok(done(&socket, errno_outcome(&e)));
    }
    if let Err(e) = send_burst(&socket, payload, copies) {
        return Ok(done(&socket, errno_outcome(&e)));
    }
    let deadline = started + timeout;
    let mut buf = [0u8; 2048];
    let mut replies = 0;
    loop {
        if !wait(socket.as_raw_fd(), libc::POLLIN, deadline)? {
            let outcome = match replies {
                0 => Outcome::Timeout,
                _ => Outcome::MissingReplies {
                    replies,
                    sent: copies,
                },
            };
            return Ok(done(&socket, outcome));
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                let reply = &buf[..n];
                if expect.is_some_and(|want| reply != want) {
                    let reply = String::from_utf8_lossy(reply).into_owned();
                    return Ok(done(&socket, Outcome::WrongReply { reply }));
                }
                replies += 1;
                if replies == copies {
                    return Ok(done(&socket, Outcome::Ok));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => return Ok(done(&socket, errno_outcome(&e))),
        }
    }
}

/// Echo ids of this process's ICMP probes: each its own, so that replies and drops are told
/// apart between probes.
fn next_echo_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16).wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

const ECHO_SEQ: u16 = 1;

/// The internet checksum of `data` (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request with `id` (ICMPv6's checksum is the kernel's to fill in).
fn echo_request(ipv6: bool, id: u16) -> Vec<u8> {
    let mut packet = vec![if ipv6 { 128 } else { 8 }, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&ECHO_SEQ.to_be_bytes());
    packet.extend_from_slice(b"tracer-probe");
    if !ipv6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// What an ICMP message received on the raw socket says about echo `id`: a reply, an error
/// quoting the request, or nothing (another probe's, another flow's). IPv4 raw sockets get
/// the IP header too; IPv6 ones the ICMPv6 message only.
fn answer_to(message: &[u8], ipv6: bool, id: u16) -> Option<Outcome> {
    let icmp = if ipv6 {
        message
    } else {
        message.get(usize::from(message.first()? & 0x0f) * 4..)?
    };
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    let echo_id = |header: &[u8]| header.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let reply = if ipv6 { 129 } else { 0 };
    if kind == reply {
        return (echo_id(icmp)? == id).then_some(Outcome::Ok);
    }
    let is_error = if ipv6 {
        kind < 128
    } else {
        matches!(kind, 3 | 11 | 12)
    };
    if !is_error {
        return None;
    }
    // The error quotes the offending packet's headers after its own 8 bytes: ours only if it
    // is an echo request (bytes 4..6 of a quoted UDP or TCP header are something else).
    let quoted = icmp.get(8..)?;
    let (quoted_proto, quoted_icmp, request) = if ipv6 {
        (*quoted.get(6)?, quoted.get(40..)?, 128)
    } else {
        let header = usize::from(quoted.first()? & 0x0f) * 4;
        (*quoted.get(9)?, quoted.get(header..)?, 8)
    };
    let icmp_proto = if ipv6 { 58 } else { 1 };
    if quoted_proto != icmp_proto || *quoted_icmp.first()? != request {
        return None;
    }
    (echo_id(quoted_icmp)? == id).then_some(Outcome::Unreachable {
        icmp_type: kind,
        code,
    })
}

fn icmp(to: IpAddr, timeout: Duration) -> io::Result<Attempt> {
    let ipv6 = to.is_ipv6();
    let to = SocketAddr::new(to, 0);
    let protocol = if ipv6 {
        libc::IPPROTO_ICMPV6
    } else {
        libc::IPPROTO_ICMP
    };
    let fd = socket(family(&to), libc::SOCK_RAW, protocol)?;
    let id = next_echo_id();
    let started = Instant::now();
    let done = |outcome| Attempt {
        src: local_addr(fd.as_raw_fd()),
        echo_id: Some(id),
        outcome,
        elapsed: started.elapsed(),
        window: (0, 0),
    };
    if let Err(e) = connect(fd.as_raw_fd(), &to) {
        return Ok(done(errno_outcome(&e)));
    }
    let request = echo_request(ipv6, id);
    // SAFETY: valid fd and buffer.
    if let Err(e) = cvt(unsafe {
        libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) as libc::c_int
    }) {
        return Ok(done(errno_outcome(&e)));
    }
    let deadline = started + timeout;
    let mut buf = [0u8; 1500];
    loop {
        if !wait(fd.as_raw_fd(), libc::POLLIN, deadline)? {
            return Ok(done(Outcome::Timeout));
        }
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // As for UDP: never block past the deadline.
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) {
                continue;
            }
            return Ok(done(errno_outcome(&e)));
        }
        if let Some(outcome) = answer_to(&buf[..n as usize], ipv6, id) {
            return Ok(done(outcome));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_checksum_verifies_and_answers_are_matched_by_id() {
        let request = echo_request(false, 0x1234);
        assert_eq!(checksum(&request), 0, "a correct checksum sums to zero");
        // A reply with an IPv4 header of 20 bytes.
        let mut reply = vec![0x45; 1];
        reply.resize(20, 0);
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(answer_to(&reply, false, 0x1234), Some(Outcome::Ok));
        assert_eq!(answer_to(&reply, false, 0x1235), None);
        // Destination unreachable (3/1) quoting a packet (its IP protocol at byte 9).
        let mut error = vec![0x45];
        error.resize(20, 0);
        error.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0, 0x45]);
        error.resize(48, 0);
        let quoting = |quoted: &[u8], proto: u8| {
            let mut e = error.clone();
            e[28 + 9] = proto;
            e.extend_from_slice(quoted);
            e
        };
        // A UDP datagram whose length field (bytes 4..6) happens to be the id is not ours,
        // nor is a quoted echo reply.
        let udp = quoting(&[0x9c, 0x40, 0, 53, 0x12, 0x34, 0, 0], 17);
        assert_eq!(answer_to(&udp, false, 0x1234), None);
        let mut reply_quoted = request.clone();
        reply_quoted[0] = 0;
        assert_eq!(answer_to(&quoting(&reply_quoted, 1), false, 0x1234), None);
        let error = quoting(&request, 1);
        assert_eq!(
            answer_to(&error, false, 0x1234),
            Some(Outcome::Unreachable {
                icmp_type: 3,
                code: 1
            })
        );
        // ICMPv6: the message alone.
        assert_eq!(
            answer_to(&[129, 0, 0, 0, 0x12, 0x34, 0, 1], true, 0x1234),
            Some(Outcome::Ok)
        );
        assert_eq!(
            answer_to(&[128, 0, 0, 0, 0x12, 0x34, 0, 1], true, 0x1234),
            None
        );
    }
}
