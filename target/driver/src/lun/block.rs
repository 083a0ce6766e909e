//! Block commands (reads, writes, WRITE SAME, COMPARE AND WRITE, GET LBA
//! STATUS, ...) carried out on the device once `sbc` has decoded them, and
//! how device errors become sense data.

use super::Lun;
use blockdev::{Allocation, BlockError};
use bytes::{Bytes, BytesMut};
use iscsi_proto::scsi::sbc::{self, BlockOp};
use iscsi_proto::scsi::sense::Sense;
use iscsi_proto::task::ScsiResult;

/// Largest chunk WRITE SAME writes at once.
const WRITE_SAME_CHUNK: u64 = 1 << 20;
/// Most blocks GET LBA STATUS asks the device about at once.
pub(super) const LBA_STATUS_SPAN: u64 = 1 << 20;
/// Most device queries one GET LBA STATUS makes; the initiator asks again
/// from where the answer ends.
const LBA_STATUS_SPANS: usize = 64;

impl Lun {
    pub(super) async fn block(
        &self,
        op: BlockOp,
        write_through: bool,
    ) -> Result<ScsiResult, BlockError> {
        let ok = |d: Bytes| sbc::good(d, 0);
        match op {
            BlockOp::Nothing => Ok(ok(Bytes::new())),
            BlockOp::Read { offset, len } => {
                // Shared: a read never sees half of an atomic write.
                let _g = self.write_gate.read().await;
                self.device.read(offset, len as usize).await.map(ok)
            }
            BlockOp::AtomicWrite { offset, data, fua } => {
                // Exclusive, like CAW: no other write lands in between and
                // no read sees the range half written.
                let _g = self.write_gate.write().await;
                self.device
                    .write(offset, data, fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::Write { offset, data, fua } => {
                let bs = self.geo.block_size as usize;
                let fua = fua || write_through;
                if data.len() % bs == 0 {
                    let _g = self.write_gate.read().await;
                    self.device.write(offset, data, fua).await?;
                } else {
                    // Truncated Data-Out ending inside a block: merge the
                    // bytes that arrived into the block (exclusively, like CAW).
                    let _g = self.write_gate.write().await;
                    let whole = data.len() / bs * bs;
                    let tail_at = offset + whole as u64;
                    let mut tail = BytesMut::from(&self.device.read(tail_at, bs).await?[..]);
                    tail[..data.len() - whole].copy_from_slice(&data[whole..]);
                    let mut all = BytesMut::with_capacity(whole + bs);
                    all.extend_from_slice(&data[..whole]);
                    all.extend_from_slice(&tail);
                    self.device.write(offset, all.freeze(), fua).await?;
                }
                Ok(ok(Bytes::new()))
            }
            BlockOp::OrWrite { offset, data, fua } => {
                // Read-modify-write: exclusive against other writes, like CAW.
                let _g = self.write_gate.write().await;
                let medium = self.device.read(offset, data.len()).await?;
                let merged: Vec<u8> = medium.iter().zip(&data[..]).map(|(a, b)| a | b).collect();
                self.device
                    .write(offset, Bytes::from(merged), fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::Verify {
                offset,
                len,
                compare,
            } => {
                let medium = self.device.read(offset, len as usize).await?;
                Ok(
                    match compare.and_then(|c| sbc::first_difference(&medium, &c)) {
                        Some(at) => miscompare(at),
                        None => ok(Bytes::new()),
                    },
                )
            }
            BlockOp::WriteSame {
                offset,
                len,
                block,
                unmap,
                fua,
            } => {
                let _g = self.write_gate.read().await;
                self.write_same(offset, len, block, unmap, fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::CompareAndWrite {
                offset,
                compare,
                write,
                fua,
            } => {
                let _g = self.write_gate.write().await;
                let medium = self.device.read(offset, compare.len()).await?;
                if let Some(at) = sbc::first_difference(&medium, &compare) {
                    return Ok(miscompare(at));
                }
                self.device
                    .write(offset, write, fua || write_through)
                    .await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::DataIn { data, .. } => Ok(ok(data)),
            BlockOp::Flush => {
                self.device.flush().await?;
                Ok(ok(Bytes::new()))
            }
            BlockOp::Discard(ranges) => {
                let _g = self.write_gate.read().await;
                for (offset, len) in ranges {
                    self.device.discard(offset, len).await?;
                }
                Ok(ok(Bytes::new()))
            }
            BlockOp::LbaStatus { lba, alloc } => {
                let runs = self.lba_runs(lba, alloc).await?;
                Ok(sbc::lba_status(&runs, alloc))
            }
        }
    }

    /// (lba, blocks, deallocated) runs from `lba` on, adjacent runs of one
    /// state merged, as many as `alloc` bytes of descriptors can hold: the
    /// device is asked span by span so a large LU still reports its end.
    async fn lba_runs(&self, lba: u64, alloc: u32) -> Result<Vec<(u64, u64, bool)>, BlockError> {
        let bs = u64::from(self.geo.block_size);
        let max_runs = (alloc as usize).saturating_sub(8) / 16;
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = lba;
        let mut spans = 0;
        while at < self.geo.num_blocks && runs.len() <= max_runs.max(1) && spans < LBA_STATUS_SPANS
        {
            spans += 1;
            let blocks = (self.geo.num_blocks - at).min(LBA_STATUS_SPAN);
            let extents = self.device.block_status(at * bs, blocks * bs).await?;
            let start = at;
            for e in extents.iter().filter(|e| e.len >= bs) {
                let (elba, n) = (e.offset / bs, e.len / bs);
                let dealloc = e.state == Allocation::Deallocated;
                match runs.last_mut() {
                    Some(last)
                        if last.2 == dealloc
                            && last.0 + last.1 == elba
                            && last.1 + n <= u64::from(u32::MAX) =>
                    {
                        last.1 += n;
                    }
                    _ => runs.push((elba, n, dealloc)),
                }
                at = at.max(elba + n);
            }
            if at == start {
                break;
            }
        }
        Ok(runs)
    }

    async fn write_same(
        &self,
        offset: u64,
        len: u64,
        block: Option<Bytes>,
        unmap: bool,
        fua: bool,
    ) -> Result<(), BlockError> {
        // With UNMAP the range is deallocated whatever the data (it reads
        // back as zeros: LBPRZ), as initiators and libiscsi expect.
        let zero = unmap || block.as_ref().is_none_or(|b| b.iter().all(|x| *x == 0));
        if zero {
            match self.device.write_zeroes(offset, len, unmap).await {
                Ok(()) => {
                    if fua {
                        self.device.flush().await?;
                    }
                    return Ok(());
                }
                Err(BlockError::Unsupported) => {}
                Err(e) => return Err(e),
            }
        }
        let bs = u64::from(self.geo.block_size);
        let pattern = block.unwrap_or_else(|| Bytes::from(vec![0u8; bs as usize]));
        let chunk_len = len.min(WRITE_SAME_CHUNK.max(bs) / bs * bs);
        let mut chunk = BytesMut::with_capacity(chunk_len as usize);
        while (chunk.len() as u64) < chunk_len {
            chunk.extend_from_slice(&pattern);
        }
        let chunk = chunk.freeze();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk_len);
            self.device
                .write(offset + at, chunk.slice(..n as usize), fua)
                .await?;
            at += n;
        }
        Ok(())
    }
}

fn miscompare(at: usize) -> ScsiResult {
    Sense::MISCOMPARE_DURING_VERIFY
        .with_info(u32::try_from(at).unwrap_or(u32::MAX))
        .into_result()
}

/// Maps a device error to its sense data.
pub(super) fn block_error(e: &BlockError, write: bool) -> ScsiResult {
    let sense = match e {
        BlockError::Io(_) | BlockError::Device(_) | BlockError::Unsupported if write => {
            Sense::WRITE_ERROR
        }
        BlockError::Io(_) | BlockError::Device(_) | BlockError::Unsupported => {
            Sense::UNRECOVERED_READ_ERROR
        }
        BlockError::NoSpace => Sense::SPACE_ALLOCATION_FAILED,
        BlockError::ReadOnly => Sense::WRITE_PROTECTED,
        BlockError::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
    };
    sense.into_result()
}
