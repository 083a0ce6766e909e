//! `bootd image import|list|rm|upgrade`.

use crate::datadir::DataDir;
use crate::output;
use crate::store::Store;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ImageCmd {
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
            let removed = store.remove_image(&name)?;
            for img in &removed {
                if let Err(e) = std::fs::remove_file(&img.path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        eprintln!("bootd: warning: {}: {e}", img.path.display());
                    }
                }
            }
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

fn list(store: &dyn Store, as_json: bool) -> Result<()> {
    let images = store.images()?;
    let nodes = store.nodes()?;
    let users = |id: i64| nodes.iter().filter(|n| n.image.id == id).count();
    let latest = |name: &str, v: u32| !images.iter().any(|i| i.name == name && i.version > v);
    if as_json {
        let list: Vec<_> = images
            .iter()
            .map(|i| {
                json!({
                    "name": i.name,
                    "version": i.version,
                    "latest": latest(&i.name, i.version),
                    "path": i.path,
                    "bytes": i.bytes,
                    "allocated_bytes": crate::datadir::allocated_bytes(&i.path),
                    "sha256": i.sha256,
                    "checksum": format!("sha256:{}", i.sha256),
                    "nodes": users(i.id),
                    "created": i.created,
                })
            })
            .collect();
        return output::json(&json!(list));
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
