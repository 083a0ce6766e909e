//! Disk space of the data directory: sizes on the command line, free
//! space, and the watermarks serve acts on before the disk is full.

use anyhow::{bail, Result};
use std::path::Path;

/// Parses `64M`, `1G`, `512K`, `2T` or plain bytes (binary multiples).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("{s:?}: unknown size suffix (use K, M, G or T)"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: not a size (e.g. 512M, 2G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("{s:?}: too large"))
}

/// Free and total bytes of the filesystem holding `path` (for an
/// unprivileged writer, as the overlays see it).
pub fn filesystem(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path with a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid C string and `st` is large enough for statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let st = unsafe { st.assume_init() };
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// Default for serve's `--reserve-free`: 1% of the filesystem, at most 256 MiB.
pub fn default_reserve(total: u64) -> u64 {
    (total / 100).min(256 << 20)
}

/// Default warning watermark: 10% of the filesystem, at most 10 GiB.
pub fn default_warn(total: u64) -> u64 {
    (total / 10).min(10 << 30)
}

/// Remembers whether free space is below the warning watermark, so serve
/// logs once per crossing, not every second.
#[derive(Debug, Default)]
pub struct Watermark {
    low: bool,
}

impl Watermark {
    /// Returns `Some(true)` when `free` just fell below `warn`,
    /// `Some(false)` when it just recovered, `None` otherwise.
    pub fn update(&mut self, free: u64, warn: u64) -> Option<bool> {
        let low = free < warn;
        if low == self.low {
            return None;
        }
        self.low = low;
        Some(low)
    }

    pub fn low(&self) -> bool {
        self.low
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() -> Result<()> {
        assert_eq!(parse_size("512")?, 512);
        assert_eq!(parse_size("64M")?, 64 << 20);
        assert_eq!(parse_size("2g")?, 2 << 30);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
        Ok(())
    }

    #[test]
    fn watermark_reports_crossings_once() {
        let mut w = Watermark::default();
        assert_eq!(w.update(100, 10), None);
        assert_eq!(w.update(5, 10), Some(true));
        assert_eq!(w.update(4, 10), None);
        assert!(w.low());
        assert_eq!(w.update(50, 10), Some(false));
    }

    #[test]
    fn filesystem_reports_free_space() -> Result<()> {
        let (free, total) = filesystem(Path::new("/"))?;
        assert!(total > 0 && free <= total);
        Ok(())
    }
}
