//! The in-memory copy of an overlay's metadata (L1, every L2 table, every
//! refcount block), loading and validating it at open, and tracking which
//! parts still have to reach the file.

use super::header::Header;
use super::l2::{self, Entry, Layout};
use super::refcount::{decode_block, Refcounts};
use super::{ImageError, CLUSTER_SIZE, RB_ENTRIES};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// qemu's own limit on the L1 table (32 MiB of entries).
pub const MAX_L1_ENTRIES: u64 = 4 << 20;
/// Refcount tables above this (8 MiB: 1M blocks, 2 PiB of file) are refused.
const MAX_RT_CLUSTERS: u32 = 128;

/// Changes made in memory and not yet written to the file's tables.
#[derive(Debug, Default)]
pub struct Dirty {
    /// L2 tables allocated since the last commit: written whole, before their
    /// L1 entry.
    pub new_tables: BTreeSet<usize>,
    /// Changed word range (first, last) per existing L2 table.
    pub entries: BTreeMap<usize, (usize, usize)>,
    /// L1 entries pointing to new tables.
    pub l1: BTreeSet<usize>,
    /// Host clusters no longer referenced in memory; their refcount drops
    /// once the table change that dropped the reference is durable.
    pub frees: Vec<u64>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.new_tables.is_empty()
            && self.entries.is_empty()
            && self.l1.is_empty()
            && self.frees.is_empty()
    }
}

#[derive(Debug)]
pub struct Meta {
    pub layout: Layout,
    pub l1_offset: u64,
    /// Host offset of each L2 table.
    pub l1: Vec<Option<u64>>,
    /// Raw words of each L2 table (validated at load or written by us).
    pub l2: Vec<Option<Box<[u64]>>>,
    pub rc: Refcounts,
    /// Reserved host cluster numbers: refcount 1 on disk, referenced by nothing.
    pub pool: VecDeque<u64>,
    /// Where the next reservation starts searching for free clusters.
    pub hint: u64,
    pub dirty: Dirty,
    /// Guest clusters whose first write (allocation) is in flight.
    pub allocating: HashSet<u64>,
    /// Clusters found at load with a refcount but no reference: what a
    /// crash leaves of a reservation batch.
    pub leaked: Vec<u64>,
    /// Where the next write-ahead record goes (see `wal`).
    pub log: LogCursor,
}

/// The write-ahead log's current epoch and its next free slot.
#[derive(Debug, Clone, Copy)]
pub struct LogCursor {
    pub epoch: u64,
    pub slot: u64,
}

impl Default for LogCursor {
    fn default() -> Self {
        // Epoch 0 counts as committed in a fresh log.
        Self { epoch: 1, slot: 0 }
    }
}

impl Meta {
    /// What guest cluster `g` maps to.
    pub fn mapping(&self, g: u64) -> Entry {
        let (t, i) = self.layout.split(g);
        match self.l2.get(t).and_then(|x| x.as_ref()) {
            // Entries were validated at load and only valid ones are stored.
            Some(table) => self.layout.decode(table, i).unwrap_or_default(),
            None => Entry::default(),
        }
    }

    pub fn has_table(&self, g: u64) -> bool {
        let (t, _) = self.layout.split(g);
        matches!(self.l2.get(t), Some(Some(_)))
    }

    /// Makes host cluster `host` the (empty) L2 table covering guest cluster `g`.
    pub fn install_table(&mut self, g: u64, host: u64) {
        let (t, _) = self.layout.split(g);
        self.l2[t] = Some(l2::empty_l2());
        self.l1[t] = Some(host * CLUSTER_SIZE);
        self.dirty.new_tables.insert(t);
        self.dirty.l1.insert(t);
    }

    /// Sets guest cluster `g`'s entry (its table exists); a host cluster it
    /// referenced before is queued for freeing.
    pub fn set(&mut self, g: u64, e: Entry) {
        let layout = self.layout;
        let (t, i) = layout.split(g);
        let Some(Some(table)) = self.l2.get_mut(t) else {
            return;
        };
        let old = layout.decode(table, i).unwrap_or_default();
        layout.store(table, i, e);
        if let Some(h) = old.host {
            if Some(h) != e.host {
                self.dirty.frees.push(h / CLUSTER_SIZE);
            }
        }
        if !self.dirty.new_tables.contains(&t) {
            let (lo, hi) = (i * layout.words(), (i + 1) * layout.words() - 1);
            let r = self.dirty.entries.entry(t).or_insert((lo, hi));
            r.0 = r.0.min(lo);
            r.1 = r.1.max(hi);
        }
    }

    /// Loads and checks all metadata. Blocking.
    pub fn load(file: &File, h: &Header, file_len: u64) -> Result<Self, ImageError> {
        let corrupt = |what: String| ImageError::Corrupt(what);
        let within = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= file_len);
        let layout = Layout {
            extended: h.extended_l2(),
        };
        let per_table = layout.entries() as u64 * CLUSTER_SIZE;
        let need = h.size.div_ceil(per_table);
        if need > MAX_L1_ENTRIES || u64::from(h.l1_size) < need {
            return Err(corrupt(format!(
                "L1 table of {} entries for a {}-byte disk",
                h.l1_size, h.size
            )));
        }
        let l1_bytes = u64::from(h.l1_size) * 8;
        if !l2::aligned(h.l1_table_offset) || !within(h.l1_table_offset, l1_bytes) {
            return Err(corrupt("L1 table outside the file".into()));
        }
        let rt_bytes = u64::from(h.refcount_table_clusters) * CLUSTER_SIZE;
        if h.refcount_table_clusters == 0
            || h.refcount_table_clusters > MAX_RT_CLUSTERS
            || !l2::aligned(h.refcount_table_offset)
            || !within(h.refcount_table_offset, rt_bytes)
        {
            return Err(corrupt("refcount table outside the file".into()));
        }

        // Every cluster something references, to check overlaps and refcounts.
        let mut refs: Vec<u64> = vec![0];
        let clusters_of =
            |off: u64, len: u64| (off / CLUSTER_SIZE)..(off + len).div_ceil(CLUSTER_SIZE);
        refs.extend(clusters_of(h.l1_table_offset, l1_bytes));
        refs.extend(clusters_of(h.refcount_table_offset, rt_bytes));

        let mut raw = vec![0u8; l1_bytes as usize];
        file.read_exact_at(&mut raw, h.l1_table_offset)?;
        let mut l1 = Vec::with_capacity(need as usize);
        for (i, e) in l2::decode_table(&raw).into_iter().enumerate() {
            let t = l2::decode_l1(e).map_err(|m| corrupt(format!("L1[{i}]: {m}")))?;
            if (i as u64) >= need {
                // Entries past the disk's end are ignored (qemu leaves them 0).
                continue;
            }
            if let Some(host) = t {
                if !l2::aligned(host) || !within(host, CLUSTER_SIZE) {
                    return Err(corrupt(format!(
                        "L1[{i}]: L2 table at {host:#x} is outside the file"
                    )));
                }
                refs.push(host / CLUSTER_SIZE);
            }
            l1.push(t);
        }
        // Duplicate tables are caught before reading them, so a hostile L1
        // cannot make us load the same cluster millions of times.
        check_unique(&mut refs.clone())?;

        let mut l2_tables = Vec::with_capacity(l1.len());
        let mut buf = vec![0u8; CLUSTER_SIZE as usize];
        let data_limit = file_len.div_ceil(CLUSTER_SIZE) * CLUSTER_SIZE;
        for (t, entry) in l1.iter().enumerate() {
            let Some(host) = entry else {
                l2_tables.push(None);
                continue;
            };
            file.read_exact_at(&mut buf, *host)?;
            let table: Box<[u64]> = l2::decode_table(&buf).into();
            for i in 0..layout.entries() {
                let m = layout.decode(&table, i).map_err(|m| {
                    let what = format!("L2[{t}][{i}]: {m}");
                    if table[i * layout.words()] & l2::COMPRESSED != 0 {
                        ImageError::Unsupported(what)
                    } else {
                        ImageError::Corrupt(what)
                    }
                })?;
                if let Some(h) = m.host {
                    if !l2::aligned(h) || h >= data_limit {
                        return Err(corrupt(format!(
                            "L2[{t}][{i}]: cluster {h:#x} outside the file"
                        )));
                    }
                    refs.push(h / CLUSTER_SIZE);
                }
            }
            l2_tables.push(Some(table));
        }

        let mut raw = vec![0u8; rt_bytes as usize];
        file.read_exact_at(&mut raw, h.refcount_table_offset)?;
        let entries = l2::decode_table(&raw);
        let mut table = std::collections::BTreeMap::new();
        let mut blocks = std::collections::BTreeMap::new();
        for (b, &off) in entries.iter().enumerate() {
            if off == 0 {
                continue;
            }
            if !l2::aligned(off) || !within(off, CLUSTER_SIZE) {
                return Err(corrupt(format!(
                    "refcount block {b} at {off:#x} is outside the file"
                )));
            }
            refs.push(off / CLUSTER_SIZE);
            file.read_exact_at(&mut buf, off)?;
            blocks.insert(b, decode_block(&buf));
            table.insert(b, off);
        }
        let used = blocks
            .values()
            .map(|blk| blk.iter().filter(|&&r| r != 0).count() as u64)
            .sum();
        let rc = Refcounts {
            table,
            table_len: entries.len(),
            blocks,
            table_offset: h.refcount_table_offset,
            used,
        };
        check_unique(&mut refs)?;
        for &c in &refs {
            match rc.get(c) {
                1 => {}
                0 => {
                    return Err(corrupt(format!(
                        "cluster {c} is in use with refcount 0: run `qemu-img check -r all`"
                    )))
                }
                n => {
                    return Err(ImageError::Unsupported(format!(
                        "cluster {c} has refcount {n} (shared clusters)"
                    )))
                }
            }
        }
        // `refs` is sorted and unique now.
        let mut leaked = Vec::new();
        for (&b, blk) in &rc.blocks {
            for (i, &r) in blk.iter().enumerate() {
                let c = (b * RB_ENTRIES + i) as u64;
                if r != 0 && refs.binary_search(&c).is_err() {
                    leaked.push(c);
                }
            }
        }
        Ok(Self {
            layout,
            leaked,
            l1_offset: h.l1_table_offset,
            l1,
            l2: l2_tables,
            rc,
            pool: VecDeque::new(),
            hint: 0,
            dirty: Dirty::default(),
            allocating: HashSet::new(),
            log: LogCursor::default(),
        })
    }
}

/// Fails if any cluster is referenced twice (overlapping metadata or data).
fn check_unique(refs: &mut [u64]) -> Result<(), ImageError> {
    refs.sort_unstable();
    match refs.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(ImageError::Corrupt(format!(
            "cluster {} is referenced twice",
            w[0]
        ))),
        None => Ok(()),
    }
}
