//! Persistent reservations in the registry: what a save keeps, that it is
//! fenced by the node's owner and epoch, and what ends it.

use super::super::Fixture;
use super::{image, node};
use crate::store::reservations::Fence;
use crate::store::{NewServer, Result, StoreError};
use iscsi_proto::scsi::pr::{PrState, Registration, Reservation};

fn reg(key: u64, i: &str) -> Registration {
    Registration {
        key,
        initiator_port: format!("iqn.i:{i},i,0x23d000000001"),
        target_port: "iqn.t:a,t,0x1".into(),
        relative_port: 1,
    }
}

fn held() -> PrState {
    let regs = vec![reg(0xFFEE_0000_0000_0001, "b"), reg(7, "a")];
    PrState {
        generation: u32::MAX,
        reservation: Some(Reservation {
            kind: 1,
            holder: (regs[0].initiator_port.clone(), regs[0].target_port.clone()),
        }),
        regs,
        aptpl: false,
    }
}

pub fn reservations_are_kept_per_node_fenced_by_owner_and_end_with_the_overlay(
    f: Fixture,
) -> Result<()> {
    let mut s = f.open()?;
    let img = s.add_image(&image("deb", 1))?;
    s.add_node(&node("a", "02:00:00:00:00:01", img.id))?;
    s.add_node(&node("b", "02:00:00:00:00:02", img.id))?;
    assert_eq!(s.pr_state("a", 0)?, PrState::default());
    assert!(matches!(
        s.pr_state("missing", 0),
        Err(StoreError::NotFound { .. })
    ));

    // Kept whole: order, a key with its top bit set, the holder; reads
    // and saves do not move the generation.
    let g0 = s.generation()?;
    assert!(s.save_pr_state("a", 0, None, &held())?);
    assert_eq!(s.pr_state("a", 0)?, held());
    assert_eq!(s.pr_state("b", 0)?, PrState::default());
    assert_eq!(s.pr_state("a", 1)?, PrState::default());
    assert_eq!(s.generation()?, g0, "a reservation moved the generation");
    // A later save replaces it all.
    let mut fewer = held();
    fewer.regs.remove(0);
    fewer.reservation = None;
    fewer.aptpl = true;
    assert!(s.save_pr_state("a", 0, None, &fewer)?);
    assert_eq!(s.pr_state("a", 0)?, fewer);
    // Another process reading the registry sees the same.
    assert_eq!(f.open()?.pr_state("a", 0)?, fewer);

    // Fenced: only the owner at its epoch writes.
    for id in ["s1", "s2"] {
        s.register_server(&NewServer {
            id: id.into(),
            iscsi: "127.0.0.1:3260".into(),
            http_port: 8080,
        })?;
    }
    let e1 = s.claim_node("a", "s1", 5000)?.unwrap_or(0);
    let s1 = Fence {
        owner: "s1",
        epoch: e1,
    };
    assert!(s.save_pr_state("a", 0, Some(s1), &held())?);
    let stale = Fence {
        owner: "s1",
        epoch: e1 - 1,
    };
    assert!(!s.save_pr_state("a", 0, Some(stale), &fewer)?);
    assert!(!s.save_pr_state(
        "a",
        0,
        Some(Fence {
            owner: "s2",
            epoch: e1
        }),
        &fewer
    )?);
    // s1 dies, s2 takes the node: s1's saves no longer land; s2 reads
    // what s1 saved last and goes on from there.
    f.exec("UPDATE servers SET heartbeat_at = heartbeat_at - 60000 WHERE id = 's1'")?;
    let e2 = s.claim_node("a", "s2", 5000)?.unwrap_or(0);
    assert!(e2 > e1);
    assert!(!s.save_pr_state("a", 0, Some(s1), &fewer)?);
    assert_eq!(s.pr_state("a", 0)?, held());
    let s2 = Fence {
        owner: "s2",
        epoch: e2,
    };
    assert!(s.save_pr_state("a", 0, Some(s2), &fewer)?);
    assert_eq!(s.pr_state("a", 0)?, fewer);
    assert!(matches!(
        s.save_pr_state("missing", 0, None, &fewer),
        Err(StoreError::NotFound { .. })
    ));

    // A fresh overlay is a new disk: no reservations on it.
    s.node_overlay_ready("a", img.id)?;
    assert_eq!(s.pr_state("a", 0)?, PrState::default());
    // Removing a node removes its reservations with it.
    assert!(s.save_pr_state("b", 0, None, &held())?);
    s.remove_node("b")?;
    assert_eq!(
        f.scalar(
            "SELECT COUNT(*) FROM pr_registrations WHERE node_id NOT IN (SELECT id FROM nodes)"
        )?,
        0
    );
    assert_eq!(
        f.scalar("SELECT COUNT(*) FROM pr_state WHERE node_id NOT IN (SELECT id FROM nodes)")?,
        0
    );
    Ok(())
}
