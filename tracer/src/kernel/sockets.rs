//! What the kernel says about a socket we hold an fd of (usually one borrowed from another
//! process with pidfd_getfd): its network namespace, family, protocol, addresses and TCP state.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, Read as _},
    mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _},
        unix::fs::MetadataExt as _,
    },
};

use serde::Serialize;

use crate::text::escape;

/// `SIOCGSKNS` (Linux 4.9): an fd of the socket's network namespace.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The socket's network namespace, opened: its inode and an fd that can enter it.
pub fn socket_netns(socket: BorrowedFd<'_>) -> io::Result<(u64, File)> {
    // SAFETY: plain ioctl on a valid fd; on success it returns a new fd that we own.
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by no one else.
    let file = unsafe { File::from_raw_fd(fd) };
    Ok((file.metadata()?.ino(), file))
}

/// The socket tables of /proc/PID/net, with the column of each that holds the inode, in two
/// tiers read one after the other as needed: TCP's last, because reading it walks the whole
/// established hash table, which all namespaces share (262,144 buckets on a 24 GiB machine,
/// about a millisecond per walk), however few sockets the namespace has.
pub const SOCKET_TABLE_TIERS: [&[(&str, usize)]; 2] = [
    &[
        ("unix", 6),
        ("udp", 9),
        ("udp6", 9),
        ("udplite", 9),
        ("udplite6", 9),
        ("raw", 9),
        ("raw6", 9),
        ("netlink", 9),
        ("packet", 8),
    ],
    &[("tcp", 9), ("tcp6", 9)],
];

/// The inodes in one socket table (its header line skipped).
fn table_inodes(table: &str, column: usize) -> impl Iterator<Item = u64> + '_ {
    table
        .lines()
        .skip(1)
        .filter_map(move |l| l.split_whitespace().nth(column)?.parse().ok())
        .filter(|&inode| inode != 0)
}

/// The inodes of the sockets that `tables` (one tier of [`SOCKET_TABLE_TIERS`]) list in the
/// network namespace `pid` is in: which sockets belong to a namespace, learnt without touching
/// any of them. A table that cannot be read (a protocol not built, the process gone) adds
/// nothing.
pub fn namespace_socket_inodes(pid: u32, tables: &[(&str, usize)]) -> HashSet<u64> {
    let mut text = String::new();
    let mut inodes = HashSet::new();
    for (name, column) in tables {
        text.clear();
        // One large read: each read(2) of a table restarts the kernel's walk of it.
        text.reserve(256 << 10);
        let read = File::open(format!("/proc/{pid}/net/{name}"))
            .and_then(|mut f| f.read_to_string(&mut text));
        if read.is_ok() {
            inodes.extend(table_inodes(&text, *column));
        }
    }
    inodes
}

/// What a socket is, as far as it can be read.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SocketInfo {
    /// `inet`, `inet6`, `unix`, `netlink`, `packet` or `af<N>`.
    pub family: String,
    /// `tcp`, `udp`, `raw`, `stream`, `dgram`... (the protocol for inet, else the type).
    pub protocol: String,
    pub local: Option<String>,
    pub remote: Option<String>,
    /// TCP's state (`ESTABLISHED`, `FIN_WAIT1`...), for TCP sockets.
    pub state: Option<&'static str>,
}

/// `tcp 10.0.0.1:80 -> 10.0.0.2:4242 ESTABLISHED`, as far as known.
impl std::fmt::Display for SocketInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.protocol)?;
        if let Some(local) = &self.local {
            write!(f, " {local}")?;
        }
        if let Some(remote) = &self.remote {
            write!(f, " -> {remote}")?;
        }
        if let Some(state) = self.state {
            write!(f, " {state}")?;
        }
        Ok(())
    }
}

fn int_opt(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; the option value is an int and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// getsockname/getpeername, printed.
pub fn address(
    fd: BorrowedFd<'_>,
    get: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<String> {
    // SAFETY: sockaddr_storage is plain data, all zeroes is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd; the buffer is a sockaddr_storage and `len` says how big.
    if unsafe { get(fd.as_raw_fd(), (&raw mut storage).cast(), &mut len) } != 0 {
        return None;
    }
    let len = (len as usize).min(mem::size_of::<libc::sockaddr_storage>());
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a: libc::sockaddr_in = unsafe { *(&raw const storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).to_string())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a: libc::sockaddr_in6 = unsafe { *(&raw const storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let addr = SocketAddrV6::new(ip, u16::from_be(a.sin6_port), 0, a.sin6_scope_id);
            Some(SocketAddr::V6(addr).to_string())
        }
        libc::AF_UNIX => {
            // SAFETY: the kernel wrote a sockaddr_un for AF_UNIX.
            let a: libc::sockaddr_un = unsafe { *(&raw const storage).cast() };
            let offset = mem::size_of::<libc::sa_family_t>();
            let path: Vec<u8> = a.sun_path[..len.saturating_sub(offset).min(a.sun_path.len())]
                .iter()
                .map(|&c| c as u8)
                .collect();
            match path.split_first() {
                None => None,
                // Abstract names start with NUL, shown as `@` like ss does.
                Some((0, name)) => Some(format!("@{}", escape(name))),
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    Some(escape(&path[..end]))
                }
            }
        }
        _ => None,
    }
}

/// The names of `enum tcp_state` (include/net/tcp_states.h), from 1.
const TCP_STATES: [&str; 12] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

fn tcp_state(fd: BorrowedFd<'_>) -> Option<&'static str> {
    // The first byte of struct tcp_info is tcpi_state.
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: valid fd; the kernel writes at most `len` bytes of tcp_info.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len >= 1)
        .then(|| TCP_STATES.get((info[0] as usize).checked_sub(1)?).copied())
        .flatten()
}

/// Family, protocol, addresses and state of the socket `fd`.
pub fn describe(fd: BorrowedFd<'_>) -> SocketInfo {
    let domain = int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
    let kind = int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
    let protocol = int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(-1);
    let inet = matches!(domain, libc::AF_INET | libc::AF_INET6);
    let family = match domain {
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_UNIX => "unix".into(),
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        other => format!("af{other}"),
    };
    let protocol = match (inet, protocol, kind) {
        (true, libc::IPPROTO_TCP, _) => "tcp".into(),
        (true, libc::IPPROTO_UDP, _) => "udp".into(),
        (true, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6, _) => "icmp".into(),
        (_, _, libc::SOCK_STREAM) => "stream".into(),
        (_, _, libc::SOCK_DGRAM) => "dgram".into(),
        (_, _, libc::SOCK_RAW) => "raw".into(),
        (_, _, libc::SOCK_SEQPACKET) => "seqpacket".into(),
        (_, p, _) => format!("proto{p}"),
    };
    let state = (inet && protocol == "tcp").then(|| tcp_state(fd)).flatten();
    SocketInfo {
        family,
        protocol,
        local: address(fd, libc::getsockname),
        remote: address(fd, libc::getpeername),
        state,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsFd as _,
    };

    use super::*;

    #[test]
    fn describes_a_connected_tcp_socket_and_its_namespace() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let info = describe(client.as_fd());
        assert_eq!(
            (info.family.as_str(), info.protocol.as_str()),
            ("inet", "tcp")
        );
        assert_eq!(info.remote, Some(server.to_string()));
        assert_eq!(info.local, Some(client.local_addr().unwrap().to_string()));
        assert_eq!(info.state, Some("ESTABLISHED"));
        let listening = describe(listener.as_fd());
        assert_eq!((listening.state, listening.remote), (Some("LISTEN"), None));

        let (inode, _) = socket_netns(client.as_fd()).unwrap();
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(inode, own);
    }

    /// Sockets of every kind the tables list are found by the inode their fd has.
    #[test]
    fn namespace_tables_list_own_sockets() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut netlink = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).unwrap();
        // Netlink's table lists bound sockets only (an unbound one is borrowed instead).
        netlink.bind_auto().unwrap();
        let listed: HashSet<u64> = SOCKET_TABLE_TIERS
            .iter()
            .flat_map(|tier| namespace_socket_inodes(std::process::id(), tier))
            .collect();
        for fd in [tcp.as_fd(), udp.as_fd(), unix.as_fd(), netlink.as_fd()] {
            let inode = nix::sys::stat::fstat(fd).unwrap().st_ino;
            assert!(
                listed.contains(&inode),
                "socket {inode} of {fd:?} not listed"
            );
        }
    }

    #[test]
    fn describes_unix_sockets() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let info = describe(a.as_fd());
        assert_eq!(
            (info.family.as_str(), info.protocol.as_str()),
            ("unix", "stream")
        );
        assert_eq!(info.state, None);
    }
}
