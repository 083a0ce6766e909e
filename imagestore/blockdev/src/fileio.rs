//! Positional file I/O shared by the block devices (raw files here, qcow2
//! overlays in the image store): `preadv2`/`pwritev2` with their flags,
//! EINTR retried, short transfers continued.

use bytes::BytesMut;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A byte offset as the kernel takes it.
pub fn off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// What a read that reaches the end of the file means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastEnd {
    /// The file shrank under the device: an error.
    Error,
    /// A sparse tail that reads as zeros (an image file may end before a
    /// cluster it reserved).
    Zeros,
}

/// Reads at `base + buf.len()` into `buf`'s spare capacity until it holds
/// `want` bytes. With `nowait` (`RWF_NOWAIT`) it returns early, short, where
/// the kernel would have to wait for the disk; `Unsupported`-kind errors mean
/// the file refuses `RWF_NOWAIT` itself.
pub fn read_into(
    file: &File,
    buf: &mut BytesMut,
    base: u64,
    want: usize,
    nowait: bool,
    past_end: PastEnd,
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
        // outlives the call; the descriptor stays open because `file` is borrowed.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        match n {
            n if n > 0 => {
                // Positive and at most iov_len, so the cast is lossless.
                let n = n as usize;
                // SAFETY: the kernel initialised the first `n` bytes of the
                // spare capacity, and `n <= spare.len()`.
                unsafe { buf.set_len(buf.len() + n) };
            }
            0 => match past_end {
                PastEnd::Zeros => buf.resize(want, 0),
                PastEnd::Error => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "image file shrank under the device",
                    ))
                }
            },
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

/// Writes all of `data` at `offset` with `pwritev2` `flags`.
pub fn write_all(
    file: &File,
    mut data: &[u8],
    mut offset: u64,
    flags: libc::c_int,
) -> io::Result<()> {
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

/// The kernel or filesystem does not support the operation or flag.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// Writes durably: `RWF_DSYNC` per write, or write + fdatasync on kernels
/// without it.
pub fn write_durable(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    match write_all(file, data, offset, libc::RWF_DSYNC) {
        Err(e) if unsupported(&e) => {
            write_all(file, data, offset, 0)?;
            file.sync_data()
        }
        r => r,
    }
}
