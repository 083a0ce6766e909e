//! Reply skeletons and where a reply goes (RFC 2131 4.1).

use super::{Request, CLIENT_PORT, SERVER_PORT};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};
use std::net::{Ipv4Addr, SocketAddrV4};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To the relay agent at giaddr, server port.
    Relay(SocketAddrV4),
    /// 255.255.255.255:68 on the interface.
    Broadcast,
    /// To an address the client already has (ciaddr, or the source of a
    /// request to port 4011).
    Unicast(SocketAddrV4),
    /// To yiaddr at `mac`: the client has no address yet and did not ask for
    /// broadcast, so the driver must reach it without ARP (or broadcast).
    UnicastHw { ip: Ipv4Addr, mac: [u8; 6] },
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub msg: Message,
    pub dest: Destination,
}

impl Reply {
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        let mut buf = Vec::with_capacity(576);
        self.msg.encode(&mut Encoder::new(&mut buf)).ok()?;
        Some(buf)
    }
}

/// A BOOTREPLY answering `req`: same xid, flags, giaddr and chaddr;
/// option 82 echoed (RFC 3046).
pub fn skeleton(req: &Request, kind: MessageType, server: Ipv4Addr) -> Message {
    let r = &req.msg;
    let mut m = Message::new_with_id(
        r.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        r.giaddr(),
        r.chaddr(),
    );
    m.set_opcode(Opcode::BootReply)
        .set_htype(r.htype())
        .set_flags(r.flags());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(server));
    if let Some(relay) = r
        .opts()
        .get(dhcproto::v4::OptionCode::RelayAgentInformation)
    {
        o.insert(relay.clone());
    }
    m
}

/// RFC 2131 4.1: relay first; NAKs broadcast; then ciaddr; then the
/// broadcast bit; else unicast to the new address.
pub fn destination(req: &Request, reply: &Message, nak: bool) -> Destination {
    let r = &req.msg;
    if !r.giaddr().is_unspecified() {
        return Destination::Relay(SocketAddrV4::new(r.giaddr(), SERVER_PORT));
    }
    if nak {
        return Destination::Broadcast;
    }
    if !r.ciaddr().is_unspecified() {
        return Destination::Unicast(SocketAddrV4::new(r.ciaddr(), CLIENT_PORT));
    }
    if r.flags().broadcast() || reply.yiaddr().is_unspecified() {
        return Destination::Broadcast;
    }
    match <[u8; 6]>::try_from(r.chaddr()) {
        Ok(mac) => Destination::UnicastHw {
            ip: reply.yiaddr(),
            mac,
        },
        Err(_) => Destination::Broadcast,
    }
}

/// A NAK: no addresses, broadcast bit set when relayed so the relay
/// broadcasts it (RFC 2131 4.3.2).
pub fn nak(req: &Request, server: Ipv4Addr) -> Reply {
    let mut m = skeleton(req, MessageType::Nak, server);
    if !req.msg.giaddr().is_unspecified() {
        m.set_flags(Flags::default().set_broadcast());
    }
    let dest = destination(req, &m, true);
    Reply { msg: m, dest }
}
