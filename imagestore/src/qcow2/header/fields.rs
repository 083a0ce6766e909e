//! The byte layout of a qcow2 header: the one place that knows where each
//! field sits and how the extensions are chained. It decodes without judging,
//! with a bounds check on every read; [`super::Header::decode`] (opening an
//! overlay) and [`crate::format::probe`] (recognising an image for import)
//! each apply their own rules to what it returns, since the overlay engine
//! accepts far less than import does.

use super::{EXT_END, MAGIC};

/// Length of the version 2 header: the fields every version has.
pub const V2_LEN: usize = 72;
/// Length of the version 3 header up to and including `header_length`.
pub const V3_LEN: usize = 104;

/// The fixed fields of a qcow2 header, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    /// Bytes 72..104, read when the version is 3 and the bytes are there.
    pub v3: Option<V3Fields>,
}

/// The fields version 3 added after the version 2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V3Fields {
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
}

impl Fields {
    /// Decodes the fixed fields; `None` unless `h` starts with the qcow2
    /// magic and holds the 72 bytes every version has.
    pub fn read(h: &[u8]) -> Option<Self> {
        if h.len() < V2_LEN || be32(h, 0) != Some(MAGIC) {
            return None;
        }
        let version = be32(h, 4)?;
        Some(Self {
            version,
            backing_file_offset: be64(h, 8)?,
            backing_file_size: be32(h, 16)?,
            cluster_bits: be32(h, 20)?,
            size: be64(h, 24)?,
            crypt_method: be32(h, 32)?,
            l1_size: be32(h, 36)?,
            l1_table_offset: be64(h, 40)?,
            refcount_table_offset: be64(h, 48)?,
            refcount_table_clusters: be32(h, 56)?,
            nb_snapshots: be32(h, 60)?,
            v3: if version == 3 {
                V3Fields::read(h)
            } else {
                None
            },
        })
    }
}

impl V3Fields {
    fn read(h: &[u8]) -> Option<Self> {
        if h.len() < V3_LEN {
            return None;
        }
        Some(Self {
            incompatible_features: be64(h, 72)?,
            compatible_features: be64(h, 80)?,
            autoclear_features: be64(h, 88)?,
            refcount_order: be32(h, 96)?,
            header_length: be32(h, 100)?,
        })
    }
}

/// Why the backing file name is not inside the bytes at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOutside {
    /// The offset does not fit in memory.
    Offset,
    /// The name would end at byte `end`, past the bytes at hand.
    Past { end: usize },
}

/// The `len` bytes of the backing file name at `offset`.
pub fn backing_name(h: &[u8], offset: u64, len: u32) -> Result<&[u8], NameOutside> {
    let start = usize::try_from(offset).map_err(|_| NameOutside::Offset)?;
    let end = start.saturating_add(len as usize);
    h.get(start..end).ok_or(NameOutside::Past { end })
}

/// One header extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// The byte it starts at.
    pub at: usize,
    pub kind: u32,
    pub data: &'a [u8],
}

/// Walks the header extensions that follow the fixed header (from byte
/// `header_length`) up to the backing file name or the end of `h`, whichever
/// comes first. Each is type, length and data padded to 8 bytes; type 0 ends
/// the list, and so does too little room for another type and length. An
/// extension that runs past the limit yields `Err` with the byte it starts at
/// and ends the walk.
pub fn extensions(h: &[u8], header_length: usize, backing_file_offset: u64) -> Extensions<'_> {
    let limit = match usize::try_from(backing_file_offset) {
        Ok(off) if off != 0 => off.min(h.len()),
        _ => h.len(),
    };
    Extensions {
        h,
        pos: header_length,
        limit,
        done: false,
    }
}

/// The iterator [`extensions`] returns.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    h: &'a [u8],
    pos: usize,
    limit: usize,
    done: bool,
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let pos = self.pos;
        if self.done || pos.saturating_add(8) > self.limit {
            return None;
        }
        let (Some(kind), Some(len)) = (be32(self.h, pos), be32(self.h, pos + 4)) else {
            self.done = true;
            return None;
        };
        if kind == EXT_END {
            self.done = true;
            return None;
        }
        let data = pos + 8;
        let end = match data.checked_add(len as usize) {
            Some(end) if end <= self.limit => end,
            _ => {
                self.done = true;
                return Some(Err(pos));
            }
        };
        self.pos = end.div_ceil(8) * 8;
        Some(Ok(Extension {
            at: pos,
            kind,
            data: &self.h[data..end],
        }))
    }
}

pub fn be32(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

pub fn be64(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
