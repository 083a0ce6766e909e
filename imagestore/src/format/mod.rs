//! Image format detection from the first bytes of a file.
//!
//! qcow2 headers are parsed in full (they decide how an overlay is opened),
//! decoded by the overlay engine's [`crate::qcow2::header::fields`] and judged
//! here by import's rules; other formats are only recognised, so that import
//! can convert them with `qemu-img convert` instead of serving a VHD's
//! metadata as disk blocks.

use crate::qcow2::header::fields::{
    backing_name, be32, extensions, Fields, NameOutside, V2_LEN, V3_LEN,
};
use crate::qcow2::header::{
    EXT_BACKING_FORMAT, MAGIC as QCOW2_MAGIC, MAX_BACKING_NAME, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS,
};

/// How many leading bytes [`probe`] wants to see: a qcow2 header with its
/// extensions and backing file name fits in the first 64 KiB cluster in every
/// image qemu-img writes.
pub const PROBE_LEN: usize = 64 * 1024;

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
    let truncated = |need: usize| ProbeError::Truncated {
        need,
        have: h.len(),
    };
    // The caller saw the magic, so only a short header is refused here.
    let f = Fields::read(h).ok_or(truncated(V2_LEN))?;
    let version = f.version;
    if version != 2 && version != 3 {
        return Err(ProbeError::Version(version));
    }
    let cluster_bits = f.cluster_bits;
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(ProbeError::ClusterBits(cluster_bits));
    }
    let (incompatible_features, refcount_order, header_length) = if version == 3 {
        let v3 = f.v3.ok_or(truncated(V3_LEN))?;
        let len = v3.header_length;
        // The v3 header is at least 104 bytes, a multiple of 8, inside the first cluster.
        if len < 104 || len % 8 != 0 || u64::from(len) > 1u64 << cluster_bits {
            return Err(ProbeError::HeaderLength(len));
        }
        let order = v3.refcount_order;
        if order > 6 {
            return Err(ProbeError::RefcountOrder(order));
        }
        (v3.incompatible_features, order, len)
    } else {
        (0, 4, 72)
    };

    let backing_offset = f.backing_file_offset;
    let backing_len = f.backing_file_size;
    let backing_file = if backing_offset == 0 || backing_len == 0 {
        None
    } else {
        if backing_len as usize > MAX_BACKING_NAME {
            return Err(ProbeError::BackingNameLength(backing_len));
        }
        let bytes = backing_name(h, backing_offset, backing_len).map_err(|e| match e {
            NameOutside::Offset => truncated(usize::MAX),
            NameOutside::Past { end } => truncated(end),
        })?;
        let name = std::str::from_utf8(bytes).map_err(|_| ProbeError::BackingNameEncoding)?;
        Some(name.to_owned())
    };

    let mut backing_format = None;
    for ext in extensions(h, header_length as usize, backing_offset) {
        let ext = ext.map_err(ProbeError::Extension)?;
        if ext.kind == EXT_BACKING_FORMAT {
            let name =
                std::str::from_utf8(ext.data).map_err(|_| ProbeError::BackingNameEncoding)?;
            backing_format = Some(name.to_owned());
        }
    }
    Ok(Qcow2Header {
        version,
        size: f.size,
        cluster_bits,
        backing_file,
        backing_format,
        encrypted: f.crypt_method != 0,
        incompatible_features,
        refcount_order,
        header_length,
    })
}

#[cfg(test)]
mod tests;
