//! Removable media and the volatile write cache (FUA, SYNCHRONIZE CACHE).

use super::*;

const EJECT: [u8; 6] = [0x1B, 0, 0, 0, 0x02, 0];
const LOAD: [u8; 6] = [0x1B, 0, 0, 0, 0x03, 0];
const PREVENT: [u8; 6] = [0x1E, 0, 0, 0, 1, 0];
const ALLOW: [u8; 6] = [0x1E, 0, 0, 0, 0, 0];

fn removable_lun(dev: Arc<dyn BlockDevice>) -> Result<Lun, LunError> {
    Lun::new(
        dev,
        LunConfig {
            removable: true,
            ..config(None)
        },
    )
}

#[tokio::test]
async fn removable_eject_and_load_keep_the_data() -> TestResult {
    let lun = removable_lun(Arc::new(MemDevice::new(512, 64, false)))?;
    let n = nexus(1);
    attach(&lun, &n).await;
    let inq = run(&lun, &n, &[0x12, 0, 0, 0, 36, 0], &[]).await;
    assert_eq!(inq.data_in[1] & 0x80, 0x80);
    let w = run(&lun, &n, &rw10(0x2A, 3, 1), &[0x5A; 512]).await;
    assert_eq!(w.status, ScsiStatus::GOOD);
    assert_eq!(run(&lun, &n, &EJECT, &[]).await.status, ScsiStatus::GOOD);
    let not_present = Some((2, 0x3A, 0x02));
    assert_eq!(sense(&run(&lun, &n, &[0x00], &[]).await), not_present);
    let r = run(&lun, &n, &rw10(0x28, 3, 1), &[]).await;
    assert_eq!(sense(&r), not_present);
    assert!(r.data_in.is_empty());
    let w = run(&lun, &n, &rw10(0x2A, 3, 1), &[0; 512]).await;
    assert_eq!(sense(&w), not_present);
    let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(sense(&run(&lun, &n, &sync, &[]).await), not_present);
    assert_eq!(run(&lun, &n, &LOAD, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(run(&lun, &n, &[0x00], &[]).await.status, ScsiStatus::GOOD);
    // The refused write while ejected changed nothing.
    let back = run(&lun, &n, &rw10(0x28, 3, 1), &[]).await;
    assert!(back.data_in.iter().all(|b| *b == 0x5A) && back.data_in.len() == 512);
    Ok(())
}

#[tokio::test]
async fn removable_prevention_per_nexus() -> TestResult {
    let lun = removable_lun(Arc::new(MemDevice::new(512, 64, false)))?;
    let (a, b) = (nexus(1), nexus(2));
    attach(&lun, &a).await;
    attach(&lun, &b).await;
    let prevented = Some((5, 0x53, 0x02));
    assert_eq!(run(&lun, &a, &PREVENT, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(sense(&run(&lun, &b, &EJECT, &[]).await), prevented);
    assert_eq!(run(&lun, &b, &ALLOW, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(sense(&run(&lun, &b, &EJECT, &[]).await), prevented);
    assert_eq!(run(&lun, &a, &[0x00], &[]).await.status, ScsiStatus::GOOD);
    // a's nexus goes away (logout, connection loss): its prevention too.
    lun.nexus_lost(&a);
    assert_eq!(run(&lun, &b, &EJECT, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(run(&lun, &b, &PREVENT, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(sense(&run(&lun, &b, &LOAD, &[]).await), prevented);
    // A LU reset clears it as well.
    lun.task_management(&b, TmfFunction::LogicalUnitReset);
    assert_eq!(sense(&run(&lun, &b, &LOAD, &[]).await), Some((6, 0x29, 3)));
    assert_eq!(run(&lun, &b, &LOAD, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(run(&lun, &b, &[0x00], &[]).await.status, ScsiStatus::GOOD);
    Ok(())
}

/// A cache that cannot be written back is a write error (3/0C/00), not
/// a read error: the initiator's error handling differs.
#[tokio::test]
async fn failed_synchronize_cache_is_a_write_error() -> TestResult {
    let dev = Arc::new(CacheDevice {
        inner: MemDevice::new(512, 64, false),
        last_fua: AtomicBool::new(false),
        flushes: AtomicUsize::new(0),
        flush_fails: AtomicBool::new(true),
    });
    let lun = Lun::new(dev, config(None))?;
    let n = nexus(1);
    attach(&lun, &n).await;
    let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(sense(&run(&lun, &n, &sync, &[]).await), Some((3, 0x0C, 0)));
    Ok(())
}

#[tokio::test]
async fn removable_eject_flushes_unless_no_flush() -> TestResult {
    let dev = Arc::new(CacheDevice {
        inner: MemDevice::new(512, 64, false),
        last_fua: AtomicBool::new(false),
        flushes: AtomicUsize::new(0),
        flush_fails: AtomicBool::new(false),
    });
    let lun = removable_lun(dev.clone())?;
    let n = nexus(1);
    attach(&lun, &n).await;
    assert_eq!(run(&lun, &n, &EJECT, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(run(&lun, &n, &LOAD, &[]).await.status, ScsiStatus::GOOD);
    let no_flush = [0x1B, 0, 0, 0, 0x06, 0];
    assert_eq!(run(&lun, &n, &no_flush, &[]).await.status, ScsiStatus::GOOD);
    assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
    // A fixed LU neither ejects nor flushes.
    let fixed = Lun::new(dev.clone(), config(None))?;
    attach(&fixed, &n).await;
    assert_eq!(
        sense(&run(&fixed, &n, &EJECT, &[]).await),
        Some((5, 0x24, 0))
    );
    assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn write_cache_enable_controls_fua() -> TestResult {
    let dev = Arc::new(CacheDevice {
        inner: MemDevice::new(512, 64, false),
        last_fua: AtomicBool::new(false),
        flushes: AtomicUsize::new(0),
        flush_fails: AtomicBool::new(false),
    });
    let lun = Lun::new(dev.clone(), config(None))?;
    let (a, b) = (nexus(1), nexus(2));
    attach(&lun, &a).await;
    attach(&lun, &b).await;
    let caching = run(&lun, &a, &[0x1A, 0x08, 0x08, 0, 255, 0], &[]).await;
    let page = caching.data_in[4..].to_vec();
    assert_eq!((page[0], page[2] & 0x04), (0x08, 0x04));
    assert_eq!(
        run(&lun, &a, &rw10(0x2A, 0, 1), &[1; 512]).await.status,
        ScsiStatus::GOOD
    );
    assert!(!dev.last_fua.load(Ordering::SeqCst));
    // Turn WCE off: writes become FUA; the other nexus hears of it.
    let mut list = vec![0, 0, 0, 0];
    let mut p = page.clone();
    p[2] &= !0x04;
    list.extend_from_slice(&p);
    let sel = [0x15, 0x10, 0, 0, list.len() as u8, 0];
    assert_eq!(run(&lun, &a, &sel, &list).await.status, ScsiStatus::GOOD);
    assert_eq!(
        run(&lun, &a, &rw10(0x2A, 0, 1), &[1; 512]).await.status,
        ScsiStatus::GOOD
    );
    assert!(dev.last_fua.load(Ordering::SeqCst));
    assert_eq!(
        sense(&run(&lun, &b, &[0x00], &[]).await),
        Some((6, 0x2A, 0x01))
    );
    // Saved values are not supported.
    let saved = run(&lun, &a, &[0x1A, 0, 0xC8, 0, 255, 0], &[]).await;
    assert_eq!(sense(&saved), Some((5, 0x39, 0)));
    Ok(())
}
