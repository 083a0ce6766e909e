//! A server killed in the middle of the storm (`--kill-server`), and what
//! makes its nodes survive it the way real diskless nodes do: each server
//! has a floating portal address (`serve --floating-ip`) that real
//! keepalived (VRRP) moves to a survivor when the server stops answering,
//! node scripts name that address (serve publishes it as its portal), and
//! the survivor holding it takes the dead server's nodes once their
//! ownership lease lapses. This file starts keepalived in every server's
//! namespace, waits for the addresses, kills the server and finds where
//! its address went.

use crate::netns::{ServerNs, PREFIX_LEN};
use crate::setup::{Bootd, ISCSI_PORT};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Server `k`'s floating address (0-based): 198.18.1.K+1, on the LAN.
pub fn floating_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, (k + 1) as u8)
}

/// The VRRP router id of server `k`'s floating address (one instance each).
fn router_id(k: usize) -> u8 {
    (51 + k) as u8
}

/// `serve --floating-ip` for server `k`: its own address first (the one it
/// publishes while it holds it), then every other server's, so that it can
/// answer on any of them keepalived gives it.
pub fn serve_floating(k: usize, servers: usize) -> String {
    std::iter::once(k)
        .chain((0..servers).filter(|&j| j != k))
        .map(|j| floating_ip(j).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// keepalived, one per server namespace (as one per host), with a VRRP
/// instance for every floating address. Killed on drop.
pub struct Keepalived {
    children: Vec<Child>,
}

/// One keepalived.conf holding every instance `bootd server
/// keepalived-config` printed for one host (each prints one, named
/// `bootd`): the first configuration whole, then each other's instance
/// under a name of its own. The host's own address (`own`) drops
/// `nopreempt`: the storm starts every server at once, and with
/// `nopreempt` everywhere the first keepalived to time out (a busy
/// machine decides which) kept every address; a server that comes back
/// would take its address back, but none comes back in a storm.
fn merge(configs: &[String], own: usize) -> Result<String> {
    const INSTANCE: &str = "vrrp_instance bootd {";
    let mut out = String::new();
    for (j, c) in configs.iter().enumerate() {
        let at = c
            .find(INSTANCE)
            .context("no `vrrp_instance bootd` in bootd's keepalived configuration")?;
        let (head, inst) = c.split_at(at);
        if j == 0 {
            out.push_str(head);
        }
        let inst = inst.replacen(INSTANCE, &format!("vrrp_instance bootd_v{} {{", j + 1), 1);
        match j == own {
            true => out.push_str(&inst.replacen("nopreempt", "", 1)),
            false => out.push_str(&inst),
        }
        out.push('\n');
    }
    Ok(out)
}

impl Keepalived {
    /// In every server's namespace, a keepalived with an instance for
    /// every floating address: priority 150 for the server's own, lower
    /// and distinct for the others (the survivor next in line takes a
    /// dead server's address).
    pub fn start(bootd: &Bootd, servers: &[ServerNs], dir: &Path, log: &Path) -> Result<Self> {
        let mut k = Self {
            children: Vec::new(),
        };
        let n = servers.len();
        for (s, ns) in servers.iter().enumerate() {
            let mut configs = Vec::new();
            for j in 0..n {
                let priority = if s == j {
                    150
                } else {
                    // Server j+1 next, then j+2, ...: distinct priorities.
                    100 - ((s + n - j) % n) as u32
                };
                configs.push(bootd.run(&[
                    "server",
                    "keepalived-config",
                    "--floating-ip",
                    &format!("{}/{PREFIX_LEN}", floating_ip(j)),
                    "--interface",
                    &ns.ifname,
                    "--check",
                    &format!("{}:{ISCSI_PORT}", ns.ip),
                    "--priority",
                    &priority.to_string(),
                    "--router-id",
                    &router_id(j).to_string(),
                ])?);
            }
            let tag = format!("s{}", s + 1);
            let path = dir.join(format!("keepalived-{tag}.conf"));
            std::fs::write(&path, merge(&configs, s)?)?;
            let out = std::fs::File::create(format!("{}.keepalived-{tag}", log.display()))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &ns.ns, "keepalived"])
                .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
                .arg(&path)
                .arg("--pid")
                .arg(dir.join(format!("k-{tag}.pid")))
                .arg("--vrrp_pid")
                .arg(dir.join(format!("k-{tag}-vrrp.pid")))
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context("starting keepalived (scripts/install-test-deps.sh installs it)")?;
            k.children.push(child);
        }
        Ok(k)
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGTERM: keepalived takes its addresses down as it goes.
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: signalling our own child, not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether namespace `ns` has `ip` on an interface now.
pub fn has_address(ns: &str, ip: Ipv4Addr) -> bool {
    Command::new("ip")
        .args(["-n", ns, "-4", "-o", "addr", "show"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(&ip.to_string()))
        })
}

/// Waits until every server publishes its own floating address as its
/// portal (keepalived made it MASTER of it and serve followed).
pub fn wait_published(bootd: &Bootd, ids: &[String], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let text = bootd.run(&["server", "list", "--json"])?;
        let rows: serde_json::Value =
            serde_json::from_str(&text).context("`bootd server list --json` output")?;
        let published: Vec<(String, String)> = rows
            .as_array()
            .context("server list is not an array")?
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or_default().to_string(),
                    r["iscsi"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let ok = ids.iter().enumerate().all(|(k, id)| {
            let want = format!("{}:{ISCSI_PORT}", floating_ip(k));
            published.iter().any(|(i, a)| i == id && *a == want)
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after {limit:?} the servers publish {published:?}, not their floating addresses"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The kill: which server, when, and where its address went.
pub struct Kill {
    /// 0-based server index.
    pub server: usize,
    pub id: String,
    pub pid: u32,
    /// Its own address and its floating one.
    pub own: Ipv4Addr,
    pub vip: Ipv4Addr,
    /// Logins before the kill.
    pub after_logins: u64,
    /// Logins so far (every node's first login counts).
    pub logins: AtomicU64,
    pub at: OnceLock<Instant>,
    /// The survivor (index) whose namespace got the floating address, and when.
    pub moved: OnceLock<(usize, Instant)>,
}

impl Kill {
    /// Whether the kill has happened and `ip` is the dead server's
    /// (its own address or its floating one): a failure talking to it is
    /// the kill's doing, retried as a real node would, not a bootd error.
    pub fn involves(&self, ip: Ipv4Addr) -> bool {
        self.at.get().is_some() && (ip == self.own || ip == self.vip)
    }

    pub fn login(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for the logins, SIGKILLs the server, then watches the
    /// namespaces until a survivor has its floating address (or `limit`).
    pub async fn run(&self, namespaces: Vec<String>, limit: Duration) {
        while self.logins.load(Ordering::Relaxed) < self.after_logins {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: our own child (reaped only after the storm).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let at = Instant::now();
        let _ = self.at.set(at);
        while at.elapsed() < limit {
            for (k, ns) in namespaces.iter().enumerate() {
                if k != self.server && has_address(ns, self.vip) {
                    let _ = self.moved.set((k, Instant::now()));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The kill's figures in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TakeoverReport {
    pub killed_server: String,
    pub killed_address: String,
    pub floating_ip: String,
    /// Logins (over all servers) when it was killed.
    pub logins_before_kill: u64,
    /// Seconds into the storm.
    pub kill_at_secs: f64,
    /// The survivor keepalived gave the floating address to, and when.
    pub address_moved_to: Option<String>,
    pub address_moved_after_ms: Option<f64>,
    /// Nodes whose session on the killed server the kill dropped.
    pub sessions_dropped: u64,
    /// Of those, the ones served again (their I/O went on).
    pub resumed: u64,
    /// From the kill to their first command served again.
    pub resume_p50_ms: f64,
    pub resume_max_ms: f64,
    /// Every retry the kill caused (none is counted as an error).
    pub retries: u64,
    pub retries_by_phase: std::collections::BTreeMap<&'static str, u64>,
    pub retry_samples: std::collections::BTreeMap<String, u64>,
    /// Nodes that started their boot over from DHCP.
    pub boot_restarts: u64,
    /// Logins at the dead server's address that its new holder redirected.
    pub redirected_relogins: u64,
}

impl Kill {
    pub fn report(
        &self,
        t: crate::stats::Takeover,
        storm_start: Instant,
        ids: &[String],
    ) -> TakeoverReport {
        let mut r = t.resumed_ms.clone();
        r.sort_by(f64::total_cmp);
        let at = self.at.get().copied();
        TakeoverReport {
            killed_server: self.id.clone(),
            killed_address: self.own.to_string(),
            floating_ip: self.vip.to_string(),
            logins_before_kill: self.after_logins,
            kill_at_secs: at.map_or(0.0, |a| a.duration_since(storm_start).as_secs_f64()),
            address_moved_to: self.moved.get().and_then(|(k, _)| ids.get(*k).cloned()),
            address_moved_after_ms: self
                .moved
                .get()
                .zip(at)
                .map(|((_, m), a)| m.duration_since(a).as_secs_f64() * 1000.0),
            sessions_dropped: t.sessions_dropped,
            resumed: r.len() as u64,
            resume_p50_ms: r.get(r.len().saturating_sub(1) / 2).copied().unwrap_or(0.0),
            resume_max_ms: r.last().copied().unwrap_or(0.0),
            retries: t.retries.values().sum(),
            retries_by_phase: t.retries,
            retry_samples: t.retry_samples,
            boot_restarts: t.boot_restarts,
            redirected_relogins: t.redirected_relogins,
        }
    }
}
