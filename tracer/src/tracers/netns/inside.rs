//! What is configured inside a network namespace (interfaces, addresses) and its cookie, read
//! over rtnetlink from a thread that joins the namespace: a netlink socket talks to the
//! namespace of the thread that created it.

use std::{fs::File, net::IpAddr, os::fd::AsRawFd as _};

use anyhow::{anyhow, bail, Context as _, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use serde::Serialize;

use crate::kernel::netns::{in_netns, socket_netns_cookie};

/// Messages read per dump, at most: a bound on a namespace with a pathological number of
/// interfaces or addresses.
const MAX_MESSAGES: usize = 100_000;

#[derive(Clone, Debug, Serialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub up: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Address {
    pub interface: String,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `global`, `site`, `link` or `host`.
    pub scope: &'static str,
}

impl Address {
    /// Addresses that name one host on a shared network; loopback and link-local ones are
    /// private to their namespace or link and may repeat anywhere.
    pub fn is_routable(&self) -> bool {
        matches!(self.scope, "global" | "site") && !self.address.is_loopback()
    }
}

/// What a namespace contains.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Inside {
    /// `net->net_cookie`: unlike the inode, never reused.
    pub cookie: Option<u64>,
    pub interfaces: Vec<Interface>,
    pub addresses: Vec<Address>,
}

fn scope_name(scope: AddressScope) -> &'static str {
    match scope {
        AddressScope::Universe => "global",
        AddressScope::Site => "site",
        AddressScope::Link => "link",
        AddressScope::Host => "host",
        _ => "other",
    }
}

/// Sends a dump request and returns every message of the answer.
fn dump(socket: &Socket, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    packet.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).context("sending a netlink request")?;
    let mut messages = Vec::new();
    while messages.len() < MAX_MESSAGES {
        let (datagram, _) = socket
            .recv_from_full()
            .context("reading a netlink answer")?;
        let mut offset = 0;
        while offset < datagram.len() {
            let message: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&datagram[offset..])
                    .map_err(|e| anyhow!("decoding a netlink message: {e}"))?;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(messages),
                NetlinkPayload::Error(e) => bail!("netlink error: {e:?}"),
                NetlinkPayload::InnerMessage(m) => messages.push(m),
                _ => {}
            }
            let length = message.header.length as usize;
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
    Ok(messages)
}

/// Reads the current thread's namespace.
fn read_current() -> Result<Inside> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket.bind_auto().context("binding a netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting a netlink socket")?;
    let mut inside = Inside {
        cookie: socket_netns_cookie(socket.as_raw_fd()),
        ..Inside::default()
    };
    for message in dump(
        &socket,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewLink(link) = message {
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(crate::text::escape(n.as_bytes())),
                _ => None,
            });
            inside.interfaces.push(Interface {
                name: name.unwrap_or_else(|| format!("if{}", link.header.index)),
                index: link.header.index,
                up: link.header.flags.contains(LinkFlags::Up),
            });
        }
    }
    for message in dump(
        &socket,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )? {
        let RouteNetlinkMessage::NewAddress(addr) = message else {
            continue;
        };
        // IPv4 carries the interface's own address in IFA_LOCAL (IFA_ADDRESS is the peer's on
        // point-to-point links); IPv6 has only IFA_ADDRESS.
        let local = addr.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = local.or_else(|| {
            addr.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        let Some(address) = address else { continue };
        let interface = inside
            .interfaces
            .iter()
            .find(|i| i.index == addr.header.index)
            .map_or_else(|| format!("if{}", addr.header.index), |i| i.name.clone());
        inside.addresses.push(Address {
            interface,
            address,
            prefix_len: addr.header.prefix_len,
            scope: scope_name(addr.header.scope),
        });
    }
    Ok(inside)
}

/// Interfaces, addresses and cookie of the namespace `netns` (an open namespace file).
pub fn look_inside(netns: &File) -> Result<Inside> {
    in_netns(netns, read_current)
}
