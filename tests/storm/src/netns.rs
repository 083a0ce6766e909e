//! The storm's private LAN: a namespace for the simulated nodes holding a
//! bridge, and one namespace per bootd server whose veth is a port of that
//! bridge. Every address is in 198.18.0.0/15 (RFC 2544's benchmarking
//! range): the servers at 198.18.0.1..N, the bridge at 198.18.255.254, the
//! DHCP pool in 198.19.0.0/16. No namespace has any other interface
//! (loopback aside), so no packet of the storm can leave the machine; the
//! host's own interfaces and addresses are never touched. Every namespace
//! goes when the guard drops; ones left by a killed run are reaped by the
//! next.
//!
//! Each node's traffic comes from the address its lease gave it. The nodes'
//! namespace makes the whole pool local with one route (`local
//! 198.19.0.0/16 dev lo`, Linux's "AnyIP"): any pool address can be bound
//! without adding it to an interface first, and the kernel answers the
//! servers' ARP requests for it on the bridge. That is one route for any
//! number of nodes, instead of an `ip addr add` per lease (and a netlink
//! round trip on every node's boot path) or IP_TRANSPARENT sockets (which
//! send from foreign addresses, but leave the replies with nobody to
//! answer ARP for them).
//!
//! The servers reach the pool through the bridge's address (a route
//! `198.19.0.0/16 via 198.18.255.254`), as they would reach nodes behind a
//! router: the kernel's ARP table is one for all namespaces (its limit,
//! gc_thresh3, is 1024 entries by default and shared with whatever else
//! runs on the machine), and a server talking to thousands of nodes on
//! the link filled it ("neighbor table overflow"): packets, DHCP
//! broadcasts included, were dropped. With the route each server has one
//! neighbour for all the nodes.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// The prefix every address of the LAN is in.
pub const PREFIX_LEN: u8 = 15;
/// The bridge's own address in the nodes' namespace.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);
/// The pool's /16: local to the nodes' namespace as a whole.
pub const POOL_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// Most addresses a pool may hold (198.19.0.1 to 198.19.255.254).
pub const POOL_MAX: usize = 65_534;
/// Most servers (198.18.0.1 to 198.18.0.N).
pub const SERVERS_MAX: usize = 64;
/// Beyond one address per node: room for the offers of servers that raced
/// for a node and lost, and for a node whose PXE and iPXE leases differ.
pub const POOL_SLACK: usize = 64;
const NS_PREFIX: &str = "bstorm-";

/// Server `k`'s address (0-based).
pub fn server_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, (k + 1) as u8)
}

/// The DHCP pool for `nodes` nodes: every node its own address (nothing
/// reused), plus [`POOL_SLACK`] and an eighth; `FIRST-LAST` and its size.
pub fn pool(nodes: usize) -> Result<(String, usize)> {
    let size = nodes
        .saturating_add(nodes / 8)
        .saturating_add(POOL_SLACK)
        .min(POOL_MAX);
    if size < nodes {
        bail!("{nodes} nodes do not fit the pool's {POOL_MAX} addresses");
    }
    let first = u32::from(POOL_NET) + 1;
    let last = first + size as u32 - 1;
    Ok((
        format!("{}-{}", Ipv4Addr::from(first), Ipv4Addr::from(last)),
        size,
    ))
}

/// One server's namespace and its end of the LAN.
pub struct ServerNs {
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The interface inside `ns` (the same name in every server namespace).
    pub ifname: String,
}

pub struct Wire {
    pub client_ns: String,
    /// The bridge in `client_ns`: the nodes' DHCP socket is bound to it.
    pub client_if: String,
    pub servers: Vec<ServerNs>,
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
    /// The nodes' namespace with its bridge and `servers` server namespaces on it.
    pub fn create(servers: usize) -> Result<Self> {
        if servers == 0 || servers > SERVERS_MAX {
            bail!("--servers must be 1 to {SERVERS_MAX}");
        }
        reap_stale();
        let pid = std::process::id();
        let mut w = Self {
            client_ns: format!("{NS_PREFIX}{pid}-cli"),
            client_if: "br0".into(),
            servers: Vec::new(),
        };
        ip(&["netns", "add", &w.client_ns])?;
        // From here on, Drop cleans up whatever was made.
        let c = w.client_ns.clone();
        let plen = PREFIX_LEN.to_string();
        ip(&["-n", &c, "link", "set", "lo", "up"])?;
        ip(&["-n", &c, "link", "add", "br0", "type", "bridge"])?;
        // No STP listening delay: the ports forward at once.
        ip(&[
            "-n",
            &c,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
        ])?;
        ip(&[
            "-n",
            &c,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        ip(&[
            "-n",
            &c,
            "addr",
            "add",
            &format!("{BRIDGE_IP}/{plen}"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &c, "link", "set", "br0", "up"])?;
        ip(&[
            "-n",
            &c,
            "route",
            "add",
            "local",
            &format!("{POOL_NET}/16"),
            "dev",
            "lo",
        ])?;
        for k in 0..servers {
            let s = ServerNs {
                ns: format!("{NS_PREFIX}{pid}-s{}", k + 1),
                ip: server_ip(k),
                ifname: "eth0".into(),
            };
            ip(&["netns", "add", &s.ns])?;
            let port = format!("bsp{}", k + 1);
            w.servers.push(s);
            let s = &w.servers[k];
            ip(&[
                "-n", &c, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &s.ns,
            ])?;
            ip(&["-n", &c, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &c, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &s.ns,
                "addr",
                "add",
                &format!("{}/{plen}", s.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &s.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &s.ns, "link", "set", "lo", "up"])?;
            // The nodes through the bridge's address, not on the link: one
            // neighbour entry per server instead of one per node (see above).
            let gw = BRIDGE_IP.to_string();
            ip(&[
                "-n",
                &s.ns,
                "route",
                "add",
                &format!("{POOL_NET}/16"),
                "via",
                &gw,
                "dev",
                "eth0",
            ])?;
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
        // Deleting a namespace deletes its end of each veth, and with it the other.
        let all = std::iter::once(&self.client_ns).chain(self.servers.iter().map(|s| &s.ns));
        for ns in all {
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
            .strip_prefix(NS_PREFIX)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_covers_every_node() -> Result<()> {
        assert_eq!(pool(1)?, ("198.19.0.1-198.19.0.65".to_string(), 65));
        let (range, size) = pool(2000)?;
        assert_eq!(size, 2000 + 250 + POOL_SLACK);
        // 2314 addresses from 198.19.0.1: the last is 198.19.0.0 + 2314.
        assert_eq!(range, "198.19.0.1-198.19.9.10");
        assert_eq!(pool(60_000)?.1, POOL_MAX);
        assert!(pool(POOL_MAX + 1).is_err());
        assert_eq!(server_ip(2), Ipv4Addr::new(198, 18, 0, 3));
        Ok(())
    }
}
