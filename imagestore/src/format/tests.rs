use super::*;
use proptest::prelude::*;
use std::process::Command;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn head(path: &std::path::Path) -> Vec<u8> {
    let mut b = std::fs::read(path).expect("read image");
    b.truncate(PROBE_LEN);
    b
}

#[test]
fn qemu_written_overlay_is_parsed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("golden.raw");
    let over = dir.path().join("node.qcow2");
    std::fs::write(&base, vec![0u8; 1 << 20]).expect("write golden");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap_or_default(),
        "-F",
        "raw",
        over.to_str().unwrap_or_default(),
    ]);
    let ImageFormat::Qcow2(h) = probe(&head(&over)).expect("probe") else {
        panic!("not detected as qcow2");
    };
    assert_eq!(h.version, 3);
    assert_eq!(h.size, 1 << 20);
    assert_eq!(h.cluster_bits, 16);
    assert_eq!(h.backing_file.as_deref(), base.to_str());
    assert_eq!(h.backing_format.as_deref(), Some("raw"));
    assert!(!h.encrypted);
}

#[test]
fn qemu_written_formats_are_recognised() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (fmt, want) in [
        ("vpc", "vpc"),
        ("vhdx", "vhdx"),
        ("vmdk", "vmdk"),
        ("vdi", "vdi"),
        ("qcow2", "qcow2"),
        ("raw", "raw"),
    ] {
        let p = dir.path().join(format!("img.{fmt}"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            fmt,
            p.to_str().unwrap_or_default(),
            "8M",
        ]);
        let got = probe(&head(&p)).expect("probe");
        assert_eq!(got.qemu_name(), want, "format {fmt}");
    }
}

#[test]
fn hostile_qcow2_headers_are_refused() {
    let mut h = vec![0u8; 128];
    h[0..4].copy_from_slice(&QCOW2_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&2u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    assert!(matches!(probe(&h), Ok(ImageFormat::Qcow2(_))));

    let mut bad = h.clone();
    bad[20..24].copy_from_slice(&40u32.to_be_bytes());
    assert_eq!(probe(&bad), Err(ProbeError::ClusterBits(40)));

    let mut bad = h.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    bad[16..20].copy_from_slice(&10u32.to_be_bytes());
    assert!(matches!(probe(&bad), Err(ProbeError::Truncated { .. })));

    let mut bad = h.clone();
    bad[8..16].copy_from_slice(&100u64.to_be_bytes());
    bad[16..20].copy_from_slice(&5000u32.to_be_bytes());
    assert_eq!(probe(&bad), Err(ProbeError::BackingNameLength(5000)));

    assert!(matches!(probe(&h[..40]), Err(ProbeError::Truncated { .. })));
}

proptest! {
    #[test]
    fn probe_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = probe(&bytes);
    }

    #[test]
    fn probe_never_panics_on_qcow2_like_input(mut bytes in proptest::collection::vec(any::<u8>(), 8..2048), v3 in any::<bool>()) {
        bytes[0..4].copy_from_slice(&QCOW2_MAGIC.to_be_bytes());
        bytes[4..8].copy_from_slice(&(if v3 { 3u32 } else { 2 }).to_be_bytes());
        let _ = probe(&bytes);
    }
}
