//! Everything the storm needs before the first node boots: a data
//! directory with a golden image of random bytes and N registered nodes, a
//! TFTP directory with iPXE, the registry (the data directory's SQLite, or
//! a PostgreSQL server of the storm's own that every server shares), and
//! the `bootd serve` processes, each in its namespace.

use crate::netns::ServerNs;
use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long `bootd serve` may take to print its ready lines.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long it may take to flush and exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// Parallel `bootd node add` processes.
const REGISTER_WORKERS: usize = 8;

/// The MAC of node `i` (0-based): 52:54:00 and the index + 1.
pub fn mac(i: usize) -> [u8; 6] {
    let n = (i + 1) as u32;
    [0x52, 0x54, 0x00, (n >> 16) as u8, (n >> 8) as u8, n as u8]
}

pub fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn node_name(i: usize) -> String {
    format!("storm-{:05}", i + 1)
}

/// Ports every server listens on, each in its own namespace.
pub const TFTP_PORT: u16 = 69;
pub const HTTP_PORT: u16 = 8080;
pub const ISCSI_PORT: u16 = 3260;

/// What every bootd process of the storm is started with.
#[derive(Clone)]
pub struct Bootd {
    pub bin: PathBuf,
    pub data: PathBuf,
    /// BOOTD_REGISTRY and PGPASSWORD with PostgreSQL; nothing with SQLite.
    pub env: Vec<(String, String)>,
}

impl Bootd {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--data-dir")
            .arg(&self.data)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// `bootd --data-dir D ARGS`: its stdout, failing with bootd's stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "`bootd {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The golden image's bytes, kept in memory to check every read against.
pub fn golden_bytes(size: u64, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    StdRng::seed_from_u64(seed ^ 0x60_1d_e7).fill_bytes(&mut v);
    v
}

/// Imports `golden` as image `storm` and registers `nodes` nodes on it,
/// `REGISTER_WORKERS` at a time; `progress` is told each one done and
/// answers whether to go on.
pub fn populate(
    bootd: &Bootd,
    golden: &[u8],
    nodes: usize,
    progress: &(dyn Fn(usize) -> bool + Sync),
) -> Result<()> {
    let file = bootd.data.with_file_name("golden.raw");
    std::fs::write(&file, golden).context("writing the golden image")?;
    let file_s = file.to_string_lossy().into_owned();
    bootd.run(&["image", "import", "storm", &file_s])?;
    std::fs::remove_file(&file)?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..REGISTER_WORKERS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= nodes {
                            return Ok(());
                        }
                        let (m, name) = (mac_string(mac(i)), node_name(i));
                        let args = ["node", "add", &m, "--image", "storm", "--name", &name];
                        // The registry may be busy with the other workers: retry.
                        let mut tries = 0;
                        while let Err(e) = bootd.run(&args) {
                            tries += 1;
                            if tries == 3 {
                                return Err(e);
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        if !progress(done.fetch_add(1, Ordering::Relaxed) + 1) {
                            bail!("interrupted");
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow!("registration thread panicked"))?
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

/// A TFTP directory holding a copy of `ipxe` under its own name.
pub fn tftp_dir(work: &Path, ipxe: &Path) -> Result<(PathBuf, String, Vec<u8>)> {
    let dir = work.join("tftp");
    std::fs::create_dir_all(&dir)?;
    let name = ipxe
        .file_name()
        .context("iPXE binary path has no file name")?
        .to_string_lossy()
        .into_owned();
    let bytes = std::fs::read(ipxe)
        .with_context(|| format!("reading {} (apt-get install ipxe)", ipxe.display()))?;
    std::fs::write(dir.join(&name), &bytes)?;
    Ok((dir, name, bytes))
}

/// A running `bootd serve` and the addresses it printed.
pub struct Server {
    child: Option<Child>,
    pub id: String,
    pub ip: Ipv4Addr,
    pub pid: u32,
    pub iscsi: SocketAddr,
    pub http: SocketAddr,
    pub tftp: SocketAddr,
}

pub struct ServeOptions<'a> {
    pub bootd: &'a Bootd,
    /// `--pool` for `--dhcp full`.
    pub pool: &'a str,
    pub tftp_dir: &'a Path,
    pub log_level: &'a str,
    pub lease_secs: u32,
    pub record_io: Option<&'a Path>,
}

impl Server {
    /// `bootd serve --server-id ID --dhcp full` inside `ns`, stderr to
    /// `log`; returns once the ready lines are printed.
    /// `floating`: its `--floating-ip` list, if any.
    pub fn start(
        ns: &ServerNs,
        id: &str,
        log_path: &Path,
        o: &ServeOptions,
        floating: Option<&str>,
    ) -> Result<Self> {
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let b = o.bootd;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.ns])
            .arg(&b.bin)
            .arg("--data-dir")
            .arg(&b.data)
            .envs(b.env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--server-id", id])
            .args(["--dhcp", "full", "--interface", &ns.ifname])
            .args(["--listen-ip", &ns.ip.to_string(), "--pool", o.pool])
            .args([
                "--lease-secs",
                &o.lease_secs.to_string(),
                "--ipv6-ra",
                "off",
            ])
            .args(["--http-port", &HTTP_PORT.to_string()])
            .args(["--tftp-port", &TFTP_PORT.to_string()])
            .args(["--iscsi-port", &ISCSI_PORT.to_string()])
            // Scripts only to the node, from the address its lease gave it
            // (the default): every node fetches from its own address.
            .args(["--script-access", "bound"])
            .arg("--tftp-dir")
            .arg(o.tftp_dir)
            .args(floating.map(|f| ["--floating-ip", f]).into_iter().flatten())
            .env("BOOTD_LOG", o.log_level)
            .args(
                o.record_io
                    .map(|d| [OsStr::new("--record-io"), d.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().context("starting bootd serve")?;
        // `ip netns exec` execs bootd: the child's pid is bootd's.
        let pid = child.id();
        let stdout = child.stdout.take().context("bootd stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so bootd never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut server = Self {
            child: Some(child),
            id: id.to_string(),
            ip: ns.ip,
            pid,
            iscsi: SocketAddr::from((ns.ip, 0)),
            http: SocketAddr::from((ns.ip, 0)),
            tftp: SocketAddr::from((ns.ip, 0)),
        };
        let deadline = Instant::now() + START_LIMIT;
        let mut seen = 0;
        while seen < 3 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => bail!(
                    "bootd serve {id} printed no ready lines within {START_LIMIT:?} (see {})",
                    log_path.display()
                ),
            };
            let Some((kind, addr)) = line.split_once(' ') else {
                continue;
            };
            let addr: SocketAddr = match addr.trim().parse() {
                Ok(a) => a,
                Err(_) => continue,
            };
            match kind {
                "iscsi" => server.iscsi = addr,
                "http" => server.http = addr,
                "tftp" => server.tftp = addr,
                _ => continue,
            }
            seen += 1;
        }
        Ok(server)
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Reaps a server the storm SIGKILLed; an error if it died otherwise.
    pub fn reap_killed(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        use std::os::unix::process::ExitStatusExt;
        let status = child.wait()?;
        if status.signal() != Some(libc::SIGKILL) {
            bail!("bootd serve exited with {status}, not by the storm's SIGKILL");
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it does not exit in time.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(self.pid).context("pid")?;
        // SAFETY: signalling our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("bootd serve exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bootd serve did not exit within {STOP_LIMIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bootd-storm: {e:#}");
        }
    }
}
