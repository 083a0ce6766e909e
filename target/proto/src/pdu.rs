//! iSCSI PDU framing, decoding (initiator → target) and encoding
//! (target → initiator), RFC 7143 chapter 11.
//!
//! Decoding never trusts a length from the wire: [`frame_len`] bounds the
//! data segment by the negotiated MaxRecvDataSegmentLength before anything is
//! buffered, and every field read is from the fixed 48-byte BHS.

use crate::digest;
use bytes::{Bytes, BytesMut};

pub const BHS_LEN: usize = 48;
/// The reserved tag value ("no task" / "no target transfer").
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// Largest AHS we accept (TotalAHSLength is in 4-byte words; extended CDBs
/// up to 260 bytes fit easily).
pub const MAX_AHS_LEN: usize = 1024;

/// Opcodes an initiator sends.
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    // Target opcodes.
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OP_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    SegmentTooLong { len: u32, max: u32 },
    #[error("additional header segments of {0} bytes are too long")]
    AhsTooLong(usize),
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("opcode {0:#04x} is not one a target sends")]
    NotATargetPdu(u8),
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
}

/// Digests in force on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

pub(crate) fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Length of the complete PDU at the start of `buf`, or `None` when more
/// bytes are needed. `max_data` bounds the data segment.
pub fn frame_len(buf: &[u8], digests: Digests, max_data: u32) -> Result<Option<usize>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let ahs = usize::from(buf[4]) * 4;
    if ahs > MAX_AHS_LEN {
        return Err(PduError::AhsTooLong(ahs));
    }
    let dlen = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]);
    if dlen > max_data {
        return Err(PduError::SegmentTooLong {
            len: dlen,
            max: max_data,
        });
    }
    let dlen = dlen as usize;
    let mut total = BHS_LEN + ahs;
    if digests.header {
        total += 4;
    }
    if dlen > 0 {
        total += dlen + pad4(dlen);
        if digests.data {
            total += 4;
        }
    }
    Ok((buf.len() >= total).then_some(total))
}

/// A framed PDU: the raw BHS, AHS and data segment (padding and digests
/// removed, digests verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

impl RawPdu {
    /// Splits one PDU of `len` bytes (from [`frame_len`]) off `frame`.
    pub fn parse(frame: Bytes, digests: Digests) -> Result<Self, PduError> {
        let mut bhs = [0u8; BHS_LEN];
        let head = frame
            .get(..BHS_LEN)
            .ok_or(PduError::Malformed("short BHS"))?;
        bhs.copy_from_slice(head);
        let ahs_len = usize::from(bhs[4]) * 4;
        let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut pos = BHS_LEN + ahs_len;
        let ahs = frame
            .get(BHS_LEN..pos)
            .ok_or(PduError::Malformed("short AHS"))?;
        if digests.header {
            let got = frame
                .get(pos..pos + 4)
                .ok_or(PduError::Malformed("short header digest"))?;
            let want = digest::crc32c(&[&bhs, ahs]);
            if digest::from_wire([got[0], got[1], got[2], got[3]]) != want {
                return Err(PduError::HeaderDigest);
            }
            pos += 4;
        }
        let ahs = frame.slice(BHS_LEN..BHS_LEN + ahs_len);
        let mut data = Bytes::new();
        if dlen > 0 {
            let padded = dlen + pad4(dlen);
            let seg = frame
                .get(pos..pos + padded)
                .ok_or(PduError::Malformed("short data segment"))?;
            if digests.data {
                let got = frame
                    .get(pos + padded..pos + padded + 4)
                    .ok_or(PduError::Malformed("short data digest"))?;
                if digest::from_wire([got[0], got[1], got[2], got[3]]) != digest::crc32c(&[seg]) {
                    return Err(PduError::DataDigest);
                }
            }
            data = frame.slice(pos..pos + dlen);
        }
        Ok(Self { bhs, ahs, data })
    }

    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[at],
            self.bhs[at + 1],
            self.bhs[at + 2],
            self.bhs[at + 3],
        ])
    }
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }
    fn lun_field(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.bhs[8..16]);
        l
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
}

/// Decodes the 8-byte LUN field (SAM-5 4.6): peripheral (00b) and flat
/// (01b) single-level addressing; anything else maps to a LUN no unit has.
pub fn decode_lun(field: [u8; 8]) -> u64 {
    match field[0] >> 6 {
        0 | 1 if field[2..].iter().all(|&b| b == 0) => {
            u64::from(u16::from_be_bytes([field[0] & 0x3f, field[1]]))
        }
        _ => u64::MAX,
    }
}

/// Encodes a LUN number in the 8-byte LUN field (SAM-5 4.6).
pub use crate::scsi::spc::encode_lun;

mod request;
mod response;
mod response_decode;

pub use request::{
    DataOutPdu, LoginRequest, LogoutPdu, NopOutPdu, Request, ScsiCommandPdu, TaskMgmtPdu, TextPdu,
};
pub use response::{Response, SeqNums};

/// Writes BHS, AHS, header digest, data, padding and data digest.
pub(crate) fn finish(
    out: &mut BytesMut,
    mut h: [u8; BHS_LEN],
    ahs: &[u8],
    data: &[u8],
    digests: Digests,
) {
    let dlen = data.len().min(0x00ff_ffff);
    h[5..8].copy_from_slice(&(dlen as u32).to_be_bytes()[1..]);
    out.reserve(BHS_LEN + ahs.len() + 8 + dlen + 3);
    out.extend_from_slice(&h);
    out.extend_from_slice(ahs);
    if digests.header {
        out.extend_from_slice(&digest::to_wire(digest::crc32c(&[&h, ahs])));
    }
    if dlen > 0 {
        let data = &data[..dlen];
        let pad = [0u8; 3];
        let pad = &pad[..pad4(dlen)];
        out.extend_from_slice(data);
        out.extend_from_slice(pad);
        if digests.data {
            out.extend_from_slice(&digest::to_wire(digest::crc32c(&[data, pad])));
        }
    }
}

#[cfg(test)]
mod response_tests;
#[cfg(test)]
mod tests;
