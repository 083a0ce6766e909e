//! The medium of a logical unit: START STOP UNIT (SBC-3 5.25) and PREVENT
//! ALLOW MEDIUM REMOVAL (SBC-3 5.15). A removable LU (INQUIRY RMB) can have
//! its medium ejected and loaded again, and I_T nexuses can prevent that;
//! a fixed LU has an always-present medium and only checks fields.

use super::cdb::Cdb;
use super::sense::Sense;
use crate::task::Nexus;
use std::collections::HashSet;

#[derive(Debug)]
pub struct Medium {
    removable: bool,
    loaded: bool,
    /// Nexuses whose PREVENT ALLOW MEDIUM REMOVAL holds PREVENT = 1; any
    /// one of them blocks ejecting and loading.
    prevented_by: HashSet<Nexus>,
}

/// CDB byte 4 of START STOP UNIT: POWER CONDITION, NO_FLUSH, LOEJ, START.
struct StartStop {
    power_condition: u8,
    no_flush: bool,
    loej: bool,
    start: bool,
}

impl StartStop {
    fn decode(cdb: &[u8]) -> Self {
        let b = Cdb(cdb).b(4);
        Self {
            power_condition: b >> 4,
            no_flush: b & 0x04 != 0,
            loej: b & 0x02 != 0,
            start: b & 0x01 != 0,
        }
    }

    /// The command acts on the medium: with a POWER CONDITION other than
    /// START_VALID, START and LOEJ are ignored (SBC-3 5.25).
    fn moves_medium(&self) -> bool {
        self.power_condition == 0 && self.loej
    }
}

impl Medium {
    pub fn new(removable: bool) -> Self {
        Self {
            removable,
            loaded: true,
            prevented_by: HashSet::new(),
        }
    }

    pub fn removable(&self) -> bool {
        self.removable
    }

    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// Sense for a command that needs the medium while it is ejected.
    pub fn not_ready(&self) -> Option<Sense> {
        (!self.loaded).then_some(Sense::MEDIUM_NOT_PRESENT_TRAY_OPEN)
    }

    /// START STOP UNIT. Power conditions are accepted and have no effect
    /// (a virtual medium does not spin); START without LOEJ leaves the
    /// medium ready.
    pub fn start_stop(&mut self, cdb: &[u8]) -> Result<(), Sense> {
        let ss = StartStop::decode(cdb);
        if !self.removable {
            if ss.loej {
                return Err(Sense::INVALID_FIELD_IN_CDB.cdb_field(4, Some(1)));
            }
            return Ok(());
        }
        if !ss.moves_medium() {
            return Ok(());
        }
        if !self.prevented_by.is_empty() {
            return Err(Sense::MEDIUM_REMOVAL_PREVENTED);
        }
        self.loaded = ss.start;
        Ok(())
    }

    /// PREVENT ALLOW MEDIUM REMOVAL from `n`. A fixed medium cannot be
    /// removed anyway, so any PREVENT value is accepted and changes nothing.
    pub fn prevent_allow(&mut self, n: &Nexus, cdb: &[u8]) -> Result<(), Sense> {
        if !self.removable {
            return Ok(());
        }
        match Cdb(cdb).b(4) & 0x03 {
            0 => {
                self.prevented_by.remove(n);
            }
            1 => {
                self.prevented_by.insert(n.clone());
            }
            // 10b/11b concern medium changers only.
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.cdb_field(4, Some(1))),
        }
        Ok(())
    }

    /// The nexus is gone, and with it its prevention.
    pub fn nexus_lost(&mut self, n: &Nexus) {
        self.prevented_by.remove(n);
    }

    /// A logical unit or target reset clears every prevention.
    pub fn reset(&mut self) {
        self.prevented_by.clear();
    }
}

/// Whether this START STOP UNIT ejects a removable medium with cached data
/// written first (NO_FLUSH 0); the driver flushes the device before it.
pub fn eject_flushes(cdb: &[u8]) -> bool {
    let ss = StartStop::decode(cdb);
    ss.moves_medium() && !ss.start && !ss.no_flush
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(i: u8) -> Nexus {
        Nexus {
            initiator_port: format!("iqn.i{i},i,0x{i}").into(),
            target_port: "iqn.t,t,0x1".into(),
            relative_port: 1,
        }
    }

    /// START STOP UNIT with byte 4 = `b4`.
    fn ssu(b4: u8) -> [u8; 6] {
        [0x1B, 0, 0, 0, b4, 0]
    }

    const EJECT: u8 = 0x02;
    const LOAD: u8 = 0x03;

    fn prevent(v: u8) -> [u8; 6] {
        [0x1E, 0, 0, 0, v, 0]
    }

    #[test]
    fn fixed_medium_refuses_loej_and_ignores_prevent() {
        let mut m = Medium::new(false);
        let e = m.start_stop(&ssu(EJECT)).err().map(|s| s.to_fixed());
        assert_eq!(
            e.map(|s| (s[2], s[12], s[15], s[17])),
            Some((5, 0x24, 0xC9, 4))
        );
        assert_eq!(m.start_stop(&ssu(0x01)), Ok(()));
        assert_eq!(m.prevent_allow(&nexus(1), &prevent(1)), Ok(()));
        assert_eq!(m.start_stop(&ssu(0x00)), Ok(()));
        assert!(m.loaded() && m.not_ready().is_none());
    }

    #[test]
    fn eject_and_load() {
        let mut m = Medium::new(true);
        assert_eq!(m.start_stop(&ssu(EJECT)), Ok(()));
        assert_eq!(m.not_ready(), Some(Sense::MEDIUM_NOT_PRESENT_TRAY_OPEN));
        // Ejecting an ejected medium is no error.
        assert_eq!(m.start_stop(&ssu(EJECT)), Ok(()));
        assert_eq!(m.start_stop(&ssu(LOAD)), Ok(()));
        assert!(m.loaded());
        assert_eq!(m.start_stop(&ssu(LOAD)), Ok(()));
    }

    #[test]
    fn power_condition_or_no_loej_leaves_the_medium() {
        let mut m = Medium::new(true);
        for pc in 1..16u8 {
            assert_eq!(m.start_stop(&ssu(pc << 4 | EJECT)), Ok(()));
            assert!(m.loaded());
        }
        for b4 in [0x00, 0x01, 0x04, 0x05] {
            assert_eq!(m.start_stop(&ssu(b4)), Ok(()));
            assert!(m.loaded());
        }
    }

    #[test]
    fn any_nexus_prevention_blocks_eject_and_load() {
        let mut m = Medium::new(true);
        let (a, b) = (nexus(1), nexus(2));
        assert_eq!(m.prevent_allow(&a, &prevent(1)), Ok(()));
        assert_eq!(
            m.start_stop(&ssu(EJECT)),
            Err(Sense::MEDIUM_REMOVAL_PREVENTED)
        );
        // Another nexus's ALLOW does not lift a's prevention.
        assert_eq!(m.prevent_allow(&b, &prevent(0)), Ok(()));
        assert_eq!(
            m.start_stop(&ssu(EJECT)),
            Err(Sense::MEDIUM_REMOVAL_PREVENTED)
        );
        assert!(m.loaded());
        assert_eq!(m.prevent_allow(&a, &prevent(0)), Ok(()));
        assert_eq!(m.start_stop(&ssu(EJECT)), Ok(()));
        assert_eq!(m.prevent_allow(&b, &prevent(1)), Ok(()));
        assert_eq!(
            m.start_stop(&ssu(LOAD)),
            Err(Sense::MEDIUM_REMOVAL_PREVENTED)
        );
        assert!(!m.loaded());
        m.nexus_lost(&b);
        assert_eq!(m.start_stop(&ssu(LOAD)), Ok(()));
        assert_eq!(
            m.prevent_allow(&a, &prevent(2)),
            Err(Sense::INVALID_FIELD_IN_CDB.cdb_field(4, Some(1)))
        );
    }

    #[test]
    fn reset_clears_every_prevention() {
        let mut m = Medium::new(true);
        for i in 1..4 {
            assert_eq!(m.prevent_allow(&nexus(i), &prevent(1)), Ok(()));
        }
        m.reset();
        assert_eq!(m.start_stop(&ssu(EJECT)), Ok(()));
    }

    #[test]
    fn eject_flush() {
        assert!(eject_flushes(&ssu(EJECT)));
        assert!(!eject_flushes(&ssu(EJECT | 0x04)));
        assert!(!eject_flushes(&ssu(LOAD)));
        assert!(!eject_flushes(&ssu(0x10 | EJECT)));
        assert!(!eject_flushes(&ssu(0x00)));
    }
}
