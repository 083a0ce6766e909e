//! TFTP datagrams: packet decoding never panics and stays within its
//! bounds, and a read transfer fed hostile datagrams and
//! clock jumps never panics nor sends more than its window allows.
#![no_main]

use bootd_tftp::packet::{self, Packet};
use bootd_tftp::transfer::{Limits, Transfer};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (first, later) = rest.split_at((split as usize).min(rest.len()));
    let Ok(Packet::Rrq(req)) = Packet::decode(first) else {
        let _ = Packet::decode(data);
        return;
    };
    assert!(req.filename.len() <= packet::MAX_FILENAME);
    assert!(req.options.len() <= packet::MAX_OPTIONS);
    // A small file keeps each run fast; the content does not matter.
    let file: Arc<[u8]> = vec![0x5a; 3000].into();
    let limits = Limits::default();
    let t0 = Instant::now();
    let (mut t, out) = Transfer::start(&req.options, file, &limits, t0);
    assert!(out.len() <= limits.max_window as usize + 1);
    // The rest: datagrams of up to 16 bytes, each after a clock step.
    for (i, chunk) in later.chunks(17).enumerate() {
        let Some((&step, dgram)) = chunk.split_first() else {
            break;
        };
        let now = t0 + Duration::from_millis(u64::from(step) * 100 * (i as u64 + 1));
        let out = t.on_datagram(dgram, now);
        assert!(out.len() <= limits.max_window as usize);
        let out = t.on_timeout(now.max(t.deadline()));
        assert!(out.len() <= limits.max_window as usize);
        assert!(t.deadline() <= t0 + limits.lifetime);
    }
});
