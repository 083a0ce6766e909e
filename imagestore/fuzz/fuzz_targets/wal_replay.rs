//! Hostile write-ahead records (well-formed, so they pass their checksums)
//! beside a valid overlay: the open either refuses them with an error or
//! applies them, and what it wrote opens again and reads in bounds. Never a
//! panic, never an image that no longer opens.
#![no_main]

use blockdev::BlockDevice;
use imagestore::qcow2::wal::{self, Op, Record, REC};
use imagestore::qcow2::Overlay;
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::FileExt;

const SIZE: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile_dir() else { return };
    let path = dir.join("node.qcow2");
    if Overlay::create(&path, SIZE, "none").is_err() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().build();
    let Ok(rt) = rt else { return };
    // A real open and a few writes give the image reserved clusters and
    // tables, as a crash leaves them; then the log is forged.
    {
        let Ok(ov) = Overlay::open(&path, None, false) else {
            return;
        };
        rt.block_on(async {
            let _ = ov
                .write(0, bytes::Bytes::from(vec![1u8; 4096]), false)
                .await;
            let _ = ov.flush().await;
        });
    }
    let [w0, w1] = wal::paths(&path);
    let Ok(f0) = std::fs::read(&w0) else { return };
    let Some(header) = f0.get(..REC).map(|h| h.to_vec()) else {
        return;
    };
    let mut logs = [header, Vec::new()];
    logs[1].resize(REC, 0);
    for (slot, c) in data.chunks_exact(21).enumerate() {
        let word = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap_or([0; 8]));
        let (g, x) = (word(1) % 256, word(9));
        let mask = u32::from_le_bytes([c[17], c[18], c[19], c[20]]);
        let op = match c[0] % 3 {
            0 => Op::Alloc {
                g,
                host: (x % 512) * 65536,
                mask,
            },
            1 => Op::ZeroBits { g, mask },
            _ => Op::ZeroRange {
                from: g,
                to: g + x % 64,
            },
        };
        let epoch = 1 + u64::from(c[0] / 3 % 2);
        let r = Record {
            epoch,
            slot: slot as u64,
            op,
        };
        logs[(epoch % 2) as usize].extend_from_slice(&r.encode());
    }
    for (p, b) in [(&w0, &logs[0]), (&w1, &logs[1])] {
        let ok = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .and_then(|f| f.write_all_at(b, 0));
        if ok.is_err() {
            return;
        }
    }
    if let Ok(ov) = Overlay::open(&path, None, false) {
        rt.block_on(async {
            let _ = ov.read(0, SIZE as usize).await;
            let _ = ov.close().await;
        });
        drop(ov);
        // What the replay committed is a valid image.
        let again = Overlay::open(&path, None, false);
        assert!(again.is_ok(), "replayed image does not reopen: {again:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
});

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "imagestore-walfuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
