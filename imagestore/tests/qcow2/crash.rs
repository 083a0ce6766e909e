//! kill -9 during a write storm: the child process writes from several tasks
//! (4 KiB blocks interleaved across tasks, so they share clusters), flushes
//! every few operations and reports each completed operation; the parent
//! kills it at a random moment and checks that the image is consistent for
//! qemu-img and that every completed write is intact, flushed or not.

use crate::common::*;
use blockdev::BlockDevice;
use imagestore::Overlay;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Large enough that most writes are first writes to a cluster.
const SIZE: u64 = 128 << 20;
const TASKS: u64 = 6;
const BLOCK: u64 = 4096;
/// Blocks per task: every TASKS-th 4 KiB block of the disk.
const PER_TASK: u64 = SIZE / BLOCK / TASKS;
const FLUSH_EVERY: u64 = 12;

/// What op `i` of task `t` does: (block index within the task, Some(seed)
/// for a write or None for a discard/zeroing).
fn op(t: u64, i: u64) -> (u64, Option<u64>) {
    let mut x = (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 29;
    let block = x % PER_TASK;
    let kind = (x >> 40) % 8;
    (block, (kind != 0).then_some(t * 1_000_000 + i))
}

fn disk_offset(t: u64, block: u64) -> u64 {
    (block * TASKS + t) * BLOCK
}

/// The child: runs when started by [`kill_during_write_storm`] only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for kill_during_write_storm"]
async fn crash_child() -> TestResult {
    let (Ok(ov), Ok(gold)) = (
        std::env::var("CRASH_OVERLAY"),
        std::env::var("CRASH_GOLDEN"),
    ) else {
        return Ok(());
    };
    let dev = Arc::new(open(ov.as_ref(), gold.as_ref())?);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let dev = Arc::clone(&dev);
        handles.push(tokio::spawn(async move {
            for i in 0.. {
                let (block, seed) = op(t, i);
                let off = disk_offset(t, block);
                match seed {
                    Some(seed) => {
                        // No FUA here: it commits everything, which would hide a
                        // flush that does not (FUA is covered by other tests).
                        dev.write(off, bytes(&pattern(BLOCK as usize, seed)), false)
                            .await?
                    }
                    None if i % 2 == 0 => dev.discard(off, BLOCK).await?,
                    None => dev.write_zeroes(off, BLOCK, true).await?,
                }
                // Ops 0..=i of task t are complete.
                println!("D {t} {}", i + 1);
                if (i + 1) % FLUSH_EVERY == 0 {
                    dev.flush().await?;
                }
            }
            Ok::<_, blockdev::BlockError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

#[test]
fn kill_during_write_storm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), SIZE, &[(0, (SIZE / 2) as usize)])?;
    let golden_bytes = std::fs::read(&gold)?;
    let ov = dir.path().join("node.qcow2");
    Overlay::create(&ov, SIZE, s(&gold))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for (round, delay_ms) in [150u64, 400, 250].into_iter().enumerate() {
        // Each round starts from what the last one left: the overlay's state
        // before this round is the base the model builds on.
        let base = rt.block_on(async {
            let dev = open(&ov, &gold)?;
            let all = dev.read(0, SIZE as usize).await?;
            dev.close().await?;
            Ok::<_, Box<dyn std::error::Error>>(all)
        })?;
        qemu_check(&ov, false)?;
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "crash::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("CRASH_OVERLAY", &ov)
            .env("CRASH_GOLDEN", &gold)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let reader = std::thread::spawn(move || {
            let mut completed = vec![0u64; TASKS as usize];
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.split_whitespace().collect();
                if let ["D", t, n] = f[..] {
                    if let (Ok(t), Ok(n)) = (t.parse::<usize>(), n.parse::<u64>()) {
                        completed[t] = completed[t].max(n);
                    }
                }
            }
            completed
        });
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill()?; // SIGKILL
        child.wait()?;
        let completed = reader.join().map_err(|_| "reader thread")?;
        assert!(
            completed.iter().all(|&n| n > 0),
            "round {round}: child made no progress in {:?}: {completed:?}",
            start.elapsed()
        );

        eprintln!("round {round}: completed {completed:?}");
        // Consistent right after the kill (leaked clusters allowed).
        qemu_check(&ov, true)?;
        let got = rt.block_on(async {
            let dev = open(&ov, &gold)?;
            let all = dev.read(0, SIZE as usize).await?;
            dev.close().await?;
            Ok::<_, Box<dyn std::error::Error>>(all)
        })?;
        // The reopen repaired the leaks.
        qemu_check(&ov, false)?;
        for t in 0..TASKS {
            // Per block: the value after the completed ops, and any value a
            // later op (issued before the kill) may have left.
            let mut durable: Vec<Option<Vec<u8>>> = vec![None; PER_TASK as usize];
            let mut later: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PER_TASK as usize];
            let done = completed[t as usize];
            for i in 0..=done + 2 * FLUSH_EVERY {
                let (block, seed) = op(t, i);
                let v =
                    seed.map_or_else(|| vec![0u8; BLOCK as usize], |s| pattern(BLOCK as usize, s));
                if i < done {
                    durable[block as usize] = Some(v);
                    later[block as usize].clear();
                } else {
                    later[block as usize].push(v);
                }
            }
            for b in 0..PER_TASK {
                let off = disk_offset(t, b) as usize;
                let now = &got[off..off + BLOCK as usize];
                let before = durable[b as usize]
                    .as_deref()
                    .unwrap_or(&base[off..off + BLOCK as usize]);
                let ok = now == before || later[b as usize].iter().any(|v| v == now);
                assert!(
                    ok,
                    "round {round} task {t} block {b}: lost a completed write"
                );
            }
        }
        // The golden image is never written.
        assert!(std::fs::read(&gold)? == golden_bytes);
    }
    Ok(())
}
