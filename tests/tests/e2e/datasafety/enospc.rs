//! ENOSPC: the overlays directory on a small tmpfs in a private mount namespace (the
//! golden image stays on the real disk), filled by a write-back initiator.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use bootd_tests::disk::Fill;
use bootd_tests::faults::{free_bytes, in_private_mounts, mounted_at, tmpfs_over};
use bootd_tests::overlay::{qemu_img_check, qemu_img_compare};
use bootd_tests::qemu_iscsi::{Login, CLIENT_LIMIT};
use bootd_tests::serve::{DataDir, Serve, ServeOptions};
use bootd_tests::writeback::{parse_sense, scattered, Outcome, Writer};

use super::{expect_sense, needs, seed, sense_lines, Setup, CLUSTER, GOLDEN_BYTES, MIB};

/// The overlays tmpfs: room for about a third of the disk's clusters.
const TMPFS: u64 = 24 * MIB;

/// The serve flags to fill the disk under: serve's defaults, and `--reserve-free 0` (no
/// free-space reserve: the engine alone meets the full disk) where serve has that flag.
fn flag_sets() -> Result<Vec<Vec<String>>> {
    let help = DataDir::new()?.try_run(&["serve", "--help"])?;
    let mut sets = vec![Vec::new()];
    if help.stdout.contains("--reserve-free") {
        sets.push(vec!["--reserve-free".to_string(), "0".to_string()]);
    }
    Ok(sets)
}

/// A node whose overlays directory is a full tmpfs, and how it got full.
struct Full {
    /// Before `setup`: serve stops before the tmpfs goes.
    serve: Serve,
    setup: Setup,
    /// The writer of one 64 KiB write to each of the disk's 1024 clusters.
    out: Outcome,
    /// Free bytes on the tmpfs once writes failed.
    free_after: u64,
}

/// Mounts the tmpfs, starts serve and writes whole clusters (64 KiB each, in a
/// scattered order, write-back, no flush) to every cluster of the 64 MiB disk: 64 MiB
/// of data for a 24 MiB file system. Must run in a private mount namespace.
fn fill(seed: u64, flags: &[&str]) -> Result<Full> {
    let mut setup = Setup::new(GOLDEN_BYTES, seed)?;
    setup.mounts.push(tmpfs_over(&setup.overlays(), TMPFS)?);
    ensure!(
        mounted_at(&setup.overlays())?.as_deref() == Some("tmpfs"),
        "no tmpfs on {}",
        setup.overlays().display()
    );
    let serve = setup.data.serve_with(&ServeOptions {
        extra: flags.iter().map(|f| f.to_string()).collect(),
        ..ServeOptions::default()
    })?;
    let login = Login::node(serve.port(), &setup.node);
    let clusters = usize::try_from(GOLDEN_BYTES / CLUSTER)?;
    let fills = scattered(
        clusters,
        CLUSTER,
        (0, GOLDEN_BYTES),
        CLUSTER,
        &mut BTreeSet::new(),
        0x31,
        seed,
    )?;
    let out = Writer::start(&login, &fills, false)?.finish(2 * CLIENT_LIMIT)?;
    let free_after = free_bytes(&setup.overlays())?;
    println!(
        "enospc: {} of {clusters} 64 KiB cluster writes acknowledged ({:.1} MiB), {} failed; \
         {:.1} MiB of the {} MiB tmpfs free afterwards",
        out.acked.len(),
        (out.acked.len() as u64 * CLUSTER) as f64 / MIB as f64,
        out.unacked.len(),
        free_after as f64 / MIB as f64,
        TMPFS / MIB
    );
    Ok(Full {
        setup,
        serve,
        out,
        free_after,
    })
}

/// On a full disk, failed writes are SPACE ALLOCATION FAILED (7/27/07) and nothing
/// else; the clusters already allocated stay writable and flushable; after a SIGTERM
/// and a restart every acknowledged write reads back, nothing else changed, and
/// `qemu-img check` is clean (after the stop and again after the restart).
#[test]
fn enospc_fails_writes_cleanly_and_keeps_acknowledged_ones() -> Result<()> {
    const TEST: &str = "enospc_fails_writes_cleanly_and_keeps_acknowledged_ones";
    if !needs(TEST, true) {
        return Ok(());
    }
    let seed = seed(TEST);
    for flags in flag_sets()? {
        in_private_mounts(move || keeps_acknowledged(seed, flags))?;
    }
    Ok(())
}

fn keeps_acknowledged(seed: u64, flags: Vec<String>) -> Result<()> {
    let started = Instant::now();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let Full {
        setup, serve, out, ..
    } = fill(seed, &flag_refs)?;
    let serve_with = ServeOptions {
        extra: flags.clone(),
        ..ServeOptions::default()
    };
    let node = &setup.node;
    let log = |serve: &Serve| format!("{}\n{}", out.log, serve.log());
    ensure!(
        !out.acked.is_empty() && !out.unacked.is_empty(),
        "expected the {} MiB tmpfs to take some but not all of the writes: {} acknowledged, \
         {} not\n{}",
        TMPFS / MIB,
        out.acked.len(),
        out.unacked.len(),
        log(&serve)
    );
    // Every failure is reported, then the test goes on: how much is lost is the figure.
    let mut problems = Vec::new();
    let sense = out.sense_lines();
    if let Err(e) = expect_sense("writes on a full disk", &sense, 0x7, Some(0x27)) {
        problems.push(format!("{e:#}"));
    }
    if let Some(l) = sense.iter().find(|l| parse_sense(l) != Some((0x7, 0x2707))) {
        problems.push(format!("a write failed with other than 7/27/07: {l}"));
    }

    // The disk is full, yet what is allocated stays writable and a flush works: the
    // blocks the flush needs were reserved before the writes were acknowledged.
    let overwrites: Vec<Fill> = out
        .acked
        .iter()
        .step_by(8)
        .map(|f| Fill::new(f.offset, 4096, f.byte ^ 0xff))
        .collect();
    let mut cmds: Vec<String> = overwrites.iter().map(Fill::write_cmd).collect();
    cmds.push("flush".into());
    let o = Login::node(serve.port(), node).qemu_io(&cmds)?;
    let overwritten = if o.success() && sense_lines(&o).is_empty() {
        overwrites.clone()
    } else {
        problems.push(format!(
            "overwriting allocated clusters and flushing on a full disk failed: {}",
            sense_lines(&o).join(" | ")
        ));
        Vec::new()
    };
    serve.stop()?;
    let after_stop = qemu_img_check(&node.overlay_path, false).unwrap_or_else(|e| {
        problems.push(format!("after SIGTERM on a full disk: {e:#}"));
        String::new()
    });

    let serve = setup.data.serve_with(&serve_with)?;
    let login = Login::node(serve.port(), node);
    let acked: Vec<Fill> = out.acked.iter().chain(&overwritten).copied().collect();
    // Overwrites whose flush failed may or may not be there.
    let maybe: Vec<Fill> = out
        .unacked
        .iter()
        .chain(if overwritten.is_empty() {
            &overwrites[..]
        } else {
            &[]
        })
        .copied()
        .collect();
    let v = setup.judge_disk(&login, &acked, &maybe)?;
    if !v.lost.is_empty() || !v.garbage.is_empty() {
        problems.push(format!(
            "after SIGTERM and restart: {} of {} acknowledged writes lost (first {:?}); \
             changed bytes nobody wrote at {:?}",
            v.lost.len(),
            acked.len(),
            v.lost.first(),
            v.garbage
        ));
    }
    let serve_log = log(&serve);
    serve.stop()?;
    let check = qemu_img_check(&node.overlay_path, false)?;
    if v.lost.is_empty() && v.garbage.is_empty() {
        qemu_img_compare(&node.overlay_path, &setup.scratch())?;
    }
    if !problems.is_empty() {
        bail!("serve {flags:?}: {}\n{serve_log}", problems.join("\n"));
    }
    println!(
        "enospc (serve {flags:?}): {} writes failed with 7/27/07, {} unacknowledged landed \
         anyway; qemu-img check after stop: {after_stop}; after restart: {check}; {:.1}s",
        sense.len(),
        v.landed_unacked,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes fail for want of space only when the space is really gone: the acknowledged
/// data fills at least 3/4 of the tmpfs (the rest is the log, headers, tables). With
/// serve's defaults, and with `--reserve-free 0` (no free-space reserve: the engine
/// alone decides when the disk is full) where serve has that flag.
///
/// FOUND A BUG (issue 17, space), still there at main 89bfac3 with `--reserve-free 0`;
/// the default reserve (95726f1) hides it. Measured at a03ed47, and at 89bfac3 with
/// `--reserve-free 0`: 191 of 1024 cluster writes acknowledged (11.9 MiB of data), then
/// every write fails with 7/27/07 while the overlay file holds 21.1 MiB of blocks for a
/// 12.8 MiB image (`qemu-img check`: image end offset 12845056), with a file length of
/// 8 GiB; after a clean stop it is 12.8 MiB again and 11 MiB of the tmpfs are free.
/// With the default reserve: 371 writes (23.2 MiB). By reading (overlay/write.rs
/// `take`/`reserve`): the batch grows to 2048 clusters under a storm and a failed batch
/// is not retried with just what the request needs; a failed `io::allocate` of one run
/// leaves the runs before it allocated; and the allocation hint keeps advancing past
/// failed reservations (new refcount blocks every 2 GiB: the 8 GiB length). The code
/// before a03ed47 acknowledged 380 writes (23.8 MiB), then lost them.
#[test]
fn enospc_only_when_the_disk_is_full() -> Result<()> {
    const TEST: &str = "enospc_only_when_the_disk_is_full";
    if !needs(TEST, true) {
        return Ok(());
    }
    let seed = seed(TEST);
    let help = DataDir::new()?.try_run(&["serve", "--help"])?;
    let mut runs: Vec<&[&str]> = vec![&[]];
    if help.stdout.contains("--reserve-free") {
        runs.push(&["--reserve-free", "0"]);
    }
    let mut failures = Vec::new();
    for flags in runs {
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let r = in_private_mounts(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let full = fill(seed, &flags)?;
            let acked = full.out.acked.len() as u64 * CLUSTER;
            let verdict = (acked < TMPFS / 4 * 3).then(|| {
                format!(
                    "serve {flags:?}: writes failed for want of space after only {:.1} MiB of a \
                     {} MiB tmpfs; {:.1} MiB was still free",
                    acked as f64 / MIB as f64,
                    TMPFS / MIB,
                    full.free_after as f64 / MIB as f64,
                )
            });
            full.serve.stop()?;
            Ok(verdict)
        })?;
        failures.extend(r);
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// A crash on a full disk: the tmpfs filled by write-back writes (none flushed), serve
/// killed with SIGKILL, restarted on the still full tmpfs. The overlay must open (its
/// log replayed with no room to spare), every acknowledged write must read back,
/// nothing else may change, and after a clean stop `qemu-img check` is clean.
#[test]
fn enospc_then_kill9_keeps_acknowledged_writes() -> Result<()> {
    const TEST: &str = "enospc_then_kill9_keeps_acknowledged_writes";
    if !needs(TEST, true) {
        return Ok(());
    }
    let seed = seed(TEST);
    for flags in flag_sets()? {
        in_private_mounts(move || then_kill9(seed, flags))?;
    }
    Ok(())
}

fn then_kill9(seed: u64, flags: Vec<String>) -> Result<()> {
    let started = Instant::now();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let Full {
        setup,
        serve,
        out,
        free_after,
    } = fill(seed, &flag_refs)?;
    ensure!(
        !out.acked.is_empty() && !out.unacked.is_empty(),
        "the tmpfs did not fill: {} acknowledged, {} not",
        out.acked.len(),
        out.unacked.len()
    );
    serve.kill9()?;
    let crashed = qemu_img_check(&setup.node.overlay_path, true)?;
    let serve = setup.data.serve_with(&ServeOptions {
        extra: flags.clone(),
        ..ServeOptions::default()
    })?;
    let login = Login::node(serve.port(), &setup.node);
    let v = setup.judge_disk(&login, &out.acked, &out.unacked)?;
    ensure!(
            v.lost.is_empty() && v.garbage.is_empty(),
            "serve {flags:?}: after kill -9 on a full disk ({:.1} MiB free): {} of {} acknowledged writes \
             lost (first {:?}); changed bytes nobody wrote at {:?}\n{}",
            free_after as f64 / MIB as f64,
            v.lost.len(),
            out.acked.len(),
            v.lost.first(),
            v.garbage,
            serve.log()
        );
    serve.stop()?;
    let check = qemu_img_check(&setup.node.overlay_path, false)?;
    qemu_img_compare(&setup.node.overlay_path, &setup.scratch())?;
    println!(
            "enospc+kill9 (serve {flags:?}): {} acknowledged writes all back; qemu-img check after the kill: \
             {crashed}; after restart and stop: {check}; {:.1}s",
            out.acked.len(),
            started.elapsed().as_secs_f64()
        );
    Ok(())
}
