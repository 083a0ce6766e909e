//! SANITIZE (SBC-4 5.30): decoding and checking the CDB and the OVERWRITE
//! parameter list, the sanitize state of an LU, and which commands that
//! state refuses. The driver carries out the operation itself.

use super::cdb::Cdb;
use super::sense::{Sense, SenseKey};
use crate::task::ScsiResult;
use bytes::Bytes;

pub const OVERWRITE: u8 = 0x01;
pub const BLOCK_ERASE: u8 = 0x02;
pub const CRYPTO_ERASE: u8 = 0x03;
pub const EXIT_FAILURE_MODE: u8 = 0x1F;

/// LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS.
pub const IN_PROGRESS: Sense = Sense::new(SenseKey::NotReady, 0x04, 0x1B);
/// SANITIZE COMMAND FAILED: the LU is in sanitize failure mode.
pub const FAILED: Sense = Sense::new(SenseKey::MediumError, 0x31, 0x03);

/// What a sanitize operation does to the medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `pattern` (at most one block, repeated from every block's
    /// start) over every block, `passes` times; with `invert` every other
    /// pass writes the pattern's complement, the last pass the pattern.
    Overwrite {
        pattern: Bytes,
        passes: u8,
        invert: bool,
    },
    /// Deallocate every block (thin LUs: they then read back as zeros).
    BlockErase,
    /// Leave sanitize failure mode.
    ExitFailureMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// IMMED: complete the command once the operation has started.
    pub immed: bool,
    pub action: Action,
}

/// Sanitize state of an LU (SBC-4 4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Idle,
    /// Running; `progress` is the fraction done, in 65536ths.
    Running { progress: u16 },
    /// The last operation failed: medium access is refused until a sanitize
    /// completes or EXIT FAILURE MODE.
    Failed,
}

/// Whether BLOCK ERASE is offered: only a thin LU can deallocate blocks.
pub fn block_erase_supported(thin: bool) -> bool {
    thin
}

/// Decodes a SANITIZE CDB and its Data-Out for an LU with this block size.
pub fn decode(
    cdb: &[u8],
    data: &Bytes,
    block_size: u32,
    thin: bool,
    read_only: bool,
) -> Result<Op, ScsiResult> {
    let c = Cdb(cdb);
    let bad_cdb = |byte, bit| {
        Err(Sense::INVALID_FIELD_IN_CDB
            .cdb_field(byte, bit)
            .into_result())
    };
    // Byte 1: IMMED (7), reserved (6), AUSE (5), service action (4..0);
    // bytes 2..7 reserved.
    if c.b(1) & 0x40 != 0 {
        return bad_cdb(1, Some(6));
    }
    if let Some(i) = (2..7).find(|&i| c.b(i) != 0) {
        return bad_cdb(i as u16, None);
    }
    let sa = c.sa();
    let plen = usize::from(c.u16(7));
    let supported = match sa {
        OVERWRITE | EXIT_FAILURE_MODE => true,
        BLOCK_ERASE => block_erase_supported(thin),
        // CRYPTO ERASE: nothing here is encrypted.
        _ => false,
    };
    if !supported {
        return bad_cdb(1, Some(4));
    }
    if sa != OVERWRITE && plen != 0 {
        return bad_cdb(7, None);
    }
    if sa != EXIT_FAILURE_MODE && read_only {
        return Err(Sense::WRITE_PROTECTED.into_result());
    }
    let action = match sa {
        OVERWRITE => overwrite_params(plen, data, block_size)?,
        BLOCK_ERASE => Action::BlockErase,
        _ => Action::ExitFailureMode,
    };
    Ok(Op {
        immed: c.b(1) & 0x80 != 0,
        action,
    })
}

/// OVERWRITE parameter list: byte 0 INVERT (7), TEST (6..5), OVERWRITE
/// COUNT (4..0); bytes 2..4 INITIALIZATION PATTERN LENGTH; the pattern.
fn overwrite_params(plen: usize, data: &Bytes, block_size: u32) -> Result<Action, ScsiResult> {
    let max = block_size as usize + 4;
    if plen < 5 || plen > max {
        return Err(Sense::INVALID_FIELD_IN_CDB.cdb_field(7, None).into_result());
    }
    let Some(list) = data.get(..plen) else {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into_result());
    };
    let bad = |byte, bit| {
        Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST
            .param_field(byte, bit)
            .into_result())
    };
    if list[0] & 0x60 != 0 {
        // TEST: vendor test modes are not offered.
        return bad(0, Some(6));
    }
    let passes = list[0] & 0x1F;
    if passes == 0 {
        return bad(0, Some(4));
    }
    let ipl = usize::from(u16::from_be_bytes([list[2], list[3]]));
    if ipl == 0 || ipl > block_size as usize || ipl + 4 != plen {
        return bad(2, None);
    }
    Ok(Action::Overwrite {
        pattern: data.slice(4..4 + ipl),
        passes,
        invert: list[0] & 0x80 != 0,
    })
}

/// One block of the pattern for pass `pass` (0-based) of `passes`.
pub fn pass_block(pattern: &[u8], block_size: u32, pass: u8, passes: u8, invert: bool) -> Vec<u8> {
    // The last pass writes the pattern itself; earlier ones alternate.
    let flip = invert && (passes - 1 - pass) % 2 == 1;
    pattern
        .iter()
        .cycle()
        .take(block_size as usize)
        .map(|b| if flip { !b } else { *b })
        .collect()
}

/// Commands that read or write the medium: refused in failure mode.
pub fn medium_access(opcode: u8) -> bool {
    matches!(
        opcode,
        0x08 | 0x0A
            | 0x28
            | 0x2A
            | 0xA8
            | 0xAA
            | 0x88
            | 0x8A
            | 0x2E
            | 0xAE
            | 0x8E
            | 0x2F
            | 0xAF
            | 0x8F
            | 0x41
            | 0x93
            | 0x89
            | 0x8B
            | 0x9C
            | 0x42
            | 0x34
            | 0x90
            | 0x83
    )
}

/// Commands still served while a sanitize runs (SBC-4 4.11.1).
pub fn allowed_while_running(opcode: u8) -> bool {
    matches!(opcode, 0x12 | 0xA0 | 0x03)
}

/// SANITIZE IN PROGRESS with the progress indication (SKSV set).
pub fn in_progress(progress: u16) -> Sense {
    IN_PROGRESS.with_progress(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(sa: u8, plen: u16) -> Vec<u8> {
        let mut c = vec![0x48, sa, 0, 0, 0, 0, 0];
        c.extend_from_slice(&plen.to_be_bytes());
        c.push(0);
        c
    }

    fn asc(r: Result<Op, ScsiResult>) -> Option<(u8, u8)> {
        r.err().and_then(|r| r.sense).map(|s| (s[12], s[13]))
    }

    fn list(b0: u8, ipl: u16, pattern: &[u8]) -> Bytes {
        let mut d = vec![b0, 0];
        d.extend_from_slice(&ipl.to_be_bytes());
        d.extend_from_slice(pattern);
        Bytes::from(d)
    }

    #[test]
    fn service_actions_and_reserved_fields() {
        let none = Bytes::new();
        let ok = decode(&cdb(0x82, 0), &none, 512, true, false);
        assert_eq!(
            ok.ok(),
            Some(Op {
                immed: true,
                action: Action::BlockErase
            })
        );
        // Not thin: no block erase. Crypto erase and others: never.
        for sa in [0u8, 3, 4, 0x10, 0x1E] {
            assert_eq!(
                asc(decode(&cdb(sa, 0), &none, 512, true, false)),
                Some((0x24, 0))
            );
        }
        assert!(decode(&cdb(2, 0), &none, 512, false, false).is_err());
        let mut r = cdb(0x42, 0);
        assert_eq!(asc(decode(&r, &none, 512, true, false)), Some((0x24, 0)));
        r = cdb(2, 0);
        r[4] = 4;
        assert!(decode(&r, &none, 512, true, false).is_err());
        // Block erase and exit failure mode take no parameter list.
        assert!(decode(&cdb(2, 8), &Bytes::from(vec![0; 8]), 512, true, false).is_err());
        assert!(decode(&cdb(0x1F, 8), &Bytes::from(vec![0; 8]), 512, true, false).is_err());
        assert!(decode(&cdb(0x1F, 0), &none, 512, true, true).is_ok());
        assert_eq!(
            asc(decode(&cdb(2, 0), &none, 512, true, true)),
            Some((0x27, 0))
        );
    }

    #[test]
    fn overwrite_parameter_list() {
        let full = list(0x01, 512, &[0xAA; 512]);
        let op = decode(&cdb(1, 516), &full, 512, false, false);
        assert!(matches!(
            op,
            Ok(Op { action: Action::Overwrite { ref pattern, passes: 1, invert: false }, .. })
                if pattern.len() == 512
        ));
        let four = list(0x83, 4, &[1, 2, 3, 4]);
        assert!(matches!(
            decode(&cdb(1, 8), &four, 512, false, false),
            Ok(Op {
                action: Action::Overwrite {
                    passes: 3,
                    invert: true,
                    ..
                },
                ..
            })
        ));
        for plen in [0u16, 1, 4, 517] {
            let d = Bytes::from(vec![0x01u8; 520]);
            assert!(decode(&cdb(1, plen), &d, 512, false, false).is_err());
        }
        assert!(decode(&cdb(1, 516), &list(0, 512, &[0; 512]), 512, false, false).is_err());
        assert!(decode(&cdb(1, 516), &list(1, 0, &[0; 512]), 512, false, false).is_err());
        assert!(decode(&cdb(1, 516), &list(1, 516, &[0; 512]), 512, false, false).is_err());
        // Less Data-Out than the parameter list length.
        assert_eq!(
            asc(decode(
                &cdb(1, 516),
                &list(1, 512, &[0; 100]),
                512,
                false,
                false
            )),
            Some((0x1A, 0))
        );
    }

    #[test]
    fn pass_patterns() {
        assert_eq!(pass_block(&[1, 2], 6, 0, 1, true), vec![1, 2, 1, 2, 1, 2]);
        assert_eq!(pass_block(&[0x0F], 2, 0, 2, true), vec![0xF0, 0xF0]);
        assert_eq!(pass_block(&[0x0F], 2, 1, 2, true), vec![0x0F, 0x0F]);
        assert_eq!(pass_block(&[0x0F], 2, 0, 2, false), vec![0x0F, 0x0F]);
    }
}
