//! TFTP for PXE firmware, sans-IO (RFC 1350, options per RFC 2347..2349
//! and RFC 7440): packets decoded from and encoded to bytes (`packet`), and
//! one read transfer as a state machine fed datagrams and the clock
//! (`transfer`). No sockets, files or async runtime: bootd's driver looks
//! files up and moves datagrams, so the compiler keeps this core pure.

pub mod packet;
pub mod transfer;

pub use transfer::{Limits, Outcome, Transfer};
