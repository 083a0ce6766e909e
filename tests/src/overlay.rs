//! Checks of a node's disk after faults: qemu-img's view of the overlay file, and a
//! node's whole disk read back over iSCSI against what was acknowledged.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Result};

use crate::disk::Fill;
use crate::process::run;
use crate::qemu_iscsi::CLIENT_LIMIT;

/// `qemu-img check` of an overlay. `leaks_ok`: exit 3 (leaked clusters only, as a
/// crash may leave) passes too; 2 (corruption) and 1 (check failed) never do.
/// Returns the report's verdict lines.
pub fn qemu_img_check(overlay: &Path, leaks_ok: bool) -> Result<String> {
    let out = run(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(overlay),
        CLIENT_LIMIT,
    )?;
    let code = out.status.code();
    let clean = code == Some(0) || (leaks_ok && code == Some(3));
    ensure!(
        clean && !out.stdout.contains("ERROR") && !out.stdout.contains("corrupt"),
        "qemu-img check {} is not clean: {out}",
        overlay.display()
    );
    Ok(out
        .stdout
        .lines()
        .filter(|l| l.contains("were found") || l.contains("allocated") || l.contains("leaked"))
        .collect::<Vec<_>>()
        .join("; "))
}

/// `qemu-img compare` of an overlay (through its backing image) against a raw file.
pub fn qemu_img_compare(overlay: &Path, raw: &Path) -> Result<()> {
    run(
        Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(overlay)
            .arg(raw),
        CLIENT_LIMIT,
    )?
    .ok()
    .map(drop)
}

/// The unit an unacknowledged write lands in or not: a 4 KiB block (the page the
/// initiator and the target's file I/O deal in).
const UNIT: usize = 4096;

/// How a disk read back compares with what its writers were told.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged writes whose data is not (all) there.
    pub lost: Vec<Fill>,
    /// Unacknowledged writes that landed (allowed: the target may have written them).
    pub landed_unacked: usize,
    /// Byte offsets holding neither the golden data nor any write's data.
    pub garbage: Vec<u64>,
}

/// Compares `got` (the whole disk) with `golden` plus `acked` (applied in order: later
/// writes win) and `unacked`: each 4 KiB block of an unacknowledged write may or may
/// not have landed (a write whose flush failed may be torn between blocks, as on any
/// disk), but no block in part. An unacknowledged write must not overlap an
/// acknowledged one: which came last is not known here.
pub fn judge(got: &[u8], golden: &[u8], acked: &[Fill], unacked: &[Fill]) -> Result<Verdict> {
    ensure!(
        got.len() == golden.len(),
        "disk is {} bytes, golden {}",
        got.len(),
        golden.len()
    );
    let mut want = golden.to_vec();
    let range = |f: &Fill| -> Result<std::ops::Range<usize>> {
        let start = usize::try_from(f.offset)?;
        let end = start + usize::try_from(f.len)?;
        if end > golden.len() {
            bail!("{f:?} is past the end of the disk");
        }
        Ok(start..end)
    };
    let mut verdict = Verdict::default();
    // Unacknowledged writes first: an acknowledged write over the same bytes decides.
    for f in unacked {
        let r = range(f)?;
        let mut landed = false;
        let mut at = r.start;
        while at < r.end {
            let end = ((at / UNIT + 1) * UNIT).min(r.end);
            if got[at..end].iter().all(|&b| b == f.byte) {
                want[at..end].fill(f.byte);
                landed = true;
            }
            at = end;
        }
        verdict.landed_unacked += usize::from(landed);
    }
    for f in acked {
        want[range(f)?].fill(f.byte);
    }
    for f in acked {
        let r = range(f)?;
        if got[r.clone()] != want[r] {
            verdict.lost.push(*f);
        }
    }
    let mut i = 0;
    while i < got.len() {
        if got[i] != want[i] {
            let in_acked = acked
                .iter()
                .any(|f| (f.offset..f.offset + f.len).contains(&(i as u64)));
            if !in_acked {
                verdict.garbage.push(i as u64);
                if verdict.garbage.len() >= 16 {
                    break;
                }
            }
            // One report per 4 KiB block is enough.
            i = (i / 4096 + 1) * 4096;
            continue;
        }
        i += 1;
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_lost_landed_and_garbage() -> Result<()> {
        let golden = vec![7u8; 64 * 1024];
        let a = Fill::new(0, 4096, 1);
        let b = Fill::new(8192, 4096, 2);
        let u = Fill::new(16384, 4096, 3);
        let mut got = golden.clone();
        got[..4096].fill(1);
        // b lost; u landed; garbage at 40000.
        got[16384..20480].fill(3);
        got[40000] = 9;
        let v = judge(&got, &golden, &[a, b], &[u])?;
        assert_eq!(v.lost.len(), 1);
        assert_eq!(v.lost[0].offset, 8192);
        assert_eq!(v.landed_unacked, 1);
        assert_eq!(v.garbage, vec![40000]);
        // A write torn between blocks is allowed; within a block it is garbage.
        let wide = Fill::new(24576, 3 * 4096, 4);
        let mut torn = golden.clone();
        torn[24576..28672].fill(4);
        let v = judge(&torn, &golden, &[], &[wide])?;
        assert!(v.garbage.is_empty() && v.landed_unacked == 1);
        torn[28672] = 4;
        let v = judge(&torn, &golden, &[], &[wide])?;
        assert_eq!(v.garbage, vec![28672]);
        let clean = judge(&golden, &golden, &[], &[u])?;
        assert!(clean.lost.is_empty() && clean.garbage.is_empty() && clean.landed_unacked == 0);
        Ok(())
    }
}
