//! The block-device trait the target serves LUNs from.
//!
//! Implementations: [`crate::raw::RawFile`] and [`crate::mem::MemDevice`]
//! here; the image store adds copy-on-write qcow2 overlays behind the same
//! trait. Offsets and lengths are in bytes and always multiples of the
//! device's block size (the SCSI layer checks ranges against [`Capabilities`]
//! before calling). Implementations must never block a runtime worker thread.

use async_trait::async_trait;
use bytes::Bytes;

/// What a device is and can do; fixed for the life of an open device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// Writes, discards and write-zeroes fail with [`BlockError::ReadOnly`].
    pub read_only: bool,
    /// Thin provisioned: [`BlockDevice::discard`] frees space and discarded
    /// ranges read back as zeros (advertised as LBPME/LBPRZ).
    pub thin: bool,
    /// The device has a volatile write cache: writes need
    /// [`BlockDevice::flush`] (or FUA) to be durable (advertised as WCE).
    pub volatile_cache: bool,
}

impl Capabilities {
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * u64::from(self.block_size)
    }
}

/// Allocation state of a range, for GET LBA STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Backed by storage (for an overlay: written by this node, or in the golden image).
    Mapped,
    /// Not backed; reads return zeros.
    Deallocated,
}

/// One run of blocks with the same allocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub state: Allocation,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("range {offset}+{len} is outside the device")]
    OutOfRange { offset: u64, len: u64 },
    #[error("device is read-only")]
    ReadOnly,
    #[error("no space left for the write")]
    NoSpace,
    #[error("operation not supported by this device")]
    Unsupported,
    /// The device's own layer refused the request, e.g. a qcow2 overlay whose
    /// tables turned out corrupt; the cause keeps its type (downcast it). The
    /// SCSI layer reports it like [`BlockError::Io`].
    #[error("I/O error: {0}")]
    Device(Box<dyn std::error::Error + Send + Sync + 'static>),
}

#[async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;

    /// Reads exactly `len` bytes at `offset`.
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError>;

    /// Writes `data` at `offset`; with `fua` the data is durable before this returns.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError>;

    /// Makes every completed write durable.
    async fn flush(&self) -> Result<(), BlockError>;

    /// Deallocates a range (UNMAP); a thin device reads it back as zeros.
    async fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError>;

    /// Zeroes a range; with `unmap` the device may deallocate it instead of
    /// writing zeros (WRITE SAME with the UNMAP bit).
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError>;

    /// Allocation state from `offset` on: at least one extent, starting at
    /// `offset`, covering up to `len` bytes.
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError>;
}
