//! Throughput of the overlay against the raw golden file through the
//! BlockDevice API, 32 concurrent tasks. Run with
//! `cargo test --release -p imagestore --test qcow2 bench -- --ignored --nocapture`.

use crate::common::*;
use blockdev::{BlockDevice, BlockError, RawFile};
use imagestore::Overlay;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: u64 = 256 << 20;
const TASKS: u64 = 32;
const CLUSTER: u64 = 64 << 10;

/// One 4 KiB write per 64 KiB cluster over the whole device; ops/s.
async fn first_touch(dev: Arc<dyn BlockDevice>) -> Result<f64, BlockError> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let dev = Arc::clone(&dev);
        handles.push(tokio::spawn(async move {
            let data = bytes(&pattern(4096, t));
            let mut c = t;
            while c < SIZE / CLUSTER {
                dev.write(c * CLUSTER + (c % 16) * 4096, data.clone(), false)
                    .await?;
                c += TASKS;
            }
            Ok::<_, BlockError>(())
        }));
    }
    for h in handles {
        h.await
            .map_err(|e| BlockError::Io(std::io::Error::other(e)))??;
    }
    let ops = (SIZE / CLUSTER) as f64 / start.elapsed().as_secs_f64();
    dev.flush().await?;
    Ok(ops)
}

/// 4 KiB random reads for a second; ops/s.
async fn random_reads(dev: Arc<dyn BlockDevice>) -> Result<f64, BlockError> {
    reads(dev, 4096, false).await
}

/// Reads of `io` bytes for a second, random or sequential per task; ops/s.
async fn reads(dev: Arc<dyn BlockDevice>, io: u64, sequential: bool) -> Result<f64, BlockError> {
    let run = Duration::from_secs(1);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let dev = Arc::clone(&dev);
        handles.push(tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
            let mut ops = 0u64;
            let blocks = SIZE / io;
            let mut seq = t * blocks / TASKS;
            while start.elapsed() < run {
                let block = if sequential {
                    seq = (seq + 1) % blocks;
                    seq
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % blocks
                };
                dev.read(block * io, io as usize).await?;
                ops += 1;
            }
            Ok::<_, BlockError>(ops)
        }));
    }
    let mut ops = 0;
    for h in handles {
        ops += h
            .await
            .map_err(|e| BlockError::Io(std::io::Error::other(e)))??;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, takes ~15 s"]
async fn bench_overlay_vs_raw() -> TestResult {
    let dir = tempfile::tempdir()?;
    let chunks: Vec<(u64, usize)> = (0..SIZE).step_by(1 << 20).map(|o| (o, 1 << 20)).collect();
    let gold = golden(dir.path(), SIZE, &chunks)?;
    let raw_copy = dir.path().join("copy.raw");
    std::fs::copy(&gold, &raw_copy)?;
    // Write both out now: the kernel throttles writers to disk speed once
    // enough of the page cache is dirty, which would hit whichever device is
    // measured last (first-touch overlay writes dirty 64 KiB each).
    for p in [&gold, &raw_copy] {
        std::fs::File::open(p)?.sync_all()?;
    }
    let golden_dev = open_golden(&gold)?;
    golden_dev.read(0, SIZE as usize).await?; // warm the page cache

    let raw: Arc<dyn BlockDevice> = Arc::new(RawFile::open(&raw_copy, false)?);
    let ov = dir.path().join("node.qcow2");
    Overlay::create(&ov, SIZE, "golden.raw")?;
    let overlay: Arc<dyn BlockDevice> =
        Arc::new(Overlay::open(&ov, Some(Arc::clone(&golden_dev)), false)?);

    let r_golden = random_reads(Arc::clone(&golden_dev)).await?;
    let r_fresh = random_reads(Arc::clone(&overlay)).await?;
    let s_golden = reads(Arc::clone(&golden_dev), 128 << 10, true).await?;
    let s_fresh = reads(Arc::clone(&overlay), 128 << 10, true).await?;
    let w_raw = first_touch(Arc::clone(&raw)).await?;
    let w_ov = first_touch(Arc::clone(&overlay)).await?;
    let r_alloc = random_reads(Arc::clone(&overlay)).await?;
    let r_raw = random_reads(Arc::clone(&raw)).await?;
    let s_alloc = reads(Arc::clone(&overlay), 128 << 10, true).await?;
    let s_raw = reads(Arc::clone(&raw), 128 << 10, true).await?;
    println!("4 KiB random reads, QD{TASKS}:");
    println!("  raw golden                   {r_golden:>10.0} ops/s");
    println!(
        "  overlay, nothing written     {r_fresh:>10.0} ops/s ({:.2}x)",
        r_fresh / r_golden
    );
    println!("  raw copy after writes        {r_raw:>10.0} ops/s");
    println!(
        "  overlay, every cluster owned {r_alloc:>10.0} ops/s ({:.2}x)",
        r_alloc / r_raw
    );
    println!("128 KiB sequential reads, QD{TASKS}:");
    println!("  raw golden                   {s_golden:>10.0} ops/s");
    println!(
        "  overlay, nothing written     {s_fresh:>10.0} ops/s ({:.2}x)",
        s_fresh / s_golden
    );
    println!("  raw copy after writes        {s_raw:>10.0} ops/s");
    println!(
        "  overlay, every cluster owned {s_alloc:>10.0} ops/s ({:.2}x)",
        s_alloc / s_raw
    );
    println!("first-touch 4 KiB writes, one per 64 KiB cluster, QD{TASKS}:");
    println!("  raw copy                     {w_raw:>10.0} ops/s");
    println!(
        "  overlay                      {w_ov:>10.0} ops/s ({:.2}x)",
        w_ov / w_raw
    );
    Ok(())
}

/// `qemu-img bench` first-touch writes on a fresh qemu-made overlay; ops/s.
fn qemu_first_touch(
    dir: &std::path::Path,
    gold: &std::path::Path,
    n: u32,
) -> Result<f64, Box<dyn std::error::Error>> {
    let ov = dir.join(format!("qemu{n}.qcow2"));
    let out = run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(gold),
            "-F",
            "raw",
            s(&ov),
        ],
    )?;
    ensure!(out.status.success(), "qemu-img create");
    let count = (SIZE / CLUSTER).to_string();
    let start = Instant::now();
    let out = run(
        "qemu-img",
        &[
            "bench",
            "-w",
            "-S",
            "65536",
            "-s",
            "4096",
            "-c",
            &count,
            "-d",
            "32",
            "-t",
            "writeback",
            "-f",
            "qcow2",
            s(&ov),
        ],
    )?;
    ensure!(
        out.status.success(),
        "qemu-img bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Includes qemu-img's start-up, a few milliseconds.
    Ok((SIZE / CLUSTER) as f64 / start.elapsed().as_secs_f64())
}

/// First-touch writes: this engine and QEMU's qcow2 driver, alternating,
/// each on a fresh overlay of the same golden image. Page-cache writeback
/// throttling (once a few hundred MiB are dirty) hits both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, takes ~10 s"]
async fn bench_first_touch_vs_qemu() -> TestResult {
    let dir = tempfile::tempdir()?;
    let chunks: Vec<(u64, usize)> = (0..SIZE).step_by(1 << 20).map(|o| (o, 1 << 20)).collect();
    let gold = golden(dir.path(), SIZE, &chunks)?;
    std::fs::File::open(&gold)?.sync_all()?;
    let golden_dev = open_golden(&gold)?;
    golden_dev.read(0, SIZE as usize).await?;
    println!("first-touch 4 KiB writes, one per 64 KiB cluster, QD{TASKS}, 256 MiB:");
    for n in 0..4u32 {
        let ov = dir.path().join(format!("ours{n}.qcow2"));
        Overlay::create(&ov, SIZE, "golden.raw")?;
        let dev: Arc<dyn BlockDevice> =
            Arc::new(Overlay::open(&ov, Some(Arc::clone(&golden_dev)), false)?);
        // Whoever goes first in a round finds less dirty page cache: alternate.
        let (q, ours) = if n % 2 == 0 {
            let ours = first_touch(dev).await?;
            (qemu_first_touch(dir.path(), &gold, n)?, ours)
        } else {
            let q = qemu_first_touch(dir.path(), &gold, n)?;
            (q, first_touch(dev).await?)
        };
        println!(
            "  round {n}: qemu-img bench (qcow2) {q:>8.0} ops/s, imagestore {ours:>8.0} ops/s"
        );
        // Let writeback drain so each round starts alike.
        for p in [ov, dir.path().join(format!("qemu{n}.qcow2"))] {
            std::fs::File::open(p)?.sync_all()?;
        }
    }
    Ok(())
}
