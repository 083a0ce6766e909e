//! Block commands (SBC-3): decoding and checking into operations on a block
//! device. READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY, WRITE SAME,
//! COMPARE AND WRITE, WRITE ATOMIC(16), SYNCHRONIZE CACHE, UNMAP, READ CAPACITY 10/16 and
//! GET LBA STATUS.

use super::cdb::{be32, be64, Cdb};
use super::inquiry::Limits;
use super::opcode::*;
use super::sense::Sense;
use crate::task::ScsiResult;
use bytes::Bytes;

pub use super::good;
pub use data::{first_difference, lba_status, read_capacity10, read_capacity16};

mod data;

/// What the decoder needs to know about the LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    pub thin: bool,
    /// Largest READ/WRITE transfer in blocks (0: no limit).
    pub max_transfer_blocks: u32,
}

/// A decoded, fully checked block operation. Offsets and lengths in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOp {
    /// Nothing to transfer (zero blocks): GOOD.
    Nothing,
    /// Read `len` bytes at `offset`.
    Read { offset: u64, len: u32 },
    /// Write `data` at `offset` (WRITE AND VERIFY writes with `fua`). When
    /// the initiator sent less Data-Out than the CDB describes, `data` holds
    /// what arrived (possibly ending inside a block): only that is written
    /// (FCP-4 9.4.2 a), and the residual tells the initiator.
    Write { offset: u64, data: Bytes, fua: bool },
    /// WRITE ATOMIC(16): write all of `data` at `offset` with no other
    /// command seeing or writing the range in between.
    AtomicWrite { offset: u64, data: Bytes, fua: bool },
    /// ORWRITE: OR `data` into the blocks at `offset`.
    OrWrite { offset: u64, data: Bytes, fua: bool },
    /// VERIFY: read `len` bytes; with `compare`, compare them against it.
    Verify {
        offset: u64,
        len: u32,
        compare: Option<Bytes>,
    },
    /// WRITE SAME: `block` repeated over `len` bytes; `None` writes zeros
    /// (NDOB). `unmap`: the range may be deallocated instead.
    WriteSame {
        offset: u64,
        len: u64,
        block: Option<Bytes>,
        unmap: bool,
        fua: bool,
    },
    /// COMPARE AND WRITE: if the medium equals `compare`, write `write`.
    CompareAndWrite {
        offset: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    },
    /// Answer with this Data-In (READ CAPACITY); `alloc` is the transfer length.
    DataIn { data: Bytes, alloc: u32 },
    /// SYNCHRONIZE CACHE: make completed writes durable.
    Flush,
    /// UNMAP: deallocate these byte ranges (offset, len).
    Discard(Vec<(u64, u64)>),
    /// GET LBA STATUS from byte `offset` (LBA `lba`), at most `alloc` bytes back.
    LbaStatus { lba: u64, alloc: u32 },
}

/// Decodes a block CDB. `Ok(None)`: not a block command. `Err`: the CHECK
/// CONDITION to return.
pub fn decode(
    geo: &Geometry,
    limits: &Limits,
    cdb: &[u8],
    data_out: &Bytes,
) -> Result<Option<BlockOp>, ScsiResult> {
    let c = Cdb(cdb);
    let op = c.opcode();
    let bs = u64::from(geo.block_size);
    if let Some((write, lba, blocks, flags)) = super::cdb::read_write(cdb) {
        if flags & 0xE0 != 0 {
            // RDPROTECT/WRPROTECT: no protection information here.
            return Err(Sense::INVALID_FIELD_IN_CDB
                .cdb_field(1, Some(7))
                .into_result());
        }
        check_range(geo, lba, u64::from(blocks))?;
        check_transfer(geo, blocks)?;
        if write && geo.read_only {
            return Err(Sense::WRITE_PROTECTED.into_result());
        }
        if blocks == 0 {
            return Ok(Some(BlockOp::Nothing));
        }
        let offset = lba * bs;
        let len = blocks * geo.block_size; // bounded by check_transfer
        if !write {
            return Ok(Some(BlockOp::Read { offset, len }));
        }
        let data = data_out.slice(..data_out.len().min(len as usize));
        if data.is_empty() {
            return Ok(Some(BlockOp::Nothing));
        }
        return Ok(Some(BlockOp::Write {
            offset,
            data,
            fua: flags & 0x08 != 0,
        }));
    }
    match op {
        // WRITE AND VERIFY 10/12/16
        WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => {
            let (lba, blocks) = lba_len(&c);
            if c.b(1) & 0xE0 != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(7))
                    .into_result());
            }
            check_range(geo, lba, u64::from(blocks))?;
            check_transfer(geo, blocks)?;
            if geo.read_only {
                return Err(Sense::WRITE_PROTECTED.into_result());
            }
            if blocks == 0 {
                return Ok(Some(BlockOp::Nothing));
            }
            let len = blocks * geo.block_size;
            let data = data_out.slice(..data_out.len().min(len as usize));
            if data.is_empty() {
                return Ok(Some(BlockOp::Nothing));
            }
            // The write is verified by making it durable before completion.
            Ok(Some(BlockOp::Write {
                offset: lba * bs,
                data,
                fua: true,
            }))
        }
        // ORWRITE(16)
        ORWRITE_16 => {
            let (lba, blocks) = (c.u64(2), c.u32(10));
            if c.b(1) & 0xE0 != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(7))
                    .into_result());
            }
            check_range(geo, lba, u64::from(blocks))?;
            check_transfer(geo, blocks)?;
            if geo.read_only {
                return Err(Sense::WRITE_PROTECTED.into_result());
            }
            if blocks == 0 {
                return Ok(Some(BlockOp::Nothing));
            }
            let data = data_for(data_out, (blocks * geo.block_size) as usize)?;
            Ok(Some(BlockOp::OrWrite {
                offset: lba * bs,
                data,
                fua: c.b(1) & 0x08 != 0,
            }))
        }
        WRITE_ATOMIC_16 => decode_atomic(geo, limits, &c, data_out).map(Some),
        // PRE-FETCH 10/16: there is no cache to load; GOOD (SBC-3 5.9).
        PRE_FETCH_10 | PRE_FETCH_16 => {
            let (lba, blocks) = if op == 0x34 {
                (u64::from(c.u32(2)), u64::from(c.u16(7)))
            } else {
                (c.u64(2), u64::from(c.u32(10)))
            };
            check_range(geo, lba, blocks)?;
            Ok(Some(BlockOp::Nothing))
        }
        // VERIFY 10/12/16
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            let (lba, blocks) = lba_len(&c);
            if c.b(1) & 0xE0 != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(7))
                    .into_result());
            }
            let bytchk = (c.b(1) >> 1) & 0x03;
            if bytchk == 2 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(2))
                    .into_result());
            }
            check_range(geo, lba, u64::from(blocks))?;
            check_transfer(geo, blocks)?;
            if blocks == 0 {
                return Ok(Some(BlockOp::Nothing));
            }
            let len = blocks * geo.block_size;
            let compare = match bytchk {
                0 => None,
                1 => Some(data_for(data_out, len as usize)?),
                _ => {
                    // One block compared against every block of the range.
                    let one = data_for(data_out, geo.block_size as usize)?;
                    let mut all = Vec::with_capacity(len as usize);
                    for _ in 0..blocks {
                        all.extend_from_slice(&one);
                    }
                    Some(Bytes::from(all))
                }
            };
            Ok(Some(BlockOp::Verify {
                offset: lba * bs,
                len,
                compare,
            }))
        }
        // WRITE SAME 10/16
        WRITE_SAME_10 | WRITE_SAME_16 => {
            let (lba, mut blocks) = if op == 0x41 {
                (u64::from(c.u32(2)), u64::from(c.u16(7)))
            } else {
                (c.u64(2), u64::from(c.u32(10)))
            };
            let flags = c.b(1);
            let ndob = op == 0x93 && flags & 0x01 != 0;
            if flags & 0xE0 != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(7))
                    .into_result());
            }
            if flags & 0x10 != 0 {
                // ANCHOR: anchored LBAs are not supported (ANC_SUP = 0).
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(4))
                    .into_result());
            }
            let unmap = flags & 0x08 != 0;
            if unmap && !geo.thin {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(3))
                    .into_result());
            }
            check_range(geo, lba, blocks)?;
            if blocks == 0 {
                // WSNZ = 0: zero blocks means up to the last LBA.
                blocks = geo.num_blocks - lba;
            }
            if limits.max_write_same_blocks != 0 && blocks > limits.max_write_same_blocks {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(if op == 0x41 { 7 } else { 10 }, None)
                    .into_result());
            }
            if geo.read_only {
                return Err(Sense::WRITE_PROTECTED.into_result());
            }
            let block = if ndob {
                None
            } else {
                if data_out.len() != geo.block_size as usize {
                    return Err(Sense::INVALID_FIELD_IN_CDB.into_result());
                }
                Some(data_out.clone())
            };
            if blocks == 0 {
                return Ok(Some(BlockOp::Nothing));
            }
            Ok(Some(BlockOp::WriteSame {
                offset: lba * bs,
                len: blocks * bs,
                block,
                unmap,
                fua: false,
            }))
        }
        // COMPARE AND WRITE
        COMPARE_AND_WRITE => {
            let lba = c.u64(2);
            let blocks = u32::from(c.b(13));
            if c.b(1) & 0xE0 != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(1, Some(7))
                    .into_result());
            }
            if blocks > u32::from(limits.max_compare_write_blocks) {
                return Err(Sense::INVALID_FIELD_IN_CDB
                    .cdb_field(13, None)
                    .into_result());
            }
            check_range(geo, lba, u64::from(blocks))?;
            if geo.read_only {
                return Err(Sense::WRITE_PROTECTED.into_result());
            }
            if blocks == 0 {
                // NUMBER OF LOGICAL BLOCKS 0 moves no data; Data-Out sent
                // anyway means the CDB does not describe the transfer.
                if !data_out.is_empty() {
                    return Err(Sense::INVALID_FIELD_IN_CDB
                        .cdb_field(13, None)
                        .into_result());
                }
                return Ok(Some(BlockOp::Nothing));
            }
            let len = (blocks * geo.block_size) as usize;
            // Exactly the compare and the write data, or nothing is done.
            if data_out.len() != 2 * len {
                return Err(Sense::INVALID_FIELD_IN_CDB.into_result());
            }
            Ok(Some(BlockOp::CompareAndWrite {
                offset: lba * bs,
                compare: data_out.slice(..len),
                write: data_out.slice(len..),
                fua: c.b(1) & 0x08 != 0,
            }))
        }
        READ_CAPACITY_10 => {
            // PMI = 0 requires LBA = 0.
            if c.b(8) & 0x01 == 0 && c.u32(2) != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB.cdb_field(2, None).into_result());
            }
            Ok(Some(BlockOp::DataIn {
                data: read_capacity10(geo),
                alloc: 8,
            }))
        }
        SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => {
            let (lba, n) = if op == 0x35 {
                (u64::from(c.u32(2)), u64::from(c.u16(7)))
            } else {
                (c.u64(2), u64::from(c.u32(10)))
            };
            check_range(geo, lba, n)?;
            Ok(Some(BlockOp::Flush))
        }
        UNMAP => decode_unmap(geo, limits, &c, data_out).map(Some),
        SERVICE_ACTION_IN_16 => match c.sa() {
            sai::READ_CAPACITY_16 => {
                let alloc = c.u32(10);
                let mut d = read_capacity16(geo).to_vec();
                d.truncate(alloc as usize);
                Ok(Some(BlockOp::DataIn {
                    data: Bytes::from(d),
                    alloc,
                }))
            }
            sai::GET_LBA_STATUS => {
                let lba = c.u64(2);
                if lba >= geo.num_blocks {
                    return Err(Sense::LBA_OUT_OF_RANGE.into_result());
                }
                Ok(Some(BlockOp::LbaStatus {
                    lba,
                    alloc: c.u32(10),
                }))
            }
            _ => Err(Sense::INVALID_FIELD_IN_CDB
                .cdb_field(1, Some(4))
                .into_result()),
        },
        _ => Ok(None),
    }
}

/// WRITE ATOMIC(16) (SBC-4 5.48): LBA in bytes 2..10, ATOMIC BOUNDARY in
/// 10..12, TRANSFER LENGTH in 12..14.
fn decode_atomic(
    geo: &Geometry,
    limits: &Limits,
    c: &Cdb,
    data_out: &Bytes,
) -> Result<BlockOp, ScsiResult> {
    let (lba, blocks) = (c.u64(2), u32::from(c.u16(12)));
    if c.b(1) & 0xE0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB
            .cdb_field(1, Some(7))
            .into_result());
    }
    if c.u16(10) != 0 {
        // MAXIMUM ATOMIC BOUNDARY SIZE is 0: boundaries are not supported.
        return Err(Sense::INVALID_FIELD_IN_CDB
            .cdb_field(10, None)
            .into_result());
    }
    check_range(geo, lba, u64::from(blocks))?;
    if blocks == 0 {
        return Ok(BlockOp::Nothing);
    }
    let align = u64::from(limits.atomic_alignment.max(1));
    let gran = limits.atomic_granularity.max(1);
    if blocks > limits.max_atomic_transfer_blocks {
        return Err(Sense::INVALID_FIELD_IN_CDB
            .cdb_field(12, None)
            .into_result());
    }
    if lba % align != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.cdb_field(2, None).into_result());
    }
    if blocks % gran != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB
            .cdb_field(12, None)
            .into_result());
    }
    check_transfer(geo, blocks)?;
    if geo.read_only {
        return Err(Sense::WRITE_PROTECTED.into_result());
    }
    // All of it or nothing: a partial atomic write would not be one.
    let data = data_for(data_out, (blocks * geo.block_size) as usize)?;
    Ok(BlockOp::AtomicWrite {
        offset: lba * u64::from(geo.block_size),
        data,
        fua: c.b(1) & 0x08 != 0,
    })
}

/// LBA and transfer length of a 10/12/16-byte CDB.
fn lba_len(c: &Cdb) -> (u64, u32) {
    match c.opcode() >> 5 {
        1 | 2 => (u64::from(c.u32(2)), u32::from(c.u16(7))),
        5 => (u64::from(c.u32(2)), c.u32(6)),
        _ => (c.u64(2), c.u32(10)),
    }
}

/// The first `len` bytes of Data-Out. Less data than the CDB describes is
/// refused without writing anything (FCP-4 9.4.2 option b).
fn data_for(data_out: &Bytes, len: usize) -> Result<Bytes, ScsiResult> {
    if data_out.len() < len {
        return Err(Sense::INVALID_FIELD_IN_IU.into_result());
    }
    Ok(data_out.slice(..len))
}

/// UNMAP parameter list (SBC-3 5.28): 8-byte header, 16-byte descriptors.
fn decode_unmap(
    geo: &Geometry,
    limits: &Limits,
    c: &Cdb,
    data: &Bytes,
) -> Result<BlockOp, ScsiResult> {
    if c.b(1) & 0x01 != 0 {
        // ANCHOR
        return Err(Sense::INVALID_FIELD_IN_CDB
            .cdb_field(1, Some(0))
            .into_result());
    }
    if !geo.thin {
        return Err(Sense::INVALID_OPCODE.into_result());
    }
    if geo.read_only {
        return Err(Sense::WRITE_PROTECTED.into_result());
    }
    let plen = usize::from(c.u16(7));
    if plen == 0 {
        return Ok(BlockOp::Discard(Vec::new()));
    }
    if plen < 8 {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
    }
    let Some(list) = data.get(..plen) else {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
    };
    let data_len = usize::from(u16::from_be_bytes([list[0], list[1]]));
    let dlen = usize::from(u16::from_be_bytes([list[2], list[3]]));
    if data_len + 2 > plen || dlen + 8 > plen || dlen % 16 != 0 {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
    }
    let descs = &list[8..8 + dlen];
    if limits.max_unmap_descriptors != 0 && descs.len() / 16 > limits.max_unmap_descriptors as usize
    {
        return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST
            .param_field(2, None)
            .into_result());
    }
    let bs = u64::from(geo.block_size);
    let mut out = Vec::new();
    for d in descs.chunks_exact(16) {
        let lba = be64(d, 0);
        let n = be32(d, 8);
        check_range(geo, lba, u64::from(n))?;
        if limits.max_unmap_blocks != 0 && n > limits.max_unmap_blocks {
            return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST
                .param_field(16, None)
                .into_result());
        }
        if n > 0 {
            out.push((lba * bs, u64::from(n) * bs));
        }
    }
    Ok(BlockOp::Discard(out))
}

fn check_range(geo: &Geometry, lba: u64, blocks: u64) -> Result<(), ScsiResult> {
    let end = lba.checked_add(blocks);
    if lba > geo.num_blocks || end.is_none_or(|e| e > geo.num_blocks) {
        return Err(Sense::LBA_OUT_OF_RANGE.into_result());
    }
    Ok(())
}

fn check_transfer(geo: &Geometry, blocks: u32) -> Result<(), ScsiResult> {
    let too_big = u64::from(blocks) * u64::from(geo.block_size) > u64::from(u32::MAX);
    if too_big || (geo.max_transfer_blocks != 0 && blocks > geo.max_transfer_blocks) {
        return Err(Sense::INVALID_FIELD_IN_CDB.into_result());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
