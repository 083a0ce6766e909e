//! The Debian golden image `bootd image build` makes (issue 13), booted diskless in TCG
//! guests from `bootd serve --dhcp full` on a private LAN (see [`crate::diskless`]).
//!
//! The image finds serve's NoCloud seed by itself; each node's user-data (rendered by
//! serve) installs a report that runs on every boot once systemd has finished booting:
//! `BOOTD-FACT key=value` lines on the serial console (hostname, machine-id, SSH host
//! key, ...), `BOOTD-FACT done`, then a power-off.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::bootd::workspace_root;
use crate::diskless::{Firmware, PxeBoot, PxeGuest};
use crate::env::Needs;
use crate::export::Server;
use crate::guest::Outcome;
use crate::netns::NetNs;
use crate::process::run;
use crate::serve::{DataDir, Fields, Node};

/// Programs the build and the boots need on the host, with their Debian packages
/// (`bootd image build` runs mmdebstrap and makes the disk without loop devices).
pub const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.fat", "dosfstools"),
    ("mcopy", "mtools"),
    ("sfdisk", "fdisk"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("curl", "curl"),
    ("ip", "iproute2"),
];

/// serve's HTTP port: the image looks for its seed there (`image build --http-port`'s
/// default, baked into the image).
pub const SEED_PORT: &str = "8080";
/// A build from the archive takes 2-6 minutes on 2 cores; a cache hit (a copy and the
/// import's SHA-256 of 4 GiB) about 20 s.
const BUILD_LIMIT: Duration = Duration::from_secs(1200);
/// Guest RAM: Debian with cloud-init (Python) wants more than the test guest's 512 MiB.
const MEMORY_MIB: u32 = 1024;
/// From the report to QEMU's exit: the node's linger plus a shutdown under TCG.
const POWEROFF_LIMIT: Duration = Duration::from_secs(120);
/// How often the consoles are read while guests boot.
const POLL: Duration = Duration::from_millis(500);
/// The prefix of every report line.
pub const FACT: &str = "BOOTD-FACT ";

/// The build cache every run and CI share: the key is the build's inputs.
pub fn image_cache() -> PathBuf {
    workspace_root().join("build/imagebuild")
}

/// Whether everything the Debian tests need is there; skips (or fails under
/// `BOOTD_E2E=1`) if not. `more` adds test-specific tools.
pub fn can_run(test: &str, more: &[(&str, &str)]) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: serve is bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut needs = Needs::new().root().server();
    for (tool, package) in TOOLS.iter().chain(more) {
        needs = needs.tool(tool, package);
    }
    for fw in [Firmware::Bios, Firmware::Uefi] {
        for (file, package) in fw.files() {
            needs = needs.file(file, package);
        }
    }
    needs.met(test)
}

/// What `bootd image build --json` printed.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    pub allocated_bytes: u64,
    /// The build's own time (a cache hit: the copy and the import).
    pub seconds: f64,
}

/// One image build at a time in this process: the tests that build the Debian image
/// share its cache, so the second waits for the first and hits it; a build from a
/// tarball waits too (two debootstraps at once only slow each other down on 2 cores).
static BUILD: Mutex<()> = Mutex::new(());

/// Held while a test runs `bootd image build` of its own.
pub fn one_build_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    BUILD.lock().unwrap_or_else(|e| e.into_inner())
}

/// `bootd image build NAME --cache build/imagebuild --json` into `data`: built once per
/// set of inputs, then taken from the cache.
pub fn build_image(data: &DataDir, name: &str) -> Result<BuiltImage> {
    let _one = one_build_at_a_time();
    let cache = image_cache();
    let cache = cache.to_str().context("the cache path is not UTF-8")?;
    let out = run(
        &mut data.command(&["image", "build", name, "--cache", cache, "--json"]),
        BUILD_LIMIT,
    )?
    .ok()
    .context("bootd image build")?;
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| format!("{out}"))?;
    Ok(BuiltImage {
        name: v.str_field("name")?.to_string(),
        version: v.u64_field("version")?,
        path: PathBuf::from(v.str_field("path")?),
        allocated_bytes: v.u64_field("allocated_bytes")?,
        seconds: v
            .get("seconds")
            .and_then(Value::as_f64)
            .with_context(|| format!("no seconds in {v}"))?,
    })
}

/// A node's cloud-config: the boot report, plus files and commands of the test's own.
#[derive(Clone, Debug, Default)]
pub struct UserData {
    /// Seconds the node stays on after its report: a window for checks against the
    /// running node (its iSCSI session is live until it powers off).
    pub linger_secs: u32,
    /// More report lines: (key, shell command whose output is the value).
    pub facts: Vec<(String, String)>,
    /// More files (`write_files`, base64): (path, mode, content).
    pub files: Vec<(String, String, Vec<u8>)>,
    /// `runcmd` entries (shell scripts), run once on the node's first boot, before the
    /// report.
    pub runcmd: Vec<String>,
}

impl UserData {
    /// The cloud-config text, a template serve renders with the node's fields.
    pub fn render(&self) -> Result<String> {
        let mut report = String::from(
            "#!/bin/sh\n\
             # The test's boot report: facts on the serial console once systemd has\n\
             # finished booting, then a power-off.\n\
             exec >/dev/ttyS0 2>&1\n\
             state=$(timeout 900 systemctl is-system-running --wait)\n\
             f() { echo \"BOOTD-FACT $*\"; }\n\
             f \"system=$state\"\n\
             f \"rendered-name={{ name }}\"\n\
             f \"boot-id=$(cat /proc/sys/kernel/random/boot_id)\"\n\
             f \"uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
             f \"hostname=$(hostname)\"\n\
             f \"machine-id=$(cat /etc/machine-id)\"\n\
             f \"ssh-hostkey=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)\"\n\
             f \"block-devices=$(ls /sys/block | tr '\\n' ' ')\"\n",
        );
        for (key, cmd) in &self.facts {
            ensure!(
                !key.contains([' ', '=']),
                "fact key {key:?}: no spaces or ="
            );
            writeln!(report, "f \"{key}=$({cmd})\"")?;
        }
        report.push_str(
            "failed=$(systemctl --failed --no-legend --plain | cut -d' ' -f1)\n\
             f \"failed-units=$(echo $failed)\"\n\
             for u in $failed; do\n\
             \x20   journalctl -b -u \"$u\" --no-pager -o cat | tail -n 15 | sed \"s/^/BOOTD-FACT journal $u: /\"\n\
             done\n\
             f done\n",
        );
        writeln!(report, "sleep {}\nsystemctl poweroff", self.linger_secs)?;
        // cloud-final runs per-boot scripts; the report waits for the whole boot,
        // cloud-final included, so it runs as a unit of its own.
        let per_boot = "#!/bin/sh\n\
                        systemd-run --no-block --collect --unit=bootd-report /usr/local/sbin/bootd-report\n";

        let mut y = String::from("#cloud-config\nwrite_files:\n");
        write_text(&mut y, "/usr/local/sbin/bootd-report", "0755", &report);
        write_text(
            &mut y,
            "/var/lib/cloud/scripts/per-boot/bootd-report",
            "0755",
            per_boot,
        );
        for (path, mode, content) in &self.files {
            writeln!(
                y,
                "  - path: {path}\n    permissions: '{mode}'\n    encoding: b64\n    content: {}",
                base64(content)
            )?;
        }
        if !self.runcmd.is_empty() {
            y.push_str("runcmd:\n");
            for cmd in &self.runcmd {
                y.push_str("  - |\n");
                for line in cmd.lines() {
                    writeln!(y, "    {line}")?;
                }
            }
        }
        // Only `{{ name }}` is meant for the template engine.
        ensure!(
            !y.replace("{{ name }}", "").contains("{{") && !y.contains("{%") && !y.contains("{#"),
            "user-data has template syntax it does not mean:\n{y}"
        );
        Ok(y)
    }

    /// Writes the rendered text to `path`, for `node add --user-data`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.render()?).with_context(|| format!("{}", path.display()))
    }
}

fn write_text(y: &mut String, path: &str, mode: &str, text: &str) {
    y.push_str(&format!(
        "  - path: {path}\n    permissions: '{mode}'\n    content: |\n"
    ));
    for line in text.lines() {
        y.push_str("      ");
        y.push_str(line);
        y.push('\n');
    }
}

/// Standard base64 with padding (cloud-init's `encoding: b64`).
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The report of one boot: `BOOTD-FACT key=value` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub map: BTreeMap<String, String>,
    /// Every report line, as printed (without the prefix).
    pub lines: Vec<String>,
}

impl Facts {
    /// The report lines in `console` (escape sequences and carriage returns removed).
    pub fn parse(console: &str) -> Self {
        let mut facts = Self::default();
        for line in plain(console).lines() {
            let Some((_, rest)) = line.split_once(FACT) else {
                continue;
            };
            let rest = rest.trim_end();
            facts.lines.push(rest.to_string());
            if let Some((k, v)) = rest.split_once('=') {
                if !k.contains(' ') {
                    facts.map.insert(k.to_string(), v.trim().to_string());
                }
            }
        }
        facts
    }

    /// Whether the report is complete.
    pub fn done(&self) -> bool {
        self.lines.iter().any(|l| l == "done")
    }

    pub fn get(&self, key: &str) -> Result<&str> {
        self.map
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no {key}= in the report:\n  {}", self.lines.join("\n  ")))
    }
}

/// Console text without ANSI escape sequences and carriage returns.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    // CSI: parameters, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The last `n` non-blank lines of console text, escape sequences removed.
pub fn tail(text: &str, n: usize) -> String {
    let text = plain(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A machine on the LAN.
#[derive(Clone, Debug)]
pub struct Machine {
    pub name: String,
    pub mac: String,
    /// Its tap device on the LAN's bridge.
    pub tap: String,
    pub firmware: Firmware,
}

impl Machine {
    pub fn new(name: &str, mac: &str, tap: &str, firmware: Firmware) -> Self {
        Self {
            name: name.to_string(),
            mac: mac.to_string(),
            tap: tap.to_string(),
            firmware,
        }
    }

    /// `node add MAC --image IMAGE --name NAME --user-data FILE` (the file written
    /// into `dir`), then what `node show` says about it.
    pub fn add(
        &self,
        data: &DataDir,
        image: &str,
        user_data: &UserData,
        dir: &Path,
    ) -> Result<Node> {
        let file = dir.join(format!("{}.user-data", self.name));
        user_data.write(&file)?;
        let file = file.to_str().context("the user-data path is not UTF-8")?;
        data.run(&[
            "node",
            "add",
            &self.mac,
            "--image",
            image,
            "--name",
            &self.name,
            "--user-data",
            file,
        ])?;
        data.node(&self.name)
    }
}

/// One machine's boot in a round.
#[derive(Debug)]
pub struct Report {
    pub facts: Facts,
    /// Power-on to the first `login:` on its serial console.
    pub login: Option<Duration>,
    /// Power-on to its complete report.
    pub reported: Duration,
    pub outcome: Outcome,
}

/// A round of boots: where consoles go, how long a boot may take, where serve's log is.
pub struct Round<'a> {
    pub ns: &'a NetNs,
    pub dir: &'a Path,
    /// Power-on to a complete report, for every machine of the round.
    pub limit: Duration,
    pub serve_log: &'a dyn Fn() -> String,
}

impl Round<'_> {
    /// Powers `machines` on at once and waits until each has reported and powered off.
    /// `on_report(i, facts, guest)` runs as soon as machine `i` has reported, while it
    /// is still on. On failure the error carries the tail of every console and of
    /// serve's log.
    pub fn boot(
        &self,
        what: &str,
        machines: &[&Machine],
        on_report: &mut dyn FnMut(usize, &Facts, &mut PxeGuest) -> Result<()>,
    ) -> Result<Vec<Report>> {
        let boots: Vec<PxeBoot> = machines
            .iter()
            .map(|m| PxeBoot {
                firmware: m.firmware,
                tap: m.tap.clone(),
                mac: m.mac.clone(),
                console: self.dir.join(format!("{}.{what}.console", m.name)),
                limit: self.limit + POWEROFF_LIMIT,
                memory_mib: MEMORY_MIB,
                default_devices: false,
            })
            .collect();
        let mut guests = boots
            .iter()
            .map(|b| PxeGuest::start(self.ns, b))
            .collect::<Result<Vec<_>>>()?;
        let deadline = Instant::now() + self.limit;
        let mut login = vec![None; machines.len()];
        let mut reports: Vec<Option<(Facts, Duration)>> = vec![None; machines.len()];
        let diagnose = |why: String, guests: &[PxeGuest]| {
            let mut msg = format!("{what}: {why}\n");
            for (m, g) in machines.iter().zip(guests) {
                let _ = writeln!(
                    msg,
                    "--- {} ({:?}) console, last lines, {:.0}s after power-on ---\n{}",
                    m.name,
                    m.firmware,
                    g.elapsed().as_secs_f64(),
                    tail(&g.console(), 40)
                );
            }
            let _ = write!(
                msg,
                "--- serve, last lines ---\n{}\n--- end ---",
                tail(&(self.serve_log)(), 60)
            );
            anyhow!(msg)
        };
        while reports.iter().any(Option::is_none) {
            for (i, m) in machines.iter().enumerate() {
                if reports[i].is_some() {
                    continue;
                }
                let console = guests[i].console();
                if login[i].is_none() && plain(&console).contains("login:") {
                    login[i] = Some(guests[i].elapsed());
                }
                let facts = Facts::parse(&console);
                if facts.done() {
                    let at = guests[i].elapsed();
                    println!(
                        "{what}: {} ({:?}) reported {:.0}s after power-on (login prompt at {})",
                        m.name,
                        m.firmware,
                        at.as_secs_f64(),
                        login[i].map_or("-".to_string(), |d| format!("{:.0}s", d.as_secs_f64()))
                    );
                    if let Err(e) = on_report(i, &facts, &mut guests[i]) {
                        return Err(diagnose(format!("{}: {e:#}", m.name), &guests));
                    }
                    reports[i] = Some((facts, at));
                } else if !guests[i].running()? {
                    return Err(diagnose(
                        format!("{} powered off before its report", m.name),
                        &guests,
                    ));
                }
            }
            if reports.iter().any(Option::is_none) {
                if Instant::now() >= deadline {
                    return Err(diagnose(
                        format!(
                            "not every machine reported within {}s",
                            self.limit.as_secs()
                        ),
                        &guests,
                    ));
                }
                std::thread::sleep(POLL);
            }
        }
        let mut done = Vec::new();
        for ((m, guest), (report, login)) in machines
            .iter()
            .zip(guests)
            .zip(reports.into_iter().zip(login))
        {
            let (facts, reported) = report.context("a machine without a report")?;
            let outcome = guest.wait()?;
            if !outcome.status.is_some_and(|s| s.success()) {
                bail!(
                    "{what}: {} did not power off after its report ({})\n{}\n--- serve ---\n{}",
                    m.name,
                    outcome
                        .status
                        .map_or("killed at the time limit".to_string(), |s| s.to_string()),
                    tail(&outcome.console, 40),
                    tail(&(self.serve_log)(), 60)
                );
            }
            done.push(Report {
                facts,
                login,
                reported,
                outcome,
            });
        }
        Ok(done)
    }
}

/// A tiny package for a node to install (no archive is reachable from the LAN): it
/// holds `/usr/share/NAME/nonce` with `nonce` in it. Built in `dir` with dpkg-deb.
pub fn tiny_deb(dir: &Path, name: &str, nonce: &str) -> Result<Vec<u8>> {
    let root = dir.join(format!("{name}.pkg"));
    let share = root.join("usr/share").join(name);
    std::fs::create_dir_all(root.join("DEBIAN"))?;
    std::fs::create_dir_all(&share)?;
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: bootd tests <bootd@localhost>\n\
             Description: a package a node installs before it is captured\n"
        ),
    )?;
    std::fs::write(share.join("nonce"), format!("{nonce}\n"))?;
    let deb = dir.join(format!("{name}.deb"));
    run(
        std::process::Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&root)
            .arg(&deb),
        Duration::from_secs(60),
    )?
    .ok()?;
    std::fs::read(&deb).with_context(|| format!("{}", deb.display()))
}

/// GETs `url` with curl from inside `host`: (status, body).
pub fn http_get(host: &NetNs, url: &str) -> Result<(u16, String)> {
    let out = run(
        host.command("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url]),
        Duration::from_secs(20),
    )?
    .ok()?;
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .with_context(|| format!("no status line: {}", out.stdout))?;
    Ok((code.trim().parse().context("status")?, body.to_string()))
}

#[cfg(test)]
mod tests;
