//! Persistent reservations: access rules, preemption and unit attentions,
//! persistence across restarts and failed saves.

use super::*;

async fn read_keys(l: &Lun, n: &Nexus) -> (u32, Vec<u64>) {
    let r = run(l, n, &[0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
    let d = &r.data_in;
    let gen = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    let keys = d[8..]
        .chunks(8)
        .map(|k| k.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
        .collect();
    (gen, keys)
}

async fn read_reservation(l: &Lun, n: &Nexus) -> Option<(u64, u8)> {
    let r = run(l, n, &[0x5E, 1, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
    let d = &r.data_in;
    if d[7] == 0 {
        return None;
    }
    let key = d[8..16].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
    Some((key, d[21] & 0x0F))
}

#[tokio::test]
async fn persistent_reservation_access_rules() -> TestResult {
    let lun = lun(false)?;
    let (a, b) = (nexus(1), nexus(2));
    attach(&lun, &a).await;
    attach(&lun, &b).await;
    let good = ScsiStatus::GOOD;
    let conflict = ScsiStatus::RESERVATION_CONFLICT;
    // Reserving unregistered conflicts; registering with a wrong key too.
    assert_eq!(pr_out(&lun, &a, 1, 1, 0xA, 0).await.status, conflict);
    assert_eq!(pr_out(&lun, &a, 0, 0, 5, 0xA).await.status, conflict);
    assert_eq!(pr_out(&lun, &a, 0, 0, 0, 0xA).await.status, good);
    assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
    assert_eq!(read_keys(&lun, &a).await, (2, vec![0xA, 0xB]));
    let read = rw10(0x28, 0, 1);
    let write = rw10(0x2A, 0, 1);
    let blk = [0u8; 512];
    // (type, registered B reads, writes, unregistered B reads, writes)
    for (kind, rr, rw, ur, uw) in [
        (1u8, true, false, true, false),
        (3, false, false, false, false),
        (5, true, true, true, false),
        (6, true, true, false, false),
        (7, true, true, true, false),
        (8, true, true, false, false),
    ] {
        assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
        assert_eq!(
            pr_out(&lun, &a, 1, kind, 0xA, 0).await.status,
            good,
            "type {kind}"
        );
        let shown = if kind >= 7 { 0 } else { 0xA };
        assert_eq!(read_reservation(&lun, &b).await, Some((shown, kind)));
        assert_eq!(run(&lun, &a, &write, &blk).await.status, good);
        let st = |ok: bool| if ok { good } else { conflict };
        assert_eq!(
            run(&lun, &b, &read, &[]).await.status,
            st(rr),
            "type {kind}"
        );
        assert_eq!(
            run(&lun, &b, &write, &blk).await.status,
            st(rw),
            "type {kind}"
        );
        assert_eq!(pr_out(&lun, &b, 0, 0, 0xB, 0).await.status, good);
        assert_eq!(
            run(&lun, &b, &read, &[]).await.status,
            st(ur),
            "type {kind}"
        );
        assert_eq!(
            run(&lun, &b, &write, &blk).await.status,
            st(uw),
            "type {kind}"
        );
        // PR commands and INQUIRY never conflict.
        assert_eq!(
            run(&lun, &b, &[0x12, 0, 0, 0, 36, 0], &[]).await.status,
            good
        );
        // Releasing with the wrong type is an error.
        let wrong = if kind == 1 { 3 } else { 1 };
        let r = pr_out(&lun, &a, 2, wrong, 0xA, 0).await;
        assert_eq!(sense(&r), Some((5, 0x26, 0x04)));
        assert_eq!(pr_out(&lun, &a, 2, kind, 0xA, 0).await.status, good);
        assert_eq!(read_reservation(&lun, &a).await, None);
    }
    // Bad type and scope are invalid fields.
    assert_eq!(
        sense(&pr_out(&lun, &a, 1, 2, 0xA, 0).await),
        Some((5, 0x24, 0))
    );
    assert_eq!(
        sense(&pr_out(&lun, &a, 1, 0x11, 0xA, 0).await),
        Some((5, 0x24, 0))
    );
    // PRIN service actions beyond READ FULL STATUS are invalid.
    let bad = run(&lun, &a, &[0x5E, 4, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
    assert_eq!(sense(&bad), Some((5, 0x24, 0)));
    Ok(())
}

#[tokio::test]
async fn persistent_reservation_preempt_and_ua() -> TestResult {
    let lun = lun(false)?;
    let (a, b) = (nexus(1), nexus(2));
    attach(&lun, &a).await;
    attach(&lun, &b).await;
    let good = ScsiStatus::GOOD;
    assert_eq!(pr_out(&lun, &a, 6, 0, 0, 0xA).await.status, good);
    assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
    assert_eq!(pr_out(&lun, &a, 1, 6, 0xA, 0).await.status, good);
    let (gen, _) = read_keys(&lun, &a).await;
    // B preempts A: A's registration goes, B holds an EA reservation.
    assert_eq!(pr_out(&lun, &b, 4, 3, 0xB, 0xA).await.status, good);
    assert_eq!(read_keys(&lun, &b).await, (gen + 1, vec![0xB]));
    assert_eq!(read_reservation(&lun, &b).await, Some((0xB, 3)));
    let r = run(&lun, &a, &[0x00], &[]).await;
    assert_eq!(sense(&r), Some((6, 0x2A, 0x05)));
    assert_eq!(
        run(&lun, &a, &rw10(0x28, 0, 1), &[]).await.status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    // Preempting a key nobody holds conflicts.
    assert_eq!(
        pr_out(&lun, &b, 4, 3, 0xB, 0x77).await.status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    // A registrants-only holder unregistering releases with a UA.
    assert_eq!(pr_out(&lun, &a, 6, 0, 0, 0xA).await.status, good);
    assert_eq!(pr_out(&lun, &b, 2, 3, 0xB, 0).await.status, good);
    assert_eq!(pr_out(&lun, &b, 1, 5, 0xB, 0).await.status, good);
    assert_eq!(pr_out(&lun, &b, 0, 0, 0xB, 0).await.status, good);
    assert_eq!(
        sense(&run(&lun, &a, &[0x00], &[]).await),
        Some((6, 0x2A, 0x04))
    );
    assert_eq!(read_reservation(&lun, &a).await, None);
    // CLEAR removes everything and tells the others.
    assert_eq!(pr_out(&lun, &b, 6, 0, 0, 0xB).await.status, good);
    assert_eq!(pr_out(&lun, &a, 3, 0, 0xA, 0).await.status, good);
    assert_eq!(read_keys(&lun, &a).await.1, Vec::<u64>::new());
    assert_eq!(
        sense(&run(&lun, &b, &[0x00], &[]).await),
        Some((6, 0x2A, 0x03))
    );
    // REPORT CAPABILITIES and READ FULL STATUS.
    let caps = run(&lun, &a, &[0x5E, 2, 0, 0, 0, 0, 0, 0, 8, 0], &[]).await;
    assert_eq!(&caps.data_in[..], &[0, 8, 0x01, 0x90, 0xEA, 0x01, 0, 0]);
    assert_eq!(pr_out(&lun, &a, 6, 0, 0, 0xA).await.status, good);
    assert_eq!(pr_out(&lun, &a, 1, 1, 0xA, 0).await.status, good);
    let fs = run(&lun, &a, &[0x5E, 3, 0, 0, 0, 0, 0, 1, 0, 0], &[]).await;
    let d = &fs.data_in;
    assert_eq!(&d[8..16], &0xAu64.to_be_bytes());
    assert_eq!((d[20], d[21]), (1, 1));
    assert_eq!(d[32], 0x45);
    let name = &d[36..36 + a.initiator_port.len()];
    assert_eq!(name, a.initiator_port.as_bytes());
    Ok(())
}

#[tokio::test]
async fn persistent_reservations_survive_restart_with_aptpl() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("lun0.pr");
    let dev = Arc::new(MemDevice::new(512, 64, false));
    let a = nexus(1);
    {
        let lun = Lun::new(dev.clone(), config(Some(path.clone())))?;
        attach(&lun, &a).await;
        let (c, p) = prout(6, 0, 0, 0x1234, true);
        assert_eq!(run(&lun, &a, &c, &p).await.status, ScsiStatus::GOOD);
        assert_eq!(
            pr_out(&lun, &a, 1, 5, 0x1234, 0).await.status,
            ScsiStatus::GOOD
        );
    }
    let lun = Lun::new(dev.clone(), config(Some(path.clone())))?;
    attach(&lun, &a).await;
    assert_eq!(read_reservation(&lun, &a).await, Some((0x1234, 5)));
    assert_eq!(read_keys(&lun, &a).await.1, vec![0x1234]);
    // Re-registering without APTPL: the next start has no reservations.
    assert_eq!(
        pr_out(&lun, &a, 0, 0, 0x1234, 0x99).await.status,
        ScsiStatus::GOOD
    );
    drop(lun);
    let lun = Lun::new(dev.clone(), config(Some(path.clone())))?;
    attach(&lun, &a).await;
    assert_eq!(read_keys(&lun, &a).await.1, Vec::<u64>::new());
    // A corrupt file is reported, not ignored.
    std::fs::write(&path, b"garbage")?;
    assert!(Lun::new(dev, config(Some(path))).is_err());
    Ok(())
}

#[tokio::test]
async fn a_reservation_that_cannot_be_saved_fails_and_is_undone() -> TestResult {
    let dir = tempfile::tempdir()?;
    // The state file's directory does not exist (yet): saving fails.
    let sub = dir.path().join("gone");
    let path = sub.join("lun0.pr");
    let lun = Lun::new(
        Arc::new(MemDevice::new(512, 64, false)),
        config(Some(path.clone())),
    )?;
    let a = nexus(1);
    attach(&lun, &a).await;
    let r = pr_out(&lun, &a, 0, 0, 0, 0x1234).await;
    assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(sense(&r), Some((0x04, 0x44, 0x00)));
    // Memory agrees with the (absent) file: no registration, generation unchanged.
    assert_eq!(read_keys(&lun, &a).await, (0, vec![]));
    // Once the file can be written, the same command succeeds and is kept.
    std::fs::create_dir(&sub)?;
    assert_eq!(
        pr_out(&lun, &a, 0, 0, 0, 0x1234).await.status,
        ScsiStatus::GOOD
    );
    assert_eq!(read_keys(&lun, &a).await, (1, vec![0x1234]));
    assert!(path.exists());
    Ok(())
}

#[test]
fn a_malformed_state_file_is_refused_with_its_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pr");
    std::fs::write(&path, b"not a reservation state")?;
    let dev = Arc::new(MemDevice::new(512, 64, false));
    match Lun::new(dev, config(Some(path.clone()))) {
        Err(e @ LunError::PrState(PrStoreError::Malformed { .. })) => assert_eq!(
            e.to_string(),
            format!(
                "persistent reservation state {}: malformed persistent reservation state",
                path.display()
            )
        ),
        Err(e) => panic!("expected a malformed state, got {e}"),
        Ok(_) => panic!("a malformed state file was accepted"),
    }
    Ok(())
}

/// A store of the caller's: what the LUN hands it and what it starts with.
#[derive(Debug, Default)]
struct Kept(std::sync::Mutex<Vec<PrState>>);

impl PrStore for Kept {
    fn load(&self) -> Result<PrState, PrStoreError> {
        let saved = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(saved.last().cloned().unwrap_or_default())
    }
    fn save(&self, state: &PrState) -> Result<(), PrStoreError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(state.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_store_gets_every_change_before_the_command_completes_and_aptpl_is_its_call() -> TestResult
{
    let kept = Arc::new(Kept::default());
    let with = |k: &Arc<Kept>| LunConfig {
        pr_store: Some(k.clone() as Arc<dyn PrStore>),
        ..config(None)
    };
    let dev = Arc::new(MemDevice::new(512, 64, false));
    let (a, b) = (nexus(1), nexus(2));
    let lun = Lun::new(dev.clone(), with(&kept))?;
    attach(&lun, &a).await;
    attach(&lun, &b).await;
    // Without APTPL: the file drops such state at load, a store may keep it.
    assert_eq!(
        pr_out(&lun, &a, 0, 0, 0, 0x1111).await.status,
        ScsiStatus::GOOD
    );
    assert_eq!(kept.0.lock().map(|v| v.len()).unwrap_or(0), 1);
    assert_eq!(
        pr_out(&lun, &b, 0, 0, 0, 0x2222).await.status,
        ScsiStatus::GOOD
    );
    assert_eq!(
        pr_out(&lun, &a, 1, 1, 0x1111, 0).await.status,
        ScsiStatus::GOOD
    );
    // A read changes nothing: no save.
    read_keys(&lun, &a).await;
    let saves = kept.0.lock().map(|v| v.len()).unwrap_or(0);
    assert_eq!(saves, 3);
    drop(lun);
    // Another LUN on the same store (a restart, a takeover) starts where
    // the last acknowledged change left off.
    let lun = Lun::new(dev, with(&kept))?;
    attach(&lun, &a).await;
    attach(&lun, &b).await;
    assert_eq!(read_keys(&lun, &a).await, (2, vec![0x1111, 0x2222]));
    assert_eq!(read_reservation(&lun, &b).await, Some((0x1111, 1)));
    // The holder's write-exclusive reservation holds on the new LUN.
    let w = run(&lun, &b, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0u8; 512]).await;
    assert_eq!(w.status, ScsiStatus::RESERVATION_CONFLICT);
    let w = run(&lun, &a, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0u8; 512]).await;
    assert_eq!(w.status, ScsiStatus::GOOD);
    Ok(())
}
