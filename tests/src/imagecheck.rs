//! Structural checks of a disk made by `bootd image build`, read from the raw file with
//! the host's tools (no loop devices, no boot): the MBR and its two partitions, GRUB's
//! boot.img and core.img in the gap before partition 1, GRUB's EFI loader on the ESP,
//! and files of the ext4 root (debugfs), the initramfs's contents included.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::process::run;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// The layout build.sh writes: ESP at 1 MiB (64 MiB), root from 65 MiB to the end.
pub const ESP_START: u64 = MIB;
pub const ROOT_START: u64 = 65 * MIB;
const TOOL_LIMIT: Duration = Duration::from_secs(120);

/// Programs these checks run, with their Debian packages.
pub const TOOLS: &[(&str, &str)] = &[
    ("debugfs", "e2fsprogs"),
    ("mcopy", "mtools"),
    ("dd", "coreutils"),
    ("gzip", "gzip"),
    ("zstd", "zstd"),
];

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

/// The MBR's partition table and GRUB's BIOS loader: boot.img in the first 440 bytes
/// pointing at sector 1, core.img's first sector there with a blocklist for the rest,
/// all of it before partition 1.
pub fn check_mbr_and_grub_core(disk: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = vec![0u8; ESP_START as usize];
    std::fs::File::open(disk)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("reading the first MiB of {}", disk.display()))?;
    ensure!(head[510..512] == [0x55, 0xaa], "no MBR signature");
    let entry = |i: usize| &head[446 + 16 * i..462 + 16 * i];
    let (esp, root) = (entry(0), entry(1));
    ensure!(
        esp[4] == 0xef,
        "partition 1 type {:#x}, not 0xef (ESP)",
        esp[4]
    );
    ensure!(
        u64::from(u32_at(esp, 8)) * SECTOR == ESP_START,
        "ESP starts at sector {}",
        u32_at(esp, 8)
    );
    ensure!(root[4] == 0x83, "partition 2 type {:#x}, not 0x83", root[4]);
    ensure!(root[0] == 0x80, "partition 2 is not marked bootable");
    ensure!(
        u64::from(u32_at(root, 8)) * SECTOR == ROOT_START,
        "root starts at sector {}",
        u32_at(root, 8)
    );
    ensure!(
        entry(2).iter().chain(entry(3)).all(|b| *b == 0),
        "partitions 3/4 are not empty"
    );
    // boot.img: its messages, and GRUB_BOOT_MACHINE_KERNEL_SECTOR (0x5c) = 1.
    ensure!(
        head[..440].windows(5).any(|w| w == b"GRUB "),
        "no GRUB boot.img in the MBR"
    );
    ensure!(
        u64_at(&head, 0x5c) == 1,
        "boot.img loads core.img from sector {}, not 1",
        u64_at(&head, 0x5c)
    );
    // diskboot.img (core.img's first sector) ends with its blocklist: start sector (u64),
    // sector count (u16), load segment (u16, 0x820).
    let s1 = &head[SECTOR as usize..2 * SECTOR as usize];
    let (start, len, seg) = (u64_at(s1, 500), u16_at(s1, 508), u16_at(s1, 510));
    ensure!(
        start == 2 && seg == 0x820 && len > 0,
        "no core.img blocklist in sector 1 (start {start}, len {len}, segment {seg:#x})"
    );
    let end = (2 + u64::from(len)) * SECTOR;
    ensure!(
        end <= ESP_START,
        "core.img ({len} sectors) overlaps partition 1"
    );
    ensure!(
        head[2 * SECTOR as usize..end as usize]
            .iter()
            .any(|b| *b != 0),
        "core.img's sectors are empty"
    );
    Ok(())
}

/// `EFI/BOOT/BOOTX64.EFI` on the ESP, an x86-64 PE image.
pub fn check_esp(disk: &Path, work: &Path) -> Result<()> {
    let out = work.join("BOOTX64.EFI");
    run(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{ESP_START}", disk.display()))
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&out),
        TOOL_LIMIT,
    )?
    .ok()
    .context("EFI/BOOT/BOOTX64.EFI on the ESP")?;
    let pe = std::fs::read(&out)?;
    ensure!(
        pe.len() > 0x100 && pe.starts_with(b"MZ"),
        "BOOTX64.EFI is not a PE image"
    );
    let at = u32_at(&pe, 0x3c) as usize;
    ensure!(
        pe.get(at..at + 6) == Some(&[b'P', b'E', 0, 0, 0x64, 0x86][..]),
        "BOOTX64.EFI is not an x86-64 PE image"
    );
    Ok(())
}

/// The root partition copied out (sparse) for debugfs, which reads whole devices.
pub struct RootFs {
    image: PathBuf,
}

impl RootFs {
    pub fn extract(disk: &Path, work: &Path) -> Result<Self> {
        let image = work.join("root.img");
        run(
            Command::new("dd")
                .arg(format!("if={}", disk.display()))
                .arg(format!("of={}", image.display()))
                .arg("bs=1M")
                .arg(format!("skip={}", ROOT_START / MIB))
                .arg("conv=sparse")
                .arg("status=none"),
            TOOL_LIMIT,
        )?
        .ok()?;
        Ok(Self { image })
    }

    /// One debugfs request: (stdout, stderr).
    pub fn debugfs(&self, request: &str) -> Result<(String, String)> {
        let out = run(
            Command::new("debugfs")
                .arg("-R")
                .arg(request)
                .arg(&self.image),
            TOOL_LIMIT,
        )?
        .ok()?;
        Ok((out.stdout, out.stderr))
    }

    /// A file's contents; an error if it is not there.
    pub fn read(&self, path: &str, work: &Path) -> Result<Vec<u8>> {
        let out = work.join("dumped");
        let _ = std::fs::remove_file(&out);
        let (_, err) = self.debugfs(&format!("dump {path} {}", out.display()))?;
        std::fs::read(&out).with_context(|| format!("{path} in the root file system: {err}"))
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        let (out, err) = self.debugfs(&format!("stat {path}"))?;
        if err.contains("File not found") {
            return Ok(false);
        }
        ensure!(out.contains("Inode:"), "debugfs stat {path}: {out}{err}");
        Ok(true)
    }

    /// Names in a directory.
    pub fn ls(&self, dir: &str) -> Result<Vec<String>> {
        let (out, err) = self.debugfs(&format!("ls -p {dir}"))?;
        ensure!(!err.contains("File not found"), "{dir}: {err}");
        // `ls -p`: /inode/mode/uid/gid/name/size/
        Ok(out
            .lines()
            .filter_map(|l| l.split('/').nth(5))
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .map(str::to_string)
            .collect())
    }
}

/// The files of an initramfs as initramfs-tools writes it: uncompressed cpio archives
/// (early microcode) followed by one compressed one. (name, contents) per entry.
pub fn initramfs_files(data: &[u8], work: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut rest = data;
    loop {
        let pad = rest.iter().take_while(|b| **b == 0).count();
        rest = &rest[pad..];
        if rest.is_empty() {
            return Ok(files);
        }
        if rest.starts_with(b"07070") {
            let used = cpio(rest, &mut files)?;
            rest = &rest[used..];
            continue;
        }
        let tool = match rest {
            [0x1f, 0x8b, ..] => "gzip",
            [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
            _ => bail!(
                "initramfs: unknown data at byte {}",
                data.len() - rest.len()
            ),
        };
        let packed = work.join("initramfs.part");
        std::fs::write(&packed, rest)?;
        let out = Command::new(tool)
            .arg("-dc")
            .arg(&packed)
            .output()
            .with_context(|| format!("running {tool}"))?;
        ensure!(out.status.success(), "{tool} -dc failed on the initramfs");
        cpio(&out.stdout, &mut files)?;
        return Ok(files);
    }
}

/// Reads one newc cpio archive up to its trailer; returns the bytes it took.
fn cpio(b: &[u8], files: &mut Vec<(String, Vec<u8>)>) -> Result<usize> {
    let align = |n: usize| (n + 3) & !3;
    let mut off = 0;
    loop {
        let h = b.get(off..off + 110).context("cpio: truncated header")?;
        ensure!(h.starts_with(b"07070"), "cpio: bad magic at {off}");
        let field = |i: usize| -> Result<usize> {
            let hex = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])?;
            Ok(usize::from_str_radix(hex, 16)?)
        };
        let (size, namesize) = (field(6)?, field(11)?);
        ensure!(namesize > 0, "cpio: empty name at {off}");
        let name = b
            .get(off + 110..off + 110 + namesize - 1)
            .context("cpio: truncated name")?;
        let start = align(off + 110 + namesize);
        let body = b.get(start..start + size).context("cpio: truncated file")?;
        off = align(start + size);
        if name == b"TRAILER!!!" {
            return Ok(off.min(b.len()));
        }
        let name = String::from_utf8_lossy(name);
        files.push((name.trim_start_matches("./").to_string(), body.to_vec()));
    }
}
