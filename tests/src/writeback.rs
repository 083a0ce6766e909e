//! A write-back initiator whose acknowledged writes are known one by one: `qemu-io -t
//! writeback` (the disk's write cache on, so no FUA and no flush unless asked for, as
//! Linux's sd driver behaves on a disk that reports a write cache) running a list of
//! writes, each at its own offset, with its per-command completion lines read as they
//! come. A write counts as acknowledged once qemu-io printed `wrote LEN/LEN bytes at
//! offset OFF` for it: qemu-io prints that only after the target answered GOOD.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::disk::Fill;
use crate::export::Log;
use crate::process::{describe, wait_until};
use crate::qemu_iscsi::Login;

/// What one writer run ended with.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (`None`: killed, or still hanging at the deadline).
    pub code: Option<i32>,
    /// The writes acknowledged, in the order qemu-io reported them.
    pub acked: Vec<Fill>,
    /// Writes never acknowledged (failed, cut off, or never started).
    pub unacked: Vec<Fill>,
    /// Every line qemu-io printed, for failure messages.
    pub log: String,
}

impl Outcome {
    /// qemu-io's error lines about failed SCSI commands (`iSCSI WRITE10/16 failed at
    /// lba N: SENSE KEY:...`), which carry the sense key and ASC/ASCQ.
    pub fn sense_lines(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.contains("SENSE KEY:"))
            .collect()
    }
}

/// A running `qemu-io -t writeback` with a list of writes (`write -P BYTE OFF LEN`,
/// then an optional `flush`).
pub struct Writer {
    child: Option<Child>,
    fills: BTreeMap<u64, Fill>,
    acked: Arc<Mutex<Vec<Fill>>>,
    /// Gets one message per acknowledged write, so waiting for the n-th costs nothing.
    progress: Receiver<()>,
    seen: usize,
    log: Log,
}

impl Writer {
    /// Starts qemu-io as `login` with one `write` per fill, each waiting for the one
    /// before; `flush` adds a final flush. The offsets must differ, so each completion
    /// line names one fill.
    pub fn start(login: &Login, fills: &[Fill], flush: bool) -> Result<Self> {
        Self::spawn(login, fills, flush, false, 0)
    }

    /// Like [`Writer::start`] with a `flush` after every `every` writes: commits (and
    /// the write-ahead log's turnover after them) run while the writes go on.
    pub fn start_flushing(login: &Login, fills: &[Fill], every: usize) -> Result<Self> {
        Self::spawn(login, fills, false, false, every)
    }

    /// Like [`Writer::start`] with `aio_write`: every write is issued at once and they
    /// complete in any order, so many are in flight when the target goes away.
    pub fn start_aio(login: &Login, fills: &[Fill]) -> Result<Self> {
        Self::spawn(login, fills, false, true, 0)
    }

    /// Like [`Writer::start_aio`], then stays connected (for ten minutes) instead of
    /// closing the disk, which would flush it: for a test that must know that no
    /// flush came after the writes.
    pub fn start_aio_staying(login: &Login, fills: &[Fill]) -> Result<Self> {
        Self::spawn_with(login, fills, false, true, 0, true)
    }

    fn spawn(
        login: &Login,
        fills: &[Fill],
        flush: bool,
        aio: bool,
        flush_every: usize,
    ) -> Result<Self> {
        Self::spawn_with(login, fills, flush, aio, flush_every, false)
    }

    fn spawn_with(
        login: &Login,
        fills: &[Fill],
        flush: bool,
        aio: bool,
        flush_every: usize,
        stay: bool,
    ) -> Result<Self> {
        let mut by_offset = BTreeMap::new();
        for f in fills {
            if by_offset.insert(f.offset, *f).is_some() {
                bail!(
                    "two writes at offset {}: their acknowledgements would be ambiguous",
                    f.offset
                );
            }
        }
        // stdbuf: qemu-io's stdout is a pipe here, fully buffered by stdio; line
        // buffering makes each completion line arrive when qemu-io prints it.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "-eL", "qemu-io", "-t", "writeback", "--image-opts"])
            .arg(login.image_opts());
        for (i, f) in fills.iter().enumerate() {
            let write = f.write_cmd();
            match aio {
                true => cmd.args(["-c", &format!("aio_{write}")]),
                false => cmd.args(["-c", &write]),
            };
            if flush_every > 0 && (i + 1) % flush_every == 0 {
                cmd.args(["-c", "flush"]);
            }
        }
        if flush {
            cmd.args(["-c", "flush"]);
        }
        if stay {
            // `aio_flush` only waits for the writes (it sends no SYNCHRONIZE CACHE);
            // `sleep` (milliseconds) keeps the disk open, so no flush at close.
            cmd.args(["-c", "aio_flush", "-c", "sleep 600000"]);
        }
        let command = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning `{command}`"))?;
        let log = Log::default();
        let (lines_tx, lines) = mpsc::channel::<String>();
        log.follow("stdout", child.stdout.take(), Some(lines_tx));
        log.follow("stderr", child.stderr.take(), None);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (progress_tx, progress) = mpsc::channel();
        {
            let (acked, fills) = (acked.clone(), by_offset.clone());
            std::thread::spawn(move || {
                for line in lines {
                    let Some(fill) = parse_wrote(&line)
                        .and_then(|(off, len)| fills.get(&off).copied().filter(|f| f.len == len))
                    else {
                        continue;
                    };
                    acked.lock().unwrap_or_else(|e| e.into_inner()).push(fill);
                    // The receiver may be gone (writer dropped); the list is what counts.
                    let _ = progress_tx.send(());
                }
            });
        }
        Ok(Self {
            child: Some(child),
            fills: by_offset,
            acked,
            progress,
            seen: 0,
            log,
        })
    }

    /// How many writes were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until `n` writes were acknowledged; false if `limit` passed or qemu-io
    /// ended first.
    pub fn wait_acked(&mut self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.progress.recv_timeout(left) {
                Ok(()) => self.seen += 1,
                Err(_) => return false,
            }
        }
        true
    }

    /// Waits for qemu-io to end by itself (killing it after `limit`).
    pub fn finish(mut self, limit: Duration) -> Result<Outcome> {
        let code = match self.child.take() {
            Some(mut child) => {
                wait_until(&mut child, Instant::now() + limit)?.and_then(|s| s.code())
            }
            None => None,
        };
        Ok(self.outcome(code))
    }

    /// Kills qemu-io (a client that gave up, or one cut off with its target).
    pub fn kill(mut self) -> Result<Outcome> {
        if let Some(mut child) = self.child.take() {
            // Errors only mean it already exited.
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(self.outcome(None))
    }

    fn outcome(&self, code: Option<i32>) -> Outcome {
        // The reader threads end with the pipes; give the last lines a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = usize::MAX;
        while Instant::now() < deadline {
            let n = self.acked_count();
            if n == last {
                break;
            }
            last = n;
            std::thread::sleep(Duration::from_millis(50));
        }
        let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let unacked = self
            .fills
            .values()
            .filter(|f| !acked.iter().any(|a| a.offset == f.offset))
            .copied()
            .collect();
        Outcome {
            code,
            acked,
            unacked,
            log: self.log.text(),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sense key and ASC/ASCQ of a qemu-io error line such as `qemu-io: iSCSI
/// WRITE10/16 failed at lba 8: SENSE KEY:DATA PROTECTION(7) ASCQ:(null)(0x2707)`.
pub fn parse_sense(line: &str) -> Option<(u8, u16)> {
    let (_, rest) = line.split_once("SENSE KEY:")?;
    let (key, ascq) = rest.split_once(" ASCQ:")?;
    let key = key.rsplit_once('(')?.1.strip_suffix(')')?.parse().ok()?;
    let ascq = ascq.trim().rsplit_once("(0x")?.1.strip_suffix(')')?;
    Some((key, u16::from_str_radix(ascq, 16).ok()?))
}

/// `wrote 4096/4096 bytes at offset 65536` → (65536, 4096); a short write is no
/// acknowledgement of the whole.
pub fn parse_wrote(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("wrote ")?;
    let (counts, offset) = rest.split_once(" bytes at offset ")?;
    let (done, asked) = counts.split_once('/')?;
    let (done, asked): (u64, u64) = (done.parse().ok()?, asked.parse().ok()?);
    (done == asked).then_some(())?;
    Some((offset.trim().parse().ok()?, done))
}

/// `n` writes of `len` bytes at scattered offsets, each in its own `cluster`-sized
/// cluster of `[start, end)`, none in a cluster `taken` already holds (which they are
/// added to), with pattern bytes from `byte` on. Reproducible from `seed`.
pub fn scattered(
    n: usize,
    len: u64,
    (start, end): (u64, u64),
    cluster: u64,
    taken: &mut std::collections::BTreeSet<u64>,
    byte: u8,
    seed: u64,
) -> Result<Vec<Fill>> {
    let clusters = (end - start) / cluster;
    let slots = cluster / len;
    let mut free: Vec<u64> = (0..clusters).filter(|c| !taken.contains(c)).collect();
    if free.len() < n {
        bail!("scattered: {} free clusters for {n} writes", free.len());
    }
    let rng: Vec<u64> = crate::disk::noise(n * 8, seed)
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let mut out = Vec::with_capacity(n);
    // The first n steps of a Fisher-Yates shuffle: n distinct clusters, none taken.
    for (i, r) in rng.iter().enumerate() {
        let j = i + usize::try_from(r % (free.len() - i) as u64)?;
        free.swap(i, j);
        let c = free[i];
        taken.insert(c);
        let slot = (r >> 32) % slots;
        let k = u8::try_from(i % 200).unwrap_or(0);
        out.push(Fill::new(
            start + c * cluster + slot * len,
            len,
            byte.wrapping_add(k),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrote_lines() {
        assert_eq!(
            parse_wrote("wrote 4096/4096 bytes at offset 65536"),
            Some((65536, 4096))
        );
        assert_eq!(parse_wrote("wrote 512/4096 bytes at offset 0"), None);
        assert_eq!(parse_wrote("read 4096/4096 bytes at offset 0"), None);
        assert_eq!(parse_wrote("wrote x/4096 bytes at offset 0"), None);
        assert_eq!(parse_wrote("4 KiB, 1 ops; 00.00 sec"), None);
    }

    #[test]
    fn sense_lines() {
        assert_eq!(
            parse_sense("qemu-io: iSCSI WRITE10/16 failed at lba 8: SENSE KEY:DATA PROTECTION(7) ASCQ:(null)(0x2707)"),
            Some((7, 0x2707))
        );
        assert_eq!(
            parse_sense(
                "qemu-io: iSCSI SYNCHRONIZECACHE10 failed: SENSE KEY:(null)(3) ASCQ:(null)(0x1100)"
            ),
            Some((3, 0x1100))
        );
        assert_eq!(parse_sense("write failed: Input/output error"), None);
    }

    #[test]
    fn scattered_writes_take_distinct_clusters() -> Result<()> {
        let mut taken = std::collections::BTreeSet::new();
        let a = scattered(100, 4096, (0, 1 << 24), 1 << 16, &mut taken, 0x40, 7)?;
        let b = scattered(100, 4096, (0, 1 << 24), 1 << 16, &mut taken, 0x80, 8)?;
        let all = scattered(56, 4096, (0, 1 << 24), 1 << 16, &mut taken, 0, 9)?;
        assert!(scattered(1, 4096, (0, 1 << 24), 1 << 16, &mut taken, 0, 9).is_err());
        let mut clusters: Vec<u64> = a
            .iter()
            .chain(&b)
            .chain(&all)
            .map(|f| f.offset >> 16)
            .collect();
        clusters.sort_unstable();
        clusters.dedup();
        assert_eq!(clusters.len(), 256);
        assert!(a
            .iter()
            .chain(&b)
            .all(|f| f.offset % 4096 == 0 && f.offset + f.len <= 1 << 24));
        Ok(())
    }
}
