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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lu() -> LogicalUnit {
        lu_with(false)
    }

    fn lu_with(removable: bool) -> LogicalUnit {
        let id = Identity {
            vendor: "BOOTD".into(),
            product: "t".into(),
            revision: "1".into(),
            serial: "S".into(),
            naa_id: 7,
            removable,
        };
        let geo = Geometry {
            block_size: 512,
            num_blocks: 1000,
            read_only: false,
            thin: true,
            max_transfer_blocks: 0,
        };
        LogicalUnit::new(id, geo, true, PrState::default())
    }

    fn nexus(i: u8) -> Nexus {
        Nexus {
            initiator_port: format!("iqn.i{i},i,0x{i}").into(),
            target_port: "iqn.t,t,0x1".into(),
            relative_port: 1,
        }
    }

    fn answer(s: Spc) -> Option<ScsiResult> {
        match s {
            Spc::Done { result, .. } => Some(result),
            Spc::Block => None,
        }
    }

    fn asc(s: Spc) -> Option<(u8, u8)> {
        answer(s).and_then(|r| r.sense).map(|s| (s[12], s[13]))
    }

    #[test]
    fn ua_order_and_exemptions() {
        let mut lu = lu();
        let a = nexus(1);
        assert_eq!(asc(lu.spc(&a, 0, &[0x12, 0, 0, 0, 36, 0], &[])), None);
        assert_eq!(
            asc(lu.spc(&a, 0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[])),
            Some((0x29, 0))
        );
        assert!(matches!(
            lu.spc(&a, 0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]),
            Spc::Block
        ));
        lu.task_management(&a, TmfFunction::TargetWarmReset);
        lu.task_management(&a, TmfFunction::LogicalUnitReset);
        assert_eq!(asc(lu.spc(&a, 0, &[0x00], &[])), Some((0x29, 0)));
        assert_eq!(asc(lu.spc(&a, 0, &[0x00], &[])), Some((0x29, 3)));
        assert_eq!(asc(lu.spc(&a, 0, &[0x00], &[])), None);
        // Unknown opcodes are INVALID COMMAND OPERATION CODE.
        assert_eq!(asc(lu.spc(&a, 0, &[0xC0], &[])), Some((0x20, 0)));
    }

    #[test]
    fn spc2_reservation_refused_with_registrations() {
        let mut lu = lu();
        let a = nexus(1);
        lu.spc(&a, 0, &[0x00], &[]);
        let mut p = vec![0u8; 8];
        p.extend_from_slice(&5u64.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        let reg = lu.spc(&a, 0, &[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
        assert!(matches!(
            reg,
            Spc::Done {
                pr_changed: true,
                ..
            }
        ));
        let r = answer(lu.spc(&a, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
        assert_eq!(r.map(|r| r.status), Some(ScsiStatus::RESERVATION_CONFLICT));
    }

    #[test]
    fn sanitize_states_gate_commands() {
        let mut lu = lu();
        let n = nexus(1);
        lu.spc(&n, 0, &[0x00], &[]);
        lu.sanitize = sanitize::State::Running { progress: 0x8000 };
        assert_eq!(asc(lu.spc(&n, 0, &[0x00], &[])), Some((0x04, 0x1B)));
        assert_eq!(
            asc(lu.spc(&n, 0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[])),
            Some((0x04, 0x1B))
        );
        assert_eq!(asc(lu.spc(&n, 0, &[0x12, 0, 0, 0, 36, 0], &[])), None);
        let rs = answer(lu.spc(&n, 0, &[0x03, 0, 0, 0, 18, 0], &[]));
        let d = rs.map(|r| r.data_in.to_vec()).unwrap_or_default();
        assert_eq!((d[2], d[12], d[13]), (0x02, 0x04, 0x1B));
        assert_eq!(&d[15..18], &[0x80, 0x80, 0x00]);
        lu.sanitize = sanitize::State::Failed;
        assert_eq!(
            asc(lu.spc(&n, 0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[])),
            Some((0x31, 0x03))
        );
        assert!(matches!(lu.spc(&n, 0, &[0x00], &[]), Spc::Done { .. }));
        assert!(matches!(lu.spc(&n, 0, &[0x48, 0x1F], &[]), Spc::Block));
    }

    #[test]
    fn software_write_protect() {
        let mut lu = lu();
        let n = nexus(1);
        lu.spc(&n, 0, &[0x00], &[]);
        let ch = answer(lu.spc(&n, 0, &[0x1A, 0x08, 0x4A, 0, 255, 0], &[]));
        let page = ch.map(|r| r.data_in[4..].to_vec()).unwrap_or_default();
        assert_eq!((page[0], page[4]), (0x0A, 0x08));
        let cur = answer(lu.spc(&n, 0, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]));
        let mut list = vec![0, 0, 0, 0];
        list.extend_from_slice(&cur.map(|r| r.data_in[4..].to_vec()).unwrap_or_default());
        list[4 + 4] |= 0x08;
        let sel = [0x15, 0x10, 0, 0, list.len() as u8, 0];
        assert!(answer(lu.spc(&n, 0, &sel, &list)).is_some_and(|r| r.sense.is_none()));
        assert!(lu.current_geo().read_only);
        let ms = answer(lu.spc(&n, 0, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]));
        assert_eq!(
            ms.map(|r| (r.data_in[2] & 0x80, r.data_in[8] & 0x08)),
            Some((0x80, 0x08))
        );
    }

    const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    const EJECT: [u8; 6] = [0x1B, 0, 0, 0, 0x02, 0];
    const LOAD: [u8; 6] = [0x1B, 0, 0, 0, 0x03, 0];
    const PREVENT: [u8; 6] = [0x1E, 0, 0, 0, 1, 0];
    const ALLOW: [u8; 6] = [0x1E, 0, 0, 0, 0, 0];

    /// (sense key, ASC, ASCQ) of a CHECK CONDITION answered here.
    fn key_asc(s: Spc) -> Option<(u8, u8, u8)> {
        answer(s)
            .and_then(|r| r.sense)
            .map(|s| (s[2] & 0x0F, s[12], s[13]))
    }

    #[test]
    fn ejected_medium_is_not_ready() {
        let mut lu = lu_with(true);
        let (a, b) = (nexus(1), nexus(2));
        for n in [&a, &b] {
            assert_eq!(asc(lu.spc(n, 0, &TUR, &[])), Some((0x29, 0)));
        }
        let inq = answer(lu.spc(&a, 0, &[0x12, 0, 0, 0, 36, 0], &[]));
        assert_eq!(inq.map(|r| r.data_in[1]), Some(0x80));
        assert_eq!(key_asc(lu.spc(&a, 0, &EJECT, &[])), None);
        assert!(!lu.medium.loaded());
        for cdb in [&TUR[..], &READ10, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]] {
            assert_eq!(key_asc(lu.spc(&b, 0, cdb, &[])), Some((2, 0x3A, 0x02)));
        }
        let rc16 = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        assert_eq!(key_asc(lu.spc(&a, 0, &rc16, &[])), Some((2, 0x3A, 0x02)));
        // Commands that do not touch the medium still work.
        assert_eq!(asc(lu.spc(&a, 0, &[0x12, 0, 0, 0, 36, 0], &[])), None);
        assert_eq!(asc(lu.spc(&a, 0, &[0x1A, 0, 0x3F, 0, 255, 0], &[])), None);
        assert_eq!(asc(lu.spc(&a, 0, &PREVENT, &[])), None);
        assert_eq!(asc(lu.spc(&a, 0, &ALLOW, &[])), None);
        // Loading brings the same image back: ready for every nexus, with
        // no unit attention.
        assert_eq!(asc(lu.spc(&a, 0, &LOAD, &[])), None);
        assert_eq!(asc(lu.spc(&a, 0, &TUR, &[])), None);
        assert_eq!(asc(lu.spc(&b, 0, &TUR, &[])), None);
        assert!(matches!(lu.spc(&b, 0, &READ10, &[]), Spc::Block));
    }

    #[test]
    fn prevention_is_per_nexus_and_cleared_by_loss_and_resets() {
        let mut lu = lu_with(true);
        let (a, b) = (nexus(1), nexus(2));
        for n in [&a, &b] {
            lu.spc(n, 0, &TUR, &[]);
        }
        let prevented = Some((5, 0x53, 0x02));
        assert_eq!(asc(lu.spc(&a, 0, &PREVENT, &[])), None);
        assert_eq!(key_asc(lu.spc(&b, 0, &EJECT, &[])), prevented);
        assert_eq!(key_asc(lu.spc(&a, 0, &EJECT, &[])), prevented);
        assert_eq!(asc(lu.spc(&a, 0, &TUR, &[])), None);
        lu.nexus_lost(&a);
        assert_eq!(key_asc(lu.spc(&b, 0, &EJECT, &[])), None);
        assert_eq!(key_asc(lu.spc(&b, 0, &LOAD, &[])), None);
        for (f, ua) in [
            (TmfFunction::LogicalUnitReset, (0x29, 3)),
            (TmfFunction::TargetWarmReset, (0x29, 0)),
            (TmfFunction::TargetColdReset, (0x29, 0)),
        ] {
            assert_eq!(asc(lu.spc(&b, 0, &PREVENT, &[])), None);
            assert_eq!(key_asc(lu.spc(&b, 0, &EJECT, &[])), prevented);
            lu.task_management(&b, f);
            assert_eq!(asc(lu.spc(&b, 0, &TUR, &[])), Some(ua));
            assert_eq!(key_asc(lu.spc(&b, 0, &EJECT, &[])), None);
            assert_eq!(key_asc(lu.spc(&b, 0, &LOAD, &[])), None);
        }
        // A task-set clear leaves prevention in place.
        assert_eq!(asc(lu.spc(&b, 0, &PREVENT, &[])), None);
        lu.task_management(&b, TmfFunction::ClearTaskSet);
        assert_eq!(key_asc(lu.spc(&b, 0, &EJECT, &[])), prevented);
    }

    #[test]
    fn fixed_medium_keeps_its_answers() {
        let mut lu = lu();
        let n = nexus(1);
        lu.spc(&n, 0, &TUR, &[]);
        let inq = answer(lu.spc(&n, 0, &[0x12, 0, 0, 0, 36, 0], &[]));
        assert_eq!(inq.map(|r| r.data_in[1]), Some(0));
        assert_eq!(asc(lu.spc(&n, 0, &PREVENT, &[])), None);
        assert_eq!(key_asc(lu.spc(&n, 0, &EJECT, &[])), Some((5, 0x24, 0)));
        assert_eq!(asc(lu.spc(&n, 0, &[0x1B, 0, 0, 0, 0, 0], &[])), None);
        assert!(matches!(lu.spc(&n, 0, &READ10, &[]), Spc::Block));
    }

    #[test]
    fn report_luns_lists_this_lun() {
        let mut lu = lu();
        let r = answer(lu.spc(&nexus(1), 5, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]));
        let d = r.map(|r| r.data_in).unwrap_or_default();
        assert_eq!(&d[..], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn defect_data_is_empty() {
        let mut lu = lu();
        let n = nexus(1);
        lu.spc(&n, 0, &[0x00], &[]);
        let r = answer(lu.spc(&n, 0, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 32, 0], &[]));
        assert_eq!(r.map(|r| r.data_in.to_vec()), Some(vec![0, 0x18, 0, 0]));
        let r = answer(lu.spc(&n, 0, &[0xB7, 0x08, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[]));
        assert_eq!(r.map(|r| r.data_in.to_vec()), Some(vec![0, 0x08, 0, 0]));
    }

    proptest! {
        #[test]
        fn random_cdbs_never_panic(
            cdb in proptest::collection::vec(any::<u8>(), 0..32),
            data in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut lu = lu();
            let n = nexus(1);
            let data = Bytes::from(data);
            lu.spc(&n, 0, &cdb, &data);
            lu.spc(&n, 0, &cdb, &data);
            let _ = super::super::sbc::decode(&lu.geo, &lu.limits, &cdb, &data);
            let _ = super::super::spc::unknown_lun(&cdb);
            let _ = super::super::spc::report_luns(&[0, 1, 4000], &cdb);
            let _ = super::super::cdb::transfer_len(&cdb, 512);
            let _ = super::super::cdb::block_io(&cdb);
            let _ = super::super::xcopy::decode(&cdb, &data, &lu.geo, &[1, 3, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
            let _ = super::super::sanitize::decode(&cdb, &data, 512, true, false);
            let _ = PrState::decode(&data);
        }
    }
}
