//! The Linux kernel's iSCSI initiator against an export: a TCG guest logs in with
//! open-iscsi's iscsistart (CHAP), writes a pattern with O_DIRECT, reads it back across
//! cache drops, makes, fills, remounts and checks an ext4 filesystem, and logs out.
//! Afterwards the host reads the backing file itself. The server (bootd, or tgt with
//! `BOOTD_TEST_TARGET=tgt`) listens on 192.0.2.1:3260 inside a private namespace.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::bootd::bootd_bin;
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::guest::{self, Boot, GuestImage};
use bootd_tests::netns::NetNs;
use bootd_tests::process::{run, terminate, wait_for, wait_until};

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 256 * MIB;
/// Where the guest writes its raw pattern: past the filesystem, which covers the first
/// `FS_MIB`, so mkfs cannot touch it.
const PATTERN_OFFSET_MIB: u64 = 192;
const PATTERN_MIB: u64 = 8;
const FS_MIB: u64 = 128;
/// Pattern records: 32 bytes, `"{token:<10} {index:020}\n"` (the guest's awk writes them).
const RECORD: usize = 32;
const SERVER_IP: &str = "192.0.2.1";
const PORTAL: &str = "192.0.2.1:3260";
const TAP: &str = "tap0";
const IQN: &str = "iqn.2026-01.test.bootd:kernel";
const INITIATOR: &str = "iqn.2026-01.test.bootd:kernel-guest";
const CHAP_USER: &str = "e2e-kernel";
const CHAP_SECRET: &str = "s3cret-kernel-16";
/// The guest boots in about 3 s and finishes in about 18 s under TCG on this machine;
/// its own steps time out well within this.
const GUEST_LIMIT: Duration = Duration::from_secs(120);
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(15);
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// Report lines the guest must print, in order, before its PASS.
const STEPS: &[&str] = &[
    "login ok",
    "disk /dev/",
    "pattern ",
    "raw read-back ok",
    "filesystem ok",
    "logout ok",
];

#[test]
fn kernel_initiator_raw_io_and_ext4() -> Result<()> {
    let mut needs = Needs::new().root().server().tool("debugfs", "e2fsprogs");
    for (tool, package) in guest::TOOLS {
        needs = needs.tool(tool, package);
    }
    if !needs.met("kernel_initiator_raw_io_and_ext4") {
        return Ok(());
    }
    let image = GuestImage::build()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)?.set_len(DISK_BYTES)?;
    // Tags this run's pattern: stale data from any other run cannot match it. Pids stay
    // below 2^22, so this fits the init's 10 characters.
    let token = format!("k{:x}", std::process::id());

    let ns = NetNs::new()?;
    ns.add_tap(TAP, &format!("{SERVER_IP}/24"))?;
    let server = NsServer::start(&ns, Server::from_env(), &disk, dir.path())?;

    let outcome = guest::boot(
        &ns,
        &Boot {
            image: &image,
            tap: TAP,
            params: vec![
                "bootd.ip=192.0.2.2/24".to_string(),
                format!("bootd.portal={PORTAL}"),
                format!("bootd.iqn={IQN}"),
                format!("bootd.initiator={INITIATOR}"),
                format!("bootd.chap={CHAP_USER}:{CHAP_SECRET}"),
                format!("bootd.size={DISK_BYTES}"),
                format!("bootd.token={token}"),
                format!("bootd.pattern={PATTERN_OFFSET_MIB}:{PATTERN_MIB}"),
                format!("bootd.fs_mib={FS_MIB}"),
            ],
            console: dir.path().join("console.log"),
            limit: GUEST_LIMIT,
        },
    )?;
    println!(
        "guest finished in {:.1}s against {:?}",
        outcome.elapsed.as_secs_f64(),
        server.kind
    );
    if !outcome.passed() {
        bail!("the guest did not pass\n{outcome}\n{}", server.log());
    }
    let marks = outcome.marks();
    let mut at = 0;
    for step in STEPS {
        let found = marks[at..].iter().position(|m| m.starts_with(step));
        ensure!(
            found.is_some(),
            "no {step:?} report (in order) before PASS\n{outcome}"
        );
        at += found.unwrap_or(0) + 1;
    }
    let disk_line = outcome.mark("disk /dev/").unwrap_or_default();
    ensure!(
        disk_line.ends_with(&format!(" {DISK_BYTES} bytes")),
        "guest saw the wrong size: {disk_line}"
    );

    // The server must flush and exit cleanly before the file is read behind its back.
    server.shutdown()?;
    drop(ns);

    let want = pattern(&token, PATTERN_MIB * MIB);
    let got = read_at(&disk, PATTERN_OFFSET_MIB * MIB, want.len())?;
    if let Some(i) = (0..want.len())
        .step_by(RECORD)
        .find(|&i| got[i..i + RECORD] != want[i..i + RECORD])
    {
        bail!(
            "backing file differs from the guest's pattern at byte {}: {:?} instead of {:?}",
            PATTERN_OFFSET_MIB * MIB + i as u64,
            String::from_utf8_lossy(&got[i..i + RECORD]),
            String::from_utf8_lossy(&want[i..i + RECORD])
        );
    }
    check_filesystem(&disk, &token, &want)?;
    Ok(())
}

/// What the guest's awk writes: `len` bytes of 32-byte records.
fn pattern(token: &str, len: u64) -> Vec<u8> {
    let records = len / RECORD as u64;
    let mut out = String::with_capacity(usize::try_from(len).unwrap_or_default());
    for i in 0..records {
        out.push_str(&format!("{token:<10} {i:020}\n"));
    }
    out.into_bytes()
}

fn read_at(file: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)
        .with_context(|| format!("reading {len} bytes at {offset} of {}", file.display()))?;
    Ok(buf)
}

/// The ext4 the guest left in the file's first `FS_MIB`: clean by the host's e2fsck,
/// holding the files the guest wrote (read with debugfs, no mount needed).
fn check_filesystem(disk: &Path, token: &str, pattern: &[u8]) -> Result<()> {
    run(Command::new("e2fsck").args(["-fn"]).arg(disk), TOOL_LIMIT)?
        .ok()
        .context("host e2fsck of the guest's filesystem")?;
    let cat = |path: &str| -> Result<Vec<u8>> {
        let mut cmd = Command::new("debugfs");
        cmd.args(["-R", &format!("cat {path}")]).arg(disk);
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .context("running debugfs")?;
        ensure!(out.status.success(), "debugfs cat {path}: {}", out.status);
        Ok(out.stdout)
    };
    ensure!(
        cat("/pattern.bin")? == pattern,
        "/pattern.bin in the guest's filesystem differs from the pattern"
    );
    for i in [1, 33, 64] {
        let got = cat(&format!("/small/f{i}"))?;
        let want = format!("file {i} of {token}\n");
        ensure!(
            got == want.as_bytes(),
            "/small/f{i} holds {:?}, expected {want:?}",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(())
}

/// The export server, running inside the namespace on `PORTAL`.
struct NsServer {
    kind: Server,
    child: Option<Child>,
    log_path: PathBuf,
    /// tgt: the tgtadm command prefix (inside the namespace, with its control port).
    tgtadm: Option<(String, String)>,
}

impl NsServer {
    fn start(ns: &NetNs, kind: Server, disk: &Path, dir: &Path) -> Result<Self> {
        let mut server = Self {
            kind,
            child: None,
            log_path: dir.join("server.log"),
            tgtadm: None,
        };
        let ready = match kind {
            Server::Bootd => server.start_bootd(ns, disk, dir),
            Server::Tgt => server.start_tgt(ns, disk),
        };
        ready.with_context(|| server.log())?;
        Ok(server)
    }

    fn spawn(&mut self, mut cmd: Command) -> Result<()> {
        let log = std::fs::File::create(&self.log_path)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning the export server")?;
        self.child = Some(child);
        Ok(())
    }

    /// The server's exit status if it has already exited.
    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("no server process"),
        }
    }

    /// bootd prints `iscsi://ADDR:PORT/IQN/0` and then the `sanboot` line once it listens.
    fn start_bootd(&mut self, ns: &NetNs, disk: &Path, dir: &Path) -> Result<()> {
        let data = dir.join("bootd-data");
        std::fs::create_dir_all(&data)?;
        let mut cmd = ns.command(bootd_bin()?);
        cmd.env("BOOTD_DATA_DIR", &data)
            .arg("export")
            .arg(disk)
            .args(["--listen", PORTAL, "--iqn", IQN])
            .arg("--chap")
            .arg(format!("{CHAP_USER}:{CHAP_SECRET}"));
        self.spawn(cmd)?;
        let url = format!("iscsi://{PORTAL}/{IQN}/0");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let mut lines = text.lines().skip_while(|l| !l.starts_with("iscsi://"));
            if let (Some(first), Some(next)) = (lines.next(), lines.next()) {
                ensure!(first == url, "bootd printed {first:?}, expected {url:?}");
                ensure!(
                    next.starts_with("sanboot "),
                    "no sanboot line after the URL"
                );
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!("bootd export exited early: {status}");
            }
            ensure!(
                Instant::now() < deadline,
                "bootd export printed no URL within {}s",
                START_LIMIT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// tgtd with its own control port (which names a unix socket shared by every
    /// namespace: another run may hold one, so try a few), configured with tgtadm.
    fn start_tgt(&mut self, ns: &NetNs, disk: &Path) -> Result<()> {
        let mut attempt = 0;
        loop {
            let ctl = tgt_control_port(attempt);
            attempt += 1;
            // A live tgtd answers on its socket; tgtadm must never configure another's.
            let socket = format!("/var/run/tgtd/socket.{ctl}");
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                ensure!(attempt < 16, "no free tgtd control port");
                continue;
            }
            let ctl = ctl.to_string();
            let mut cmd = ns.command("tgtd");
            cmd.args(["-f", "-C", &ctl, "--iscsi"])
                .arg(format!("portal={PORTAL}"));
            self.spawn(cmd)?;
            self.tgtadm = Some((ns.name().to_string(), ctl));
            let deadline = Instant::now() + START_LIMIT;
            while self
                .tgtadm_run(&["--mode", "target", "--op", "show"])
                .is_err()
            {
                if let Some(status) = self.exited()? {
                    let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                    ensure!(
                        log.contains("another tgtd") && attempt < 16,
                        "tgtd exited: {status}"
                    );
                    break;
                }
                ensure!(Instant::now() < deadline, "tgtd did not answer tgtadm");
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.exited()?.is_none() {
                break;
            }
        }
        let disk = disk.to_string_lossy();
        for args in [
            &[
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                "1",
                "--targetname",
                IQN,
            ][..],
            &[
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                "1",
                "--lun",
                "1",
                "--backing-store",
                &disk,
            ],
            &[
                "--mode",
                "account",
                "--op",
                "new",
                "--user",
                CHAP_USER,
                "--password",
                CHAP_SECRET,
            ],
            &[
                "--mode", "account", "--op", "bind", "--tid", "1", "--user", CHAP_USER,
            ],
            &[
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                "1",
                "--initiator-address",
                "ALL",
            ],
        ] {
            self.tgtadm_run(args)?;
        }
        Ok(())
    }

    fn tgtadm_run(&self, args: &[&str]) -> Result<()> {
        let Some((ns, ctl)) = &self.tgtadm else {
            bail!("not tgt");
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "tgtadm", "-C", ctl, "--lld", "iscsi"])
            .args(args);
        run(&mut cmd, TOOL_LIMIT)?.ok().map(drop)
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        format!("--- {:?} server output ---\n{text}--- end ---", self.kind)
    }

    /// Stops the server; bootd must flush and exit 0 on SIGTERM.
    fn shutdown(mut self) -> Result<()> {
        let clean = self.stop()?;
        ensure!(clean, "the server did not exit cleanly\n{}", self.log());
        Ok(())
    }

    fn stop(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        if self.tgtadm.is_some() {
            // tgtd ignores SIGTERM while it has targets; errors mean it is already gone.
            let _ = self.tgtadm_run(&[
                "--mode", "target", "--op", "delete", "--force", "--tid", "1",
            ]);
            let _ = self.tgtadm_run(&["--mode", "sys", "--op", "delete"]);
            if wait_for(&mut child, Instant::now() + STOP_LIMIT)?.is_some() {
                return Ok(true);
            }
        }
        terminate(&child);
        Ok(wait_until(&mut child, Instant::now() + STOP_LIMIT)?.is_some_and(|s| s.success()))
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        // Errors only mean the server is already gone.
        let _ = self.stop();
    }
}

/// tgtd's control ports run from 0 to 32767 (0 is a system tgtd's). Spread runs over
/// the top of the range by pid; a taken port makes tgtd exit and the caller try the next.
fn tgt_control_port(attempt: u32) -> u32 {
    30_000 + (std::process::id().wrapping_mul(7) + attempt * 389) % 2_768
}
