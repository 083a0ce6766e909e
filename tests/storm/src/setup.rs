//! Everything the storm needs before the first node boots: a data
//! directory with a golden image of random bytes and N registered nodes, a
//! TFTP directory with iPXE, and `bootd serve` running in its namespace.

use crate::netns::{Wire, POOL, SERVER_IP};
use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
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

/// `bootd --data-dir D ARGS`, failing with bootd's stderr.
fn bootd(bin: &Path, data: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`bootd {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
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
    bin: &Path,
    data: &Path,
    golden: &[u8],
    nodes: usize,
    progress: &(dyn Fn(usize) -> bool + Sync),
) -> Result<()> {
    let file = data.with_file_name("golden.raw");
    std::fs::write(&file, golden).context("writing the golden image")?;
    let file_s = file.to_string_lossy().into_owned();
    bootd(bin, data, &["image", "import", "storm", &file_s])?;
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
                        while let Err(e) = bootd(bin, data, &args) {
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
    pub pid: u32,
    pub iscsi: SocketAddr,
    pub http: SocketAddr,
    pub tftp: SocketAddr,
}

pub struct ServeOptions<'a> {
    pub bin: &'a Path,
    pub data: &'a Path,
    pub tftp_dir: &'a Path,
    pub log: &'a Path,
    pub log_level: &'a str,
    pub lease_secs: u32,
    pub record_io: Option<&'a Path>,
}

impl Server {
    /// `bootd serve --dhcp full` inside the server namespace, stderr to
    /// `log`; returns once the ready lines are printed.
    pub fn start(wire: &Wire, o: &ServeOptions) -> Result<Self> {
        let log = std::fs::File::create(o.log)
            .with_context(|| format!("creating {}", o.log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &wire.server_ns])
            .arg(o.bin)
            .arg("--data-dir")
            .arg(o.data)
            .args(["serve", "--dhcp", "full", "--interface", &wire.server_if])
            .args(["--listen-ip", &SERVER_IP.to_string(), "--pool", POOL])
            .args(["--lease-secs", &o.lease_secs.to_string()])
            .args(["--http-port", "0", "--tftp-port", "0", "--iscsi-port", "0"])
            // Every simulated node fetches from the one client address, not
            // from its lease: scripts open to all, and that address may hold
            // as many connections and transfers as the whole fleet.
            .args(["--script-access", "open", "--per-source", "100000"])
            .arg("--tftp-dir")
            .arg(o.tftp_dir)
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
            pid,
            iscsi: SocketAddr::from((SERVER_IP, 0)),
            http: SocketAddr::from((SERVER_IP, 0)),
            tftp: SocketAddr::from((SERVER_IP, 0)),
        };
        let deadline = Instant::now() + START_LIMIT;
        let mut seen = 0;
        while seen < 3 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => bail!(
                    "bootd serve printed no ready lines within {START_LIMIT:?} (see {})",
                    o.log.display()
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
