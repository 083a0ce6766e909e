//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): the
//! parameter list decoded into byte ranges to copy within this LU, the
//! copy manager's operating parameters, held copy status, and the
//! Third-party Copy VPD page. The driver moves the data.
//!
//! The only copy target this LU knows is itself, named by an
//! identification descriptor (0xE4) carrying its NAA designator; segments
//! are block-to-block (0x02).

use super::cdb::{be16, be32, be64, Cdb};
use super::sbc::Geometry;
use super::sense::{Sense, SenseKey};
use crate::task::ScsiResult;
use bytes::Bytes;

pub const MAX_TARGET_DESCRIPTORS: u16 = 2;
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 8;
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// Largest segment in bytes: 0xFFFF blocks of 512 bytes, the most a 0x02
/// descriptor can name at that block size.
pub const MAX_SEGMENT_LENGTH: u32 = 0xFFFF * 512;
/// Copy results kept per I_T nexus (oldest dropped first).
pub const HELD_RESULTS: usize = 16;

const IDENT_TARGET: u8 = 0xE4;
const BLOCK_TO_BLOCK: u8 = 0x02;
const HEADER_LEN: usize = 16;
const TARGET_LEN: usize = 32;

const TOO_MANY_TARGETS: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x06);
const BAD_TARGET_TYPE: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x07);
const TOO_MANY_SEGMENTS: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x08);
const BAD_SEGMENT_TYPE: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x09);
/// COPY ABORTED, UNREACHABLE COPY TARGET.
pub const UNREACHABLE: Sense = Sense::new(SenseKey::CopyAborted, 0x08, 0x04);
/// COPY ABORTED with no further detail (a segment outside the LU).
pub const ABORTED: Sense = Sense::new(SenseKey::CopyAborted, 0x00, 0x00);

/// One decoded EXTENDED COPY: segments as (source offset, destination
/// offset, length) in bytes, all within the LU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyList {
    pub list_id: u8,
    /// LIST ID USAGE 00b: the status is held for RECEIVE COPY RESULTS.
    pub hold: bool,
    pub segments: Vec<(u64, u64, u64)>,
}

/// Outcome of a copy, as COPY STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyStatus {
    pub ok: bool,
    pub segments_processed: u16,
    pub bytes: u64,
}

/// Decodes EXTENDED COPY (LID1). `designator` is this LU's NAA designation
/// descriptor (4-byte header and identifier) as VPD 0x83 reports it.
/// `Ok(None)`: an empty parameter list, nothing to do.
pub fn decode(
    cdb: &[u8],
    data: &Bytes,
    geo: &Geometry,
    designator: &[u8],
) -> Result<Option<CopyList>, ScsiResult> {
    let c = Cdb(cdb);
    if c.sa() != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB
            .cdb_field(1, Some(4))
            .into_result());
    }
    let plen = c.u32(10) as usize;
    if plen == 0 {
        return Ok(None);
    }
    let plle = || Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
    let Some(list) = data.get(..plen) else {
        return plle();
    };
    if list.len() < HEADER_LEN {
        return plle();
    }
    let bad_param = |byte: usize, bit| {
        Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST
            .param_field(u16::try_from(byte).unwrap_or(u16::MAX), bit)
            .into_result())
    };
    let usage = (list[1] >> 3) & 0x03;
    if usage == 1 {
        return bad_param(1, Some(4));
    }
    let tlen = usize::from(be16(list, 2));
    let slen = be32(list, 8) as usize;
    let inline = be32(list, 12) as usize;
    let total = HEADER_LEN
        .saturating_add(tlen)
        .saturating_add(slen)
        .saturating_add(inline);
    if total > plen {
        return plle();
    }
    if tlen.saturating_add(slen) > MAX_DESCRIPTOR_LIST_LENGTH as usize {
        return plle();
    }
    if inline != 0 {
        // No segment type here uses inline data.
        return bad_param(12, None);
    }
    if tlen % TARGET_LEN != 0 {
        return plle();
    }
    if tlen / TARGET_LEN > usize::from(MAX_TARGET_DESCRIPTORS) {
        return Err(TOO_MANY_TARGETS.into_result());
    }
    // Target descriptors: which of them name this LU.
    let mut targets = Vec::new();
    for (i, t) in list[HEADER_LEN..HEADER_LEN + tlen]
        .chunks_exact(TARGET_LEN)
        .enumerate()
    {
        let at = HEADER_LEN + i * TARGET_LEN;
        if t[0] != IDENT_TARGET {
            return Err(BAD_TARGET_TYPE.param_field(at as u16, None).into_result());
        }
        // LU ID TYPE and NUL are ignored (SPC-4); direct access only.
        if t[1] & 0x1F != 0 {
            return bad_param(at + 1, Some(4));
        }
        let block_len = u32::from_be_bytes([0, t[29], t[30], t[31]]);
        if block_len != 0 && block_len != geo.block_size {
            return bad_param(at + 29, None);
        }
        targets.push(names_this_lu(&t[4..28], designator));
    }
    // Segment descriptors.
    let mut segments = Vec::new();
    let mut at = HEADER_LEN + tlen;
    let end = at + slen;
    let bs = u64::from(geo.block_size);
    while at < end {
        if segments.len() == usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(TOO_MANY_SEGMENTS.into_result());
        }
        let Some(hdr) = list.get(at..at + 4).filter(|_| at + 4 <= end) else {
            return plle();
        };
        let dlen = usize::from(be16(hdr, 2)) + 4;
        if hdr[0] != BLOCK_TO_BLOCK {
            return Err(BAD_SEGMENT_TYPE.param_field(at as u16, None).into_result());
        }
        if dlen != 28 {
            return bad_param(at + 2, None);
        }
        let Some(d) = list.get(at..at + dlen).filter(|_| at + dlen <= end) else {
            return plle();
        };
        let reachable = |index: u16| targets.get(usize::from(index)).copied() == Some(true);
        if !reachable(be16(d, 4)) || !reachable(be16(d, 6)) {
            return Err(UNREACHABLE.into_result());
        }
        let blocks = u64::from(be16(d, 10));
        let (src, dst) = (be64(d, 12), be64(d, 20));
        let inside = |lba: u64| lba.checked_add(blocks).is_some_and(|e| e <= geo.num_blocks);
        if !inside(src) || !inside(dst) {
            return Err(ABORTED.into_result());
        }
        if blocks > 0 {
            segments.push((src * bs, dst * bs, blocks * bs));
        }
        at += dlen;
    }
    if geo.read_only && !segments.is_empty() {
        return Err(Sense::WRITE_PROTECTED.into_result());
    }
    Ok(Some(CopyList {
        list_id: list[0],
        hold: usage == 0,
        segments,
    }))
}

/// Whether an identification descriptor's designator (24 bytes: header
/// and identifier, zero padded) equals this LU's.
fn names_this_lu(desc: &[u8], designator: &[u8]) -> bool {
    let Some(n) = designator.get(3).map(|l| usize::from(*l) + 4) else {
        return false;
    };
    // Code set, designator type (association must be the LU), length, id.
    desc.len() >= n
        && designator.len() >= n
        && desc[0] & 0x0F == designator[0] & 0x0F
        && desc[1] & 0x3F == designator[1] & 0x0F
        && desc[3..n] == designator[3..n]
}

/// RECEIVE COPY RESULTS (LID1): COPY STATUS for a held list id, or the
/// OPERATING PARAMETERS. `held` finds this nexus's status for a list id.
pub fn receive_copy_results(cdb: &[u8], held: impl Fn(u8) -> Option<CopyStatus>) -> ScsiResult {
    let c = Cdb(cdb);
    let alloc = c.u32(10) as usize;
    match c.sa() {
        0x00 => {
            let Some(s) = held(c.b(2)) else {
                return Sense::INVALID_FIELD_IN_CDB.cdb_field(2, None).into_result();
            };
            let mut d = vec![0u8; 12];
            d[0..4].copy_from_slice(&8u32.to_be_bytes());
            // COPY MANAGER STATUS: 01h completed, 02h completed with errors.
            d[4] = if s.ok { 0x01 } else { 0x02 };
            d[5..7].copy_from_slice(&s.segments_processed.to_be_bytes());
            // TRANSFER COUNT in bytes (units 00h), or KiB when larger.
            match u32::try_from(s.bytes) {
                Ok(b) => d[8..12].copy_from_slice(&b.to_be_bytes()),
                Err(_) => {
                    d[7] = 0x01;
                    let kib = u32::try_from(s.bytes >> 10).unwrap_or(u32::MAX);
                    d[8..12].copy_from_slice(&kib.to_be_bytes());
                }
            }
            super::good_vec(d, alloc)
        }
        0x03 => super::good_vec(operating_parameters(), alloc),
        _ => Sense::INVALID_FIELD_IN_CDB
            .cdb_field(1, Some(4))
            .into_result(),
    }
}

/// OPERATING PARAMETERS (SPC-4 6.18.4).
fn operating_parameters() -> Vec<u8> {
    let codes = [BLOCK_TO_BLOCK, IDENT_TARGET];
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
    d[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
    // No inline or held data, no stream devices.
    d[34..36].copy_from_slice(&1u16.to_be_bytes()); // total concurrent copies
    d[36] = 1; // maximum concurrent copies
    d[43] = codes.len() as u8;
    d.extend_from_slice(&codes);
    let n = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&n.to_be_bytes());
    d
}

/// Third-party Copy VPD page body (SPC-4 7.8.17): the Supported Commands
/// descriptor (EXTENDED COPY LID1; RECEIVE COPY RESULTS COPY STATUS and
/// OPERATING PARAMETERS) and the Supported Descriptors descriptor.
pub fn vpd_page() -> Vec<u8> {
    let mut d = Vec::new();
    let commands: &[(u8, &[u8])] = &[(0x83, &[0x00]), (0x84, &[0x00, 0x03])];
    let mut list = Vec::new();
    for (op, sas) in commands {
        list.push(*op);
        list.push(sas.len() as u8);
        list.extend_from_slice(sas);
    }
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    descriptor(&mut d, 0x0001, &body);
    let codes = [BLOCK_TO_BLOCK, IDENT_TARGET];
    let mut body = vec![codes.len() as u8];
    body.extend_from_slice(&codes);
    descriptor(&mut d, 0x0004, &body);
    d
}

/// A third-party copy descriptor padded to a multiple of 4 bytes.
fn descriptor(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    let mut b = body.to_vec();
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(&b);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry {
        block_size: 512,
        num_blocks: 4096,
        read_only: false,
        thin: true,
        max_transfer_blocks: 0,
    };
    const NAA: [u8; 12] = [0x01, 0x03, 0, 8, 0x30, 0, 0, 0, 0, 0, 0x12, 0x34];

    fn target(naa: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 32];
        t[0] = 0xE4;
        t[4..4 + naa.len()].copy_from_slice(naa);
        t[30] = 0x02; // block length 512
        t
    }

    fn segment(src_i: u16, dst_i: u16, blocks: u16, src: u64, dst: u64) -> Vec<u8> {
        let mut s = vec![0x02, 0, 0, 0x18];
        s.extend_from_slice(&src_i.to_be_bytes());
        s.extend_from_slice(&dst_i.to_be_bytes());
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(&blocks.to_be_bytes());
        s.extend_from_slice(&src.to_be_bytes());
        s.extend_from_slice(&dst.to_be_bytes());
        s
    }

    fn params(id: u8, usage: u8, targets: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
        let t: Vec<u8> = targets.concat();
        let s: Vec<u8> = segs.concat();
        let mut d = vec![id, usage << 3];
        d.extend_from_slice(&(t.len() as u16).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&(s.len() as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&t);
        d.extend_from_slice(&s);
        d
    }

    fn run(p: &[u8], plen: usize) -> Result<Option<CopyList>, ScsiResult> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x83;
        cdb[10..14].copy_from_slice(&(plen as u32).to_be_bytes());
        decode(&cdb, &Bytes::copy_from_slice(p), &GEO, &NAA)
    }

    fn sense(r: Result<Option<CopyList>, ScsiResult>) -> Option<(u8, u8, u8)> {
        r.err()
            .and_then(|r| r.sense)
            .map(|s| (s[2] & 0x0F, s[12], s[13]))
    }

    #[test]
    fn simple_copy_and_empty_list() {
        let p = params(7, 0, &[target(&NAA)], &[segment(0, 0, 16, 0, 100)]);
        let l = run(&p, p.len()).ok().flatten();
        assert_eq!(
            l,
            Some(CopyList {
                list_id: 7,
                hold: true,
                segments: vec![(0, 51200, 8192)]
            })
        );
        assert_eq!(run(&[], 0).ok(), Some(None));
        let p = params(7, 2, &[target(&NAA)], &[segment(0, 0, 1, 0, 1)]);
        assert!(matches!(
            run(&p, p.len()),
            Ok(Some(CopyList { hold: false, .. }))
        ));
    }

    #[test]
    fn length_and_count_limits() {
        let p = params(1, 0, &[target(&NAA)], &[segment(0, 0, 16, 0, 100)]);
        assert_eq!(sense(run(&p, 47)), Some((5, 0x1A, 0)));
        assert_eq!(sense(run(&p, p.len() - 1)), Some((5, 0x1A, 0)));
        let t3 = vec![target(&NAA); 3];
        let p = params(1, 0, &t3, &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(sense(run(&p, p.len())), Some((5, 0x26, 0x06)));
        let s9 = vec![segment(0, 0, 1, 0, 1); 9];
        let p = params(1, 0, &[target(&NAA)], &s9);
        assert_eq!(sense(run(&p, p.len())), Some((5, 0x26, 0x08)));
        let s40 = vec![segment(0, 0, 1, 0, 1); 40];
        let p = params(1, 0, &t3, &s40);
        assert_eq!(sense(run(&p, p.len())), Some((5, 0x1A, 0)));
    }

    #[test]
    fn descriptor_types_and_targets() {
        let mut fc = target(&NAA);
        fc[0] = 0xE0;
        let p = params(1, 0, &[fc], &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(sense(run(&p, p.len())), Some((5, 0x26, 0x07)));
        let mut s2s = segment(0, 0, 1, 0, 1);
        s2s[0] = 0x03;
        let p = params(1, 0, &[target(&NAA)], &[s2s]);
        assert_eq!(sense(run(&p, p.len())), Some((5, 0x26, 0x09)));
        // Another LU's designator, a missing index, a range past the end.
        let mut other = NAA;
        other[11] = 0x35;
        let p = params(1, 0, &[target(&other)], &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(sense(run(&p, p.len())), Some((0x0A, 0x08, 0x04)));
        let p = params(1, 0, &[target(&NAA)], &[segment(0, 1, 1, 0, 1)]);
        assert_eq!(sense(run(&p, p.len())), Some((0x0A, 0x08, 0x04)));
        let p = params(1, 0, &[target(&NAA)], &[segment(0, 0, 2048, 0, 4095)]);
        assert_eq!(sense(run(&p, p.len())), Some((0x0A, 0, 0)));
        // LU ID TYPE is ignored.
        let mut t = target(&NAA);
        t[1] = 0x80;
        let p = params(1, 0, &[t], &[segment(0, 0, 1, 0, 1)]);
        assert!(run(&p, p.len()).is_ok());
    }

    #[test]
    fn copy_results() {
        let op = receive_copy_results(&[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0], |_| None);
        let d = &op.data_in;
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
            d.len() - 4
        );
        assert_eq!((d[9], d[11], d[43], d[44], d[45]), (2, 8, 2, 0x02, 0xE4));
        let held = |id| {
            (id == 5).then_some(CopyStatus {
                ok: true,
                segments_processed: 1,
                bytes: 4096,
            })
        };
        let cs = receive_copy_results(&[0x84, 0x00, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], held);
        assert_eq!(&cs.data_in[..], &[0, 0, 0, 8, 1, 0, 1, 0, 0, 0, 0x10, 0]);
        let none = receive_copy_results(&[0x84, 0x00, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], held);
        assert!(none.sense.is_some());
        let vpd = vpd_page();
        assert_eq!(&vpd[0..4], &[0, 1, 0, 8]);
        assert_eq!(&vpd[4..12], &[7, 0x83, 1, 0, 0x84, 2, 0, 3]);
        assert_eq!(vpd.len() % 4, 0);
    }
}
