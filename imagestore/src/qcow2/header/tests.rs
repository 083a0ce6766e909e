use super::fields::be32;
use super::*;
use proptest::prelude::*;

fn sample() -> Header {
    let mut h = Header::new(1 << 30, 2, 0x10000, 0x20000, 1);
    h.backing_file = Some("golden-7.raw".into());
    h.backing_format = Some("raw".into());
    h
}

#[test]
fn round_trip() -> Result<(), ImageError> {
    let h = sample();
    let b = h.encode()?;
    assert_eq!(be32(&b, 0), Some(MAGIC));
    let back = Header::decode(&b)?;
    assert_eq!(back, h);
    back.check_supported()?;
    // The image store's own probe agrees.
    let crate::format::ImageFormat::Qcow2(p) =
        crate::format::probe(&b).map_err(|e| ImageError::Corrupt(e.to_string()))?
    else {
        panic!("probe did not see qcow2");
    };
    assert_eq!(p.backing_file.as_deref(), Some("golden-7.raw"));
    assert_eq!(p.backing_format.as_deref(), Some("raw"));
    Ok(())
}

#[test]
fn no_backing_round_trip() -> Result<(), ImageError> {
    let h = Header::new(64 << 20, 1, 0x10000, 0x20000, 1);
    assert_eq!(Header::decode(&h.encode()?)?, h);
    Ok(())
}

#[test]
fn unsupported_features_are_refused() -> Result<(), ImageError> {
    let b = sample().encode()?;
    let patch = |off: usize, v: &[u8]| {
        let mut c = b.clone();
        c[off..off + v.len()].copy_from_slice(v);
        Header::decode(&c).and_then(|h| h.check_supported())
    };
    let unsupported = |r: Result<(), ImageError>, what: &str| match r {
        Err(ImageError::Unsupported(m)) => assert!(m.contains(what), "{m}"),
        other => panic!("{what}: {other:?}"),
    };
    unsupported(patch(72, &1u64.to_be_bytes()), "dirty");
    unsupported(patch(72, &2u64.to_be_bytes()), "corrupt");
    unsupported(patch(72, &4u64.to_be_bytes()), "external data");
    unsupported(patch(72, &8u64.to_be_bytes()), "compression");
    // Extended L2 entries are supported.
    let ext = Header::decode(&{
        let mut c = b.clone();
        c[72..80].copy_from_slice(&16u64.to_be_bytes());
        c
    })?;
    ext.check_supported()?;
    assert!(ext.extended_l2() && !sample().extended_l2());
    unsupported(patch(72, &(16u64 | 1 << 40).to_be_bytes()), "unknown");
    unsupported(patch(72, &(1u64 << 40).to_be_bytes()), "unknown");
    unsupported(patch(20, &12u32.to_be_bytes()), "cluster size");
    unsupported(patch(96, &5u32.to_be_bytes()), "refcount_order");
    unsupported(patch(32, &1u32.to_be_bytes()), "encryption");
    unsupported(patch(60, &1u32.to_be_bytes()), "snapshots");
    unsupported(patch(4, &2u32.to_be_bytes()), "version");
    assert!(patch(24, &1000u64.to_be_bytes()).is_err());
    Ok(())
}

#[test]
fn hostile_headers_are_errors() -> Result<(), ImageError> {
    let b = sample().encode()?;
    let decode = |off: usize, v: &[u8]| {
        let mut c = b.clone();
        c[off..off + v.len()].copy_from_slice(v);
        Header::decode(&c)
    };
    assert!(decode(8, &u64::MAX.to_be_bytes()).is_err());
    assert!(decode(16, &5000u32.to_be_bytes()).is_err());
    assert!(decode(100, &7u32.to_be_bytes()).is_err());
    assert!(decode(100, &(1u32 << 30).to_be_bytes()).is_err());
    assert!(decode(20, &40u32.to_be_bytes()).is_err());
    // An extension claiming more bytes than exist.
    assert!(decode(108, &u32::MAX.to_be_bytes()).is_err());
    assert!(Header::decode(&b[..50]).is_err());
    assert!(Header::decode(&b[..103]).is_err());
    Ok(())
}

proptest! {
    #[test]
    fn decode_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if bytes.len() >= 8 {
            bytes[0..4].copy_from_slice(&MAGIC.to_be_bytes());
            bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        }
        if let Ok(h) = Header::decode(&bytes) {
            let _ = h.check_supported();
        }
    }
}
