//! The write path: reserving clusters, first writes with copy-on-write
//! (serialised per guest cluster), writes in place, and zeroing.

use super::{write_all, Batch, Overlay, BATCH_BUSY, BATCH_MAX, BATCH_MIN, DISCARD_CHUNK};
use crate::qcow2::io;
use crate::qcow2::l2::{self, Mapping};
use crate::qcow2::meta::Meta;
use crate::qcow2::{CLUSTER_SIZE, L2_ENTRIES};
use bytes::{Bytes, BytesMut};
use iscsi_target::block::BlockError;
use std::sync::Arc;
use std::time::Instant;

impl Overlay {
    /// Takes `n` reserved clusters, reserving a batch when the pool is short.
    async fn take(&self, n: usize) -> Result<Vec<u64>, BlockError> {
        loop {
            {
                let mut m = self.lock();
                if m.pool.len() >= n {
                    return Ok(m.pool.drain(..n).collect());
                }
            }
            let mut batch = Arc::clone(&self.alloc).lock_owned().await;
            if self.lock().pool.len() >= n {
                continue;
            }
            let busy = batch.last.is_some_and(|t| t.elapsed() < BATCH_BUSY);
            batch.size = if busy {
                (batch.size * 2).min(BATCH_MAX)
            } else {
                (batch.size / 2).max(BATCH_MIN)
            };
            batch.last = Some(Instant::now());
            let want = n.max(batch.size);
            self.reserve(want, batch).await?;
        }
    }

    /// Reserves clusters (see the module docs) under the `alloc` guard.
    async fn reserve(
        &self,
        want: usize,
        alloc: tokio::sync::OwnedMutexGuard<Batch>,
    ) -> Result<(), BlockError> {
        let r = {
            let mut m = self.lock();
            let mut hint = m.hint;
            let r = m.rc.reserve(want, &mut hint);
            m.hint = hint;
            r
        };
        if r.clusters.is_empty() {
            return Err(BlockError::NoSpace);
        }
        let (blocks, tables, end) = (r.block_writes, r.table_writes, r.end_cluster);
        io::blocking(&self.file, move |f| {
            let _alloc = alloc;
            write_all(f, &blocks)?;
            io::grow_to(f, end * CLUSTER_SIZE)?;
            if !tables.is_empty() {
                // The table may point to new refcount blocks only once they
                // are durable (rare: one block per 2 GiB of file).
                f.sync_data()?;
                write_all(f, &tables)?;
            }
            Ok(())
        })
        .await?;
        self.lock().pool.extend(r.clusters);
        Ok(())
    }

    /// Claims guest cluster `g` for allocation unless it is already mapped
    /// to data; waits while another request allocates it.
    async fn claim(&self, g: u64) -> Mapping {
        loop {
            let notified = self.allocated.notified();
            {
                let mut m = self.lock();
                let cur = m.mapping(g);
                if matches!(cur, Mapping::Data(_)) {
                    return cur;
                }
                if m.allocating.insert(g) {
                    return cur;
                }
            }
            notified.await;
        }
    }

    /// Puts clusters whose I/O is finished back in the pool. (Clusters of a
    /// cancelled request are not: its blocking write may still land.)
    fn untake(&self, hosts: Vec<u64>) {
        let mut m = self.lock();
        for c in hosts.into_iter().rev() {
            m.pool.push_front(c);
        }
    }

    pub(super) async fn write_inner(&self, offset: u64, data: Bytes) -> Result<(), BlockError> {
        let _pass = self.gate.enter();
        let end = offset + data.len() as u64;
        let first = offset / CLUSTER_SIZE;
        let last = (end - 1) / CLUSTER_SIZE;
        // (host offset, bytes) to write, one per cluster: copying contiguous
        // pieces together would cost more than the extra `pwrite` calls.
        let mut ops: Vec<(u64, Bytes)> = Vec::new();
        let mut claims = Claims {
            overlay: self,
            guests: Vec::new(),
        };
        for g in first..=last {
            let c_start = g * CLUSTER_SIZE;
            let lo = offset.max(c_start);
            let hi = end.min(c_start + CLUSTER_SIZE);
            let part = data.slice((lo - offset) as usize..(hi - offset) as usize);
            match self.claim(g).await {
                Mapping::Data(h) => ops.push((h + (lo - c_start), part)),
                other => claims.guests.push((g, other)),
            }
        }
        let claimed = &claims.guests;
        if claimed.is_empty() {
            return self.write_ops(ops).await;
        }
        let tables = {
            let m = self.lock();
            let mut t: Vec<usize> = claimed
                .iter()
                .filter(|(g, _)| !m.has_table(*g))
                .map(|(g, _)| l2::split(*g).0)
                .collect();
            t.dedup();
            t.len()
        };
        let mut hosts = self.take(claimed.len() + tables).await?;
        let spare_tables = hosts.split_off(claimed.len());
        let result = async {
            for (&(g, old), &host) in claimed.iter().zip(&hosts) {
                let buf = self.cow_cluster(g, old, offset, &data).await?;
                ops.push((host * CLUSTER_SIZE, buf));
            }
            self.write_ops(ops).await
        }
        .await;
        if let Err(e) = result {
            hosts.extend(spare_tables);
            self.untake(hosts);
            return Err(e);
        }
        let mut spare = spare_tables.into_iter();
        let mut unused = Vec::new();
        {
            let mut m = self.lock();
            for (&(g, _), &host) in claimed.iter().zip(&hosts) {
                if !m.has_table(g) {
                    match spare.next() {
                        Some(t) => m.install_table(g, t),
                        // Counted above: a table cannot vanish meanwhile.
                        None => continue,
                    }
                }
                m.set(g, Mapping::Data(host * CLUSTER_SIZE));
            }
            unused.extend(spare);
        }
        self.untake(unused);
        Ok(())
    }

    /// The full new contents of guest cluster `g`: the write's bytes over
    /// what the cluster read as before (backing data or zeros).
    async fn cow_cluster(
        &self,
        g: u64,
        old: Mapping,
        offset: u64,
        data: &Bytes,
    ) -> Result<Bytes, BlockError> {
        let c_start = g * CLUSTER_SIZE;
        let end = offset + data.len() as u64;
        let lo = offset.max(c_start);
        let hi = end.min(c_start + CLUSTER_SIZE);
        let part = data.slice((lo - offset) as usize..(hi - offset) as usize);
        if lo == c_start && hi == c_start + CLUSTER_SIZE {
            return Ok(part);
        }
        // The disk may end inside its last cluster; the rest stays zero.
        let valid = (self.size - c_start).min(CLUSTER_SIZE) as usize;
        let mut buf = if old == Mapping::Unallocated && self.backing.is_some() {
            // A fresh read buffer is unique: reuse it instead of copying.
            let base = self.read_backing(c_start, valid).await?;
            let mut b = base
                .try_into_mut()
                .unwrap_or_else(|b| BytesMut::from(&b[..]));
            b.resize(CLUSTER_SIZE as usize, 0);
            b
        } else {
            BytesMut::zeroed(CLUSTER_SIZE as usize)
        };
        let at = (lo - c_start) as usize;
        buf[at..at + part.len()].copy_from_slice(&part);
        Ok(buf.freeze())
    }

    async fn write_ops(&self, ops: Vec<(u64, Bytes)>) -> Result<(), BlockError> {
        if ops.is_empty() {
            return Ok(());
        }
        let _permit = self.writers.acquire().await;
        io::blocking(&self.file, move |f| {
            for (host, buf) in &ops {
                io::write_at(f, buf, *host, false)?;
            }
            Ok(())
        })
        .await
    }

    /// Makes guest range read as zeros: whole clusters get the zero flag (and
    /// lose their host cluster); partial clusters are written with zeros.
    pub(super) async fn zero_range(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let end = offset + len;
        let mut g = offset / CLUSTER_SIZE;
        while g * CLUSTER_SIZE < end {
            let c_start = g * CLUSTER_SIZE;
            let c_end = (c_start + CLUSTER_SIZE).min(self.size);
            if offset <= c_start && c_end <= end {
                let mut g_end = g + 1;
                while g_end - g < DISCARD_CHUNK
                    && g_end * CLUSTER_SIZE < end
                    && (g_end * CLUSTER_SIZE + CLUSTER_SIZE).min(self.size) <= end
                {
                    g_end += 1;
                }
                self.zero_clusters(g, g_end).await?;
                g = g_end;
                continue;
            }
            let lo = offset.max(c_start);
            let hi = end.min(c_end);
            let reads_zero = match self.lock().mapping(g) {
                Mapping::Zero { .. } => true,
                Mapping::Unallocated => self.backing.is_none(),
                Mapping::Data(_) => false,
            };
            if !reads_zero {
                self.write_inner(lo, Bytes::from(vec![0u8; (hi - lo) as usize]))
                    .await?;
            }
            g += 1;
        }
        Ok(())
    }

    /// Sets the zero flag on guest clusters `from..to`, creating L2 tables
    /// where needed.
    async fn zero_clusters(&self, from: u64, to: u64) -> Result<(), BlockError> {
        let need_tables = |m: &Meta| -> Vec<u64> {
            let mut firsts: Vec<u64> = (from..to)
                .filter(|&g| !m.has_table(g))
                .map(|g| g - g % L2_ENTRIES as u64)
                .collect();
            firsts.dedup();
            firsts
        };
        let missing = need_tables(&self.lock()).len();
        let mut spare = if missing > 0 && self.backing.is_some() {
            self.take(missing).await?
        } else {
            Vec::new()
        };
        let mut g = from;
        while g < to {
            let notified = self.allocated.notified();
            let waiting = {
                let mut m = self.lock();
                loop {
                    if g >= to {
                        break false;
                    }
                    if m.allocating.contains(&g) {
                        break true;
                    }
                    if !m.has_table(g) {
                        if self.backing.is_none() {
                            // Unallocated already reads as zeros.
                            g += 1;
                            continue;
                        }
                        match spare.pop() {
                            Some(t) => m.install_table(g, t),
                            None => break false,
                        }
                    }
                    if m.mapping(g) != (Mapping::Zero { host: None }) {
                        m.set(g, Mapping::Zero { host: None });
                    }
                    g += 1;
                }
            };
            if !waiting {
                break;
            }
            notified.await;
        }
        if !spare.is_empty() {
            let mut m = self.lock();
            for c in spare.into_iter().rev() {
                m.pool.push_front(c);
            }
        }
        if g < to {
            // Tables ran out because a concurrent request used our count: retry.
            return Box::pin(self.zero_clusters(g, to)).await;
        }
        Ok(())
    }
}

/// Guest clusters claimed for allocation by one write; released on drop,
/// also when the write is cancelled.
struct Claims<'a> {
    overlay: &'a Overlay,
    /// Each claimed cluster with what it mapped to when claimed.
    guests: Vec<(u64, Mapping)>,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        if self.guests.is_empty() {
            return;
        }
        let mut m = self.overlay.lock();
        for (g, _) in &self.guests {
            m.allocating.remove(g);
        }
        drop(m);
        self.overlay.allocated.notify_waiters();
    }
}
