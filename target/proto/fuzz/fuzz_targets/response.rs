//! Target PDUs as an initiator receives them: framing and response
//! decoding on hostile bytes, with and without digests. The sans-IO
//! initiator gets the same bytes after a login, so its state machine is
//! fuzzed too.
#![no_main]

use bytes::{Bytes, BytesMut};
use iscsi_proto::initiator::{Initiator, InitiatorConfig};
use iscsi_proto::pdu::{frame_len, Digests, RawPdu, Response};
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
            let _ = Response::decode(&raw);
        }
    }
    // The initiator, mid-login with CHAP (mutual) and with a command
    // outstanding, fed the same bytes.
    let mut ini = Initiator::new(InitiatorConfig {
        mutual_chap: Some(("target".into(), b"targetsecret".to_vec())),
        ..InitiatorConfig::chap("iqn.i", "iqn.t", "user", b"secretsecret")
    });
    ini.login();
    let _ = ini.command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], 4096, Bytes::new());
    let _ = ini.command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0], 0, Bytes::from(vec![0u8; 4096]));
    let mut buf = BytesMut::from(rest);
    let _ = ini.handle_input(&mut buf);
    while ini.poll_event().is_some() {}
    let _ = ini.poll_transmit();
});
