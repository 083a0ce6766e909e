//! The test guest: a Debian kernel and a busybox initramfs built by `tests/guest/build.sh`
//! (cached under `<workspace>/build/guest/`), booted with QEMU under TCG inside a network
//! namespace. Its init (`tests/guest/init`) reports to the serial console with
//! `BOOTD-E2E: ...` lines and a final `BOOTD-E2E-RESULT: PASS` or `FAIL`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bootd::workspace_root;
use crate::netns::NetNs;
use crate::process::{describe, run, wait_until};

/// Downloading the kernel package and packing the initramfs takes about 10 s; allow
/// for a slow mirror.
const BUILD_LIMIT: Duration = Duration::from_secs(120);
/// The marker every line the guest's init reports starts with.
pub const MARKER: &str = "BOOTD-E2E: ";
const RESULT: &str = "BOOTD-E2E-RESULT: ";

/// Programs the guest build and boot need on the host, with their Debian packages.
pub const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("iscsistart", "open-iscsi"),
    ("iscsid", "open-iscsi"),
    ("iscsiadm", "open-iscsi"),
    ("mke2fs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("cpio", "cpio"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("ip", "iproute2"),
    ("apt-get", "apt"),
    ("dpkg", "dpkg"),
];

/// A kernel and initramfs ready to boot.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl GuestImage {
    /// Builds the guest, or finds it in the cache (`<workspace>/build/guest/`, keyed by
    /// the package versions and the guest sources).
    pub fn build() -> Result<Self> {
        let root = workspace_root();
        let script = root.join("tests/guest/build.sh");
        let out = run(
            Command::new("bash")
                .arg(&script)
                .arg(root.join("build/guest")),
            BUILD_LIMIT,
        )?
        .ok()
        .context("building the guest")?;
        let path = |key: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(PathBuf::from)
                .filter(|p| p.is_file())
        };
        match (path("kernel="), path("initrd=")) {
            (Some(kernel), Some(initrd)) => Ok(Self { kernel, initrd }),
            _ => bail!(
                "{} printed no kernel= and initrd= files: {out}",
                script.display()
            ),
        }
    }
}

/// How to boot the guest.
#[derive(Clone, Debug)]
pub struct Boot<'a> {
    pub image: &'a GuestImage,
    /// The namespace's tap device the guest's NIC (virtio-net) attaches to.
    pub tap: &'a str,
    /// Kernel command-line words after the console settings (`bootd.*=` for the init).
    pub params: Vec<String>,
    /// Where the serial console goes.
    pub console: PathBuf,
    /// The guest must power off within this.
    pub limit: Duration,
}

/// What a finished (or killed) guest left behind.
#[derive(Debug)]
pub struct Outcome {
    /// QEMU's exit status; `None` if it outlived the limit and was killed.
    pub status: Option<ExitStatus>,
    pub console: String,
    /// QEMU's own stdout and stderr.
    pub qemu_log: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// The init's report lines, without the marker.
    pub fn marks(&self) -> Vec<&str> {
        self.console
            .lines()
            .filter_map(|l| l.split_once(MARKER).map(|(_, m)| m.trim_end()))
            .collect()
    }

    /// True if the init reported `PASS` (and nothing else) as its result.
    pub fn passed(&self) -> bool {
        let results: Vec<&str> = self
            .console
            .lines()
            .filter_map(|l| l.split_once(RESULT).map(|(_, r)| r.trim_end()))
            .collect();
        results == ["PASS"]
    }

    /// The report line that starts with `prefix`, if the guest printed one.
    pub fn mark(&self, prefix: &str) -> Option<&str> {
        self.marks().into_iter().find(|m| m.starts_with(prefix))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self
            .status
            .map_or("killed at the time limit".to_string(), |s| s.to_string());
        write!(
            f,
            "guest {status} after {:.1}s\n--- serial console ---\n{}\n--- qemu ---\n{}--- end ---",
            self.elapsed.as_secs_f64(),
            self.console,
            self.qemu_log
        )
    }
}

/// Kills QEMU if the caller unwinds while the guest runs.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // Errors only mean it is already gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Boots the guest in `ns` under TCG and waits until it powers off or `limit` passes.
pub fn boot(ns: &NetNs, boot: &Boot<'_>) -> Result<Outcome> {
    let dir = boot
        .console
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let qemu_log_path = dir.join("qemu.log");
    let qemu_log = std::fs::File::create(&qemu_log_path)
        .with_context(|| format!("creating {}", qemu_log_path.display()))?;
    let append = ["console=ttyS0", "panic=-1", "loglevel=4"]
        .iter()
        .map(|s| s.to_string())
        .chain(boot.params.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = ns.command("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "512", "-smp", "1", "-nographic"])
        .args(["-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", boot.console.display()))
        .arg("-kernel")
        .arg(&boot.image.kernel)
        .arg("-initrd")
        .arg(&boot.image.initrd)
        .arg("-append")
        .arg(&append)
        .arg("-netdev")
        .arg(format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            boot.tap
        ))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone()?)
        .stderr(qemu_log);
    let command = describe(&cmd);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning `{command}`"))?;
    let mut running = Running(Some(child));
    let status = match running.0.as_mut() {
        Some(child) => wait_until(child, start + boot.limit)?,
        None => None,
    };
    running.0 = None;
    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Ok(Outcome {
        status,
        console: read(&boot.console),
        qemu_log: read(&qemu_log_path),
        elapsed: start.elapsed(),
    })
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
    fn reads_the_init_report() {
        let o = outcome(
            "\x1b[2JBOOTD-E2E: booted 6.1\n[    3.2] scsi host0: iSCSI\r\nBOOTD-E2E: login ok\r\n\
             BOOTD-E2E: disk /dev/sda 268435456 bytes\nBOOTD-E2E-RESULT: PASS\r\n",
        );
        assert_eq!(
            o.marks(),
            ["booted 6.1", "login ok", "disk /dev/sda 268435456 bytes"]
        );
        assert_eq!(o.mark("disk "), Some("disk /dev/sda 268435456 bytes"));
        assert!(o.passed());
    }

    #[test]
    fn fail_or_no_result_is_not_a_pass() {
        assert!(!outcome("BOOTD-E2E: login ok\n").passed());
        assert!(!outcome("BOOTD-E2E: FAIL: x\nBOOTD-E2E-RESULT: FAIL\n").passed());
        assert!(!outcome("BOOTD-E2E-RESULT: PASS\nBOOTD-E2E-RESULT: FAIL\n").passed());
    }
}
