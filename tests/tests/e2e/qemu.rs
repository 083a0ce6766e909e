//! QEMU's iSCSI client (qemu-io, qemu-img) and libiscsi's tools against an export:
//! CHAP, data integrity end to end, read-only exports, discovery, and the lines the
//! export prints for operators.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::cunit::{self, Outcome};
use bootd_tests::env::Needs;
use bootd_tests::export::{Export, ExportOptions, Server};
use bootd_tests::process::{run, Finished};

/// One qemu-io/qemu-img/iscsi-ls call on loopback takes well under a second.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
const LUN_BYTES: u64 = 64 << 20;
const MIB: u64 = 1 << 20;
// A 16-byte secret: RFC 7143 wants CHAP secrets of at least 12 bytes, so a target may
// rightly refuse shorter ones.
const USER: &str = "e2e-user";
const SECRET: &str = "s3cret-e2e-pass1";
const WRONG_SECRET: &str = "s3cret-e2e-pass2";

fn needs(test: &str) -> bool {
    Needs::new()
        .server()
        .tool("qemu-io", "qemu-utils")
        .tool("qemu-img", "qemu-utils")
        .tool("iscsi-ls", "libiscsi-bin")
        .tool("iscsi-test-cu", "libiscsi-bin")
        .met(test)
}

/// A sparse LUN-sized file in a fresh directory.
fn lun_file(dir: &Path) -> Result<std::path::PathBuf> {
    let file = dir.join("lun.img");
    std::fs::File::create(&file)?.set_len(LUN_BYTES)?;
    Ok(file)
}

fn qemu_io(url: &str, read_only: bool, cmds: &[&str]) -> Result<Finished> {
    let mut cmd = Command::new("qemu-io");
    if read_only {
        cmd.arg("-r");
    }
    cmd.args(["-f", "raw", url]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    run(&mut cmd, CLIENT_LIMIT)
}

fn qemu_img(args: &[&str]) -> Result<Finished> {
    run(Command::new("qemu-img").args(args), CLIENT_LIMIT)
}

/// `len` bytes of the exported file at `offset`, read behind the target's back.
fn file_bytes(file: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; usize::try_from(len)?];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn assert_filled(file: &Path, offset: u64, len: u64, byte: u8) -> Result<()> {
    let data = file_bytes(file, offset, len)?;
    if let Some(i) = data.iter().position(|&b| b != byte) {
        bail!(
            "{}: byte {} is {:#04x}, expected {byte:#04x}",
            file.display(),
            offset + i as u64,
            data[i]
        );
    }
    Ok(())
}

/// Deterministic, incompressible bytes (xorshift64), so any misplaced block shows.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn qemu_io_writes_and_reads_back_with_chap() -> Result<()> {
    if !needs("qemu_io_writes_and_reads_back_with_chap") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = lun_file(dir.path())?;
    let export = Export::start(
        &ExportOptions::new(&file, "iqn.2026-01.test.bootd:qemu-io").chap(USER, SECRET),
    )?;
    let url = export.url_with_chap(USER, SECRET);
    let last = LUN_BYTES - MIB;
    // Large writes (several R2Ts), a small unaligned one (QEMU read-modify-writes the
    // sectors around it) and the last MiB of the LUN.
    qemu_io(
        &url,
        false,
        &[
            "write -P 0xab 64k 4M",
            "write -P 0xcd 10M 512k",
            "write -P 0x5a 12583000 1000",
            &format!("write -P 0xef {last} 1M"),
        ],
    )?
    .ok()
    .with_context(|| export.log())?;
    // A new session reads it back: nothing can come from the writer's state.
    let read = qemu_io(
        &url,
        true,
        &[
            "read -P 0 0 64k",
            "read -P 0xab 64k 4M",
            &format!("read -P 0 {} 64k", 64 * 1024 + 4 * MIB),
            "read -P 0xcd 10M 512k",
            "read -P 0 12582912 88",
            "read -P 0x5a 12583000 1000",
            "read -P 0 12584000 96",
            &format!("read -P 0xef {last} 1M"),
        ],
    )?;
    ensure!(
        read.success() && !read.stdout.contains("Pattern verification failed"),
        "read-back differs: {read}\n{}",
        export.log()
    );
    // The writes landed in the exported file, where they were meant to.
    assert_filled(&file, 64 * 1024, 4 * MIB, 0xab)?;
    assert_filled(&file, 10 * MIB, 512 * 1024, 0xcd)?;
    assert_filled(&file, 12_583_000, 1000, 0x5a)?;
    assert_filled(&file, 12_582_912, 88, 0)?;
    assert_filled(&file, last, MIB, 0xef)?;
    export.shutdown()
}

#[test]
fn qemu_img_converts_to_and_from_the_lun() -> Result<()> {
    if !needs("qemu_img_converts_to_and_from_the_lun") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = lun_file(dir.path())?;
    let export = Export::start(
        &ExportOptions::new(&file, "iqn.2026-01.test.bootd:qemu-img").chap(USER, SECRET),
    )?;
    let url = export.url_with_chap(USER, SECRET);

    let info = qemu_img(&["info", "-f", "raw", &url])?.ok()?;
    ensure!(
        info.stdout.contains(&format!("({LUN_BYTES} bytes)")),
        "qemu-img info does not show {LUN_BYTES} bytes: {info}"
    );

    // Whole-disk write through the target, then read it all back through it.
    let src = dir.path().join("src.raw");
    let data = noise(usize::try_from(LUN_BYTES)?, 0x9e37_79b9_7f4a_7c15);
    std::fs::File::create(&src)?.write_all(&data)?;
    let src_s = src.to_string_lossy();
    qemu_img(&["convert", "-n", "-f", "raw", "-O", "raw", &src_s, &url])?
        .ok()
        .with_context(|| export.log())?;
    let copy = dir.path().join("copy.raw");
    let copy_s = copy.to_string_lossy();
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &url, &copy_s])?
        .ok()
        .with_context(|| export.log())?;
    qemu_img(&["compare", "-f", "raw", "-F", "raw", &src_s, &copy_s])?.ok()?;
    qemu_img(&["compare", "-f", "raw", "-F", "raw", &url, &src_s])?
        .ok()
        .with_context(|| export.log())?;
    ensure!(
        file_bytes(&file, 0, LUN_BYTES)? == data,
        "the exported file differs from what was written over iSCSI"
    );
    export.shutdown()
}

#[test]
fn chap_refuses_wrong_or_missing_credentials() -> Result<()> {
    if !needs("chap_refuses_wrong_or_missing_credentials") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = lun_file(dir.path())?;
    let export = Export::start(
        &ExportOptions::new(&file, "iqn.2026-01.test.bootd:chap").chap(USER, SECRET),
    )?;
    for (what, url) in [
        ("wrong secret", export.url_with_chap(USER, WRONG_SECRET)),
        ("unknown user", export.url_with_chap("e2e-nobody", SECRET)),
        ("no credentials", export.url()),
    ] {
        let out = qemu_io(&url, true, &["read 0 4k"])?;
        ensure!(
            !out.success(),
            "login with {what} succeeded: {out}\n{}",
            export.log()
        );
        // libiscsi names the login status; an authentication failure (0x0201) is the
        // right answer, not "target not found" or a dropped connection.
        ensure!(
            out.stderr.contains("Authentication failure")
                || out.stdout.contains("Authentication failure"),
            "login with {what} failed, but not with an authentication failure: {out}\n{}",
            export.log()
        );
    }
    // The target still serves the right credentials after the refusals.
    qemu_io(
        &export.url_with_chap(USER, SECRET),
        true,
        &["read -P 0 0 4k"],
    )?
    .ok()
    .with_context(|| export.log())?;
    export.shutdown()
}

#[test]
fn read_only_export_refuses_writes() -> Result<()> {
    if !needs("read_only_export_refuses_writes") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = lun_file(dir.path())?;
    let export =
        Export::start(&ExportOptions::new(&file, "iqn.2026-01.test.bootd:ro").read_only())?;
    let url = export.url();
    // QEMU sees the write-protect bit and refuses to open the LUN read-write.
    let out = qemu_io(&url, false, &["write -P 0x11 0 64k"])?;
    ensure!(!out.success(), "qemu-io wrote to a read-only export: {out}");
    qemu_io(&url, true, &["read -P 0 0 64k"])?.ok()?;
    // The target itself must answer writes with DATA PROTECT: libiscsi's write-protect
    // tests send them anyway (they skip when the LUN is not write-protected, which
    // counts as a failure here).
    for test in [
        "ALL.Write10.WriteProtect",
        "ALL.Write16.WriteProtect",
        "ALL.WriteSame16.WriteProtect",
        "ALL.ReadOnly.ReadOnlySBC",
    ] {
        let mut cmd = Command::new("iscsi-test-cu");
        cmd.args(["-d", "-t", test]).arg(&url);
        let out = run(&mut cmd, CLIENT_LIMIT)?;
        let report = cunit::parse(&out.stdout).with_context(|| format!("{out}"))?;
        ensure!(
            report.results.len() == 1 && report.count(Outcome::Passed) == 1,
            "{test} did not pass on a read-only export:\n{report}\n{out}\n{}",
            export.log()
        );
    }
    assert_filled(&file, 0, LUN_BYTES, 0)?;
    export.shutdown()
}

#[test]
fn discovery_lists_the_target() -> Result<()> {
    if !needs("discovery_lists_the_target") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = lun_file(dir.path())?;
    let plain = Export::start(&ExportOptions::new(&file, "iqn.2026-01.test.bootd:disc"))?;
    let chap_file = dir.path().join("chap.img");
    std::fs::File::create(&chap_file)?.set_len(LUN_BYTES)?;
    let chap = Export::start(
        &ExportOptions::new(&chap_file, "iqn.2026-01.test.bootd:disc-chap").chap(USER, SECRET),
    )?;
    let chap_portal = format!("iscsi://{USER}%{SECRET}@127.0.0.1:{}", chap.port());
    for (export, portal) in [(&plain, plain.portal_url()), (&chap, chap_portal)] {
        let out = run(Command::new("iscsi-ls").args(["-s", &portal]), CLIENT_LIMIT)?
            .ok()
            .with_context(|| export.log())?;
        let target = format!("Target:{} Portal:127.0.0.1:{}", export.iqn(), export.port());
        ensure!(out.stdout.contains(&target), "no `{target}` in {out}");
        let lun = format!("Lun:{}", export.lun());
        ensure!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&lun) && l.contains("DIRECT_ACCESS")),
            "no disk at {lun} in {out}"
        );
    }
    plain.shutdown()?;
    chap.shutdown()
}

#[test]
fn export_prints_a_sanboot_line() -> Result<()> {
    if Server::from_env() != Server::Bootd {
        println!("export_prints_a_sanboot_line: only bootd prints a sanboot line");
        return Ok(());
    }
    if !Needs::new().server().met("export_prints_a_sanboot_line") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = lun_file(dir.path())?;
    let iqn = "iqn.2026-01.test.bootd:sanboot";
    let export = Export::start(&ExportOptions::new(&file, iqn))?;
    let line = export.sanboot().unwrap_or_default();
    // iPXE's form: iscsi:<server>:[<protocol>]:[<port>]:[<lun>]:<target iqn>
    let uri = line
        .split_whitespace()
        .find(|w| w.starts_with("iscsi:"))
        .with_context(|| format!("no iscsi: URI in {line:?}"))?;
    let fields: Vec<&str> = uri["iscsi:".len()..].splitn(5, ':').collect();
    let port = export.port().to_string();
    ensure!(
        matches!(fields.as_slice(),
            [server, proto, p, lun, target]
                if *server == "127.0.0.1" && ["", "6"].contains(proto) && *p == port
                    && ["", "0"].contains(lun) && *target == iqn),
        "{line:?} is not `sanboot iscsi:127.0.0.1::{port}:0:{iqn}`"
    );
    // Stopping right after the ready lines: by then SIGTERM must already mean "flush
    // and exit 0", not the default kill.
    export.shutdown()
}
