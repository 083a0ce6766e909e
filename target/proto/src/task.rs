//! The boundary between the iSCSI layer and the SCSI layer: a SCSI command as
//! the iSCSI connection delivers it (with all its Data-Out collected), and the
//! result the SCSI layer hands back (status, sense, Data-In).

use bytes::Bytes;
use std::sync::Arc;

/// SAM task attribute from the SCSI Command PDU (RFC 7143 11.3.1, ATTR field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// One SCSI command, ready to execute: every byte of write data has arrived.
#[derive(Debug, Clone)]
pub struct ScsiCommand {
    /// Initiator Task Tag; names the command in completions and task management.
    pub itt: u32,
    /// LUN number decoded from the 8-byte LUN field (peripheral or flat addressing).
    pub lun: u64,
    /// The CDB: 16 bytes from the BHS plus any extended-CDB AHS bytes. Commands
    /// with shorter CDBs carry trailing zero padding.
    pub cdb: Bytes,
    /// Expected Data Transfer Length from the PDU, in the command's direction.
    pub expected_len: u32,
    /// The R bit: the initiator expects Data-In.
    pub read: bool,
    /// The W bit: the initiator sends Data-Out.
    pub write: bool,
    pub attr: TaskAttr,
    /// All Data-Out (immediate, unsolicited and solicited), in order; at most
    /// `expected_len` bytes.
    pub data_out: Bytes,
}

/// SCSI status byte (SAM-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiStatus(pub u8);

impl ScsiStatus {
    pub const GOOD: Self = Self(0x00);
    pub const CHECK_CONDITION: Self = Self(0x02);
    pub const CONDITION_MET: Self = Self(0x04);
    pub const BUSY: Self = Self(0x08);
    pub const RESERVATION_CONFLICT: Self = Self(0x18);
    pub const TASK_SET_FULL: Self = Self(0x28);
    pub const ACA_ACTIVE: Self = Self(0x30);
    pub const TASK_ABORTED: Self = Self(0x40);
}

/// What the SCSI layer returns for one command.
#[derive(Debug, Clone)]
pub struct ScsiResult {
    pub status: ScsiStatus,
    /// Sense data (fixed or descriptor format) without the iSCSI 2-byte
    /// SenseLength prefix; present with CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// Data-In; the iSCSI layer truncates it to the Expected Data Transfer
    /// Length and reports the difference as a residual.
    pub data_in: Bytes,
    /// Bytes the CDB asked to transfer in its data direction (allocation
    /// length for Data-In, transfer length x block size for Data-Out). The
    /// iSCSI layer compares it with the Expected Data Transfer Length to set
    /// residual overflow/underflow.
    pub transfer_len: u32,
}

/// The I_T nexus a command arrived on: who is asking, through which port.
/// The SCSI layer keys reservations and unit attentions on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// SCSI initiator port name: `<initiator iqn>,i,0x<isid in hex>` (RFC 7143 4.4.1).
    pub initiator_port: Arc<str>,
    /// SCSI target port name: `<target iqn>,t,0x<tpgt in hex>`.
    pub target_port: Arc<str>,
    /// Relative target port identifier (VPD 0x83, PR TransportIDs).
    pub relative_port: u16,
}

/// Task management functions (RFC 7143 11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    /// A function code this target does not know; answered with "not supported".
    Other(u8),
}

/// Task management responses (RFC 7143 11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    Complete = 0,
    TaskDoesNotExist = 1,
    LunDoesNotExist = 2,
    TaskStillAllegiant = 3,
    ReassignmentNotSupported = 4,
    NotSupported = 5,
    AuthorizationFailed = 6,
    Rejected = 255,
}
