//! Sense data (SPC-4 4.5) and the CHECK CONDITION results built from it.

use crate::task::{ScsiResult, ScsiStatus};
use bytes::Bytes;

/// Sense keys (SPC-4 table 48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

/// One sense condition: key, additional sense code and qualifier, and
/// optional details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (e.g. the offset of a miscompare), sets VALID.
    pub info: Option<u32>,
    /// Sense-key-specific field pointer to the bad CDB byte (and bit),
    /// for INVALID FIELD IN CDB / PARAMETER LIST.
    pub field_pointer: Option<FieldPointer>,
    /// Sense-key-specific progress indication (in 65536ths), for NOT READY
    /// conditions of long operations such as SANITIZE.
    pub progress: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True: the error is in the CDB; false: in the parameter data.
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

impl Sense {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            info: None,
            field_pointer: None,
            progress: None,
        }
    }

    pub const INVALID_OPCODE: Self = Self::new(SenseKey::IllegalRequest, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Self = Self::new(SenseKey::IllegalRequest, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Self = Self::new(SenseKey::IllegalRequest, 0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Self = Self::new(SenseKey::IllegalRequest, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Self =
        Self::new(SenseKey::IllegalRequest, 0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Self = Self::new(SenseKey::IllegalRequest, 0x1A, 0x00);
    pub const WRITE_PROTECTED: Self = Self::new(SenseKey::DataProtect, 0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Self = Self::new(SenseKey::DataProtect, 0x27, 0x07);
    pub const MISCOMPARE_DURING_VERIFY: Self = Self::new(SenseKey::Miscompare, 0x1D, 0x00);
    pub const UNRECOVERED_READ_ERROR: Self = Self::new(SenseKey::MediumError, 0x11, 0x00);
    pub const WRITE_ERROR: Self = Self::new(SenseKey::MediumError, 0x0C, 0x00);
    /// Data-Out arrived out of sequence (wrong DataSN or offset).
    pub const DATA_PHASE_ERROR: Self = Self::new(SenseKey::AbortedCommand, 0x4B, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Self = Self::new(SenseKey::HardwareError, 0x44, 0x00);
    pub const MEDIUM_NOT_PRESENT: Self = Self::new(SenseKey::NotReady, 0x3A, 0x00);
    /// A removable medium was ejected (START STOP UNIT with LOEJ).
    pub const MEDIUM_NOT_PRESENT_TRAY_OPEN: Self = Self::new(SenseKey::NotReady, 0x3A, 0x02);
    pub const MEDIUM_REMOVAL_PREVENTED: Self = Self::new(SenseKey::IllegalRequest, 0x53, 0x02);
    pub const POWER_ON_RESET: Self = Self::new(SenseKey::UnitAttention, 0x29, 0x00);
    pub const BUS_DEVICE_RESET: Self = Self::new(SenseKey::UnitAttention, 0x29, 0x03);
    pub const PARAMETERS_CHANGED: Self = Self::new(SenseKey::UnitAttention, 0x2A, 0x00);
    pub const MODE_PARAMETERS_CHANGED: Self = Self::new(SenseKey::UnitAttention, 0x2A, 0x01);
    pub const RESERVATIONS_PREEMPTED: Self = Self::new(SenseKey::UnitAttention, 0x2A, 0x03);
    pub const RESERVATIONS_RELEASED: Self = Self::new(SenseKey::UnitAttention, 0x2A, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Self = Self::new(SenseKey::UnitAttention, 0x2A, 0x05);
    pub const CAPACITY_DATA_CHANGED: Self = Self::new(SenseKey::UnitAttention, 0x2A, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Self =
        Self::new(SenseKey::UnitAttention, 0x2F, 0x00);
    pub const REPORTED_LUNS_DATA_CHANGED: Self = Self::new(SenseKey::UnitAttention, 0x3F, 0x0E);
    pub const TARGET_RESET: Self = Self::new(SenseKey::UnitAttention, 0x29, 0x02);
    pub const NEXUS_LOSS: Self = Self::new(SenseKey::UnitAttention, 0x29, 0x07);
    pub const INVALID_FIELD_IN_IU: Self = Self::new(SenseKey::IllegalRequest, 0x0E, 0x03);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self =
        Self::new(SenseKey::IllegalRequest, 0x39, 0x00);
    pub const INVALID_RELEASE_OF_PR: Self = Self::new(SenseKey::IllegalRequest, 0x26, 0x04);
    pub const NO_SENSE: Self = Self::new(SenseKey::NoSense, 0x00, 0x00);

    /// Points at CDB byte `byte` (and `bit`) as the invalid field.
    pub const fn cdb_field(mut self, byte: u16, bit: Option<u8>) -> Self {
        self.field_pointer = Some(FieldPointer {
            in_cdb: true,
            byte,
            bit,
        });
        self
    }

    /// Points at parameter-list byte `byte` (and `bit`) as the invalid field.
    pub const fn param_field(mut self, byte: u16, bit: Option<u8>) -> Self {
        self.field_pointer = Some(FieldPointer {
            in_cdb: false,
            byte,
            bit,
        });
        self
    }

    pub const fn with_progress(mut self, progress: u16) -> Self {
        self.progress = Some(progress);
        self
    }

    pub const fn with_info(mut self, info: u32) -> Self {
        self.info = Some(info);
        self
    }

    /// Fixed-format sense data (response code 0x70), 18 bytes.
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key as u8;
        if let Some(info) = self.info {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[7] = 10; // additional sense length
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(fp) = self.field_pointer {
            let mut b = 0x80; // SKSV
            if fp.in_cdb {
                b |= 0x40;
            }
            if let Some(bit) = fp.bit {
                b |= 0x08 | (bit & 0x07);
            }
            s[15] = b;
            s[16..18].copy_from_slice(&fp.byte.to_be_bytes());
        } else if let Some(p) = self.progress {
            s[15] = 0x80; // SKSV
            s[16..18].copy_from_slice(&p.to_be_bytes());
        }
        s
    }

    /// A CHECK CONDITION result carrying this sense.
    pub fn into_result(self) -> ScsiResult {
        ScsiResult {
            status: ScsiStatus::CHECK_CONDITION,
            sense: Some(Bytes::copy_from_slice(&self.to_fixed())),
            data_in: Bytes::new(),
            transfer_len: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = Sense::INVALID_FIELD_IN_CDB.cdb_field(2, Some(1)).to_fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(s[15], 0x80 | 0x40 | 0x08 | 1);
        assert_eq!(u16::from_be_bytes([s[16], s[17]]), 2);
        let m = Sense::MISCOMPARE_DURING_VERIFY.with_info(7).to_fixed();
        assert_eq!(m[0], 0xF0);
        assert_eq!(u32::from_be_bytes([m[3], m[4], m[5], m[6]]), 7);
        let p = Sense::MEDIUM_NOT_PRESENT.with_progress(0x1234).to_fixed();
        assert_eq!(&p[15..18], &[0x80, 0x12, 0x34]);
    }
}
