//! A hostile overlay file: opening it (read-only and read-write) either
//! fails with an error or gives an overlay whose reads and block status
//! stay in bounds; it never panics or allocates without bound. The input
//! patches bytes of a valid overlay with written clusters (a qcow2 file is
//! at least four 64 KiB clusters, more than a fuzz input), so the header,
//! L1, L2 and refcount checks are all reached.
#![no_main]

use blockdev::BlockDevice;
use imagestore::qcow2::Overlay;
use libfuzzer_sys::fuzz_target;
use std::io::Write;

/// A 32 MiB overlay with scattered writes and a discard, closed cleanly.
fn base() -> &'static [u8] {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile_dir().expect("temp dir");
        let path = dir.join("base.qcow2");
        Overlay::create(&path, 32 << 20, "none").expect("create");
        let ov = Overlay::open(&path, None, false).expect("open");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for i in 0..24u64 {
                let _ = ov
                    .write(
                        i * 1_310_720 % (32 << 20),
                        bytes::Bytes::from(vec![i as u8; 6144]),
                        false,
                    )
                    .await;
            }
            let _ = ov.discard(2 << 20, 1 << 20).await;
            let _ = ov.close().await;
        });
        drop(ov);
        let b = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        b
    })
}

fuzz_target!(|data: &[u8]| {
    let mut image = base().to_vec();
    // Patches: (offset, byte) pairs, offsets biased to the metadata clusters.
    for c in data.chunks_exact(5) {
        let at = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
        let at = if at & 1 == 0 {
            (at >> 1) % (5 << 16)
        } else {
            (at >> 1) % image.len()
        };
        if let Some(b) = image.get_mut(at) {
            *b = c[4];
        }
    }
    let data = &image[..];
    let Ok(dir) = tempfile_dir() else { return };
    let path = dir.join("fuzz.qcow2");
    let ok = std::fs::File::create(&path).and_then(|mut f| f.write_all(data));
    if ok.is_err() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().build();
    let Ok(rt) = rt else { return };
    for read_only in [true, false] {
        let Ok(ov) = Overlay::open(&path, None, read_only) else {
            continue;
        };
        let size = ov.capabilities().size_bytes();
        rt.block_on(async {
            for off in [0, size / 2, size.saturating_sub(65536)] {
                let off = off - off % 512;
                let len = 65536.min(size - off) as usize;
                let _ = ov.read(off, len).await;
                let _ = ov.block_status(off, len as u64).await;
            }
            if !read_only {
                let _ = ov
                    .write(
                        0,
                        bytes::Bytes::from(vec![7u8; 512.min(size as usize)]),
                        false,
                    )
                    .await;
                let _ = ov.close().await;
            }
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
});

/// A fresh directory per input (the overlay's log files go beside it).
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "imagestore-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
