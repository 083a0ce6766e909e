//! The data-safety guest (`tests/guest/dsafe-init` over the test guest): a Linux kernel
//! initiator that logs in with iscsistart, lets iscsid adopt the session as a root disk's,
//! makes ext4 on the disk and writes files whose contents follow from their names. Here:
//! its image, waiting for its reports, and the host's check of the disk it left.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::guest::{GuestImage, Outcome};
use crate::overlay::qemu_img_check;
use crate::process::run;

const TOOL_LIMIT: Duration = Duration::from_secs(120);
/// One record of a guest file: `"%-10s %08d %011d\n"`.
const RECORD: usize = 32;

/// The guest's file `dir/f{i}`, as its init writes it.
pub fn file_contents(token: &str, i: u64) -> Vec<u8> {
    let n = (i % 29 + 1) * 64;
    let mut s = String::with_capacity(n as usize * RECORD);
    for k in 0..n {
        s.push_str(&format!("{token:<10} {i:08} {k:011}\n"));
    }
    s.into_bytes()
}

/// The test guest's initramfs with `tests/guest/dsafe-init` appended as `/init` (the
/// kernel unpacks concatenated archives in order; later files replace earlier ones).
pub fn image(dir: &Path) -> Result<GuestImage> {
    let base = GuestImage::build()?;
    let root = dir.join("initrd-overlay");
    std::fs::create_dir_all(&root)?;
    let init = crate::bootd::workspace_root().join("tests/guest/dsafe-init");
    std::fs::copy(&init, root.join("init"))?;
    let cpio = dir.join("extra.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo init | cpio -o -H newc --quiet > '{}'",
            cpio.display()
        ))
        .current_dir(&root)
        .status()?;
    ensure!(status.success(), "cpio of the data-safety init: {status}");
    let mut initrd = std::fs::read(&base.initrd)?;
    // newc archives are 4-byte aligned; cpio pads its output to 512 bytes anyway.
    initrd.resize(initrd.len().next_multiple_of(512), 0);
    initrd.extend(std::fs::read(&cpio)?);
    let path = dir.join("initrd-dsafe.cpio");
    std::fs::write(&path, initrd)?;
    Ok(GuestImage {
        kernel: base.kernel,
        initrd: path,
    })
}

/// Waits until the console file shows `mark`, or the guest thread ended.
pub fn wait_for_mark(
    console: &Path,
    mark: &str,
    limit: Duration,
    guest_done: impl Fn() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if console_text(console).contains(mark) {
            return Ok(());
        }
        if guest_done() {
            bail!("the guest ended before {mark:?}");
        }
        ensure!(
            Instant::now() < deadline,
            "no {mark:?} within {}s",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the serial console holds so far.
pub fn console_text(console: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned()
}

/// How many files the guest reported written (its `wrote N files` line).
pub fn files_written(outcome: &Outcome) -> Result<u64> {
    let wrote = outcome
        .mark("wrote ")
        .with_context(|| format!("no `wrote N files` report\n{outcome}"))?;
    wrote
        .strip_prefix("wrote ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("bad report {wrote:?}"))
}

/// The host's look at the overlay the guest left (serve stopped): `qemu-img check`,
/// e2fsck of the file system, and every one of the `files` the guest wrote read back
/// (debugfs) against what its name says. Returns `qemu-img check`'s verdict.
pub fn check_disk(overlay: &Path, work: &Path, token: &str, files: u64) -> Result<String> {
    let check = qemu_img_check(overlay, false)?;
    let raw = work.join("disk.raw");
    run(
        Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(overlay)
            .arg(&raw),
        TOOL_LIMIT,
    )?
    .ok()?;
    // Both verdicts make the report: e2fsck's, and how many files are wrong.
    let fsck = run(Command::new("e2fsck").arg("-fn").arg(&raw), TOOL_LIMIT)?;
    let dump = work.join("dump");
    std::fs::create_dir(&dump)?;
    run(
        Command::new("debugfs")
            .args(["-R", &format!("rdump /dir {}", dump.display())])
            .arg(&raw),
        TOOL_LIMIT,
    )?
    .ok()?;
    let bad: Vec<u64> = (0..files)
        .filter(|i| {
            let path = dump.join("dir").join(format!("f{i}"));
            !std::fs::read(&path).is_ok_and(|got| got == file_contents(token, *i))
        })
        .collect();
    ensure!(
        bad.is_empty() && fsck.success(),
        "{} of {files} files the guest wrote read back wrong or missing (first: {:?}); \
         host e2fsck {}: {fsck}",
        bad.len(),
        &bad[..bad.len().min(10)],
        if fsck.success() { "clean" } else { "NOT clean" }
    );
    std::fs::remove_file(&raw)?;
    Ok(check.to_string())
}
