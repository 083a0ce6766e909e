//! L1 and L2 table entries: what a guest cluster maps to.

use super::{CLUSTER_SIZE, L2_ENTRIES};

/// Host offset bits 9..=55 of L1 and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount of the pointed-to cluster is exactly 1 (always true without snapshots).
pub const COPIED: u64 = 1 << 63;
pub const COMPRESSED: u64 = 1 << 62;
/// v3: the cluster reads as zeros.
pub const ZERO: u64 = 1;
/// L1 bits that must be zero: 0..=8 and 56..=62.
const L1_RESERVED: u64 = !(OFFSET_MASK | COPIED);
/// Standard L2 bits that must be zero: 1..=8 and 56..=61.
const L2_RESERVED: u64 = !(OFFSET_MASK | COPIED | COMPRESSED | ZERO);

/// Where a guest cluster's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not in the overlay: read the backing image.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster qemu may leave behind.
    Zero { host: Option<u64> },
    /// Data at this host byte offset.
    Data(u64),
}

impl Mapping {
    /// The host cluster this entry holds a reference to.
    pub fn host(self) -> Option<u64> {
        match self {
            Mapping::Data(h) | Mapping::Zero { host: Some(h) } => Some(h),
            _ => None,
        }
    }

    /// The raw L2 entry for this mapping (we always hold refcount 1).
    pub fn encode(self) -> u64 {
        match self {
            Mapping::Unallocated => 0,
            Mapping::Zero { host: None } => ZERO,
            Mapping::Zero { host: Some(h) } => h | COPIED | ZERO,
            Mapping::Data(h) => h | COPIED,
        }
    }
}

/// Decodes a raw L2 entry; `Err` names what makes it unusable.
pub fn decode_l2(raw: u64) -> Result<Mapping, &'static str> {
    if raw & COMPRESSED != 0 {
        return Err("compressed cluster");
    }
    if raw & L2_RESERVED != 0 {
        return Err("reserved bits set in an L2 entry");
    }
    let host = raw & OFFSET_MASK;
    Ok(match (raw & ZERO != 0, host) {
        (true, 0) => Mapping::Zero { host: None },
        (true, h) => Mapping::Zero { host: Some(h) },
        (false, 0) => Mapping::Unallocated,
        (false, h) => Mapping::Data(h),
    })
}

/// Decodes a raw L1 entry to the L2 table's host offset (None: no table).
pub fn decode_l1(raw: u64) -> Result<Option<u64>, &'static str> {
    if raw & L1_RESERVED != 0 {
        return Err("reserved bits set in an L1 entry");
    }
    Ok(match raw & OFFSET_MASK {
        0 => None,
        h => Some(h),
    })
}

pub fn encode_l1(table: Option<u64>) -> u64 {
    table.map_or(0, |h| h | COPIED)
}

/// Big-endian entries from table bytes.
pub fn decode_table(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Table bytes from big-endian entries.
pub fn encode_table(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// An empty L2 table.
pub fn empty_l2() -> Box<[u64]> {
    vec![0u64; L2_ENTRIES].into_boxed_slice()
}

/// (L1 index, L2 index) of a guest cluster number.
pub fn split(guest_cluster: u64) -> (usize, usize) {
    let per = L2_ENTRIES as u64;
    (
        (guest_cluster / per) as usize,
        (guest_cluster % per) as usize,
    )
}

/// Host offset is cluster aligned (the mask already enforces 512 alignment).
pub fn aligned(host: u64) -> bool {
    host.is_multiple_of(CLUSTER_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_entries_round_trip() {
        for m in [
            Mapping::Unallocated,
            Mapping::Zero { host: None },
            Mapping::Zero {
                host: Some(5 * CLUSTER_SIZE),
            },
            Mapping::Data(7 * CLUSTER_SIZE),
            Mapping::Data(OFFSET_MASK & !(CLUSTER_SIZE - 1)),
        ] {
            assert_eq!(decode_l2(m.encode()), Ok(m));
        }
        assert_eq!(Mapping::Data(0x30000).encode(), 0x8000_0000_0003_0000);
        assert_eq!(Mapping::Zero { host: None }.encode(), 1);
        // qemu's "unallocated, copied" still means unallocated.
        assert_eq!(decode_l2(COPIED), Ok(Mapping::Unallocated));
    }

    #[test]
    fn bad_l2_entries() {
        assert!(decode_l2(COMPRESSED | 0x10000).is_err());
        assert!(decode_l2(0x10000 | 2).is_err());
        assert!(decode_l2(1 << 57).is_err());
    }

    #[test]
    fn l1_entries() {
        assert_eq!(decode_l1(encode_l1(Some(0x40000))), Ok(Some(0x40000)));
        assert_eq!(decode_l1(encode_l1(None)), Ok(None));
        assert!(decode_l1(1).is_err());
        assert!(decode_l1(1 << 62).is_err());
    }

    #[test]
    fn tables_round_trip() {
        let t: Vec<u64> = (0..16).map(|i| (i * 0x1_0000) | COPIED).collect();
        let b = encode_table(&t);
        assert_eq!(b.len(), 128);
        assert_eq!(&b[8..16], &[0x80, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(decode_table(&b), t);
        assert_eq!(split(8191), (0, 8191));
        assert_eq!(split(8192 * 3 + 5), (3, 5));
    }
}
