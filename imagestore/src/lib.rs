//! Golden images and per-node copy-on-write overlays for bootd.
//!
//! An image's format is decided from its own bytes ([`format::probe`]), never
//! from a file name: operators bring raw disks, qcow2 from KVM shops and
//! VHD/VHDX from Hyper-V shops, and a header is untrusted input.

pub mod error;
pub mod format;
pub mod qcow2;

pub use error::ImageError;
pub use qcow2::overlay::SyncWrites;
pub use qcow2::Overlay;
