//! L1 and L2 table entries: what a guest cluster maps to, in the standard
//! layout (one 64-bit entry per cluster) or with extended L2 entries (a
//! 64-bit entry plus a 64-bit bitmap: 32 "allocated" bits, low, and 32
//! "reads as zero" bits, high, one per 2 KiB subcluster).

use super::{CLUSTER_SIZE, L2_ENTRIES};

/// Host offset bits 9..=55 of L1 and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount of the pointed-to cluster is exactly 1 (always true without snapshots).
pub const COPIED: u64 = 1 << 63;
pub const COMPRESSED: u64 = 1 << 62;
/// v3 standard layout: the cluster reads as zeros (reserved with extended L2).
pub const ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;
/// L1 bits that must be zero: 0..=8 and 56..=62.
const L1_RESERVED: u64 = !(OFFSET_MASK | COPIED);
/// Standard L2 bits that must be zero: 1..=8 and 56..=61.
const L2_RESERVED: u64 = !(OFFSET_MASK | COPIED | COMPRESSED | ZERO);
/// With extended L2 entries bit 0 is reserved too.
const L2_EXT_RESERVED: u64 = !(OFFSET_MASK | COPIED | COMPRESSED);

/// Where a guest cluster's data lives (standard layout).
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

/// Decodes a raw standard L2 entry; `Err` names what makes it unusable.
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

/// A guest cluster's entry in either layout, per subcluster. The standard
/// layout is the one-subcluster case (bit 0 of each mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    /// The host cluster this entry holds a reference to.
    pub host: Option<u64>,
    /// Subclusters whose data is in the host cluster.
    pub alloc: u32,
    /// Subclusters that read as zeros (never also allocated).
    pub zero: u32,
}

/// Where one subcluster's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// At this host byte offset (of the subcluster's start).
    Host(u64),
    Zero,
    /// Not in the overlay: the backing image.
    Unallocated,
}

impl Entry {
    /// Where subcluster `s` (of `sub_size` bytes) reads from.
    pub fn sub(self, s: u32, sub_size: u64) -> Sub {
        match self.host {
            Some(h) if self.alloc & (1 << s) != 0 => Sub::Host(h + u64::from(s) * sub_size),
            _ if self.zero & (1 << s) != 0 => Sub::Zero,
            _ => Sub::Unallocated,
        }
    }
}

/// The L2 layout of an image: standard or extended entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub extended: bool,
}

impl Layout {
    pub fn subclusters(self) -> u32 {
        if self.extended {
            SUBCLUSTERS
        } else {
            1
        }
    }

    /// Bytes per subcluster (the whole cluster in the standard layout).
    pub fn sub_size(self) -> u64 {
        CLUSTER_SIZE / u64::from(self.subclusters())
    }

    /// The mask with every subcluster's bit set.
    pub fn full(self) -> u32 {
        if self.extended {
            u32::MAX
        } else {
            1
        }
    }

    /// 64-bit words per entry.
    pub fn words(self) -> usize {
        if self.extended {
            2
        } else {
            1
        }
    }

    /// Entries per L2 table (one cluster).
    pub fn entries(self) -> usize {
        L2_ENTRIES / self.words()
    }

    /// (L1 index, L2 index) of a guest cluster number.
    pub fn split(self, guest_cluster: u64) -> (usize, usize) {
        let per = self.entries() as u64;
        (
            (guest_cluster / per) as usize,
            (guest_cluster % per) as usize,
        )
    }

    /// Subclusters touched by bytes `lo..hi` (offsets within a cluster, lo < hi).
    pub fn mask(self, lo: u64, hi: u64) -> u32 {
        let s = self.sub_size();
        let (a, b) = ((lo / s) as u32, (hi.div_ceil(s)) as u32);
        let bits = b - a;
        let ones = if bits >= 32 {
            u32::MAX
        } else {
            (1u32 << bits) - 1
        };
        ones << a
    }

    /// Subclusters wholly inside bytes `lo..hi` of a cluster.
    pub fn covered(self, lo: u64, hi: u64) -> u32 {
        let s = self.sub_size();
        let (a, b) = (lo.div_ceil(s), hi / s);
        if a >= b {
            0
        } else {
            self.mask(a * s, b * s)
        }
    }

    /// Entry `i` of a table of raw words; `Err` names what makes it unusable.
    pub fn decode(self, table: &[u64], i: usize) -> Result<Entry, &'static str> {
        if !self.extended {
            let m = decode_l2(table[i])?;
            return Ok(match m {
                Mapping::Unallocated => Entry::default(),
                Mapping::Zero { host } => Entry {
                    host,
                    alloc: 0,
                    zero: 1,
                },
                Mapping::Data(h) => Entry {
                    host: Some(h),
                    alloc: 1,
                    zero: 0,
                },
            });
        }
        let (raw, bitmap) = (table[2 * i], table[2 * i + 1]);
        if raw & COMPRESSED != 0 {
            return Err("compressed cluster");
        }
        if raw & L2_EXT_RESERVED != 0 {
            return Err("reserved bits set in an L2 entry");
        }
        let host = match raw & OFFSET_MASK {
            0 => None,
            h => Some(h),
        };
        let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
        if alloc & zero != 0 {
            return Err("subcluster both allocated and zero");
        }
        if host.is_none() && alloc != 0 {
            return Err("allocated subclusters without a host cluster");
        }
        Ok(Entry { host, alloc, zero })
    }

    /// Stores entry `i` into a table of raw words. In the standard layout an
    /// entry is data (bit 0 allocated), zero or unallocated.
    pub fn store(self, table: &mut [u64], i: usize, e: Entry) {
        let raw = e.host.map_or(0, |h| h | COPIED);
        if self.extended {
            table[2 * i] = raw;
            table[2 * i + 1] = u64::from(e.alloc) | u64::from(e.zero) << 32;
            return;
        }
        table[i] = if e.alloc & 1 != 0 {
            raw
        } else if e.zero & 1 != 0 {
            raw | ZERO
        } else {
            // The engine never leaves a host cluster unused in this layout.
            debug_assert!(e.host.is_none(), "standard entry with an unused host");
            0
        };
    }
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

/// Big-endian words from table bytes.
pub fn decode_table(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Table bytes from big-endian words.
pub fn encode_table(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// An empty L2 table (one cluster of words, either layout).
pub fn empty_l2() -> Box<[u64]> {
    vec![0u64; L2_ENTRIES].into_boxed_slice()
}

/// Host offset is cluster aligned (the mask already enforces 512 alignment).
pub fn aligned(host: u64) -> bool {
    host.is_multiple_of(CLUSTER_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Layout = Layout { extended: false };
    const EXT: Layout = Layout { extended: true };

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
            // Through the per-subcluster form and back.
            let mut t = [m.encode()];
            let e = STD.decode(&t, 0).expect("valid");
            t[0] = 0;
            STD.store(&mut t, 0, e);
            assert_eq!(decode_l2(t[0]), Ok(m));
        }
        assert_eq!(Mapping::Data(0x30000).encode(), 0x8000_0000_0003_0000);
        assert_eq!(Mapping::Zero { host: None }.encode(), 1);
        // qemu's "unallocated, copied" still means unallocated.
        assert_eq!(decode_l2(COPIED), Ok(Mapping::Unallocated));
    }

    #[test]
    fn extended_entries_round_trip() {
        let mut t = vec![0u64; 8];
        let e = Entry {
            host: Some(9 * CLUSTER_SIZE),
            alloc: 0x0000_00f0,
            zero: 0x8000_0001,
        };
        EXT.store(&mut t, 1, e);
        assert_eq!(t[2], (9 * CLUSTER_SIZE) | COPIED);
        assert_eq!(t[3], 0x8000_0001_0000_00f0);
        assert_eq!(EXT.decode(&t, 1), Ok(e));
        assert_eq!(EXT.decode(&t, 0), Ok(Entry::default()));
        assert_eq!(e.sub(4, 2048), Sub::Host(9 * CLUSTER_SIZE + 8192));
        assert_eq!(e.sub(0, 2048), Sub::Zero);
        assert_eq!(e.sub(1, 2048), Sub::Unallocated);
        // Invalid: bit 0, both bits of a subcluster, allocated without host.
        assert!(EXT.decode(&[0x10000 | 1, 0], 0).is_err());
        assert!(EXT.decode(&[0x10000, 1 | 1 << 32], 0).is_err());
        assert!(EXT.decode(&[0, 1], 0).is_err());
        assert!(EXT.decode(&[COMPRESSED | 0x10000, 0], 0).is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(EXT.mask(0, CLUSTER_SIZE), u32::MAX);
        assert_eq!(EXT.mask(4096, 8192), 0b1100);
        assert_eq!(EXT.mask(4096 + 512, 8192 + 512), 0b11100);
        assert_eq!(EXT.covered(4096 + 512, 8192 + 512), 0b01000);
        assert_eq!(EXT.covered(512, 1024), 0);
        assert_eq!(EXT.covered(0, CLUSTER_SIZE), u32::MAX);
        assert_eq!(STD.mask(512, 1024), 1);
        assert_eq!(STD.covered(512, CLUSTER_SIZE), 0);
        assert_eq!(STD.covered(0, CLUSTER_SIZE), 1);
        assert_eq!(EXT.entries(), 4096);
        assert_eq!(EXT.split(4096 * 3 + 5), (3, 5));
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
        assert_eq!(STD.split(8191), (0, 8191));
        assert_eq!(STD.split(8192 * 3 + 5), (3, 5));
    }
}
