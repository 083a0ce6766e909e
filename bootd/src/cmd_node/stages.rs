//! The last boot's stages in `node show`: what happened when, relative to
//! the first stage seen.

use crate::output;
use crate::store::BootStage;
use serde_json::json;

pub fn print(stages: &[BootStage]) {
    let Some(first) = stages.first() else {
        println!("{:<18} never seen booting", "last_boot");
        return;
    };
    println!("{:<18} {}", "last_boot", output::time(first.at_ms / 1000));
    for s in stages {
        let offset = (s.at_ms - first.at_ms) as f64 / 1000.0;
        println!("  {:<15} +{offset:>7.2}s  {}", s.stage, s.detail);
    }
}

pub fn to_json(stages: &[BootStage]) -> serde_json::Value {
    json!(stages
        .iter()
        .map(|s| json!({"stage": s.stage, "at_ms": s.at_ms, "detail": s.detail}))
        .collect::<Vec<_>>())
}
