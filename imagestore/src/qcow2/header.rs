//! qcow2 v3 header: encode for images we create, decode (with bounds checks on
//! every field a hostile file controls) for images we open.

use super::{ImageError, CLUSTER_BITS, CLUSTER_SIZE, REFCOUNT_ORDER};

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

/// qemu refuses longer backing file names.
const MAX_BACKING_NAME: usize = 1023;

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
        if h.len() < 72 || be32(h, 0) != Some(MAGIC) {
            return Err(corrupt("not a qcow2 image".into()));
        }
        let f32_ = |off| be32(h, off).unwrap_or(0);
        let f64_ = |off| be64(h, off).unwrap_or(0);
        let version = f32_(4);
        if version != 3 {
            return Err(ImageError::Unsupported(format!(
                "qcow2 version {version} (only v3, compat=1.1)"
            )));
        }
        if h.len() < 104 {
            return Err(corrupt("truncated v3 header".into()));
        }
        let cluster_bits = f32_(20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits}")));
        }
        let header_length = f32_(100);
        if header_length < 104
            || header_length % 8 != 0
            || header_length as usize > h.len()
            || u64::from(header_length) > 1u64 << cluster_bits
        {
            return Err(corrupt(format!("header_length {header_length}")));
        }
        let backing_offset = f64_(8);
        let backing_len = f32_(16) as usize;
        let backing_file = if backing_offset == 0 {
            None
        } else {
            if backing_len == 0 || backing_len > MAX_BACKING_NAME {
                return Err(corrupt(format!("backing file name length {backing_len}")));
            }
            let start = usize::try_from(backing_offset)
                .ok()
                .filter(|&s| s >= header_length as usize)
                .ok_or_else(|| corrupt("backing file name offset".into()))?;
            let bytes = h
                .get(start..start.saturating_add(backing_len))
                .ok_or_else(|| corrupt("backing file name outside the first cluster".into()))?;
            let name = std::str::from_utf8(bytes)
                .map_err(|_| corrupt("backing file name is not UTF-8".into()))?;
            Some(name.to_owned())
        };
        let ext_limit = match usize::try_from(backing_offset) {
            Ok(off) if off != 0 => off.min(h.len()),
            _ => h.len(),
        };
        let (backing_format, data_file) = read_extensions(h, header_length as usize, ext_limit)?;
        Ok(Self {
            version,
            size: f64_(24),
            cluster_bits,
            crypt_method: f32_(32),
            l1_size: f32_(36),
            l1_table_offset: f64_(40),
            refcount_table_offset: f64_(48),
            refcount_table_clusters: f32_(56),
            nb_snapshots: f32_(60),
            incompatible_features: f64_(72),
            compatible_features: f64_(80),
            autoclear_features: f64_(88),
            refcount_order: f32_(96),
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

/// Walks the header extensions from `pos` up to `limit`; returns the backing
/// format name and whether an external data file is named.
fn read_extensions(
    h: &[u8],
    mut pos: usize,
    limit: usize,
) -> Result<(Option<String>, bool), ImageError> {
    let bad = |pos: usize| ImageError::Corrupt(format!("qcow2 header extension at byte {pos}"));
    let mut format = None;
    let mut data_file = false;
    while pos + 8 <= limit {
        let (Some(kind), Some(len)) = (be32(h, pos), be32(h, pos + 4)) else {
            break;
        };
        if kind == EXT_END {
            break;
        }
        let data = pos + 8;
        let end = data.checked_add(len as usize).ok_or_else(|| bad(pos))?;
        if end > limit {
            return Err(bad(pos));
        }
        match kind {
            EXT_BACKING_FORMAT => {
                let name = std::str::from_utf8(&h[data..end]).map_err(|_| bad(pos))?;
                format = Some(name.to_owned());
            }
            EXT_DATA_FILE => data_file = true,
            // Unknown extensions are to be ignored (qcow2 spec).
            _ => {}
        }
        pos = end.div_ceil(8) * 8;
    }
    Ok((format, data_file))
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

pub fn be32(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

pub fn be64(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
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
}
