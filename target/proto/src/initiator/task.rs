//! SCSI commands on the initiator side: the command PDU with immediate
//! data, unsolicited and solicited Data-Out, Data-In collection, status.

use super::{Event, Initiator, InitiatorError, Phase};
use crate::pdu::{DataOutPdu, Request, Response, ScsiCommandPdu, RESERVED_TAG};
use bytes::Bytes;

/// A finished SCSI command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// iSCSI response code: 0 = completed at the target.
    pub response: u8,
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, ...).
    pub status: u8,
    /// Sense data, without its length prefix.
    pub sense: Bytes,
    /// Data-In segments with their buffer offsets, as received.
    pub data: Vec<(u32, Bytes)>,
    pub residual_under: u32,
    pub residual_over: u32,
}

impl Outcome {
    /// Sense key, ASC, ASCQ of fixed or descriptor sense data.
    pub fn sense_triplet(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 => Some((s.get(2)? & 0x0f, *s.get(12)?, *s.get(13)?)),
            0x72 | 0x73 => Some((s.get(1)? & 0x0f, *s.get(2)?, *s.get(3)?)),
            _ => None,
        }
    }

    /// Bytes of data received.
    pub fn data_len(&self) -> usize {
        self.data.iter().map(|(_, d)| d.len()).sum()
    }

    /// The data read, in buffer order (segments arrive in order at
    /// ErrorRecoveryLevel 0 with DataPDUInOrder).
    pub fn data_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data_len());
        for (_, d) in &self.data {
            out.extend_from_slice(d);
        }
        out
    }
}

/// A command in flight.
pub(super) struct Task {
    lun: u64,
    /// All of the write's data; R2Ts are answered from it.
    write: Bytes,
    outcome: Outcome,
}

impl Initiator {
    /// Starts a SCSI command on LUN 0: `cdb` (padded to 16 bytes, longer
    /// ones go into an AHS), reading up to `read_len` bytes or writing
    /// `write`. Its end comes as [`Event::CommandDone`]. Returns its ITT.
    pub fn command(
        &mut self,
        cdb: &[u8],
        read_len: u32,
        write: Bytes,
    ) -> Result<u32, InitiatorError> {
        if self.phase != Phase::FullFeature {
            return Err(InitiatorError::NotLoggedIn);
        }
        let write_len =
            u32::try_from(write.len()).map_err(|_| InitiatorError::TooLong(write.len()))?;
        let itt = self.next_itt();
        let cmd_sn = self.take_cmd_sn(false);
        // Unsolicited data (immediate, then Data-Out without an R2T) up to
        // FirstBurstLength, as negotiated; the rest waits for R2Ts.
        let unsolicited = if self.initial_r2t {
            0
        } else {
            write_len.min(self.first_burst)
        };
        let immediate = if self.immediate_data {
            write_len.min(self.first_burst).min(self.target_max_recv)
        } else {
            0
        };
        let mut c = cdb.to_vec();
        if c.len() < 16 {
            c.resize(16, 0);
        }
        self.send_raw(&Request::ScsiCommand(ScsiCommandPdu {
            immediate: false,
            final_: unsolicited <= immediate,
            read: read_len > 0,
            write: write_len > 0,
            attr: 1,
            lun: 0,
            itt,
            expected_len: read_len.max(write_len),
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::from(c),
            data: write.slice(..immediate as usize),
        }));
        if unsolicited > immediate {
            self.data_out(0, itt, RESERVED_TAG, &write, immediate, unsolicited);
        }
        self.tasks.insert(
            itt,
            Task {
                lun: 0,
                write,
                outcome: Outcome::default(),
            },
        );
        Ok(itt)
    }

    /// Data-Out PDUs for `write[from..to]`, no longer than the target takes.
    fn data_out(&mut self, lun: u64, itt: u32, ttt: u32, write: &Bytes, from: u32, to: u32) {
        let mut at = from;
        let mut data_sn = 0;
        while at < to {
            let n = (to - at).min(self.target_max_recv);
            let pdu = Request::DataOut(DataOutPdu {
                final_: at + n == to,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: at,
                data: write.slice(at as usize..(at + n) as usize),
            });
            self.send_raw(&pdu);
            at += n;
            data_sn += 1;
        }
    }

    /// Data-In, R2T or SCSI Response for a tracked task.
    pub(super) fn on_task_response(&mut self, resp: Response) -> Result<(), InitiatorError> {
        let itt = resp.itt();
        let Some(task) = self.tasks.get_mut(&itt) else {
            return Ok(());
        };
        match resp {
            Response::DataIn {
                buffer_offset,
                status,
                data,
                ..
            } => {
                if !data.is_empty() {
                    task.outcome.data.push((buffer_offset, data));
                }
                if let Some((st, over, under, residual)) = status {
                    task.outcome.status = st;
                    task.outcome.residual_over = if over { residual } else { 0 };
                    task.outcome.residual_under = if under { residual } else { 0 };
                    self.finish(itt);
                }
            }
            Response::ScsiResponse {
                response,
                status,
                overflow,
                underflow,
                residual,
                sense,
                ..
            } => {
                task.outcome.response = response;
                task.outcome.status = status;
                task.outcome.sense = sense.unwrap_or_default();
                task.outcome.residual_over = if overflow { residual } else { 0 };
                task.outcome.residual_under = if underflow { residual } else { 0 };
                self.finish(itt);
            }
            Response::R2t {
                ttt,
                buffer_offset,
                desired_len,
                ..
            } => {
                let have = task.write.len();
                let end = buffer_offset
                    .checked_add(desired_len)
                    .filter(|&e| e as usize <= have)
                    .ok_or(InitiatorError::R2tBeyondData {
                        offset: buffer_offset,
                        len: desired_len,
                        have,
                    })?;
                let (lun, write) = (task.lun, task.write.clone());
                self.data_out(lun, itt, ttt, &write, buffer_offset, end);
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, itt: u32) {
        if let Some(task) = self.tasks.remove(&itt) {
            self.events.push_back(Event::CommandDone {
                itt,
                outcome: task.outcome,
            });
        }
    }
}
