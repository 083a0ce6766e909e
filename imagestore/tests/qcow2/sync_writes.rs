//! `SyncWrites`: with `Always`, every completed write, zeroing and discard is
//! in the overlay's tables on disk without a flush, so another machine
//! (which drops this one's write-ahead log) finds it; concurrent writes
//! share commits. With `Flush` the same writes are only in the log.

use crate::common::*;
use blockdev::BlockDevice;
use imagestore::qcow2::overlay::SyncWrites;
use imagestore::qcow2::wal;
use imagestore::Overlay;
use std::path::Path;
use std::sync::Arc;

const SIZE: u64 = 16 << 20;
const WRITES: u64 = 64;

/// Writes WRITES first touches (4 KiB, one per cluster) concurrently, a
/// rewrite and a zeroing; returns the commits they took. The overlay is
/// then dropped without a close or a flush.
async fn storm(
    ov: &Path,
    gold: &Path,
    mode: SyncWrites,
) -> Result<u64, Box<dyn std::error::Error>> {
    let dev = Arc::new(open(ov, gold)?);
    dev.set_sync_writes(mode);
    let before = dev.commits();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let dev = dev.clone();
        tasks.spawn(async move {
            dev.write(i * (128 << 10), bytes(&pattern(4096, i)), false)
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    dev.write(0, bytes(&pattern(4096, 1000)), false).await?;
    dev.write_zeroes(1 << 20, 64 << 10, false).await?;
    Ok(dev.commits() - before)
}

/// What another machine finds: the file as it is, without this boot's log.
async fn survivor_has_every_write(
    ov: &Path,
    gold: &Path,
) -> Result<bool, Box<dyn std::error::Error>> {
    wal::remove(ov)?;
    let dev = open(ov, gold)?;
    let mut all = dev.read(0, 4096).await? == pattern(4096, 1000);
    for i in 1..WRITES {
        let want = if ((1 << 20)..(1 << 20) + (64 << 10)).contains(&(i * (128 << 10))) {
            vec![0u8; 4096]
        } else {
            pattern(4096, i)
        };
        all &= dev.read(i * (128 << 10), 4096).await? == want;
    }
    dev.close().await?;
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_survives_losing_the_log_and_shares_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), SIZE, &[(0, SIZE as usize)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "golden.raw")?;
    let commits = storm(&ov, &gold, SyncWrites::Always).await?;
    ensure!(
        survivor_has_every_write(&ov, &gold).await?,
        "a completed write is missing"
    );
    // Every request waited for a commit, but concurrent ones shared them.
    ensure!(
        (3..WRITES).contains(&commits),
        "{commits} commits for {WRITES} concurrent writes"
    );
    qemu_check(&ov, false)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_commits_once_per_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), SIZE, &[(0, SIZE as usize)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "golden.raw")?;
    let commits = storm(&ov, &gold, SyncWrites::Each).await?;
    ensure!(
        survivor_has_every_write(&ov, &gold).await?,
        "a completed write is missing"
    );
    ensure!(
        commits == WRITES + 2,
        "{commits} commits for {} requests",
        WRITES + 2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flush_mode_leaves_them_to_the_log() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gold = golden(dir.path(), SIZE, &[(0, SIZE as usize)])?;
    let ov = dir.path().join("n.qcow2");
    Overlay::create(&ov, SIZE, "golden.raw")?;
    let commits = storm(&ov, &gold, SyncWrites::Flush).await?;
    ensure!(commits == 0, "{commits} commits without a flush");
    ensure!(
        !survivor_has_every_write(&ov, &gold).await?,
        "without the log the writes should be gone"
    );
    Ok(())
}
