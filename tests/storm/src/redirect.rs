//! An iSCSI login redirect as a target sends it (RFC 7143 11.13): a Login
//! Response with status class 1 ("redirection") and the new portal in its
//! `TargetAddress=HOST[:PORT][,TPGT]` key. bootd sends one when a login
//! reaches a server that does not own the node. The protocol crate's
//! initiator reports only the status, so the storm reads the key from the
//! PDU's bytes before handing them on. The bytes come from the network:
//! every length is checked, nothing here panics.

use std::net::{IpAddr, SocketAddr};

/// Login Response opcode.
const LOGIN_RESPONSE: u8 = 0x23;
const BHS: usize = 48;
/// Login PDUs carry a few keys; anything longer is not a redirect we follow.
const MAX_DATA: usize = 64 * 1024;
/// The port of a TargetAddress that names none.
pub const DEFAULT_PORT: u16 = 3260;

/// Where a redirecting Login Response sends the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    pub to: SocketAddr,
    /// 1: moved temporarily, 2: moved permanently.
    pub detail: u8,
}

/// The redirect in the PDU at the start of `buf`, if `buf` holds a whole
/// Login Response with status class 1 and a usable TargetAddress.
pub fn parse(buf: &[u8]) -> Option<Redirect> {
    let bhs = buf.get(..BHS)?;
    if bhs[0] & 0x3f != LOGIN_RESPONSE || bhs[36] != 1 {
        return None;
    }
    let ahs = usize::from(bhs[4]) * 4;
    let dlen = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    if dlen > MAX_DATA {
        return None;
    }
    let start = BHS + ahs;
    let data = buf.get(start..start + dlen)?;
    let to = data
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("TargetAddress="))
        .and_then(target_address)?;
    Some(Redirect {
        to,
        detail: bhs[37],
    })
}

/// `HOST[:PORT][,TPGT]`, HOST an IPv4 address or a bracketed IPv6 one.
pub fn target_address(v: &str) -> Option<SocketAddr> {
    let hostport = v.rsplit_once(',').map_or(v, |(hp, _)| hp).trim();
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Some(a);
    }
    let host = hostport
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(hostport);
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pdu(class: u8, detail: u8, data: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; BHS];
        p[0] = LOGIN_RESPONSE;
        let n = data.len();
        p[5..8].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
        p[36] = class;
        p[37] = detail;
        p.extend_from_slice(data);
        p.resize(BHS + n.div_ceil(4) * 4, 0);
        p
    }

    #[test]
    fn reads_the_target_address() {
        let d = b"TargetAddress=198.18.0.2:3261,1\0";
        assert_eq!(
            parse(&pdu(1, 1, d)),
            Some(Redirect {
                to: "198.18.0.2:3261".parse().unwrap_or_else(|_| unreachable!()),
                detail: 1
            })
        );
        // No port: the default; IPv6 in brackets.
        assert_eq!(
            target_address("192.0.2.9,1"),
            Some(SocketAddr::from(([192, 0, 2, 9], DEFAULT_PORT)))
        );
        assert_eq!(
            target_address("[2001:db8::1]:3262,1").map(|a| a.port()),
            Some(3262)
        );
        assert_eq!(
            target_address("[2001:db8::1]").map(|a| a.port()),
            Some(3260)
        );
        // Not a redirect: success, another class, no key, a bad address,
        // another opcode, a PDU cut short.
        assert_eq!(parse(&pdu(0, 0, d)), None);
        assert_eq!(parse(&pdu(2, 1, d)), None);
        assert_eq!(parse(&pdu(1, 1, b"TargetPortalGroupTag=1\0")), None);
        assert_eq!(
            parse(&pdu(1, 1, b"TargetAddress=host.example:3260,1\0")),
            None
        );
        let mut other = pdu(1, 1, d);
        other[0] = 0x21;
        assert_eq!(parse(&other), None);
        let whole = pdu(1, 1, d);
        assert_eq!(parse(&whole[..BHS + 10]), None);
        assert_eq!(parse(&whole[..20]), None);
    }

    proptest! {
        /// Any bytes: no panic.
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&buf);
        }

        /// A well-formed redirect with any key text before it still parses;
        /// an announced length beyond the buffer never does.
        #[test]
        fn finds_the_key_among_others(junk in "[a-zA-Z=]{0,40}", port in 1u16.., cut in 1usize..8) {
            let data = format!("{junk}\0TargetAddress=198.18.0.3:{port},1\0");
            let p = pdu(1, 2, data.as_bytes());
            let got = parse(&p).map(|r| (r.to, r.detail));
            prop_assert_eq!(got, Some((SocketAddr::from(([198, 18, 0, 3], port)), 2)));
            let short = &p[..BHS + data.len() - cut.min(data.len())];
            prop_assert_eq!(parse(short), None);
        }
    }
}
