//! `bootd df`: what the fleet's disks cost on this server against what full
//! copies would.

use crate::datadir::{allocated_bytes, DataDir};
use crate::output;
use anyhow::Result;
use serde_json::json;

/// What `df` measures.
struct Df {
    images: usize,
    nodes: usize,
    images_bytes: u64,
    overlays_bytes: u64,
    physical: u64,
    logical: u64,
    saved: u64,
    free: u64,
    reserve: u64,
    headroom: u64,
    percent: f64,
}

fn measure(dd: &DataDir, store: &dyn crate::store::Store) -> Result<Df> {
    let images = store.images()?;
    let nodes = store.nodes()?;
    let images_bytes: u64 = images.iter().map(|i| allocated_bytes(&i.path)).sum();
    // Each overlay with its write-ahead log.
    let overlays_bytes: u64 = nodes
        .iter()
        .map(|n| {
            let [w0, w1] = imagestore::qcow2::wal::paths(&n.overlay_path);
            allocated_bytes(&n.overlay_path) + allocated_bytes(&w0) + allocated_bytes(&w1)
        })
        .sum();
    let physical = images_bytes + overlays_bytes;
    let logical: u64 = nodes.iter().map(|n| n.image.bytes).sum();
    let saved = logical.saturating_sub(physical);
    // What new writes still have: free space above serve's default reserve
    // (serve --reserve-free may set another).
    let (free, total) = crate::space::filesystem(&dd.overlays()).unwrap_or((0, 0));
    let reserve = crate::space::default_reserve(total);
    let headroom = free.saturating_sub(reserve);
    let percent = if logical == 0 {
        0.0
    } else {
        saved as f64 * 100.0 / logical as f64
    };
    Ok(Df {
        images: images.len(),
        nodes: nodes.len(),
        images_bytes,
        overlays_bytes,
        physical,
        logical,
        saved,
        free,
        reserve,
        headroom,
        percent,
    })
}

/// `df --json`.
pub fn report_json(dd: &DataDir, store: &dyn crate::store::Store) -> Result<serde_json::Value> {
    let d = measure(dd, store)?;
    Ok(json!({
        "physical_bytes": d.physical,
        "logical_bytes": d.logical,
        "saved_bytes": d.saved,
        "saving_percent": (d.percent * 10.0).round() / 10.0,
        "images_bytes": d.images_bytes,
        "overlays_bytes": d.overlays_bytes,
        "images": d.images,
        "nodes": d.nodes,
        "free_bytes": d.free,
        "reserve_bytes": d.reserve,
        "headroom_bytes": d.headroom,
    }))
}

pub fn run(dd: &DataDir, as_json: bool) -> Result<()> {
    let store = dd.store()?;
    if as_json {
        return output::json(&report_json(dd, store.as_ref())?);
    }
    let Df {
        images,
        nodes,
        images_bytes,
        overlays_bytes,
        physical,
        logical,
        saved,
        free,
        reserve,
        headroom,
        percent,
    } = measure(dd, store.as_ref())?;
    output::table(
        &["", "BYTES", "SIZE"],
        &[
            row("golden images", images_bytes),
            row("overlays", overlays_bytes),
            row("physical", physical),
            row("logical", logical),
            row("saved", saved),
            row("free", free),
            row("headroom", headroom),
        ],
    );
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "{} on {}; saving {percent:.1}% against full copies of the nodes' disks",
        plural(nodes, "node", "nodes"),
        plural(images, "image version", "image versions")
    );
    println!(
        "headroom: free space above the {} kept in reserve for the overlays' filesystem",
        output::bytes(reserve)
    );
    Ok(())
}

fn row(what: &str, n: u64) -> Vec<String> {
    vec![what.to_string(), n.to_string(), output::bytes(n)]
}
