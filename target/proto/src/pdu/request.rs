//! PDUs an initiator sends: fields, decoding from a framed PDU, and
//! encoding (for initiators built on this crate: tests, load generators).

use super::{
    decode_lun, encode_lun, finish, op, pad4, Digests, PduError, RawPdu, BHS_LEN, MAX_AHS_LEN,
};
use bytes::{Bytes, BytesMut};

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
