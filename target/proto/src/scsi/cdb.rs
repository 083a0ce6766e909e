//! Reading CDB fields without trusting the CDB's length: every accessor
//! reads missing bytes as zero, so a short or hostile CDB can never panic.

use super::opcode::*;

/// A borrowed CDB with zero-extending big-endian accessors.
#[derive(Debug, Clone, Copy)]
pub struct Cdb<'a>(pub &'a [u8]);

impl Cdb<'_> {
    pub fn b(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    pub fn opcode(&self) -> u8 {
        self.b(0)
    }

    /// Service action in byte 1 bits 4..0 (SERVICE ACTION IN/MAINTENANCE IN, PR).
    pub fn sa(&self) -> u8 {
        self.b(1) & 0x1F
    }

    pub fn u16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.b(i), self.b(i.saturating_add(1))])
    }

    pub fn u24(&self, i: usize) -> u32 {
        u32::from_be_bytes([
            0,
            self.b(i),
            self.b(i.saturating_add(1)),
            self.b(i.saturating_add(2)),
        ])
    }

    pub fn u32(&self, i: usize) -> u32 {
        (u32::from(self.u16(i)) << 16) | u32::from(self.u16(i.saturating_add(2)))
    }

    pub fn u64(&self, i: usize) -> u64 {
        (u64::from(self.u32(i)) << 32) | u64::from(self.u32(i.saturating_add(4)))
    }
}

/// Big-endian u16 from a parameter list at `i` (zero past the end).
pub fn be16(d: &[u8], i: usize) -> u16 {
    Cdb(d).u16(i)
}

pub fn be32(d: &[u8], i: usize) -> u32 {
    Cdb(d).u32(i)
}

pub fn be64(d: &[u8], i: usize) -> u64 {
    Cdb(d).u64(i)
}

/// Bytes the CDB asks to move in its data direction, for residual
/// computation: allocation length for Data-In commands, the parameter list
/// or block count for Data-Out commands, 0 for commands without data.
pub fn transfer_len(cdb: &[u8], block_size: u32) -> u32 {
    let c = Cdb(cdb);
    let bs = u64::from(block_size);
    let blocks = |n: u64| u32::try_from(n.saturating_mul(bs)).unwrap_or(u32::MAX);
    match c.opcode() {
        // INQUIRY, MODE SENSE(6), REQUEST SENSE: 1- or 2-byte allocation length.
        INQUIRY => u32::from(c.u16(3)),
        MODE_SENSE_6 | REQUEST_SENSE => u32::from(c.b(4)),
        // MODE SELECT(6)
        MODE_SELECT_6 => u32::from(c.b(4)),
        // MODE SENSE(10), MODE SELECT(10), PERSISTENT RESERVE IN/OUT (PROUT: bytes 5..9)
        MODE_SENSE_10 | MODE_SELECT_10 | PERSISTENT_RESERVE_IN => u32::from(c.u16(7)),
        PERSISTENT_RESERVE_OUT => c.u32(5),
        READ_CAPACITY_10 => 8,
        READ_DEFECT_DATA_10 => u32::from(c.u16(7)),
        READ_DEFECT_DATA_12 => c.u32(6),
        // REPORT LUNS, MAINTENANCE IN (RSOC)
        REPORT_LUNS | MAINTENANCE_IN => c.u32(6),
        // SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS
        SERVICE_ACTION_IN_16 => c.u32(10),
        // READ(6)/WRITE(6): 0 blocks means 256.
        READ_6 | WRITE_6 => {
            let n = if c.b(4) == 0 { 256 } else { u64::from(c.b(4)) };
            blocks(n)
        }
        READ_10 | WRITE_10 | WRITE_AND_VERIFY_10 => blocks(u64::from(c.u16(7))),
        READ_12 | WRITE_12 | WRITE_AND_VERIFY_12 => blocks(u64::from(c.u32(6))),
        READ_16 | WRITE_16 | WRITE_AND_VERIFY_16 | ORWRITE_16 => blocks(u64::from(c.u32(10))),
        // WRITE ATOMIC(16): 2-byte transfer length in bytes 12..14.
        WRITE_ATOMIC_16 => blocks(u64::from(c.u16(12))),
        // EXTENDED COPY: parameter list length; RECEIVE COPY RESULTS:
        // allocation length.
        EXTENDED_COPY | RECEIVE_COPY_RESULTS => c.u32(10),
        // SANITIZE: parameter list length.
        SANITIZE => u32::from(c.u16(7)),
        // VERIFY: data only with BYTCHK.
        VERIFY_10 => verify_bytes(c.b(1), u64::from(c.u16(7)), bs),
        VERIFY_12 => verify_bytes(c.b(1), u64::from(c.u32(6)), bs),
        VERIFY_16 => verify_bytes(c.b(1), u64::from(c.u32(10)), bs),
        // WRITE SAME: one block unless NDOB.
        WRITE_SAME_10 => block_size,
        WRITE_SAME_16 => {
            if c.b(1) & 0x01 != 0 {
                0
            } else {
                block_size
            }
        }
        // COMPARE AND WRITE: compare and write data.
        COMPARE_AND_WRITE => blocks(u64::from(c.b(13)) * 2),
        // UNMAP
        UNMAP => u32::from(c.u16(7)),
        _ => 0,
    }
}

fn verify_bytes(byte1: u8, n: u64, bs: u64) -> u32 {
    match (byte1 >> 1) & 0x03 {
        0 => 0,
        3 => u32::try_from(bs).unwrap_or(u32::MAX),
        _ => u32::try_from(n.saturating_mul(bs)).unwrap_or(u32::MAX),
    }
}

/// Whether the command moves data from the initiator (Data-Out).
pub fn data_out(cdb: &[u8]) -> bool {
    matches!(
        Cdb(cdb).opcode(),
        0x0A | 0x2A
            | 0xAA
            | 0x8A
            | 0x2E
            | 0xAE
            | 0x8E
            | 0x8B
            | 0x2F
            | 0xAF
            | 0x8F
            | 0x41
            | 0x93
            | 0x89
            | 0x9C
            | 0x48
            | 0x83
            | 0x42
            | 0x15
            | 0x55
            | 0x5F
    )
}

/// How a command interacts with reservations (SPC-4 5.9.1, SBC-3 4.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, PR commands, ...).
    Exempt,
    /// Reads the medium or LU state.
    Read,
    /// Modifies the medium or LU state.
    Write,
}

pub fn access(cdb: &[u8]) -> Access {
    let c = Cdb(cdb);
    match c.opcode() {
        INQUIRY
        | REPORT_LUNS
        | REQUEST_SENSE
        | PERSISTENT_RESERVE_IN
        | PERSISTENT_RESERVE_OUT
        | READ_CAPACITY_10
        | TEST_UNIT_READY => Access::Exempt,
        MAINTENANCE_IN => Access::Exempt,
        SERVICE_ACTION_IN_16 if c.sa() == sai::READ_CAPACITY_16 => Access::Exempt,
        0x08 | 0x28 | 0xA8 | 0x88 | 0x2F | 0xAF | 0x8F | 0x9E | 0x1A | 0x5A | 0x34 | 0x90
        | 0x37 | 0xB7 | 0x84 => Access::Read,
        _ => Access::Write,
    }
}

/// A command's effect on the medium, for I/O traces and accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockIo {
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        blocks: u32,
    },
    /// SYNCHRONIZE CACHE (the whole medium or a range: traced as a flush).
    Flush,
}

/// READ and WRITE (6, 10, 12, 16): (write, lba, blocks, byte-1 flags);
/// `None` for other opcodes. Short CDBs read as zeros.
pub fn read_write(cdb: &[u8]) -> Option<(bool, u64, u32, u8)> {
    let c = Cdb(cdb);
    let op = c.opcode();
    match op {
        READ_6 | WRITE_6 => {
            let lba = u64::from(c.u24(1) & 0x1F_FFFF);
            // READ(6)/WRITE(6): a length of 0 means 256 blocks.
            let n = if c.b(4) == 0 { 256 } else { u32::from(c.b(4)) };
            Some((op == WRITE_6, lba, n, 0u8))
        }
        READ_10 | WRITE_10 => Some((
            op == WRITE_10,
            u64::from(c.u32(2)),
            u32::from(c.u16(7)),
            c.b(1),
        )),
        READ_12 | WRITE_12 => Some((op == WRITE_12, u64::from(c.u32(2)), c.u32(6), c.b(1))),
        READ_16 | WRITE_16 => Some((op == WRITE_16, c.u64(2), c.u32(10), c.b(1))),
        _ => None,
    }
}

/// READ/WRITE (6, 10, 12, 16), WRITE AND VERIFY and SYNCHRONIZE CACHE;
/// `None` for anything else. Short CDBs read as zeros.
pub fn block_io(cdb: &[u8]) -> Option<BlockIo> {
    // WRITE AND VERIFY (10, 12, 16) lays out LBA and length as WRITE does.
    let as_write = |op: u8| -> Option<Vec<u8>> {
        let mut w = cdb.to_vec();
        *w.first_mut()? = op;
        Some(w)
    };
    let rw = match cdb.first() {
        Some(0x2E) => read_write(&as_write(0x2A)?),
        Some(0xAE) => read_write(&as_write(0xAA)?),
        Some(0x8E) => read_write(&as_write(0x8A)?),
        Some(0x35 | 0x91) => return Some(BlockIo::Flush),
        _ => read_write(cdb),
    };
    rw.map(|(write, lba, blocks, _)| {
        if write {
            BlockIo::Write { lba, blocks }
        } else {
            BlockIo::Read { lba, blocks }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cdb_reads_zero() {
        let c = Cdb(&[0x28, 1]);
        assert_eq!(c.u32(2), 0);
        assert_eq!(c.u64(usize::MAX - 3), 0);
        assert_eq!(c.sa(), 1);
    }

    #[test]
    fn block_io_of_reads_writes_and_flushes() {
        assert_eq!(
            block_io(&[0x28, 0, 0, 0, 1, 0, 0, 0, 8, 0]),
            Some(BlockIo::Read {
                lba: 256,
                blocks: 8
            })
        );
        assert_eq!(
            block_io(&[0x0A, 0x01, 0, 2, 0, 0]),
            Some(BlockIo::Write {
                lba: 0x10002,
                blocks: 256
            })
        );
        let mut w16 = [0u8; 16];
        w16[0] = 0x8A;
        w16[9] = 7;
        w16[13] = 1;
        assert_eq!(block_io(&w16), Some(BlockIo::Write { lba: 7, blocks: 1 }));
        assert_eq!(block_io(&[0x35]), Some(BlockIo::Flush));
        assert_eq!(block_io(&[0x12, 0, 0, 0, 36, 0]), None);
        assert_eq!(block_io(&[]), None);
        // Short CDBs read as zeros instead of panicking.
        assert_eq!(block_io(&[0x88]), Some(BlockIo::Read { lba: 0, blocks: 0 }));
    }

    #[test]
    fn transfer_lengths() {
        assert_eq!(transfer_len(&[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], 512), 1024);
        assert_eq!(transfer_len(&[0x08, 0, 0, 0, 0, 0], 512), 256 * 512);
        assert_eq!(transfer_len(&[0x12, 0, 0, 1, 0, 0], 512), 256);
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[13] = 2;
        assert_eq!(transfer_len(&caw, 512), 2048);
        assert_eq!(transfer_len(&[0x2F, 0, 0, 0, 0, 0, 0, 0, 4, 0], 512), 0);
        assert_eq!(transfer_len(&[0x2F, 2, 0, 0, 0, 0, 0, 0, 4, 0], 512), 2048);
    }
}
