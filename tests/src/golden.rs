//! The golden test image: a raw disk built by `tests/guest/build-golden.sh` from Debian
//! packages (syslinux on a FAT partition, the test guest's kernel and a busybox initramfs
//! whose init is `tests/guest/golden-init`), cached under `<workspace>/build/golden/`.
//!
//! Booted by iPXE's `sanboot`, its init logs in to the same disk again through the iBFT,
//! prints the marker the node's previous boot left on partition 2
//! (`BOOTD-E2E: previous-marker=none|MARKER`), writes a new one
//! (`BOOTD-E2E: wrote-marker=MARKER`, `MARKER` = `node=IQN,mac=MAC,boot=N,nonce=HEX`),
//! logs out and powers off.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bootd::workspace_root;
use crate::guest::Outcome;
use crate::process::run;

/// A cold build downloads the kernel package (in build.sh) and packs two initramfs; allow
/// for a slow mirror.
const BUILD_LIMIT: Duration = Duration::from_secs(300);

/// Programs the golden build needs on the host beyond [`crate::guest::TOOLS`], with their
/// Debian packages.
pub const TOOLS: &[(&str, &str)] = &[
    ("syslinux", "syslinux"),
    ("mcopy", "mtools"),
    ("mkfs.fat", "dosfstools"),
    ("sfdisk", "fdisk"),
    ("sha256sum", "coreutils"),
];

/// The built golden disk image (raw).
#[derive(Clone, Debug)]
pub struct GoldenImage {
    pub path: PathBuf,
}

impl GoldenImage {
    /// Builds the image, or finds it in the cache (keyed by package versions and sources).
    /// The kernel and base initramfs come from the guest cache the other tests share.
    pub fn build() -> Result<Self> {
        let root = workspace_root();
        let script = root.join("tests/guest/build-golden.sh");
        let out = run(
            Command::new("bash")
                .arg(&script)
                .arg(root.join("build/golden"))
                .arg(root.join("build/guest")),
            BUILD_LIMIT,
        )?
        .ok()
        .context("building the golden image")?;
        match out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("golden="))
            .map(PathBuf::from)
            .filter(|p| p.is_file())
        {
            Some(path) => Ok(Self { path }),
            None => bail!("{} printed no golden= file: {out}", script.display()),
        }
    }
}

/// What one boot of the golden image reported about its markers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Markers {
    /// The marker the node's previous boot left, `None` on a clean disk.
    pub previous: Option<String>,
    pub wrote: String,
}

impl Markers {
    /// The markers of a boot that passed; errors (with the console) otherwise.
    pub fn of(outcome: &Outcome) -> Result<Self> {
        if !outcome.passed() {
            bail!("the golden image's init did not pass\n{outcome}");
        }
        let previous = outcome
            .mark("previous-marker=")
            .and_then(|m| m.strip_prefix("previous-marker="))
            .with_context(|| format!("no previous-marker= report\n{outcome}"))?;
        let wrote = outcome
            .mark("wrote-marker=")
            .and_then(|m| m.strip_prefix("wrote-marker="))
            .with_context(|| format!("no wrote-marker= report\n{outcome}"))?;
        Ok(Self {
            previous: (previous != "none").then(|| previous.to_string()),
            wrote: wrote.to_string(),
        })
    }
}

/// The `node=`, `mac=` and `boot=` fields of a marker.
pub fn marker_field<'a>(marker: &'a str, key: &str) -> Option<&'a str> {
    marker
        .split(',')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(console: &str) -> Outcome {
        Outcome {
            status: None,
            console: console.to_string(),
            qemu_log: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn reads_markers() {
        let m = Markers::of(&outcome(
            "BOOTD-E2E: previous-marker=none\r\nBOOTD-E2E: wrote-marker=node=iqn.x:a,mac=52:54:00:00:00:01,boot=1,nonce=ab\r\n\
             BOOTD-E2E-RESULT: PASS\n",
        ))
        .ok();
        let want = "node=iqn.x:a,mac=52:54:00:00:00:01,boot=1,nonce=ab";
        assert_eq!(
            m,
            Some(Markers {
                previous: None,
                wrote: want.to_string()
            })
        );
        assert_eq!(marker_field(want, "node"), Some("iqn.x:a"));
        assert_eq!(marker_field(want, "mac"), Some("52:54:00:00:00:01"));
        assert_eq!(marker_field(want, "boot"), Some("1"));
        assert_eq!(marker_field(want, "no"), None);
    }

    #[test]
    fn failed_boot_has_no_markers() {
        let console =
            "BOOTD-E2E: previous-marker=none\nBOOTD-E2E: FAIL: x\nBOOTD-E2E-RESULT: FAIL\n";
        assert!(Markers::of(&outcome(console)).is_err());
        assert!(Markers::of(&outcome("BOOTD-E2E-RESULT: PASS\n")).is_err());
    }
}
