//! SPC commands answered without a logical unit's state: REPORT LUNS and
//! the answers for a LUN that does not exist.

use super::cdb::Cdb;
use super::sense::Sense;
use crate::task::ScsiResult;

/// Encodes a LUN number into the 8-byte SAM LUN format: peripheral device
/// addressing below 256, flat space addressing up to 16383.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        let l = (lun & 0x3FFF) as u16;
        b[0] = 0x40 | (l >> 8) as u8;
        b[1] = l as u8;
    }
    b
}

/// REPORT LUNS (SPC-4 6.33) listing `luns`.
pub fn report_luns(luns: &[u64], cdb: &[u8]) -> ScsiResult {
    let c = Cdb(cdb);
    let alloc = c.u32(6) as usize;
    if c.b(2) > 0x02 {
        return Sense::INVALID_FIELD_IN_CDB.cdb_field(2, None).into_result();
    }
    if alloc < 16 {
        return Sense::INVALID_FIELD_IN_CDB.cdb_field(6, None).into_result();
    }
    let mut sorted: Vec<u64> = luns.iter().copied().filter(|l| *l < 0x4000).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut d = Vec::with_capacity(8 + 8 * sorted.len());
    d.extend_from_slice(&((sorted.len() * 8) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for l in sorted {
        d.extend_from_slice(&encode_lun(l));
    }
    super::good_vec(d, alloc)
}

/// A command addressed to a LUN that does not exist (SPC-4 4.6.1, 6.6.2).
pub fn unknown_lun(cdb: &[u8]) -> ScsiResult {
    let c = Cdb(cdb);
    match c.opcode() {
        0x12 => {
            if c.b(1) & 0x03 != 0 || c.b(2) != 0 {
                return Sense::INVALID_FIELD_IN_CDB.into_result();
            }
            let alloc = usize::from(c.u16(3));
            // Peripheral qualifier 011b, device type 0x1F: no LU here.
            let mut d = vec![0u8; 36];
            d[0] = 0x7F;
            d[2] = 0x06;
            d[3] = 0x02;
            d[4] = 31;
            super::good_vec(d, alloc)
        }
        0xA0 => report_luns(&[], cdb),
        0x03 => {
            let alloc = usize::from(c.b(4));
            let d = Sense::LUN_NOT_SUPPORTED.to_fixed().to_vec();
            super::good_vec(d, alloc)
        }
        _ => Sense::LUN_NOT_SUPPORTED.into_result(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_luns_encoding() {
        let cdb = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let r = report_luns(&[3, 0, 300], &cdb);
        let d = &r.data_in;
        assert_eq!(&d[0..4], &[0, 0, 0, 24]);
        assert_eq!(&d[8..16], &[0; 8]);
        assert_eq!(&d[16..18], &[0, 3]);
        assert_eq!(&d[24..26], &[0x41, 0x2C]);
        assert_eq!(r.transfer_len, 32);
        let short = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
        assert!(report_luns(&[0], &short).sense.is_some());
    }

    #[test]
    fn unknown_lun_answers() {
        let inq = unknown_lun(&[0x12, 0, 0, 0, 36, 0]);
        assert_eq!(inq.data_in[0], 0x7F);
        let rs = unknown_lun(&[0x03, 0, 0, 0, 18, 0]);
        assert_eq!((rs.data_in[12], rs.data_in[2]), (0x25, 0x05));
        let tur = unknown_lun(&[0x00, 0, 0, 0, 0, 0]);
        assert_eq!(tur.sense.as_ref().map(|s| s[12]), Some(0x25));
    }
}
