//! The fence keeper: a small child process of `serve` that holds the
//! overlays' file locks (`peers::fence`) and lets go of them by itself when
//! serve's ownership lease lapses.
//!
//! Why a process of its own: a lock belongs to an open file, and a frozen
//! process (SIGSTOP, a stalled VM, a hung NFS call) keeps its files open
//! and its locks held, so a survivor could never take its nodes. The
//! keeper is not frozen with it: it knows the lease's deadline (serve
//! sends it after every heartbeat, on the shared `CLOCK_BOOTTIME`) and
//! drops every lock when it passes. serve itself stops using the overlays
//! at the same deadline (`peers::lease::Fenced`). The keeper ends when
//! serve does (its stdin closes, or the parent-death signal), which also
//! drops the locks, as a dying serve always did.
//!
//! Protocol, one line each way: `until NS` (the lease's deadline) → `ok`;
//! `lock PATH` → `ok` | `held` | `fenced` (the deadline has passed) |
//! `err TEXT`; `unlock PATH` → `ok`.

use super::fence::{self, FenceError};
use super::lease::now_ns;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

/// Longest request line the keeper reads (a path plus a word).
const MAX_LINE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("starting the fence keeper: {0}")]
    Spawn(std::io::Error),
    #[error("the fence keeper is gone: {0}")]
    Gone(std::io::Error),
    #[error("the fence keeper answered {0:?}")]
    Answer(String),
    #[error("path {0:?} cannot be sent to the fence keeper")]
    Path(PathBuf),
}

struct Pipe {
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

/// serve's handle on its keeper.
pub struct Keeper {
    /// `None` once dropped (closing the keeper's stdin).
    pipe: Mutex<Option<Pipe>>,
    child: Mutex<Child>,
}

impl Keeper {
    /// Starts `bootd server fence-keeper` (this executable).
    pub fn spawn(data_dir: &Path) -> Result<Self, KeeperError> {
        let exe = std::env::current_exe().map_err(KeeperError::Spawn)?;
        let mut child = Command::new(exe)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["server", "fence-keeper"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(KeeperError::Spawn)?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(KeeperError::Spawn(std::io::Error::other("no pipes")));
        };
        Ok(Self {
            pipe: Mutex::new(Some(Pipe {
                to,
                from: BufReader::new(from),
            })),
            child: Mutex::new(child),
        })
    }

    fn ask(&self, verb: &str, arg: &[u8]) -> Result<String, KeeperError> {
        let mut guard = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let p = guard
            .as_mut()
            .ok_or_else(|| KeeperError::Gone(std::io::ErrorKind::BrokenPipe.into()))?;
        let mut line = Vec::with_capacity(verb.len() + arg.len() + 2);
        line.extend_from_slice(verb.as_bytes());
        line.push(b' ');
        line.extend_from_slice(arg);
        line.push(b'\n');
        p.to.write_all(&line).map_err(KeeperError::Gone)?;
        p.to.flush().map_err(KeeperError::Gone)?;
        let mut answer = String::new();
        let n = p.from.read_line(&mut answer).map_err(KeeperError::Gone)?;
        if n == 0 {
            return Err(KeeperError::Gone(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(answer.trim_end().to_string())
    }

    /// The lease now runs to `until_ns` (`CLOCK_BOOTTIME`).
    pub fn until(&self, until_ns: u64) -> Result<(), KeeperError> {
        match self.ask("until", until_ns.to_string().as_bytes())?.as_str() {
            "ok" => Ok(()),
            other => Err(KeeperError::Answer(other.into())),
        }
    }

    /// Takes the overlay's lock (without waiting).
    pub fn lock(&self, path: &Path) -> Result<(), FenceError> {
        let shown = path.display().to_string();
        let bytes = path.as_os_str().as_bytes();
        if bytes.contains(&b'\n') {
            return Err(FenceError::Keeper(
                KeeperError::Path(path.into()).to_string(),
            ));
        }
        let answer = self
            .ask("lock", bytes)
            .map_err(|e| FenceError::Keeper(e.to_string()))?;
        match answer.as_str() {
            "ok" => Ok(()),
            "held" => Err(FenceError::Held { path: shown }),
            "fenced" => Err(FenceError::Fenced { path: shown }),
            other => Err(FenceError::Keeper(format!(
                "{shown}: {}",
                other.strip_prefix("err ").unwrap_or(other)
            ))),
        }
    }

    /// Lets go of the overlay's lock (its overlay is closed).
    pub fn unlock(&self, path: &Path) {
        let bytes = path.as_os_str().as_bytes();
        if let Err(e) = self.ask("unlock", bytes) {
            tracing::warn!(path = %path.display(), "unlocking: {e}");
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Closing its stdin ends it; wait so no zombie stays behind.
        drop(self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take());
        let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).wait();
    }
}

/// The keeper's state: the locks it holds and the deadline.
struct State {
    locks: HashMap<PathBuf, std::fs::File>,
    until: u64,
}

impl State {
    fn lapsed(&self) -> bool {
        now_ns() >= self.until
    }

    /// Drops every lock once the deadline has passed.
    fn enforce(&mut self) {
        if self.lapsed() && !self.locks.is_empty() {
            eprintln!(
                "bootd fence keeper: ownership lease lapsed; releasing {} overlay lock(s)",
                self.locks.len()
            );
            self.locks.clear();
        }
    }

    /// One request line; the answer.
    fn handle(&mut self, line: &[u8]) -> String {
        self.enforce();
        let (verb, arg) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        match verb {
            b"until" => match std::str::from_utf8(arg).ok().and_then(|s| s.parse().ok()) {
                Some(ns) => {
                    self.until = ns;
                    "ok".into()
                }
                None => "err bad deadline".into(),
            },
            b"lock" if !arg.is_empty() => {
                let path = PathBuf::from(OsString::from_vec(arg.to_vec()));
                if self.locks.contains_key(&path) {
                    return "ok".into();
                }
                if self.lapsed() {
                    return "fenced".into();
                }
                match fence::lock(&path) {
                    Ok(f) => {
                        // And the `flock` the overlay engine takes when it
                        // opens a file itself (serve's overlays open without
                        // it): a CLI command or second serve opening the
                        // overlay for writing still finds it in use.
                        if !flock_exclusive(&f) {
                            return "held".into();
                        }
                        self.locks.insert(path, f);
                        "ok".into()
                    }
                    Err(FenceError::Held { .. }) => "held".into(),
                    Err(e) => format!("err {}", e.to_string().replace('\n', " ")),
                }
            }
            b"unlock" => {
                let path = PathBuf::from(OsString::from_vec(arg.to_vec()));
                self.locks.remove(&path);
                "ok".into()
            }
            _ => "err unknown request".into(),
        }
    }
}

fn flock_exclusive(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: plain syscall on a descriptor `f` keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// `bootd server fence-keeper`: serves requests on stdin until it closes.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: prctl and signal only change this process's own settings.
    unsafe {
        // Gone with serve even if serve is killed before closing our stdin.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // A Ctrl-C or SIGTERM to the group is for serve, which commits its
        // overlays before letting the locks go; the keeper ends after it.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    if std::os::unix::process::parent_id() == 1 {
        return Ok(());
    }
    let mut st = State {
        locks: HashMap::new(),
        until: 0,
    };
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let timeout_ms: libc::c_int = if st.locks.is_empty() || st.until == u64::MAX {
            -1
        } else {
            let left = st.until.saturating_sub(now_ns());
            // Rounded up: waking early only loops once more.
            left.div_ceil(1_000_000).min(60_000) as libc::c_int
        };
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd, which lives
        // through the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        st.enforce();
        if r == 0 {
            continue;
        }
        let n = stdin.read(&mut chunk)?;
        if n == 0 {
            // serve is gone: the locks go with us.
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let answer = st.handle(&line[..line.len() - 1]);
            stdout.write_all(answer.as_bytes())?;
            stdout.write_all(b"\n")?;
            stdout.flush()?;
        }
        if buf.len() > MAX_LINE {
            anyhow::bail!("fence keeper: request line longer than {MAX_LINE} bytes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_dropped_at_the_deadline_and_refused_after_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("n1.qcow2");
        std::fs::write(&p, b"disk")?;
        let arg = p.as_os_str().as_bytes();
        let req = |verb: &str| {
            let mut l = verb.as_bytes().to_vec();
            l.push(b' ');
            l.extend_from_slice(arg);
            l
        };
        let mut st = State {
            locks: HashMap::new(),
            until: 0,
        };
        assert_eq!(st.handle(&req("lock")), "fenced");
        let until = now_ns() + 300_000_000;
        assert_eq!(st.handle(format!("until {until}").as_bytes()), "ok");
        assert_eq!(st.handle(&req("lock")), "ok");
        assert!(matches!(fence::lock(&p), Err(FenceError::Held { .. })));
        assert!(!flock_exclusive(&std::fs::File::open(&p)?));
        std::thread::sleep(std::time::Duration::from_millis(350));
        st.enforce();
        assert!(st.locks.is_empty());
        assert!(flock_exclusive(&std::fs::File::open(&p)?));
        let _other = fence::lock(&p)?;
        assert_eq!(st.handle(&req("lock")), "fenced");
        for bad in [&b"until x"[..], b"", b"lock", b"frob /x", b"until"] {
            assert!(st.handle(bad).starts_with("err"), "{bad:?}");
        }
        Ok(())
    }
}
