//! The key=value text parser and login value codecs on hostile bytes.
#![no_main]

use iscsi_proto::login::decode_binary;
use iscsi_proto::negotiate::parse_number;
use iscsi_proto::text::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = parse(data) {
        for (_, v) in &pairs.0 {
            let _ = decode_binary(v);
            let _ = parse_number(v);
        }
    }
});
