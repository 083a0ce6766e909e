//! `bootd image capture`: a node's disk, written through its own iSCSI session to
//! serve, stored as a new image with the node's identity scrubbed; refused while the
//! node is logged in; the source node's disk and state untouched. Also what capture
//! must refuse on disks it cannot scrub safely.
//!
//! The host has no kernel iSCSI initiator here (no iscsi_tcp), so the node is QEMU's
//! libiscsi initiator logging in as the node: the test changes a copy of the root file
//! system with debugfs and writes the changed chunks through the live session, as a
//! node writing its own files would leave them.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::process::{run, Finished};
use bootd_tests::qemu_iscsi::{Login, Session};
use bootd_tests::serve::{DataDir, Fields};
use serde_json::Value;

const CHUNK: u64 = 64 << 10;
/// A capture of the 4 GiB image takes about 20 s on this machine.
const CAPTURE_LIMIT: Duration = Duration::from_secs(300);
const TOOL_LIMIT: Duration = Duration::from_secs(120);
/// The session lock goes when serve sees the logout; qemu-io has exited by then.
const LOGOUT_LIMIT: Duration = Duration::from_secs(10);
const LIVE: &str = "has a live iSCSI session";
const HOST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n";

fn needs(test: &str, more: &[(&str, &str)]) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: capture is bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut n = Needs::new()
        .root()
        .server()
        .tool("sfdisk", "fdisk")
        .tool("debugfs", "e2fsprogs")
        .tool("mkfs.ext4", "e2fsprogs")
        .tool("fstrim", "util-linux")
        .tool("mount", "mount");
    for (tool, package) in more {
        n = n.tool(tool, package);
    }
    n.met(test)
}

/// `sfdisk --json` of `disk`: the first Linux (type 83) partition's byte offset and
/// number.
fn linux_partition(disk: &Path) -> Result<(u64, u64)> {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk), TOOL_LIMIT)?.ok()?;
    let v: Value = serde_json::from_str(&out.stdout)?;
    let parts = v["partitiontable"]["partitions"]
        .as_array()
        .context("no partitions")?;
    for (i, p) in parts.iter().enumerate() {
        if p["type"].as_str() == Some("83") {
            let start = p.u64_field("start")?;
            return Ok((start * 512, i as u64 + 1));
        }
    }
    bail!("no Linux partition in {}", out.stdout)
}

/// debugfs on the file system at `offset` of `disk` (e2fsprogs' `?offset=` device
/// syntax: no loop device).
fn debugfs(disk: &Path, offset: u64, write: bool, request: &str) -> Result<Finished> {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    cmd.args(["-R", request])
        .arg(format!("{}?offset={offset}", disk.display()));
    run(&mut cmd, TOOL_LIMIT)?.ok()
}

fn cat(disk: &Path, offset: u64, path: &str) -> Result<String> {
    Ok(debugfs(disk, offset, false, &format!("cat {path}"))?.stdout)
}

/// The 64 KiB chunks where `a` and `b` differ, reading only where `a` has data.
fn changed_chunks(a: &Path, b: &Path) -> Result<Vec<u64>> {
    let (fa, fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let len = fa.metadata()?.len();
    let (mut x, mut y) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        // SAFETY: lseek on an open descriptor; -1 (ENXIO) means no data after `pos`.
        let data = unsafe {
            libc::lseek(
                std::os::fd::AsRawFd::as_raw_fd(&fa),
                pos as libc::off_t,
                libc::SEEK_DATA,
            )
        };
        if data < 0 {
            break;
        }
        let at = data as u64 / CHUNK * CHUNK;
        fa.read_exact_at(&mut x, at)?;
        fb.read_exact_at(&mut y, at)?;
        if x != y {
            out.push(at);
        }
        pos = at + CHUNK;
    }
    Ok(out)
}

/// The Debian image `bootd image build` makes, stored as `name` in `data`: shared with
/// the other Debian tests through the cache under `build/imagebuild`, so whichever test
/// runs first builds it and the others wait for it.
fn debian_image(data: &DataDir, name: &str) -> Result<PathBuf> {
    Ok(bootd_tests::debian::build_image(data, name)?.path)
}

fn capture(data: &DataDir, node: &str, name: &str, extra: &[&str]) -> Result<Finished> {
    let mut args = vec!["image", "capture", node, name];
    args.extend(extra);
    run(&mut data.command(&args), CAPTURE_LIMIT)
}

#[test]
fn capture_keeps_the_nodes_files_and_drops_its_identity() -> Result<()> {
    let test = "capture_keeps_the_nodes_files_and_drops_its_identity";
    if !needs(
        test,
        &[
            ("qemu-io", "qemu-utils"),
            ("qemu-img", "qemu-utils"),
            ("mmdebstrap", "mmdebstrap"),
        ],
    ) {
        return Ok(());
    }
    let data = DataDir::new()?;
    let golden = debian_image(&data, "deb")?;
    let node = data.add_node("52:54:00:13:03:01", "deb", "src1")?;
    let (offset, number) = linux_partition(&golden)?;

    // The node's changes, made on a copy with debugfs: a file of its own, a machine-id
    // and an SSH host key (what a booted node has).
    let scratch = tempfile::tempdir()?;
    let disk = scratch.path().join("node.raw");
    run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&golden)
            .arg(&disk),
        TOOL_LIMIT,
    )?
    .ok()?;
    let file_text = format!("installed on src1 by test {}\n", std::process::id());
    let mid = "0123456789abcdef0123456789abcdef\n";
    for (name, text) in [
        ("file", file_text.as_str()),
        ("mid", mid),
        ("key", HOST_KEY),
    ] {
        std::fs::write(scratch.path().join(name), text)?;
    }
    let s = scratch.path().display();
    for req in [
        format!("write {s}/file /root/captured.txt"),
        "rm /etc/machine-id".to_string(),
        format!("write {s}/mid /etc/machine-id"),
        format!("write {s}/key /etc/ssh/ssh_host_test_key"),
    ] {
        debugfs(&disk, offset, true, &req)?;
    }
    ensure!(
        cat(&disk, offset, "/etc/machine-id")? == mid,
        "debugfs wrote no machine-id"
    );
    let chunks = changed_chunks(&disk, &golden)?;
    ensure!(!chunks.is_empty(), "debugfs changed nothing");

    let serve = data.serve()?;
    let login = Login::node(serve.port(), &node);
    let mut session = Session::start(&login)?;
    let f = std::fs::File::open(&disk)?;
    let mut buf = vec![0u8; CHUNK as usize];
    for (i, at) in chunks.iter().enumerate() {
        f.read_exact_at(&mut buf, *at)?;
        let src = scratch.path().join(format!("chunk{i}"));
        std::fs::write(&src, &buf)?;
        session.command(&format!("write -s {} {at} {CHUNK}", src.display()), "wrote")?;
    }

    // Logged in: refused, and nothing changed.
    let refused = capture(&data, "src1", "captured", &[])?.failed()?;
    ensure!(
        refused.stderr.contains(LIVE),
        "refusal does not say why: {refused}"
    );
    ensure!(
        data.json(&["image", "list", "--json"])?
            .as_array()
            .is_some_and(|l| l.len() == 1),
        "a refused capture stored an image"
    );
    // The session still works (serve did not let go of the node).
    session.command(&format!("read 0 {CHUNK}"), "read ")?;
    drop(session);

    let deadline = Instant::now() + LOGOUT_LIMIT;
    let out = loop {
        let out = capture(&data, "src1", "captured", &["--json"])?;
        if out.success() || !out.stderr.contains(LIVE) || Instant::now() > deadline {
            break out.ok().with_context(|| serve.log())?;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{test}: capture took {:.1}s", out.elapsed.as_secs_f64());
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| format!("{out}"))?;
    ensure!(
        v.str_field("name")? == "captured" && v.u64_field("version")? == 1,
        "{v}"
    );
    ensure!(v["scrubbed"] == Value::Bool(true), "{v}");
    ensure!(v.u64_field("root_partition")? == number, "{v}");
    ensure!(
        v.u64_field("bytes")? == std::fs::metadata(&golden)?.len(),
        "{v}"
    );
    let img = data.image("captured")?;
    ensure!(
        img.str_field("sha256")? == v.str_field("sha256")?,
        "{img} vs {v}"
    );
    let stored = PathBuf::from(v.str_field("path")?);
    let sha = bootd_tests::disk::sha256(&stored)?;
    ensure!(
        sha == v.str_field("sha256")?,
        "stored image's SHA-256 is {sha}, not {v}"
    );
    ensure!(
        v.u64_field("allocated_bytes")? < v.u64_field("bytes")? / 2,
        "the captured image is not sparse: {v}"
    );

    // What the node installed is there; who it was is not.
    ensure!(
        cat(&stored, offset, "/root/captured.txt")? == file_text,
        "the node's file is not in the captured image"
    );
    ensure!(
        cat(&stored, offset, "/etc/machine-id")?.is_empty(),
        "machine-id not emptied"
    );
    let ssh = debugfs(&stored, offset, false, "ls /etc/ssh")?.stdout;
    ensure!(
        ssh.contains("sshd_config") && !ssh.contains("ssh_host_"),
        "/etc/ssh after the scrub: {ssh}"
    );
    ensure!(
        cat(&stored, offset, "/etc/hostname")?.trim() == "localhost",
        "hostname not reset"
    );
    // No mount, loop device or work directory is left behind.
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    ensure!(
        !mounts.contains(&data.path().display().to_string()),
        "a mount is left: {mounts}"
    );
    for e in std::fs::read_dir(data.path().join("images"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        ensure!(!name.starts_with('.'), "work file left: {name}");
    }

    // The source node: back in serve, same overlay generation, its disk exactly what
    // it wrote (identity included: only the copy is scrubbed).
    let shown = data.json(&["node", "show", "src1", "--json"])?;
    ensure!(shown.str_field("state")? == "ready", "{shown}");
    ensure!(shown.u64_field("overlay_generation")? == 1, "{shown}");
    let back = scratch.path().join("back.raw");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // serve serves it again within a poll (and a check of the golden's SHA-256).
        match login.copy_to(&back) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e.context(serve.log())),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    ensure!(
        changed_chunks(&disk, &back)?.is_empty() && changed_chunks(&back, &disk)?.is_empty(),
        "the source node's disk changed"
    );
    serve.stop()?;
    Ok(())
}

/// A small disk file: an MBR table with one partition of `kind` at 1 MiB, holding an
/// ext4 made from `root` when given.
fn small_disk(dir: &Path, kind: &str, root: Option<&Path>) -> Result<PathBuf> {
    let disk = dir.join(format!("disk-{kind}.raw"));
    std::fs::File::create(&disk)?.set_len(32 << 20)?;
    let mut sfdisk = Command::new("sfdisk");
    sfdisk.arg(&disk).stdin(std::process::Stdio::piped());
    let mut child = sfdisk
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        writeln!(stdin, "label: dos\nstart=2048, type={kind}")?;
    }
    ensure!(child.wait()?.success(), "sfdisk failed");
    if let Some(root) = root {
        let part = dir.join("part.img");
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(root)
                .arg(&part)
                .arg("30M"),
            TOOL_LIMIT,
        )?
        .ok()?;
        let bytes = std::fs::read(&part)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)?
            .write_all_at(&bytes, 1 << 20)?;
    }
    Ok(disk)
}

#[test]
fn capture_refuses_disks_it_cannot_scrub_safely() -> Result<()> {
    if !needs("capture_refuses_disks_it_cannot_scrub_safely", &[]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = DataDir::new()?;

    // Windows (an NTFS partition): refused with what to do, stored as is with --no-scrub.
    let win = small_disk(dir.path(), "7", None)?;
    data.import("win", &win)?;
    data.add_node("52:54:00:13:03:02", "win", "win1")?;
    let out = capture(&data, "win1", "win-captured", &[])?.failed()?;
    ensure!(
        out.stderr.contains("--no-scrub") && out.stderr.contains("sysprep"),
        "no hint for Windows: {out}"
    );
    let out = capture(&data, "win1", "win-captured", &["--no-scrub", "--json"])?.ok()?;
    let v: Value = serde_json::from_str(&out.stdout)?;
    ensure!(v["scrubbed"] == Value::Bool(false), "{v}");
    ensure!(
        v.str_field("sha256")? == bootd_tests::disk::sha256(&win)?,
        "an unscrubbed capture of an untouched node is its image: {v}"
    );

    // A node's root whose /etc/machine-id is a symlink to a host file: scrub.sh must
    // not follow it out of the node's tree (nosymfollow), and the capture fails.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "host file\n")?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc/iscsi"))?;
    std::os::unix::fs::symlink(&victim, root.join("etc/machine-id"))?;
    let evil = small_disk(dir.path(), "83", Some(&root))?;
    data.import("evil", &evil)?;
    data.add_node("52:54:00:13:03:03", "evil", "evil1")?;
    let out = capture(&data, "evil1", "evil-captured", &[])?.failed()?;
    ensure!(
        std::fs::read_to_string(&victim)? == "host file\n",
        "the scrub followed the node's symlink to a host file: {out}"
    );
    ensure!(out.stderr.contains("scrub.sh"), "{out}");
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    ensure!(
        !mounts.contains(&data.path().display().to_string()),
        "a mount is left: {mounts}"
    );
    // Neither refusal stored an image, and the nodes are as they were.
    let list = data.json(&["image", "list", "--json"])?;
    ensure!(list.as_array().is_some_and(|l| l.len() == 3), "{list}");
    for n in ["win1", "evil1"] {
        let shown = data.json(&["node", "show", n, "--json"])?;
        ensure!(shown.str_field("state")? == "ready", "{shown}");
    }
    Ok(())
}
