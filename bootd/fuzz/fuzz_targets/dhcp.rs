//! DHCP requests from the network: decoding never panics, and whatever
//! decodes answers every question the server asks of it.
#![no_main]

use bootd_dhcp::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = Request::decode(data) {
        // The MAC is chaddr's first six bytes: a shorter chaddr never decodes.
        assert_eq!(r.mac().octets()[..], r.msg.chaddr()[..6]);
        let _ = (r.vendor_class(), r.arch(), r.is_ipxe());
        let _ = (r.requested_ip(), r.server_id(), r.opt(97), r.opt(82));
    }
});
