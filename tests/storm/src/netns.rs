//! The storm's private wire: two network namespaces joined by a veth pair,
//! bootd at 192.0.2.1/24 in one, the simulated nodes at 192.0.2.2/24 in the
//! other. Neither namespace has any other interface (loopback aside), so no
//! packet of the storm can leave the machine; the host's own interfaces and
//! addresses are never touched. Both namespaces go when the guard drops;
//! ones left by a killed run are reaped by the next.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Every address a /24 leaves after the two above and a few spare.
pub const POOL: &str = "192.0.2.10-192.0.2.250";
pub const POOL_SIZE: usize = 241;
const PREFIX: &str = "bstorm-";

pub struct Wire {
    pub server_ns: String,
    pub client_ns: String,
    /// bootd's end (in `server_ns`).
    pub server_if: String,
    /// The nodes' end (in `client_ns`).
    pub client_if: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Wire {
    pub fn create() -> Result<Self> {
        reap_stale();
        let pid = std::process::id();
        let w = Self {
            server_ns: format!("{PREFIX}{pid}-srv"),
            client_ns: format!("{PREFIX}{pid}-cli"),
            server_if: format!("bss{pid}"),
            client_if: format!("bsc{pid}"),
        };
        ip(&["netns", "add", &w.server_ns])?;
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", &w.client_ns])?;
        let (s, c) = (w.server_ns.as_str(), w.client_ns.as_str());
        ip(&[
            "-n",
            s,
            "link",
            "add",
            &w.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &w.client_if,
            "netns",
            c,
        ])?;
        for (ns, dev, addr) in [
            (s, w.server_if.as_str(), SERVER_IP),
            (c, w.client_if.as_str(), CLIENT_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(w)
    }

    /// Moves the calling thread into the nodes' namespace. Called before
    /// any other thread exists, every thread started later is there too.
    pub fn enter_client(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.client_ns);
        let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a namespace fd we hold open.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
        }
        Ok(())
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the other.
        for ns in [&self.client_ns, &self.server_ns] {
            if Path::new("/run/netns").join(ns).exists() {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    eprintln!("bootd-storm: {e:#}");
                }
            }
        }
    }
}

/// Deletes `bstorm-<pid>-*` namespaces whose process is gone.
fn reap_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
