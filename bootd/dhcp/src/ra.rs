//! The other half of a boot client's address configuration: iPXE
//! configures IPv6 beside DHCPv4 and, on a network with no IPv6 router,
//! waits for its router solicitations to time out before it boots
//! (measured: 13 s between bootd's DHCP ACK and iPXE's first HTTP request,
//! with nothing but solicitations on the wire). A router advertisement
//! that configures nothing ends that wait at once: iPXE finishes its IPv6
//! configuration on the first solicited advertisement without the managed
//! or other-configuration flag.
//!
//! The advertisement says "I am not a router" (router lifetime 0), carries
//! no prefix, and leaves hop limit, reachable time and retransmission
//! timer unspecified (0), so hosts that honour it change nothing (RFC 4861
//! 6.3.4). Only ICMPv6 bodies here: the IPv6 header and the checksum are
//! the kernel's.

/// ICMPv6 message types (RFC 4861 4.1, 4.2).
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// A solicitation is at least its type, code, checksum and reserved field.
const SOLICITATION_LEN: usize = 8;

/// Whether `icmp` (an ICMPv6 message without its IPv6 header, as a raw
/// ICMPv6 socket delivers it) is a well-formed router solicitation: code
/// 0, at least 8 bytes, and options that each have a non-zero length and
/// fit (RFC 4861 6.1.1).
pub fn is_router_solicitation(icmp: &[u8]) -> bool {
    if icmp.len() < SOLICITATION_LEN || icmp[0] != ROUTER_SOLICITATION || icmp[1] != 0 {
        return false;
    }
    let mut options = &icmp[SOLICITATION_LEN..];
    while !options.is_empty() {
        // Length in units of 8 bytes, the type and length included.
        let len = match options.get(1) {
            Some(&n) if n > 0 => usize::from(n) * 8,
            _ => return false,
        };
        match options.get(len..) {
            Some(rest) => options = rest,
            None => return false,
        }
    }
    true
}

/// The advertisement that configures nothing: type 134, code 0, checksum
/// (filled in by the kernel), current hop limit 0, flags 0 (no managed or
/// other configuration), router lifetime 0, reachable time 0,
/// retransmission timer 0, no options.
pub const QUIET_ADVERTISEMENT: [u8; 16] = [
    ROUTER_ADVERTISEMENT,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn solicitations_as_ipxe_and_linux_send_them() {
        // iPXE: no options. Linux: a source link-layer address option.
        assert!(is_router_solicitation(&[133, 0, 0x12, 0x34, 0, 0, 0, 0]));
        let linux = [
            133, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0xd1, 0x5c, 0x01,
        ];
        assert!(is_router_solicitation(&linux));
        // Truncated, another type, a non-zero code, a zero-length or an
        // overlong option.
        assert!(!is_router_solicitation(&[133, 0, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
        assert!(!is_router_solicitation(&linux[..12]));
    }

    #[test]
    fn the_advertisement_configures_nothing() {
        let ra = QUIET_ADVERTISEMENT;
        assert_eq!((ra[0], ra[1]), (134, 0));
        // Flags (M, O): none; router lifetime, reachable time, retransmit: 0.
        assert_eq!(ra[5], 0);
        assert!(ra[4..].iter().all(|&b| b == 0));
        assert_eq!(ra.len(), 16);
    }

    proptest! {
        #[test]
        fn any_bytes_are_judged_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = is_router_solicitation(&b);
        }
    }
}
