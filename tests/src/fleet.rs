//! Several `bootd serve --server-id` processes on one registry (PostgreSQL,
//! reached through its Unix socket so that serves in other network
//! namespaces share it) and one data directory: the operator CLI against
//! that registry, serves started in namespaces, and `server list --json`.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::bootd::{START_LIMIT, STOP_LIMIT};
use crate::export::Log;
use crate::netns::NetNs;
use crate::postgres::{PgServer, PASSWORD};
use crate::process::{describe, run, terminate, wait_until, Finished};
use crate::serve::{DataDir, CLI_LIMIT};

/// A data directory whose registry is `url` (password in `PGPASSWORD`).
pub struct SharedRegistry {
    pub data: DataDir,
    pub url: String,
    password: String,
}

impl SharedRegistry {
    pub fn new(data: DataDir, url: String, password: &str) -> Self {
        Self {
            data,
            url,
            password: password.to_string(),
        }
    }

    /// A new database on `pg` and a new data directory. Through the server's Unix
    /// socket: serves in other network namespaces cannot reach the host's loopback.
    pub fn fresh(pg: &PgServer) -> Result<Self> {
        let db = pg.create_database()?;
        Ok(Self::new(DataDir::new()?, pg.unix_url(&db), PASSWORD))
    }

    /// `bootd --registry URL ARGS` on the data directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.data.command(&["--registry", &self.url]);
        cmd.env("PGPASSWORD", &self.password).args(args);
        cmd
    }

    /// A CLI command that must succeed.
    pub fn run(&self, args: &[&str]) -> Result<Finished> {
        run(&mut self.command(args), CLI_LIMIT)?.ok()
    }

    /// A CLI command that must succeed and print one JSON document.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.run(args)?;
        serde_json::from_str(&out.stdout).with_context(|| format!("{out}"))
    }

    /// `server list --json`, by server id.
    pub fn servers(&self) -> Result<BTreeMap<String, Value>> {
        let v = self.json(&["server", "list", "--json"])?;
        Ok(v.as_array()
            .context("server list --json is not an array")?
            .iter()
            .map(|s| (s["id"].as_str().unwrap_or_default().to_string(), s.clone()))
            .collect())
    }

    /// The server `node show NAME --json` names as the node's owner.
    pub fn owner(&self, node: &str) -> Result<Option<String>> {
        let v = self.json(&["node", "show", node, "--json"])?;
        Ok(v["owner"].as_str().map(str::to_string))
    }

    /// `bootd serve --server-id ID --listen-ip IP ...` inside `ns`, with the
    /// registry's variables; `extra` after the defaults (`--iscsi-port 0`,
    /// `--http-port 0`, `--tftp-port 0`, `--dhcp off` unless given there).
    pub fn serve(&self, ns: &NetNs, id: &str, ip: &str, extra: &[&str]) -> Result<Peer> {
        let mut args = vec!["serve", "--server-id", id, "--listen-ip", ip];
        for flag in ["--iscsi-port", "--http-port", "--tftp-port"] {
            if !extra.contains(&flag) {
                args.extend([flag, "0"]);
            }
        }
        if !extra.contains(&"--dhcp") {
            args.extend(["--dhcp", "off"]);
        }
        args.extend_from_slice(extra);
        let mut cmd = ns.command(self.data.bin());
        cmd.env("BOOTD_DATA_DIR", self.data.path())
            .env("BOOTD_REGISTRY", &self.url)
            .env("PGPASSWORD", &self.password)
            .env("BOOTD_LOG", "info")
            .args(&args);
        Peer::start(cmd, id, ip)
    }
}

/// One running serve of the fleet; stopped (SIGTERM) when dropped.
pub struct Peer {
    child: Option<Child>,
    pub id: String,
    pub ip: String,
    pub iscsi_port: u16,
    pub http_port: u16,
    command: String,
    log: Log,
}

impl Peer {
    fn start(mut cmd: Command, id: &str, ip: &str) -> Result<Self> {
        let command = describe(&cmd);
        let (child, log, rx) = Log::spawn(&mut cmd)?;
        let mut peer = Self {
            child: Some(child),
            id: id.to_string(),
            ip: ip.to_string(),
            iscsi_port: 0,
            http_port: 0,
            command,
            log,
        };
        let deadline = Instant::now() + START_LIMIT;
        let mut ports = Vec::new();
        // serve prints `iscsi ADDR`, `http ADDR`, `tftp ADDR`, in this order.
        while ports.len() < 3 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("`{}`: no ready lines in time\n{}", peer.command, peer.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "`{}` exited before its ready lines\n{}",
                        peer.command,
                        peer.log()
                    )
                }
            };
            let want = ["iscsi ", "http ", "tftp "][ports.len()];
            if let Some(addr) = line.strip_prefix(want) {
                let port = addr
                    .strip_prefix(ip)
                    .and_then(|p| p.strip_prefix(':'))
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| anyhow!("{id} printed {line:?}, not {ip}:PORT"))?;
                ports.push(port);
            }
        }
        (peer.iscsi_port, peer.http_port) = (ports[0], ports[1]);
        Ok(peer)
    }

    /// `IP:PORT` of its iSCSI portal.
    pub fn portal(&self) -> String {
        format!("{}:{}", self.ip, self.iscsi_port)
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        format!("--- serve {} ---\n{}--- end ---", self.id, self.log.text())
    }

    /// SIGKILL, waited for: the server dies as in a crash (nothing committed,
    /// nothing released, its heartbeats just stop). Its log stays readable.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM; it must flush and exit 0.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&child);
        match wait_until(&mut child, Instant::now() + STOP_LIMIT)? {
            Some(s) if s.success() => Ok(()),
            other => bail!("serve {} stopped with {other:?}\n{}", self.id, self.log()),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            // Errors only mean it is already gone.
            let _ = wait_until(&mut child, Instant::now() + STOP_LIMIT);
        }
    }
}
