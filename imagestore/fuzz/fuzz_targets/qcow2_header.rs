//! Hostile image heads: format detection (what `bootd image import` and
//! `export` run on an operator's file) and the overlay engine's header
//! decoder share one qcow2 field decoder; on any bytes both return a value
//! or an error, never panic. Seeds are qemu-img's v2, v3 and extended-L2
//! headers.
#![no_main]

use imagestore::format::{probe, ImageFormat, PROBE_LEN};
use imagestore::qcow2::header::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(PROBE_LEN)];
    let probed = probe(head);
    // A header the engine would open must also be detected as qcow2 (both
    // read it through the same decoder; import is the more lenient judge).
    if Header::decode(head).is_ok_and(|h| h.check_supported().is_ok()) {
        assert!(
            matches!(probed, Ok(ImageFormat::Qcow2(_))),
            "the engine accepts a header detection refuses: {probed:?}"
        );
    }
});
