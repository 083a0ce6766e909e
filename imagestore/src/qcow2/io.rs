//! Positional syscalls on the overlay file. Everything here may sleep except
//! [`read_nowait`], so the engine runs it on tokio's blocking pool.

use bytes::BytesMut;
use iscsi_target::block::BlockError;
use iscsi_target::fileio::{off_t, read_into, write_all, write_durable, PastEnd};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

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

/// Continues a read started by [`read_nowait`].
pub fn read_rest(file: &File, buf: &mut BytesMut, offset: u64, len: usize) -> io::Result<()> {
    read_into(file, buf, offset, len, false, PastEnd::Zeros)
}

/// Reads from the page cache only; the result may be short.
pub fn read_nowait(file: &File, buf: &mut BytesMut, offset: u64, len: usize) -> io::Result<()> {
    read_into(file, buf, offset, len, true, PastEnd::Zeros)
}

/// Writes all of `data` at `offset`; `dsync` makes it durable (RWF_DSYNC).
pub fn write_at(file: &File, data: &[u8], offset: u64, dsync: bool) -> io::Result<()> {
    if dsync {
        write_durable(file, data, offset)
    } else {
        write_all(file, data, offset, 0)
    }
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
