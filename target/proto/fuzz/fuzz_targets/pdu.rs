//! PDU framing and decoding on hostile bytes, with and without digests.
#![no_main]

use bytes::Bytes;
use iscsi_proto::pdu::{frame_len, Digests, RawPdu, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    if let Ok(Some(len)) = frame_len(rest, digests, 1 << 20) {
        if let Ok(raw) = RawPdu::parse(Bytes::copy_from_slice(&rest[..len]), digests) {
            let _ = Request::decode(&raw);
        }
    }
});
