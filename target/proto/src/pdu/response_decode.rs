//! Decoding the PDUs a target sends (RFC 7143 chapter 11), for initiators
//! built on this crate: the sans-IO [`crate::initiator`], the tests and the
//! load generator. The target itself never runs this code.
//!
//! Every field comes from the fixed 48-byte BHS; the only lengths taken
//! from the wire are the sense length inside a SCSI Response's data segment
//! and the rejected header inside a Reject, and both are checked against
//! the segment actually received.

use super::{decode_lun, op, PduError, RawPdu, Response, SeqNums, BHS_LEN};

impl RawPdu {
    /// StatSN, ExpCmdSN, MaxCmdSN at their usual place (bytes 24..36).
    fn seq_nums(&self) -> SeqNums {
        SeqNums {
            stat_sn: self.u32_at(24),
            exp_cmd_sn: self.u32_at(28),
            max_cmd_sn: self.u32_at(32),
        }
    }
}

impl Response {
    /// Interprets a framed PDU from a target. Opcodes only an initiator
    /// sends are an error: a target that sends them is broken or hostile.
    pub fn decode(pdu: &RawPdu) -> Result<Self, PduError> {
        let f = pdu.flags();
        let final_ = f & 0x80 != 0;
        let b = &pdu.bhs;
        Ok(match pdu.opcode() {
            op::LOGIN_RESPONSE => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Self::Login {
                    transit: f & 0x80 != 0,
                    cont: f & 0x40 != 0,
                    csg: (f >> 2) & 0x03,
                    nsg: f & 0x03,
                    isid,
                    tsih: pdu.u16_at(14),
                    itt: pdu.itt(),
                    status_class: b[36],
                    status_detail: b[37],
                    seq: pdu.seq_nums(),
                    data: pdu.data.clone(),
                }
            }
            op::TEXT_RESPONSE => Self::Text {
                final_,
                cont: f & 0x40 != 0,
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                seq: pdu.seq_nums(),
                data: pdu.data.clone(),
            },
            op::SCSI_RESPONSE => {
                let (overflow, underflow) = (f & 0x04 != 0, f & 0x02 != 0);
                Self::ScsiResponse {
                    itt: pdu.itt(),
                    response: b[2],
                    status: b[3],
                    overflow,
                    underflow,
                    // The residual count is only valid with O or U set.
                    residual: if overflow || underflow {
                        pdu.u32_at(44)
                    } else {
                        0
                    },
                    exp_data_sn: pdu.u32_at(36),
                    seq: pdu.seq_nums(),
                    sense: sense(&pdu.data)?,
                }
            }
            op::DATA_IN => {
                // The S bit: this PDU carries the command's status, and only
                // then are StatSN and the residual valid.
                let status = (f & 0x01 != 0).then(|| {
                    let (over, under) = (f & 0x04 != 0, f & 0x02 != 0);
                    let residual = if over || under { pdu.u32_at(44) } else { 0 };
                    (b[3], over, under, residual)
                });
                let mut seq = pdu.seq_nums();
                if status.is_none() {
                    seq.stat_sn = 0;
                }
                Self::DataIn {
                    final_,
                    lun: decode_lun(pdu.lun_field()),
                    itt: pdu.itt(),
                    data_sn: pdu.u32_at(36),
                    buffer_offset: pdu.u32_at(40),
                    status,
                    seq,
                    data: pdu.data.clone(),
                }
            }
            op::R2T => Self::R2t {
                lun: decode_lun(pdu.lun_field()),
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                r2t_sn: pdu.u32_at(36),
                buffer_offset: pdu.u32_at(40),
                desired_len: pdu.u32_at(44),
                seq: pdu.seq_nums(),
            },
            op::NOP_IN => Self::NopIn {
                lun: decode_lun(pdu.lun_field()),
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                seq: pdu.seq_nums(),
                data: pdu.data.clone(),
            },
            op::TASK_MGMT_RESPONSE => Self::TaskMgmt {
                itt: pdu.itt(),
                response: b[2],
                seq: pdu.seq_nums(),
            },
            op::LOGOUT_RESPONSE => Self::Logout {
                itt: pdu.itt(),
                response: b[2],
                time2wait: pdu.u16_at(40),
                time2retain: pdu.u16_at(42),
                seq: pdu.seq_nums(),
            },
            op::REJECT => {
                let mut header = [0u8; BHS_LEN];
                let got = pdu
                    .data
                    .get(..BHS_LEN)
                    .ok_or(PduError::Malformed("reject without the rejected header"))?;
                header.copy_from_slice(got);
                Self::Reject {
                    reason: b[2],
                    seq: pdu.seq_nums(),
                    header,
                }
            }
            op::ASYNC => Self::Async {
                event: b[36],
                param1: pdu.u16_at(38),
                param2: pdu.u16_at(40),
                param3: pdu.u16_at(42),
                seq: pdu.seq_nums(),
            },
            other => return Err(PduError::NotATargetPdu(other)),
        })
    }

    /// The PDU's opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Self::Login { .. } => op::LOGIN_RESPONSE,
            Self::Text { .. } => op::TEXT_RESPONSE,
            Self::ScsiResponse { .. } => op::SCSI_RESPONSE,
            Self::DataIn { .. } => op::DATA_IN,
            Self::R2t { .. } => op::R2T,
            Self::NopIn { .. } => op::NOP_IN,
            Self::TaskMgmt { .. } => op::TASK_MGMT_RESPONSE,
            Self::Logout { .. } => op::LOGOUT_RESPONSE,
            Self::Reject { .. } => op::REJECT,
            Self::Async { .. } => op::ASYNC,
        }
    }

    /// The Initiator Task Tag it answers ([`super::RESERVED_TAG`] for
    /// Reject and Async, which answer no task).
    pub fn itt(&self) -> u32 {
        match self {
            Self::Login { itt, .. }
            | Self::Text { itt, .. }
            | Self::ScsiResponse { itt, .. }
            | Self::DataIn { itt, .. }
            | Self::R2t { itt, .. }
            | Self::NopIn { itt, .. }
            | Self::TaskMgmt { itt, .. }
            | Self::Logout { itt, .. } => *itt,
            Self::Reject { .. } | Self::Async { .. } => super::RESERVED_TAG,
        }
    }

    /// The Target Transfer Tag of an R2T, NOP-In or Text response
    /// ([`super::RESERVED_TAG`] for the others).
    pub fn ttt(&self) -> u32 {
        match self {
            Self::R2t { ttt, .. } | Self::NopIn { ttt, .. } | Self::Text { ttt, .. } => *ttt,
            _ => super::RESERVED_TAG,
        }
    }

    /// Its sequence numbers.
    pub fn seq(&self) -> SeqNums {
        match self {
            Self::Login { seq, .. }
            | Self::Text { seq, .. }
            | Self::ScsiResponse { seq, .. }
            | Self::DataIn { seq, .. }
            | Self::R2t { seq, .. }
            | Self::NopIn { seq, .. }
            | Self::TaskMgmt { seq, .. }
            | Self::Logout { seq, .. }
            | Self::Reject { seq, .. }
            | Self::Async { seq, .. } => *seq,
        }
    }
}

/// Sense data of a SCSI Response: a 2-byte SenseLength, then that many
/// bytes (RFC 7143 11.4.7.2); anything after them is response data we do
/// not use. No data segment means no sense.
fn sense(data: &bytes::Bytes) -> Result<Option<bytes::Bytes>, PduError> {
    let Some(len) = data.get(..2) else {
        return if data.is_empty() {
            Ok(None)
        } else {
            Err(PduError::Malformed("one-byte SCSI response data"))
        };
    };
    let n = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if data.len() < 2 + n {
        return Err(PduError::Malformed("sense length beyond the data segment"));
    }
    Ok(Some(data.slice(2..2 + n)))
}
