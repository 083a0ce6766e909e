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
    /// Print a keepalived.conf that moves a floating address (VRRP) to
    /// whichever server's serve is alive: the address leaves a host whose
    /// serve stops answering iSCSI on its own address, and serve (with
    /// `--floating-ip`) follows it by itself. One per server, same
    /// `--router-id`, its own `--priority`.
    KeepalivedConfig {
        /// The floating address with its prefix, e.g. 192.0.2.100/24.
        #[arg(long = "floating-ip", value_name = "ADDR/PREFIX")]
        floating_ip: String,
        /// The interface it goes on.
        #[arg(long)]
        interface: String,
        /// This server's own address and iSCSI port, checked every second.
        #[arg(long, value_name = "IP:PORT")]
        check: std::net::SocketAddr,
        #[arg(long, default_value_t = 100)]
        priority: u8,
        #[arg(long = "router-id", default_value_t = 51)]
        router_id: u8,
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
        ServerCmd::KeepalivedConfig {
            floating_ip,
            interface,
            check,
            priority,
            router_id,
        } => {
            print!(
                "{}",
                keepalived_config(&floating_ip, &interface, check, priority, router_id)?
            );
            Ok(())
        }
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

/// A keepalived.conf for one server (see `ServerCmd::KeepalivedConfig`).
fn keepalived_config(
    floating: &str,
    interface: &str,
    check: std::net::SocketAddr,
    priority: u8,
    router_id: u8,
) -> Result<String> {
    // Checked, since they land in a file keepalived runs scripts from.
    let (ip, prefix) = floating
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--floating-ip {floating:?}: give ADDR/PREFIX"))?;
    let ip: std::net::IpAddr = ip.parse()?;
    let prefix: u8 = prefix.parse()?;
    if !interface
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        || interface.is_empty()
    {
        anyhow::bail!("--interface {interface:?}: not an interface name");
    }
    let (cip, cport) = (check.ip(), check.port());
    Ok(format!(
        r#"# keepalived.conf for bootd serve --floating-ip {ip} (bootd server keepalived-config)
global_defs {{
    enable_script_security
    script_user root
}}

# serve answers iSCSI on its own address while it runs: when it stops,
# this host gives the floating address up at once.
vrrp_script bootd_serve {{
    script "/usr/bin/timeout 1 /bin/bash -c '</dev/tcp/{cip}/{cport}'"
    interval 1
    fall 1
    rise 1
}}

vrrp_instance bootd {{
    state BACKUP
    # The address stays where it is when a failed server comes back (no
    # second stall for its nodes).
    nopreempt
    interface {interface}
    virtual_router_id {router_id}
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {ip}/{prefix} dev {interface}
    }}
    track_script {{
        bootd_serve
    }}
    # serve follows the address through netlink; the hook only logs.
    notify "/usr/bin/logger -t bootd-vrrp"
}}
"#
    ))
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
                    "draining": s.draining,
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
