//! `image import|list|rm` and `template`.

use crate::common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

#[test]
fn import_raw_then_qcow2_makes_versions_with_checksums() -> Result {
    let env = Env::new()?;
    let raw = env.path("golden.raw");
    golden(&raw, 32 << 20, 1 << 20, 0x5a)?;
    let sum = sha256(&raw)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;

    // The same disk as qcow2, named .raw: the format comes from the bytes.
    let q = env.path("looks-raw.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &raw.to_string_lossy(),
            &q.to_string_lossy(),
        ],
    )?;
    env.ok(&["image", "import", "deb", &q.to_string_lossy()])?;

    let list = env.json(&["image", "list", "--json"])?;
    let list = list.as_array().ok_or("list is an array")?;
    assert_eq!(list.len(), 2);
    for (i, img) in list.iter().enumerate() {
        assert_eq!(img["name"], "deb");
        assert_eq!(img["version"], i as u64 + 1);
        assert_eq!(img["bytes"], 32u64 << 20);
        assert_eq!(img["sha256"], sum.as_str());
        let path = img["path"].as_str().ok_or("path")?;
        assert_eq!(sha256(path.as_ref())?, sum);
        let meta = std::fs::metadata(path)?;
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o400,
            "stored read-only, the owner's alone"
        );
        // Sparse: the 31 MiB of zeros take no space.
        assert!(
            meta.blocks() * 512 < 4 << 20,
            "{} bytes allocated",
            meta.blocks() * 512
        );
    }
    assert_eq!(list[1]["latest"], true);
    assert_eq!(list[0]["latest"], false);
    Ok(())
}

#[test]
fn vhd_goes_through_qemu_img() -> Result {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 8 << 20, 4096, 0x11)?;
    let vhd = env.path("g.vhd");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            &raw.to_string_lossy(),
            &vhd.to_string_lossy(),
        ],
    )?;
    env.ok(&["image", "import", "hv", &vhd.to_string_lossy()])?;
    let list = env.json(&["image", "list", "--json"])?;
    let path = list[0]["path"].as_str().ok_or("path")?;
    let cmp = tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &raw.to_string_lossy(),
            path,
        ],
    );
    // VHD rounds the size up to its CHS geometry; the data must match.
    assert!(cmp.is_ok(), "{cmp:?}");
    Ok(())
}

#[test]
fn bad_imports_fail_with_one_line() -> Result {
    let env = Env::new()?;
    let empty = env.path("empty");
    std::fs::write(&empty, b"")?;
    let e = env.fails(&["image", "import", "x", &empty.to_string_lossy()])?;
    assert!(e.contains("empty"), "{e}");
    let e = env.fails(&["image", "import", "x", "/nonexistent/disk.raw"])?;
    assert!(e.contains("cannot open"), "{e}");
    let raw = env.path("g.raw");
    golden(&raw, 1 << 20, 512, 1)?;
    let e = env.fails(&["image", "import", "../evil", &raw.to_string_lossy()])?;
    assert!(e.contains("invalid"), "{e}");
    // A qcow2 naming a backing file: the path in the header is not followed.
    let child = env.path("child.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            &raw.to_string_lossy(),
            &child.to_string_lossy(),
        ],
    )?;
    let e = env.fails(&["image", "import", "x", &child.to_string_lossy()])?;
    assert!(e.contains("backing file"), "{e}");
    env.fails(&["image", "rm", "nothing"])?;
    assert_eq!(
        env.json(&["image", "list", "--json"])?,
        serde_json::json!([])
    );
    Ok(())
}

#[test]
fn templates() -> Result {
    let env = Env::new()?;
    let raw = env.path("g.raw");
    golden(&raw, 1 << 20, 512, 1)?;
    env.ok(&["image", "import", "deb", &raw.to_string_lossy()])?;
    let script = env.path("boot.ipxe");
    std::fs::write(&script, "#!ipxe\nsanboot ${root}\n")?;
    env.ok(&[
        "template",
        "add",
        "lab",
        "--image",
        "deb",
        "--script",
        &script.to_string_lossy(),
    ])?;
    env.fails(&["template", "add", "lab", "--image", "deb"])?;
    env.fails(&["template", "add", "t2", "--image", "nope"])?;
    let bin = env.path("bin");
    std::fs::write(&bin, [0xff, 0xfe, 0x00])?;
    let e = env.fails(&[
        "template",
        "add",
        "t3",
        "--image",
        "deb",
        "--script",
        &bin.to_string_lossy(),
    ])?;
    assert!(e.contains("UTF-8"), "{e}");
    let list = env.json(&["template", "list", "--json"])?;
    assert_eq!(list[0]["name"], "lab");
    assert_eq!(list[0]["image"], "deb");
    assert_eq!(list[0]["script"], "#!ipxe\nsanboot ${root}\n");

    env.ok(&["node", "add", "02:00:00:00:00:01", "--template", "lab"])?;
    let n = env.json(&["node", "show", "02:00:00:00:00:01", "--json"])?;
    assert_eq!(n["image"], "deb");
    assert_eq!(n["template"], "lab");
    let e = env.fails(&["template", "rm", "lab"])?;
    assert!(e.contains("in use"), "{e}");
    let e = env.fails(&["image", "rm", "deb"])?;
    assert!(e.contains("in use"), "{e}");
    env.ok(&["node", "rm", "node-020000000001"])?;
    env.ok(&["template", "rm", "lab"])?;
    env.ok(&["image", "rm", "deb"])?;
    assert_eq!(
        env.json(&["template", "list", "--json"])?,
        serde_json::json!([])
    );
    Ok(())
}
