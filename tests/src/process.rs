//! Running client programs with a time limit and their output captured.

use std::fmt;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A finished program: how it ended and what it printed.
#[derive(Debug)]
pub struct Finished {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Errors (with the whole output) unless the program exited 0.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("command failed: {self}")
        }
    }

    /// Errors (with the whole output) if the program exited 0.
    pub fn failed(self) -> Result<Self> {
        if self.success() {
            bail!("command succeeded but should have failed: {self}")
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ({}, {:.1}s)\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.command,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// How a command line reads in logs.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, killing it after `limit`. Stdin is closed. A program that
/// outlives the limit is an error that carries what it printed so far.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Finished> {
    let command = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning `{command}`"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_until(&mut child, start + limit)?;
    let (stdout, stderr) = (collect(out), collect(err));
    let elapsed = start.elapsed();
    match status {
        Some(status) => Ok(Finished {
            command,
            status,
            stdout,
            stderr,
            elapsed,
        }),
        None => bail!(
            "`{command}` did not finish within {}s and was killed\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}--- end ---",
            limit.as_secs()
        ),
    }
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
pub fn wait_for(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` until `deadline`; past it, kills the child and returns `None`.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    let status = wait_for(child, deadline)?;
    if status.is_none() {
        // Exiting between the two calls is fine; both errors mean "already gone".
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(status)
}

/// Sends SIGTERM to `child` (a polite stop that lets it flush).
pub fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (Child still owns
        // it), so the pid cannot have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
pub fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<Receiver<String>> {
    let mut pipe = pipe?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the capture; what was read so far is still useful.
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    Some(rx)
}

/// The captured output once the child is gone. Bounded: a grandchild that inherited
/// the pipe could keep it open forever.
pub fn collect(rx: Option<Receiver<String>>) -> String {
    rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok())
        .unwrap_or_default()
}
