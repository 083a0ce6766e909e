//! Positional syscalls on the overlay file. Everything here may sleep except
//! [`read_nowait`], so the engine runs it on tokio's blocking pool.

use blockdev::fileio::{off_t, read_into, write_all, write_durable, PastEnd};
use blockdev::BlockError;
use bytes::BytesMut;
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
    crash::point(file)?;
    if dsync {
        write_durable(file, data, offset)
    } else {
        write_all(file, data, offset, 0)
    }
}

/// Writes all of `data` at `offset` only if that needs no waiting
/// (`RWF_NOWAIT`); fails with `WouldBlock` (or "unsupported") otherwise, in
/// which case the caller writes it again, blocking.
pub fn write_nowait(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    crash::point(file)?;
    write_all(file, data, offset, libc::RWF_NOWAIT)
}

/// Deallocates a range, keeping the file size. Best effort: where the
/// filesystem cannot punch holes the space simply stays allocated (the
/// engine never relies on freed clusters reading as zeros).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    crash::point(file)?;
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

/// Makes the data written so far durable. A failure is final: the kernel
/// may have dropped the pages it could not write ("fsyncgate"), so a retry
/// that succeeds proves nothing.
pub fn sync(file: &File) -> io::Result<()> {
    crash::point(file)?;
    file.sync_data()
}

/// Reserves real disk blocks for `offset..offset + len` (growing the file
/// to cover it), so writes there cannot fail for want of space later.
/// Where the filesystem cannot reserve, the file is only grown.
pub fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    crash::point(file)?;
    let (at, n) = (off_t(offset)?, off_t(len)?);
    loop {
        // SAFETY: plain syscall on a descriptor kept open by the `file` borrow.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, at, n) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => {
                let end = offset.saturating_add(len);
                if file.metadata()?.len() < end {
                    file.set_len(end)?;
                }
                return Ok(());
            }
            _ => return Err(e),
        }
    }
}

/// Sets the file's length.
pub fn truncate(file: &File, len: u64) -> io::Result<()> {
    crash::point(file)?;
    file.set_len(len)
}

/// Free bytes for an unprivileged writer on the file's filesystem.
pub fn free_bytes(file: &File) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: fstatvfs fills the struct; the descriptor is open while `file` is borrowed.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
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

/// Crash points for tests: every write, sync and allocation of the files
/// registered together counts down, and once the count is spent they all
/// fail without touching the file, as if the process had died there.
#[cfg(not(test))]
mod crash {
    #[inline(always)]
    pub fn point(_: &std::fs::File) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub mod crash {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex};

    type Countdown = Arc<Mutex<Option<u64>>>;
    static ARMED: Mutex<Option<HashMap<u64, Countdown>>> = Mutex::new(None);

    /// Lets `n` operations on the files `inos` happen, then fails the rest.
    pub fn arm(inos: &[u64], n: u64) {
        let c: Countdown = Arc::new(Mutex::new(Some(n)));
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        let map = g.get_or_insert_with(HashMap::new);
        for &i in inos {
            map.insert(i, Arc::clone(&c));
        }
    }

    /// Forgets the files `inos`.
    pub fn disarm(inos: &[u64]) {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = g.as_mut() {
            for i in inos {
                map.remove(i);
            }
        }
    }

    pub fn point(file: &std::fs::File) -> std::io::Result<()> {
        let Ok(ino) = file.metadata().map(|m| m.ino()) else {
            return Ok(());
        };
        let c = {
            let g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_ref().and_then(|m| m.get(&ino)) {
                Some(c) => Arc::clone(c),
                None => return Ok(()),
            }
        };
        let mut left = c.lock().unwrap_or_else(|e| e.into_inner());
        match *left {
            Some(0) | None => {
                *left = None;
                Err(std::io::Error::other("crash point: process is dead"))
            }
            Some(n) => {
                *left = Some(n - 1);
                Ok(())
            }
        }
    }
}
