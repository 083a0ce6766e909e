//! Checks a datagram before dhcproto sees it and extracts the options that
//! dhcproto leaves as raw bytes (43, 77, 175) or that the decision needs.
//!
//! dhcproto asserts on some option lengths in debug builds and indexes
//! `chaddr` by `hlen`; a peer controls both, so such datagrams are refused
//! here instead. So is a `chaddr` shorter than a MAC address: every node
//! and every lease is keyed by one.

use bootd_plan::Mac;
use dhcproto::v4::{Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// op .. file, then the magic cookie.
const FIXED_LEN: usize = 236;

/// A BOOTREQUEST that passed the checks.
#[derive(Debug, Clone)]
pub struct Request {
    pub msg: Message,
    pub msg_type: MessageType,
    /// The first six bytes of `chaddr`, read once here.
    mac: Mac,
    /// Option data by code; repeated codes concatenated (RFC 3396).
    pub raw: BTreeMap<u8, Vec<u8>>,
}

/// Option lengths dhcproto asserts on (or subtracts from) while decoding.
fn length_ok(code: u8, len: usize) -> bool {
    match code {
        80 => len == 0,        // rapid commit
        81 => len >= 3,        // client FQDN
        94 => len == 3,        // client network interface
        151 => len >= 1,       // bulk leasequery status code
        152..=155 => len == 4, // bulk leasequery times
        _ => true,
    }
}

/// Walks the options area: `None` if it is malformed in a way dhcproto
/// would not survive.
fn raw_options(mut b: &[u8]) -> Option<BTreeMap<u8, Vec<u8>>> {
    let mut out: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    while let Some((&code, rest)) = b.split_first() {
        match code {
            0 => b = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                // Each occurrence on its own too: dhcproto decodes a
                // repeated option piece by piece (found by fuzzing: 94 of
                // length 3, then 94 of length 0, tripped its assertion).
                if !length_ok(code, usize::from(len)) {
                    return None;
                }
                let data = rest.get(..usize::from(len))?;
                out.entry(code).or_default().extend_from_slice(data);
                b = &rest[usize::from(len)..];
            }
        }
    }
    out.iter()
        .all(|(&c, d)| length_ok(c, d.len()))
        .then_some(out)
}

impl Request {
    /// `None` for anything that is not a well-formed DHCP request.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < FIXED_LEN + MAGIC.len() || bytes[FIXED_LEN..FIXED_LEN + 4] != MAGIC {
            return None;
        }
        // hlen above 16 makes dhcproto's chaddr() panic.
        if bytes[0] != 1 || bytes[2] > 16 {
            return None;
        }
        let raw = raw_options(&bytes[FIXED_LEN + 4..])?;
        let msg = Message::decode(&mut Decoder::new(bytes)).ok()?;
        if msg.opcode() != Opcode::BootRequest {
            return None;
        }
        let msg_type = msg.opts().msg_type()?;
        let mac = Mac::from_hardware(msg.chaddr())?;
        Some(Self {
            msg,
            msg_type,
            mac,
            raw,
        })
    }

    /// The client's hardware address, the registry's and the lease table's
    /// key (shown as `aa:bb:...`).
    pub fn mac(&self) -> Mac {
        self.mac
    }

    pub fn opt(&self, code: u8) -> Option<&[u8]> {
        self.raw.get(&code).map(Vec::as_slice)
    }

    pub fn ipv4_opt(&self, code: u8) -> Option<Ipv4Addr> {
        let d: [u8; 4] = self.opt(code)?.try_into().ok()?;
        Some(Ipv4Addr::from(d))
    }

    /// Option 50.
    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        self.ipv4_opt(50)
    }

    /// Option 54.
    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.ipv4_opt(54)
    }

    /// Option 60.
    pub fn vendor_class(&self) -> &[u8] {
        self.opt(60).unwrap_or_default()
    }

    /// The first architecture type of option 93; `None` when absent or short.
    pub fn arch(&self) -> Option<u16> {
        let d = self.opt(93)?;
        Some(u16::from_be_bytes([*d.first()?, *d.get(1)?]))
    }

    /// iPXE identifies itself with user class `iPXE` (option 77, either
    /// bare or RFC 3004 length-prefixed) and its own option 175.
    pub fn is_ipxe(&self) -> bool {
        if self.raw.contains_key(&175) {
            return true;
        }
        match self.opt(77) {
            Some(uc) => uc == b"iPXE" || uc.windows(4).any(|w| w == b"iPXE"),
            None => false,
        }
    }
}
