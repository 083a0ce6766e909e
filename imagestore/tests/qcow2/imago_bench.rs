//! Our overlay engine against imago (the qcow2 crate) on one golden image in
//! one run, for issue 3. Run with
//! `cargo test --release -p imagestore --test qcow2 imago -- --ignored --nocapture`.
//!
//! How imago is driven: its request futures are not `Send` and its file
//! storage does blocking `preadv`/`pwritev` inside `async fn`, so each imago
//! thread is a current-thread runtime with `spawn_local` tasks on a
//! `LocalSet`; the tasks interleave only where imago awaits one of its locks,
//! and every syscall runs on that thread. `FormatAccess` itself is `Sync`, so
//! it is measured three ways: one thread with 32 tasks, two threads with 16
//! tasks each sharing one overlay, and (what bootd would need, as its iSCSI
//! tasks run on a multi-thread runtime and must be `Send`) two dedicated
//! imago threads fed over channels by 32 ordinary tokio tasks.
//! Ours runs on a 2-worker multi-thread runtime, as in bootd.

use crate::common::*;
use blockdev::BlockDevice;
use bytes::Bytes;
use imagestore::Overlay;
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};
use std::error::Error;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;

const SIZE: u64 = 1 << 30;
const CLUSTER: u64 = 64 << 10;
const CLUSTERS: u64 = SIZE / CLUSTER;
const TASKS: u64 = 32;
const IO: usize = 4096;
const READ_TIME: Duration = Duration::from_secs(2);
/// Clusters read back after the writes: first, last, and some in between.
const SAMPLES: [u64; 6] = [0, 1, 17, 4099, CLUSTERS / 2 + 3, CLUSTERS - 1];

/// An imago image (the golden one, or an overlay over it).
type Img = Arc<FormatAccess<ImagoFile>>;

/// Where the first-touch write to cluster `c` goes: one 4 KiB block, at a
/// different place in each cluster so copy-on-write fills both sides.
fn write_offset(c: u64) -> u64 {
    c * CLUSTER + (c % 16) * IO as u64
}

/// Random 4 KiB block (xorshift), the same sequence for both engines.
fn next_offset(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x % (SIZE / IO as u64)) * IO as u64
}

/// Per-engine results.
struct Figures {
    /// (b) ops/s, nothing written yet.
    fresh_reads: f64,
    /// (a) ops/s, the writes alone.
    writes: f64,
    /// (a) ops/s, timed up to and including the durable flush.
    writes_flushed: f64,
    /// The flush alone.
    flush: Duration,
    /// (c) ops/s after every cluster was written once.
    owned_reads: f64,
}

/// Cluster `c` as it must read after the writes: golden data around the one
/// 4 KiB block task `c % TASKS` wrote.
fn expected_cluster(gold: &Path, c: u64) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; CLUSTER as usize];
    std::fs::File::open(gold)?.read_exact_at(&mut v, c * CLUSTER)?;
    let at = ((c % 16) * IO as u64) as usize;
    v[at..at + IO].copy_from_slice(&pattern(IO, c % TASKS));
    Ok(v)
}

fn ops_per_s(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

/// What the `Send` measurements need from a device: ours, or imago behind
/// its I/O threads.
trait Dev: Send + Sync + 'static {
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = std::io::Result<Bytes>> + Send;
    fn write(&self, offset: u64, data: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Durable, like SYNCHRONIZE CACHE.
    fn flush(&self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl Dev for Overlay {
    async fn read(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        BlockDevice::read(self, offset, len)
            .await
            .map_err(std::io::Error::other)
    }
    async fn write(&self, offset: u64, data: Bytes) -> std::io::Result<()> {
        BlockDevice::write(self, offset, data, false)
            .await
            .map_err(std::io::Error::other)
    }
    async fn flush(&self) -> std::io::Result<()> {
        BlockDevice::flush(self)
            .await
            .map_err(std::io::Error::other)
    }
}

/// (a): one 4 KiB write per cluster from 32 tokio tasks, then a flush;
/// returns (writes alone, writes + flush) in ops/s and the flush time.
async fn dev_writes<D: Dev>(dev: Arc<D>) -> std::io::Result<(f64, f64, Duration)> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let dev = Arc::clone(&dev);
        handles.push(tokio::spawn(async move {
            let data = bytes(&pattern(IO, t));
            let mut c = t;
            while c < CLUSTERS {
                dev.write(write_offset(c), data.clone()).await?;
                c += TASKS;
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    for h in handles {
        h.await.map_err(std::io::Error::other)??;
    }
    let written = start.elapsed();
    dev.flush().await?;
    let total = start.elapsed();
    Ok((
        ops_per_s(CLUSTERS, written),
        ops_per_s(CLUSTERS, total),
        total - written,
    ))
}

/// (b) and (c): 4 KiB random reads from 32 tokio tasks; ops/s.
async fn dev_reads<D: Dev>(dev: Arc<D>) -> std::io::Result<f64> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let dev = Arc::clone(&dev);
        handles.push(tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
            let mut ops = 0u64;
            while start.elapsed() < READ_TIME {
                dev.read(next_offset(&mut x), IO).await?;
                ops += 1;
            }
            Ok::<_, std::io::Error>(ops)
        }));
    }
    let mut ops = 0;
    for h in handles {
        ops += h.await.map_err(std::io::Error::other)??;
    }
    Ok(ops_per_s(ops, start.elapsed()))
}

/// (b), (a), (c) and the read-back samples on a fresh device.
async fn dev_run<D: Dev>(gold: &Path, dev: Arc<D>) -> Result<Figures, Box<dyn Error>> {
    let fresh_reads = dev_reads(Arc::clone(&dev)).await?;
    let (writes, writes_flushed, flush) = dev_writes(Arc::clone(&dev)).await?;
    let owned_reads = dev_reads(Arc::clone(&dev)).await?;
    for c in SAMPLES {
        let got = dev.read(c * CLUSTER, CLUSTER as usize).await?;
        ensure!(
            got[..] == expected_cluster(gold, c)?[..],
            "cluster {c} reads back wrong"
        );
    }
    Ok(Figures {
        fresh_reads,
        writes,
        writes_flushed,
        flush,
        owned_reads,
    })
}

fn multi_thread() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn current_thread() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn run_ours(gold: &Path, ov: &Path) -> Result<Figures, Box<dyn Error>> {
    Overlay::create(ov, SIZE, "golden.raw")?;
    let rt = multi_thread()?;
    rt.block_on(async {
        let dev = Arc::new(Overlay::open(ov, Some(open_golden(gold)?), false)?);
        let figures = dev_run(gold, Arc::clone(&dev)).await?;
        // What bootd does on shutdown: return reserved clusters, so
        // `qemu-img check` sees no leaks.
        dev.close().await?;
        Ok(figures)
    })
}

/// A fresh overlay made by qemu-img, for imago (which we only measure).
fn qemu_overlay(ov: &Path) -> TestResult {
    let size = SIZE.to_string();
    let out = run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=65536",
            "-b",
            "golden.raw",
            "-F",
            "raw",
            s(ov),
            &size,
        ],
    )?;
    ensure!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Opens an imago overlay over the golden image, both by explicit storage
/// (the deny gate proves nothing is opened by a path from a header).
async fn imago_open(gold: &Path, ov: &Path) -> std::io::Result<Img> {
    let g = ImagoFile::open(StorageOpenOptions::new().filename(gold)).await?;
    let golden: Img = Arc::new(FormatAccess::new(
        Raw::builder(g)
            .open(DenyImplicitOpenGate::default())
            .await?,
    ));
    let f = ImagoFile::open(StorageOpenOptions::new().filename(ov).write(true)).await?;
    let q = Qcow2::<ImagoFile, Img>::builder(f)
        .write(true)
        .backing(Some(golden))
        .open(DenyImplicitOpenGate::default())
        .await?;
    Ok(Arc::new(FormatAccess::new(q)))
}

/// imago's flush writes back its cached L2 tables and refblocks; sync()
/// then makes everything durable, like our flush.
async fn imago_flush(img: &Img) -> std::io::Result<()> {
    img.flush().await?;
    img.sync().await
}

/// Runs `per_task(img, t)` for each of the `TASKS` tasks, spread over
/// `threads` OS threads, each a current-thread runtime with a `LocalSet`.
fn imago_tasks<T, F, Fut>(img: &Img, threads: u64, per_task: F) -> std::io::Result<Vec<T>>
where
    F: Fn(Img, u64) -> Fut + Sync,
    Fut: Future<Output = std::io::Result<T>> + 'static,
    T: Send + 'static,
{
    let per_task = &per_task;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|th| {
                s.spawn(move || {
                    let rt = current_thread()?;
                    LocalSet::new().block_on(&rt, async {
                        let tasks: Vec<_> = (th..TASKS)
                            .step_by(threads as usize)
                            .map(|t| tokio::task::spawn_local(per_task(Arc::clone(img), t)))
                            .collect();
                        let mut out = Vec::new();
                        for h in tasks {
                            out.push(h.await.map_err(std::io::Error::other)??);
                        }
                        Ok::<_, std::io::Error>(out)
                    })
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let out = h
                .join()
                .map_err(|_| std::io::Error::other("imago thread panicked"))??;
            all.extend(out);
        }
        Ok(all)
    })
}

fn imago_writes(rt: &Runtime, img: &Img, threads: u64) -> std::io::Result<(f64, f64, Duration)> {
    let start = Instant::now();
    imago_tasks(img, threads, |img, t| async move {
        let data = pattern(IO, t);
        let mut c = t;
        while c < CLUSTERS {
            img.write(&data[..], write_offset(c)).await?;
            c += TASKS;
        }
        Ok(())
    })?;
    let written = start.elapsed();
    rt.block_on(imago_flush(img))?;
    let total = start.elapsed();
    Ok((
        ops_per_s(CLUSTERS, written),
        ops_per_s(CLUSTERS, total),
        total - written,
    ))
}

fn imago_reads(img: &Img, threads: u64) -> std::io::Result<f64> {
    let start = Instant::now();
    let ops = imago_tasks(img, threads, move |img, t| async move {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
        let mut ops = 0u64;
        let mut buf = vec![0u8; IO];
        while start.elapsed() < READ_TIME {
            img.read(&mut buf[..], next_offset(&mut x)).await?;
            ops += 1;
        }
        Ok(ops)
    })?;
    Ok(ops_per_s(ops.iter().sum(), start.elapsed()))
}

/// (b), (a), (c) on a fresh overlay driven by imago directly on `threads`
/// threads, then the read-back samples.
fn run_imago(gold: &Path, ov: &Path, threads: u64) -> Result<Figures, Box<dyn Error>> {
    qemu_overlay(ov)?;
    let rt = current_thread()?;
    let img = rt.block_on(imago_open(gold, ov))?;
    let fresh_reads = imago_reads(&img, threads)?;
    let (writes, writes_flushed, flush) = imago_writes(&rt, &img, threads)?;
    let owned_reads = imago_reads(&img, threads)?;
    for c in SAMPLES {
        let mut got = vec![0u8; CLUSTER as usize];
        rt.block_on(img.read(&mut got[..], c * CLUSTER))?;
        ensure!(
            got == expected_cluster(gold, c)?,
            "imago ({threads} threads): cluster {c} reads back wrong"
        );
    }
    Ok(Figures {
        fresh_reads,
        writes,
        writes_flushed,
        flush,
        owned_reads,
    })
}

/// A request to an imago I/O thread, with where its answer goes.
enum Req {
    Read(u64, usize, oneshot::Sender<std::io::Result<Bytes>>),
    Write(u64, Bytes, oneshot::Sender<std::io::Result<()>>),
    Flush(oneshot::Sender<std::io::Result<()>>),
}

impl Req {
    async fn serve(self, img: &Img) {
        // A dropped receiver means the requester is gone: nothing to tell.
        match self {
            Req::Read(offset, len, tx) => {
                let mut buf = vec![0u8; len];
                let r = img.read(&mut buf[..], offset).await;
                let _ = tx.send(r.map(|()| Bytes::from(buf)));
            }
            Req::Write(offset, data, tx) => {
                let _ = tx.send(img.write(&data[..], offset).await);
            }
            Req::Flush(tx) => {
                let _ = tx.send(imago_flush(img).await);
            }
        }
    }
}

/// imago behind `Send` futures: dedicated threads, each a current-thread
/// runtime whose `LocalSet` runs one local task per request; requests are
/// dealt round robin.
struct ImagoThreads {
    txs: Vec<mpsc::UnboundedSender<Req>>,
    next: AtomicUsize,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ImagoThreads {
    fn start(img: &Img, threads: usize) -> Self {
        let mut txs = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..threads {
            let (tx, mut rx) = mpsc::unbounded_channel::<Req>();
            let img = Arc::clone(img);
            handles.push(std::thread::spawn(move || {
                let rt = current_thread()?;
                LocalSet::new().block_on(&rt, async move {
                    while let Some(req) = rx.recv().await {
                        let img = Arc::clone(&img);
                        tokio::task::spawn_local(async move { req.serve(&img).await });
                    }
                });
                Ok(())
            }));
            txs.push(tx);
        }
        Self {
            txs,
            next: AtomicUsize::new(0),
            threads: handles,
        }
    }

    fn send(&self, req: Req) -> std::io::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.txs.len();
        self.txs[i]
            .send(req)
            .map_err(|_| std::io::Error::other("imago I/O thread gone"))
    }

    /// Ends the threads once their requests are answered.
    fn stop(self) -> std::io::Result<()> {
        drop(self.txs);
        for h in self.threads {
            h.join()
                .map_err(|_| std::io::Error::other("imago I/O thread panicked"))??;
        }
        Ok(())
    }
}

/// The answer to a request sent to an imago thread.
async fn answer<T>(rx: oneshot::Receiver<std::io::Result<T>>) -> std::io::Result<T> {
    rx.await
        .map_err(|_| std::io::Error::other("imago I/O thread dropped a request"))?
}

impl Dev for ImagoThreads {
    async fn read(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let (tx, rx) = oneshot::channel();
        self.send(Req::Read(offset, len, tx))?;
        answer(rx).await
    }
    async fn write(&self, offset: u64, data: Bytes) -> std::io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Req::Write(offset, data, tx))?;
        answer(rx).await
    }
    async fn flush(&self) -> std::io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Req::Flush(tx))?;
        answer(rx).await
    }
}

/// (b), (a), (c) on a fresh overlay driven through `ImagoThreads` from the
/// same 2-worker runtime and tasks as ours.
fn run_imago_threads(gold: &Path, ov: &Path, threads: usize) -> Result<Figures, Box<dyn Error>> {
    qemu_overlay(ov)?;
    let img = current_thread()?.block_on(imago_open(gold, ov))?;
    let dev = Arc::new(ImagoThreads::start(&img, threads));
    let figures = multi_thread()?.block_on(dev_run(gold, Arc::clone(&dev)));
    Arc::into_inner(dev)
        .ok_or("imago device still shared")?
        .stop()?;
    figures
}

/// The engines compared, in the order of the table's columns.
const ENGINES: [&str; 4] = ["ours", "imago/1", "imago/2", "imago/ch2"];

fn run_engine(i: usize, gold: &Path, ov: &Path) -> Result<Figures, Box<dyn Error>> {
    match i {
        0 => run_ours(gold, ov),
        1 => run_imago(gold, ov, 1),
        2 => run_imago(gold, ov, 2),
        _ => run_imago_threads(gold, ov, 2),
    }
}

fn row(what: &str, f: &[Figures], value: impl Fn(&Figures) -> f64) {
    let ours = value(&f[0]);
    let mut line = format!("  {what:<30} {ours:>9.0}");
    for other in &f[1..] {
        let v = value(other);
        line += &format!(" {v:>9.0} {:>5.2}x", ours / v);
    }
    println!("{line}");
}

#[test]
#[ignore = "benchmark: 1 GiB golden image, prints figures, takes ~60 s"]
fn bench_ours_vs_imago() -> TestResult {
    let dir = tempfile::tempdir()?;
    let chunks: Vec<(u64, usize)> = (0..SIZE).step_by(1 << 20).map(|o| (o, 1 << 20)).collect();
    let gold = golden(dir.path(), SIZE, &chunks)?;
    // On disk now, so writeback of the golden image does not throttle the
    // overlays' writes; then read once so all reads hit the page cache.
    let f = std::fs::File::open(&gold)?;
    f.sync_all()?;
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..SIZE).step_by(buf.len()) {
        f.read_exact_at(&mut buf, off)?;
    }

    println!("1 GiB random golden (page-cached), fresh overlay each, 4 KiB I/O, {TASKS} in flight");
    println!("  ours:      2-worker multi-thread runtime, {TASKS} tokio tasks");
    println!("  imago/1:   1 thread, current-thread runtime + LocalSet, {TASKS} local tasks");
    println!(
        "  imago/2:   2 such threads sharing the overlay, {} local tasks each",
        TASKS / 2
    );
    println!("  imago/ch2: 2 such threads fed over channels by {TASKS} tasks on a");
    println!("             2-worker runtime (how bootd would have to run imago)");
    // Whoever runs first finds the page cache in a different state:
    // alternate. Each overlay is deleted right after its checks, so the next
    // one reuses the same (already touched) memory for its page cache; a VM
    // faults in never-used guest memory slowly, which otherwise hits
    // whoever runs last.
    let reference = dir.path().join("reference.qcow2");
    for round in 0..2 {
        let mut order: Vec<usize> = (0..ENGINES.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut figures: Vec<Option<Figures>> = ENGINES.iter().map(|_| None).collect();
        for &i in &order {
            let ov = dir
                .path()
                .join(format!("{}.qcow2", ENGINES[i].replace('/', "-")));
            let f = run_engine(i, &gold, &ov).map_err(|e| format!("{}: {e}", ENGINES[i]))?;
            qemu_check(&ov, false)?;
            if !reference.exists() {
                std::fs::rename(&ov, &reference)?;
            } else {
                // Same writes with the same data: every overlay holds the
                // same disk as the first one.
                let out = run(
                    "qemu-img",
                    &[
                        "compare",
                        "-f",
                        "qcow2",
                        "-F",
                        "qcow2",
                        s(&reference),
                        s(&ov),
                    ],
                )?;
                ensure!(
                    out.status.success(),
                    "qemu-img compare with {}: {}{}",
                    ENGINES[i],
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                std::fs::remove_file(&ov)?;
            }
            figures[i] = Some(f);
        }
        let f: Vec<Figures> = figures.into_iter().flatten().collect();
        ensure!(f.len() == ENGINES.len(), "an engine did not run");
        let names: Vec<String> = order.iter().map(|&i| ENGINES[i].to_string()).collect();
        println!("round {round} (run order {}), ops/s:", names.join(", "));
        println!(
            "  {:<30} {:>9} {:>9} {:>6} {:>9} {:>6} {:>9} {:>6}",
            "", "ours", "imago/1", "ratio", "imago/2", "ratio", "imago/ch2", "ratio"
        );
        row("(b) random reads, fresh", &f, |f| f.fresh_reads);
        row("(a) first-touch writes", &f, |f| f.writes);
        row("(a) first-touch writes + flush", &f, |f| f.writes_flushed);
        row("(c) random reads, all owned", &f, |f| f.owned_reads);
        row("(a) flush alone, ms", &f, |f| f.flush.as_secs_f64() * 1e3);
    }
    println!("all: samples read back right, qemu-img check clean, qemu-img compare identical");
    Ok(())
}
