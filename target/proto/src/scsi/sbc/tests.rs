//! Block command decoding: ranges, protection bits, WRITE SAME, COMPARE AND
//! WRITE, atomic writes, UNMAP, capacity.

use super::*;

const GEO: Geometry = Geometry {
    block_size: 512,
    num_blocks: 100,
    read_only: false,
    thin: true,
    max_transfer_blocks: 0,
};
const L: Limits = Limits::DEFAULT;

fn sense(r: &ScsiResult) -> Option<(u8, u8, u8)> {
    r.sense.as_ref().map(|s| (s[2] & 0x0F, s[12], s[13]))
}

fn dec(geo: &Geometry, cdb: &[u8], data: &[u8]) -> Result<Option<BlockOp>, ScsiResult> {
    decode(geo, &L, cdb, &Bytes::copy_from_slice(data))
}

#[test]
fn read6_zero_means_256_and_out_of_range() {
    let cdb = [0x08, 0, 0, 0, 0, 0];
    let err = dec(&GEO, &cdb, &[]).err();
    assert_eq!(err.as_ref().and_then(sense), Some((5, 0x21, 0)));
    let big = Geometry {
        num_blocks: 1000,
        ..GEO
    };
    assert_eq!(
        dec(&big, &cdb, &[]).ok().flatten(),
        Some(BlockOp::Read {
            offset: 0,
            len: 256 * 512
        })
    );
}

#[test]
fn write10_fua_short_data_protect_bits() {
    let cdb = [0x2A, 0x08, 0, 0, 0, 2, 0, 0, 1, 0];
    let data = Bytes::from(vec![1u8; 1024]);
    let op = decode(&GEO, &L, &cdb, &data).ok().flatten();
    assert_eq!(
        op,
        Some(BlockOp::Write {
            offset: 1024,
            data: data.slice(..512),
            fua: true
        })
    );
    let short = dec(&GEO, &cdb, &[0u8; 100]).ok().flatten();
    assert!(matches!(short, Some(BlockOp::Write { ref data, .. }) if data.len() == 100));
    assert_eq!(dec(&GEO, &cdb, &[]).ok().flatten(), Some(BlockOp::Nothing));
    let ro = Geometry {
        read_only: true,
        ..GEO
    };
    assert_eq!(
        dec(&ro, &cdb, &[0; 512]).err().as_ref().and_then(sense),
        Some((7, 0x27, 0))
    );
    let prot = [0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(
        dec(&GEO, &prot, &[]).err().as_ref().and_then(sense),
        Some((5, 0x24, 0))
    );
}

#[test]
fn zero_blocks_and_lba_limits() {
    assert_eq!(
        dec(&GEO, &[0x28, 0, 0, 0, 0, 100, 0, 0, 0, 0], &[])
            .ok()
            .flatten(),
        Some(BlockOp::Nothing)
    );
    assert!(dec(&GEO, &[0x28, 0, 0, 0, 0, 101, 0, 0, 0, 0], &[]).is_err());
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    cdb[13] = 1;
    assert!(dec(&GEO, &cdb, &[]).is_err());
}

#[test]
fn verify_bytchk() {
    let v0 = dec(&GEO, &[0x2F, 0, 0, 0, 0, 1, 0, 0, 2, 0], &[])
        .ok()
        .flatten();
    assert_eq!(
        v0,
        Some(BlockOp::Verify {
            offset: 512,
            len: 1024,
            compare: None
        })
    );
    let v1 = dec(&GEO, &[0x2F, 2, 0, 0, 0, 1, 0, 0, 2, 0], &[7; 1024])
        .ok()
        .flatten();
    assert!(matches!(v1, Some(BlockOp::Verify { compare: Some(ref c), .. }) if c.len() == 1024));
    assert!(dec(&GEO, &[0x2F, 4, 0, 0, 0, 1, 0, 0, 2, 0], &[]).is_err());
    let v3 = dec(&GEO, &[0x2F, 6, 0, 0, 0, 1, 0, 0, 2, 0], &[7; 512])
        .ok()
        .flatten();
    assert!(matches!(v3, Some(BlockOp::Verify { compare: Some(ref c), .. }) if c.len() == 1024));
}

#[test]
fn write_same_rules() {
    let mut ws = [0u8; 16];
    ws[0] = 0x93;
    ws[13] = 4;
    let ok = dec(&GEO, &ws, &[1; 512]).ok().flatten();
    assert!(matches!(ok, Some(BlockOp::WriteSame { len: 2048, .. })));
    assert!(dec(&GEO, &ws, &[1; 1024]).is_err());
    assert!(dec(&GEO, &ws, &[1; 256]).is_err());
    ws[1] = 0x10; // ANCHOR
    assert!(dec(&GEO, &ws, &[1; 512]).is_err());
    ws[1] = 0x09; // UNMAP + NDOB
    let nd = dec(&GEO, &ws, &[]).ok().flatten();
    assert!(matches!(
        nd,
        Some(BlockOp::WriteSame {
            block: None,
            unmap: true,
            ..
        })
    ));
    ws[1] = 0;
    ws[13] = 0; // to the end
    ws[9] = 90;
    let end = dec(&GEO, &ws, &[0; 512]).ok().flatten();
    assert!(matches!(
        end,
        Some(BlockOp::WriteSame {
            offset: 46080,
            len: 5120,
            ..
        })
    ));
}

#[test]
fn compare_and_write_checks() {
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[13] = 1;
    let ok = dec(&GEO, &caw, &[0; 1024]).ok().flatten();
    assert!(matches!(ok, Some(BlockOp::CompareAndWrite { .. })));
    assert!(dec(&GEO, &caw, &[0; 512]).is_err());
    assert!(dec(&GEO, &caw, &[0; 1536]).is_err());
    caw[9] = 100;
    assert_eq!(
        dec(&GEO, &caw, &[0; 1024]).err().as_ref().and_then(sense),
        Some((5, 0x21, 0))
    );
}

#[test]
fn write_atomic16_checks() {
    let cdb = |lba: u64, blocks: u16, b1: u8| {
        let mut c = [0u8; 16];
        c[0] = 0x9C;
        c[1] = b1;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[12..14].copy_from_slice(&blocks.to_be_bytes());
        c
    };
    let ok = dec(&GEO, &cdb(98, 2, 0x08), &[3; 1024]).ok().flatten();
    assert!(matches!(
        ok,
        Some(BlockOp::AtomicWrite {
            offset: 50176,
            fua: true,
            ref data
        }) if data.len() == 1024
    ));
    assert_eq!(
        dec(&GEO, &cdb(0, 0, 0), &[]).ok().flatten(),
        Some(BlockOp::Nothing)
    );
    for (lba, n) in [(99, 2), (101, 0), (1 << 63, 1), (u64::MAX, 1)] {
        let r = dec(&GEO, &cdb(lba, n, 0), &[0; 1024]).err();
        assert_eq!(r.as_ref().and_then(sense), Some((5, 0x21, 0)));
    }
    let prot = dec(&GEO, &cdb(0, 1, 0x20), &[0; 512]).err();
    assert_eq!(prot.as_ref().and_then(sense), Some((5, 0x24, 0)));
    // Short Data-Out is refused, not written in part.
    assert!(dec(&GEO, &cdb(0, 2, 0), &[0; 600]).is_err());
    let mut boundary = cdb(0, 1, 0);
    boundary[11] = 1;
    assert!(dec(&GEO, &boundary, &[0; 512]).is_err());
    let strict = Limits {
        atomic_alignment: 4,
        atomic_granularity: 2,
        max_atomic_transfer_blocks: 8,
        ..L
    };
    let d = |c: &[u8], n: usize| decode(&GEO, &strict, c, &Bytes::from(vec![0u8; n]));
    assert!(d(&cdb(4, 2, 0), 1024).is_ok());
    assert!(d(&cdb(1, 2, 0), 1024).is_err());
    assert!(d(&cdb(4, 1, 0), 512).is_err());
    assert!(d(&cdb(8, 10, 0), 5120).is_err());
    let ro = Geometry {
        read_only: true,
        ..GEO
    };
    let r = dec(&ro, &cdb(0, 1, 0), &[0; 512]).err();
    assert_eq!(r.as_ref().and_then(sense), Some((7, 0x27, 0)));
}

#[test]
fn unmap_and_sync_cache() {
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&5u64.to_be_bytes());
    list.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0]);
    let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let op = dec(&GEO, &cdb, &list).ok().flatten();
    assert_eq!(op, Some(BlockOp::Discard(vec![(2560, 1024)])));
    list[8..16].copy_from_slice(&99u64.to_be_bytes());
    assert!(dec(&GEO, &cdb, &list).is_err());
    let short = [0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0];
    assert!(dec(&GEO, &short, &[0u8; 4]).is_err());
    let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(dec(&GEO, &sync, &[]).ok().flatten(), Some(BlockOp::Flush));
}

#[test]
fn capacity_and_lba_status() {
    assert_eq!(&read_capacity10(&GEO)[..], &[0, 0, 0, 99, 0, 0, 2, 0]);
    let huge = Geometry {
        num_blocks: 1 << 40,
        ..GEO
    };
    assert_eq!(&read_capacity10(&huge)[..4], &[0xFF; 4]);
    assert_eq!(read_capacity16(&GEO)[14], 0xC0);
    let r = lba_status(&[(3, 2, false), (5, 95, true)], 24);
    assert_eq!(r.data_in.len(), 24);
    assert_eq!(&r.data_in[0..4], &[0, 0, 0, 20]);
    assert_eq!(r.data_in[8 + 7], 3);
    let mut gls = [0u8; 16];
    gls[0] = 0x9E;
    gls[1] = 0x12;
    gls[9] = 100;
    assert!(dec(&GEO, &gls, &[]).is_err());
}
