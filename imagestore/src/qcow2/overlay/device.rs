//! The overlay as a [`BlockDevice`]: reads planned by source, writes,
//! flushes, discards and block status, each refused once the overlay failed.

use super::{Overlay, Src, SyncWrites, MAX_EXTENTS};
use crate::qcow2::CLUSTER_SIZE;
use async_trait::async_trait;
use blockdev::{Allocation, BlockDevice, BlockError, Capabilities, Extent};
use bytes::{Bytes, BytesMut};

impl Overlay {
    /// After a request changed the device: commits when the request asked
    /// for it (FUA) or the sync mode makes every change durable before it
    /// completes.
    async fn durable(&self, fua: bool) -> Result<(), BlockError> {
        match self.sync_writes() {
            SyncWrites::Each => self.commit_with(false).await,
            SyncWrites::Always => self.commit().await,
            SyncWrites::Flush if fua => self.commit().await,
            SyncWrites::Flush => Ok(()),
        }
    }
}

#[async_trait]
impl BlockDevice for Overlay {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        self.check_failed()?;
        self.range(offset, len as u64)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let _pass = self.gate.enter();
        let g = offset / CLUSTER_SIZE;
        if g == (offset + len as u64 - 1) / CLUSTER_SIZE {
            // Within one cluster (most reads): no plan to build when the
            // cluster reads from one place.
            let (e, full) = {
                let m = self.lock();
                (m.mapping(g), m.layout.full())
            };
            let src = match e.host {
                Some(h) if e.alloc == full => Some(Src::Host(h + offset % CLUSTER_SIZE)),
                _ if e.zero == full => Some(Src::Zero),
                _ if e.alloc == 0 && e.zero == 0 => Some(self.unallocated_src()),
                _ => None,
            };
            if let Some(src) = src {
                return self.read_run(offset, len as u64, src).await;
            }
        }
        let runs = {
            let m = self.lock();
            self.plan(&m, offset, len as u64)
        };
        if let [(off, n, src)] = runs[..] {
            return self.read_run(off, n, src).await;
        }
        let mut out = BytesMut::with_capacity(len);
        for (off, n, src) in runs {
            match src {
                Src::Zero => out.resize(out.len() + n as usize, 0),
                _ => out.extend_from_slice(&self.read_run(off, n, src).await?),
            }
        }
        Ok(out.freeze())
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.writable()?;
        self.range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.write_inner(offset, data).await?;
        self.durable(fua).await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        if self.caps.read_only {
            return Ok(());
        }
        self.commit().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable()?;
        self.range(offset, len)?;
        self.zero_range(offset, len).await?;
        self.durable(false).await
    }

    /// Both ways set the zero flag on whole clusters: the range reads zeros
    /// and takes no space, which is what WRITE SAME asks of a thin device.
    async fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), BlockError> {
        self.writable()?;
        self.range(offset, len)?;
        self.zero_range(offset, len).await?;
        self.durable(false).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError> {
        self.range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let runs = {
            let m = self.lock();
            self.plan(&m, offset, len)
        };
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |e: Extent| match out.last_mut() {
            Some(last) if last.state == e.state && last.offset + last.len == e.offset => {
                last.len += e.len
            }
            _ => out.push(e),
        };
        for (off, n, src) in runs {
            let state = match src {
                Src::Host(_) => Allocation::Mapped,
                Src::Zero => Allocation::Deallocated,
                Src::Backing => {
                    let Some(b) = &self.backing else { continue };
                    let ext = b.block_status(off, n).await?;
                    let covered: u64 = ext.iter().map(|e| e.len).sum();
                    for e in ext {
                        push(e);
                    }
                    if covered < n {
                        // The backing device stopped early; so do we.
                        break;
                    }
                    continue;
                }
            };
            push(Extent {
                offset: off,
                len: n,
                state,
            });
        }
        out.truncate(MAX_EXTENTS);
        Ok(out)
    }
}
