//! A thin, sparse in-memory [`BlockDevice`] for tests: blocks live in a map,
//! absent blocks read as zeros, discard removes them.

use crate::block::{Allocation, BlockDevice, BlockError, Capabilities, Extent};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// In-memory device; every write is immediately "durable".
pub struct MemDevice {
    caps: Capabilities,
    /// Block number → block contents (exactly `block_size` bytes each).
    blocks: Mutex<BTreeMap<u64, Bytes>>,
}

impl MemDevice {
    /// A thin device of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64, read_only: bool) -> Self {
        Self {
            caps: Capabilities {
                block_size,
                num_blocks,
                read_only,
                thin: true,
                volatile_cache: false,
            },
            blocks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Number of allocated blocks (for space-accounting assertions).
    pub fn allocated_blocks(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters to tests, so poisoning is ignored.
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks alignment and bounds; returns (first block, block count).
    fn range(&self, offset: u64, len: u64) -> Result<(u64, u64), BlockError> {
        let bs = u64::from(self.caps.block_size);
        let out = BlockError::OutOfRange { offset, len };
        if bs == 0 || !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(out);
        }
        let end = offset
            .checked_add(len)
            .ok_or(BlockError::OutOfRange { offset, len })?;
        if end > self.caps.size_bytes() {
            return Err(out);
        }
        Ok((offset / bs, len / bs))
    }

    fn writable(&self) -> Result<(), BlockError> {
        if self.caps.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl BlockDevice for MemDevice {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        let (first, count) = self.range(offset, len as u64)?;
        let bs = self.caps.block_size as usize;
        let mut out = BytesMut::zeroed(len);
        let map = self.lock();
        for (lba, data) in map.range(first..first + count) {
            let at = ((lba - first) as usize) * bs;
            out[at..at + bs].copy_from_slice(data);
        }
        Ok(out.freeze())
    }

    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), BlockError> {
        self.writable()?;
        let (first, count) = self.range(offset, data.len() as u64)?;
        let bs = self.caps.block_size as usize;
        let mut map = self.lock();
        for i in 0..count {
            let at = (i as usize) * bs;
            map.insert(first + i, data.slice(at..at + bs));
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable()?;
        let (first, count) = self.range(offset, len)?;
        let mut map = self.lock();
        let doomed: Vec<u64> = map.range(first..first + count).map(|(k, _)| *k).collect();
        for k in doomed {
            map.remove(&k);
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), BlockError> {
        // Thin: zeroed blocks are simply deallocated, which reads back as zeros.
        self.discard(offset, len).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError> {
        let (first, count) = self.range(offset, len)?;
        let bs = u64::from(self.caps.block_size);
        let map = self.lock();
        let mut extents: Vec<Extent> = Vec::new();
        for lba in first..first + count {
            let state = if map.contains_key(&lba) {
                Allocation::Mapped
            } else {
                Allocation::Deallocated
            };
            match extents.last_mut() {
                Some(last) if last.state == state => last.len += bs,
                _ => extents.push(Extent {
                    offset: lba * bs,
                    len: bs,
                    state,
                }),
            }
        }
        Ok(extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_read_discard_status() -> Result<(), BlockError> {
        let dev = MemDevice::new(512, 16, false);
        let data = Bytes::from(vec![7u8; 1024]);
        dev.write(1024, data.clone(), false).await?;
        let back = dev.read(512, 2048).await?;
        assert_eq!(&back[..512], &[0u8; 512][..]);
        assert_eq!(&back[512..1536], &data[..]);
        let st = dev.block_status(0, 8192).await?;
        assert_eq!(st.len(), 3);
        assert_eq!(st[1].state, Allocation::Mapped);
        assert_eq!((st[1].offset, st[1].len), (1024, 1024));
        dev.discard(1024, 512).await?;
        assert_eq!(dev.allocated_blocks(), 1);
        assert!(matches!(
            dev.read(8192, 512).await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.read(100, 512).await,
            Err(BlockError::OutOfRange { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn read_only_refuses_writes() {
        let dev = MemDevice::new(4096, 4, true);
        assert!(matches!(
            dev.write(0, Bytes::from(vec![0u8; 4096]), true).await,
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(
            dev.discard(0, 4096).await,
            Err(BlockError::ReadOnly)
        ));
    }
}
