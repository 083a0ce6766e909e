//! Property test: random writes, discards, zeroing, flushes, clean reopens
//! and simulated kill -9 (drop without close) against an in-memory model:
//! after a kill every completed request is still there.

use crate::common::*;
use blockdev::BlockDevice;
use imagestore::Overlay;
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Over 1 GiB (three L2 tables) and not a whole number of clusters.
const SIZE: u64 = (1 << 30) + 1536;
const AREA: u64 = 2 << 20;
/// Hot areas: the start, across the first L2 table boundary, the end.
const AREAS: [u64; 3] = [0, (512 << 20) - (1 << 20), SIZE - AREA];

fn shared_golden() -> &'static (tempfile::TempDir, PathBuf) {
    static G: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    G.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        // Golden data in the first half of each area, a hole in the second.
        let filled: Vec<(u64, usize)> = AREAS.iter().map(|&a| (a, (AREA / 2) as usize)).collect();
        let path = golden(dir.path(), SIZE, &filled).expect("golden");
        (dir, path)
    })
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        area: usize,
        sector: u64,
        len: u64,
        seed: u64,
        fua: bool,
    },
    Discard {
        area: usize,
        sector: u64,
        len: u64,
    },
    Zero {
        area: usize,
        sector: u64,
        len: u64,
    },
    Flush,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly short ranges (parts of 2 KiB subclusters), some long ones.
    let len = prop_oneof![3 => 1..=6u64, 2 => 1..=300u64];
    let range = (0..3usize, 0..AREA / 512, len);
    prop_oneof![
        6 => (range.clone(), any::<u64>(), any::<bool>()).prop_map(|((area, sector, len), seed, f)| Op::Write { area, sector, len, seed, fua: f && seed % 4 == 0 }),
        2 => range.clone().prop_map(|(area, sector, len)| Op::Discard { area, sector, len: len * 2 }),
        1 => range.prop_map(|(area, sector, len)| Op::Zero { area, sector, len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// Clips a sector range to its area; returns (device offset, area offset, len).
fn clip(area: usize, sector: u64, len: u64) -> (u64, usize, usize) {
    let start = sector * 512;
    let len = (len * 512).min(AREA - start);
    (AREAS[area] + start, start as usize, len as usize)
}

async fn run_ops(ops: Vec<Op>, extended_l2: bool) -> TestResult {
    let (_, gold) = shared_golden();
    let dir = tempfile::tempdir()?;
    let ov = dir.path().join("node.qcow2");
    Overlay::create_with(&ov, SIZE, s(gold), extended_l2)?;
    let mut dev = open(&ov, gold)?;
    let mut cur: Vec<Vec<u8>> = Vec::new();
    for &a in &AREAS {
        cur.push(dev.read(a, AREA as usize).await?.to_vec());
    }
    for op in ops {
        let touched = match op {
            Op::Write {
                area,
                sector,
                len,
                seed,
                fua,
            } => {
                let (off, at, n) = clip(area, sector, len);
                let data = pattern(n, seed);
                dev.write(off, bytes(&data), fua).await?;
                cur[area][at..at + n].copy_from_slice(&data);
                Some(area)
            }
            Op::Discard { area, sector, len } | Op::Zero { area, sector, len } => {
                let (off, at, n) = clip(area, sector, len);
                if matches!(op, Op::Discard { .. }) {
                    dev.discard(off, n as u64).await?;
                } else {
                    dev.write_zeroes(off, n as u64, sector % 2 == 0).await?;
                }
                cur[area][at..at + n].fill(0);
                Some(area)
            }
            Op::Flush => {
                dev.flush().await?;
                None
            }
            Op::Reopen => {
                dev.close().await?;
                drop(dev);
                dev = open(&ov, gold)?;
                None
            }
            Op::Crash => {
                drop(dev);
                // The image must open and be consistent right after the "kill".
                qemu_check(&ov, true)?;
                dev = open(&ov, gold)?;
                // Every completed write is there, flushed or not: the
                // write-ahead log carried it over the crash.
                for (i, &a) in AREAS.iter().enumerate() {
                    let got = dev.read(a, AREA as usize).await?;
                    if let Some(sec) = got
                        .chunks(512)
                        .zip(cur[i].chunks(512))
                        .position(|(g, w)| g != w)
                    {
                        return Err(format!(
                            "area {i} sector {sec}: an acknowledged write was lost in the crash"
                        )
                        .into());
                    }
                }
                None
            }
        };
        if let Some(area) = touched {
            let got = dev.read(AREAS[area], AREA as usize).await?;
            ensure!(got[..] == cur[area][..], "after {op:?}");
        }
    }
    for (i, &a) in AREAS.iter().enumerate() {
        let got = dev.read(a, AREA as usize).await?;
        ensure!(got[..] == cur[i][..], "area {i} at the end");
    }
    dev.close().await?;
    drop(dev);
    // Leaks from simulated kills were repaired at the reopen after them.
    qemu_check(&ov, false)?;
    let dev = open(&ov, gold)?;
    for (i, &a) in AREAS.iter().enumerate() {
        let got = dev.read(a, AREA as usize).await?;
        ensure!(got[..] == cur[i][..], "area {i} after reopen");
    }
    Ok(())
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), max_shrink_iters: 200, ..ProptestConfig::default() })]
    /// Extended L2 entries (subclusters), the layout of new overlays.
    #[test]
    fn overlay_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(run_ops(ops, true)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(8), max_shrink_iters: 200, ..ProptestConfig::default() })]
    /// The standard layout (images made before subclusters, or by qemu).
    #[test]
    fn standard_layout_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(run_ops(ops, false)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
