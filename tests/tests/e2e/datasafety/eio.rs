//! EIO from the overlays' file system: a failed sync fails the overlay until reopened.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use bootd_tests::disk::Fill;
use bootd_tests::env::e2e_required;
use bootd_tests::faults::{in_private_mounts, move_entries, FailFs, PYTHON};
use bootd_tests::overlay::qemu_img_check;
use bootd_tests::qemu_iscsi::{Login, CLIENT_LIMIT};
use bootd_tests::serve::Serve;
use bootd_tests::writeback::{parse_sense, scattered, Writer};

use super::{
    expect_sense, needs, seed, sense_lines, Setup, BLOCK, CLUSTER, GOLDEN_BYTES, KIB, MIB,
};

/// The overlays directory on `tests/faults/failfs.py` (FUSE, passthrough to a directory
/// on the real disk). Writes flushed before the fault; then fsync fails with EIO: the
/// flush gets a MEDIUM ERROR, and from then on every read and write of the node does
/// (sense key 3; 0C/00 for writes, 11/00 for reads), also after the fault is cleared,
/// as long as the overlay stays open. After serve's restart the overlay opens, reads
/// everything flushed before the fault, and `qemu-img check` is clean.
#[test]
fn eio_fails_the_overlay_until_reopened() -> Result<()> {
    const TEST: &str = "eio_fails_the_overlay_until_reopened";
    if !needs(TEST, true) {
        return Ok(());
    }
    if !FailFs::available() {
        let why = format!(
            "{} cannot import fusepy (Debian package python3-fusepy)",
            PYTHON
        );
        if e2e_required() {
            panic!("{TEST}: BOOTD_E2E=1 but {why} (scripts/install-test-deps.sh installs it)");
        }
        println!("{TEST}: skipped: {why}");
        return Ok(());
    }
    let seed = seed(TEST);
    in_private_mounts(move || eio(seed))
}

fn eio(seed: u64) -> Result<()> {
    const TEST: &str = "eio";
    let started = Instant::now();
    let setup = Setup::new(GOLDEN_BYTES, seed)?;
    let node = &setup.node;
    let backing = setup.work.path().join("backing");
    std::fs::create_dir(&backing)?;
    move_entries(&setup.overlays(), &backing)?;
    let fs = FailFs::mount(&backing, &setup.overlays(), &setup.work.path().join("fail"))?;
    let serve = setup.data.serve()?;
    let login = Login::node(serve.port(), node);
    let ctx = |serve: &Serve| format!("{}\n{}", serve.log(), fs.log());

    // Flushed before the fault: a MiB, an unaligned run, and scattered blocks.
    let mut before = vec![
        Fill::new(2 * MIB, MIB, 0x51),
        Fill::new(9 * MIB + 1000, 70_000, 0x52),
    ];
    // Scattered below 32 MiB: the writes during the fault (40 MiB and up) must not
    // cover them, or a write that legitimately landed after them would look like a loss.
    before.extend(scattered(
        64,
        BLOCK,
        (16 * MIB, 32 * MIB),
        CLUSTER,
        &mut BTreeSet::new(),
        0x60,
        seed,
    )?);
    let out = Writer::start(&login, &before, true)?.finish(CLIENT_LIMIT)?;
    ensure!(
        out.code == Some(0) && out.unacked.is_empty(),
        "writes before the fault failed: {}\n{}",
        out.log,
        ctx(&serve)
    );

    // The fault: every fsync fails. Writes may still be acknowledged (write-back), but
    // the flush must fail, with a medium error.
    fs.fail(&["fsync"])?;
    let during = [
        Fill::new(40 * MIB, 256 * KIB, 0x71),
        Fill::new(50 * MIB + 4096, BLOCK, 0x72),
    ];
    let out = Writer::start(&login, &during, true)?.finish(CLIENT_LIMIT)?;
    let flush_failed: Vec<&str> = out
        .sense_lines()
        .into_iter()
        .filter(|l| l.contains("SYNCHRONIZECACHE"))
        .collect();
    ensure!(
        out.code != Some(0) && !flush_failed.is_empty(),
        "the flush during an fsync fault did not fail (exit {:?}; {} injected EIOs)\n{}\n{}",
        out.code,
        fs.injected(),
        out.log,
        ctx(&serve)
    );
    expect_sense("flush during the fault", &flush_failed, 0x3, None)?;
    ensure!(
        fs.injected() > 0,
        "no fsync reached failfs\n{}",
        ctx(&serve)
    );

    // The overlay is failed: reads and writes get medium errors, even of data that was
    // durable long before, and even once the fault is gone.
    for healed in [false, true] {
        if healed {
            fs.heal()?;
        }
        let read = login.qemu_io(&[before[0].read_cmd()])?;
        expect_sense(
            &format!("read, fault healed: {healed}"),
            &sense_lines(&read),
            0x3,
            Some(0x11),
        )
        .with_context(|| format!("{read}\n{}", ctx(&serve)))?;
        ensure!(
            !read.success(),
            "read succeeded on a failed overlay: {read}"
        );
        let write = login.qemu_io(&[Fill::new(60 * MIB, BLOCK, 0x73).write_cmd()])?;
        let lines: Vec<&str> = sense_lines(&write)
            .into_iter()
            .filter(|l| l.contains("WRITE"))
            .collect();
        expect_sense(
            &format!("write, fault healed: {healed}"),
            &lines,
            0x3,
            Some(0x0c),
        )
        .with_context(|| format!("{write}\n{}", ctx(&serve)))?;
        ensure!(
            !write.success(),
            "write succeeded on a failed overlay: {write}"
        );
    }
    // serve stops, and says in its exit status that an overlay could not be
    // flushed (its log has the node's name).
    let (status, log) = serve.stop_status()?;
    ensure!(
        !status.success() && log.contains("could not be flushed"),
        "serve exited {status} with a failed overlay it could not flush\n{log}"
    );

    let serve = setup.data.serve()?;
    let login = Login::node(serve.port(), node);
    // The writes during the fault were acknowledged, but their flush failed: the
    // initiator knows they may be gone. Each 4 KiB block either landed whole or not at
    // all; the write refused on the failed overlay must not have landed.
    let v = setup.judge_disk(&login, &before, &during)?;
    ensure!(
        v.lost.is_empty() && v.garbage.is_empty(),
        "after the fault and a restart: {} of {} writes flushed before the fault lost (first {:?}); \
         changed bytes nobody wrote at {:?}\n{}",
        v.lost.len(),
        before.len(),
        v.lost.first(),
        v.garbage,
        ctx(&serve)
    );
    // And it works again.
    let again = Fill::new(60 * MIB, BLOCK, 0x74);
    login
        .qemu_io_ok(&[again.write_cmd(), "flush".into(), again.read_cmd()])
        .with_context(|| ctx(&serve))?;
    serve.stop()?;
    let check = qemu_img_check(&node.overlay_path, false)?;
    println!(
        "{TEST}: flush failed with {:?}; {} EIOs injected; {} of {} writes of the failed flush \
         landed; qemu-img check: {check}; {:.1}s",
        flush_failed.first().and_then(|l| parse_sense(l)),
        fs.injected(),
        v.landed_unacked,
        during.len(),
        started.elapsed().as_secs_f64()
    );
    drop(fs);
    Ok(())
}

/// EIO from `write(2)`: first of every write (data and write-ahead log alike), then of
/// the write-ahead log's writes only (the data lands, the record that makes it
/// reachable does not). Writes to new clusters and over allocated ones. A write whose
/// data could not be written must fail with a MEDIUM ERROR (sense key 3); any write
/// acknowledged GOOD must read back after the fault is cleared and serve restarted;
/// everything flushed before reads back, each block of a failed write landed whole or
/// not at all, and the overlay checks clean.
#[test]
fn eio_on_write_is_never_acknowledged() -> Result<()> {
    const TEST: &str = "eio_on_write_is_never_acknowledged";
    if !needs(TEST, true) {
        return Ok(());
    }
    if !FailFs::available() {
        let why = format!("{PYTHON} cannot import fusepy (Debian package python3-fusepy)");
        if e2e_required() {
            panic!("{TEST}: BOOTD_E2E=1 but {why} (scripts/install-test-deps.sh installs it)");
        }
        println!("{TEST}: skipped: {why}");
        return Ok(());
    }
    let seed = seed(TEST);
    in_private_mounts(move || eio_on_write(seed, "write"))?;
    in_private_mounts(move || eio_on_write(seed, "write:.wal"))
}

fn eio_on_write(seed: u64, fault: &str) -> Result<()> {
    let test = format!("eio_on_write ({fault})");
    let started = Instant::now();
    let setup = Setup::new(GOLDEN_BYTES, seed)?;
    let node = &setup.node;
    let backing = setup.work.path().join("backing");
    std::fs::create_dir(&backing)?;
    move_entries(&setup.overlays(), &backing)?;
    let fs = FailFs::mount(&backing, &setup.overlays(), &setup.work.path().join("fail"))?;
    let serve = setup.data.serve()?;
    let login = Login::node(serve.port(), node);
    let ctx = |serve: &Serve| format!("{}\n{}", serve.log(), fs.log());

    let mut taken = BTreeSet::new();
    let before = scattered(
        32,
        BLOCK,
        (0, GOLDEN_BYTES),
        CLUSTER,
        &mut taken,
        0x40,
        seed,
    )?;
    let out = Writer::start(&login, &before, true)?.finish(CLIENT_LIMIT)?;
    ensure!(
        out.code == Some(0) && out.unacked.is_empty(),
        "writes before the fault failed: {}\n{}",
        out.log,
        ctx(&serve)
    );

    fs.fail(&[fault])?;
    // New clusters, and blocks inside clusters the overlay already holds.
    let mut during = scattered(
        8,
        BLOCK,
        (0, GOLDEN_BYTES),
        CLUSTER,
        &mut taken,
        0x90,
        seed ^ 1,
    )?;
    during.extend(
        before
            .iter()
            .take(4)
            .map(|f| Fill::new(f.offset ^ BLOCK, BLOCK, 0xa0)),
    );
    let out = Writer::start(&login, &during, true)?.finish(CLIENT_LIMIT)?;
    let writes: Vec<&str> = out
        .sense_lines()
        .into_iter()
        .filter(|l| l.contains("WRITE"))
        .collect();
    if fault == "write" {
        ensure!(
            out.acked.is_empty(),
            "{} writes acknowledged GOOD while every write(2) failed: {:?}\n{}\n{}",
            out.acked.len(),
            out.acked,
            out.log,
            ctx(&serve)
        );
        expect_sense("writes during a write fault", &writes, 0x3, None)
            .with_context(|| format!("{}\n{}", out.log, ctx(&serve)))?;
    } else if !writes.is_empty() {
        expect_sense("writes during a log write fault", &writes, 0x3, None)
            .with_context(|| format!("{}\n{}", out.log, ctx(&serve)))?;
    }
    ensure!(
        fs.injected() > 0,
        "no write reached failfs's fault\n{}",
        ctx(&serve)
    );
    fs.heal()?;
    // A commit that hit the fault failed the overlay: then serve cannot flush it
    // at shutdown and says so in its exit status, and only then.
    let (status, log) = serve.stop_status()?;
    let unflushed = log.contains("closing overlay");
    ensure!(
        status.success() != unflushed,
        "serve exited {status} after a {fault} fault (overlay left unflushed: {unflushed})\n{log}"
    );

    let serve = setup.data.serve()?;
    let login = Login::node(serve.port(), node);
    // Acknowledged GOOD during the fault (only possible when the data itself landed):
    // held to the same promise as any other acknowledged write.
    let acked: Vec<Fill> = before.iter().chain(&out.acked).copied().collect();
    let v = setup.judge_disk(&login, &acked, &out.unacked)?;
    ensure!(
        v.lost.is_empty() && v.garbage.is_empty(),
        "after a {fault} fault and a restart: {} of {} acknowledged writes lost (first {:?}); \
         changed bytes nobody wrote at {:?}\n{}",
        v.lost.len(),
        acked.len(),
        v.lost.first(),
        v.garbage,
        ctx(&serve)
    );
    serve.stop()?;
    let check = qemu_img_check(&node.overlay_path, false)?;
    println!(
        "{test}: {} writes acknowledged, {} failed with {:?}; {} EIOs injected; {} of the \
         failed writes landed anyway; qemu-img check: {check}; {:.1}s",
        out.acked.len(),
        writes.len(),
        writes.first().and_then(|l| parse_sense(l)),
        fs.injected(),
        v.landed_unacked,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
