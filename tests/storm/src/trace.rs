//! Boot I/O traces: the text format `bootd serve --record-io` writes, a
//! synthetic boot pattern in the same format, and scaling a trace up (or
//! down) to a given set of distinct bytes read.
//!
//! Format: a header `# bootd-io-trace v1 block_size=512` (more `key=value`
//! fields may follow), then one command a line: `<ms since login> R|W|F
//! <lba> <blocks>`. F is SYNCHRONIZE CACHE (lba and blocks 0). Other lines
//! starting with `#` are comments.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;

/// The block size every replayed plan is expressed in (bootd's LUNs).
pub const SECTOR: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd {
    pub ms: u64,
    pub op: Op,
    pub lba: u64,
    pub blocks: u32,
}

impl Cmd {
    pub fn end(&self) -> u64 {
        self.lba + u64::from(self.blocks)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub block_size: u64,
    pub cmds: Vec<Cmd>,
}

impl Trace {
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().context("empty trace")?;
        let mut fields = header.split_whitespace();
        if fields.next() != Some("#") || fields.next() != Some("bootd-io-trace") {
            bail!("not a bootd I/O trace (first line must be `# bootd-io-trace v1 ...`)");
        }
        if fields.next() != Some("v1") {
            bail!("unsupported trace version in {header:?}");
        }
        let block_size = fields
            .filter_map(|f| f.strip_prefix("block_size="))
            .next()
            .context("trace header has no block_size=")?
            .parse::<u64>()
            .context("bad block_size in trace header")?;
        if block_size == 0 || block_size % SECTOR != 0 {
            bail!("block_size {block_size} is not a multiple of {SECTOR}");
        }
        let mut cmds = Vec::new();
        for (n, line) in lines {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cmd =
                parse_line(line).with_context(|| format!("trace line {}: {line:?}", n + 1))?;
            cmds.push(cmd);
        }
        Ok(Self { block_size, cmds })
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("# bootd-io-trace v1 block_size={}\n", self.block_size);
        for c in &self.cmds {
            let op = match c.op {
                Op::Read => 'R',
                Op::Write => 'W',
                Op::Flush => 'F',
            };
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{} {op} {} {}", c.ms, c.lba, c.blocks);
        }
        out
    }

    /// The same commands in 512-byte blocks.
    pub fn in_sectors(&self) -> Result<Self> {
        let k = self.block_size / SECTOR;
        let cmds = self
            .cmds
            .iter()
            .map(|c| {
                let blocks = u64::from(c.blocks) * k;
                Ok(Cmd {
                    lba: c.lba * k,
                    blocks: u32::try_from(blocks).context("command too long")?,
                    ..*c
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            block_size: SECTOR,
            cmds,
        })
    }

    /// A boot as a small Linux guest does it: mostly sequential reads of
    /// 4-128 KiB through the first 64 MiB (kernel, initrd, root file
    /// system), holes between the runs, 10% random 4 KiB reads (metadata),
    /// and in the second half 300 4 KiB writes in 20 bursts (journal
    /// appends plus scattered blocks), each burst followed by a flush.
    pub fn synthetic(seed: u64) -> Self {
        const REGION: u64 = 64 << 20;
        const KIB: u64 = 1024 / SECTOR;
        let mut rng = StdRng::seed_from_u64(seed);
        let sizes: [(u64, u32); 6] = [(4, 10), (8, 10), (16, 15), (32, 20), (64, 20), (128, 25)];
        let total_weight: u32 = sizes.iter().map(|s| s.1).sum();
        let region = REGION / SECTOR;
        let mut reads = Vec::new();
        let mut t = 0.0f64;
        let mut pos = 0u64;
        'walk: while pos < region {
            let run = rng.gen_range(4..48);
            for _ in 0..run {
                let mut w = rng.gen_range(0..total_weight);
                let mut kib = 4;
                for &(s, weight) in &sizes {
                    if w < weight {
                        kib = s;
                        break;
                    }
                    w -= weight;
                }
                let blocks = kib * KIB;
                if pos + blocks > region {
                    break 'walk;
                }
                t += 2.0 + kib as f64 * 0.05;
                reads.push(read(t, pos, blocks));
                pos += blocks;
                if rng.gen_bool(0.1) {
                    let at = rng.gen_range(0..region / (4 * KIB)) * 4 * KIB;
                    t += 3.0;
                    reads.push(read(t, at, 4 * KIB));
                }
            }
            pos += rng.gen_range(0..64u64) * 4 * KIB;
        }
        // Writes start once the OS is up: bursts spread over the second half.
        let bursts = 20;
        let mut journal = (48 << 20) / SECTOR;
        let mut cmds = Vec::with_capacity(reads.len() + bursts * 16);
        let half = reads.len() / 2;
        let step = (reads.len() - half) / bursts;
        let mut next_burst = half;
        let mut done = 0;
        for (i, r) in reads.into_iter().enumerate() {
            cmds.push(r);
            if i == next_burst && done < bursts {
                let mut ms = r.ms;
                for k in 0..15 {
                    ms += 1;
                    let lba = if k < 10 {
                        journal += 4 * KIB;
                        journal - 4 * KIB
                    } else {
                        rng.gen_range(0..region / (4 * KIB)) * 4 * KIB
                    };
                    cmds.push(Cmd {
                        ms,
                        op: Op::Write,
                        lba,
                        blocks: 4 * KIB as u32,
                    });
                }
                cmds.push(flush(ms + 2));
                done += 1;
                next_burst += step.max(1);
            }
        }
        let last = cmds.last().map_or(0, |c| c.ms);
        cmds.push(flush(last + 1));
        // Bursts took time: later commands start no earlier than they end.
        let mut now = 0;
        for c in &mut cmds {
            now = now.max(c.ms);
            c.ms = now;
        }
        Self {
            block_size: SECTOR,
            cmds,
        }
    }
}

fn read(t: f64, lba: u64, blocks: u64) -> Cmd {
    Cmd {
        ms: t as u64,
        op: Op::Read,
        lba,
        // Synthetic sizes are at most 128 KiB.
        blocks: blocks as u32,
    }
}

fn flush(ms: u64) -> Cmd {
    Cmd {
        ms,
        op: Op::Flush,
        lba: 0,
        blocks: 0,
    }
}

fn parse_line(line: &str) -> Result<Cmd> {
    let mut f = line.split_whitespace();
    let (Some(ms), Some(op), Some(lba), Some(blocks), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        bail!("expected `<ms> R|W|F <lba> <blocks>`");
    };
    let op = match op {
        "R" => Op::Read,
        "W" => Op::Write,
        "F" => Op::Flush,
        _ => bail!("unknown operation {op:?}"),
    };
    let cmd = Cmd {
        ms: ms.parse().context("bad time")?,
        op,
        lba: lba.parse().context("bad lba")?,
        blocks: blocks.parse().context("bad block count")?,
    };
    if op != Op::Flush && cmd.blocks == 0 {
        bail!("read or write of 0 blocks");
    }
    Ok(cmd)
}

/// What every simulated node replays, in 512-byte blocks.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cmds: Vec<Cmd>,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub distinct_read_bytes: u64,
    /// One past the highest byte any command touches.
    pub extent_bytes: u64,
    /// How many passes over the trace's reads the scaling took.
    pub passes: u64,
}

/// A set of 512-byte blocks, grown on demand.
#[derive(Default)]
struct BlockSet {
    words: Vec<u64>,
    count: u64,
}

impl BlockSet {
    fn insert_range(&mut self, lba: u64, blocks: u64) {
        for b in lba..lba + blocks {
            let (w, bit) = ((b / 64) as usize, b % 64);
            if w >= self.words.len() {
                self.words.resize(w + 1, 0);
            }
            if self.words[w] & (1 << bit) == 0 {
                self.words[w] |= 1 << bit;
                self.count += 1;
            }
        }
    }
}

impl Plan {
    /// The trace (in sectors) with its reads repeated, each pass shifted
    /// past the previous one, until `read_set` distinct bytes are read; or
    /// cut short once they are. Writes and flushes are replayed once, as
    /// recorded, whatever the scale. `read_set == 0` replays the trace as is.
    pub fn new(trace: &Trace, read_set: u64) -> Result<Self> {
        let trace = trace.in_sectors()?;
        let has_reads = trace.cmds.iter().any(|c| c.op == Op::Read);
        if read_set > 0 && !has_reads {
            bail!("the trace has no reads to scale to a read set");
        }
        // 1 MiB-aligned shift between passes, past everything the trace touches.
        let span = trace.cmds.iter().map(Cmd::end).max().unwrap_or(0);
        let span = span.div_ceil(2048).max(1) * 2048;
        let last_ms = trace.cmds.last().map_or(0, |c| c.ms) + 1;
        let target_blocks = read_set.div_ceil(SECTOR);
        let mut seen = BlockSet::default();
        let mut cmds = Vec::new();
        let mut passes = 0;
        'passes: loop {
            for c in &trace.cmds {
                let reached = read_set > 0 && seen.count >= target_blocks;
                match c.op {
                    Op::Read if reached => {
                        if passes > 0 {
                            // This pass counts, cut short as it is.
                            passes += 1;
                            break 'passes;
                        }
                        continue;
                    }
                    Op::Read => {}
                    // Writes and flushes once, in the first pass.
                    _ if passes > 0 => continue,
                    _ => {}
                }
                let shifted = Cmd {
                    ms: c.ms + passes * last_ms,
                    lba: if c.op == Op::Flush {
                        0
                    } else {
                        c.lba + passes * span
                    },
                    ..*c
                };
                if shifted.op == Op::Read {
                    seen.insert_range(shifted.lba, u64::from(shifted.blocks));
                }
                cmds.push(shifted);
            }
            passes += 1;
            if read_set == 0 || seen.count >= target_blocks {
                break;
            }
        }
        let count = |op| cmds.iter().filter(|c: &&Cmd| c.op == op).count() as u64;
        let bytes = |op| {
            cmds.iter()
                .filter(|c: &&Cmd| c.op == op)
                .map(|c| u64::from(c.blocks) * SECTOR)
                .sum::<u64>()
        };
        Ok(Self {
            reads: count(Op::Read),
            writes: count(Op::Write),
            flushes: count(Op::Flush),
            read_bytes: bytes(Op::Read),
            write_bytes: bytes(Op::Write),
            distinct_read_bytes: seen.count * SECTOR,
            extent_bytes: cmds.iter().map(Cmd::end).max().unwrap_or(0) * SECTOR,
            passes,
            cmds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_round_trips_and_looks_like_a_boot() -> Result<()> {
        let t = Trace::synthetic(1);
        assert_eq!(Trace::parse(&t.to_text())?, t);
        let writes = t.cmds.iter().filter(|c| c.op == Op::Write).count();
        let flushes = t.cmds.iter().filter(|c| c.op == Op::Flush).count();
        assert_eq!(writes, 300);
        assert_eq!(flushes, 21);
        assert!(t.cmds.iter().all(|c| c.end() <= (64 << 20) / SECTOR));
        assert!(t.cmds.windows(2).all(|w| w[0].ms <= w[1].ms));
        Ok(())
    }

    /// The recorded boot of the test image: iPXE's reads of the loader,
    /// kernel and initramfs, then Linux's reads and its marker write and flush.
    #[test]
    fn the_recorded_boot_parses_and_scales() -> Result<()> {
        let t = Trace::parse(include_str!("../fixtures/golden-boot.trace"))?;
        let read: u64 = t
            .cmds
            .iter()
            .filter(|c| c.op == Op::Read)
            .map(|c| u64::from(c.blocks) * SECTOR)
            .sum();
        assert!(
            read > 8 << 20,
            "a boot reads its kernel and initramfs: {read}"
        );
        assert!(t.cmds.iter().any(|c| c.op == Op::Write));
        assert!(t.cmds.iter().any(|c| c.op == Op::Flush));
        let plan = Plan::new(&t, 64 << 20)?;
        assert!(plan.cmds.len() > t.cmds.len());
        Ok(())
    }

    #[test]
    fn scaling_reaches_the_read_set_and_keeps_writes() -> Result<()> {
        let t = Trace::synthetic(7);
        for mib in [8u64, 64, 200] {
            let p = Plan::new(&t, mib << 20)?;
            assert!(p.distinct_read_bytes >= mib << 20, "{mib}: {p:?}");
            // At most one command past the target.
            assert!(p.distinct_read_bytes < (mib << 20) + (128 << 10));
            assert_eq!(p.writes, 300);
            assert_eq!(p.flushes, 21);
        }
        assert!(Plan::new(&t, 200 << 20)?.passes >= 3);
        Ok(())
    }

    #[test]
    fn parses_recorded_headers_and_other_block_sizes() -> Result<()> {
        let t = Trace::parse(
            "# bootd-io-trace v1 block_size=4096 node=web1\n# login 1\n0 R 2 1\n5 W 3 2\n9 F 0 0\n",
        )?;
        let s = t.in_sectors()?;
        assert_eq!(
            s.cmds[0],
            Cmd {
                ms: 0,
                op: Op::Read,
                lba: 16,
                blocks: 8
            }
        );
        assert_eq!(s.cmds[1].blocks, 16);
        let p = Plan::new(&t, 0)?;
        assert_eq!((p.reads, p.writes, p.flushes), (1, 1, 1));
        assert!(Trace::parse("0 R 1 1\n").is_err());
        assert!(Trace::parse("# bootd-io-trace v1 block_size=512\n0 X 1 1\n").is_err());
        assert!(Plan::new(
            &Trace::parse("# bootd-io-trace v1 block_size=512\n1 W 0 1\n")?,
            1 << 20
        )
        .is_err());
        Ok(())
    }
}
