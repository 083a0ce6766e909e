//! A raw image file (or a block device node) served as a [`BlockDevice`].
//!
//! All I/O is positional on one shared descriptor, so any number of commands
//! run at once without a lock. Syscalls that may sleep run on tokio's blocking
//! pool; reads first try `preadv2(RWF_NOWAIT)` inline, which only copies out of
//! the page cache and returns `EAGAIN` instead of waiting for the disk, saving
//! the thread hand-off for cached data.

use crate::block::{Allocation, BlockDevice, BlockError, Capabilities, Extent};
use crate::fileio::{off_t, read_into, unsupported, write_all, write_durable, PastEnd};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Largest zero buffer written when the filesystem cannot zero a range itself.
const ZERO_CHUNK: u64 = 1 << 20;

/// Larger reads skip the inline attempt: copying them would hold a runtime
/// worker for too long (1 MiB is tens of microseconds).
const INLINE_READ_MAX: usize = 1 << 20;

/// [`BlockDevice::block_status`] stops after this many extents (the contract
/// allows covering less than asked; the caller asks again from the end).
const MAX_EXTENTS: usize = 1024;

/// How to open a [`RawFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOptions {
    pub read_only: bool,
    /// Logical block size: a power of two from 512 to 65536.
    pub block_size: u32,
}

impl Default for RawOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            block_size: 512,
        }
    }
}

/// A raw image file or block device; see the module docs.
pub struct RawFile {
    file: Arc<File>,
    caps: Capabilities,
    /// Block devices have no holes: everything is mapped, and discard is
    /// best effort rather than a promise to read back zeros.
    block_device: bool,
    /// Cleared when the kernel or filesystem rejects `RWF_NOWAIT`.
    nowait_reads: AtomicBool,
}

impl std::fmt::Debug for RawFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawFile")
            .field("fd", &self.file.as_raw_fd())
            .field("caps", &self.caps)
            .field("block_device", &self.block_device)
            .finish()
    }
}

impl RawFile {
    /// Opens `path` with 512-byte blocks. Blocking: call at startup or from a
    /// blocking thread.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        Self::open_with(
            path,
            RawOptions {
                read_only,
                ..RawOptions::default()
            },
        )
    }

    /// Opens `path` (a regular file or block device) as configured. Blocking.
    pub fn open_with(path: &Path, opts: RawOptions) -> Result<Self, BlockError> {
        let invalid = |what: String| -> BlockError {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {what}", path.display()),
            )
            .into()
        };
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(invalid(format!(
                "block size {bs} is not a power of two from 512 to 65536"
            )));
        }
        // Checked before opening: opening a FIFO would hang and a directory
        // cannot be served.
        let at = |e: io::Error| -> BlockError {
            io::Error::new(e.kind(), format!("{}: {e}", path.display())).into()
        };
        let kind = std::fs::metadata(path).map_err(at)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(invalid("not a regular file or block device".into()));
        }
        let mut file = open_noatime(path, opts.read_only).map_err(at)?;
        // Checked again on the open descriptor in case the path was swapped.
        let kind = file.metadata().map_err(at)?.file_type();
        let block_device = kind.is_block_device();
        if !kind.is_file() && !block_device {
            return Err(invalid("not a regular file or block device".into()));
        }
        // Seeking to the end gives the size of regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(at)?;
        if size == 0 {
            return Err(invalid("is empty".into()));
        }
        if !size.is_multiple_of(u64::from(bs)) {
            return Err(invalid(format!(
                "size {size} is not a multiple of the {bs}-byte block size"
            )));
        }
        Ok(Self {
            file: Arc::new(file),
            caps: Capabilities {
                block_size: bs,
                num_blocks: size / u64::from(bs),
                read_only: opts.read_only,
                // Regular files punch holes (or fall back to writing zeros);
                // a block device may not read discarded blocks back as zeros.
                thin: !block_device,
                volatile_cache: true,
            },
            block_device,
            nowait_reads: AtomicBool::new(true),
        })
    }

    /// Turns the inline `RWF_NOWAIT` read attempt on or off (for measuring it).
    pub fn set_nowait_reads(&self, on: bool) {
        self.nowait_reads.store(on, Ordering::Relaxed);
    }

    /// Checks alignment and bounds of a byte range.
    fn range(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let bs = u64::from(self.caps.block_size);
        let end = offset.checked_add(len);
        match end {
            Some(end)
                if offset.is_multiple_of(bs)
                    && len.is_multiple_of(bs)
                    && end <= self.caps.size_bytes() =>
            {
                Ok(())
            }
            _ => Err(BlockError::OutOfRange { offset, len }),
        }
    }

    fn writable(&self) -> Result<(), BlockError> {
        if self.caps.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Runs `f` on the file on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, BlockError>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> io::Result<T> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(r) => r.map_err(block_error),
            Err(e) => Err(BlockError::Io(io::Error::other(e))),
        }
    }

    /// Zeroes a range with fallocate `mode`, writing zeros if the filesystem
    /// cannot do it.
    async fn zero_range(&self, offset: u64, len: u64, mode: libc::c_int) -> Result<(), BlockError> {
        if len == 0 {
            return Ok(());
        }
        self.blocking(move |f| match fallocate(f, mode, offset, len) {
            Err(e) if fallocate_refused(&e) => write_zeros(f, offset, len),
            r => r,
        })
        .await
    }
}

/// Opens with `O_NOATIME` (reads then never dirty the inode), which only the
/// file's owner may use; anyone else gets a plain open.
fn open_noatime(path: &Path, read_only: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(!read_only);
    match opts.clone().custom_flags(libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => opts.open(path),
        r => r,
    }
}

/// Maps errors the SCSI layer reports specially.
fn block_error(e: io::Error) -> BlockError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => BlockError::NoSpace,
        _ => BlockError::Io(e),
    }
}

/// fallocate cannot do this here: unsupported by the filesystem or device,
/// or (EINVAL, the range being valid) not aligned to a block device's sectors.
fn fallocate_refused(e: &io::Error) -> bool {
    unsupported(e) || matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENODEV))
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (at, n) = (off_t(offset)?, off_t(len)?);
    loop {
        // SAFETY: plain syscall on a descriptor kept open by the `file` borrow.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, at, n) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes zeros over a range in bounded chunks.
fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK) as usize;
        write_all(file, &zeros[..n], offset + done, 0)?;
        done += n as u64;
    }
    Ok(())
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`; `None` when there is no such
/// position before the end of the file (`ENXIO`).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall on a descriptor kept open by the `file` borrow. It
    // moves the shared file position, which nothing here uses (all I/O is positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off_t(offset)?, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Allocation of `[offset, end)` in block-aligned extents: a block holding
/// any data is mapped.
fn map_extents(file: &File, offset: u64, end: u64, bs: u64) -> io::Result<Vec<Extent>> {
    let mut extents: Vec<Extent> = Vec::new();
    let push = |extents: &mut Vec<Extent>, from: u64, to: u64, state: Allocation| {
        if from >= to {
            return;
        }
        match extents.last_mut() {
            Some(last) if last.state == state && last.offset + last.len == from => {
                last.len = to - last.offset
            }
            _ => extents.push(Extent {
                offset: from,
                len: to - from,
                state,
            }),
        }
    };
    let mut pos = offset;
    while pos < end && extents.len() < MAX_EXTENTS {
        let data = match seek(file, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => end,
            // Filesystems without hole reporting: everything is data.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => pos,
            Err(e) => return Err(e),
        };
        let data = (data / bs * bs).clamp(pos, end);
        push(&mut extents, pos, data, Allocation::Deallocated);
        if data >= end {
            break;
        }
        // End of file counts as a hole, so this only fails on a racing truncate.
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end);
        let hole = hole.div_ceil(bs).saturating_mul(bs).clamp(data + bs, end);
        push(&mut extents, data, hole, Allocation::Mapped);
        pos = hole;
    }
    Ok(extents)
}

#[async_trait]
impl BlockDevice for RawFile {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        self.range(offset, len as u64)?;
        let mut buf = BytesMut::with_capacity(len);
        if len <= INLINE_READ_MAX && self.nowait_reads.load(Ordering::Relaxed) {
            // Never sleeps: RWF_NOWAIT only copies what is already cached.
            match read_into(&self.file, &mut buf, offset, len, true, PastEnd::Error) {
                Ok(()) if buf.len() == len => {
                    // Completing without ever waiting would let one busy
                    // connection hog its worker; this yields now and then.
                    tokio::task::consume_budget().await;
                    return Ok(buf.freeze());
                }
                Ok(()) => {}
                Err(e) if unsupported(&e) => self.nowait_reads.store(false, Ordering::Relaxed),
                Err(e) => return Err(block_error(e)),
            }
        }
        // The rest (usually all of it) may wait for the disk.
        self.blocking(move |f| {
            read_into(f, &mut buf, offset, len, false, PastEnd::Error)?;
            Ok(buf.freeze())
        })
        .await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.writable()?;
        self.range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.blocking(move |f| {
            if fua {
                write_durable(f, &data, offset)
            } else {
                write_all(f, &data, offset, 0)
            }
        })
        .await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        if self.caps.read_only {
            // Nothing written through this descriptor to make durable.
            return Ok(());
        }
        self.blocking(|f| f.sync_data()).await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable()?;
        self.range(offset, len)?;
        if self.block_device {
            // Not thin (see open_with): unmapping is only a hint here.
            if len == 0 {
                return Ok(());
            }
            return self
                .blocking(move |f| match fallocate(f, PUNCH, offset, len) {
                    Err(e) if fallocate_refused(&e) => Ok(()),
                    r => r,
                })
                .await;
        }
        self.zero_range(offset, len, PUNCH).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.writable()?;
        self.range(offset, len)?;
        let mode = if unmap {
            PUNCH
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        self.zero_range(offset, len, mode).await
    }

    /// Regular files report holes; a block device is mapped everywhere. An
    /// empty range gives no extents.
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError> {
        self.range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.block_device {
            return Ok(vec![Extent {
                offset,
                len,
                state: Allocation::Mapped,
            }]);
        }
        let bs = u64::from(self.caps.block_size);
        self.blocking(move |f| map_extents(f, offset, offset + len, bs))
            .await
    }
}

/// Deallocate, keeping the file size (the device must not shrink).
const PUNCH: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

#[cfg(test)]
mod tests;
