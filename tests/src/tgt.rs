//! tgt (Linux SCSI target framework, userspace) as a stand-in export server. It runs
//! the same tests as bootd so the harness itself can be checked against a known target.
//! Each export gets its own tgtd with its own control port and portal.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::export::{ExportOptions, Log};
use crate::process::{run, terminate, wait_for, wait_until};

const START_LIMIT: Duration = Duration::from_secs(20);
const STOP_LIMIT: Duration = Duration::from_secs(10);
const TGTADM_LIMIT: Duration = Duration::from_secs(10);
const TID: &str = "1";
/// tgt's LUN 0 is its own controller; the file goes on LUN 1.
const LUN: &str = "1";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TgtExport {
    child: Option<Child>,
    ctl: u32,
    port: u16,
    iqn: String,
    log: Log,
}

impl TgtExport {
    pub fn start(opts: &ExportOptions) -> Result<Self> {
        // Control ports name tgtd's unix socket; keep them apart per process and export
        // and clear of small numbers (0 is a system tgtd's). tgtd rejects values above
        // 32767.
        // A control port another live tgtd answers on is skipped: our tgtd would fail to
        // start and tgtadm would configure the other one.
        let ctl = (0..64)
            .map(|_| {
                10_000 + (std::process::id() % 300) * 64 + NEXT.fetch_add(1, Ordering::Relaxed) % 64
            })
            .find(|&ctl| !control_port_in_use(ctl))
            .context("no free tgtd control port")?;
        let port = free_port()?;
        let mut child = Command::new("tgtd")
            .args(["-f", "-C", &ctl.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning tgtd")?;
        let log = Log::default();
        log.follow("stdout", child.stdout.take(), None);
        log.follow("stderr", child.stderr.take(), None);
        let mut export = Self {
            child: Some(child),
            ctl,
            port,
            iqn: opts.iqn.clone(),
            log,
        };
        export.configure(opts).with_context(|| export.log())?;
        Ok(export)
    }

    fn configure(&mut self, opts: &ExportOptions) -> Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        while self.tgtadm(&["--mode", "target", "--op", "show"]).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                self.child = None;
                bail!("tgtd exited: {status}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "tgtd did not answer tgtadm within {}s",
                    START_LIMIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let file = opts.file.to_string_lossy();
        self.tgtadm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            TID,
            "--targetname",
            &opts.iqn,
        ])?;
        self.tgtadm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            TID,
            "--lun",
            LUN,
            "--backing-store",
            &file,
        ])?;
        for (wanted, param) in [
            (opts.read_only, "readonly=1"),
            (opts.removable, "removable=1"),
        ] {
            if wanted {
                self.tgtadm(&[
                    "--mode",
                    "logicalunit",
                    "--op",
                    "update",
                    "--tid",
                    TID,
                    "--lun",
                    LUN,
                    "--params",
                    param,
                ])?;
            }
        }
        self.tgtadm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            TID,
            "--initiator-address",
            "ALL",
        ])?;
        if let Some(chap) = &opts.chap {
            self.tgtadm(&[
                "--mode",
                "account",
                "--op",
                "new",
                "--user",
                &chap.user,
                "--password",
                &chap.secret,
            ])?;
            self.tgtadm(&[
                "--mode", "account", "--op", "bind", "--tid", TID, "--user", &chap.user,
            ])?;
        }
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if Instant::now() >= deadline {
                bail!("tgtd does not listen on 127.0.0.1:{}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn tgtadm(&self, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new("tgtadm");
        cmd.args(["-C", &self.ctl.to_string(), "--lld", "iscsi"])
            .args(args);
        run(&mut cmd, TGTADM_LIMIT)?.ok().map(drop)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn iqn(&self) -> &str {
        &self.iqn
    }

    pub fn log(&self) -> String {
        format!(
            "--- tgtd output (control port {}) ---\n{}--- end ---",
            self.ctl,
            self.log.text()
        )
    }

    /// Stops tgtd and fails unless it exits in time.
    pub fn shutdown(mut self) -> Result<()> {
        match self.stop()? {
            true => Ok(()),
            false => bail!("tgtd did not stop (killed)\n{}", self.log()),
        }
    }

    /// tgtd ignores SIGTERM while it has targets: delete them and ask it to exit
    /// (`sys delete`), then signal it, then kill it. True if it exited before the kill.
    fn stop(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        // Best effort: the waits below are the check.
        let _ = self.tgtadm(&[
            "--mode", "target", "--op", "delete", "--force", "--tid", TID,
        ]);
        let _ = self.tgtadm(&["--mode", "sys", "--op", "delete"]);
        let stopped = wait_for(&mut child, Instant::now() + STOP_LIMIT / 2)?.is_some() || {
            terminate(&child);
            wait_until(&mut child, Instant::now() + STOP_LIMIT / 2)?.is_some()
        };
        // tgtd leaves its control socket and lock file behind.
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.ctl));
        }
        Ok(stopped)
    }
}

impl Drop for TgtExport {
    fn drop(&mut self) {
        // Errors only mean it is already gone.
        let _ = self.stop();
    }
}

fn control_port_in_use(ctl: u32) -> bool {
    let mut cmd = Command::new("tgtadm");
    cmd.args(["-C", &ctl.to_string(), "--mode", "sys", "--op", "show"]);
    run(&mut cmd, TGTADM_LIMIT).is_ok_and(|out| out.success())
}

/// A port that was free a moment ago (tgtd cannot bind port 0 and report it).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}
