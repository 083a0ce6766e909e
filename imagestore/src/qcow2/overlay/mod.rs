//! The overlay engine: reads, copy-on-write writes, discards and the commit
//! that makes them durable in an order that survives a crash.
//!
//! # Allocation and ordering
//!
//! * Clusters are *reserved* in batches: their refcounts are set to 1 (and
//!   the file grown to cover them) before any table, even in memory, points
//!   at them. No sync is needed there: a table entry reaches the file only
//!   in a commit, after an `fdatasync` that also makes every earlier
//!   refcount write durable (new refcount blocks are synced before the
//!   refcount table points to them). So no table on disk ever points at a
//!   cluster whose refcount is 0; a crash only leaks unused reserved
//!   clusters, which the next read-write open gives back (as
//!   `qemu-img check -r leaks` would). L2 tables come from the same pool.
//! * A first write to a guest cluster takes a reserved cluster, writes the
//!   subclusters it touches (the guest's data merged, in partly covered
//!   subclusters, with the backing image or zeros; the whole cluster in the
//!   standard layout, which has one subcluster per cluster) and only then
//!   sets their "allocated" bits in the in-memory L2 entry, so a concurrent
//!   read either sees the old mapping or fully written data. Later first
//!   writes to other subclusters of the cluster reuse its host cluster.
//! * Every table change is also appended to the write-ahead log (see
//!   [`crate::qcow2::wal`]) after its data is written and before the
//!   request completes: an acknowledged write survives a crash of the
//!   process even without a flush, and the next open replays the log.
//! * Reservations take real disk blocks (`fallocate`), so the data and the
//!   L2 tables they will need can be written when the disk is nearly full;
//!   a failed reservation is undone in memory and reported as no space.
//! * A failed sync fails the overlay: every later request gets an error
//!   until it is reopened, and the log is dropped, so nothing pretends that
//!   writes since the last good commit are durable.
//! * L2/L1 changes reach the file in [`Overlay::flush`] (and FUA): new L2
//!   tables are written, `fdatasync` (data and tables durable), then the
//!   changed L2 entries and L1 entries are written from a snapshot taken
//!   before that sync, `fdatasync`. No table on disk ever points at data
//!   that is not durable, even after a power cut, and everything written
//!   before a flush is reachable after it.
//! * Zeroing whole clusters drops their host cluster and sets every "reads
//!   as zero" bit; zeroing part of a cluster sets the zero bits of the
//!   subclusters it covers (the host cluster stays) and writes zeros into
//!   partly covered ones.
//! * Discarded clusters are only unreferenced in memory; their refcounts
//!   drop (and holes are punched) after the commit that made the zero
//!   entries durable, and after every I/O planned against the old mapping
//!   has finished (the `gate` barrier), so a freed cluster is never reused
//!   while a table on disk or a request in flight still points to it.
//! * With [`SyncWrites::Always`] every write, zeroing and discard is also
//!   committed before it completes, in commits shared by concurrent
//!   requests (see [`group`]): for servers that share the overlays'
//!   storage, whose peer must find every acknowledged write after this
//!   whole machine died (another machine drops the log).
//! * The dirty bit is never set: refcounts on disk are always right or
//!   higher than needed.
//!
//! # Concurrency
//!
//! One short-held mutex guards the metadata and is never held across an
//! await; I/O runs on tokio's blocking pool (cached reads inline with
//! `RWF_NOWAIT`). First writes to the same guest cluster are serialised by a
//! claim set; reads of allocated clusters never wait for writes.

mod commit;
#[cfg(test)]
mod crashpoints;
mod device;
mod group;
mod publish;
mod replay;
mod write;

use super::gate::Gate;
use super::io;
use super::l2::{Entry, Layout, Sub};
use super::meta::Meta;
use super::refcount::Write;
use super::wal::{self, Pending, Wal};
use super::{header::Header, ImageError, CLUSTER_SIZE};
pub use group::SyncWrites;

use blockdev::{BlockDevice, BlockError, Capabilities};
use bytes::{Bytes, BytesMut};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Clusters reserved per refcount batch: the batch doubles while
/// reservations come quickly and halves when they do not, so a write storm
/// rarely waits for a reservation and an idle node leaks little on a crash.
const BATCH_MIN: usize = 64;
const BATCH_MAX: usize = 2048;
/// Reservations closer together than this grow the batch.
const BATCH_BUSY: Duration = Duration::from_secs(1);
/// Blocking threads writing one overlay at once (see `Overlay::writers`).
const WRITERS: usize = 2;
/// Reads up to this size try the page cache inline first.
const INLINE_READ_MAX: usize = 1 << 20;
/// [`BlockDevice::block_status`] stops after this many extents.
const MAX_EXTENTS: usize = 1024;
/// Discards update at most this many clusters per lock hold.
const DISCARD_CHUNK: u64 = 8192;

/// An open qcow2 overlay; see the module docs.
pub struct Overlay {
    file: Arc<File>,
    caps: Capabilities,
    size: u64,
    /// The image's L2 layout (fixed for its life).
    layout: Layout,
    backing: Option<Arc<dyn BlockDevice>>,
    meta: Arc<Mutex<Meta>>,
    /// Serialises refcount I/O (reservations, frees) so writes of the same
    /// refcount bytes reach the file in the order they were decided.
    /// Guards are moved into the blocking I/O they protect, so a cancelled
    /// request cannot release the lock while its writes are still running.
    alloc: Arc<tokio::sync::Mutex<Batch>>,
    /// One commit at a time.
    commit: Arc<tokio::sync::Mutex<()>>,
    /// Entered by every request doing I/O on overlay clusters; a commit
    /// waits for earlier requests to leave before freeing clusters.
    gate: Gate,
    /// Woken when a claimed guest cluster's allocation ends.
    allocated: Arc<Notify>,
    /// Caps blocking threads writing this file at once: buffered writes
    /// serialise on the inode lock, and more threads only spin on it.
    writers: tokio::sync::Semaphore,
    /// Cleared when the filesystem refuses `RWF_NOWAIT`.
    nowait_reads: AtomicBool,
    /// The write-ahead log (read-write overlays only).
    wal: Option<Arc<Wal>>,
    /// Set by the first failed sync; see the module docs.
    failed: Arc<AtomicBool>,
    limits: Mutex<Limits>,
    recovered: Recovered,
    /// When writes become durable, and the group commit's counters.
    group: group::Group,
}

/// Space limits checked before clusters are reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// The overlay file may use at most this many bytes (a per-node quota).
    pub quota_bytes: Option<u64>,
    /// Writes that need new space fail while the filesystem has less than
    /// this free, so that a full disk is met with a clear error while
    /// every other overlay can still commit its tables.
    pub reserve_free_bytes: u64,
}

/// What the open found of a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Write-ahead records replayed into the tables.
    pub replayed: usize,
    /// Why records were found but not replayed (an earlier boot), if so.
    pub dropped: Option<String>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("caps", &self.caps).finish()
    }
}

/// Reservation batch sizing, kept under the `alloc` lock.
#[derive(Debug)]
struct Batch {
    size: usize,
    last: Option<Instant>,
}

/// Where a run of guest bytes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Host(u64),
    Backing,
    Zero,
}

impl Overlay {
    /// Creates an empty overlay at `path` (which must not exist) whose header
    /// names `backing_file_name` (format raw), for qemu tools, with extended
    /// L2 entries (subclusters). Blocking.
    pub fn create(
        path: &Path,
        virtual_size: u64,
        backing_file_name: &str,
    ) -> Result<(), ImageError> {
        super::create::create(path, virtual_size, backing_file_name, true)
    }

    /// [`Self::create`] choosing the L2 layout: `extended_l2` false makes
    /// the standard layout (whole-cluster copy-on-write), which qemu
    /// versions before 5.2 can open.
    pub fn create_with(
        path: &Path,
        virtual_size: u64,
        backing_file_name: &str,
        extended_l2: bool,
    ) -> Result<(), ImageError> {
        super::create::create(path, virtual_size, backing_file_name, extended_l2)
    }

    /// Opens an overlay. The backing image is whatever the caller passes
    /// (opened by id); the backing file name in the header is never
    /// followed. Without a backing device, unallocated clusters read as
    /// zeros. A read-write open takes an exclusive `flock` (a second writer
    /// fails with "in use") and gives back clusters leaked by a crash.
    /// Blocking: call at startup or from a blocking thread.
    pub fn open(
        path: &Path,
        backing: Option<Arc<dyn BlockDevice>>,
        read_only: bool,
    ) -> Result<Self, ImageError> {
        Self::open_with(path, backing, read_only, true)
    }

    /// [`Overlay::open`] read-write without taking the `flock`: for a
    /// caller whose own lock on the file keeps every other writer out and
    /// must be able to outlive this process's descriptor going away (a
    /// server that fences itself lets a separate process drop the lock
    /// while this one may be frozen; a `flock` on this descriptor would
    /// stay with it).
    pub fn open_locked_elsewhere(
        path: &Path,
        backing: Option<Arc<dyn BlockDevice>>,
    ) -> Result<Self, ImageError> {
        Self::open_with(path, backing, false, false)
    }

    fn open_with(
        path: &Path,
        backing: Option<Arc<dyn BlockDevice>>,
        read_only: bool,
        flock: bool,
    ) -> Result<Self, ImageError> {
        let at = |e: std::io::Error| {
            ImageError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(at)?;
        let meta_fs = file.metadata().map_err(at)?;
        if !meta_fs.is_file() {
            return Err(ImageError::Unsupported(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let locked = if flock {
            io::lock(&file, !read_only)
        } else {
            Ok(())
        };
        locked.map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                ImageError::Io(std::io::Error::new(
                    e.kind(),
                    format!("{}: in use by another writer", path.display()),
                ))
            } else {
                at(e)
            }
        })?;
        let file_len = meta_fs.len();
        let mut head = vec![0u8; file_len.min(CLUSTER_SIZE) as usize];
        file.read_exact_at(&mut head, 0).map_err(at)?;
        let header = Header::decode(&head)?;
        header.check_supported()?;
        if let Some(b) = &backing {
            let bc = b.capabilities();
            if bc.block_size != 512 {
                return Err(ImageError::Backing(format!(
                    "backing block size {} (need 512)",
                    bc.block_size
                )));
            }
            if bc.size_bytes() != header.size {
                return Err(ImageError::Backing(format!(
                    "backing image has {} bytes, overlay {}",
                    bc.size_bytes(),
                    header.size
                )));
            }
        }
        let ino = meta_fs.ino();
        let found = wal::read(path, ino)?;
        let mut meta = Meta::load(&file, &header, file_len)?;
        replay::apply(&mut meta, &found.records, backing.is_some())?;
        let recovered = Recovered {
            replayed: found.records.len(),
            dropped: found.dropped,
        };
        let mut log = None;
        if !read_only {
            if header.autoclear_features != 0 {
                // Autoclear features we do not maintain must be cleared before writing.
                file.write_all_at(&[0u8; 8], super::header::AUTOCLEAR_OFFSET)
                    .and_then(|()| io::sync(&file))
                    .map_err(at)?;
            }
            replay::commit_and_release(&file, &mut meta, || {
                log = Some(Arc::new(Wal::start(path, ino)?));
                Ok(())
            })
            .map_err(at)?;
        }
        Ok(Self {
            layout: meta.layout,
            file: Arc::new(file),
            caps: Capabilities {
                block_size: 512,
                num_blocks: header.size / 512,
                read_only,
                thin: true,
                volatile_cache: true,
            },
            size: header.size,
            backing,
            meta: Arc::new(Mutex::new(meta)),
            alloc: Arc::new(tokio::sync::Mutex::new(Batch {
                size: BATCH_MIN,
                last: None,
            })),
            commit: Arc::new(tokio::sync::Mutex::new(())),
            gate: Gate::default(),
            allocated: Arc::new(Notify::new()),
            writers: tokio::sync::Semaphore::new(WRITERS),
            nowait_reads: AtomicBool::new(true),
            wal: log,
            failed: Arc::new(AtomicBool::new(false)),
            limits: Mutex::new(Limits::default()),
            recovered,
            group: group::Group::default(),
        })
    }

    /// What this open found of a crash (for the opener's log).
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// Whether a failed sync has failed the overlay (until reopened).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Sets the space limits for later reservations.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// Sets when completed writes are durable (see [`SyncWrites`]).
    pub fn set_sync_writes(&self, mode: SyncWrites) {
        self.group.set_mode(mode);
    }

    /// When completed writes are durable.
    pub fn sync_writes(&self) -> SyncWrites {
        self.group.mode()
    }

    /// Commits started since the open (each one or two `fdatasync`s of the
    /// overlay): how well group commit shares them.
    pub fn commits(&self) -> u64 {
        self.group.commits()
    }

    fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_failed(&self) -> Result<(), BlockError> {
        if self.failed() {
            return Err(BlockError::Io(std::io::Error::other(
                "overlay failed after a write-back error; it must be reopened",
            )));
        }
        Ok(())
    }

    /// Assigns log slots to `ops` (under the metadata lock, so the log
    /// keeps the order of the changes); write them with [`Self::log_write`]
    /// before the request completes.
    fn log_take(&self, m: &mut Meta, ops: &[wal::Op]) -> Option<Pending> {
        publish::take_log(self.wal.as_ref(), m, ops)
    }

    async fn log_write(&self, p: Option<Pending>) -> Result<(), BlockError> {
        let Some(p) = p else { return Ok(()) };
        // A 64-byte append to a cached page: usually no reason to leave
        // the worker thread.
        if p.write_nowait().map_err(io::block_error)? {
            return Ok(());
        }
        match tokio::task::spawn_blocking(move || p.write()).await {
            Ok(r) => r.map_err(io::block_error),
            Err(e) => Err(BlockError::Io(std::io::Error::other(e))),
        }
    }

    /// Commits everything and returns reserved but unused clusters to the
    /// free state (and trims the file after the last used cluster), so a
    /// cleanly closed image has no leaked clusters. The
    /// overlay stays usable (later writes reserve again).
    pub async fn close(&self) -> Result<(), BlockError> {
        if self.caps.read_only {
            return Ok(());
        }
        self.commit().await?;
        let alloc = Arc::clone(&self.alloc).lock_owned().await;
        let writes = {
            let mut m = self.lock();
            let pool: Vec<u64> = m.pool.drain(..).collect();
            if let Some(&low) = pool.iter().min() {
                m.hint = m.hint.min(low);
            }
            let writes = m.rc.release(&pool);
            (writes, m.rc.end_of_used() * CLUSTER_SIZE)
        };
        io::blocking(&self.file, move |f| {
            let _alloc = alloc;
            write_all(f, &writes.0)?;
            io::sync(f)?;
            // Drop the unused (sparse) tail the last reservation grew.
            if f.metadata()?.len() > writes.1 {
                f.set_len(writes.1)?;
            }
            Ok(())
        })
        .await
    }

    /// Turns the inline `RWF_NOWAIT` read attempt on or off (for measuring it).
    pub fn set_nowait_reads(&self, on: bool) {
        self.nowait_reads.store(on, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        // Metadata updates never panic half-way; a poisoned lock only means
        // another request panicked elsewhere.
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        match offset.checked_add(len) {
            Some(end)
                if offset.is_multiple_of(512) && len.is_multiple_of(512) && end <= self.size =>
            {
                Ok(())
            }
            _ => Err(BlockError::OutOfRange { offset, len }),
        }
    }

    fn writable(&self) -> Result<(), BlockError> {
        self.check_failed()?;
        if self.caps.read_only {
            Err(BlockError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn unallocated_src(&self) -> Src {
        if self.backing.is_some() {
            Src::Backing
        } else {
            Src::Zero
        }
    }

    /// Where a subcluster reads from.
    fn src(&self, sub: Sub) -> Src {
        match sub {
            Sub::Host(h) => Src::Host(h),
            Sub::Zero => Src::Zero,
            Sub::Unallocated => self.unallocated_src(),
        }
    }

    /// Splits a guest range into runs by source.
    fn plan(&self, m: &Meta, offset: u64, len: u64) -> Vec<(u64, u64, Src)> {
        let mut runs: Vec<(u64, u64, Src)> = Vec::new();
        let sub_size = m.layout.sub_size();
        let end = offset + len;
        let mut pos = offset;
        let mut cached: Option<(u64, Entry)> = None;
        while pos < end {
            let g = pos / CLUSTER_SIZE;
            let e = match cached {
                Some((cg, e)) if cg == g => e,
                _ => {
                    let e = m.mapping(g);
                    cached = Some((g, e));
                    e
                }
            };
            let in_cluster = pos % CLUSTER_SIZE;
            let s = (in_cluster / sub_size) as u32;
            let in_sub = in_cluster % sub_size;
            let n = (sub_size - in_sub).min(end - pos);
            let src = match self.src(e.sub(s, sub_size)) {
                Src::Host(h) => Src::Host(h + in_sub),
                other => other,
            };
            match runs.last_mut() {
                Some((_, rlen, last)) if continues(*last, *rlen, src) => *rlen += n,
                _ => runs.push((pos, n, src)),
            }
            pos += n;
        }
        runs
    }

    async fn read_backing(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        match &self.backing {
            Some(b) => b.read(offset, len).await,
            None => Ok(Bytes::from(vec![0u8; len])),
        }
    }

    /// Reads overlay file bytes, from the page cache inline when possible.
    async fn read_host(&self, host: u64, len: usize) -> Result<Bytes, BlockError> {
        let mut buf = BytesMut::with_capacity(len);
        if len <= INLINE_READ_MAX && self.nowait_reads.load(Ordering::Relaxed) {
            match io::read_nowait(&self.file, &mut buf, host, len) {
                Ok(()) if buf.len() == len => {
                    // Never waiting would let one busy session hog its worker.
                    tokio::task::consume_budget().await;
                    return Ok(buf.freeze());
                }
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                    self.nowait_reads.store(false, Ordering::Relaxed)
                }
                Err(e) => return Err(io::block_error(e)),
            }
        }
        io::blocking(&self.file, move |f| {
            io::read_rest(f, &mut buf, host, len)?;
            Ok(buf.freeze())
        })
        .await
    }

    async fn read_run(&self, off: u64, len: u64, src: Src) -> Result<Bytes, BlockError> {
        match src {
            Src::Host(h) => self.read_host(h, len as usize).await,
            Src::Backing => self.read_backing(off, len as usize).await,
            Src::Zero => Ok(Bytes::from(vec![0u8; len as usize])),
        }
    }
}

/// Whether `next` continues a run of `len` bytes from `last`.
fn continues(last: Src, len: u64, next: Src) -> bool {
    match (last, next) {
        (Src::Host(a), Src::Host(b)) => a + len == b,
        (a, b) => a == b,
    }
}

fn write_all(f: &File, writes: &[Write]) -> std::io::Result<()> {
    for w in writes {
        io::write_at(f, &w.data, w.offset, false)?;
    }
    Ok(())
}

/// Sorted runs (first, count) of cluster numbers.
fn runs(mut clusters: Vec<u64>) -> Vec<(u64, u64)> {
    clusters.sort_unstable();
    clusters.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for c in clusters {
        match out.last_mut() {
            Some((s, n)) if *s + *n == c => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    out
}
