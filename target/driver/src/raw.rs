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
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A sparse tempfile of `size` bytes.
    fn image(size: u64) -> io::Result<tempfile::NamedTempFile> {
        let f = tempfile::NamedTempFile::new()?;
        f.as_file().set_len(size)?;
        Ok(f)
    }

    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    fn out_of_range<T: std::fmt::Debug>(r: Result<T, BlockError>) -> bool {
        matches!(r, Err(BlockError::OutOfRange { .. }))
    }

    #[tokio::test]
    async fn write_read_round_trip() -> TestResult {
        let img = image(1 << 20)?;
        let dev = RawFile::open(img.path(), false)?;
        let caps = dev.capabilities();
        assert_eq!((caps.block_size, caps.num_blocks), (512, 2048));
        assert!(caps.volatile_cache && caps.thin && !caps.read_only);

        let data = pattern(3 * 512, 1);
        dev.write(1024, data.clone(), false).await?;
        let back = dev.read(512, 5 * 512).await?;
        assert_eq!(&back[..512], &[0u8; 512][..]);
        assert_eq!(&back[512..2048], &data[..]);
        assert_eq!(&back[2048..], &[0u8; 512][..]);
        // The bytes really are in the file at that offset.
        let mut raw = vec![0u8; data.len()];
        img.as_file().read_exact_at(&mut raw, 1024)?;
        assert_eq!(raw, data);
        dev.flush().await?;
        Ok(())
    }

    #[tokio::test]
    async fn read_sees_outside_writes_both_paths() -> TestResult {
        let img = image(64 << 10)?;
        let data = pattern(8192, 9);
        img.as_file().write_all_at(&data, 4096)?;
        let dev = RawFile::open(img.path(), true)?;
        assert_eq!(dev.read(4096, 8192).await?, data);
        assert!(
            dev.nowait_reads.load(Ordering::Relaxed),
            "RWF_NOWAIT rejected"
        );
        dev.set_nowait_reads(false);
        assert_eq!(dev.read(4096, 8192).await?, data);
        Ok(())
    }

    #[tokio::test]
    async fn uncached_read_falls_back_to_blocking_thread() -> TestResult {
        let img = image(4 << 20)?;
        let data = pattern(4 << 20, 3);
        img.as_file().write_all_at(&data, 0)?;
        img.as_file().sync_all()?;
        // SAFETY: advisory syscall on an open descriptor; drops the clean
        // cached pages so the NOWAIT attempt finds nothing.
        let r = unsafe {
            libc::posix_fadvise(img.as_file().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
        };
        assert_eq!(r, 0);
        let dev = RawFile::open(img.path(), true)?;
        let mut buf = BytesMut::new();
        read_into(
            dev.file.as_ref(),
            &mut buf,
            1 << 20,
            65536,
            true,
            PastEnd::Error,
        )?;
        assert!(buf.len() < 65536, "page cache was not dropped");
        assert_eq!(
            dev.read(1 << 20, 65536).await?,
            data.slice(1 << 20..(1 << 20) + 65536)
        );
        assert_eq!(dev.read(0, 4 << 20).await?, data);
        Ok(())
    }

    #[tokio::test]
    async fn fua_write_is_in_the_file() -> TestResult {
        let img = image(1 << 20)?;
        let dev = RawFile::open_with(
            img.path(),
            RawOptions {
                read_only: false,
                block_size: 4096,
            },
        )?;
        assert_eq!(dev.capabilities().num_blocks, 256);
        let data = pattern(8192, 5);
        dev.write(4096, data.clone(), true).await?;
        let mut raw = vec![0u8; 8192];
        File::open(img.path())?.read_exact_at(&mut raw, 4096)?;
        assert_eq!(raw, data);
        assert_eq!(dev.read(4096, 8192).await?, data);
        Ok(())
    }

    #[tokio::test]
    async fn discard_reads_back_zeros_and_frees_space() -> TestResult {
        let img = image(1 << 20)?;
        let dev = RawFile::open(img.path(), false)?;
        dev.write(0, pattern(1 << 20, 7), false).await?;
        dev.flush().await?;
        dev.discard(64 << 10, 128 << 10).await?;
        let back = dev.read(0, 1 << 20).await?;
        assert!(back[64 << 10..192 << 10].iter().all(|&b| b == 0));
        assert_eq!(&back[..64 << 10], &pattern(1 << 20, 7)[..64 << 10]);
        assert_eq!(&back[192 << 10..], &pattern(1 << 20, 7)[192 << 10..]);
        assert_eq!(img.as_file().metadata()?.len(), 1 << 20, "size kept");
        let st = dev.block_status(0, 1 << 20).await?;
        assert_eq!(
            st,
            vec![
                Extent {
                    offset: 0,
                    len: 64 << 10,
                    state: Allocation::Mapped
                },
                Extent {
                    offset: 64 << 10,
                    len: 128 << 10,
                    state: Allocation::Deallocated
                },
                Extent {
                    offset: 192 << 10,
                    len: 832 << 10,
                    state: Allocation::Mapped
                },
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn write_zeroes_both_ways() -> TestResult {
        let img = image(1 << 20)?;
        let dev = RawFile::open(img.path(), false)?;
        let data = pattern(1 << 20, 11);
        dev.write(0, data.clone(), false).await?;
        dev.write_zeroes(0, 128 << 10, true).await?;
        dev.write_zeroes(512 << 10, 128 << 10, false).await?;
        let back = dev.read(0, 1 << 20).await?;
        for (i, (&b, &d)) in back.iter().zip(data.iter()).enumerate() {
            let zeroed = i < 128 << 10 || (512 << 10..640 << 10).contains(&i);
            assert_eq!(b, if zeroed { 0 } else { d }, "byte {i}");
        }
        // Unmap deallocates; plain zeroing may keep or drop blocks, but reads zeros either way.
        let st = dev.block_status(0, 128 << 10).await?;
        assert_eq!(st[0].state, Allocation::Deallocated);
        Ok(())
    }

    #[tokio::test]
    async fn zero_writing_fallback() -> TestResult {
        let img = image(3 << 20)?;
        img.as_file().write_all_at(&pattern(3 << 20, 2), 0)?;
        // Crosses chunk boundaries and ends mid-chunk.
        write_zeros(img.as_file(), 512, (2 << 20) + 1024)?;
        let mut back = vec![0u8; 3 << 20];
        img.as_file().read_exact_at(&mut back, 0)?;
        let want = pattern(3 << 20, 2);
        assert_eq!(&back[..512], &want[..512]);
        assert!(back[512..(2 << 20) + 1536].iter().all(|&b| b == 0));
        assert_eq!(&back[(2 << 20) + 1536..], &want[(2 << 20) + 1536..]);
        Ok(())
    }

    /// tmpfs lacks ZERO_RANGE (and, on current kernels, buffered RWF_NOWAIT),
    /// so this runs the fallbacks through the device.
    #[tokio::test]
    async fn works_on_tmpfs() -> TestResult {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return Err("no /dev/shm to test on".into());
        }
        let img = tempfile::NamedTempFile::new_in(shm)?;
        img.as_file().set_len(1 << 20)?;
        let data = pattern(1 << 20, 13);
        img.as_file().write_all_at(&data, 0)?;
        let dev = RawFile::open(img.path(), false)?;
        assert_eq!(dev.read(0, 1 << 20).await?, data);
        assert_eq!(dev.read(4096, 4096).await?, data.slice(4096..8192));
        dev.write_zeroes(0, 64 << 10, false).await?;
        dev.discard(128 << 10, 64 << 10).await?;
        let back = dev.read(0, 1 << 20).await?;
        for (i, (&b, &d)) in back.iter().zip(data.iter()).enumerate() {
            let zeroed = i < 64 << 10 || (128 << 10..192 << 10).contains(&i);
            assert_eq!(b, if zeroed { 0 } else { d }, "byte {i}");
        }
        let st = dev.block_status(128 << 10, 64 << 10).await?;
        assert_eq!(st[0].state, Allocation::Deallocated);
        Ok(())
    }

    #[tokio::test]
    async fn block_status_reports_holes() -> TestResult {
        let img = image(1 << 20)?;
        img.as_file().write_all_at(&[1u8; 8192], 16 << 10)?;
        img.as_file().write_all_at(&[2u8; 4096], 64 << 10)?;
        let dev = RawFile::open(img.path(), true)?;
        let all = dev.block_status(0, 1 << 20).await?;
        let ext = |offset: u64, len: u64, state| Extent { offset, len, state };
        use Allocation::{Deallocated as D, Mapped as M};
        assert_eq!(
            all,
            vec![
                ext(0, 16 << 10, D),
                ext(16 << 10, 8 << 10, M),
                ext(24 << 10, 40 << 10, D),
                ext(64 << 10, 4 << 10, M),
                ext(68 << 10, (1 << 20) - (68 << 10), D),
            ]
        );
        // From the middle of data, limited to a short length.
        let part = dev.block_status(20 << 10, 8 << 10).await?;
        assert_eq!(
            part,
            vec![ext(20 << 10, 4 << 10, M), ext(24 << 10, 4 << 10, D)]
        );
        // Inside a hole, ending before the next data.
        assert_eq!(dev.block_status(512, 1024).await?, vec![ext(512, 1024, D)]);
        // Fully allocated file: one mapped extent.
        let full = image(64 << 10)?;
        full.as_file().write_all_at(&[3u8; 64 << 10], 0)?;
        let dev = RawFile::open(full.path(), true)?;
        assert_eq!(
            dev.block_status(0, 64 << 10).await?,
            vec![ext(0, 64 << 10, M)]
        );
        Ok(())
    }

    #[tokio::test]
    async fn out_of_range_and_misaligned() -> TestResult {
        let img = image(64 << 10)?;
        let dev = RawFile::open(img.path(), false)?;
        assert!(out_of_range(dev.read(64 << 10, 512).await));
        assert!(out_of_range(dev.read(63 << 10, 2048).await));
        assert!(out_of_range(dev.read(u64::MAX - 511, 1024).await));
        assert!(out_of_range(dev.read(100, 512).await));
        assert!(out_of_range(dev.read(0, 100).await));
        assert!(out_of_range(
            dev.write(64 << 10, Bytes::from(vec![0u8; 512]), false)
                .await
        ));
        assert!(out_of_range(dev.discard(0, (64 << 10) + 512).await));
        assert!(out_of_range(
            dev.write_zeroes(u64::MAX - 511, 1024, false).await
        ));
        assert!(out_of_range(dev.block_status(u64::MAX - 511, 1024).await));
        // The last block is in range.
        assert_eq!(dev.read(63 << 10, 1024).await?.len(), 1024);
        Ok(())
    }

    #[tokio::test]
    async fn read_only_refuses_changes() -> TestResult {
        let img = image(64 << 10)?;
        img.as_file().write_all_at(&[4u8; 512], 0)?;
        let dev = RawFile::open(img.path(), true)?;
        assert!(dev.capabilities().read_only);
        let ro = |r: Result<(), BlockError>| matches!(r, Err(BlockError::ReadOnly));
        assert!(ro(dev.write(0, Bytes::from(vec![0u8; 512]), false).await));
        assert!(ro(dev.write(0, Bytes::from(vec![0u8; 512]), true).await));
        assert!(ro(dev.discard(0, 512).await));
        assert!(ro(dev.write_zeroes(0, 512, true).await));
        assert!(ro(dev.write_zeroes(0, 512, false).await));
        dev.flush().await?;
        assert_eq!(&dev.read(0, 512).await?[..], &[4u8; 512][..]);
        // A file the process may not write opens read-only only.
        let mut perms = img.as_file().metadata()?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(img.path(), perms)?;
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        if !is_root {
            assert!(RawFile::open(img.path(), false).is_err());
        }
        assert!(RawFile::open(img.path(), true).is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn open_refuses_bad_files() -> TestResult {
        let odd = image(1000)?;
        let err = RawFile::open(odd.path(), false).err().ok_or("opened")?;
        assert!(err.to_string().contains("not a multiple"), "{err}");
        let small = image(4096 + 512)?;
        assert!(RawFile::open(small.path(), false).is_ok());
        let bs4k = RawOptions {
            read_only: true,
            block_size: 4096,
        };
        assert!(RawFile::open_with(small.path(), bs4k).is_err());
        let bad_bs = RawOptions {
            read_only: true,
            block_size: 1000,
        };
        assert!(RawFile::open_with(small.path(), bad_bs).is_err());
        let empty = image(0)?;
        assert!(RawFile::open(empty.path(), true).is_err());
        let dir = tempfile::tempdir()?;
        let err = RawFile::open(dir.path(), true)
            .err()
            .ok_or("opened a directory")?;
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = RawFile::open(Path::new("/dev/null"), true)
            .err()
            .ok_or("opened /dev/null")?;
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let missing = dir.path().join("missing");
        let err = RawFile::open(&missing, true)
            .err()
            .ok_or("opened nothing")?;
        assert!(err.to_string().contains("missing"), "{err}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_tasks_at_once() -> TestResult {
        const TASKS: u64 = 64;
        const CHUNK: u64 = 16 << 10;
        let img = image(TASKS * CHUNK)?;
        let dev = Arc::new(RawFile::open(img.path(), false)?);
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let dev = Arc::clone(&dev);
            handles.push(tokio::spawn(async move {
                let off = t * CHUNK;
                for round in 0..8u8 {
                    let data = pattern(CHUNK as usize, round.wrapping_add(t as u8));
                    let fua = round % 4 == 0;
                    dev.write(off, data.clone(), fua)
                        .await
                        .map_err(|e| e.to_string())?;
                    let back = dev
                        .read(off, CHUNK as usize)
                        .await
                        .map_err(|e| e.to_string())?;
                    if back != data {
                        return Err(format!("task {t} round {round}: read mismatch"));
                    }
                    // Also read a neighbour's region: must not fail, content is racy.
                    let other = ((t + 1) % TASKS) * CHUNK;
                    dev.read(other, 4096).await.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        let mut all = vec![0u8; (TASKS * CHUNK) as usize];
        let mut f = File::open(img.path())?;
        std::io::Read::read_exact(&mut f, &mut all)?;
        for t in 0..TASKS {
            let at = (t * CHUNK) as usize;
            assert_eq!(
                &all[at..at + CHUNK as usize],
                &pattern(CHUNK as usize, 7u8.wrapping_add(t as u8))[..]
            );
        }
        Ok(())
    }

    /// Throughput of cached reads, with and without the inline RWF_NOWAIT
    /// attempt. Run with
    /// `cargo test --release -p iscsi-target raw::tests::bench -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: prints figures, takes ~10 s"]
    async fn bench_cached_reads() -> TestResult {
        const SIZE: u64 = 256 << 20;
        const TASKS: u64 = 32;
        let img = image(SIZE)?;
        let chunk = pattern(1 << 20, 1);
        for off in (0..SIZE).step_by(1 << 20) {
            img.as_file().write_all_at(&chunk, off)?;
        }
        let dev = Arc::new(RawFile::open(img.path(), true)?);
        dev.read(0, SIZE as usize).await?; // warm the page cache
        for (name, io) in [("4 KiB random", 4096u64), ("128 KiB sequential", 128 << 10)] {
            for nowait in [false, true] {
                dev.set_nowait_reads(nowait);
                let start = std::time::Instant::now();
                let run = std::time::Duration::from_secs(2);
                let mut handles = Vec::new();
                for t in 0..TASKS {
                    let dev = Arc::clone(&dev);
                    handles.push(tokio::spawn(async move {
                        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                        let blocks = SIZE / io;
                        let mut seq = t * blocks / TASKS;
                        let mut ops = 0u64;
                        while start.elapsed() < run {
                            let block = if io == 4096 {
                                // xorshift64: uniform enough for spreading reads.
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                x % blocks
                            } else {
                                seq = (seq + 1) % blocks;
                                seq
                            };
                            dev.read(block * io, io as usize).await?;
                            ops += 1;
                        }
                        Ok::<_, BlockError>(ops)
                    }));
                }
                let mut ops = 0;
                for h in handles {
                    ops += h.await??;
                }
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "{name:>18} QD{TASKS} nowait={nowait:<5}: {:>9.0} ops/s {:>7.0} MiB/s",
                    ops as f64 / secs,
                    (ops * io) as f64 / secs / f64::from(1u32 << 20)
                );
            }
        }
        Ok(())
    }
}
