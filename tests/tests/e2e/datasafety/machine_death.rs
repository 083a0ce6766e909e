//! A whole machine dies, not only serve (issue 15, item 5): its unsynced writes vanish
//! with its page cache, and a survivor opens the overlay from the shared storage.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bootd_tests::env::e2e_required;
use bootd_tests::faults::{in_private_mounts, move_entries, FailFs, PYTHON};
use bootd_tests::overlay::qemu_img_check;
use bootd_tests::qemu_iscsi::{Login, CLIENT_LIMIT};
use bootd_tests::serve::ServeOptions;
use bootd_tests::writeback::{scattered, Writer};

use super::{mix, needs, seed, Setup, BLOCK, CLUSTER, GOLDEN_BYTES};

const WRITES: usize = 160;

/// What one machine death left (printed with `{:?}`).
#[derive(Debug)]
#[allow(dead_code)]
struct Death {
    mode: &'static str,
    /// Writes acknowledged GOOD before the machine died.
    acked: usize,
    /// Of those, what the survivor does not find.
    lost: usize,
    /// Changes the dead machine had not synced (dropped with it).
    dropped: usize,
    /// `qemu-img check` of the file as the death left it.
    check: String,
}

/// serve's overlays directory on `tests/faults/failfs.py --volatile`: a pass-through
/// whose writes reach the real directory only when their file is synced, and which on
/// "machine death" drops every unsynced change. `qemu-io -t writeback` issues 160
/// 4 KiB first writes to clusters of their own at once (aio, no FUA, no flush); after
/// a random number of them are acknowledged, the machine dies (the file system drops
/// what was not synced, then serve is SIGKILLed). A survivor (a new serve on the files
/// the storage holds, without the dead machine's write-ahead log, which another
/// machine would not replay) must serve every acknowledged write with
/// `--sync-writes always`, and the file as the death left it checks clean. With
/// `--sync-writes flush` the same death loses acknowledged writes: the test demands
/// that too, so it shows what the mode is for.
#[test]
fn machine_death_keeps_acknowledged_writes_with_sync_writes_always() -> Result<()> {
    const TEST: &str = "machine_death_keeps_acknowledged_writes_with_sync_writes_always";
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
    let started = Instant::now();
    let always = in_private_mounts(move || die_once("always", seed))?;
    println!("{TEST}: {always:?}");
    let flush = in_private_mounts(move || die_once("flush", seed))?;
    println!("{TEST}: {flush:?}");
    ensure!(
        always.lost == 0,
        "--sync-writes always lost {} of {} acknowledged writes to a machine death",
        always.lost,
        always.acked
    );
    ensure!(
        flush.lost > 0,
        "--sync-writes flush lost none of {} acknowledged writes: the test did not kill \
         the machine's unsynced writes ({} dropped)",
        flush.acked,
        flush.dropped
    );
    println!(
        "{TEST}: always: 0 of {} acknowledged writes lost; flush: {} of {} lost; {:.1}s",
        always.acked,
        flush.lost,
        flush.acked,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn die_once(mode: &'static str, seed: u64) -> Result<Death> {
    let setup = Setup::new(GOLDEN_BYTES, seed)?;
    let node = &setup.node;
    let storage = setup.work.path().join("storage");
    std::fs::create_dir(&storage)?;
    move_entries(&setup.overlays(), &storage)?;
    let mut fs =
        FailFs::mount_volatile(&storage, &setup.overlays(), &setup.work.path().join("ctl"))?;
    let serve = setup.data.serve_with(&ServeOptions {
        extra: vec!["--sync-writes".into(), mode.into()],
        ..ServeOptions::default()
    })?;
    let login = Login::node(serve.port(), node);
    let fills = scattered(
        WRITES,
        BLOCK,
        (0, GOLDEN_BYTES),
        CLUSTER,
        &mut BTreeSet::new(),
        0x40,
        mix(seed ^ 0xdead),
    )?;
    // Stays connected after its writes: its close would flush them.
    let mut writer = Writer::start_aio_staying(&login, &fills)?;
    let at = 40 + usize::try_from(mix(seed) % (WRITES as u64 - 80))?;
    ensure!(
        writer.wait_acked(at, CLIENT_LIMIT),
        "{mode}: {at} writes not acknowledged within {}s\n{}\n{}",
        CLIENT_LIMIT.as_secs(),
        serve.log(),
        fs.log()
    );
    // The machine dies: its unsynced writes first (nothing serve does after this
    // reaches the storage; its syncs fail), then serve itself.
    let dropped = fs.die()?;
    let log = serve.log();
    serve.kill9()?;
    std::thread::sleep(Duration::from_millis(100));
    let outcome = writer.kill()?;
    drop(fs);

    // The survivor: the storage's files, without the dead machine's log.
    let file = node
        .overlay_path
        .file_name()
        .context("overlay path without a name")?
        .to_string_lossy()
        .into_owned();
    for ext in ["wal0", "wal1"] {
        let wal = storage.join(format!("{file}.{ext}"));
        match std::fs::remove_file(&wal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let names: Vec<_> = std::fs::read_dir(&storage)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    move_entries(&storage, &setup.overlays())?;
    let check = qemu_img_check(&node.overlay_path, true).with_context(|| {
        format!("{mode}: the overlay as the machine death left it ({names:?})\n{log}")
    })?;
    let survivor = setup.data.serve()?;
    let login = Login::node(survivor.port(), node);
    let v = setup
        .judge_disk(&login, &outcome.acked, &outcome.unacked)
        .with_context(|| survivor.log())?;
    survivor.stop()?;
    qemu_img_check(&node.overlay_path, false).context("after the survivor's clean stop")?;
    ensure!(
        v.garbage.is_empty(),
        "{mode}: bytes that match neither the golden image nor a write at {:?}",
        v.garbage
    );
    Ok(Death {
        mode,
        acked: outcome.acked.len(),
        lost: v.lost.len(),
        dropped,
        check,
    })
}
