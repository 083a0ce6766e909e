//! The registry the storm's servers share: the data directory's SQLite
//! (one server, bootd's default), or a PostgreSQL server the storm starts
//! itself (initdb in a temporary directory, run as an unprivileged user;
//! the test harness's [`PgServer`]) that every server reaches through its
//! Unix socket, whatever network namespace it is in. And the wait until
//! bootd's placement has given every node an owner.

use crate::setup::Bootd;
use anyhow::{bail, Context, Result};
use bootd_tests::postgres::{PgServer, PASSWORD};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The data directory's SQLite database (one server only).
    Sqlite,
    /// A PostgreSQL server started for the storm.
    Postgres,
}

/// A running registry; PostgreSQL stops (and its files go) on drop.
pub struct Registry {
    /// Kept for its Drop, which stops the server.
    _pg: Option<PgServer>,
    /// What every bootd process needs in its environment to use it.
    pub env: Vec<(String, String)>,
}

impl Registry {
    pub fn start(kind: Kind) -> Result<Self> {
        match kind {
            Kind::Sqlite => Ok(Self {
                _pg: None,
                env: Vec::new(),
            }),
            Kind::Postgres => {
                let pg = PgServer::start().context(
                    "starting PostgreSQL for the registry (scripts/install-test-deps.sh installs it)",
                )?;
                let db = pg.create_database()?;
                let env = vec![
                    ("BOOTD_REGISTRY".to_string(), pg.unix_url(&db)),
                    ("PGPASSWORD".to_string(), PASSWORD.to_string()),
                ];
                Ok(Self { _pg: Some(pg), env })
            }
        }
    }
}

/// bootd's rendezvous weight of `server` for `node` (as in bootd's
/// `peers::rendezvous`: the first 8 bytes of SHA-256(node, 0, server)).
fn weight(node: &str, server: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0u8]);
    h.update(server.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// How many of the storm's `nodes` each of `ids` should own once all are
/// live: the highest weight wins, ties to the smaller id.
pub fn expected(nodes: usize, ids: &[String]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = ids.iter().map(|i| (i.clone(), 0)).collect();
    for n in 0..nodes {
        let name = crate::setup::node_name(n);
        let best = ids.iter().max_by(|a, b| {
            weight(&name, a)
                .cmp(&weight(&name, b))
                .then_with(|| b.cmp(a))
        });
        if let Some(id) = best {
            *out.entry(id.clone()).or_default() += 1;
        }
    }
    out
}

/// Waits until the live servers `ids` own the storm's `nodes` as bootd's
/// rendezvous placement spreads them (each server moves nodes once it sees
/// the others live; the first one up takes them all at first); returns
/// each server's count.
pub fn wait_placed(
    bootd: &Bootd,
    ids: &[String],
    nodes: usize,
    limit: Duration,
) -> Result<BTreeMap<String, u64>> {
    let want = expected(nodes, ids);
    let deadline = Instant::now() + limit;
    loop {
        let text = bootd.run(&["server", "list", "--json"])?;
        let rows: serde_json::Value =
            serde_json::from_str(&text).context("`bootd server list --json` output")?;
        let mut owned = BTreeMap::new();
        for r in rows.as_array().context("server list is not an array")? {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            if ids.contains(&id) && r["live"].as_bool() == Some(true) {
                owned.insert(id, r["nodes_owned"].as_u64().unwrap_or(0));
            }
        }
        if owned == want {
            return Ok(owned);
        }
        if Instant::now() > deadline {
            bail!("after {limit:?}, the live servers own {owned:?}, placement says {want:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_nodes_and_keeps_every_one() {
        let ids: Vec<String> = (1..=3).map(|k| format!("s{k}")).collect();
        let e = expected(3000, &ids);
        assert_eq!(e.values().sum::<u64>(), 3000);
        assert!(e.values().all(|&c| (800..1200).contains(&c)), "{e:?}");
        assert_eq!(expected(10, &ids[..1]).get("s1"), Some(&10));
    }
}
