//! `bootd image import`: probe the input's format from its bytes, store it as
//! a sparse raw golden image (converting through `qemu-img` when it is not
//! raw), read-only, with its SHA-256, as the next version of its name.

use crate::datadir::DataDir;
use crate::progress::Progress;
use crate::store::{Image, NewImage, Store, StoreError};
use anyhow::{bail, Context, Result};
use imagestore::format::{self, ImageFormat, PROBE_LEN};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CHUNK: usize = 1 << 20;

/// Removes a half-written file unless the import got through.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub fn import(dd: &DataDir, store: &mut dyn Store, name: &str, input: &Path) -> Result<Image> {
    crate::names::check_image_name("image", name)?;
    let mut src = File::open(input).with_context(|| format!("{}: cannot open", input.display()))?;
    let kind = src.metadata()?.file_type();
    {
        use std::os::unix::fs::FileTypeExt;
        if !kind.is_file() && !kind.is_block_device() {
            bail!("{}: not a regular file or block device", input.display());
        }
    }
    let mut head = Vec::with_capacity(PROBE_LEN);
    (&mut src)
        .take(PROBE_LEN as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: cannot read", input.display()))?;
    if head.is_empty() {
        bail!("{}: is empty", input.display());
    }
    let fmt =
        format::probe(&head).with_context(|| format!("{}: not a usable image", input.display()))?;
    if let ImageFormat::Qcow2(h) = &fmt {
        if h.encrypted {
            bail!(
                "{}: encrypted qcow2 images are not supported",
                input.display()
            );
        }
        // A path in an image header is untrusted: never follow it.
        if let Some(b) = &h.backing_file {
            bail!(
                "{}: qcow2 with backing file {b:?}; flatten it first \
                 (qemu-img convert -O qcow2 IN OUT) and import the result",
                input.display()
            );
        }
    }

    let tmp = TempFile(Some(
        dd.images()
            .join(format!(".import-{name}-{}.tmp", std::process::id())),
    ));
    let _ = std::fs::remove_file(tmp.path());
    let (bytes, sha256) = match fmt {
        ImageFormat::Raw => copy_raw(&mut src, tmp.path(), input)?,
        other => {
            drop(src);
            convert(input, other.qemu_name(), tmp.path())?;
            hash_file(tmp.path())?
        }
    };
    register(dd, store, name, tmp.path(), bytes, sha256)
}

/// Stores `file` (a finished raw image on the data directory's file system,
/// `bytes` long with SHA-256 `sha256`) as the next version of image `name`:
/// read-only, hard-linked to its versioned name, registered. `file` itself
/// stays where it is; the caller removes it. Every way an image enters the
/// store (import, build, capture) ends here.
pub fn register(
    dd: &DataDir,
    store: &mut dyn Store,
    name: &str,
    file: &Path,
    bytes: u64,
    sha256: String,
) -> Result<Image> {
    crate::names::check_image_name("image", name)?;
    // Read-only, and the owner's alone like the rest of the data directory.
    let mut perms = std::fs::metadata(file)
        .with_context(|| format!("{}", file.display()))?
        .permissions();
    perms.set_mode(0o400);
    std::fs::set_permissions(file, perms)?;

    // The hard link claims the version: it fails if another import (or a
    // crashed one) already took that file name.
    let mut version = store.max_image_version(name)? + 1;
    let path = loop {
        let path = dd.image_file(name, version);
        match std::fs::hard_link(file, &path) {
            Ok(()) => break path,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => version += 1,
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        }
    };
    let added = store.add_image(&NewImage {
        name: name.to_string(),
        version,
        path: path.clone(),
        bytes,
        sha256,
    });
    match added {
        Ok(img) => Ok(img),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(match e {
                StoreError::Duplicate { .. } => anyhow::anyhow!(
                    "image {name}: another import took version {version} at the same time; try again"
                ),
                other => other.into(),
            })
        }
    }
}

/// Copies a raw image, leaving all-zero chunks as holes, padded to whole
/// 512-byte sectors. Returns the stored size and its SHA-256.
fn copy_raw(src: &mut File, dst: &Path, input: &Path) -> Result<(u64, String)> {
    let at = |e: std::io::Error| anyhow::Error::new(e).context(format!("{}", input.display()));
    // Seeking gives the size of files and block devices alike.
    let len = src.seek(SeekFrom::End(0)).map_err(at)?;
    src.seek(SeekFrom::Start(0)).map_err(at)?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .with_context(|| format!("{}", dst.display()))?;
    let bar = Progress::bytes(len, "importing");
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = read_full(src, &mut buf).map_err(at)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hash.update(chunk);
        if chunk.iter().any(|&b| b != 0) {
            out.write_all_at(chunk, off)
                .with_context(|| format!("{}", dst.display()))?;
        }
        off += n as u64;
        bar.set(off);
    }
    let padded = off.div_ceil(512) * 512;
    hash.update(vec![0u8; (padded - off) as usize]);
    out.set_len(padded)?;
    out.sync_all()?;
    bar.finish();
    Ok((padded, hex::encode(hash.finalize())))
}

fn read_full(src: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// `qemu-img convert` to raw; the input format is the probed one, so
/// qemu-img never guesses. With a terminal its progress drives our bar.
fn convert(input: &Path, qemu_fmt: &str, dst: &Path) -> Result<()> {
    let bar = Progress::percent("converting");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", qemu_fmt, "-O", "raw"]);
    if bar.visible() {
        cmd.arg("-p");
    }
    cmd.arg(input).arg(dst);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "{}: is {qemu_fmt}; converting it needs qemu-img, which is not installed \
             (Debian: apt-get install qemu-utils)",
            input.display()
        ),
        Err(e) => return Err(e).context("running qemu-img"),
    };
    // Progress arrives as "(12.34/100%)\r" on stdout.
    if let Some(mut out) = child.stdout.take() {
        let mut pending = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if let Some(p) = parse_percent(&String::from_utf8_lossy(&line)) {
                    bar.set(p);
                }
            }
        }
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().context("running qemu-img")?;
    bar.finish();
    if !status.success() {
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!(
            "{}: qemu-img convert from {qemu_fmt} failed ({status}): {first}",
            input.display()
        );
    }
    let len = std::fs::metadata(dst)?.len();
    if len == 0 || len % 512 != 0 {
        bail!(
            "{}: converted image has {len} bytes, not a whole number of 512-byte sectors",
            input.display()
        );
    }
    Ok(())
}

fn parse_percent(line: &str) -> Option<u64> {
    let inner = line.trim().strip_prefix('(')?;
    let (num, _) = inner.split_once('/')?;
    num.trim().parse::<f64>().ok().map(|p| p as u64)
}

/// Checks a stored golden image against the SHA-256 taken at import, before
/// serve first hands it to any node: a file changed on disk (by accident, or
/// by someone with access to the data directory) must not boot a fleet.
pub fn verify_golden(path: &Path, expected: &str) -> Result<()> {
    let (_, got) = hash_file_quiet(path, None)?;
    if !got.eq_ignore_ascii_case(expected) {
        anyhow::bail!(
            "{}: SHA-256 {got} differs from the {expected} recorded at import;              the golden image was changed on disk",
            path.display()
        );
    }
    Ok(())
}

/// SHA-256 of a whole file, skipping nothing (holes hash as zeros).
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    let bar = Progress::bytes(len, "checksum");
    let r = hash_file_quiet(path, Some(&bar));
    bar.finish();
    r
}

fn hash_file_quiet(path: &Path, bar: Option<&Progress>) -> Result<(u64, String)> {
    let mut f = File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        off += n as u64;
        if let Some(b) = bar {
            b.set(off);
        }
    }
    Ok((off, hex::encode(hash.finalize())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn qemu_progress_lines() {
        assert_eq!(super::parse_percent("    (45.50/100%)"), Some(45));
        assert_eq!(super::parse_percent("(100.00/100%)"), Some(100));
        assert_eq!(super::parse_percent("garbage"), None);
    }
}
