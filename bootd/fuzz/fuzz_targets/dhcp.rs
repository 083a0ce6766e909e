//! DHCP requests from the network: decoding never panics, and whatever
//! decodes answers every question the server asks of it.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/dhcp/decode.rs"]
mod decode;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = decode::Request::decode(data) {
        let mac = r.mac();
        assert!(mac.len() <= 3 * 16, "{mac}");
        let _ = (r.vendor_class(), r.arch(), r.is_ipxe());
        let _ = (r.requested_ip(), r.server_id(), r.opt(97), r.opt(82));
    }
});
