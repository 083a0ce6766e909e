//! `bootd df`: what the fleet's disks cost on this server against what full
//! copies would.

use crate::datadir::{allocated_bytes, DataDir};
use crate::output;
use anyhow::Result;
use serde_json::json;

pub fn run(dd: &DataDir, as_json: bool) -> Result<()> {
    let store = dd.store()?;
    let images = store.images()?;
    let nodes = store.nodes()?;
    let images_bytes: u64 = images.iter().map(|i| allocated_bytes(&i.path)).sum();
    let overlays_bytes: u64 = nodes.iter().map(|n| allocated_bytes(&n.overlay_path)).sum();
    let physical = images_bytes + overlays_bytes;
    let logical: u64 = nodes.iter().map(|n| n.image.bytes).sum();
    let saved = logical.saturating_sub(physical);
    let percent = if logical == 0 {
        0.0
    } else {
        saved as f64 * 100.0 / logical as f64
    };
    if as_json {
        return output::json(&json!({
            "physical_bytes": physical,
            "logical_bytes": logical,
            "saved_bytes": saved,
            "saving_percent": (percent * 10.0).round() / 10.0,
            "images_bytes": images_bytes,
            "overlays_bytes": overlays_bytes,
            "images": images.len(),
            "nodes": nodes.len(),
        }));
    }
    output::table(
        &["", "BYTES", "SIZE"],
        &[
            row("golden images", images_bytes),
            row("overlays", overlays_bytes),
            row("physical", physical),
            row("logical", logical),
            row("saved", saved),
        ],
    );
    println!(
        "{} nodes on {} image versions; saving {percent:.1}%",
        nodes.len(),
        images.len()
    );
    Ok(())
}

fn row(what: &str, n: u64) -> Vec<String> {
    vec![what.to_string(), n.to_string(), output::bytes(n)]
}
