//! The file lock that guards an overlay beside its registry ownership: an
//! OFD (open file description) write lock, `fcntl(F_OFD_SETLK)`, on the
//! whole overlay. Unlike `flock`, it reaches NFS servers as a real lock
//! (NFSv4 byte-range locking), and unlike classic POSIX locks it belongs to
//! the descriptor, not the process, so dropping another descriptor of the
//! same file does not let it go.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("overlay {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("overlay {path} is locked by another server (or process)")]
    Held { path: String },
    #[error("overlay {path}: not locked, the ownership lease has lapsed (self-fenced)")]
    Fenced { path: String },
    #[error("overlay lock: {0}")]
    Keeper(String),
    #[error("locking overlay {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
}

/// Takes the write lock on `path` without waiting; held until the returned
/// file is dropped.
pub fn lock(path: &Path) -> Result<File, FenceError> {
    let shown = path.display().to_string();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| FenceError::Open {
            path: shown.clone(),
            source,
        })?;
    // SAFETY: an all-zero flock is a valid value; the fields that matter
    // are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start 0, l_len 0: the whole file, however it grows; l_pid must be 0.
    // SAFETY: fcntl reads `fl`, which lives through the call, on a
    // descriptor `f` keeps open.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => FenceError::Held { path: shown },
            _ => FenceError::Lock {
                path: shown,
                source: e,
            },
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_even_within_one_process() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("n1.qcow2");
        std::fs::write(&p, b"disk")?;
        let first = lock(&p)?;
        assert!(matches!(lock(&p), Err(FenceError::Held { .. })));
        // Another descriptor of the file closing does not drop the lock
        // (a classic POSIX lock would be lost here).
        drop(File::open(&p)?);
        assert!(matches!(lock(&p), Err(FenceError::Held { .. })));
        drop(first);
        let _again = lock(&p)?;
        assert!(matches!(
            lock(&dir.path().join("missing")),
            Err(FenceError::Open { .. })
        ));
        Ok(())
    }
}
