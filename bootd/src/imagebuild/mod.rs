//! `bootd image build`: a Debian golden image that boots diskless through
//! bootd. `build.sh` does the work (mmdebstrap, GRUB for BIOS and UEFI, the
//! iBFT login in the initramfs, the NoCloud seed finder, identity scrubbing;
//! README.md next to it explains the design); this module runs it with its
//! files, shows its progress and imports the result like `image import`.
//! [`capture`] stores a node's disk as an image with the same scrubbing.

pub mod capture;
mod flatten;
mod partitions;

use crate::datadir::DataDir;
use crate::progress::Progress;
use crate::store::{Image, Store};
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script and everything it installs into the image, written out next to
/// each other for every build (the binary is all an operator installs).
const FILES: &[(&str, &str, u32)] = &[
    ("build.sh", include_str!("build.sh"), 0o755),
    ("files/scrub.sh", include_str!("files/scrub.sh"), 0o755),
    ("files/prepare.sh", include_str!("files/prepare.sh"), 0o755),
    (
        "files/dpkg-nodoc.cfg",
        include_str!("files/dpkg-nodoc.cfg"),
        0o644,
    ),
    ("files/iscsi-root", include_str!("files/iscsi-root"), 0o755),
    (
        "files/nocloud-seed",
        include_str!("files/nocloud-seed"),
        0o755,
    ),
    (
        "files/bootd-iscsi-root.service",
        include_str!("files/bootd-iscsi-root.service"),
        0o644,
    ),
    (
        "files/bootd-nocloud.service",
        include_str!("files/bootd-nocloud.service"),
        0o644,
    ),
    (
        "files/resolv-conf",
        include_str!("files/resolv-conf"),
        0o755,
    ),
    (
        "files/bootd-resolv.service",
        include_str!("files/bootd-resolv.service"),
        0o644,
    ),
    (
        "files/iscsi.initramfs",
        include_str!("files/iscsi.initramfs"),
        0o644,
    ),
    ("files/cloud.cfg", include_str!("files/cloud.cfg"), 0o644),
    ("files/grub.cfg", include_str!("files/grub.cfg"), 0o644),
    (
        "files/grub-early.cfg",
        include_str!("files/grub-early.cfg"),
        0o644,
    ),
    (
        "files/ssh-hostkeys.conf",
        include_str!("files/ssh-hostkeys.conf"),
        0o644,
    ),
];

/// Lines of the build's log repeated on stderr when it fails.
const TAIL_LINES: usize = 30;

pub struct BuildArgs {
    pub suite: String,
    pub bytes: u64,
    pub packages: Vec<String>,
    pub mirror: Option<String>,
    /// A root file system tarball (`podman export`, `docker export`) to start
    /// from instead of mmdebstrap.
    pub rootfs: Option<PathBuf>,
    pub http_port: u16,
    pub cache: Option<PathBuf>,
}

pub struct Built {
    pub image: Image,
    pub elapsed: Duration,
}

/// Removes the build's work directory whatever happens.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian package names: lower case, digits, `+-.`; anything else would reach
/// mmdebstrap's `--include` list (comma separated) unchecked.
pub fn check_package(p: &str) -> Result<()> {
    let mut chars = p.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || p.len() > 128
        || !p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    {
        bail!("{p:?}: not a Debian package name");
    }
    Ok(())
}

pub fn build(dd: &DataDir, store: &mut dyn Store, name: &str, args: &BuildArgs) -> Result<Built> {
    // Everything that can be refused is refused before minutes of building.
    crate::names::check_image_name("image", name)?;
    if !args.suite.chars().all(|c| c.is_ascii_lowercase()) || args.suite.is_empty() {
        bail!("{:?}: not a Debian suite name (e.g. bookworm)", args.suite);
    }
    for p in &args.packages {
        check_package(p)?;
    }
    if args.bytes < 1 << 30 {
        bail!("--size: at least 1G (the root file system holds a full Debian system)");
    }
    if args.http_port == 0 {
        bail!("--http-port: 0 is not a port");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("image build must run as root (mmdebstrap --mode=root, chroot)");
    }
    let rootfs = match &args.rootfs {
        Some(tar) => {
            if args.mirror.is_some() {
                bail!(
                    "--rootfs installs with the tarball's own apt sources; --mirror does not apply"
                );
            }
            if !tar.is_file() {
                bail!("--rootfs {}: not a file (a root file system tarball, e.g. `podman export CONTAINER >rootfs.tar`)", tar.display());
            }
            // build.sh runs with another working directory's worth of TMPDIR.
            Some(std::fs::canonicalize(tar).with_context(|| format!("{}", tar.display()))?)
        }
        None => {
            if which("mmdebstrap").is_none() {
                bail!("mmdebstrap is not installed (apt-get install mmdebstrap, or scripts/install-test-deps.sh)");
            }
            None
        }
    };

    let start = Instant::now();
    let work = WorkDir(
        dd.images()
            .join(format!(".build-{name}-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir_all(work.0.join("files"))
        .with_context(|| format!("{}", work.0.display()))?;
    for (rel, text, mode) in FILES {
        let p = work.0.join(rel);
        std::fs::write(&p, text).with_context(|| format!("{}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let out = work.0.join("disk.raw");
    run_script(&work.0, &out, args, rootfs.as_deref())?;
    let image = crate::import::import(dd, store, name, &out)?;
    Ok(Built {
        image,
        elapsed: start.elapsed(),
    })
}

fn run_script(work: &Path, out: &Path, args: &BuildArgs, rootfs: Option<&Path>) -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(work.join("build.sh"))
        .arg("--out")
        .arg(out)
        .arg("--suite")
        .arg(&args.suite)
        .arg("--bytes")
        .arg(args.bytes.to_string())
        .arg("--http-port")
        .arg(args.http_port.to_string());
    if let Some(m) = &args.mirror {
        cmd.arg("--mirror").arg(m);
    }
    if let Some(t) = rootfs {
        cmd.arg("--rootfs").arg(t);
    }
    if let Some(c) = &args.cache {
        cmd.arg("--cache").arg(c);
    }
    for p in &args.packages {
        cmd.arg("--package").arg(p);
    }
    // The root tree, partition images and the disk stay on the data
    // directory's file system, not a possibly small /tmp.
    cmd.env("TMPDIR", work)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run bash for build.sh")?;
    let log_path = work.with_extension("log");
    let mut log =
        std::fs::File::create(&log_path).with_context(|| format!("{}", log_path.display()))?;
    let bar = Progress::spinner("building");
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.unwrap_or_default();
            let _ = writeln!(log, "{line}");
            if let Some(step) = line.strip_prefix("step: ") {
                if bar.visible() {
                    bar.message(step);
                } else {
                    eprintln!("image build: {step}");
                }
            } else if bar.visible() {
                bar.tick();
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait()?;
    bar.finish();
    if !status.success() {
        for l in &tail {
            eprintln!("  {l}");
        }
        bail!(
            "image build failed ({status}); the full log is {}",
            log_path.display()
        );
    }
    let _ = std::fs::remove_file(&log_path);
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["vim", "g++", "libc6", "python3.11", "linux-image-amd64"] {
            assert!(check_package(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Vim", "-x", "a,b", "a b", "a;rm", "../x", "+a"] {
            assert!(check_package(bad).is_err(), "{bad}");
        }
    }

    type Seed = (bool, Option<String>);

    /// Runs the image's seed finder on a fake root: `/proc/cmdline`, the
    /// iBFT's target address, the baked port. Returns whether it succeeded
    /// and the seed URL it left in cloud-init's config, if any.
    fn seed(cmdline: &str, ibft_ip: Option<&str>, conf: Option<&str>) -> Result<Seed> {
        let root = tempfile::tempdir()?;
        let r = root.path();
        for d in [
            "proc",
            "etc/bootd",
            "etc/cloud/cloud.cfg.d",
            "sys/firmware/ibft/target0",
        ] {
            std::fs::create_dir_all(r.join(d))?;
        }
        std::fs::write(r.join("proc/cmdline"), cmdline)?;
        if let Some(ip) = ibft_ip {
            std::fs::write(
                r.join("sys/firmware/ibft/target0/ip-addr"),
                format!("{ip}\n"),
            )?;
        }
        if let Some(c) = conf {
            std::fs::write(r.join("etc/bootd/nocloud.conf"), c)?;
        }
        let out = r.join("etc/cloud/cloud.cfg.d/90_bootd_seed.cfg");
        // A stale file from an earlier boot: every outcome must replace or remove it.
        std::fs::write(&out, "stale")?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(include_str!("files/nocloud-seed"))
            .env("BOOTD_TEST_ROOT", r)
            .stderr(Stdio::null())
            .status()?;
        let url = std::fs::read_to_string(&out).ok().map(|t| {
            t.lines()
                .find_map(|l| l.trim().strip_prefix("seedfrom: ").map(str::to_string))
                .unwrap_or(t)
        });
        Ok((status.success(), url))
    }

    #[test]
    fn seed_url_from_the_ibft_target_and_the_baked_port() -> Result<()> {
        let ok = |url: &str| (true, Some(url.to_string()));
        let conf = Some("HTTP_PORT=8080\n");
        assert_eq!(
            seed("ro quiet", Some("192.0.2.1"), conf)?,
            ok("http://192.0.2.1:8080/nocloud/")
        );
        assert_eq!(
            seed("ro", Some("192.0.2.7"), Some("HTTP_PORT=9000\n"))?,
            ok("http://192.0.2.7:9000/nocloud/")
        );
        // No nocloud.conf: serve's default port.
        assert_eq!(
            seed("ro", Some("192.0.2.7"), None)?,
            ok("http://192.0.2.7:8080/nocloud/")
        );
        assert_eq!(
            seed("ro bootd.http_port=8081", Some("192.0.2.1"), conf)?,
            ok("http://192.0.2.1:8081/nocloud/")
        );
        assert_eq!(
            seed("ro", Some("2001:db8::1"), None)?,
            ok("http://[2001:db8::1]:8080/nocloud/")
        );
        Ok(())
    }

    #[test]
    fn seed_file_removed_when_there_is_no_usable_seed() -> Result<()> {
        let ip = Some("192.0.2.1");
        // The operator's ds=nocloud on the command line wins: no file of ours.
        assert_eq!(
            seed("ro ds=nocloud;s=http://192.0.2.9:80/x/", ip, None)?,
            (true, None)
        );
        // Not booted through an iBFT.
        assert_eq!(seed("ro", None, None)?, (true, None));
        // Garbage in the table or on the command line: refused, nothing left.
        assert_eq!(seed("ro", Some("1.2.3.4;x"), None)?, (false, None));
        for bad in ["99999", "8o", "0", ""] {
            let cmdline = format!("ro bootd.http_port={bad}");
            assert_eq!(seed(&cmdline, ip, None)?, (false, None), "{bad}");
        }
        Ok(())
    }

    /// Runs the image's resolver writer on a fake root: `/run/net-*.conf` files (name,
    /// contents), the boot NIC's name, the iBFT NIC's DNS (primary, secondary) and an
    /// earlier `/etc/resolv.conf` (a symlink target when `Link`). Returns the
    /// resolv.conf afterwards (`None`: absent; a symlink reads as `->TARGET`).
    fn resolv(
        nets: &[(&str, &str)],
        boot_if: Option<&str>,
        ibft: Option<(&str, &str)>,
        before: Before,
    ) -> Result<Option<String>> {
        let root = tempfile::tempdir()?;
        let r = root.path();
        for d in ["etc", "run/initramfs", "sys/firmware/ibft/ethernet0"] {
            std::fs::create_dir_all(r.join(d))?;
        }
        for (name, text) in nets {
            std::fs::write(r.join(format!("run/net-{name}.conf")), text)?;
        }
        if let Some(i) = boot_if {
            std::fs::write(r.join("run/initramfs/open-iscsi.interface"), i)?;
        }
        if let Some((p, s)) = ibft {
            let nic = r.join("sys/firmware/ibft/ethernet0");
            std::fs::write(nic.join("primary-dns"), format!("{p}\n"))?;
            std::fs::write(nic.join("secondary-dns"), format!("{s}\n"))?;
        }
        let out = r.join("etc/resolv.conf");
        match before {
            Before::None => {}
            Before::File(t) => std::fs::write(&out, t)?,
            Before::Link(t) => std::os::unix::fs::symlink(t, &out)?,
        }
        let status = Command::new("sh")
            .arg("-c")
            .arg(include_str!("files/resolv-conf"))
            .env("BOOTD_TEST_ROOT", r)
            .stderr(Stdio::null())
            .status()?;
        assert!(status.success(), "resolv-conf failed");
        if let Ok(t) = std::fs::read_link(&out) {
            return Ok(Some(format!("->{}", t.display())));
        }
        Ok(std::fs::read_to_string(&out).ok())
    }

    #[derive(Clone, Copy)]
    enum Before<'a> {
        None,
        File(&'a str),
        Link(&'a str),
    }

    /// What resolv-conf writes, without its first (marker) line.
    fn body(written: Option<String>) -> Option<String> {
        written.map(|t| {
            assert!(t.starts_with("# Written at boot by bootd-resolv"), "{t}");
            t.lines().skip(1).map(|l| format!("{l}\n")).collect()
        })
    }

    /// klibc ipconfig's /run/net-IFACE.conf, as the initramfs leaves it.
    fn lease(dns0: &str, dns1: &str, domain: &str) -> String {
        format!(
            "DEVICE='ens3'\nPROTO='dhcp'\nIPV4ADDR='192.0.2.100'\nIPV4DNS0='{dns0}'\n\
             IPV4DNS1='{dns1}'\nHOSTNAME=''\nDNSDOMAIN='{domain}'\nDOMAINSEARCH=''\n"
        )
    }

    #[test]
    fn resolv_conf_from_the_initramfs_lease_or_the_ibft() -> Result<()> {
        let two = lease("192.0.2.53", "192.0.2.54", "lab.example");
        assert_eq!(
            body(resolv(&[("ens3", &two)], Some("ens3"), None, Before::None)?),
            Some("search lab.example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n".into())
        );
        // ipconfig writes 0.0.0.0 for a missing second server; no domain, no search.
        let one = lease("192.0.2.53", "0.0.0.0", "");
        assert_eq!(
            body(resolv(&[("ens3", &one)], None, None, Before::None)?),
            Some("nameserver 192.0.2.53\n".into())
        );
        // The boot NIC's lease wins over another NIC's, whatever the order.
        let other = lease("198.51.100.1", "0.0.0.0", "");
        assert_eq!(
            body(resolv(
                &[("aaa0", &other), ("ens3", &one)],
                Some("ens3"),
                None,
                Before::None
            )?),
            Some("nameserver 192.0.2.53\n".into())
        );
        // No lease with DNS: the iBFT's servers.
        let none = lease("0.0.0.0", "0.0.0.0", "");
        let ibft = Some(("192.0.2.1", "0.0.0.0"));
        assert_eq!(
            body(resolv(
                &[("ens3", &none)],
                Some("ens3"),
                ibft,
                Before::None
            )?),
            Some("nameserver 192.0.2.1\n".into())
        );
        // Our own file of an earlier boot is replaced; an empty file is nobody's.
        let ours = resolv(&[("ens3", &one)], None, None, Before::None)?.unwrap_or_default();
        assert_eq!(
            body(resolv(&[("ens3", &two)], None, None, Before::File(&ours))?),
            Some("search lab.example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n".into())
        );
        assert_eq!(
            body(resolv(&[], None, ibft, Before::File(""))?),
            Some("nameserver 192.0.2.1\n".into())
        );
        Ok(())
    }

    #[test]
    fn resolv_conf_never_replaces_the_nodes_own() -> Result<()> {
        let two = lease("192.0.2.53", "192.0.2.54", "lab.example");
        let ibft = Some(("192.0.2.1", "0.0.0.0"));
        let own = "nameserver 203.0.113.9\n";
        assert_eq!(
            resolv(&[("ens3", &two)], Some("ens3"), ibft, Before::File(own))?,
            Some(own.to_string())
        );
        let stub = "../run/systemd/resolve/stub-resolv.conf";
        assert_eq!(
            resolv(&[("ens3", &two)], Some("ens3"), ibft, Before::Link(stub))?,
            Some(format!("->{stub}"))
        );
        // Nothing announced: our stale file goes, the node's own stays.
        let ours = resolv(&[("ens3", &two)], None, None, Before::None)?.unwrap_or_default();
        assert_eq!(resolv(&[], None, None, Before::File(&ours))?, None);
        assert_eq!(
            resolv(&[], None, None, Before::File(own))?,
            Some(own.into())
        );
        Ok(())
    }

    #[test]
    fn resolv_conf_ignores_what_is_not_an_address() -> Result<()> {
        for bad in [
            "1.2.3.4; touch /tmp/x",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "$(id)",
        ] {
            let l = lease(bad, "0.0.0.0", "x y;z");
            assert_eq!(
                resolv(&[("ens3", &l)], Some("ens3"), None, Before::None)?,
                None,
                "{bad}"
            );
        }
        // A bad boot-NIC name is not a path; a bad domain is dropped, the servers kept.
        let l = lease("192.0.2.53", "0.0.0.0", "bad domain;rm");
        assert_eq!(
            body(resolv(
                &[("ens3", &l)],
                Some("../../etc"),
                None,
                Before::None
            )?),
            Some("nameserver 192.0.2.53\n".into())
        );
        Ok(())
    }

    /// Every file build.sh installs from `files/` is written out with it.
    #[test]
    fn script_files_are_all_embedded() {
        let script = [include_str!("build.sh"), include_str!("files/prepare.sh")].concat();
        for word in script.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            if let Some(f) = word.strip_prefix("$FILES/") {
                let rel = format!("files/{f}");
                assert!(
                    FILES.iter().any(|(p, _, _)| *p == rel),
                    "build.sh or prepare.sh uses {rel}, not in FILES"
                );
            }
        }
    }
}
