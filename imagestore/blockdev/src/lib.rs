//! Block devices, at the bottom of bootd's crate graph.
//!
//! The [`BlockDevice`] trait that the iSCSI target serves LUNs from and the
//! image store implements for qcow2 overlays, plus the devices that need
//! nothing else: [`RawFile`] (a raw image file or block device node) and
//! [`MemDevice`] (in memory, for tests), and the positional file I/O helpers
//! ([`fileio`]) that raw files and qcow2 overlays share. Nothing here knows
//! about iSCSI or qcow2, so both depend on this crate and not on each other.

pub mod block;
pub mod fileio;
pub mod mem;
pub mod raw;

pub use block::{Allocation, BlockDevice, BlockError, Capabilities, Extent};
pub use mem::MemDevice;
pub use raw::{RawFile, RawOptions};
