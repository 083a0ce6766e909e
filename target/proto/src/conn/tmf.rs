//! Task management requests (RFC 7143 11.5).

use super::*;

impl Connection {
    pub(super) fn on_task_mgmt(&mut self, p: TaskMgmtPdu) {
        let function = match p.function {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            other => TmfFunction::Other(other),
        };
        let answer_now = match function {
            TmfFunction::AbortTask => {
                if let Some(task) = self.tasks.get(&p.referenced_itt) {
                    if task.cmd.lun != p.lun {
                        Some(TmfResponse::TaskDoesNotExist)
                    } else {
                        self.abort(&[p.referenced_itt]);
                        Some(TmfResponse::Complete)
                    }
                } else if let Some(sn) = self.ahead_sn(p.referenced_itt) {
                    // Not started yet: drop it; its CmdSN counts as received.
                    self.ahead.remove(&sn);
                    Some(TmfResponse::Complete)
                } else if !sn_lt(p.ref_cmd_sn, self.exp_cmd_sn)
                    && !sn_lt(self.max_cmd_sn, p.ref_cmd_sn)
                    && sn_lt(p.ref_cmd_sn, p.cmd_sn)
                {
                    // Never received but inside the window: it counts as
                    // received and aborted (RFC 7143 11.5.1, case b).
                    Some(TmfResponse::Complete)
                } else {
                    // Already completed, or never sent (case c).
                    Some(TmfResponse::TaskDoesNotExist)
                }
            }
            TmfFunction::ClearAca => Some(TmfResponse::NotSupported),
            TmfFunction::TaskReassign => Some(TmfResponse::ReassignmentNotSupported),
            TmfFunction::Other(_) => Some(TmfResponse::Rejected),
            _ => None,
        };
        if let Some(response) = answer_now {
            self.complete_task_management(p.itt, response);
            return;
        }
        let all_luns = matches!(
            function,
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset
        );
        let victims: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| all_luns || t.cmd.lun == p.lun)
            .map(|(itt, _)| *itt)
            .collect();
        let aborted: Vec<u32> = victims
            .iter()
            .copied()
            .filter(|itt| self.tasks.get(itt).is_some_and(|t| t.dispatched))
            .collect();
        self.abort(&victims);
        self.ahead.retain(
            |_, (_, r)| !matches!(r, Request::ScsiCommand(c) if all_luns || c.lun == p.lun),
        );
        self.events.push_back(Event::TaskManagement(TmfRequest {
            itt: p.itt,
            function,
            lun: p.lun,
            referenced_itt: p.referenced_itt,
            aborted,
        }));
    }

    pub(super) fn ahead_sn(&self, itt: u32) -> Option<u32> {
        self.ahead.iter().find_map(|(sn, (_, r))| match r {
            Request::ScsiCommand(c) if c.itt == itt => Some(*sn),
            _ => None,
        })
    }

    pub(super) fn abort(&mut self, itts: &[u32]) {
        for itt in itts {
            self.remove_task(*itt);
        }
    }

    pub fn complete_task_management(&mut self, itt: u32, response: TmfResponse) {
        let seq = self.seq(true);
        self.send(&Response::TaskMgmt {
            itt,
            response: response as u8,
            seq,
        });
    }
}
