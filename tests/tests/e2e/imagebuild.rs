//! `bootd image build --rootfs TAR`: a golden image from a root file system tarball as
//! `docker export`/`podman export` write them (Warewulf's container workflow). The
//! tarball is made with mmdebstrap (`--variant=apt`, the host's apt sources) plus the
//! leftovers a Docker image carries (/.dockerenv, a policy-rc.d that denies service
//! starts, docker's apt and dpkg snippets); both it and the built disk are cached under
//! `build/imagebuild-rootfs/`, keyed by their inputs. The disk is then checked
//! structurally (imagecheck.rs): partition table, GRUB in the MBR gap and on the ESP,
//! kernel, an initramfs that logs in through the iBFT, no identity, no container
//! leftovers. Tarballs that are not a root file system, or have no apt, are refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bootd_tests::bootd::workspace_root;
use bootd_tests::disk::sha256;
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::imagecheck::{self, initramfs_files, RootFs};
use bootd_tests::process::run;
use bootd_tests::serve::{DataDir, Fields};

/// An uncached build on 2 shared cores took 2–6 min; allow a slow archive.
const BUILD_LIMIT: Duration = Duration::from_secs(1800);
const TAR_LIMIT: Duration = Duration::from_secs(900);
const REFUSE_LIMIT: Duration = Duration::from_secs(120);
const SUITE: &str = "bookworm";

/// What a Docker image of Debian adds on top of a plain root file system.
const DOCKER_LEFTOVERS: &str = r#"touch "$1/.dockerenv"
printf '#!/bin/sh\nexit 101\n' >"$1/usr/sbin/policy-rc.d"
chmod 755 "$1/usr/sbin/policy-rc.d"
echo force-unsafe-io >"$1/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
echo 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };' >"$1/etc/apt/apt.conf.d/docker-clean""#;

/// The host's apt sources when the host runs SUITE (as build.sh chooses them: the only
/// archive this machine is known to reach), else none (mmdebstrap's default archive).
fn host_sources() -> Option<PathBuf> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = format!("VERSION_CODENAME={SUITE}");
    if !os.lines().any(|l| l.trim() == codename) {
        return None;
    }
    [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
}

/// The container-export-like tarball, made once per recipe, sources and mmdebstrap.
fn container_tarball(cache: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(cache)?;
    let sources = host_sources();
    let mut key = format!("{SUITE}\n{DOCKER_LEFTOVERS}\n");
    if let Some(s) = &sources {
        key.push_str(&std::fs::read_to_string(s)?);
    }
    let version = run(Command::new("mmdebstrap").arg("--version"), REFUSE_LIMIT)?.ok()?;
    key.push_str(&version.stdout);
    let key_file = cache.join("rootfs.key");
    std::fs::write(&key_file, key)?;
    let key = sha256(&key_file)?;
    let tar = cache.join(format!("rootfs-{}.tar", &key[..16]));
    if tar.is_file() {
        return Ok(tar);
    }
    let tmp = cache.join("rootfs.tar.tmp");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--mode=root", "--variant=apt", "--format=tar"])
        .arg(format!("--customize-hook={DOCKER_LEFTOVERS}"))
        .arg(SUITE)
        .arg(&tmp);
    if let Some(s) = &sources {
        cmd.arg(s);
    }
    run(&mut cmd, TAR_LIMIT)?
        .ok()
        .context("mmdebstrap of the tarball")?;
    std::fs::rename(&tmp, &tar)?;
    Ok(tar)
}

/// A tarball of `dir`'s contents.
fn tar_of(dir: &Path, out: &Path) -> Result<()> {
    run(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .arg("."),
        REFUSE_LIMIT,
    )?
    .ok()?;
    Ok(())
}

#[test]
fn image_build_from_a_container_tarball() -> Result<()> {
    let test = "image_build_from_a_container_tarball";
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: image build is bootd's own (BOOTD_TEST_TARGET)");
        return Ok(());
    }
    let mut needs = Needs::new()
        .root()
        .server()
        .tool("mmdebstrap", "mmdebstrap")
        .tool("busybox", "busybox-static")
        .tool("sfdisk", "fdisk")
        .tool("mkfs.fat", "dosfstools");
    for (tool, package) in imagecheck::TOOLS {
        needs = needs.tool(tool, package);
    }
    if !needs.met(test) {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let w = work.path();
    let data = DataDir::new()?;

    // Refused before any apt: not a root file system; a root file system without apt.
    let junk = w.join("junk");
    std::fs::create_dir_all(junk.join("docs"))?;
    std::fs::write(junk.join("docs/readme"), "not a system")?;
    tar_of(&junk, &w.join("junk.tar"))?;
    let busy = w.join("busybox");
    for d in ["etc", "usr/bin", "bin"] {
        std::fs::create_dir_all(busy.join(d))?;
    }
    let bb = bootd_tests::env::which("busybox").context("busybox")?;
    std::fs::copy(&bb, busy.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", busy.join("bin/sh"))?;
    tar_of(&busy, &w.join("busybox.tar"))?;
    for (tar, want) in [
        ("junk.tar", "is not a root file system"),
        ("busybox.tar", "has no apt-get"),
    ] {
        let tar = w.join(tar);
        let out = run(
            &mut data.command(&[
                "image",
                "build",
                "refused",
                "--rootfs",
                &tar.to_string_lossy(),
            ]),
            REFUSE_LIMIT,
        )?
        .failed()?;
        ensure!(out.stderr.contains(want), "{tar:?}: want {want:?} in {out}");
    }
    ensure!(
        data.image("refused").is_err(),
        "a refused build stored an image"
    );

    let cache = workspace_root().join("build/imagebuild-rootfs");
    let _one = bootd_tests::debian::one_build_at_a_time();
    let tar = container_tarball(&cache)?;
    let out = run(
        &mut data.command(&[
            "image",
            "build",
            "fromtar",
            "--rootfs",
            &tar.to_string_lossy(),
            "--cache",
            &cache.to_string_lossy(),
        ]),
        BUILD_LIMIT,
    )?
    .ok()?;
    println!("{test}: {}", out.stdout.trim());
    let image = data.image("fromtar")?;
    let disk = PathBuf::from(image.str_field("path")?);

    imagecheck::check_mbr_and_grub_core(&disk)?;
    imagecheck::check_esp(&disk, w)?;
    let root = RootFs::extract(&disk, w)?;
    let boot = root.ls("/boot")?;
    let kernel = boot
        .iter()
        .find_map(|n| n.strip_prefix("vmlinuz-"))
        .with_context(|| format!("no kernel in /boot: {boot:?}"))?;
    ensure!(
        root.read(&format!("/boot/vmlinuz-{kernel}"), w)?.len() > 1 << 20,
        "the kernel is too small"
    );
    let initrd = root.read(&format!("/boot/initrd.img-{kernel}"), w)?;
    let files = initramfs_files(&initrd, w)?;
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b);
    let auto = file("etc/iscsi.initramfs").context("initramfs without etc/iscsi.initramfs")?;
    ensure!(
        String::from_utf8_lossy(auto).contains("ISCSI_AUTO=true"),
        "the initramfs's iscsi.initramfs does not switch on the iBFT login"
    );
    // No initiator name of the build's: it would be every node's (open-iscsi's
    // postinst makes a random one unless the file exists before it runs).
    let name = file("etc/initiatorname.iscsi").context("no etc/initiatorname.iscsi")?;
    let name = String::from_utf8_lossy(name);
    ensure!(
        name.contains("GenerateName=yes") && !name.contains("InitiatorName="),
        "the initramfs carries a build-time initiator name: {name:?}"
    );
    ensure!(
        files.iter().any(|(n, _)| n.ends_with("sbin/iscsistart")),
        "no iscsistart in the initramfs"
    );
    ensure!(
        files.iter().any(|(n, _)| n.ends_with("/iscsi_ibft.ko")),
        "no iscsi_ibft module in the initramfs"
    );
    ensure!(
        root.exists("/boot/grub/grub.cfg")? && root.exists("/boot/grub/i386-pc/normal.mod")?,
        "no GRUB config or modules under /boot/grub"
    );
    ensure!(
        root.read("/etc/machine-id", w)?.is_empty(),
        "machine-id not empty"
    );
    let keys: Vec<_> = root
        .ls("/etc/ssh")?
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    ensure!(keys.is_empty(), "SSH host keys in the image: {keys:?}");
    ensure!(
        !root.exists("/var/lib/cloud")? || root.ls("/var/lib/cloud")?.is_empty(),
        "cloud-init state in the image"
    );
    // Size: dpkg's path-exclude left licences, no docs or manual pages, in packages
    // installed by the build and in the tarball's own.
    for pkg in ["systemd", "apt", "bash"] {
        let doc = root.ls(&format!("/usr/share/doc/{pkg}"))?;
        ensure!(doc == ["copyright"], "/usr/share/doc/{pkg}: {doc:?}");
    }
    ensure!(
        !root.exists("/usr/share/man")? || root.ls("/usr/share/man")?.is_empty(),
        "manual pages in the image"
    );
    ensure!(
        root.exists("/etc/dpkg/dpkg.cfg.d/bootd-nodoc")?,
        "no dpkg path-exclude file in the image"
    );
    let fstab = String::from_utf8_lossy(&root.read("/etc/fstab", w)?).to_string();
    ensure!(fstab.contains(" / ext4 "), "fstab has no root: {fstab:?}");
    // bootd runs with umask 077; the image's own files must still be world-readable.
    for f in [
        "/etc/fstab",
        "/etc/hosts",
        "/etc/hostname",
        "/boot/grub/grub.cfg",
    ] {
        let (stat, _) = root.debugfs(&format!("stat {f}"))?;
        ensure!(stat.contains("Mode:  0644"), "{f} is not 0644: {stat}");
    }
    let (init, _) = root.debugfs("stat /usr/sbin/init")?;
    ensure!(
        init.contains("systemd"),
        "/sbin/init is not systemd: {init}"
    );
    for gone in [
        "/.dockerenv",
        "/usr/sbin/policy-rc.d",
        "/etc/apt/apt.conf.d/docker-clean",
        "/etc/dpkg/dpkg.cfg.d/docker-apt-speedup",
        "/etc/resolv.conf",
    ] {
        ensure!(!root.exists(gone)?, "{gone} left in the image");
    }
    Ok(())
}
