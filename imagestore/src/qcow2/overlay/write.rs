//! The write path: reserving clusters, first writes to subclusters with
//! copy-on-write of partly covered ones (serialised per guest cluster),
//! writes in place, and zeroing.

use super::publish::{Claims, Publish};
use super::{
    commit, runs, write_all, Batch, Overlay, BATCH_BUSY, BATCH_MAX, BATCH_MIN, DISCARD_CHUNK,
};
use crate::qcow2::io;
use crate::qcow2::l2::{Entry, Sub};
use crate::qcow2::meta::Meta;
use crate::qcow2::wal::Op;
use crate::qcow2::CLUSTER_SIZE;
use crate::qcow2::RB_ENTRIES;
use blockdev::BlockError;
use bytes::{Bytes, BytesMut};
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
            match self.reserve(n, want, batch).await {
                Err(BlockError::NoSpace) if want > n => {
                    // A batch too big for the disk may still leave room for
                    // this request: take just that, and start small again.
                    let mut batch = Arc::clone(&self.alloc).lock_owned().await;
                    batch.size = BATCH_MIN;
                    batch.last = None;
                    self.reserve(n, n, batch).await?;
                }
                r => r?,
            }
        }
    }

    /// How many clusters (at least `need`, at most `want`) the limits let
    /// a reservation take.
    async fn allowed(&self, need: usize, want: usize) -> Result<usize, BlockError> {
        let limits = self.limits();
        let mut want = want;
        if let Some(q) = limits.quota_bytes {
            let used = self.lock().rc.used;
            let left = (q / CLUSTER_SIZE).saturating_sub(used);
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        if limits.reserve_free_bytes > 0 {
            let free = io::blocking(&self.file, io::free_bytes).await?;
            let left = free.saturating_sub(limits.reserve_free_bytes) / CLUSTER_SIZE;
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        if want < need {
            return Err(BlockError::NoSpace);
        }
        Ok(want)
    }

    /// Reserves clusters (see the module docs) under the `alloc` guard.
    async fn reserve(
        &self,
        need: usize,
        want: usize,
        alloc: tokio::sync::OwnedMutexGuard<Batch>,
    ) -> Result<(), BlockError> {
        let want = self.allowed(need, want).await?;
        let r = {
            let mut m = self.lock();
            let mut hint = m.hint;
            let r = m.rc.reserve(want, &mut hint);
            m.hint = hint;
            r
        };
        if r.clusters.is_empty() {
            self.lock().rc.unreserve(&r);
            return Err(BlockError::NoSpace);
        }
        let blocks = r.block_writes.clone();
        let tables = r.table_writes.clone();
        let mut space = runs(r.clusters.clone());
        space.extend(
            r.new_blocks
                .iter()
                .map(|&b| (b as u64 * RB_ENTRIES as u64, 1)),
        );
        let (wal, failed) = (self.wal.clone(), Arc::clone(&self.failed));
        let done = io::blocking(&self.file, move |f| {
            let _alloc = alloc;
            // Real blocks first: with them the data, the L2 tables taken
            // from this pool and the refcounts can always be written.
            let len = f.metadata()?.len();
            let allocated = space
                .iter()
                .try_for_each(|&(c, n)| io::allocate(f, c * CLUSTER_SIZE, n * CLUSTER_SIZE));
            if let Err(e) = allocated {
                // Give back what part of the batch got blocks: nothing
                // references these clusters (their refcounts were never
                // written), and the file keeps its length.
                for &(c, n) in &space {
                    let _ = io::punch_hole(f, c * CLUSTER_SIZE, n * CLUSTER_SIZE);
                }
                if f.metadata().map(|m| m.len() > len).unwrap_or(false) {
                    let _ = io::truncate(f, len);
                }
                return Err(e);
            }
            write_all(f, &blocks)?;
            if !tables.is_empty() {
                // The table may point to new refcount blocks only once they
                // are durable (rare: one block per 2 GiB of file).
                if let Err(e) = io::sync(f) {
                    commit::fail(&failed, wal.as_deref());
                    return Err(e);
                }
                write_all(f, &tables)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = done {
            // None of these clusters was handed out: forget them again, and
            // search from the lowest of them next time.
            let mut m = self.lock();
            m.rc.unreserve(&r);
            let low = r
                .clusters
                .iter()
                .copied()
                .chain(r.new_blocks.iter().map(|&b| b as u64 * RB_ENTRIES as u64))
                .min();
            if let Some(low) = low {
                m.hint = m.hint.min(low);
            }
            return Err(e);
        }
        self.lock().pool.extend(r.clusters);
        Ok(())
    }

    /// Claims guest cluster `g` for allocation unless the subclusters in
    /// `need` are all allocated already; waits while another request
    /// allocates in it.
    async fn claim(&self, g: u64, need: u32) -> Claim {
        loop {
            let notified = self.allocated.notified();
            {
                let mut m = self.lock();
                let cur = m.mapping(g);
                if let Some(h) = cur.host {
                    if cur.alloc & need == need {
                        return Claim::Owned(h);
                    }
                }
                if m.allocating.insert(g) {
                    return Claim::Claimed(cur);
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
        let layout = self.layout;
        let end = offset + data.len() as u64;
        let first = offset / CLUSTER_SIZE;
        let last = (end - 1) / CLUSTER_SIZE;
        // The write's bytes within guest cluster `g`, as cluster offsets.
        let within = |g: u64| {
            let c_start = g * CLUSTER_SIZE;
            (
                offset.max(c_start) - c_start,
                end.min(c_start + CLUSTER_SIZE) - c_start,
            )
        };
        // (host offset, bytes) to write, one per cluster: copying contiguous
        // pieces together would cost more than the extra `pwrite` calls.
        let mut ops: Vec<(u64, Bytes)> = Vec::new();
        let mut claims = Claims {
            meta: Arc::clone(&self.meta),
            allocated: Arc::clone(&self.allocated),
            guests: Vec::new(),
        };
        for g in first..=last {
            let (lo, hi) = within(g);
            let c_start = g * CLUSTER_SIZE;
            let part =
                data.slice((c_start + lo - offset) as usize..(c_start + hi - offset) as usize);
            match self.claim(g, layout.mask(lo, hi)).await {
                Claim::Owned(h) => ops.push((h + lo, part)),
                Claim::Claimed(cur) => claims.guests.push((g, cur)),
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
                .map(|(g, _)| layout.split(*g).0)
                .collect();
            t.dedup();
            t.len()
        };
        // Clusters with a host cluster (some subclusters written) keep it.
        let fresh = claimed.iter().filter(|(_, e)| e.host.is_none()).count();
        let mut hosts = self.take(fresh + tables).await?;
        let spare_tables = hosts.split_off(fresh);
        let mut new_hosts = hosts.iter();
        let targets: Option<Vec<u64>> = claimed
            .iter()
            .map(|(_, e)| {
                e.host
                    .or_else(|| new_hosts.next().map(|&c| c * CLUSTER_SIZE))
            })
            .collect();
        let Some(targets) = targets else {
            // Cannot happen (one new host per cluster without one, counted
            // above); never fall back to writing at some other offset.
            hosts.extend(spare_tables);
            self.untake(hosts);
            return Err(BlockError::Io(std::io::Error::other(
                "qcow2: host cluster count mismatch",
            )));
        };
        let result = async {
            for (&(g, old), &host) in claimed.iter().zip(&targets) {
                let (at, buf) = self.cow(g, old, within(g), offset, &data).await?;
                ops.push((host + at, buf));
            }
            Ok::<_, BlockError>(())
        }
        .await;
        if let Err(e) = result {
            hosts.extend(spare_tables);
            self.untake(hosts);
            return Err(e);
        }
        let targets = claimed
            .iter()
            .zip(targets)
            .map(|(&(g, _), host)| {
                let (lo, hi) = within(g);
                (host, layout.mask(lo, hi))
            })
            .collect();
        // Data, mappings and log record in one trip to the blocking pool;
        // acknowledged only once the record is written.
        self.write_and_publish(
            ops,
            Publish {
                claims,
                wal: self.wal.clone(),
                targets,
                hosts,
                spare_tables,
            },
        )
        .await
    }

    /// What a first write to guest cluster `g` writes: (offset within the
    /// cluster, bytes). The write's bytes `lo..hi`, widened to whole
    /// subclusters where an edge subcluster is not allocated yet, filled
    /// with what it read as before (backing data or zeros). In the standard
    /// layout that is the whole cluster.
    async fn cow(
        &self,
        g: u64,
        old: Entry,
        (lo, hi): (u64, u64),
        offset: u64,
        data: &Bytes,
    ) -> Result<(u64, Bytes), BlockError> {
        let ss = self.layout.sub_size();
        let c_start = g * CLUSTER_SIZE;
        let part = data.slice((c_start + lo - offset) as usize..(c_start + hi - offset) as usize);
        let (head, tail) = ((lo / ss) as u32, ((hi - 1) / ss) as u32);
        let start = if lo % ss != 0 && old.alloc & (1 << head) == 0 {
            lo - lo % ss
        } else {
            lo
        };
        let stop = if hi % ss != 0 && old.alloc & (1 << tail) == 0 {
            hi.div_ceil(ss) * ss
        } else {
            hi
        };
        if start == lo && stop == hi {
            return Ok((lo, part));
        }
        let from_backing = |s: u32| self.backing.is_some() && old.sub(s, ss) == Sub::Unallocated;
        // The disk may end inside its last cluster; the rest stays zero.
        let valid = (self.size - c_start).min(stop);
        let (fill_head, fill_tail) = (
            start < lo && from_backing(head),
            hi < stop && from_backing(tail),
        );
        // Every edge to fill comes from the backing image (always so in the
        // standard layout): one read, and a fresh read buffer is unique, so
        // it is reused instead of copied.
        let one_read = match (start < lo, hi < stop) {
            (true, true) => fill_head && fill_tail,
            (true, false) => fill_head,
            (false, true) => fill_tail,
            (false, false) => false,
        };
        let mut buf = if one_read {
            let base = self
                .read_backing(c_start + start, (valid - start) as usize)
                .await?;
            let mut b = base
                .try_into_mut()
                .unwrap_or_else(|b| BytesMut::from(&b[..]));
            b.resize((stop - start) as usize, 0);
            b
        } else {
            let mut b = BytesMut::zeroed((stop - start) as usize);
            if fill_head {
                let base = self
                    .read_backing(c_start + start, (lo - start) as usize)
                    .await?;
                b[..base.len()].copy_from_slice(&base);
            }
            if fill_tail && valid > hi {
                let base = self
                    .read_backing(c_start + hi, (valid - hi) as usize)
                    .await?;
                let at = (hi - start) as usize;
                b[at..at + base.len()].copy_from_slice(&base);
            }
            b
        };
        let at = (lo - start) as usize;
        buf[at..at + part.len()].copy_from_slice(&part);
        Ok((start, buf.freeze()))
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

    /// Makes guest range read as zeros: whole clusters get every zero bit
    /// (and lose their host cluster); in partial clusters wholly covered
    /// subclusters get their zero bit and partly covered ones are written
    /// with zeros.
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
            self.zero_part(g, offset.max(c_start) - c_start, end.min(c_end) - c_start)
                .await?;
            g += 1;
        }
        Ok(())
    }

    /// Zeroes bytes `lo..hi` (cluster offsets) of guest cluster `g`, not the
    /// whole cluster.
    async fn zero_part(&self, g: u64, lo: u64, hi: u64) -> Result<(), BlockError> {
        let layout = self.layout;
        let ss = layout.sub_size();
        let c_start = g * CLUSTER_SIZE;
        let covered = layout.covered(lo, hi);
        let head_end = hi.min(lo.div_ceil(ss) * ss);
        let tail_start = head_end.max(hi / ss * ss);
        let mut edges = vec![(lo, head_end), (tail_start, hi)];
        if covered != 0 {
            if self.lock().has_table(g) {
                let log = self.zero_bits(g, covered).await;
                self.log_write(log).await?;
            } else if self.backing.is_some() {
                // No table to hold the bits: write the zeros instead.
                edges = vec![(lo, hi)];
            }
        }
        for (a, b) in edges {
            if a >= b {
                continue;
            }
            let e = self.lock().mapping(g);
            let reads_zero =
                ((a / ss) as u32..=((b - 1) / ss) as u32).all(|s| match e.sub(s, ss) {
                    Sub::Zero => true,
                    Sub::Unallocated => self.backing.is_none(),
                    Sub::Host(_) => false,
                });
            if !reads_zero {
                self.write_inner(c_start + a, Bytes::from(vec![0u8; (b - a) as usize]))
                    .await?;
            }
        }
        Ok(())
    }

    /// Sets the zero bits of subclusters `mask` of guest cluster `g` (whose
    /// table exists) once no first write is in flight there; the host
    /// cluster goes when no subcluster is left that does not read zeros.
    /// Returns the log record to write before completing.
    async fn zero_bits(&self, g: u64, mask: u32) -> Option<crate::qcow2::wal::Pending> {
        let full = self.layout.full();
        loop {
            let notified = self.allocated.notified();
            {
                let mut m = self.lock();
                if !m.allocating.contains(&g) {
                    let cur = m.mapping(g);
                    let zero = cur.zero | mask;
                    let host = if zero == full { None } else { cur.host };
                    m.set(
                        g,
                        Entry {
                            host,
                            alloc: cur.alloc & !mask,
                            zero,
                        },
                    );
                    return self.log_take(&mut m, &[Op::ZeroBits { g, mask }]);
                }
            }
            notified.await;
        }
    }

    /// Sets the zero flag on guest clusters `from..to`, creating L2 tables
    /// where needed.
    async fn zero_clusters(&self, from: u64, to: u64) -> Result<(), BlockError> {
        let need_tables = |m: &Meta| -> Vec<u64> {
            let mut firsts: Vec<u64> = (from..to)
                .filter(|&g| !m.has_table(g))
                .map(|g| g - g % self.layout.entries() as u64)
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
            let start = g;
            let (waiting, log) = {
                let mut m = self.lock();
                let waiting = loop {
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
                    let zero = Entry {
                        host: None,
                        alloc: 0,
                        zero: self.layout.full(),
                    };
                    if m.mapping(g) != zero {
                        m.set(g, zero);
                    }
                    g += 1;
                };
                let log = (g > start)
                    .then(|| self.log_take(&mut m, &[Op::ZeroRange { from: start, to: g }]));
                (waiting, log.flatten())
            };
            self.log_write(log).await?;
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

/// What [`Overlay::claim`] found.
enum Claim {
    /// The needed subclusters are allocated at this host cluster: write in place.
    Owned(u64),
    /// Claimed for a first write; the entry as it was.
    Claimed(Entry),
}
