//! `node add|list|show|rm|reset|move`, `image upgrade` and `df` without serve.

use crate::common::*;

fn setup() -> Result<Env> {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 64 << 20, 1 << 20, 0x5a)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    Ok(env)
}

#[test]
fn add_derives_identity_and_creates_the_overlay() -> Result {
    let env = setup()?;
    env.ok(&["node", "add", "52-54-00-AB-CD-01", "--image", "deb"])?;
    env.ok(&[
        "node",
        "add",
        "5254.00ab.cd02",
        "--image",
        "deb",
        "--name",
        "web2",
        "--ip",
        "192.0.2.7",
    ])?;
    let a = env.json(&["node", "show", "52:54:00:ab:cd:01", "--json"])?;
    assert_eq!(a["name"], "node-525400abcd01");
    assert_eq!(a["mac"], "52:54:00:ab:cd:01");
    assert_eq!(a["image"], "deb");
    assert_eq!(
        a["target_iqn"],
        "iqn.2026-11.io.bootd:node.node-525400abcd01"
    );
    assert_eq!(
        a["initiator_iqn"],
        "iqn.2026-11.io.bootd:initiator.node-525400abcd01"
    );
    assert_eq!(a["chap_user"], "node-525400abcd01");
    let secret = a["chap_secret"].as_str().ok_or("secret")?;
    assert_eq!(secret.len(), 16);
    let overlay = a["overlay_path"].as_str().ok_or("overlay")?;
    assert!(a["overlay_bytes"].as_u64().ok_or("overlay_bytes")? > 0);
    let info: serde_json::Value =
        serde_json::from_str(&tool("qemu-img", &["info", "--output=json", overlay])?)?;
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 64u64 << 20);
    assert_eq!(info["backing-filename-format"], "raw");
    tool("qemu-img", &["check", overlay])?;

    let b = env.json(&["node", "show", "web2", "--json"])?;
    assert_eq!(b["ip"], "192.0.2.7");
    assert_ne!(b["chap_secret"], a["chap_secret"]);

    let e = env.fails(&[
        "node",
        "add",
        "52:54:00:ab:cd:01",
        "--image",
        "deb",
        "--name",
        "other",
    ])?;
    assert!(e.contains("MAC"), "{e}");
    let e = env.fails(&[
        "node",
        "add",
        "52:54:00:ab:cd:09",
        "--image",
        "deb",
        "--name",
        "web2",
    ])?;
    assert!(e.contains("name"), "{e}");
    env.fails(&["node", "add", "52:54:00:ab:cd:09", "--image", "nope"])?;
    env.fails(&["node", "add", "not-a-mac", "--image", "deb"])?;
    env.fails(&["node", "show", "ghost"])?;
    // Usage errors are one line too.
    env.fails(&[
        "node",
        "add",
        "52:54:00:ab:cd:09",
        "--image",
        "deb",
        "--ip",
        "nope",
    ])?;
    env.fails(&["node", "add", "52:54:00:ab:cd:09"])?;
    env.fails(&["node", "move", "web2"])?;

    let list = env.json(&["node", "list", "--json"])?;
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    env.ok(&["node", "rm", "52:54:00:AB:CD:01"])?;
    assert!(!std::path::Path::new(overlay).exists(), "overlay deleted");
    assert_eq!(
        env.json(&["node", "list", "--json"])?
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    Ok(())
}

#[test]
fn df_counts_golden_once_and_overlays_as_allocated() -> Result {
    let env = setup()?;
    for i in 0..5 {
        env.ok(&[
            "node",
            "add",
            &format!("02:00:00:00:00:0{i}"),
            "--image",
            "deb",
        ])?;
    }
    let df = env.json(&["df", "--json"])?;
    let physical = df["physical_bytes"].as_u64().ok_or("physical")?;
    let logical = df["logical_bytes"].as_u64().ok_or("logical")?;
    assert_eq!(logical, 5 * (64 << 20));
    // 1 MiB of golden data plus five empty overlays of a few clusters each.
    assert!(((1 << 20)..6 << 20).contains(&physical), "{df}");
    assert!(df["saving_percent"].as_f64().ok_or("saving")? > 90.0);
    Ok(())
}

#[test]
fn reset_and_moves_follow_image_versions() -> Result {
    let env = setup()?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:01",
        "--image",
        "deb",
        "--name",
        "a",
    ])?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:02",
        "--image",
        "deb",
        "--name",
        "b",
    ])?;
    let a = env.json(&["node", "show", "a", "--json"])?;
    let overlay = a["overlay_path"].as_str().ok_or("overlay")?.to_string();
    // Write into the overlay offline, as qemu would.
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xa1 0 1M", &overlay],
    )?;
    tool(
        "qemu-io",
        &["-f", "qcow2", "-r", "-c", "read -P 0xa1 0 1M", &overlay],
    )?;

    let raw2 = env.path("g2.raw");
    golden(&raw2, 64 << 20, 1 << 20, 0x77)?;
    env.ok(&["image", "import", "deb", &raw2.to_string_lossy()])?;

    // Nodes stay on the version they were created on.
    assert_eq!(
        env.json(&["node", "show", "a", "--json"])?["image_version"],
        1
    );
    // Reset keeps the version and drops the writes.
    env.ok(&["node", "reset", "a"])?;
    assert_eq!(
        env.json(&["node", "show", "a", "--json"])?["image_version"],
        1
    );
    let out = tool(
        "qemu-io",
        &["-f", "qcow2", "-r", "-c", "read -P 0x5a 0 1M", &overlay],
    )?;
    assert!(!out.contains("Pattern verification failed"), "{out}");

    env.ok(&["node", "move", "a", "--latest"])?;
    let a = env.json(&["node", "show", "a", "--json"])?;
    assert_eq!(a["image_version"], 2);
    let out = tool(
        "qemu-io",
        &["-f", "qcow2", "-r", "-c", "read -P 0x77 0 1M", &overlay],
    )?;
    assert!(!out.contains("Pattern verification failed"), "{out}");

    env.ok(&["image", "upgrade", "deb"])?;
    assert_eq!(
        env.json(&["node", "show", "b", "--json"])?["image_version"],
        2
    );
    tool("qemu-img", &["check", &overlay])?;
    Ok(())
}

#[test]
fn the_data_directory_can_move() -> Result {
    let env = setup()?;
    env.ok(&[
        "node",
        "add",
        "02:00:00:00:00:01",
        "--image",
        "deb",
        "--name",
        "a",
    ])?;
    let moved = env.path("moved");
    std::fs::rename(env.data(), &moved)?;
    let moved_s = moved.to_string_lossy().to_string();
    let out = run(env.bootd_cmd(&["--data-dir", &moved_s, "node", "show", "a", "--json"]))?;
    assert!(out.status.success());
    let a: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let overlay = a["overlay_path"].as_str().ok_or("overlay")?;
    assert!(overlay.starts_with(&moved_s), "{overlay}");
    assert!(a["image_path"]
        .as_str()
        .ok_or("image")?
        .starts_with(&moved_s));
    // The overlay names its golden image relative to itself, so qemu follows too.
    tool(
        "qemu-io",
        &["-f", "qcow2", "-r", "-c", "read -P 0x5a 0 1M", overlay],
    )?;
    Ok(())
}
