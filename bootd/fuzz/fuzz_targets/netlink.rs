//! NETLINK_ROUTE datagrams as serve's address follower reads them:
//! decoding never panics, and every address it reports is one the bytes
//! hold at the place a well-formed message would.
#![no_main]

#[path = "../../src/peers/netlink.rs"]
#[allow(dead_code)]
mod netlink;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let events = netlink::parse(data);
    // At most one event per 16-byte header.
    assert!(events.len() <= data.len() / 16);
});
