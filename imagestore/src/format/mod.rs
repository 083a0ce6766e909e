//! Image format detection from the first bytes of a file.
//!
//! qcow2 headers are parsed in full (they decide how an overlay is opened);
//! other formats are only recognised, so that import can convert them with
//! `qemu-img convert` instead of serving a VHD's metadata as disk blocks.

/// How many leading bytes [`probe`] wants to see: a qcow2 header with its
/// extensions and backing file name fits in the first 64 KiB cluster in every
/// image qemu-img writes.
pub const PROBE_LEN: usize = 64 * 1024;

const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// qemu's limits on cluster_bits (block/qcow2.h MIN/MAX_CLUSTER_BITS).
const QCOW2_MIN_CLUSTER_BITS: u32 = 9;
const QCOW2_MAX_CLUSTER_BITS: u32 = 21;
/// qemu refuses backing file names longer than this.
const QCOW2_MAX_BACKING_NAME: u32 = 1023;
const QCOW2_EXT_END: u32 = 0;
const QCOW2_EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const VDI_SIGNATURE: u32 = 0xbeda_107f;

/// What an image file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2(Qcow2Header),
    /// Microsoft VHD (dynamic or differencing; fixed VHDs look raw from the front).
    Vhd,
    Vhdx,
    Vmdk,
    Vdi,
}

impl ImageFormat {
    /// The format name `qemu-img` uses for `-f`.
    pub fn qemu_name(&self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2(_) => "qcow2",
            Self::Vhd => "vpc",
            Self::Vhdx => "vhdx",
            Self::Vmdk => "vmdk",
            Self::Vdi => "vdi",
        }
    }
}

/// The fields of a qcow2 header that decide how bootd may use the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    pub cluster_bits: u32,
    /// Backing file name as written in the header. bootd never opens it by
    /// this path: overlays are matched to golden images by id.
    pub backing_file: Option<String>,
    /// Backing format from the header extension, when present.
    pub backing_format: Option<String>,
    /// Non-zero crypt_method: encrypted images are not served.
    pub encrypted: bool,
    /// Incompatible feature bits (v3); unknown bits mean "do not open".
    pub incompatible_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("qcow2 header is truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("qcow2 version {0} is not supported (only 2 and 3)")]
    Version(u32),
    #[error("qcow2 cluster_bits {0} is outside 9..=21")]
    ClusterBits(u32),
    #[error("qcow2 backing file name of {0} bytes is too long")]
    BackingNameLength(u32),
    #[error("qcow2 backing file name is not valid UTF-8")]
    BackingNameEncoding,
    #[error("qcow2 header length {0} is invalid")]
    HeaderLength(u32),
    #[error("qcow2 refcount_order {0} is outside 0..=6")]
    RefcountOrder(u32),
    #[error("qcow2 header extension at byte {0} runs past the header area")]
    Extension(usize),
}

/// Decides the format of an image from its first bytes (up to [`PROBE_LEN`]).
pub fn probe(head: &[u8]) -> Result<ImageFormat, ProbeError> {
    if be32(head, 0) == Some(QCOW2_MAGIC) {
        return parse_qcow2(head).map(ImageFormat::Qcow2);
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(ImageFormat::Vhdx);
    }
    if head.starts_with(b"conectix") {
        return Ok(ImageFormat::Vhd);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return Ok(ImageFormat::Vmdk);
    }
    if be32(head, 64).map(u32::swap_bytes) == Some(VDI_SIGNATURE) {
        return Ok(ImageFormat::Vdi);
    }
    Ok(ImageFormat::Raw)
}

fn parse_qcow2(h: &[u8]) -> Result<Qcow2Header, ProbeError> {
    let need = |n: usize| {
        if h.len() < n {
            Err(ProbeError::Truncated {
                need: n,
                have: h.len(),
            })
        } else {
            Ok(())
        }
    };
    need(72)?;
    let field32 = |off| be32(h, off).unwrap_or(0);
    let field64 = |off| be64(h, off).unwrap_or(0);
    let version = field32(4);
    if version != 2 && version != 3 {
        return Err(ProbeError::Version(version));
    }
    let backing_offset = field64(8);
    let backing_len = field32(16);
    let cluster_bits = field32(20);
    if !(QCOW2_MIN_CLUSTER_BITS..=QCOW2_MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(ProbeError::ClusterBits(cluster_bits));
    }
    let (incompatible_features, refcount_order, header_length) = if version == 3 {
        need(104)?;
        let len = field32(100);
        // The v3 header is at least 104 bytes, a multiple of 8, inside the first cluster.
        if len < 104 || len % 8 != 0 || u64::from(len) > 1u64 << cluster_bits {
            return Err(ProbeError::HeaderLength(len));
        }
        let order = field32(96);
        if order > 6 {
            return Err(ProbeError::RefcountOrder(order));
        }
        (field64(72), order, len)
    } else {
        (0, 4, 72)
    };

    let backing_file = if backing_offset == 0 || backing_len == 0 {
        None
    } else {
        if backing_len > QCOW2_MAX_BACKING_NAME {
            return Err(ProbeError::BackingNameLength(backing_len));
        }
        let start = usize::try_from(backing_offset).map_err(|_| ProbeError::Truncated {
            need: usize::MAX,
            have: h.len(),
        })?;
        let end = start.saturating_add(backing_len as usize);
        need(end)?;
        let name =
            std::str::from_utf8(&h[start..end]).map_err(|_| ProbeError::BackingNameEncoding)?;
        Some(name.to_owned())
    };

    let backing_format = read_backing_format(h, header_length as usize, backing_offset)?;
    Ok(Qcow2Header {
        version,
        size: field64(24),
        cluster_bits,
        backing_file,
        backing_format,
        encrypted: field32(32) != 0,
        incompatible_features,
        refcount_order,
        header_length,
    })
}

/// Walks the header extensions (type, length, data padded to 8) that follow
/// the fixed header, up to the backing file name or the end of what we have.
fn read_backing_format(
    h: &[u8],
    mut pos: usize,
    backing_offset: u64,
) -> Result<Option<String>, ProbeError> {
    let limit = match usize::try_from(backing_offset) {
        Ok(off) if off != 0 => off.min(h.len()),
        _ => h.len(),
    };
    let mut format = None;
    while pos + 8 <= limit {
        let (Some(kind), Some(len)) = (be32(h, pos), be32(h, pos + 4)) else {
            break;
        };
        if kind == QCOW2_EXT_END {
            break;
        }
        let data = pos + 8;
        let end = data
            .checked_add(len as usize)
            .ok_or(ProbeError::Extension(pos))?;
        if end > limit {
            return Err(ProbeError::Extension(pos));
        }
        if kind == QCOW2_EXT_BACKING_FORMAT {
            let name =
                std::str::from_utf8(&h[data..end]).map_err(|_| ProbeError::BackingNameEncoding)?;
            format = Some(name.to_owned());
        }
        pos = end.div_ceil(8) * 8;
    }
    Ok(format)
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be64(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests;
