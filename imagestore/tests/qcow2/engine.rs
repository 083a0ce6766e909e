//! Engine behaviour: allocation state, space, concurrency, durability, hostile files.

use crate::common::*;
use blockdev::{Allocation, BlockDevice, BlockError, Extent};
use imagestore::Overlay;
use proptest::prelude::*;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

const SIZE: u64 = 4 << 20;

fn ext(offset: u64, len: u64, state: Allocation) -> Extent {
    Extent { offset, len, state }
}

#[tokio::test]
async fn block_status_reports_overlay_golden_and_zeroed() -> TestResult {
    block_status_in(true).await
}

#[tokio::test]
async fn block_status_standard_layout() -> TestResult {
    block_status_in(false).await
}

/// A 4 KiB first write maps its subclusters only (2 KiB each), or the
/// whole 64 KiB cluster in the standard layout.
async fn block_status_in(extended_l2: bool) -> TestResult {
    use Allocation::{Deallocated as D, Mapped as M};
    let dir = tempfile::tempdir()?;
    // Golden: data in the first 1 MiB only.
    let gold = golden(dir.path(), SIZE, &[(0, 1 << 20)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create_with(&ov, SIZE, "golden.raw", extended_l2)?;
    let dev = open(&ov, &gold)?;
    let mapped: u64 = if extended_l2 { 4096 } else { 64 << 10 };
    dev.write(2 << 20, bytes(&pattern(4096, 1)), false).await?;
    dev.discard(0, 128 << 10).await?;
    let st = dev.block_status(0, SIZE).await?;
    assert_eq!(
        st,
        vec![
            ext(0, 128 << 10, D),
            ext(128 << 10, (1 << 20) - (128 << 10), M),
            ext(1 << 20, 1 << 20, D),
            ext(2 << 20, mapped, M),
            ext((2 << 20) + mapped, (2 << 20) - mapped, D),
        ]
    );
    // From inside a cluster, short.
    assert_eq!(
        dev.block_status(2 << 20 | 512, 1024).await?,
        vec![ext(2 << 20 | 512, 1024, M)]
    );
    assert!(matches!(
        dev.block_status(SIZE - 512, 1024).await,
        Err(BlockError::OutOfRange { .. })
    ));
    let caps = dev.capabilities();
    assert!(caps.thin && caps.volatile_cache && !caps.read_only);
    assert_eq!((caps.block_size, caps.num_blocks), (512, SIZE / 512));
    Ok(())
}

#[tokio::test]
async fn without_backing_reads_zeros() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ov = dir.path().join("n.qcow2");
    // qemu-img check opens the named backing file, so it exists (unused by us).
    golden(dir.path(), SIZE, &[])?;
    Overlay::create(&ov, SIZE, s(&dir.path().join("golden.raw")))?;
    let dev = Overlay::open(&ov, None, false)?;
    assert!(dev.read(0, SIZE as usize).await?.iter().all(|&b| b == 0));
    dev.write(1000 * 512, bytes(&pattern(1024, 3)), false)
        .await?;
    let back = dev.read(999 * 512, 2048).await?;
    assert_eq!(&back[512..1536], &pattern(1024, 3)[..]);
    assert!(back[..512].iter().all(|&b| b == 0) && back[1536..].iter().all(|&b| b == 0));
    dev.discard(0, SIZE).await?;
    assert!(dev.read(0, SIZE as usize).await?.iter().all(|&b| b == 0));
    assert_eq!(
        dev.block_status(0, SIZE).await?,
        vec![ext(0, SIZE, Allocation::Deallocated)]
    );
    dev.close().await?;
    qemu_check(&ov, false)?;
    Ok(())
}

#[tokio::test]
async fn one_writer_at_a_time() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "g.raw")?;
    let dev = Overlay::open(&ov, None, false)?;
    let err = Overlay::open(&ov, None, false)
        .err()
        .ok_or("second writer")?;
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(Overlay::open(&ov, None, true).is_err());
    drop(dev);
    let r1 = Overlay::open(&ov, None, true)?;
    let r2 = Overlay::open(&ov, None, true)?;
    assert!(Overlay::open(&ov, None, false).is_err());
    drop((r1, r2));
    Overlay::open(&ov, None, false)?;
    Ok(())
}

#[tokio::test]
async fn read_only_refuses_changes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "g.raw")?;
    let dev = Overlay::open(&ov, None, true)?;
    assert!(dev.capabilities().read_only);
    assert!(matches!(
        dev.write(0, bytes(&[1; 512]), false).await,
        Err(BlockError::ReadOnly)
    ));
    assert!(matches!(
        dev.discard(0, 512).await,
        Err(BlockError::ReadOnly)
    ));
    assert!(matches!(
        dev.write_zeroes(0, 512, true).await,
        Err(BlockError::ReadOnly)
    ));
    dev.flush().await?;
    Ok(())
}

/// Many first writes into the same few clusters at once: every sector lands
/// and the copy-on-write of one never undoes another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_writes_to_one_cluster() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), SIZE, &[(0, SIZE as usize)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "golden.raw")?;
    let dev = Arc::new(open(&ov, &gold)?);
    let mut expect = std::fs::read(&gold)?;
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        // Sectors 0, 2, 4, ... of clusters 0..4: interleaved across tasks.
        let off = (t % 4) * (64 << 10) + (t / 4) * 2048;
        let data = pattern(512, 100 + t);
        expect[off as usize..off as usize + 512].copy_from_slice(&data);
        let dev = Arc::clone(&dev);
        tasks.push(tokio::spawn(async move {
            dev.write(off, bytes(&data), false).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(&dev.read(0, SIZE as usize).await?[..], &expect[..]);
    dev.close().await?;
    qemu_check(&ov, false)?;
    Ok(())
}

fn physical(path: &std::path::Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[tokio::test]
async fn space_follows_writes_and_discards() -> TestResult {
    let dir = tempfile::tempdir()?;
    let size = 64 << 20;
    let gold = golden(dir.path(), size, &[(0, 1 << 20)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, size, "golden.raw")?;
    let dev = open(&ov, &gold)?;
    dev.write(8 << 20, bytes(&pattern(1 << 20, 1)), false)
        .await?;
    dev.close().await?;
    let used = physical(&ov)?;
    // 1 MiB of data plus header, L1, refcount table and block, one L2 table.
    assert!(used <= (1 << 20) + 5 * (64 << 10), "{used} bytes");
    dev.write(16 << 20, bytes(&pattern(4 << 20, 2)), false)
        .await?;
    dev.close().await?;
    let before = physical(&ov)?;
    let len_before = std::fs::metadata(&ov)?.len();
    dev.discard(16 << 20, 4 << 20).await?;
    dev.flush().await?;
    let after = physical(&ov)?;
    assert!(
        after + (4 << 20) <= before + (64 << 10),
        "{before} -> {after}"
    );
    // Freed clusters are used again: the file does not grow.
    dev.write(32 << 20, bytes(&pattern(2 << 20, 3)), false)
        .await?;
    dev.close().await?;
    drop(dev);
    qemu_check(&ov, false)?;
    let len = std::fs::metadata(&ov)?.len();
    assert!(len <= len_before, "file length {len_before} -> {len}");
    assert!(physical(&ov)? <= before - (2 << 20) + (64 << 10));
    Ok(())
}

/// A flushed (or FUA) write survives the process dying without a close;
/// the file is consistent (leaks allowed).
#[tokio::test]
async fn flushed_writes_survive_a_kill() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), SIZE, &[(0, SIZE as usize)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "golden.raw")?;
    let dev = open(&ov, &gold)?;
    dev.write(4096, bytes(&pattern(8192, 1)), false).await?;
    dev.discard(1 << 20, 64 << 10).await?;
    dev.write(2 << 20, bytes(&pattern(4096, 2)), true).await?;
    // Only the flush makes this first write to a cluster durable (a FUA
    // commits everything, so it comes before).
    dev.write(5 << 19, bytes(&pattern(4096, 4)), false).await?;
    dev.flush().await?;
    // Not flushed: may or may not survive.
    dev.write(3 << 20, bytes(&pattern(4096, 3)), false).await?;
    drop(dev);
    qemu_check(&ov, true)?;
    let dev = open(&ov, &gold)?;
    assert_eq!(&dev.read(4096, 8192).await?[..], &pattern(8192, 1)[..]);
    assert!(dev.read(1 << 20, 64 << 10).await?.iter().all(|&b| b == 0));
    assert_eq!(&dev.read(2 << 20, 4096).await?[..], &pattern(4096, 2)[..]);
    assert_eq!(&dev.read(5 << 19, 4096).await?[..], &pattern(4096, 4)[..]);
    let golden_bytes = std::fs::read(&gold)?;
    let got = dev.read(0, SIZE as usize).await?;
    // Everything else is golden data, the unflushed write's range either way.
    for (i, (&g, &w)) in got.iter().zip(golden_bytes.iter()).enumerate() {
        let i = i as u64;
        if (4096..4096 + 8192).contains(&i)
            || (1 << 20..(1 << 20) + (64 << 10)).contains(&i)
            || (2 << 20..(2 << 20) + 4096).contains(&i)
            || (5 << 19..(5 << 19) + 4096).contains(&i)
            || (3 << 20..(3 << 20) + 4096).contains(&i)
        {
            continue;
        }
        assert_eq!(g, w, "byte {i}");
    }
    // The reopen returned the leaked reservation.
    dev.close().await?;
    drop(dev);
    qemu_check(&ov, false)?;
    Ok(())
}

/// Random damage to a real image's metadata never panics the open or the I/O.
fn mutated_image() -> &'static Vec<u8> {
    static IMG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMG.get_or_init(|| {
        let build = || -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            let dir = tempfile::tempdir()?;
            let ov = dir.path().join("n.qcow2");
            Overlay::create(&ov, SIZE, "g.raw")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let dev = Overlay::open(&ov, None, false)?;
                dev.write(0, bytes(&pattern(4096, 1)), false).await?;
                dev.write(1 << 20, bytes(&pattern(4096, 2)), false).await?;
                dev.discard(2 << 20, 64 << 10).await?;
                dev.close().await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            })?;
            Ok(std::fs::read(&ov)?)
        };
        build().expect("build image")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn damaged_metadata_never_panics(
        edits in proptest::collection::vec((0usize..7 * 65536, any::<u8>()), 1..16),
        wide in any::<bool>(),
    ) {
        let mut img = mutated_image().clone();
        for (at, v) in edits {
            // Concentrate on the header and table starts unless `wide`.
            let at = if wide { at } else { (at % 7) * 65536 + at % 128 };
            if at < img.len() {
                img[at] = v;
            }
        }
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("bad.qcow2");
        std::fs::write(&p, &img)?;
        if let Ok(dev) = Overlay::open(&p, None, false) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let size = dev.capabilities().size_bytes().min(SIZE);
                let _ = dev.read(0, size as usize).await;
                let _ = dev.write(0, bytes(&[7; 4096]), true).await;
                let _ = dev.discard(0, size.min(1 << 20)).await;
                let _ = dev.block_status(0, size).await;
                let _ = dev.close().await;
            });
        }
        // Keep the file around until here (the descriptor is closed).
        let _ = std::fs::File::open(&p)?.read_at(&mut [0u8; 1], 0);
    }
}

/// Tasks own 96 KiB regions (so neighbours share clusters) and run random
/// writes, discards, zeroing, flushes and reads against their own model,
/// all at once on two threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_operations() -> TestResult {
    const REGION: u64 = 96 << 10;
    const TASKS: u64 = 24;
    let size = TASKS * REGION;
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), size, &[(0, (size / 2) as usize)])?;
    let golden_bytes = std::fs::read(&gold)?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, size, "golden.raw")?;
    let dev = Arc::new(open(&ov, &gold)?);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let dev = Arc::clone(&dev);
        let base = t * REGION;
        let mut model = golden_bytes[base as usize..(base + REGION) as usize].to_vec();
        handles.push(tokio::spawn(async move {
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ (t + 1);
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            for round in 0..60u64 {
                let sector = next(REGION / 512);
                let len = (1 + next(160)).min(REGION / 512 - sector) * 512;
                let (off, at) = (base + sector * 512, (sector * 512) as usize);
                match next(10) {
                    0..=4 => {
                        let data = pattern(len as usize, t * 1000 + round);
                        dev.write(off, bytes(&data), next(8) == 0).await?;
                        model[at..at + len as usize].copy_from_slice(&data);
                    }
                    5 | 6 => {
                        dev.discard(off, len).await?;
                        model[at..at + len as usize].fill(0);
                    }
                    7 => {
                        dev.write_zeroes(off, len, true).await?;
                        model[at..at + len as usize].fill(0);
                    }
                    8 => dev.flush().await?,
                    _ => {
                        let got = dev.read(base, REGION as usize).await?;
                        if got[..] != model[..] {
                            return Err(format!("task {t} round {round}: region differs").into());
                        }
                    }
                }
            }
            let got = dev.read(base, REGION as usize).await?;
            if got[..] != model[..] {
                return Err(format!("task {t}: region differs at the end").into());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(model)
        }));
    }
    let mut expect = Vec::new();
    for h in handles {
        expect.extend(h.await?.map_err(|e| e.to_string())?);
    }
    dev.close().await?;
    drop(dev);
    qemu_check(&ov, false)?;
    let dev = open(&ov, &gold)?;
    assert!(dev.read(0, size as usize).await?[..] == expect[..]);
    Ok(())
}

/// Writes cancelled at any point leave no cluster claimed forever and the
/// image consistent (leaked clusters allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_writes_do_not_wedge_clusters() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), SIZE, &[(0, SIZE as usize)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "golden.raw")?;
    let dev = Arc::new(open(&ov, &gold)?);
    for round in 0..20u64 {
        let mut handles = Vec::new();
        for c in 0..16u64 {
            let dev = Arc::clone(&dev);
            let off = c * (64 << 10) + 4096;
            handles.push(tokio::spawn(async move {
                let _ = dev.write(off, bytes(&pattern(8192, round)), false).await;
                let _ = dev.flush().await;
            }));
        }
        tokio::task::yield_now().await;
        for (i, h) in handles.iter().enumerate() {
            if (i as u64 + round).is_multiple_of(2) {
                h.abort();
            }
        }
        for h in handles {
            let _ = h.await;
        }
    }
    // Every cluster can still be written and read back.
    let data = pattern(SIZE as usize, 77);
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        dev.write(0, bytes(&data), true),
    )
    .await??;
    assert!(dev.read(0, SIZE as usize).await?[..] == data[..]);
    dev.close().await?;
    drop(dev);
    qemu_check(&ov, true)?;
    // Reopening repairs leaks from cancelled writes.
    Overlay::open(&ov, None, false)?;
    qemu_check(&ov, false)?;
    assert!(open(&ov, &gold)?.read(0, SIZE as usize).await?[..] == data[..]);
    Ok(())
}
