//! The overlay's write-ahead log: two small side files that make every
//! acknowledged table change survive a crash of the serving process.
//!
//! # Why
//!
//! The qcow2 tables reach the overlay file only in a commit (FLUSH or FUA),
//! after the data they point to is durable, so the file survives a power cut
//! in a consistent state. Between commits the new mappings lived only in
//! memory: a `kill -9` of serve lost every acknowledged, unflushed write
//! while the initiator (which lives on another machine) carried on. Writing
//! the tables to the file at once would fix that but break the power-cut
//! ordering (a table on disk could point at data that never landed).
//!
//! So each table change is also appended here, after its data is in the
//! file and before the write is acknowledged. Both reach the page cache
//! with a plain `pwrite`, which a dying process cannot take back. At the
//! next read-write open the log is replayed into the tables and committed.
//!
//! # When the log is believed
//!
//! Only after a crash of the process: the page cache then holds everything
//! that was written, in order. After a reboot (power cut, kernel crash) the
//! page cache is gone and the log may hold records whose data never reached
//! the disk, so the log is dropped and the overlay is what its last commit
//! made durable: exactly the guarantee of a disk with a volatile write
//! cache. The header tells the two apart by the kernel's boot id. It also
//! names the overlay's inode, so a log left beside a replaced overlay is
//! never applied to the new one.
//!
//! # Epochs
//!
//! Records carry the epoch of the commit that will make them durable in the
//! tables; each commit starts a new epoch, and the header of file 0 names
//! the last committed one, so replay skips what the tables already hold.
//! Epoch `e` writes file `e % 2` from slot 0; the commit that starts epoch
//! `e + 2` first waits until no record of epoch `e` is still being written
//! (see [`Wal::wait_idle`]), so a late write can never overwrite a newer
//! record in the same slot.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Bytes per record and of the header.
pub const REC: usize = 64;
const HEADER_MAGIC: &[u8; 8] = b"BOOTDWAL";
const RECORD_MAGIC: u32 = 0x4257_414c;
const VERSION: u32 = 1;
/// The log files grow by this much at a time, reserved with `fallocate`
/// so that appending a record needs no new blocks on a nearly full disk.
const GROW: u64 = 256 << 10;

/// One table change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Subclusters `mask` of guest cluster `g` now hold data in the host
    /// cluster at byte offset `host`.
    Alloc { g: u64, host: u64, mask: u32 },
    /// Subclusters `mask` of guest cluster `g` read as zeros.
    ZeroBits { g: u64, mask: u32 },
    /// Guest clusters `from..to` read as zeros.
    ZeroRange { from: u64, to: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub epoch: u64,
    pub slot: u64,
    pub op: Op,
}

impl Record {
    pub fn encode(&self) -> [u8; REC] {
        let mut b = [0u8; REC];
        let (kind, a, c, mask) = match self.op {
            Op::Alloc { g, host, mask } => (1u8, g, host, mask),
            Op::ZeroBits { g, mask } => (2, g, 0, mask),
            Op::ZeroRange { from, to } => (3, from, to, 0),
        };
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4] = kind;
        b[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        b[16..24].copy_from_slice(&self.slot.to_le_bytes());
        b[24..32].copy_from_slice(&a.to_le_bytes());
        b[32..40].copy_from_slice(&c.to_le_bytes());
        b[40..44].copy_from_slice(&mask.to_le_bytes());
        let crc = crc32c::crc32c(&b[..REC - 4]);
        b[REC - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for anything but an intact record (a slot never written reads
    /// as zeros; a torn one fails its checksum).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; REC] = b.try_into().ok()?;
        if u32_at(b, 0) != RECORD_MAGIC || crc32c::crc32c(&b[..REC - 4]) != u32_at(b, REC - 4) {
            return None;
        }
        let (a, c, mask) = (u64_at(b, 24), u64_at(b, 32), u32_at(b, 40));
        let op = match b[4] {
            1 => Op::Alloc {
                g: a,
                host: c,
                mask,
            },
            2 => Op::ZeroBits { g: a, mask },
            3 => Op::ZeroRange { from: a, to: c },
            _ => return None,
        };
        Some(Self {
            epoch: u64_at(b, 8),
            slot: u64_at(b, 16),
            op,
        })
    }
}

/// What the header of file 0 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub boot_id: [u8; 16],
    pub ino: u64,
    /// Every record of this epoch and earlier is in the tables.
    pub committed: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; REC] {
        let mut b = [0u8; REC];
        b[0..8].copy_from_slice(HEADER_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.boot_id);
        b[32..40].copy_from_slice(&self.ino.to_le_bytes());
        b[40..48].copy_from_slice(&self.committed.to_le_bytes());
        let crc = crc32c::crc32c(&b[..REC - 4]);
        b[REC - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; REC] = b.get(..REC)?.try_into().ok()?;
        if &b[0..8] != HEADER_MAGIC
            || u32_at(b, 8) != VERSION
            || crc32c::crc32c(&b[..REC - 4]) != u32_at(b, REC - 4)
        {
            return None;
        }
        let mut boot_id = [0u8; 16];
        boot_id.copy_from_slice(&b[16..32]);
        Some(Self {
            boot_id,
            ino: u64_at(b, 32),
            committed: u64_at(b, 40),
        })
    }
}

fn u32_at(b: &[u8; REC], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; REC], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The running kernel's boot id: it changes at every boot, so a log written
/// under another one has lost its page cache.
pub fn boot_id() -> io::Result<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let hex: Vec<u8> = text.trim().bytes().filter(|c| *c != b'-').collect();
    let mut id = [0u8; 16];
    if hex.len() != 32 {
        return Err(io::Error::other("unexpected boot_id format"));
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(io::Error::other)?;
        id[i] = u8::from_str_radix(s, 16).map_err(io::Error::other)?;
    }
    Ok(id)
}

/// The two log files beside an overlay.
pub fn paths(overlay: &Path) -> [PathBuf; 2] {
    let mut names = [
        overlay.as_os_str().to_owned(),
        overlay.as_os_str().to_owned(),
    ];
    names[0].push(".wal0");
    names[1].push(".wal1");
    names.map(PathBuf::from)
}

/// Deletes an overlay's log files (with the overlay, or before a new
/// overlay takes its name). Missing files are fine.
pub fn remove(overlay: &Path) -> io::Result<()> {
    for p in paths(overlay) {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// What the logs found at open hold for the tables.
#[derive(Debug, Default)]
pub struct Found {
    /// Records to apply, in the order they were made.
    pub records: Vec<Record>,
    /// Why records were present but not applied (another boot, another
    /// overlay), for the log line of whoever opened the overlay.
    pub dropped: Option<String>,
}

/// Reads both log files of `overlay` (inode `ino`): the records of this
/// boot not yet committed. Missing files hold nothing.
pub fn read(overlay: &Path, ino: u64) -> io::Result<Found> {
    let mut contents = Vec::new();
    for p in paths(overlay) {
        match std::fs::read(&p) {
            Ok(b) => contents.push(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => contents.push(Vec::new()),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        }
    }
    let records = |bytes: &[u8]| -> Vec<Record> {
        bytes
            .get(REC..)
            .unwrap_or_default()
            .chunks_exact(REC)
            .filter_map(Record::decode)
            .collect()
    };
    let all: Vec<Record> = contents.iter().flat_map(|c| records(c)).collect();
    let Some(header) = Header::decode(&contents[0]) else {
        let dropped = (!all.is_empty()).then(|| "write-ahead log without a valid header".into());
        return Ok(Found {
            records: Vec::new(),
            dropped,
        });
    };
    let live: Vec<Record> = all
        .into_iter()
        .filter(|r| r.epoch > header.committed)
        .collect();
    if live.is_empty() {
        return Ok(Found::default());
    }
    if header.ino != ino {
        return Ok(Found {
            dropped: Some(format!(
                "{} write-ahead records belong to an earlier overlay file",
                live.len()
            )),
            records: Vec::new(),
        });
    }
    if header.boot_id != boot_id()? {
        // The machine restarted: the page cache these records relied on is
        // gone, and the last commit is what is durable.
        return Ok(Found {
            dropped: Some(format!(
                "{} write-ahead records from before a reboot (unflushed writes are lost, \
                 as with a disk's volatile cache)",
                live.len()
            )),
            records: Vec::new(),
        });
    }
    let mut live = live;
    live.sort_by_key(|r| (r.epoch, r.slot));
    Ok(Found {
        records: live,
        dropped: None,
    })
}

/// The open log of a read-write overlay.
#[derive(Debug)]
pub struct Wal {
    files: [File; 2],
    header: Header,
    /// Records of each file still being written.
    inflight: [AtomicUsize; 2],
    idle: Notify,
    /// Bytes of each file known to be reserved on disk.
    reserved: [AtomicU64; 2],
    /// Cleared once the filesystem refuses non-blocking buffered writes.
    nowait: AtomicBool,
}

impl Wal {
    /// Creates or opens both files of `overlay` and starts them empty: call
    /// only once their records are in the tables and those are durable.
    pub fn start(overlay: &Path, ino: u64) -> io::Result<Self> {
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let [a, b] = paths(overlay);
        let wal = Self {
            files: [open(&a)?, open(&b)?],
            header: Header {
                boot_id: boot_id()?,
                ino,
                committed: 0,
            },
            inflight: Default::default(),
            idle: Notify::new(),
            reserved: Default::default(),
            nowait: AtomicBool::new(true),
        };
        for f in &wal.files {
            super::io::truncate(f, 0)?;
        }
        super::io::write_at(&wal.files[0], &wal.header.encode(), 0, false)?;
        Ok(wal)
    }

    /// Records that every record of `epoch` and before is in the tables.
    pub fn set_committed(&self, epoch: u64) -> io::Result<()> {
        let h = Header {
            committed: epoch,
            ..self.header
        };
        super::io::write_at(&self.files[0], &h.encode(), 0, false)
    }

    /// Forgets every record: after a failed sync nothing may pretend that a
    /// write since the last good commit is durable. Best effort.
    pub fn drop_all(&self) {
        for (f, r) in self.files.iter().zip(&self.reserved) {
            let _ = super::io::truncate(f, 0);
            r.store(0, Ordering::Relaxed);
        }
    }

    /// Takes records `bytes` for slots from `first` of `file`: the write
    /// counts as in flight (see [`Self::wait_idle`]) until the returned
    /// value is dropped, written or not.
    pub fn pending(self: &Arc<Self>, file: usize, first: u64, bytes: Vec<u8>) -> Pending {
        self.inflight[file].fetch_add(1, Ordering::SeqCst);
        Pending {
            wal: Arc::clone(self),
            file,
            first,
            bytes,
        }
    }

    /// Waits until no record write into `file` is in flight.
    pub async fn wait_idle(&self, file: usize) {
        loop {
            let idle = self.idle.notified();
            if self.inflight[file].load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Records on their way into a log file.
#[derive(Debug)]
pub struct Pending {
    wal: Arc<Wal>,
    file: usize,
    first: u64,
    bytes: Vec<u8>,
}

impl Pending {
    /// Writes the records only if that cannot block (the page is cached and
    /// no space must be reserved first): `Ok(false)` means "do it on a
    /// blocking thread".
    pub fn write_nowait(&self) -> io::Result<bool> {
        let w = &self.wal;
        let at = REC as u64 + self.first * REC as u64;
        if !w.nowait.load(Ordering::Relaxed)
            || at + self.bytes.len() as u64 > w.reserved[self.file].load(Ordering::Relaxed)
        {
            return Ok(false);
        }
        match super::io::write_nowait(&w.files[self.file], &self.bytes, at) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if unsupported(&e) => {
                w.nowait.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the records (blocking).
    pub fn write(&self) -> io::Result<()> {
        let w = &self.wal;
        let at = REC as u64 + self.first * REC as u64;
        let end = at + self.bytes.len() as u64;
        if end > w.reserved[self.file].load(Ordering::Relaxed) {
            let want = end.div_ceil(GROW) * GROW;
            super::io::allocate(&w.files[self.file], 0, want)?;
            w.reserved[self.file].fetch_max(want, Ordering::Relaxed);
        }
        super::io::write_at(&w.files[self.file], &self.bytes, at, false)
    }
}

/// The filesystem (or kernel) has no non-blocking buffered writes.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
    )
}

impl Drop for Pending {
    fn drop(&mut self) {
        let w = &self.wal;
        if w.inflight[self.file].fetch_sub(1, Ordering::SeqCst) == 1 {
            w.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_damage() {
        for op in [
            Op::Alloc {
                g: 7,
                host: 0x30000,
                mask: 0b1100,
            },
            Op::ZeroBits {
                g: 1 << 40,
                mask: 1,
            },
            Op::ZeroRange { from: 3, to: 9000 },
        ] {
            let r = Record {
                epoch: 5,
                slot: 17,
                op,
            };
            let mut b = r.encode();
            assert_eq!(Record::decode(&b), Some(r));
            b[30] ^= 1;
            assert_eq!(Record::decode(&b), None);
        }
        assert_eq!(Record::decode(&[0u8; REC]), None);
        assert_eq!(Record::decode(&[0u8; 3]), None);
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            boot_id: [9; 16],
            ino: 42,
            committed: 3,
        };
        assert_eq!(Header::decode(&h.encode()), Some(h));
        assert_eq!(Header::decode(&[0u8; REC]), None);
    }

    #[test]
    fn boot_id_is_stable() {
        let a = boot_id().expect("boot id");
        assert_eq!(a, boot_id().expect("boot id"));
        assert_ne!(a, [0u8; 16]);
    }

    #[test]
    fn read_keeps_this_boots_uncommitted_records_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ov = dir.path().join("n.qcow2");
        let wal = Arc::new(Wal::start(&ov, 11).expect("start"));
        let rec = |epoch, slot, g| Record {
            epoch,
            slot,
            op: Op::ZeroBits { g, mask: 1 },
        };
        for (file, slot, r) in [
            (1, 0, rec(1, 0, 100)),
            (0, 0, rec(2, 0, 200)),
            (0, 1, rec(2, 1, 201)),
            (1, 1, rec(1, 1, 101)),
        ] {
            let p = wal.pending(file, slot, r.encode().to_vec());
            p.write().expect("write");
        }
        let found = read(&ov, 11).expect("read");
        let gs: Vec<u64> = found
            .records
            .iter()
            .map(|r| match r.op {
                Op::ZeroBits { g, .. } => g,
                _ => 0,
            })
            .collect();
        assert_eq!(gs, vec![100, 101, 200, 201]);
        wal.set_committed(1).expect("commit");
        assert_eq!(read(&ov, 11).expect("read").records.len(), 2);
        let other = read(&ov, 12).expect("read");
        assert!(other.records.is_empty() && other.dropped.is_some());
        wal.drop_all();
        let gone = read(&ov, 11).expect("read");
        assert!(gone.records.is_empty());
    }
}
