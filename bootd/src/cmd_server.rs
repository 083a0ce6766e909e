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
}

pub fn run(dd: &DataDir, cmd: ServerCmd) -> Result<()> {
    match cmd {
        ServerCmd::List { json } => list(dd, json),
    }
}

/// `server list --json`.
pub fn list_json(store: &dyn crate::store::Store) -> Result<serde_json::Value> {
    let rows: Vec<_> = store
        .servers()?
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
    Ok(serde_json::Value::Array(rows))
}

fn list(dd: &DataDir, as_json: bool) -> Result<()> {
    let store = dd.store()?;
    if as_json {
        return output::json(&list_json(store.as_ref())?);
    }
    let servers = store.servers()?;
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
