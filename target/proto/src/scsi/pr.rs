//! Persistent reservations (SPC-4 5.9, 6.15, 6.16): registrations, the
//! reservation with all six types, PERSISTENT RESERVE IN/OUT, the access
//! rules for other commands; `persist` holds the byte encoding that keeps
//! them across restarts (APTPL).

use super::cdb::{be64, Access, Cdb};
use super::sense::Sense;
use crate::task::{Nexus, ScsiResult, ScsiStatus};
use bytes::Bytes;

mod persist;

pub const WE: u8 = 1;
pub const EA: u8 = 3;
pub const WERO: u8 = 5;
pub const EARO: u8 = 6;
pub const WEAR: u8 = 7;
pub const EAAR: u8 = 8;

/// One registered I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub key: u64,
    pub initiator_port: String,
    pub target_port: String,
    pub relative_port: u16,
}

impl Registration {
    fn is(&self, n: &Nexus) -> bool {
        *self.initiator_port == *n.initiator_port && *self.target_port == *n.target_port
    }

    fn nexus(&self) -> Nexus {
        Nexus {
            initiator_port: self.initiator_port.as_str().into(),
            target_port: self.target_port.as_str().into(),
            relative_port: self.relative_port,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub kind: u8,
    /// The holder's I_T nexus as (initiator port, target port); for the
    /// all-registrants types every registrant holds it and this is ignored.
    pub holder: (String, String),
}

/// Persistent reservation state of one LU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub reservation: Option<Reservation>,
    pub aptpl: bool,
}

/// Side effects of a PERSISTENT RESERVE OUT for the caller to carry out.
#[derive(Debug, Default)]
pub struct PrOutcome {
    /// Unit attentions to establish: (nexus, sense).
    pub uas: Vec<(Nexus, Sense)>,
    /// The state changed and must be persisted.
    pub changed: bool,
}

fn all_registrants(kind: u8) -> bool {
    kind == WEAR || kind == EAAR
}

fn reservation_conflict() -> ScsiResult {
    ScsiResult {
        status: ScsiStatus::RESERVATION_CONFLICT,
        sense: None,
        data_in: Bytes::new(),
        transfer_len: 0,
    }
}

impl PrState {
    fn reg(&self, n: &Nexus) -> Option<&Registration> {
        self.regs.iter().find(|r| r.is(n))
    }

    fn is_holder(&self, n: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if all_registrants(r.kind) => self.reg(n).is_some(),
            Some(r) => *r.holder.0 == *n.initiator_port && *r.holder.1 == *n.target_port,
        }
    }

    /// Whether the PR state lets `n` run a command of this access class.
    pub fn conflicts(&self, n: &Nexus, access: Access) -> bool {
        let Some(res) = &self.reservation else {
            return false;
        };
        if access == Access::Exempt || self.is_holder(n) {
            return false;
        }
        let registered = self.reg(n).is_some();
        match res.kind {
            WE => access == Access::Write,
            EA => true,
            WERO | WEAR => !registered && access == Access::Write,
            _ => !registered,
        }
    }

    /// PERSISTENT RESERVE IN (0x5E).
    pub fn prin(&self, cdb: &[u8]) -> ScsiResult {
        let c = Cdb(cdb);
        let alloc = usize::from(c.u16(7));
        let mut d = Vec::new();
        d.extend_from_slice(&self.generation.to_be_bytes());
        match c.sa() {
            0 => {
                let keys: Vec<u8> = self.regs.iter().flat_map(|r| r.key.to_be_bytes()).collect();
                d.extend_from_slice(&(keys.len() as u32).to_be_bytes());
                d.extend_from_slice(&keys);
            }
            1 => match &self.reservation {
                None => d.extend_from_slice(&0u32.to_be_bytes()),
                Some(r) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    let key = if all_registrants(r.kind) {
                        0
                    } else {
                        self.holder_key(r)
                    };
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0, r.kind, 0, 0]);
                }
            },
            2 => {
                d.clear();
                d.extend_from_slice(&8u16.to_be_bytes());
                d.push(0x01); // PTPL_C
                let mut b3 = 0x80 | (1 << 4); // TMV, ALLOW COMMANDS 001b
                if self.aptpl {
                    b3 |= 0x01;
                }
                d.push(b3);
                // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
                d.extend_from_slice(&[0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
            }
            3 => {
                let mut body = Vec::new();
                for r in &self.regs {
                    let holder = self.reservation.as_ref().is_some_and(|res| {
                        all_registrants(res.kind)
                            || (res.holder.0 == r.initiator_port && res.holder.1 == r.target_port)
                    });
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0; 4]);
                    body.push(u8::from(holder));
                    body.push(if holder {
                        self.reservation.as_ref().map_or(0, |x| x.kind)
                    } else {
                        0
                    });
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&r.relative_port.to_be_bytes());
                    let tid = transport_id(&r.initiator_port);
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                d.extend_from_slice(&(body.len() as u32).to_be_bytes());
                d.extend_from_slice(&body);
            }
            _ => {
                return Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(4))
                    .into_result()
            }
        }
        super::good_vec(d, alloc)
    }

    fn holder_key(&self, r: &Reservation) -> u64 {
        self.regs
            .iter()
            .find(|x| x.initiator_port == r.holder.0 && x.target_port == r.holder.1)
            .map_or(0, |x| x.key)
    }

    /// Removes the registrations matching `pred`; releases the reservation
    /// when its holder goes (or, for all-registrants, the last registrant).
    /// Returns the removed nexuses.
    fn remove_regs(&mut self, pred: impl Fn(&Registration) -> bool) -> Vec<Nexus> {
        let (gone, keep): (Vec<_>, Vec<_>) = self.regs.drain(..).partition(|r| pred(r));
        self.regs = keep;
        if let Some(res) = &self.reservation {
            let holder_gone = if all_registrants(res.kind) {
                self.regs.is_empty()
            } else {
                gone.iter()
                    .any(|r| r.initiator_port == res.holder.0 && r.target_port == res.holder.1)
            };
            if holder_gone {
                self.reservation = None;
            }
        }
        gone.iter().map(Registration::nexus).collect()
    }

    fn others(&self, n: &Nexus) -> Vec<Nexus> {
        self.regs
            .iter()
            .filter(|r| !r.is(n))
            .map(Registration::nexus)
            .collect()
    }

    /// PERSISTENT RESERVE OUT (0x5F).
    pub fn prout(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Result<PrOutcome, ScsiResult> {
        let c = Cdb(cdb);
        let sa = c.sa();
        let scope = c.b(2) >> 4;
        let kind = c.b(2) & 0x0F;
        let plen = c.u32(5) as usize;
        if sa > 6 {
            return Err(Sense::INVALID_FIELD_IN_CDB
                .cdb_field(1, Some(4))
                .into_result());
        }
        if plen != 24 {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
        }
        let Some(p) = data.get(..24) else {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
        };
        let key = be64(p, 0);
        let sa_key = be64(p, 8);
        let flags = p[20];
        if flags & 0x0C != 0 {
            // SPEC_I_PT and ALL_TG_PT are not supported (capabilities say so).
            return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST
                .param_field(20, Some(if flags & 0x08 != 0 { 3 } else { 2 }))
                .into_result());
        }
        let aptpl = flags & 0x01 != 0;
        let mine = self.reg(n).map(|r| r.key);
        let mut out = PrOutcome::default();
        let needs_type = matches!(sa, 1 | 2 | 4 | 5);
        if needs_type && mine.is_some_and(|k| k == key) {
            if scope != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(2, Some(4))
                    .into_result());
            }
            if !matches!(kind, WE | EA | WERO | EARO | WEAR | EAAR) && sa != 2 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(2, Some(0))
                    .into_result());
            }
        }
        match sa {
            // REGISTER, REGISTER AND IGNORE EXISTING KEY
            0 | 6 => {
                if sa == 0 {
                    match mine {
                        None if key != 0 => return Err(reservation_conflict()),
                        Some(k) if k != key => return Err(reservation_conflict()),
                        _ => {}
                    }
                }
                if sa_key == 0 {
                    if mine.is_some() {
                        self.unregister(n, &mut out);
                    }
                } else if let Some(r) = self.regs.iter_mut().find(|r| r.is(n)) {
                    r.key = sa_key;
                } else {
                    self.regs.push(Registration {
                        key: sa_key,
                        initiator_port: n.initiator_port.to_string(),
                        target_port: n.target_port.to_string(),
                        relative_port: n.relative_port,
                    });
                }
                if sa_key != 0 || mine.is_some() {
                    self.aptpl = aptpl;
                }
                self.generation = self.generation.wrapping_add(1);
            }
            // RESERVE
            1 => {
                if mine != Some(key) {
                    return Err(reservation_conflict());
                }
                match &self.reservation {
                    Some(r) if self.is_holder(n) => {
                        if r.kind != kind {
                            return Err(reservation_conflict());
                        }
                        return Ok(out);
                    }
                    Some(_) => return Err(reservation_conflict()),
                    None => {
                        self.reservation = Some(Reservation {
                            kind,
                            holder: (n.initiator_port.to_string(), n.target_port.to_string()),
                        });
                    }
                }
            }
            // RELEASE
            2 => {
                if mine != Some(key) {
                    return Err(reservation_conflict());
                }
                let Some(r) = self.reservation.clone() else {
                    return Ok(out);
                };
                if !self.is_holder(n) {
                    return Ok(out);
                }
                if r.kind != kind || scope != 0 {
                    return Err(Sense::INVALID_RELEASE_OF_PR.into_result());
                }
                self.reservation = None;
                if r.kind != WE && r.kind != EA {
                    for o in self.others(n) {
                        out.uas.push((o, Sense::RESERVATIONS_RELEASED));
                    }
                }
            }
            // CLEAR
            3 => {
                if mine != Some(key) {
                    return Err(reservation_conflict());
                }
                for o in self.others(n) {
                    out.uas.push((o, Sense::RESERVATIONS_PREEMPTED));
                }
                self.regs.clear();
                self.reservation = None;
                self.generation = self.generation.wrapping_add(1);
            }
            // PREEMPT, PREEMPT AND ABORT
            4 | 5 => {
                if mine != Some(key) {
                    return Err(reservation_conflict());
                }
                self.preempt(n, kind, sa_key, &mut out)?;
                self.generation = self.generation.wrapping_add(1);
            }
            // REGISTER AND MOVE is not supported.
            _ => {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(4))
                    .into_result())
            }
        }
        out.changed = true;
        Ok(out)
    }

    fn unregister(&mut self, n: &Nexus, out: &mut PrOutcome) {
        let before = self.reservation.clone();
        self.remove_regs(|r| r.is(n));
        if let Some(r) = before {
            if self.reservation.is_none() && (r.kind == WERO || r.kind == EARO) {
                for o in self.others(n) {
                    out.uas.push((o, Sense::RESERVATIONS_RELEASED));
                }
            }
        }
    }

    fn preempt(
        &mut self,
        n: &Nexus,
        kind: u8,
        sa_key: u64,
        out: &mut PrOutcome,
    ) -> Result<(), ScsiResult> {
        let me = |r: &Registration| r.is(n);
        let bad_param = || {
            Sense::INVALID_FIELD_IN_PARAMETER_LIST
                .param_field(8, None)
                .into_result()
        };
        let new_res = Reservation {
            kind,
            holder: (n.initiator_port.to_string(), n.target_port.to_string()),
        };
        match self.reservation.clone() {
            Some(r) if all_registrants(r.kind) && sa_key == 0 => {
                let gone = self.remove_regs(|x| !me(x));
                for g in gone {
                    out.uas.push((g, Sense::REGISTRATIONS_PREEMPTED));
                }
                self.reservation = Some(new_res);
            }
            Some(r) if !all_registrants(r.kind) && self.holder_key(&r) == sa_key => {
                let gone = self.remove_regs(|x| x.key == sa_key && !me(x));
                let gone_names: Vec<Nexus> = gone.clone();
                for g in gone {
                    out.uas.push((g, Sense::REGISTRATIONS_PREEMPTED));
                }
                if r.kind != kind {
                    for o in self.others(n) {
                        if !gone_names.contains(&o) {
                            out.uas.push((o, Sense::RESERVATIONS_RELEASED));
                        }
                    }
                }
                self.reservation = Some(new_res);
            }
            _ => {
                if sa_key == 0 {
                    return Err(bad_param());
                }
                if !self.regs.iter().any(|x| x.key == sa_key) {
                    return Err(reservation_conflict());
                }
                let gone = self.remove_regs(|x| x.key == sa_key && !me(x));
                for g in gone {
                    out.uas.push((g, Sense::REGISTRATIONS_PREEMPTED));
                }
            }
        }
        Ok(())
    }
}

/// iSCSI TransportID, format 01b: initiator port name with ISID (SPC-4 7.6.4.6).
fn transport_id(initiator_port: &str) -> Vec<u8> {
    let name = super::inquiry::name_string(initiator_port);
    let mut v = vec![0x40 | 0x05, 0];
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(&name);
    v
}

#[cfg(test)]
mod tests;
