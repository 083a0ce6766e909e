//! The built `bootd` binary and `bootd export` as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::export::{ExportOptions, Log};
use crate::process::{describe, terminate, wait_until};

/// How long `bootd export` may take to print its URL (a debug build on a busy machine
/// included).
pub const START_LIMIT: Duration = Duration::from_secs(30);
/// How long it may take to flush and exit after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(15);

/// The workspace root (this package lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The bootd binary: `BOOTD_BIN`, else `build/release/bootd`, else `build/debug/bootd`.
pub fn bootd_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BOOTD_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!("BOOTD_BIN={} is not a file", bin.display());
    }
    let root = workspace_root();
    ["release", "debug"]
        .iter()
        .map(|profile| root.join("build").join(profile).join("bootd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "no bootd binary (set BOOTD_BIN or run `cargo build --release -p bootd` in {})",
                root.display()
            )
        })
}

/// A running `bootd export FILE --listen 127.0.0.1:0 ...`.
pub struct BootdExport {
    child: Option<Child>,
    port: u16,
    iqn: String,
    sanboot: String,
    log: Log,
    // bootd's data directory for this run, so tests never touch the machine's.
    _data_dir: tempfile::TempDir,
}

impl BootdExport {
    /// Spawns bootd and reads its stdout until the `iscsi://` URL (with the bound port)
    /// and the `sanboot` line that follows it.
    pub fn start(opts: &ExportOptions) -> Result<Self> {
        let bin = bootd_bin()?;
        let data_dir = tempfile::tempdir().context("creating bootd data dir")?;
        let mut cmd = Command::new(&bin);
        cmd.env("BOOTD_DATA_DIR", data_dir.path())
            .arg("export")
            .arg(&opts.file)
            .args(["--listen", "127.0.0.1:0", "--iqn", &opts.iqn]);
        if let Some(chap) = &opts.chap {
            cmd.arg("--chap")
                .arg(format!("{}:{}", chap.user, chap.secret));
        }
        if opts.read_only {
            cmd.arg("--read-only");
        }
        if opts.removable {
            cmd.arg("--removable");
        }
        let command = describe(&cmd);
        let (mut child, log, rx) = Log::spawn(&mut cmd)?;

        let mut export = Self {
            child: None,
            port: 0,
            iqn: opts.iqn.clone(),
            sanboot: String::new(),
            log,
            _data_dir: data_dir,
        };
        let deadline = Instant::now() + START_LIMIT;
        let mut url = None;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if url.is_none() && line.starts_with("iscsi://") => url = Some(line),
                Ok(line) if url.is_some() => break Ok((url.unwrap_or_default(), line)),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    break Err(anyhow!(
                        "no iscsi:// URL and sanboot line within {}s",
                        START_LIMIT.as_secs()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_until(&mut child, Instant::now() + STOP_LIMIT)?;
                    break Err(anyhow!(
                        "bootd closed stdout before printing its URL and sanboot line (exit: {status:?})"
                    ));
                }
            }
        };
        export.child = Some(child);
        let (url, sanboot) = match outcome {
            Ok(lines) => lines,
            Err(e) => bail!("`{command}`: {e}\n{}", export.log()),
        };
        export.port = parse_url(&url, &opts.iqn)
            .with_context(|| format!("`{command}` printed a bad URL\n{}", export.log()))?;
        if !sanboot.starts_with("sanboot ") {
            bail!(
                "`{command}`: the line after the URL is not a sanboot line: {sanboot:?}\n{}",
                export.log()
            );
        }
        export.sanboot = sanboot;
        Ok(export)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn iqn(&self) -> &str {
        &self.iqn
    }

    pub fn sanboot(&self) -> &str {
        &self.sanboot
    }

    pub fn log(&self) -> String {
        format!("--- bootd output ---\n{}--- end ---", self.log.text())
    }

    /// SIGTERM, then wait: bootd must flush and exit 0 in time.
    pub fn shutdown(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&child);
        match wait_until(&mut child, Instant::now() + STOP_LIMIT)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!(
                "bootd export exited with {status} after SIGTERM\n{}",
                self.log()
            ),
            None => bail!(
                "bootd export did not exit within {}s of SIGTERM (killed)\n{}",
                STOP_LIMIT.as_secs(),
                self.log()
            ),
        }
    }
}

impl Drop for BootdExport {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            // Errors here only mean the child is already gone.
            let _ = wait_until(&mut child, Instant::now() + STOP_LIMIT);
        }
    }
}

/// Checks `iscsi://127.0.0.1:PORT/IQN/0` and returns PORT.
pub fn parse_url(url: &str, iqn: &str) -> Result<u16> {
    let rest = url
        .strip_prefix("iscsi://127.0.0.1:")
        .ok_or_else(|| anyhow!("{url:?} does not start with iscsi://127.0.0.1:"))?;
    let mut parts = rest.splitn(3, '/');
    let port = parts.next().unwrap_or_default();
    let port: u16 = port
        .parse()
        .with_context(|| format!("{url:?}: port {port:?}"))?;
    if port == 0 {
        bail!("{url:?}: port 0 (the URL must carry the bound port)");
    }
    let (got_iqn, lun) = (parts.next(), parts.next());
    if got_iqn != Some(iqn) || lun != Some("0") {
        bail!("{url:?}: expected IQN {iqn} and LUN 0");
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let iqn = "iqn.2026-01.test:a";
        assert_eq!(
            parse_url("iscsi://127.0.0.1:3260/iqn.2026-01.test:a/0", iqn).ok(),
            Some(3260)
        );
        for bad in [
            "iscsi://127.0.0.1:0/iqn.2026-01.test:a/0",
            "iscsi://127.0.0.1:3260/iqn.2026-01.test:b/0",
            "iscsi://127.0.0.1:3260/iqn.2026-01.test:a/1",
            "iscsi://127.0.0.1:3260/iqn.2026-01.test:a",
            "iscsi://0.0.0.0:3260/iqn.2026-01.test:a/0",
            "iscsi://127.0.0.1:x/iqn.2026-01.test:a/0",
        ] {
            assert!(parse_url(bad, iqn).is_err(), "{bad} accepted");
        }
    }
}
