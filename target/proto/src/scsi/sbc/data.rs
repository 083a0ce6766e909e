//! Parameter data the block commands return (READ CAPACITY, GET LBA
//! STATUS) and the byte compare behind MISCOMPARE; decoding is in `sbc`.

use super::{good, Geometry};
use crate::task::ScsiResult;
use bytes::Bytes;

/// READ CAPACITY(10) parameter data; 0xFFFFFFFF when the LUN needs RC16.
pub fn read_capacity10(geo: &Geometry) -> Bytes {
    let last = geo.num_blocks.saturating_sub(1);
    let last = u32::try_from(last).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&last.to_be_bytes());
    d.extend_from_slice(&geo.block_size.to_be_bytes());
    Bytes::from(d)
}

/// READ CAPACITY(16) parameter data (32 bytes), LBPME/LBPRZ when thin.
pub fn read_capacity16(geo: &Geometry) -> Bytes {
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&geo.num_blocks.saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&geo.block_size.to_be_bytes());
    if geo.thin {
        d[14] = 0x80 | 0x40;
    }
    Bytes::from(d)
}

/// GET LBA STATUS parameter data (SBC-3 5.6): `extents` are (lba, blocks,
/// deallocated) runs starting at the requested LBA.
pub fn lba_status(extents: &[(u64, u64, bool)], alloc: u32) -> ScsiResult {
    let mut d = vec![0u8; 8];
    for &(lba, n, dealloc) in extents {
        if d.len() + 16 > alloc as usize && d.len() > 8 {
            break;
        }
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
        d.push(u8::from(dealloc));
        d.extend_from_slice(&[0; 3]);
    }
    let n = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&n.to_be_bytes());
    d.truncate(alloc as usize);
    good(Bytes::from(d), alloc)
}

/// First differing byte, for MISCOMPARE's INFORMATION field.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
