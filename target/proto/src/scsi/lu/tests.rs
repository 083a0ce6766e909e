//! The logical unit's SPC answers: unit attentions, reservations, sanitize
//! gating, write protect, removable media.

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
