//! Block commands beyond plain reads and writes.

use super::*;
use crate::lun::block::LBA_STATUS_SPAN;

#[tokio::test]
async fn compare_and_write_and_verify() -> TestResult {
    let lun = lun(false)?;
    let n = nexus(1);
    attach(&lun, &n).await;
    assert_eq!(
        run(&lun, &n, &rw10(0x2A, 2, 2), &[b'A'; 1024]).await.status,
        ScsiStatus::GOOD
    );
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[9] = 2;
    caw[13] = 2;
    let mut data = vec![b'A'; 1024];
    data[700] = b'X';
    data.extend_from_slice(&[b'B'; 1024]);
    let r = run(&lun, &n, &caw, &data).await;
    assert_eq!(sense(&r), Some((0x0E, 0x1D, 0)));
    let s = r.sense.as_ref().ok_or("no sense")?;
    assert_eq!(s[0], 0xF0);
    assert_eq!(u32::from_be_bytes([s[3], s[4], s[5], s[6]]), 700);
    assert_eq!(r.transfer_len, 2048);
    let back = run(&lun, &n, &rw10(0x28, 2, 2), &[]).await;
    assert!(back.data_in.iter().all(|b| *b == b'A'));
    data[700] = b'A';
    assert_eq!(run(&lun, &n, &caw, &data).await.status, ScsiStatus::GOOD);
    let back = run(&lun, &n, &rw10(0x28, 2, 2), &[]).await;
    assert!(back.data_in.iter().all(|b| *b == b'B'));
    // VERIFY with BYTCHK=1: mismatch reports the offset; BYTCHK=0 only reads.
    let mut v = rw10(0x2F, 2, 2);
    v[1] = 0x02;
    let mut cmp = vec![b'B'; 1024];
    assert_eq!(run(&lun, &n, &v, &cmp).await.status, ScsiStatus::GOOD);
    cmp[600] = 0;
    let r = run(&lun, &n, &v, &cmp).await;
    assert_eq!(sense(&r), Some((0x0E, 0x1D, 0)));
    v[1] = 0;
    assert_eq!(run(&lun, &n, &v, &cmp).await.status, ScsiStatus::GOOD);
    Ok(())
}

#[tokio::test]
async fn write_same_unmap_and_lba_status() -> TestResult {
    let dev = Arc::new(MemDevice::new(512, 64, false));
    let lun = Lun::new(dev.clone(), config(None))?;
    let n = nexus(1);
    attach(&lun, &n).await;
    let mut ws = vec![0x41, 0, 0, 0, 0, 8, 0, 0, 4, 0];
    assert_eq!(run(&lun, &n, &ws, &[7; 512]).await.status, ScsiStatus::GOOD);
    let back = run(&lun, &n, &rw10(0x28, 8, 4), &[]).await;
    assert!(back.data_in.iter().all(|b| *b == 7));
    assert_eq!(dev.allocated_blocks(), 4);
    // GET LBA STATUS at LBA 8: mapped run of 4, then deallocated.
    let mut gls = vec![0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 40, 0, 0];
    let r = run(&lun, &n, &gls, &[]).await;
    let d = &r.data_in;
    assert_eq!(&d[0..4], &[0, 0, 0, 36]);
    assert_eq!((d[15], d[19], d[20]), (8, 4, 0));
    assert_eq!((d[31], d[35], d[36]), (12, 52, 1));
    // UNMAP two of them.
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&9u64.to_be_bytes());
    list.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0]);
    let r = run(&lun, &n, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list).await;
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(dev.allocated_blocks(), 2);
    // WRITE SAME with UNMAP and zeros deallocates.
    ws[1] = 0x08;
    assert_eq!(run(&lun, &n, &ws, &[0; 512]).await.status, ScsiStatus::GOOD);
    assert_eq!(dev.allocated_blocks(), 0);
    gls[9] = 64;
    assert_eq!(sense(&run(&lun, &n, &gls, &[]).await), Some((5, 0x21, 0)));
    Ok(())
}

#[tokio::test]
async fn lba_status_spans_the_whole_lu() -> TestResult {
    // Larger than one device query: the answer still reaches the end.
    let blocks = 3 * LBA_STATUS_SPAN;
    let lun = Lun::new(Arc::new(MemDevice::new(512, blocks, false)), config(None))?;
    let n = nexus(1);
    attach(&lun, &n).await;
    let mut w = vec![0x8A, 0];
    w.extend_from_slice(&(2 * LBA_STATUS_SPAN + 5).to_be_bytes());
    w.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    assert_eq!(run(&lun, &n, &w, &[1; 512]).await.status, ScsiStatus::GOOD);
    let gls = [0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let d = run(&lun, &n, &gls, &[]).await.data_in;
    assert_eq!(&d[0..4], &[0, 0, 0, 52]);
    let desc = |i: usize| {
        let e = &d[8 + 16 * i..24 + 16 * i];
        (be64(e, 0), u64::from(be32(e, 8)), e[12])
    };
    let mapped = 2 * LBA_STATUS_SPAN + 5;
    assert_eq!(desc(0), (0, mapped, 1));
    assert_eq!(desc(1), (mapped, 1, 0));
    assert_eq!(desc(2), (mapped + 1, blocks - mapped - 1, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_write_is_atomic() -> TestResult {
    let dev = Arc::new(CacheDevice {
        inner: MemDevice::new(512, 64, false),
        last_fua: AtomicBool::new(false),
        flushes: AtomicUsize::new(0),
        flush_fails: AtomicBool::new(false),
    });
    let lun = Arc::new(Lun::new(dev, config(None))?);
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let lun = lun.clone();
        tasks.push(tokio::spawn(async move {
            let n = nexus(t);
            lun.execute(&n, &cmd(&[0x00], &[])).await;
            let mut done = 0u32;
            while done < 20 {
                // Increment the counter in block 0 with COMPARE AND WRITE.
                let cur = lun.execute(&n, &cmd(&rw10(0x28, 0, 1), &[])).await;
                let v = u32::from_be_bytes([
                    cur.data_in[0],
                    cur.data_in[1],
                    cur.data_in[2],
                    cur.data_in[3],
                ]);
                let mut data = cur.data_in.to_vec();
                let mut next = cur.data_in.to_vec();
                next[..4].copy_from_slice(&(v + 1).to_be_bytes());
                data.extend_from_slice(&next);
                let mut caw = [0u8; 16];
                caw[0] = 0x89;
                caw[13] = 1;
                if lun.execute(&n, &cmd(&caw, &data)).await.status == ScsiStatus::GOOD {
                    done += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let n = nexus(0);
    let r = lun.execute(&n, &cmd(&rw10(0x28, 0, 1), &[])).await;
    assert_eq!(&r.data_in[..4], &160u32.to_be_bytes());
    Ok(())
}

#[tokio::test]
async fn write_atomic16() -> TestResult {
    let lun = lun(false)?;
    let n = nexus(1);
    attach(&lun, &n).await;
    let mut wa = [0u8; 16];
    wa[0] = 0x9C;
    wa[1] = 0x18; // DPO, FUA
    wa[9] = 62;
    wa[13] = 2;
    let r = run(&lun, &n, &wa, &[0xA6; 1024]).await;
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(r.transfer_len, 1024);
    let back = run(&lun, &n, &rw10(0x28, 62, 2), &[]).await;
    assert!(back.data_in.iter().all(|b| *b == 0xA6));
    wa[9] = 63;
    assert_eq!(
        sense(&run(&lun, &n, &wa, &[0; 1024]).await),
        Some((5, 0x21, 0))
    );
    let rsoc = run(
        &lun,
        &n,
        &[0xA3, 0x0C, 1, 0x9C, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    )
    .await;
    assert_eq!((rsoc.data_in[1] & 0x07, rsoc.data_in[5]), (0x03, 0x18));
    // Block Limits: atomic length within the transfer length.
    let bl = run(&lun, &n, &[0x12, 1, 0xB0, 0, 255, 0], &[])
        .await
        .data_in;
    let max = u32::from_be_bytes([bl[8], bl[9], bl[10], bl[11]]);
    let atomic = u32::from_be_bytes([bl[44], bl[45], bl[46], bl[47]]);
    assert!(atomic > 0 && atomic <= max);
    Ok(())
}

#[tokio::test]
async fn orwrite_and_prefetch() -> TestResult {
    let lun = lun(false)?;
    let n = nexus(1);
    attach(&lun, &n).await;
    assert_eq!(
        run(&lun, &n, &rw10(0x2A, 1, 1), &[0x0F; 512]).await.status,
        ScsiStatus::GOOD
    );
    let mut or = [0u8; 16];
    or[0] = 0x8B;
    or[9] = 1;
    or[13] = 1;
    assert_eq!(
        run(&lun, &n, &or, &[0xF0; 512]).await.status,
        ScsiStatus::GOOD
    );
    let back = run(&lun, &n, &rw10(0x28, 1, 1), &[]).await;
    assert!(back.data_in.iter().all(|b| *b == 0xFF));
    assert_eq!(
        run(&lun, &n, &rw10(0x34, 0, 64), &[]).await.status,
        ScsiStatus::GOOD
    );
    assert_eq!(
        sense(&run(&lun, &n, &rw10(0x34, 1, 64), &[]).await),
        Some((5, 0x21, 0))
    );
    Ok(())
}
