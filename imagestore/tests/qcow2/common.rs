//! Shared helpers: golden images, qemu tools, patterns.

use blockdev::{BlockDevice, RawFile};
use bytes::Bytes;
use imagestore::Overlay;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Deterministic bytes that differ per offset and seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (i ^ seed.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (x >> 56) as u8 | 1
        })
        .collect()
}

/// A golden raw image of `size` bytes: pattern data in `filled` ranges, holes elsewhere.
pub fn golden(dir: &Path, size: u64, filled: &[(u64, usize)]) -> std::io::Result<PathBuf> {
    let path = dir.join("golden.raw");
    let f = std::fs::File::create(&path)?;
    f.set_len(size)?;
    for &(off, len) in filled {
        f.write_all_at(&pattern(len, off), off)?;
    }
    Ok(path)
}

pub fn open_golden(path: &Path) -> Result<Arc<dyn BlockDevice>, Box<dyn std::error::Error>> {
    Ok(Arc::new(RawFile::open(path, true)?))
}

/// Opens `overlay` over the golden image at `golden`. Retries "in use" for
/// a moment: a test thread spawning qemu-img at the same time briefly
/// shares every descriptor (and so this file's `flock`) with the child until
/// it execs.
pub fn open(overlay: &Path, golden: &Path) -> Result<Overlay, Box<dyn std::error::Error>> {
    let mut tries = 0;
    loop {
        match Overlay::open(overlay, Some(open_golden(golden)?), false) {
            Err(imagestore::ImageError::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(cmd).args(args).output()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// `qemu-img check`: returns its exit code; fails on anything but 0 (clean)
/// or, with `leaks_ok`, 3 (leaked clusters only).
pub fn qemu_check(path: &Path, leaks_ok: bool) -> Result<i32, Box<dyn std::error::Error>> {
    let out = run("qemu-img", &["check", "-f", "qcow2", s(path)])?;
    let code = out.status.code().unwrap_or(-1);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = code == 0 || (leaks_ok && code == 3);
    if !ok || text.contains("ERROR") {
        return Err(format!("qemu-img check exit {code}:\n{text}").into());
    }
    Ok(code)
}

pub fn bytes(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}
