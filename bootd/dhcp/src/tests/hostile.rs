//! Whatever arrives never panics the decoder or the decision.

use super::*;

fn any_message() -> impl Strategy<Value = Vec<u8>> {
    (
        1u8..=8,
        any::<[u8; 6]>(),
        any::<u32>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..8)),
            0..8,
        ),
    )
        .prop_map(|(kind, mac, ciaddr, arch, req, gi, extra)| {
            let mut m = msg(MessageType::from(kind), mac);
            m.set_ciaddr(Ipv4Addr::from(ciaddr));
            m.set_giaddr(Ipv4Addr::from(gi));
            pxe(&mut m, arch);
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::from(req)));
            let mut buf = Vec::new();
            let _ = m.encode(&mut Encoder::new(&mut buf));
            // Strip End and append raw options: arbitrary codes and lengths.
            buf.pop();
            for (code, data) in extra {
                buf.push(code);
                buf.push(data.len() as u8);
                buf.extend(data);
            }
            buf
        })
}

fn exercise(bytes: &[u8]) {
    let Some(req) = Request::decode(bytes) else {
        return;
    };
    let _ = req.mac();
    for mode in [Mode::Full, Mode::Proxy] {
        for port in [SERVER_PORT, PXE_PORT] {
            for node in [KNOWN, NodeLookup::Unknown] {
                let Ok(mut l) = leases(Mem::default()) else {
                    return;
                };
                if let Some(r) = handle(&req, port, src(), &params(mode), Some(&mut l), &node, NOW)
                {
                    assert!(r.to_bytes().is_some());
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn valid_ish_messages_never_panic(bytes in any_message()) {
        exercise(&bytes);
    }

    #[test]
    fn corrupted_messages_never_panic(
        bytes in any_message(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut b = bytes;
        for (at, v) in flips {
            let n = b.len();
            if n > 0 {
                b[at % n] = v;
            }
        }
        exercise(&b);
    }
}

/// Found by `scripts/fuzz.sh` (bootd/fuzz, target dhcp): option 94 of length 3, later 94 of
/// length 0. dhcproto decodes each piece and asserted on the second (in
/// debug builds), which took the DHCP thread down with one datagram.
#[test]
fn a_repeated_option_of_a_bad_length_is_refused() {
    let d = include_bytes!("../../../fuzz/seeds/dhcp/regress-option-94-twice");
    assert!(Request::decode(d).is_none());
}
