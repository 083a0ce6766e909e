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
    /// Hand every node of server NAME to its peers, sessions and all, and
    /// wait until it owns none: each session ends and its initiator's next
    /// login is redirected to the node's new owner. The server keeps
    /// running (redirecting); it takes nodes again after `--undo` or a
    /// restart.
    Drain {
        name: String,
        /// Stop draining: the server takes its share of nodes again.
        #[arg(long)]
        undo: bool,
        /// Seconds to wait for the peers to take every node.
        #[arg(long, default_value_t = 30)]
        wait: u64,
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
        ServerCmd::Drain { name, undo, wait } => drain(dd, &name, undo, wait),
    }
}

fn drain(dd: &DataDir, name: &str, undo: bool, wait: u64) -> Result<()> {
    let mut store = dd.store()?;
    if undo {
        if !store.set_draining(name, false)? {
            anyhow::bail!("server {name:?} is not registered");
        }
        println!("server {name} takes nodes again");
        return Ok(());
    }
    let (took, n) =
        peers::drain::drain(store.as_mut(), name, std::time::Duration::from_secs(wait))?;
    println!(
        "server {name} drained: {n} node(s) handed to its peers in {:.1}s",
        took.as_secs_f64()
    );
    Ok(())
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
                    "draining": s.draining,
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
                match (peers::live(s.heartbeat_age_ms), s.draining) {
                    (true, false) => "live",
                    (true, true) => "draining",
                    (false, _) => "dead",
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
