//! Tests of [`super::RawFile`] against real files (sparse tempfiles, tmpfs).

use super::*;
use std::os::unix::fs::FileExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A sparse tempfile of `size` bytes.
fn image(size: u64) -> io::Result<tempfile::NamedTempFile> {
    let f = tempfile::NamedTempFile::new()?;
    f.as_file().set_len(size)?;
    Ok(f)
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn out_of_range<T: std::fmt::Debug>(r: Result<T, BlockError>) -> bool {
    matches!(r, Err(BlockError::OutOfRange { .. }))
}

#[tokio::test]
async fn write_read_round_trip() -> TestResult {
    let img = image(1 << 20)?;
    let dev = RawFile::open(img.path(), false)?;
    let caps = dev.capabilities();
    assert_eq!((caps.block_size, caps.num_blocks), (512, 2048));
    assert!(caps.volatile_cache && caps.thin && !caps.read_only);

    let data = pattern(3 * 512, 1);
    dev.write(1024, data.clone(), false).await?;
    let back = dev.read(512, 5 * 512).await?;
    assert_eq!(&back[..512], &[0u8; 512][..]);
    assert_eq!(&back[512..2048], &data[..]);
    assert_eq!(&back[2048..], &[0u8; 512][..]);
    // The bytes really are in the file at that offset.
    let mut raw = vec![0u8; data.len()];
    img.as_file().read_exact_at(&mut raw, 1024)?;
    assert_eq!(raw, data);
    dev.flush().await?;
    Ok(())
}

#[tokio::test]
async fn read_sees_outside_writes_both_paths() -> TestResult {
    let img = image(64 << 10)?;
    let data = pattern(8192, 9);
    img.as_file().write_all_at(&data, 4096)?;
    let dev = RawFile::open(img.path(), true)?;
    assert_eq!(dev.read(4096, 8192).await?, data);
    assert!(
        dev.nowait_reads.load(Ordering::Relaxed),
        "RWF_NOWAIT rejected"
    );
    dev.set_nowait_reads(false);
    assert_eq!(dev.read(4096, 8192).await?, data);
    Ok(())
}

#[tokio::test]
async fn uncached_read_falls_back_to_blocking_thread() -> TestResult {
    let img = image(4 << 20)?;
    let data = pattern(4 << 20, 3);
    img.as_file().write_all_at(&data, 0)?;
    img.as_file().sync_all()?;
    // SAFETY: advisory syscall on an open descriptor; drops the clean
    // cached pages so the NOWAIT attempt finds nothing.
    let r =
        unsafe { libc::posix_fadvise(img.as_file().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
    let dev = RawFile::open(img.path(), true)?;
    let mut buf = BytesMut::new();
    read_into(
        dev.file.as_ref(),
        &mut buf,
        1 << 20,
        65536,
        true,
        PastEnd::Error,
    )?;
    assert!(buf.len() < 65536, "page cache was not dropped");
    assert_eq!(
        dev.read(1 << 20, 65536).await?,
        data.slice(1 << 20..(1 << 20) + 65536)
    );
    assert_eq!(dev.read(0, 4 << 20).await?, data);
    Ok(())
}

#[tokio::test]
async fn fua_write_is_in_the_file() -> TestResult {
    let img = image(1 << 20)?;
    let dev = RawFile::open_with(
        img.path(),
        RawOptions {
            read_only: false,
            block_size: 4096,
        },
    )?;
    assert_eq!(dev.capabilities().num_blocks, 256);
    let data = pattern(8192, 5);
    dev.write(4096, data.clone(), true).await?;
    let mut raw = vec![0u8; 8192];
    File::open(img.path())?.read_exact_at(&mut raw, 4096)?;
    assert_eq!(raw, data);
    assert_eq!(dev.read(4096, 8192).await?, data);
    Ok(())
}

#[tokio::test]
async fn discard_reads_back_zeros_and_frees_space() -> TestResult {
    let img = image(1 << 20)?;
    let dev = RawFile::open(img.path(), false)?;
    dev.write(0, pattern(1 << 20, 7), false).await?;
    dev.flush().await?;
    dev.discard(64 << 10, 128 << 10).await?;
    let back = dev.read(0, 1 << 20).await?;
    assert!(back[64 << 10..192 << 10].iter().all(|&b| b == 0));
    assert_eq!(&back[..64 << 10], &pattern(1 << 20, 7)[..64 << 10]);
    assert_eq!(&back[192 << 10..], &pattern(1 << 20, 7)[192 << 10..]);
    assert_eq!(img.as_file().metadata()?.len(), 1 << 20, "size kept");
    let st = dev.block_status(0, 1 << 20).await?;
    assert_eq!(
        st,
        vec![
            Extent {
                offset: 0,
                len: 64 << 10,
                state: Allocation::Mapped
            },
            Extent {
                offset: 64 << 10,
                len: 128 << 10,
                state: Allocation::Deallocated
            },
            Extent {
                offset: 192 << 10,
                len: 832 << 10,
                state: Allocation::Mapped
            },
        ]
    );
    Ok(())
}

#[tokio::test]
async fn write_zeroes_both_ways() -> TestResult {
    let img = image(1 << 20)?;
    let dev = RawFile::open(img.path(), false)?;
    let data = pattern(1 << 20, 11);
    dev.write(0, data.clone(), false).await?;
    dev.write_zeroes(0, 128 << 10, true).await?;
    dev.write_zeroes(512 << 10, 128 << 10, false).await?;
    let back = dev.read(0, 1 << 20).await?;
    for (i, (&b, &d)) in back.iter().zip(data.iter()).enumerate() {
        let zeroed = i < 128 << 10 || (512 << 10..640 << 10).contains(&i);
        assert_eq!(b, if zeroed { 0 } else { d }, "byte {i}");
    }
    // Unmap deallocates; plain zeroing may keep or drop blocks, but reads zeros either way.
    let st = dev.block_status(0, 128 << 10).await?;
    assert_eq!(st[0].state, Allocation::Deallocated);
    Ok(())
}

#[tokio::test]
async fn zero_writing_fallback() -> TestResult {
    let img = image(3 << 20)?;
    img.as_file().write_all_at(&pattern(3 << 20, 2), 0)?;
    // Crosses chunk boundaries and ends mid-chunk.
    write_zeros(img.as_file(), 512, (2 << 20) + 1024)?;
    let mut back = vec![0u8; 3 << 20];
    img.as_file().read_exact_at(&mut back, 0)?;
    let want = pattern(3 << 20, 2);
    assert_eq!(&back[..512], &want[..512]);
    assert!(back[512..(2 << 20) + 1536].iter().all(|&b| b == 0));
    assert_eq!(&back[(2 << 20) + 1536..], &want[(2 << 20) + 1536..]);
    Ok(())
}

/// tmpfs lacks ZERO_RANGE (and, on current kernels, buffered RWF_NOWAIT),
/// so this runs the fallbacks through the device.
#[tokio::test]
async fn works_on_tmpfs() -> TestResult {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return Err("no /dev/shm to test on".into());
    }
    let img = tempfile::NamedTempFile::new_in(shm)?;
    img.as_file().set_len(1 << 20)?;
    let data = pattern(1 << 20, 13);
    img.as_file().write_all_at(&data, 0)?;
    let dev = RawFile::open(img.path(), false)?;
    assert_eq!(dev.read(0, 1 << 20).await?, data);
    assert_eq!(dev.read(4096, 4096).await?, data.slice(4096..8192));
    dev.write_zeroes(0, 64 << 10, false).await?;
    dev.discard(128 << 10, 64 << 10).await?;
    let back = dev.read(0, 1 << 20).await?;
    for (i, (&b, &d)) in back.iter().zip(data.iter()).enumerate() {
        let zeroed = i < 64 << 10 || (128 << 10..192 << 10).contains(&i);
        assert_eq!(b, if zeroed { 0 } else { d }, "byte {i}");
    }
    let st = dev.block_status(128 << 10, 64 << 10).await?;
    assert_eq!(st[0].state, Allocation::Deallocated);
    Ok(())
}

#[tokio::test]
async fn block_status_reports_holes() -> TestResult {
    let img = image(1 << 20)?;
    img.as_file().write_all_at(&[1u8; 8192], 16 << 10)?;
    img.as_file().write_all_at(&[2u8; 4096], 64 << 10)?;
    let dev = RawFile::open(img.path(), true)?;
    let all = dev.block_status(0, 1 << 20).await?;
    let ext = |offset: u64, len: u64, state| Extent { offset, len, state };
    use Allocation::{Deallocated as D, Mapped as M};
    assert_eq!(
        all,
        vec![
            ext(0, 16 << 10, D),
            ext(16 << 10, 8 << 10, M),
            ext(24 << 10, 40 << 10, D),
            ext(64 << 10, 4 << 10, M),
            ext(68 << 10, (1 << 20) - (68 << 10), D),
        ]
    );
    // From the middle of data, limited to a short length.
    let part = dev.block_status(20 << 10, 8 << 10).await?;
    assert_eq!(
        part,
        vec![ext(20 << 10, 4 << 10, M), ext(24 << 10, 4 << 10, D)]
    );
    // Inside a hole, ending before the next data.
    assert_eq!(dev.block_status(512, 1024).await?, vec![ext(512, 1024, D)]);
    // Fully allocated file: one mapped extent.
    let full = image(64 << 10)?;
    full.as_file().write_all_at(&[3u8; 64 << 10], 0)?;
    let dev = RawFile::open(full.path(), true)?;
    assert_eq!(
        dev.block_status(0, 64 << 10).await?,
        vec![ext(0, 64 << 10, M)]
    );
    Ok(())
}

#[tokio::test]
async fn out_of_range_and_misaligned() -> TestResult {
    let img = image(64 << 10)?;
    let dev = RawFile::open(img.path(), false)?;
    assert!(out_of_range(dev.read(64 << 10, 512).await));
    assert!(out_of_range(dev.read(63 << 10, 2048).await));
    assert!(out_of_range(dev.read(u64::MAX - 511, 1024).await));
    assert!(out_of_range(dev.read(100, 512).await));
    assert!(out_of_range(dev.read(0, 100).await));
    assert!(out_of_range(
        dev.write(64 << 10, Bytes::from(vec![0u8; 512]), false)
            .await
    ));
    assert!(out_of_range(dev.discard(0, (64 << 10) + 512).await));
    assert!(out_of_range(
        dev.write_zeroes(u64::MAX - 511, 1024, false).await
    ));
    assert!(out_of_range(dev.block_status(u64::MAX - 511, 1024).await));
    // The last block is in range.
    assert_eq!(dev.read(63 << 10, 1024).await?.len(), 1024);
    Ok(())
}

#[tokio::test]
async fn read_only_refuses_changes() -> TestResult {
    let img = image(64 << 10)?;
    img.as_file().write_all_at(&[4u8; 512], 0)?;
    let dev = RawFile::open(img.path(), true)?;
    assert!(dev.capabilities().read_only);
    let ro = |r: Result<(), BlockError>| matches!(r, Err(BlockError::ReadOnly));
    assert!(ro(dev.write(0, Bytes::from(vec![0u8; 512]), false).await));
    assert!(ro(dev.write(0, Bytes::from(vec![0u8; 512]), true).await));
    assert!(ro(dev.discard(0, 512).await));
    assert!(ro(dev.write_zeroes(0, 512, true).await));
    assert!(ro(dev.write_zeroes(0, 512, false).await));
    dev.flush().await?;
    assert_eq!(&dev.read(0, 512).await?[..], &[4u8; 512][..]);
    // A file the process may not write opens read-only only.
    let mut perms = img.as_file().metadata()?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(img.path(), perms)?;
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        assert!(RawFile::open(img.path(), false).is_err());
    }
    assert!(RawFile::open(img.path(), true).is_ok());
    Ok(())
}

#[tokio::test]
async fn open_refuses_bad_files() -> TestResult {
    let odd = image(1000)?;
    let err = RawFile::open(odd.path(), false).err().ok_or("opened")?;
    assert!(err.to_string().contains("not a multiple"), "{err}");
    let small = image(4096 + 512)?;
    assert!(RawFile::open(small.path(), false).is_ok());
    let bs4k = RawOptions {
        read_only: true,
        block_size: 4096,
    };
    assert!(RawFile::open_with(small.path(), bs4k).is_err());
    let bad_bs = RawOptions {
        read_only: true,
        block_size: 1000,
    };
    assert!(RawFile::open_with(small.path(), bad_bs).is_err());
    let empty = image(0)?;
    assert!(RawFile::open(empty.path(), true).is_err());
    let dir = tempfile::tempdir()?;
    let err = RawFile::open(dir.path(), true)
        .err()
        .ok_or("opened a directory")?;
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = RawFile::open(Path::new("/dev/null"), true)
        .err()
        .ok_or("opened /dev/null")?;
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let missing = dir.path().join("missing");
    let err = RawFile::open(&missing, true)
        .err()
        .ok_or("opened nothing")?;
    assert!(err.to_string().contains("missing"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_at_once() -> TestResult {
    const TASKS: u64 = 64;
    const CHUNK: u64 = 16 << 10;
    let img = image(TASKS * CHUNK)?;
    let dev = Arc::new(RawFile::open(img.path(), false)?);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let dev = Arc::clone(&dev);
        handles.push(tokio::spawn(async move {
            let off = t * CHUNK;
            for round in 0..8u8 {
                let data = pattern(CHUNK as usize, round.wrapping_add(t as u8));
                let fua = round % 4 == 0;
                dev.write(off, data.clone(), fua)
                    .await
                    .map_err(|e| e.to_string())?;
                let back = dev
                    .read(off, CHUNK as usize)
                    .await
                    .map_err(|e| e.to_string())?;
                if back != data {
                    return Err(format!("task {t} round {round}: read mismatch"));
                }
                // Also read a neighbour's region: must not fail, content is racy.
                let other = ((t + 1) % TASKS) * CHUNK;
                dev.read(other, 4096).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let mut all = vec![0u8; (TASKS * CHUNK) as usize];
    let mut f = File::open(img.path())?;
    std::io::Read::read_exact(&mut f, &mut all)?;
    for t in 0..TASKS {
        let at = (t * CHUNK) as usize;
        assert_eq!(
            &all[at..at + CHUNK as usize],
            &pattern(CHUNK as usize, 7u8.wrapping_add(t as u8))[..]
        );
    }
    Ok(())
}

/// Throughput of cached reads, with and without the inline RWF_NOWAIT
/// attempt. Run with
/// `cargo test --release -p blockdev raw::tests::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, takes ~10 s"]
async fn bench_cached_reads() -> TestResult {
    const SIZE: u64 = 256 << 20;
    const TASKS: u64 = 32;
    let img = image(SIZE)?;
    let chunk = pattern(1 << 20, 1);
    for off in (0..SIZE).step_by(1 << 20) {
        img.as_file().write_all_at(&chunk, off)?;
    }
    let dev = Arc::new(RawFile::open(img.path(), true)?);
    dev.read(0, SIZE as usize).await?; // warm the page cache
    for (name, io) in [("4 KiB random", 4096u64), ("128 KiB sequential", 128 << 10)] {
        for nowait in [false, true] {
            dev.set_nowait_reads(nowait);
            let start = std::time::Instant::now();
            let run = std::time::Duration::from_secs(2);
            let mut handles = Vec::new();
            for t in 0..TASKS {
                let dev = Arc::clone(&dev);
                handles.push(tokio::spawn(async move {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                    let blocks = SIZE / io;
                    let mut seq = t * blocks / TASKS;
                    let mut ops = 0u64;
                    while start.elapsed() < run {
                        let block = if io == 4096 {
                            // xorshift64: uniform enough for spreading reads.
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x % blocks
                        } else {
                            seq = (seq + 1) % blocks;
                            seq
                        };
                        dev.read(block * io, io as usize).await?;
                        ops += 1;
                    }
                    Ok::<_, BlockError>(ops)
                }));
            }
            let mut ops = 0;
            for h in handles {
                ops += h.await??;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name:>18} QD{TASKS} nowait={nowait:<5}: {:>9.0} ops/s {:>7.0} MiB/s",
                ops as f64 / secs,
                (ops * io) as f64 / secs / f64::from(1u32 << 20)
            );
        }
    }
    Ok(())
}
