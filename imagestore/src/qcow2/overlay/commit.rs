//! The commit: table changes reach the file after the data they point to
//! is durable, and freed clusters are released after that (see the
//! ordering notes in the parent module).

use super::{runs, write_all, Overlay};
use crate::qcow2::io;
use crate::qcow2::l2;
use crate::qcow2::meta::{Dirty, LogCursor, Meta};
use crate::qcow2::refcount::Write;
use crate::qcow2::wal::Wal;
use crate::qcow2::CLUSTER_SIZE;
use blockdev::BlockError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The writes of one commit, and the dirty set they came from.
pub struct Plan {
    pub dirty: Dirty,
    /// New L2 tables, written whole before anything points to them.
    pub first: Vec<Write>,
    /// Changed L2 entries and L1 entries.
    pub second: Vec<Write>,
}

/// Takes the dirty set and what writing it takes.
pub fn plan(m: &mut Meta) -> Plan {
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
    Plan {
        dirty: d,
        first,
        second,
    }
}

impl Overlay {
    /// Makes every request completed before the call durable, sharing a
    /// commit with concurrent callers (see [`super::group`]).
    pub(super) async fn commit(&self) -> Result<(), BlockError> {
        self.commit_with(true).await
    }

    /// Writes the table changes made so far; see the module docs. A failed
    /// write or sync fails the overlay for good (see [`Overlay::failed`]).
    /// `share`: return without a commit of its own when one that started
    /// after the call has already finished.
    pub(super) async fn commit_with(&self, share: bool) -> Result<(), BlockError> {
        self.check_failed()?;
        let ticket = self.group.ticket();
        let commit = Arc::clone(&self.commit).lock_owned().await;
        // The commit this caller queued behind may have failed the overlay:
        // a sync that succeeds after a failed one proves nothing (the
        // kernel may have dropped the pages that failed).
        self.check_failed()?;
        if share && self.group.covered(ticket) {
            return Ok(());
        }
        let seq = self.group.start();
        if let Some(wal) = &self.wal {
            // The next epoch writes the file of the epoch before this one:
            // no late record of that one may land on a newer record there.
            let next = self.lock().log.epoch + 1;
            wal.wait_idle((next % 2) as usize).await;
        }
        let (snapshot, first, second, frees, epoch) = {
            let mut m = self.lock();
            let epoch = m.log.epoch;
            m.log = LogCursor {
                epoch: epoch + 1,
                slot: 0,
            };
            let p = plan(&mut m);
            let frees = p.dirty.frees.clone();
            (p.dirty, p.first, p.second, frees, epoch)
        };
        // Until the tables are on disk, a cancelled request leaves
        // everything dirty for the next commit.
        let mut restore = Restore {
            overlay: self,
            dirty: Some(snapshot),
        };
        let (wal, failed) = (self.wal.clone(), Arc::clone(&self.failed));
        let commit = io::blocking(&self.file, move |f| {
            let r = (|| {
                write_all(f, &first)?;
                io::sync(f)?;
                if !second.is_empty() {
                    write_all(f, &second)?;
                    io::sync(f)?;
                }
                match &wal {
                    Some(w) => w.set_committed(epoch),
                    None => Ok(()),
                }
            })();
            if let Err(e) = r {
                // Set here, not by the caller: the caller may be gone.
                fail(&failed, wal.as_deref());
                return Err(e);
            }
            Ok(commit)
        })
        .await?;
        self.group.finish(seq);
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

/// Marks an overlay failed after a failed sync: from then on it refuses
/// I/O, and its log is dropped so that no reopen replays writes whose
/// durability is unknown.
pub fn fail(failed: &AtomicBool, wal: Option<&Wal>) {
    failed.store(true, Ordering::SeqCst);
    if let Some(w) = wal {
        w.drop_all();
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
