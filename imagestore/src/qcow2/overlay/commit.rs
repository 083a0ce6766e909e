//! The commit: table changes reach the file after the data they point to
//! is durable, and freed clusters are released after that (see the
//! ordering notes in the parent module).

use super::{runs, write_all, Overlay};
use crate::qcow2::io;
use crate::qcow2::l2;
use crate::qcow2::meta::Dirty;
use crate::qcow2::refcount::Write;
use crate::qcow2::CLUSTER_SIZE;
use iscsi_target::block::BlockError;
use std::sync::Arc;

impl Overlay {
    /// Writes the table changes made so far; see the module docs.
    pub(super) async fn commit(&self) -> Result<(), BlockError> {
        let commit = Arc::clone(&self.commit).lock_owned().await;
        let (snapshot, first, second, frees) = {
            let mut m = self.lock();
            let d = std::mem::take(&mut m.dirty);
            let mut first = Vec::new();
            for &t in &d.new_tables {
                if let (Some(host), Some(table)) = (m.l1[t], &m.l2[t]) {
                    first.push(Write {
                        offset: host,
                        data: l2::encode_table(table),
                    });
                }
            }
            let mut second = Vec::new();
            for (&t, &(lo, hi)) in &d.entries {
                if let (Some(host), Some(table)) = (m.l1[t], &m.l2[t]) {
                    second.push(Write {
                        offset: host + lo as u64 * 8,
                        data: l2::encode_table(&table[lo..=hi]),
                    });
                }
            }
            if let (Some(&lo), Some(&hi)) = (d.l1.first(), d.l1.last()) {
                let entries: Vec<u64> = m.l1[lo..=hi].iter().map(|&t| l2::encode_l1(t)).collect();
                second.push(Write {
                    offset: m.l1_offset + lo as u64 * 8,
                    data: l2::encode_table(&entries),
                });
            }
            let frees = d.frees.clone();
            (d, first, second, frees)
        };
        // Until the tables are on disk, a failure or a cancelled request
        // leaves everything dirty for the next commit.
        let mut restore = Restore {
            overlay: self,
            dirty: Some(snapshot),
        };
        let commit = io::blocking(&self.file, move |f| {
            write_all(f, &first)?;
            f.sync_data()?;
            if !second.is_empty() {
                write_all(f, &second)?;
                f.sync_data()?;
            }
            Ok(commit)
        })
        .await?;
        if frees.is_empty() {
            restore.dirty = None;
            return Ok(());
        }
        restore.dirty = Some(Dirty {
            frees: frees.clone(),
            ..Dirty::default()
        });
        // Requests that planned I/O against the old mappings finish first.
        self.gate.barrier().await;
        let alloc = Arc::clone(&self.alloc).lock_owned().await;
        restore.dirty = None;
        let writes = {
            let mut m = self.lock();
            if let Some(&low) = frees.iter().min() {
                m.hint = m.hint.min(low);
            }
            m.rc.release(&frees)
        };
        io::blocking(&self.file, move |f| {
            let (_commit, _alloc) = (commit, alloc);
            // No sync needed: a crash before these land only leaks clusters.
            write_all(f, &writes)?;
            for (start, n) in runs(frees) {
                io::punch_hole(f, start * CLUSTER_SIZE, n * CLUSTER_SIZE)?;
            }
            Ok(())
        })
        .await
    }
}

/// Puts a commit's snapshot back into the dirty set unless disarmed.
struct Restore<'a> {
    overlay: &'a Overlay,
    dirty: Option<Dirty>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let Some(snap) = self.dirty.take() else {
            return;
        };
        let mut m = self.overlay.lock();
        let d = &mut m.dirty;
        d.new_tables.extend(snap.new_tables);
        d.l1.extend(snap.l1);
        for (t, (lo, hi)) in snap.entries {
            let e = d.entries.entry(t).or_insert((lo, hi));
            *e = (e.0.min(lo), e.1.max(hi));
        }
        d.frees.extend(snap.frees);
    }
}
