//! qcow2 copy-on-write overlays over a raw golden image, served as a
//! [`blockdev::BlockDevice`].
//!
//! Our own engine rather than the imago crate: imago's futures are not `Send`
//! (a tokio multi-threaded runtime cannot hold them across awaits in a
//! session task) and its file backend does blocking `preadv`/`pwritev` on
//! the calling thread, so it would need its own storage backend or dedicated
//! I/O threads anyway. What bootd needs is a small subset of qcow2 (v3, one
//! cluster size, standard or extended L2 entries, no compression,
//! encryption, snapshots or external data), which this module implements
//! and refuses everything else. New overlays use extended L2 entries: 32
//! subclusters of 2 KiB per cluster, so a first 4 KiB write into a cluster
//! writes 4 KiB instead of copying 64 KiB from the golden image.
//!
//! Files: [`header`] (header and extensions), [`l2`] (L1/L2 entries),
//! [`refcount`] (refcount blocks and reservations), [`meta`] (the in-memory
//! metadata, loaded and validated at open), [`create`], [`overlay`] (the
//! engine: open and reads; `overlay/device.rs` the block device,
//! `overlay/write.rs` the write path, `overlay/commit.rs` the commit that
//! orders metadata after data), `gate`
//! (the barrier before freed clusters are reused), `io` (positional
//! syscalls), [`wal`] (the write-ahead log that carries acknowledged table
//! changes over a crash of the process), `overlay/replay.rs` (applying it
//! at open).

pub mod create;
mod gate;
pub mod header;
mod io;
pub mod l2;
pub mod meta;
pub mod overlay;
pub mod refcount;
pub mod wal;

pub use crate::error::ImageError;
pub use overlay::Overlay;

pub const CLUSTER_BITS: u32 = 16;
/// 64 KiB clusters, qemu's default.
pub const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// 64-bit words per L2 table (one cluster): as many standard entries (512
/// MiB of disk), half as many extended ones (256 MiB).
pub const L2_ENTRIES: usize = (CLUSTER_SIZE / 8) as usize;
/// 16-bit refcounts, qemu's default.
pub const REFCOUNT_ORDER: u32 = 4;
/// Refcounts per refcount block: 2 GiB of file.
pub const RB_ENTRIES: usize = (CLUSTER_SIZE / 2) as usize;
