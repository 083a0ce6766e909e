//! A node's disk as one sparse raw file: its qcow2 overlay read through the
//! overlay engine (the same reads serve answers, write-ahead log included)
//! over its raw golden image. Only what the disk maps is read; unallocated
//! and all-zero ranges stay holes in the output.

use crate::progress::Progress;
use anyhow::{Context, Result};
use blockdev::{Allocation, BlockDevice, RawFile};
use imagestore::Overlay;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Extents asked for at once, and the largest read.
const SPAN: u64 = 256 << 20;
const READ: u64 = 1 << 20;

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flattened {
    pub bytes: u64,
    /// Bytes of data written (the rest are holes).
    pub data_bytes: u64,
}

/// Writes the disk of `overlay` (read-only; the caller holds it away from
/// writers) over `golden` into `out`, which must not exist.
pub fn flatten(overlay: &Path, golden: &Path, out: &Path) -> Result<Flattened> {
    let backing: Arc<dyn BlockDevice> = Arc::new(
        RawFile::open(golden, true)
            .with_context(|| format!("golden image {}", golden.display()))?,
    );
    let disk = Overlay::open(overlay, Some(backing), true)
        .with_context(|| format!("overlay {}", overlay.display()))?;
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("{}", out.display()))?;
    let size = disk.capabilities().size_bytes();
    dst.set_len(size)
        .with_context(|| format!("{}", out.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting a runtime for the overlay reads")?;
    let bar = Progress::bytes(size, "flattening");
    let data_bytes = rt.block_on(copy(&disk, &dst, size, &bar))?;
    dst.sync_all()
        .with_context(|| format!("{}", out.display()))?;
    bar.finish();
    Ok(Flattened {
        bytes: size,
        data_bytes,
    })
}

async fn copy(disk: &Overlay, dst: &std::fs::File, size: u64, bar: &Progress) -> Result<u64> {
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < size {
        let span = SPAN.min(size - pos);
        let extents = disk
            .block_status(pos, span)
            .await
            .with_context(|| format!("allocation status at byte {pos}"))?;
        // Extents come in order from `pos`; the list may stop early.
        let mut covered = pos;
        for e in extents {
            if e.offset != covered || e.len == 0 {
                break;
            }
            if e.state == Allocation::Mapped {
                written += copy_range(disk, dst, e.offset, e.len).await?;
            }
            covered += e.len;
            bar.set(covered);
        }
        if covered == pos {
            // Nothing reported: read the span rather than assume holes.
            written += copy_range(disk, dst, pos, span).await?;
            covered = pos + span;
        }
        pos = covered;
        bar.set(pos);
    }
    Ok(written)
}

/// Copies one mapped range, leaving all-zero reads as holes.
async fn copy_range(disk: &Overlay, dst: &std::fs::File, offset: u64, len: u64) -> Result<u64> {
    let mut written = 0;
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = READ.min(end - at);
        let data = disk
            .read(at, n as usize)
            .await
            .with_context(|| format!("reading the node's disk at byte {at}"))?;
        if data.iter().any(|&b| b != 0) {
            dst.write_all_at(&data, at)
                .with_context(|| format!("writing the flattened disk at byte {at}"))?;
            written += n;
        }
        at += n;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overlay with writes, zeroed ranges and untouched golden data
    /// flattens to exactly what the disk reads, with holes where it
    /// reads zeros.
    #[test]
    fn flattened_equals_the_disk_and_stays_sparse() -> Result<()> {
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir()?;
        let golden = dir.path().join("golden.raw");
        // 64 MiB golden: data in the first 8 MiB and at 40 MiB, holes elsewhere.
        let f = std::fs::File::create(&golden)?;
        f.set_len(64 * MIB)?;
        f.write_all_at(&vec![0x11; (8 * MIB) as usize], 0)?;
        f.write_all_at(&vec![0x22; MIB as usize], 40 * MIB)?;
        drop(f);
        let ov = dir.path().join("n.qcow2");
        Overlay::create(&ov, 64 * MIB, "golden.raw")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let backing: Arc<dyn BlockDevice> = Arc::new(RawFile::open(&golden, true)?);
            let o = Overlay::open(&ov, Some(backing), false)?;
            // A node's write over golden data, one into a golden hole, and
            // a discard of golden data.
            o.write(4096, vec![0xaa; 8192].into(), false).await?;
            o.write(20 * MIB, vec![0xbb; 4096].into(), false).await?;
            o.discard(40 * MIB, MIB).await?;
            o.close().await?;
            anyhow::Ok(())
        })?;
        let out = dir.path().join("flat.raw");
        let got = flatten(&ov, &golden, &out)?;
        assert_eq!(got.bytes, 64 * MIB);
        let flat = std::fs::read(&out)?;
        let mut want = vec![0u8; (64 * MIB) as usize];
        want[..(8 * MIB) as usize].fill(0x11);
        want[4096..4096 + 8192].fill(0xaa);
        want[(20 * MIB) as usize..(20 * MIB + 4096) as usize].fill(0xbb);
        assert!(flat == want, "flattened disk differs from the node's disk");
        // Holes: only the golden's 8 MiB and the one written MiB hold data.
        let allocated = crate::datadir::allocated_bytes(&out);
        assert!(allocated <= 10 * MIB, "{allocated} bytes allocated");
        // The golden's 8 MiB, and the 4 KiB written into a golden hole
        // (the rest of its cluster reads through to the hole).
        assert_eq!(got.data_bytes, 8 * MIB + 4096);
        // The overlay is never written by a read-only open.
        assert!(flatten(&ov, &golden, &out).is_err(), "out must not exist");
        Ok(())
    }
}
