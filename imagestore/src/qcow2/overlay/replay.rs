//! Opening after a crash: the write-ahead log's records go back into the
//! tables (and, read-write, into the file, durably, before the log is
//! started afresh); clusters a crash left reserved but unreferenced are
//! given back, as `qemu-img check -r leaks` would.

use super::{commit, runs, write_all};
use crate::qcow2::io;
use crate::qcow2::l2::Entry;
use crate::qcow2::meta::Meta;
use crate::qcow2::wal::{Op, Record};
use crate::qcow2::{ImageError, CLUSTER_SIZE};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;

/// Applies `records` to the tables in memory. New L2 tables take clusters
/// the crash left reserved (the live engine took its tables from the same
/// reservations). A record that contradicts the image fails the open: the
/// log is then kept for inspection, never half applied to the file.
pub fn apply(m: &mut Meta, records: &[Record], has_backing: bool) -> Result<(), ImageError> {
    if records.is_empty() {
        return Ok(());
    }
    let bad = |r: &Record, why: &str| {
        ImageError::Corrupt(format!(
            "write-ahead record {}/{} ({:?}): {why}",
            r.epoch, r.slot, r.op
        ))
    };
    let layout = m.layout;
    let clusters = m.l1.len() as u64 * layout.entries() as u64;
    let full = layout.full();
    let leaked: BTreeSet<u64> = m.leaked.iter().copied().collect();
    let data: HashSet<u64> = records
        .iter()
        .filter_map(|r| match r.op {
            Op::Alloc { host, .. } => Some(host / CLUSTER_SIZE),
            _ => None,
        })
        .collect();
    // Highest last, so tables are taken from the lowest clusters.
    let mut spare: Vec<u64> = leaked
        .iter()
        .rev()
        .filter(|c| !data.contains(c))
        .copied()
        .collect();
    // Each guest cluster's host when loaded, and which guest cluster each
    // reserved host cluster went to.
    let mut initial: HashMap<u64, Option<u64>> = HashMap::new();
    let mut owner: HashMap<u64, u64> = HashMap::new();
    let mut table = |m: &mut Meta, g: u64, r: &Record| -> Result<(), ImageError> {
        if !m.has_table(g) {
            let t = spare
                .pop()
                .ok_or_else(|| bad(r, "no reserved cluster left for its L2 table"))?;
            m.install_table(g, t);
        }
        Ok(())
    };
    for r in records {
        match r.op {
            Op::Alloc { g, host, mask } => {
                if g >= clusters || mask == 0 || mask & !full != 0 || host % CLUSTER_SIZE != 0 {
                    return Err(bad(r, "out of range"));
                }
                let was = *initial.entry(g).or_insert_with(|| m.mapping(g).host);
                let hc = host / CLUSTER_SIZE;
                let reserved = leaked.contains(&hc) && *owner.entry(hc).or_insert(g) == g;
                if !reserved && was != Some(host) {
                    return Err(bad(
                        r,
                        "its host cluster is neither reserved nor this cluster's",
                    ));
                }
                table(m, g, r)?;
                let cur = m.mapping(g);
                m.set(
                    g,
                    Entry {
                        host: Some(host),
                        alloc: cur.alloc | mask,
                        zero: cur.zero & !mask,
                    },
                );
            }
            Op::ZeroBits { g, mask } => {
                if g >= clusters || mask == 0 || mask & !full != 0 {
                    return Err(bad(r, "out of range"));
                }
                initial.entry(g).or_insert_with(|| m.mapping(g).host);
                table(m, g, r)?;
                let cur = m.mapping(g);
                let zero = cur.zero | mask;
                m.set(
                    g,
                    Entry {
                        host: if zero == full { None } else { cur.host },
                        alloc: cur.alloc & !mask,
                        zero,
                    },
                );
            }
            Op::ZeroRange { from, to } => {
                if from >= to || to > clusters {
                    return Err(bad(r, "out of range"));
                }
                let zero = Entry {
                    host: None,
                    alloc: 0,
                    zero: full,
                };
                for g in from..to {
                    if !m.has_table(g) {
                        if !has_backing {
                            // Unallocated already reads as zeros.
                            continue;
                        }
                        table(m, g, r)?;
                    }
                    initial.entry(g).or_insert_with(|| m.mapping(g).host);
                    if m.mapping(g) != zero {
                        m.set(g, zero);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Read-write open: writes what [`apply`] changed durably, starts the log
/// afresh, then gives back every cluster nothing references.
pub fn commit_and_release(
    file: &File,
    m: &mut Meta,
    start_log: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    let plan = commit::plan(m);
    if !plan.first.is_empty() || !plan.second.is_empty() {
        write_all(file, &plan.first)?;
        io::sync(file)?;
        write_all(file, &plan.second)?;
        io::sync(file)?;
    }
    // The records are in the tables now; a crash from here replays
    // nothing, and the clusters below are unreferenced either way.
    start_log()?;
    let mut candidates: BTreeSet<u64> = m.leaked.drain(..).collect();
    candidates.extend(plan.dirty.frees);
    for c in referenced(m, &candidates) {
        candidates.remove(&c);
    }
    if candidates.is_empty() {
        return Ok(());
    }
    let file_len = file.metadata()?.len();
    let leaked: Vec<u64> = candidates.into_iter().collect();
    let writes = m.rc.release(&leaked);
    let end = m.rc.end_of_used() * CLUSTER_SIZE;
    write_all(file, &writes)?;
    for (c, n) in runs(leaked) {
        io::punch_hole(file, c * CLUSTER_SIZE, n * CLUSTER_SIZE)?;
    }
    // Durable zero refcounts before the file loses those clusters.
    io::sync(file)?;
    if file_len > end {
        file.set_len(end)?;
    }
    Ok(())
}

/// Which of `candidates` a table (or table entry) references.
fn referenced(m: &Meta, candidates: &BTreeSet<u64>) -> Vec<u64> {
    let layout = m.layout;
    let mut out = Vec::new();
    for (t, host) in m.l1.iter().enumerate() {
        let Some(host) = host else { continue };
        if candidates.contains(&(host / CLUSTER_SIZE)) {
            out.push(host / CLUSTER_SIZE);
        }
        let Some(Some(table)) = m.l2.get(t) else {
            continue;
        };
        for i in 0..layout.entries() {
            if let Some(h) = layout.decode(table, i).ok().and_then(|e| e.host) {
                if candidates.contains(&(h / CLUSTER_SIZE)) {
                    out.push(h / CLUSTER_SIZE);
                }
            }
        }
    }
    out
}
