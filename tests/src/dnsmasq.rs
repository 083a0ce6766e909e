//! dnsmasq as a site's DHCP server (Debian package dnsmasq-base): addresses only,
//! no DNS, no boot options, for the tests that put bootd's proxyDHCP beside it.
//! Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::bootd::STOP_LIMIT;
use crate::env::which;
use crate::netns::NetNs;
use crate::process::{describe, terminate, wait_until};

pub struct Dnsmasq {
    child: Child,
    log: PathBuf,
}

impl Dnsmasq {
    /// The program, found with [`which`].
    pub const BIN: &'static str = "dnsmasq";

    /// Starts dnsmasq in `ns` on interface `nic` (which must hold an address in the
    /// range's /24), leasing `first..=last` for 10 minutes; its log and lease file
    /// go to `dir` under `label`.
    pub fn start(
        ns: &NetNs,
        nic: &str,
        range: (&str, &str),
        dir: &Path,
        label: &str,
    ) -> Result<Self> {
        let log = dir.join(format!("{label}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let bin = which(Self::BIN).context("dnsmasq not found (Debian package dnsmasq-base)")?;
        let mut cmd = ns.command(bin);
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--no-ping",
            "--log-dhcp",
            "--bind-interfaces",
            &format!("--interface={nic}"),
            &format!("--dhcp-range={},{},255.255.255.0,10m", range.0, range.1),
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join(format!("{label}.leases")).display()
        ))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        let command = describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `{command}`"))?;
        Ok(Self { child, log })
    }

    /// Whether dnsmasq still runs.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Everything dnsmasq logged so far.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- dnsmasq output ---\n{text}--- end ---")
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        terminate(&self.child);
        // Errors here only mean it is already gone.
        let _ = wait_until(&mut self.child, Instant::now() + STOP_LIMIT);
    }
}
