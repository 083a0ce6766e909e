//! `bootd node add|list|adopt|show|chap|rm|reset|move`.

pub mod discovered;
pub mod stages;

use crate::datadir::{allocated_bytes, DataDir};
use crate::lifecycle::{AddOptions, Source};
use crate::names;
use crate::output;
use crate::store::{MutualChap, Node, Store, StoreError};
use anyhow::{bail, Result};
use clap::{ArgGroup, Subcommand, ValueEnum};
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Register a machine by MAC with its own overlay on the newest version
    /// of an image (directly or through a template).
    #[command(group(ArgGroup::new("source").required(true).args(["image", "template"])))]
    Add {
        mac: String,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        template: Option<String>,
        /// Default: node-<mac without colons>.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        ip: Option<IpAddr>,
        /// Mutual CHAP: the target proves itself to the node too (iPXE and
        /// the OS initiator refuse a target without the node's target secret).
        #[arg(long)]
        mutual_chap: bool,
        /// The node's own cloud-init user-data, which wins over its
        /// template's (see `template add --user-data`).
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
    },
    /// Every node with its image version, overlay size and state.
    List {
        #[arg(long)]
        json: bool,
        /// List instead the unregistered machines that asked to boot while
        /// serve ran with `--unknown discover`.
        #[arg(long)]
        discovered: bool,
    },
    /// Register discovered machines (see `list --discovered`) as nodes.
    #[command(group(ArgGroup::new("source").required(true).args(["image", "template"])))]
    #[command(group(ArgGroup::new("which").required(true).args(["macs", "all"])))]
    Adopt {
        macs: Vec<String>,
        /// Every discovered machine (anyone on the boot network can forge
        /// one): they are listed and confirmed on the terminal first.
        #[arg(long)]
        all: bool,
        /// With --all: adopt without asking.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        template: Option<String>,
        /// Mutual CHAP for every adopted node (see `node add --mutual-chap`).
        #[arg(long)]
        mutual_chap: bool,
        /// cloud-init user-data of every adopted node's own (see `node add
        /// --user-data`).
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
    },
    /// Everything about one node, including its iSCSI credentials and the
    /// stages of its last boot.
    Show {
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Turn the node's mutual CHAP on or off (on: a fresh target secret).
    /// Takes effect at the node's next boot: a running serve rebuilds the
    /// node's target, ending its sessions, and the boot script carries the
    /// new credentials.
    Chap {
        node: String,
        #[arg(long, value_enum)]
        mutual: OnOff,
    },
    /// Delete the node and its overlay. A running serve ends the node's
    /// sessions first.
    Rm { node: String },
    /// Discard the node's writes: it boots its golden image again. A running
    /// serve ends the node's sessions before the overlay is replaced.
    Reset {
        node: String,
        /// Also move the node to the newest version of its image.
        #[arg(long)]
        latest: bool,
    },
    /// Move the node to the newest version of its image (--latest;
    /// discards its writes), or pin it to a server (--server S; `none`
    /// unpins). A pinned node moves to S while it has no session, if S is
    /// live; otherwise it stays on its owner.
    #[command(group(ArgGroup::new("to").required(true).args(["latest", "server"])))]
    Move {
        node: String,
        #[arg(long)]
        latest: bool,
        #[arg(long, value_name = "SERVER")]
        server: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

pub fn run(dd: &DataDir, cmd: NodeCmd) -> Result<()> {
    let mut store = dd.store()?;
    for name in crate::lifecycle::recover_releasing(dd, store.as_mut())? {
        eprintln!("bootd: node {name}: an interrupted command had left it releasing; ready again");
    }
    match cmd {
        NodeCmd::Add {
            mac,
            image,
            template,
            name,
            ip,
            mutual_chap,
            user_data,
        } => {
            let source = source(image, template)?;
            let opts = add_options(mutual_chap, user_data)?;
            let node =
                crate::lifecycle::add_with(dd, store.as_mut(), &mac, &source, name, ip, &opts)?;
            println!(
                "added node {} ({}) on {} version {}: {}{}",
                node.name,
                node.mac,
                node.image.name,
                node.image.version,
                node.target_iqn,
                if node.mutual_chap.is_some() {
                    " (mutual CHAP)"
                } else {
                    ""
                }
            );
        }
        NodeCmd::List { json, discovered } if discovered => discovered::list(store.as_ref(), json)?,
        NodeCmd::List { json, .. } => list(store.as_ref(), json)?,
        NodeCmd::Adopt {
            macs,
            all,
            yes,
            image,
            template,
            mutual_chap,
            user_data,
        } => {
            let which = match (all, yes) {
                (false, _) => discovered::Which::Macs(&macs),
                (true, true) => discovered::Which::All,
                (true, false) => discovered::Which::AllIfConfirmed,
            };
            let source = source(image, template)?;
            let opts = add_options(mutual_chap, user_data)?;
            discovered::adopt(dd, store.as_mut(), which, &source, &opts)?
        }
        NodeCmd::Show { node, json } => {
            let n = lookup(store.as_ref(), &node)?;
            if json {
                return output::json(&show_json(store.as_ref(), &n)?);
            }
            let last_boot = store.boot_stages(&n.mac.to_string())?;
            let user_data = user_data_source(store.as_ref(), &n)?;
            show(&n, user_data);
            stages::print(&last_boot);
        }
        NodeCmd::Chap { node, mutual } => set_mutual(store.as_mut(), &node, mutual)?,
        NodeCmd::Rm { node } => {
            let n = lookup(store.as_ref(), &node)?;
            crate::lifecycle::remove(dd, store.as_mut(), &n)?;
            println!("removed node {}", n.name);
        }
        NodeCmd::Reset { node, latest } => move_node(dd, store.as_mut(), &node, latest)?,
        NodeCmd::Move {
            node,
            server: Some(server),
            ..
        } => {
            let n = pin(store.as_mut(), &node, &server)?;
            match &n.pinned_server {
                Some(s) => println!("node {} pinned to server {s}", n.name),
                None => println!("node {} unpinned", n.name),
            }
        }
        NodeCmd::Move { node, latest, .. } => move_node(dd, store.as_mut(), &node, latest)?,
    }
    Ok(())
}

pub fn source(image: Option<String>, template: Option<String>) -> Result<Source> {
    Ok(match (image, template) {
        (Some(i), _) => Source::Image(i),
        (None, Some(t)) => Source::Template(t),
        (None, None) => bail!("give --image or --template"),
    })
}

/// `node move --server S`: pins the node to S (`none` unpins).
pub fn pin(store: &mut dyn Store, key: &str, server: &str) -> Result<Node> {
    let to = (server != "none").then_some(server);
    let n = lookup(store, key)?;
    Ok(store.pin_node(&n.name, to)?)
}

/// Reads and checks `--user-data` before anything is stored.
fn add_options(mutual_chap: bool, user_data: Option<PathBuf>) -> Result<AddOptions> {
    Ok(AddOptions {
        mutual_chap,
        user_data: user_data
            .as_deref()
            .map(crate::cmd_template::read_user_data)
            .transpose()?,
    })
}

/// Where the node's cloud-init user-data comes from: its `own`, its
/// `template`'s, or bootd's `default`. Only that, never the text (it may
/// hold secrets).
fn user_data_source(store: &dyn Store, n: &Node) -> Result<&'static str> {
    if n.user_data.is_some() {
        return Ok("own");
    }
    if let Some(t) = &n.template {
        if store.template(t)?.user_data.is_some() {
            return Ok("template");
        }
    }
    Ok("default")
}

/// `node reset` (and `node move --latest`): a fresh overlay on the node's
/// image version, or with `latest` on its image's newest.
pub fn reset(dd: &DataDir, store: &mut dyn Store, key: &str, latest: bool) -> Result<Node> {
    let n = lookup(store, key)?;
    let image = if latest {
        store.latest_image(&n.image.name)?
    } else {
        n.image.clone()
    };
    crate::lifecycle::recreate(dd, store, &n, &image)
}

fn move_node(dd: &DataDir, store: &mut dyn Store, key: &str, latest: bool) -> Result<()> {
    let done = reset(dd, store, key, latest)?;
    println!(
        "node {}: overlay reset on {} version {}",
        done.name, done.image.name, done.image.version
    );
    Ok(())
}

/// `node chap NODE --mutual on|off`. Asking for what is already so writes
/// nothing: a write rebuilds the node's target (ending its sessions), and a
/// fresh secret would lock out a running OS that holds the old one.
fn set_mutual(store: &mut dyn Store, key: &str, mutual: OnOff) -> Result<()> {
    let n = lookup(store, key)?;
    match (mutual, n.mutual_chap.is_some()) {
        (OnOff::On, true) => println!("node {}: mutual CHAP is on already", n.name),
        (OnOff::Off, false) => println!("node {}: mutual CHAP is off already", n.name),
        (OnOff::On, false) => {
            let fresh = MutualChap::generate(&n.chap_secret);
            store.set_mutual_chap(&n.name, Some(&fresh))?;
            println!(
                "node {}: mutual CHAP on from its next boot (`node show {}` has the target secret)",
                n.name, n.name
            );
        }
        (OnOff::Off, true) => {
            store.set_mutual_chap(&n.name, None)?;
            println!("node {}: mutual CHAP off from its next boot", n.name);
            // A running OS took the reverse credentials from the iBFT and asks
            // the target to prove itself on every login, including the one
            // after serve rebuilt the target: it is refused until it reboots.
            eprintln!(
                "bootd: node {}: if it is running, reboot it now: its OS initiator still asks for the target secret",
                n.name
            );
        }
    }
    Ok(())
}

/// By name first, then by MAC in any spelling.
pub fn lookup(store: &dyn Store, key: &str) -> Result<Node> {
    match store.node(key) {
        Err(StoreError::NotFound { .. }) => match names::normalize_mac(key) {
            Ok(mac) => Ok(store.node(&mac)?),
            Err(_) => Err(crate::store::shared::not_found("node", key).into()),
        },
        other => Ok(other?),
    }
}

pub fn node_json(n: &Node) -> serde_json::Value {
    json!({
        "name": n.name,
        "mac": n.mac.to_string(),
        "image": n.image.name,
        "image_version": n.image.version,
        "image_path": n.image.path,
        "template": n.template,
        "ip": n.ip,
        "target_iqn": n.target_iqn,
        "initiator_iqn": n.initiator_iqn,
        "chap_user": n.chap_user,
        "chap_secret": n.chap_secret,
        "mutual_chap_user": n.mutual_chap.as_ref().map(|m| &m.user),
        "mutual_chap_secret": n.mutual_chap.as_ref().map(|m| &m.secret),
        "overlay_path": n.overlay_path,
        "overlay_bytes": allocated_bytes(&n.overlay_path),
        "virtual_bytes": n.image.bytes,
        "state": n.state.as_str(),
        "owner": n.owner,
        "owner_epoch": n.owner_epoch,
        "pinned_server": n.pinned_server,
        "created": n.created,
    })
}

/// `node show --json` (and the API's node): everything about the node,
/// its CHAP secrets included, and the stages of its last boot.
pub fn show_json(store: &dyn Store, n: &Node) -> Result<serde_json::Value> {
    let last_boot = store.boot_stages(&n.mac.to_string())?;
    let user_data = user_data_source(store, n)?;
    let mut v = node_json(n);
    v["user_data"] = json!(user_data);
    v["overlay_generation"] = json!(n.overlay_generation);
    v["last_boot"] = stages::to_json(&last_boot);
    Ok(v)
}

/// The node's secrets out of its JSON (for listings and read-only callers).
pub fn without_secrets(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("chap_secret");
        o.remove("mutual_chap_secret");
    }
    v
}

/// `node list --json`: every node, without secrets.
pub fn list_json(store: &dyn Store) -> Result<serde_json::Value> {
    // A listing goes into scripts, logs and tickets: no secrets in it
    // (`node show NODE` has the node's).
    listed_json(store, &store.nodes()?)
}

/// `nodes` as listed: without secrets, each with where its last boot got
/// to (`last_stage`, from one query for all of them, not one per node).
pub fn listed_json(store: &dyn Store, nodes: &[Node]) -> Result<serde_json::Value> {
    let mut last: std::collections::HashMap<String, crate::store::LastStage> = store
        .last_stages()?
        .into_iter()
        .map(|l| (l.mac.clone(), l))
        .collect();
    let listed: Vec<_> = nodes
        .iter()
        .map(|n| {
            let mut v = without_secrets(node_json(n));
            v["last_stage"] = match last.remove(&n.mac.to_string()) {
                Some(l) => json!({
                    "stage": l.stage,
                    "at_ms": l.at_ms,
                    "boot_started_ms": l.boot_started_ms,
                }),
                None => serde_json::Value::Null,
            };
            v
        })
        .collect();
    Ok(json!(listed))
}

fn list(store: &dyn Store, as_json: bool) -> Result<()> {
    if as_json {
        return output::json(&list_json(store)?);
    }
    let nodes = store.nodes()?;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.mac.to_string(),
                format!("{} v{}", n.image.name, n.image.version),
                n.ip.map_or_else(|| "-".into(), |i| i.to_string()),
                output::bytes(allocated_bytes(&n.overlay_path)),
                n.state.as_str().into(),
            ]
        })
        .collect();
    output::table(&["NAME", "MAC", "IMAGE", "IP", "OVERLAY", "STATE"], &rows);
    Ok(())
}

fn show(n: &Node, user_data: &str) {
    let rows = [
        ("name", n.name.clone()),
        ("mac", n.mac.to_string()),
        (
            "image",
            format!("{} version {}", n.image.name, n.image.version),
        ),
        ("template", n.template.clone().unwrap_or_else(|| "-".into())),
        ("ip", n.ip.map_or_else(|| "-".into(), |i| i.to_string())),
        ("target_iqn", n.target_iqn.clone()),
        ("initiator_iqn", n.initiator_iqn.clone()),
        ("chap_user", n.chap_user.clone()),
        ("chap_secret", n.chap_secret.clone()),
        (
            "mutual_chap_user",
            n.mutual_chap
                .as_ref()
                .map_or_else(|| "- (mutual CHAP off)".into(), |m| m.user.clone()),
        ),
        (
            "mutual_chap_secret",
            n.mutual_chap
                .as_ref()
                .map_or_else(|| "-".into(), |m| m.secret.clone()),
        ),
        ("overlay_path", n.overlay_path.display().to_string()),
        (
            "overlay_bytes",
            format!(
                "{} of {}",
                output::bytes(allocated_bytes(&n.overlay_path)),
                output::bytes(n.image.bytes)
            ),
        ),
        ("overlay_generation", n.overlay_generation.to_string()),
        ("state", n.state.as_str().into()),
        ("user_data", user_data.into()),
    ];
    for (k, v) in rows {
        println!("{k:<18} {v}");
    }
}
