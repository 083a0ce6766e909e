//! Takeover after a whole machine died (issue 15 item 5): two servers on one
//! PostgreSQL registry, the owner's overlays reached through a file system that
//! loses every unsynced write when its "machine" dies. Runs as root with FUSE and
//! python3-fusepy (skipped with a reason otherwise, unless `BOOTD_E2E=1`).

use crate::common::*;
use crate::servers::{owners, servers, within};
use crate::takeover::{opts, registry_with_one_node, serve_logged, serve_logged_with};
use bootd_tests::env::e2e_required;
use bootd_tests::faults::{bind, in_private_mounts, FailFs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// First writes in flight at once (one 4 KiB block per 64 KiB cluster of the 8 MiB
/// disk), and how many must be acknowledged before the machine dies.
const BLOCKS: u64 = 128;
const DIE_AFTER: usize = 40;

/// s1 runs on "machine A": a mount namespace of its own where the overlays directory
/// is `tests/faults/failfs.py --volatile` over the shared storage (the real
/// directory). s2 runs on the storage itself. With the default `--sync-writes auto`
/// (always, with a PostgreSQL registry), `qemu-io -t writeback` issues 128 first
/// writes at once to s1 (no FUA, no flush); once 40 are acknowledged, machine A dies:
/// its unsynced writes are dropped, then s1 (and its fence keeper) is SIGKILLed. s2
/// takes the node once s1's ownership expired and must serve every acknowledged
/// write; the overlay checks clean after s2's stop. (s1's write-ahead log never
/// reached the storage: s2 replays nothing, as a peer on another machine would.)
#[test]
fn a_dead_machines_acknowledged_writes_survive_takeover() -> Result {
    const TEST: &str = "cli::takeover_death::a_dead_machines_acknowledged_writes_survive_takeover";
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !FailFs::available() {
        let why = if root {
            "python3-fusepy is missing"
        } else {
            "needs root (mount namespaces, FUSE)"
        };
        if e2e_required() {
            panic!("{TEST}: BOOTD_E2E=1 but {why}");
        }
        println!("{TEST}: skipped: {why}");
        return Ok(());
    }
    // None: PostgreSQL is not installed (and not required); `shared` said why.
    let Some(always) = death_and_takeover(TEST, &[])? else {
        return Ok(());
    };
    let Some(flush) = death_and_takeover(TEST, &["--sync-writes", "flush"])? else {
        return Ok(());
    };
    println!("{TEST}: auto (always): {always:?}; flush: {flush:?}");
    if always.lost > 0 {
        return Err(format!("{always:?}: acknowledged writes lost after takeover").into());
    }
    // The same death loses acknowledged writes when they wait for a flush: what the
    // default with peers is for (and a sign that this test kills the right writes).
    if flush.lost == 0 {
        return Err(format!("{flush:?}: nothing lost with --sync-writes flush").into());
    }
    Ok(())
}

/// What one death and takeover left (printed with `{:?}`).
#[derive(Debug)]
#[allow(dead_code)]
struct Takeover {
    acked: usize,
    lost: usize,
    dropped: usize,
    served_after: Duration,
}

/// One run: s1 started with `extra` on machine A, which dies; s2 takes over.
fn death_and_takeover(test: &str, extra: &'static [&'static str]) -> Result<Option<Takeover>> {
    let Some((env, node)) = registry_with_one_node(test)? else {
        return Ok(None);
    };
    let path = PathBuf::from(node["overlay_path"].as_str().unwrap_or_default());
    let overlays = path
        .parent()
        .ok_or("overlay without a directory")?
        .to_path_buf();
    let env = Arc::new(env);
    let (log1, log2) = (env.path("s1.log"), env.path("s2.log"));

    // Machine A, on a thread of its own namespace: started, then told to die.
    let (port_tx, port_rx) = mpsc::channel::<u16>();
    let (die_tx, die_rx) = mpsc::channel::<()>();
    let machine_a = {
        let (env, log1) = (env.clone(), log1.clone());
        std::thread::spawn(move || {
            in_private_mounts(move || machine_a(&env, &overlays, &log1, extra, port_tx, die_rx))
        })
    };
    let Ok(port1) = port_rx.recv_timeout(Duration::from_secs(60)) else {
        let why = match machine_a.join() {
            Ok(Err(e)) => format!("{e:#}"),
            _ => "no word".into(),
        };
        return Err(with_logs(
            &format!("machine A did not start s1: {why}"),
            &[&log1],
        ));
    };
    within(Duration::from_secs(15), "n1 owned by s1", || {
        Ok(owners(&env)?["n1"].as_deref() == Some("s1"))
    })?;
    env.ok(&["node", "move", "n1", "--server", "s1"])?;
    let s2 = serve_logged(&env, "s2", "127.0.0.2", &log2)?;
    within(Duration::from_secs(10), "s2 live", || {
        Ok(servers(&env)?.get("s2").is_some_and(|s| s["live"] == true))
    })?;

    let out = env.path("writer.out");
    // stdbuf: line-buffered, so each completion line is whole in the file when
    // qemu-io is killed (a full stdio buffer cut at 4 KiB cuts lines, too).
    let mut c = Command::new("stdbuf");
    c.args(["-oL", "qemu-io", "-t"])
        .arg("writeback")
        .arg("--image-opts")
        .arg(opts("127.0.0.1", port1, &node));
    for b in 0..BLOCKS {
        c.arg("-c").arg(format!(
            "aio_write -P {} {} 4k",
            b % 250 + 1,
            b * (64 << 10)
        ));
    }
    // aio_flush only waits for the writes; the sleep keeps the disk open, since
    // closing it would flush it (SYNCHRONIZE CACHE) before the machine dies.
    c.arg("-c").arg("aio_flush").arg("-c").arg("sleep 600000");
    let mut writer = c
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::null())
        .spawn()?;
    let acked = |out: &Path| -> Vec<u64> {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .split_inclusive('\n')
            // Only whole lines: the last one may still be on its way.
            .filter_map(|l| l.strip_suffix('\n'))
            .filter_map(|l| l.split_once("wrote 4096/4096 bytes at offset "))
            .filter_map(|(_, o)| o.trim().parse::<u64>().ok())
            .filter(|o| o % (64 << 10) == 0 && *o < BLOCKS * (64 << 10))
            .collect()
    };
    let t = Instant::now();
    while acked(&out).len() < DIE_AFTER {
        if t.elapsed() > Duration::from_secs(60) || writer.try_wait()?.is_some() {
            return Err(with_logs("the writes were not acknowledged", &[&log1]));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let died = Instant::now();
    die_tx.send(())?;
    let dropped = machine_a
        .join()
        .map_err(|_| "machine A panicked")?
        .map_err(|e| with_logs(&format!("machine A: {e:#}"), &[&log1]))?;
    let _ = writer.kill();
    let _ = writer.wait();
    let acked = acked(&out);
    println!(
        "{} writes acknowledged by s1 before its machine died; {dropped} unsynced changes dropped with it",
        acked.len()
    );

    within(Duration::from_secs(30), "n1 served by s2", || {
        Ok(s2.open_count(&path)? > 0)
    })
    .map_err(|e| with_logs(&e.to_string(), &[&log2]))?;
    let takeover = died.elapsed();
    let cmds: Vec<String> = acked
        .iter()
        .map(|o| format!("read -P {} {o} 4k", (o >> 16) % 250 + 1))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    // s2 has the file open a moment before its target is up (until then it
    // redirects logins to the dead owner's portal): log in until it answers.
    let t = Instant::now();
    let text = loop {
        let o = crate::servers::io_at("127.0.0.2", s2.port, &node, &cmds)?;
        let text = crate::takeover::text(&o);
        if !text.contains("can't open") || t.elapsed() > Duration::from_secs(20) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lost = text.matches("Pattern verification failed").count();
    if lost > 0 && extra.is_empty() {
        let at: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Pattern verification failed"))
            .collect();
        println!("lost: {at:?}\nacked in order: {acked:?}");
        if let Ok(l) = std::fs::read_to_string(&log1) {
            println!(
                "--- s1 log tail:\n{}",
                l.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
        }
    }
    println!(
        "n1 served by s2 {:?} after the death; {lost} of {} acknowledged writes lost",
        takeover,
        acked.len()
    );
    // qemu-io reads on after a mismatch; anything else failing is the test's fault.
    if !text.contains("read 4096/4096") && !acked.is_empty() {
        return Err(with_logs(&format!("reading back at s2: {text}"), &[&log2]));
    }
    s2.stop()?;
    tool("qemu-img", &["check", &path.to_string_lossy()])?;
    Ok(Some(Takeover {
        acked: acked.len(),
        lost,
        dropped,
        served_after: takeover,
    }))
}

/// s1 in this thread's mount namespace, its overlays through a volatile FUSE
/// pass-through; on the word, the machine dies. Returns the unsynced changes dropped.
fn machine_a(
    env: &Env,
    overlays: &Path,
    log: &Path,
    extra: &[&str],
    port: mpsc::Sender<u16>,
    die: mpsc::Receiver<()>,
) -> anyhow::Result<usize> {
    let storage = env.path("storage");
    std::fs::create_dir(&storage)?;
    let _storage = bind(overlays, &storage)?;
    let mut fs = FailFs::mount_volatile(&storage, overlays, &env.path("failfs-control"))?;
    let s1 = serve_logged_with(env, "s1", "127.0.0.1", log, extra)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    port.send(s1.port)?;
    die.recv()?;
    let dropped = fs.die()?;
    // SIGKILL; its fence keeper follows (parent-death signal).
    drop(s1);
    Ok(dropped)
}

fn with_logs(msg: &str, logs: &[&Path]) -> Box<dyn std::error::Error> {
    crate::takeover::with_logs(msg.into(), logs)
}
