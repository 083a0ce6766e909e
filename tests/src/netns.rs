//! Private network namespaces for tests that put real peers on a wire (guests, servers
//! bound to TEST-NET-1 addresses). Each namespace is named after the test process, so
//! parallel runs never collide, and is deleted when its guard drops, pass or fail.
//! Namespaces left behind by a killed run are reaped by the next one.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::run;

/// Prefix of every namespace these tests create: `bootd-e2e-<pid>-<n>`.
const PREFIX: &str = "bootd-e2e-";
const IP_LIMIT: Duration = Duration::from_secs(10);
const STALE_AGE: Duration = Duration::from_secs(30 * 60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop. Drop the processes running inside it first
/// (declare them after the guard): deleting the name does not stop them.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `bootd-e2e-<pid>-<n>` with its loopback up.
    pub fn new() -> Result<Self> {
        reap_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]).with_context(|| format!("creating namespace {name}"))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds a persistent tap device with `cidr` on it, up. A guest attaches to it later
    /// (`-netdev tap,ifname=DEV`); the address is usable for binding before that.
    pub fn add_tap(&self, dev: &str, cidr: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", dev, "mode", "tap"])?;
        self.ip(&["addr", "add", cidr, "dev", dev])?;
        self.ip(&["link", "set", dev, "up"])
    }

    /// Joins this namespace and `peer` with a veth pair: `dev` here, `peer_dev` there,
    /// both down (addresses and MACs are set before bringing them up).
    pub fn add_veth(&self, dev: &str, peer: &NetNs, peer_dev: &str) -> Result<()> {
        self.ip(&[
            "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", &peer.name,
        ])
    }

    /// Adds a bridge `dev`, up, that forwards at once (no STP, no forward delay:
    /// a DHCP client must be heard the moment its port comes up).
    pub fn add_bridge(&self, dev: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            dev,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        self.ip(&["link", "set", dev, "up"])
    }

    /// Plugs `peer` into `bridge` here: a veth pair with `port` (up, a port of the
    /// bridge) here and `peer_dev` in `peer`, left down for its MAC and address.
    pub fn plug(&self, bridge: &str, port: &str, peer: &NetNs, peer_dev: &str) -> Result<()> {
        self.add_veth(port, peer, peer_dev)?;
        self.ip(&["link", "set", port, "master", bridge])?;
        self.ip(&["link", "set", port, "up"])
    }

    /// Runs `f` on a thread of its own that has joined this namespace (setns(2) on
    /// `/run/netns/NAME`), so every socket `f` opens lives here while the rest of the
    /// process stays where it was. Sockets keep their namespace when `f` returns.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.name);
        let handle = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a namespace fd we hold open; it changes only
                // this thread's network namespace, and the thread ends after `f`.
                if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns to {path}"));
                }
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread inside {} panicked", self.name))?
        })
    }

    /// A command that runs `program` inside the namespace. `ip netns exec` execs the
    /// program, so the child's pid is the program's own and signals reach it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("netns: could not delete {}: {e:#}", self.name);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = run(Command::new("ip").args(args), IP_LIMIT)?;
    if !out.success() {
        bail!("`ip {}` failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(())
}

/// Deletes `bootd-e2e-<pid>-*` namespaces whose process is gone (a run killed before
/// its guards dropped) and that are older than any test runs.
fn reap_stale() {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"]), IP_LIMIT) else {
        return;
    };
    for name in list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Also old: a pid we cannot see may belong to a run in another pid namespace.
        let old = std::fs::metadata(format!("/run/netns/{name}"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_AGE));
        if pid != std::process::id() && old && !Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: another run may be reaping the same name right now.
            let _ = ip(&["netns", "del", name]);
        }
    }
}
