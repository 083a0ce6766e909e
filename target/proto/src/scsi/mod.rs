//! SCSI (SPC-4/SBC-3) command set, sans-IO.
//!
//! `sense` builds sense data; `cdb` reads CDB fields safely; `lu` holds a
//! logical unit's shared state (unit attentions, reservations, persistent
//! reservations in `pr`, mode pages in `mode`) and answers the SPC commands
//! that need no block I/O (`inquiry`, `opcodes`, `spc`); `sbc` decodes block
//! commands into operations the driver performs on a block device, and
//! `sanitize` decodes SANITIZE and holds its state, `xcopy` decodes
//! EXTENDED COPY and answers RECEIVE COPY RESULTS; `removable` holds
//! whether the medium is loaded and who prevents its removal.

pub mod cdb;
pub mod inquiry;
pub mod lu;
pub mod mode;
pub mod opcode;
pub mod opcodes;
pub mod pr;
pub mod removable;
pub mod sanitize;
pub mod sbc;
pub mod sense;
pub mod spc;
pub mod xcopy;

use crate::task::{ScsiResult, ScsiStatus};
use bytes::Bytes;

/// A GOOD result carrying `data_in`.
pub fn good(data_in: Bytes, transfer_len: u32) -> ScsiResult {
    ScsiResult {
        status: ScsiStatus::GOOD,
        sense: None,
        data_in,
        transfer_len,
    }
}

/// A GOOD result for a Data-In command, `d` cut to the allocation length.
/// `transfer_len` is what is actually returned: an initiator asking for
/// more than there is sees an underflow residual (libiscsi checks it).
pub(crate) fn good_vec(mut d: Vec<u8>, alloc: usize) -> ScsiResult {
    d.truncate(alloc);
    let n = u32::try_from(d.len()).unwrap_or(u32::MAX);
    good(Bytes::from(d), n)
}
