//! Refcount table and refcount blocks (16-bit refcounts), held in memory, and
//! the choice of clusters for a reservation batch.

use super::{CLUSTER_SIZE, RB_ENTRIES};
use std::collections::BTreeMap;

/// One positional write of metadata bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The in-memory copy of every refcount block. Sparse: a small overlay has
/// one block in a table with room for thousands, and a server holds
/// hundreds of overlays open.
#[derive(Debug)]
pub struct Refcounts {
    /// Refcount table entries that point to a block: host offsets by block
    /// index (every other entry is 0).
    pub table: BTreeMap<usize, u64>,
    /// Entries the table on disk has room for.
    pub table_len: usize,
    /// Contents of the block each table entry points to.
    pub blocks: BTreeMap<usize, Box<[u16]>>,
    /// Byte offset of the refcount table in the file.
    pub table_offset: u64,
    /// Clusters with a refcount above 0 (the file's used space).
    pub used: u64,
}

/// What [`Refcounts::reserve`] decided: clusters to hand out, and the refcount
/// writes that must be durable before any of them is referenced.
#[derive(Debug, Default)]
pub struct Reservation {
    /// Host cluster numbers now at refcount 1, free for data or L2 tables.
    pub clusters: Vec<u64>,
    /// Refcount block bytes to write (existing blocks, and new blocks in full).
    pub block_writes: Vec<Write>,
    /// Refcount table entries for new blocks: written only after the new
    /// blocks are durable, so the table never points to an unwritten block.
    pub table_writes: Vec<Write>,
    /// Highest host cluster number touched, plus one (the file must cover it).
    pub end_cluster: u64,
    /// Refcount blocks this reservation created (each in its own cluster).
    pub new_blocks: Vec<usize>,
}

impl Refcounts {
    pub fn get(&self, cluster: u64) -> u16 {
        let (b, i) = split(cluster);
        self.blocks.get(&b).map_or(0, |blk| blk[i])
    }

    /// One past the highest cluster in use (refcount above 0).
    pub fn end_of_used(&self) -> u64 {
        for (&b, blk) in self.blocks.iter().rev() {
            if let Some(i) = blk.iter().rposition(|&r| r != 0) {
                return (b * RB_ENTRIES + i) as u64 + 1;
            }
        }
        0
    }

    /// Host clusters the table can describe.
    pub fn capacity(&self) -> u64 {
        self.table_len as u64 * RB_ENTRIES as u64
    }

    /// Marks up to `want` free clusters (refcount 0), searching from `*hint`,
    /// as used (refcount 1), creating refcount blocks where a range has none.
    /// A new block lives in the first cluster of the range it describes and
    /// counts itself. Stops early only when the refcount table is full.
    pub fn reserve(&mut self, want: usize, hint: &mut u64) -> Reservation {
        let mut r = Reservation::default();
        let mut changed: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        let mut new_blocks = Vec::new();
        let mut c = *hint;
        while r.clusters.len() < want && c < self.capacity() {
            let (b, i) = split(c);
            match self.blocks.entry(b) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    let mut blk = vec![0u16; RB_ENTRIES].into_boxed_slice();
                    blk[i] = 1;
                    v.insert(blk);
                    self.table.insert(b, c * CLUSTER_SIZE);
                    self.used += 1;
                    new_blocks.push(b);
                    r.end_cluster = r.end_cluster.max(c + 1);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let blk = o.get_mut();
                    if blk[i] == 0 {
                        blk[i] = 1;
                        self.used += 1;
                        r.clusters.push(c);
                        r.end_cluster = r.end_cluster.max(c + 1);
                        let e = changed.entry(b).or_insert((i, i));
                        e.0 = e.0.min(i);
                        e.1 = e.1.max(i);
                    }
                }
            }
            c += 1;
        }
        *hint = c;
        for &b in &new_blocks {
            changed.remove(&b);
            r.block_writes.push(self.block_range(b, 0, RB_ENTRIES - 1));
            r.table_writes.push(Write {
                offset: self.table_offset + b as u64 * 8,
                data: self.entry(b).to_be_bytes().to_vec(),
            });
        }
        for (b, (lo, hi)) in changed {
            r.block_writes.push(self.block_range(b, lo, hi));
        }
        r.new_blocks = new_blocks;
        r
    }

    /// Takes back a reservation whose writes failed, in memory only: its
    /// clusters are free again and its new blocks forgotten (whatever of
    /// it reached the file only leaks clusters until the next open).
    pub fn unreserve(&mut self, r: &Reservation) {
        for &c in &r.clusters {
            let (b, i) = split(c);
            if let Some(blk) = self.blocks.get_mut(&b) {
                if blk[i] != 0 {
                    blk[i] = 0;
                    self.used -= 1;
                }
            }
        }
        for b in &r.new_blocks {
            if let Some(blk) = self.blocks.remove(b) {
                self.used -= blk.iter().filter(|&&v| v != 0).count() as u64;
            }
            self.table.remove(b);
        }
    }

    /// Sets the refcounts of `clusters` (all in existing blocks) to zero and
    /// returns the writes that record it.
    pub fn release(&mut self, clusters: &[u64]) -> Vec<Write> {
        let mut changed: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for &c in clusters {
            let (b, i) = split(c);
            if let Some(blk) = self.blocks.get_mut(&b) {
                if blk[i] != 0 {
                    self.used -= 1;
                }
                blk[i] = 0;
                let e = changed.entry(b).or_insert((i, i));
                e.0 = e.0.min(i);
                e.1 = e.1.max(i);
            }
        }
        changed
            .into_iter()
            .map(|(b, (lo, hi))| self.block_range(b, lo, hi))
            .collect()
    }

    /// The bytes of entries `lo..=hi` of block `b`, at their file offset.
    fn block_range(&self, b: usize, lo: usize, hi: usize) -> Write {
        let data = self
            .blocks
            .get(&b)
            .map(|blk| blk[lo..=hi].iter().flat_map(|v| v.to_be_bytes()).collect())
            .unwrap_or_default();
        Write {
            offset: self.entry(b) + lo as u64 * 2,
            data,
        }
    }

    /// Refcount table entry `b`: the block's host offset, or 0.
    pub fn entry(&self, b: usize) -> u64 {
        self.table.get(&b).copied().unwrap_or(0)
    }
}

fn split(cluster: u64) -> (usize, usize) {
    let per = RB_ENTRIES as u64;
    ((cluster / per) as usize, (cluster % per) as usize)
}

/// Refcount block bytes to entries.
pub fn decode_block(bytes: &[u8]) -> Box<[u16]> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Refcounts {
        // Like a created image: clusters 0..4 used, block 0 at cluster 3.
        let mut blk = vec![0u16; RB_ENTRIES].into_boxed_slice();
        blk[..4].fill(1);
        Refcounts {
            table: BTreeMap::from([(0, 3 * CLUSTER_SIZE)]),
            table_len: 8192,
            blocks: BTreeMap::from([(0, blk)]),
            table_offset: 2 * CLUSTER_SIZE,
            used: 4,
        }
    }

    #[test]
    fn reserve_skips_used_and_writes_one_range() {
        let mut rc = fresh();
        let mut hint = 0;
        let r = rc.reserve(3, &mut hint);
        assert_eq!(r.clusters, vec![4, 5, 6]);
        assert_eq!(r.end_cluster, 7);
        assert_eq!(hint, 7);
        assert!(r.table_writes.is_empty());
        assert_eq!(
            r.block_writes,
            vec![Write {
                offset: 3 * CLUSTER_SIZE + 8,
                data: vec![0, 1, 0, 1, 0, 1]
            }]
        );
        assert_eq!(rc.get(5), 1);
        assert_eq!(rc.end_of_used(), 7);
        // Released clusters are found again from a lowered hint.
        let w = rc.release(&[5]);
        assert_eq!(
            w,
            vec![Write {
                offset: 3 * CLUSTER_SIZE + 10,
                data: vec![0, 0]
            }]
        );
        let mut hint = 0;
        assert_eq!(rc.reserve(2, &mut hint).clusters, vec![5, 7]);
    }

    #[test]
    fn reserve_creates_self_describing_blocks() {
        let mut rc = fresh();
        let mut hint = RB_ENTRIES as u64 - 1;
        let r = rc.reserve(2, &mut hint);
        let first = RB_ENTRIES as u64;
        // The last cluster of range 0, then (after the new block at `first`) first + 1.
        assert_eq!(r.clusters, vec![first - 1, first + 1]);
        assert_eq!(rc.entry(1), first * CLUSTER_SIZE);
        assert_eq!(rc.get(first), 1, "the block counts itself");
        assert_eq!(
            r.table_writes,
            vec![Write {
                offset: 2 * CLUSTER_SIZE + 8,
                data: (first * CLUSTER_SIZE).to_be_bytes().to_vec()
            }]
        );
        let full = r
            .block_writes
            .iter()
            .find(|w| w.offset == first * CLUSTER_SIZE)
            .expect("new block written whole");
        assert_eq!(full.data.len(), CLUSTER_SIZE as usize);
        assert_eq!(&full.data[..6], &[0, 1, 0, 1, 0, 0]);
    }

    #[test]
    fn unreserve_restores_the_state_before() {
        let mut rc = fresh();
        let mut hint = RB_ENTRIES as u64 - 2;
        let r = rc.reserve(4, &mut hint);
        assert_eq!(r.new_blocks, vec![1]);
        assert_eq!(rc.used, 4 + 5);
        rc.unreserve(&r);
        assert_eq!(rc.used, 4);
        assert_eq!(rc.entry(1), 0);
        assert_eq!(rc.end_of_used(), 4);
        let mut hint = RB_ENTRIES as u64 - 2;
        assert_eq!(rc.reserve(4, &mut hint).clusters, r.clusters);
    }

    #[test]
    fn reserve_stops_at_table_capacity() {
        let mut rc = fresh();
        rc.table_len = 1;
        let mut hint = RB_ENTRIES as u64 - 2;
        let r = rc.reserve(10, &mut hint);
        assert_eq!(r.clusters.len(), 2);
    }
}
