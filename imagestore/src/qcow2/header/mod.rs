//! qcow2 v3 header: encode for images we create, decode (with bounds checks on
//! every field a hostile file controls) for images we open.

pub mod fields;

use super::{ImageError, CLUSTER_BITS, CLUSTER_SIZE, REFCOUNT_ORDER};
use fields::{backing_name, extensions, Fields, NameOutside, V3_LEN};

pub const MAGIC: u32 = 0x5146_49fb;
/// Fixed v3 header length we write (no compression-type field: zlib default).
pub const HEADER_LEN: u32 = 104;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Byte offset of the autoclear feature field (cleared on read-write open).
pub const AUTOCLEAR_OFFSET: u64 = 88;

/// qemu's limits on cluster_bits (block/qcow2.h MIN/MAX_CLUSTER_BITS).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;

/// qemu refuses longer backing file names.
pub const MAX_BACKING_NAME: usize = 1023;

/// The header fields the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub size: u64,
    pub cluster_bits: u32,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// An external data file extension was present.
    pub data_file: bool,
}

impl Header {
    /// A fresh header for [`super::create`]: tables at the given offsets.
    pub fn new(size: u64, l1_size: u32, l1_offset: u64, rt_offset: u64, rt_clusters: u32) -> Self {
        Self {
            version: 3,
            size,
            cluster_bits: CLUSTER_BITS,
            crypt_method: 0,
            l1_size,
            l1_table_offset: l1_offset,
            refcount_table_offset: rt_offset,
            refcount_table_clusters: rt_clusters,
            nb_snapshots: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: REFCOUNT_ORDER,
            header_length: HEADER_LEN,
            backing_file: None,
            backing_format: None,
            data_file: false,
        }
    }

    /// Encodes the header, its extensions (backing format, feature names) and
    /// the backing file name into one cluster.
    pub fn encode(&self) -> Result<Vec<u8>, ImageError> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, 3);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 32, self.crypt_method);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 72, self.incompatible_features);
        put64(&mut b, 80, self.compatible_features);
        put64(&mut b, 88, self.autoclear_features);
        put32(&mut b, 96, self.refcount_order);
        put32(&mut b, 100, HEADER_LEN);
        if let Some(fmt) = &self.backing_format {
            push_ext(&mut b, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        push_ext(&mut b, EXT_FEATURE_NAMES, &feature_names());
        push_ext(&mut b, EXT_END, &[]);
        if let Some(name) = &self.backing_file {
            if name.is_empty() || name.len() > MAX_BACKING_NAME {
                return Err(ImageError::Unsupported(format!(
                    "backing file name of {} bytes (1..={MAX_BACKING_NAME})",
                    name.len()
                )));
            }
            let at = b.len() as u64;
            put64(&mut b, 8, at);
            put32(&mut b, 16, name.len() as u32);
            b.extend_from_slice(name.as_bytes());
        }
        if b.len() > CLUSTER_SIZE as usize {
            return Err(ImageError::Unsupported(
                "header does not fit a cluster".into(),
            ));
        }
        Ok(b)
    }

    /// Decodes the first cluster of an image. Everything is bounds checked;
    /// the caller checks which features the engine supports ([`Self::check_supported`]).
    pub fn decode(h: &[u8]) -> Result<Self, ImageError> {
        let corrupt = |what: String| ImageError::Corrupt(format!("qcow2 header: {what}"));
        let f = Fields::read(h).ok_or_else(|| corrupt("not a qcow2 image".into()))?;
        let version = f.version;
        if version != 3 {
            return Err(ImageError::Unsupported(format!(
                "qcow2 version {version} (only v3, compat=1.1)"
            )));
        }
        let v3 = f.v3.ok_or_else(|| corrupt("truncated v3 header".into()))?;
        let cluster_bits = f.cluster_bits;
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits}")));
        }
        let header_length = v3.header_length;
        if (header_length as usize) < V3_LEN
            || header_length % 8 != 0
            || header_length as usize > h.len()
            || u64::from(header_length) > 1u64 << cluster_bits
        {
            return Err(corrupt(format!("header_length {header_length}")));
        }
        let backing_offset = f.backing_file_offset;
        let backing_len = f.backing_file_size as usize;
        let backing_file = if backing_offset == 0 {
            None
        } else {
            if backing_len == 0 || backing_len > MAX_BACKING_NAME {
                return Err(corrupt(format!("backing file name length {backing_len}")));
            }
            if backing_offset < u64::from(header_length) {
                return Err(corrupt("backing file name offset".into()));
            }
            let bytes =
                backing_name(h, backing_offset, f.backing_file_size).map_err(|e| match e {
                    NameOutside::Offset => corrupt("backing file name offset".into()),
                    NameOutside::Past { .. } => {
                        corrupt("backing file name outside the first cluster".into())
                    }
                })?;
            let name = std::str::from_utf8(bytes)
                .map_err(|_| corrupt("backing file name is not UTF-8".into()))?;
            Some(name.to_owned())
        };
        let bad = |pos: usize| ImageError::Corrupt(format!("qcow2 header extension at byte {pos}"));
        let (mut backing_format, mut data_file) = (None, false);
        for ext in extensions(h, header_length as usize, backing_offset) {
            let ext = ext.map_err(bad)?;
            match ext.kind {
                EXT_BACKING_FORMAT => {
                    let name = std::str::from_utf8(ext.data).map_err(|_| bad(ext.at))?;
                    backing_format = Some(name.to_owned());
                }
                EXT_DATA_FILE => data_file = true,
                // Unknown extensions are to be ignored (qcow2 spec).
                _ => {}
            }
        }
        Ok(Self {
            version,
            size: f.size,
            cluster_bits,
            crypt_method: f.crypt_method,
            l1_size: f.l1_size,
            l1_table_offset: f.l1_table_offset,
            refcount_table_offset: f.refcount_table_offset,
            refcount_table_clusters: f.refcount_table_clusters,
            nb_snapshots: f.nb_snapshots,
            incompatible_features: v3.incompatible_features,
            compatible_features: v3.compatible_features,
            autoclear_features: v3.autoclear_features,
            refcount_order: v3.refcount_order,
            header_length,
            backing_file,
            backing_format,
            data_file,
        })
    }

    /// Whether L2 entries are extended (128 bits, 32 subclusters per cluster).
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Refuses what this engine does not implement, with the reason.
    pub fn check_supported(&self) -> Result<(), ImageError> {
        let no = |what: &str| Err(ImageError::Unsupported(what.to_owned()));
        let inc = self.incompatible_features;
        if inc & INCOMPAT_DIRTY != 0 {
            return no("image is marked dirty (lazy refcounts): run `qemu-img check -r all` first");
        }
        if inc & INCOMPAT_CORRUPT != 0 {
            return no("image is marked corrupt: run `qemu-img check -r all` first");
        }
        if inc & INCOMPAT_DATA_FILE != 0 || self.data_file {
            return no("external data files");
        }
        if inc & INCOMPAT_COMPRESSION != 0 {
            return no("compression types other than zlib");
        }
        // Extended L2 entries (subclusters) are supported.
        let inc = inc & !INCOMPAT_EXTL2;
        if inc != 0 {
            return no(&format!("unknown incompatible features {inc:#x}"));
        }
        if self.cluster_bits != CLUSTER_BITS {
            return no(&format!(
                "cluster size {} (only 64 KiB)",
                1u64 << self.cluster_bits
            ));
        }
        if self.refcount_order != REFCOUNT_ORDER {
            return no(&format!(
                "refcount_order {} (only 4, 16-bit refcounts)",
                self.refcount_order
            ));
        }
        if self.crypt_method != 0 {
            return no("encryption");
        }
        if self.nb_snapshots != 0 {
            return no("internal snapshots");
        }
        if self.size == 0 || !self.size.is_multiple_of(512) {
            return Err(ImageError::Corrupt(format!(
                "virtual size {} is not a positive multiple of 512",
                self.size
            )));
        }
        if let Some(fmt) = &self.backing_format {
            if fmt != "raw" {
                return no(&format!("backing format {fmt:?} (only raw)"));
            }
        }
        Ok(())
    }
}

/// The feature name table: lets `qemu-img info` name the bits.
fn feature_names() -> Vec<u8> {
    let names: [(u8, u8, &str); 8] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
        (2, 1, "raw external data"),
    ];
    let mut out = Vec::with_capacity(names.len() * 48);
    for (kind, bit, name) in names {
        let mut e = [0u8; 48];
        e[0] = kind;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&e);
    }
    out
}

fn push_ext(b: &mut Vec<u8>, kind: u32, data: &[u8]) {
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b.resize(b.len().div_ceil(8) * 8, 0);
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests;
