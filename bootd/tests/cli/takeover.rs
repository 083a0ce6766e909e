//! Takeover between servers on one PostgreSQL registry (issue 15): a
//! paused owner fences itself before its ownership expires, a peer takes
//! its node only after the expiry, and a clean stop hands nodes over at
//! once. Real PostgreSQL (skipped with a reason when it is not installed,
//! unless `BOOTD_E2E=1`), real serves, qemu-io (libiscsi) as the node.

use crate::common::*;
use crate::servers::{holders, io_ok_at, owners, servers, within};
use bootd_tests::postgres::{shared, PASSWORD};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `serve` as server `id` on `ip`, its log in `log` (read by the test).
pub(crate) fn serve_logged(env: &Env, id: &str, ip: &str, log: &std::path::Path) -> Result<Serve> {
    serve_logged_with(env, id, ip, log, &[])
}

pub(crate) fn serve_logged_with(
    env: &Env,
    id: &str,
    ip: &str,
    log: &std::path::Path,
    extra: &[&str],
) -> Result<Serve> {
    let args = serve_at(
        ip,
        &[&["--server-id", id, "--script-access", "open"], extra].concat(),
    );
    let inner = env.bootd_cmd(&args);
    // `exec` keeps the pid bootd's, so SIGSTOP reaches serve itself.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"log="$1"; shift; exec "$@" 2>>"$log""#)
        .arg("sh")
        .arg(log)
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    Serve::start_cmd(c)
}

/// Two servers on the registry: s1 (started with `s1_args`) owns n1, pinned
/// to it while it is live (to the survivor when it is not), and s2 is live
/// beside it. Returns both and their log files.
pub(crate) fn s1_owns_n1_beside_s2(
    env: &Env,
    s1_args: &[&str],
) -> Result<(Serve, Serve, std::path::PathBuf, std::path::PathBuf)> {
    let (log1, log2) = (env.path("s1.log"), env.path("s2.log"));
    let s1 = serve_logged_with(env, "s1", "127.0.0.1", &log1, s1_args)?;
    within(Duration::from_secs(15), "n1 owned by s1", || {
        Ok(owners(env)?["n1"].as_deref() == Some("s1"))
    })?;
    env.ok(&["node", "move", "n1", "--server", "s1"])?;
    let s2 = serve_logged(env, "s2", "127.0.0.2", &log2)?;
    within(Duration::from_secs(10), "s2 live", || {
        Ok(servers(env)?.get("s2").is_some_and(|s| s["live"] == true))
    })?;
    Ok((s1, s2, log1, log2))
}

/// A database of its own on the shared PostgreSQL, one golden image and
/// node `n1`; `None` when PostgreSQL is missing (and not required).
pub(crate) fn registry_with_one_node(test: &str) -> Result<Option<(Env, serde_json::Value)>> {
    let Some(pg) = shared(test) else {
        return Ok(None);
    };
    let db = pg.create_database()?;
    let mut env = Env::new()?;
    env.vars = vec![
        ("BOOTD_REGISTRY".into(), pg.url(&db)),
        ("PGPASSWORD".into(), PASSWORD.into()),
    ];
    let raw = env.path("g.raw");
    golden(&raw, 8 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:03:01",
        "--image",
        "deb",
        "--name",
        "n1",
    ])?;
    let node = env.json(&["node", "show", "n1", "--json"])?;
    Ok(Some((env, node)))
}

/// qemu-io's image options for `node` at `ip:port`.
pub(crate) fn opts(ip: &str, port: u16, node: &serde_json::Value) -> String {
    let s = |k: &str| node[k].as_str().unwrap_or_default().to_string();
    format!(
        "driver=iscsi,transport=tcp,portal={ip}:{port},target={},lun=0,initiator-name={},user={},password={}",
        s("target_iqn"),
        s("initiator_iqn"),
        s("chap_user"),
        s("chap_secret")
    )
}

/// Waits for `child` at most `limit`; its output.
pub(crate) fn finish(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output> {
    let t = Instant::now();
    while child.try_wait()?.is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("qemu-io still running after {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child.wait_with_output()?)
}

/// `e` with the serves' logs, to see why.
pub(crate) fn with_logs(
    e: Box<dyn std::error::Error>,
    logs: &[&std::path::Path],
) -> Box<dyn std::error::Error> {
    let mut m = e.to_string();
    for l in logs {
        m.push_str(&format!(
            "\n--- {}:\n{}",
            l.display(),
            std::fs::read_to_string(l).unwrap_or_default()
        ));
    }
    m.into()
}

pub(crate) fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_paused_owner_fences_itself_and_its_peer_takes_over() -> Result {
    let Some((env, node)) = registry_with_one_node(
        "cli::takeover::a_paused_owner_fences_itself_and_its_peer_takes_over",
    )?
    else {
        return Ok(());
    };
    let path = node["overlay_path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (s1, s2, log1, log2) = s1_owns_n1_beside_s2(&env, &[])?;
    let epoch0 = env.json(&["node", "show", "n1", "--json"])?["owner_epoch"]
        .as_u64()
        .unwrap_or(0);

    // A session on s1 that lives through the pause: one write before,
    // one after (libiscsi reconnects when its connection is cut).
    let session = Command::new("qemu-io")
        .args([
            "--image-opts",
            &opts("127.0.0.1", s1.port, &node),
            "-c",
            "write -P 0xa1 0 64k",
            "-c",
            "sleep 16000",
            "-c",
            "write -P 0xa2 64k 64k",
            "-c",
            "read -P 0xa1 0 64k",
            "-c",
            "read -P 0xa2 64k 64k",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    within(Duration::from_secs(10), "a session on s1", || {
        Ok(servers(&env)?["s1"]["sessions"].as_u64().unwrap_or(0) > 0)
    })?;
    std::thread::sleep(Duration::from_millis(1500));

    // s1 freezes with the overlay open and a session on it.
    let s1_pid = s1.pid()?.to_string();
    tool("kill", &["-STOP", &s1_pid])?;
    let stopped = Instant::now();
    let both = [("s1", &s1), ("s2", &s2)];
    let took = within(Duration::from_secs(20), "s2 serving n1", || {
        Ok(owners(&env)?["n1"].as_deref() == Some("s2") && s2.open_count(path.as_ref())? > 0)
    })
    .map_err(|e| with_logs(e, &[&log1, &log2]))?;
    // Not before s1's ownership had expired in the registry: its last
    // heartbeat came at most a period before the pause, expiry 5 s after.
    assert!(took >= Duration::from_millis(3900), "taken after {took:?}");
    let after = env.json(&["node", "show", "n1", "--json"])?;
    assert!(
        after["owner_epoch"].as_u64().unwrap_or(0) > epoch0,
        "{after}"
    );
    println!(
        "s1 paused: n1 served by s2 {took:?} later (epoch {epoch0} -> {})",
        after["owner_epoch"]
    );
    // s2 serves the write s1 acknowledged before it froze, and takes new
    // ones, while s1 (frozen) still has the file open.
    io_ok_at(
        "127.0.0.2",
        s2.port,
        &node,
        &["read -P 0xa1 0 64k", "write -P 0xb1 1M 64k"],
    )
    .map_err(|e| with_logs(e, &[&log1, &log2]))?;
    assert_eq!(holders(&both, &path)?, ["s1", "s2"]);

    // s1 thaws: it finds its lease lapsed and lets go of the overlay
    // without writing it; its session ends.
    tool("kill", &["-CONT", &s1_pid])?;
    let thawed = Instant::now();
    let fenced = within(Duration::from_secs(5), "s1 closing n1's overlay", || {
        Ok(s1.open_count(path.as_ref())? == 0)
    })?;
    println!(
        "s1 resumed: overlay closed {fenced:?} later; the pause lasted {:?}",
        thawed - stopped
    );
    let log = std::fs::read_to_string(&log1)?;
    assert!(log.contains("ownership lease lapsed"), "{log}");
    assert!(
        !log.contains("closing overlay"),
        "s1 tried to commit a fenced overlay: {log}"
    );
    // The session's later write reaches the owner (re-login, redirect).
    let out = finish(session, Duration::from_secs(40))?;
    let t = text(&out);
    assert!(
        out.status.success() && !t.contains("failed") && !t.contains("error"),
        "{t}"
    );
    let s2_log = std::fs::read_to_string(&log2)?;
    assert!(s2_log.contains("serving"), "{s2_log}");

    // Once idle, n1 goes back to s1 (pinned, live again), and only one
    // server ever has it open from then on.
    within(Duration::from_secs(20), "n1 back on s1", || {
        let h = holders(&both, &path)?;
        assert!(h.len() <= 1, "n1 open on {h:?}");
        Ok(h == ["s1"] && owners(&env)?["n1"].as_deref() == Some("s1"))
    })?;
    io_ok_at(
        "127.0.0.1",
        s1.port,
        &node,
        &[
            "read -P 0xa1 0 64k",
            "read -P 0xa2 64k 64k",
            "read -P 0xb1 1M 64k",
            "read -P 0x5a 512k 64k",
        ],
    )?;
    s2.stop()?;
    s1.stop()?;
    tool("qemu-img", &["check", &path])?;
    Ok(())
}

#[test]
fn a_clean_stop_hands_nodes_over_at_once() -> Result {
    let Some((env, node)) =
        registry_with_one_node("cli::takeover::a_clean_stop_hands_nodes_over_at_once")?
    else {
        return Ok(());
    };
    let path = node["overlay_path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (s1, s2, _, _) = s1_owns_n1_beside_s2(&env, &[])?;
    io_ok_at("127.0.0.1", s1.port, &node, &["write -P 0xc1 0 64k"])?;
    let stopping = Instant::now();
    s1.stop()?;
    let stopped = stopping.elapsed();
    // Listed dead at once, not after 5 s, and its node is s2's.
    let list = servers(&env)?;
    assert_eq!(list["s1"]["live"], false, "{}", list["s1"]);
    let taken = within(Duration::from_secs(3), "n1 on s2", || {
        Ok(s2.open_count(path.as_ref())? > 0)
    })?;
    println!("s1 stopped in {stopped:?}; n1 served by s2 {taken:?} after that");
    io_ok_at(
        "127.0.0.2",
        s2.port,
        &node,
        &["read -P 0xc1 0 64k", "read -P 0x5a 64k 64k"],
    )?;
    s2.stop()?;
    tool("qemu-img", &["check", &path])?;
    Ok(())
}

/// qemu-io writing 4 KiB blocks `first..first+count` (pattern: the
/// block's number, 1..=250), 100 ms apart, at `ip:port`.
pub(crate) fn writer(
    ip: &str,
    port: u16,
    node: &serde_json::Value,
    first: u64,
    count: u64,
) -> Result<std::process::Child> {
    let mut c = Command::new("qemu-io");
    c.arg("--image-opts").arg(opts(ip, port, node));
    for b in first..first + count {
        c.arg("-c")
            .arg(format!("write -P {} {} 4k", b % 250 + 1, b * 4096))
            .arg("-c")
            .arg("sleep 100");
    }
    Ok(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?)
}

/// The longest single write qemu-io reported ("4 KiB, 1 ops; 00.01 sec",
/// "... ops; 0:00:01.36 (...)" from a second on):
/// the stall the node saw; and how many writes it reported.
pub(crate) fn longest_write(out: &str) -> (Duration, usize) {
    let mut longest = Duration::ZERO;
    let mut n = 0;
    for line in out.lines() {
        let Some(t) = line
            .split("ops; ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            continue;
        };
        // SS.CC, or H:MM:SS.CC for long ones.
        let secs = t
            .split(':')
            .try_fold(0f64, |acc, p| p.parse::<f64>().ok().map(|v| acc * 60.0 + v));
        if let Some(s) = secs {
            n += 1;
            longest = longest.max(Duration::from_secs_f64(s));
        }
    }
    (longest, n)
}

/// Every block `first..first+count` reads back with its pattern at `ip:port`.
pub(crate) fn verify(
    ip: &str,
    port: u16,
    node: &serde_json::Value,
    first: u64,
    count: u64,
) -> Result {
    let cmds: Vec<String> = (first..first + count)
        .map(|b| format!("read -P {} {} 4k", b % 250 + 1, b * 4096))
        .collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    io_ok_at(ip, port, node, &refs)
}

#[test]
fn a_drain_hands_a_node_in_use_to_the_peer_with_a_short_stall() -> Result {
    let Some((env, node)) = registry_with_one_node(
        "cli::takeover::a_drain_hands_a_node_in_use_to_the_peer_with_a_short_stall",
    )?
    else {
        return Ok(());
    };
    let path = node["overlay_path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (s1, s2, log1, log2) = s1_owns_n1_beside_s2(&env, &["--drain"])?;
    let both = [("s1", &s1), ("s2", &s2)];

    // `server drain` while the node writes every 100 ms.
    let w = writer("127.0.0.1", s1.port, &node, 0, 60)?;
    std::thread::sleep(Duration::from_millis(2500));
    let out = env.ok(&["server", "drain", "s1"])?;
    assert!(out.contains("s1 drained: 1 node"), "{out}");
    let list = env.ok(&["server", "list"])?;
    assert!(list.contains("draining"), "{list}");
    let done = finish(w, Duration::from_secs(60))?;
    let t = text(&done);
    assert!(
        done.status.success() && !t.contains("failed") && !t.contains("error"),
        "{t}"
    );
    let (stall, n) = longest_write(&t);
    assert_eq!(n, 60, "{t}");
    // The re-login at s2 was accepted at once (no session of s1's in the
    // way), and its first command reported a unit attention (29/00, power
    // on or reset: the disk may have changed), which qemu retries.
    assert!(t.contains("UNIT_ATTENTION"), "{t}");
    assert_eq!(holders(&both, &path)?, ["s2"]);
    println!("server drain: {} ; longest write {stall:?}", out.trim());
    assert!(stall < Duration::from_secs(5), "stall {stall:?}");
    verify("127.0.0.2", s2.port, &node, 0, 60).map_err(|e| with_logs(e, &[&log1, &log2]))?;

    // Undone: n1 (pinned to s1) goes back once idle.
    env.ok(&["server", "drain", "s1", "--undo"])?;
    within(Duration::from_secs(15), "n1 back on s1", || {
        Ok(holders(&both, &path)? == ["s1"])
    })?;

    // `serve --drain`: SIGTERM hands the node over, then s1 stops.
    let w = writer("127.0.0.1", s1.port, &node, 100, 60)?;
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    s1.stop()?;
    let stopped = t0.elapsed();
    let done = finish(w, Duration::from_secs(60))?;
    let t = text(&done);
    assert!(
        done.status.success() && !t.contains("failed") && !t.contains("error"),
        "{t}"
    );
    let (stall, n) = longest_write(&t);
    assert_eq!(n, 60, "{t}");
    println!("serve --drain stopped in {stopped:?} after SIGTERM; longest write {stall:?}");
    assert!(stall < Duration::from_secs(5), "stall {stall:?}");
    verify("127.0.0.2", s2.port, &node, 100, 60)?;
    verify("127.0.0.2", s2.port, &node, 0, 60)?;
    let log = std::fs::read_to_string(&log1)?;
    assert!(log.contains("drained"), "{log}");
    s2.stop()?;
    tool("qemu-img", &["check", &path])?;
    Ok(())
}

/// `serve --floating-ip` in a network namespace of its own (root only;
/// SQLite registry): the address is followed as `ip addr` adds and removes
/// it, served on, published as the portal, and named by the node's script.
#[test]
fn a_floating_address_is_served_and_published_while_the_host_has_it() -> Result {
    if tool("id", &["-u"])?.trim() != "0" {
        println!("skipped: needs root for a network namespace");
        return Ok(());
    }
    let env = Env::new()?;
    let node = one_node(&env, "02:00:00:00:04:01")?;
    let inner = env.bootd_cmd(&loopback_serve(&[
        "--server-id",
        "f1",
        "--script-access",
        "open",
        "--floating-ip",
        "192.0.2.50",
    ]));
    let mut c = Command::new("unshare");
    c.args(["-n", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let serve = Serve::start_cmd(c)?;
    let pid = serve.pid()?.to_string();
    let inside = |args: &[&str]| -> Result<String> {
        let mut a = vec!["-t", pid.as_str(), "-n"];
        a.extend_from_slice(args);
        tool("nsenter", &a)
    };
    let portal = || -> Result<String> {
        Ok(servers(&env)?["f1"]["iscsi"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let own = format!("127.0.0.1:{}", serve.port);
    let floating = format!("192.0.2.50:{}", serve.port);
    within(Duration::from_secs(5), "own portal published", || {
        Ok(portal()? == own)
    })?;
    let mac = node["mac"].as_str().unwrap_or_default().replace(':', "-");
    let script_url = format!("http://127.0.0.1:{}/boot/{mac}.ipxe", serve.http);
    let t = Instant::now();
    inside(&["ip", "addr", "add", "192.0.2.50/32", "dev", "lo"])?;
    let published = within(Duration::from_secs(5), "floating portal published", || {
        Ok(portal()? == floating)
    })?;
    println!("floating address added: published as the portal {published:?} later ({:?} since the ip command)", t.elapsed());
    let script = inside(&["curl", "-sf", "--max-time", "10", &script_url])?;
    assert!(script.contains("iscsi:192.0.2.50::"), "{script}");
    let s = |k: &str| node[k].as_str().unwrap_or_default().to_string();
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={floating},target={},lun=0,initiator-name={},user={},password={}",
        s("target_iqn"),
        s("initiator_iqn"),
        s("chap_user"),
        s("chap_secret")
    );
    let out = inside(&["qemu-io", "--image-opts", &opts, "-c", "read -P 0x5a 0 4k"])?;
    assert!(out.contains("read 4096/4096"), "{out}");
    inside(&["ip", "addr", "del", "192.0.2.50/32", "dev", "lo"])?;
    within(Duration::from_secs(5), "own portal again", || {
        Ok(portal()? == own)
    })?;
    let script = inside(&["curl", "-sf", "--max-time", "10", &script_url])?;
    assert!(!script.contains("192.0.2.50"), "{script}");
    serve.stop()?;
    Ok(())
}
