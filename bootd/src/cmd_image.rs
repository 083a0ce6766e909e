//! `bootd image build|capture|import|list|rm|upgrade`.

use crate::datadir::DataDir;
use crate::output;
use crate::store::{Image, Store};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build a Debian image that boots diskless through bootd (BIOS and UEFI,
    /// root over the iBFT's iSCSI session, identity from serve's NoCloud seed)
    /// with mmdebstrap, as root, and store it as the next version of NAME.
    Build {
        name: String,
        /// Debian release.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Virtual disk size (each node's disk has this size).
        #[arg(long, default_value = "4G", value_parser = crate::space::parse_size)]
        size: u64,
        /// Another package to install (repeatable).
        #[arg(long = "package", value_name = "PKG")]
        packages: Vec<String>,
        /// Debian archive URL (default: the host's apt sources when building
        /// the host's release, else mmdebstrap's default).
        #[arg(long)]
        mirror: Option<String>,
        /// Start from this root file system tarball (`podman export`, `docker
        /// export` of a Debian/Ubuntu container) instead of mmdebstrap; its apt
        /// adds the kernel, initramfs, GRUB, systemd, cloud-init, open-iscsi.
        #[arg(long, value_name = "TAR")]
        rootfs: Option<PathBuf>,
        /// serve's --http-port: where the image looks for the NoCloud seed,
        /// at the iSCSI target's address from the iBFT.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Keep the built disk in DIR, keyed by the build's inputs, and reuse it.
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Store node NODE's current disk (its image and its writes, flattened)
    /// as the next version of NAME, with the node's identity removed like
    /// `image build` does (machine-id, SSH host keys, cloud-init state,
    /// logs), so nodes on it keep what NODE installed and become
    /// themselves on first boot. NODE must be shut down (no iSCSI session);
    /// serve lets go of its disk while it is copied.
    Capture {
        node: String,
        name: String,
        /// Store the disk as it is: for disks bootd cannot scrub (Windows:
        /// sysprep it first), or already generalized ones.
        #[arg(long)]
        no_scrub: bool,
        /// Wait up to SECONDS for the node's iSCSI session to end (a node
        /// just powered off keeps it until serve notices, about a minute).
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        wait: u64,
        #[arg(long)]
        json: bool,
    },
    /// Store FILE (raw, qcow2; VHD/VHDX/VMDK/VDI through qemu-img) as the
    /// next version of golden image NAME.
    Import { name: String, file: PathBuf },
    /// List every stored version.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete every version of NAME (refused while nodes or templates use it).
    Rm { name: String },
    /// Move every node of NAME to its newest version. Discards those nodes'
    /// writes, like `node reset`.
    Upgrade { name: String },
}

pub fn run(dd: &DataDir, cmd: ImageCmd) -> Result<()> {
    let mut store = dd.store()?;
    match cmd {
        ImageCmd::Build {
            name,
            suite,
            size,
            packages,
            mirror,
            rootfs,
            http_port,
            cache,
            json,
        } => {
            let args = crate::imagebuild::BuildArgs {
                suite,
                bytes: size,
                packages,
                mirror,
                rootfs,
                http_port,
                cache,
            };
            let built = crate::imagebuild::build(dd, store.as_mut(), &name, &args)?;
            let img = &built.image;
            if json {
                output::json(&stored_json(
                    img,
                    crate::datadir::allocated_bytes(&img.path),
                    json!({
                    // With --rootfs the tarball's own release is built, not --suite.
                    "suite": args.rootfs.is_none().then_some(&args.suite),
                    "rootfs": args.rootfs,
                    "seconds": built.elapsed.as_secs_f64(),
                    }),
                ))?;
            } else {
                println!(
                    "built {} version {} ({} {}, {} allocated) in {:.0} s: {} (sha256 {})",
                    img.name,
                    img.version,
                    if args.rootfs.is_some() {
                        "from rootfs"
                    } else {
                        &args.suite
                    },
                    output::bytes(img.bytes),
                    output::bytes(crate::datadir::allocated_bytes(&img.path)),
                    built.elapsed.as_secs_f64(),
                    img.path.display(),
                    img.sha256
                );
            }
        }
        ImageCmd::Capture {
            node,
            name,
            no_scrub,
            wait,
            json,
        } => {
            let c = crate::imagebuild::capture::capture(
                dd,
                store.as_mut(),
                &node,
                &name,
                !no_scrub,
                std::time::Duration::from_secs(wait),
            )?;
            let img = &c.image;
            let allocated = crate::datadir::allocated_bytes(&img.path);
            if json {
                output::json(&stored_json(
                    img,
                    allocated,
                    json!({
                    "node": c.node,
                    "from": {"name": c.from.name, "version": c.from.version},
                    "copied_bytes": c.flattened.data_bytes,
                    "scrubbed": c.scrubbed.is_some(),
                    "root_partition": c.scrubbed,
                    "seconds": c.elapsed.as_secs_f64(),
                    }),
                ))?;
            } else {
                println!(
                    "captured node {} ({} v{} + its writes) as {} version {} ({}, {} allocated, {}) in {:.0} s: {} (sha256 {})",
                    c.node,
                    c.from.name,
                    c.from.version,
                    img.name,
                    img.version,
                    output::bytes(img.bytes),
                    output::bytes(allocated),
                    match c.scrubbed {
                        Some(p) => format!("identity scrubbed on partition {p}"),
                        None => "not scrubbed".to_string(),
                    },
                    c.elapsed.as_secs_f64(),
                    img.path.display(),
                    img.sha256
                );
            }
        }
        ImageCmd::Import { name, file } => {
            let img = crate::import::import(dd, store.as_mut(), &name, &file)?;
            println!(
                "imported {} version {}: {} ({}, sha256 {})",
                img.name,
                img.version,
                img.path.display(),
                output::bytes(img.bytes),
                img.sha256
            );
        }
        ImageCmd::List { json } => list(store.as_ref(), json)?,
        ImageCmd::Rm { name } => {
            let removed = remove(store.as_mut(), &name)?;
            println!("removed image {name} ({} versions)", removed.len());
        }
        ImageCmd::Upgrade { name } => {
            let latest = store.latest_image(&name)?;
            let nodes: Vec<_> = store
                .nodes()?
                .into_iter()
                .filter(|n| n.image.name == name && n.image.id != latest.id)
                .collect();
            let moved = crate::lifecycle::recreate_all(dd, store.as_mut(), &nodes, &latest)?;
            for (old, new) in nodes.iter().zip(&moved) {
                println!(
                    "node {}: moved from version {} to {}",
                    new.name, old.image.version, new.image.version
                );
            }
            println!(
                "{} node(s) of image {name} now on version {}",
                nodes.len(),
                latest.version
            );
        }
    }
    Ok(())
}

/// What every `--json` answer says of a stored image version, with the
/// command's own fields (`more`, an object) after it.
/// `image rm`: every version of `name` out of the registry, then its files.
pub fn remove(store: &mut dyn Store, name: &str) -> Result<Vec<Image>> {
    let removed = store.remove_image(name)?;
    for img in &removed {
        if let Err(e) = std::fs::remove_file(&img.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("bootd: warning: {}: {e}", img.path.display());
            }
        }
    }
    Ok(removed)
}

/// `image list --json`: every stored version.
pub fn list_json(store: &dyn Store) -> Result<serde_json::Value> {
    let images = store.images()?;
    let nodes = store.nodes()?;
    let users = |id: i64| nodes.iter().filter(|n| n.image.id == id).count();
    let latest = |name: &str, v: u32| !images.iter().any(|i| i.name == name && i.version > v);
    let list: Vec<_> = images
        .iter()
        .map(|i| {
            stored_json(
                i,
                crate::datadir::allocated_bytes(&i.path),
                json!({
                "latest": latest(&i.name, i.version),
                "checksum": format!("sha256:{}", i.sha256),
                "nodes": users(i.id),
                "created": i.created,
                }),
            )
        })
        .collect();
    Ok(json!(list))
}

pub fn stored_json(img: &Image, allocated: u64, more: serde_json::Value) -> serde_json::Value {
    let mut v = json!({
        "name": img.name,
        "version": img.version,
        "path": img.path,
        "bytes": img.bytes,
        "allocated_bytes": allocated,
        "sha256": img.sha256,
    });
    if let (Some(o), serde_json::Value::Object(m)) = (v.as_object_mut(), more) {
        o.extend(m);
    }
    v
}

fn list(store: &dyn Store, as_json: bool) -> Result<()> {
    let images = store.images()?;
    let nodes = store.nodes()?;
    let users = |id: i64| nodes.iter().filter(|n| n.image.id == id).count();
    let latest = |name: &str, v: u32| !images.iter().any(|i| i.name == name && i.version > v);
    if as_json {
        return output::json(&list_json(store)?);
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                format!(
                    "{}{}",
                    i.version,
                    if latest(&i.name, i.version) { "*" } else { "" }
                ),
                output::bytes(i.bytes),
                users(i.id).to_string(),
                i.sha256.chars().take(16).collect(),
                i.path.display().to_string(),
            ]
        })
        .collect();
    output::table(
        &["NAME", "VERSION", "SIZE", "NODES", "SHA256", "PATH"],
        &rows,
    );
    Ok(())
}
