//! iSCSI PDU framing, decoding (initiator → target) and encoding
//! (target → initiator), RFC 7143 chapter 11.
//!
//! Decoding never trusts a length from the wire: [`frame_len`] bounds the
//! data segment by the negotiated MaxRecvDataSegmentLength before anything is
//! buffered, and every field read is from the fixed 48-byte BHS.

use crate::digest;
use bytes::{BufMut, Bytes, BytesMut};

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
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
}

/// Digests in force on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

fn pad4(n: usize) -> usize {
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

/// Login request fields (RFC 7143 11.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommandPdu {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// 16 CDB bytes plus any extended CDB from the AHS.
    pub cdb: Bytes,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutPdu {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtPdu {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_itt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPdu {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOutPdu {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutPdu {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Every PDU an initiator may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    NopOut(NopOutPdu),
    ScsiCommand(ScsiCommandPdu),
    TaskMgmt(TaskMgmtPdu),
    Login(LoginRequest),
    Text(TextPdu),
    DataOut(DataOutPdu),
    Logout(LogoutPdu),
    Snack {
        itt: u32,
    },
    /// An opcode no initiator may send.
    Unknown {
        opcode: u8,
    },
}

impl Request {
    /// Interprets a framed PDU. Field checks that need session state (CmdSN
    /// windows, tags) happen in the connection.
    pub fn decode(pdu: &RawPdu) -> Result<Self, PduError> {
        let immediate = pdu.immediate();
        let f = pdu.flags();
        let final_ = f & 0x80 != 0;
        Ok(match pdu.opcode() {
            op::NOP_OUT => Self::NopOut(NopOutPdu {
                immediate,
                lun: decode_lun(pdu.lun_field()),
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                cmd_sn: pdu.u32_at(24),
                exp_stat_sn: pdu.u32_at(28),
                data: pdu.data.clone(),
            }),
            op::SCSI_COMMAND => {
                let mut cdb = BytesMut::with_capacity(16 + pdu.ahs.len());
                cdb.extend_from_slice(&pdu.bhs[32..48]);
                cdb.extend_from_slice(&extended_cdb(&pdu.ahs)?);
                Self::ScsiCommand(ScsiCommandPdu {
                    immediate,
                    final_,
                    read: f & 0x40 != 0,
                    write: f & 0x20 != 0,
                    attr: f & 0x07,
                    lun: decode_lun(pdu.lun_field()),
                    itt: pdu.itt(),
                    expected_len: pdu.u32_at(20),
                    cmd_sn: pdu.u32_at(24),
                    exp_stat_sn: pdu.u32_at(28),
                    cdb: cdb.freeze(),
                    data: pdu.data.clone(),
                })
            }
            op::TASK_MGMT => Self::TaskMgmt(TaskMgmtPdu {
                immediate,
                function: f & 0x7f,
                lun: decode_lun(pdu.lun_field()),
                itt: pdu.itt(),
                referenced_itt: pdu.u32_at(20),
                cmd_sn: pdu.u32_at(24),
                exp_stat_sn: pdu.u32_at(28),
                ref_cmd_sn: pdu.u32_at(32),
            }),
            op::LOGIN => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&pdu.bhs[8..14]);
                Self::Login(LoginRequest {
                    transit: f & 0x80 != 0,
                    cont: f & 0x40 != 0,
                    csg: (f >> 2) & 0x03,
                    nsg: f & 0x03,
                    version_max: pdu.bhs[2],
                    version_min: pdu.bhs[3],
                    isid,
                    tsih: pdu.u16_at(14),
                    itt: pdu.itt(),
                    cid: pdu.u16_at(20),
                    cmd_sn: pdu.u32_at(24),
                    exp_stat_sn: pdu.u32_at(28),
                    data: pdu.data.clone(),
                })
            }
            op::TEXT => Self::Text(TextPdu {
                immediate,
                final_,
                cont: f & 0x40 != 0,
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                cmd_sn: pdu.u32_at(24),
                exp_stat_sn: pdu.u32_at(28),
                data: pdu.data.clone(),
            }),
            op::DATA_OUT => Self::DataOut(DataOutPdu {
                final_,
                lun: decode_lun(pdu.lun_field()),
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                exp_stat_sn: pdu.u32_at(28),
                data_sn: pdu.u32_at(36),
                buffer_offset: pdu.u32_at(40),
                data: pdu.data.clone(),
            }),
            op::LOGOUT => Self::Logout(LogoutPdu {
                immediate,
                reason: f & 0x7f,
                itt: pdu.itt(),
                cid: pdu.u16_at(20),
                cmd_sn: pdu.u32_at(24),
                exp_stat_sn: pdu.u32_at(28),
            }),
            op::SNACK => Self::Snack { itt: pdu.itt() },
            opcode => Self::Unknown { opcode },
        })
    }
}

impl Request {
    /// Encodes an initiator PDU (for initiators built on this crate: tests,
    /// the load generator). CDBs longer than 16 bytes go into an AHS.
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        let mut h = [0u8; BHS_LEN];
        let mut ahs = Vec::new();
        let put32 = |h: &mut [u8; BHS_LEN], at: usize, v: u32| {
            h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        };
        let imm = |i: bool| if i { 0x40 } else { 0 };
        let data: &[u8] = match self {
            Self::NopOut(p) => {
                h[0] = op::NOP_OUT | imm(p.immediate);
                h[1] = 0x80;
                h[8..16].copy_from_slice(&encode_lun(p.lun));
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                &p.data
            }
            Self::ScsiCommand(p) => {
                h[0] = op::SCSI_COMMAND | imm(p.immediate);
                h[1] = (u8::from(p.final_) << 7)
                    | (u8::from(p.read) << 6)
                    | (u8::from(p.write) << 5)
                    | (p.attr & 7);
                h[8..16].copy_from_slice(&encode_lun(p.lun));
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.expected_len);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                let n = p.cdb.len().min(16);
                h[32..32 + n].copy_from_slice(&p.cdb[..n]);
                if p.cdb.len() > 16 {
                    let ext = &p.cdb[16..];
                    let len = u16::try_from(ext.len() + 1).unwrap_or(u16::MAX);
                    ahs.extend_from_slice(&len.to_be_bytes());
                    ahs.push(1);
                    ahs.push(0);
                    ahs.extend_from_slice(ext);
                    ahs.resize(ahs.len() + pad4(ahs.len()), 0);
                }
                &p.data
            }
            Self::TaskMgmt(p) => {
                h[0] = op::TASK_MGMT | imm(p.immediate);
                h[1] = 0x80 | (p.function & 0x7f);
                h[8..16].copy_from_slice(&encode_lun(p.lun));
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.referenced_itt);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                put32(&mut h, 32, p.ref_cmd_sn);
                &[]
            }
            Self::Login(p) => {
                h[0] = op::LOGIN | 0x40;
                h[1] = (u8::from(p.transit) << 7)
                    | (u8::from(p.cont) << 6)
                    | ((p.csg & 3) << 2)
                    | (p.nsg & 3);
                h[2] = p.version_max;
                h[3] = p.version_min;
                h[8..14].copy_from_slice(&p.isid);
                h[14..16].copy_from_slice(&p.tsih.to_be_bytes());
                put32(&mut h, 16, p.itt);
                h[20..22].copy_from_slice(&p.cid.to_be_bytes());
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                &p.data
            }
            Self::Text(p) => {
                h[0] = op::TEXT | imm(p.immediate);
                h[1] = (u8::from(p.final_) << 7) | (u8::from(p.cont) << 6);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                &p.data
            }
            Self::DataOut(p) => {
                h[0] = op::DATA_OUT;
                h[1] = u8::from(p.final_) << 7;
                h[8..16].copy_from_slice(&encode_lun(p.lun));
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 28, p.exp_stat_sn);
                put32(&mut h, 36, p.data_sn);
                put32(&mut h, 40, p.buffer_offset);
                &p.data
            }
            Self::Logout(p) => {
                h[0] = op::LOGOUT | imm(p.immediate);
                h[1] = 0x80 | (p.reason & 0x7f);
                put32(&mut h, 16, p.itt);
                h[20..22].copy_from_slice(&p.cid.to_be_bytes());
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                &[]
            }
            Self::Snack { itt } => {
                h[0] = op::SNACK;
                h[1] = 0x80;
                put32(&mut h, 16, *itt);
                &[]
            }
            Self::Unknown { opcode } => {
                h[0] = opcode & 0x3f;
                &[]
            }
        };
        let ahs = &ahs[..ahs.len().min(MAX_AHS_LEN)];
        h[4] = (ahs.len() / 4) as u8;
        finish(out, h, ahs, data, digests);
    }
}

/// Writes BHS, AHS, header digest, data, padding and data digest.
fn finish(out: &mut BytesMut, mut h: [u8; BHS_LEN], ahs: &[u8], data: &[u8], digests: Digests) {
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

/// The extended-CDB bytes from the AHS (type 1), if any (RFC 7143 11.2.2).
fn extended_cdb(ahs: &[u8]) -> Result<Vec<u8>, PduError> {
    let mut rest = ahs;
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let kind = rest[2];
        // AHSLength counts the bytes after the reserved byte; each AHS is
        // padded to a multiple of 4.
        let body = rest
            .get(3..3 + len)
            .ok_or(PduError::Malformed("AHS length beyond header"))?;
        if kind == 1 {
            // First byte of the body is reserved; the rest extends the CDB.
            out.extend_from_slice(body.get(1..).unwrap_or(&[]));
        }
        let step = 3 + len + pad4(3 + len);
        rest = rest.get(step..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Sequence numbers every target PDU with status carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqNums {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// A PDU the target sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Login {
        transit: bool,
        cont: bool,
        csg: u8,
        nsg: u8,
        isid: [u8; 6],
        tsih: u16,
        itt: u32,
        status_class: u8,
        status_detail: u8,
        seq: SeqNums,
        data: Bytes,
    },
    Text {
        final_: bool,
        cont: bool,
        itt: u32,
        ttt: u32,
        seq: SeqNums,
        data: Bytes,
    },
    ScsiResponse {
        itt: u32,
        status: u8,
        overflow: bool,
        underflow: bool,
        residual: u32,
        exp_data_sn: u32,
        seq: SeqNums,
        /// Sense data without the length prefix (added here).
        sense: Option<Bytes>,
    },
    DataIn {
        final_: bool,
        lun: u64,
        itt: u32,
        data_sn: u32,
        buffer_offset: u32,
        /// With `Some`, this PDU also carries the command's status
        /// (phase collapse, S bit): (status, overflow, underflow, residual).
        status: Option<(u8, bool, bool, u32)>,
        seq: SeqNums,
        data: Bytes,
    },
    R2t {
        lun: u64,
        itt: u32,
        ttt: u32,
        r2t_sn: u32,
        buffer_offset: u32,
        desired_len: u32,
        seq: SeqNums,
    },
    NopIn {
        lun: u64,
        itt: u32,
        ttt: u32,
        seq: SeqNums,
        data: Bytes,
    },
    TaskMgmt {
        itt: u32,
        response: u8,
        seq: SeqNums,
    },
    Logout {
        itt: u32,
        response: u8,
        time2wait: u16,
        time2retain: u16,
        seq: SeqNums,
    },
    Reject {
        reason: u8,
        seq: SeqNums,
        /// The rejected PDU's BHS.
        header: [u8; BHS_LEN],
    },
    Async {
        event: u8,
        param1: u16,
        param2: u16,
        param3: u16,
        seq: SeqNums,
    },
}

impl Response {
    /// Appends the encoded PDU, with padding and digests, to `out`.
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        let mut h = [0u8; BHS_LEN];
        let put32 = |h: &mut [u8; BHS_LEN], at: usize, v: u32| {
            h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        };
        let put_seq = |h: &mut [u8; BHS_LEN], s: &SeqNums| {
            h[24..28].copy_from_slice(&s.stat_sn.to_be_bytes());
            h[28..32].copy_from_slice(&s.exp_cmd_sn.to_be_bytes());
            h[32..36].copy_from_slice(&s.max_cmd_sn.to_be_bytes());
        };
        let mut sense_buf = BytesMut::new();
        let data: &[u8] = match self {
            Self::Login {
                transit,
                cont,
                csg,
                nsg,
                isid,
                tsih,
                itt,
                status_class,
                status_detail,
                seq,
                data,
            } => {
                h[0] = op::LOGIN_RESPONSE;
                h[1] = (u8::from(*transit) << 7)
                    | (u8::from(*cont) << 6)
                    | ((csg & 3) << 2)
                    | (nsg & 3);
                // Version-max and version-active: 0x00 is the only version.
                h[8..14].copy_from_slice(isid);
                h[14..16].copy_from_slice(&tsih.to_be_bytes());
                put32(&mut h, 16, *itt);
                put_seq(&mut h, seq);
                h[36] = *status_class;
                h[37] = *status_detail;
                data
            }
            Self::Text {
                final_,
                cont,
                itt,
                ttt,
                seq,
                data,
            } => {
                h[0] = op::TEXT_RESPONSE;
                h[1] = (u8::from(*final_) << 7) | (u8::from(*cont) << 6);
                put32(&mut h, 16, *itt);
                put32(&mut h, 20, *ttt);
                put_seq(&mut h, seq);
                data
            }
            Self::ScsiResponse {
                itt,
                status,
                overflow,
                underflow,
                residual,
                exp_data_sn,
                seq,
                sense,
            } => {
                h[0] = op::SCSI_RESPONSE;
                h[1] = 0x80 | (u8::from(*overflow) << 2) | (u8::from(*underflow) << 1);
                h[3] = *status;
                put32(&mut h, 16, *itt);
                put_seq(&mut h, seq);
                put32(&mut h, 36, *exp_data_sn);
                if *overflow || *underflow {
                    put32(&mut h, 44, *residual);
                }
                if let Some(s) = sense {
                    let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
                    sense_buf.put_u16(n);
                    sense_buf.extend_from_slice(&s[..usize::from(n)]);
                }
                &sense_buf
            }
            Self::DataIn {
                final_,
                lun,
                itt,
                data_sn,
                buffer_offset,
                status,
                seq,
                data,
            } => {
                h[0] = op::DATA_IN;
                h[1] = u8::from(*final_) << 7;
                h[8..16].copy_from_slice(&encode_lun(*lun));
                put32(&mut h, 16, *itt);
                put32(&mut h, 20, RESERVED_TAG);
                if let Some((st, over, under, residual)) = status {
                    h[1] |= 0x01 | (u8::from(*over) << 2) | (u8::from(*under) << 1);
                    h[3] = *st;
                    h[24..28].copy_from_slice(&seq.stat_sn.to_be_bytes());
                    if *over || *under {
                        put32(&mut h, 44, *residual);
                    }
                }
                // StatSN is only valid with the S bit; ExpCmdSN/MaxCmdSN always.
                put32(&mut h, 28, seq.exp_cmd_sn);
                put32(&mut h, 32, seq.max_cmd_sn);
                put32(&mut h, 36, *data_sn);
                put32(&mut h, 40, *buffer_offset);
                data
            }
            Self::R2t {
                lun,
                itt,
                ttt,
                r2t_sn,
                buffer_offset,
                desired_len,
                seq,
            } => {
                h[0] = op::R2T;
                h[1] = 0x80;
                h[8..16].copy_from_slice(&encode_lun(*lun));
                put32(&mut h, 16, *itt);
                put32(&mut h, 20, *ttt);
                put_seq(&mut h, seq);
                put32(&mut h, 36, *r2t_sn);
                put32(&mut h, 40, *buffer_offset);
                put32(&mut h, 44, *desired_len);
                &[]
            }
            Self::NopIn {
                lun,
                itt,
                ttt,
                seq,
                data,
            } => {
                h[0] = op::NOP_IN;
                h[1] = 0x80;
                h[8..16].copy_from_slice(&encode_lun(*lun));
                put32(&mut h, 16, *itt);
                put32(&mut h, 20, *ttt);
                put_seq(&mut h, seq);
                data
            }
            Self::TaskMgmt { itt, response, seq } => {
                h[0] = op::TASK_MGMT_RESPONSE;
                h[1] = 0x80;
                h[2] = *response;
                put32(&mut h, 16, *itt);
                put_seq(&mut h, seq);
                &[]
            }
            Self::Logout {
                itt,
                response,
                time2wait,
                time2retain,
                seq,
            } => {
                h[0] = op::LOGOUT_RESPONSE;
                h[1] = 0x80;
                h[2] = *response;
                put32(&mut h, 16, *itt);
                put_seq(&mut h, seq);
                h[40..42].copy_from_slice(&time2wait.to_be_bytes());
                h[42..44].copy_from_slice(&time2retain.to_be_bytes());
                &[]
            }
            Self::Reject {
                reason,
                seq,
                header,
            } => {
                h[0] = op::REJECT;
                h[1] = 0x80;
                h[2] = *reason;
                put32(&mut h, 16, RESERVED_TAG);
                put_seq(&mut h, seq);
                header
            }
            Self::Async {
                event,
                param1,
                param2,
                param3,
                seq,
            } => {
                h[0] = op::ASYNC;
                h[1] = 0x80;
                put32(&mut h, 16, RESERVED_TAG);
                put_seq(&mut h, seq);
                h[36] = *event;
                h[38..40].copy_from_slice(&param1.to_be_bytes());
                h[40..42].copy_from_slice(&param2.to_be_bytes());
                h[42..44].copy_from_slice(&param3.to_be_bytes());
                &[]
            }
        };
        finish(out, h, &[], data, digests);
    }
}

#[cfg(test)]
mod tests;
