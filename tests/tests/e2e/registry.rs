//! The node registry and `bootd serve` through the operator CLI: golden images, one
//! copy-on-write overlay and one CHAP-protected target per node, space accounting,
//! crash safety under kill -9, and registry changes picked up by a running serve.
//! Clients are QEMU's (qemu-io, qemu-img) logging in as each node's initiator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bootd_tests::disk::{assert_contents, expected, noise, sha256, Fill};
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::overlay::qemu_img_check;
use bootd_tests::process::{run, wait_until};
use bootd_tests::qemu_iscsi::{login_refused, Login, Session, CLIENT_LIMIT};
use bootd_tests::serve::{DataDir, Fields, Node, Serve};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GOLDEN_BYTES: u64 = 64 * MIB;
/// serve polls the registry every second; a CLI change must show within this.
const RELOAD_LIMIT: Duration = Duration::from_secs(5);

fn needs(test: &str) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: the registry and serve are bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    Needs::new()
        .server()
        .tool("qemu-io", "qemu-utils")
        .tool("qemu-img", "qemu-utils")
        .tool("sha256sum", "coreutils")
        .met(test)
}

/// A golden raw image of reproducible noise, written under `dir`.
struct Golden {
    path: PathBuf,
    data: Vec<u8>,
    sha256: String,
}

impl Golden {
    fn create(dir: &Path, bytes: u64, seed: u64) -> Result<Self> {
        let path = dir.join("golden.raw");
        let data = noise(usize::try_from(bytes)?, seed);
        std::fs::write(&path, &data)?;
        let sha256 = sha256(&path)?;
        Ok(Self { path, data, sha256 })
    }

    /// Imports it as image `name` and checks what `image list --json` says: the size,
    /// and a stored copy with the same checksum. Returns the stored copy's path.
    fn import(&self, data: &DataDir, name: &str) -> Result<PathBuf> {
        data.import(name, &self.path)?;
        let img = data.image(name)?;
        ensure!(
            img.u64_field("bytes")? == self.data.len() as u64,
            "image list --json: {img:?}, expected {} bytes",
            self.data.len()
        );
        let stored = PathBuf::from(img.str_field("path")?);
        ensure!(
            sha256(&stored)? == self.sha256,
            "stored image {} differs from the imported file",
            stored.display()
        );
        Ok(stored)
    }

    /// Neither the file given to import nor the stored golden image ever changes.
    fn check_unchanged(&self, stored: &Path) -> Result<()> {
        for file in [&self.path, stored] {
            let now = sha256(file)?;
            ensure!(
                now == self.sha256,
                "golden image {} changed: sha256 {now}, was {}",
                file.display(),
                self.sha256
            );
        }
        Ok(())
    }
}

fn cmds(fills: &[Fill], f: impl Fn(&Fill) -> String) -> Vec<String> {
    fills.iter().map(f).collect()
}

/// Writes `fills` as `login` and flushes.
fn write_fills(login: &Login, fills: &[Fill], serve: &Serve) -> Result<()> {
    let mut c = cmds(fills, Fill::write_cmd);
    c.push("flush".into());
    login.qemu_io_ok(&c).with_context(|| serve.log())?;
    Ok(())
}

/// Copies the node's whole disk over iSCSI and compares it byte for byte.
fn check_disk(login: &Login, want: &[u8], scratch: &Path, what: &str, serve: &Serve) -> Result<()> {
    login.copy_to(scratch).with_context(|| serve.log())?;
    let r = assert_contents(scratch, want, what);
    std::fs::remove_file(scratch)?;
    r
}

/// `qemu-img compare` of an overlay (through its backing golden image) against the raw
/// file `want` holds.
fn qemu_img_compare(overlay: &Path, want: &[u8], scratch: &Path) -> Result<()> {
    std::fs::write(scratch, want)?;
    let out = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(overlay)
            .arg(scratch),
        CLIENT_LIMIT,
    )?;
    std::fs::remove_file(scratch)?;
    out.ok().map(drop)
}

/// Tries `login` until it succeeds or `limit` passes; returns how long it took.
fn wait_for_login(login: &Login, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let out = login.qemu_io(&["read 0 4k".into()])?;
        if out.success() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("no login within {}s: {out}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_nodes_one_golden() -> Result<()> {
    if !needs("two_nodes_one_golden") {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let scratch = work.path().join("scratch.raw");
    let golden = Golden::create(work.path(), GOLDEN_BYTES, 0x2545_f491_4f6c_dd1d)?;
    let data = DataDir::new()?;
    let stored = golden.import(&data, "golden")?;
    let a = data.add_node("52:54:00:12:34:01", "golden", "reg-a")?;
    let b = data.add_node("52:54:00:12:34:02", "golden", "reg-b")?;
    for n in [&a, &b] {
        ensure!(n.image == "golden", "{n:?} is not on image golden");
    }
    ensure!(
        a.mac == "52:54:00:12:34:01" && b.mac == "52:54:00:12:34:02",
        "MACs: {a:?} {b:?}"
    );
    ensure!(
        a.target_iqn != b.target_iqn
            && a.initiator_iqn != b.initiator_iqn
            && a.chap_secret != b.chap_secret
            && a.overlay_path != b.overlay_path,
        "two nodes share a target, initiator, secret or overlay: {a:?} {b:?}"
    );
    let listed: Vec<String> = data.nodes()?.into_iter().map(|n| n.name).collect();
    ensure!(
        listed.contains(&a.name) && listed.contains(&b.name),
        "node list: {listed:?}"
    );

    // A: a cluster-aligned MiB, an unaligned write inside one cluster, the last
    // cluster. B: a MiB overlapping A's, and two MiB elsewhere.
    let writes_a = [
        Fill::new(4 * MIB, MIB, 0xa1),
        Fill::new(20 * MIB + 1000, 3000, 0xa2),
        Fill::new(GOLDEN_BYTES - 64 * KIB, 64 * KIB, 0xa3),
    ];
    let writes_b = [
        Fill::new(4 * MIB + 512 * KIB, MIB, 0xb1),
        Fill::new(30 * MIB, 2 * MIB, 0xb2),
    ];
    let want_a = expected(&golden.data, &writes_a)?;
    let want_b = expected(&golden.data, &writes_b)?;

    let serve = data.serve()?;
    let la = Login::node(serve.port(), &a);
    let lb = Login::node(serve.port(), &b);
    write_fills(&la, &writes_a, &serve)?;
    write_fills(&lb, &writes_b, &serve)?;
    // Each node sees the golden image plus its own writes, nothing of the other's.
    check_disk(&la, &want_a, &scratch, "node a over iSCSI", &serve)?;
    check_disk(&lb, &want_b, &scratch, "node b over iSCSI", &serve)?;

    // Each refusal comes at login with a status libiscsi names: with the node's own
    // initiator name but the wrong or no CHAP, an authentication failure (0x0201);
    // under another node's initiator name, that or an authorization failure (0x0202).
    const AUTHENTICATION: &[&str] = &["Authentication failure"];
    const EITHER: &[&str] = &["Authentication failure", "Authorization failure"];
    let refused = [
        (
            "a's name and CHAP on b's target",
            la.clone().to_target(&b.target_iqn),
            EITHER,
        ),
        (
            "b's name and CHAP on a's target",
            lb.clone().to_target(&a.target_iqn),
            EITHER,
        ),
        (
            "b's initiator name with a's CHAP on b's target",
            la.clone()
                .to_target(&b.target_iqn)
                .as_initiator(&b.initiator_iqn),
            AUTHENTICATION,
        ),
        (
            "a's initiator name with b's CHAP on a's target",
            lb.clone()
                .to_target(&a.target_iqn)
                .as_initiator(&a.initiator_iqn),
            AUTHENTICATION,
        ),
        ("a without CHAP", la.clone().without_chap(), AUTHENTICATION),
        ("b without CHAP", lb.clone().without_chap(), AUTHENTICATION),
    ];
    for (what, login, statuses) in &refused {
        let out = login.qemu_io(&["read 0 4k".into()])?;
        ensure!(
            login_refused(&out) && statuses.iter().any(|s| out.stderr.contains(s)),
            "login as {what} was not refused with {statuses:?}: {out}\n{}",
            serve.log()
        );
    }
    // The refusals did not disturb the rightful owners.
    la.qemu_io_ok(&cmds(&writes_a, Fill::read_cmd))?;
    lb.qemu_io_ok(&cmds(&writes_b, Fill::read_cmd))?;
    serve.stop()?;

    // Offline, qemu-img agrees: both overlays are consistent and hold what was written.
    for (node, want) in [(&a, &want_a), (&b, &want_b)] {
        qemu_img_check(&node.overlay_path, false)?;
        qemu_img_compare(&node.overlay_path, want, &scratch)
            .with_context(|| format!("node {}", node.name))?;
    }
    golden.check_unchanged(&stored)?;

    // By MAC, spelled in capitals: NAME|MAC both name a node.
    data.run(&["node", "reset", &a.mac.to_uppercase()])?;
    let a = data.node(&a.name)?;
    qemu_img_check(&a.overlay_path, false)?;
    let serve = data.serve()?;
    let la = Login::node(serve.port(), &a);
    let lb = Login::node(serve.port(), &b);
    check_disk(&la, &golden.data, &scratch, "node a after reset", &serve)?;
    check_disk(&lb, &want_b, &scratch, "node b after a's reset", &serve)?;
    serve.stop()?;
    golden.check_unchanged(&stored)
}

#[test]
fn fifty_nodes_physical_bytes() -> Result<()> {
    if !needs("fifty_nodes_physical_bytes") {
        return Ok(());
    }
    const NODES: u64 = 50;
    let work = tempfile::tempdir()?;
    let golden = Golden::create(work.path(), GOLDEN_BYTES, 0x5851_f42d_4c95_7f2d)?;
    let data = DataDir::new()?;
    let stored = golden.import(&data, "golden")?;
    let nodes = (0..NODES)
        .map(|i| {
            data.add_node(
                &format!("52:54:00:50:00:{i:02x}"),
                "golden",
                &format!("fleet-{i:02}"),
            )
        })
        .collect::<Result<Vec<Node>>>()?;
    let before = data.df()?;

    let serve = data.serve()?;
    let started = Instant::now();
    // Five clients at a time; each node writes its own MiB at its own offset.
    let fill = |i: u64| Fill::new(i * MIB, MIB, u8::try_from(i + 1).unwrap_or(0xff));
    std::thread::scope(|s| {
        let workers: Vec<_> = nodes
            .chunks(10)
            .enumerate()
            .map(|(c, chunk)| {
                let serve = &serve;
                s.spawn(move || -> Result<()> {
                    for (j, node) in chunk.iter().enumerate() {
                        let f = fill((c * 10 + j) as u64);
                        let login = Login::node(serve.port(), node);
                        login
                            .qemu_io_ok(&[f.write_cmd(), "flush".into(), f.read_cmd()])
                            .with_context(|| format!("node {}\n{}", node.name, serve.log()))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow!("client thread panicked"))?)
    })?;
    let wrote = started.elapsed();
    serve.stop()?;

    let df = data.df()?;
    let limit = GOLDEN_BYTES + NODES * 4 * MIB;
    println!(
        "fifty_nodes_physical_bytes: {NODES} nodes x 1 MiB written in {:.1}s; df before: \
         physical {} logical {}; after: physical {} ({:.1} MiB) logical {} ({:.1} MiB); \
         limit golden + 4 MiB/node = {limit} ({:.1} MiB)",
        wrote.as_secs_f64(),
        before.physical_bytes,
        before.logical_bytes,
        df.physical_bytes,
        df.physical_bytes as f64 / MIB as f64,
        df.logical_bytes,
        df.logical_bytes as f64 / MIB as f64,
        limit as f64 / MIB as f64,
    );
    ensure!(
        df.logical_bytes == NODES * GOLDEN_BYTES,
        "logical_bytes {} != {NODES} x {GOLDEN_BYTES}",
        df.logical_bytes
    );
    ensure!(
        df.physical_bytes <= limit,
        "physical_bytes {} exceeds golden + 4 MiB per node ({limit})",
        df.physical_bytes
    );
    // The MiB each node wrote is stored somewhere: physical space did grow by it.
    ensure!(
        df.physical_bytes >= GOLDEN_BYTES + NODES * MIB,
        "physical_bytes {} is below golden + 1 MiB per node: the writes are not counted",
        df.physical_bytes
    );
    for node in data.nodes()? {
        ensure!(
            (MIB..=4 * MIB).contains(&node.overlay_bytes),
            "node {} overlay_bytes {} is not within 1..4 MiB",
            node.name,
            node.overlay_bytes
        );
        qemu_img_check(&node.overlay_path, false)?;
    }
    golden.check_unchanged(&stored)
}

/// The crash test's storm writes into `[STORM_START, GOLDEN_BYTES)`; below it the
/// disk's contents are known exactly.
const STORM_START: u64 = 32 * MIB;
/// Parallel storm clients (sessions from the same initiator, as after a boot handoff).
const STORM_STREAMS: u64 = 2;
/// Writes per storm batch: one qemu-io run, so most of the time goes to writes rather
/// than to starting qemu-io and logging in.
const STORM_WRITES: u64 = 256;

/// One qemu-io run of async writes spread over the storm's clusters, one write per
/// cluster, so while clusters are still unallocated the overlay's metadata changes
/// with nearly every write.
fn storm_batch(batch: u64) -> Vec<String> {
    let clusters = (GOLDEN_BYTES - STORM_START) / (64 * KIB);
    let mut c: Vec<String> = (0..STORM_WRITES)
        .map(|k| {
            let cluster = (batch * STORM_WRITES + k) % clusters;
            let len = if k % 4 == 0 { 256 * KIB } else { 4 * KIB };
            let offset = (STORM_START + cluster * 64 * KIB).min(GOLDEN_BYTES - len);
            format!("aio_write -P {:#04x} {offset} {len}", 0x30 + batch % 64)
        })
        .collect();
    c.push("aio_flush".into());
    c
}

/// What the storm did before it was stopped.
#[derive(Debug, Default)]
struct StormReport {
    /// Batches that ran to completion (all writes acknowledged).
    completed: u64,
    /// Batches that ended in an error before the stop (the crash cut them off).
    failed: u64,
    /// Whether a batch was still running when the storm was stopped.
    cut_off: bool,
}

/// Runs storm batches `stream + 1`, `stream + 1 + STORM_STREAMS`, ... until `stop`.
fn storm(
    login: Login,
    stream: u64,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
) -> Result<StormReport> {
    let mut report = StormReport::default();
    let mut batch = stream + 1;
    while !stop.load(Ordering::Relaxed) {
        let mut child = login.spawn_qemu_io(&storm_batch(batch))?;
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    report.completed += 1;
                    completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    report.failed += 1;
                }
                break;
            }
            if stop.load(Ordering::Relaxed) {
                // A client cut off by the crash may retry for a long time.
                wait_until(&mut child, Instant::now())?;
                report.cut_off = true;
                return Ok(report);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        batch += STORM_STREAMS;
    }
    Ok(report)
}

#[test]
fn serve_kill9_keeps_flushed_writes() -> Result<()> {
    if !needs("serve_kill9_keeps_flushed_writes") {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let scratch = work.path().join("scratch.raw");
    let golden = Golden::create(work.path(), GOLDEN_BYTES, 0x1405_7b7e_f767_814f)?;
    let data = DataDir::new()?;
    let stored = golden.import(&data, "golden")?;
    let node = data.add_node("52:54:00:c0:00:01", "golden", "crash")?;
    let mut flushed: Vec<Fill> = Vec::new();
    // Below the storm's range the disk's contents are known exactly.
    let known = usize::try_from(STORM_START)?;

    for round in 0..3u64 {
        let serve = data.serve()?;
        let login = Login::node(serve.port(), &node);
        // Everything flushed before earlier crashes is still there, around it golden.
        let want = expected(&golden.data[..known], &flushed)?;
        login.copy_to(&scratch).with_context(|| serve.log())?;
        let got = std::fs::read(&scratch)?;
        ensure!(got.len() >= known, "short copy of the disk");
        std::fs::write(&scratch, &got[..known])?;
        assert_contents(
            &scratch,
            &want,
            &format!("round {round}: data below the storm"),
        )?;

        // Unaligned at both ends: the partial clusters are copied up from golden.
        let fill = Fill::new(round * 8 * MIB + 4096, 3 * MIB + 512, 0x10 + round as u8);
        write_fills(&login, &[fill], &serve)?;
        flushed.push(fill);
        // One batch in the foreground shows the storm's writes work at all.
        login
            .qemu_io_ok(&storm_batch(0))
            .with_context(|| serve.log())?;

        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let storm_threads: Vec<_> = (0..STORM_STREAMS)
            .map(|stream| {
                let (login, stop, completed) = (login.clone(), stop.clone(), completed.clone());
                std::thread::spawn(move || storm(login, stream, stop, completed))
            })
            .collect();
        // The storm is under way before the kill: a background batch went through.
        let deadline = Instant::now() + CLIENT_LIMIT;
        while completed.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A different instant each round.
        std::thread::sleep(Duration::from_millis(50 + 100 * round));
        let storm_ran = completed.load(Ordering::Relaxed) > 0;
        serve.kill9()?;
        stop.store(true, Ordering::Relaxed);
        let storm_report = storm_threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow!("storm thread panicked"))?)
            .collect::<Result<Vec<StormReport>>>()?;
        ensure!(
            storm_ran,
            "round {round}: no storm batch completed within {}s: {storm_report:?}",
            CLIENT_LIMIT.as_secs()
        );
        let check = qemu_img_check(&node.overlay_path, true)
            .with_context(|| format!("round {round}, after kill -9"))?;
        println!(
            "serve_kill9_keeps_flushed_writes: round {round}: kill -9 after {storm_report:?}; \
             qemu-img check: {check}"
        );
    }

    let serve = data.serve()?;
    let login = Login::node(serve.port(), &node);
    login
        .qemu_io_ok(&cmds(&flushed, Fill::read_cmd))
        .with_context(|| serve.log())?;
    login.copy_to(&scratch).with_context(|| serve.log())?;
    let got = std::fs::read(&scratch)?;
    std::fs::write(&scratch, got.get(..known).unwrap_or_default())?;
    assert_contents(
        &scratch,
        &expected(&golden.data[..known], &flushed)?,
        "after the last crash: data below the storm",
    )?;
    serve.stop()?;
    qemu_img_check(&node.overlay_path, true)?;
    golden.check_unchanged(&stored)
}

#[test]
fn serve_follows_node_add_reset_rm() -> Result<()> {
    if !needs("serve_follows_node_add_reset_rm") {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let scratch = work.path().join("scratch.raw");
    let golden = Golden::create(work.path(), 16 * MIB, 0x94d0_49bb_1331_11eb)?;
    let data = DataDir::new()?;
    let stored = golden.import(&data, "golden")?;
    let a = data.add_node("52:54:00:40:00:01", "golden", "hot-a")?;
    let b = data.add_node("52:54:00:40:00:02", "golden", "hot-b")?;
    let serve = data.serve()?;
    let la = Login::node(serve.port(), &a);
    let a_write = [Fill::new(MIB, 64 * KIB, 0xaa)];
    write_fills(&la, &a_write, &serve)?;

    // Added while serve runs: its target comes up without a restart.
    let c = data.add_node("52:54:00:40:00:03", "golden", "hot-c")?;
    let lc = Login::node(serve.port(), &c);
    let took = wait_for_login(&lc, RELOAD_LIMIT).with_context(|| serve.log())?;
    println!(
        "serve_follows_node_add_reset_rm: node add -> first login {:.2}s",
        took.as_secs_f64()
    );
    let c_write = [Fill::new(2 * MIB, 128 * KIB, 0xcc)];
    write_fills(&lc, &c_write, &serve)?;
    lc.qemu_io_ok(&cmds(&c_write, Fill::read_cmd))?;

    // Reset with a session logged in: serve ends the session, the CLI then
    // replaces the overlay, and the node reads golden again.
    let mut session = Session::start(&lc)?;
    session.command(&c_write[0].read_cmd(), "read ")?;
    let started = Instant::now();
    data.run(&["node", "reset", &c.name])
        .with_context(|| serve.log())?;
    println!(
        "serve_follows_node_add_reset_rm: node reset with a live session took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    drop(session);
    let c = data.node(&c.name)?;
    let lc = Login::node(serve.port(), &c);
    wait_for_login(&lc, RELOAD_LIMIT).with_context(|| serve.log())?;
    check_disk(
        &lc,
        &golden.data,
        &scratch,
        "node c after a live reset",
        &serve,
    )?;

    // Removed while serve runs: once `node rm` returns, the target is gone.
    data.run(&["node", "rm", &c.mac])
        .with_context(|| serve.log())?;
    let out = lc.qemu_io(&["read 0 4k".into()])?;
    ensure!(
        login_refused(&out),
        "login to removed node c was not refused: {out}\n{}",
        serve.log()
    );
    ensure!(
        !c.overlay_path.exists(),
        "node rm left the overlay {}",
        c.overlay_path.display()
    );
    ensure!(
        !data
            .try_run(&["node", "show", &c.name, "--json"])?
            .success(),
        "node show still finds removed node c"
    );
    // Still refused a poll interval later: serve did not bring it back.
    std::thread::sleep(Duration::from_millis(1500));
    let out = lc.qemu_io(&["read 0 4k".into()])?;
    ensure!(login_refused(&out), "removed node c came back: {out}");

    // The other nodes never noticed.
    la.qemu_io_ok(&cmds(&a_write, Fill::read_cmd))?;
    check_disk(
        &Login::node(serve.port(), &b),
        &golden.data,
        &scratch,
        "node b",
        &serve,
    )?;
    serve.stop()?;
    golden.check_unchanged(&stored)
}
