//! Disk contents for tests: reproducible noise, checksums, and what a disk should hold
//! after a list of writes.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::process::run;

/// Deterministic, incompressible bytes (xorshift64), so any misplaced block shows.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    // xorshift has one fixed point; never start there.
    if seed == 0 {
        seed = 0x9e37_79b9_7f4a_7c15;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of a file, by `sha256sum` (coreutils).
pub fn sha256(file: &Path) -> Result<String> {
    let out = run(
        Command::new("sha256sum").arg(file),
        std::time::Duration::from_secs(120),
    )?
    .ok()?;
    let sum = out
        .stdout
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?;
    ensure!(
        sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
        "sha256sum printed {:?}",
        out.stdout
    );
    Ok(sum.to_string())
}

/// A write of `len` bytes of `byte` at `offset`, as qemu-io's `write -P`.
#[derive(Clone, Copy, Debug)]
pub struct Fill {
    pub offset: u64,
    pub len: u64,
    pub byte: u8,
}

impl Fill {
    pub fn new(offset: u64, len: u64, byte: u8) -> Self {
        Self { offset, len, byte }
    }

    /// The qemu-io command that makes this write.
    pub fn write_cmd(&self) -> String {
        format!("write -P {:#04x} {} {}", self.byte, self.offset, self.len)
    }

    /// The qemu-io command that checks it is there.
    pub fn read_cmd(&self) -> String {
        format!("read -P {:#04x} {} {}", self.byte, self.offset, self.len)
    }
}

/// `base` with `fills` applied in order.
pub fn expected(base: &[u8], fills: &[Fill]) -> Result<Vec<u8>> {
    let mut out = base.to_vec();
    for f in fills {
        let start = usize::try_from(f.offset)?;
        let end = start + usize::try_from(f.len)?;
        ensure!(end <= out.len(), "{f:?} is past the end of the disk");
        out[start..end].fill(f.byte);
    }
    Ok(out)
}

/// Fails with the first differing byte unless `file` holds exactly `want`.
pub fn assert_contents(file: &Path, want: &[u8], what: &str) -> Result<()> {
    let got = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if got.len() != want.len() {
        bail!("{what}: {} bytes, expected {}", got.len(), want.len());
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        bail!(
            "{what}: byte {i} ({:#x}) is {:#04x}, expected {:#04x}",
            i,
            got[i],
            want[i]
        );
    }
    Ok(())
}
