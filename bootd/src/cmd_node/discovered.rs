//! `node list --discovered` and `node adopt`: machines that asked to boot
//! while unregistered (`serve --unknown discover`) become nodes.

use crate::datadir::DataDir;
use crate::lifecycle::{AddOptions, Source};
use crate::output;
use crate::store::{Discovered, Store};
use anyhow::{bail, Result};
use serde_json::json;

/// `node list --discovered --json`.
pub fn list_json(store: &dyn Store) -> Result<serde_json::Value> {
    Ok(json!(store
        .discovered()?
        .iter()
        .map(to_json)
        .collect::<Vec<_>>()))
}

pub fn list(store: &dyn Store, as_json: bool) -> Result<()> {
    if as_json {
        return output::json(&list_json(store)?);
    }
    let found = store.discovered()?;
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|d| {
            vec![
                d.mac.clone(),
                d.arch.map_or_else(|| "-".into(), |a| a.to_string()),
                if d.ipxe { "iPXE" } else { "firmware" }.into(),
                if d.vendor_class.is_empty() {
                    "-".into()
                } else {
                    d.vendor_class.clone()
                },
                output::time(d.first_seen),
                output::time(d.last_seen),
            ]
        })
        .collect();
    output::table(
        &[
            "MAC",
            "ARCH",
            "CLIENT",
            "VENDOR CLASS",
            "FIRST SEEN",
            "LAST SEEN",
        ],
        &rows,
    );
    Ok(())
}

fn to_json(d: &Discovered) -> serde_json::Value {
    json!({
        "mac": d.mac,
        "arch": d.arch,
        "vendor_class": d.vendor_class,
        "ipxe": d.ipxe,
        "first_seen": d.first_seen,
        "last_seen": d.last_seen,
        "requests": d.requests,
    })
}

/// Which discovered machines `node adopt` takes.
pub enum Which<'a> {
    Macs(&'a [String]),
    /// `--all --yes`.
    All,
    /// `--all`: only after the operator said yes on the terminal, since
    /// anyone on the boot network can make a MAC be discovered.
    AllIfConfirmed,
}

/// Registers the given discovered MACs (or all of them) from `source`;
/// each becomes a node as `node add` would make it. Stops at the first
/// failure, keeping the nodes already added.
/// `opts` (mutual CHAP, user-data) apply to each.
pub fn adopt(
    dd: &DataDir,
    store: &mut dyn Store,
    which: Which<'_>,
    source: &Source,
    opts: &AddOptions,
) -> Result<()> {
    adopt_each(dd, store, which, source, opts, |n| {
        println!("adopted {} as node {}: {}", n.mac, n.name, n.target_iqn)
    })
    .map(drop)
}

/// [`adopt`], calling `done` with each node as it is added; returns them.
pub fn adopt_each(
    dd: &DataDir,
    store: &mut dyn Store,
    which: Which<'_>,
    source: &Source,
    opts: &AddOptions,
    mut done: impl FnMut(&crate::store::Node),
) -> Result<Vec<crate::store::Node>> {
    let found = store.discovered()?;
    if found.is_empty() {
        bail!("nothing to adopt: no machine has been discovered");
    }
    let chosen: Vec<String> = match which {
        Which::All => found.into_iter().map(|d| d.mac).collect(),
        Which::AllIfConfirmed => {
            confirm(&found)?;
            found.into_iter().map(|d| d.mac).collect()
        }
        Which::Macs(macs) => {
            let mut out = Vec::new();
            for m in macs {
                let mac = crate::names::normalize_mac(m)?;
                if !found.iter().any(|d| d.mac == mac) {
                    bail!("{mac} has not been discovered (see `node list --discovered`)");
                }
                out.push(mac);
            }
            out
        }
    };
    let mut added = Vec::new();
    for mac in chosen {
        let n = crate::lifecycle::add_with(dd, store, &mac, source, None, None, opts)?;
        done(&n);
        added.push(n);
    }
    Ok(added)
}

/// Lists what `--all` would adopt and asks on the terminal; without one,
/// refuses (a script must say `--yes`).
fn confirm(found: &[Discovered]) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "node adopt --all would adopt {} discovered machines, any of which may be forged: check `node list --discovered`, then add --yes (no terminal to ask on)",
            found.len()
        );
    }
    let mut err = std::io::stderr().lock();
    writeln!(err, "node adopt --all adopts {} machines:", found.len())?;
    for d in found {
        let class = if d.vendor_class.is_empty() {
            "-"
        } else {
            &d.vendor_class
        };
        writeln!(
            err,
            "  {}  {}  last seen {}",
            d.mac,
            class,
            output::time(d.last_seen)
        )?;
    }
    write!(err, "Adopt all {}? [y/N] ", found.len())?;
    err.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        bail!("nothing adopted");
    }
    Ok(())
}
