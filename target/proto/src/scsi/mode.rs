//! Mode parameters (SPC-4 7.5, SBC-3 6.4): MODE SENSE(6/10) and MODE
//! SELECT(6/10) over the caching, control and informational exceptions pages.

use super::cdb::{be16, Cdb};
use super::sbc::Geometry;
use super::sense::Sense;
use crate::task::ScsiResult;

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFO_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;

/// Current mode parameter state of one LU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeState {
    /// Write cache enabled; only a device with a volatile cache can turn it on.
    pub wce: bool,
    /// SWP (control page): software write protect of the medium.
    pub swp: bool,
    volatile_cache: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

impl ModeState {
    pub fn new(volatile_cache: bool) -> Self {
        Self {
            wce: volatile_cache,
            swp: false,
            volatile_cache,
        }
    }

    fn page(&self, code: u8, pc: PageControl) -> Option<Vec<u8>> {
        let mut p = match code {
            CACHING => vec![0u8; 20],
            CONTROL => vec![0u8; 12],
            INFO_EXCEPTIONS => vec![0u8; 12],
            _ => return None,
        };
        p[0] = code;
        p[1] = (p.len() - 2) as u8;
        let wce = match pc {
            PageControl::Changeable => self.volatile_cache,
            PageControl::Current => self.wce,
            PageControl::Default => self.volatile_cache,
        };
        match code {
            CACHING => {
                if wce {
                    p[2] = 0x04;
                }
            }
            // Only SWP in the control page is changeable.
            CONTROL if pc == PageControl::Changeable => p[4] = 0x08,
            _ if pc == PageControl::Changeable => {}
            CONTROL => {
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // busy timeout: unlimited
                if pc == PageControl::Current && self.swp {
                    p[4] |= 0x08;
                }
            }
            _ => p[2] = 0x08, // IE page: DEXCPT, no exception reporting
        }
        Some(p)
    }

    /// MODE SENSE(6) (0x1A) and MODE SENSE(10) (0x5A).
    pub fn sense(&self, cdb: &[u8], geo: &Geometry) -> ScsiResult {
        let c = Cdb(cdb);
        let ten = c.opcode() == 0x5A;
        let alloc = if ten {
            usize::from(c.u16(7))
        } else {
            usize::from(c.b(4))
        };
        let dbd = c.b(1) & 0x08 != 0;
        let llbaa = ten && c.b(1) & 0x10 != 0;
        let pc = match c.b(2) >> 6 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => return Sense::SAVING_PARAMETERS_NOT_SUPPORTED.into_result(),
        };
        let code = c.b(2) & 0x3F;
        let sub = c.b(3);
        let mut pages = Vec::new();
        if code == ALL_PAGES && (sub == 0 || sub == 0xFF) {
            for p in [CACHING, CONTROL, INFO_EXCEPTIONS] {
                pages.extend(self.page(p, pc).unwrap_or_default());
            }
        } else if sub != 0 {
            return Sense::INVALID_FIELD_IN_CDB.cdb_field(3, None).into_result();
        } else if let Some(p) = self.page(code, pc) {
            pages = p;
        } else {
            return Sense::INVALID_FIELD_IN_CDB
                .cdb_field(2, Some(5))
                .into_result();
        }
        let mut dev_specific = 0x10; // DPOFUA
        if geo.read_only {
            dev_specific |= 0x80;
        }
        let bd = if dbd {
            Vec::new()
        } else if llbaa {
            let mut b = vec![0u8; 16];
            b[0..8].copy_from_slice(&geo.num_blocks.to_be_bytes());
            b[12..16].copy_from_slice(&geo.block_size.to_be_bytes());
            b
        } else {
            let mut b = vec![0u8; 8];
            let n = u32::try_from(geo.num_blocks).unwrap_or(u32::MAX);
            b[0..4].copy_from_slice(&n.to_be_bytes());
            b[4..8].copy_from_slice(&geo.block_size.to_be_bytes());
            b[4] = 0; // density code byte is not part of the 3-byte length
            b
        };
        let mut d = if ten {
            let mut h = vec![0u8; 8];
            h[3] = dev_specific;
            if llbaa && !dbd {
                h[4] = 0x01;
            }
            h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
            h
        } else {
            vec![0, 0, dev_specific, bd.len() as u8]
        };
        d.extend_from_slice(&bd);
        d.extend_from_slice(&pages);
        if ten {
            let n = u16::try_from(d.len() - 2).unwrap_or(u16::MAX);
            d[0..2].copy_from_slice(&n.to_be_bytes());
        } else {
            d[0] = u8::try_from(d.len() - 1).unwrap_or(u8::MAX);
        }
        super::good_vec(d, alloc)
    }

    /// MODE SELECT(6) (0x15) and MODE SELECT(10) (0x55). On success returns
    /// whether any parameter changed (other nexuses then get a unit attention).
    pub fn select(&mut self, cdb: &[u8], data: &[u8], geo: &Geometry) -> Result<bool, ScsiResult> {
        let c = Cdb(cdb);
        let ten = c.opcode() == 0x55;
        let plen = if ten {
            usize::from(c.u16(7))
        } else {
            usize::from(c.b(4))
        };
        if c.b(1) & 0x01 != 0 {
            // SP: nothing can be saved.
            return Err(Sense::INVALID_FIELD_IN_CDB
                .cdb_field(1, Some(0))
                .into_result());
        }
        if plen == 0 {
            return Ok(false);
        }
        let hlen = if ten { 8 } else { 4 };
        let Some(list) = data.get(..plen) else {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
        };
        if list.len() < hlen {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
        }
        let bdlen = if ten {
            usize::from(be16(list, 6))
        } else {
            usize::from(list[3])
        };
        let Some(bd) = list.get(hlen..hlen + bdlen) else {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
        };
        // A block descriptor may restate the block length but not change it.
        for desc in bd.chunks(if bdlen == 16 { 16 } else { 8 }) {
            let bl = if desc.len() == 16 {
                super::cdb::be32(desc, 12)
            } else {
                u32::from_be_bytes([
                    0,
                    desc.get(5).copied().unwrap_or(0),
                    desc.get(6).copied().unwrap_or(0),
                    desc.get(7).copied().unwrap_or(0),
                ])
            };
            if bl != geo.block_size && bl != 0 {
                return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST
                    .param_field(hlen as u16, None)
                    .into_result());
            }
        }
        let mut at = hlen + bdlen;
        let mut next = self.clone();
        while at < list.len() {
            let code = list[at] & 0x3F;
            let spf = list[at] & 0x40 != 0;
            let len = usize::from(list.get(at + 1).copied().unwrap_or(0)) + 2;
            let bad = Sense::INVALID_FIELD_IN_PARAMETER_LIST.param_field(at as u16, None);
            let (Some(cur), Some(mask)) = (
                self.page(code, PageControl::Current),
                self.page(code, PageControl::Changeable),
            ) else {
                return Err(bad.into_result());
            };
            if spf || len != cur.len() {
                return Err(bad.into_result());
            }
            let Some(new) = list.get(at..at + len) else {
                return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
            };
            for i in 2..len {
                if (new[i] ^ cur[i]) & !mask[i] != 0 {
                    return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST
                        .param_field((at + i) as u16, None)
                        .into_result());
                }
            }
            if code == CACHING {
                next.wce = new[2] & 0x04 != 0;
            }
            if code == CONTROL {
                next.swp = new[4] & 0x08 != 0;
            }
            at += len;
        }
        let changed = next != *self;
        *self = next;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry {
        block_size: 512,
        num_blocks: 100,
        read_only: true,
        thin: false,
        max_transfer_blocks: 0,
    };

    #[test]
    fn sense6_all_pages_and_truncation() {
        let m = ModeState::new(true);
        let r = m.sense(&[0x1A, 0, 0x3F, 0, 255, 0], &GEO);
        let d = &r.data_in;
        assert_eq!(usize::from(d[0]) + 1, d.len());
        assert_eq!(d[2], 0x90); // WP + DPOFUA
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &[0, 0, 0, 100]);
        assert_eq!(&d[9..12], &[0, 2, 0]);
        assert_eq!(d[12], CACHING);
        assert_eq!(d[14] & 0x04, 0x04);
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        let short = m.sense(&[0x1A, 0x08, 0x3F, 0, 4, 0], &GEO);
        assert_eq!(short.data_in.len(), 4);
        let saved = m.sense(&[0x1A, 0, 0xC8, 0, 255, 0], &GEO);
        assert_eq!(saved.sense.as_ref().map(|s| s[12]), Some(0x39));
        let bad = m.sense(&[0x1A, 0, 0x05, 0, 255, 0], &GEO);
        assert_eq!(bad.sense.as_ref().map(|s| s[12]), Some(0x24));
    }

    #[test]
    fn sense10_long_lba() {
        let m = ModeState::new(false);
        let r = m.sense(&[0x5A, 0x10, 0x0A, 0, 0, 0, 0, 1, 0, 0], &GEO);
        let d = &r.data_in;
        assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
        assert_eq!(d[4], 1);
        assert_eq!(d[7], 16);
        assert_eq!(d[24], CONTROL);
    }

    #[test]
    fn select_toggles_wce_only() {
        let mut m = ModeState::new(true);
        let mut page = m.page(CACHING, PageControl::Current).unwrap_or_default();
        page[2] = 0;
        let mut list = vec![0, 0, 0, 0];
        list.extend_from_slice(&page);
        let cdb = [0x15, 0x10, 0, 0, list.len() as u8, 0];
        assert_eq!(m.select(&cdb, &list, &GEO).ok(), Some(true));
        assert!(!m.wce);
        list[4 + 2] = 0x01; // RCD is not changeable
        assert!(m.select(&cdb, &list, &GEO).is_err());
        let mut fixed = ModeState::new(false);
        let mut l2 = vec![0, 0, 0, 0];
        let mut p2 = fixed
            .page(CACHING, PageControl::Current)
            .unwrap_or_default();
        p2[2] = 0x04;
        l2.extend_from_slice(&p2);
        assert!(fixed.select(&cdb, &l2, &GEO).is_err());
        assert!(m.select(&[0x15, 0x11, 0, 0, 4, 0], &[0; 4], &GEO).is_err());
    }
}
