//! `serve --dhcp off`: one target per node over the node's overlay, real
//! initiators (qemu's libiscsi driver, iscsi-ls), registry changes applied
//! while running.

use crate::common::*;

struct NodeInfo {
    target: String,
    initiator: String,
    user: String,
    secret: String,
    overlay: String,
}

fn info(env: &Env, name: &str) -> Result<NodeInfo> {
    let v = env.json(&["node", "show", name, "--json"])?;
    let s = |k: &str| -> Result<String> {
        Ok(v[k]
            .as_str()
            .ok_or_else(|| format!("{k} missing"))?
            .to_string())
    };
    Ok(NodeInfo {
        target: s("target_iqn")?,
        initiator: s("initiator_iqn")?,
        user: s("chap_user")?,
        secret: s("chap_secret")?,
        overlay: s("overlay_path")?,
    })
}

impl NodeInfo {
    fn login(&self) -> Login<'_> {
        Login {
            target: &self.target,
            initiator: &self.initiator,
            chap: Some((&self.user, &self.secret)),
        }
    }
}

#[test]
fn two_nodes_share_a_golden_image_and_nothing_else() -> Result {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 64 << 20, 4 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    let stored = env.json(&["image", "list", "--json"])?[0]["path"]
        .as_str()
        .ok_or("path")?
        .to_string();
    let golden_sum = sha256(stored.as_ref())?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0a",
        "--image",
        "deb",
        "--name",
        "a",
    ])?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0b",
        "--image",
        "deb",
        "--name",
        "b",
    ])?;
    let a = info(&env, "a")?;
    let b = info(&env, "b")?;

    let serve = Serve::start(&env)?;
    let port = serve.port;
    io_ok(
        port,
        &a.login(),
        &["write -P 0xa1 0 1M", "read -P 0x5a 1M 3M"],
    )?;
    io_ok(
        port,
        &b.login(),
        &[
            "write -P 0xb2 1M 1M",
            "read -P 0x5a 0 1M",
            "read -P 0x5a 2M 2M",
        ],
    )?;
    // Each sees its own writes only, over golden.
    io_ok(
        port,
        &a.login(),
        &["read -P 0xa1 0 1M", "read -P 0x5a 1M 1M"],
    )?;
    io_ok(
        port,
        &b.login(),
        &["read -P 0x5a 0 1M", "read -P 0xb2 1M 1M"],
    )?;

    // A second server on the same data directory is refused.
    let e = env.fails(&["serve", "--listen-ip", "127.0.0.1", "--iscsi-port", "0"])?;
    assert!(e.contains("already running"), "{e}");

    // One golden image, opened once for both nodes.
    assert_eq!(serve.open_count(stored.as_ref())?, 1);

    // A's identity and secret do not open B's target ...
    login_refused(
        port,
        &Login {
            target: &b.target,
            initiator: &a.initiator,
            chap: Some((&a.user, &a.secret)),
        },
    )?;
    // ... nor B's initiator name with A's secret ...
    login_refused(
        port,
        &Login {
            target: &b.target,
            initiator: &b.initiator,
            chap: Some((&a.user, &a.secret)),
        },
    )?;
    // ... and nobody gets in without CHAP.
    login_refused(
        port,
        &Login {
            target: &b.target,
            initiator: &b.initiator,
            chap: None,
        },
    )?;

    // Discovery shows an initiator its own target only.
    let seen = tool(
        "iscsi-ls",
        &["-i", &a.initiator, &format!("iscsi://127.0.0.1:{port}")],
    )?;
    assert!(seen.contains(&a.target), "{seen}");
    assert!(!seen.contains(&b.target), "{seen}");

    serve.stop()?;
    assert_eq!(
        sha256(stored.as_ref())?,
        golden_sum,
        "golden image unchanged"
    );
    // Offline, qemu agrees with what was written, and the overlays are clean.
    for (n, want) in [(&a, [0xa1u8, 0x5a]), (&b, [0x5a, 0xb2])] {
        tool("qemu-img", &["check", &n.overlay])?;
        let expect = env.path("expect.raw");
        std::fs::copy(&raw, &expect)?;
        tool(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                &format!("write -P {} 0 1M", want[0]),
                "-c",
                &format!("write -P {} 1M 1M", want[1]),
                &expect.to_string_lossy(),
            ],
        )?;
        tool(
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                &n.overlay,
                &expect.to_string_lossy(),
            ],
        )?;
    }
    Ok(())
}

#[test]
fn nodes_added_reset_and_removed_while_serving() -> Result {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 32 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    let serve = Serve::start(&env)?;
    let port = serve.port;

    // Added after serve started.
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0c",
        "--image",
        "deb",
        "--name",
        "c",
    ])?;
    let c = info(&env, "c")?;
    io_eventually(port, &c.login(), &["write -P 0xc3 0 64k"])?;
    io_ok(port, &c.login(), &["read -P 0xc3 0 64k"])?;

    // Reset while served: the CLI waits for serve to let go of the overlay.
    env.ok(&["node", "reset", "c"])?;
    io_eventually(port, &c.login(), &["read -P 0x5a 0 1M"])?;

    // A new image version; upgrading moves every served node at once.
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0e",
        "--image",
        "deb",
        "--name",
        "e",
    ])?;
    let e = info(&env, "e")?;
    io_eventually(port, &e.login(), &["write -P 0xe5 0 64k"])?;
    let raw2 = env.path("g2.raw");
    golden(&raw2, 32 << 20, 1 << 20, 0x77)?;
    env.ok(&["image", "import", "deb", &raw2.to_string_lossy()])?;
    io_ok(port, &c.login(), &["read -P 0x5a 0 1M"])?;
    let started = std::time::Instant::now();
    env.ok(&["image", "upgrade", "deb"])?;
    // Released together: about one poll, not one per node.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    io_eventually(port, &c.login(), &["read -P 0x77 0 1M"])?;
    io_eventually(port, &e.login(), &["read -P 0x77 0 1M"])?;
    assert_eq!(
        env.json(&["node", "show", "e", "--json"])?["image_version"],
        2
    );

    // Removed: the target is gone.
    env.ok(&["node", "rm", "c"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = qemu_io(port, &c.login(), &["read 0 512"])?;
        if !out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "target of removed node still served"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    serve.stop()?;
    Ok(())
}

#[test]
fn reset_with_a_live_session_ends_it_and_the_initiator_sees_golden() -> Result {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 32 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:0d",
        "--image",
        "deb",
        "--name",
        "d",
    ])?;
    let d = info(&env, "d")?;
    let serve = Serve::start(&env)?;

    // One qemu-io process keeps its session open across the reset. It acts
    // on a line when more input arrives, so commands go in separate writes.
    let mut child = Command::new("qemu-io")
        .arg("--image-opts")
        .arg(format!(
            "driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={},lun=0,\
             initiator-name={},user={},password={}",
            serve.port, d.target, d.initiator, d.user, d.secret
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    stdin.write_all(b"write -P 0xd4 0 64k\n")?;
    stdin.flush()?;
    std::thread::sleep(std::time::Duration::from_secs(1));

    let started = std::time::Instant::now();
    env.ok(&["node", "reset", "d"])?;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // libiscsi logs in again and must find the golden image.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stdin.write_all(b"read -P 0x5a 0 64k\n")?;
    stdin.flush()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    stdin.write_all(b"read -P 0x5a 64k 64k\nquit\n")?;
    drop(stdin);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err("qemu-io did not finish".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wrote 65536/65536"), "{text}");
    assert_eq!(text.matches("read 65536/65536").count(), 2, "{text}");
    assert!(!text.contains("Pattern verification failed"), "{text}");
    serve.stop()?;
    tool("qemu-img", &["check", &d.overlay])?;
    Ok(())
}

#[test]
fn fifty_nodes_writing_a_mib_each_cost_little_space() -> Result {
    const NODES: usize = 50;
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 256 << 20, 8 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    for i in 0..NODES {
        env.ok(&[
            "node",
            "add",
            &format!("02:00:00:00:01:{i:02x}"),
            "--image",
            "deb",
        ])?;
    }
    let nodes = env.json(&["node", "list", "--json"])?;
    let nodes = nodes.as_array().ok_or("node list")?;
    assert_eq!(nodes.len(), NODES);
    let serve = Serve::start(&env)?;
    for (i, listed) in nodes.iter().enumerate() {
        // `node list` leaves the secrets out; `node show` has them.
        let name = listed["name"].as_str().ok_or("name")?;
        let n = env.json(&["node", "show", name, "--json"])?;
        let s = |k: &str| n[k].as_str().unwrap_or_default();
        // Spread over the disk so each node touches its own clusters.
        let off = (i as u64 % 200) << 20;
        io_ok(
            serve.port,
            &Login {
                target: s("target_iqn"),
                initiator: s("initiator_iqn"),
                chap: Some((s("chap_user"), s("chap_secret"))),
            },
            &[&format!("write -P 0x{:02x} {off} 1M", i + 1)],
        )?;
    }
    serve.stop()?;
    let df = env.json(&["df", "--json"])?;
    let physical = df["physical_bytes"].as_u64().ok_or("physical")?;
    let golden_alloc = df["images_bytes"].as_u64().ok_or("images")?;
    assert!(
        physical <= golden_alloc + NODES as u64 * (4 << 20),
        "physical {physical} > golden {golden_alloc} + 4 MiB per node: {df}"
    );
    assert_eq!(df["logical_bytes"], NODES as u64 * (256 << 20));
    // Each overlay holds its node's MiB.
    for n in nodes {
        let bytes = env.json(&[
            "node",
            "show",
            n["name"].as_str().unwrap_or_default(),
            "--json",
        ])?["overlay_bytes"]
            .as_u64()
            .ok_or("overlay_bytes")?;
        assert!((1 << 20..4 << 20).contains(&bytes), "{bytes}");
    }
    Ok(())
}

#[test]
fn serve_refuses_dhcp_without_a_network_and_bad_config() -> Result {
    let env = Env::new()?;
    let e = env.fails(&["serve", "--dhcp", "proxy", "--iscsi-port", "0"])?;
    assert!(e.contains("needs --interface or --listen-ip"), "{e}");
    let e = env.fails(&[
        "serve",
        "--dhcp",
        "full",
        "--listen-ip",
        "127.0.0.1",
        "--iscsi-port",
        "0",
    ])?;
    assert!(e.contains("--pool"), "{e}");
    let cfg = env.path("bootd.toml");
    std::fs::write(&cfg, "iscsi_port = 0\nlisten_adress = \"127.0.0.1\"\n")?;
    let e = env.fails(&["serve", "--config", &cfg.to_string_lossy()])?;
    assert!(e.contains("listen_adress"), "{e}");
    Ok(())
}
