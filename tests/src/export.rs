//! One disk file served as an iSCSI LUN on 127.0.0.1, by bootd or (to check the
//! harness itself) by tgt. Tests see the same interface either way.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use crate::bootd::BootdExport;
use crate::tgt::TgtExport;

/// Which program serves the exports (env `BOOTD_TEST_TARGET`: `bootd`, default, or `tgt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Bootd,
    Tgt,
}

impl Server {
    /// Reads `BOOTD_TEST_TARGET`. An unknown value panics: silently testing the wrong
    /// server would make every result meaningless.
    pub fn from_env() -> Self {
        match std::env::var("BOOTD_TEST_TARGET").as_deref() {
            Err(_) | Ok("") | Ok("bootd") => Server::Bootd,
            Ok("tgt") => Server::Tgt,
            Ok(other) => panic!("BOOTD_TEST_TARGET={other}: expected `bootd` or `tgt`"),
        }
    }
}

/// CHAP credentials the target demands from initiators.
#[derive(Clone, Debug)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

/// What to export and how.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub file: PathBuf,
    pub iqn: String,
    pub chap: Option<Chap>,
    pub read_only: bool,
    /// Serve the LUN as removable media (eject, load, prevent removal).
    pub removable: bool,
}

impl ExportOptions {
    pub fn new(file: impl Into<PathBuf>, iqn: &str) -> Self {
        Self {
            file: file.into(),
            iqn: iqn.to_string(),
            chap: None,
            read_only: false,
            removable: false,
        }
    }

    pub fn chap(mut self, user: &str, secret: &str) -> Self {
        self.chap = Some(Chap {
            user: user.to_string(),
            secret: secret.to_string(),
        });
        self
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn removable(mut self) -> Self {
        self.removable = true;
        self
    }
}

/// A running export. Dropping it stops the server; [`Export::shutdown`] also checks
/// that it stopped cleanly.
pub struct Export {
    inner: Inner,
}

enum Inner {
    Bootd(BootdExport),
    Tgt(TgtExport),
}

impl Export {
    /// Starts the server chosen by [`Server::from_env`] and waits until it accepts logins.
    pub fn start(opts: &ExportOptions) -> Result<Self> {
        if !opts.file.is_file() {
            bail!("export file {} does not exist", opts.file.display());
        }
        let inner = match Server::from_env() {
            Server::Bootd => Inner::Bootd(BootdExport::start(opts)?),
            Server::Tgt => Inner::Tgt(TgtExport::start(opts)?),
        };
        Ok(Self { inner })
    }

    pub fn server(&self) -> Server {
        match &self.inner {
            Inner::Bootd(_) => Server::Bootd,
            Inner::Tgt(_) => Server::Tgt,
        }
    }

    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::Bootd(b) => b.port(),
            Inner::Tgt(t) => t.port(),
        }
    }

    pub fn iqn(&self) -> &str {
        match &self.inner {
            Inner::Bootd(b) => b.iqn(),
            Inner::Tgt(t) => t.iqn(),
        }
    }

    /// The LUN that holds the file: 0 for bootd; 1 for tgt, whose LUN 0 is its controller.
    pub fn lun(&self) -> u32 {
        match &self.inner {
            Inner::Bootd(_) => 0,
            Inner::Tgt(_) => 1,
        }
    }

    /// `iscsi://127.0.0.1:PORT`, the portal for discovery.
    pub fn portal_url(&self) -> String {
        format!("iscsi://127.0.0.1:{}", self.port())
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`, as libiscsi and QEMU take it.
    pub fn url(&self) -> String {
        format!("{}/{}/{}", self.portal_url(), self.iqn(), self.lun())
    }

    /// [`Export::url`] with CHAP credentials (libiscsi's `user%secret@` form).
    pub fn url_with_chap(&self, user: &str, secret: &str) -> String {
        format!(
            "iscsi://{user}%{secret}@127.0.0.1:{}/{}/{}",
            self.port(),
            self.iqn(),
            self.lun()
        )
    }

    /// The iPXE `sanboot` line the server printed (bootd only).
    pub fn sanboot(&self) -> Option<&str> {
        match &self.inner {
            Inner::Bootd(b) => Some(b.sanboot()),
            Inner::Tgt(_) => None,
        }
    }

    /// Everything the server printed so far, for failure messages.
    pub fn log(&self) -> String {
        match &self.inner {
            Inner::Bootd(b) => b.log(),
            Inner::Tgt(t) => t.log(),
        }
    }

    /// Stops the server and fails unless it exits cleanly and in time.
    pub fn shutdown(self) -> Result<()> {
        match self.inner {
            Inner::Bootd(b) => b.shutdown(),
            Inner::Tgt(t) => t.shutdown(),
        }
    }
}

/// Output of a server process, shared with the threads that read its pipes.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<String>>);

impl Log {
    /// Spawns `cmd` with stdin closed and both outputs followed into a new
    /// log; stdout lines also arrive on the returned channel (ready lines).
    pub(crate) fn spawn(
        cmd: &mut std::process::Command,
    ) -> Result<(std::process::Child, Self, std::sync::mpsc::Receiver<String>)> {
        use anyhow::Context;
        use std::process::Stdio;
        let command = crate::process::describe(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning `{command}`"))?;
        let log = Self::default();
        let (tx, rx) = std::sync::mpsc::channel();
        log.follow("stdout", child.stdout.take(), Some(tx));
        log.follow("stderr", child.stderr.take(), None);
        Ok((child, log, rx))
    }

    pub(crate) fn push(&self, stream: &str, line: &str) {
        // A poisoned lock only means a reader thread panicked; the text is still fine.
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.push_str(stream);
        s.push_str(": ");
        s.push_str(line);
        s.push('\n');
    }

    pub(crate) fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Copies `pipe` line by line into the log (and to `tx`, while anyone listens).
    pub(crate) fn follow<R: std::io::Read + Send + 'static>(
        &self,
        stream: &'static str,
        pipe: Option<R>,
        tx: Option<std::sync::mpsc::Sender<String>>,
    ) {
        use std::io::BufRead;
        let Some(pipe) = pipe else { return };
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(pipe);
            let mut buf = Vec::new();
            // Bytes, not `lines()`: invalid UTF-8 must not stop the draining.
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                buf.clear();
                log.push(stream, &line);
                if let Some(tx) = &tx {
                    // The receiver goes away once the server is up; keep draining anyway
                    // so the server never blocks on a full pipe.
                    let _ = tx.send(line);
                }
            }
        });
    }
}
