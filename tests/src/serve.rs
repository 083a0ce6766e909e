//! A bootd data directory driven through the operator CLI (`image`, `node`, `df`), and
//! `bootd serve` on it as a child process that is stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::bootd::{bootd_bin, START_LIMIT, STOP_LIMIT};
use crate::export::Log;
use crate::netns::NetNs;
use crate::process::{describe, run, terminate, wait_until, Finished};
use serde_json::Value;

/// One CLI call; importing a 64 MiB image is the slowest and takes about a second.
pub const CLI_LIMIT: Duration = Duration::from_secs(120);

/// A node as `bootd node show NAME --json` describes it.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub mac: String,
    pub image: String,
    pub target_iqn: String,
    pub initiator_iqn: String,
    pub chap_user: String,
    pub chap_secret: String,
    pub overlay_path: PathBuf,
    pub overlay_bytes: u64,
}

impl Node {
    fn from_json(v: &Value) -> Result<Self> {
        Ok(Self {
            name: v.str_field("name")?.to_string(),
            mac: v.str_field("mac")?.to_string(),
            image: v.str_field("image")?.to_string(),
            target_iqn: v.str_field("target_iqn")?.to_string(),
            initiator_iqn: v.str_field("initiator_iqn")?.to_string(),
            chap_user: v.str_field("chap_user")?.to_string(),
            // `node show` has it; `node list` leaves secrets out.
            chap_secret: v["chap_secret"].as_str().unwrap_or_default().to_string(),
            overlay_path: PathBuf::from(v.str_field("overlay_path")?),
            overlay_bytes: v.u64_field("overlay_bytes")?,
        })
    }
}

/// `bootd df --json`.
#[derive(Clone, Copy, Debug)]
pub struct Df {
    pub physical_bytes: u64,
    pub logical_bytes: u64,
}

/// A fresh data directory (removed when dropped) and the bootd binary that runs on it.
pub struct DataDir {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl DataDir {
    pub fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir().context("creating bootd data dir")?,
            bin: bootd_bin()?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The bootd binary commands on this directory run.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `bootd ARGS` with `BOOTD_DATA_DIR` pointing here.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("BOOTD_DATA_DIR", self.dir.path()).args(args);
        cmd
    }

    /// Runs a CLI command; whether it succeeded is the caller's question.
    pub fn try_run(&self, args: &[&str]) -> Result<Finished> {
        run(&mut self.command(args), CLI_LIMIT)
    }

    /// Runs a CLI command that must succeed.
    pub fn run(&self, args: &[&str]) -> Result<Finished> {
        self.try_run(args)?.ok()
    }

    /// Runs a CLI command that must succeed and print one JSON document.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.run(args)?;
        serde_json::from_str(&out.stdout).with_context(|| format!("{out}"))
    }

    pub fn import(&self, name: &str, file: &Path) -> Result<()> {
        let file = file.to_str().context("image path is not UTF-8")?;
        self.run(&["image", "import", name, file]).map(drop)
    }

    /// The `image list --json` entry of `name` (its newest version).
    pub fn image(&self, name: &str) -> Result<Value> {
        let list = self.json(&["image", "list", "--json"])?;
        list.as_array()
            .context("image list --json is not an array")?
            .iter()
            .filter(|i| i.get("name").and_then(Value::as_str) == Some(name))
            .max_by_key(|i| i.get("version").and_then(Value::as_u64))
            .cloned()
            .ok_or_else(|| anyhow!("image {name} not in `image list --json`: {list:?}"))
    }

    /// `node add MAC --image IMAGE --name NAME`, then what `node show` says about it.
    pub fn add_node(&self, mac: &str, image: &str, name: &str) -> Result<Node> {
        self.run(&["node", "add", mac, "--image", image, "--name", name])?;
        self.node(name)
    }

    pub fn node(&self, name: &str) -> Result<Node> {
        Node::from_json(&self.json(&["node", "show", name, "--json"])?)
    }

    pub fn nodes(&self) -> Result<Vec<Node>> {
        let list = self.json(&["node", "list", "--json"])?;
        list.as_array()
            .context("node list --json is not an array")?
            .iter()
            .map(Node::from_json)
            .collect()
    }

    pub fn df(&self) -> Result<Df> {
        let v = self.json(&["df", "--json"])?;
        Ok(Df {
            physical_bytes: v.u64_field("physical_bytes")?,
            logical_bytes: v.u64_field("logical_bytes")?,
        })
    }

    /// `bootd serve` on this data directory, on a free loopback port.
    pub fn serve(&self) -> Result<Serve> {
        Serve::start(self)
    }

    /// `bootd serve` as `opts` says (another address, DHCP, inside a namespace).
    pub fn serve_with(&self, opts: &ServeOptions) -> Result<Serve> {
        Serve::start_with(self, opts)
    }
}

/// How [`Serve::start_with`] runs serve; the default is [`Serve::start`]'s.
#[derive(Debug)]
pub struct ServeOptions<'a> {
    /// Run inside this namespace (`ip netns exec`, which execs: signals reach serve).
    pub netns: Option<&'a NetNs>,
    /// `--listen-ip`; the ready lines must name it.
    pub listen_ip: String,
    /// Flags added after the ports, e.g. `--dhcp full --interface IF --pool A-B`.
    /// Without a `--dhcp` among them, `--dhcp off` is passed; a port flag among
    /// them (`--tftp-port 69`) replaces the default port 0.
    pub extra: Vec<String>,
}

impl Default for ServeOptions<'_> {
    fn default() -> Self {
        Self {
            netns: None,
            listen_ip: "127.0.0.1".to_string(),
            extra: Vec::new(),
        }
    }
}

/// A running `bootd serve` (by default `--dhcp off --listen-ip 127.0.0.1`), every
/// port picked by serve itself.
pub struct Serve {
    child: Option<Child>,
    port: u16,
    http_port: u16,
    tftp_port: u16,
    command: String,
    log: Log,
}

impl Serve {
    /// Spawns serve and waits for its `iscsi 127.0.0.1:PORT` line; by then every
    /// registered node is served.
    pub fn start(data: &DataDir) -> Result<Self> {
        Self::start_with(data, &ServeOptions::default())
    }

    /// Spawns serve as `opts` says and waits for its ready lines (`iscsi`, `http`,
    /// `tftp`, written at once); by then every registered node is served and DHCP,
    /// if asked for, answers.
    pub fn start_with(data: &DataDir, opts: &ServeOptions) -> Result<Self> {
        // Port 0: serve binds a free port itself and prints it, so no other process
        // can take the port between our choosing it and serve binding it.
        // A port flag among `extra` (TFTP on 69, where firmware looks) replaces it.
        let mut args = vec!["serve", "--listen-ip", &opts.listen_ip];
        for flag in ["--iscsi-port", "--http-port", "--tftp-port"] {
            if !opts.extra.iter().any(|a| a == flag) {
                args.extend([flag, "0"]);
            }
        }
        if !opts.extra.iter().any(|a| a == "--dhcp") {
            args.extend(["--dhcp", "off"]);
        }
        args.extend(opts.extra.iter().map(String::as_str));
        let mut cmd = match opts.netns {
            None => data.command(&args),
            Some(ns) => {
                let mut cmd = ns.command(&data.bin);
                cmd.env("BOOTD_DATA_DIR", data.path()).args(&args);
                cmd
            }
        };
        let command = describe(&cmd);
        let (mut child, log, rx) = Log::spawn(&mut cmd)?;
        let mut serve = Self {
            child: None,
            port: 0,
            http_port: 0,
            tftp_port: 0,
            command,
            log,
        };
        let deadline = Instant::now() + START_LIMIT;
        // iscsi, http, tftp: serve prints them in this order.
        let mut ports = Vec::new();
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let want = ["iscsi ", "http ", "tftp "][ports.len()];
                    if let Some(addr) = line.strip_prefix(want) {
                        match parse_listen(addr, &opts.listen_ip) {
                            Ok(p) => ports.push(p),
                            Err(e) => break Err(e),
                        }
                        if ports.len() == 3 {
                            break Ok(());
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    break Err(anyhow!(
                        "no `iscsi|http|tftp ADDR` lines within {}s",
                        START_LIMIT.as_secs()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_until(&mut child, Instant::now() + STOP_LIMIT)?;
                    break Err(anyhow!(
                        "serve closed stdout before its ready lines (exit: {status:?})"
                    ));
                }
            }
        };
        serve.child = Some(child);
        match ready {
            Ok(()) => {
                [serve.port, serve.http_port, serve.tftp_port] = [ports[0], ports[1], ports[2]]
            }
            Err(e) => bail!("`{}`: {e}\n{}", serve.command, serve.log()),
        }
        Ok(serve)
    }

    /// The iSCSI port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn tftp_port(&self) -> u16 {
        self.tftp_port
    }

    /// Whether the serve process is still running (it has not exited or crashed).
    pub fn running(&mut self) -> Result<bool> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait().context("polling serve")?.is_none()),
            None => Ok(false),
        }
    }

    /// Everything serve printed so far, for failure messages.
    pub fn log(&self) -> String {
        format!("--- bootd serve output ---\n{}--- end ---", self.log.text())
    }

    /// SIGTERM, then wait: serve must flush every overlay and exit 0 in time.
    /// Stops serve with SIGTERM and returns its exit status, whatever it
    /// is, and its whole output.
    pub fn stop_status(mut self) -> Result<(std::process::ExitStatus, String)> {
        let Some(mut child) = self.child.take() else {
            bail!("serve is not running");
        };
        terminate(&child);
        match wait_until(&mut child, Instant::now() + STOP_LIMIT)? {
            Some(status) => {
                // The output threads finish once the pipes close.
                std::thread::sleep(std::time::Duration::from_millis(100));
                Ok((status, self.log()))
            }
            None => bail!(
                "serve did not exit within {}s of SIGTERM (killed)\n{}",
                STOP_LIMIT.as_secs(),
                self.log()
            ),
        }
    }

    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&child);
        match wait_until(&mut child, Instant::now() + STOP_LIMIT)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("serve exited with {status} after SIGTERM\n{}", self.log()),
            None => bail!(
                "serve did not exit within {}s of SIGTERM (killed)\n{}",
                STOP_LIMIT.as_secs(),
                self.log()
            ),
        }
    }

    /// SIGKILL: a crash at whatever instant this lands. Returns once the process is gone.
    pub fn kill9(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill().context("SIGKILL to serve")?;
        child.wait().context("reaping serve")?;
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            // Errors here only mean the child is already gone.
            let _ = wait_until(&mut child, Instant::now() + STOP_LIMIT);
        }
    }
}

/// `IP:PORT` → PORT (never 0: the line must carry the bound port).
fn parse_listen(addr: &str, ip: &str) -> Result<u16> {
    let port = addr
        .trim()
        .strip_prefix(ip)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or_else(|| anyhow!("serve listens on {addr:?}, not {ip}"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => bail!("serve printed a bad port in {addr:?}"),
        Ok(p) => Ok(p),
    }
}

/// Typed access to the fields of bootd's `--json` output.
pub trait Fields {
    fn str_field(&self, key: &str) -> Result<&str>;
    fn u64_field(&self, key: &str) -> Result<u64>;
}

impl Fields for Value {
    fn str_field(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .with_context(|| format!("no string field {key:?} in {self}"))
    }

    fn u64_field(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .with_context(|| format!("no integer field {key:?} in {self}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listen_line() {
        assert_eq!(
            super::parse_listen("127.0.0.1:3260", "127.0.0.1").ok(),
            Some(3260)
        );
        assert_eq!(
            super::parse_listen("192.0.2.1:69", "192.0.2.1").ok(),
            Some(69)
        );
        for bad in [
            "0.0.0.0:3260",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "127.0.0.1",
            "127.0.0.12:1",
        ] {
            assert!(
                super::parse_listen(bad, "127.0.0.1").is_err(),
                "{bad} accepted"
            );
        }
    }
}
