//! The end of a first write, on the blocking thread that wrote its data:
//! the new mappings go into the tables in memory and their records into the
//! write-ahead log in the same trip, and only then are the guest clusters'
//! claims released. One hop to the blocking pool per write, as before the
//! log existed; and a cancelled request cannot release its claims while its
//! data and mappings are still on their way.

use super::{Overlay, Pending};
use crate::qcow2::io;
use crate::qcow2::l2::Entry;
use crate::qcow2::meta::Meta;
use crate::qcow2::wal::{self, Op, Wal};
use bytes::Bytes;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Guest clusters claimed for allocation by one write; released on drop,
/// also when the write is cancelled before its blocking part runs.
pub struct Claims {
    pub meta: Arc<Mutex<Meta>>,
    pub allocated: Arc<Notify>,
    /// Each claimed cluster with its entry when claimed.
    pub guests: Vec<(u64, Entry)>,
}

impl Drop for Claims {
    fn drop(&mut self) {
        if self.guests.is_empty() {
            return;
        }
        let mut m = lock(&self.meta);
        for (g, _) in &self.guests {
            m.allocating.remove(g);
        }
        drop(m);
        self.allocated.notify_waiters();
    }
}

/// What a first write sets once its data is written.
pub struct Publish {
    pub claims: Claims,
    pub wal: Option<Arc<Wal>>,
    /// Per claimed cluster: its host cluster's byte offset and the
    /// subclusters the write covers.
    pub targets: Vec<(u64, u32)>,
    /// Clusters taken for this write (data, then spare L2 tables).
    pub hosts: Vec<u64>,
    pub spare_tables: Vec<u64>,
}

impl Publish {
    /// Writes `ops`, then publishes (blocking). On a failed data write the
    /// clusters go back to the pool and nothing is published.
    pub fn run(self, f: &File, ops: &[(u64, Bytes)]) -> std::io::Result<()> {
        if let Err(e) = ops
            .iter()
            .try_for_each(|(h, b)| io::write_at(f, b, *h, false))
        {
            let mut m = lock(&self.claims.meta);
            for c in self.hosts.iter().chain(&self.spare_tables).rev() {
                m.pool.push_front(*c);
            }
            return Err(e);
        }
        let log = {
            let mut m = lock(&self.claims.meta);
            let mut spare = self.spare_tables.iter().copied();
            let mut records = Vec::with_capacity(self.targets.len());
            for (&(g, _), &(host, need)) in self.claims.guests.iter().zip(&self.targets) {
                if !m.has_table(g) {
                    match spare.next() {
                        Some(t) => m.install_table(g, t),
                        // Counted by the caller: a table cannot vanish meanwhile.
                        None => continue,
                    }
                }
                // The claim kept others from changing this entry meanwhile.
                let cur = m.mapping(g);
                m.set(
                    g,
                    Entry {
                        host: Some(host),
                        alloc: cur.alloc | need,
                        zero: cur.zero & !need,
                    },
                );
                records.push(Op::Alloc {
                    g,
                    host,
                    mask: need,
                });
            }
            for c in spare.rev() {
                m.pool.push_front(c);
            }
            take_log(self.wal.as_ref(), &mut m, &records)
        };
        // Slots were taken in the order of the changes: the claims can go
        // before the record is written.
        drop(self.claims);
        match log {
            Some(p) => p.write(),
            None => Ok(()),
        }
    }
}

/// Assigns log slots to `ops` under the metadata lock, so the log keeps the
/// order of the changes; write the result before the request completes.
pub fn take_log(wal: Option<&Arc<Wal>>, m: &mut Meta, ops: &[Op]) -> Option<Pending> {
    let w = wal?;
    if ops.is_empty() {
        return None;
    }
    let (epoch, first) = (m.log.epoch, m.log.slot);
    m.log.slot += ops.len() as u64;
    let mut bytes = Vec::with_capacity(ops.len() * wal::REC);
    for (i, &op) in ops.iter().enumerate() {
        let r = wal::Record {
            epoch,
            slot: first + i as u64,
            op,
        };
        bytes.extend_from_slice(&r.encode());
    }
    Some(w.pending((epoch % 2) as usize, first, bytes))
}

fn lock(meta: &Mutex<Meta>) -> MutexGuard<'_, Meta> {
    meta.lock().unwrap_or_else(|e| e.into_inner())
}

impl Overlay {
    /// Writes a first write's data and publishes it (see [`Publish`]).
    pub(super) async fn write_and_publish(
        &self,
        ops: Vec<(u64, Bytes)>,
        publish: Publish,
    ) -> Result<(), blockdev::BlockError> {
        let _permit = self.writers.acquire().await;
        io::blocking(&self.file, move |f| publish.run(f, &ops)).await
    }
}
