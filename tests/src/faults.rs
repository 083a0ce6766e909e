//! Real storage faults for the data-safety tests: a private mount namespace to put a
//! node's overlays directory on a small tmpfs (ENOSPC) or on a FUSE file system that
//! fails on demand (EIO), without touching the host's mounts.
//!
//! The namespace belongs to one thread: [`in_private_mounts`] runs a closure on a new
//! thread that has unshared its mount namespace (`unshare(CLONE_NEWNS)` affects only
//! the calling thread), and every process that thread spawns (bootd, qemu-img, the
//! FUSE server) inherits it. The mounts vanish with the namespace when the thread and
//! its children are gone, even if the test panics or is killed.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::bootd::workspace_root;
use crate::export::Log;
use crate::process::{describe, run, terminate, wait_until};

/// The Python that has fusepy: Debian's (a `python3` earlier on `PATH`, e.g. pyenv's,
/// may lack Debian's packages).
pub const PYTHON: &str = "/usr/bin/python3";
const MOUNT_LIMIT: Duration = Duration::from_secs(20);

/// Runs `f` on a thread with a private mount namespace (root only) and returns its
/// result; a panic inside becomes an error carrying the panic message.
pub fn in_private_mounts<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("private-mounts".into())
        .spawn(move || -> Result<T> {
            // SAFETY: unshare(2) with a flag constant; it only changes this thread's
            // namespaces (CLONE_NEWNS implies CLONE_FS, which a thread may unshare).
            if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
            }
            // Nothing mounted here propagates back to the host's namespace.
            mount(
                None,
                Path::new("/"),
                None,
                libc::MS_REC | libc::MS_PRIVATE,
                None,
            )
            .context("making / private in the new mount namespace")?;
            f()
        })
        .context("spawning the private-mounts thread")?;
    match thread.join() {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(anyhow!("panic in the private-mounts thread: {msg}"))
        }
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte")
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let opt = |s: Option<&str>| s.map(CString::new).transpose();
    let (source, fstype, data) = (opt(source)?, opt(fstype)?, opt(data)?);
    let target = cstr(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mount {} ({fstype:?}, {data:?}): {}",
            target.to_string_lossy(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The calling thread's mounts (its namespace, not the process's first thread's).
pub fn mounted_at(dir: &Path) -> Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
    let dir = dir.to_string_lossy();
    Ok(table
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(&*dir))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|fs| fs.split(' ').next())
        .map(str::to_string))
}

/// Free bytes (for an unprivileged user) on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let c = cstr(path)?;
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_bavail * st.f_frsize)
}

/// A mount in the calling thread's namespace, detached when dropped (so the directory
/// under it can be removed even while a process still holds files open on it).
#[derive(Debug)]
pub struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Ok(dir) = cstr(&self.0) {
            // SAFETY: umount2 with a valid C string; failure (already gone) is fine.
            unsafe {
                libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Bind-mounts `from` on `to` (in the calling thread's namespace): a second view of the
/// same directory, still reachable after something is mounted over `from`.
pub fn bind(from: &Path, to: &Path) -> Result<Mounted> {
    let source = from.to_str().context("a path that is not UTF-8")?;
    mount(Some(source), to, None, libc::MS_BIND, None)?;
    Ok(Mounted(to.to_path_buf()))
}

/// Mounts a tmpfs of `bytes` on `dir` (in the calling thread's namespace), moving what
/// `dir` held onto it.
pub fn tmpfs_over(dir: &Path, bytes: u64) -> Result<Mounted> {
    let keep = tempfile::tempdir()?;
    move_entries(dir, keep.path())?;
    mount(
        Some("bootd-e2e-tmpfs"),
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&format!("size={bytes},mode=0755")),
    )?;
    let mounted = Mounted(dir.to_path_buf());
    move_entries(keep.path(), dir)?;
    Ok(mounted)
}

/// Moves (copies then removes, as across file systems) every file of `from` into `to`.
pub fn move_entries(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let dest = to.join(path.file_name().context("entry without a name")?);
        std::fs::copy(&path, &dest)
            .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

/// `tests/faults/failfs.py` serving `backing` at `mountpoint`: a passthrough FUSE file
/// system whose fsyncs (and, if asked, writes) fail with EIO while the control file
/// exists. Unmounted (by ending the server) when dropped.
pub struct FailFs {
    child: Option<Child>,
    control: PathBuf,
    mountpoint: PathBuf,
    log: Log,
}

impl FailFs {
    /// Whether Debian's Python has fusepy (package `python3-fusepy`).
    pub fn available() -> bool {
        run(
            Command::new(PYTHON).args(["-c", "import fusepy"]),
            MOUNT_LIMIT,
        )
        .is_ok_and(|o| o.success())
    }

    /// Mounts it; `mountpoint` must be empty (move its files into `backing` first).
    /// Must run on the thread whose namespace should see the mount.
    pub fn mount(backing: &Path, mountpoint: &Path, control: &Path) -> Result<Self> {
        Self::mount_as(backing, mountpoint, control, false)
    }

    /// Mounts it as a machine that can die (`failfs.py --volatile`): writes reach
    /// `backing` only when their file is synced; [`FailFs::die`] drops the rest.
    pub fn mount_volatile(backing: &Path, mountpoint: &Path, control: &Path) -> Result<Self> {
        Self::mount_as(backing, mountpoint, control, true)
    }

    fn mount_as(backing: &Path, mountpoint: &Path, control: &Path, volatile: bool) -> Result<Self> {
        let script = workspace_root().join("tests/faults/failfs.py");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(&script);
        if volatile {
            cmd.arg("--volatile");
        }
        cmd.arg(backing).arg(mountpoint).arg(control);
        let command = describe(&cmd);
        let (child, log, rx) = Log::spawn(&mut cmd)?;
        let mut fs = Self {
            child: Some(child),
            control: control.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + MOUNT_LIMIT;
        let mut announced = false;
        loop {
            announced |= rx
                .recv_timeout(Duration::from_millis(50))
                .is_ok_and(|l| l.contains("failfs: mounted"));
            if announced && mounted_at(mountpoint)?.is_some_and(|t| t.starts_with("fuse")) {
                return Ok(fs);
            }
            if let Some(child) = fs.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "`{command}` exited with {status} before mounting\n{}",
                        fs.log()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "`{command}` did not mount within {}s\n{}",
                    MOUNT_LIMIT.as_secs(),
                    fs.log()
                );
            }
        }
    }

    /// From now on, the operations named (`fsync`, `write`) fail with EIO.
    pub fn fail(&self, ops: &[&str]) -> Result<()> {
        let mut f = std::fs::File::create(&self.control)?;
        writeln!(f, "{}", ops.join(" "))?;
        Ok(())
    }

    /// Clears the fault.
    pub fn heal(&self) -> Result<()> {
        match std::fs::remove_file(&self.control) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The machine dies (volatile mounts): every change not yet synced is dropped and
    /// the file system process exits; `backing` then holds what a survivor reading the
    /// same storage finds. Returns how many unsynced changes were dropped.
    pub fn die(&mut self) -> Result<usize> {
        let mut child = self.child.take().context("failfs is not running")?;
        // SAFETY: kill(2) on our own child's pid, which wait() has not reaped yet.
        if unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) } != 0 {
            bail!("kill -USR1 failfs: {}", std::io::Error::last_os_error());
        }
        if wait_until(&mut child, Instant::now() + MOUNT_LIMIT)?.is_none() {
            bail!("failfs did not die on SIGUSR1\n{}", self.log());
        }
        // Its last line may still be in the reader thread.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let text = self.log.text();
            if let Some(n) = text
                .lines()
                .find_map(|l| l.split_once("failfs: died, dropped ").map(|(_, r)| r))
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
            {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!("failfs exited without saying it died\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many operations failed so far (one `failfs: EIO` line each).
    pub fn injected(&self) -> usize {
        self.log.text().matches("failfs: EIO").count()
    }

    pub fn log(&self) -> String {
        format!("--- failfs ---\n{}--- end ---", self.log.text())
    }
}

impl Drop for FailFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // libfuse unmounts on SIGTERM; the namespace's end would drop the mount anyway.
            terminate(&child);
            let _ = wait_until(&mut child, Instant::now() + Duration::from_secs(5));
        }
        // SAFETY: umount2 with a valid C string; failure (already unmounted) is fine.
        if let Ok(dir) = cstr(&self.mountpoint) {
            unsafe {
                libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
