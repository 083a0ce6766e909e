//! PDUs the target sends, and their encoding.

use super::{encode_lun, finish, op, Digests, BHS_LEN, RESERVED_TAG};
use bytes::{BufMut, Bytes, BytesMut};

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
        /// iSCSI response code (11.4.3): 0 = command completed at target.
        response: u8,
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
                response,
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
                h[2] = *response;
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
