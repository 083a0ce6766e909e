//! Positional syscalls on the overlay file. Everything here may sleep except
//! [`read_nowait`], so the engine runs it on tokio's blocking pool.

use bytes::BytesMut;
use iscsi_target::block::BlockError;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

fn off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// Maps errors the SCSI layer reports specially.
pub fn block_error(e: io::Error) -> BlockError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => BlockError::NoSpace,
        _ => BlockError::Io(e),
    }
}

/// Runs `f` on the file on tokio's blocking pool.
pub async fn blocking<T, F>(file: &Arc<File>, f: F) -> Result<T, BlockError>
where
    T: Send + 'static,
    F: FnOnce(&File) -> io::Result<T> + Send + 'static,
{
    let file = Arc::clone(file);
    match tokio::task::spawn_blocking(move || f(&file)).await {
        Ok(r) => r.map_err(block_error),
        Err(e) => Err(BlockError::Io(io::Error::other(e))),
    }
}

/// Appends bytes read at `base + buf.len()` until `buf` holds `want` bytes.
/// With `nowait` it stops early, short, where the kernel would wait for the
/// disk; `Err(Unsupported)` means RWF_NOWAIT itself is refused.
fn read_into(
    file: &File,
    buf: &mut BytesMut,
    base: u64,
    want: usize,
    nowait: bool,
) -> io::Result<()> {
    let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
    buf.reserve(want.saturating_sub(buf.len()));
    while buf.len() < want {
        let missing = want - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..missing];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        let at = off_t(base + buf.len() as u64)?;
        // SAFETY: `iov` describes `spare`, writable memory owned by `buf` that
        // outlives the call; the descriptor stays open while `file` is borrowed.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        match n {
            n if n > 0 => {
                // SAFETY: the kernel initialised the first `n` (<= spare.len())
                // bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n as usize) };
            }
            0 => {
                // Past the end of the file: a sparse tail reads as zeros (the
                // file may be shorter than a cluster we reserved and wrote).
                buf.resize(want, 0);
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock if nowait => return Ok(()),
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Continues a read started by [`read_nowait`].
pub fn read_rest(file: &File, buf: &mut BytesMut, offset: u64, len: usize) -> io::Result<()> {
    read_into(file, buf, offset, len, false)
}

/// Reads from the page cache only; the result may be short.
pub fn read_nowait(file: &File, buf: &mut BytesMut, offset: u64, len: usize) -> io::Result<()> {
    read_into(file, buf, offset, len, true)
}

/// Writes all of `data` at `offset`; `dsync` makes it durable (RWF_DSYNC).
pub fn write_at(file: &File, mut data: &[u8], mut offset: u64, dsync: bool) -> io::Result<()> {
    let flags = if dsync { libc::RWF_DSYNC } else { 0 };
    while !data.is_empty() {
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: `iov` describes `data`, which outlives the call; pwritev2
        // only reads through it. The descriptor is open while `file` is borrowed.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off_t(offset)?, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if dsync && matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
                // Old kernel: a plain write and a sync do the same.
                write_at(file, data, offset, false)?;
                return file.sync_data();
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        let n = n as usize; // positive and at most data.len()
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Deallocates a range, keeping the file size. Best effort: where the
/// filesystem cannot punch holes the space simply stays allocated (the
/// engine never relies on freed clusters reading as zeros).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (at, n) = (off_t(offset)?, off_t(len)?);
    loop {
        // SAFETY: plain syscall on a descriptor kept open by the `file` borrow.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, at, n) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV) => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Grows the file to at least `len` bytes (never shrinks it).
pub fn grow_to(file: &File, len: u64) -> io::Result<()> {
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Takes an advisory `flock` for the life of the descriptor: exclusive for a
/// writer, shared for readers, failing with `WouldBlock` instead of waiting.
/// Two writers on one overlay would corrupt it. (qemu's own locks are
/// `fcntl` byte-range locks, which do not interact with `flock`.)
pub fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: plain syscall on a descriptor kept open by the `file` borrow.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
