//! SCSI commands on a connection: write data (immediate, unsolicited,
//! solicited by R2T), dispatch, and Data-In/status on completion.

use super::*;

impl Connection {
    pub(super) fn on_scsi_command(&mut self, p: ScsiCommandPdu, raw: &RawPdu) {
        if self.tasks.contains_key(&p.itt) {
            self.send_reject(reject::TASK_IN_PROGRESS, raw);
            return;
        }
        // Immediate commands bypass the CmdSN window; they still may not
        // run more tasks than the window allows (RFC 7143 11.3 lets us
        // reject them), or a flood of immediate reads would be unbounded.
        if p.immediate && self.tasks.len() >= self.config.cmd_window.max(1) as usize {
            self.send_reject(reject::IMMEDIATE_COMMAND_REJECT, raw);
            return;
        }
        let write_len = if p.write { p.expected_len } else { 0 };
        let immediate_len = p.data.len() as u32;
        // Immediate data needs ImmediateData=Yes and may not exceed the
        // first burst or the write itself (RFC 7143 13.13, 13.14).
        if immediate_len > 0
            && (!self.params.immediate_data
                || !p.write
                || immediate_len > write_len
                || immediate_len > self.params.first_burst)
        {
            self.send_reject(reject::PROTOCOL_ERROR, raw);
            return;
        }
        if write_len > self.config.max_transfer {
            // Too large to buffer: fail the command without taking its data.
            let itt = p.itt;
            self.window_used += u32::from(!p.immediate);
            self.tasks.insert(itt, self.new_task(p, 0));
            self.finish_task(itt, too_large());
            return;
        }
        let windowed = !p.immediate;
        let mut task = self.new_task(p, write_len);
        task.windowed = windowed;
        self.window_used += u32::from(windowed);
        let itt = task.cmd.itt;
        let unsolicited = if !task.cmd.final_ {
            self.params.first_burst.min(write_len)
        } else {
            immediate_len
        };
        task.data.reserve(unsolicited as usize);
        task.data.extend_from_slice(&task.cmd.data);
        task.cmd.data = Bytes::new();
        // F=0 announces unsolicited Data-Out up to FirstBurstLength.
        task.unsolicited_open = !task.cmd.final_ && write_len > immediate_len;
        task.next_r2t_offset = if task.unsolicited_open {
            self.params.first_burst.min(write_len)
        } else {
            immediate_len
        };
        self.tasks.insert(itt, task);
        self.advance_task(itt);
    }

    /// Takes a task out, giving back its share of the CmdSN window and of
    /// the R2T budget, and lets tasks waiting for that budget go on.
    pub(super) fn remove_task(&mut self, itt: u32) -> Option<Task> {
        let t = self.tasks.remove(&itt)?;
        if t.windowed {
            self.window_used = self.window_used.saturating_sub(1);
        }
        if t.dispatched && t.cmd.read {
            let owed = u64::from(t.cmd.expected_len.min(self.config.max_transfer));
            self.read_owed = self.read_owed.saturating_sub(owed);
        }
        let owed: u64 = t.r2ts.iter().map(|r| u64::from(r.len - r.received)).sum();
        self.r2t_outstanding = self.r2t_outstanding.saturating_sub(owed);
        self.resume_waiting();
        Some(t)
    }

    /// Tasks that stopped soliciting data for lack of budget get their R2Ts.
    pub(super) fn resume_waiting(&mut self) {
        if !self.r2t_waiting {
            return;
        }
        self.r2t_waiting = false;
        let waiting: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                !t.dispatched && !t.unsolicited_open && t.next_r2t_offset < t.write_len
            })
            .map(|(itt, _)| *itt)
            .collect();
        for itt in waiting {
            self.advance_task(itt);
        }
    }

    pub(super) fn new_task(&self, cmd: ScsiCommandPdu, write_len: u32) -> Task {
        Task {
            // Grown as data is solicited, so buffered memory follows the R2T
            // budget rather than what initiators announce.
            data: BytesMut::new(),
            cmd,
            write_len,
            unsolicited_open: false,
            next_unsolicited_sn: 0,
            r2ts: Vec::new(),
            next_r2t_offset: 0,
            r2t_sn: 0,
            dispatched: false,
            windowed: false,
        }
    }

    /// Sends R2Ts a task needs, or hands it out once all its data is here.
    pub(super) fn advance_task(&mut self, itt: u32) {
        let max_r2t = self.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = self.params.max_burst.max(512);
        let seq = self.seq(false);
        let mut r2ts = Vec::new();
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.dispatched {
            return;
        }
        let received = task.data.len() as u32;
        if received >= task.write_len && !task.unsolicited_open {
            task.dispatched = true;
            if task.cmd.read {
                // No more than a logical unit returns for one command.
                self.read_owed += u64::from(task.cmd.expected_len.min(self.config.max_transfer));
            }
            let cmd = &task.cmd;
            let ev = Event::Command(ScsiCommand {
                itt,
                lun: cmd.lun,
                cdb: cmd.cdb.clone(),
                expected_len: cmd.expected_len,
                read: cmd.read,
                write: cmd.write,
                attr: match cmd.attr {
                    0 => TaskAttr::Untagged,
                    2 => TaskAttr::Ordered,
                    3 => TaskAttr::HeadOfQueue,
                    4 => TaskAttr::Aca,
                    _ => TaskAttr::Simple,
                },
                data_out: std::mem::take(&mut task.data).freeze(),
            });
            self.events.push_back(ev);
            return;
        }
        if task.unsolicited_open {
            return;
        }
        while task.r2ts.len() < max_r2t && task.next_r2t_offset < task.write_len {
            let len = (task.write_len - task.next_r2t_offset).min(max_burst);
            // Solicit no more than the connection's budget at once (but
            // always something, so no task waits forever).
            if self.r2t_outstanding > 0
                && self.r2t_outstanding + u64::from(len) > self.config.r2t_budget
            {
                self.r2t_waiting = true;
                break;
            }
            self.r2t_outstanding += u64::from(len);
            task.data.reserve(len as usize);
            let ttt = next_tag(&mut self.next_ttt);
            task.r2ts.push(R2t {
                ttt,
                offset: task.next_r2t_offset,
                len,
                received: 0,
                next_data_sn: 0,
            });
            r2ts.push(Response::R2t {
                lun: task.cmd.lun,
                itt,
                ttt,
                r2t_sn: task.r2t_sn,
                buffer_offset: task.next_r2t_offset,
                desired_len: len,
                seq,
            });
            task.r2t_sn = task.r2t_sn.wrapping_add(1);
            task.next_r2t_offset += len;
        }
        for r in &r2ts {
            self.send(r);
        }
    }

    pub(super) fn on_data_out(&mut self, p: DataOutPdu, raw: &RawPdu) -> Result<(), ConnError> {
        let Some(task) = self.tasks.get_mut(&p.itt) else {
            // The rest of a burst for a task we already ended is dropped;
            // data for a task that never existed is rejected.
            if !self.ended_itts.contains(&p.itt) {
                self.send_reject(reject::INVALID_PDU_FIELD, raw);
            }
            return Ok(());
        };
        let len = p.data.len() as u32;
        let at = task.data.len() as u32;
        if p.ttt == RESERVED_TAG {
            let limit = self.params.first_burst.min(task.write_len);
            if !task.unsolicited_open
                || p.buffer_offset != at
                || at.saturating_add(len) > limit
                || p.data_sn != task.next_unsolicited_sn
            {
                self.data_phase_error(p.itt);
                return Ok(());
            }
            task.next_unsolicited_sn = task.next_unsolicited_sn.wrapping_add(1);
            task.data.extend_from_slice(&p.data);
            if p.final_ || at + len >= limit {
                task.unsolicited_open = false;
                if task.next_r2t_offset < at + len {
                    task.next_r2t_offset = at + len;
                }
            }
        } else {
            let Some(i) = task.r2ts.iter().position(|r| r.ttt == p.ttt) else {
                self.send_reject(reject::INVALID_PDU_FIELD, raw);
                return Ok(());
            };
            let r = &mut task.r2ts[i];
            // DataPDUInOrder=Yes: each PDU continues where the last ended.
            if p.buffer_offset != r.offset + r.received
                || p.buffer_offset != at
                || r.received + len > r.len
                || p.data_sn != r.next_data_sn
            {
                self.data_phase_error(p.itt);
                return Ok(());
            }
            r.received += len;
            r.next_data_sn = r.next_data_sn.wrapping_add(1);
            self.r2t_outstanding = self.r2t_outstanding.saturating_sub(u64::from(len));
            task.data.extend_from_slice(&p.data);
            if p.final_ || r.received == r.len {
                if r.received < r.len {
                    self.data_phase_error(p.itt);
                    return Ok(());
                }
                task.r2ts.remove(i);
            }
        }
        self.advance_task(p.itt);
        self.resume_waiting();
        Ok(())
    }

    /// Reports a command's result (ignored if the task was aborted).
    pub fn complete_command(&mut self, itt: u32, result: ScsiResult) {
        if self.tasks.get(&itt).is_some_and(|t| t.dispatched) {
            self.finish_task(itt, result);
        }
    }

    pub(super) fn finish_task(&mut self, itt: u32, result: ScsiResult) {
        let Some(task) = self.remove_task(itt) else {
            return;
        };
        if self.closing {
            return;
        }
        let cmd = &task.cmd;
        let expected = cmd.expected_len;
        let good = result.status == ScsiStatus::GOOD;
        // Residuals describe the data transfer; a failed command moved none
        // that counts, so only successful commands report them.
        let (overflow, underflow, residual) = if !good || (!cmd.read && !cmd.write) {
            (false, false, 0)
        } else if result.transfer_len > expected {
            (true, false, result.transfer_len - expected)
        } else if result.transfer_len < expected {
            (false, true, expected - result.transfer_len)
        } else {
            (false, false, 0)
        };
        let data = if cmd.read {
            let n = result.data_in.len().min(expected as usize);
            result.data_in.slice(..n)
        } else {
            Bytes::new()
        };
        let mrdsl = self.params.initiator_mrdsl.max(512) as usize;
        let collapse = good && result.sense.is_none() && !data.is_empty();
        let mut data_sn = 0u32;
        let mut offset = 0usize;
        while offset < data.len() {
            let n = (data.len() - offset).min(mrdsl);
            let last = offset + n == data.len();
            let status =
                (last && collapse).then_some((result.status.0, overflow, underflow, residual));
            let seq = self.seq(status.is_some());
            self.send(&Response::DataIn {
                final_: last,
                lun: cmd.lun,
                itt,
                data_sn,
                buffer_offset: offset as u32,
                status,
                seq,
                data: data.slice(offset..offset + n),
            });
            data_sn = data_sn.wrapping_add(1);
            offset += n;
        }
        if !collapse {
            let seq = self.seq(true);
            self.send(&Response::ScsiResponse {
                itt,
                response: 0,
                status: result.status.0,
                overflow,
                underflow,
                residual,
                exp_data_sn: data_sn,
                seq,
                sense: result.sense,
            });
        }
    }

    /// Data-Out out of sequence. ErrorRecoveryLevel 0 has no recovery
    /// within a command, so the command ends with CHECK CONDITION and the
    /// session carries on; the rest of its burst is dropped.
    pub(super) fn data_phase_error(&mut self, itt: u32) {
        if self.ended_itts.len() >= ENDED_ITTS {
            self.ended_itts.pop_front();
        }
        self.ended_itts.push_back(itt);
        self.finish_task(itt, Sense::DATA_PHASE_ERROR.into_result());
    }
}

/// CHECK CONDITION for a transfer larger than the target buffers.
fn too_large() -> ScsiResult {
    Sense::INVALID_FIELD_IN_CDB.into_result()
}
