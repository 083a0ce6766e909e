//! A logical unit's shared state and the SPC commands that need no block
//! I/O: unit attentions per I_T nexus, SPC-2 RESERVE/RELEASE, persistent
//! reservations, mode pages. The driver holds it in a mutex for the short
//! time a call takes and does the block I/O itself.

use super::cdb::{access, Access, Cdb};
use super::inquiry::{self, Identity, Limits};
use super::mode::ModeState;
use super::opcode::*;
use super::pr::PrState;
use super::removable::Medium;
use super::sanitize;
use super::sbc::Geometry;
use super::sense::Sense;
use super::xcopy::{self, CopyStatus};
use super::{good, opcodes};
use crate::task::{Nexus, ScsiResult, ScsiStatus, TmfFunction};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// What [`LogicalUnit::spc`] decided for a command.
#[derive(Debug)]
pub enum Spc {
    /// Answered; `pr_changed` says the PR state must be persisted.
    Done {
        result: ScsiResult,
        pr_changed: bool,
    },
    /// A block command: the driver decodes it with `sbc` and does the I/O.
    Block,
}

pub struct LogicalUnit {
    pub id: Identity,
    pub geo: Geometry,
    pub limits: Limits,
    pub mode: ModeState,
    pub pr: PrState,
    /// Nexuses that have sent a command since power on (or their loss).
    seen: HashSet<Nexus>,
    /// Pending unit attentions, oldest first, per nexus.
    uas: HashMap<Nexus, Vec<Sense>>,
    /// SPC-2 RESERVE(6/10) holder.
    reserved_by: Option<Nexus>,
    /// Whether a SANITIZE runs or failed; the driver moves it along.
    pub sanitize: sanitize::State,
    /// Held EXTENDED COPY results per nexus, oldest first.
    copy_results: HashMap<Nexus, Vec<(u8, CopyStatus)>>,
    /// Loaded or ejected, and who prevents removal (removable LUs).
    pub medium: Medium,
}

impl LogicalUnit {
    pub fn new(id: Identity, geo: Geometry, volatile_cache: bool, pr: PrState) -> Self {
        // At most 8 MiB per command: the whole Data-Out is held in memory.
        let max_transfer_blocks = (8 << 20) / geo.block_size.max(512);
        let limits = Limits {
            max_transfer_blocks,
            // An atomic write holds the LU's writes off for its duration;
            // anything a single command may carry is short enough.
            max_atomic_transfer_blocks: max_transfer_blocks,
            ..Limits::DEFAULT
        };
        let geo = Geometry {
            max_transfer_blocks: limits.max_transfer_blocks,
            ..geo
        };
        let medium = Medium::new(id.removable);
        Self {
            id,
            geo,
            limits,
            mode: ModeState::new(volatile_cache),
            pr,
            seen: HashSet::new(),
            uas: HashMap::new(),
            reserved_by: None,
            sanitize: sanitize::State::Idle,
            copy_results: HashMap::new(),
            medium,
        }
    }

    /// The geometry commands see now: software write protect (SWP in the
    /// control mode page) makes a writable medium read-only.
    pub fn current_geo(&self) -> Geometry {
        Geometry {
            read_only: self.geo.read_only || self.mode.swp,
            ..self.geo
        }
    }

    /// Writes must reach stable storage before completing (WCE off).
    pub fn write_through(&self) -> bool {
        !self.mode.wce
    }

    fn add_ua(&mut self, n: &Nexus, s: Sense) {
        let q = self.uas.entry(n.clone()).or_default();
        if !q.contains(&s) {
            q.push(s);
        }
    }

    /// Unit attention to every nexus this LU knows, except `but`.
    fn ua_all(&mut self, s: Sense, but: Option<&Nexus>) {
        let all: Vec<Nexus> = self
            .seen
            .iter()
            .filter(|n| Some(*n) != but)
            .cloned()
            .collect();
        for n in all {
            self.add_ua(&n, s);
        }
    }

    /// Runs the checks every command goes through (unit attention,
    /// reservation conflicts) and answers the commands that need no block
    /// I/O. `data` is the command's Data-Out; `lun` the LUN it was sent to
    /// (REPORT LUNS from here lists only it: the driver answers REPORT LUNS
    /// for the whole target itself).
    pub fn spc(&mut self, n: &Nexus, lun: u64, cdb: &[u8], data: &[u8]) -> Spc {
        let c = Cdb(cdb);
        let op = c.opcode();
        if self.seen.insert(n.clone()) {
            let q = self.uas.entry(n.clone()).or_default();
            q.retain(|s| *s != Sense::POWER_ON_RESET);
            q.insert(0, Sense::POWER_ON_RESET);
        }
        // INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear UAs.
        let ua_exempt = matches!(op, INQUIRY | REPORT_LUNS | REQUEST_SENSE);
        if !ua_exempt {
            if let Some(q) = self.uas.get_mut(n) {
                if !q.is_empty() {
                    let s = q.remove(0);
                    return done(s.into_result());
                }
            }
        }
        if !opcodes::supported(cdb, self.geo.thin) {
            return done(Sense::INVALID_OPCODE.into_result());
        }
        match self.sanitize {
            sanitize::State::Running { progress } if !sanitize::allowed_while_running(op) => {
                return done(sanitize::in_progress(progress).into_result());
            }
            sanitize::State::Failed if sanitize::medium_access(op) => {
                return done(sanitize::FAILED.into_result());
            }
            _ => {}
        }
        if self.reservation_conflict(n, cdb) {
            return done(conflict());
        }
        match op {
            TEST_UNIT_READY => self.with_medium(|| good(Bytes::new(), 0)),
            REQUEST_SENSE => self.request_sense(n, cdb),
            INQUIRY => done(inquiry::inquiry(cdb, &self.id, &self.geo, &self.limits, n)),
            REPORT_LUNS => done(super::spc::report_luns(&[lun], cdb)),
            MODE_SENSE_6 | MODE_SENSE_10 => done(self.mode.sense(cdb, &self.current_geo())),
            MODE_SELECT_6 | MODE_SELECT_10 => match self.mode.select(cdb, data, &self.geo) {
                Ok(changed) => {
                    if changed {
                        self.ua_all(Sense::MODE_PARAMETERS_CHANGED, Some(n));
                    }
                    done(good(Bytes::new(), 0))
                }
                Err(r) => done(r),
            },
            RESERVE_6 | RESERVE_10 => self.reserve(n, cdb),
            RELEASE_6 | RELEASE_10 => {
                if self.reserved_by.as_ref() == Some(n) {
                    self.reserved_by = None;
                }
                done(good(Bytes::new(), 0))
            }
            PERSISTENT_RESERVE_IN => done(self.pr.prin(cdb)),
            PERSISTENT_RESERVE_OUT => match self.pr.prout(n, cdb, data) {
                Ok(out) => {
                    for (who, s) in out.uas {
                        self.add_ua(&who, s);
                    }
                    Spc::Done {
                        result: good(Bytes::new(), 0),
                        pr_changed: out.changed,
                    }
                }
                Err(r) => done(r),
            },
            MAINTENANCE_IN => done(opcodes::report(cdb, self.geo.thin)),
            RECEIVE_COPY_RESULTS => {
                let held = self.copy_results.get(n);
                done(xcopy::receive_copy_results(cdb, |id| {
                    held.and_then(|h| h.iter().rev().find(|(i, _)| *i == id))
                        .map(|(_, s)| *s)
                }))
            }
            // Loading puts the same image back, so no nexus is told the
            // medium may have changed: while it was out they saw NOT READY.
            START_STOP_UNIT => match self.medium.start_stop(cdb) {
                Ok(()) => done(good(Bytes::new(), 0)),
                Err(s) => done(s.into_result()),
            },
            PREVENT_ALLOW_MEDIUM_REMOVAL => match self.medium.prevent_allow(n, cdb) {
                Ok(()) => done(good(Bytes::new(), 0)),
                Err(s) => done(s.into_result()),
            },
            READ_DEFECT_DATA_10 | READ_DEFECT_DATA_12 => self.with_medium(|| defect_data(cdb)),
            // Block commands all need the medium.
            _ => match self.medium.not_ready() {
                Some(s) => done(s.into_result()),
                None => Spc::Block,
            },
        }
    }

    /// Answers with `f` when the medium is present, NOT READY otherwise.
    fn with_medium(&self, f: impl FnOnce() -> ScsiResult) -> Spc {
        done(match self.medium.not_ready() {
            Some(s) => s.into_result(),
            None => f(),
        })
    }

    fn reservation_conflict(&self, n: &Nexus, cdb: &[u8]) -> bool {
        let op = Cdb(cdb).opcode();
        if let Some(holder) = &self.reserved_by {
            // SPC-2: a reserved LU refuses other nexuses except for commands
            // that report state or release (a no-op for non-holders).
            let allowed = matches!(
                op,
                INQUIRY
                    | REPORT_LUNS
                    | REQUEST_SENSE
                    | RELEASE_6
                    | RELEASE_10
                    | MAINTENANCE_IN
                    | PERSISTENT_RESERVE_IN
                    | READ_CAPACITY_10
            );
            if holder != n && !allowed {
                return true;
            }
        }
        // SPC-2 RESERVE/RELEASE are refused while anyone holds a persistent
        // registration (SPC-4 persistent reservations, SPC-2 compatibility).
        if matches!(op, RESERVE_6 | RELEASE_6 | RESERVE_10 | RELEASE_10) && !self.pr.regs.is_empty()
        {
            return true;
        }
        let a = access(cdb);
        if a == Access::Exempt {
            return false;
        }
        self.pr.conflicts(n, a)
    }

    fn reserve(&mut self, n: &Nexus, cdb: &[u8]) -> Spc {
        let c = Cdb(cdb);
        // Third-party and extent reservations are not supported.
        let b1 = c.b(1);
        if (c.opcode() == 0x16 && b1 & 0x11 != 0) || (c.opcode() == 0x56 && b1 & 0x12 != 0) {
            return done(Sense::INVALID_FIELD_IN_CDB.cdb_field(1, None).into_result());
        }
        match &self.reserved_by {
            Some(h) if h != n => done(conflict()),
            _ => {
                self.reserved_by = Some(n.clone());
                done(good(Bytes::new(), 0))
            }
        }
    }

    fn request_sense(&mut self, n: &Nexus, cdb: &[u8]) -> Spc {
        let c = Cdb(cdb);
        let alloc = usize::from(c.b(4));
        if c.b(1) & 0x01 != 0 {
            return done(
                Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(0))
                    .into_result(),
            );
        }
        // A pending unit attention is reported (and cleared) as the sense data.
        let s = self
            .uas
            .get_mut(n)
            .and_then(|q| {
                if q.is_empty() {
                    None
                } else {
                    Some(q.remove(0))
                }
            })
            .unwrap_or(match self.sanitize {
                sanitize::State::Running { progress } => sanitize::in_progress(progress),
                _ => Sense::NO_SENSE,
            });
        done(super::good_vec(s.to_fixed().to_vec(), alloc))
    }

    /// Holds an EXTENDED COPY's outcome for RECEIVE COPY RESULTS.
    pub fn hold_copy_result(&mut self, n: &Nexus, list_id: u8, status: CopyStatus) {
        let held = self.copy_results.entry(n.clone()).or_default();
        held.retain(|(i, _)| *i != list_id);
        if held.len() >= xcopy::HELD_RESULTS {
            held.remove(0);
        }
        held.push((list_id, status));
    }

    /// Effect of a task management function on this LU.
    pub fn task_management(&mut self, n: &Nexus, f: TmfFunction) {
        match f {
            TmfFunction::LogicalUnitReset => {
                self.reserved_by = None;
                self.medium.reset();
                self.ua_all(Sense::BUS_DEVICE_RESET, None);
            }
            TmfFunction::TargetWarmReset => {
                self.reserved_by = None;
                self.medium.reset();
                self.ua_all(Sense::POWER_ON_RESET, None);
            }
            TmfFunction::TargetColdReset => {
                self.reserved_by = None;
                self.medium.reset();
                self.ua_all(Sense::POWER_ON_RESET, None);
            }
            TmfFunction::ClearTaskSet => {
                self.ua_all(Sense::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR, Some(n));
            }
            _ => {}
        }
    }

    /// The I_T nexus is gone: drop its SPC-2 reservation, its prevention
    /// of medium removal and its state. Persistent reservations stay.
    pub fn nexus_lost(&mut self, n: &Nexus) {
        if self.reserved_by.as_ref() == Some(n) {
            self.reserved_by = None;
        }
        self.seen.remove(n);
        self.uas.remove(n);
        self.copy_results.remove(n);
        self.medium.nexus_lost(n);
    }
}

/// READ DEFECT DATA(10/12) (SBC-3 5.11, 5.12): a virtual medium has no
/// defects, so the lists asked for are valid and empty.
fn defect_data(cdb: &[u8]) -> ScsiResult {
    let c = Cdb(cdb);
    if c.opcode() == 0x37 {
        let flags = c.b(2) & 0x1F;
        let d = vec![0, flags, 0, 0];
        super::good_vec(d, usize::from(c.u16(7)))
    } else {
        let flags = c.b(1) & 0x1F;
        let d = vec![0, flags, 0, 0, 0, 0, 0, 0];
        super::good_vec(d, c.u32(6) as usize)
    }
}

fn done(result: ScsiResult) -> Spc {
    Spc::Done {
        result,
        pr_changed: false,
    }
}

fn conflict() -> ScsiResult {
    ScsiResult {
        status: ScsiStatus::RESERVATION_CONFLICT,
        sense: None,
        data_in: Bytes::new(),
        transfer_len: 0,
    }
}

#[cfg(test)]
mod tests;
