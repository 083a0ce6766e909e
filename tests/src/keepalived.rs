//! Real keepalived (VRRP) in a test's network namespace, with the configuration
//! `bootd server keepalived-config` printed: it moves a floating address between
//! servers the way it would in production. Stopped when dropped.

use std::path::Path;
use std::process::{Child, Stdio};

use anyhow::{Context, Result};

use crate::netns::NetNs;

/// `bootd server keepalived-config` arguments for one server: the floating address
/// `vip/24` on `iface`, tracking the server's own iSCSI portal `check`, at `priority`.
pub fn config_args(vip: &str, iface: &str, check: &str, priority: u8) -> Vec<String> {
    [
        "server",
        "keepalived-config",
        "--floating-ip",
        &format!("{vip}/24"),
        "--interface",
        iface,
        "--check",
        check,
        "--priority",
        &priority.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// One keepalived process (VRRP only, in the foreground).
pub struct Keepalived(Child);

impl Keepalived {
    /// keepalived in `ns` with `conf` (a keepalived.conf), its files and log
    /// (`keepalived-NAME.log`) in `dir`.
    pub fn start(ns: &NetNs, conf: &str, dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(format!("keepalived-{name}.conf"));
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(Self::log_path(dir, name))?;
        let child = ns
            .command("keepalived")
            .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
            .arg(&path)
            .arg("--pid")
            .arg(dir.join(format!("keepalived-{name}.pid")))
            .arg("--vrrp_pid")
            .arg(dir.join(format!("keepalived-{name}-vrrp.pid")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived")?;
        Ok(Self(child))
    }

    /// Where [`Keepalived::start`] logs.
    pub fn log_path(dir: &Path, name: &str) -> std::path::PathBuf {
        dir.join(format!("keepalived-{name}.log"))
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        // Errors only mean it is already gone.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
