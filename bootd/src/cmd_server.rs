//! `bootd server list`: the servers sharing this registry, whether each is
//! live (heartbeat within the last `peers::MISSED_BEFORE_DEAD` periods) and
//! what it carries.

use crate::datadir::DataDir;
use crate::output;
use crate::peers;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum ServerCmd {
    /// Every registered server: id, iSCSI address, heartbeat age, live or
    /// dead (no heartbeat for 5 s: five missed 1 s heartbeats), nodes
    /// owned, live sessions and bytes served at its last heartbeat.
    List {
        #[arg(long)]
        json: bool,
    },
    /// The child process `serve` starts to hold its overlays' file locks
    /// (see `peers::keeper`); not for operators.
    #[command(hide = true)]
    FenceKeeper,
}

pub fn run(dd: &DataDir, cmd: ServerCmd) -> Result<()> {
    match cmd {
        ServerCmd::List { json } => list(dd, json),
        ServerCmd::FenceKeeper => peers::keeper::run(),
    }
}

fn list(dd: &DataDir, as_json: bool) -> Result<()> {
    let servers = dd.store()?.servers()?;
    if as_json {
        let rows: Vec<_> = servers
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "iscsi": s.iscsi,
                    "http_port": s.http_port,
                    "started_at_ms": s.started_at,
                    "heartbeat_age_ms": s.heartbeat_age_ms,
                    "live": peers::live(s.heartbeat_age_ms),
                    "nodes_owned": s.nodes_owned,
                    "sessions": s.sessions,
                    "bytes_served": s.bytes_served,
                })
            })
            .collect();
        return output::json(&serde_json::Value::Array(rows));
    }
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.iscsi.clone(),
                format!("{:.1}s", s.heartbeat_age_ms as f64 / 1000.0),
                if peers::live(s.heartbeat_age_ms) {
                    "live"
                } else {
                    "dead"
                }
                .into(),
                s.nodes_owned.to_string(),
                s.sessions.to_string(),
                output::bytes(s.bytes_served),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "ISCSI",
            "HEARTBEAT",
            "STATE",
            "NODES",
            "SESSIONS",
            "SERVED",
        ],
        &rows,
    );
    Ok(())
}
