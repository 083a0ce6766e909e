//! INQUIRY (SPC-4 6.6): standard data and the vital product data pages.

use super::cdb::Cdb;
use super::sbc::Geometry;
use super::sense::Sense;
use crate::task::{Nexus, ScsiResult};

/// Who the logical unit says it is; stable for its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// 64-bit identifier behind the NAA designator (VPD 0x83).
    pub naa_id: u64,
    /// RMB: the medium can be ejected and loaded (START STOP UNIT LOEJ).
    pub removable: bool,
}

/// Limits advertised in the Block Limits VPD page and enforced by `sbc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_transfer_blocks: u32,
    pub optimal_transfer_blocks: u32,
    pub max_unmap_blocks: u32,
    pub max_unmap_descriptors: u32,
    pub max_write_same_blocks: u64,
    pub max_compare_write_blocks: u8,
    /// WRITE ATOMIC(16): most blocks one atomic write may carry (0: the
    /// command is not supported), and the LBA alignment and length
    /// granularity it requires (1: none). Atomic boundaries are not
    /// supported (their fields are 0).
    pub max_atomic_transfer_blocks: u32,
    pub atomic_alignment: u32,
    pub atomic_granularity: u32,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        max_transfer_blocks: 0x4000,
        optimal_transfer_blocks: 128,
        max_unmap_blocks: 0x10_0000,
        max_unmap_descriptors: 256,
        max_write_same_blocks: 0x8000,
        max_compare_write_blocks: 255,
        max_atomic_transfer_blocks: 0x4000,
        atomic_alignment: 1,
        atomic_granularity: 1,
    };
}

/// VPD pages this LU returns, ascending (page 0x00 lists them).
fn supported_pages(geo: &Geometry) -> Vec<u8> {
    let mut p = vec![0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1];
    if geo.thin {
        p.push(0xB2);
    }
    p
}

/// INQUIRY for a present LU.
pub fn inquiry(
    cdb: &[u8],
    id: &Identity,
    geo: &Geometry,
    limits: &Limits,
    nexus: &Nexus,
) -> ScsiResult {
    let c = Cdb(cdb);
    let alloc = usize::from(c.u16(3));
    // CMDDT (obsolete) is not supported; a page code needs EVPD.
    if c.b(1) & 0x02 != 0 {
        return Sense::INVALID_FIELD_IN_CDB
            .cdb_field(1, Some(1))
            .into_result();
    }
    let evpd = c.b(1) & 0x01 != 0;
    let page = c.b(2);
    if !evpd {
        if page != 0 {
            return Sense::INVALID_FIELD_IN_CDB.cdb_field(2, None).into_result();
        }
        return super::good_vec(standard(id, 0x00), alloc);
    }
    let body = match page {
        0x00 => supported_pages(geo),
        0x80 => id.serial.as_bytes().to_vec(),
        0x83 => device_identification(id, nexus),
        0x8F => super::xcopy::vpd_page(),
        0xB0 => block_limits(limits),
        0xB1 => {
            let mut d = vec![0u8; 0x3C];
            d[1] = 0x01; // MEDIUM ROTATION RATE: non-rotating medium
            if super::sanitize::block_erase_supported(geo.thin) {
                // WABEREQ 1: blocks read normally after BLOCK ERASE;
                // WACEREQ 0: no CRYPTO ERASE.
                d[3] = 0x40;
            }
            d
        }
        0xB2 if geo.thin => {
            // LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type 2 (thin).
            vec![0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]
        }
        _ => return Sense::INVALID_FIELD_IN_CDB.cdb_field(2, None).into_result(),
    };
    let mut d = vec![0x00, page];
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&body);
    super::good_vec(d, alloc)
}

/// Standard INQUIRY data; `peripheral` is byte 0 (qualifier and device type).
pub fn standard(id: &Identity, peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = peripheral;
    if id.removable {
        d[1] = 0x80; // RMB
    }
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = 96 - 5;
    d[5] = 0x08; // 3PC: EXTENDED COPY
    d[7] = 0x02; // CMDQUE
    put_ascii(&mut d[8..16], &id.vendor);
    put_ascii(&mut d[16..32], &id.product);
    put_ascii(&mut d[32..36], &id.revision);
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00A0u16, 0x0960, 0x0460, 0x04C0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// Space-padded printable ASCII (SPC-4 4.4.1); other bytes become '_'.
fn put_ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = if (0x20..0x7F).contains(&b) { b } else { b'_' };
    }
}

/// The LU's NAA designation descriptor (header and identifier), the first
/// one VPD 0x83 lists; EXTENDED COPY target descriptors name the LU by it.
pub fn naa_designator(id: &Identity) -> Vec<u8> {
    let mut d = Vec::new();
    // NAA locally assigned (3): no IEEE OUI is ours to use.
    let naa = (0x3u64 << 60) | (id.naa_id & 0x0FFF_FFFF_FFFF_FFFF);
    designator(&mut d, 0x01, 0x03, &naa.to_be_bytes());
    d
}

fn device_identification(id: &Identity, nexus: &Nexus) -> Vec<u8> {
    let mut d = naa_designator(id);
    // T10 vendor ID: vendor (8 bytes) + serial.
    let mut t10 = vec![b' '; 8];
    put_ascii(&mut t10, &id.vendor);
    t10.extend(id.serial.bytes().filter(|b| (0x20..0x7F).contains(b)));
    designator(&mut d, 0x02, 0x01, &t10);
    // Relative target port (association: target port, PIV, iSCSI).
    let mut rtp = vec![0, 0];
    rtp.extend_from_slice(&nexus.relative_port.to_be_bytes());
    designator(&mut d, 0x51, 0x80 | 0x10 | 0x04, &rtp);
    // SCSI name string of the target port, and of the target device.
    designator(
        &mut d,
        0x53,
        0x80 | 0x10 | 0x08,
        &name_string(&nexus.target_port),
    );
    let target = nexus
        .target_port
        .split(",t,")
        .next()
        .unwrap_or(&nexus.target_port);
    designator(&mut d, 0x53, 0x80 | 0x20 | 0x08, &name_string(target));
    d
}

/// A SCSI name string: UTF-8, NUL-terminated, padded to a multiple of 4.
pub fn name_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn designator(out: &mut Vec<u8>, b0: u8, b1: u8, id: &[u8]) {
    let id = &id[..id.len().min(255)];
    out.extend_from_slice(&[b0, b1, 0, id.len() as u8]);
    out.extend_from_slice(id);
}

fn block_limits(l: &Limits) -> Vec<u8> {
    // Page length 0x3C (SBC-3); offsets below are relative to byte 4.
    let mut d = vec![0u8; 0x3C];
    d[1] = l.max_compare_write_blocks;
    d[2..4].copy_from_slice(&1u16.to_be_bytes()); // optimal transfer granularity
    d[4..8].copy_from_slice(&l.max_transfer_blocks.to_be_bytes());
    d[8..12].copy_from_slice(&l.optimal_transfer_blocks.to_be_bytes());
    d[16..20].copy_from_slice(&l.max_unmap_blocks.to_be_bytes());
    d[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
    d[24..28].copy_from_slice(&1u32.to_be_bytes()); // optimal unmap granularity
    d[32..40].copy_from_slice(&l.max_write_same_blocks.to_be_bytes());
    // SBC-4 atomic fields (page bytes 44..64); the boundary fields stay 0.
    d[40..44].copy_from_slice(&l.max_atomic_transfer_blocks.to_be_bytes());
    d[44..48].copy_from_slice(&l.atomic_alignment.to_be_bytes());
    d[48..52].copy_from_slice(&l.atomic_granularity.to_be_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vendor: "BOOTD".into(),
            product: "disk\u{1}".into(),
            revision: "0.1".into(),
            serial: "SER1".into(),
            naa_id: 0x1234,
            removable: false,
        }
    }

    const GEO: Geometry = Geometry {
        block_size: 512,
        num_blocks: 100,
        read_only: false,
        thin: true,
        max_transfer_blocks: 0,
    };

    fn nexus() -> Nexus {
        Nexus {
            initiator_port: "iqn.i,i,0x1".into(),
            target_port: "iqn.t,t,0x1".into(),
            relative_port: 1,
        }
    }

    fn run(cdb: &[u8]) -> ScsiResult {
        inquiry(cdb, &id(), &GEO, &Limits::DEFAULT, &nexus())
    }

    #[test]
    fn standard_data() {
        let r = run(&[0x12, 0, 0, 0, 255, 0]);
        let d = &r.data_in;
        assert_eq!(d.len(), 96);
        assert_eq!(d[0], 0);
        assert_eq!(d[1], 0, "fixed medium: RMB 0");
        assert_eq!(d[2], 6);
        assert_eq!(d[3] & 0x0F, 2);
        assert_eq!(usize::from(d[4]) + 5, d.len());
        assert_eq!(&d[8..16], b"BOOTD   ");
        assert_eq!(&d[16..21], b"disk_");
        assert_eq!(&d[64..66], &[0x04, 0xC0]);
        let short = run(&[0x12, 0, 0, 0, 5, 0]);
        assert_eq!(short.data_in.len(), 5);
        assert_eq!(short.transfer_len, 5);
        let rmb = Identity {
            removable: true,
            ..id()
        };
        assert_eq!(standard(&rmb, 0)[1], 0x80);
    }

    #[test]
    fn evpd_rules() {
        assert!(run(&[0x12, 0, 0x80, 0, 255, 0]).sense.is_some());
        assert!(run(&[0x12, 1, 0x99, 0, 255, 0]).sense.is_some());
        let p0 = run(&[0x12, 1, 0, 0, 255, 0]);
        assert_eq!(
            &p0.data_in[4..],
            &[0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2]
        );
        let tpc = run(&[0x12, 1, 0x8F, 0, 255, 0]);
        assert_eq!(&tpc.data_in[4..6], &[0, 1]);
        let sn = run(&[0x12, 1, 0x80, 0, 255, 0]);
        assert_eq!(&sn.data_in[4..], b"SER1");
        let bl = run(&[0x12, 1, 0xB0, 0, 255, 0]);
        assert_eq!(bl.data_in.len(), 64);
        assert_eq!(bl.data_in[3], 0x3C);
        assert_eq!(bl.data_in[5], 255);
        assert_eq!(&bl.data_in[44..48], &0x4000u32.to_be_bytes());
        assert_eq!(&bl.data_in[48..52], &1u32.to_be_bytes());
        assert_eq!(&bl.data_in[52..56], &1u32.to_be_bytes());
        assert_eq!(&bl.data_in[56..64], &[0; 8]);
        let lbp = run(&[0x12, 1, 0xB2, 0, 255, 0]);
        assert_eq!(lbp.data_in[5], 0xE4);
    }

    #[test]
    fn device_identification_designators() {
        let r = run(&[0x12, 1, 0x83, 0, 255, 0]);
        let d = &r.data_in;
        assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])) + 4, d.len());
        // First designator: binary NAA, 8 bytes, locally assigned.
        assert_eq!(&d[4..8], &[0x01, 0x03, 0, 8]);
        assert_eq!(d[8] >> 4, 3);
        assert_eq!(&d[14..16], &[0x12, 0x34]);
        // Walk all designators; find the relative port one.
        let mut at = 4;
        let mut found = false;
        while at + 4 <= d.len() {
            let len = usize::from(d[at + 3]);
            if d[at + 1] & 0x0F == 4 {
                assert_eq!(&d[at + 4..at + 8], &[0, 0, 0, 1]);
                found = true;
            }
            at += 4 + len;
        }
        assert_eq!(at, d.len());
        assert!(found);
    }
}
