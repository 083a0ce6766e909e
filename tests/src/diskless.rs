//! Diskless machines on a private LAN: a bridge inside a network namespace carrying the
//! server's address, one tap device per machine, QEMU guests (TCG) that boot from the
//! network and report on their serial consoles, and `bootd serve` answering them with
//! TFTP on port 69, where firmware PXE clients look for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::bootd::{bootd_bin, START_LIMIT, STOP_LIMIT};
use crate::dnsmasq::Dnsmasq;
use crate::guest::Outcome;
use crate::netns::NetNs;
use crate::process::{describe, terminate, wait_until};
use crate::serve::{DataDir, Fields, Serve, ServeOptions};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const IPXE_BIOS_ROM: &str = "/usr/lib/ipxe/qemu/pxe-e1000.rom";

/// The firmware a machine boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with iPXE's e1000 option ROM (the ROM is iPXE: no TFTP step).
    Bios,
    /// OVMF's own PXE client on a virtio NIC without option ROM: DHCP as UEFI x64
    /// (arch 7), `snponly.efi` over TFTP, then iPXE and its script over HTTP.
    Uefi,
}

impl Firmware {
    /// Files the firmware needs on the host, with their Debian packages.
    pub fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Firmware::Bios => &[(IPXE_BIOS_ROM, "ipxe-qemu")],
            // snponly.efi is what serve hands UEFI x64 from its default TFTP directory.
            Firmware::Uefi => &[
                (OVMF_CODE, "ovmf"),
                (OVMF_VARS, "ovmf"),
                ("/usr/lib/ipxe/snponly.efi", "ipxe"),
            ],
        }
    }

    /// The first of [`Firmware::files`] that is missing, as `PATH (package)`.
    pub fn missing(self) -> Option<String> {
        self.files()
            .iter()
            .find(|(f, _)| !Path::new(f).is_file())
            .map(|(f, p)| format!("{f} not found (Debian package {p})"))
    }
}

/// A bridge in `ns` with the server's address on it; machines join it through taps.
pub struct Lan<'a> {
    ns: &'a NetNs,
    bridge: String,
}

impl<'a> Lan<'a> {
    /// Creates `bridge` in `ns` with `cidr` (the server's address), up. Without STP the
    /// bridge forwards as soon as a port comes up, so the firmware's first DHCP
    /// DISCOVER is not lost to a listening delay.
    pub fn new(ns: &'a NetNs, bridge: &str, cidr: &str) -> Result<Self> {
        ns.ip(&["link", "add", bridge, "type", "bridge", "stp_state", "0"])?;
        ns.ip(&["addr", "add", cidr, "dev", bridge])?;
        ns.ip(&["link", "set", bridge, "up"])?;
        Ok(Self {
            ns,
            bridge: bridge.to_string(),
        })
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Adds a persistent tap on the bridge, up; a guest attaches to it later.
    pub fn add_tap(&self, tap: &str) -> Result<()> {
        self.ns.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ns.ip(&["link", "set", tap, "master", &self.bridge])?;
        self.ns.ip(&["link", "set", tap, "up"])
    }

    /// `bootd serve --dhcp full` on `data` in the LAN's namespace, listening at
    /// `server_ip` (the bridge's address) and leasing `pool`; `more` flags after those
    /// (a port flag among them replaces serve's pick of a free port).
    pub fn serve_full(
        &self,
        data: &DataDir,
        server_ip: &str,
        pool: &str,
        more: &[&str],
    ) -> Result<Serve> {
        let mut extra = [
            "--dhcp",
            "full",
            "--interface",
            &self.bridge,
            "--pool",
            pool,
        ]
        .map(String::from)
        .to_vec();
        extra.extend(more.iter().map(|s| s.to_string()));
        data.serve_with(&ServeOptions {
            netns: Some(self.ns),
            listen_ip: server_ip.to_string(),
            extra,
        })
    }

    /// Another host on the LAN: a namespace of its own plugged into the bridge through
    /// `port`, its NIC `nic` up with `cidr`.
    pub fn add_host(&self, port: &str, nic: &str, cidr: &str) -> Result<NetNs> {
        let host = NetNs::new()?;
        self.ns.plug(&self.bridge, port, &host, nic)?;
        host.ip(&["addr", "add", cidr, "dev", nic])?;
        host.ip(&["link", "set", nic, "up"])?;
        Ok(host)
    }
}

/// One network boot of one machine.
#[derive(Clone, Debug)]
pub struct PxeBoot {
    pub firmware: Firmware,
    /// The namespace's tap device the machine's NIC attaches to.
    pub tap: String,
    pub mac: String,
    /// Where the serial console goes; QEMU's own output goes beside it (`.qemu` added).
    pub console: PathBuf,
    /// The machine must power off within this; past it, it is killed.
    pub limit: Duration,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// QEMU's default devices. Without them (`-nodefaults`) the machine has no floppy
    /// drive, which a full distribution would probe and log I/O errors for; the NIC
    /// and serial port are given explicitly either way.
    pub default_devices: bool,
}

/// A running machine; killed if dropped before [`PxeGuest::wait`] returns.
pub struct PxeGuest {
    child: Option<Child>,
    start: Instant,
    boot: PxeBoot,
    qemu_log: PathBuf,
}

impl PxeGuest {
    /// Powers the machine on in `ns`: it boots from its NIC only.
    pub fn start(ns: &NetNs, boot: &PxeBoot) -> Result<Self> {
        let qemu_log = boot.console.with_extension("qemu");
        let log = std::fs::File::create(&qemu_log)
            .with_context(|| format!("creating {}", qemu_log.display()))?;
        let mut cmd = ns.command("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", &boot.memory_mib.to_string()])
            .args(["-smp", "1", "-nographic"])
            // -no-reboot: a failed sanboot's `reboot` (and a guest panic) ends QEMU.
            .args(["-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", boot.console.display()))
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                boot.tap
            ));
        if !boot.default_devices {
            cmd.arg("-nodefaults");
        }
        match boot.firmware {
            Firmware::Bios => {
                cmd.args(["-boot", "n", "-device"]).arg(format!(
                    "e1000,netdev=n0,mac={},romfile={IPXE_BIOS_ROM}",
                    boot.mac
                ));
            }
            Firmware::Uefi => {
                // Each machine writes its own copy of the firmware's variable store.
                let vars = boot.console.with_extension("vars.fd");
                std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS}"))?;
                cmd.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ))
                    // No option ROM: OVMF's own virtio-net driver and PXE client. With
                    // no disk, network boot is the firmware's only boot option.
                    .arg("-device")
                    .arg(format!(
                        "virtio-net-pci,netdev=n0,mac={},romfile=",
                        boot.mac
                    ));
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let command = describe(&cmd);
        let start = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `{command}`"))?;
        Ok(Self {
            child: Some(child),
            start,
            boot: boot.clone(),
            qemu_log,
        })
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        read_lossy(&self.boot.console)
    }

    /// Whether the machine is still on.
    pub fn running(&mut self) -> Result<bool> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait().context("polling QEMU")?.is_none()),
            None => Ok(false),
        }
    }

    /// Time since power-on.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits until the machine powers off (or its limit passes) and collects its console.
    pub fn wait(mut self) -> Result<Outcome> {
        let status = match self.child.as_mut() {
            Some(child) => wait_until(child, self.start + self.boot.limit)?,
            None => None,
        };
        self.child = None;
        Ok(Outcome {
            status,
            console: read_lossy(&self.boot.console),
            qemu_log: read_lossy(&self.qemu_log),
            elapsed: self.start.elapsed(),
        })
    }
}

impl Drop for PxeGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors only mean it is already gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Powers all machines on at once and waits for every one of them.
pub fn boot_together(ns: &NetNs, boots: &[PxeBoot]) -> Result<Vec<Outcome>> {
    let guests = boots
        .iter()
        .map(|b| PxeGuest::start(ns, b))
        .collect::<Result<Vec<_>>>()?;
    guests.into_iter().map(PxeGuest::wait).collect()
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `bootd serve --dhcp full` on a LAN's bridge with TFTP on port 69 (firmware PXE clients
/// know no other), the other ports picked by serve; stopped when dropped.
pub struct LanServe {
    child: Option<Child>,
    log_path: PathBuf,
}

impl LanServe {
    /// Starts serve on `data_dir` inside `ns` and waits for its ready lines; `log_path`
    /// collects its stdout and stderr. `log_filter` goes to `BOOTD_LOG`.
    pub fn start(
        ns: &NetNs,
        lan: &Lan<'_>,
        data_dir: &Path,
        server_ip: &str,
        pool: &str,
        log_filter: &str,
        log_path: PathBuf,
    ) -> Result<Self> {
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = ns.command(bootd_bin()?);
        cmd.env("BOOTD_DATA_DIR", data_dir)
            .env("BOOTD_LOG", log_filter)
            .args(["serve", "--listen-ip", server_ip, "--iscsi-port", "0"])
            .args(["--http-port", "0", "--tftp-port", "69", "--dhcp", "full"])
            .args(["--interface", lan.bridge(), "--pool", pool])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let command = describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `{command}`"))?;
        let mut serve = Self {
            child: Some(child),
            log_path,
        };
        // serve prints `iscsi`, `http` and `tftp ADDR:PORT` in this order once it answers.
        let want = format!("tftp {server_ip}:69");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let log = serve.log();
            if log.lines().any(|l| l == want) {
                return Ok(serve);
            }
            if let Some(status) = serve.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                bail!("`{command}` exited early: {status}\n{log}");
            }
            ensure!(
                Instant::now() < deadline,
                "`{command}` printed no {want:?} within {}s\n{log}",
                START_LIMIT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything serve printed so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// SIGTERM, then wait: serve must flush every overlay and exit 0 in time.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&child);
        let status = wait_until(&mut child, Instant::now() + STOP_LIMIT)?;
        ensure!(
            status.is_some_and(|s| s.success()),
            "serve did not exit 0 within {}s of SIGTERM ({status:?})\n{}",
            STOP_LIMIT.as_secs(),
            self.log()
        );
        Ok(())
    }
}

impl Drop for LanServe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            // Errors here only mean the child is already gone.
            let _ = wait_until(&mut child, Instant::now() + STOP_LIMIT);
        }
    }
}

/// One stage of a node's last boot, as `bootd node show NODE --json` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootStage {
    pub stage: String,
    pub at_ms: i64,
    pub detail: String,
}

/// The stages of `node`'s last boot (`last_boot` of `node show --json`).
pub fn last_boot(data: &DataDir, node: &str) -> Result<Vec<BootStage>> {
    let v = data.json(&["node", "show", node, "--json"])?;
    let list = v
        .get("last_boot")
        .and_then(Value::as_array)
        .with_context(|| format!("no last_boot list in `node show {node} --json`: {v}"))?;
    list.iter()
        .map(|s| {
            Ok(BootStage {
                stage: s.str_field("stage")?.to_string(),
                at_ms: s
                    .get("at_ms")
                    .and_then(Value::as_i64)
                    .with_context(|| format!("no at_ms in {s}"))?,
                detail: s.str_field("detail")?.to_string(),
            })
        })
        .collect()
}

/// One line per stage: its name, its offset from the first stage, its detail.
pub fn show_stages(stages: &[BootStage]) -> String {
    let first = stages.first().map_or(0, |s| s.at_ms);
    stages
        .iter()
        .map(|s| {
            let offset = (s.at_ms - first) as f64 / 1000.0;
            format!("  {:<16} +{offset:>6.2}s  {}\n", s.stage, s.detail)
        })
        .collect()
}

/// Milliseconds since the Unix epoch, the clock `last_boot` is stamped with.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks that `stages` are one whole boot of `node` that began at or after `since_ms`
/// (wall clock): in time order; without the logouts, exactly `want`; every logout
/// (`iscsi-logout-N`) after its login (`iscsi-login-N`); an unnumbered `iscsi-logout`
/// only for a session this boot did not log in. `serve_log` must carry serve's
/// `boot NODE STAGE +T.TTs DETAIL` line for each of them.
pub fn check_boot_stages(
    node: &str,
    stages: &[BootStage],
    want: &[&str],
    since_ms: i64,
    serve_log: &str,
) -> Result<()> {
    let shown = || format!("{node}'s last_boot:\n{}", show_stages(stages));
    ensure!(
        stages.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
        "stages out of time order; {}",
        shown()
    );
    // A second of slack: the guest's power-on time is taken on this side.
    ensure!(
        stages.iter().all(|s| s.at_ms >= since_ms - 1000),
        "stages from before this boot's power-on ({since_ms} ms); {}",
        shown()
    );
    let main: Vec<&str> = stages
        .iter()
        .map(|s| s.stage.as_str())
        .filter(|s| !s.starts_with("iscsi-logout"))
        .collect();
    ensure!(main == want, "expected {want:?} (and logouts); {}", shown());
    for (i, s) in stages.iter().enumerate() {
        if let Some(n) = s.stage.strip_prefix("iscsi-logout-") {
            let login = format!("iscsi-login-{n}");
            ensure!(
                stages[..i].iter().any(|l| l.stage == login),
                "{} before its {login}; {}",
                s.stage,
                shown()
            );
        } else if s.stage == "iscsi-logout" {
            // The end of a session serve cannot number: one of an earlier boot (iPXE
            // leaves its connection behind at a reset), never one of this boot's.
            let isid = s.detail.split_whitespace().next();
            ensure!(
                !stages.iter().any(|l| l.stage.starts_with("iscsi-login-")
                    && l.detail.split_whitespace().next() == isid),
                "{} of a session of this boot is not numbered; {}",
                s.stage,
                shown()
            );
        }
        let line = format!("boot {node} {} +", s.stage);
        ensure!(
            serve_log
                .lines()
                .any(|l| l.contains(&line) && l.contains(&s.detail)),
            "serve logged no `{line}... {}` line; {}",
            s.detail,
            shown()
        );
    }
    Ok(())
}

/// dnsmasq as a site's DHCP server beside bootd's proxy, in its own namespace
/// plugged into the LAN. Stopped when dropped.
pub struct SiteDhcp {
    dnsmasq: Dnsmasq,
    _ns: NetNs,
}

impl SiteDhcp {
    pub const BIN: &'static str = Dnsmasq::BIN;

    /// Starts dnsmasq at `cidr` on a port of the LAN's bridge, leasing `first..=last`.
    /// `dir` holds its log and lease file.
    pub fn start(lan: &Lan<'_>, cidr: &str, first: &str, last: &str, dir: &Path) -> Result<Self> {
        const NIC: &str = "site0";
        let ns = lan.add_host("site-port", NIC, cidr)?;
        let dnsmasq = Dnsmasq::start(&ns, NIC, (first, last), dir, "dnsmasq")?;
        Ok(Self { dnsmasq, _ns: ns })
    }

    /// Whether dnsmasq still runs.
    pub fn running(&mut self) -> Result<bool> {
        self.dnsmasq.running()
    }

    /// Everything dnsmasq logged so far.
    pub fn log(&self) -> String {
        self.dnsmasq.log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(stage: &str, at_ms: i64, detail: &str) -> BootStage {
        BootStage {
            stage: stage.to_string(),
            at_ms,
            detail: detail.to_string(),
        }
    }

    const WANT: &[&str] = &["ipxe-dhcp", "script", "iscsi-login-1", "iscsi-login-2"];

    fn boot() -> Vec<BootStage> {
        vec![
            stage("ipxe-dhcp", 1_000, "url to 192.0.2.100"),
            stage("script", 2_000, "template sanboot"),
            stage("iscsi-login-1", 3_000, "4000 ipxe"),
            stage("iscsi-login-2", 9_000, "0002 linux"),
            stage("iscsi-logout-2", 9_500, "0002 logout"),
        ]
    }

    fn log(stages: &[BootStage]) -> String {
        stages
            .iter()
            .map(|s| {
                format!(
                    "INFO bootd::bootlog: boot n1 {} +0.00s {} (mac)\n",
                    s.stage, s.detail
                )
            })
            .collect()
    }

    #[test]
    fn accepts_one_whole_boot() {
        let b = boot();
        assert!(check_boot_stages("n1", &b, WANT, 1_000, &log(&b)).is_ok());
        // A late end of an earlier boot's session is allowed.
        let mut late = b.clone();
        late.push(stage("iscsi-logout", 9_600, "3999 reset"));
        assert!(check_boot_stages("n1", &late, WANT, 1_000, &log(&late)).is_ok());
    }

    #[test]
    fn rejects_what_is_not_one_whole_boot() {
        let b = boot();
        let l = log(&b);
        // A missing stage, an extra one, the wrong order.
        assert!(check_boot_stages("n1", &b[1..], WANT, 1_000, &l).is_err());
        assert!(check_boot_stages("n1", &b, &WANT[..3], 1_000, &l).is_err());
        let mut swapped = b.clone();
        swapped.swap(0, 1);
        assert!(check_boot_stages("n1", &swapped, WANT, 0, &l).is_err());
        // Stages of an earlier boot, a logout before its login, an unnumbered logout of
        // this boot's session, a stage serve did not log.
        assert!(check_boot_stages("n1", &b, WANT, 5_000, &l).is_err());
        let mut early = b.clone();
        early.insert(2, stage("iscsi-logout-1", 2_500, "4000 x"));
        assert!(check_boot_stages("n1", &early, WANT, 1_000, &log(&early)).is_err());
        let mut unnumbered = b.clone();
        unnumbered.push(stage("iscsi-logout", 9_600, "4000 reset"));
        assert!(check_boot_stages("n1", &unnumbered, WANT, 1_000, &log(&unnumbered)).is_err());
        assert!(check_boot_stages("n1", &b, WANT, 1_000, &log(&b[..4])).is_err());
        assert!(check_boot_stages("n2", &b, WANT, 1_000, &l).is_err());
    }
}
