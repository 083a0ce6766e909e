//! Several serves on one data directory: `server list`, nodes spread over
//! the live servers by rendezvous hashing, exactly one server opening each
//! overlay, pins, and a killed server's nodes moving to the survivors. On
//! a real PostgreSQL (skipped with a reason when it is not installed,
//! unless `BOOTD_E2E=1`), and the single-server case on SQLite.

use crate::common::*;
use bootd_tests::postgres::shared;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `serve` as server `id` on loopback address `ip`, every port picked free.
pub(crate) fn serve_as(env: &Env, id: &str, ip: &str) -> Result<Serve> {
    // Scripts for anyone: the test asks for them from loopback.
    let extra = ["--server-id", id, "--script-access", "open"];
    Serve::start_args(env, &serve_at(ip, &extra))
}

/// Node `mac`'s iPXE script as the server at `ip:http` serves it.
fn script_at(ip: &str, http: u16, mac: &str) -> Result<String> {
    let url = format!("http://{ip}:{http}/boot/{}.ipxe", mac.replace(':', "-"));
    tool("curl", &["-sf", "--max-time", "10", &url])
}

/// `server list --json` by id.
pub(crate) fn servers(env: &Env) -> Result<BTreeMap<String, serde_json::Value>> {
    let v = env.json(&["server", "list", "--json"])?;
    Ok(v.as_array()
        .ok_or("server list is not an array")?
        .iter()
        .map(|s| (s["id"].as_str().unwrap_or_default().to_string(), s.clone()))
        .collect())
}

/// Every node's owner, by node name.
pub(crate) fn owners(env: &Env) -> Result<BTreeMap<String, Option<String>>> {
    let v = env.json(&["node", "list", "--json"])?;
    let mut out = BTreeMap::new();
    for n in v.as_array().ok_or("node list")? {
        let name = n["name"].as_str().unwrap_or_default().to_string();
        let show = env.json(&["node", "show", &name, "--json"])?;
        out.insert(name, show["owner"].as_str().map(str::to_string));
    }
    Ok(out)
}

/// Waits (at most `limit`) until `check` is true; how long it took.
pub(crate) fn within(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if check()? {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// qemu-io against `ip:port`.
pub(crate) fn io_at(
    ip: &str,
    port: u16,
    node: &serde_json::Value,
    cmds: &[&str],
) -> Result<std::process::Output> {
    let s = |k: &str| node[k].as_str().unwrap_or_default().to_string();
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={ip}:{port},target={},lun=0,initiator-name={},user={},password={}",
        s("target_iqn"),
        s("initiator_iqn"),
        s("chap_user"),
        s("chap_secret")
    );
    let mut c = std::process::Command::new("qemu-io");
    c.arg("--image-opts").arg(opts);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    run(c)
}

pub(crate) fn io_ok_at(ip: &str, port: u16, node: &serde_json::Value, cmds: &[&str]) -> Result {
    let out = io_at(ip, port, node, cmds)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success()
        || text.contains("Pattern verification failed")
        || text.contains("can't open")
    {
        return Err(format!("qemu-io {cmds:?} at {ip}:{port}: {text}").into());
    }
    Ok(())
}

/// How many of `serves` have `path` open.
pub(crate) fn holders(serves: &[(&str, &Serve)], path: &str) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for (id, s) in serves {
        if s.open_count(std::path::Path::new(path))? > 0 {
            v.push(id.to_string());
        }
    }
    Ok(v)
}

#[test]
fn one_sqlite_server_lists_itself() -> Result {
    let env = Env::new()?;
    one_node(&env, "02:00:00:00:01:01")?;
    let serve = serve_as(&env, "solo", "127.0.0.1")?;
    within(Duration::from_secs(10), "n1 owned by solo", || {
        Ok(owners(&env)?.get("n1") == Some(&Some("solo".into())))
    })?;
    let list = servers(&env)?;
    assert_eq!(list.keys().collect::<Vec<_>>(), ["solo"]);
    let solo = &list["solo"];
    assert_eq!(solo["live"], true, "{solo}");
    assert_eq!(solo["nodes_owned"], 1, "{solo}");
    assert_eq!(solo["iscsi"], format!("127.0.0.1:{}", serve.port));
    assert!(
        solo["heartbeat_age_ms"].as_i64().unwrap_or(-1) < 5000,
        "{solo}"
    );
    let table = env.ok(&["server", "list"])?;
    assert!(table.contains("solo") && table.contains("live"), "{table}");
    // A second serve under the same id on this data directory is refused.
    let e = env.fails(&[
        "serve",
        "--server-id",
        "solo",
        "--listen-ip",
        "127.0.0.1",
        "--iscsi-port",
        "0",
        "--http-port",
        "0",
        "--tftp-port",
        "0",
    ])?;
    assert!(e.contains("already running") && e.contains("solo"), "{e}");
    serve.stop()?;
    Ok(())
}

#[test]
fn three_servers_share_one_postgres_registry() -> Result {
    let Some(pg) = shared("cli::servers::three_servers_share_one_postgres_registry") else {
        return Ok(());
    };
    let (env, _db) = on_postgres_with_image(pg, Via::Tcp, 8 << 20)?;
    let names: Vec<String> = (0..12).map(|i| format!("n{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        env.ok(&[
            "node",
            "add",
            &format!("02:00:00:00:02:{i:02x}"),
            "--image",
            "deb",
            "--name",
            n,
        ])?;
    }
    let addr = [
        ("s1", "127.0.0.1"),
        ("s2", "127.0.0.2"),
        ("s3", "127.0.0.3"),
    ];
    let s1 = serve_as(&env, "s1", addr[0].1)?;
    let s2 = serve_as(&env, "s2", addr[1].1)?;
    let s3 = serve_as(&env, "s3", addr[2].1)?;
    let port = |id: &str, s: [&Serve; 3]| match id {
        "s1" => s[0].port,
        "s2" => s[1].port,
        _ => s[2].port,
    };
    let ip = |id: &str| addr.iter().find(|a| a.0 == id).map_or("127.0.0.1", |a| a.1);

    // All three live, every node owned, each server its share.
    let settled = within(
        Duration::from_secs(20),
        "nodes spread over three servers",
        || {
            let o = owners(&env)?;
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for owner in o.values().flatten() {
                *per.entry(owner.clone()).or_default() += 1;
            }
            Ok(o.values().all(Option::is_some) && per.len() == 3)
        },
    )?;
    println!("12 nodes spread over 3 servers {settled:?} after the third started");
    let list = servers(&env)?;
    for (id, a) in addr {
        let s = &list[id];
        assert_eq!(s["live"], true, "{s}");
        assert!(s["heartbeat_age_ms"].as_i64().unwrap_or(-1) < 5000, "{s}");
        assert!(
            s["iscsi"].as_str().unwrap_or_default().starts_with(a),
            "{s}"
        );
    }
    let owned: u64 = list
        .values()
        .map(|s| s["nodes_owned"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(owned, 12);

    // Each node is served by its owner, and only its owner has it open.
    let all = [("s1", &s1), ("s2", &s2), ("s3", &s3)];
    let o = owners(&env)?;
    for n in &names {
        let owner = o[n].clone().ok_or("no owner")?;
        let node = env.json(&["node", "show", n, "--json"])?;
        io_ok_at(
            ip(&owner),
            port(&owner, [&s1, &s2, &s3]),
            &node,
            &["read -P 0x5a 0 64k"],
        )?;
        // A login sent to a server that does not own the node is
        // redirected to the owner (libiscsi follows "target moved
        // temporarily") and succeeds there; the overlay stays on the owner.
        let other = ["s1", "s2", "s3"]
            .into_iter()
            .find(|s| *s != owner)
            .ok_or("no other server")?;
        io_ok_at(
            ip(other),
            port(other, [&s1, &s2, &s3]),
            &node,
            &["read -P 0x5a 0 64k"],
        )?;
        let path = node["overlay_path"].as_str().unwrap_or_default();
        assert_eq!(holders(&all, path)?, [owner.as_str()], "{n}");
        // Any server answers for the script; the disk is on the owner.
        let http = |id: &str| match id {
            "s1" => s1.http,
            "s2" => s2.http,
            _ => s3.http,
        };
        let mac = node["mac"].as_str().unwrap_or_default();
        let portal = format!("iscsi:{}::{}:0:", ip(&owner), port(&owner, [&s1, &s2, &s3]));
        for from in ["s1", "s2", "s3"] {
            let script = script_at(ip(from), http(from), mac)?;
            assert!(script.contains(&portal), "{n} from {from}: {script}");
        }
    }

    // Pin a node of s1's to s2: it moves (idle), and is never open on both.
    let n = names
        .iter()
        .find(|n| o[*n].as_deref() == Some("s1"))
        .ok_or("s1 owns nothing")?
        .clone();
    let node = env.json(&["node", "show", &n, "--json"])?;
    let path = node["overlay_path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let epoch0 = node["owner_epoch"].as_u64().unwrap_or(0);
    let e = env.fails(&["node", "move", &n, "--server", "nope"])?;
    assert!(e.contains("server \"nope\" does not exist"), "{e}");
    env.ok(&["node", "move", &n, "--server", "s2"])?;
    let mut both = 0;
    let moved = within(Duration::from_secs(15), "pinned node on s2", || {
        let h = holders(&all, &path)?;
        if h.len() > 1 {
            both += 1;
        }
        Ok(h == ["s2"] && owners(&env)?[&n].as_deref() == Some("s2"))
    })?;
    assert_eq!(both, 0, "two servers had {n}'s overlay open");
    let pinned = env.json(&["node", "show", &n, "--json"])?;
    assert_eq!(pinned["pinned_server"], "s2");
    assert!(
        pinned["owner_epoch"].as_u64().unwrap_or(0) > epoch0,
        "{pinned}"
    );
    io_ok_at(ip("s2"), s2.port, &pinned, &["read -P 0x5a 0 64k"])?;
    println!("pinned node moved to s2 in {moved:?}");
    // Unpinned while idle: back to s1, still one holder at a time.
    env.ok(&["node", "move", &n, "--server", "none"])?;
    within(Duration::from_secs(15), "unpinned node back on s1", || {
        let h = holders(&all, &path)?;
        assert!(h.len() <= 1, "{n} open on {h:?}");
        Ok(h == ["s1"])
    })?;

    // Pinned elsewhere while a session is live: it stays until the
    // session ends, then moves.
    let s = |k: &str| node[k].as_str().unwrap_or_default().to_string();
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={}:{},target={},lun=0,initiator-name={},user={},password={}",
        ip("s1"),
        s1.port,
        s("target_iqn"),
        s("initiator_iqn"),
        s("chap_user"),
        s("chap_secret")
    );
    let mut session = std::process::Command::new("qemu-io")
        .args([
            "--image-opts",
            &opts,
            "-c",
            "read -P 0x5a 0 4k",
            "-c",
            "sleep 4000",
            "-c",
            "read -P 0x5a 0 4k",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    within(Duration::from_secs(10), "a session on s1", || {
        Ok(servers(&env)?["s1"]["sessions"].as_u64().unwrap_or(0) > 0)
    })?;
    env.ok(&["node", "move", &n, "--server", "s3"])?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        assert_eq!(holders(&all, &path)?, ["s1"], "{n} moved under its session");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = session.wait()?;
    assert!(status.success(), "the session was cut: {status}");
    within(Duration::from_secs(15), "idle node on s3", || {
        let h = holders(&all, &path)?;
        assert!(h.len() <= 1, "{n} open on {h:?}");
        Ok(h == ["s3"])
    })?;
    env.ok(&["node", "move", &n, "--server", "none"])?;
    within(
        Duration::from_secs(15),
        "unpinned node back on s1 again",
        || Ok(holders(&all, &path)? == ["s1"]),
    )?;

    // Force it: s2 pauses (SIGSTOP) with its overlays open. Its lease
    // lapses: its fence keeper lets go of the overlays' locks, and once
    // its ownership has expired in the registry the others take its nodes
    // and open them (s2, frozen, still has its descriptors; it never uses
    // them again: see `takeover`).
    let s2_nodes: Vec<String> = owners(&env)?
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some("s2"))
        .map(|(n, _)| n)
        .collect();
    assert!(!s2_nodes.is_empty());
    let s2_paths: Vec<String> = s2_nodes
        .iter()
        .map(|n| {
            let v = env.json(&["node", "show", n, "--json"])?;
            Ok(v["overlay_path"].as_str().unwrap_or_default().to_string())
        })
        .collect::<Result<_>>()?;
    let s2_pid = s2.pid()?.to_string();
    tool("kill", &["-STOP", &s2_pid])?;
    let paused = within(Duration::from_secs(15), "paused s2 listed dead", || {
        Ok(servers(&env)?["s2"]["live"] == false)
    })?;
    within(
        Duration::from_secs(10),
        "s2's nodes served by the others",
        || {
            let o = owners(&env)?;
            let mut all_open = true;
            for p in &s2_paths {
                let h = holders(&all, p)?;
                all_open &= h.len() == 2 && h.contains(&"s2".to_string());
            }
            Ok(all_open
                && s2_nodes
                    .iter()
                    .all(|n| matches!(o[n].as_deref(), Some("s1" | "s3"))))
        },
    )?;
    tool("kill", &["-CONT", &s2_pid])?;
    let back = within(Duration::from_secs(20), "s2 owns its nodes again", || {
        let o = owners(&env)?;
        let mut only_s2 = true;
        for p in &s2_paths {
            only_s2 &= holders(&all, p)? == ["s2"];
        }
        Ok(only_s2 && s2_nodes.iter().all(|n| o[n].as_deref() == Some("s2")))
    })?;
    for (n, p) in s2_nodes.iter().zip(&s2_paths) {
        assert_eq!(holders(&all, p)?, ["s2"], "{p}");
        let node = env.json(&["node", "show", n, "--json"])?;
        io_ok_at(ip("s2"), s2.port, &node, &["read -P 0x5a 0 64k"])?;
    }
    println!("paused s2 dead after {paused:?}; its {} nodes taken by the others; owner again {back:?} after SIGCONT", s2_nodes.len());

    // s3 dies (SIGKILL): listed dead after the documented 5 s, its nodes
    // taken by the survivors.
    let s3_nodes: Vec<String> = owners(&env)?
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some("s3"))
        .map(|(n, _)| n)
        .collect();
    assert!(!s3_nodes.is_empty());
    let killed = Instant::now();
    drop(s3);
    let dead = within(Duration::from_secs(15), "s3 listed dead", || {
        Ok(servers(&env)?["s3"]["live"] == false)
    })?;
    // Its last heartbeat came up to a period before the kill.
    assert!(dead >= Duration::from_secs(3), "dead after {dead:?}");
    within(Duration::from_secs(20), "s3's nodes taken over", || {
        let o = owners(&env)?;
        Ok(s3_nodes
            .iter()
            .all(|n| matches!(o[n].as_deref(), Some("s1" | "s2"))))
    })?;
    let taken = killed.elapsed();
    println!(
        "s3 listed dead {dead:?} after SIGKILL; its {} nodes served elsewhere after {taken:?}",
        s3_nodes.len()
    );
    let o = owners(&env)?;
    for n in &s3_nodes {
        let owner = o[n].clone().ok_or("no owner")?;
        let node = env.json(&["node", "show", n, "--json"])?;
        io_ok_at(
            ip(&owner),
            if owner == "s1" { s1.port } else { s2.port },
            &node,
            &["read -P 0x5a 0 64k"],
        )?;
    }
    s1.stop()?;
    s2.stop()?;
    Ok(())
}
