//! A server dies, its node keeps running (issue 15), with every part real: two `bootd
//! serve --server-id` in network namespaces on one bridge, one PostgreSQL registry
//! (started by the test, reached through its Unix socket), keepalived in each server's
//! namespace with the configuration `bootd server keepalived-config` prints, both serves
//! with `--floating-ip`, and a TCG Linux guest on a tap of the bridge whose disk is
//! attached by the kernel initiator: iscsistart logs in at the floating address (what
//! the iBFT records), iscsid adopts the session with a root disk's settings
//! (`tests/guest/dsafe-init`).
//!
//! The guest writes ext4 files with a sync after every fourth one and reports each
//! completed write and sync with its uptime, so the stall it saw is the longest gap. In
//! one guest run:
//!
//! 1. SIGKILL of the owner, s1: keepalived moves the floating address to s2, s2 takes
//!    the node once s1's ownership lease has expired, iscsid logs in again at the
//!    floating address, the workload carries on.
//! 2. s1 comes back (its keepalived stays backup: `nopreempt`), then `bootd server drain
//!    s2`: s2 drops the node, iscsid logs in again at the floating address, s2 redirects
//!    the login to s1, which has claimed the node.
//!
//! The guest then reads every file back from the disk against its md5sum, checks that
//! the kernel logged no I/O or ext4 error, and logs out; the host checks the overlay
//! (`qemu-img check`), the file system (e2fsck) and every file's contents.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bootd_tests::diskless::Lan;
use bootd_tests::dsafe;
use bootd_tests::env::Needs;
use bootd_tests::export::Server;
use bootd_tests::fleet::{Peer, SharedRegistry};
use bootd_tests::guest::{self, Boot};
use bootd_tests::keepalived::{config_args, Keepalived};
use bootd_tests::netns::NetNs;
use bootd_tests::postgres::shared;
use bootd_tests::process::run;
use bootd_tests::serve::Fields;

/// The floating address: the node's portal and so its iBFT address.
const VIP: &str = "192.0.2.100";
const PORT: &str = "3260";
const NODE: &str = "fo1";
const MAC: &str = "52:54:00:f0:00:01";
const TAP: &str = "tap0";
const GUEST_IP: &str = "192.0.2.50/24";
const DISK_BYTES: u64 = 128 << 20;
/// How long the guest writes: the kill, the takeover, s1's return and the drain fit in
/// it with room to spare (they take about 20 s).
const WRITE_SECS: u64 = 50;
/// A sync after every this many files.
const SYNC_EVERY: u32 = 4;
/// The kill comes this long after the guest started writing.
const KILL_AFTER: Duration = Duration::from_secs(6);
/// Boot (~5 s under TCG), login, mkfs, the writing, the read-back and logout.
const GUEST_LIMIT: Duration = Duration::from_secs(WRITE_SECS + 180);
/// The guest must complete this many operations after each event.
const RESUMED_OPS: usize = 3;
/// Issue 15's target for a drain.
const DRAIN_STALL_LIMIT: f64 = 5.0;
/// A kill costs the ownership lease (5 s on the registry's clock), the reconciler's
/// tick and iscsid's retries; far more than this is a fault.
const KILL_STALL_LIMIT: f64 = 20.0;

fn ip(n: u8) -> String {
    format!("192.0.2.{n}")
}

/// serve `sN` in `host` at 192.0.2.N, answering the floating address while it has it.
fn serve(reg: &SharedRegistry, host: &NetNs, n: u8) -> Result<Peer> {
    reg.serve(
        host,
        &format!("s{n}"),
        &ip(n),
        &["--iscsi-port", PORT, "--floating-ip", VIP],
    )
}

/// keepalived for `sN`, tracking its own portal.
fn keepalived(
    reg: &SharedRegistry,
    host: &NetNs,
    n: u8,
    prio: u8,
    dir: &Path,
) -> Result<Keepalived> {
    let args = config_args(VIP, "eth0", &format!("{}:{PORT}", ip(n)), prio);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let conf = reg.run(&args)?.stdout;
    Keepalived::start(host, &conf, dir, &format!("s{n}"))
}

/// Polls `f` every 100 ms until it is true; how long that took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if f()? {
            return Ok(t.elapsed());
        }
        ensure!(t.elapsed() < limit, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `host`'s eth0 has the floating address.
fn holds_vip(host: &NetNs) -> Result<bool> {
    let out = run(
        Command::new("ip").args(["-n", host.name(), "-o", "-4", "addr", "show", "dev", "eth0"]),
        Duration::from_secs(10),
    )?
    .ok()?;
    Ok(out.stdout.contains(&format!(" {VIP}/")))
}

/// The guest's completed writes and syncs so far: their uptimes, in order.
fn ops(console: &str) -> Vec<f64> {
    console
        .lines()
        .filter_map(|l| l.split_once("BOOTD-E2E: op ").map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// The longest gap between consecutive operations from the `from`-th on (the last one
/// seen before an event; the next one is the first that may have waited for it), up
/// to the `to`-th.
fn longest_gap(ops: &[f64], from: usize, to: usize) -> f64 {
    let to = to.min(ops.len());
    let from = from.saturating_sub(1).min(to);
    ops[from..to]
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max)
}

/// What the test saw, for the report.
#[derive(Debug, Default)]
struct Figures {
    /// Operations the console showed when s1 was killed and when s2 was drained.
    ops_at_kill: usize,
    ops_at_drain: usize,
    vip_moved: Duration,
    node_taken: Duration,
    drain_took: Duration,
    drain_moved: Duration,
}

/// Whether everything the test needs is there; skips (or fails under `BOOTD_E2E=1`).
fn can_run(test: &str) -> bool {
    if Server::from_env() != Server::Bootd {
        println!("{test}: skipped: serve is bootd's own (BOOTD_TEST_TARGET)");
        return false;
    }
    let mut needs = Needs::new()
        .root()
        .server()
        .postgres()
        .tool("keepalived", "keepalived")
        .tool("qemu-img", "qemu-utils")
        .tool("debugfs", "e2fsprogs");
    for (tool, package) in guest::TOOLS {
        needs = needs.tool(tool, package);
    }
    needs.met(test)
}

#[test]
fn guest_writes_through_a_kill_and_a_drain_under_keepalived() -> Result<()> {
    const TEST: &str = "guest_writes_through_a_kill_and_a_drain_under_keepalived";
    if !can_run(TEST) {
        return Ok(());
    }
    let Some(pg) = shared(TEST) else {
        return Ok(());
    };
    let started = Instant::now();
    let work = tempfile::tempdir()?;
    let image = dsafe::image(work.path())?;
    let reg = SharedRegistry::fresh(pg)?;
    let blank = work.path().join("blank.raw");
    std::fs::File::create(&blank)?.set_len(DISK_BYTES)?;
    reg.run(&["image", "import", "blank", blank.to_str().context("path")?])?;
    reg.run(&["node", "add", MAC, "--image", "blank", "--name", NODE])?;
    let node = reg.json(&["node", "show", NODE, "--json"])?;
    let token = format!("f{:x}", std::process::id());

    let lan_ns = NetNs::new()?;
    let lan = Lan::new(&lan_ns, "br0", "192.0.2.254/24")?;
    lan.add_tap(TAP)?;
    let hosts = [
        lan.add_host("p1", "eth0", &format!("{}/24", ip(1)))?,
        lan.add_host("p2", "eth0", &format!("{}/24", ip(2)))?,
    ];
    // s1 owns the node (pinned there) before s2 starts, and holds the address.
    let mut s1 = serve(&reg, &hosts[0], 1)?;
    within(Duration::from_secs(15), "node owned by s1", || {
        Ok(reg.owner(NODE)?.as_deref() == Some("s1"))
    })?;
    reg.run(&["node", "move", NODE, "--server", "s1"])?;
    let s2 = serve(&reg, &hosts[1], 2)?;
    let _k1 = keepalived(&reg, &hosts[0], 1, 150, work.path())?;
    let _k2 = keepalived(&reg, &hosts[1], 2, 100, work.path())?;
    let vip_portal = format!("{VIP}:{PORT}");
    within(
        Duration::from_secs(20),
        "floating address published by s1",
        || {
            Ok(reg
                .servers()?
                .get("s1")
                .is_some_and(|s| s["iscsi"].as_str() == Some(vip_portal.as_str())))
        },
    )?;

    let console = work.path().join("console.log");
    let boot = Boot {
        image: &image,
        tap: TAP,
        params: vec![
            format!("bootd.ip={GUEST_IP}"),
            format!("bootd.portal={vip_portal}"),
            format!("bootd.iqn={}", node.str_field("target_iqn")?),
            format!("bootd.initiator={}", node.str_field("initiator_iqn")?),
            format!(
                "bootd.chap={}:{}",
                node.str_field("chap_user")?,
                node.str_field("chap_secret")?
            ),
            format!("bootd.token={token}"),
            format!("bootd.write_secs={WRITE_SECS}"),
            format!("bootd.sync_every={SYNC_EVERY}"),
        ],
        console: console.clone(),
        limit: GUEST_LIMIT,
    };
    let mut gone = Vec::new();
    let (outcome, events) = std::thread::scope(|s| {
        let guest = s.spawn(|| guest::boot(&lan_ns, &boot));
        let seen = || ops(&dsafe::console_text(&console)).len();
        // The guest carries on: a few more operations complete.
        let resumed = |what: &str| -> Result<Duration> {
            let n = seen();
            within(Duration::from_secs(60), what, || {
                Ok(seen() >= n + RESUMED_OPS || guest.is_finished())
            })
        };
        let events = (|| -> Result<Figures> {
            dsafe::wait_for_mark(
                &console,
                "BOOTD-E2E: writing for",
                Duration::from_secs(150),
                || guest.is_finished(),
            )?;
            std::thread::sleep(KILL_AFTER);
            let mut f = Figures {
                ops_at_kill: seen(),
                ..Figures::default()
            };
            let t = Instant::now();
            s1.kill9()?;
            f.vip_moved = within(
                Duration::from_secs(20),
                "floating address on s2's host",
                || holds_vip(&hosts[1]),
            )?;
            within(Duration::from_secs(30), "node owned by s2", || {
                Ok(reg.owner(NODE)?.as_deref() == Some("s2"))
            })?;
            f.node_taken = t.elapsed();
            resumed("guest writing again after the kill")?;

            // s1 back, as after a repair: its keepalived stays backup (nopreempt).
            gone.push(std::mem::replace(&mut s1, serve(&reg, &hosts[0], 1)?));
            within(Duration::from_secs(15), "s1 live again", || {
                Ok(reg.servers()?.get("s1").is_some_and(|s| s["live"] == true))
            })?;
            f.ops_at_drain = seen();
            let t = Instant::now();
            let out = reg.run(&["server", "drain", "s2"])?;
            f.drain_took = t.elapsed();
            ensure!(out.stdout.contains("s2 drained: 1 node"), "{out}");
            // s2 released it; s1 claims it on its next look.
            within(Duration::from_secs(10), "drained node owned by s1", || {
                Ok(reg.owner(NODE)?.as_deref() == Some("s1"))
            })?;
            f.drain_moved = t.elapsed();
            resumed("guest writing again after the drain")?;
            Ok(f)
        })();
        let outcome = guest
            .join()
            .map_err(|_| anyhow::anyhow!("guest thread panicked"))?;
        Ok::<_, anyhow::Error>((outcome, events))
    })?;
    let logs = || {
        let mut all: Vec<String> = gone.iter().chain([&s1, &s2]).map(Peer::log).collect();
        for n in ["s1", "s2"] {
            let path = Keepalived::log_path(work.path(), n);
            all.push(format!(
                "--- keepalived {n} ---\n{}",
                std::fs::read_to_string(path).unwrap_or_default()
            ));
        }
        all.join("\n")
    };
    let outcome = outcome.with_context(logs)?;
    let f = events.with_context(|| format!("{outcome}\n{}", logs()))?;
    if !outcome.passed() {
        bail!("the guest did not pass\n{outcome}\n{}", logs());
    }
    let files = dsafe::files_written(&outcome)?;
    let verified = format!("verified {files} checksums");
    ensure!(
        outcome.mark(&verified).is_some(),
        "no {verified:?} report\n{outcome}"
    );
    // The drained server answered the re-login at the floating address with a
    // redirect to the node's new owner.
    let moved = format!("target moved to {}:{PORT}", ip(1));
    ensure!(
        s2.log().contains(&moved),
        "s2 logged no {moved:?}\n{}",
        logs()
    );

    let ops = ops(&outcome.console);
    ensure!(
        ops.len() >= f.ops_at_drain + RESUMED_OPS,
        "the guest stopped writing before the drain was over: {} operations, {} at the drain",
        ops.len(),
        f.ops_at_drain
    );
    let kill_stall = longest_gap(&ops, f.ops_at_kill, f.ops_at_drain);
    let drain_stall = longest_gap(&ops, f.ops_at_drain, ops.len());
    let before = longest_gap(&ops, 0, f.ops_at_kill);
    println!(
        "{TEST}: {}; {} writes and syncs; longest gap before the kill {before:.2}s",
        outcome.mark("wrote ").unwrap_or_default(),
        ops.len()
    );
    println!(
        "{TEST}: SIGKILL of s1: floating address on s2 after {:.1}s, node s2's after {:.1}s; \
         guest-seen stall (longest gap between completed writes/syncs) {kill_stall:.2}s",
        f.vip_moved.as_secs_f64(),
        f.node_taken.as_secs_f64()
    );
    println!(
        "{TEST}: server drain s2 (re-login redirected to s1) took {:.1}s, node s1's after \
         {:.1}s; guest-seen stall {drain_stall:.2}s",
        f.drain_took.as_secs_f64(),
        f.drain_moved.as_secs_f64()
    );
    ensure!(
        kill_stall < KILL_STALL_LIMIT,
        "stall {kill_stall:.2}s at the kill\n{outcome}\n{}",
        logs()
    );
    ensure!(
        drain_stall < DRAIN_STALL_LIMIT,
        "stall {drain_stall:.2}s at the drain\n{outcome}\n{}",
        logs()
    );

    s1.stop()?;
    s2.stop()?;
    let overlay = std::path::PathBuf::from(node.str_field("overlay_path")?);
    let check = dsafe::check_disk(&overlay, work.path(), &token, files)?;
    println!(
        "{TEST}: all {files} files intact; e2fsck clean; qemu-img check: {check}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
