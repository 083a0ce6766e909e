//! Decoding the kernel's NETLINK_ROUTE address messages (RTM_NEWADDR,
//! RTM_DELADDR), the part of rtnetlink `peers::addrs` needs to follow the
//! host's addresses. Sans-IO and std-only (the fuzz target compiles this
//! file in); every length is checked against the buffer, nothing panics,
//! and anything else in the stream is skipped.
//!
//! Layout (all host byte order): `nlmsghdr` {len u32, type u16, flags u16,
//! seq u32, pid u32}, then for address messages `ifaddrmsg` {family u8,
//! prefixlen u8, flags u8, scope u8, index u32}, then attributes `rtattr`
//! {len u16, type u16, payload}, each padded to 4 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NLMSG_HDR: usize = 16;
const IFADDRMSG: usize = 8;

/// What one message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An address on interface `index`.
    Added {
        addr: IpAddr,
        index: u32,
    },
    Removed {
        addr: IpAddr,
        index: u32,
    },
    /// The end of a dump.
    Done,
    /// An error answer (negative errno; 0 is an acknowledgement).
    Error(i32),
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// Every message in one datagram, in order. A truncated or malformed
/// message ends the datagram (what came before it stands).
pub fn parse(buf: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while buf.len().saturating_sub(at) >= NLMSG_HDR {
        let Some(len) = u32_at(buf, at).map(|l| l as usize) else {
            break;
        };
        let Some(kind) = u16_at(buf, at + 4) else {
            break;
        };
        let end = match at.checked_add(len) {
            Some(e) if len >= NLMSG_HDR && e <= buf.len() => e,
            _ => break,
        };
        let body = &buf[at + NLMSG_HDR..end];
        match kind {
            NLMSG_DONE => out.push(Event::Done),
            NLMSG_ERROR => {
                if let Some(e) = u32_at(body, 0) {
                    out.push(Event::Error(e as i32));
                }
            }
            RTM_NEWADDR | RTM_DELADDR => {
                if let Some((addr, index)) = address(body) {
                    out.push(if kind == RTM_NEWADDR {
                        Event::Added { addr, index }
                    } else {
                        Event::Removed { addr, index }
                    });
                }
            }
            _ => {}
        }
        match align4(len).and_then(|l| at.checked_add(l)) {
            Some(next) if next > at => at = next,
            _ => break,
        }
    }
    out
}

/// The address an `ifaddrmsg` body carries: IFA_LOCAL when present (on a
/// point-to-point link IFA_ADDRESS is the peer's), else IFA_ADDRESS.
fn address(body: &[u8]) -> Option<(IpAddr, u32)> {
    let family = *body.first()?;
    let index = u32_at(body, 4)?;
    let want = match family {
        AF_INET => 4,
        AF_INET6 => 16,
        _ => return None,
    };
    let mut at = IFADDRMSG;
    let (mut local, mut address) = (None, None);
    while body.len().saturating_sub(at) >= 4 {
        let len = u16_at(body, at)? as usize;
        let kind = u16_at(body, at + 2)?;
        if len < 4 || at.checked_add(len)? > body.len() {
            break;
        }
        let payload = &body[at + 4..at + len];
        if payload.len() == want && (kind == IFA_LOCAL || kind == IFA_ADDRESS) {
            let ip = if want == 4 {
                IpAddr::V4(Ipv4Addr::new(
                    payload[0], payload[1], payload[2], payload[3],
                ))
            } else {
                let mut o = [0u8; 16];
                o.copy_from_slice(payload);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            if kind == IFA_LOCAL {
                local = Some(ip);
            } else {
                address = Some(ip);
            }
        }
        at = at.checked_add(align4(len)?)?;
    }
    local.or(address).map(|a| (a, index))
}

/// The dump request for every address: `nlmsghdr` + `ifaddrmsg` (family
/// unspecified).
pub fn dump_request(seq: u32) -> Vec<u8> {
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    let len = (NLMSG_HDR + IFADDRMSG) as u32;
    let mut v = Vec::with_capacity(len as usize);
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    v.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(&[0u8; IFADDRMSG]);
    v
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An address message as the kernel writes it.
    pub fn message(kind: u16, addr: IpAddr, index: u32, peer: Option<IpAddr>) -> Vec<u8> {
        let attr = |t: u16, ip: IpAddr| {
            let p = match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            let mut v = Vec::new();
            v.extend_from_slice(&((4 + p.len()) as u16).to_ne_bytes());
            v.extend_from_slice(&t.to_ne_bytes());
            v.extend_from_slice(&p);
            while v.len() % 4 != 0 {
                v.push(0);
            }
            v
        };
        let mut body = vec![if addr.is_ipv4() { AF_INET } else { AF_INET6 }, 24, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend(attr(IFA_ADDRESS, peer.unwrap_or(addr)));
        if peer.is_some() {
            body.extend(attr(IFA_LOCAL, addr));
        }
        let mut v = Vec::new();
        v.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&[0u8; 10]);
        v.extend(body);
        v
    }

    #[test]
    fn address_messages_decode() {
        let a: IpAddr = "192.0.2.10"
            .parse()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let b: IpAddr = "2001:db8::1"
            .parse()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let peer: IpAddr = "192.0.2.99"
            .parse()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let mut dgram = message(RTM_NEWADDR, a, 3, None);
        dgram.extend(message(RTM_DELADDR, b, 4, None));
        dgram.extend(message(RTM_NEWADDR, a, 5, Some(peer)));
        dgram.extend(message(77, a, 5, None));
        let mut done = message(NLMSG_DONE, a, 0, None);
        done.truncate(NLMSG_HDR + 4);
        done[..4].copy_from_slice(&((NLMSG_HDR + 4) as u32).to_ne_bytes());
        dgram.extend(done);
        assert_eq!(
            parse(&dgram),
            [
                Event::Added { addr: a, index: 3 },
                Event::Removed { addr: b, index: 4 },
                // Point-to-point: the local address, not the peer's.
                Event::Added { addr: a, index: 5 },
                Event::Done,
            ]
        );
        // Truncated anywhere: what came before stands, nothing panics.
        for cut in 0..dgram.len() {
            let _ = parse(&dgram[..cut]);
        }
        assert_eq!(&dump_request(7)[4..6], &RTM_GETADDR.to_ne_bytes());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&b);
        }

        #[test]
        fn a_message_with_a_garbled_tail_still_decodes(
            octets in any::<[u8; 4]>(),
            index in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let addr = IpAddr::V4(Ipv4Addr::from(octets));
            let mut d = message(RTM_NEWADDR, addr, index, None);
            d.extend(tail);
            let ev = parse(&d);
            prop_assert_eq!(ev.first(), Some(&Event::Added { addr, index }));
        }
    }
}
