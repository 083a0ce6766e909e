//! Persistent reservations: registration rules, preemption, encoding, READ
//! KEYS.

use super::*;

fn nexus(i: u8) -> Nexus {
    Nexus {
        initiator_port: format!("iqn.i{i},i,0x{i}").into(),
        target_port: "iqn.t,t,0x1".into(),
        relative_port: 1,
    }
}

fn out(
    st: &mut PrState,
    n: &Nexus,
    sa: u8,
    kind: u8,
    key: u64,
    sa_key: u64,
    flags: u8,
) -> Result<PrOutcome, ScsiResult> {
    let cdb = [0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    st.prout(n, &cdb, &p)
}

fn status(r: &Result<PrOutcome, ScsiResult>) -> u8 {
    match r {
        Ok(_) => 0,
        Err(e) => e.status.0,
    }
}

#[test]
fn register_rules_and_generation() {
    let mut st = PrState::default();
    let (a, b) = (nexus(1), nexus(2));
    assert_eq!(status(&out(&mut st, &a, 0, 0, 1, 5, 0)), 0x18);
    assert_eq!(status(&out(&mut st, &a, 0, 0, 0, 5, 0)), 0);
    assert_eq!(status(&out(&mut st, &a, 0, 0, 4, 6, 0)), 0x18);
    assert_eq!(status(&out(&mut st, &a, 6, 0, 99, 6, 0)), 0);
    assert_eq!(status(&out(&mut st, &b, 6, 0, 0, 7, 0)), 0);
    assert_eq!(st.generation, 3);
    assert_eq!(
        st.regs.iter().map(|r| r.key).collect::<Vec<_>>(),
        vec![6, 7]
    );
    // Unsupported SPEC_I_PT / ALL_TG_PT and wrong parameter length.
    let r = out(&mut st, &a, 0, 0, 6, 6, 0x08);
    assert_eq!(r.err().and_then(|e| e.sense).map(|s| s[12]), Some(0x26));
    let r = st.prout(&a, &[0x5F, 0, 0, 0, 0, 0, 0, 0, 20, 0], &[0; 24]);
    assert_eq!(r.err().and_then(|e| e.sense).map(|s| s[12]), Some(0x1A));
    // Unregistering with key 0 removes only the caller.
    assert_eq!(status(&out(&mut st, &a, 0, 0, 6, 0, 0)), 0);
    assert_eq!(st.regs.len(), 1);
}

#[test]
fn all_registrants_survive_holder_leaving() {
    let mut st = PrState::default();
    let (a, b) = (nexus(1), nexus(2));
    out(&mut st, &a, 6, 0, 0, 1, 0).ok();
    out(&mut st, &b, 6, 0, 0, 2, 0).ok();
    assert_eq!(status(&out(&mut st, &a, 1, EAAR, 1, 0, 0)), 0);
    assert!(st.is_holder(&b));
    assert!(!st.conflicts(&b, Access::Write));
    out(&mut st, &a, 0, 0, 1, 0, 0).ok();
    assert!(st.reservation.is_some());
    assert!(st.conflicts(&a, Access::Read));
    out(&mut st, &b, 0, 0, 2, 0, 0).ok();
    assert!(st.reservation.is_none());
}

#[test]
fn preempt_all_registrants_with_zero_key() {
    let mut st = PrState::default();
    let (a, b, c) = (nexus(1), nexus(2), nexus(3));
    for (n, k) in [(&a, 1), (&b, 2), (&c, 3)] {
        out(&mut st, n, 6, 0, 0, k, 0).ok();
    }
    out(&mut st, &a, 1, WEAR, 1, 0, 0).ok();
    let o = out(&mut st, &c, 4, WE, 3, 0, 0).ok().unwrap_or_default();
    assert_eq!(o.uas.len(), 2);
    assert!(o
        .uas
        .iter()
        .all(|(_, s)| *s == Sense::REGISTRATIONS_PREEMPTED));
    assert_eq!(st.regs.len(), 1);
    assert_eq!(st.reservation.as_ref().map(|r| r.kind), Some(WE));
    assert!(st.is_holder(&c));
    // No reservation and key 0: invalid parameter.
    let mut empty = PrState::default();
    out(&mut empty, &a, 6, 0, 0, 1, 0).ok();
    let r = out(&mut empty, &a, 4, WE, 1, 0, 0);
    assert_eq!(r.err().and_then(|e| e.sense).map(|s| s[12]), Some(0x26));
}

#[test]
fn encode_decode_round_trip() {
    let mut st = PrState::default();
    let (a, b) = (nexus(1), nexus(2));
    out(&mut st, &a, 6, 0, 0, 0x1111, 1).ok();
    out(&mut st, &b, 6, 0, 0, 0x2222, 1).ok();
    out(&mut st, &b, 1, WERO, 0x2222, 0, 0).ok();
    assert!(st.aptpl);
    let bytes = st.encode();
    assert_eq!(PrState::decode(&bytes), Some(st.clone()));
    for cut in 0..bytes.len() {
        assert_eq!(PrState::decode(&bytes[..cut]), None);
    }
    let empty = PrState::default();
    assert_eq!(PrState::decode(&empty.encode()), Some(empty));
}

#[test]
fn prin_read_keys_truncates() {
    let mut st = PrState::default();
    out(&mut st, &nexus(1), 6, 0, 0, 0xAB, 0).ok();
    let r = st.prin(&[0x5E, 0, 0, 0, 0, 0, 0, 0, 12, 0]);
    assert_eq!(r.data_in.len(), 12);
    assert_eq!(&r.data_in[4..8], &[0, 0, 0, 8]);
    let full = st.prin(&[0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(full.data_in.len(), 16);
    assert_eq!(full.data_in[15], 0xAB);
}
